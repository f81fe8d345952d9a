//! An rcutorture-style test of one `GraceDomain` shared by several writers, each retiring
//! elements its own way: `synchronize`, poll cookies, deferred drops (`retire`, re-queued from
//! inside the deferred `Drop`, as rcutorture's `call_rcu` callback re-queues itself) and
//! `GraceCell::store`.
//!
//! Every element carries a *pipe count*: 0 while published, 1 once unpublished, then one more
//! after each grace period that began after that. A reader reads the count inside one section,
//! after a short random dwell: a reader that sees 2 or more was still inside its section after
//! a whole grace period that should have waited for it. At `PIPE_LEN` an element is poisoned,
//! and it is freed after two more grace periods; a reader that sees the poison (or, under Miri,
//! touches the freed memory) fails too.
//!
//! Runs for `DRAINABLE_TORTURE_SECS` seconds (default 2; 50 ms under Miri).
//! `tests/torture.rs` checks canaries under `replace`; this file adds the pipe count and the
//! non-blocking ways to retire.

use drainable::{GraceCell, GraceDomain};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Grace periods after its removal at which an element is poisoned.
const PIPE_LEN: u32 = 4;
const ALIVE: u32 = 0xA11CE;
const POISON: u32 = 0xDEAD;
/// A small backlog limit, so that the full-backlog wait and the chained retires run often.
const BACKLOG_LIMIT: usize = 64;

struct Elem {
    pipe: AtomicU32,
    state: AtomicU32,
}

fn new_elem() -> NonNull<Elem> {
    NonNull::from(Box::leak(Box::new(Elem {
        pipe: AtomicU32::new(0),
        state: AtomicU32::new(ALIVE),
    })))
}

/// Counts what happened, for the failure message and to check that every path ran.
#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    violations: AtomicU64,
    grace_periods: AtomicU64,
    freed: AtomicU64,
    allocated: AtomicU64,
    max_backlog: AtomicUsize,
}

impl Stats {
    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// An element unpublished and handed to the domain: its drop runs after a grace period, bumps
/// the pipe count and re-queues itself, until the element is poisoned and, after two more grace
/// periods, freed.
struct Retired {
    elem: NonNull<Elem>,
    domain: Arc<GraceDomain>,
    stats: Arc<Stats>,
}

// SAFETY: the element is owned by this value (only readers share it, through atomics), so it
// may be dropped on any thread.
unsafe impl Send for Retired {}
// SAFETY: shared, it gives access to the element's atomics only (readers of the cell).
unsafe impl Sync for Retired {}

impl Drop for Retired {
    fn drop(&mut self) {
        // SAFETY: the element is live until the `pipe` count passes PIPE_LEN + 2 (below).
        let e = unsafe { self.elem.as_ref() };
        // A grace period has ended since this value was retired.
        let pipe = e.pipe.fetch_add(1, Ordering::Relaxed) + 1;
        if pipe == PIPE_LEN {
            e.state.store(POISON, Ordering::Relaxed);
        }
        if pipe < PIPE_LEN + 2 {
            // Retired from inside a deferred drop: queued past the limit, never waiting.
            self.domain.retire(Retired {
                elem: self.elem,
                domain: Arc::clone(&self.domain),
                stats: Arc::clone(&self.stats),
            });
        } else {
            // SAFETY: from `Box::leak`; two grace periods after the poison, no reader can hold
            // it; this is the element's last owner.
            drop(unsafe { Box::from_raw(self.elem.as_ptr()) });
            self.stats.bump(&self.stats.freed);
        }
    }
}

/// The value of the `GraceCell` writers `store` into: its drop (a grace period after the
/// store that unpublished it) marks the removal and starts the retire chain.
struct Stored(Option<Retired>);

impl Drop for Stored {
    fn drop(&mut self) {
        let r = self.0.take().expect("dropped once");
        // SAFETY: live (the chain below frees it later).
        let e = unsafe { r.elem.as_ref() };
        e.pipe.fetch_add(1, Ordering::Relaxed); // the removal mark, late but in order
        drop(r); // one grace period has ended since the store: bump and chain
    }
}

struct World {
    domain: Arc<GraceDomain>,
    /// The rcutorture "current" pointer, written by the synchronize, poll and retire writers.
    current: AtomicPtr<Elem>,
    cell: Arc<GraceCell<Stored>>,
    stop: AtomicBool,
    stats: Arc<Stats>,
}

impl World {
    fn retired(&self, elem: NonNull<Elem>) -> Retired {
        Retired {
            elem,
            domain: Arc::clone(&self.domain),
            stats: Arc::clone(&self.stats),
        }
    }

    /// Publishes a new element and returns the old one, marked as removed.
    fn swap(&self) -> NonNull<Elem> {
        self.stats.bump(&self.stats.allocated);
        // AcqRel: publishes the new element; takes the old one over from its publisher.
        let old = self.current.swap(new_elem().as_ptr(), Ordering::AcqRel);
        let old = NonNull::new(old).expect("never null");
        // SAFETY: live: only this writer now owns it.
        unsafe { old.as_ref() }.pipe.fetch_add(1, Ordering::Relaxed);
        old
    }

