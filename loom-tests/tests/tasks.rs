//! Loom scenarios of the async waits (issue 12): the hand-off between a task that files its
//! waker in the table of `src/platform/futex/tasks.rs` and the release that wakes it, for the
//! single-word `Drainable` and for `PerCpuDrainable` on both of its paths, the thread-local
//! record (a borrowed guard, released on the thread that took it, woken through the record's
//! `seq`) and the per-CPU slots (an owned guard, released on another thread, woken through
//! the lifecycle word). Each scenario is written once, generic over the counter, and
//! instantiated for the three kinds at the bottom of the file.
//!
//! The executor is `drainable_loom_tests::block_on` (under loom, `loom::future::block_on`):
//! its thread sleeps between polls until the waker is woken, so under loom a wake-up that is
//! lost is a deadlock. A spurious wake is only another poll. A future polled once and dropped
//! gets a waker that only counts (`Wakes`).
//!
//! (T1) a waker filed races the last release: the drain completes, after the guard's write;
//! (T2) a cancelled future races the last release: the drainable is left open, exactly as
//! after a failed `drain_timeout`, and the next drain completes;
//! (T3) an async drain and a blocking one on the same drainable both complete, and a
//! cancelled async drain leaves a blocking drain's close in place;
//! (T4) no wake after the future is gone: the table keeps no clone of its waker, and a later
//! wake of the same address does not reach it;
//! (T5) address reuse: the late wake of a freed object does not consume the waker of a new
//! object made at the same address.

use drainable::{Counter, DrainableWith};
use drainable_loom_tests::atomic::{AtomicBool, Ordering};
use drainable_loom_tests::{Cell, Wakes, block_on, model, poll_once, thread};
use std::mem::MaybeUninit;
use std::sync::Arc;

/// What the drainer writes once no guard can exist any more.
const POISON: u32 = 0xdead;

/// Entries of a thread's record under loom (`records::ENTRIES`): a thread's guards beyond
/// these are counted in the per-CPU slots.
const LOOM_ENTRIES: usize = 2;

type Canary = Arc<Cell<u32>>;
type D<C> = DrainableWith<Canary, C>;

/// Where the scenario's guard is counted, and so what its release wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `Drainable`: an owned guard dropped on another thread, counted in the one word, whose
    /// address the release wakes.
    Word,
    /// `PerCpuDrainable`, a borrowed guard taken and dropped on the releaser's thread: an
    /// entry of that thread's record, whose `seq` the release wakes.
    Record,
    /// `PerCpuDrainable`, an owned guard dropped on another thread: a per-CPU slot, folded
    /// into the central count by the close, whose last release wakes the word's address.
    Slot,
}

/// The two counters, with their constructors (each is an inherent `new` of its own type).
trait Kind: Counter + Send + Sync + 'static {
    fn make<T>(value: T) -> DrainableWith<T, Self>;
}

impl Kind for drainable::Shared {
    fn make<T>(value: T) -> DrainableWith<T, Self> {
        drainable::Drainable::new(value)
    }
}

impl Kind for drainable::PerCpu {
    fn make<T>(value: T) -> DrainableWith<T, Self> {
        drainable::PerCpuDrainable::new(value)
    }
}

fn canary<C: Kind>() -> (Arc<D<C>>, Canary) {
    let cell = Arc::new(Cell::new(0));
    (Arc::new(C::make(Arc::clone(&cell))), cell)
}

/// A thread that holds a guard of `d` (taken before this returns), writes 1 under it and
/// drops it.
fn release_elsewhere<C>(d: &Arc<D<C>>, path: Path) -> thread::JoinHandle<()>
where
    C: Kind,
{
    match path {
        Path::Word | Path::Slot => {
            let g = d.try_acquire_owned().expect("open: nobody drains yet");
            drainable_loom_tests::spawn_with(g, |g| {
                g.set(1);
                drop(g);
            })
        }
        Path::Record => {
            let held = Arc::new(AtomicBool::new(false));
            let releaser = {
                let (d, held) = (Arc::clone(d), Arc::clone(&held));
                thread::spawn(move || {
                    let g = d.try_acquire().expect("open: nobody drains yet");
                    held.store(true, Ordering::Release);
                    g.set(1);
                    drop(g);
                })
            };
            while !held.load(Ordering::Acquire) {
                thread::yield_now();
            }
            releaser
        }
    }
}

