//! Every platform but Linux and Android: `atomic-wait`, which wraps the OS's wait-on-address
//! (`WaitOnAddress` on Windows, `__ulock` on macOS, `_umtx_op` on FreeBSD, a futex elsewhere),
//! and the parking table for timed waits, which `atomic-wait` has not.

use super::parking;
use crate::platform::AtomicU32;
use std::time::Duration;

#[inline]
pub(super) fn wait(word: &AtomicU32, expected: u32) {
    atomic_wait::wait(word, expected);
}

/// Wakes both kinds of waiter: those in `atomic-wait` and those parked with a timeout.
#[inline]
pub(super) fn wake_all(word: *const AtomicU32) {
    atomic_wait::wake_all(word);
    parking::unpark_all(word);
}

pub(super) fn wait_timeout(word: &AtomicU32, expected: u32, timeout: Duration) {
    parking::park_timeout(word, expected, timeout);
}
