//! The futex calls, made directly on Linux and Android. `atomic-wait` 1.1 (used on the other
//! platforms) passes `&AtomicU32` where the kernel ABI says `u32 *`; current Miri checks
//! variadic argument types and rejects that, so here the exact types are passed.

use crate::platform::AtomicU32;
use std::time::Duration;

#[inline]
pub(super) fn wait(word: &AtomicU32, expected: u32) {
    futex_wait(word, expected, None);
}

pub(super) fn wait_timeout(word: &AtomicU32, expected: u32, timeout: Duration) {
    futex_wait(word, expected, Some(timeout));
}

/// `FUTEX_WAKE` of every waiter on `word`. Counts no wake (it is also the signal barrier's
/// wake, made from a signal handler: one system call, async-signal-safe).
#[inline]
pub(crate) fn wake_all(word: *const AtomicU32) {
    // SAFETY: FUTEX_WAKE uses the address only as a key and never dereferences it, so
    // a dangling `word` (the drainer may have freed it) is fine; the cast keeps the
    // address. `AtomicU32` has the layout of `u32`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word as *mut u32,
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    // A relative timeout; values past the range of `time_t` are clamped (years away).
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT reads the u32 behind `word` (kept alive by the reference for
    // the call) and the timespec (on this frame, or null for no timeout). Every error
    // (EAGAIN: the value changed, EINTR, ETIMEDOUT) returns to the caller's re-check.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
        );
    }
}