    fn note_backlog(&self) {
        self.stats
            .max_backlog
            .fetch_max(self.domain.backlog(), Ordering::Relaxed);
    }
}

/// A tiny xorshift generator, one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn check(e: &Elem, stats: &Stats, rng: &mut Rng) {
    let dwell = rng.next() % 64;
    for _ in 0..dwell {
        std::hint::spin_loop();
    }
    if rng.next() % 256 == 0 {
        std::thread::yield_now(); // now and then, a long section
    }
    let pipe = e.pipe.load(Ordering::Relaxed);
    let state = e.state.load(Ordering::Relaxed);
    if pipe >= 2 || state != ALIVE {
        stats.bump(&stats.violations);
        eprintln!("grace torture: a reader saw pipe count {pipe}, state {state:#x}");
    }
    stats.bump(&stats.reads);
}

fn reader(w: &World, seed: u64) {
    let mut rng = Rng(seed | 1);
    while !w.stop.load(Ordering::Relaxed) {
        // Every place a section can be counted: the thread's record (`enter`, `read`), the
        // per-CPU slots (`read_owned`), and both at once (nested sections past the record's
        // four entries go to the slots).
        match rng.next() % 4 {
            0 => {
                let _section = w.domain.enter();
                // Acquire: pairs with the writers' swap (publish → reader).
                let p = w.current.load(Ordering::Acquire);
                // SAFETY: freed only after grace periods that began after it was unpublished;
                // this section began before them (the property under test).
                check(unsafe { &*p }, &w.stats, &mut rng);
            }
            1 => {
                let g = w.cell.read();
                let e = g.0.as_ref().expect("published values hold an element");
                // SAFETY: as above; the cell's value is dropped only after a grace period.
                check(unsafe { e.elem.as_ref() }, &w.stats, &mut rng);
            }
            2 => {
                let g = w.cell.read_owned();
                let e = g.0.as_ref().expect("published values hold an element");
                // SAFETY: as above.
                check(unsafe { e.elem.as_ref() }, &w.stats, &mut rng);
            }
            _ => {
                let depth = 1 + (rng.next() % 6) as usize;
                let mut sections: Vec<_> = (0..depth).map(|_| w.domain.enter()).collect();
                // Acquire: as above. Loaded inside the innermost section, checked while the
                // sections end one by one, in a random order: the outermost left open is what
                // protects the element.
                let p = w.current.load(Ordering::Acquire);
                while sections.len() > 1 {
                    let i = (rng.next() as usize) % sections.len();
                    drop(sections.swap_remove(i));
                    // SAFETY: as above: at least one section that began before `p` was
                    // loaded is still open.
                    check(unsafe { &*p }, &w.stats, &mut rng);
                }
            }
        }
    }
}

/// The rcutorture `RTWS_SYNC` writer: each grace period bumps every element it still keeps.
fn sync_writer(w: &World) {
    let mut kept: Vec<NonNull<Elem>> = Vec::new();
    while !w.stop.load(Ordering::Relaxed) {
        kept.push(w.swap());
        w.domain.synchronize();
        w.stats.bump(&w.stats.grace_periods);
        kept.retain(|&e| bump_or_free(e, &w.stats));
    }
    drain_kept(w, kept, |w, kept| {
        w.domain.synchronize();
        kept.retain(|&e| bump_or_free(e, &w.stats));
    });
}

/// The polling writer: each element waits for a cookie taken after its last bump.
fn poll_writer(w: &World) {
    let mut kept = Vec::new();
    while !w.stop.load(Ordering::Relaxed) {
        kept.push((w.swap(), w.domain.start_grace_period()));
        poll_kept(w, &mut kept);
        std::thread::yield_now();
    }
    drain_kept(w, kept, poll_kept);
}

fn poll_kept(w: &World, kept: &mut Vec<(NonNull<Elem>, drainable::GraceCookie)>) {
    kept.retain_mut(|(e, cookie)| {
        if !w.domain.poll_grace_period(*cookie) {
            return true;
        }
        w.stats.bump(&w.stats.grace_periods);
        let live = bump_or_free(*e, &w.stats);
        *cookie = w.domain.start_grace_period();
        live
    });
}

/// Bumps the pipe count after a grace period; poisons at `PIPE_LEN`, frees two later. Returns
/// whether the element is still kept.
fn bump_or_free(e: NonNull<Elem>, stats: &Stats) -> bool {
    // SAFETY: kept elements are live.
    let r = unsafe { e.as_ref() };
    let pipe = r.pipe.fetch_add(1, Ordering::Relaxed) + 1;
    if pipe == PIPE_LEN {
        r.state.store(POISON, Ordering::Relaxed);
    }
    if pipe < PIPE_LEN + 2 {
        return true;
    }
    // SAFETY: from `Box::leak`, unpublished PIPE_LEN + 1 grace periods ago; last owner.
    drop(unsafe { Box::from_raw(e.as_ptr()) });
    stats.bump(&stats.freed);
    false
}

