//! The drainable contract's loom scenarios (`scenarios/mod.rs`) for `PerCpuDrainable`. Under
//! loom every acquisition picks the next slot, so guards are taken and given back on different
//! slots than their neighbours', and a thread's release lands on a slot another thread just
//! used: the migration cases.

use drainable::PerCpuDrainable as Drainable;
type OwnedGuard<T> = drainable::OwnedGuard<T, drainable::PerCpu>;

/// Readers racing the drains of scenario (10). One: a per-CPU reader backs out on its own
/// thread's record, which the drain scans entry by entry, so a second reader adds a second,
/// independent record and multiplies the model (over eight minutes at bound 4 on 2 cores)
/// without a new interleaving of any one record with the drain. Shrinking the model keeps the
/// bound at 4.
const BACKING_OUT_READERS: usize = 1;

/// Whether scenario (12) closes again after its reopen while the other drain may still be
/// asleep. Not for the per-CPU counter, where three drains and a reopen on three threads ran
/// for over twenty minutes at bound 4 without finishing: a drain that is late across a reopen
/// and a later close is scenario (14), which the per-CPU counter runs with an acquirer in the
/// later close (the harder case: its guard is on the thread-local path).
const RECLOSE_WHILE_DRAINING: bool = false;

mod scenarios;

/// Scenarios of the per-CPU counter's thread-local entries (`src/counter/per_cpu/records.rs`): a `Guard` taken
/// with `try_acquire` sits in an entry of its thread's record (two entries under loom), and a
/// drain pairs its close with the acquirer's re-check through a heavy and a light barrier,
/// which loom models as a pair of `SeqCst` fences.
mod local_entries {
    use super::Drainable;
    use drainable_loom_tests::{Cell, model, thread};
    use std::sync::Arc;

    type Canary = Arc<Cell<u32>>;

    fn canary() -> (Arc<Drainable<Canary>>, Canary) {
        let cell = Arc::new(Cell::new(0));
        (Arc::new(Drainable::new(Arc::clone(&cell))), cell)
    }

    /// (L1) A thread holds more guards than it has entries: two in entries, the third in a
    /// slot. A drain racing their release must wait for all three, and every write made under
    /// them must happen before it returns.
    #[test]
    fn entries_and_an_overflow_slot_drain_together() {
        model(|| {
            let (d, cell) = canary();
            let holder = {
                let d = Arc::clone(&d);
                thread::spawn(move || {
                    let guards: Vec<_> = (0..3).filter_map(|_| d.try_acquire()).collect();
                    if let Some(g) = guards.last() {
                        g.set(guards.len() as u32);
                    }
                    drop(guards);
                })
            };
            d.drain();
            let seen = cell.get(); // races with the holder's write unless it happened before
            assert!(seen <= 3);
            cell.set(0xdead);
            holder.join().unwrap();
            assert!(d.is_drained());
        });
    }

    /// (L2) A committed drain must return once its close has ended, even while it waits on
    /// an entry of a guard taken *after* that close ended. The main thread holds a guard (in
    /// its record's entry) while a drainer closes and goes to sleep on that record; the main
    /// thread drops the guard, joins the close with a drain of its own, reopens, takes a new
    /// guard in the same entry and waits for the drainer while holding it. Woken by the first
    /// release, the drainer may read the word before the reopen and the entry after the new
    /// guard, and go back to sleep on the record: the reopen wakes drainers asleep on records
    /// (`records::wake_waiters`), and without that wake loom reports a deadlock. (Two threads:
    /// an earlier version used a third, the holder, and channels, and took over ten minutes at
    /// bound 4.)
    #[test]
    fn reopen_releases_a_drain_waiting_on_an_entry() {
        model(|| {
            let (d, cell) = canary();
            let g = d.try_acquire().expect("open: nobody drains yet");
            let drainer = {
                let d = Arc::clone(&d);
                thread::spawn(move || d.drain())
            };
            // The drainer's close must come before the reopen, or its drain would rightly wait
            // for the second guard below, which is held until it returns.
            while d.is_open() {
                thread::yield_now();
            }
            g.set(1);
            drop(g);
            d.drain();
            assert_eq!(cell.get(), 1, "drain() returned before the guard's write");
            assert!(d.reopen());
            let g = d
                .try_acquire()
                .expect("reopened, and nobody closes it again");
            drainer.join().unwrap();
            drop(g);
            assert!(d.is_open());
        });
    }

