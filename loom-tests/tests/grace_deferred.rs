//! Model tests of deferred drops: `GraceCell::store` and `GraceDomain::retire` against read
//! sections, the batch collectors and `barrier`. A retired value's `Drop` writes a loom-checked
//! cell that readers read inside their sections, so a drop that does not happen-after every
//! section that could see the value is reported as a data race; a read of that cell after
//! `barrier` returns is likewise reported unless the drop (on whichever thread ran it)
//! happens-before the barrier's return.

use drainable::{GraceCell, GraceDomain};
use drainable_loom_tests::atomic::{AtomicBool, Ordering};
use drainable_loom_tests::{Cell, model, thread};
use std::sync::Arc;

const POISON: u32 = 0xdead;

/// A value whose drop poisons a shared canary (a write access under loom).
struct Val {
    canary: Arc<Cell<u32>>,
}

impl Val {
    fn new(v: u32) -> (Self, Arc<Cell<u32>>) {
        let canary = Arc::new(Cell::new(v));
        (
            Val {
                canary: Arc::clone(&canary),
            },
            canary,
        )
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.canary.set(POISON);
    }
}

/// A reader inside its section and a writer that stores (retiring the old value) and then
/// waits with `barrier`: the drop never races the reader's access, and after `barrier` the drop
/// has run and happens-before. (The drop running on a third thread is the next scenario's.)
#[test]
fn a_deferred_drop_never_runs_under_a_section_that_could_see_it() {
    model(|| {
        let domain = Arc::new(GraceDomain::new());
        let (v1, old_canary) = Val::new(1);
        let cell = Arc::new(GraceCell::with_domain(v1, Arc::clone(&domain)));
        let reader = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                let g = cell.read();
                let v = g.canary.get();
                assert!(v == 1 || v == 2, "read {v:#x}");
            })
        };
        let (v2, _new_canary) = Val::new(2);
        cell.store(v2);
        domain.barrier();
        // The drop ran and happens-before this read.
        assert_eq!(old_canary.get(), POISON);
        reader.join().unwrap();
    });
}

/// `barrier` waits for every drop deferred before it, including one that a collector on
/// another thread has taken out of the backlog and is running right now.
#[test]
fn barrier_waits_for_drops_deferred_before_it() {
    model(|| {
        let domain = Arc::new(GraceDomain::with_backlog_limit(1));
        let retired = Arc::new(AtomicBool::new(false));
        let (v, canary) = Val::new(1);
        let retirer = {
            let (domain, retired) = (Arc::clone(&domain), Arc::clone(&retired));
            thread::spawn(move || {
                domain.retire(v);
                // Release: the retire is before the barrier that reads this (below).
                retired.store(true, Ordering::Release);
                // A collector racing the barrier: it may take and run the drop.
                let cookie = domain.start_grace_period();
                domain.poll_grace_period(cookie);
            })
        };
        // Acquire: pairs with the Release above.
        if retired.load(Ordering::Acquire) {
            domain.barrier();
            assert_eq!(canary.get(), POISON, "barrier returned before the drop");
        }
        retirer.join().unwrap();
        domain.barrier();
        assert_eq!(canary.get(), POISON);
    });
}

/// A full backlog (limit 1) with a reader inside: the second retire waits for the reader
/// rather than growing the backlog, and drops the first value only after the reader left.
#[test]
fn a_full_backlog_waits_for_the_reader() {
    model(|| {
        let domain = Arc::new(GraceDomain::with_backlog_limit(1));
        let (v1, canary1) = Val::new(1);
        let cell = Arc::new(GraceCell::with_domain(v1, Arc::clone(&domain)));
        let reader = {
            let cell = Arc::clone(&cell);
            thread::spawn(move || {
                let g = cell.read();
                assert_ne!(g.canary.get(), POISON);
            })
        };
        let (v2, _c2) = Val::new(2);
        cell.store(v2);
        assert!(domain.backlog() <= 1);
        let (v3, _c3) = Val::new(3);
        cell.store(v3);
        assert!(domain.backlog() <= 1);
        reader.join().unwrap();
        domain.barrier();
        assert_eq!(canary1.get(), POISON);
        assert_eq!(domain.backlog(), 0);
    });
}