/// (T1) The task files its waker while the last guard is released on another thread. The drain
/// must complete (a lost wake-up is a loom deadlock) and the write made under the guard must
/// happen before it completes (the canary: loom reports a race otherwise).
fn a_filed_waker_races_the_last_release<C>(path: Path)
where
    C: Kind,
{
    model(move || {
        let (d, cell) = canary::<C>();
        let releaser = release_elsewhere(&d, path);
        block_on(d.drain_async());
        assert_eq!(cell.get(), 1, "the write under the guard is not visible");
        cell.set(POISON);
        assert!(d.is_drained());
        releaser.join().unwrap();
    });
}

/// (T2) The future is polled once, then dropped, while the guard is released concurrently. If
/// that poll completed, the drainable is drained; otherwise dropping the future undid its
/// close, exactly as a `drain_timeout` that failed: the drainable is open again, and nothing is
/// left behind that would keep the next drain from completing (a stuck close, or the per-CPU
/// counter's entries token never given back, is a loom deadlock of the drain below).
fn a_cancelled_drain_races_the_last_release<C>(path: Path)
where
    C: Kind,
{
    model(move || {
        let (d, cell) = canary::<C>();
        let releaser = release_elsewhere(&d, path);
        let (_wakes, waker) = Wakes::new();
        let completed = {
            let mut f = std::pin::pin!(d.drain_async());
            poll_once(f.as_mut(), &waker).is_ready()
        };
        if completed {
            assert!(d.is_drained());
            assert_eq!(cell.get(), 1);
        } else {
            assert!(d.is_open(), "a cancelled drain did not reopen");
        }
        releaser.join().unwrap();
        if !completed {
            assert!(d.is_open());
            drop(d.try_acquire().expect("open after the cancelled drain"));
            d.drain();
        }
        assert_eq!(cell.get(), 1);
        cell.set(POISON);
        assert!(d.is_drained());
    });
}

/// Whether (T3) runs its blocking drain on a thread of its own, concurrently with the task.
/// Not on the per-CPU slot path, where two drains' closes and folds on two threads, racing a
/// release on a third, took 4.5 (T3a) and 6.5 (T3b) minutes at bound 4 on 2 cores. There the
/// task's thread polls its future once (its close and its filed waker in place), runs the
/// blocking drain, which the release must wake, then finishes the future, which trades its
/// pending close in on a drain that the other waiter completed (`DRAINED`). The wake of the
/// task itself is (T1)'s. The bound stays 4.
fn blocking_on_its_own_thread(path: Path) -> bool {
    path != Path::Slot
}

/// (T3a) An async drain and a blocking one on the same drainable, while the guard is released
/// on another thread: both complete, after the guard's write, whichever closes first (the
/// async one holds a pending close that it trades in, the blocking one commits).
fn an_async_and_a_blocking_drain_both_complete<C>(path: Path)
where
    C: Kind,
{
    model(move || {
        let (d, cell) = canary::<C>();
        let releaser = release_elsewhere(&d, path);
        if blocking_on_its_own_thread(path) {
            let blocking = {
                let (d, cell) = (Arc::clone(&d), Arc::clone(&cell));
                thread::spawn(move || {
                    d.drain();
                    assert_eq!(cell.get(), 1, "drain() returned before the guard's write");
                })
            };
            block_on(d.drain_async());
            assert_eq!(
                cell.get(),
                1,
                "drain_async completed before the guard's write"
            );
            blocking.join().unwrap();
        } else {
            let (_wakes, waker) = Wakes::new();
            let mut f = std::pin::pin!(d.drain_async());
            let completed = poll_once(f.as_mut(), &waker).is_ready();
            d.drain();
            assert_eq!(cell.get(), 1, "drain() returned before the guard's write");
            if !completed {
                block_on(f);
            }
            assert_eq!(
                cell.get(),
                1,
                "drain_async completed before the guard's write"
            );
        }
        releaser.join().unwrap();
        assert!(d.is_drained());
    });
}

