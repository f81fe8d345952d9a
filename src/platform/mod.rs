//! The one place that names the platform: atomics, fences, the futex wait and wake, and the
//! spin hint. Under `--cfg drainable_loom` every item is swapped for a loom model, so the
//! rest of the crate is written once and model-checked as it is.
//!
//! Nothing outside this module names `std::sync::atomic`, `loom`, `libc` or `atomic-wait`.

pub(crate) mod cpu;
mod futex;
mod membarrier;
mod mutex;
mod signal_barrier;

pub(crate) use membarrier::{
    heavy_barrier, heavy_barrier_registered, light_barrier, watch_forks, Handshake, Owners,
};
pub(crate) use mutex::{Mutex, MutexGuard, PoisoningMutex};

#[cfg(not(drainable_loom))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

#[cfg(drainable_loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

/// Only the real builds use it: under Miri and loom the acquirer side runs a full fence.
#[cfg(not(any(miri, drainable_loom)))]
pub(crate) use std::sync::atomic::compiler_fence;

/// Under loom, the registry's slots are loom's checked cells: loom then reports a write to a
/// slot's value (registering, removing) that is not ordered with a caller's read of it.
#[cfg(drainable_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std`'s `UnsafeCell` behind loom's closure API, so that code written for loom's checked
/// cell runs unchanged in real builds.
#[cfg(not(drainable_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(drainable_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a pointer to read the value through.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a pointer to write the value through.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A process-wide unique, non-zero number (a registry's identity).
///
/// A `std` atomic even under loom: the number only has to differ from every other one, it
/// takes part in no protocol that loom should explore, and a `static` cannot hold a loom
/// atomic. A `u64` incremented once per registry never wraps.
pub(crate) fn unique_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    // Relaxed: only uniqueness matters, which the RMW gives.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How many times a waiter re-reads the word before it goes to sleep. A guard is usually held
/// for nanoseconds, so a short spin often saves the two system calls of a sleep and a wake.
/// Under loom the spin is pointless (every read is an explored interleaving), and under Miri
/// it only slows the interpreter down.
#[cfg(not(any(drainable_loom, miri)))]
pub(crate) const SPIN_LIMIT: u32 = 100;
#[cfg(any(drainable_loom, miri))]
pub(crate) const SPIN_LIMIT: u32 = 0;

/// A hint that this thread is spinning on a word another thread will change.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(drainable_loom))]
    std::hint::spin_loop();
    #[cfg(drainable_loom)]
    loom::thread::yield_now();
}

/// Declares a `const fn` that loses its `const` under loom, whose atomics have no `const`
/// constructor. Real builds keep `Drainable::new` usable in a `static`.
macro_rules! const_fn {
    ($(#[$attr:meta])* $vis:vis const fn $($rest:tt)*) => {
        #[cfg(not(drainable_loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(drainable_loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn;

#[cfg(all(test, not(drainable_loom)))]
pub(crate) use futex::wakes;
pub(crate) use futex::{wait, wait_until, wake_all};