fn drain_kept<K>(w: &World, mut kept: Vec<K>, mut step: impl FnMut(&World, &mut Vec<K>)) {
    while !kept.is_empty() {
        step(w, &mut kept);
        std::thread::yield_now();
    }
}

/// The deferred writer: `retire` (the chain in `Retired::drop` does the rest).
fn retire_writer(w: &World) {
    while !w.stop.load(Ordering::Relaxed) {
        let old = w.swap();
        w.domain.retire(w.retired(old));
        w.note_backlog();
    }
}

/// The cell writer: `GraceCell::store`.
fn store_writer(w: &World) {
    while !w.stop.load(Ordering::Relaxed) {
        w.stats.bump(&w.stats.allocated);
        w.cell.store(Stored(Some(w.retired(new_elem()))));
        w.note_backlog();
    }
}

/// `DRAINABLE_TORTURE_SECS` (as `tests/torture.rs`), default 2 s; a short run under Miri.
fn run_for() -> Duration {
    if cfg!(miri) {
        return Duration::from_millis(50);
    }
    match std::env::var("DRAINABLE_TORTURE_SECS") {
        Ok(s) => Duration::from_secs_f64(
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or_else(|| panic!("DRAINABLE_TORTURE_SECS={s:?}: not a number of seconds")),
        ),
        Err(_) => Duration::from_secs(2),
    }
}

#[test]
fn grace_torture() {
    let domain = Arc::new(GraceDomain::with_backlog_limit(BACKLOG_LIMIT));
    let stats = Arc::new(Stats::default());
    let first = Retired {
        elem: new_elem(),
        domain: Arc::clone(&domain),
        stats: Arc::clone(&stats),
    };
    let w = World {
        current: AtomicPtr::new(new_elem().as_ptr()),
        cell: Arc::new(GraceCell::with_domain(
            Stored(Some(first)),
            Arc::clone(&domain),
        )),
        domain,
        stop: AtomicBool::new(false),
        stats,
    };
    stats_allocated_initial(&w);
    let readers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..readers {
            let w = &w;
            s.spawn(move || reader(w, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1)));
        }
        let writers: [fn(&World); 4] = [sync_writer, poll_writer, retire_writer, store_writer];
        for f in writers {
            let w = &w;
            s.spawn(move || f(w));
        }
        while start.elapsed() < run_for() {
            std::thread::sleep(Duration::from_millis(10));
        }
        w.stop.store(true, Ordering::Relaxed);
    });
    let World {
        domain,
        current,
        cell,
        stats,
        ..
    } = w;
    // Tear down: the cell's last value and the last published element join the chain; the
    // chain re-queues itself from its drops, so barrier until nothing is left.
    drop(cell);
    let last = NonNull::new(current.into_inner()).expect("never null");
    // SAFETY: nothing reads any more: the readers have stopped.
    unsafe { last.as_ref() }
        .pipe
        .fetch_add(1, Ordering::Relaxed);
    domain.retire(Retired {
        elem: last,
        domain: Arc::clone(&domain),
        stats: Arc::clone(&stats),
    });
    let mut rounds = 0;
    while domain.backlog() > 0 {
        domain.barrier();
        rounds += 1;
        assert!(
            rounds <= 2 * PIPE_LEN as usize + 4,
            "the backlog does not empty"
        );
    }
    let s = &stats;
    let report = format!(
        "reads {}, grace periods seen by the sync/poll writers {}, allocated {}, freed {}, \
         max backlog {}",
        s.reads.load(Ordering::Relaxed),
        s.grace_periods.load(Ordering::Relaxed),
        s.allocated.load(Ordering::Relaxed),
        s.freed.load(Ordering::Relaxed),
        s.max_backlog.load(Ordering::Relaxed),
    );
    eprintln!("grace torture: {report}");
    assert_eq!(s.violations.load(Ordering::Relaxed), 0, "{report}");
    assert!(s.reads.load(Ordering::Relaxed) > 0, "{report}");
    // Every element allocated was freed, exactly once (a double free would have crashed).
    assert_eq!(
        s.freed.load(Ordering::Relaxed),
        s.allocated.load(Ordering::Relaxed),
        "{report}"
    );
    // The bound: the writers' retires never pass the limit; chained retires from inside drops
    // add at most the batch being dropped, which left the backlog first.
    assert!(
        s.max_backlog.load(Ordering::Relaxed) <= 2 * BACKLOG_LIMIT,
        "{report}"
    );
}

/// The two elements made before the run (the first published one and the cell's) count as
/// allocated.
fn stats_allocated_initial(w: &World) {
    w.stats.allocated.fetch_add(2, Ordering::Relaxed);
}
