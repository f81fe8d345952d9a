//! The crate's lock: `std`'s `Mutex` (loom's under loom) without poisoning.

#[cfg(drainable_loom)]
use loom::sync as imp;
#[cfg(not(drainable_loom))]
use std::sync as imp;

use std::fmt;
use std::sync::{PoisonError, TryLockError};

/// The guard of a [`Mutex`]: `std`'s (or loom's) own.
pub(crate) use imp::MutexGuard;

/// A mutex whose [`lock`](Mutex::lock) recovers from poison: it returns the guard even when a
/// thread panicked while holding the lock.
///
/// Sound because no critical section of this crate panics halfway through a change, so a
/// lock that a panicking thread held guards consistent data. Each user:
///
/// - `table.rs`, a shard of the side table: plain arithmetic on an entry, `Vec` push and
///   retain;
/// - `counter/per_cpu/mod.rs`, the control lock of `PerCpu` (`Mutex<()>`): the only panic left
///   under it is the signal barrier's "no sound barrier", which changes nothing before it;
/// - `grace/domain.rs`, a domain's step lock: plain arithmetic on `Steps`, and folds and
///   unfolds whose only panics are `debug_assert!`s of invariants already broken;
/// - `grace/cell.rs`, a cell's writer lock (`Mutex<()>`, no data): a panic in `update`'s closure
///   comes before the new value is published, and leaves the value unchanged;
/// - `futex/parking.rs`, the parking table: `Vec` push and retain;
/// - `registry/mod.rs`, a registry's control lock, once it uses this type: its only panic (a full
///   registry) comes before any change.
///
/// Poisoning is not a memory-safety mechanism, so recovering is always memory-safe; the list
/// above is why it is also correct. A new critical section that can panic midway must not use
/// this type.
pub(crate) struct Mutex<T>(imp::Mutex<T>);

impl<T> Mutex<T> {
    super::const_fn! {
        /// A new, unlocked mutex; a `const fn` except under loom.
        pub(crate) const fn new(value: T) -> Self {
            Mutex(imp::Mutex::new(value))
        }
    }

    /// Locks, blocking until the lock is free; a poisoned lock is taken as it is (see the
    /// type's docs).
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks if the lock is free right now; `None` if another thread holds it. A poisoned lock
    /// is taken as it is.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

/// As the inner mutex's, so `Debug` output is unchanged.
impl<T: fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
