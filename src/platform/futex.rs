//! Futex wait and wake by address: where every waiter of the crate sleeps (a drainer on a
//! lifecycle word, a grace period on its domain's word, a drainer on a record's `seq`, a signal
//! barrier on an acknowledgement). One backend per platform:
//!
//! - `linux.rs`: Linux and Android, the `futex` system call made directly through `libc`
//!   (also under Miri, which models it);
//! - `portable.rs`: everywhere else, `atomic-wait` (the OS's wait-on-address), with the parking
//!   table of `parking.rs` for the timed waits `atomic-wait` lacks;
//! - `model.rs`: under loom, a model-wide condition variable.
//!
//! Every backend keeps the futex's one promise: a waiter that saw the expected value and a
//! waker that changed it before waking never miss each other. Waits may return spuriously;
//! callers re-check their condition.

use super::AtomicU32;
use std::convert::Infallible;
use std::task::Context;
use std::time::Instant;

mod tasks;
pub(crate) use tasks::TaskWaiter;

#[cfg(all(any(target_os = "linux", target_os = "android"), not(drainable_loom)))]
pub(super) mod linux;
#[cfg(all(any(target_os = "linux", target_os = "android"), not(drainable_loom)))]
use linux as backend;

#[cfg(all(
    not(any(target_os = "linux", target_os = "android")),
    not(drainable_loom)
))]
mod portable;
#[cfg(all(
    not(any(target_os = "linux", target_os = "android")),
    not(drainable_loom)
))]
use portable as backend;

/// Compiled (and tested) on Linux too, where nothing else uses it.
#[cfg(not(drainable_loom))]
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
mod parking;

#[cfg(drainable_loom)]
mod model;
#[cfg(drainable_loom)]
use model as backend;

/// Sleeps while `*word == expected`, until a [`wake_all`] on the same address. May return
/// spuriously: callers re-check their condition.
#[inline]
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    backend::wait(word, expected);
}

/// Wakes every thread sleeping in [`wait`] or [`wait_until`] on `word`.
///
/// Takes a raw pointer on purpose: the releaser that completes a drain calls this after its
/// decrement, when the drainer may already have freed the word. A futex wake only uses the
/// address as a key and never dereferences it, so a dangling pointer is fine.
#[inline]
pub(crate) fn wake_all(word: *const AtomicU32) {
    #[cfg(all(test, not(drainable_loom)))]
    wakes::count();
    // The tasks waiting on the address first (`tasks.rs`; a fence and a load when there are
    // none): a task is then woken a system call sooner, and the futex wake below is the one
    // that blocked threads need.
    tasks::wake_all(word);
    backend::wake_all(word);
}

/// How a wait sleeps once its condition is not met: [`Block`] the thread on the futex, or
/// file a task's waker and return ([`Task`]). The waits of the lifecycle word and of the
/// per-CPU records are written once, generic over it: the blocking waits and the futures run
/// the same code, and a future's poll is the blocking wait up to the point where it would
/// sleep.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
pub trait Park {
    /// What a wait returns instead of sleeping: nothing, for [`Block`]
    /// ([`Infallible`]); "poll me again after a wake", for [`Task`].
    type Pending;

    /// How many times to re-read the word before sleeping. A task does not spin: its executor
    /// has other tasks to run.
    const SPINS: u32;

    /// Sleeps while `*word == expected`, until a [`wake_all`] or `deadline`. `Ok(true)` when
    /// the deadline has passed; `Ok(false)` to re-check; `Err` to return and be polled again.
    fn park(
        &mut self,
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
    ) -> Result<bool, Self::Pending>;

    /// The deadline to give a heavy barrier (`membarrier.rs`) that this wait makes: a thread's
    /// own `deadline`; for a task, a short slice, since a poll must return (the signal
    /// barrier may wait for another thread's acknowledgement for as long as it is stopped).
    fn barrier_deadline(&self, deadline: Option<Instant>) -> Option<Instant>;

    /// A heavy barrier gave up at [`barrier_deadline`](Self::barrier_deadline): `Ok` for a
    /// thread (its deadline passed: a timeout); for a task, `Err` after waking it, so that it
    /// is polled again and tries the barrier once more (or is cancelled meanwhile).
    fn barrier_gave_up(&mut self) -> Result<(), Self::Pending>;
}

/// Blocks the calling thread on the futex.
#[derive(Debug)]
pub(crate) struct Block;

impl Park for Block {
    type Pending = Infallible;
    const SPINS: u32 = super::SPIN_LIMIT;

    #[inline]
    fn park(
        &mut self,
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
    ) -> Result<bool, Infallible> {
        Ok(match deadline {
            None => {
                wait(word, expected);
                false
            }
            Some(deadline) => wait_until(word, expected, deadline),
        })
    }

    fn barrier_deadline(&self, deadline: Option<Instant>) -> Option<Instant> {
        deadline
    }

    fn barrier_gave_up(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Files a task's waker under the word's address and returns [`Pending`].
#[derive(Debug)]
pub(crate) struct Task<'a, 'b> {
    pub(crate) waiter: &'a mut TaskWaiter,
    pub(crate) cx: &'a mut Context<'b>,
}

/// A wait that returned instead of sleeping: its future returns `Poll::Pending`, and its
/// task is woken by the next [`wake_all`] on the word it waited on.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending;

impl Park for Task<'_, '_> {
    type Pending = Pending;
    const SPINS: u32 = 0;

    fn park(
        &mut self,
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
    ) -> Result<bool, Pending> {
        // A future has no deadline: it is cancelled by being dropped.
        debug_assert!(deadline.is_none(), "a task's wait has no deadline");
        match self.waiter.poll(word, expected, self.cx) {
            std::task::Poll::Ready(()) => Ok(false),
            std::task::Poll::Pending => Err(Pending),
        }
    }

    fn barrier_deadline(&self, _deadline: Option<Instant>) -> Option<Instant> {
        Instant::now().checked_add(TASK_BARRIER_SLICE)
    }

    fn barrier_gave_up(&mut self) -> Result<(), Pending> {
        self.cx.waker().wake_by_ref();
        Err(Pending)
    }
}

/// How long one poll lets a heavy barrier wait (only the signal barrier, where `membarrier` was
/// refused, ever waits: for a thread to acknowledge its signal). Past it the poll returns and
/// the task is polled again at once, so a stopped thread makes the task retry, not block its
/// executor, and a cancellation (a timeout) takes effect.
const TASK_BARRIER_SLICE: std::time::Duration = std::time::Duration::from_millis(1);

/// Like [`wait`], but gives up at `deadline`. Returns `true` when the deadline has passed.
#[cfg(not(drainable_loom))]
pub(crate) fn wait_until(word: &AtomicU32, expected: u32, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return true;
    }
    backend::wait_timeout(word, expected, deadline - now);
    Instant::now() >= deadline
}

#[cfg(drainable_loom)]
pub(crate) use model::wait_until;

/// Unit tests count the futex wakes their own thread makes: a wake on a path that should not
/// make one is a system call per operation, invisible to every functional test.
#[cfg(all(test, not(drainable_loom)))]
pub(crate) mod wakes {
    use std::cell::Cell;

    thread_local! {
        static WAKES: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count() {
        let _ = WAKES.try_with(|w| w.set(w.get() + 1));
    }

    /// Futex wakes this thread has made so far.
    pub(crate) fn made() -> u64 {
        WAKES.with(Cell::get)
    }
}
