//! The lifecycle word: the guard count and every lifecycle flag in one `u32`, so that each
//! transition is a single atomic read-modify-write and every transition is totally ordered
//! with every acquisition and release (no Dekker handshake, no second word to keep in step).
//! It is also the futex word the drainers sleep on.
//!
//! # Layout
//!
//! ```text
//!  31                  8    7     6      3   2         1           0
//! +---------------------+-------+--------+---------+-----------+---------+
//! |     guard count     | TAKEN | pending| DRAINED | COMMITTED | WAITING |
//! +---------------------+-------+--------+---------+-----------+---------+
//! ```
//!
//! - `WAITING`: a drainer is asleep (or about to sleep) on the word; the release that takes the
//!   count to zero must wake it.
//! - `COMMITTED`: an irreversible drain ([`drain`](crate::Drainable::drain) or a successful
//!   commit) closed the word. Only [`reopen`](crate::Drainable::reopen) clears it.
//! - `DRAINED`: a drainer saw the count at zero while the word was committed. Set once per
//!   close; cleared by `reopen`.
//! - pending: the number of live reversible closes (`PendingDrain`s and timed drains in
//!   flight), 0 to [`PENDING_SPILL`]. At `PENDING_SPILL` the field stops counting and further
//!   closes are counted in the side table (`table.rs`), keyed by the word's address; see
//!   *Spilled closes* below.
//! - `TAKEN`: the value was moved out of a drained drainable
//!   ([`drain_and_take`](crate::Drainable::drain_and_take)). Set once, on a word that is
//!   `COMMITTED | DRAINED`, and never cleared: [`reopen`](crate::Drainable::reopen) refuses,
//!   so the word stays closed for good, and the drainable's `Drop` does not drop the value.
//! - guard count: guards outstanding, plus, for an instant, acquisitions that lost a race with
//!   a close and are backing out.
//!
//! The word is *closed* (acquisitions fail) while `COMMITTED` is set or pending is non-zero.
//!
//! # Orderings
//!
//! Pairs, named by the two sides:
//! - **release → drainer**: a guard's decrement is `Release`; the drainer's loads are `Acquire`.
//!   Every later operation on the word is a read-modify-write, which continues the release
//!   sequence, so the drainer's `Acquire` read of a zero count synchronises with *every* earlier
//!   release, even when another drainer's RMW sits between them. The word is never written with a
//!   plain store after construction, which is what keeps those release sequences unbroken.
//! - **open → acquirer**: `reopen` and the `undo` that reopens are `Release`; a successful
//!   acquisition is `Acquire`, so whatever the opener did before reopening is visible under the
//!   new guards.
//! - Closing needs no fence against acquirers: both are RMWs on this one word, so an acquirer's
//!   increment is either before the close (and the drainer waits for it) or after (and the
//!   acquirer sees the closed bits in the value its own RMW returned, and backs out).
//!
//! # Spilled closes
//!
//! Any number of reversible closes may be live at once (a thousand threads in `drain_timeout`
//! on one drainable), but the word has four bits for them. The invariant that makes the two
//! places one count:
//!
//! > The side table holds closes of a word only while the word's pending field is
//! > `PENDING_SPILL`, and the field leaves `PENDING_SPILL` only under the table's lock.
//!
//! - Adding a close to a field at `PENDING_SPILL` takes the lock, checks the field again and
//!   counts the close in the table. (Below that value, adding is the usual CAS.)
//! - Giving one back (an undo, or a commit trading it for `COMMITTED`) from a field at
//!   `PENDING_SPILL` takes the lock, and takes the close from the table if it holds any, else
//!   from the field.
//!
//! - Stepping the field up to `PENDING_SPILL` takes the lock too, and first removes any entry
//!   the table still has for the address: with the field below the limit under the lock, no
//!   live close can be there, so such an entry is stale (closes leaked with `mem::forget` on
//!   their `PendingDrain`s, then the drainable dropped or moved; see `table.rs`).
//!
//! Under the lock the field therefore cannot move away from `PENDING_SPILL`, nor reach it:
//! every change from or to that value takes the lock. So the word stays closed while the
//! table holds closes (the field is non-zero), `reopen` refuses (it needs a zero field), and
//! the last give-back is the one that reopens. Nothing else changes: a spilled close is as
//! closed as any other, and no operation waits for the lock but one that adds or gives back a
//! close at the limit, or steps the field up to it.
//!
//! # The type
//!
//! [`Word`] keeps its atomic private: every write to the word is one of its named transitions,
//! and the counters reach the word only through them. A close of an open word hands its
//! caller the close's [`Token`]s (units of the count field that stand for guards counted
//! elsewhere), and a token goes back only through [`Word::give_back`], so every unit given
//! back was added by a close (or by [`Word::add_token`]). The waits and the one answer to "is
//! this close over?" ([`Word::close_is_over`]) live here too.
use super::table;
use crate::platform::{self, AtomicU32, Ordering};
use std::time::Instant;

