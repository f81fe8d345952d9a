//! The futex for tasks: an async waiter registers its task's [`Waker`] under the address of
//! the word it waits on, in a table outside every object (as Linux's `wait_var_event` keeps its
//! wait queues in a table hashed by address), and every [`wake_all`](super::wake_all) on that
//! address wakes it. So an async wait adds nothing to the object waited on (a `Drainable<()>`
//! stays one word) and nothing to the path of a release that wakes nobody.
//!
//! # The promise
//!
//! As the futex's: a waiter that saw the expected value and a waker that changed the word
//! before waking never miss each other.
//!
//! - The waiter, in [`TaskWaiter::poll`], puts its waker in the address's bucket and counts
//!   it there, then runs a `SeqCst` fence, then reads the word.
//! - The waker, in [`wake_all`], runs after its change to the word: a `SeqCst` fence, then it
//!   reads the bucket's count, and wakes every waker filed under the address.
//!
//! The two fences are ordered one way or the other: either the waker's count read sees the
//! waiter's entry, or the waiter's word read sees the waker's change (and the waiter does not
//! sleep). That is the store-buffering pattern, which `SeqCst` fences on both sides rule out.
//!
//! # Addresses are reused
//!
//! A bucket entry names an address, not an object: the object may be freed while a late
//! releaser of it still wakes its address, and a new object may be made at the same address
//! with a waiter of its own. So a wake never *removes* an entry (which could consume the wake of
//! the new object's waiter); it wakes each matching waker and leaves it in place. The entry's
//! owner removes it ([`TaskWaiter`]'s `Drop`, when its future completes or is dropped). A wake
//! meant for an old object is then at worst a spurious wake of the new one's waiter, which
//! re-checks its own word and files its waker again: never a lost one.
//!
//! Wakers are woken after the bucket's lock is released (an executor may poll the woken task
//! at once, on this thread, and that poll takes the lock).

use crate::platform::{self, AtomicU32, AtomicUsize, Mutex, Ordering};
use std::task::{Context, Poll, Waker};

/// Buckets of the table (a power of two). One under loom, so that its scenarios put every
/// address in one bucket: the reuse of addresses above is then exercised by any two objects.
const BUCKETS: usize = if platform::LOOM { 1 } else { 64 };

struct Entry {
    /// The waiter's number ([`TaskWaiter::key`]), unique in the process.
    key: u64,
    /// The address waited on.
    address: usize,
    waker: Waker,
}

struct Bucket {
    /// Entries in `entries`, readable without the lock (see the module docs).
    filed: AtomicUsize,
    entries: Mutex<Vec<Entry>>,
}

impl Bucket {
    platform::const_fn! {
        const fn new() -> Self {
            Bucket {
                filed: AtomicUsize::new(0),
                entries: Mutex::new(Vec::new()),
            }
        }
    }
}

platform::process_wide! {
    fn buckets() -> &'static [Bucket; BUCKETS] = [Bucket::new(); BUCKETS];
}

fn bucket(address: usize) -> &'static Bucket {
    // Words are 4-byte aligned; drop the bits that never differ, then fold the rest.
    let h = (address >> 2) ^ (address >> 12);
    &buckets()[h & (BUCKETS - 1)]
}

/// One async wait's place in the table: at most one entry, under the address it last waited
/// on. Removed when the waiter is dropped (so a future that completes or is cancelled leaves
/// nothing behind) or moved when it waits on another address.
#[derive(Debug)]
pub(crate) struct TaskWaiter {
    key: u64,
    /// The address of the entry filed, if any.
    filed: Option<usize>,
}

impl TaskWaiter {
    /// A waiter with nothing filed.
    pub(crate) fn new() -> Self {
        TaskWaiter {
            key: platform::unique_id(),
            filed: None,
        }
    }

