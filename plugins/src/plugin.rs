//! A demo plugin for `examples/plugin_host`: a `cdylib` with one C-ABI entry point that hands
//! the host its callbacks ([`abi::PluginApi`]). Three packages (`plugins/v1`, `v2`, `v3`)
//! build this one file; each takes its version from its package's major version, so the
//! libraries differ in the value every call returns and a reload of a new version shows.
//!
//! Rules a plugin that is really unloaded must keep, and this one does:
//! - No `thread_local!` with a destructor on the host's threads (glibc keeps the library
//!   mapped while a thread has such a destructor pending); the one exception is
//!   `touch_thread_local`, which exists to show that hazard and which the host's workers never
//!   call. Nor anything in `std` that keeps per-thread state with a destructor (printing,
//!   `std::thread::current`): the callbacks only compute, read their state and the clock.
//! - No unwinding into the host: every function is `extern "C"`, which aborts on a panic, and
//!   none has a panic path of its own (wrapping arithmetic).
//! - State it allocates is freed by its own `destroy`, which the host calls before unloading.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[path = "../../examples/plugin_host/abi.rs"]
mod abi;

use std::cell::RefCell;
use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicU32, Ordering::Release};
use std::time::{Duration, Instant};

/// This library's version: its package's major version.
const VERSION: u32 = parse_u32(env!("CARGO_PKG_VERSION_MAJOR"));

const NAME: &CStr = match env!("CARGO_PKG_VERSION_MAJOR").as_bytes() {
    b"1" => c"demo plugin v1",
    b"2" => c"demo plugin v2",
    b"3" => c"demo plugin v3",
    _ => c"demo plugin",
};

const fn parse_u32(s: &str) -> u32 {
    let (bytes, mut i, mut n) = (s.as_bytes(), 0, 0u32);
    while i < bytes.len() {
        n = n * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// The plugin's state: read by every call, so freeing it under a call would be a
/// use-after-free in the plugin (the host's `Drop` frees it only after the drain).
struct State {
    version: u32,
}

extern "C" fn create() -> *mut c_void {
    Box::into_raw(Box::new(State { version: VERSION })).cast()
}

/// # Safety
///
/// `state` comes from `create` and no call is using it.
unsafe extern "C" fn destroy(state: *mut c_void) {
    // SAFETY: `state` came from `Box::into_raw` in `create` (the caller's contract) and is
    // freed once.
    drop(unsafe { Box::from_raw(state.cast::<State>()) });
}

/// # Safety
///
/// `state` comes from `create` and has not been destroyed.
unsafe extern "C" fn call(state: *const c_void, x: u64) -> u64 {
    // SAFETY: a live state from `create` (the caller's contract); only read.
    let state = unsafe { &*state.cast::<State>() };
    abi::answer(state.version, x)
}

/// # Safety
///
/// As for `call`; `entered` is null or valid for atomic access for the whole call.
unsafe extern "C" fn call_slow(
    state: *const c_void,
    x: u64,
    entered: *mut u32,
    micros: u64,
) -> u64 {
    if !entered.is_null() {
        // SAFETY: non-null, valid and only accessed atomically (the caller's contract).
        // Release: pairs with the host's Acquire load that waits for it, so the host knows
        // this thread is now running the library's code.
        unsafe { AtomicU32::from_ptr(entered) }.store(1, Release);
    }
    let (start, limit) = (Instant::now(), Duration::from_micros(micros));
    // The bounded spin an unload races: the loop is this library's text.
    while start.elapsed() < limit {
        std::hint::spin_loop();
    }
    // SAFETY: as for `call` (the caller's contract).
    unsafe { call(state, x) }
}

thread_local! {
    /// The hazard (see `touch_thread_local`): a value with a destructor.
    static SCRATCH: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

extern "C" fn touch_thread_local() -> u64 {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.push(u64::from(VERSION));
        s.len() as u64
    })
}

/// The entry point: see [`abi::EntryFn`].
///
/// # Safety
///
/// `out` is valid for a write of a `PluginApi`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn drainable_plugin_entry(host_abi: u32, out: *mut abi::PluginApi) -> i32 {
    if host_abi != abi::ABI_VERSION || out.is_null() {
        return -1;
    }
    let api = abi::PluginApi {
        version: VERSION,
        name: NAME.as_ptr(),
        create,
        destroy,
        call,
        call_slow,
        touch_thread_local,
    };
    // SAFETY: `out` is non-null and valid for the write (the caller's contract).
    unsafe { out.write(api) };
    0
}

// The entry point has the type the host calls it through.
const _: abi::EntryFn = drainable_plugin_entry;
