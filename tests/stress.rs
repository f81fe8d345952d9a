//! Real-thread stress tests, through the public API only, that would catch a use-after-drain:
//! a reader still inside a guard (or still touching the drainable) after a drain returned.
//!
//! Each test frees memory the moment a drain returns, so a broken drain shows up three ways:
//! natively as a poisoned canary or a raised "drained window" flag seen under a guard, and under
//! Miri as a use-after-free or a data race on the freed allocation.
//!
//! Iteration counts shrink heavily under Miri, which interprets every instruction.

use drainable::Drainable;
use std::hint::spin_loop;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Picks the native or the Miri count.
const fn n(native: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { native }
}

/// How long a bounded wait may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `cond` holds, spinning briefly before it starts yielding; panics (naming
/// `what`) after [`PATIENCE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut spins = 0u32;
    while !cond() {
        if spins < 1000 && !cfg!(miri) {
            spins += 1;
            spin_loop();
            continue;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::yield_now();
    }
}

/// The tests of this file each keep two cores busy, so they run one at a time: in parallel
/// they would only slow each other down by oversubscribing the cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Like [`wait_for`], for waits on threads that cannot be unblocked (a drain that never
/// returns): on timeout it reports on the real stderr (not captured by the test harness) and
/// aborts, since unwinding would hang joining those threads.
fn wait_or_abort(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() >= deadline {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "stress: timed out waiting for {what}; aborting"
            );
            std::process::abort();
        }
        thread::yield_now();
    }
}

/// Whether cycle `i` insists on seeing the readers act (succeed while open, be refused while
/// closed), which guarantees that both paths are exercised. Other cycles wait for them only
/// for a moment: on two loaded cores every insisted hand-off can cost a scheduler time slice.
fn must(i: usize) -> bool {
    cfg!(miri) || i % 32 == 0
}

/// How many of `cycles` cycles, grouped by `group`, insist.
fn musts(cycles: usize, group: usize) -> usize {
    (0..cycles).filter(|&i| must(i / group)).count()
}

/// Waits for `cond`: until it holds (bounded by [`PATIENCE`]) if `must`, else for at most
/// 200 µs.
fn wait_some(what: &str, must: bool, mut cond: impl FnMut() -> bool) {
    if must {
        return wait_for(what, cond);
    }
    let deadline = Instant::now() + Duration::from_micros(200);
    while !cond() && Instant::now() < deadline {
        spin_loop();
    }
}

const ALIVE: u64 = 0xA11C_E5ED_A11C_E5ED;
const POISON: u64 = 0xDEAD_BEEF_DEAD_BEEF;

/// A heap object that is `ALIVE` until the drainer poisons and frees it.
struct Canary {
    state: AtomicU64,
}

fn new_canary() -> *mut Canary {
    Box::into_raw(Box::new(Canary {
        state: AtomicU64::new(ALIVE),
    }))
}

/// Poisons and frees a canary.
///
/// # Safety
/// `c` came from [`new_canary`], is freed only here, and no reader can reach it any more.
unsafe fn kill_canary(c: *mut Canary) {
    // SAFETY: the caller guarantees `c` is live and unreachable by readers.
    let b = unsafe { Box::from_raw(c) };
    b.state.store(POISON, Relaxed);
    drop(b);
}

/// What the guarded value points to. It lives outside the drainable so that the drainer can
/// swap the canary while the drainable is drained (the public API gives no access to the value
/// then, short of `&mut`); readers reach it only through a guard.
struct Slot {
    canary: AtomicPtr<Canary>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            canary: AtomicPtr::new(new_canary()),
        }
    }

    /// Drained-only: poisons and frees the current canary and installs a fresh one.
    fn replace_canary(&self) {
        // The fresh one is allocated before the old one is freed, so it never reuses the old
        // address: a stale reader would find the poison (or freed memory), not a live canary.
        let fresh = new_canary();
        let old = self.canary.swap(fresh, Relaxed);
        // SAFETY: callers do this only after a drain returned and before reopening, when no
        // guard exists; readers reach canaries only under a guard.
        unsafe { kill_canary(old) };
    }

    /// The canary is still alive (the drainer checks that an undone or timed-out drain freed
    /// nothing).
    fn canary_alive(&self) -> bool {
        // SAFETY: only the drainer (this caller) frees canaries.
        unsafe { (*self.canary.load(Relaxed)).state.load(Relaxed) == ALIVE }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: the readers have been joined.
        unsafe { kill_canary(*self.canary.get_mut()) };
    }
}

