//! The backlog of deferred drops of a [`GraceDomain`](super::GraceDomain): values retired with
//! `retire` / `GraceCell::store` (and cancelled `replace_async` futures), each waiting for one
//! grace period of the domain.
//!
//! # Protocol
//!
//! - **Push** (`GraceDomain::defer`, under the domain's step lock, which also guards the backlog):
//!   the entry's *target* is `Steps::started + 1`, the first grace period that starts after the
//!   push. The caller unpublished the value before the push, so that grace period waits for
//!   every section that could see it. Targets are read under the step lock, which every start
//!   of a grace period holds, so they never decrease along the queue: the queue is in target
//!   order and the ready entries are a prefix.
//! - **Batch**: entries with the newest target form the *open batch*. A push does not ask for
//!   a grace period until the open batch holds `BATCH` entries (or the backlog is at its
//!   limit): one fold of the slots serves a whole batch. Any call on the domain that finds a
//!   grace period complete starts the next one asked for, so batches advance on later calls
//!   without a background thread.
//! - **Collect** (`GraceDomain::collect`): under the domain's *drop lock* (`try_lock`: one
//!   collector at a time; the others go on), take the ready prefix (`target <= completed`,
//!   `completed` loaded `Acquire`: pairs with the `Release` that counted the grace period
//!   complete, so every access of the sections it waited for happens-before the drops), release
//!   the step lock, and drop the values *still holding the drop lock*.
//! - **Barrier** (`GraceDomain::barrier`): wait for a grace period that starts after the call
//!   (every entry pushed before then has a target no later), then take the drop lock
//!   (blocking), take the ready prefix and drop it. Holding the drop lock means no other
//!   collector is between taking entries and dropping them, so every entry pushed before the
//!   call has been dropped: by an earlier collector that finished, or by the barrier.
//!
//! Lock order: drop lock → step lock (which guards the backlog). A deferred `Drop` may retire
//! more values (the step lock, under the drop lock); nothing takes the drop lock while holding
//! either of the others.

use std::collections::VecDeque;
use std::ptr::NonNull;

/// How many values one grace period is asked for at once: a push asks for a grace period when
/// the open batch reaches this size. Small under loom and Miri so that the batch paths run.
pub(super) const BATCH: usize = if crate::platform::MODEL { 2 } else { 32 };

/// One deferred value and the grace period it waits for.
struct Entry {
    /// The number of the grace period after which the value may be dropped.
    target: u64,
    value: Retired,
}

/// A value the backlog owns, type-erased: a pointer from `Box::into_raw` and the function that
/// boxes it again and drops it. Not a `Box<dyn Send>`: a `Box` asserts unique access from the
/// moment it exists (Stacked Borrows retags it `Unique`), and readers may still hold `&T` into
/// the value until its grace period ends, so the box is rebuilt only in [`Drop`], after it.
pub(crate) struct Retired {
    ptr: NonNull<()>,
    drop: unsafe fn(NonNull<()>),
    /// `size_of::<T>()`, for `heap_bytes`.
    size: usize,
}

// SAFETY: a `Retired` owns a `T: Send` (see `from_raw`) and only drops it, which `Send` allows
// on any thread.
unsafe impl Send for Retired {}

impl Retired {
    /// Takes ownership of `value`, boxing it.
    pub(crate) fn new<T: Send + 'static>(value: T) -> Self {
        // SAFETY: a fresh box, owned by nobody else.
        unsafe { Self::from_raw(Box::into_raw(Box::new(value))) }
    }

    /// Takes ownership of the box behind `ptr` without rebuilding it.
    ///
    /// # Safety
    ///
    /// `ptr` comes from `Box::<T>::into_raw` and the caller gives up its ownership: nothing
    /// else frees it or writes through it (readers may still read it until the grace period
    /// the backlog waits for).
    pub(crate) unsafe fn from_raw<T: Send + 'static>(ptr: *mut T) -> Self {
        /// # Safety
        /// `p` is a `Retired`'s pointer to a `T`, dropped once.
        unsafe fn drop_box<T>(p: NonNull<()>) {
            // SAFETY: from `Box::<T>::into_raw` (`from_raw`'s contract); the last owner.
            drop(unsafe { Box::from_raw(p.cast::<T>().as_ptr()) });
        }
        Retired {
            // SAFETY: `Box::into_raw` never returns null.
            ptr: unsafe { NonNull::new_unchecked(ptr.cast()) },
            drop: drop_box::<T>,
            size: std::mem::size_of::<T>(),
        }
    }
}

impl Drop for Retired {
    fn drop(&mut self) {
        // SAFETY: `drop` is the function `from_raw` paired with this pointer; it runs once.
        unsafe { (self.drop)(self.ptr) }
    }
}

/// The queue of deferred values, in target order (see the module docs). Changed only under
/// the domain's step lock.
pub(super) struct Backlog {
    entries: VecDeque<Entry>,
    /// The sum of the boxed values' sizes, for `heap_bytes`.
    value_bytes: usize,
    /// The target of the open batch, and how many entries it holds.
    open_target: u64,
    open_len: usize,
}

impl Backlog {
    pub(super) const fn new() -> Self {
        Backlog {
            entries: VecDeque::new(),
            value_bytes: 0,
            open_target: 0,
            open_len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Queues `value` for grace period `target`, which must be no earlier than the last
    /// entry's. Returns how many entries wait for `target` now (the open batch's size).
    pub(super) fn push(&mut self, target: u64, value: Retired) -> usize {
        debug_assert!(self.entries.back().is_none_or(|e| e.target <= target));
        self.value_bytes += value.size;
        self.entries.push_back(Entry { target, value });
        if self.open_target == target {
            self.open_len += 1;
        } else {
            self.open_target = target;
            self.open_len = 1;
        }
        self.open_len
    }

    /// Removes the entries whose grace period has completed (`target <= completed`) and returns
    /// their values, to drop outside the step lock.
    pub(super) fn take_ready(&mut self, completed: u64) -> Vec<Retired> {
        let n = self.entries.partition_point(|e| e.target <= completed);
        let ready: Vec<_> = self.entries.drain(..n).map(|e| e.value).collect();
        for value in &ready {
            self.value_bytes -= value.size;
        }
        if self.entries.is_empty() {
            self.open_len = 0;
        }
        ready
    }

    /// The oldest entry's target, `u64::MAX` when there is none: nothing is due before
    /// `completed` reaches it.
    pub(super) fn front_target(&self) -> u64 {
        self.entries.front().map_or(u64::MAX, |e| e.target)
    }

    /// Heap bytes: the queue's buffer and the boxed values (not what the values own).
    pub(super) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>() + self.value_bytes
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;

    #[test]
    fn ready_entries_are_a_prefix_and_bytes_balance() {
        let mut b = Backlog::new();
        assert_eq!(b.push(1, Retired::new(1u64)), 1);
        assert_eq!(b.push(1, Retired::new(2u64)), 2);
        assert_eq!(b.push(2, Retired::new([0u8; 32])), 1);
        assert_eq!(b.len(), 3);
        assert!(b.heap_bytes() >= 8 + 8 + 32);
        assert!(b.take_ready(0).is_empty());
        assert_eq!(b.take_ready(1).len(), 2);
        assert_eq!(b.value_bytes, 32);
        assert_eq!(b.take_ready(5).len(), 1);
        assert_eq!((b.len(), b.value_bytes, b.open_len), (0, 0, 0));
    }
}
