//! The platform facade: the one place that names `libc`, `loom`, `atomic-wait`,
//! `std::sync::atomic`, or a `target_os` / `target_arch` / `target_env`, and the one place
//! that chooses between the real machine and a model of it (`cfg(miri)`,
//! `cfg(drainable_loom)`). The rest of the crate is written once against the items below and
//! is model-checked as it is.
//!
//! # Backends and fallbacks
//!
//! - **Atomics, fences, locks, cells.** `std`'s, or loom's under `--cfg drainable_loom`
//!   (atomics, [`fence`], [`Mutex`] (which never reports poison; see its docs), [`UnsafeCell`]:
//!   loom's checked cell, else `std`'s behind loom's closure API, in `cell.rs`).
//!   [`compiler_fence`] exists only in real builds.
//! - **Futex wait and wake** (`futex.rs`): on Linux and Android the `futex` system call through
//!   `libc` (`futex/linux.rs`); elsewhere `atomic-wait`, plus a parking table for timed waits,
//!   which `atomic-wait` lacks (`futex/portable.rs`, `futex/parking.rs`); under loom one
//!   model-wide condition variable, and a timed wait times out at once (`futex/model.rs`).
//! - **The process-wide heavy barrier** of the per-CPU counter's thread-local entries
//!   (`membarrier.rs`), each tried in turn:
//!   1. `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Linux, Android), registered once per
//!      process;
//!   2. when it is refused *later* (a seccomp filter installed after records were handed out),
//!      the signal barrier, for good (`platform/signal_barrier.rs`: a real-time signal to every thread
//!      that owns a record, acknowledged from its handler);
//!   3. when it is missing *at start-up* (other kernels and platforms, seccomp): no heavy
//!      barrier, so no record is handed out and every per-CPU guard is counted in the slots.
//!
//!   The acquirer's light half is a compiler fence. Under Miri and loom both halves are
//!   `SeqCst` fences, the model of the pair.
//! - **Environment variables**, each read once per process: `DRAINABLE_NO_MEMBARRIER` (any
//!   value: behave as if `membarrier` were missing at start-up), `DRAINABLE_FORCE_SIGNAL_BARRIER=1`
//!   (records as usual, every heavy barrier a signal barrier: a testing aid; the former wins),
//!   `DRAINABLE_SIGNAL=<n>` (the signal the signal barrier takes, instead of the highest free
//!   real-time one).
//! - **CPU number** (`cpu.rs`): glibc's rseq area (Linux with glibc, x86-64 and AArch64), else
//!   a per-thread index handed out round-robin (every other platform, Miri, and loom, where each
//!   call answers differently to model migration). `sched_getcpu` is there only for
//!   `bench/benches/cpu_id.rs`.
//! - **Models.** [`MODEL`] (Miri or loom) shrinks sizes ([`SPIN_LIMIT`] 0, two entries per
//!   record); [`LOOM`] skips work that only serves real processes; [`process_wide!`] is a
//!   `static`, or a `loom::lazy_static` per explored execution; [`per_thread!`] a `std` or
//!   loom thread-local; [`const_fn!`] drops `const` under loom; [`unique_id`] and [`DebugId`]
//!   use `std` atomics even under loom, as they take part in no protocol; the debug
//!   self-deadlock detector ([`DebugId`]) and [`thread_token`] are off under loom, whose model
//!   threads share one OS thread.

pub(crate) mod cell;
pub(crate) mod cpu;
// `--cfg drainable_loom` swaps every atomic for loom's, which the optional `__loom` feature
// brings in (loom-tests turns it on under that cfg). Say so, rather than "unresolved crate".
#[cfg(all(drainable_loom, not(feature = "__loom")))]
compile_error!(
    "--cfg drainable_loom needs drainable's internal `__loom` feature: run the model tests \
     with `cargo test -p drainable-loom-tests` (which turns it on)"
);

mod futex;
mod membarrier;
mod mutex;
mod signal_barrier;