/// Counters shared by the readers and the drainer.
#[derive(Default)]
struct Stats {
    /// Successful acquisitions.
    ok: AtomicUsize,
    /// Refused acquisitions (`None`).
    refused: AtomicUsize,
    /// Use-after-drain observations.
    violations: AtomicUsize,
    /// Set by the drainer from the return of a successful drain until just before it reopens.
    /// A guard can never observe it set: the guard's accesses happen before the drain returns,
    /// and the reopen happens before the next guard's accesses. Checked with `Relaxed` loads,
    /// so the check relies on the library's orderings alone.
    drained_window: AtomicBool,
    stop: AtomicBool,
}

impl Stats {
    fn violation(&self) {
        self.violations.fetch_add(1, Relaxed);
    }

    fn open_window(&self) {
        self.drained_window.store(true, Relaxed);
    }

    fn close_window(&self) {
        self.drained_window.store(false, Relaxed);
    }

    /// Waits until a reader has taken a guard after this call (the drainable is usable to
    /// them): until it happens if `must`, else for a moment at most (see [`must`]).
    fn wait_for_success(&self, what: &str, must: bool) {
        let seen = self.ok.load(Relaxed);
        wait_some(what, must, || self.ok.load(Relaxed) > seen);
    }

    /// Waits until a reader has been refused after this call (the drainable is closed to
    /// them), as [`wait_for_success`](Self::wait_for_success).
    fn wait_for_refusal(&self, what: &str, must: bool) {
        let seen = self.refused.load(Relaxed);
        wait_some(what, must, || self.refused.load(Relaxed) > seen);
    }

    fn assert_clean(&self, min_ok: usize) {
        let (ok, refused) = (self.ok.load(Relaxed), self.refused.load(Relaxed));
        assert_eq!(self.violations.load(Relaxed), 0, "use after drain observed");
        assert!(ok >= min_ok, "readers succeeded only {ok} times");
        assert!(refused > 0, "readers were never refused");
    }
}

/// A reader: takes guards until told to stop and checks, under each guard, that the canary it
/// reaches is alive and that no drain has completed. Holds each guard a little while (varying)
/// so that drains often have to wait, and with `slow` sleeps that long under every 64th guard.
fn reader(d: &Drainable<&Slot>, st: &Stats, slow: Option<Duration>) {
    let mut i: usize = 0;
    while !st.stop.load(Relaxed) {
        i = i.wrapping_add(1);
        let Some(g) = d.try_acquire() else {
            st.refused.fetch_add(1, Relaxed);
            // Back off while closed, leaving the CPU to the drainer (the tests oversubscribe
            // two cores).
            thread::sleep(Duration::from_micros(20));
            continue;
        };
        let c = g.canary.load(Relaxed);
        let check = || {
            // SAFETY: the canary is freed only after a drain, which waits for this guard; if
            // the library is wrong this is the use-after-free Miri reports.
            let alive = !c.is_null() && unsafe { (*c).state.load(Relaxed) } == ALIVE;
            if !alive || st.drained_window.load(Relaxed) {
                st.violation();
            }
        };
        check();
        for _ in 0..i % 32 {
            spin_loop();
        }
        if let Some(slow) = slow.filter(|_| i % 64 == 0) {
            thread::sleep(slow);
        }
        check();
        drop(g);
        st.ok.fetch_add(1, Relaxed);
    }
}

