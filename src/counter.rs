//! The counter schemes behind one sealed trait. The lifecycle (the state word, closing, waiting,
//! undo, reopen) is written once in `state.rs` and `drainable.rs`; a [`Counter`] only decides
//! where guards are counted and how a close turns those counts into something a drainer can
//! wait on.
//!
//! - [`Shared`]: guards are counted in the lifecycle word itself. Zero bytes.
//! - [`PerCpu`]: guards are counted in cache-line-padded per-CPU slots; a close *folds* the
//!   slots into one central count (see the module docs of `PerCpu`).

use crate::fold::Folding;
use crate::local::{self, LocalHold};
use crate::platform::{self as sync, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use crate::state::{self, Refused};
use std::fmt;

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
pub trait Counter: sealed::CounterImpl {}

pub(crate) mod sealed {
    use super::*;

    /// The protocol a counter scheme implements. Private to the crate (the module is not
    /// reachable from outside), so its methods are not part of the public API.
    pub trait CounterImpl: Send + Sync + Sized + 'static {
        /// What a guard remembers to give its count back (the slot index, or nothing).
        type Ticket: Copy + Send + Sync + 'static;

        /// The type's name in `Debug` output.
        const NAME: &'static str;

        /// Units of the lifecycle word's count field that a close adds when it closes an open
        /// word, and that the scheme gives back once the guards counted elsewhere are gone.
        const CLOSE_TOKEN: u32;

        fn new_counter() -> Self;

        /// A counter in the state of a drained one (for a word made `COMMITTED | DRAINED`).
        fn new_drained_counter() -> Self;

        /// Takes one guard count, or refuses once closed. The guard is released on this thread.
        fn try_acquire(&self, word: &AtomicU32) -> Result<Self::Ticket, Refused>;

        /// As [`try_acquire`](Self::try_acquire), for a guard that may be released on another
        /// thread.
        #[inline]
        fn try_acquire_owned(&self, word: &AtomicU32) -> Result<Self::Ticket, Refused> {
            self.try_acquire(word)
        }

        /// The number of the close in effect, read under the control lock right after the
        /// caller closed the word or joined its close: the waiter's name for its own close.
        /// 0 where closes are not numbered.
        fn current_close(&self) -> u64 {
            0
        }

        /// Whether close number `close` (from [`current_close`](Self::current_close)) is
        /// still the one in effect. An `Acquire` read where closes are numbered: a `false`
        /// comes with the later close and everything before it (its drain, the reopen).
        /// Always `true` where they are not.
        fn is_current(&self, _close: u64) -> bool {
            true
        }

        /// After the caller's close number `close` of `word`, waits for the guards this
        /// scheme does not count through the word (none, by default), then gives back their
        /// token; or until `deadline` (`Err` carries how many guards remain). `Ok(true)` when
        /// it saw that the drain is over for `hold` (drained, or, for a committed hold, its
        /// close ended since): it then gave back nothing.
        fn wait_held(
            &self,
            _word: &AtomicU32,
            _hold: state::Hold,
            _close: u64,
            _deadline: Option<std::time::Instant>,
        ) -> Result<bool, usize> {
            Ok(false)
        }

        /// Gives back the count named by `ticket`.
        ///
        /// # Safety
        /// `this` and `word` belong to one live drainable on which the caller owns that count.
        /// After the call the drainable may already be freed.
        unsafe fn release(this: *const Self, word: *const AtomicU32, ticket: Self::Ticket);

        /// Serialises the operations that open or close the word with the passes over the
        /// counters that go with them. `None` where closing needs no pass.
        fn lock_control(&self) -> Option<MutexGuard<'_, ()>>;

        /// Called, under the control lock, right after this thread closed an open word
        /// (adding `CLOSE_TOKEN`).
        fn closed(&self, word: &AtomicU32);

        /// Called, under the control lock, right after this thread opened a closed word.
        fn opened(&self, word: &AtomicU32);

        /// Guards outstanding, for reports (a snapshot).
        fn outstanding(&self, word: u32) -> usize;

        /// Bytes this counter uses outside the drainable itself.
        fn heap_bytes(&self) -> usize;

        /// The id that marks thread-local entries (tests only; 0 where there is none).
        #[cfg(all(test, not(drainable_loom)))]
        fn test_id(&self) -> u64 {
            0
        }
    }
}

