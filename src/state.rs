//! The lifecycle word: the guard count and every lifecycle flag in one `u32`, so that each
//! transition is a single atomic read-modify-write and every transition is totally ordered
//! with every acquisition and release (no Dekker handshake, no second word to keep in step).
//! It is also the futex word the drainers sleep on.
//!
//! # Layout
//!
//! ```text
//!  31                     7 6      3   2         1           0
//! +------------------------+--------+---------+-----------+---------+
//! |      guard count       | pending| DRAINED | COMMITTED | WAITING |
//! +------------------------+--------+---------+-----------+---------+
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
use crate::platform::{self as sync, AtomicU32, Ordering};
use crate::table;
use std::time::Instant;

pub(crate) const WAITING: u32 = 1 << 0;
pub(crate) const COMMITTED: u32 = 1 << 1;
pub(crate) const DRAINED: u32 = 1 << 2;
const PENDING_SHIFT: u32 = 3;
pub(crate) const PENDING_ONE: u32 = 1 << PENDING_SHIFT;
const PENDING_MASK: u32 = 0b1111 << PENDING_SHIFT;
/// The pending field's largest value; beyond it, closes are counted in the side table (see
/// *Spilled closes* in the module docs). Two under loom and Miri, so that their scenarios reach
/// the spill with a few closes.
#[cfg(not(any(miri, drainable_loom)))]
pub(crate) const PENDING_SPILL: u32 = PENDING_MASK >> PENDING_SHIFT;
#[cfg(any(miri, drainable_loom))]
pub(crate) const PENDING_SPILL: u32 = 2;
const COUNT_SHIFT: u32 = 7;
/// One guard in the count field.
pub(crate) const ONE: u32 = 1 << COUNT_SHIFT;
const COUNT_MASK: u32 = !(ONE - 1);
/// The bits whose being set means "closed to new guards".
pub(crate) const CLOSED_MASK: u32 = COMMITTED | PENDING_MASK;
/// The most guards one drainable can have outstanding. The count field holds 2^25 - 1; the
/// 65,536 values above the limit absorb acquisitions that raced past the limit check and are
/// backing out (one per thread at most), so the count can never wrap into a false zero.
pub(crate) const MAX_GUARDS: u32 = (COUNT_MASK >> COUNT_SHIFT) - (1 << 16);
/// Word values at or above this one mean the count is at the limit.
const LIMIT_WORD: u32 = MAX_GUARDS << COUNT_SHIFT;

/// Number of guards recorded in a word value.
#[inline]
pub(crate) const fn count(word: u32) -> u32 {
    word >> COUNT_SHIFT
}

