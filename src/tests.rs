//! Unit tests of the public types, run natively and under Miri. Tests only: helpers shared
//! with other modules' tests are in `test_support.rs`.

use crate::test_support::{Counted, hold_on_thread, iters};
use crate::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

/// One word in release builds; debug builds add the deadlock detector's 8-byte key.
#[test]
fn size_is_one_word() {
    let expected = if cfg!(debug_assertions) { 16 } else { 4 };
    assert_eq!(std::mem::size_of::<Drainable<()>>(), expected);
    assert_eq!(
        std::mem::size_of::<Guard<'_, u64>>(),
        std::mem::size_of::<usize>()
    );
}

#[test]
fn auto_traits() {
    fn send_sync<X: Send + Sync>() {}
    send_sync::<Drainable<u32>>();
    send_sync::<OwnedGuard<u32>>();
    send_sync::<PendingDrain<'_, u32>>();
    fn sync<X: Sync>() {}
    sync::<Guard<'_, u32>>();
}

#[test]
fn works_in_a_static() {
    static D: Drainable<u8> = Drainable::new(7);
    assert_eq!(*D.try_acquire().unwrap(), 7);
}

/// The contract tests, instantiated once per counter scheme: both types promise the same.
macro_rules! contract_tests {
    ($name:ident, $counter:ty) => {
        mod $name {
            #![allow(clippy::redundant_clone)]
            use super::*;
            use crate::counter::sealed::CounterImpl;

            type D<T> = DrainableWith<T, $counter>;
            const NAME: &str = <$counter as CounterImpl>::NAME;

            fn new<T>(value: T) -> D<T> {
                D::from(value)
            }

            #[test]
            fn drain_waits_for_a_guard_dropped_on_another_thread() {
                let d = new(AtomicUsize::new(0));
                let released = AtomicBool::new(false);
                thread::scope(|s| {
                    let (held_tx, held_rx) = mpsc::channel();
                    let (d, released) = (&d, &released);
                    s.spawn(move || {
                        let g = d.try_acquire().unwrap();
                        held_tx.send(()).unwrap();
                        g.fetch_add(1, Ordering::Relaxed);
                        // A plain Relaxed store: only the drain's happens-before makes it visible.
                        released.store(true, Ordering::Relaxed);
                        drop(g);
                    });
                    held_rx.recv().unwrap();
                    d.drain();
                    assert!(d.try_acquire().is_none());
                    assert!(released.load(Ordering::Relaxed));
                    assert_eq!(d.try_acquire().map(|_| ()), None);
                });
                assert_eq!(d.into_inner().into_inner(), 1);
            }

            #[test]
            fn concurrent_drains_all_return() {
                let d = new(());
                thread::scope(|s| {
                    let g = hold_on_thread(s, || d.try_acquire().expect("open"));
                    let hs: Vec<_> = (0..3).map(|_| s.spawn(|| d.drain())).collect();
                    thread::sleep(Duration::from_millis(if cfg!(miri) { 0 } else { 10 }));
                    drop(g);
                    for h in hs {
                        h.join().unwrap();
                    }
                });
                assert!(d.is_drained());
            }

            #[test]
            fn drain_is_idempotent_and_reopen_cycles() {
                let d = new(1);
                for _ in 0..iters(100, 5) {
                    let g = d.try_acquire().unwrap();
                    assert_eq!(*g, 1);
                    drop(g);
                    d.drain();
                    d.drain();
                    assert!(d.is_drained());
                    assert!(!d.is_open());
                    assert!(d.reopen());
                    assert!(!d.reopen());
                }
            }

            #[test]
            fn owned_guard_outlives_scope_and_blocks_drain() {
                let d = Arc::new(new(String::from("x")));
                let g = d.try_acquire_owned().unwrap();
                let d2 = Arc::clone(&d);
                let t = thread::spawn(move || {
                    d2.drain();
                    d2.is_drained()
                });
                assert_eq!(&*g, "x");
                drop(g);
                assert!(t.join().unwrap());
                assert!(d.try_acquire_owned().is_none());
            }

            #[test]
            fn prepare_commit_undo() {
                let d = new(());
                let p = d.prepare_drain();
                assert!(d.try_acquire().is_none());
                assert!(!d.is_drained(), "pending is not drained until committed");
                drop(p); // drop undoes
                assert!(d.is_open());
                let p = d.prepare_drain();
                p.commit();
                assert!(d.is_drained());
                // A PendingDrain on a drained drainable commits at once and undo keeps it drained.
                let p = d.prepare_drain();
                assert!(!p.undo());
                assert!(d.is_drained());
            }

            #[test]
            fn undo_keeps_closed_for_other_pending_drains_and_commits() {
                let d = new(());
                let a = d.prepare_drain();
                let b = d.prepare_drain();
                assert!(!a.undo());
                assert!(!d.is_open());
                assert!(b.undo());
                assert!(d.is_open());

                let g = d.try_acquire().unwrap();
                let p = d.prepare_drain();
                thread::scope(|s| {
                    let dr = s.spawn(|| d.drain());
                    // Whatever the interleaving, the undo cannot reopen under a committed drain once the
                    // drain's close has landed; wait for it.
                    while d.is_open() || state_of(&d) == "Pending" {
                        thread::yield_now();
                    }
                    assert!(!p.undo());
                    assert!(d.try_acquire().is_none());
                    drop(g);
                    dr.join().unwrap();
                });
                assert!(d.is_drained());
            }

            fn state_of<T: std::fmt::Debug>(d: &D<T>) -> String {
                let s = format!("{d:?}");
                s.split("state: ")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .to_owned()
            }

            #[test]
            fn debug_shows_each_phase() {
                let d = new(0);
                assert_eq!(state_of(&d), "Open");
                let g = d.try_acquire().unwrap();
                assert_eq!(
                    format!("{d:?}"),
                    format!("{} {{ state: Open, outstanding: 1, value: 0 }}", NAME)
                );
                let p = d.prepare_drain();
                assert_eq!(state_of(&d), "Pending");
                let p = p.commit_timeout(Duration::ZERO).unwrap_err();
                drop(p);
                thread::scope(|s| {
                    s.spawn(|| d.drain());
                    while state_of(&d) != "Closing" {
                        thread::yield_now();
                    }
                    assert_eq!(
                        format!("{d:?}"),
                        // Closed: the value is shown only under a guard, which a closed
                        // drainable refuses.
                        format!("{} {{ state: Closing, outstanding: 1, .. }}", NAME)
                    );
                    drop(g);
                });
                assert_eq!(state_of(&d), "Drained");
            }

            #[test]
            fn drain_timeout_reopens_and_reports() {
                let d = new(());
                let g1 = d.try_acquire().unwrap();
                let g2 = d.try_acquire().unwrap();
                let e = d.drain_timeout(Duration::from_millis(2)).unwrap_err();
                assert_eq!(e.outstanding(), 2);
                assert_eq!(
                    e.to_string(),
                    "drain timed out with 2 guard(s) still outstanding"
                );
                assert!(d.is_open());
                drop((g1, g2));
                d.drain_timeout(Duration::from_secs(60)).unwrap();
                assert!(d.is_drained());
            }

            #[test]
            fn drain_timeout_succeeds_when_guard_drops_in_time() {
                let d = new(());
                thread::scope(|s| {
                    let g = hold_on_thread(s, || d.try_acquire().expect("open"));
                    s.spawn(move || {
                        thread::sleep(Duration::from_millis(if cfg!(miri) { 0 } else { 5 }));
                        drop(g);
                    });
                    d.drain_timeout(Duration::from_secs(60)).unwrap();
                });
                assert!(d.is_drained());
            }

            #[test]
            fn leaked_guard_is_reported_by_timed_drains() {
                let d = new(());
                // A leaked borrowed guard: nothing on the heap, so Miri's leak check stays quiet.
                std::mem::forget(d.try_acquire());
                let e = d.drain_timeout(Duration::from_millis(1)).unwrap_err();
                assert_eq!(e.outstanding(), 1);
                let p = d.prepare_drain();
                let p = p.commit_timeout(Duration::from_millis(1)).unwrap_err();
                assert_eq!(p.outstanding(), 1);
            }

            #[test]
            #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
            #[should_panic(expected = "holds 1 Guard(s) of the same Drainable")]
            fn drain_after_leaking_a_guard_on_this_thread_panics_instead_of_hanging() {
                let d = new(());
                std::mem::forget(d.try_acquire());
                d.drain();
            }

            /// A guard leaked on one drainable must not be blamed on a later, unrelated
            /// drainable that happens to live at the same address (here: exactly the same
            /// storage, written anew).
            #[test]
            fn a_leaked_guard_is_not_blamed_on_a_new_drainable_at_the_same_address() {
                let mut storage = std::mem::MaybeUninit::<D<u32>>::uninit();
                let place = storage.as_mut_ptr();
                // SAFETY: `place` is valid for writes and reads; each value written is dropped
                // before the next one is written over it, and the last one at the end.
                unsafe {
                    place.write(new(1));
                    std::mem::forget((*place).try_acquire());
                    std::ptr::drop_in_place(place);
                    place.write(new(2));
                    let later = &*place;
                    assert_eq!(later.drain_timeout(Duration::from_secs(60)), Ok(()));
                    assert!(later.reopen());
                    later.drain(); // panicked here, blaming the leaked guard
                    later.prepare_drain().commit();
                    std::ptr::drop_in_place(place);
                }
            }

            /// After a timed wait gives up, the hot path must be back to its fresh cost: no
            /// release may make a futex wake system call because a waiter that left long ago
            /// was still announced in the word.
            #[test]
            fn a_timed_out_wait_leaves_no_wake_behind() {
                let d = Arc::new(new(()));
                let held = d.try_acquire_owned().unwrap();
                assert!(d.drain_timeout(Duration::ZERO).is_err());
                let p = d
                    .prepare_drain()
                    .commit_timeout(Duration::ZERO)
                    .unwrap_err()
                    .into_pending();
                assert!(p.undo());
                drop(held);
                let before = crate::platform::wakes::made();
                for _ in 0..100 {
                    drop(d.try_acquire().unwrap());
                    drop(d.try_acquire_owned().unwrap());
                }
                assert_eq!(
                    crate::platform::wakes::made() - before,
                    0,
                    "releases on an open {NAME} made futex wakes after a timed-out drain"
                );
                d.drain();
                assert!(d.is_drained());
            }

            /// Any number of reversible drains may be live at once: far more than the word's
            /// pending field counts (the rest spill into the side table), all closed at the same
            /// moment, then given back by undo, by a timed-out commit, and by successful timed
            /// drains, with nothing left over.
            #[test]
            fn a_thousand_concurrent_reversible_drains() {
                let d = new(());
                let n = iters(1000, 12);
                let all_live = std::sync::Barrier::new(n + 1);
                let g = d.try_acquire().unwrap();
                thread::scope(|s| {
                    for i in 0..n {
                        let (d, all_live) = (&d, &all_live);
                        s.spawn(move || {
                            let p = d.prepare_drain();
                            all_live.wait(); // every close is live here
                            assert!(!d.is_open());
                            if i % 2 == 0 {
                                p.undo();
                            } else {
                                // The guard below is held throughout: the commit times out.
                                drop(p.commit_timeout(Duration::ZERO).unwrap_err());
                            }
                        });
                    }
                    // This thread's own close keeps the check meaningful: the others may all
                    // have given theirs back by the time it runs.
                    let mine = d.prepare_drain();
                    all_live.wait();
                    assert!(!d.is_open());
                    mine.undo();
                });
                assert!(d.is_open(), "every close was given back");
                drop(g);
                // The same number of timed drains, all succeeding at once.
                thread::scope(|s| {
                    for _ in 0..n {
                        s.spawn(|| {
                            assert_eq!(d.drain_timeout(Duration::from_secs(60)), Ok(()));
                            assert!(d.is_drained());
                        });
                    }
                });
                assert!(d.reopen(), "a successful timed drain left its close behind");
                assert!(d.try_acquire().is_some());
            }

            /// Closes leaked with `mem::forget` beyond the word's field leave an entry in the
            /// side table when their drainable goes; a new drainable at the same address must
            /// not inherit it (it would count the stale closes as its own and never reopen).
            #[test]
            fn leaked_spilled_closes_do_not_haunt_the_next_drainable_at_that_address() {
                let mut storage = std::mem::MaybeUninit::<D<()>>::uninit();
                let place = storage.as_mut_ptr();
                let n = crate::lifecycle::word::PENDING_SPILL as usize + 3;
                // SAFETY: `place` is valid; each value is dropped before the next is written,
                // and the last at the end; the forgotten PendingDrains never touch it again.
                unsafe {
                    place.write(new(()));
                    for _ in 0..n {
                        std::mem::forget((*place).prepare_drain());
                    }
                    std::ptr::drop_in_place(place);
                    place.write(new(()));
                    let later = &*place;
                    let pending: Vec<_> = (0..n).map(|_| later.prepare_drain()).collect();
                    drop(pending);
                    assert!(later.is_open(), "a new drainable inherited leaked closes");
                    for _ in 0..n {
                        std::mem::forget(later.prepare_drain());
                    }
                    std::ptr::drop_in_place(place);
                    place.write(new(()));
                    let last = &*place;
                    let commits: Vec<_> = (0..n).map(|_| last.prepare_drain()).collect();
                    for p in commits {
                        p.commit();
                    }
                    assert!(last.reopen(), "commits at the limit took a stale close");
                    std::ptr::drop_in_place(place);
                }
            }

            #[test]
            #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
            #[should_panic(expected = "holds 1 Guard(s) of the same Drainable")]
            fn drain_while_holding_a_guard_panics() {
                let d = new(());
                let _g = d.try_acquire().unwrap();
                d.drain();
            }

            #[test]
            #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
            #[should_panic(expected = "PendingDrain::commit called on a thread that holds")]
            fn commit_while_holding_a_guard_panics() {
                let d = new(());
                let _g = d.try_acquire().unwrap();
                d.prepare_drain().commit();
            }

            #[test]
            fn holding_a_guard_of_another_drainable_is_fine() {
                let a = new(());
                let b = new(());
                let _g = a.try_acquire().unwrap();
                b.drain();
                assert!(b.is_drained());
            }

            #[test]
            fn get_mut_and_into_inner() {
                let mut d = new(vec![1]);
                d.get_mut().push(2);
                d.drain();
                d.get_mut().push(3);
                assert_eq!(d.into_inner(), [1, 2, 3]);
            }

            #[test]
            fn value_is_dropped_exactly_once() {
                let drops = AtomicUsize::new(0);
                {
                    let d = new(Counted(&drops));
                    let _g = d.try_acquire();
                }
                assert_eq!(drops.load(Ordering::Relaxed), 1);
                let d = Arc::new(new(Counted(&drops)));
                let g = d.try_acquire_owned().unwrap();
                drop(d);
                assert_eq!(
                    drops.load(Ordering::Relaxed),
                    1,
                    "the owned guard keeps it alive"
                );
                drop(g);
                assert_eq!(drops.load(Ordering::Relaxed), 2);
            }

            #[test]
            fn unsized_values() {
                let d: Box<D<[u8]>> = Box::new(new([1u8, 2, 3]));
                assert_eq!(d.try_acquire().unwrap().len(), 3);
                d.drain();
            }

            /// Readers each hold one guard, check a canary in the heap value, then drop the guard and never
            /// touch the drainable again. The drainer poisons the canary and frees the whole allocation the
            /// moment `drain()` returns, without waiting for the reader threads to finish returning from
            /// their drops. Under Miri any access by the release path after its decrement is a
            /// use-after-free error; natively, a read after the drain sees the poison.
            #[test]
            fn free_right_after_drain() {
                const ALIVE: usize = 0xA11C_E5ED;
                const POISON: usize = 0xDEAD;
                struct Value {
                    canary: AtomicUsize,
                }
                struct SendPtr(*const D<Value>);
                // SAFETY: the pointee is Sync; the test frees it only after the drain.
                unsafe impl Send for SendPtr {}
                for _ in 0..iters(300, 6) {
                    let d: *mut D<Value> = Box::into_raw(Box::new(new(Value {
                        canary: AtomicUsize::new(ALIVE),
                    })));
                    let violations = Arc::new(AtomicUsize::new(0));
                    let holding = Arc::new(AtomicUsize::new(0));
                    let readers: Vec<_> = (0..2)
                        .map(|_| {
                            let (violations, holding) =
                                (Arc::clone(&violations), Arc::clone(&holding));
                            let p = SendPtr(d);
                            thread::spawn(move || {
                                let p = p;
                                // SAFETY: the drainer frees only after drain(), which waits for this guard.
                                let g = unsafe { &*p.0 }.try_acquire().expect("open");
                                holding.fetch_add(1, Ordering::Release);
                                for _ in 0..iters(50, 3) {
                                    if g.canary.load(Ordering::Relaxed) != ALIVE {
                                        violations.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                drop(g); // the last access to the drainable
                            })
                        })
                        .collect();
                    while holding.load(Ordering::Acquire) < 2 {
                        thread::yield_now();
                    }
                    // SAFETY: `d` is live until the Box::from_raw below.
                    unsafe { &*d }.drain();
                    // SAFETY: drained: no guard exists and none can be taken; readers never touch it again.
                    let mut b = unsafe { Box::from_raw(d) };
                    b.get_mut().canary.store(POISON, Ordering::Relaxed);
                    drop(b);
                    for r in readers {
                        r.join().unwrap();
                    }
                    assert_eq!(violations.load(Ordering::Relaxed), 0);
                }
            }
        }
    };
}

contract_tests!(shared, Shared);
contract_tests!(per_cpu, PerCpu);
