//! Debug-build detection of the one deadlock this crate can see coming: a thread that waits for
//! a drainable to drain while it holds a [`Guard`](crate::Guard) of that same drainable.
//!
//! Each thread keeps a small list of the addresses of the drainables it holds borrowed guards
//! on. `Guard` is `!Send`, so a guard is always dropped on the thread that took it and the list
//! is exact. [`OwnedGuard`](crate::OwnedGuard)s are `Send` and can move without a trace, so they
//! are not tracked: attributing them to the taking thread could make a correct program panic.
//!
//! Costs a thread-local push and pop per guard in builds with `debug_assertions`; compiled out
//! in release builds and under loom.

#[cfg(all(debug_assertions, not(drainable_loom)))]
mod imp {
    use std::cell::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    #[inline]
    pub(crate) fn acquired(addr: usize) {
        // During thread teardown the list may be gone; tracking is best-effort there.
        let _ = HELD.try_with(|h| h.borrow_mut().push(addr));
    }

    #[inline]
    pub(crate) fn released(addr: usize) {
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&a| a == addr) {
                h.swap_remove(i);
            }
        });
    }

    pub(crate) fn held(addr: usize) -> usize {
        HELD.try_with(|h| h.borrow().iter().filter(|&&a| a == addr).count())
            .unwrap_or(0)
    }
}

#[cfg(not(all(debug_assertions, not(drainable_loom))))]
mod imp {
    #[inline(always)]
    pub(crate) fn acquired(_addr: usize) {}
    #[inline(always)]
    pub(crate) fn released(_addr: usize) {}
    #[inline(always)]
    pub(crate) fn held(_addr: usize) -> usize {
        0
    }
}

pub(crate) use imp::{acquired, released};

/// Panics if the current thread holds a borrowed guard of the drainable at `addr`, naming the
/// operation that would have deadlocked.
#[track_caller]
pub(crate) fn assert_not_held(addr: usize, op: &str) {
    let n = imp::held(addr);
    if n > 0 {
        panic!(
            "drainable: {op} called on a thread that holds {n} Guard(s) of the same Drainable; \
             it would wait forever for a guard only this thread can drop. Drop the guard first, \
             or use a timed drain."
        );
    }
}
