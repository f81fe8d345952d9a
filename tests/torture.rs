//! Torture test, through the public API only: every operation at once, from many threads, on
//! values that are poisoned and freed the moment the library says no reader can reach them.
//!
//! - **Drainables** ([`Drainable`](drainable::Drainable) and
//!   [`PerCpuDrainable`](drainable::PerCpuDrainable), one generic body): readers churn borrowed
//!   guards (one at a time, and several at once, past the per-CPU counter's thread-local
//!   entries), owned guards, and owned guards handed to another reader to check and drop.
//!   Against them, on the same few drainables, an *owner* per drainable drains in every way
//!   the API offers, and *helpers* run reversible drains (`prepare_drain` + `undo` or drop,
//!   `commit_timeout` and `drain_timeout` with tiny timeouts).
//! - **Registry** (both counters): callers run `for_each` and hold `iter` guards while
//!   registrars register and remove in every way (`unregister`, `unregister_timeout`,
//!   `prepare_unregister` + `commit` / `commit_timeout` / `undo`, `unregister_all`).
//! - **GraceCell**: readers (nested read sections included) while writers `replace` and
//!   `update` and wait out grace periods of a shared domain.
//!
//! Every guarded value is a [`Canary`]: a plain word and a heap cell, both [`ALIVE`], read
//! with plain (non-atomic) accesses under guards only. Whoever the library has told that no
//! reader can reach a value (a completed drain, a returned removal or replacement) writes
//! [`POISON`] into it and frees its heap cell. A library bug therefore shows up three ways:
//! natively as a reader seeing `POISON` (counted as a violation), under ThreadSanitizer as a
//! data race on the plain word, and under AddressSanitizer as a heap use-after-free.
//!
//! Who may poison a drainable's value: only its owner thread, and only while the drainable is
//! drained; the owner is also the only thread that ever calls `reopen`. Helpers close and
//! wait, but never reopen (a helper's timed drain that succeeds leaves the drainable drained
//! for the owner to find). So while the owner sees `is_drained()`, no guard exists and none
//! can be taken until the owner itself reopens. At most four reversible drains run at once on
//! one drainable (the owner and three helpers).
//!
//! Bounded by time: `DRAINABLE_TORTURE_SECS` (default 1.5) is shared by the tests of this
//! file. Each one runs its share, and then on until every thread has made progress and every
//! kind of event it counts has happened at least once (never a timing as an assertion). If
//! nothing progresses for [`PATIENCE`], or threads do not stop, it aborts with a report on
//! stderr rather than hang. Skipped under Miri (the loom scenarios and `stress.rs` cover it).

use drainable::{Counter, DrainableWith, GraceCell, GraceDomain, OwnedGuard, PerCpu, Registry};
use drainable::{Registration, Shared};
use std::cell::UnsafeCell;
use std::hint::{black_box, spin_loop};
use std::io::Write;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

const ALIVE: u64 = 0xA11C_E5ED_A11C_E5ED;
const POISON: u64 = 0xDEAD_BEEF_DEAD_BEEF;

/// How long nothing may progress (or a thread may take to stop) before the test aborts.
const PATIENCE: Duration = Duration::from_secs(60);

/// The tests of this file, which share `DRAINABLE_TORTURE_SECS` (keep it up to date).
const TESTS: u32 = 5;

/// This test's share of `DRAINABLE_TORTURE_SECS` (default 1.5 s for the whole file).
fn budget() -> Duration {
    let total = match std::env::var("DRAINABLE_TORTURE_SECS") {
        Ok(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| panic!("DRAINABLE_TORTURE_SECS={s:?}: not a number of seconds")),
        Err(_) => 1.5,
    };
    Duration::from_secs_f64(total) / TESTS
}

