//! The signal barrier, the heavy barrier that replaces `membarrier` once the kernel refuses
//! it, exercised without seccomp through its testing aid `DRAINABLE_FORCE_SIGNAL_BARRIER=1`
//! (read once per process, hence the child processes).
#![cfg(all(target_os = "linux", not(miri)))] // Miri cannot spawn the child processes

mod child;

use drainable::PerCpuDrainable;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const FORCE: (&str, &str) = ("DRAINABLE_FORCE_SIGNAL_BARRIER", "1");
const MARKER: &str = "signal-child: done";

/// Readers hammer guards on a canary that is poisoned right after each drain, over every
/// drain route and a per-CPU registry, with every heavy barrier made of signals.
#[test]
fn forced_signal_barrier_keeps_drains_exact() {
    if !child::in_child() {
        child::expect_child("forced_signal_barrier_keeps_drains_exact", &[FORCE], MARKER);
        return;
    }
    child::setup(Duration::from_secs(60));
    let value = child::Value::new();
    let d = PerCpuDrainable::new(&value);
    let stats = child::Stats::default();
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| child::reader(&d, &stats));
        }
        child::drain_cycles(&d, &value, &stats, 150);
        stats.stop.store(true, Relaxed);
    });
    assert_eq!(
        stats.violations.load(Relaxed),
        0,
        "a guard outlived a drain"
    );
    assert_eq!(
        child::registry_cycles(2, 100),
        0,
        "a call outlived unregister"
    );
    if child::records_expected(true) {
        assert_ne!(
            child::rt_signals_with_handlers(),
            Vec::<i32>::new(),
            "no signal handler: the drains did not use the signal barrier"
        );
    }
    println!("{MARKER}");
}

/// A thread that owns a record and blocks the barrier's signal holds every drain up (there
/// is no sound way around it), and the drain says so on stderr instead of hanging silently;
/// once the thread unblocks the signal, the drain completes.
#[test]
fn a_thread_blocking_the_signal_is_reported() {
    const BLOCKED_FOR: Duration = Duration::from_millis(1500);
    if !child::in_child() {
        let (stdout, stderr) =
            child::expect_child("a_thread_blocking_the_signal_is_reported", &[FORCE], MARKER);
        if stdout.contains("signal-child: records") {
            assert!(
                stderr.contains("blocks signal"),
                "no report of the blocked signal on stderr:\n{stderr}"
            );
        }
        return;
    }
    child::setup(Duration::from_secs(60));
    let d = PerCpuDrainable::new(());
    let (blocked_tx, blocked_rx) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            drop(d.try_acquire().expect("open")); // this thread now owns a record
            let set = rt_signals();
            sigmask(libc::SIG_BLOCK, &set);
            blocked_tx.send(Instant::now()).unwrap();
            thread::sleep(BLOCKED_FOR);
            sigmask(libc::SIG_UNBLOCK, &set);
        });
        let since = blocked_rx.recv().unwrap();
        d.drain();
        if child::records_expected(true) {
            assert!(
                since.elapsed() >= BLOCKED_FOR,
                "the drain did not wait for the thread that blocks the signal"
            );
            println!("signal-child: records in use; the drain waited for the thread");
        }
    });
    println!("{MARKER}");
}