    /// The task form of [`wait`](super::wait): `Ready` if `word` no longer holds `expected`
    /// (re-check the condition), else files the task's waker under the word's address and
    /// returns `Pending`; a [`wake_all`](super::wake_all) on the address wakes the task.
    /// May wake spuriously: callers re-check their condition on every poll.
    pub(crate) fn poll(
        &mut self,
        word: &AtomicU32,
        expected: u32,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let address = word as *const AtomicU32 as usize;
        if self.filed.is_some_and(|a| a != address) {
            self.remove();
        }
        let bucket = bucket(address);
        let mut entries = bucket.entries.lock();
        // A waker this replaces, dropped after the lock is released, as in `remove`.
        let mut replaced = None;
        match entries.iter_mut().find(|e| e.key == self.key) {
            Some(entry) => {
                if !entry.waker.will_wake(cx.waker()) {
                    replaced = Some(std::mem::replace(&mut entry.waker, cx.waker().clone()));
                }
            }
            None => {
                entries.push(Entry {
                    key: self.key,
                    address,
                    waker: cx.waker().clone(),
                });
                // Relaxed: the fence below orders it before the word's read.
                bucket.filed.fetch_add(1, Ordering::Relaxed);
                self.filed = Some(address);
            }
        }
        // SeqCst: pairs with the fence in `wake_all` (module docs: one of the two sides sees
        // the other).
        platform::fence(Ordering::SeqCst);
        // Acquire: as the futex's callers read the word after a wait.
        let now = word.load(Ordering::Acquire);
        drop(entries);
        drop(replaced);
        if now == expected {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    fn remove(&mut self) {
        let Some(address) = self.filed.take() else {
            return;
        };
        let bucket = bucket(address);
        let mut entries = bucket.entries.lock();
        if let Some(i) = entries.iter().position(|e| e.key == self.key) {
            // The waker is dropped after the lock is released (it may be the last reference
            // to an executor's task, whose drop may do anything).
            let entry = entries.swap_remove(i);
            // Relaxed: a stale non-zero only costs a waker one lock.
            bucket.filed.fetch_sub(1, Ordering::Relaxed);
            drop(entries);
            drop(entry);
        }
    }
}

impl Drop for TaskWaiter {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Wakes every task filed under `word`'s address. Called after the change that the waiters
/// wait for; `word` may be dangling (it is only a key).
pub(crate) fn wake_all(word: *const AtomicU32) {
    let address = word as usize;
    let bucket = bucket(address);
    // SeqCst: pairs with the fence in `TaskWaiter::poll` (module docs).
    platform::fence(Ordering::SeqCst);
    // Relaxed: ordered by the fence.
    if bucket.filed.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut woken: Vec<Waker> = Vec::new();
    {
        let entries = bucket.entries.lock();
        woken.extend(
            entries
                .iter()
                .filter(|e| e.address == address)
                .map(|e| e.waker.clone()),
        );
    }
    for waker in woken {
        waker.wake();
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize as StdUsize;
    use std::task::Wake;

    struct Count(StdUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(StdUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_changed_word_is_ready_and_an_unchanged_one_is_woken() {
        let word = AtomicU32::new(5);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut waiter = TaskWaiter::new();
        assert_eq!(waiter.poll(&word, 4, &mut cx), Poll::Ready(()));
        assert_eq!(waiter.poll(&word, 5, &mut cx), Poll::Pending);
        word.store(6, Ordering::Relaxed);
        wake_all(&word);
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        // A wake leaves the entry in place: a second wake wakes again (never consumed).
        wake_all(&word);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        drop(waiter);
        wake_all(&word);
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            2,
            "a dropped waiter is never woken"
        );
    }

    /// The last reference to a task, dropped, may run anything, a wake of the table included:
    /// a waker that a poll replaces (the future moved to another task) is dropped after the
    /// bucket's lock is released. Dropped under it, this test deadlocks (or std's mutex panics).
    #[test]
    fn a_replaced_waker_is_dropped_outside_the_lock() {
        struct WakesOnDrop(&'static AtomicU32);
        impl Wake for WakesOnDrop {
            fn wake(self: Arc<Self>) {}
        }
        impl Drop for WakesOnDrop {
            fn drop(&mut self) {
                wake_all(self.0);
            }
        }
        static OTHER: AtomicU32 = AtomicU32::new(0);
        let word = AtomicU32::new(0);
        let mut waiter = TaskWaiter::new();
        let first = Waker::from(Arc::new(WakesOnDrop(&OTHER)));
        assert!(
            waiter
                .poll(&word, 0, &mut Context::from_waker(&first))
                .is_pending()
        );
        drop(first); // the table holds the last reference now
        let (count, second) = waker();
        assert!(
            waiter
                .poll(&word, 0, &mut Context::from_waker(&second))
                .is_pending()
        );
        wake_all(&word);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "the new waker is filed");
    }

    #[test]
    fn only_the_waiters_of_the_address_are_woken() {
        let words = [AtomicU32::new(0), AtomicU32::new(0)];
        let (a, wa) = waker();
        let (b, wb) = waker();
        let mut wa_ = TaskWaiter::new();
        let mut wb_ = TaskWaiter::new();
        assert!(
            wa_.poll(&words[0], 0, &mut Context::from_waker(&wa))
                .is_pending()
        );
        assert!(
            wb_.poll(&words[1], 0, &mut Context::from_waker(&wb))
                .is_pending()
        );
        wake_all(&words[0]);
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        assert_eq!(b.0.load(Ordering::Relaxed), 0);
        // Moving to another address takes the entry along.
        assert!(
            wa_.poll(&words[1], 0, &mut Context::from_waker(&wa))
                .is_pending()
        );
        wake_all(&words[0]);
        assert_eq!(a.0.load(Ordering::Relaxed), 1);
        wake_all(&words[1]);
        assert_eq!(
            (a.0.load(Ordering::Relaxed), b.0.load(Ordering::Relaxed)),
            (2, 1)
        );
    }
}