/// (T3b) An async drain is cancelled while another drain holds the drainable closed: the undo
/// gives back only the future's own close, so the other close stays in place (no guard can be
/// taken meanwhile), and that drain completes once the guard is dropped. With the blocking
/// drain on a thread of its own, it may be asleep when the future's drop takes `WAITING` down
/// (`stop_waiting`): it is woken, and sets the flag again. On the slot path (see
/// [`blocking_on_its_own_thread`]) the other close is a `PendingDrain` made before the future
/// is dropped and committed after.
fn a_cancelled_async_drain_leaves_a_blocking_one_in_place<C>(path: Path)
where
    C: Kind,
{
    model(move || {
        let (d, cell) = canary::<C>();
        let releaser = release_elsewhere(&d, path);
        let (_wakes, waker) = Wakes::new();
        if blocking_on_its_own_thread(path) {
            let blocking = {
                let (d, cell) = (Arc::clone(&d), Arc::clone(&cell));
                thread::spawn(move || {
                    d.drain();
                    assert_eq!(cell.get(), 1, "drain() returned before the guard's write");
                })
            };
            {
                let mut f = std::pin::pin!(d.drain_async());
                let _ = poll_once(f.as_mut(), &waker);
            }
            blocking.join().unwrap();
        } else {
            let mut f = Box::pin(d.drain_async());
            let completed = poll_once(f.as_mut(), &waker).is_ready();
            let other = d.prepare_drain();
            drop(f);
            assert!(
                completed || d.try_acquire().is_none(),
                "the cancelled drain undid another drain's close"
            );
            other.commit();
            assert_eq!(cell.get(), 1, "commit() returned before the guard's write");
        }
        releaser.join().unwrap();
        assert!(d.is_drained(), "the other drain's close was undone");
        cell.set(POISON);
    });
}

/// (T4) The future is dropped (completed or cancelled) while the releaser may be waking it.
/// What the table promises, and no more (a wake may still land after the drop: the releaser
/// cloned the waker under the bucket's lock before the future's entry was removed, which is
/// a spurious wake of a task, allowed by `Waker`'s contract and memory-safe, the clone being
/// counted): once the future is gone and the releaser has returned, no clone of the waker is
/// left anywhere (the table's entry went with the future), and no later wake of the same
/// address reaches it.
fn no_wake_after_the_future_is_gone<C>(path: Path)
where
    C: Kind,
{
    model(move || {
        let (d, cell) = canary::<C>();
        let releaser = release_elsewhere(&d, path);
        let (wakes, waker) = Wakes::new();
        let completed = {
            let mut f = std::pin::pin!(d.drain_async());
            poll_once(f.as_mut(), &waker).is_ready()
        };
        releaser.join().unwrap();
        drop(waker);
        assert_eq!(
            Arc::strong_count(&wakes),
            1,
            "a clone of a dropped future's waker was kept"
        );
        let woken = wakes.count();
        // A later drain of the same drainable, woken by a release of the same address.
        if completed {
            assert!(d.reopen());
        }
        let releaser = release_elsewhere(&d, path);
        block_on(d.drain_async());
        releaser.join().unwrap();
        assert_eq!(
            wakes.count(),
            woken,
            "a dropped future's waker was woken later"
        );
        assert_eq!(cell.get(), 1);
        assert!(d.is_drained());
    });
}