/// The single-word counter of [`Drainable<T>`](crate::Drainable): guards are counted in the
/// lifecycle word, so a close needs no pass and an acquisition is one `fetch_add` on it.
/// Smallest and cheapest on one thread; every reader writes the same cache line.
///
/// ```
/// use drainable::{DrainableWith, Shared};
/// let d: DrainableWith<u8, Shared> = drainable::Drainable::new(1);
/// // The word, the u8 and padding (debug builds add an 8-byte key for the deadlock detector).
/// let debug_key = if cfg!(debug_assertions) { 8 } else { 0 };
/// assert_eq!(std::mem::size_of_val(&d), (4 + 1 + 3 + debug_key) as usize);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Shared;

impl Counter for Shared {}

impl sealed::CounterImpl for Shared {
    type Ticket = ();
    const NAME: &'static str = "Drainable";
    const CLOSE_TOKEN: u32 = 0;

    fn new_counter() -> Self {
        Shared
    }

    fn new_drained_counter() -> Self {
        Shared
    }

    #[inline]
    fn try_acquire(&self, word: &AtomicU32) -> Result<(), Refused> {
        state::try_acquire(word)
    }

    #[inline]
    unsafe fn release(_this: *const Self, word: *const AtomicU32, _ticket: ()) {
        // SAFETY: forwarded from the caller: it owns one count on `word`.
        unsafe { state::release(word) }
    }

    #[inline]
    fn lock_control(&self) -> Option<MutexGuard<'_, ()>> {
        None
    }

    fn closed(&self, _word: &AtomicU32) {}

    fn opened(&self, _word: &AtomicU32) {}

    fn outstanding(&self, word: u32) -> usize {
        state::count(word) as usize
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}

/// The per-CPU counter of [`PerCpuDrainable<T>`](crate::PerCpuDrainable).
///
/// Two places count guards, and a drain waits for both:
///
/// - **Thread-local entries** (the hot path, Linux and Android): a [`Guard`](crate::Guard)
///   writes the drainable's id into an entry of its thread's own 128-byte record with a plain
///   store and re-reads the lifecycle word; dropping it stores 0. No locked instruction and
///   no shared cache line written. The drain side pays instead: after closing it runs
///   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (one system call, a few microseconds with
///   other threads running) and scans every thread's record, sleeping on a record's futex
///   until its entries of this drainable clear.
/// - **Per-CPU slots**: cache-line-padded, one per CPU. Taking a guard is a CAS on the
///   current CPU's slot, dropping it a `fetch_sub` on the slot it was taken on, wherever the
///   thread runs by then. A close *folds* every slot into one central count with one
///   read-modify-write per slot, so the drain waits for an exact count, and the drop that
///   takes it to zero wakes the drainer. Used by [`OwnedGuard`](crate::OwnedGuard)s (they may
///   be dropped on another thread), by a thread's fifth and later guard held at once, and for
///   every guard where `membarrier` is unavailable (other platforms, old kernels, seccomp,
///   or the environment variable `DRAINABLE_NO_MEMBARRIER` set at first use).
///
/// If `membarrier` is refused only *after* records were handed out (a seccomp filter
/// installed later, as sandboxes do), the process switches for good to a barrier made of
/// real-time signals, each acknowledged from a handler after a full fence (liburcu's signal
/// flavour): drains stay exact, at the cost of a signal per thread that owns a record. A
/// thread that blocks that signal holds drains up (reported once on stderr after a second);
/// a process where no real-time signal is free, or where signals to its own threads are
/// refused too, has no sound barrier left, and the drain panics saying so. `docs/design.md`
/// §6b has the argument.
///
/// `docs/design.md` §6 has the whole argument. `drain`, `prepare_drain`, `undo` and `reopen`
/// take a small lock that keeps the passes over the slots in the order of the closes and
/// opens (guards never take it).
///
/// # Memory
///
/// Per drainable: `128 × slots` bytes on the heap, `slots` being the number of CPUs rounded
/// up to a power of two and capped at 64 (CPUs beyond share slots; correctness does not depend
/// on it), plus about 56 bytes inline. Per process: one 128-byte record per thread alive at
/// once that has taken a per-CPU guard, shared by all per-CPU drainables (reused when the
/// thread exits, never freed).
///
/// ```
/// let d = drainable::PerCpuDrainable::new(());
/// let slots = d.heap_bytes() / 128;
/// assert!(slots.is_power_of_two() && slots <= 64);
/// ```
pub struct PerCpu {
    /// Marks this drainable's guards in the thread-local entries. Unique in the process.
    id: u64,
    slots: Folding,
    /// `cycle << 1 | out`: `cycle` is bumped by every close of an open word (under the control
    /// lock, like the close); `out` says the current close's token for the thread-local
    /// entries is still in the word (no waiter has yet seen the entries clear after that
    /// close). One word, so a waiter gives the token back with one CAS, no lock.
    entries_token: AtomicU64,
    control: Mutex<()>,
}