pub(crate) use cell::UnsafeCell;
pub(crate) use membarrier::{
    Handshake, Owners, heavy_barrier, heavy_barrier_registered, light_barrier, watch_forks,
};
pub(crate) use mutex::{Mutex, MutexGuard};

#[cfg(not(drainable_loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

#[cfg(drainable_loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

/// Only the real builds use it: under Miri and loom the acquirer side runs a full fence.
#[cfg(not(any(miri, drainable_loom)))]
pub(crate) use std::sync::atomic::compiler_fence;

/// Whether this build runs under a model of the machine: Miri or loom. Sizes that only slow a
/// model down, or keep its tests from reaching an edge with a few operations, shrink under it
/// ([`SPIN_LIMIT`], `records::ENTRIES`).
pub(crate) const MODEL: bool = cfg!(any(miri, drainable_loom));

/// Whether this build is a loom model (`--cfg drainable_loom`): every atomic access is a
/// branch point that loom explores, so work that only serves real processes (reusing records
/// of exited threads, hashing into many table shards) is skipped. See also
/// [`process_wide!`] and [`per_thread!`] for what changes shape under loom.
pub(crate) const LOOM: bool = cfg!(drainable_loom);

/// A process-wide unique, non-zero number (a registry's identity).
///
/// A `std` atomic even under loom: the number only has to differ from every other one, it
/// takes part in no protocol that loom should explore, and a `static` cannot hold a loom
/// atomic. A `u64` incremented once per registry never wraps.
pub(crate) fn unique_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    // Relaxed: only uniqueness matters, which the RMW gives.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The id of a drainable in the debug self-deadlock detector (`track.rs`), assigned from
/// [`unique_id`] by the first [`get`](DebugId::get), so that `new` stays a `const fn`.
/// Kept ([`DebugId::ENABLED`]) in builds with `debug_assertions`, except under loom, whose
/// model threads share one OS thread, so that the detector's `std` thread-local list could
/// not tell them apart. Elsewhere zero-sized, and `get` is 0: release builds pay nothing.
pub(crate) use debug_id::DebugId;

#[cfg(all(debug_assertions, not(drainable_loom)))]
mod debug_id {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// See the re-export.
    #[derive(Debug)]
    pub(crate) struct DebugId(AtomicU64);

    impl DebugId {
        /// Whether ids are kept (see the re-export).
        pub(crate) const ENABLED: bool = true;

        pub(crate) const fn new() -> Self {
            DebugId(AtomicU64::new(0))
        }

        /// A `std` atomic even under loom, like [`super::unique_id`]'s: it takes part in no
        /// protocol.
        #[inline]
        pub(crate) fn get(&self) -> u64 {
            // Relaxed: only uniqueness matters, and the one CAS below decides the value.
            let id = self.0.load(Ordering::Relaxed);
            if id != 0 {
                return id;
            }
            let new = super::unique_id();
            match self
                .0
                .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => new,
                Err(id) => id,
            }
        }
    }
}

#[cfg(not(all(debug_assertions, not(drainable_loom))))]
mod debug_id {
    /// See the re-export: zero-sized here.
    #[derive(Debug)]
    pub(crate) struct DebugId;

    impl DebugId {
        /// Whether ids are kept (see the re-export).
        pub(crate) const ENABLED: bool = false;

        pub(crate) const fn new() -> Self {
            DebugId
        }

        #[inline(always)]
        pub(crate) fn get(&self) -> u64 {
            0
        }
    }
}

/// A number that tells the running thread apart from every other thread alive: the address of
/// one of its thread-locals. 0 where that cannot be told (under loom, whose model threads share
/// one OS thread, and during thread teardown), which disables the checks built on it.
pub(crate) fn thread_token() -> usize {
    if LOOM {
        return 0;
    }
    thread_local! {
        static TOKEN: u8 = const { 0 };
    }
    TOKEN.try_with(|t| t as *const u8 as usize).unwrap_or(0)
}

