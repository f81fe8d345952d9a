//! The registry's unit tests, run natively and under Miri: the contract once per counter
//! scheme, and the checks of foreign registrations.

use super::storage::capacity;
use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use crate::test_support::{Counted, iters};

#[test]
fn foreign_registration_panics_with_a_clear_message() {
    let a = Registry::new();
    let b = Registry::new();
    let _kept = b.register(0);
    let h = a.register(1);
    let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.unregister(h)))
        .unwrap_err()
        .downcast::<String>()
        .unwrap();
    assert!(msg.contains("was passed to registry #"), "{msg}");
    assert!(msg.contains("only remove the entry of the registry that issued it"));
    // Nothing was changed in either registry.
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a.iter().map(|v| *v).collect::<Vec<_>>(), [1]);

    let empty = Registry::<i32>::new();
    let h = a.register(2);
    let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| empty.unregister(h)))
        .unwrap_err()
        .downcast::<String>()
        .unwrap();
    assert!(msg.contains("never registered anything"), "{msg}");
}

#[test]
fn unregister_all_checks_every_registration_before_closing_any() {
    let a = Registry::new();
    let b = Registry::new();
    let a1 = a.register(1);
    let b1 = b.register(2);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.unregister_all([a1, b1]);
    }));
    assert!(r.is_err());
    // a1's entry was neither closed nor removed.
    assert_eq!(a.iter().map(|v| *v).collect::<Vec<_>>(), [1]);
    assert_eq!(a.len(), 1);
}

