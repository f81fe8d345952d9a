//! Model tests of `Registry`: each scenario is run exhaustively by loom under
//! `--cfg drainable_loom`, and a few hundred times on real threads otherwise (see the crate
//! docs in `src/lib.rs`).
//!
//! Two kinds of checked cell take part. The registry's own slots are loom cells under
//! `drainable_loom`, so loom checks the library's accesses: the write of a value by `register`,
//! the reads by callers, and the take by a removal. The values registered here are [`Cell`]
//! canaries, so loom also checks the user's side: a caller's read under `for_each` must
//! happen before the remover's write after `unregister` returns, and after a registration's
//! initialising write. Each scenario keeps to at most three threads, the main one included.
//!
//! Under loom the registry's first chunk has one slot, so a second registration grows the
//! slot list and publishes a chunk.

use drainable::{Counter, PerCpu, Registry, Shared};
use drainable_loom_tests::atomic::{AtomicBool, AtomicU32, Ordering};
use drainable_loom_tests::{Cell, model, spawn_with};
use std::sync::Arc;
use std::time::Duration;

/// What the remover writes once no call can be in flight any more.
const POISON: u32 = 0xdead;

type Reg<C> = Arc<Registry<Cell<u32>, C>>;

fn registry<C: Counter>() -> Reg<C> {
    Arc::new(Registry::with_counter())
}

/// (1) A caller's pass races a removal. Every read in a callback happens before
/// `unregister` returns (else the poison write races with it), and no callback starts after.
fn for_each_races_unregister<C: Counter>() {
    model(|| {
        let r = registry::<C>();
        let h = r.register(Cell::new(7));
        let removed = Arc::new(AtomicBool::new(false));

        let caller = spawn_with((Arc::clone(&r), Arc::clone(&removed)), |(r, removed)| {
            r.for_each(|c| {
                assert!(
                    !removed.load(Ordering::SeqCst),
                    "a callback ran after unregister returned"
                );
                assert_eq!(c.get(), 7, "a callback read the remover's poison");
            });
        });

        let cell = r.unregister(h);
        removed.store(true, Ordering::SeqCst);
        cell.set(POISON); // races with the callback's read unless that read happened before
        assert!(r.is_empty());
        let mut calls = 0;
        r.for_each(|_| calls += 1);
        assert_eq!(calls, 0);

        caller.join().unwrap();
    });
}

#[test]
fn for_each_races_unregister_shared() {
    for_each_races_unregister::<Shared>();
}

#[test]
fn for_each_races_unregister_per_cpu() {
    for_each_races_unregister::<PerCpu>();
}

/// (2) Registrations race a caller's pass. The first registration allocates and publishes
/// chunk 0, the second grows the list into chunk 1. A caller that reaches an entry sees the
/// value written before it was registered (and the library's own write of the slot).
fn register_races_for_each<C: Counter>() {
    model(|| {
        let r = registry::<C>();

        let caller = spawn_with(Arc::clone(&r), |r| {
            let mut seen = 0;
            r.for_each(|c| {
                let v = c.get();
                assert!(
                    v == 1 || v == 2,
                    "a callback read {v:#x}, not the initialised value"
                );
                seen += 1;
            });
            assert!(seen <= 2);
        });

        let a = Cell::new(0);
        a.set(1); // initialised before registration: a caller must see it
        let ha = r.register(a);
        let b = Cell::new(0);
        b.set(2);
        let hb = r.register(b);

        caller.join().unwrap();
        let values: Vec<u32> = r.unregister_all([ha, hb]).iter().map(Cell::get).collect();
        assert_eq!(values, [1, 2]);
    });
}

#[test]
fn register_races_for_each_shared() {
    register_races_for_each::<Shared>();
}

#[test]
fn register_races_for_each_per_cpu() {
    register_races_for_each::<PerCpu>();
}

/// (3) `prepare_unregister` / `undo` race a caller. A caller that saw the `PendingRemoval`
/// exist (the flag is set after `prepare_unregister` returned) reaches the entry only after
/// the undo. While the removal is pending nobody reaches it; after the undo everybody does.
#[test]
fn prepare_and_undo_race_a_caller() {
    model(|| {
        let r = registry::<Shared>();
        let h = r.register(Cell::new(3));
        // 0: not prepared yet; 1: a PendingRemoval exists; 2: about to undo it.
        let phase = Arc::new(AtomicU32::new(0));

        let caller = spawn_with((Arc::clone(&r), Arc::clone(&phase)), |(r, phase)| {
            let before = phase.load(Ordering::Acquire);
            r.for_each(|c| {
                assert_eq!(c.get(), 3);
                if before == 1 {
                    assert_eq!(
                        phase.load(Ordering::Relaxed),
                        2,
                        "a callback ran while its removal was pending"
                    );
                }
            });
        });

        let pending = r.prepare_unregister(h);
        phase.store(1, Ordering::Release);
        assert_eq!(r.iter().count(), 0, "reached while the removal was pending");
        assert!(pending.outstanding() <= 1);
        phase.store(2, Ordering::Release);
        let h = pending.undo();
        assert_eq!(r.iter().count(), 1, "not reached after the undo");

        caller.join().unwrap();
        let cell = r.unregister(h);
        cell.set(POISON);
    });
}

