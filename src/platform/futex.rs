//! Futex wait and wake by address: where every waiter of the crate sleeps (a drainer on a
//! lifecycle word, a grace period on its domain's word, a drainer on a record's `seq`, a signal
//! barrier on an acknowledgement). One backend per platform:
//!
//! - `linux.rs`: Linux and Android, the `futex` system call made directly through `libc`
//!   (also under Miri, which models it);
//! - `portable.rs`: everywhere else, `atomic-wait` (the OS's wait-on-address), with the parking
//!   table of `parking.rs` for the timed waits `atomic-wait` lacks;
//! - `model.rs`: under loom, a model-wide condition variable.
//!
//! Every backend keeps the futex's one promise: a waiter that saw the expected value and a
//! waker that changed it before waking never miss each other. Waits may return spuriously;
//! callers re-check their condition.

use super::AtomicU32;
#[cfg(not(drainable_loom))]
use std::time::Instant;

#[cfg(all(any(target_os = "linux", target_os = "android"), not(drainable_loom)))]
pub(super) mod linux;
#[cfg(all(any(target_os = "linux", target_os = "android"), not(drainable_loom)))]
use linux as backend;

#[cfg(all(
    not(any(target_os = "linux", target_os = "android")),
    not(drainable_loom)
))]
mod portable;
#[cfg(all(
    not(any(target_os = "linux", target_os = "android")),
    not(drainable_loom)
))]
use portable as backend;

/// Compiled (and tested) on Linux too, where nothing else uses it.
#[cfg(not(drainable_loom))]
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
mod parking;

#[cfg(drainable_loom)]
mod model;
#[cfg(drainable_loom)]
use model as backend;

/// Sleeps while `*word == expected`, until a [`wake_all`] on the same address. May return
/// spuriously: callers re-check their condition.
#[inline]
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    backend::wait(word, expected);
}

/// Wakes every thread sleeping in [`wait`] or [`wait_until`] on `word`.
///
/// Takes a raw pointer on purpose: the releaser that completes a drain calls this after its
/// decrement, when the drainer may already have freed the word. A futex wake only uses the
/// address as a key and never dereferences it, so a dangling pointer is fine.
#[inline]
pub(crate) fn wake_all(word: *const AtomicU32) {
    #[cfg(all(test, not(drainable_loom)))]
    wakes::count();
    backend::wake_all(word);
}

/// Like [`wait`], but gives up at `deadline`. Returns `true` when the deadline has passed.
#[cfg(not(drainable_loom))]
pub(crate) fn wait_until(word: &AtomicU32, expected: u32, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return true;
    }
    backend::wait_timeout(word, expected, deadline - now);
    Instant::now() >= deadline
}

#[cfg(drainable_loom)]
pub(crate) use model::wait_until;

/// Unit tests count the futex wakes their own thread makes: a wake on a path that should not
/// make one is a system call per operation, invisible to every functional test.
#[cfg(all(test, not(drainable_loom)))]
pub(crate) mod wakes {
    use std::cell::Cell;

    thread_local! {
        static WAKES: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count() {
        let _ = WAKES.try_with(|w| w.set(w.get() + 1));
    }

    /// Futex wakes this thread has made so far.
    pub(crate) fn made() -> u64 {
        WAKES.with(Cell::get)
    }
}