/// (T5) A waiter table keyed by address must not let a late releaser of a freed object consume
/// the waker of a new object at the same address. Object 1 lives in a fixed place; a releaser
/// drops its guard (the decrement, then, separately, the wake); object 1's drain completes on
/// the decrement, object 1 is dropped in place and object 2 made at the same address; a third
/// thread takes a guard of object 2 and drops it while object 2's drain is polled. Object 2's
/// drain must complete (a lost wake is a loom deadlock) wherever object 1's late wake lands.
/// (Under loom the table has one bucket, so every address collides too.)
///
/// The guards are borrowed (the object is not in an `Arc`): on the per-CPU counter's slot
/// path each guard thread first fills its record's entries with guards of another drainable,
/// so that the scenario's guard goes to a slot, and its release wakes the lifecycle word's
/// address.
fn a_late_wake_of_a_freed_object_does_not_consume_a_new_ones<C>(path: Path)
where
    C: Kind,
{
    model(move || {
        let fillers = if path == Path::Slot { LOOM_ENTRIES } else { 0 };
        let filler_place: *mut DrainableWith<(), C> = Box::into_raw(Box::new(C::make(())));
        // SAFETY: freed at the end, after every thread that uses it is joined.
        let filler: &'static DrainableWith<(), C> = unsafe { &*filler_place };
        let place: *mut MaybeUninit<D<C>> = Box::into_raw(Box::new(MaybeUninit::uninit()));
        let at = Address(place.cast());
        let (cell1, cell2) = (Arc::new(Cell::new(0)), Arc::new(Cell::new(0)));
        // SAFETY: `place` is valid and empty.
        unsafe { at.0.write(C::make(Arc::clone(&cell1))) };
        let guard_thread = |at: Address<C>| {
            let held = Arc::new(AtomicBool::new(false));
            let handle = {
                let held = Arc::clone(&held);
                thread::spawn(move || {
                    let _fill: Vec<_> = (0..fillers).map(|_| filler.try_acquire()).collect();
                    // SAFETY: the object at `at` is live until its drain completes, which this
                    // guard holds off.
                    let g = unsafe { at.get() }.try_acquire().expect("open");
                    held.store(true, Ordering::Release);
                    g.set(1);
                    drop(g);
                })
            };
            while !held.load(Ordering::Acquire) {
                thread::yield_now();
            }
            handle
        };
        let first = guard_thread(at);
        {
            // SAFETY: object 1 is live until dropped below.
            let d1 = unsafe { at.get() };
            block_on(d1.drain_async());
            assert_eq!(cell1.get(), 1);
            cell1.set(POISON);
        }
        // SAFETY: drained: no guard is left, and nothing else refers to object 1. The late
        // releaser touches nothing of it after its decrement.
        unsafe {
            std::ptr::drop_in_place(at.0);
            at.0.write(C::make(Arc::clone(&cell2)));
        }
        let second = guard_thread(at);
        {
            // SAFETY: object 2 is live until dropped below.
            let d2 = unsafe { at.get() };
            block_on(d2.drain_async());
            assert_eq!(cell2.get(), 1);
            cell2.set(POISON);
        }
        second.join().unwrap();
        first.join().unwrap();
        // SAFETY: both guard threads are gone; object 2 is drained.
        unsafe {
            std::ptr::drop_in_place(at.0);
            drop(Box::from_raw(place));
            drop(Box::from_raw(filler_place));
        }
    });
}

/// The fixed place of (T5), sent to its guard threads.
struct Address<C: Counter>(*mut D<C>);

impl<C: Counter> Clone for Address<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C: Counter> Copy for Address<C> {}

// SAFETY: only a place; every access through it is an `unsafe` block of (T5) that says why the
// object there is live, and the object is `Sync`.
unsafe impl<C: Counter + Sync> Send for Address<C> {}

impl<C: Counter> Address<C> {
    /// # Safety
    /// The object at the place is live for `'static` as far as the caller uses it.
    unsafe fn get(self) -> &'static D<C> {
        // SAFETY: forwarded from the caller.
        unsafe { &*self.0 }
    }
}

macro_rules! kinds {
    ($($scenario:ident),* $(,)?) => {
        /// `Drainable`: the guard in the one word, released on another thread.
        mod shared {
            $( #[test] fn $scenario() { super::$scenario::<drainable::Shared>(super::Path::Word) } )*
        }
        /// `PerCpuDrainable`, a borrowed guard in its thread's record.
        mod per_cpu_record {
            $( #[test] fn $scenario() { super::$scenario::<drainable::PerCpu>(super::Path::Record) } )*
        }
        /// `PerCpuDrainable`, an owned guard in a slot, released on another thread.
        mod per_cpu_slot {
            $( #[test] fn $scenario() { super::$scenario::<drainable::PerCpu>(super::Path::Slot) } )*
        }
    };
}

kinds!(
    a_filed_waker_races_the_last_release,
    a_cancelled_drain_races_the_last_release,
    an_async_and_a_blocking_drain_both_complete,
    a_cancelled_async_drain_leaves_a_blocking_one_in_place,
    no_wake_after_the_future_is_gone,
    a_late_wake_of_a_freed_object_does_not_consume_a_new_ones,
);
