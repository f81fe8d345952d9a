//! Debug-build detection of the one deadlock this crate can see coming: a thread that waits for
//! a drainable to drain while it holds a [`Guard`](crate::Guard) of that same drainable (or a
//! grace period inside its own read section).
//!
//! Each thread keeps a small list of the *keys* of the drainables and grace domains it holds
//! borrowed guards on. `Guard` is `!Send`, so a guard is always dropped on the thread that
//! took it and the list is exact. [`OwnedGuard`](crate::OwnedGuard)s are `Send` and can move
//! without a trace, so they are not tracked: attributing them to the taking thread could make a
//! correct program panic.
//!
//! A key is a process-wide unique number ([`crate::platform::unique_id`]), never an address: a
//! guard leaked with `mem::forget` stays in its thread's list for good, and a later, unrelated
//! drainable at the same address (a reused stack slot or allocation) must not be taken for the
//! one it belonged to. A drainable gets its key the first time a guard of it is tracked, so
//! `Drainable::new` stays a `const fn`; a grace domain uses the id it has anyway.
//!
//! Costs, in builds with `debug_assertions`: 8 bytes per drainable for its key, and a
//! thread-local push and pop per guard. In release builds and under loom, [`Key`] is zero-sized
//! and every function here is empty (the key type, [`DebugId`], is the platform facade's).

use crate::platform::DebugId;
use std::cell::RefCell;

/// A drainable's key, assigned on first use; zero-sized where nothing is tracked.
pub(crate) type Key = DebugId;

/// Whether guards are tracked at all: with `debug_assertions`, and not under loom (see
/// [`DebugId`]). Everything below is empty where they are not.
const TRACKING: bool = DebugId::ENABLED;

thread_local! {
    static HELD: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

#[inline(always)]
pub(crate) fn acquired(key: u64) {
    if !TRACKING {
        return;
    }
    // During thread teardown the list may be gone; tracking is best-effort there.
    let _ = HELD.try_with(|h| h.borrow_mut().push(key));
}

#[inline(always)]
pub(crate) fn released(key: u64) {
    if !TRACKING {
        return;
    }
    let _ = HELD.try_with(|h| {
        let mut h = h.borrow_mut();
        if let Some(i) = h.iter().rposition(|&k| k == key) {
            h.swap_remove(i);
        }
    });
}

#[inline]
fn held(key: u64) -> usize {
    if !TRACKING {
        return 0;
    }
    HELD.try_with(|h| h.borrow().iter().filter(|&&k| k == key).count())
        .unwrap_or(0)
}

/// Panics if the current thread holds a borrowed guard of the drainable (or read section of
/// the domain) with `key`, naming the operation that would have deadlocked.
#[track_caller]
pub(crate) fn assert_not_held(key: u64, op: &str) {
    let n = held(key);
    if n > 0 {
        panic!(
            "drainable: {op} called on a thread that holds {n} Guard(s) of the same Drainable; \
             it would wait forever for a guard only this thread can drop. Drop the guard first, \
             or use a timed drain."
        );
    }
}
