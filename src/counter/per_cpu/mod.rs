//! The per-CPU counter: guards counted in the taking thread's own record (`records.rs`) or in
//! per-CPU slots that a close folds into one central count (`slots.rs`).

mod arena;
pub(crate) mod records;
pub(crate) mod slots;

use super::{Close, Counter, Outstanding, sealed};
use crate::lifecycle::{self, Closing, Hold, Open, Refused, Token, Word};
use crate::platform::{self, AtomicU64, Mutex, MutexGuard, Ordering};
use records::{LocalHold, RecordWait, Waited};
use slots::Folding;
use std::fmt;
use std::time::Instant;

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
/// - **Per-CPU slots**: one 8-byte cell per CPU, made on the first guard that needs them, in a
///   process-wide arena where each CPU's cells (of many drainables) share lines only with each
///   other. Taking a guard is a CAS on the current CPU's slot, dropping it a `fetch_sub` on
///   the slot it was taken on, wherever the thread runs by then. A close *folds* every slot
///   into one central count with one read-modify-write per slot, so the drain waits for an
///   exact count, and the drop that takes it to zero wakes the drainer. Used by
///   [`OwnedGuard`](crate::OwnedGuard)s (they may be dropped on another thread), by a thread's
///   fifth and later guard held at once, and for every guard where `membarrier` is unavailable
///   (other platforms, old kernels, seccomp,
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
/// opens; a guard takes it only once per drainable, the first time one is counted in the
/// slots, to make them in the state of the last close or open.
///
/// # Memory
///
/// Per drainable: 48 bytes inline (56 for a `PerCpuDrainable<()>` in release builds), whatever
/// the CPU count. Once a guard is counted in the slots, 8 bytes per slot more in the
/// process-wide arena (`heap_bytes`), `slots` being the number of CPUs (read once per process;
/// the environment variable `DRAINABLE_SLOTS` overrides it) rounded up to a power of two and
/// capped at 64 (CPUs beyond share slots; correctness does not depend on it); given back to the
/// arena when the drainable is dropped. Per process: one 128-byte record per thread alive at
/// once that has taken a per-CPU guard, shared by all per-CPU drainables (reused when the thread
/// exits, never freed), and the arena's chunks (never freed, reused).
///
/// ```
/// use std::sync::Arc;
///
/// let d = Arc::new(drainable::PerCpuDrainable::new(()));
/// assert_eq!(d.heap_bytes(), 0, "no slots until a guard needs them");
/// let owned = d.try_acquire_owned().unwrap(); // an owned guard is counted in the slots
/// let slots = d.heap_bytes() / 8;
/// assert!(slots.is_power_of_two() && slots <= 64);
/// drop(owned);
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

/// What a per-CPU wait has done so far (the sealed counter trait's `WaitState`): the
/// records part (its barrier, the record it is announced on), then whether that part is done.
///
/// `pub` only because the sealed counter trait names it; not reachable from outside.
#[allow(unreachable_pub)]
#[derive(Debug, Default)]
pub struct PerCpuWait {
    records: RecordWait,
    /// The thread-local entries were seen clear (or the close over): only the word is left.
    entries_done: bool,
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

impl sealed::SealedTicket for PerCpu {
    type Ticket = PerCpuTicket;
}

impl sealed::CounterImpl for PerCpu {
    const NAME: &'static str = "PerCpuDrainable";

    fn new_counter() -> Self {
        Self::with_slots(Folding::new())
    }

    fn new_drained_counter() -> Self {
        // One set of slots, built folded (not a second one over `new_counter`'s).
        Self::with_slots(Folding::new_folded())
    }

    #[inline]
    fn try_acquire(&self, word: &Word) -> Result<PerCpuTicket, Refused> {
        match records::try_hold(self.id, word) {
            Some(Ok(hold)) => Ok(PerCpuTicket(Place::Local(hold))),
            Some(Err(refused)) => Err(refused),
            None => self.try_acquire_in_slots(word),
        }
    }