/// `N` null atomic pointers, built in a `const fn` although atomics are not `Copy` (an array
/// repeat needs a constant): for a pointer table in a `const`-constructible type. Not `const`
/// under loom, whose atomics have no `const` constructor.
#[cfg(not(drainable_loom))]
pub(crate) const fn null_ptrs<T, const N: usize>() -> [AtomicPtr<T>; N] {
    [const { AtomicPtr::new(std::ptr::null_mut()) }; N]
}

/// Under loom: see the real builds' version.
#[cfg(drainable_loom)]
pub(crate) fn null_ptrs<T, const N: usize>() -> [AtomicPtr<T>; N] {
    std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut()))
}

/// How many times a waiter re-reads the word before it goes to sleep. A guard is usually held
/// for nanoseconds, so a short spin often saves the two system calls of a sleep and a wake.
/// Under loom the spin is pointless (every read is an explored interleaving), and under Miri
/// it only slows the interpreter down.
pub(crate) const SPIN_LIMIT: u32 = if MODEL { 0 } else { 100 };

/// A hint that this thread is spinning on a word another thread will change.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(drainable_loom))]
    std::hint::spin_loop();
    #[cfg(drainable_loom)]
    loom::thread::yield_now();
}

/// Declares a `const fn` that loses its `const` under loom, whose atomics have no `const`
/// constructor. Real builds keep `Drainable::new` usable in a `static`.
macro_rules! const_fn {
    ($(#[$attr:meta])* $vis:vis const fn $($rest:tt)*) => {
        #[cfg(not(drainable_loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(drainable_loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn;

/// Declares `fn $name() -> &'static $ty`, one value per process: a `static` in real builds
/// (its initialiser a constant expression); under loom a `loom::lazy_static`, one per explored
/// execution, so that every execution starts from the initial value (the values of earlier
/// executions are leaked, never touched again). The array form `[$init; N]` repeats a
/// non-`Copy` initialiser `N` times (a named constant).
macro_rules! process_wide {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident() -> &'static [$ty:ty; $n:ident] = [$init:expr; $m:ident];
    ) => {
        $(#[$attr])*
        $vis fn $name() -> &'static [$ty; $n] {
            #[cfg(not(drainable_loom))]
            {
                static VALUE: [$ty; $n] = [const { $init }; $m];
                &VALUE
            }
            #[cfg(drainable_loom)]
            {
                ::loom::lazy_static! {
                    static ref VALUE: [$ty; $n] = ::std::array::from_fn(|_| $init);
                }
                &VALUE
            }
        }
    };
    ($(#[$attr:meta])* $vis:vis fn $name:ident() -> &'static $ty:ty = $init:expr;) => {
        $(#[$attr])*
        $vis fn $name() -> &'static $ty {
            #[cfg(not(drainable_loom))]
            {
                static VALUE: $ty = $init;
                &VALUE
            }
            #[cfg(drainable_loom)]
            {
                ::loom::lazy_static! {
                    static ref VALUE: $ty = $init;
                }
                &VALUE
            }
        }
    };
}
pub(crate) use process_wide;

/// Declares a thread-local, read with `with` and `try_with` as `std`'s: a `const`-initialised
/// `std::thread_local!` in real builds; under loom a `loom::thread_local!`, one per model
/// thread (loom runs every model thread on one OS thread, so a `std` thread-local would be
/// shared by all of them).
macro_rules! per_thread {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = const { $init:expr };) => {
        #[cfg(not(drainable_loom))]
        ::std::thread_local! {
            $(#[$attr])*
            static $name: $ty = const { $init };
        }
        #[cfg(drainable_loom)]
        ::loom::thread_local! {
            $(#[$attr])*
            static $name: $ty = $init;
        }
    };
}
pub(crate) use per_thread;

/// Only the signal barrier's Linux backend waits with a deadline now (the drains' timed waits go
/// through `Block`), and it is not built under Miri or loom.
#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(any(miri, drainable_loom))
))]
pub(crate) use futex::wait_until;
#[cfg(all(test, not(drainable_loom)))]
pub(crate) use futex::wakes;
pub(crate) use futex::{Block, Park, Pending, Task, TaskWaiter, wake_all};
