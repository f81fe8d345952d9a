//! loom has no futex. A waiter sleeps on one model-wide condition variable after checking the
//! word under its mutex; a waker takes the mutex after its decrement and notifies everyone.
//! That keeps the futex's no-lost-wake-up property, so a missing wake is a loom deadlock.

use crate::platform::{AtomicU32, Ordering};
use loom::sync::{Condvar, Mutex};
use std::time::Instant;

loom::lazy_static! {
    static ref LOCK: Mutex<()> = Mutex::new(());
    static ref COND: Condvar = Condvar::new();
}

pub(super) fn wait(word: &AtomicU32, expected: u32) {
    let guard = LOCK.lock().unwrap();
    // Relaxed: the mutex orders this load after any waker's decrement.
    if word.load(Ordering::Relaxed) == expected {
        drop(COND.wait(guard).unwrap());
    }
}

pub(super) fn wake_all(_word: *const AtomicU32) {
    let _guard = LOCK.lock().unwrap();
    COND.notify_all();
}

/// loom has no time: a timed wait is modelled as "the deadline passed at once".
pub(crate) fn wait_until(_word: &AtomicU32, _expected: u32, _deadline: Instant) -> bool {
    true
}