/// Raises a stop flag when dropped, also while unwinding, so that helper threads end and a
/// failing test reports its assertion instead of hanging in `thread::scope`.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// Runs `readers` reader threads on a `Drainable<&Slot>` while `drainer` runs on this thread,
/// then stops and joins them.
fn with_readers(
    readers: usize,
    slow: Option<Duration>,
    drainer: impl FnOnce(&Drainable<&Slot>, &Slot, &Stats),
) -> Stats {
    let slot = Slot::new();
    let d = Drainable::new(&slot);
    let st = Stats::default();
    thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| reader(&d, &st, slow));
        }
        // Stop the readers even if the drainer panics, so the scope can end.
        let _stop = Stop(&st.stop);
        drainer(&d, &slot, &st);
    });
    st
}

/// After a drain returned: the drainable must be drained and closed; the canary is poisoned,
/// freed and replaced at once; then the drainable is reopened.
fn free_and_reopen(d: &Drainable<&Slot>, slot: &Slot, st: &Stats, must: bool) {
    assert!(d.is_drained());
    assert!(!d.is_open());
    st.open_window();
    slot.replace_canary();
    assert!(
        d.try_acquire().is_none(),
        "a drained drainable gave a guard"
    );
    st.wait_for_refusal("a reader to be refused by the drained drainable", must);
    st.close_window();
    assert!(d.reopen(), "reopen of a drained drainable refused");
}

/// (a) `drain()`, free, reopen, thousands of times while readers hammer `try_acquire`.
#[test]
fn canary_drain_free_reopen() {
    let _serial = serial();
    let cycles = n(2000, 5);
    let st = with_readers(3, None, |d, slot, st| {
        for i in 0..cycles {
            st.wait_for_success("a reader to get in after the reopen", must(i));
            d.drain();
            free_and_reopen(d, slot, st, must(i));
        }
    });
    st.assert_clean(musts(cycles, 1));
}

/// (b) `prepare_drain` cycles: commit (then free), commit after a zero-timeout
/// `commit_timeout` that may fail, undo, and drop (implicit undo) interleaved. Undo frees
/// nothing, and readers get in again after it.
#[test]
fn canary_prepare_commit_undo() {
    let _serial = serial();
    let cycles = n(2000, 8);
    let mut kinds = [0usize; 4];
    let st = with_readers(3, None, |d, slot, st| {
        for i in 0..cycles {
            // Insist in whole groups of four, so that every kind of cycle gets insisted on.
            let must = must(i / 4);
            st.wait_for_success("a reader to get in after the reopen or undo", must);
            let p = d.prepare_drain();
            assert!(!d.is_open(), "prepare_drain did not close");
            assert!(!d.is_drained(), "a pending drain is not drained");
            match i % 4 {
                0 => {
                    p.commit();
                    free_and_reopen(d, slot, st, must);
                }
                1 => {
                    if let Err(p) = p.commit_timeout(Duration::ZERO) {
                        assert!(!d.is_open(), "a timed-out commit_timeout reopened");
                        assert!(!d.is_drained());
                        p.into_pending().commit();
                    }
                    free_and_reopen(d, slot, st, must);
                }
                2 => {
                    st.wait_for_refusal("a reader to be refused by the pending drain", must);
                    assert!(p.undo(), "the only pending drain's undo did not reopen");
                    assert!(d.is_open());
                    assert!(slot.canary_alive(), "undo freed the canary");
                }
                _ => {
                    drop(p);
                    assert!(d.is_open(), "dropping a PendingDrain did not reopen");
                    assert!(slot.canary_alive());
                }
            }
            kinds[i % 4] += 1;
        }
        st.wait_for_success("a reader to get in after the last cycle", true);
    });
    st.assert_clean(musts(cycles, 4));
    assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
}

