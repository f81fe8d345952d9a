//! Model tests of the drainable contract, shared by `Drainable` (`tests/drainable.rs`) and
//! `PerCpuDrainable` (`tests/per_cpu.rs`), which differ only in the types they bring into
//! scope as `Drainable` and `OwnedGuard`. Each scenario is run exhaustively by loom under
//! `--cfg drainable_loom`, and a few hundred times on real threads otherwise (see the crate
//! docs in `src/lib.rs`).
//!
//! The value behind each drainable is a [`Cell`] canary. Readers access it under guards; the
//! drainer accesses it after `drain()` (or `commit()`) returns, and the reopener before
//! `reopen()`. Loom reports any pair of those accesses that is not ordered by happens-before as
//! a data race, so a guard that outlives a drain, a drain that returns early, or an ordering
//! that is too weak fails the scenario even when no assertion does. Every scenario keeps to at
//! most three threads, the main one included.

use super::{Drainable, OwnedGuard};
use drainable_loom_tests::atomic::{AtomicBool, AtomicU32, Ordering};
use drainable_loom_tests::{Cell, model, spawn_with, thread};
use std::sync::Arc;
use std::time::Duration;

/// What the drainer writes once no guard can exist any more.
const POISON: u32 = 0xdead;

/// A drainable guarding a canary cell, and the drainer's own handle to the cell. The library
/// gives no access to the value but through guards (short of `&mut`), so the drainer reaches
/// the guarded data the way a real owner does: through its own pointer to it.
type Canary = Arc<Cell<u32>>;

fn canary(value: u32) -> (Arc<Drainable<Canary>>, Canary) {
    let cell = Arc::new(Cell::new(value));
    (Arc::new(Drainable::new(Arc::clone(&cell))), cell)
}

/// (1) A reader's acquisition races a drain. The reader either gets `None` or a guard whose
/// read happens before `drain()` returns; it never gets one after `drain()` returned.
#[test]
fn acquire_races_drain() {
    model(|| {
        let (d, cell) = canary(7);
        let drained = Arc::new(AtomicBool::new(false));

        let reader = {
            let (d, drained) = (Arc::clone(&d), Arc::clone(&drained));
            thread::spawn(move || {
                if let Some(g) = d.try_acquire() {
                    assert!(
                        !drained.load(Ordering::SeqCst),
                        "a guard was taken after drain() returned"
                    );
                    assert_eq!(g.get(), 7, "read the drainer's poison under a guard");
                }
            })
        };

        d.drain();
        drained.store(true, Ordering::SeqCst);
        cell.set(POISON); // races with the reader's read unless that read happened before
        assert!(d.is_drained());
        assert!(d.try_acquire().is_none());
        assert!(d.try_acquire_owned().is_none());

        reader.join().unwrap();
        assert!(
            d.try_acquire().is_none(),
            "the reader's back-out reopened it"
        );
    });
}

/// (2) The reader already holds a guard when the drain starts, so the drain must sleep and be
/// woken by the last release. A lost wake-up is a loom deadlock; a drain that returns before
/// the release fails the `released` check (and the canary race check).
#[test]
fn last_release_wakes_the_drain() {
    model(|| {
        let (d, cell) = canary(0);
        let held = Arc::new(AtomicBool::new(false));
        let released = Arc::new(AtomicBool::new(false));

        let reader = {
            let (d, held, released) = (Arc::clone(&d), Arc::clone(&held), Arc::clone(&released));
            thread::spawn(move || {
                let g = d.try_acquire().expect("nobody closed it yet");
                held.store(true, Ordering::Release);
                g.set(1); // the only guard: it may write
                released.store(true, Ordering::Relaxed);
                drop(g);
            })
        };

        while !held.load(Ordering::Acquire) {
            thread::yield_now();
        }
        d.drain();
        assert!(
            released.load(Ordering::Relaxed),
            "drain() returned while a guard was still held"
        );
        assert_eq!(
            cell.get(),
            1,
            "the write under the guard is not visible after drain()"
        );
        cell.set(POISON);
        assert!(d.is_drained());

        reader.join().unwrap();
    });
}