    /// (L3) A drain that finished its scan of the entries but not yet its wait on the word must
    /// not declare a *later* close drained. Here the main thread's drain completes, reopens,
    /// takes a guard in its entry and closes again with `prepare_drain`; the first drainer may
    /// resume only then. The word's count must still hold the new close's token for the
    /// entries (only a scan after that close gives it back), or that drainer would set
    /// `DRAINED` over a live guard. Found in review; loom finds it without the entries token.
    #[test]
    fn a_late_drainer_cannot_drain_a_later_close() {
        model(|| {
            let (d, _cell) = canary();
            let drainer = {
                let d = Arc::clone(&d);
                thread::spawn(move || d.drain())
            };
            d.drain();
            if d.reopen() {
                if let Some(g) = d.try_acquire() {
                    let p = d.prepare_drain();
                    assert!(!d.is_drained(), "drained while a guard is live");
                    drop(g);
                    drop(p);
                }
            }
            drainer.join().unwrap();
        });
    }
}

/// Scenarios of the slots made on first use (`Folding::install`, `src/counter/per_cpu/slots.rs`)
/// and of the arena they come from (`src/counter/per_cpu/arena.rs`): an owned guard is always
/// counted in the slots, so the first one installs them, under the control lock, in the fold
/// state the last close or open left.
mod lazy_slots {
    use super::Drainable;
    use drainable_loom_tests::{Cell, model, thread};
    use std::sync::Arc;

    type Canary = Arc<Cell<u32>>;

    fn canary() -> (Arc<Drainable<Canary>>, Canary) {
        let cell = Arc::new(Cell::new(0));
        (Arc::new(Drainable::new(Arc::clone(&cell))), cell)
    }

    /// (S1) The first owned guard installs the slots while a drain closes and folds. Installed
    /// before the fold, they are folded with the guard counted; after it, they start folded and
    /// the guard is refused. Either way the guard's write happens before the drain returns.
    #[test]
    fn slots_made_by_an_owned_guard_racing_a_drain() {
        model(|| {
            let (d, cell) = canary();
            let holder = {
                let d = Arc::clone(&d);
                thread::spawn(move || {
                    if let Some(g) = d.try_acquire_owned() {
                        g.set(1);
                    }
                })
            };
            d.drain();
            let seen = cell.get(); // races with the holder's write unless it happened before
            assert!(seen <= 1);
            cell.set(0xdead);
            holder.join().unwrap();
            assert!(d.is_drained());
        });
    }

    /// (S2) Slots installed while a reversible close is in effect start folded, and its undo
    /// unfolds them: an owned guard taken in any of the three windows (before the close,
    /// during it, after its undo) is counted by the later drain.
    #[test]
    fn slots_made_under_a_pending_close_are_unfolded_by_its_undo() {
        model(|| {
            let (d, cell) = canary();
            let holder = {
                let d = Arc::clone(&d);
                thread::spawn(move || {
                    if let Some(g) = d.try_acquire_owned() {
                        g.set(1);
                    }
                })
            };
            let p = d.prepare_drain();
            assert!(p.undo());
            d.drain();
            let seen = cell.get();
            assert!(seen <= 1);
            cell.set(0xdead);
            holder.join().unwrap();
            assert!(d.is_drained());
        });
    }

    /// (S3) A column given back by a dropped drainable is reused by the next one (two columns
    /// per chunk under the models), with a count its last owner leaked: a forgotten guard.
    /// The new owner's install overwrites it, so its drain waits for its own guards only (a
    /// stale count would hang it: loom reports the deadlock).
    #[test]
    fn a_reused_column_starts_clean() {
        model(|| {
            {
                let first = Drainable::new(0u32);
                // Two in the thread's entries, the third in the slots: forget all three.
                for _ in 0..3 {
                    std::mem::forget(first.try_acquire().expect("open"));
                }
            }
            let (d, cell) = canary();
            let holder = {
                let d = Arc::clone(&d);
                thread::spawn(move || {
                    if let Some(g) = d.try_acquire_owned() {
                        g.set(1);
                    }
                })
            };
            d.drain();
            assert!(cell.get() <= 1);
            cell.set(0xdead);
            holder.join().unwrap();
        });
    }
}
