//! The counter schemes behind one sealed trait. The lifecycle word and its transitions are
//! written once (`lifecycle/word.rs`), and so is the public lifecycle (`drainable.rs`); a
//! [`Counter`] decides where guards are counted and owns the whole sequence of each verb
//! (acquire, release, close, open, wait): what a close or an open does to those counts, the
//! lock that orders it, and how a drainer waits for them. The lifecycle code calls one verb
//! per step and never asks which scheme it has.
//!
//! - [`Shared`] (`shared.rs`): guards are counted in the lifecycle word itself. Zero bytes.
//! - [`PerCpu`] (`per_cpu/`): guards are counted in the taking thread's own record
//!   (`per_cpu/records.rs`) or in per-CPU slots that a close *folds* into one central count
//!   (`per_cpu/slots.rs`), 8-byte cells made on first use in a process-wide per-CPU arena
//!   (`per_cpu/arena.rs`).

mod per_cpu;
mod shared;

pub use per_cpu::PerCpu;
pub(crate) use per_cpu::records;
pub(crate) use per_cpu::slots;
pub use shared::Shared;

/// How a drainable counts its guards: [`Shared`] (one word, the default) or [`PerCpu`].
///
/// Sealed: the crate's lifecycle code relies on each scheme's exact protocol, so the trait
/// cannot be implemented outside this crate. Use it as a bound to write code generic over
/// both kinds of drainable:
///
/// ```
/// use drainable::{Counter, DrainableWith, Drainable, PerCpuDrainable};
///
/// fn call<T: Fn() -> u32, C: Counter>(hook: &DrainableWith<T, C>) -> Option<u32> {
///     hook.try_acquire().map(|f| f())
/// }
/// assert_eq!(call(&Drainable::new(|| 1)), Some(1));
/// assert_eq!(call(&PerCpuDrainable::new(|| 2)), Some(2));
/// ```
pub trait Counter: sealed::Sealed {}

/// A waiter's name for the close it made or joined: the counter's number for it, taken under
/// the lock that orders closes, right after the close (0 where closes are not numbered). A
/// [`PendingDrain`](crate::PendingDrain) keeps it; it cannot change while that lives.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close(u64);

/// The guards outstanding when a timed wait gave up.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outstanding(pub(crate) usize);

pub(crate) mod sealed {
    use super::{Close, Outstanding};
    use crate::lifecycle::{Hold, Open, Refused, Word};
    use crate::platform;
    use std::fmt;
    use std::panic::{RefUnwindSafe, UnwindSafe};
    use std::time::Instant;

    /// The seal on [`Counter`](super::Counter): a marker, implemented for every
    /// [`CounterImpl`] and nameable only inside the crate. `Counter`'s rendered supertrait is
    /// this marker, not the protocol.
    pub trait Sealed: CounterImpl {}

    impl<C: CounterImpl> Sealed for C {}

    /// The one type of the protocol that public types store: a guard's ticket. A trait of its
    /// own so that rustdoc, which must name it in the guards' `Freeze` and `UnsafeUnpin` lines
    /// (unstable auto traits that no bound can discharge), names the seal and not the protocol.
    /// The stable auto traits are discharged by the bounds here, so they render without it.
    pub trait SealedTicket {
        /// What a guard remembers to give its count back (the slot index, or nothing).
        type Ticket: Copy + Send + Sync + Unpin + UnwindSafe + RefUnwindSafe + 'static;
    }

    /// The protocol a counter scheme implements: one method per verb of the lifecycle, each
    /// owning its sequence. Private to the crate (the module is not reachable from outside),
    /// so its methods are not part of the public API.
    pub trait CounterImpl: SealedTicket + Send + Sync + Sized + 'static {
        /// The type's name in `Debug` output.
        const NAME: &'static str;

        fn new_counter() -> Self;

        /// A counter in the state of a drained one (for a word made `COMMITTED | DRAINED`).
        fn new_drained_counter() -> Self;

        /// Takes one guard count, or refuses once closed. The guard is released on this thread.
        fn try_acquire(&self, word: &Word) -> Result<Self::Ticket, Refused>;

        /// As [`try_acquire`](Self::try_acquire), for a guard that may be released on another
        /// thread.
        #[inline]
        fn try_acquire_owned(&self, word: &Word) -> Result<Self::Ticket, Refused> {
            self.try_acquire(word)
        }

        /// Gives back the count named by `ticket`.
        ///
        /// # Safety
        /// `this` and `word` belong to one live drainable on which the caller owns that count.
        /// After the call the drainable may already be freed.
        unsafe fn release(this: *const Self, word: *const Word, ticket: Self::Ticket);

        /// Closes `word` for `hold` (`Committed`: `drain`; `Pending`: `prepare_drain`), with
        /// the pass over this counter's counts that a close of an open word needs, and returns
        /// the name of the close in effect, which the caller made or joined.
        fn close(&self, word: &Word, hold: Hold) -> Close;

        /// Opens `word` ([`Open::Reopen`] after a drain, [`Open::Undo`] of one pending close),
        /// with the pass that an opening needs. Returns `true` if this opened the word.
        fn open(&self, word: &Word, how: Open) -> bool;

        /// Waits until the close `close` (from [`close`](Self::close), held by `hold`) has
        /// drained, or, for a committed hold, has ended since; or until `deadline`, with the
        /// guards outstanding. On timeout the hold stays in place.
        ///
        /// A committed hold's close may end without this waiter (another waiter saw it
        /// drained, and it was reopened since): the waiter then returns without touching the
        /// word, so that it never finishes, commits or marks drained a later close
        /// (docs/design.md §2a).
        fn wait(
            &self,
            word: &Word,
            hold: Hold,
            close: Close,
            deadline: Option<Instant>,
        ) -> Result<(), Outstanding> {
            let Ok(waited) = self.wait_with(
                word,
                hold,
                close,
                deadline,
                &mut platform::Block,
                &mut Self::WaitState::default(),
            );
            waited
        }

        /// What a wait has done so far, kept across a task's polls (see
        /// [`wait_with`](Self::wait_with)). Dropping it takes down whatever the wait announced.
        type WaitState: Default + Send + Sync + Unpin + fmt::Debug;

        /// [`wait`](Self::wait), sleeping as `park` does: for a task, `Err` where a thread
        /// would sleep; the caller polls again after the wake with the same `state`. A task's
        /// wait has no deadline (`None`): it is cancelled by dropping it, and its caller then
        /// calls [`Word::stop_waiting`] and gives the hold back as a timed-out wait would.
        fn wait_with<P: platform::Park>(
            &self,
            word: &Word,
            hold: Hold,
            close: Close,
            deadline: Option<Instant>,
            park: &mut P,
            state: &mut Self::WaitState,
        ) -> Result<Result<(), Outstanding>, P::Pending>;

        /// Guards outstanding, for reports (a snapshot), given a value of the word.
        fn outstanding(&self, word: u32) -> usize;

        /// Bytes this counter uses outside the drainable itself.
        fn heap_bytes(&self) -> usize;
    }
}