/// (3) Two drainers race while one guard is held: both must return, only after the guard's
/// write, whichever of them saw the count reach zero (the other learns it from `DRAINED`).
#[test]
fn two_drainers_one_guard() {
    model(|| {
        let (d, cell) = canary(0);
        let g = d.try_acquire().unwrap();

        let drainers: Vec<_> = (0..2)
            .map(|_| {
                let (d, cell) = (Arc::clone(&d), Arc::clone(&cell));
                thread::spawn(move || {
                    d.drain();
                    assert!(d.is_drained());
                    assert!(d.try_acquire().is_none());
                    assert_eq!(cell.get(), 1, "drain() returned before the guard's write");
                })
            })
            .collect();

        g.set(1); // the only guard: it may write
        drop(g);
        for t in drainers {
            t.join().unwrap();
        }
        assert!(d.is_drained());
        assert!(d.reopen(), "both drains done: reopen must succeed");
        assert!(d.try_acquire().is_some());
    });
}

/// (4) `prepare_drain` / `undo` race a reader. A reader that saw the `PendingDrain` exist (the
/// flag is set after `prepare_drain` returned) can only get a guard after the `undo`, and then
/// sees what was done before the `undo`. While the `PendingDrain` lives, nobody gets a guard,
/// even with the reader's back-out in flight; after the undo, acquisition succeeds again.
#[test]
fn prepare_and_undo_race_a_reader() {
    model(|| {
        let (d, _) = canary(0);
        // 0: not prepared yet; 1: a PendingDrain exists; 2: about to undo it.
        let phase = Arc::new(AtomicU32::new(0));

        let reader = {
            let (d, phase) = (Arc::clone(&d), Arc::clone(&phase));
            thread::spawn(move || {
                let before = phase.load(Ordering::Acquire);
                if let Some(g) = d.try_acquire() {
                    let _ = g.get();
                    if before == 1 {
                        assert_eq!(
                            phase.load(Ordering::Relaxed),
                            2,
                            "a guard was taken while a PendingDrain was live"
                        );
                    }
                }
            })
        };

        let p = d.prepare_drain();
        phase.store(1, Ordering::Release);
        assert!(!d.is_open());
        assert!(
            d.try_acquire().is_none(),
            "acquired while a PendingDrain was live"
        );
        assert!(p.outstanding() <= 1);
        phase.store(2, Ordering::Release);
        assert!(p.undo(), "the only close was undone: it must reopen");
        assert!(d.is_open());
        let g = d.try_acquire();
        assert!(g.is_some(), "no guard after the undo");
        drop(g);

        reader.join().unwrap();
        assert!(d.is_open());
    });
}

/// (5) A `PendingDrain` is undone while `drain()` runs on another thread. Once `drain()` has
/// returned the drainable stays drained: the undo must not reopen it, so a reader never gets a
/// guard that races with the drainer's poison write.
#[test]
fn undo_races_drain() {
    model(|| {
        let (d, cell) = canary(0);

        let undoer = {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                let p = d.prepare_drain();
                assert!(!d.is_open());
                // Drained or not, the word is held closed by `p`: reopen must refuse.
                assert!(
                    !d.reopen(),
                    "reopen succeeded while a PendingDrain was live"
                );
                p.undo()
            })
        };
        let reader = {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                if let Some(g) = d.try_acquire() {
                    assert_eq!(g.get(), 0, "a guard after drain() returned");
                }
            })
        };

        d.drain();
        cell.set(POISON);
        assert!(d.is_drained());
        undoer.join().unwrap();
        reader.join().unwrap();
        assert!(d.is_drained(), "an undo reopened a drained drainable");
        assert!(d.try_acquire().is_none());
        // The undo gave its pending close back: nothing is left to stop a reopen.
        assert!(d.reopen(), "a pending close leaked");
    });
}

/// (6) Drain / write / reopen cycles race a reader. What the drainer writes while drained must
/// be visible to (happen before) every guard taken after the reopen, and guards taken before a
/// drain must be done before the write.
#[test]
fn reopen_publishes_to_new_guards() {
    model(|| {
        let (d, cell) = canary(0);

        let reader = {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                let mut last = 0;
                for _ in 0..2 {
                    if let Some(g) = d.try_acquire() {
                        let v = g.get();
                        assert!(v <= 2 && v >= last, "read {v} after {last}");
                        last = v;
                    }
                }
            })
        };

        for generation in 1..=2 {
            d.drain();
            assert!(d.is_drained());
            cell.set(generation); // only legal because no guard can exist
            assert!(
                d.reopen(),
                "drained with no pending close: reopen must succeed"
            );
        }
        reader.join().unwrap();
        assert_eq!(d.try_acquire().expect("reopened").get(), 2);
    });
}