    #[inline]
    fn try_acquire_owned(&self, word: &Word) -> Result<PerCpuTicket, Refused> {
        match self.slots.try_increment() {
            Ok(index) => Self::unless_closed(word, &self.slots, index),
            Err(slots::NO_SLOTS) => self.install_slots_and_acquire(word),
            Err(value) => Err(refused(value)),
        }
    }

    #[inline]
    unsafe fn release(this: *const Self, word: *const Word, ticket: PerCpuTicket) {
        match ticket.0 {
            // SAFETY: forwarded: the caller owns this hold.
            Place::Local(hold) => unsafe { records::release(hold) },
            // SAFETY: forwarded: `this` is live and the caller owns the count on slot `index`.
            Place::Slot(index) => unsafe {
                Folding::decrement(std::ptr::addr_of!((*this).slots), index, word)
            },
        }
    }

    fn close(&self, word: &Word, hold: Hold) -> Close {
        let _control = self.lock_control();
        // Two tokens: one for the slots (given back by the fold, `slots.rs`) and one for the
        // thread-local entries (given back by a waiter whose scan followed this close).
        if let Closing::Began([slots, entries]) = word.close::<2>(hold) {
            self.closed(word, slots, entries);
        }
        // Under the lock that orders closes: the close this caller made or joined.
        self.current_close()
    }

    fn open(&self, word: &Word, how: Open) -> bool {
        let _control = self.lock_control();
        let opened = word.open(how);
        if opened {
            self.opened(word);
        }
        opened
    }

    type WaitState = PerCpuWait;

    fn wait_with<P: platform::Park>(
        &self,
        word: &Word,
        hold: Hold,
        close: Close,
        deadline: Option<Instant>,
        park: &mut P,
        state: &mut PerCpuWait,
    ) -> Result<Result<(), Outstanding>, P::Pending> {
        // The invariant (docs/design.md §2a): only a waiter of close `close`, whose scan
        // followed that close, gives its entries token back, and only while it is the
        // close in effect. A scan made under one close says nothing about acquirers that
        // read the word open after a reopen, so a waiter whose close has ended stops
        // (`wait_released_with` checks before its barrier and while it waits; the CAS of
        // `entries_clear` decides).
        debug_assert!(
            hold == Hold::Committed || self.is_current(close),
            "a pending close outlived its cycle"
        );
        // First the guards counted outside the word (thread-local entries), then the word's
        // count (the slots' token, and the entries' once given back). A task polled again
        // after the first part resumes at the second.
        if !state.entries_done {
            let waited = records::wait_released_with(
                self.id,
                word,
                hold,
                deadline,
                || self.is_current(close),
                park,
                &mut state.records,
            )?;
            let over = match waited {
                Ok(Waited::Over) => true,
                Ok(Waited::Clear) => self.entries_clear(word, hold, close),
                Err(()) => {
                    return Ok(Err(Outstanding(
                        records::outstanding(self.id).max(1) + self.slots.outstanding(),
                    )));
                }
            };
            // Off the records: the rest of the wait is on the word.
            state.records = RecordWait::default();
            state.entries_done = true;
            if over && hold == Hold::Committed {
                // Drained or reopened since our close: done (a pending hold still has to
                // trade itself in, below).
                return Ok(Ok(()));
            }
        }
        let waited = word.wait_drained_with(hold, deadline, || self.is_current(close), park)?;
        // The count field holds the close's tokens: the guards are counted here, and at
        // least one was outstanding, since the drain had not completed at the deadline.
        Ok(waited.map_err(|_| Outstanding(self.guards().max(1))))
    }

    fn outstanding(&self, _word: u32) -> usize {
        self.guards()
    }

    fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
    }
}

impl PerCpu {
    /// A borrowed guard counted in the slots: no record on this thread (no `membarrier`) or
    /// its entries all taken. Out of line, so that the record path inlines into callers.
    #[cold]
    #[inline(never)]
    fn try_acquire_in_slots(&self, word: &Word) -> Result<PerCpuTicket, Refused> {
        sealed::CounterImpl::try_acquire_owned(self, word)
    }