const WAITING: u32 = 1 << 0;
const COMMITTED: u32 = 1 << 1;
const DRAINED: u32 = 1 << 2;
const PENDING_SHIFT: u32 = 3;
const PENDING_ONE: u32 = 1 << PENDING_SHIFT;
const PENDING_MASK: u32 = 0b1111 << PENDING_SHIFT;
/// The pending field's largest value; beyond it, closes are counted in the side table (see
/// *Spilled closes* in the module docs). Two under loom and Miri, so that their scenarios reach
/// the spill with a few closes.
pub(crate) const PENDING_SPILL: u32 = if platform::MODEL {
    2
} else {
    PENDING_MASK >> PENDING_SHIFT
};
const TAKEN: u32 = 1 << 7;
const COUNT_SHIFT: u32 = 8;
/// One guard (or token) in the count field.
const ONE: u32 = 1 << COUNT_SHIFT;
const COUNT_MASK: u32 = !(ONE - 1);
/// The bits whose being set means "closed to new guards".
const CLOSED_MASK: u32 = COMMITTED | PENDING_MASK;
/// The most guards one drainable can have outstanding. The count field holds 2^24 - 1; the
/// 65,536 values above the limit absorb acquisitions that raced past the limit check and are
/// backing out (one per thread at most), so the count can never wrap into a false zero.
pub(crate) const MAX_GUARDS: u32 = (COUNT_MASK >> COUNT_SHIFT) - (1 << 16);
/// Word values at or above this one mean the count is at the limit.
const LIMIT_WORD: u32 = MAX_GUARDS << COUNT_SHIFT;

/// Number of guards (or tokens) recorded in a word value.
#[inline]
pub(crate) const fn count(word: u32) -> u32 {
    word >> COUNT_SHIFT
}

/// Number of live reversible closes recorded in a word value.
#[inline]
const fn pending(word: u32) -> u32 {
    (word & PENDING_MASK) >> PENDING_SHIFT
}

/// Whether a word value refuses new guards.
#[inline]
pub(crate) const fn is_closed(word: u32) -> bool {
    word & CLOSED_MASK != 0
}

/// The lifecycle as a user sees it, decoded from one word value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Guards can be taken.
    Open,
    /// Closed by reversible drains only (`prepare_drain`, a timed drain in flight).
    Pending,
    /// Closed by an irreversible drain that has not yet seen the count reach zero.
    Closing,
    /// Closed and drained: no guard exists until `reopen`.
    Drained,
}

#[inline]
pub(crate) const fn phase(word: u32) -> Phase {
    if word & DRAINED != 0 {
        Phase::Drained
    } else if word & COMMITTED != 0 {
        Phase::Closing
    } else if word & PENDING_MASK != 0 {
        Phase::Pending
    } else {
        Phase::Open
    }
}

/// What a close adds, and what a waiter holds while it waits, which decides how it finishes.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The waiter set `COMMITTED` (a plain `drain`).
    Committed,
    /// The waiter holds one pending close (a `PendingDrain`); on success it trades it for
    /// `COMMITTED` (which closes nothing new: the word stays closed throughout), on timeout it
    /// keeps it.
    Pending,
}

/// Which open: the two transitions that can open a closed word.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Open {
    /// Drained → Open (`reopen`).
    Reopen,
    /// Gives back one pending close (`undo`, a `PendingDrain` dropped, a timed drain that
    /// failed); opens the word if it was the last close of any kind.
    Undo,
}

/// The outcome of an acquisition attempt that did not simply succeed.
///
/// `pub` only because the sealed counter trait names it; this module is private, so it is not
/// reachable from outside the crate.
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Closed,
    Overflow,
}

/// What a close did to the word.
#[must_use = "a close that began hands its tokens to the counter's close pass"]
pub(crate) enum Closing<const N: usize> {
    /// This call closed an open word, adding `N` tokens to its count field: the caller owns
    /// them and hands them to its counter, which gives each back once the guards it stands
    /// for are gone.
    Began([Token; N]),
    /// The word was closed already; this call joined that close.
    Joined,
}

/// One unit of the word's count field that stands for guards counted elsewhere (a per-CPU
/// counter's slots or thread-local entries), or for a grace period in flight: it keeps the
/// count above zero, and so the wait from completing, until it is given back.
///
/// Made only by this module: by a close that began ([`Closing::Began`]) or by
/// [`Word::add_token`]. Given back once, with [`Word::give_back`]. A counter that leaves a
/// token in the word past the call that made it (until the count it stands for reaches
/// zero, on whichever thread gets there) [`stash`](Self::stash)es it, and the thread its
/// protocol names later [`reclaim`](Self::reclaim)s it.
#[must_use = "a token that is not given back keeps the drain from ever completing"]
pub(crate) struct Token(());

impl Token {
    /// Leaves the token in the word, owned from now on by the counter's own state (a central
    /// count above zero, an `out` bit) rather than by a value.
    pub(crate) fn stash(self) {
        std::mem::forget(self);
    }

