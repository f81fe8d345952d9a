//! Which per-CPU slot the current thread should use (`crate::cpu::current`).
//!
//! Three sources, measured in `bench/benches/cpu_id.rs`; rseq is used where available:
//!
//! 1. **rseq** (Linux, glibc >= 2.35, x86-64 and AArch64): glibc registers a restartable-sequences
//!    area for every thread and exports its offset from the thread pointer as `__rseq_offset`.
//!    The kernel keeps `cpu_id` in that area current, so the CPU number is one load relative to
//!    the thread pointer: 0.76 ns here (ClickHouse reports about 0.3 ns for the same read).
//! 2. **`sched_getcpu`**: a vDSO call; measured 2.46 ns here against 0.76 ns for rseq
//!    (`bench/benches/cpu_id.rs`, docs/benchmarks.md), so it is not used.
//! 3. **A per-thread index**: each thread takes the next number from a global counter the first
//!    time it asks (0.55 ns, a thread-local read). Cheaper than rseq by a fifth of a nanosecond,
//!    but two threads whose indices collide modulo the slot count share a slot even while they
//!    run on different CPUs, where rseq gives threads running at the same time different slots
//!    (up to the cap). So rseq first, this as the fallback: every platform, Miri, and loom
//!    (where each call returns a new index, so that an acquisition and its release land on
//!    different slots, modelling migration).
//!
//! Correctness never depends on the answer: a guard remembers the slot it incremented and gives
//! its count back there, wherever the thread runs by then. The CPU number is only a hint that
//! keeps slots uncontended.

/// The current CPU number, or a per-thread number where the CPU is not cheaply known. Any value
/// is correct; callers reduce it modulo their slot count.
#[inline]
pub(crate) fn current() -> usize {
    if let Some(cpu) = rseq::cpu_id() {
        return cpu;
    }
    thread_index()
}

/// How many CPUs the per-CPU counters should spread over, read once per process: the value of
/// the environment variable `DRAINABLE_SLOTS` if it is a positive number (a knob to state and
/// test the figures of larger machines on a small one), else `available_parallelism` (which
/// reads cgroup files with several system calls: 36 us a call, too slow for every
/// construction), else 1.
#[cfg(not(drainable_loom))]
pub(crate) fn spread() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// 0 until first read.
    static SPREAD: AtomicUsize = AtomicUsize::new(0);
    // Relaxed: the value is the same whoever computes it; a race only computes it twice.
    match SPREAD.load(Ordering::Relaxed) {
        0 => {
            let n = std::env::var("DRAINABLE_SLOTS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            SPREAD.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Under loom the counters use two slots whatever the machine (see `slots.rs`).
#[cfg(drainable_loom)]
pub(crate) fn spread() -> usize {
    2
}

/// A number per thread, handed out round-robin on first use.
#[cfg(not(drainable_loom))]
#[inline]
pub(crate) fn thread_index() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX
        .try_with(|i| {
            let mut v = i.get();
            if v == usize::MAX {
                // Relaxed: only uniqueness matters, not ordering.
                v = NEXT.fetch_add(1, Ordering::Relaxed);
                i.set(v);
            }
            v
        })
        .unwrap_or(0)
}

/// Under loom every call answers differently, so acquisitions and releases spread over the
/// slots as if threads migrated between every step.
#[cfg(drainable_loom)]
pub(crate) fn thread_index() -> usize {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    loom::lazy_static! {
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where glibc's rseq area can be read: the one place that names these platforms.
#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri),
    not(drainable_loom)
))]
mod rseq {
    use std::sync::atomic::{AtomicIsize, Ordering};

    /// `__rseq_offset` once looked up; `UNKNOWN` before, `UNAVAILABLE` if there is none.
    static OFFSET: AtomicIsize = AtomicIsize::new(UNKNOWN);
    const UNKNOWN: isize = isize::MIN;
    const UNAVAILABLE: isize = isize::MIN + 1;
    /// Offset of `cpu_id` in `struct rseq` (after `cpu_id_start`), per the Linux UAPI.
    const CPU_ID: isize = 4;

    #[inline]
    pub(super) fn cpu_id() -> Option<usize> {
        // Relaxed: the value is written once and any thread may compute it again.
        let mut off = OFFSET.load(Ordering::Relaxed);
        if off == UNKNOWN {
            off = lookup();
        }
        if off == UNAVAILABLE {
            return None;
        }
        // SAFETY: glibc registered an rseq area for every thread at `thread pointer + off`
        // (checked once in `lookup`); it lives as long as the thread. The kernel updates `cpu_id`
        // concurrently, so read it volatile; a torn or stale value is only a worse hint.
        let cpu =
            unsafe { std::ptr::read_volatile(thread_pointer().offset(off + CPU_ID) as *const u32) };
        // Negative values (as i32) mean "not registered"; fall back in that case.
        if (cpu as i32) < 0 {
            None
        } else {
            Some(cpu as usize)
        }
    }

    #[cold]
    fn lookup() -> isize {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the symbol tables.
        let off = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()) };
        // SAFETY: as above.
        let size = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()) };
        let value = if off.is_null() || size.is_null() {
            UNAVAILABLE
        } else {
            // SAFETY: glibc defines `__rseq_offset` as a `ptrdiff_t` and `__rseq_size` as an
            // `unsigned int`, both constant after start-up.
            let (off, size) = unsafe { (*(off as *const isize), *(size as *const u32)) };
            // A size of 0 means rseq registration is disabled (e.g. by a glibc tunable).
            if size == 0 { UNAVAILABLE } else { off }
        };
        OFFSET.store(value, Ordering::Relaxed);
        value
    }

    #[inline]
    fn thread_pointer() -> *const u8 {
        let tp: *const u8;
        // SAFETY: reads the thread pointer register; no memory access, no side effects.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags));
        }
        // SAFETY: as above.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nostack, nomem, preserves_flags));
        }
        tp
    }
}

/// Everywhere else (and under Miri and loom) there is no rseq area to read.
#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(miri),
    not(drainable_loom)
)))]
mod rseq {
    #[inline(always)]
    pub(super) fn cpu_id() -> Option<usize> {
        None
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    #[test]
    fn thread_indices_differ_between_threads() {
        let a = super::thread_index();
        assert_eq!(a, super::thread_index(), "stable within a thread");
        let b = std::thread::spawn(super::thread_index).join().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn rseq_cpu_id_agrees_with_sched_getcpu() {
        let Some(_) = super::rseq::cpu_id() else {
            eprintln!("rseq not registered here; the per-thread index is used");
            return;
        };
        // The thread may migrate between the two reads; agreement once in many tries is enough.
        let agreed = (0..1000).any(|_| {
            let rseq = super::rseq::cpu_id();
            rseq.is_some() && rseq == super::sched_getcpu()
        });
        assert!(agreed);
    }
}

/// The CPU number from glibc's rseq area, where that is available.
#[inline]
pub(crate) fn rseq_cpu() -> Option<usize> {
    rseq::cpu_id()
}

/// The CPU number from `sched_getcpu` (a vDSO call on Linux), where that is available.
#[inline]
pub(crate) fn sched_getcpu() -> Option<usize> {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        return usize::try_from(cpu).ok();
    }
    #[allow(unreachable_code)]
    None
}
