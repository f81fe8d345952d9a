//! Thread-local holds: the hot path of [`PerCpu`](crate::PerCpu) without a locked instruction.
//!
//! Every thread that takes a [`Guard`](crate::Guard) of a per-CPU drainable gets a *record*: a
//! 128-byte line of its own with [`ENTRIES`] entries. Taking a guard writes the drainable's
//! id into a free entry of the taking thread's record with a plain store, then re-reads the
//! lifecycle word; dropping it stores 0 back. No read-modify-write, no shared cache line
//! written: the cost of `crossbeam-epoch`'s pin minus its one locked instruction.
//!
//! # The handshake (an asymmetric Dekker)
//!
//! ```text
//! acquirer                              drainer
//!   entry = id          (store)           close the word           (RMW)
//!   light barrier                         heavy barrier
//!   word closed? back out (load)          scan the entries for id  (loads)
//! ```
//!
//! The light barrier is a compiler fence; the heavy one is
//! `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which runs a full barrier on every CPU
//! that runs a thread of this process. Together they act as a pair of `SeqCst` fences (the
//! kernel's `Documentation/membarrier` argument; liburcu and folly use the same pair): either
//! the acquirer's load sees the close, or its entry is visible to the scan. So after the
//! heavy barrier, every guard that will ever be handed out under this close is visible, and
//! the drainer waits for exactly those entries to go back to 0. Under Miri and loom both
//! barriers are `SeqCst` fences, which is the model of the pair (and, under loom, what the
//! model checker explores).
//!
//! Waking works the same way in the other direction: a drainer that must wait on a record
//! bumps the record's `waiters`, runs a heavy barrier and re-checks; a releaser stores 0,
//! runs a light barrier and reads `waiters`. Either the drainer sees the 0, or the releaser
//! sees the waiter and bumps the record's `seq` futex. The releaser touches only its own
//! record (which lives for the whole process), never the drainable: the drainable may be
//! freed the instant its last entry is 0.
//!
//! Where `membarrier` is missing at start-up (other kernels, seccomp) no record is handed
//! out, and `PerCpu` counts every guard in its per-CPU slots (`slots.rs`), as it does for
//! [`OwnedGuard`](crate::OwnedGuard)s, which may be released on another thread, and for a
//! thread that already holds [`ENTRIES`] guards.
//!
//! # When `membarrier` is refused later: the signal barrier
//!
//! A sandbox may install a seccomp filter after records were handed out. Threads keep
//! taking guards on their records with plain stores, so a drain still needs a heavy barrier:
//! the first `membarrier` that fails switches the process, for good, to the signal barrier
//! of `platform/signal_barrier.rs` (the idea of liburcu's signal flavour, `urcu-signal`,
//! <https://liburcu.org>). It signals every thread that owns a record (other than the
//! drainer) and waits until each one's handler has read the drainer's request, run a full
//! fence and acknowledged it. The handler runs between two instructions of its thread, on
//! one side or the other of the acquirer's (or releaser's) compiler fence, so the pair still
//! acts as two `SeqCst` fences: a handler before the entry store read the request, so the
//! close happens-before the thread's load of the word; a handler after it publishes the store
//! with its acknowledgement. `DRAINABLE_FORCE_SIGNAL_BARRIER=1` (a testing aid, read once)
//! uses it from the start.
//!
//! For that, each record names its owner thread (its kernel tid, stamped at the claim,
//! followed by a `SeqCst` fence so that a barrier that misses the stamp is seen by the
//! thread's guards). And a thread that exits while it still holds an entry (a leaked guard,
//! or one that a later thread-local destructor will drop, writing the record and reading
//! `waiters`) does not give its record back: it stays stamped, so that signal barriers still
//! reach the thread, until a barrier finds the thread gone and gives it back. The signal
//! barrier's limits (a thread that blocks the signal holds drains up, reported on stderr;
//! no usable signal at all is a panic) are in `platform/signal_barrier.rs`.
//!
//! # Records
//!
//! Records form a process-wide list that only grows; a thread's record goes back to the
//! pool when the thread exits holding none of its entries, and the next new thread reuses
//! it. Memory: 128 bytes per thread alive at once, shared by every per-CPU drainable, plus
//! one per thread that exited holding an entry (given back by a signal barrier, if there is
//! one). A drainer scans the whole list: its cost grows with the number of threads, not of
//! drainables.
//!
//! Ids, not addresses, mark entries: a guard leaked with `mem::forget` keeps its entry (one
//! of its thread's four) forever, but no other drainable can ever mistake it for its own.

