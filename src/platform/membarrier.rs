//! The two halves of the thread-local entries' handshake (`counter/per_cpu/records.rs`): the
//! *light* barrier of the acquirer and releaser, and the process-wide *heavy* barrier of the
//! drainer, with its fallbacks:
//!
//! 1. `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (Linux, Android): registered once per
//!    process ([`heavy_barrier_registered`]); it runs a full barrier on every CPU that runs a
//!    thread of this process.
//! 2. The signal barrier (`platform/signal_barrier.rs`), for good, from the first `membarrier` that is
//!    refused after registration (a seccomp filter installed since), or from the start with
//!    `DRAINABLE_FORCE_SIGNAL_BARRIER=1`.
//! 3. No heavy barrier at all where registration fails at start-up (other kernels and
//!    platforms, seccomp, `DRAINABLE_NO_MEMBARRIER`): the caller then hands out no record and
//!    counts every guard in its per-CPU slots.
//!
//! Under Miri and loom both barriers are `SeqCst` fences, which is the model of the pair
//! (and, under loom, what the model checker explores).

use super::{AtomicBool, Ordering, fence};
use std::time::Instant;

pub(crate) use super::signal_barrier::{Handshake, watch_forks};

/// The threads a signal barrier must reach: implemented by the record list
/// (`counter/per_cpu/records.rs`), which is the caller's, not the platform's.
pub(crate) trait Owners: 'static {
    /// Calls `f` with every record's handshake and `in_use` flag. The signal barrier calls
    /// this from its signal handler too: it must only load atomics and data that no longer
    /// changes, and allocate nothing.
    // Only the signal barrier calls it: Linux and Android, not under Miri or loom.
    #[cfg_attr(
        not(all(
            any(target_os = "linux", target_os = "android"),
            not(any(miri, drainable_loom))
        )),
        allow(dead_code)
    )]
    fn each(f: impl FnMut(&'static Handshake, &'static AtomicBool));
}

/// The acquirer's and releaser's half: a compiler fence where the drainer side runs
/// `membarrier` (or the signal barrier, whose handler runs in this thread's own instruction
/// stream); a `SeqCst` fence under Miri and loom, which model the pair.
#[inline(always)]
pub(crate) fn light_barrier() {
    #[cfg(not(any(miri, drainable_loom)))]
    super::compiler_fence(Ordering::SeqCst);
    #[cfg(any(miri, drainable_loom))]
    fence(Ordering::SeqCst);
}

/// The drainer's half: `membarrier`, or the signal barrier to every thread that owns a record
/// of `O` once `membarrier` is refused (see the module docs). `Err` only if `deadline` passed
/// while the signal barrier waited for a thread (the barrier is then incomplete: the caller
/// times out). Panics, saying why, only when neither barrier can be made
/// (`platform/signal_barrier.rs`).
pub(crate) fn heavy_barrier<O: Owners>(deadline: Option<Instant>) -> Result<(), ()> {
    // The language-level half (all of it under Miri and loom): pairs with the callers'
    // `SeqCst` fences (`counter/per_cpu/records.rs`: `wake_waiters`; the light barrier under
    // the models), and costs nothing next to the system call.
    fence(Ordering::SeqCst);
    #[cfg(not(any(miri, drainable_loom)))]
    return os::expedited::<O>(deadline);
    #[cfg(any(miri, drainable_loom))]
    {
        let _ = deadline;
        Ok(())
    }
}

/// Whether the process has a heavy barrier (decided once per process, on first call: a
/// `membarrier` registration, which may wait for an RCU grace period in the kernel). Always
/// `true` under Miri and loom, whose heavy barrier is a fence.
pub(crate) fn heavy_barrier_registered() -> bool {
    #[cfg(not(any(miri, drainable_loom)))]
    return os::registered();
    #[cfg(any(miri, drainable_loom))]
    return true;
}

/// `membarrier(2)`: registration once per process, then the expedited barrier, or the signal
/// barrier once `membarrier` is refused.
#[cfg(not(any(miri, drainable_loom)))]
mod os {
    use super::Owners;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    mod sys {
        use super::Owners;
        use crate::platform::signal_barrier;

        // From <linux/membarrier.h>.
        const CMD_QUERY: libc::c_int = 0;
        const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
        const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

        fn call(cmd: libc::c_int) -> libc::c_long {
            // SAFETY: membarrier takes no pointers; flags 0, cpu_id 0.
            unsafe {
                libc::syscall(
                    libc::SYS_membarrier,
                    cmd,
                    0 as libc::c_uint,
                    0 as libc::c_int,
                )
            }
        }

        /// Queries and registers; `false` if the kernel (or a seccomp filter) refuses.
        pub(super) fn register() -> bool {
            if std::env::var_os("DRAINABLE_NO_MEMBARRIER").is_some() {
                return false;
            }
            if signal_barrier::forced() {
                // The testing aid: records as usual, every heavy barrier made of signals.
                signal_barrier::activate();
                return true;
            }
            let supported = call(CMD_QUERY);
            let needed = (CMD_PRIVATE_EXPEDITED | CMD_REGISTER_PRIVATE_EXPEDITED) as libc::c_long;
            supported >= 0
                && supported & needed == needed
                && call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        }

        pub(super) fn expedited<O: Owners>(deadline: Option<std::time::Instant>) -> Result<(), ()> {
            if !signal_barrier::active() {
                if call(CMD_PRIVATE_EXPEDITED) == 0 {
                    return Ok(());
                }
                // Refused after registration (it has no EINTR): a seccomp filter installed
                // since, as sandboxes do. Records are out, so a barrier is still needed: from
                // now on, for good, every heavy barrier signals the records' owners instead.
                signal_barrier::activate();
            }
            signal_barrier::barrier::<O>(deadline)
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    mod sys {
        use super::Owners;

        pub(super) fn register() -> bool {
            false
        }
        pub(super) fn expedited<O: Owners>(
            _deadline: Option<std::time::Instant>,
        ) -> Result<(), ()> {
            Ok(())
        }
    }

    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

    /// Whether the process is registered for expedited barriers. Decided once; every caller
    /// sees the same answer (the `OnceLock` orders it), so no acquirer can skip the barrier
    /// a drainer relies on.
    pub(super) fn registered() -> bool {
        *REGISTERED.get_or_init(sys::register)
    }

    pub(super) fn expedited<O: Owners>(deadline: Option<std::time::Instant>) -> Result<(), ()> {
        if registered() {
            sys::expedited::<O>(deadline)
        } else {
            Ok(())
        }
    }
}