/// (4) A removed entry's slot is reused by the next registration while a caller makes two
/// passes. The caller reads the old value or the new one, never the poison, and the
/// library's take of the old value and write of the new one are ordered with its reads.
#[test]
fn slot_reuse_races_a_caller() {
    model(|| {
        let r = registry::<Shared>();
        let ha = r.register(Cell::new(1));

        let caller = spawn_with(Arc::clone(&r), |r| {
            for _ in 0..2 {
                r.for_each(|c| {
                    let v = c.get();
                    assert!(v == 1 || v == 2, "a callback read {v:#x}");
                });
            }
        });

        let a = r.unregister(ha);
        a.set(POISON);
        let hb = r.register(Cell::new(2)); // the free slot: same memory as `a`'s
        assert_eq!(r.iter().map(|c| c.get()).collect::<Vec<_>>(), [2]);

        caller.join().unwrap();
        r.unregister(hb).set(POISON);
    });
}

/// (5) "Unload or fail" races a caller. Loom models the timed wait as giving up at once (on
/// real threads the timeout is zero). Either the removal succeeds, after the caller's read,
/// or it fails reporting the call in flight, and the entry is live again.
#[test]
fn unregister_timeout_races_a_caller() {
    model(|| {
        let r = registry::<Shared>();
        let h = r.register(Cell::new(5));

        let caller = spawn_with(Arc::clone(&r), |r| {
            r.for_each(|c| assert_eq!(c.get(), 5));
        });

        let h = match r.unregister_timeout(h, Duration::ZERO) {
            Ok(cell) => {
                cell.set(POISON);
                None
            }
            Err(e) => {
                assert!(e.outstanding() >= 1, "timed out with nothing in flight");
                assert_eq!(r.iter().count(), 1, "not live again after a timeout");
                Some(e.into_registration())
            }
        };

        caller.join().unwrap();
        if let Some(h) = h {
            r.unregister(h).set(POISON);
        }
        assert!(r.is_empty());
    });
}

/// (6) A batch removal of two entries races a caller's pass: when `unregister_all` returns,
/// every read of either value happened before.
#[test]
fn unregister_all_races_a_caller() {
    model(|| {
        let r = registry::<Shared>();
        let ha = r.register(Cell::new(1));
        let hb = r.register(Cell::new(2));

        let caller = spawn_with(Arc::clone(&r), |r| {
            r.for_each(|c| {
                let v = c.get();
                assert!(v == 1 || v == 2, "a callback read {v:#x}");
            });
        });

        for cell in r.unregister_all([ha, hb]) {
            cell.set(POISON);
        }
        assert!(r.is_empty());

        caller.join().unwrap();
    });
}

/// (7) A removal and a registration on two threads while a caller makes a pass. The new
/// entry may take the removed entry's slot (handed over through the free list under the
/// registry's lock) or grow the list, depending on the interleaving; either way the caller
/// reads initialised values only, and nothing it reads is written after the removal
/// returned.
fn remove_and_register_race_a_caller<C: Counter>() {
    model(|| {
        let r = registry::<C>();
        let ha = r.register(Cell::new(1));

        let caller = spawn_with(Arc::clone(&r), |r| {
            r.for_each(|c| {
                let v = c.get();
                assert!(v == 1 || v == 2, "a callback read {v:#x}");
            });
        });
        let registrar = spawn_with(Arc::clone(&r), |r| {
            let b = Cell::new(0);
            b.set(2);
            r.register(b)
        });

        r.unregister(ha).set(POISON);

        caller.join().unwrap();
        let hb = registrar.join().unwrap();
        assert_eq!(r.iter().map(|c| c.get()).collect::<Vec<_>>(), [2]);
        r.unregister(hb).set(POISON);
        assert!(r.is_empty());
    });
}

#[test]
fn remove_and_register_race_a_caller_shared() {
    remove_and_register_race_a_caller::<Shared>();
}

#[test]
fn remove_and_register_race_a_caller_per_cpu() {
    remove_and_register_race_a_caller::<PerCpu>();
}

/// (8) A lookup by a stale id races the reuse of its slot. The caller's `get(a)` finds entry
/// `a` (value 1, read before the removal returned) or nothing, never the next occupant (2)
/// nor the poison; its read of the slot's generation under the guard is ordered with the
/// registration's write of it (the slot's cell is loom's checked cell). Afterwards `a`'s id
/// finds nothing and `b`'s finds `b`, though both name the same slot.
#[test]
fn get_by_stale_id_races_slot_reuse() {
    model(|| {
        let r = registry::<Shared>();
        let ha = r.register(Cell::new(1));
        let a = ha.id();

        let caller = spawn_with(Arc::clone(&r), move |r| {
            if let Some(g) = r.get(a) {
                assert_eq!(g.get(), 1, "a stale id found another occupant");
                assert_eq!(g.id(), a);
            }
        });

        r.unregister(ha).set(POISON);
        let hb = r.register(Cell::new(2)); // the free slot: same memory as `a`'s
        let b = hb.id();

        caller.join().unwrap();
        assert!(r.get(a).is_none());
        assert_eq!(r.get(b).map(|g| g.get()), Some(2));
        r.unregister(hb).set(POISON);
    });
}