    /// The token that the counter's state says the caller now owns.
    ///
    /// # Safety
    /// The caller's counter state hands it a token [`stash`](Self::stash)ed for this word, and
    /// to no other caller: each stashed token is reclaimed once.
    pub(crate) unsafe fn reclaim() -> Token {
        Token(())
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Every token is given back or stashed, both of which forget it: a token dropped is
        // a count that never reaches zero.
        debug_assert!(
            std::thread::panicking(),
            "a token of the lifecycle word was dropped, not given back"
        );
    }
}

/// A timed wait that gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimedOut {
    /// The count field in the last value the wait read: guards, for a word that counts them;
    /// tokens, for one whose guards are counted elsewhere.
    pub(crate) count: u32,
}

/// The lifecycle word. Its atomic is private: every write is one of the transitions below.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub, missing_debug_implementations)]
#[repr(transparent)]
pub struct Word(AtomicU32);

impl Word {
    platform::const_fn! {
        /// A fresh, open word with no guards.
        pub(crate) const fn new() -> Self {
            Word(AtomicU32::new(0))
        }
    }

    /// A word as `drain` leaves it: closed, drained, no guards.
    pub(crate) fn new_drained() -> Self {
        Word(AtomicU32::new(COMMITTED | DRAINED))
    }

    /// The word's value, to decode with [`count`], [`is_closed`] and [`phase`]. A read: the
    /// caller names the ordering and its pair.
    #[inline]
    pub(crate) fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }

    /// Whether a waiter's `WAITING` flag is up (for the tests of cancelled waits).
    #[cfg(test)]
    pub(crate) fn is_waiting(&self) -> bool {
        self.0.load(Ordering::Relaxed) & WAITING != 0
    }

    /// The side table's key for the word.
    fn address(&self) -> usize {
        self as *const Word as usize
    }

    /// Takes one guard count in the word, or refuses because the word is closed.
    ///
    /// Lock-free, one RMW. The `Relaxed` pre-check keeps a closed word from being written at all
    /// by failing acquirers, which bounds the backing-out traffic a drainer can see to one
    /// increment per thread that read "open" before the close: that is what makes the drain
    /// starvation-free under a storm of acquirers.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<(), Refused> {
        // Relaxed: only a hint; the RMW below decides.
        if is_closed(self.0.load(Ordering::Relaxed)) {
            return Err(Refused::Closed);
        }
        // Acquire: pairs with the Release of `reopen`/`undo` (open → acquirer).
        let old = self.0.fetch_add(ONE, Ordering::Acquire);
        if is_closed(old) || old >= LIMIT_WORD {
            return Err(self.back_out(old));
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn back_out(&self, old: u32) -> Refused {
        // SAFETY: this thread added the count being removed, and `&self` keeps the word alive
        // for the whole call.
        unsafe { Self::decrement(self) };
        if is_closed(old) {
            Refused::Closed
        } else {
            Refused::Overflow
        }
    }

    /// Gives back one guard count taken with [`try_acquire`](Self::try_acquire), and wakes the
    /// drainers if it was the last one they wait for.
    ///
    /// # Safety
    /// `this` points to a live word on which the caller owns one guard count. After the call
    /// the word may already be freed (see [`decrement`](Self::decrement)).
    #[inline]
    pub(crate) unsafe fn release(this: *const Word) {
        // SAFETY: forwarded from the caller.
        unsafe { Self::decrement(this) }
    }

    /// Adds one token to the count field, outside any close: a grace period's, which its
    /// domain's fold gives back once the old phase is empty.
    pub(crate) fn add_token(&self) -> Token {
        // Relaxed: a token only keeps the count above zero; the read-modify-writes that hand
        // it on (the fold's, then the give-back's Release) carry the ordering.
        self.0.fetch_add(ONE, Ordering::Relaxed);
        Token(())
    }

    /// Gives a token back (waking the waiters if it was the last unit of the count field).
    pub(crate) fn give_back(&self, token: Token) {
        // SAFETY: `&self` keeps the word alive for the whole call.
        unsafe { Self::give_back_raw(self, token) }
    }

    /// As [`give_back`](Self::give_back), through a raw pointer, for release paths.
    ///
    /// # Safety
    /// `this` points to a live word. After the call it may already be freed (see
    /// [`decrement`](Self::decrement)).
    #[inline]
    pub(crate) unsafe fn give_back_raw(this: *const Word, token: Token) {
        token.stash();
        // SAFETY: forwarded from the caller; the token was one unit of the count field.
        unsafe { Self::decrement(this) }
    }

    /// Takes one unit off the count field and wakes the drainers if it was the last one they
    /// wait for.
    ///
    /// Takes a raw pointer so that no reference to the word (or to the object around it) is held
    /// across the decrement: the moment the count reaches zero a drainer may return and free the
    /// object, so the decrement is this function's last access to it. The wake afterwards uses
    /// the address only as a futex key.
    ///
    /// # Safety
    /// `this` points to a live lifecycle word on which the caller owns one unit of the count.
    #[inline]
    unsafe fn decrement(this: *const Word) {
        // `repr(transparent)`: the word's address is its atomic's.
        let word: *const AtomicU32 = this.cast();
        // Release: publishes everything done under the guard to the drainer (release → drainer).
        // SAFETY: the caller's count keeps the word alive until this decrement lands.
        let prev = unsafe { (*word).fetch_sub(ONE, Ordering::Release) };
        if prev & (COUNT_MASK | WAITING) == ONE | WAITING {
            wake(word);
        }
    }

    /// Closes the word for `hold`: sets `COMMITTED` (irreversible) or adds one pending close
    /// (reversible). A close that closes an open word also adds `N` tokens to the count
    /// field in the same RMW, and returns them ([`Closing::Began`]): the caller's counter
    /// gives them back once the guards it counts outside the word are gone.
    ///
    /// A pending close never waits but for the side table's lock, and that only at the
    /// limit: with `PENDING_SPILL - 1` or more closes live.
    pub(crate) fn close<const N: usize>(&self, hold: Hold) -> Closing<N> {
        let tokens = N as u32 * ONE;
        let began = match hold {
            Hold::Committed => self.close_committed(tokens),
            Hold::Pending => self.add_pending(tokens),
        };
        if began {
            Closing::Began(std::array::from_fn(|_| Token(())))
        } else {
            Closing::Joined
        }
    }

    /// Sets `COMMITTED`; adds `tokens` if this closed an open word, and returns whether it did.
    fn close_committed(&self, tokens: u32) -> bool {
        if tokens == 0 {
            // Acquire: if the count is already zero, this RMW is the drainer's read of it
            // (release → drainer).
            return !is_closed(self.0.fetch_or(COMMITTED, Ordering::Acquire));
        }
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let closing = !is_closed(cur);
            let new = (cur | COMMITTED) + if closing { tokens } else { 0 };
            // Acquire: as above.
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return closing,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Adds one reversible close; adds `tokens` if this closed an open word, and returns
    /// whether it did.
    fn add_pending(&self, tokens: u32) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if pending(cur) == PENDING_SPILL {
                let mut side = table::lock(self.address());
                // Relaxed: under the table lock the field cannot leave PENDING_SPILL (module
                // docs), and the word is already closed, so there is nothing to synchronise with.
                cur = self.0.load(Ordering::Relaxed);
                if pending(cur) == PENDING_SPILL {
                    side.entry().spilled_closes += 1;
                    return false;
                }
                continue;
            }
            // The field is about to reach the limit: that step is taken under the table's lock.
            // Then (the field below the limit, under the lock) the table can hold no live close
            // of this word: a spilled close needs the field at the limit, which nobody else can
            // reach while we hold the lock. So an entry found for this address is stale: it
            // belonged to an earlier drainable here (or to this one before a move) whose spilled
            // closes were leaked with `mem::forget` on their `PendingDrain`s. It goes first.
            let _side = if pending(cur) == PENDING_SPILL - 1 {
                let mut side = table::lock(self.address());
                // Relaxed: as above; the value decides only whether the step is still ours.
                cur = self.0.load(Ordering::Relaxed);
                if pending(cur) != PENDING_SPILL - 1 {
                    continue;
                }
                side.clear();
                Some(side)
            } else {
                None
            };
            let closing = !is_closed(cur);
            let new = cur + PENDING_ONE + if closing { tokens } else { 0 };
            // Acquire: as in `close_committed`.
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return closing,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Opens the word: [`Open::Reopen`] (Drained → Open) or [`Open::Undo`] (one pending close
    /// given back). Returns `true` if this opened the word: the caller's counter then runs its
    /// open pass.
    #[must_use = "an open that opened the word hands over to the counter's open pass"]
    pub(crate) fn open(&self, how: Open) -> bool {
        match how {
            Open::Reopen => self.reopen(),
            Open::Undo => self.undo_pending(),
        }
    }

    /// Removes one reversible close; reopens if it was the last close of any kind.
    /// Returns `true` if this reopened the word.
    fn undo_pending(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            debug_assert!(pending(cur) > 0, "undo without a pending close");
            let _side = if pending(cur) == PENDING_SPILL {
                let mut side = table::lock(self.address());
                // Relaxed: as in `add_pending`.
                cur = self.0.load(Ordering::Relaxed);
                if pending(cur) != PENDING_SPILL {
                    continue;
                }
                if let Some(entry) = side.get() {
                    // A spilled close goes first: the field stays at the limit, the word closed.
                    entry.spilled_closes -= 1;
                    return false;
                }
                // The table holds none: give back one of the field's, still under the lock.
                Some(side)
            } else {
                None
            };
            // Release: opens the word to new guards (open → acquirer).
            match self.0.compare_exchange_weak(
                cur,
                cur - PENDING_ONE,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return !is_closed(cur - PENDING_ONE),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Drained → Open. Refuses (returns `false`) in every other phase and while a `PendingDrain`
    /// is still live (its owner expects the word to stay closed).
    fn reopen(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur & DRAINED == 0 || pending(cur) != 0 || cur & TAKEN != 0 {
                return false;
            }
            // The count may be non-zero for an instant (acquirers backing out); it is kept, and
            // their decrements land on the open word, where they belong.
            let new = cur & !(COMMITTED | DRAINED | WAITING);
            // Release: opens the word to new guards (open → acquirer).
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Marks the value of a drained word as taken (see `TAKEN` in the module docs). Returns
    /// `true` if this call took it; `false` if the word is not drained, or the value was
    /// taken already. One RMW; the caller then moves the value out, exclusively: no guard can
    /// exist or be taken again.
    pub(crate) fn take(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur & DRAINED == 0 || cur & TAKEN != 0 {
                return false;
            }
            // Acquire: release → drainer, once more (the caller's drain already synchronised
            // with every release; this keeps the take's own read of the word in that order).
            match self.0.compare_exchange_weak(
                cur,
                cur | TAKEN,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Whether the value was taken ([`take`](Self::take)). For the drainable's `Drop`,
    /// `into_inner` and `get_mut`, which hold it exclusively.
    #[inline]
    pub(crate) fn is_taken(&self) -> bool {
        // Relaxed: the callers own the drainable exclusively (`&mut` or by value), which
        // orders them after the take, or (`drain_and_take` after a failed take) only ask
        // whether another take won, which its RMW on this word decided.
        self.0.load(Ordering::Relaxed) & TAKEN != 0
    }

    /// Whether the close a waiter holds (`hold`, made or joined by it) is over, from an
    /// `Acquire` read of the word: see [`is_over`]. The per-CPU counter's wait for its
    /// thread-local entries asks it; [`wait_drained`](Self::wait_drained) asks the same
    /// question of every value it reads.
    #[inline]
    pub(crate) fn close_is_over(&self, hold: Hold, is_current: impl Fn() -> bool) -> bool {
        // Acquire: a drain finished by another waiter, or a reopen, is seen with what led to it
        // (release → drainer, through the finishing CAS; the reopen's Release).
        is_over(self.0.load(Ordering::Acquire), hold, is_current)
    }

    /// Blocks until the word is drained, or until `deadline`.
    ///
    /// The word must be closed by the caller's `hold`; `is_current` says whether that close is
    /// still the one in effect (see [`is_over`]). Spins [`platform::SPIN_LIMIT`] times, then
    /// sets `WAITING` and sleeps on the futex until the release that takes the count to zero
    /// wakes it. On success the word is `COMMITTED | DRAINED` and a `Hold::Pending` has been
    /// given back, or, for a `Hold::Committed`, the close has ended since. On timeout the hold
    /// is still in place.
    #[cfg(test)]
    pub(crate) fn wait_drained(
        &self,
        hold: Hold,
        deadline: Option<Instant>,
        is_current: impl Fn() -> bool,
    ) -> Result<(), TimedOut> {
        let Ok(done) = self.wait_drained_with(hold, deadline, is_current, &mut platform::Block);
        done
    }

    /// [`wait_drained`](Self::wait_drained), sleeping as `park` does: for a task, `Err` where
    /// the thread would sleep (the task's waker is filed under the word, with `WAITING` set;
    /// poll again after the wake). Each call starts from a fresh read of the word, so a wait
    /// that returned `Err` simply calls again; one that is abandoned calls
    /// [`stop_waiting`](Self::stop_waiting).
    pub(crate) fn wait_drained_with<P: platform::Park>(
        &self,
        hold: Hold,
        deadline: Option<Instant>,
        is_current: impl Fn() -> bool,
        park: &mut P,
    ) -> Result<Result<(), TimedOut>, P::Pending> {
        let mut spins = P::SPINS;
        let mut timed_out = false;
        // Acquire: release → drainer.
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let over = is_over(cur, hold, &is_current);
            if over && hold == Hold::Committed {
                return Ok(Ok(()));
            }
            // A pending hold whose close is over (`DRAINED`) still trades its close in.
            if over || count(cur) == 0 {
                let mut new = cur | COMMITTED | DRAINED;
                if count(cur) == 0 {
                    // Nobody is left to wake anybody; later backing-out acquirers need not wake.
                    new &= !WAITING;
                }
                if hold == Hold::Pending {
                    if pending(cur) == PENDING_SPILL {
                        if self.commit_at_spill() {
                            return Ok(Ok(()));
                        }
                        // The field moved, or the count is not zero after all: look again.
                        // Acquire: release → drainer.
                        cur = self.0.load(Ordering::Acquire);
                        continue;
                    }
                    new -= PENDING_ONE;
                }
                // AcqRel: Acquire for release → drainer; Release so a drainer that reads DRAINED
                // from this value also synchronises with the releases this one saw.
                match self
                    .0
                    .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Ok(Ok(())),
                    Err(actual) => {
                        cur = actual;
                        continue;
                    }
                }
            }
            if timed_out {
                self.stop_waiting();
                return Ok(Err(TimedOut { count: count(cur) }));
            }
            (cur, timed_out) = self.wait_for_change(cur, &mut spins, deadline, park)?;
        }
    }

    /// The finishing CAS of a pending hold (see `wait_drained`) on a word whose pending field is
    /// at [`PENDING_SPILL`]: under the side table's lock, it gives back a spilled close if the
    /// table holds one, else one of the field's. Returns `false`, changing nothing, if the field
    /// has left the limit or the word is not drained after all.
    #[cold]
    fn commit_at_spill(&self) -> bool {
        let mut side = table::lock(self.address());
        loop {
            // Acquire: release → drainer, as in `wait_drained`.
            let cur = self.0.load(Ordering::Acquire);
            if pending(cur) != PENDING_SPILL || (cur & DRAINED == 0 && count(cur) != 0) {
                return false;
            }
            let spilled = side.get().is_some();
            let mut new = cur | COMMITTED | DRAINED;
            if count(cur) == 0 {
                new &= !WAITING;
            }
            if !spilled {
                new -= PENDING_ONE;
            }
            // AcqRel: as in `wait_drained`.
            if self
                .0
                .compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(entry) = side.get().filter(|_| spilled) {
                    entry.spilled_closes -= 1;
                }
                return true;
            }
        }
    }

    /// Blocks until the count field is zero (every token given back), or until `deadline`.
    /// Returns `true` once zero. Used by grace periods, whose word holds only tokens.
    ///
    /// Spins [`platform::SPIN_LIMIT`] times, then sets `WAITING` and sleeps on the futex; the give-back
    /// that takes the count to zero wakes it (see [`decrement`](Self::decrement)).
    pub(crate) fn wait_zero(&self, deadline: Option<Instant>) -> bool {
        let Ok(zero) = self.wait_zero_with(deadline, &mut platform::Block);
        zero
    }

    /// [`wait_zero`](Self::wait_zero), sleeping as `park` does (see
    /// [`wait_drained_with`](Self::wait_drained_with)).
    pub(crate) fn wait_zero_with<P: platform::Park>(
        &self,
        deadline: Option<Instant>,
        park: &mut P,
    ) -> Result<bool, P::Pending> {
        let mut spins = P::SPINS;
        let mut timed_out = false;
        // Acquire: pairs with the token release (release → waiter).
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if count(cur) == 0 {
                if cur & WAITING != 0 {
                    // Nobody sleeps on a value whose count is zero (a sleeper's value has its
                    // count above zero), so the flag can go: left set, every later give-back
                    // that reaches zero would pay a futex wake. A failed CAS means the word
                    // moved on (a new token): the flag then stays for that grace period.
                    // Relaxed: only the flag changes.
                    let _ = self.0.compare_exchange(
                        cur,
                        cur & !WAITING,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Ok(true);
            }
            if timed_out {
                self.stop_waiting();
                return Ok(false);
            }
            (cur, timed_out) = self.wait_for_change(cur, &mut spins, deadline, park)?;
        }
    }

    /// A waiter that gives up (its deadline passed) takes `WAITING` down with it. Left set, it
    /// would make every later release that reaches zero pay a futex wake system call, for as long
    /// as the word lives (a timed-out `drain_timeout` reopens the word with the flag still up).
    ///
    /// Other waiters may be asleep on a value with `WAITING` set and rely on the flag for their
    /// wake-up, so clearing it wakes them all: each re-reads the word and sets the flag again
    /// before it sleeps again. A cold path: only timed waits that fail get here.
    pub(crate) fn stop_waiting(&self) {
        // Relaxed: only the flag changes; the sleepers woken below re-read the word themselves.
        let prev = self.0.fetch_and(!WAITING, Ordering::Relaxed);
        if prev & WAITING != 0 {
            platform::wake_all(&self.0);
        }
    }

    /// One step of waiting for the word to change from `cur`: a spin while `spins` lasts, else
    /// announce `WAITING` and sleep on the futex. Returns the word's new value (`Acquire`:
    /// release → waiter) and whether `deadline` has passed.
    fn wait_for_change<P: platform::Park>(
        &self,
        mut cur: u32,
        spins: &mut u32,
        deadline: Option<Instant>,
        park: &mut P,
    ) -> Result<(u32, bool), P::Pending> {
        let word = &self.0;
        if *spins > 0 {
            *spins -= 1;
            platform::spin_hint();
            return Ok((word.load(Ordering::Acquire), false));
        }
        if cur & WAITING == 0 {
            match word.compare_exchange_weak(
                cur,
                cur | WAITING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => cur |= WAITING,
                Err(actual) => return Ok((actual, false)),
            }
        }
        // Sleeps only while the word still holds exactly `cur`: a release that lands between our
        // read and the sleep changes the value and the kernel refuses to sleep (a task's waker
        // is filed before the value is checked: `platform/futex/tasks.rs`).
        let timed_out = park.park(word, cur, deadline)?;
        Ok((word.load(Ordering::Acquire), timed_out))
    }
}

#[cold]
#[inline(never)]
fn wake(word: *const AtomicU32) {
    platform::wake_all(word);
}

/// Whether a waiter's close is over, given a word value read (`Acquire`) after that close: the
/// one answer of both waits ([`Word::wait_drained`], and the per-CPU counter's wait for its
/// thread-local entries through [`Word::close_is_over`]).
///
/// - A pending hold's close cannot end while its waiter lives (the pending close keeps the
///   word closed, and `reopen` refuses). It is over once `DRAINED` says another waiter saw the
///   count at zero; the waiter still trades its pending close in (`wait_drained`).
/// - A committed hold's close is over when drained, or ended by a `reopen` since. Its close set
///   `COMMITTED`, which only `reopen` clears, and a reopen needs `DRAINED`, set after that
///   close: so a word without `COMMITTED` (open, or closed again by reversible closes only)
///   says the waiter's close drained. The word cannot tell a later irreversible close from the
///   waiter's own; `is_current` can, where the counter numbers its closes (`PerCpu`; for
///   `Shared` it always says yes, and the waiter then also waits for the guards of such a
///   later close: docs/design.md §2a).
///
/// Whatever ended the close, the `Acquire` read that shows it comes after, in the word's
/// modification order, every guard release of that close (all later writes are RMWs, which
/// continue their release sequences), so everything done under those guards happens-before
/// the waiter returns.
#[inline]
fn is_over(word: u32, hold: Hold, is_current: impl Fn() -> bool) -> bool {
    match hold {
        Hold::Committed => word & DRAINED != 0 || word & COMMITTED == 0 || !is_current(),
        Hold::Pending => word & DRAINED != 0,
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;

    /// The word's value (Relaxed: these tests run on one thread).
    fn value(w: &Word) -> u32 {
        w.load(Ordering::Relaxed)
    }

    /// A close that adds no token (guards counted in the word, as for `Shared`).
    fn close(w: &Word, hold: Hold) {
        let (Closing::Began([]) | Closing::Joined) = w.close::<0>(hold);
    }

    #[test]
    fn layout_constants_do_not_overlap() {
        let flags = [WAITING, COMMITTED, DRAINED, TAKEN];
        for (i, a) in flags.iter().enumerate() {
            for b in &flags[i + 1..] {
                assert_eq!(a & b, 0);
            }
            assert_eq!(a & PENDING_MASK, 0);
            assert_eq!(a & COUNT_MASK, 0);
        }
        assert_eq!(PENDING_MASK & COUNT_MASK, 0);
        assert_eq!(
            WAITING | COMMITTED | DRAINED | PENDING_MASK | TAKEN | COUNT_MASK,
            u32::MAX
        );
        assert_eq!(PENDING_MASK >> PENDING_SHIFT, 15);
        assert_eq!(count(ONE * 5 + COMMITTED), 5);
    }

    #[test]
    fn phase_decoding() {
        assert_eq!(phase(0), Phase::Open);
        assert_eq!(phase(ONE * 3), Phase::Open);
        assert_eq!(phase(PENDING_ONE), Phase::Pending);
        assert_eq!(phase(COMMITTED | ONE), Phase::Closing);
        assert_eq!(phase(COMMITTED | DRAINED | PENDING_ONE), Phase::Drained);
    }

    #[test]
    fn acquire_release_and_close() {
        let w = Word::new();
        assert_eq!(w.try_acquire(), Ok(()));
        assert_eq!(count(value(&w)), 1);
        close(&w, Hold::Committed);
        assert_eq!(w.try_acquire(), Err(Refused::Closed));
        // SAFETY: the count taken above.
        unsafe { Word::release(&w) };
        assert_eq!(w.wait_drained(Hold::Committed, None, || true), Ok(()));
        assert_eq!(phase(value(&w)), Phase::Drained);
        assert!(w.open(Open::Reopen));
        assert_eq!(value(&w), 0);
    }

    /// Only the close that closes an open word adds tokens; each one holds the wait up until it
    /// is given back.
    #[test]
    fn a_close_that_began_hands_out_its_tokens() {
        let w = Word::new();
        let Closing::Began([a, b]) = w.close::<2>(Hold::Pending) else {
            panic!("the first close of an open word began it");
        };
        assert!(matches!(w.close::<2>(Hold::Committed), Closing::Joined));
        assert_eq!(count(value(&w)), 2);
        w.give_back(a);
        let r = w.wait_drained(Hold::Pending, Some(Instant::now()), || true);
        assert_eq!(r, Err(TimedOut { count: 1 }));
        // SAFETY: `&w` is live.
        unsafe { Word::give_back_raw(&w, b) };
        assert_eq!(w.wait_drained(Hold::Pending, None, || true), Ok(()));
        let cur = value(&w);
        assert_eq!(
            (count(cur), pending(cur), phase(cur)),
            (0, 0, Phase::Drained)
        );
        let token = w.add_token();
        assert!(!w.wait_zero(Some(Instant::now())));
        w.give_back(token);
        assert!(w.wait_zero(None));
    }

    #[test]
    fn a_racing_acquirer_backs_out_without_leaving_a_count() {
        let w = Word::new();
        // Simulate the race: the pre-check read "open", then a close landed.
        w.0.fetch_or(COMMITTED, Ordering::Relaxed);
        let old = w.0.fetch_add(ONE, Ordering::Acquire);
        assert_eq!(w.back_out(old), Refused::Closed);
        assert_eq!(count(value(&w)), 0);
    }

    #[test]
    fn overflow_is_refused_and_never_wraps() {
        let w = Word(AtomicU32::new(LIMIT_WORD - ONE));
        assert_eq!(w.try_acquire(), Ok(()));
        assert_eq!(w.try_acquire(), Err(Refused::Overflow));
        assert_eq!(count(value(&w)), MAX_GUARDS);
    }

    #[test]
    fn timed_wait_reports_outstanding_and_keeps_the_hold() {
        let w = Word::new();
        w.try_acquire().unwrap();
        w.try_acquire().unwrap();
        close(&w, Hold::Pending);
        let r = w.wait_drained(Hold::Pending, Some(Instant::now()), || true);
        assert_eq!(r, Err(TimedOut { count: 2 }));
        assert_eq!(pending(value(&w)), 1);
        assert!(w.open(Open::Undo));
    }

    #[test]
    fn pending_holds_stack_and_the_last_undo_reopens() {
        let w = Word::new();
        close(&w, Hold::Pending);
        close(&w, Hold::Pending);
        assert!(!w.open(Open::Undo));
        assert!(is_closed(value(&w)));
        assert!(w.open(Open::Undo));
        assert!(!is_closed(value(&w)));
    }

    /// Closes beyond the pending field's limit spill into the side table and come back out
    /// in any order; only the last give-back reopens, and a commit at the limit works too.
    #[test]
    fn pending_holds_beyond_the_field_spill_into_the_table() {
        let w = Word::new();
        let n = PENDING_SPILL + 40;
        for _ in 0..n {
            close(&w, Hold::Pending);
        }
        assert_eq!(pending(value(&w)), PENDING_SPILL);
        assert_eq!(
            table::lock(w.address()).get().map(|s| s.spilled_closes),
            Some(u64::from(n - PENDING_SPILL))
        );
        for _ in 0..n - 1 {
            assert!(!w.open(Open::Undo), "reopened with closes still live");
            assert!(is_closed(value(&w)));
        }
        assert!(table::lock(w.address()).get().is_none());
        assert!(w.open(Open::Undo), "the last undo must reopen");
        assert_eq!(value(&w), 0);

        for _ in 0..n {
            close(&w, Hold::Pending);
        }
        for _ in 0..n {
            assert_eq!(w.wait_drained(Hold::Pending, None, || true), Ok(()));
        }
        let cur = value(&w);
        assert_eq!((pending(cur), phase(cur)), (0, Phase::Drained));
        assert!(table::lock(w.address()).get().is_none());
        assert!(w.open(Open::Reopen));
    }

    #[test]
    fn undo_does_not_reopen_a_committed_word() {
        let w = Word::new();
        close(&w, Hold::Pending);
        close(&w, Hold::Committed);
        assert!(!w.open(Open::Undo));
        assert!(is_closed(value(&w)));
    }

    /// The value of a drained word is taken once; a taken word never reopens, while
    /// back-outs and pending closes still come and go on it.
    #[test]
    fn a_drained_value_is_taken_once_and_the_word_stays_closed() {
        let w = Word::new();
        assert!(!w.take(), "took the value of an open word");
        w.try_acquire().unwrap();
        close(&w, Hold::Committed);
        assert!(!w.take(), "took the value of a word still draining");
        // SAFETY: the count taken above.
        unsafe { Word::release(&w) };
        assert_eq!(w.wait_drained(Hold::Committed, None, || true), Ok(()));
        assert!(w.take());
        assert!(w.is_taken() && !w.take(), "taken twice");
        assert!(!w.open(Open::Reopen), "a taken word reopened");
        assert_eq!(w.try_acquire(), Err(Refused::Closed));
        assert_eq!(count(value(&w)), 0);
        close(&w, Hold::Pending);
        assert_eq!(w.wait_drained(Hold::Pending, None, || true), Ok(()));
        assert!(!w.open(Open::Reopen) && w.is_taken());
        assert_eq!(phase(value(&w)), Phase::Drained);
    }

    #[test]
    fn reopen_refuses_while_guards_or_pending_drains_remain() {
        let w = Word::new();
        w.try_acquire().unwrap();
        close(&w, Hold::Committed);
        assert!(!w.open(Open::Reopen), "closing, a guard remains");
        // SAFETY: the count taken above.
        unsafe { Word::release(&w) };
        close(&w, Hold::Pending);
        w.wait_drained(Hold::Committed, None, || true).unwrap();
        assert!(!w.open(Open::Reopen), "a PendingDrain is still live");
        assert!(!w.open(Open::Undo));
        assert!(w.open(Open::Reopen));
    }
}