use crate::lifecycle::{self, Hold, Refused, Word};
use crate::platform::{self, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Handshake, Ordering};
use std::time::Instant;

/// Entries per record: guards one thread can hold at once on the thread-local path (further
/// ones use the per-CPU slots). Two under loom, where every entry read is a branch point, and
/// Miri: the tests then reach the overflow into the slots with a third guard.
pub(crate) const ENTRIES: usize = if platform::MODEL { 2 } else { 4 };

/// One thread's entries and the futex its drainers sleep on.
#[repr(align(128))]
pub(crate) struct Record {
    /// 0, or the id of the drainable a guard of this thread holds.
    entries: [AtomicU64; ENTRIES],
    /// Drainers waiting for an entry of this record to clear.
    waiters: AtomicU32,
    /// Bumped by a release that saw `waiters`; drainers sleep on it.
    seq: AtomicU32,
    /// A live thread owns the record (or an exited one still held an entry of it when it
    /// exited: see `first_use`).
    in_use: AtomicBool,
    /// The next record in the list: set before the record is published, then never changed.
    next: *const Record,
    /// The owner thread and its acknowledgements, for the signal barrier that replaces
    /// `membarrier` where it is refused (`platform/signal_barrier.rs`; nothing on other platforms).
    handshake: Handshake,
}

// SAFETY: `next` is written once before the record is shared and only read afterwards; every
// other field is atomic.
unsafe impl Sync for Record {}
// SAFETY: as above; a record is never dropped while shared (the list only grows).
unsafe impl Send for Record {}

/// What a guard on the thread-local path remembers: its entry.
#[derive(Clone, Copy)]
pub(crate) struct LocalHold {
    record: &'static Record,
    entry: &'static AtomicU64,
}

impl Record {
    /// How many entries hold `id`.
    fn holds(&self, id: u64) -> usize {
        self.entries
            .iter()
            // Acquire: synchronises with the release (or later claim) stored in the entry, so
            // a guard's accesses happen-before a drainer that sees its entry cleared.
            .filter(|e| e.load(Ordering::Acquire) == id)
            .count()
    }

    #[inline]
    fn try_hold(&'static self, id: u64, word: &Word) -> Option<Result<LocalHold, Refused>> {
        // Relaxed: a hint. Once the close is visible no acquirer writes its entry, which bounds
        // what a drainer can find in the entries to acquirers that read "open" before it.
        if lifecycle::is_closed(word.load(Ordering::Relaxed)) {
            return Some(Err(Refused::Closed));
        }
        // Acquire: only this thread claims entries of its record, but a guard of the record's
        // previous owner (dropped in a late thread-local destructor) may have cleared this one;
        // the claim below must come after that clear in happens-before, so that a drainer that
        // reads the claim also synchronises with the clear. A plain load on x86-64. The first
        // entry is tried inline: it is the free one unless this thread already holds a guard.
        let entry = if self.entries[0].load(Ordering::Acquire) == 0 {
            &self.entries[0]
        } else {
            self.other_free_entry()?
        };
        // Release: a drainer that reads this value has seen this thread's earlier releases
        // of the entry (a claim after a clear must not hide the clear's ordering).
        entry.store(id, Ordering::Release);
        light_barrier();
        let hold = LocalHold {
            record: self,
            entry,
        };
        // Acquire: open → acquirer (pairs with the Release of `reopen` / `undo`).
        if lifecycle::is_closed(word.load(Ordering::Acquire)) {
            // SAFETY: this thread just claimed the entry.
            unsafe { release(hold) };
            return Some(Err(Refused::Closed));
        }
        Some(Ok(hold))
    }