/// (7) Owned guards move to other threads, which write under them and drop them there. The
/// drain on the main thread waits for both drops and sees both writes.
#[test]
fn owned_guards_dropped_on_other_threads() {
    model(|| {
        let cells = Arc::new((Cell::new(0u32), Cell::new(0u32)));
        let d = Arc::new(Drainable::new(Arc::clone(&cells)));
        let a = d.try_acquire_owned().unwrap();
        let b = d.try_acquire_owned().unwrap();
        assert!(Arc::ptr_eq(OwnedGuard::drainable(&a), &d));

        let ta = spawn_with(a, |a| {
            a.0.set(1); // each guard writes its own cell
            drop(a);
        });
        let tb = spawn_with(b, |b| {
            b.1.set(1);
            drop(b);
        });

        d.drain();
        assert_eq!(
            (cells.0.get(), cells.1.get()),
            (1, 1),
            "drain() returned before a guard's write"
        );
        cells.0.set(POISON);
        cells.1.set(POISON);
        assert!(d.try_acquire_owned().is_none());

        ta.join().unwrap();
        tb.join().unwrap();
        assert_eq!(Arc::strong_count(&d), 1, "an owned guard kept its Arc");
    });
}

/// (8) Timed drains, with a guard held on another thread. Loom models every timed wait as
/// giving up at once; on real threads the timeout is zero. `drain_timeout` either drains or
/// reports the guard and reopens; `commit_timeout` either drains or keeps the drainable closed
/// until the `PendingDrain` is undone.
#[test]
fn timeouts_give_up_and_reopen() {
    model(|| {
        let (d, cell) = canary(0);
        let released = Arc::new(AtomicBool::new(false));
        let g = d.try_acquire_owned().unwrap();

        let holder = spawn_with((g, Arc::clone(&released)), |(g, released)| {
            g.set(1);
            released.store(true, Ordering::Relaxed);
            drop(g);
        });

        match d.drain_timeout(Duration::ZERO) {
            Ok(()) => {
                assert!(d.is_drained());
                assert!(
                    released.load(Ordering::Relaxed),
                    "drained with a guard held"
                );
                assert_eq!(cell.get(), 1);
                assert!(d.reopen());
            }
            Err(e) => {
                assert!(
                    e.outstanding() >= 1,
                    "timed out, yet reported {} outstanding guards",
                    e.outstanding()
                );
                assert!(d.is_open(), "a timed-out drain_timeout must reopen");
                assert!(d.try_acquire().is_some(), "reopened, yet refused a guard");
            }
        }

        let p = d.prepare_drain();
        match p.commit_timeout(Duration::ZERO) {
            Ok(()) => {
                assert!(d.is_drained());
                assert!(
                    released.load(Ordering::Relaxed),
                    "drained with a guard held"
                );
                assert_eq!(cell.get(), 1);
                assert!(d.reopen());
            }
            Err(p) => {
                assert!(!d.is_open(), "a timed-out commit must keep it closed");
                assert!(!d.is_drained());
                assert!(d.try_acquire().is_none());
                assert!(
                    !d.reopen(),
                    "reopen must refuse while a PendingDrain is live"
                );
                assert!(
                    p.into_pending().undo(),
                    "the only close was undone: it must reopen"
                );
                assert!(d.is_open());
            }
        }

        holder.join().unwrap();
        // Whatever happened above, nothing is left outstanding or pending.
        d.drain();
        assert_eq!(cell.get(), 1);
        assert!(d.reopen());
    });
}

/// (9) `prepare_drain` then `commit` on one thread race a reader: the commit returns only once
/// the reader's guard (if it got one) is gone, and no guard is taken after it.
#[test]
fn prepare_then_commit_races_a_reader() {
    model(|| {
        let (d, cell) = canary(0);
        let committed = Arc::new(AtomicBool::new(false));

        let reader = {
            let (d, committed) = (Arc::clone(&d), Arc::clone(&committed));
            thread::spawn(move || {
                for _ in 0..2 {
                    if let Some(g) = d.try_acquire() {
                        assert!(
                            !committed.load(Ordering::SeqCst),
                            "a guard was taken after commit() returned"
                        );
                        assert_eq!(g.get(), 0);
                    }
                }
            })
        };

        let p = d.prepare_drain();
        assert!(d.try_acquire().is_none());
        p.commit();
        committed.store(true, Ordering::SeqCst);
        cell.set(POISON);
        assert!(d.is_drained());
        assert!(d.try_acquire().is_none());

        reader.join().unwrap();
        assert!(d.reopen(), "commit left its pending close behind");
    });
}