/// A timed drain keeps its deadline while the signal barrier waits for a thread that blocks
/// the signal: it times out (the thread is told to unblock only after that, so a drain that
/// ignored its deadline would wait forever and the child's watchdog would fail the test), and
/// a drain after the thread unblocks completes.
#[test]
fn a_timed_drain_keeps_its_deadline_while_a_thread_blocks_the_signal() {
    if !child::in_child() {
        child::expect_child(
            "a_timed_drain_keeps_its_deadline_while_a_thread_blocks_the_signal",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    let d = PerCpuDrainable::new(());
    thread::scope(|s| {
        let d = &d;
        // The thread takes a guard first, so that it owns a record.
        let unblock_tx =
            block_signals_on_a_thread(s, || drop(d.try_acquire().expect("open")), || {});
        let timed = d.drain_timeout(Duration::from_millis(20));
        if child::records_expected(true) {
            assert!(
                timed.is_err(),
                "the barrier cannot have completed while the thread blocks the signal"
            );
            assert!(d.is_open(), "a timed-out drain_timeout reopens");
            let p = d.prepare_drain();
            let p = p
                .commit_timeout(Duration::from_millis(20))
                .expect_err("the same for commit_timeout");
            drop(p);
        }
        unblock_tx.send(()).unwrap();
        d.drain();
        assert!(d.is_drained());
    });
    println!("{MARKER}");
}

/// The async form of the test above: a poll of `drain_async` never blocks its executor on the
/// barrier while a thread blocks the signal (the poll returns `Pending`, and the future can be
/// dropped: that is how a timeout cancels it); once the thread unblocks, it completes. Before
/// the fix, the first poll waited inside the barrier until the thread unblocked, so this test's
/// poll would not return and the child's watchdog would fail it.
#[test]
fn a_drain_async_poll_does_not_block_while_a_thread_blocks_the_signal() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    if !child::in_child() {
        child::expect_child(
            "a_drain_async_poll_does_not_block_while_a_thread_blocks_the_signal",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    let d = PerCpuDrainable::new(());
    thread::scope(|s| {
        let d = &d;
        // The thread takes a guard first, so that it owns a record.
        let unblock_tx =
            block_signals_on_a_thread(s, || drop(d.try_acquire().expect("open")), || {});
        if child::records_expected(true) {
            let mut cx = Context::from_waker(Waker::noop());
            let mut f = Box::pin(d.drain_async());
            for _ in 0..3 {
                assert_eq!(
                    f.as_mut().poll(&mut cx),
                    Poll::Pending,
                    "the barrier cannot have completed while the thread blocks the signal"
                );
            }
            drop(f); // cancelled, as by a timeout
            assert!(d.is_open(), "a cancelled drain_async reopens");
        }
        unblock_tx.send(()).unwrap();
        pollster::block_on(d.drain_async());
        assert!(d.is_drained());
    });
    println!("{MARKER}");
}

/// An application that installs a handler of its own on the barrier's signal after the
/// barrier took it: no thread acknowledges any more, and there is no sound barrier left. The
/// drain must say so (a panic naming the signal and `DRAINABLE_SIGNAL`), not wait forever.
#[test]
fn a_replaced_signal_handler_is_a_clear_error_not_a_hang() {
    if !child::in_child() {
        child::expect_child(
            "a_replaced_signal_handler_is_a_clear_error_not_a_hang",
            &[FORCE],
            MARKER,
        );
        return;
    }
    extern "C" fn applications_own(_: libc::c_int) {}
    // No `child::setup` panic hook (the panic is expected), but its watchdog all the same.
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(60));
        eprintln!("child: a drain hangs after its signal handler was replaced; aborting");
        std::process::abort();
    });
    let d = PerCpuDrainable::new(());
    // Another thread that owns a record: it takes (and drops) a guard of its own drainable,
    // then stays alive, so that every barrier has a thread to signal.
    let other = PerCpuDrainable::new(());
    thread::scope(|s| {
        let other = &other;
        let (held_tx, held_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        s.spawn(move || {
            drop(other.try_acquire().expect("open"));
            held_tx.send(()).unwrap();
            let _ = go_rx.recv();
        });
        held_rx.recv().unwrap();
        d.drain(); // the first signal barrier installs the handler
        assert!(d.reopen());
        if child::records_expected(true) {
            let taken = child::rt_signals_with_handlers();
            assert_eq!(taken.len(), 1, "one signal taken: {taken:?}");
            // SAFETY: installs a handler that does nothing, on the signal drainable took.
            unsafe {
                libc::signal(
                    taken[0],
                    applications_own as extern "C" fn(libc::c_int) as libc::sighandler_t,
                )
            };
            let r = std::panic::catch_unwind(|| d.drain());
            let message = r.expect_err("a drain with no sound barrier left must not return");
            let message = message
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            assert!(
                message.contains("was given another handler"),
                "unclear panic: {message:?}"
            );
        }
        go_tx.send(()).unwrap();
    });
    println!("{MARKER}");
}

/// A timed drain with a deadline already past still gives the signal handlers a moment: with
/// another thread owning a record (idle, not blocking anything) and no guard anywhere,
/// `drain_timeout(Duration::ZERO)` succeeds. (It failed every time when the deadline was
/// checked before any handler could run.)
#[test]
fn a_zero_timeout_drain_succeeds_under_the_signal_barrier() {
    if !child::in_child() {
        child::expect_child(
            "a_zero_timeout_drain_succeeds_under_the_signal_barrier",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    let d = PerCpuDrainable::new(());
    let (held_tx, held_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let d = &d;
        s.spawn(move || {
            drop(d.try_acquire().expect("open")); // this thread now owns a record
            held_tx.send(()).unwrap();
            let _ = done_rx.recv();
        });
        held_rx.recv().unwrap();
        for _ in 0..20 {
            assert_eq!(d.drain_timeout(Duration::ZERO), Ok(()), "no guard exists");
            assert!(d.reopen());
        }
        done_tx.send(()).unwrap();
    });
    println!("{MARKER}");
}

/// An application handler installed later that *chains* to drainable's keeps the barrier
/// working, and a thread that blocks the signal for a moment is waited for: neither is taken
/// for a replaced handler (which would panic).
#[test]
fn a_chaining_application_handler_keeps_the_barrier() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
    extern "C" fn chaining(signal: libc::c_int) {
        let previous = PREVIOUS.load(SeqCst);
        if previous > 1 {
            // SAFETY: `previous` is the handler drainable installed (a plain `extern "C"
            // fn(c_int)`, installed without SA_SIGINFO), read back by `sigaction`.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(previous) };
            f(signal);
        }
    }
    if !child::in_child() {
        child::expect_child(
            "a_chaining_application_handler_keeps_the_barrier",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    let d = PerCpuDrainable::new(());
    let (held_tx, held_rx) = mpsc::channel();
    let (block_tx, block_rx) = mpsc::channel::<()>();
    let (blocked_tx, blocked_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        let d = &d;
        s.spawn(move || {
            drop(d.try_acquire().expect("open")); // this thread now owns a record
            held_tx.send(()).unwrap();
            let _ = block_rx.recv();
            let set = rt_signals();
            sigmask(libc::SIG_BLOCK, &set);
            blocked_tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(1200));
            sigmask(libc::SIG_UNBLOCK, &set);
        });
        held_rx.recv().unwrap();
        d.drain(); // installs drainable's handler
        assert!(d.reopen());
        if child::records_expected(true) {
            let taken = child::rt_signals_with_handlers();
            assert_eq!(taken.len(), 1, "one signal taken: {taken:?}");
            // SAFETY: a query and an install of a handler that chains to the previous one.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(taken[0], std::ptr::null(), &mut old);
                PREVIOUS.store(old.sa_sigaction, SeqCst);
                libc::signal(
                    taken[0],
                    chaining as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
            }
            d.drain(); // through the chaining handler
            assert!(d.reopen());
        }
        block_tx.send(()).unwrap();
        blocked_rx.recv().unwrap();
        d.drain(); // waits for the thread to unblock, without a panic
        assert!(d.is_drained());
    });
    println!("{MARKER}");
}

/// A guard kept in a thread-local, and so dropped by a thread-local destructor that runs
/// after the one that gives the thread's record back, while a drain waits for it: the record
/// must stay reachable by the barrier until the thread is gone, and the drain must end.
#[test]
fn a_guard_dropped_by_a_late_thread_local_destructor_ends_the_drain() {
    use drainable::{Guard, PerCpu};
    use std::cell::RefCell;
    use std::sync::OnceLock;
    if !child::in_child() {
        child::expect_child(
            "a_guard_dropped_by_a_late_thread_local_destructor_ends_the_drain",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    static D: OnceLock<PerCpuDrainable<u32>> = OnceLock::new();
    thread_local! {
        // Initialised (and its destructor registered) before the thread's first guard
        // claims a record: destructors run in reverse, so this one runs last.
        static KEPT: RefCell<Option<Guard<'static, u32, PerCpu>>> = const { RefCell::new(None) };
    }
    let d = D.get_or_init(|| PerCpuDrainable::new(7));
    for round in 0..20 {
        let (held_tx, held_rx) = mpsc::channel();
        let t = thread::spawn(move || {
            KEPT.with(|k| *k.borrow_mut() = Some(d.try_acquire().expect("open")));
            held_tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(2)); // the drain is waiting by then
        });
        held_rx.recv().unwrap();
        d.drain();
        assert!(d.is_drained(), "round {round}");
        t.join().unwrap();
        assert!(d.reopen());
    }
    if child::records_expected(true) {
        assert_ne!(
            child::rt_signals_with_handlers(),
            Vec::<i32>::new(),
            "no signal handler: the drains did not use the signal barrier"
        );
    }
    println!("{MARKER}");
}

/// Spawns a thread that takes a record (`own_record`), blocks the barrier's signals, runs
/// `meanwhile`, and keeps them blocked until the returned sender is used or dropped. Returns
/// once the signals are blocked.
fn block_signals_on_a_thread<'s>(
    s: &'s thread::Scope<'s, '_>,
    own_record: impl FnOnce() + Send + 's,
    meanwhile: impl FnOnce() + Send + 's,
) -> mpsc::Sender<()> {
    let (blocked_tx, blocked_rx) = mpsc::channel();
    let (unblock_tx, unblock_rx) = mpsc::channel::<()>();
    s.spawn(move || {
        own_record();
        let set = rt_signals();
        sigmask(libc::SIG_BLOCK, &set);
        blocked_tx.send(()).unwrap();
        meanwhile();
        let _ = unblock_rx.recv();
        sigmask(libc::SIG_UNBLOCK, &set);
    });
    blocked_rx.recv().unwrap();
    unblock_tx
}

fn rt_signals() -> libc::sigset_t {
    // SAFETY: `sigemptyset` initialises the set; `sigaddset` takes valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

fn sigmask(how: libc::c_int, set: &libc::sigset_t) {
    // SAFETY: `set` is an initialised signal set; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(how, set, std::ptr::null_mut()) };
    assert_eq!(r, 0);
}

/// Grace periods under the signal barrier, while a thread that owns a record blocks the
/// signal: the barrier cannot complete, and every call that must not block still returns
/// (`synchronize_timeout` at its deadline, `start_grace_period`, `poll_grace_period`, `store`,
/// a poll of `synchronize_async`); the grace period completes once the thread unblocks. Before
/// the barrier moved out of the step lock, each of these waited for the thread (an outside
/// review measured 3 s for each with a thread blocking for 3 s).
#[test]
fn grace_periods_keep_their_deadlines_while_a_thread_blocks_the_signal() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    if !child::in_child() {
        child::expect_child(
            "grace_periods_keep_their_deadlines_while_a_thread_blocks_the_signal",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    let cell = drainable::GraceCell::new(0u64);
    let d = cell.domain();
    thread::scope(|s| {
        // The thread enters a section first, so that it owns a record.
        let unblock_tx = block_signals_on_a_thread(s, || drop(d.enter()), || {});
        if child::records_expected(true) {
            assert!(
                d.synchronize_timeout(Duration::from_millis(20)).is_err(),
                "the barrier cannot have completed while the thread blocks the signal"
            );
            let cookie = d.start_grace_period();
            assert!(!d.poll_grace_period(cookie));
            for i in 0..64 {
                cell.store(i); // under the backlog limit: never waits
            }
            let mut cx = Context::from_waker(Waker::noop());
            let mut f = Box::pin(d.synchronize_async());
            for _ in 0..3 {
                assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending);
            }
            drop(f);
        }
        unblock_tx.send(()).unwrap();
        d.synchronize();
        d.barrier();
        assert_eq!(d.backlog(), 0);
    });
    println!("{MARKER}");
}

/// The deadlock an outside review found: a grace period's start ran the signal barrier under
/// the domain's step lock, waiting for a thread that blocks the signal, while that thread's
/// first section in the slots (`read_owned`) waited for the step lock to install them. The
/// barrier now runs outside the lock, so the section is taken while the barrier still waits.
#[test]
fn a_first_slot_section_is_not_held_up_by_a_barrier_waiting_for_its_thread() {
    if !child::in_child() {
        child::expect_child(
            "a_first_slot_section_is_not_held_up_by_a_barrier_waiting_for_its_thread",
            &[FORCE],
            MARKER,
        );
        return;
    }
    child::setup(Duration::from_secs(60));
    let cell = std::sync::Arc::new(drainable::GraceCell::new(1u32));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (read_tx, read_rx) = mpsc::channel();
    thread::scope(|s| {
        let cell = &cell;
        let unblock_tx = block_signals_on_a_thread(
            s,
            || drop(cell.read()), // owns a record
            move || {
                go_rx.recv().unwrap();
                // The domain's first section in the slots: installs them under the step lock.
                read_tx.send(*cell.read_owned()).unwrap();
            },
        );
        let sync = s.spawn(|| cell.domain().synchronize());
        // Let the synchronizer reach its barrier (if it does not yet, the test still passes:
        // the property is that nothing below can wait for the step lock across a barrier).
        thread::sleep(Duration::from_millis(50));
        go_tx.send(()).unwrap();
        assert_eq!(read_rx.recv().unwrap(), 1, "read_owned returned");
        unblock_tx.send(()).unwrap();
        sync.join().unwrap();
    });
    println!("{MARKER}");
}
