//! A portable timed wait for platforms where `atomic-wait` has no timeout (its issue #4: macOS
//! has no public timed futex). Waiters register in a process-wide table under a lock; the
//! waker takes the same lock after its decrement, so a waiter either sees the new value or is
//! in the table when the waker looks. Only the cold paths (a timed drain, the final wake) use it.

use crate::platform::{AtomicU32, Mutex, MutexGuard, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

/// A panic while holding this lock cannot leave the table inconsistent (push/retain).
static PARKED: Mutex<Vec<(usize, Thread)>> = Mutex::new(Vec::new());

fn table() -> MutexGuard<'static, Vec<(usize, Thread)>> {
    PARKED.lock()
}

pub(super) fn park_timeout(word: &AtomicU32, expected: u32, timeout: Duration) {
    let key = word as *const AtomicU32 as usize;
    {
        let mut t = table();
        // Relaxed: the table lock orders this load after any waker's decrement.
        if word.load(Ordering::Relaxed) != expected {
            return;
        }
        t.push((key, thread::current()));
    }
    thread::park_timeout(timeout);
    let me = thread::current().id();
    table().retain(|(k, th)| !(*k == key && th.id() == me));
}

pub(super) fn unpark_all(word: *const AtomicU32) {
    let key = word as usize;
    let t = table();
    for (_, th) in t.iter().filter(|(k, _)| *k == key) {
        th.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn times_out_when_nobody_wakes() {
        let w = AtomicU32::new(7);
        let start = Instant::now();
        park_timeout(&w, 7, Duration::from_millis(5));
        assert!(start.elapsed() >= Duration::from_millis(5) || cfg!(miri));
    }

    #[test]
    fn returns_at_once_when_the_value_differs() {
        let w = AtomicU32::new(1);
        park_timeout(&w, 2, Duration::from_secs(3600));
    }

    #[test]
    fn unpark_wakes_a_parked_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = thread::spawn(move || {
            while w2.load(Ordering::Acquire) == 0 {
                park_timeout(&w2, 0, Duration::from_secs(3600));
            }
        });
        w.store(1, Ordering::Release);
        unpark_all(&*w);
        t.join().unwrap();
    }
}
