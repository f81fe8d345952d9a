//! The drainable contract's loom scenarios (`scenarios/mod.rs`) for the single-word
//! `Drainable`.

use drainable::{Drainable, OwnedGuard};

/// Readers racing the drains of scenario (10): two, so that back-outs of two threads land
/// between the drains' reads of the one word.
const BACKING_OUT_READERS: usize = 2;

/// Whether scenario (12) closes again after its reopen while the other drain may still be
/// asleep: yes for the single word.
const RECLOSE_WHILE_DRAINING: bool = true;

mod scenarios;

/// The single word's one exception to "a drain waits only for guards taken before its close"
/// (docs/design.md §2a, and `drain`'s docs): a late drain that finds a *later* irreversible
/// drain in effect cannot tell it from its own and may wait for that drain's guards too. This
/// checks the bound that remains: it returns no later than that later drain (loom reports a
/// deadlock otherwise), and never before its own close has drained.
#[test]
fn a_late_drain_returns_no_later_than_a_later_drain() {
    use drainable_loom_tests::atomic::{AtomicBool, Ordering};
    use drainable_loom_tests::{Cell, model, spawn_with, thread};
    use std::sync::Arc;

    model(|| {
        let cell = Arc::new(Cell::new(0u32));
        let d = Arc::new(Drainable::new(Arc::clone(&cell)));
        let first = d.try_acquire_owned().expect("open");
        let first_dropped = Arc::new(AtomicBool::new(false));
        let late = {
            let (d, first_dropped) = (Arc::clone(&d), Arc::clone(&first_dropped));
            thread::spawn(move || {
                d.drain();
                assert!(
                    first_dropped.load(Ordering::SeqCst),
                    "a drain returned before the guard taken before its close was dropped"
                );
            })
        };
        // The late drain's close comes first.
        while d.is_open() {
            thread::yield_now();
        }
        first.set(1);
        first_dropped.store(true, Ordering::SeqCst);
        drop(first);
        d.drain();
        assert!(d.reopen());
        let second = d.try_acquire_owned().expect("reopened");
        let holder = spawn_with(second, |second| {
            second.set(2);
            drop(second);
        });
        d.drain();
        assert_eq!(
            cell.get(),
            2,
            "the later drain returned before its guard's write"
        );
        holder.join().unwrap();
        late.join().unwrap();
    });
}

/// Three threads race reversible closes across the pending field's limit (2 under loom), so
/// that one steps the field up to the limit while another spills into the side table. The
/// step to the limit clears stale table entries of the address; it must never clear a live
/// spilled close (an earlier version did, when it decided from a value read before the lock):
/// every close stays counted, the drainable stays closed while any is live, and nothing is
/// left when all are given back. The per-CPU counter takes these steps under its control lock,
/// one at a time, so this race is the single word's.
#[test]
fn closes_racing_across_the_limit_stay_counted() {
    use drainable_loom_tests::{model, thread};
    use std::sync::Arc;

    model(|| {
        let d = Arc::new(Drainable::new(()));
        let first = d.prepare_drain();
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let d = Arc::clone(&d);
                thread::spawn(move || {
                    let p = d.prepare_drain();
                    assert!(!d.is_open(), "open while a close is live");
                    drop(p);
                })
            })
            .collect();
        let second = d.prepare_drain();
        assert!(!d.is_open(), "open while a close is live");
        drop(second);
        for r in racers {
            r.join().unwrap();
        }
        assert!(!d.is_open(), "open while the first close is live");
        assert!(first.undo(), "the last give-back must reopen");
        d.drain();
        assert!(d.reopen(), "a close was left behind");
    });
}

/// `drain_and_take` races an owned guard dropped on another thread (its release, then its
/// `Arc` drop) and a second owner's `drain_and_take`: exactly one take wins, it never fails for
/// the guard's sake, the guard's write is visible to the winner, and the value is dropped once.
#[test]
fn drain_and_take_races_an_owned_guard_and_another_take() {
    use drainable_loom_tests::{Cell, model, spawn_with};
    use std::sync::Arc;

    model(|| {
        let d = Arc::new(Drainable::new(Cell::new(0u32)));
        let guard = d.try_acquire_owned().expect("open");
        let holder = spawn_with(guard, |guard| {
            guard.set(7);
            drop(guard);
        });
        let rival = spawn_with(Arc::clone(&d), |d| d.drain_and_take().ok().map(|c| c.get()));
        let mine = d.drain_and_take().ok().map(|c| c.get());
        let theirs = rival.join().unwrap();
        holder.join().unwrap();
        match (mine, theirs) {
            (Some(v), None) | (None, Some(v)) => assert_eq!(v, 7, "the guard's write was lost"),
            other => panic!("not exactly one take won: {other:?}"),
        }
    });
}
