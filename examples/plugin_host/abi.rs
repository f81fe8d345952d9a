//! The C ABI between the plugin host (`examples/plugin_host/`) and the demo plugins
//! (`plugins/`). Both include this one file with `#[path]`, so both sides compile the same
//! definitions; a real plugin system would put it in a crate of its own (or a C header).
//!
//! The host calls the exported [`ENTRY`] once per load. It fills in a [`PluginApi`]: plain
//! `extern "C"` function pointers and a pointer to the plugin's name, all of which point into
//! the library's own text and read-only data, and so are valid only while it is loaded. The
//! Rust types say nothing about that: an `extern "C" fn` pointer is `'static` to the compiler.
//! Keeping them from outliving the library is the host's job (`plugin.rs`).

// Each side uses part of the ABI: the host never implements it, the plugin never checks it.
#![allow(dead_code)]

use std::ffi::{c_char, c_void};

/// The symbol of the entry point: [`EntryFn`].
pub const ENTRY: &[u8] = b"drainable_plugin_entry\0";

/// Bumped on any change to [`PluginApi`]; a plugin refuses a host of another version.
pub const ABI_VERSION: u32 = 1;

/// `drainable_plugin_entry(host_abi, out) -> status`: writes the plugin's callbacks to `out`
/// and returns 0, or returns non-zero without writing when `host_abi` is not its
/// [`ABI_VERSION`].
///
/// # Safety
///
/// `out` is valid for a write of a `PluginApi`.
pub type EntryFn = unsafe extern "C" fn(host_abi: u32, out: *mut PluginApi) -> i32;

/// What a plugin hands the host. Every function is thread-safe (the state is immutable once
/// created) and does not unwind: a panic inside an `extern "C"` function aborts the process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PluginApi {
    /// The plugin's version (1, 2, 3): every answer it gives is [`answer`]`(version, x)`.
    pub version: u32,
    /// A NUL-terminated name in the library's read-only data: copy it, do not keep it.
    pub name: *const c_char,
    /// Creates the plugin's state (on the plugin's heap, read by every call).
    pub create: extern "C" fn() -> *mut c_void,
    /// Frees a state from `create`. No call may be using it, and it must run before the
    /// library is unloaded (it is the plugin's code).
    pub destroy: unsafe extern "C" fn(state: *mut c_void),
    /// The fast callback: returns [`answer`]`(version, x)`.
    pub call: unsafe extern "C" fn(state: *const c_void, x: u64) -> u64,
    /// The slow callback: stores 1 into `*entered` (Release) unless it is null, then spins in
    /// the plugin's own code for `micros` microseconds, then returns [`answer`]`(version, x)`.
    /// It is what an unload races: a caller is then known to be inside the library.
    pub call_slow:
        unsafe extern "C" fn(state: *const c_void, x: u64, entered: *mut u32, micros: u64) -> u64,
    /// The thread-local hazard, on purpose: touches a `thread_local!` whose value has a
    /// destructor, which registers that destructor with the C library for the calling thread.
    /// glibc then keeps the library mapped, whatever `dlclose` says, until that thread exits.
    /// The host's workers never call it; `tests/plugin_host.rs` does, to show the effect.
    pub touch_thread_local: extern "C" fn() -> u64,
}

/// What version `version` of the plugin answers to `x` (below 2^50): a value that names the
/// version, so a call that ran another library's code shows.
pub const fn answer(version: u32, x: u64) -> u64 {
    x.wrapping_mul(1000).wrapping_add(version as u64)
}

// SAFETY: the name is immutable data and every function is thread-safe (the plugin's contract
// above); the struct holds no state of its own.
unsafe impl Send for PluginApi {}
// SAFETY: as for `Send`: nothing in it is mutated through a shared reference.
unsafe impl Sync for PluginApi {}