/// Number of live reversible closes recorded in a word value.
#[inline]
pub(crate) const fn pending(word: u32) -> u32 {
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

/// What a waiter holds while it waits, which decides how it finishes.
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

sync::const_fn! {
    /// A fresh, open word with no guards.
    pub(crate) const fn new_word() -> AtomicU32 {
        AtomicU32::new(0)
    }
}

/// A word as `drain` leaves it: closed, drained, no guards.
pub(crate) fn new_drained_word() -> AtomicU32 {
    AtomicU32::new(COMMITTED | DRAINED)
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

/// Takes one guard count, or refuses because the word is closed.
///
/// Lock-free, one RMW. The `Relaxed` pre-check keeps a closed word from being written at all
/// by failing acquirers, which bounds the backing-out traffic a drainer can see to one
/// increment per thread that read "open" before the close: that is what makes the drain
/// starvation-free under a storm of acquirers.
#[inline]
pub(crate) fn try_acquire(word: &AtomicU32) -> Result<(), Refused> {
    // Relaxed: only a hint; the RMW below decides.
    if is_closed(word.load(Ordering::Relaxed)) {
        return Err(Refused::Closed);
    }
    // Acquire: pairs with the Release of `reopen`/`undo` (open → acquirer).
    let old = word.fetch_add(ONE, Ordering::Acquire);
    if is_closed(old) || old >= LIMIT_WORD {
        return Err(back_out(word, old));
    }
    Ok(())
}

#[cold]
#[inline(never)]
fn back_out(word: &AtomicU32, old: u32) -> Refused {
    // SAFETY: this thread added the count being removed, and the `&AtomicU32` keeps the word
    // alive for the whole call.
    unsafe { release(word) };
    if is_closed(old) {
        Refused::Closed
    } else {
        Refused::Overflow
    }
}

/// Gives back one guard count and wakes the drainers if it was the last one they wait for.
///
/// Takes a raw pointer so that no reference to the word (or to the object around it) is held
/// across the decrement: the moment the count reaches zero a drainer may return and free the
/// object, so the decrement is this function's last access to it. The wake afterwards uses
/// the address only as a futex key.
///
/// # Safety
/// `word` points to a live lifecycle word on which the caller owns one guard count.
#[inline]
pub(crate) unsafe fn release(word: *const AtomicU32) {
    // Release: publishes everything done under the guard to the drainer (release → drainer).
    // SAFETY: the caller's guard count keeps the word alive until this decrement lands.
    let prev = unsafe { (*word).fetch_sub(ONE, Ordering::Release) };
    if prev & (COUNT_MASK | WAITING) == ONE | WAITING {
        wake(word);
    }
}

#[cold]
#[inline(never)]
fn wake(word: *const AtomicU32) {
    sync::wake_all(word);
}

/// Closes irreversibly (sets `COMMITTED`). If this closed an open word, also adds `token` to the
/// count field (see `Counter::CLOSE_TOKEN`) and returns `true`: the caller must then run the
/// counter's close pass.
pub(crate) fn close_committed(word: &AtomicU32, token: u32) -> bool {
    if token == 0 {
        // Acquire: if the count is already zero, this RMW is the drainer's read of it
        // (release → drainer).
        return !is_closed(word.fetch_or(COMMITTED, Ordering::Acquire));
    }
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        let closing = !is_closed(cur);
        let new = (cur | COMMITTED) + if closing { token } else { 0 };
        // Acquire: as above.
        match word.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return closing,
            Err(actual) => cur = actual,
        }
    }
}

/// Adds one reversible close. If this closed an open word, also adds `token` to the count field
/// and returns `true` (the caller runs the counter's close pass). Never waits but for the side
/// table's lock, and that only at the limit: with `PENDING_SPILL - 1` or more closes live.
pub(crate) fn add_pending(word: &AtomicU32, token: u32) -> bool {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        if pending(cur) == PENDING_SPILL {
            let mut side = table::lock(address(word));
            // Relaxed: under the table lock the field cannot leave PENDING_SPILL (module
            // docs), and the word is already closed, so there is nothing to synchronise with.
            cur = word.load(Ordering::Relaxed);
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
            let mut side = table::lock(address(word));
            // Relaxed: as above; the value decides only whether the step is still ours.
            cur = word.load(Ordering::Relaxed);
            if pending(cur) != PENDING_SPILL - 1 {
                continue;
            }
            side.clear();
            Some(side)
        } else {
            None
        };
        let closing = !is_closed(cur);
        let new = cur + PENDING_ONE + if closing { token } else { 0 };
        // Acquire: as in `close_committed`.
        match word.compare_exchange_weak(cur, new, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return closing,
            Err(actual) => cur = actual,
        }
    }
}