    fn with_slots(slots: Folding) -> Self {
        // Registers `membarrier` now, if at all, so that no guard's first use pays for it.
        records::enabled();
        PerCpu {
            id: platform::unique_id(),
            slots,
            entries_token: AtomicU64::new(0),
            control: Mutex::new(()),
        }
    }

    /// The first guard counted in the slots: installs them under the control lock, in the fold
    /// state of the close or open that came last (docs/design.md §6, *Slots made on first
    /// use*), and takes the guard there.
    #[cold]
    #[inline(never)]
    fn install_slots_and_acquire(&self, word: &Word) -> Result<PerCpuTicket, Refused> {
        {
            let _control = self.lock_control();
            self.slots.install();
        }
        match self.slots.try_increment() {
            Ok(index) => Self::unless_closed(word, &self.slots, index),
            // Installed for good above: never `NO_SLOTS` again.
            Err(value) => Err(refused(value)),
        }
    }

    /// A count just taken on slot `index`, kept unless the word is closed by now. A close sets
    /// the word, then folds the slots (under the control lock): an increment in between is
    /// counted by the fold and would be waited for, but a caller that saw the drain begin must
    /// get `None` (the contract of `try_acquire_owned`; the record path re-reads the word the
    /// same way). loom: `an_owned_acquisition_after_the_close_is_seen_is_refused`.
    #[inline]
    fn unless_closed(word: &Word, slots: &Folding, index: u32) -> Result<PerCpuTicket, Refused> {
        // Acquire: open → acquirer (pairs with the Release of `reopen` / `undo`), as in the
        // record path.
        if lifecycle::is_closed(word.load(Ordering::Acquire)) {
            // SAFETY: the count on slot `index` was taken just above and is given back once,
            // here; `slots` and `word` belong to the live drainable the caller borrows.
            unsafe { Folding::decrement(slots, index, word) };
            return Err(Refused::Closed);
        }
        Ok(PerCpuTicket(Place::Slot(index)))
    }

