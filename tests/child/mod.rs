//! Shared by `tests/seccomp.rs` and `tests/signal_barrier.rs`: running one test in a child
//! process (a seccomp filter, or an environment variable read once per process, must not
//! leak into the other tests), and a canary loop over per-CPU drainables that catches a
//! use-after-drain.

#![allow(dead_code)] // each test file uses a different part

use drainable::{PerCpu, PerCpuDrainable, Registry};
use std::hint::spin_loop;
use std::process::{Command, Output};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
use std::thread;
use std::time::{Duration, Instant};

/// Set in the child's environment: the test body runs there instead of spawning.
pub const CHILD: &str = "DRAINABLE_TEST_CHILD";

/// Whether this process is the child of [`run_child`].
pub fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs the test `name` of this test binary in a child process, with `env` added. The
/// testing aid `DRAINABLE_FORCE_SIGNAL_BARRIER` is passed on only if `env` names it (a run of
/// the whole suite with it set must not change what the seccomp test checks).
pub fn run_child(name: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env_remove("DRAINABLE_FORCE_SIGNAL_BARRIER")
        .env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn the child test process")
}

/// Runs `name` in a child and asserts that it succeeded and printed `marker`; returns the
/// child's stdout and stderr.
pub fn expect_child(name: &str, env: &[(&str, &str)], marker: &str) -> (String, String) {
    let out = run_child(name, env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains(marker),
        "child `{name}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Sets the child up: a panic anywhere (a drain, a reader) ends the process at once, instead
/// of leaving the other threads spinning, and a child still running after `limit` aborts
/// (with a message): a drain that hangs becomes a failed child rather than a hung test suite.
pub fn setup(limit: Duration) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
    thread::spawn(move || {
        thread::sleep(limit);
        eprintln!("child: still running after {limit:?}: a drain hangs; aborting");
        std::process::abort();
    });
}

/// Whether `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` is supported and registered.
pub fn membarrier_registers() -> bool {
    const QUERY: libc::c_int = 0;
    const PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;
    let needed = libc::c_long::from(PRIVATE_EXPEDITED | REGISTER_PRIVATE_EXPEDITED);
    let q = membarrier(QUERY);
    q >= 0 && q & needed == needed && membarrier(REGISTER_PRIVATE_EXPEDITED) == 0
}

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: 0, or the errno.
pub fn membarrier_expedited() -> i32 {
    if membarrier(1 << 3) == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes no pointers.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            cmd,
            0 as libc::c_uint,
            0 as libc::c_int,
        )
    }
}

/// Whether the library hands out thread-local records in this process (else every per-CPU
/// guard is counted in the slots and no heavy barrier is ever needed).
pub fn records_expected(forced: bool) -> bool {
    std::env::var_os("DRAINABLE_NO_MEMBARRIER").is_none() && (forced || membarrier_registers())
}