/// The seed of this run: `DRAINABLE_TORTURE_SEED`, or the clock. It only picks operations; the
/// schedule is the machine's, so a seed does not replay a failure, but names the run.
fn seed() -> u64 {
    if let Ok(s) = std::env::var("DRAINABLE_TORTURE_SEED") {
        return s.trim().parse().expect("DRAINABLE_TORTURE_SEED: not a u64");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    nanos | 1
}

/// The tests each keep both cores busy: run them one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small xorshift generator, one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, thread: usize) -> Self {
        // Spread the per-thread seeds (splitmix64 constant); never 0.
        Rng((seed ^ (thread as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }

    /// A tiny timeout, zero included, for the timed drains.
    fn tiny(&mut self) -> Duration {
        match self.below(5) {
            0 => Duration::ZERO,
            1 => Duration::from_micros(1),
            2 => Duration::from_micros(10),
            3 => Duration::from_micros(100),
            _ => Duration::from_millis(1),
        }
    }

    /// Stays a little while (inside a guard, or before letting a value go): a few spins, now
    /// and then a yield, so that the other side often finds it there.
    fn dwell(&mut self) {
        for _ in 0..self.below(64) {
            spin_loop();
        }
        if self.below(32) == 0 {
            thread::yield_now();
        }
    }
}

/// A `u64` read and written with plain, non-atomic accesses (not volatile: ThreadSanitizer
/// does not check volatile accesses). Only the protocol under test orders them, so a broken
/// drain is a data race that ThreadSanitizer reports.
struct Plain(UnsafeCell<u64>);

// SAFETY: every access goes through `get`/`set`, whose callers promise that no write races
// with another access: that promise is what the library's guarantees provide, and what this
// test checks.
unsafe impl Sync for Plain {}

impl Plain {
    fn new(v: u64) -> Self {
        Plain(UnsafeCell::new(v))
    }

    /// # Safety
    /// No write may race with this read.
    unsafe fn get(&self) -> u64 {
        // SAFETY: the pointer is valid; the caller rules out a racing write.
        unsafe { *self.0.get() }
    }

    /// # Safety
    /// No other access may race with this write.
    unsafe fn set(&self, v: u64) {
        // SAFETY: as in `get`.
        unsafe { *self.0.get() = v }
    }
}

/// The guarded value: a plain word and a heap cell, both `ALIVE` whenever a reader can reach
/// them.
struct Canary {
    word: Plain,
    /// A `Box<Plain>`; the owner frees and replaces it while drained. `Relaxed` accesses: the
    /// readers' view of it is ordered by the library alone.
    heap: AtomicPtr<Plain>,
}

fn new_heap() -> *mut Plain {
    Box::into_raw(Box::new(Plain::new(ALIVE)))
}

impl Canary {
    fn new() -> Self {
        Canary {
            word: Plain::new(ALIVE),
            heap: AtomicPtr::new(new_heap()),
        }
    }

    /// Whether the canary is intact, its heap cell `seen` earlier under the same guard (if
    /// any) included: a reader's check. Returns the heap cell it found now.
    ///
    /// # Safety
    /// The caller holds a guard (an entry guard, a read section) that keeps the value from
    /// being poisoned or freed, if the library is right, and has held it since it saw `seen`.
    unsafe fn alive(&self, seen: Option<*const Plain>) -> (bool, *const Plain) {
        let heap = self.heap.load(Relaxed);
        // SAFETY: the caller's guard; a library bug is the race or use-after-free that the
        // sanitizers report (a cell seen earlier is the one a broken drain frees meanwhile).
        let alive = unsafe {
            self.word.get() == ALIVE
                && (*heap).get() == ALIVE
                && seen.is_none_or(|seen| (*seen).get() == ALIVE)
        };
        (alive, heap)
    }

    /// Poisons the value, lets it stay poisoned a moment, frees its heap cell and installs a
    /// fresh one, then restores the word: what a drained drainable's owner does.
    ///
    /// # Safety
    /// No reader can reach the value until the caller lets them again (a drained drainable
    /// that only the caller reopens).
    unsafe fn poison_and_restore(&self, rng: &mut Rng) {
        // The fresh cell is allocated before the old one is freed, so it never takes the old
        // address: a stale reader finds poison or freed memory, never a live-looking cell.
        let fresh = new_heap();
        let old = self.heap.swap(fresh, Relaxed);
        // SAFETY: the caller's promise: no reader, so no racing access; `old` is a live Box,
        // freed only here.
        unsafe {
            self.word.set(POISON);
            (*old).set(POISON);
            black_box(&*old);
            rng.dwell();
            drop(Box::from_raw(old));
            self.word.set(ALIVE);
        }
    }

    /// Poisons the value and frees it: what a removal's or a replacement's caller does with
    /// the value handed back.
    fn kill(self, rng: &mut Rng) {
        let heap = self.heap.load(Relaxed);
        // SAFETY: the value was handed back by value: nobody else can reach it (a registry
        // slot's stale copy still points to `heap`, which a broken removal would let a caller
        // read as poison, or as freed memory).
        unsafe {
            self.word.set(POISON);
            (*heap).set(POISON);
        }
        black_box(&self);
        rng.dwell();
        drop(self); // frees `heap`
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        // SAFETY: `heap` is a live Box, owned by this value.
        drop(unsafe { Box::from_raw(*self.heap.get_mut()) });
    }
}

/// What a torture test's threads share: the stop flag, a progress count per thread, and the
/// violations seen.
struct Run {
    test: &'static str,
    seed: u64,
    stop: AtomicBool,
    names: Vec<String>,
    progress: Vec<AtomicUsize>,
    finished: Vec<AtomicBool>,
    violations: AtomicUsize,
    first_violation: Mutex<Option<String>>,
}

/// One thread's handle on the [`Run`].
struct Worker<'r> {
    run: &'r Run,
    index: usize,
}

impl Worker<'_> {
    /// Until the supervisor (or a failing thread) stops the run.
    fn going(&self) -> bool {
        !self.run.stop.load(Relaxed)
    }

    /// This thread made progress.
    fn tick(&self) {
        self.run.progress[self.index].fetch_add(1, Relaxed);
    }

    fn violation(&self, what: &str) {
        if self.run.violations.fetch_add(1, Relaxed) == 0 {
            let mut first = self.run.first_violation.lock().unwrap();
            first.get_or_insert_with(|| format!("{}: {what}", self.run.names[self.index]));
        }
    }

    /// Counts a violation unless the canary is intact. Returns the heap cell it saw, for
    /// [`recheck`](Self::recheck).
    ///
    /// # Safety
    /// As [`Canary::alive`].
    unsafe fn check(&self, c: &Canary, under: &str) -> *const Plain {
        // SAFETY: forwarded to the caller.
        let (alive, heap) = unsafe { c.alive(None) };
        if !alive {
            self.violation(&format!("a poisoned value under {under}"));
        }
        heap
    }

    /// [`check`](Self::check) again, later under the same guard, the heap cell `seen` by the
    /// first check included.
    ///
    /// # Safety
    /// As [`Canary::alive`].
    unsafe fn recheck(&self, c: &Canary, seen: *const Plain, under: &str) {
        // SAFETY: forwarded to the caller.
        if !unsafe { c.alive(Some(seen)) }.0 {
            self.violation(&format!("a poisoned value under {under}"));
        }
    }

    fn seed(&self) -> u64 {
        self.run.seed
    }

    /// Panics unless `deadline` (a [`PATIENCE`] from some start) is still ahead.
    fn patience(&self, deadline: Instant, what: &str) {
        assert!(
            Instant::now() < deadline,
            "{}: {what} for {PATIENCE:?}",
            self.run.names[self.index]
        );
    }
}