/// The contract tests, once per counter scheme.
macro_rules! registry_tests {
    ($name:ident, $counter:ty) => {
        mod $name {
            use super::*;

            type R<T> = Registry<T, $counter>;

            impl<T> Registry<T, $counter> {
                fn fresh() -> Self {
                    Self::with_counter()
                }
            }

            fn collect<T: Copy>(r: &R<T>) -> Vec<T> {
                let mut v = Vec::new();
                r.for_each(|x| v.push(*x));
                v
            }

            #[test]
            fn register_call_unregister() {
                let r = R::fresh();
                assert!(r.is_empty());
                let a = r.register(1);
                let b = r.register(2);
                assert_eq!(r.len(), 2);
                assert_eq!(collect(&r), [1, 2]);
                assert_eq!(r.unregister(a), 1);
                assert_eq!(collect(&r), [2]);
                assert_eq!(r.unregister(b), 2);
                assert!(collect(&r).is_empty());
                assert!(r.is_empty());
            }

            #[test]
            fn slots_are_reused_last_in_first_out() {
                let r = R::fresh();
                let a = r.register(1);
                let b = r.register(2);
                let (ia, ib) = (a.id.index, b.id.index);
                r.unregister(a);
                r.unregister(b);
                let c = r.register(3);
                let d = r.register(4);
                assert_eq!((c.id.index, d.id.index), (ib, ia));
                assert_eq!(r.lock().tail.handed_out(), 2, "no new slot was handed out");
                r.unregister_all([c, d]);
            }

            #[test]
            fn a_stale_id_never_finds_the_next_occupant_of_its_slot() {
                let r = R::fresh();
                let a = r.register(1);
                let a_id = a.id();
                assert_eq!(r.get(a_id).map(|g| *g), Some(1));
                r.unregister(a);
                assert!(r.get(a_id).is_none(), "removed");
                let b = r.register(2);
                let b_id = b.id();
                assert_eq!(b_id.index, a_id.index, "the slot is reused (LIFO)");
                assert_ne!(b_id, a_id, "the generation tells them apart");
                assert!(r.get(a_id).is_none(), "a stale id found the new occupant");
                let g = r.get(b_id).unwrap();
                assert_eq!((*g, g.id()), (2, b_id));
                drop(g);
                r.unregister(b);
                assert!(r.get(b_id).is_none());
            }

            #[test]
            fn get_refuses_entries_being_removed_and_finds_them_after_undo() {
                let r = R::fresh();
                let h = r.register(7);
                let id = h.id();
                let p = r.prepare_unregister(h);
                assert_eq!(p.id(), id);
                assert!(r.get(id).is_none(), "being removed");
                let h = p.undo();
                assert_eq!(h.id(), id, "undo keeps the entry's identity");
                assert_eq!(r.get(id).map(|g| *g), Some(7));
                // A guard from `get` holds a call in flight, as one from `iter` does.
                let g = r.get(id).unwrap();
                let err = r.unregister_timeout(h, Duration::ZERO).unwrap_err();
                assert_eq!(err.outstanding(), 1);
                drop(g);
                assert_eq!(r.unregister(err.into_registration()), 7);
            }

            #[test]
            fn ids_from_iteration_match_the_registrations() {
                let r = R::fresh();
                let hs: Vec<_> = (0..capacity(1) + 1).map(|i| r.register(i)).collect();
                let ids: Vec<_> = r.iter().map(|g| (*g, g.id())).collect();
                assert_eq!(ids.len(), hs.len());
                for (h, (v, id)) in hs.iter().zip(&ids) {
                    assert_eq!(h.id(), *id);
                    assert_eq!(r.get(*id).map(|g| *g), Some(*v));
                }
                let distinct: std::collections::HashSet<_> = hs.iter().collect();
                assert_eq!(distinct.len(), hs.len(), "Registration: Eq + Hash");
                r.unregister_all(hs);
            }

            #[test]
            fn an_id_of_another_registry_finds_nothing() {
                let a = R::fresh();
                let b = R::fresh();
                let never = R::<i32>::fresh();
                let ha = a.register(1);
                let hb = b.register(2);
                // Same slot and generation, different registries.
                assert_eq!(
                    (ha.id().index, ha.id().generation),
                    (hb.id().index, hb.id().generation)
                );
                assert_ne!(ha.id(), hb.id());
                assert!(b.get(ha.id()).is_none());
                assert!(a.get(hb.id()).is_none());
                assert!(never.get(ha.id()).is_none());
                assert_eq!(a.get(ha.id()).map(|g| *g), Some(1));
                a.unregister(ha);
                b.unregister(hb);
            }

            #[test]
            fn grows_across_chunks_and_visits_each_entry_once() {
                let r = R::fresh();
                let n = capacity(3) + 1; // into the fourth chunk
                let hs: Vec<_> = (0..n).map(|i| r.register(i)).collect();
                assert_eq!(r.lock().tail.chunks(), 4);
                assert_eq!(collect(&r), (0..n).collect::<Vec<_>>());
                assert_eq!(r.iter().count(), n);
                // Remove every other one; the rest are still visited once each.
                let (odd, even): (Vec<_>, Vec<_>) =
                    hs.into_iter().partition(|h| h.id.index % 2 == 1);
                let removed = r.unregister_all(odd);
                assert!(removed.iter().all(|v| v % 2 == 1));
                assert_eq!(collect(&r), (0..n).step_by(2).collect::<Vec<_>>());
                assert_eq!(r.len(), even.len());
                r.unregister_all(even);
                assert!(r.is_empty() && collect(&r).is_empty());
            }

            #[test]
            fn pending_removal_skips_then_undo_or_commit() {
                let r = R::fresh();
                let h = r.register(5);
                let keep = r.register(6);
                let p = r.prepare_unregister(h);
                assert_eq!(collect(&r), [6], "a closed entry is skipped");
                assert_eq!(r.len(), 2, "still registered until committed");
                let h = p.undo();
                assert_eq!(collect(&r), [5, 6]);
                let p = r.prepare_unregister(h);
                assert_eq!(p.commit(), 5);
                assert_eq!(collect(&r), [6]);
                r.unregister(keep);
            }

            #[test]
            fn dropping_a_pending_removal_undoes_it() {
                let r = R::fresh();
                let h = r.register(9);
                drop(r.prepare_unregister(h));
                assert_eq!(collect(&r), [9], "live again");
                assert_eq!(r.len(), 1);
            }

            #[test]
            fn commit_timeout_keeps_it_closed_until_the_call_returns() {
                let r = R::fresh();
                let h = r.register(1);
                let call = r.iter().next().unwrap();
                let p = r.prepare_unregister(h);
                let p = p.commit_timeout(Duration::ZERO).unwrap_err().into_pending();
                assert_eq!(p.outstanding(), 1);
                assert!(collect(&r).is_empty(), "still closed after a timeout");
                drop(call);
                assert_eq!(p.commit_timeout(Duration::from_secs(60)).unwrap(), 1);
                assert!(r.is_empty());
            }

            #[test]
            fn unregister_timeout_fails_reopens_and_returns_the_registration() {
                let r = R::fresh();
                let h = r.register(1);
                let calls: Vec<_> = r.iter().chain(r.iter()).collect();
                let e = r
                    .unregister_timeout(h, Duration::from_millis(1))
                    .unwrap_err();
                assert_eq!(e.outstanding(), 2);
                assert_eq!(collect(&r), [1], "live again");
                drop(calls);
                let h = e.into_registration();
                assert_eq!(r.unregister_timeout(h, Duration::from_secs(60)).unwrap(), 1);
                assert!(r.is_empty());
            }

            #[test]
            fn unregister_waits_for_a_call_on_another_thread() {
                let r = R::fresh();
                let h = r.register(AtomicUsize::new(0));
                let returned = AtomicBool::new(false);
                thread::scope(|s| {
                    let (entered_tx, entered_rx) = mpsc::channel();
                    let (go_tx, go_rx) = mpsc::channel::<()>();
                    let (r, returned) = (&r, &returned);
                    s.spawn(move || {
                        r.for_each(|v| {
                            entered_tx.send(()).unwrap();
                            let _ = go_rx.recv();
                            v.fetch_add(1, Ordering::Relaxed);
                            // Relaxed: only the removal's happens-before makes it visible.
                            returned.store(true, Ordering::Relaxed);
                        });
                    });
                    entered_rx.recv().unwrap();
                    s.spawn(move || {
                        let ms = if cfg!(miri) { 0 } else { 5 };
                        thread::sleep(Duration::from_millis(ms));
                        drop(go_tx);
                    });
                    let v = r.unregister(h);
                    assert!(returned.load(Ordering::Relaxed));
                    assert_eq!(v.into_inner(), 1);
                });
            }

            #[test]
            fn values_are_dropped_exactly_once() {
                let drops = AtomicUsize::new(0);
                {
                    let r = R::fresh();
                    let a = r.register(Counted(&drops));
                    let _b = r.register(Counted(&drops));
                    let _c = r.register(Counted(&drops));
                    drop(r.unregister(a));
                    assert_eq!(drops.load(Ordering::Relaxed), 1);
                    // Dropped handles: `_b` and `_c` stay registered until `r` drops.
                }
                assert_eq!(drops.load(Ordering::Relaxed), 3);
            }

            #[test]
            fn iter_guards_nest_and_registering_from_a_callback_is_fine() {
                let r = R::fresh();
                let a = r.register(1);
                let mut inner = None;
                r.for_each(|_| {
                    // Re-entrant: a callback may register, and may iterate.
                    inner = Some(r.register(2));
                    assert!(r.iter().count() >= 1);
                });
                let pairs = r.iter().flat_map(|x| r.iter().map(move |y| (*x, *y)));
                assert_eq!(pairs.count(), 4);
                r.unregister_all([a, inner.unwrap()]);
            }

            #[test]
            #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
            fn unregistering_from_its_own_callback_panics_and_stays_registered() {
                let r = R::fresh();
                let mut h = Some(r.register(1));
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    r.for_each(|_| {
                        r.unregister(h.take().unwrap());
                    });
                }));
                let msg = caught.unwrap_err().downcast::<String>().unwrap();
                assert!(msg.contains("holds 1 Guard(s)"), "{msg}");
                assert_eq!(collect(&r), [1], "the removal was undone");
            }

            #[test]
            fn debug_output() {
                let r = R::fresh();
                let h = r.register(4);
                assert_eq!(format!("{r:?}"), "Registry { len: 1, entries: [4] }");
                let p = r.prepare_unregister(h);
                assert_eq!(format!("{r:?}"), "Registry { len: 1, entries: [] }");
                assert_eq!(
                    format!("{p:?}"),
                    "PendingRemoval { slot: 0, outstanding: 0 }"
                );
                let h = p.undo();
                assert!(format!("{h:?}").ends_with("slot: 0, generation: 1 }"));
                r.unregister(h);
            }

            /// Callers check a heap canary in each value; the remover poisons and frees it
            /// the moment `unregister` returns, while callers may still be returning from
            /// their release. Under Miri any access after the return is a use-after-free.
            #[test]
            fn free_right_after_unregister() {
                const ALIVE: usize = 0xA11C_E5ED;
                const POISON: usize = 0xDEAD;
                struct Module {
                    canary: Box<AtomicUsize>,
                }
                let r = R::fresh();
                let violations = AtomicUsize::new(0);
                let stop = AtomicBool::new(false);
                thread::scope(|s| {
                    for _ in 0..2 {
                        s.spawn(|| {
                            while !stop.load(Ordering::Relaxed) {
                                r.for_each(|m: &Module| {
                                    if m.canary.load(Ordering::Relaxed) != ALIVE {
                                        violations.fetch_add(1, Ordering::Relaxed);
                                    }
                                });
                                thread::yield_now();
                            }
                        });
                    }
                    for _ in 0..iters(500, 8) {
                        let h = r.register(Module {
                            canary: Box::new(AtomicUsize::new(ALIVE)),
                        });
                        thread::yield_now();
                        let m = r.unregister(h);
                        m.canary.store(POISON, Ordering::Relaxed);
                        drop(m);
                    }
                    stop.store(true, Ordering::Relaxed);
                });
                assert_eq!(violations.load(Ordering::Relaxed), 0);
            }

            #[test]
            fn registers_and_removes_from_many_threads() {
                let r = Arc::new(R::fresh());
                let threads: Vec<_> = (0..3)
                    .map(|t| {
                        let r = Arc::clone(&r);
                        thread::spawn(move || {
                            for i in 0..iters(200, 5) {
                                let h = r.register(t * 1000 + i);
                                let mut seen = false;
                                r.for_each(|v| seen |= *v == t * 1000 + i);
                                assert!(seen, "an entry live for the whole pass was missed");
                                assert_eq!(r.unregister(h), t * 1000 + i);
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
                assert!(r.is_empty());
                // Three threads, at most three live at once: at most three slots used.
                assert!(r.lock().tail.handed_out() <= 3);
            }
        }
    };
}

registry_tests!(shared, Shared);
registry_tests!(per_cpu, PerCpu);