/// Removes one reversible close; reopens if it was the last close of any kind.
/// Returns `true` if this reopened the word.
pub(crate) fn undo_pending(word: &AtomicU32) -> bool {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        debug_assert!(pending(cur) > 0, "undo without a pending close");
        let _side = if pending(cur) == PENDING_SPILL {
            let mut side = table::lock(address(word));
            // Relaxed: as in `add_pending`.
            cur = word.load(Ordering::Relaxed);
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
        match word.compare_exchange_weak(
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

/// The side table's key for a word.
fn address(word: &AtomicU32) -> usize {
    word as *const AtomicU32 as usize
}

/// Drained → Open. Refuses (returns `false`) in every other phase and while a `PendingDrain`
/// is still live (its owner expects the word to stay closed).
pub(crate) fn reopen(word: &AtomicU32) -> bool {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        if cur & DRAINED == 0 || pending(cur) != 0 {
            return false;
        }
        // The count may be non-zero for an instant (acquirers backing out); it is kept, and
        // their decrements land on the open word, where they belong.
        let new = cur & !(COMMITTED | DRAINED | WAITING);
        // Release: opens the word to new guards (open → acquirer).
        match word.compare_exchange_weak(cur, new, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

/// Blocks until the word is drained, or until `deadline`.
///
/// The word must be closed by the caller's `hold`. Spins [`sync::SPIN_LIMIT`] times, then sets
/// `WAITING` and sleeps on the futex until the release that takes the count to zero wakes it.
/// On success the word is `COMMITTED | DRAINED` and a `Hold::Pending` has been given back. On
/// timeout returns `Err(outstanding)` and the hold is still in place.
pub(crate) fn wait_drained(
    word: &AtomicU32,
    hold: Hold,
    deadline: Option<Instant>,
    is_current: impl Fn() -> bool,
) -> Result<(), u32> {
    let mut spins = sync::SPIN_LIMIT;
    let mut timed_out = false;
    // Acquire: release → drainer.
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if hold == Hold::Committed && committed_close_is_over(cur, &is_current) {
            return Ok(());
        }
        if cur & DRAINED != 0 || count(cur) == 0 {
            let mut new = cur | COMMITTED | DRAINED;
            if count(cur) == 0 {
                // Nobody is left to wake anybody; later backing-out acquirers need not wake.
                new &= !WAITING;
            }
            if hold == Hold::Pending {
                if pending(cur) == PENDING_SPILL {
                    if commit_at_spill(word) {
                        return Ok(());
                    }
                    // The field moved, or the count is not zero after all: look again.
                    // Acquire: release → drainer.
                    cur = word.load(Ordering::Acquire);
                    continue;
                }
                new -= PENDING_ONE;
            }
            // AcqRel: Acquire for release → drainer; Release so a drainer that reads DRAINED
            // from this value also synchronises with the releases this one saw.
            match word.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => {
                    cur = actual;
                    continue;
                }
            }
        }
        if timed_out {
            stop_waiting(word);
            return Err(count(cur));
        }
        (cur, timed_out) = wait_for_change(word, cur, &mut spins, deadline);
    }
}

/// Whether a committed waiter's close is over, given a word value read (`Acquire`) after its
/// close: drained, or ended by a `reopen` since. Its close set `COMMITTED`, which only `reopen`
/// clears, and a reopen needs `DRAINED`, set after that close: so a word without `COMMITTED`
/// (open, or closed again by reversible closes only) says the waiter's close drained. The word
/// cannot tell a later irreversible close from the waiter's own; `is_current` can, where the
/// counter numbers its closes (`PerCpu`; for `Shared` it always says yes, and the waiter then
/// also waits for the guards of such a later close: docs/design.md §2a).
///
/// Whatever ended the close, the `Acquire` read that shows it comes after, in the word's
/// modification order, every guard release of that close (all later writes are RMWs, which
/// continue their release sequences), so everything done under those guards happens-before
/// the waiter returns.
#[inline]
pub(crate) fn committed_close_is_over(word: u32, is_current: impl Fn() -> bool) -> bool {
    word & DRAINED != 0 || word & COMMITTED == 0 || !is_current()
}

/// The finishing CAS of a pending hold (see `wait_drained`) on a word whose pending field is at
/// [`PENDING_SPILL`]: under the side table's lock, it gives back a spilled close if the table
/// holds one, else one of the field's. Returns `false`, changing nothing, if the field has
/// left the limit or the word is not drained after all.
#[cold]
fn commit_at_spill(word: &AtomicU32) -> bool {
    let mut side = table::lock(address(word));
    loop {
        // Acquire: release → drainer, as in `wait_drained`.
        let cur = word.load(Ordering::Acquire);
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
        if word
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

/// A waiter that gives up (its deadline passed) takes `WAITING` down with it. Left set, it
/// would make every later release that reaches zero pay a futex wake system call, for as long
/// as the word lives (a timed-out `drain_timeout` reopens the word with the flag still up).
///
/// Other waiters may be asleep on a value with `WAITING` set and rely on the flag for their
/// wake-up, so clearing it wakes them all: each re-reads the word and sets the flag again
/// before it sleeps again. A cold path: only timed waits that fail get here.
fn stop_waiting(word: &AtomicU32) {
    // Relaxed: only the flag changes; the sleepers woken below re-read the word themselves.
    let prev = word.fetch_and(!WAITING, Ordering::Relaxed);
    if prev & WAITING != 0 {
        sync::wake_all(word);
    }
}

/// One step of waiting for `word` to change from `cur`: a spin while `spins` lasts, else
/// announce `WAITING` and sleep on the futex. Returns the word's new value (`Acquire`: release →
/// waiter) and whether `deadline` has passed.
fn wait_for_change(
    word: &AtomicU32,
    mut cur: u32,
    spins: &mut u32,
    deadline: Option<Instant>,
) -> (u32, bool) {
    if *spins > 0 {
        *spins -= 1;
        sync::spin_hint();
        return (word.load(Ordering::Acquire), false);
    }
    if cur & WAITING == 0 {
        match word.compare_exchange_weak(cur, cur | WAITING, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => cur |= WAITING,
            Err(actual) => return (actual, false),
        }
    }
    // Sleeps only while the word still holds exactly `cur`: a release that lands between our
    // read and the sleep changes the value and the kernel refuses to sleep.
    let timed_out = match deadline {
        None => {
            sync::wait(word, cur);
            false
        }
        Some(deadline) => sync::wait_until(word, cur, deadline),
    };
    (word.load(Ordering::Acquire), timed_out)
}

/// Blocks until the count field of `word` is zero (every token given back), or until
/// `deadline`. Returns `true` once zero. Used by grace periods, whose word holds only tokens.
///
/// Spins [`sync::SPIN_LIMIT`] times, then sets `WAITING` and sleeps on the futex; the release
/// that takes the count to zero wakes it (see [`release`]).
pub(crate) fn wait_zero(word: &AtomicU32, deadline: Option<Instant>) -> bool {
    let mut spins = sync::SPIN_LIMIT;
    let mut timed_out = false;
    // Acquire: pairs with the token release (release → waiter).
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if count(cur) == 0 {
            return true;
        }
        if timed_out {
            stop_waiting(word);
            return false;
        }
        (cur, timed_out) = wait_for_change(word, cur, &mut spins, deadline);
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;

    #[test]
    fn layout_constants_do_not_overlap() {
        let flags = [WAITING, COMMITTED, DRAINED];
        for (i, a) in flags.iter().enumerate() {
            for b in &flags[i + 1..] {
                assert_eq!(a & b, 0);
            }
            assert_eq!(a & PENDING_MASK, 0);
            assert_eq!(a & COUNT_MASK, 0);
        }
        assert_eq!(PENDING_MASK & COUNT_MASK, 0);
        assert_eq!(
            WAITING | COMMITTED | DRAINED | PENDING_MASK | COUNT_MASK,
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
        let w = new_word();
        assert_eq!(try_acquire(&w), Ok(()));
        assert_eq!(count(w.load(Ordering::Relaxed)), 1);
        close_committed(&w, 0);
        assert_eq!(try_acquire(&w), Err(Refused::Closed));
        // SAFETY: the count taken above.
        unsafe { release(&w) };
        assert_eq!(wait_drained(&w, Hold::Committed, None, || true), Ok(()));
        assert_eq!(phase(w.load(Ordering::Relaxed)), Phase::Drained);
        assert!(reopen(&w));
        assert_eq!(w.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_racing_acquirer_backs_out_without_leaving_a_count() {
        let w = new_word();
        // Simulate the race: the pre-check read "open", then a close landed.
        w.fetch_or(COMMITTED, Ordering::Relaxed);
        let old = w.fetch_add(ONE, Ordering::Acquire);
        assert_eq!(back_out(&w, old), Refused::Closed);
        assert_eq!(count(w.load(Ordering::Relaxed)), 0);
    }

    #[test]
    fn overflow_is_refused_and_never_wraps() {
        let w = AtomicU32::new(LIMIT_WORD - ONE);
        assert_eq!(try_acquire(&w), Ok(()));
        assert_eq!(try_acquire(&w), Err(Refused::Overflow));
        assert_eq!(count(w.load(Ordering::Relaxed)), MAX_GUARDS);
    }

    #[test]
    fn timed_wait_reports_outstanding_and_keeps_the_hold() {
        let w = new_word();
        try_acquire(&w).unwrap();
        try_acquire(&w).unwrap();
        add_pending(&w, 0);
        let r = wait_drained(&w, Hold::Pending, Some(Instant::now()), || true);
        assert_eq!(r, Err(2));
        assert_eq!(pending(w.load(Ordering::Relaxed)), 1);
        assert!(undo_pending(&w));
    }

    #[test]
    fn pending_holds_stack_and_the_last_undo_reopens() {
        let w = new_word();
        add_pending(&w, 0);
        add_pending(&w, 0);
        assert!(!undo_pending(&w));
        assert!(is_closed(w.load(Ordering::Relaxed)));
        assert!(undo_pending(&w));
        assert!(!is_closed(w.load(Ordering::Relaxed)));
    }

    /// Closes beyond the pending field's limit spill into the side table and come back out
    /// in any order; only the last give-back reopens, and a commit at the limit works too.
    #[test]
    fn pending_holds_beyond_the_field_spill_into_the_table() {
        let w = new_word();
        let n = PENDING_SPILL + 40;
        for _ in 0..n {
            add_pending(&w, 0);
        }
        assert_eq!(pending(w.load(Ordering::Relaxed)), PENDING_SPILL);
        assert_eq!(
            table::lock(address(&w)).get().map(|s| s.spilled_closes),
            Some(u64::from(n - PENDING_SPILL))
        );
        for _ in 0..n - 1 {
            assert!(!undo_pending(&w), "reopened with closes still live");
            assert!(is_closed(w.load(Ordering::Relaxed)));
        }
        assert!(table::lock(address(&w)).get().is_none());
        assert!(undo_pending(&w), "the last undo must reopen");
        assert_eq!(w.load(Ordering::Relaxed), 0);

        for _ in 0..n {
            add_pending(&w, 0);
        }
        for _ in 0..n {
            assert_eq!(wait_drained(&w, Hold::Pending, None, || true), Ok(()));
        }
        let cur = w.load(Ordering::Relaxed);
        assert_eq!((pending(cur), phase(cur)), (0, Phase::Drained));
        assert!(table::lock(address(&w)).get().is_none());
        assert!(reopen(&w));
    }

    #[test]
    fn undo_does_not_reopen_a_committed_word() {
        let w = new_word();
        add_pending(&w, 0);
        close_committed(&w, 0);
        assert!(!undo_pending(&w));
        assert!(is_closed(w.load(Ordering::Relaxed)));
    }

    #[test]
    fn reopen_refuses_while_guards_or_pending_drains_remain() {
        let w = new_word();
        try_acquire(&w).unwrap();
        close_committed(&w, 0);
        assert!(!reopen(&w), "closing, a guard remains");
        // SAFETY: the count taken above.
        unsafe { release(&w) };
        add_pending(&w, 0);
        wait_drained(&w, Hold::Committed, None, || true).unwrap();
        assert!(!reopen(&w), "a PendingDrain is still live");
        assert!(!undo_pending(&w));
        assert!(reopen(&w));
    }
}