    /// A free entry other than the first, for a thread that already holds a guard.
    #[cold]
    #[inline(never)]
    fn other_free_entry(&'static self) -> Option<&'static AtomicU64> {
        // Acquire: as in `try_hold`.
        self.entries[1..]
            .iter()
            .find(|e| e.load(Ordering::Acquire) == 0)
    }
}

/// Takes a guard of the drainable with `id` on this thread's record. `None` when this thread
/// has no record (no `membarrier`, or the thread is exiting) or all its entries are taken: the
/// caller counts the guard elsewhere.
#[inline]
pub(crate) fn try_hold(id: u64, word: &Word) -> Option<Result<LocalHold, Refused>> {
    current_record()?.try_hold(id, word)
}

/// Gives a thread-local guard back.
///
/// # Safety
/// The caller owns `hold` (it took it and gives it back once). Touches only the record, which
/// lives for the whole process, so the drainable may be freed during or after the call.
#[inline]
pub(crate) unsafe fn release(hold: LocalHold) {
    let record = hold.record;
    // Release: everything done under the guard happens-before a drainer that reads the 0.
    hold.entry.store(0, Ordering::Release);
    light_barrier();
    // Relaxed: the barriers order it (see the module docs); a waiter is re-checked anyway.
    if record.waiters.load(Ordering::Relaxed) != 0 {
        wake(record);
    }
}

/// The value a read section of the grace domain `id` writes into its entry while `phase` is
/// current: the domain's id with the phase in bit 63. Ids count up from 1 and stay far below
/// 2^63, so a tag never equals another domain's or a per-CPU drainable's id.
#[inline]
pub(crate) fn section_tag(id: u64, phase: u32) -> u64 {
    debug_assert!(id < 1 << 63 && phase <= 1);
    id | u64::from(phase) << 63
}

/// Enters a read section of the grace domain `id` on this thread's record: writes the tag of
/// the current phase into a free entry, then re-reads `phase`, and moves the entry to the new
/// phase for as long as the phase has changed in between. Returns the hold (its entry holds
/// the tag of the phase the section counts in), or `None` (no record on this thread, or all
/// its entries taken, or the domain sends its sections to the slots).
///
/// Why the re-read (`docs/design.md` §7): a grace period flips `phase`, runs the heavy barrier,
/// then waits for the entries tagged with the old phase. The store of the tag and the re-read
/// pair with the flip and the barrier as an asymmetric Dekker: either the re-read sees the
/// flip (and the section moves to the new phase, having acquired everything the writer
/// published before it), or the grace period's scan sees the tag and waits. Without the
/// re-read, a section that read the old phase just before a flip and stored its tag just
/// after the scan would stay in a phase that the *next* grace period does not wait for.
///
/// `phase` may also carry [`SLOTS_ONLY`]: the domain wants its sections in the slots (its grace
/// periods are frequent; `docs/design.md` §7a). Then no entry is taken, and a section whose
/// re-read finds the bit set gives its entry back: `None`, the caller counts it in the slots.
#[inline]
pub(crate) fn try_enter(id: u64, phase: &AtomicU32) -> Option<LocalHold> {
    // Relaxed: a guess; the re-read below is the load that orders the section.
    let mut current = phase.load(Ordering::Relaxed);
    if current & SLOTS_ONLY != 0 {
        return None;
    }
    let record = current_record()?;
    // Acquire: as in `Record::try_hold`.
    let entry = if record.entries[0].load(Ordering::Acquire) == 0 {
        &record.entries[0]
    } else {
        record.other_free_entry()?
    };
    // Release: as in `Record::try_hold` (a claim after a clear keeps the clear's ordering).
    entry.store(section_tag(id, current & 1), Ordering::Release);
    light_barrier();
    loop {
        // Acquire: pairs with the flip's Release (a writer's publish → this reader). The load
        // that the Dekker pairs with the grace period's barrier.
        let now = phase.load(Ordering::Acquire);
        if now == current {
            return Some(LocalHold { record, entry });
        }
        if now & SLOTS_ONLY != 0 {
            // SAFETY: this thread claimed the entry just above.
            unsafe { release(LocalHold { record, entry }) };
            return None;
        }
        current = now;
        move_entry(record, entry, section_tag(id, current & 1));
    }
}

/// The bit of a grace domain's phase word that sends new sections to the slots (see
/// [`try_enter`]). Bit 0 is the phase.
pub(crate) const SLOTS_ONLY: u32 = 2;

/// A section's entry moves to the new phase (a grace period flipped it while the section was
/// entering): a grace period already waiting on the old tag is woken, as a release would.
#[cold]
#[inline(never)]
fn move_entry(record: &Record, entry: &AtomicU64, tag: u64) {
    // Release: as a claim in `Record::try_hold`.
    entry.store(tag, Ordering::Release);
    light_barrier();
    // Relaxed: as in `release`.
    if record.waiters.load(Ordering::Relaxed) != 0 {
        wake(record);
    }
}

/// The heavy barrier a grace period runs after flipping its domain's phase and before reading
/// the entries (see [`try_enter`]). `Err` only if `deadline` passed inside the signal barrier.
pub(crate) fn grace_barrier(deadline: Option<Instant>) -> Result<(), ()> {
    if enabled() {
        heavy_barrier(deadline)
    } else {
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn wake(record: &Record) {
    // Release: a drainer that reads the new `seq` sees the entry cleared.
    record.seq.fetch_add(1, Ordering::Release);
    platform::wake_all(&record.seq);
}

/// Guards of `id` on the thread-local path, as a snapshot.
pub(crate) fn outstanding(id: u64) -> usize {
    records().map(|r| r.holds(id)).sum()
}

/// A record with an entry holding `id`, or `None` (a scan, as [`outstanding`]). `hint` (a
/// record that held it at an earlier scan) is checked first: while one section stays open, a
/// caller that polls pays one load, not a pass over every thread's record.
pub(crate) fn first_holding(id: u64, hint: Option<&'static Record>) -> Option<&'static Record> {
    if let Some(record) = hint.filter(|r| r.holds(id) != 0) {
        return Some(record);
    }
    records().find(|r| r.holds(id) != 0)
}

/// A drainer's progress through the records, kept by the caller: a blocking wait keeps it for
/// one call, a task across its polls (so that a release between two polls still wakes it, and
/// a poll does not repeat a barrier).
#[derive(Default)]
pub(crate) struct RecordWait {
    /// The heavy barrier after the close has run: every entry of an acquirer that read the
    /// word open is visible to the scans from now on.
    barrier: bool,
    /// The record whose `waiters` this drainer counts itself in, if any.
    announced: Option<&'static Record>,
}

impl std::fmt::Debug for RecordWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWait")
            .field("barrier", &self.barrier)
            .field("announced", &self.announced.is_some())
            .finish()
    }
}

impl RecordWait {
    /// The progress of a waiter that knows a heavy barrier has run after the event that stops
    /// new entries of what it waits for (a grace period runs it when it flips the phase).
    pub(crate) fn after_barrier() -> Self {
        RecordWait {
            barrier: true,
            announced: None,
        }
    }

    /// Counts this drainer in `record`'s `waiters` (and out of the one before). Returns whether
    /// that is new: a heavy barrier must then run before the record's entries are read.
    fn announce(&mut self, record: &'static Record) -> bool {
        if self.announced.is_some_and(|r| std::ptr::eq(r, record)) {
            return false;
        }
        self.withdraw();
        // Relaxed: ordered by the heavy barrier that the caller runs next.
        record.waiters.fetch_add(1, Ordering::Relaxed);
        self.announced = Some(record);
        true
    }

    /// Counts this drainer out of the record it is announced on, if any (a task that is done
    /// waiting on the records, or moves to another wait).
    pub(crate) fn withdraw(&mut self) {
        if let Some(record) = self.announced.take() {
            // Relaxed: a stale non-zero only costs a releaser one needless wake.
            record.waiters.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Taken down however the wait ends, a panic of the barrier included, and when a task's future
/// is dropped: left up, it would make every release on the record pay a futex wake.
impl Drop for RecordWait {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Waits, after a close of `word`, until no entry holds `id`, or until `deadline`
/// (`Err`).
///
/// Returns [`Waited::Over`] early once the word says the close `hold` holds is over
/// ([`Word::close_is_over`]: drained, or, for a committed hold, ended since).
#[cfg(test)]
pub(crate) fn wait_released(
    id: u64,
    word: &Word,
    hold: Hold,
    deadline: Option<Instant>,
    is_current: impl Fn() -> bool,
) -> Result<Waited, ()> {
    let Ok(waited) = wait_released_with(
        id,
        word,
        hold,
        deadline,
        is_current,
        &mut platform::Block,
        &mut RecordWait::default(),
    );
    waited
}

/// [`wait_released`], sleeping as `park` does, with its progress in `progress` (see
/// [`RecordWait`]). For a task, `Err` where a thread would sleep; call again after the wake
/// with the same `progress`.
pub(crate) fn wait_released_with<P: platform::Park>(
    id: u64,
    word: &Word,
    hold: Hold,
    deadline: Option<Instant>,
    is_current: impl Fn() -> bool,
    park: &mut P,
    progress: &mut RecordWait,
) -> Result<Result<Waited, ()>, P::Pending> {
    wait_clear_with(
        id,
        || word.close_is_over(hold, &is_current),
        deadline,
        park,
        progress,
    )
}

/// Waits until no entry holds `id` (after the event that stops new entries of `id`: a close,
/// or a grace period's phase flip), or until `is_over` says the wait is moot, or until
/// `deadline` (`Err`). Runs the heavy barrier first unless `progress` says it has run.
pub(crate) fn wait_clear_with<P: platform::Park>(
    id: u64,
    is_over: impl Fn() -> bool,
    deadline: Option<Instant>,
    park: &mut P,
    progress: &mut RecordWait,
) -> Result<Result<Waited, ()>, P::Pending> {
    // A wait already over needs no barrier and no scan.
    if is_over() {
        return Ok(Ok(Waited::Over));
    }
    if !enabled() {
        return Ok(Ok(Waited::Clear));
    }
    if !progress.barrier {
        // After this, every acquirer that read the word open before the close has its entry
        // visible to the scan (and every later one sees the close and backs out).
        if heavy_barrier(park.barrier_deadline(deadline)).is_err() {
            // A thread's timeout; a task is polled again and tries once more.
            park.barrier_gave_up()?;
            return Ok(Err(()));
        }
        progress.barrier = true;
    }
    for record in records() {
        if record.holds(id) == 0 {
            continue;
        }
        match wait_record(record, id, &is_over, deadline, park, progress)? {
            Ok(Waited::Clear) => {}
            other => return Ok(other),
        }
    }
    Ok(Ok(Waited::Clear))
}

/// How a wait for the entries ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Every entry was seen clear after the close.
    Clear,
    /// The word says the drain is over (see [`wait_released`]).
    Over,
}

fn wait_record<P: platform::Park>(
    record: &'static Record,
    id: u64,
    is_over: &impl Fn() -> bool,
    deadline: Option<Instant>,
    park: &mut P,
    progress: &mut RecordWait,
) -> Result<Result<Waited, ()>, P::Pending> {
    if progress.announce(record) {
        // A releaser that clears an entry after this barrier sees `waiters` and wakes us; one
        // that cleared it before is seen by the loads below. Also orders the `waiters`
        // increment before the word load, against `wake_waiters` (a reopen). A task that
        // stays announced across its polls keeps both: every later release sees `waiters`.
        if heavy_barrier(park.barrier_deadline(deadline)).is_err() {
            // The deadline passed inside the barrier (the signal barrier, waiting for a
            // thread): a timeout like any other. A task withdraws, so that its next poll
            // announces and runs the barrier again before it reads the record.
            progress.withdraw();
            park.barrier_gave_up()?;
            return Ok(Err(()));
        }
    }
    let mut spins = P::SPINS;
    let waited = loop {
        // Acquire: pairs with the bump in `wake` (the entry cleared before it).
        let seq = record.seq.load(Ordering::Acquire);
        // A drain finished by another waiter, or a reopen, is seen with what led to it.
        if is_over() {
            break Ok(Ok(Waited::Over));
        }
        if record.holds(id) == 0 {
            break Ok(Ok(Waited::Clear));
        }
        if spins > 0 {
            spins -= 1;
            platform::spin_hint();
            continue;
        }
        if park.park(&record.seq, seq, deadline)?
            && record.holds(id) != 0
            // A drain finished meanwhile is not a timeout.
            && !is_over()
        {
            break Ok(Err(()));
        }
    };
    // Done with this record (only a task that returns `Pending` above stays announced):
    // every release on it would otherwise pay a wake while the scan goes on.
    progress.withdraw();
    waited
}

/// Wakes every drainer waiting on a record, so that it re-reads the lifecycle word. Called
/// after a drainable is reopened: a committed drainer still waiting must return rather than
/// wait for guards taken after the reopen.
pub(crate) fn wake_waiters() {
    if !enabled() {
        return;
    }
    // SeqCst: the reopen (an RMW on the word, before this) and the loads of `waiters` below
    // against a waiter's increment and heavy barrier before its load of the word: one of the
    // two sees the other.
    platform::fence(Ordering::SeqCst);
    for record in records() {
        // Relaxed: ordered by the fence above.
        if record.waiters.load(Ordering::Relaxed) != 0 {
            wake(record);
        }
    }
}

/// The acquirer side's half of the handshake (see the module docs).
#[inline(always)]
fn light_barrier() {
    platform::light_barrier();
}

/// The drainer side's half: `membarrier`, or the signal barrier once `membarrier` is refused
/// (see the module docs). `Err` only if `deadline` passed while the signal barrier waited for
/// a thread (the barrier is then incomplete: the caller times out).
fn heavy_barrier(deadline: Option<Instant>) -> Result<(), ()> {
    platform::heavy_barrier::<RecordList>(deadline)
}

/// Whether records are handed out at all (decided once per process, on first call: a
/// `membarrier` registration, which may wait for an RCU grace period in the kernel, so
/// `PerCpu::new` calls it rather than a guard's first use).
pub(crate) fn enabled() -> bool {
    platform::heavy_barrier_registered()
}

/// The records, newest first.
fn records() -> impl Iterator<Item = &'static Record> {
    // Acquire: pairs with the Release of the push, which published `next` and the atomics.
    let mut next: *const Record = head().load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: records are never freed, and `next` was set before the record's push.
        let record = unsafe { next.as_ref()? };
        next = record.next;
        Some(record)
    })
}

platform::process_wide! {
    /// The newest record. Under loom the list lives in the execution (each explored execution
    /// starts empty); the records of earlier executions are leaked, never touched again.
    fn head() -> &'static AtomicPtr<Record> = AtomicPtr::new(std::ptr::null_mut());
}

/// A free record (from a thread that exited) or a new one, stamped with the calling thread as
/// its owner. Under loom records are never given back, so the search for a free one is
/// skipped (its loads would only add branch points).
fn claim_record() -> &'static Record {
    let record: &'static Record = 'claim: {
        // Not even the list's head is loaded under loom.
        if !platform::LOOM {
            for record in records() {
                // Acquire: the exiting thread's last entry writes are seen (its entries stay
                // as they are; a leaked guard keeps its entry).
                if !record.in_use.load(Ordering::Relaxed)
                    && record
                        .in_use
                        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    break 'claim record;
                }
            }
        }
        let record: &'static mut Record = Box::leak(Box::new(Record {
            entries: std::array::from_fn(|_| AtomicU64::new(0)),
            waiters: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            in_use: AtomicBool::new(true),
            next: std::ptr::null(),
            handshake: Handshake::new(),
        }));
        let head = head();
        // Relaxed: the CAS below publishes.
        let mut cur = head.load(Ordering::Relaxed);
        loop {
            record.next = cur;
            // Release: publishes the record's fields to scanners (their Acquire load of the
            // head).
            match head.compare_exchange_weak(
                cur,
                record as *mut Record,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break 'claim record,
                Err(actual) => cur = actual,
            }
        }
    };
    // After the claim or the push, before any entry write: a signal barrier that does not
    // see this stamp is seen by this thread's guards (a SeqCst fence in `claim`).
    record.handshake.claim();
    record
}