/// Marks a thread finished, also while unwinding; a panicking thread stops the run.
struct Finished<'r>(&'r Run, usize);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stop.store(true, Relaxed);
        }
        self.0.finished[self.1].store(true, Relaxed);
    }
}

type Body<'s> = Box<dyn FnOnce(&Worker<'_>) + Send + 's>;

/// A named thread body.
struct Role<'s> {
    name: String,
    body: Body<'s>,
}

fn role<'s>(name: impl Into<String>, body: impl FnOnce(&Worker<'_>) + Send + 's) -> Role<'s> {
    Role {
        name: name.into(),
        body: Box::new(body),
    }
}

impl Run {
    fn board(&self) -> String {
        let mut s = String::new();
        for ((name, p), f) in self.names.iter().zip(&self.progress).zip(&self.finished) {
            let state = if f.load(Relaxed) {
                "stopped"
            } else {
                "running"
            };
            s += &format!("  {name}: {} ({state})\n", p.load(Relaxed));
        }
        s
    }

    /// Reports on the real stderr (the harness does not capture it) and aborts: threads that
    /// may never return cannot be joined.
    fn abort(&self, why: &str, events: &[(&str, usize)]) -> ! {
        let _ = writeln!(
            std::io::stderr(),
            "torture `{}` (seed {}): {why}; aborting.\nprogress per thread:\n{}events: {events:?}",
            self.test,
            self.seed,
            self.board()
        );
        std::process::abort();
    }
}