impl fmt::Debug for PerCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpu")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Where a per-CPU guard is counted.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub, missing_debug_implementations)]
#[derive(Clone, Copy)]
pub struct PerCpuTicket(Place);

#[derive(Clone, Copy)]
enum Place {
    Local(LocalHold),
    Slot(u32),
}

impl Counter for PerCpu {}

impl sealed::CounterImpl for PerCpu {
    type Ticket = PerCpuTicket;
    const NAME: &'static str = "PerCpuDrainable";
    /// One token for the slots (given back by the fold, `fold.rs`) and one for the
    /// thread-local entries (given back by a waiter whose scan followed this close).
    const CLOSE_TOKEN: u32 = 2 * state::ONE;

    fn new_counter() -> Self {
        // Registers `membarrier` now, if at all, so that no guard's first use pays for it.
        local::enabled();
        PerCpu {
            id: sync::unique_id(),
            slots: Folding::new(),
            entries_token: AtomicU64::new(0),
            control: Mutex::new(()),
        }
    }

    fn new_drained_counter() -> Self {
        PerCpu {
            slots: Folding::new_folded(),
            ..Self::new_counter()
        }
    }

    #[inline]
    fn try_acquire(&self, word: &AtomicU32) -> Result<PerCpuTicket, Refused> {
        match local::try_hold(self.id, word) {
            Some(Ok(hold)) => Ok(PerCpuTicket(Place::Local(hold))),
            Some(Err(refused)) => Err(refused),
            None => self.try_acquire_owned(word),
        }
    }

    #[inline]
    fn try_acquire_owned(&self, _word: &AtomicU32) -> Result<PerCpuTicket, Refused> {
        match self.slots.try_increment() {
            Ok(index) => Ok(PerCpuTicket(Place::Slot(index))),
            Err(value) => Err(refused(value)),
        }
    }

    #[inline]
    unsafe fn release(this: *const Self, word: *const AtomicU32, ticket: PerCpuTicket) {
        match ticket.0 {
            // SAFETY: forwarded: the caller owns this hold.
            Place::Local(hold) => unsafe { local::release(hold) },
            // SAFETY: forwarded: `this` is live and the caller owns the count on slot `index`.
            Place::Slot(index) => unsafe {
                Folding::decrement(std::ptr::addr_of!((*this).slots), index, word)
            },
        }
    }

    fn current_close(&self) -> u64 {
        // Relaxed: the caller holds the control lock, under which every close bumps the cycle.
        self.entries_token.load(Ordering::Relaxed) >> 1
    }

    fn is_current(&self, close: u64) -> bool {
        // Acquire: pairs with the Release of `closed`: a later cycle seen here brings the
        // close that made it (an Acquire RMW on the word, after every release of our close's
        // guards in its modification order) into happens-before.
        self.entries_token.load(Ordering::Acquire) >> 1 == close
    }