/// (10) Drains race readers that may pass the open pre-check and then lose to the close, so
/// they back out with an increment and a decrement. Neither drain may hang on those counts
/// (nor on their missing wake-ups), and no count may survive them.
#[test]
fn drain_races_backing_out_readers() {
    model(|| {
        let (d, cell) = canary(0);

        let readers: Vec<_> = (0..super::BACKING_OUT_READERS)
            .map(|_| {
                let d = Arc::clone(&d);
                thread::spawn(move || {
                    if let Some(g) = d.try_acquire() {
                        assert!(g.get() <= 1, "a guard after the second drain");
                    }
                })
            })
            .collect();

        d.drain();
        cell.set(1);
        assert!(d.reopen());
        d.drain();
        cell.set(2);

        for t in readers {
            t.join().unwrap();
        }
        let p = d.prepare_drain();
        assert_eq!(p.outstanding(), 0, "a backed-out acquisition left a count");
        drop(p);
        assert!(d.is_drained());
        assert!(d.reopen());
    });
}

/// (11) `reopen` races a drain that may still be waiting for a guard. Reopen must refuse until
/// the drain has seen the count reach zero; a reopen that succeeded early would let the drain
/// return (it takes an open word as "drained, then reopened") while the guard still writes.
#[test]
fn reopen_refuses_while_closing() {
    model(|| {
        let (d, cell) = canary(0);
        let g = d.try_acquire_owned().unwrap();

        let holder = spawn_with(g, |g| {
            g.set(1); // the only guard: it may write
            drop(g);
        });
        let drainer = {
            let (d, cell) = (Arc::clone(&d), Arc::clone(&cell));
            thread::spawn(move || {
                d.drain();
                cell.set(POISON); // races with the guard's write unless it happened before
            })
        };

        let reopened = d.reopen();
        if reopened {
            assert!(
                d.is_open(),
                "reopen returned true, yet the drainable is closed"
            );
        }
        drainer.join().unwrap();
        holder.join().unwrap();
        assert_eq!(cell.get(), POISON);
        assert!(reopened || d.is_drained());
    });
}

/// (12) A drainer sleeps on the word while the main thread drains, reopens and drains it
/// again; the sleeping drain must not miss its wake-up on the way (loom reports a deadlock),
/// and every drain returns only after the guard that was held when it started.
#[test]
fn sleeping_drain_survives_a_reopen_cycle() {
    model(|| {
        let (d, cell) = canary(0);
        let g = d.try_acquire_owned().unwrap();

        let holder = spawn_with(g, |g| {
            g.set(1);
            drop(g);
        });
        let drainer = {
            let d = Arc::clone(&d);
            thread::spawn(move || d.drain())
        };

        d.drain();
        assert_eq!(cell.get(), 1, "drain() returned before the guard's write");
        assert!(d.reopen());
        if super::RECLOSE_WHILE_DRAINING {
            d.drain();
        }
        drainer.join().unwrap();
        holder.join().unwrap();
        d.drain();
        assert!(d.is_drained());
        assert!(d.try_acquire().is_none());
    });
}

/// (13) A guard is released while a reversible close is prepared and undone, and then a real
/// drain follows. For the per-CPU counter this walks the close → undo → close path in which
/// the first close's count may still be in flight (released on the slot, not yet on the
/// central count) when the second close folds: the drain must still wait for exactly that
/// guard, and its write must happen before the drain returns.
#[test]
fn release_across_prepare_undo_then_drain() {
    model(|| {
        let (d, cell) = canary(0);
        let holder = {
            let d = Arc::clone(&d);
            let g = d.try_acquire_owned().expect("open");
            spawn_with(g, move |g| {
                g.set(1);
                drop(g);
            })
        };
        let p = d.prepare_drain();
        assert!(d.try_acquire().is_none());
        p.undo();
        d.drain();
        assert_eq!(cell.get(), 1, "the drain returned before the guard's write");
        cell.set(POISON);
        holder.join().unwrap();
        assert!(d.is_drained());
        assert!(d.reopen());
        assert!(d.try_acquire().is_some());
    });
}