/// Runs `roles` on their own threads for this test's [`budget`], then until every thread has
/// made progress and every event `events` counts has happened at least once; then stops
/// them and checks that no violation was seen.
fn torture(
    test: &'static str,
    roles: Vec<Role<'_>>,
    events: &dyn Fn() -> Vec<(&'static str, usize)>,
) {
    let _serial = serial();
    let seed = seed();
    let run = Run {
        test,
        seed,
        stop: AtomicBool::new(false),
        names: roles.iter().map(|r| r.name.clone()).collect(),
        progress: roles.iter().map(|_| AtomicUsize::new(0)).collect(),
        finished: roles.iter().map(|_| AtomicBool::new(false)).collect(),
        violations: AtomicUsize::new(0),
        first_violation: Mutex::new(None),
    };
    let mut unmet = None;
    thread::scope(|s| {
        for (index, r) in roles.into_iter().enumerate() {
            let run = &run;
            thread::Builder::new()
                .name(r.name)
                .spawn_scoped(s, move || {
                    let _finished = Finished(run, index);
                    (r.body)(&Worker { run, index });
                })
                .expect("spawn a torture thread");
        }
        unmet = supervise(&run, events);
    });
    let counts = events();
    eprintln!(
        "torture `{test}` (seed {seed}): {counts:?}\nprogress per thread:\n{}",
        run.board()
    );
    assert_eq!(
        run.violations.load(Relaxed),
        0,
        "torture `{test}` (seed {seed}): use after drain observed, first: {}",
        run.first_violation
            .lock()
            .unwrap()
            .as_deref()
            .unwrap_or("?")
    );
    if let Some(unmet) = unmet {
        panic!("torture `{test}` (seed {seed}): {unmet}");
    }
}

/// Watches the run until it may stop, stops it and waits for every thread. Returns why it
/// stopped early, if it did without a thread failing.
fn supervise(run: &Run, events: &dyn Fn() -> Vec<(&'static str, usize)>) -> Option<String> {
    let start = Instant::now();
    let budget = budget();
    let total = || run.progress.iter().map(|p| p.load(Relaxed)).sum::<usize>();
    let (mut last, mut last_change) = (total(), Instant::now());
    let mut unmet = None;
    while !run.stop.load(Relaxed) {
        thread::sleep(Duration::from_millis(2));
        let now = total();
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() > PATIENCE {
            run.abort(&format!("no thread progressed for {PATIENCE:?}"), &events());
        }
        if start.elapsed() < budget {
            continue;
        }
        let idle: Vec<_> = (run.names.iter().zip(&run.progress))
            .filter(|(_, p)| p.load(Relaxed) == 0)
            .map(|(n, _)| n.as_str())
            .collect();
        let counts = events();
        let missing: Vec<_> = counts.iter().filter(|(_, c)| *c == 0).collect();
        if idle.is_empty() && missing.is_empty() {
            break;
        }
        if start.elapsed() > budget + PATIENCE {
            unmet = Some(format!(
                "after {:?}, threads {idle:?} never progressed and events {missing:?} never \
                 happened",
                start.elapsed()
            ));
            break;
        }
    }
    run.stop.store(true, Relaxed);
    let deadline = Instant::now() + PATIENCE;
    while !run.finished.iter().all(|f| f.load(Relaxed)) {
        if Instant::now() > deadline {
            run.abort(
                &format!("threads still running {PATIENCE:?} after the stop"),
                &events(),
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
    unmet
}

// ---------------------------------------------------------------------------------------------
// Drainables
// ---------------------------------------------------------------------------------------------

/// How many drainables, readers and helpers. Owner + helpers stay at most 4 reversible drains
/// in flight on one drainable.
const DRAINABLES: usize = 3;
const READERS: usize = 3;
const HELPERS: usize = 3;

/// Events the drainable torture counts (all must happen).
#[derive(Default)]
struct DrainEvents {
    /// Guards taken, by kind.
    borrowed: AtomicUsize,
    several: AtomicUsize,
    owned: AtomicUsize,
    handed_over: AtomicUsize,
    refused: AtomicUsize,
    /// Drained phases the owners poisoned, per drainable.
    poisoned: [AtomicUsize; DRAINABLES],
    /// Helpers' timed drains that completed (leaving the drainable for its owner to find
    /// drained).
    helper_drains: AtomicUsize,
    /// Timed drains (owners' and helpers') that timed out.
    timeouts: AtomicUsize,
    /// Reversible drains undone (explicitly or by drop).
    undone: AtomicUsize,
}

impl DrainEvents {
    fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut v = vec![
            ("borrowed guards", self.borrowed.load(Relaxed)),
            ("several guards at once", self.several.load(Relaxed)),
            ("owned guards", self.owned.load(Relaxed)),
            (
                "owned guards dropped by another reader",
                self.handed_over.load(Relaxed),
            ),
            ("refusals", self.refused.load(Relaxed)),
            (
                "timed drains completed by a helper",
                self.helper_drains.load(Relaxed),
            ),
            ("timeouts", self.timeouts.load(Relaxed)),
            ("undone reversible drains", self.undone.load(Relaxed)),
        ];
        for (k, p) in self.poisoned.iter().enumerate() {
            v.push((
                ["poisoned #0", "poisoned #1", "poisoned #2"][k],
                p.load(Relaxed),
            ));
        }
        v
    }
}

type D<'c, C> = DrainableWith<&'c Canary, C>;

/// What the drainable torture's threads share.
struct DrainShared<'c, C: Counter> {
    ds: Vec<Arc<D<'c, C>>>,
    /// Guards taken per drainable (owners and helpers wait a moment for readers to get in).
    got: [AtomicUsize; DRAINABLES],
    /// Owned guards on their way from one reader to another.
    mailbox: Mutex<Vec<OwnedGuard<&'c Canary, C>>>,
    readers_left: AtomicUsize,
    ev: DrainEvents,
}

impl<'c, C: Counter> DrainShared<'c, C> {
    /// Leaves drainable `k` to the readers for a moment: until they have taken a few guards
    /// of it, or about 300 µs at most. Drainers would otherwise keep the drainables closed
    /// nearly all the time.
    fn let_readers_in(&self, k: usize, rng: &mut Rng) {
        let target = self.got[k].load(Relaxed) + 1 + rng.below(8);
        let until = Instant::now() + Duration::from_micros(rng.below(300) as u64);
        let mut spins = 0;
        while self.got[k].load(Relaxed) < target && Instant::now() < until {
            // Spin a little, then leave the cores to the readers (the tests oversubscribe).
            if spins < 64 {
                spins += 1;
                spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }

    fn mailbox(&self) -> MutexGuard<'_, Vec<OwnedGuard<&'c Canary, C>>> {
        self.mailbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The last reader to leave drops the guards still in the mailbox (owners' drains wait for
/// them), also while unwinding.
struct LastReaderEmpties<'a, 'c, C: Counter>(&'a DrainShared<'c, C>);

impl<C: Counter> Drop for LastReaderEmpties<'_, '_, C> {
    fn drop(&mut self) {
        // AcqRel: the last one's emptying comes after every other reader's last push.
        if self.0.readers_left.fetch_sub(1, AcqRel) == 1 {
            self.0.mailbox().clear();
        }
    }
}

/// A reader was refused: counts it and leaves the core to the drainers a moment.
fn refused(ev: &DrainEvents) {
    ev.refused.fetch_add(1, Relaxed);
    thread::yield_now();
}

fn reader<C: Counter>(w: &Worker<'_>, sh: &DrainShared<'_, C>, id: usize) {
    let _last = LastReaderEmpties(sh);
    let mut rng = Rng::new(w.seed(), id);
    let ev = &sh.ev;
    while w.going() {
        let k = rng.below(DRAINABLES);
        let d = &sh.ds[k];
        match rng.below(8) {
            0..=2 => match d.try_acquire() {
                Some(g) => {
                    // SAFETY: under the guard `g`.
                    let seen = unsafe { w.check(&g, "a borrowed guard") };
                    rng.dwell();
                    // SAFETY: still under `g`.
                    unsafe { w.recheck(&g, seen, "a borrowed guard, later") };
                    drop(g);
                    ev.borrowed.fetch_add(1, Relaxed);
                }
                None => {
                    refused(ev);
                    continue;
                }
            },
            3 => {
                // Up to seven guards held at once, of any drainables (repeats included): past
                // the four thread-local entries of a per-CPU drainable, into its slots.
                let want = 2 + rng.below(6);
                let guards: Vec<_> = (0..want)
                    .filter_map(|_| sh.ds[rng.below(DRAINABLES)].try_acquire())
                    .collect();
                if guards.is_empty() {
                    refused(ev);
                    continue;
                }
                let seen: Vec<_> = guards
                    .iter()
                    // SAFETY: under the guard `g`.
                    .map(|g| unsafe { w.check(g, "one of several guards") })
                    .collect();
                rng.dwell();
                if rng.coin() {
                    drop(guards); // first taken, first released
                } else {
                    for (g, seen) in guards.into_iter().zip(seen).rev() {
                        // SAFETY: still under the guard `g`.
                        unsafe { w.recheck(&g, seen, "one of several guards, later") };
                    }
                }
                ev.several.fetch_add(1, Relaxed);
            }
            4 | 5 => match d.try_acquire_owned() {
                Some(g) => {
                    // SAFETY: under the owned guard `g`.
                    let seen = unsafe { w.check(&g, "an owned guard") };
                    rng.dwell();
                    // SAFETY: still under `g`.
                    unsafe { w.recheck(&g, seen, "an owned guard, later") };
                    drop(g);
                    ev.owned.fetch_add(1, Relaxed);
                }
                None => {
                    refused(ev);
                    continue;
                }
            },
            6 => match d.try_acquire_owned() {
                Some(g) => {
                    // SAFETY: under the owned guard `g`.
                    unsafe { w.check(&g, "an owned guard to hand over") };
                    let mut mailbox = sh.mailbox();
                    if mailbox.len() < 8 {
                        mailbox.push(g);
                    }
                    ev.owned.fetch_add(1, Relaxed);
                }
                None => {
                    refused(ev);
                    continue;
                }
            },
            _ => {
                let g = {
                    let mut mailbox = sh.mailbox();
                    let n = mailbox.len();
                    (n > 0).then(|| mailbox.swap_remove(rng.below(n)))
                };
                let Some(g) = g else { continue };
                // SAFETY: under the owned guard `g`, taken by another thread (or this one).
                unsafe { w.check(&g, "an owned guard handed over") };
                drop(g); // released on another thread than it was taken, often
                ev.handed_over.fetch_add(1, Relaxed);
            }
        }
        sh.got[k].fetch_add(1, Relaxed);
        w.tick();
    }
}

/// The only thread that poisons drainable `k`'s value, and the only one that reopens it.
fn owner<C: Counter>(w: &Worker<'_>, sh: &DrainShared<'_, C>, k: usize, canary: &Canary) {
    let mut rng = Rng::new(w.seed(), 100 + k);
    let d = &*sh.ds[k];
    let ev = &sh.ev;
    while w.going() {
        sh.let_readers_in(k, &mut rng);
        // Whether this thread's own drain completed.
        let drained = match rng.below(8) {
            0 => {
                d.drain();
                true
            }
            1 => {
                d.prepare_drain().commit();
                true
            }
            2 => match d.prepare_drain().commit_timeout(rng.tiny()) {
                Ok(()) => true,
                Err(p) => {
                    let p = p.into_pending();
                    ev.timeouts.fetch_add(1, Relaxed);
                    if d.is_open() {
                        w.violation("open while a timed-out PendingDrain is live");
                    }
                    if rng.coin() {
                        p.commit();
                        true
                    } else {
                        p.undo();
                        ev.undone.fetch_add(1, Relaxed);
                        false
                    }
                }
            },
            3 | 4 => match d.drain_timeout(rng.tiny()) {
                Ok(()) => true,
                Err(e) => {
                    ev.timeouts.fetch_add(1, Relaxed);
                    if e.outstanding() == 0 {
                        w.violation(&format!("{e:?}: a timeout with no guard outstanding"));
                    }
                    false
                }
            },
            5 => {
                d.drain_timeout(PATIENCE)
                    .unwrap_or_else(|e| panic!("a drain_timeout of {PATIENCE:?}: {e}"));
                true
            }
            6 => {
                d.prepare_drain()
                    .commit_timeout(PATIENCE)
                    .unwrap_or_else(|_| panic!("a commit_timeout of {PATIENCE:?} timed out"));
                true
            }
            _ => {
                let p = d.prepare_drain();
                if d.try_acquire().is_some() {
                    w.violation("a guard taken while a PendingDrain is live");
                }
                rng.dwell();
                if rng.coin() {
                    p.undo();
                } else {
                    drop(p);
                }
                ev.undone.fetch_add(1, Relaxed);
                false
            }
        };
        if drained && !d.is_drained() {
            w.violation("not drained after a drain returned (only the owner reopens)");
        }
        // Drained by this thread, or by a helper's timed drain: either way only this thread
        // can reopen it, so no guard exists or can be taken until it does.
        if d.is_drained() {
            if d.try_acquire().is_some() {
                w.violation("a guard taken from a drained drainable");
            }
            // SAFETY: drained, and reopened only by this thread, below.
            unsafe { canary.poison_and_restore(&mut rng) };
            ev.poisoned[k].fetch_add(1, Relaxed);
            // Refused while a helper's PendingDrain is live: they are short.
            let deadline = Instant::now() + PATIENCE;
            while !d.reopen() {
                if !d.is_drained() {
                    w.violation("reopened by someone other than the owner");
                    break;
                }
                w.patience(deadline, "reopen refused");
                thread::yield_now();
            }
        }
        w.tick();
    }
}

/// Reversible drains only: never reopens, never poisons.
fn helper<C: Counter>(w: &Worker<'_>, sh: &DrainShared<'_, C>, id: usize) {
    let mut rng = Rng::new(w.seed(), 200 + id);
    let ev = &sh.ev;
    while w.going() {
        let k = rng.below(DRAINABLES);
        let d = &*sh.ds[k];
        sh.let_readers_in(k, &mut rng);
        match rng.below(5) {
            0 | 1 => {
                let p = d.prepare_drain();
                if d.is_open() {
                    w.violation("open while a PendingDrain is live");
                }
                if d.try_acquire().is_some() {
                    w.violation("a guard taken while a PendingDrain is live");
                }
                rng.dwell();
                let _ = p.outstanding();
                if rng.coin() {
                    p.undo();
                } else {
                    drop(p);
                }
                ev.undone.fetch_add(1, Relaxed);
            }
            2 => match d.prepare_drain().commit_timeout(rng.tiny()) {
                Ok(()) => {
                    ev.helper_drains.fetch_add(1, Relaxed);
                }
                Err(p) => {
                    ev.timeouts.fetch_add(1, Relaxed);
                    // Once more, then give up.
                    match p.into_pending().commit_timeout(rng.tiny()) {
                        Ok(()) => {
                            ev.helper_drains.fetch_add(1, Relaxed);
                        }
                        Err(p) => {
                            p.into_pending().undo();
                            ev.undone.fetch_add(1, Relaxed);
                        }
                    }
                }
            },
            _ => match d.drain_timeout(rng.tiny()) {
                Ok(()) => {
                    ev.helper_drains.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    ev.timeouts.fetch_add(1, Relaxed);
                    if e.outstanding() == 0 {
                        w.violation(&format!("{e:?}: a timeout with no guard outstanding"));
                    }
                }
            },
        }
        w.tick();
    }
}

fn drainables<C: Counter>(test: &'static str) {
    let canaries: Vec<Canary> = (0..DRAINABLES).map(|_| Canary::new()).collect();
    let sh = DrainShared::<C> {
        ds: canaries
            .iter()
            .map(|c| Arc::new(DrainableWith::from(c)))
            .collect(),
        got: Default::default(),
        mailbox: Mutex::new(Vec::new()),
        readers_left: AtomicUsize::new(READERS),
        ev: DrainEvents::default(),
    };
    let sh = &sh;
    let mut roles = Vec::new();
    for id in 0..READERS {
        roles.push(role(format!("reader {id}"), move |w| reader(w, sh, id)));
    }
    for (k, c) in canaries.iter().enumerate() {
        roles.push(role(format!("owner of #{k}"), move |w| owner(w, sh, k, c)));
    }
    for id in 0..HELPERS {
        roles.push(role(format!("helper {id}"), move |w| helper(w, sh, id)));
    }
    torture(test, roles, &|| sh.ev.counts());
    assert!(sh.mailbox().is_empty());
}

#[test]
#[cfg_attr(miri, ignore)]
fn drainable_shared() {
    drainables::<Shared>("Drainable");
}

#[test]
#[cfg_attr(miri, ignore)]
fn drainable_per_cpu() {
    drainables::<PerCpu>("PerCpuDrainable");
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

const CALLERS: usize = 2;
const REGISTRARS: usize = 2;

#[derive(Default)]
struct RegistryEvents {
    calls: AtomicUsize,
    held: AtomicUsize,
    registered: AtomicUsize,
    removed: AtomicUsize,
    batches: AtomicUsize,
    timeouts: AtomicUsize,
    undone: AtomicUsize,
}

impl RegistryEvents {
    fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("calls", self.calls.load(Relaxed)),
            ("entries held through iter", self.held.load(Relaxed)),
            ("registered", self.registered.load(Relaxed)),
            ("removed", self.removed.load(Relaxed)),
            ("batch removals", self.batches.load(Relaxed)),
            ("timed-out removals", self.timeouts.load(Relaxed)),
            ("undone removals", self.undone.load(Relaxed)),
        ]
    }
}

fn caller<C: Counter>(w: &Worker<'_>, r: &Registry<Canary, C>, ev: &RegistryEvents, id: usize) {
    let mut rng = Rng::new(w.seed(), 300 + id);
    while w.going() {
        let mut calls = 0;
        if rng.below(4) == 0 {
            let held: Vec<_> = r.iter().take(1 + rng.below(3)).collect();
            let seen: Vec<_> = held
                .iter()
                // SAFETY: under the entry guard.
                .map(|m| unsafe { w.check(m, "an entry guard") })
                .collect();
            rng.dwell();
            for (m, seen) in held.iter().zip(seen) {
                // SAFETY: still under the entry guard.
                unsafe { w.recheck(m, seen, "an entry guard, later") };
            }
            calls += held.len();
            ev.held.fetch_add(held.len(), Relaxed);
        } else {
            r.for_each(|m| {
                // SAFETY: inside the call.
                unsafe { w.check(m, "a for_each call") };
                for _ in 0..8 {
                    spin_loop();
                }
                calls += 1;
            });
        }
        ev.calls.fetch_add(calls, Relaxed);
        if calls > 0 {
            w.tick();
        }
    }
}

fn registrar<C: Counter>(w: &Worker<'_>, r: &Registry<Canary, C>, ev: &RegistryEvents, id: usize) {
    let mut rng = Rng::new(w.seed(), 400 + id);
    let mut mine: Vec<Registration<Canary>> = Vec::new();
    let kill = |m: Canary, rng: &mut Rng| {
        m.kill(rng);
        ev.removed.fetch_add(1, Relaxed);
    };
    while w.going() {
        if mine.len() < 2 || (mine.len() < 6 && rng.coin()) {
            mine.push(r.register(Canary::new()));
            ev.registered.fetch_add(1, Relaxed);
            continue;
        }
        let h = mine.swap_remove(rng.below(mine.len()));
        match rng.below(6) {
            0 => kill(r.unregister(h), &mut rng),
            1 | 2 => match r.unregister_timeout(h, rng.tiny()) {
                Ok(m) => kill(m, &mut rng),
                Err(e) => {
                    ev.timeouts.fetch_add(1, Relaxed);
                    if e.outstanding() == 0 {
                        w.violation("a timed-out removal with no call in flight");
                    }
                    mine.push(e.into_registration());
                }
            },
            3 => {
                let p = r.prepare_unregister(h);
                match p.commit_timeout(rng.tiny()) {
                    Ok(m) => kill(m, &mut rng),
                    Err(p) if rng.coin() => {
                        ev.timeouts.fetch_add(1, Relaxed);
                        kill(p.into_pending().commit(), &mut rng);
                    }
                    Err(p) => {
                        ev.timeouts.fetch_add(1, Relaxed);
                        mine.push(p.into_pending().undo());
                        ev.undone.fetch_add(1, Relaxed);
                    }
                }
            }
            4 => {
                let p = r.prepare_unregister(h);
                rng.dwell();
                mine.push(p.undo());
                ev.undone.fetch_add(1, Relaxed);
            }
            _ => {
                let mut batch = vec![h];
                batch.extend(mine.drain(..rng.below(mine.len() + 1)));
                for m in r.unregister_all(batch) {
                    kill(m, &mut rng);
                }
                ev.batches.fetch_add(1, Relaxed);
            }
        }
        w.tick();
    }
    for m in r.unregister_all(mine) {
        kill(m, &mut rng);
    }
}

fn registry<C: Counter>(test: &'static str) {
    let r = Registry::<Canary, C>::default();
    let ev = RegistryEvents::default();
    let (r, ev) = (&r, &ev);
    let mut roles = Vec::new();
    for id in 0..CALLERS {
        roles.push(role(format!("caller {id}"), move |w| caller(w, r, ev, id)));
    }
    for id in 0..REGISTRARS {
        roles.push(role(format!("registrar {id}"), move |w| {
            registrar(w, r, ev, id)
        }));
    }
    torture(test, roles, &|| ev.counts());
    assert!(
        r.is_empty(),
        "the registrars removed everything they registered"
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn registry_shared() {
    registry::<Shared>("Registry");
}

#[test]
#[cfg_attr(miri, ignore)]
fn registry_per_cpu() {
    registry::<PerCpu>("Registry<PerCpu>");
}

// ---------------------------------------------------------------------------------------------
// GraceCell
// ---------------------------------------------------------------------------------------------

const CELLS: usize = 3;
const GRACE_READERS: usize = 2;
const WRITERS: usize = 2;

#[derive(Default)]
struct GraceEvents {
    reads: AtomicUsize,
    nested: AtomicUsize,
    replaced: AtomicUsize,
    updated: AtomicUsize,
    grace_periods: AtomicUsize,
}

impl GraceEvents {
    fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("reads", self.reads.load(Relaxed)),
            ("nested reads", self.nested.load(Relaxed)),
            ("replaced", self.replaced.load(Relaxed)),
            ("updated", self.updated.load(Relaxed)),
            ("polled grace periods", self.grace_periods.load(Relaxed)),
        ]
    }
}

fn grace_reader(w: &Worker<'_>, cells: &[GraceCell<Canary>], ev: &GraceEvents, id: usize) {
    let mut rng = Rng::new(w.seed(), 500 + id);
    while w.going() {
        if rng.below(4) == 0 {
            // Nested sections of the shared domain (cells 1 and 2).
            let a = cells[1].read();
            // SAFETY: inside the read section of `a`.
            let seen = unsafe { w.check(&a, "a read section") };
            let b = cells[2].read();
            rng.dwell();
            // SAFETY: inside both read sections.
            unsafe {
                w.check(&b, "a nested read section");
                w.recheck(&a, seen, "an outer read section");
            }
            ev.nested.fetch_add(1, Relaxed);
        } else {
            let g = cells[rng.below(CELLS)].read();
            // SAFETY: inside the read section of `g`.
            let seen = unsafe { w.check(&g, "a read section") };
            rng.dwell();
            // SAFETY: as above.
            unsafe { w.recheck(&g, seen, "a read section, later") };
        }
        ev.reads.fetch_add(1, Relaxed);
        w.tick();
    }
}

fn writer(
    w: &Worker<'_>,
    cells: &[GraceCell<Canary>],
    domain: &GraceDomain,
    ev: &GraceEvents,
    id: usize,
) {
    let mut rng = Rng::new(w.seed(), 600 + id);
    while w.going() {
        let cell = &cells[rng.below(CELLS)];
        match rng.below(5) {
            0 | 1 => {
                cell.replace(Canary::new()).kill(&mut rng);
                ev.replaced.fetch_add(1, Relaxed);
            }
            2 | 3 => {
                let old = cell.update(|cur| {
                    // SAFETY: writers are serialised; the current value is freed only by the
                    // next writer, after this one.
                    unsafe { w.check(cur, "update") };
                    Canary::new()
                });
                old.kill(&mut rng);
                ev.updated.fetch_add(1, Relaxed);
            }
            _ => {
                let cookie = domain.start_grace_period();
                let deadline = Instant::now() + PATIENCE;
                while !domain.poll_grace_period(cookie) {
                    w.patience(deadline, "a grace period did not end");
                    if domain.synchronize_timeout(rng.tiny()).is_ok() {
                        break;
                    }
                }
                ev.grace_periods.fetch_add(1, Relaxed);
            }
        }
        w.tick();
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn grace_cell() {
    let domain = Arc::new(GraceDomain::new());
    let cells = [
        GraceCell::new(Canary::new()),
        GraceCell::with_domain(Canary::new(), Arc::clone(&domain)),
        GraceCell::with_domain(Canary::new(), Arc::clone(&domain)),
    ];
    let ev = GraceEvents::default();
    let (cells, domain, ev) = (&cells, &*domain, &ev);
    let mut roles = Vec::new();
    for id in 0..GRACE_READERS {
        roles.push(role(format!("reader {id}"), move |w| {
            grace_reader(w, cells, ev, id)
        }));
    }
    for id in 0..WRITERS {
        roles.push(role(format!("writer {id}"), move |w| {
            writer(w, cells, domain, ev, id)
        }));
    }
    torture("GraceCell", roles, &|| ev.counts());
}
