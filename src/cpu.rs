//! Which per-CPU slot the current thread should use: the CPU number from rseq where glibc
//! registered it, else a per-thread index. The sources, and why this order, are in
//! `platform/cpu.rs`.
//!
//! Correctness never depends on the answer: a guard remembers the slot it incremented and gives
//! its count back there, wherever the thread runs by then. The CPU number is only a hint that
//! keeps slots uncontended.

use crate::platform;

/// The current CPU number, or a per-thread number where the CPU is not cheaply known. Any value
/// is correct; callers reduce it modulo their slot count.
#[inline]
pub(crate) fn current() -> usize {
    platform::cpu::current()
}

/// The three ways to find a slot, exposed (hidden from the docs) only so that
/// `bench/benches/cpu_id.rs` can measure them side by side; see `platform/cpu.rs` for the choice.
#[doc(hidden)]
pub mod sources {
    use crate::platform::cpu;

    /// The CPU number from glibc's rseq area, where that is available.
    #[inline]
    pub fn rseq() -> Option<usize> {
        cpu::rseq_cpu()
    }

    /// The CPU number from `sched_getcpu` (a vDSO call on Linux), where that is available.
    #[inline]
    pub fn sched_getcpu() -> Option<usize> {
        cpu::sched_getcpu()
    }

    /// The per-thread index (the fallback everywhere).
    #[inline]
    pub fn thread_index() -> usize {
        cpu::thread_index()
    }
}