/// This thread's record, claimed on first use. `None` where records are disabled. Under loom,
/// one record per model thread, never given back.
#[inline]
fn current_record() -> Option<&'static Record> {
    use std::cell::Cell;
    platform::per_thread! {
        /// Null before first use, `NONE` when this thread has no record, else the record.
        /// No destructor, so the fast path is one thread-pointer-relative load.
        static CURRENT: Cell<*const Record> = const { Cell::new(std::ptr::null()) };
    }
    #[cold]
    #[inline(never)]
    fn first_use() -> Option<&'static Record> {
        /// Gives the record back when the thread exits.
        struct Owner {
            record: Cell<Option<&'static Record>>,
            /// The entries that held a value when this thread claimed the record: guards
            /// leaked by an earlier owner, which is gone. They never change.
            inherited: Cell<u8>,
        }
        impl Drop for Owner {
            fn drop(&mut self) {
                if let Some(record) = self.record.get() {
                    // From now on this thread counts in the slots (another TLS destructor may
                    // still take guards).
                    CURRENT.with(|c| c.set(NONE));
                    if held(record) & !self.inherited.get() == 0 {
                        record.handshake.give_back();
                        // Release: the next owner sees this thread's entry writes.
                        record.in_use.store(false, Ordering::Release);
                    }
                    // Else this thread still holds a guard here: leaked, or to be dropped by a
                    // later TLS destructor, which writes the entry and reads `waiters`. The
                    // record stays in use, stamped with this thread, so that a signal barrier
                    // still reaches the thread; that barrier gives it back once the thread is
                    // gone (with `membarrier`, it stays in use).
                }
            }
        }
        /// The entries of `record` that hold a value, as a bit mask.
        fn held(record: &Record) -> u8 {
            const _: () = assert!(ENTRIES <= 8);
            // Relaxed: this thread's own writes, and values no other thread changes.
            (0..ENTRIES)
                .filter(|&i| record.entries[i].load(Ordering::Relaxed) != 0)
                .fold(0, |mask, i| mask | 1 << i)
        }
        /// Runs in the child of a `fork`, on the thread that forked: the child's only
        /// thread, with a new tid, stamped on its record for the signal barrier.
        extern "C" fn after_fork() {
            let p = CURRENT.with(Cell::get);
            if !p.is_null() && p != NONE {
                // SAFETY: a record pointer stored by `first_use`; records are never freed.
                unsafe { &*p }.handshake.after_fork();
            }
        }
        platform::per_thread! {
            static OWNER: Owner = const {
                Owner {
                    record: Cell::new(None),
                    inherited: Cell::new(0),
                }
            };
        }
        // No record if forks cannot be watched (only for lack of memory): a fork child could
        // not tell its records' owners apart, and the slots are always sound.
        let record = if enabled() && platform::watch_forks(after_fork) {
            if platform::LOOM {
                // No owner to give the record back at thread exit: under loom its loads
                // would only add branch points.
                Some(claim_record())
            } else {
                // During thread exit (OWNER already gone) no record is claimed.
                OWNER
                    .try_with(|owner| {
                        let record = claim_record();
                        owner.record.set(Some(record));
                        owner.inherited.set(held(record));
                        record
                    })
                    .ok()
            }
        } else {
            None
        };
        CURRENT.with(|c| c.set(record.map_or(NONE, |r| r as *const Record)));
        record
    }
    const NONE: *const Record = std::ptr::NonNull::<Record>::dangling().as_ptr();
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        return first_use();
    }
    if p == NONE {
        return None;
    }
    // SAFETY: a record pointer stored by `first_use`; records are never freed.
    Some(unsafe { &*p })
}