/// The real-time signals whose disposition is not the default.
pub fn rt_signals_with_handlers() -> Vec<i32> {
    (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .filter(|&sig| {
            // SAFETY: a query only (null new action); `old` is written by the call.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
            r == 0 && old.sa_sigaction != libc::SIG_DFL
        })
        .collect()
}

const ALIVE: u64 = 0xA11C_E5ED_A11C_E5ED;
const POISON: u64 = 0xDEAD_BEEF_DEAD_BEEF;

/// What the guarded value (`&Value`) points to: a heap canary that the drainer poisons and
/// frees right after each drain. It lives outside the drainable so that the drainer can swap
/// the canary while the drainable is drained; readers reach it only through a guard.
pub struct Value {
    canary: AtomicPtr<AtomicU64>,
}

impl Value {
    pub fn new() -> Self {
        Value {
            canary: AtomicPtr::new(Box::into_raw(Box::new(AtomicU64::new(ALIVE)))),
        }
    }

    /// Drained only: poisons and frees the canary and installs a fresh one.
    fn replace(&self) {
        let fresh = Box::into_raw(Box::new(AtomicU64::new(ALIVE)));
        let old = self.canary.swap(fresh, Relaxed);
        // SAFETY: called only after a drain returned and before the reopen, when no guard
        // exists; readers reach canaries only under a guard.
        let old = unsafe { Box::from_raw(old) };
        old.store(POISON, Relaxed);
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        // SAFETY: the readers are gone.
        drop(unsafe { Box::from_raw(*self.canary.get_mut()) });
    }
}

/// Counters shared by readers and the drainer.
#[derive(Default)]
pub struct Stats {
    pub ok: AtomicUsize,
    pub violations: AtomicUsize,
    /// Set from the return of a drain until just before the reopen: no guard may see it.
    window: AtomicBool,
    pub stop: AtomicBool,
}

/// Takes guards of `d` in a loop until `stats.stop`, checking the canary under each; holds
/// some guards for a few microseconds (so that drains wait on thread-local entries) and
/// sometimes nests a second one (a second entry of the record).
pub fn reader(d: &PerCpuDrainable<&Value>, stats: &Stats) {
    let mut n = 0u64;
    while !stats.stop.load(Relaxed) {
        let Some(g) = d.try_acquire() else {
            spin_loop();
            continue;
        };
        n += 1;
        check(&g, stats);
        if n % 16 == 0 {
            if let Some(inner) = d.try_acquire() {
                check(&inner, stats);
            }
        }
        if n % 64 == 0 {
            let until = Instant::now() + Duration::from_micros(20);
            while Instant::now() < until {
                spin_loop();
            }
            check(&g, stats);
        }
        stats.ok.fetch_add(1, Relaxed);
    }
}

fn check(v: &Value, stats: &Stats) {
    let c = v.canary.load(Acquire);
    // SAFETY: a canary is freed only after a drain, which waits for this guard.
    let alive = unsafe { (*c).load(Relaxed) } == ALIVE;
    if !alive || stats.window.load(Relaxed) {
        stats.violations.fetch_add(1, Relaxed);
    }
}

/// `cycles` drains of `d` (which guards `value`) by every route (`drain`, `drain_timeout`, `prepare_drain` +
/// `commit`, an undo then a drain, `commit_timeout`), each followed by a canary swap and a
/// reopen. Every few cycles it waits for a reader to get in again, so readers and drains
/// really interleave.
pub fn drain_cycles(d: &PerCpuDrainable<&Value>, value: &Value, stats: &Stats, cycles: usize) {
    const LONG: Duration = Duration::from_secs(20);
    for i in 0..cycles {
        match i % 5 {
            0 => d.drain(),
            1 => d.drain_timeout(LONG).expect("drain_timeout timed out"),
            2 => d.prepare_drain().commit(),
            3 => {
                let p = d.prepare_drain();
                assert!(p.undo(), "undo reopens");
                d.drain();
            }
            _ => assert!(
                d.prepare_drain().commit_timeout(LONG).is_ok(),
                "commit_timeout timed out"
            ),
        }
        assert!(d.is_drained(), "cycle {i}: not drained after the drain");
        stats.window.store(true, Relaxed);
        value.replace();
        stats.window.store(false, Relaxed);
        assert!(d.reopen(), "cycle {i}: reopen");
        if i % 8 == 0 {
            let seen = stats.ok.load(Relaxed);
            let deadline = Instant::now() + Duration::from_secs(20);
            while stats.ok.load(Relaxed) == seen {
                assert!(Instant::now() < deadline, "readers never got in again");
                thread::yield_now();
            }
        }
    }
}

/// Registers and unregisters `cycles` heap values in a per-CPU registry while `readers`
/// threads call into every entry; each value is poisoned the moment `unregister` returns it.
/// Returns the violations seen.
pub fn registry_cycles(readers: usize, cycles: usize) -> usize {
    let reg: Registry<Box<AtomicU64>, PerCpu> = Registry::with_counter();
    let stop = AtomicBool::new(false);
    let violations = AtomicUsize::new(0);
    let calls = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    reg.for_each(|v| {
                        if v.load(Relaxed) != ALIVE {
                            violations.fetch_add(1, Relaxed);
                        }
                        calls.fetch_add(1, Relaxed);
                    });
                }
            });
        }
        let keep = reg.register(Box::new(AtomicU64::new(ALIVE)));
        for i in 0..cycles {
            let h = reg.register(Box::new(AtomicU64::new(ALIVE)));
            if i % 16 == 0 {
                let seen = calls.load(Relaxed);
                let deadline = Instant::now() + Duration::from_secs(20);
                while calls.load(Relaxed) == seen {
                    assert!(Instant::now() < deadline, "registry readers never ran");
                    thread::yield_now();
                }
            }
            let v = if i % 2 == 0 {
                reg.unregister(h)
            } else {
                reg.prepare_unregister(h).commit()
            };
            v.store(POISON, Release);
            drop(v);
        }
        stop.store(true, Relaxed);
        drop(reg.unregister(keep));
    });
    violations.load(Relaxed)
}