/// (c) `drain_timeout` cycles while guards are held long enough to time some of them out. On
/// `Err` the drainable is open again and nothing was freed; on `Ok` the canary is freed.
///
/// Every third cycle is forced to time out by a holder thread that keeps a guard until the
/// drainer has checked the error; the others use a tight timeout (either outcome, against
/// readers that sometimes sleep under their guard) or a generous one (must succeed).
#[test]
fn canary_drain_timeout() {
    let _serial = serial();
    let cycles = n(600, 6);
    let (mut timeouts, mut drains) = (0usize, 0usize);
    let holder_wanted = AtomicBool::new(false);
    let holder_holds = AtomicBool::new(false);
    let st = with_readers(2, Some(Duration::from_micros(300)), |d, slot, st| {
        let holder_stop = AtomicBool::new(false);
        thread::scope(|s| {
            let _stop = Stop(&holder_stop);
            s.spawn(|| {
                while !holder_stop.load(Relaxed) {
                    // Acquire: pairs with the drainer's Release, so the holder sees the
                    // drainable open (as the drainer last left it) when asked.
                    if !holder_wanted.load(Acquire) {
                        thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    // The drainer asks only while the drainable is open.
                    let g = d.try_acquire().expect("the holder was refused");
                    holder_holds.store(true, Relaxed);
                    while holder_wanted.load(Relaxed) && !holder_stop.load(Relaxed) {
                        thread::yield_now();
                    }
                    // SAFETY: under a guard; see `reader`.
                    if unsafe { (*g.canary.load(Relaxed)).state.load(Relaxed) } != ALIVE {
                        st.violation();
                    }
                    drop(g);
                    holder_holds.store(false, Relaxed);
                }
            });
            for i in 0..cycles {
                let must = must(i / 3);
                st.wait_for_success("a reader to get in after the reopen", must);
                let result = match i % 3 {
                    0 => {
                        holder_wanted.store(true, Release);
                        wait_for("the holder's guard", || holder_holds.load(Relaxed));
                        let e = d
                            .drain_timeout(Duration::from_millis(1))
                            .expect_err("drained while a guard was held");
                        assert!(e.outstanding() >= 1, "{e:?}");
                        assert!(d.is_open(), "a timed-out drain did not reopen");
                        assert!(slot.canary_alive(), "a timed-out drain freed the canary");
                        st.wait_for_success("a reader to get in after the timeout", must);
                        holder_wanted.store(false, Relaxed);
                        wait_for("the holder's release", || !holder_holds.load(Relaxed));
                        Err(e)
                    }
                    1 => d.drain_timeout(Duration::from_micros(50)),
                    _ => {
                        let r = d.drain_timeout(PATIENCE);
                        assert!(r.is_ok(), "a generous drain_timeout timed out: {r:?}");
                        r
                    }
                };
                match result {
                    Ok(()) => {
                        drains += 1;
                        free_and_reopen(d, slot, st, must);
                    }
                    Err(e) => {
                        timeouts += 1;
                        // At the deadline at least one guard was outstanding, or it would
                        // have drained.
                        assert!(e.outstanding() >= 1, "{e:?}");
                        assert!(d.is_open(), "a timed-out drain did not reopen");
                        assert!(!d.is_drained());
                        assert!(slot.canary_alive(), "a timed-out drain freed the canary");
                    }
                }
            }
        });
    });
    st.assert_clean(musts(cycles, 3));
    assert!(timeouts >= cycles / 3, "{timeouts} timeouts");
    assert!(drains >= cycles / 3, "{drains} drains");
}

/// (d) Many threads drain the same drainable at once while readers hammer it: every drain
/// returns, and each sees it drained on return. With `mixed`, the waiters mix `drain()`,
/// `prepare_drain().commit()`, `drain_timeout` and `commit_timeout`.
fn concurrent_drains(drainers: usize, mixed: bool) {
    let rounds = n(200, 3);
    let returned = AtomicUsize::new(0);
    let bad = AtomicUsize::new(0);
    let st = with_readers(2, None, |d, slot, st| {
        // The round the drainers may start (Release/Acquire: they see the reopen before it),
        // and a flag that ends them early if the main thread panics.
        let go = AtomicUsize::new(0);
        let quit = AtomicBool::new(false);
        thread::scope(|s| {
            let _quit = Stop(&quit);
            for k in 0..drainers {
                let (go, quit, returned, bad) = (&go, &quit, &returned, &bad);
                s.spawn(move || {
                    for round in 1..=rounds {
                        let mut spins = 0u32;
                        while go.load(Acquire) < round {
                            if quit.load(Relaxed) {
                                return;
                            }
                            if spins < 1000 && !cfg!(miri) {
                                spins += 1;
                                spin_loop();
                            } else {
                                thread::yield_now();
                            }
                        }
                        let ok = match (mixed, k % 4) {
                            (false, _) | (true, 0) => {
                                d.drain();
                                true
                            }
                            (true, 1) => {
                                d.prepare_drain().commit();
                                true
                            }
                            (true, 2) => d.drain_timeout(PATIENCE).is_ok(),
                            (true, _) => d.prepare_drain().commit_timeout(PATIENCE).is_ok(),
                        };
                        // Nobody reopens before every drainer has returned (Release: the main
                        // thread, which reopens, checks the drained state after this).
                        if !ok || !d.is_drained() || d.try_acquire().is_some() {
                            bad.fetch_add(1, Relaxed);
                        }
                        returned.fetch_add(1, Release);
                    }
                });
            }
            for round in 1..=rounds {
                st.wait_for_success("a reader to get in after the reopen", must(round));
                go.store(round, Release);
                wait_or_abort("every concurrent drain to return", || {
                    returned.load(Acquire) == round * drainers
                });
                free_and_reopen(d, slot, st, must(round));
            }
        });
    });
    st.assert_clean(musts(rounds + 1, 1) - 1);
    assert_eq!(
        bad.load(Relaxed),
        0,
        "a drain returned before the drainable drained"
    );
    assert_eq!(returned.load(Relaxed), rounds * drainers);
}

#[test]
fn concurrent_drains_all_return() {
    let _serial = serial();
    concurrent_drains(n(6, 3), false);
}

#[test]
fn concurrent_mixed_waiters_all_return() {
    let _serial = serial();
    concurrent_drains(n(8, 4), true);
}

/// A raw pointer to a heap drainable, sent to the reader threads.
struct Ptr(*const Drainable<Value>);
// SAFETY: `Drainable<Value>` is `Sync`; the test frees the pointee only after a drain.
unsafe impl Send for Ptr {}

struct Value {
    canary: AtomicU64,
}

/// (e) The drainable itself is freed the moment the drain returns, while the readers that
/// dropped the last guards may still be returning from `Drop` (the release path must not
/// touch the object after its decrement; under Miri anything else is a use-after-free). The
/// drainer frees without joining or hearing back from the readers.
#[test]
fn free_the_drainable_right_after_drain() {
    let _serial = serial();
    let rounds = n(2000, 6);
    let readers = 3;
    let holding = AtomicUsize::new(0);
    let violations = AtomicUsize::new(0);
    thread::scope(|s| {
        let txs: Vec<mpsc::Sender<Ptr>> = (0..readers)
            .map(|r| {
                let (tx, rx) = mpsc::channel::<Ptr>();
                let (holding, violations) = (&holding, &violations);
                s.spawn(move || {
                    for (i, p) in rx.into_iter().enumerate() {
                        // SAFETY: the drainer frees the drainable only after a drain, which
                        // waits for the guard taken here.
                        let g = unsafe { &*p.0 }.try_acquire().expect("open");
                        holding.fetch_add(1, Relaxed);
                        // Vary how long the guard is held, so that the drainer is sometimes
                        // still spinning and sometimes asleep when the last guard drops.
                        for _ in 0..(i * 7 + r * 13) % 200 {
                            if g.canary.load(Relaxed) != ALIVE {
                                violations.fetch_add(1, Relaxed);
                            }
                            spin_loop();
                        }
                        if g.canary.load(Relaxed) != ALIVE {
                            violations.fetch_add(1, Relaxed);
                        }
                        drop(g); // the last access to the drainable
                    }
                });
                tx
            })
            .collect();
        for round in 0..rounds {
            let d: *mut Drainable<Value> = Box::into_raw(Box::new(Drainable::new(Value {
                canary: AtomicU64::new(ALIVE),
            })));
            holding.store(0, Relaxed);
            for tx in &txs {
                tx.send(Ptr(d)).unwrap();
            }
            wait_for("every reader to hold a guard", || {
                holding.load(Relaxed) == readers
            });
            {
                // SAFETY: `d` is live until the `Box::from_raw` below.
                let d = unsafe { &*d };
                match round % 3 {
                    0 => d.drain(),
                    1 => d.prepare_drain().commit(),
                    _ => d.drain_timeout(PATIENCE).expect("timed out"),
                }
            }
            // SAFETY: drained: no guard exists or can be taken, and the readers never touch
            // this drainable again after dropping their guards.
            let mut b = unsafe { Box::from_raw(d) };
            assert!(b.is_drained());
            *b.get_mut().canary.get_mut() = POISON;
            drop(b);
        }
    });
    assert_eq!(violations.load(Relaxed), 0);
}

/// (f) `DrainTimeoutError::outstanding()` is the number of guards outstanding when the deadline
/// passed, so it is never 0: with no guard left the drain would have succeeded. A holder drops
/// its only guard ever closer to the moment a zero-timeout `drain_timeout` gives up (it delays
/// the drop longer after each success and shorter after each timeout), so the drop often lands
/// just after the drain's last look at the count and just before the error is built.
///
/// That needs the two threads to run in parallel: on a loaded machine it keeps going (up to a
/// few seconds) until the drop has won the race at least once.
#[test]
fn timeout_error_counts_the_guards_at_the_deadline() {
    let _serial = serial();
    let min_iters = n(4000, 10);
    let budget = Instant::now() + Duration::from_secs(2);
    let d = Drainable::new(());
    // Iteration k: the holder took its guard (`held`), the drain returned (`result` is
    // 2k + 1 after a success, 2k after a timeout), the holder dropped its guard (`dropped`).
    let (held, result, dropped) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let done = AtomicBool::new(false);
    let (mut drained, mut timed_out, mut wrong) = (0usize, 0usize, Vec::new());
    thread::scope(|s| {
        let _done = Stop(&done);
        s.spawn(|| {
            let mut delay = 0usize;
            for k in 1.. {
                let mut g = None;
                wait_for("the reopen", || {
                    g = d.try_acquire();
                    g.is_some() || done.load(Relaxed)
                });
                held.store(k, Relaxed);
                wait_for("the close", || {
                    !d.is_open() || result.load(Relaxed) / 2 == k || done.load(Relaxed)
                });
                if done.load(Relaxed) {
                    break;
                }
                for i in 0..delay {
                    std::hint::black_box(i);
                }
                drop(g);
                dropped.store(k, Relaxed);
                wait_for("the result", || result.load(Relaxed) / 2 == k);
                if result.load(Relaxed) % 2 == 1 {
                    delay += 3;
                } else {
                    delay = delay.saturating_sub(3);
                }
            }
        });
        for k in 1.. {
            wait_for("the holder's guard", || held.load(Relaxed) == k);
            let r = d.drain_timeout(Duration::ZERO);
            result.store(2 * k + usize::from(r.is_ok()), Relaxed);
            wait_for("the holder's drop", || dropped.load(Relaxed) == k);
            match r {
                Ok(()) => {
                    drained += 1;
                    assert!(d.reopen());
                }
                Err(e) => {
                    timed_out += 1;
                    assert!(d.is_open(), "a timed-out drain did not reopen");
                    if e.outstanding() != 1 {
                        wrong.push(e);
                    }
                }
            }
            if k >= min_iters && (drained > 0 || cfg!(miri) || Instant::now() > budget) {
                break;
            }
        }
    });
    assert!(
        wrong.is_empty(),
        "{} of {timed_out} timeouts misreported the one guard outstanding at the deadline, \
         e.g. {:?} (\"{}\")",
        wrong.len(),
        wrong[0],
        wrong[0]
    );
    assert!(timed_out > 0, "no drain timed out");
    if drained == 0 {
        // Not a library failure: the holder never ran in parallel with the drainer.
        eprintln!("note: the holder never beat the drain; this run checked little");
    }
}