/// The record list, for the signal barrier, which signals the owner of every record.
pub(crate) struct RecordList;

impl platform::Owners for RecordList {
    /// Also called from the signal barrier's handler: it only loads atomics and the records'
    /// `next` (immutable once published), and allocates nothing.
    fn each(mut f: impl FnMut(&'static Handshake, &'static AtomicBool)) {
        for record in records() {
            f(&record.handshake, &record.in_use);
        }
    }
}

/// Drainers counted on `record` (an address from [`record_of_this_thread`]).
#[cfg(all(test, not(drainable_loom)))]
pub(crate) fn announced_on(record: usize) -> u32 {
    // SAFETY: records are never freed.
    unsafe { &*(record as *const Record) }
        .waiters
        .load(Ordering::Relaxed)
}

/// This thread's record, as an address (tests of other modules).
#[cfg(all(test, not(drainable_loom)))]
pub(crate) fn record_of_this_thread() -> Option<usize> {
    current_record().map(|r| r as *const Record as usize)
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    //! The records on their own, with a lifecycle word and an id: what the per-CPU counter
    //! makes of them (the slots, the tokens, the reports) is tested in `per_cpu/mod.rs`.

    use super::*;
    use crate::lifecycle::Closing;
    use std::thread;

    #[test]
    fn first_guards_use_the_free_entries() {
        if !enabled() {
            return; // no membarrier here: every guard is in the slots, tested elsewhere
        }
        let (word, id) = (Word::new(), platform::unique_id());
        // This test thread may have been given the record of an exited thread that leaked
        // guards (other tests do): those entries stay taken.
        let free = current_record()
            .unwrap()
            .entries
            .iter()
            .filter(|e| e.load(Ordering::Relaxed) == 0)
            .count();
        let holds: Vec<_> = (0..free + 2).map(|_| try_hold(id, &word)).collect();
        assert!(
            holds[free..].iter().all(Option::is_none),
            "past the free entries, the caller counts the guard elsewhere (the slots)"
        );
        assert_eq!(
            outstanding(id),
            free,
            "one entry per guard, up to the free ones"
        );
        for hold in holds.into_iter().flatten() {
            // SAFETY: taken above, given back once.
            unsafe { release(hold.unwrap()) };
        }
        assert_eq!(outstanding(id), 0);
    }

    #[test]
    fn a_record_goes_back_when_its_thread_exits_and_keeps_a_leaked_entry() {
        if !enabled() {
            return;
        }
        let (word, id) = (Word::new(), platform::unique_id());
        let record = thread::scope(|s| {
            s.spawn(|| {
                // Leaked: never given back.
                let _hold = try_hold(id, &word).unwrap().unwrap();
                current_record().unwrap() as *const Record as usize
            })
            .join()
            .unwrap()
        });
        // SAFETY: records are never freed.
        let record = unsafe { &*(record as *const Record) };
        // The thread is gone; another thread may already have claimed the record, but the
        // leaked entry stays: the drainable is never reported drained by mistake.
        assert_eq!(record.holds(id), 1);
        let (Closing::Began([]) | Closing::Joined) = word.close::<0>(Hold::Pending);
        let deadline = Some(Instant::now());
        assert_eq!(
            wait_released(id, &word, Hold::Pending, deadline, || true),
            Err(())
        );
        assert_eq!(outstanding(id), 1);
    }

    #[test]
    fn many_threads_share_the_records_they_leave() {
        if !enabled() {
            return;
        }
        let (word, id) = (Word::new(), platform::unique_id());
        for _ in 0..crate::test_support::iters(20, 3) {
            thread::scope(|s| {
                s.spawn(|| {
                    if let Some(hold) = try_hold(id, &word) {
                        // SAFETY: taken just above, given back once.
                        unsafe { release(hold.unwrap()) };
                    }
                });
            });
        }
        // Twenty threads one after another need far fewer than twenty new records (other tests
        // run at the same time, so the bound is loose).
        let records = records().count();
        assert!(
            records < 64,
            "{records} records: exited threads' records are not reused"
        );
    }
}