    /// Serialises the closes and opens of the word with the passes over the slots that go
    /// with them.
    fn lock_control(&self) -> MutexGuard<'_, ()> {
        // The facade's Mutex recovers from poison: nothing under this lock panics halfway
        // through a change (no barrier runs under it; its only panics are debug assertions of
        // invariants already broken).
        self.control.lock()
    }

    /// Under the control lock, right after this thread closed an open word, which handed it
    /// the close's two tokens.
    fn closed(&self, word: &Word, slots: Token, entries: Token) {
        // The next cycle, token out (or, with no entries to wait for, not out). The opened
        // word had the token bit clear (`opened`, or new), so no waiter's CAS can succeed
        // meanwhile. Relaxed: a waiter reads it after its own close, which it made under the
        // control lock that this runs under, so the lock orders the two.
        let enabled = records::enabled();
        // Release: pairs with the Acquire of `is_current`, for the waiters of earlier closes
        // that learn from the new cycle that theirs has ended.
        let prev = self
            .entries_token
            .fetch_add(2 | u64::from(enabled), Ordering::Release);
        debug_assert_eq!(prev & 1, 0, "a close of an open word with its token out");
        if enabled {
            // Out: reclaimed by the first waiter whose scan followed this close
            // (`entries_clear`), or by the open that ends the close first (`opened`).
            entries.stash();
        } else {
            // No thread-local entries exist: nothing to wait for.
            word.give_back(entries);
        }
        self.slots.fold(word, slots);
    }

    /// Under the control lock, right after this thread opened a closed word.
    fn opened(&self, word: &Word) {
        self.slots.unfold(word);
        // Relaxed: as in `closed`; a waiter's CAS either took the token first or fails.
        if self.entries_token.fetch_and(!1, Ordering::Relaxed) & 1 != 0 {
            // Reopened (an undo) before any waiter scanned: the token goes back unused.
            // SAFETY: the `out` bit, cleared here, said the close's token was still stashed.
            word.give_back(unsafe { Token::reclaim() });
        }
        // A committed drainer still waiting for an entry must see the reopen and return.
        records::wake_waiters();
    }

    /// The number of the close in effect, read under the control lock right after the
    /// caller closed the word or joined its close: the waiter's name for its own close.
    fn current_close(&self) -> Close {
        // Relaxed: the caller holds the control lock, under which every close bumps the cycle.
        Close(self.entries_token.load(Ordering::Relaxed) >> 1)
    }

    /// Whether `close` is still the one in effect. A `false` comes with the later close and
    /// everything before it (its drain, the reopen).
    fn is_current(&self, close: Close) -> bool {
        // Acquire: pairs with the Release of `closed`: a later cycle seen here brings the
        // close that made it (an Acquire RMW on the word, after every release of our close's
        // guards in its modification order) into happens-before.
        self.entries_token.load(Ordering::Acquire) >> 1 == close.0
    }

    /// A waiter of `close` saw every entry clear after that close (its scan followed it):
    /// gives the close's entries token back, unless another waiter of the close did. Returns
    /// whether it found the close ended instead (a later close of an open word is in effect).
    fn entries_clear(&self, word: &Word, hold: Hold, close: Close) -> bool {
        let out = close.0 << 1 | 1;
        // Relaxed: the word's RMWs order the token (`Word::give_back` is Release); a
        // failure is read again with Acquire by `is_current` before it is acted on.
        match self.entries_token.compare_exchange(
            out,
            close.0 << 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                // Every entry was seen clear after this close: give its token back.
                // SAFETY: `closed` stashed this token for this cycle, and the CAS makes this
                // the only reclaim.
                word.give_back(unsafe { Token::reclaim() });
                false
            }
            // Given back already, by another waiter of this close.
            Err(now) if now >> 1 == close.0 => false,
            Err(_) => {
                // A close of an open word came since: the word was reopened after our close.
                // Only a committed hold allows that, and it is then over.
                debug_assert_eq!(hold, Hold::Committed);
                // `is_current` re-reads with Acquire: the later close, and the drain and
                // reopen before it, happen-before this waiter returns.
                !self.is_current(close)
            }
        }
    }

    /// Guards outstanding in the slots and the entries (a snapshot).
    fn guards(&self) -> usize {
        self.slots.outstanding() + records::outstanding(self.id)
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

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    //! The per-CPU counter driven through its verbs, on a word of its own, as `DrainableWith`
    //! drives it: entries and slots together, the tokens, the reports.

    use super::*;
    use crate::counter::sealed::CounterImpl;
    use crate::lifecycle::{self, Phase};
    use records::ENTRIES;
    use std::sync::atomic::{AtomicBool, Ordering as O};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    /// A per-CPU counter and its word: a `PerCpuDrainable<()>` without the public type.
    struct Fixture {
        word: Word,
        counter: PerCpu,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                word: Word::new(),
                counter: PerCpu::new_counter(),
            }
        }

        fn acquire(&self) -> PerCpuTicket {
            self.counter.try_acquire(&self.word).unwrap()
        }

        /// Gives back a ticket of this fixture's, on the thread that took it.
        fn release(&self, ticket: PerCpuTicket) {
            // SAFETY: the fixture is live, and every test gives each ticket back once.
            unsafe { PerCpu::release(&self.counter, &self.word, ticket) }
        }

        fn wait(
            &self,
            hold: Hold,
            close: Close,
            deadline: Option<Instant>,
        ) -> Result<(), Outstanding> {
            self.counter.wait(&self.word, hold, close, deadline)
        }

        fn drain(&self) {
            let close = self.counter.close(&self.word, Hold::Committed);
            assert_eq!(self.wait(Hold::Committed, close, None), Ok(()));
        }

        /// `drain_timeout`: a pending close, a timed wait, and the undo if it fails.
        fn drain_timeout(&self, timeout: Duration) -> Result<(), Outstanding> {
            let close = self.counter.close(&self.word, Hold::Pending);
            let waited = self.wait(Hold::Pending, close, Instant::now().checked_add(timeout));
            if waited.is_err() {
                let _reopened = self.counter.open(&self.word, Open::Undo);
            }
            waited
        }

        fn phase(&self) -> Phase {
            lifecycle::phase(self.word.load(Ordering::Relaxed))
        }

        fn is_open(&self) -> bool {
            !lifecycle::is_closed(self.word.load(Ordering::Relaxed))
        }

        /// Guards of this counter that sit in thread-local entries right now.
        fn local_guards(&self) -> usize {
            records::outstanding(self.counter.id)
        }
    }

    #[test]
    fn first_guards_use_entries_and_the_rest_the_slots() {
        if !records::enabled() {
            return; // no membarrier here: every guard is in the slots, tested elsewhere
        }
        let f = Fixture::new();
        // This test thread may have been given the record of an exited thread that leaked
        // guards (other tests do): those entries stay taken. Take guards until two are in
        // the slots: the others took the free entries.
        let in_slots = |tickets: &[PerCpuTicket]| {
            tickets
                .iter()
                .filter(|t| matches!(t.0, Place::Slot(_)))
                .count()
        };
        let mut tickets = Vec::new();
        while in_slots(&tickets) < 2 {
            tickets.push(f.acquire());
        }
        let free = tickets.len() - 2;
        assert!(
            tickets[..free]
                .iter()
                .all(|t| matches!(t.0, Place::Local(_))),
            "the entries first, then the slots"
        );
        assert_eq!(
            f.local_guards(),
            free,
            "one entry per guard, up to the free ones"
        );
        let close = f.counter.close(&f.word, Hold::Pending);
        assert_eq!(
            f.counter.outstanding(0),
            free + 2,
            "entries and slots both counted"
        );
        assert!(f.wait(Hold::Pending, close, Some(Instant::now())).is_err());
        for ticket in tickets {
            f.release(ticket);
        }
        assert_eq!(f.local_guards(), 0);
        assert_eq!(f.wait(Hold::Pending, close, None), Ok(()));
        assert_eq!(f.phase(), Phase::Drained);
    }

    #[test]
    fn drain_waits_for_entries_and_slots_held_on_another_thread() {
        let f = Fixture::new();
        let released = AtomicBool::new(false);
        thread::scope(|s| {
            let (held_tx, held_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let (f, released) = (&f, &released);
            s.spawn(move || {
                // Past the entries, so the drain waits on both kinds of count.
                let tickets: Vec<_> = (0..ENTRIES + 1).map(|_| f.acquire()).collect();
                held_tx.send(()).unwrap();
                let _ = go_rx.recv();
                released.store(true, O::SeqCst);
                for ticket in tickets {
                    f.release(ticket);
                }
            });
            held_rx.recv().unwrap();
            let err = f.drain_timeout(Duration::ZERO).unwrap_err();
            assert_eq!(err, Outstanding(ENTRIES + 1));
            assert!(f.is_open(), "a timed drain that failed reopens");
            go_tx.send(()).unwrap();
            f.drain();
            assert!(
                released.load(O::SeqCst),
                "drain returned before the guards were dropped"
            );
        });
    }

    #[test]
    fn a_forgotten_guard_never_blocks_another_drainable() {
        let first = Fixture::new();
        let _forgotten = first.acquire();
        assert_eq!(first.drain_timeout(Duration::ZERO), Err(Outstanding(1)));
        drop(first);
        // Perhaps at the same address: ids, not addresses, mark the entries.
        let second = Fixture::new();
        assert_eq!(second.drain_timeout(Duration::from_secs(60)), Ok(()));
    }

    /// The counter's half of `records::tests::a_record_goes_back_when_its_thread_exits_and_keeps_a_leaked_entry`:
    /// the guard a thread leaked before it exited is still reported.
    #[test]
    fn a_guard_leaked_by_an_exited_thread_stays_outstanding() {
        let f = Fixture::new();
        thread::scope(|s| {
            s.spawn(|| {
                let _leaked = f.acquire();
            });
        });
        assert_eq!(f.drain_timeout(Duration::ZERO), Err(Outstanding(1)));
    }
}