    fn wait_held(
        &self,
        word: &AtomicU32,
        hold: state::Hold,
        close: u64,
        deadline: Option<std::time::Instant>,
    ) -> Result<bool, usize> {
        // The invariant (docs/design.md §2a): only a waiter of close `close`, whose scan
        // followed that close, gives its entries token back, and only while it is the
        // close in effect. A scan made under one close says nothing about acquirers that
        // read the word open after a reopen, so a waiter whose close has ended stops
        // (`wait_released` checks before its barrier and while it waits; the CAS below
        // decides).
        debug_assert!(
            hold == state::Hold::Committed || self.is_current(close),
            "a pending close outlived its cycle"
        );
        match local::wait_released(self.id, word, hold, deadline, || self.is_current(close)) {
            Ok(local::Waited::Over) => Ok(true),
            Ok(local::Waited::Clear) => {
                let out = close << 1 | 1;
                // Relaxed: the word's RMWs order the token (`state::release` is Release); a
                // failure is read again with Acquire by `is_current` before it is acted on.
                match self.entries_token.compare_exchange(
                    out,
                    close << 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // Every entry was seen clear after this close: give its token back.
                        // SAFETY: `closed` added this token to the word for this cycle, and
                        // the CAS makes this the only give-back.
                        unsafe { state::release(word) };
                        Ok(false)
                    }
                    // Given back already, by another waiter of this close.
                    Err(now) if now >> 1 == close => Ok(false),
                    Err(_) => {
                        // A close of an open word came since: the word was reopened after
                        // our close. Only a committed hold allows that, and it is then over.
                        debug_assert_eq!(hold, state::Hold::Committed);
                        // `is_current` re-reads with Acquire: the later close, and the drain
                        // and reopen before it, happen-before this waiter returns.
                        Ok(!self.is_current(close))
                    }
                }
            }
            Err(()) => Err(local::outstanding(self.id).max(1) + self.slots.outstanding()),
        }
    }

    fn lock_control(&self) -> Option<MutexGuard<'_, ()>> {
        // Nothing under the lock panics halfway through a change (the only panic left there
        // is the signal barrier's "no sound barrier", which changes nothing before it), so a
        // poisoned lock guards consistent state.
        Some(self.control.lock())
    }

    fn closed(&self, word: &AtomicU32) {
        // The next cycle, token out (or, with no entries to wait for, not out). The opened
        // word had the token bit clear (`opened`, or new), so no waiter's CAS can succeed
        // meanwhile. Relaxed: a waiter reads it after its own close, which it made under the
        // control lock that this runs under, so the lock orders the two.
        let enabled = local::enabled();
        // Release: pairs with the Acquire of `is_current`, for the waiters of earlier closes
        // that learn from the new cycle that theirs has ended.
        let prev = self
            .entries_token
            .fetch_add(2 | u64::from(enabled), Ordering::Release);
        debug_assert_eq!(prev & 1, 0, "a close of an open word with its token out");
        if !enabled {
            // No thread-local entries exist: nothing to wait for.
            // SAFETY: the caller just added the close's tokens to the word.
            unsafe { state::release(word) };
        }
        self.slots.fold(word);
    }

    fn opened(&self, word: &AtomicU32) {
        self.slots.unfold(word);
        // Relaxed: as in `closed`; a waiter's CAS either took the token first or fails.
        if self.entries_token.fetch_and(!1, Ordering::Relaxed) & 1 != 0 {
            // Reopened (an undo) before any waiter scanned: the token goes back unused.
            // SAFETY: the token of the close that just ended, still in the word.
            unsafe { state::release(word) };
        }
        // A committed drainer still waiting for an entry must see the reopen and return.
        local::wake_waiters();
    }

    fn outstanding(&self, _word: u32) -> usize {
        self.slots.outstanding() + local::outstanding(self.id)
    }

    fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
    }

    #[cfg(all(test, not(drainable_loom)))]
    fn test_id(&self) -> u64 {
        self.id
    }
}

#[cold]
#[inline(never)]
fn refused(slot_value: u64) -> Refused {
    if Folding::is_folded(slot_value) {
        Refused::Closed
    } else {
        Refused::Overflow
    }
}