/// (14) A late drainer against a later close (the review's trace). A second thread drains
/// while the main thread drains too; the main thread's drain completes, it reopens, an
/// acquirer takes a guard and writes under it, and the main thread closes again with
/// `prepare_drain` and commits. The late drain may resume at any point; it must never finish,
/// commit or mark drained a close that is not its own: the main thread's commit waits for the
/// acquirer's guard (its write happens before the commit returns) and no guard is handed out
/// after the commit. For the per-CPU counter loom found the late drainer giving back the later
/// close's token after a scan made before that close.
#[test]
fn a_late_drain_never_finishes_a_later_close() {
    model(|| {
        let (d, cell) = canary(0);
        let late = {
            let d = Arc::clone(&d);
            thread::spawn(move || d.drain())
        };
        d.drain();
        assert!(d.reopen(), "drained, nothing pending: reopen must succeed");
        let acquirer = {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                if let Some(g) = d.try_acquire() {
                    g.set(1);
                }
            })
        };
        let p = d.prepare_drain();
        p.commit();
        // Races with the acquirer's write unless its guard was waited for; and a guard taken
        // after the commit would race with it too.
        cell.set(POISON);
        acquirer.join().unwrap();
        late.join().unwrap();
        assert!(d.is_drained());
    });
}

/// (15) A late drain must not turn a later reversible close into an irreversible one: the
/// main thread's `prepare_drain` after its reopen must stay undoable. The late drain's close
/// comes first (the main thread waits to see it), so it is over once the main thread's drain
/// has returned.
#[test]
fn a_late_drain_never_commits_a_later_prepare() {
    model(|| {
        let (d, _cell) = canary(0);
        let late = {
            let d = Arc::clone(&d);
            thread::spawn(move || d.drain())
        };
        while d.is_open() {
            thread::yield_now();
        }
        d.drain();
        assert!(d.reopen());
        let p = d.prepare_drain();
        assert!(
            p.undo(),
            "a late drain made a later prepare_drain irreversible"
        );
        late.join().unwrap();
        assert!(d.is_open());
    });
}

/// (16) More reversible closes than the word's pending field counts (loom shrinks the field's
/// limit to 2): a third close spills into the side table while the first two are undone on
/// another thread. The drainable must stay closed while any close is live, reopen exactly
/// when the last is given back, and leave nothing behind.
#[test]
fn closes_beyond_the_word_spill_and_come_back() {
    model(|| {
        let (d, _cell) = canary(0);
        let first = d.prepare_drain();
        let second = d.prepare_drain();
        let third = {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                let p = d.prepare_drain();
                assert!(!d.is_open(), "open while a spilled close is live");
                assert!(d.try_acquire().is_none());
                p.undo()
            })
        };
        let reopened_first = first.undo();
        let reopened_second = second.undo();
        let reopened_third = third.join().unwrap();
        // The first is undone while the second is live; the third reopens again only if its
        // close came after the second's undo had reopened (then it was not spilled).
        assert!(!reopened_first, "reopened while the second close was live");
        assert!(
            reopened_second || reopened_third,
            "the last give-back must reopen"
        );
        assert!(d.is_open());
        d.drain();
        assert!(d.reopen(), "a close was left behind");
    });
}

/// An owned acquisition made after the reader saw the drain begin is refused, for the per-CPU
/// counter too, whose close sets the word before it folds the slots (under its control lock):
/// an increment in that window is counted by the fold, but `try_acquire_owned` must still say
/// `None` once the drainable reads closed (a CI run caught `Debug` showing a value while
/// `Closing`).
#[test]
fn an_owned_acquisition_after_the_close_is_seen_is_refused() {
    model(|| {
        let (d, cell) = canary(7);
        // An owned guard first: the per-CPU slots exist from here on (the window is between
        // the word's close and the fold of slots already made).
        drop(d.try_acquire_owned());
        let reader = {
            let d = Arc::clone(&d);
            thread::spawn(move || {
                if !d.is_open() {
                    assert!(
                        d.try_acquire_owned().is_none(),
                        "an owned guard was taken after the drain was seen to begin"
                    );
                }
            })
        };
        d.drain();
        cell.set(POISON);
        reader.join().unwrap();
    });
}
