//! [`GraceDomain`]: read sections ([`ReadSection`]) and the grace periods that wait for them
//! ([`GraceCookie`], [`GraceTimeoutError`]). The algorithm is in the module docs of `grace`.

#[cfg(doc)]
use super::GraceCell; // for the doc links
use super::deferred::{BATCH, Backlog, Retired};
use crate::counter::records::{self, LocalHold, RecordWait};
use crate::counter::slots::{self, Folding};
use crate::lifecycle::track;
use crate::lifecycle::word as state;
use crate::platform::{
    self, AtomicU32, AtomicU64, AtomicUsize, Block, Mutex, MutexGuard, Ordering, Park, Pending,
    Task, TaskWaiter,
};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A domain of read sections and the grace periods that wait for them (an SRCU domain, a
/// liburcu / folly / C++26 `rcu_domain`).
///
/// Readers [`enter`](Self::enter) a read section, lock-free, nestable, without ever waiting.
/// A writer that has unpublished something calls [`synchronize`](Self::synchronize): it
/// returns once every read section that began before the call has ended, so nothing those
/// readers could see is still in use. Sections that begin later never hold it up, so a steady
/// stream of readers cannot starve a writer.
///
/// One long read section delays every grace period of its domain. Give unrelated data their
/// own domains (each [`GraceCell::new`] does), or share one ([`GraceCell::with_domain`]) to
/// save memory and to let one grace period serve several cells.
///
/// # Costs
///
/// - [`enter`](Self::enter) / dropping the section, on Linux and Android: plain stores into
///   the calling thread's own record (the one [`PerCpuDrainable`](crate::PerCpuDrainable)'s
///   guards use) and two loads of the domain's phase; no locked instruction, no fence, no
///   shared line written. Where `membarrier` is missing, for a thread's fifth section held at
///   once, and for [`GraceCell::read_owned`] (which may end on another thread): one
///   uncontended CAS / `fetch_sub` on the current CPU's slot.
/// - A grace period: flips the phase, folds the old phase's slots (one read-modify-write per
///   slot), runs `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (once; a blocking waiter that
///   finds it not yet run may run its own; a system call that
///   interrupts every CPU running a thread of the process: under a microsecond idle, about
///   17 us with one busy reader on the 2-vCPU VM of `docs/benchmarks.md`), then waits (spin,
///   then futex) until the old phase's sections in the slots and on the records have ended.
///   Scanning the records costs a load per entry of every thread alive that has used one.
/// - **Frequent grace periods** (8 in a row, each within 100 us of the one before) send the
///   domain's new sections to the slots, where a grace period needs no `membarrier`; the first
///   grace period 1 ms after the one before sends them back to the records. So a writer that
///   replaces back to back pays about a microsecond per grace period, not the barrier, and its
///   readers a CAS per section meanwhile.
/// - Memory: inline, whatever the CPU count; plus 8 bytes per slot per phase in the per-CPU
///   arena, from the first section counted in that phase's slots on (slots: CPUs rounded up to
///   a power of two, at most 64).
///
/// # Example
///
/// ```
/// use drainable::GraceDomain;
/// use std::sync::atomic::{AtomicPtr, Ordering};
///
/// let domain = GraceDomain::new();
/// let config = AtomicPtr::new(Box::into_raw(Box::new(1u32)));
///
/// // A reader.
/// {
///     let _section = domain.enter();
///     // SAFETY: writers free a value only after a grace period that began after they
///     // unpublished it, and this section began before that.
///     let v = unsafe { *config.load(Ordering::Acquire) };
///     assert_eq!(v, 1);
/// }
///
/// // A writer: unpublish, wait out the readers, free.
/// let old = config.swap(Box::into_raw(Box::new(2)), Ordering::AcqRel);
/// domain.synchronize();
/// // SAFETY: no reader can still see `old`.
/// drop(unsafe { Box::from_raw(old) });
/// # drop(unsafe { Box::from_raw(config.into_inner()) });
/// ```
pub struct GraceDomain {
    /// What every read section reads, on lines of its own.
    read: ReadSide,
    /// The futex word: the in-flight grace period's token in the count field, and `WAITING`.
    word: state::Word,
    /// Grace periods completed. Only grows.
    completed: AtomicU64,
    /// `Steps::started`, for waiters outside the step lock: the number of the grace period in
    /// flight, or `completed` when none is.
    in_flight: AtomicU64,
    /// Grace-period bookkeeping and the backlog: one lock, so that a `retire` takes one.
    steps: Mutex<Steps>,
    /// The target of `backlog`'s oldest entry (`u64::MAX` when empty): lets `collect` skip the
    /// locks when nothing is due. Written under the step lock.
    backlog_front: AtomicU64,
    /// How many values `retire` lets wait at once (`with_backlog_limit`).
    backlog_limit: usize,
    /// Held by the one thread that takes ready values out of `backlog` until it has dropped
    /// them (see `deferred.rs`): `barrier` takes it to wait for drops in progress.
    dropping: Mutex<()>,
    /// The `platform::thread_token` of the thread holding `dropping`, or 0: lets a deferred
    /// `Drop` that calls `barrier` on its own domain panic instead of deadlocking.
    dropping_thread: AtomicUsize,
}

/// The part of a domain that every read section reads, aligned to lines of its own: the
/// writers' state (the locks, the backlog, the counts) is written by every `retire` and
/// `store`, and sharing a line with it would make a busy reader and a storing writer miss the
/// line on every call (measured: `store` with a reader busy on the other core, 2.1x `arc_swap`'s
/// with the fields mixed).
#[repr(align(64))]
struct ReadSide {
    /// Unique in the process: names the domain in its sections' tags, its cookies and the
    /// debug-build deadlock detector. Never changes.
    id: u64,
    /// Where new read sections go: bit 0 the phase, and `records::SLOTS_ONLY`.
    phase: AtomicU32,
    phases: [Folding; 2],
}

/// Grace-period bookkeeping, changed only under `GraceDomain::steps`.
struct Steps {
    /// Grace periods started. Equals `completed`, or `completed + 1` while one is in flight.
    started: u64,
    /// The highest grace-period number anyone asked for.
    wanted: u64,
    /// When the last grace period started (for the choice of where sections go).
    #[cfg_attr(drainable_loom, allow(dead_code))] // loom has no clock: `script`
    last_start: Option<Instant>,
    /// Grace periods in a row that started within `FREQUENT` of the one before.
    #[cfg_attr(drainable_loom, allow(dead_code))] // loom has no clock: `script`
    frequent: u32,
    /// Under loom: where sections go after each grace period (`with_mode_script`).
    #[cfg(drainable_loom)]
    script: &'static [bool],
    /// Values to drop once a grace period has completed (`retire`; `deferred.rs`).
    backlog: Backlog,
    /// The record last found holding a section the grace period in flight waits for: checked
    /// first by the next `finish_if_done`, so that calls made while one reader stays in its
    /// section (every `retire`, every poll) read one line rather than every record.
    blocker: Option<&'static records::Record>,
    /// The grace period in flight (`started`) flipped the phase but its heavy barrier has not
    /// completed yet: no scan of the records is valid, so it cannot complete. Paid outside the
    /// step lock by the next caller that can (`GraceDomain::advance`).
    barrier_owed: bool,
    /// Threads running an owed barrier right now (outside the lock): a caller that must not
    /// block leaves the debt to them rather than run a barrier of its own.
    paying: u32,
}

/// How long a caller that must not block lets a grace period's heavy barrier wait (only the
/// signal barrier, where `membarrier` was refused, ever waits: for each thread's
/// acknowledgement; it checks every 10 ms, so a failing attempt takes up to about 10 ms). Past
/// it, the barrier stays owed to a later call.
const BARRIER_SLICE: Duration = Duration::from_millis(1);

/// Grace periods that start closer together than this are *frequent*.
#[cfg_attr(drainable_loom, allow(dead_code))] // loom has no clock: `script`
const FREQUENT: Duration = Duration::from_micros(100);
/// After this many frequent grace periods in a row, sections go to the slots.
#[cfg_attr(drainable_loom, allow(dead_code))] // loom has no clock: `script`
const SWITCH_AFTER: u32 = 8;
/// A grace period that starts this long after the one before sends sections back to the
/// records.
#[cfg_attr(drainable_loom, allow(dead_code))] // loom has no clock: `script`
const QUIET: Duration = Duration::from_millis(1);

impl Steps {
    /// Where the sections of the domain go from the grace period starting now on: `true` for
    /// the slots (`docs/design.md` §7a, *the hybrid*). Each grace period on the records costs a
    /// `membarrier`, which interrupts every CPU running a thread of the process (about 17 us
    /// with one busy reader on the 2-vCPU machine of `docs/benchmarks.md`); a section in the
    /// slots costs a CAS instead of plain stores. So frequent grace periods move the readers
    /// to the slots, and a quiet spell brings them back.
    fn choose_slots_only(&mut self, slots_only_now: bool) -> bool {
        #[cfg(drainable_loom)]
        {
            let _ = slots_only_now;
            // `started` is not bumped yet: grace period `started + 1` starts.
            self.script
                .get(self.started as usize)
                .copied()
                .unwrap_or(false)
        }
        #[cfg(not(drainable_loom))]
        {
            if !records::enabled() {
                return false; // every section is in the slots anyway
            }
            let now = Instant::now();
            let gap = self.last_start.map(|t| now.saturating_duration_since(t));
            self.last_start = Some(now);
            if gap.is_some_and(|g| g < FREQUENT) {
                self.frequent = self.frequent.saturating_add(1);
            } else {
                self.frequent = 0;
            }
            if slots_only_now {
                gap.is_some_and(|g| g < QUIET)
            } else {
                self.frequent >= SWITCH_AFTER
            }
        }
    }
}

/// A grace period to wait for without blocking, from [`GraceDomain::start_grace_period`].
///
/// A cookie names its domain as well as the grace period: only the domain that issued it
/// can answer for it, and [`GraceDomain::poll_grace_period`] panics when handed another
/// domain's cookie (a grace period of one domain says nothing about the readers of another).
///
/// Ordered: of two cookies of one domain, the later one's grace period ends no earlier.
/// Cookies of different domains compare by domain first, which means nothing but keeps them
/// usable as keys.
///
/// ```
/// let d = drainable::GraceDomain::new();
/// let a = d.start_grace_period();
/// let b = d.start_grace_period();
/// assert!(a <= b);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GraceCookie {
    /// The issuing domain's id.
    domain: u64,
    /// The grace period's number in that domain.
    number: u64,
}

/// The error of [`GraceDomain::synchronize_timeout`]: read sections that began before the call
/// were still running at the deadline.
///
/// ```
/// use drainable::GraceDomain;
/// use std::time::Duration;
///
/// let d = GraceDomain::new();
/// let section = d.enter();
/// std::thread::scope(|s| {
///     let err = s.spawn(|| d.synchronize_timeout(Duration::ZERO)).join().unwrap().unwrap_err();
///     assert_eq!(err.to_string(), "grace period timed out with read sections still running");
/// });
/// drop(section);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceTimeoutError(());

impl fmt::Display for GraceTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("grace period timed out with read sections still running")
    }
}

impl std::error::Error for GraceTimeoutError {}

impl Default for GraceDomain {
    /// Same as [`GraceDomain::new`].
    ///
    /// ```
    /// let d: drainable::GraceDomain = Default::default();
    /// d.synchronize();
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl GraceDomain {
    /// Creates a domain with no read section and no grace period in flight. Allocates
    /// nothing: each phase takes its per-CPU slots from the arena at its first read section.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// drop(d.enter());
    /// ```
    pub fn new() -> Self {
        // Registers `membarrier` now, if at all, so that no section's first use pays for it.
        records::enabled();
        GraceDomain {
            read: ReadSide {
                id: crate::platform::unique_id(),
                phase: AtomicU32::new(0),
                // Phase 0 is current; phase 1 stays folded until the first grace period.
                phases: [Folding::new(), Folding::new_folded()],
            },
            word: state::Word::new(),
            completed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            steps: Mutex::new(Steps {
                started: 0,
                wanted: 0,
                last_start: None,
                frequent: 0,
                #[cfg(drainable_loom)]
                script: &[],
                backlog: Backlog::new(),
                blocker: None,
                barrier_owed: false,
                paying: 0,
            }),
            backlog_front: AtomicU64::new(u64::MAX),
            backlog_limit: Self::DEFAULT_BACKLOG_LIMIT,
            dropping: Mutex::new(()),
            dropping_thread: AtomicUsize::new(0),
        }
    }

    /// How many retired values a domain from [`new`](Self::new) lets wait for their grace
    /// period at once (see [`retire`](Self::retire)).
    ///
    /// ```
    /// assert_eq!(drainable::GraceDomain::DEFAULT_BACKLOG_LIMIT, 1024);
    /// ```
    pub const DEFAULT_BACKLOG_LIMIT: usize = 1024;

    /// A model-checking aid (only under `--cfg drainable_loom`, where there is no clock): the
    /// domain sends its sections to the slots after grace period *n* (1-based) iff
    /// `script[n - 1]`, and to the records after the script ends. A domain from `new` stays on
    /// the records.
    #[cfg(drainable_loom)]
    #[doc(hidden)]
    pub fn with_mode_script(script: &'static [bool]) -> Self {
        let d = Self::new();
        d.steps.lock().script = script;
        d
    }

    /// A domain whose backlog of deferred drops holds at most `limit` values: a
    /// [`retire`](Self::retire) (or [`GraceCell::store`]) that finds `limit` values waiting
    /// first waits, as [`barrier`](Self::barrier) does, until they have been dropped.
    ///
    /// # Panics
    ///
    /// If `limit` is 0.
    ///
    /// ```
    /// let d = drainable::GraceDomain::with_backlog_limit(1);
    /// d.retire(String::from("a"));
    /// d.retire(String::from("b")); // at the limit: "a" is dropped first, once no reader can
    ///                              // see it (here, with no reader, "a" already went at once)
    /// assert!(d.backlog() <= 1);
    /// ```
    pub fn with_backlog_limit(limit: usize) -> Self {
        assert!(
            limit > 0,
            "drainable: a GraceDomain's backlog limit must be at least 1"
        );
        GraceDomain {
            backlog_limit: limit,
            ..Self::new()
        }
    }

    /// Enters a read section, which lasts until the returned guard is dropped. Never waits for
    /// a writer and never fails; nestable (each nested section counts on its own).
    ///
    /// **The fast path** (Linux and Android, a thread holding fewer than four sections and
    /// per-CPU guards at once): stores the domain's tag into a free entry of the thread's
    /// record, then re-reads the phase with `Acquire` (moving the entry if a grace period
    /// flipped it meanwhile); dropping the section stores 0 and reads the record's waiter
    /// count. No read-modify-write, no fence: the grace period pays with `membarrier`.
    ///
    /// **Otherwise**: one `Acquire` load and one CAS on the current CPU's slot (retried only if
    /// a grace period flipped the phase at that very moment). The first section of each phase
    /// counted in the slots takes them from the arena under the step lock (held only for
    /// bounded passes over the slots): briefly blocking, twice per domain.
    ///
    /// A thread's first section (or per-CPU guard) claims its record: an allocation, once per
    /// thread. The load that decides the phase *acquires* the phase flip, so a section sees
    /// everything a writer published before the grace period it is not waited for.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// let outer = d.enter();
    /// let inner = d.enter(); // nested sections are fine
    /// drop((inner, outer));
    /// ```
    #[inline]
    #[must_use = "a read section ends when its guard is dropped"]
    pub fn enter(&self) -> ReadSection<'_> {
        let place = match records::try_enter(self.read.id, &self.read.phase) {
            Some(hold) => Place::Local(hold),
            None => self.enter_slots(),
        };
        track::acquired(self.read.id);
        ReadSection {
            domain: NonNull::from(self),
            place,
            _borrow: PhantomData,
        }
    }

    /// A section counted in the per-CPU slots: no record on this thread, or its entries taken.
    #[cold]
    #[inline(never)]
    fn enter_slots(&self) -> Place {
        let (phase, slot) = self.enter_raw();
        Place::Slot { phase, slot }
    }

    /// Enters a section that is not tied to a thread (the debug-build detector does not track
    /// it): its phase and slot, to give to [`leave_raw`](Self::leave_raw) once, on any thread.
    #[inline]
    pub(crate) fn enter_raw(&self) -> (u32, u32) {
        loop {
            // Acquire: pairs with the flip's Release (writer's publish → reader).
            let phase = self.read.phase.load(Ordering::Acquire) as usize & 1;
            match self.read.phases[phase].try_increment() {
                Ok(slot) => return (phase as u32, slot),
                // The phase's first section: give it its slots, under the step lock that
                // orders its folds and unfolds, then retry.
                Err(slots::NO_SLOTS) => self.install_slots(phase),
                // The slot is folded: a grace period flipped the phase after our load. Retry.
                Err(_) => platform::spin_hint(),
            }
        }
    }

    /// Gives phase `phase` its per-CPU slots, in its current fold state, under the step lock
    /// (which every fold and unfold of a phase holds).
    #[cold]
    #[inline(never)]
    fn install_slots(&self, phase: usize) {
        let _steps = self.lock_steps();
        self.read.phases[phase].install();
    }

    /// Ends a section from [`enter_raw`](Self::enter_raw).
    ///
    /// # Safety
    /// `domain` is live, and the caller owns the section `(phase, slot)` entered on it, ended
    /// here once. No reference to the domain is held across the decrement.
    #[inline]
    pub(crate) unsafe fn leave_raw(domain: *const GraceDomain, phase: u32, slot: u32) {
        // SAFETY: the caller keeps the domain live; `addr_of!` reaches the fields without a
        // reference across the decrement.
        let (phases, word) = unsafe {
            (
                std::ptr::addr_of!((*domain).read.phases) as *const Folding,
                std::ptr::addr_of!((*domain).word),
            )
        };
        // SAFETY: the caller owns one count on slot `slot` of phase `phase`, given back once.
        unsafe { Folding::decrement(phases.add(phase as usize), slot, word) };
    }

    /// Waits until every read section that began before this call has ended.
    ///
    /// Blocking: spins briefly, then sleeps on a futex until the last section of the old phase
    /// ends. Shares grace periods with concurrent callers. Sections that begin after the grace
    /// period it waits for has started never hold it up.
    ///
    /// Everything done inside those sections happens-before this returns.
    ///
    /// # Panics
    ///
    /// In builds with `debug_assertions`, if the calling thread is inside a read section of
    /// this domain (it would wait for itself forever).
    ///
    /// ```
    /// use drainable::GraceDomain;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// let d = GraceDomain::new();
    /// let done = AtomicBool::new(false);
    /// std::thread::scope(|s| {
    ///     let (tx, rx) = std::sync::mpsc::channel();
    ///     let (d, done) = (&d, &done);
    ///     s.spawn(move || {
    ///         let _section = d.enter();
    ///         tx.send(()).unwrap();
    ///         done.store(true, Ordering::Relaxed);
    ///     });
    ///     rx.recv().unwrap(); // the reader is inside
    ///     d.synchronize(); // waits for it
    ///     assert!(done.load(Ordering::Relaxed));
    /// });
    /// ```
    pub fn synchronize(&self) {
        track::assert_not_held(self.read.id, "GraceDomain::synchronize");
        let done = self.wait_for(self.start_grace_period(), None);
        debug_assert!(done);
    }

    /// Like [`synchronize`](Self::synchronize), but gives up at the deadline. The grace period
    /// stays requested: a later call or poll completes it.
    ///
    /// # Errors
    ///
    /// [`GraceTimeoutError`] if sections that began before the call were still running at the
    /// deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// let d = drainable::GraceDomain::new();
    /// assert!(d.synchronize_timeout(Duration::from_secs(1)).is_ok());
    /// ```
    pub fn synchronize_timeout(&self, timeout: Duration) -> Result<(), GraceTimeoutError> {
        let cookie = self.start_grace_period();
        if self.wait_for(cookie, Instant::now().checked_add(timeout)) {
            Ok(())
        } else {
            Err(GraceTimeoutError(()))
        }
    }

    /// Asks for a grace period covering every read section that began before this call, and
    /// returns a cookie to [`poll`](Self::poll_grace_period) without blocking (SRCU's
    /// `start_poll_synchronize_srcu`). Never waits for readers: takes the domain's step lock
    /// for a bounded pass over the slots and, when it starts a grace period, runs its
    /// `membarrier` (a system call; where `membarrier` was refused and the signal barrier
    /// replaces it, waits up to about 10 ms for other threads' acknowledgements, then leaves the
    /// barrier to a later call; a barrier another thread is already running is left to it).
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// let cookie = d.start_grace_period();
    /// assert!(d.poll_grace_period(cookie)); // no reader: done at once
    /// ```
    #[must_use = "the cookie is the only way to ask whether this grace period has ended"]
    pub fn start_grace_period(&self) -> GraceCookie {
        let mut steps = self.lock_steps();
        self.finish_if_done(&mut steps);
        // A grace period in flight started before this call and may have missed sections that
        // began since; the one after it is needed.
        let target = steps.started + 1;
        steps.wanted = steps.wanted.max(target);
        self.advance(steps, slice(), true);
        self.collect();
        GraceCookie {
            domain: self.read.id,
            number: target,
        }
    }

    /// Whether the grace period of `cookie` has ended. Never waits for readers: if the one in
    /// flight is done it completes it (and starts the next one asked for, as
    /// [`start_grace_period`](Self::start_grace_period) does), under the step lock when that is
    /// free. After `true`, every section the cookie covers has ended and happens-before.
    ///
    /// # Panics
    ///
    /// If `cookie` was issued by another domain.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// let section = d.enter();
    /// let cookie = std::thread::scope(|s| s.spawn(|| d.start_grace_period()).join().unwrap());
    /// assert!(!d.poll_grace_period(cookie)); // the section is still running
    /// drop(section);
    /// assert!(d.poll_grace_period(cookie));
    /// ```
    pub fn poll_grace_period(&self, cookie: GraceCookie) -> bool {
        self.poll_inner(cookie, true)
    }

    /// `poll_grace_period`; without `pay`, an owed barrier is left to the caller's own
    /// `advance` (`wait_for`, `poll_for`: they pay it with their own deadline next), so that one
    /// call does not run two failing barriers.
    fn poll_inner(&self, cookie: GraceCookie, pay: bool) -> bool {
        if cookie.domain != self.read.id {
            foreign_cookie(cookie.domain, self.read.id);
        }
        // Acquire: pairs with the Release that counted the grace period complete.
        if self.completed.load(Ordering::Acquire) >= cookie.number {
            // Another thread completed it: drops it made due may still wait for a caller.
            self.collect();
            return true;
        }
        if let Some(mut steps) = self.try_lock_steps() {
            if pay {
                self.advance(steps, slice(), true);
            } else {
                self.finish_if_done(&mut steps);
                self.start_if_wanted(&mut steps);
            }
        }
        self.collect();
        self.completed.load(Ordering::Acquire) >= cookie.number
    }

    /// The task form of waiting for `cookie` (see [`wait_for`](Self::wait_for)): `Ready` once
    /// its grace period has ended, else files the task's waker under the domain's word (whose
    /// token the last section of the old phase gives back, waking it) and `Pending`.
    pub(crate) fn poll_for(
        &self,
        cookie: GraceCookie,
        wait: &mut GraceWait,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if self.poll_inner(cookie, false) {
                // Off the records: left announced, every release on that record would pay a
                // wake until the future is dropped.
                wait.records.withdraw();
                return Poll::Ready(());
            }
            let mut park = Task {
                waiter: &mut wait.waiter,
                cx,
            };
            // First the sections counted in the slots (their token), then those on the
            // records, as `wait_for` does.
            if self.word.wait_zero_with(None, &mut park) == Err(Pending) {
                wait.records.withdraw();
                return Poll::Pending;
            }
            if self.wait_records(None, &mut park, &mut wait.records) == Err(Pending) {
                return Poll::Pending;
            }
            if !self.advance(self.lock_steps(), park.barrier_deadline(None), false) {
                // The signal barrier gave up at the task's slice: poll again.
                let _ = park.barrier_gave_up(); // wakes the task: `Err` for a task
                return Poll::Pending;
            }
        }
    }

    /// A task that polled [`poll_for`](Self::poll_for) into `Pending` gives up: takes
    /// `WAITING` down, as a timed-out wait does.
    pub(crate) fn stop_waiting(&self) {
        self.word.stop_waiting();
    }

    /// Drops `value` once every read section that could see it has ended: the
    /// deferred form of [`synchronize`](Self::synchronize) followed by `drop` (liburcu's
    /// `call_rcu`, folly's and C++26's `rcu_retire`, crossbeam-epoch's `defer_destroy`).
    /// Call it after unpublishing `value`, so that sections that begin later cannot find it.
    ///
    /// **When and where the drop runs.** Retired values wait in the domain's *backlog* in
    /// batches: a batch of up to 32 values shares one grace period, asked for when the batch is
    /// full (or by any [`synchronize`](Self::synchronize), [`barrier`](Self::barrier) or
    /// [`start_grace_period`](Self::start_grace_period) meanwhile). A value is dropped by the
    /// first call on the domain that finds its grace period ended (the `retire` that filled the
    /// batch itself, when no reader holds the grace period up): `retire`,
    /// [`GraceCell::store`], `start_grace_period`, [`poll_grace_period`](Self::poll_grace_period),
    /// `synchronize` and the futures, or `barrier`, on that caller's thread, outside the domain's
    /// step lock; or when the domain is dropped. Reads never run drops. There is no
    /// background thread: a domain nobody calls keeps its backlog until
    /// [`barrier`](Self::barrier) or its own drop. A `Drop` that runs here may use the domain
    /// (retire more values, synchronize) but not call `barrier` on it (that panics); a panic in
    /// it unwinds out of the call that ran it, and the values of its batch not yet dropped are
    /// dropped during that unwind.
    ///
    /// **The bound.** At most [`backlog limit`](Self::with_backlog_limit) values
    /// ([`DEFAULT_BACKLOG_LIMIT`](Self::DEFAULT_BACKLOG_LIMIT), 1024) wait at once. A `retire`
    /// that finds the backlog full *waits*, as `barrier` does: for a grace period, which a
    /// stalled reader holds up (helping cannot free what a reader may still see), then drops
    /// the ready values itself before it queues `value`. Two callers must not block and so
    /// queue past the limit: a `retire` from inside a deferred `Drop` of the same domain, and
    /// the drop of a cancelled [`replace_async`](GraceCell::replace_async) future (one value
    /// per future). [`heap_bytes`](Self::heap_bytes) counts the backlog.
    ///
    /// Cost: the step lock (uncontended, short), and per batch one grace period's start (a fold
    /// of the slots, and a `membarrier` unless frequent grace periods have sent the readers to
    /// the slots: see [`start_grace_period`](Self::start_grace_period)), and the drops that are
    /// due. `T: Send + 'static`, since the drop may run on any
    /// thread, at any later time.
    ///
    /// # Panics
    ///
    /// In builds with `debug_assertions`, if the calling thread is inside a read section of
    /// this domain: a full backlog would make it wait for itself.
    ///
    /// ```
    /// use drainable::GraceDomain;
    /// use std::sync::Arc;
    ///
    /// let domain = GraceDomain::new();
    /// let table = Arc::new(vec![1, 2, 3]);
    /// // Drop this reference only once the readers that may use it (through raw pointers
    /// // published elsewhere, say) have left; the caller goes on at once.
    /// domain.retire(Arc::clone(&table));
    /// domain.barrier(); // dropped now
    /// assert_eq!(Arc::strong_count(&table), 1);
    /// ```
    ///
    /// For a value behind a raw pointer that readers load, use
    /// [`retire_raw`](Self::retire_raw).
    pub fn retire<T: Send + 'static>(&self, value: T) {
        track::assert_not_held(self.read.id, "GraceDomain::retire");
        self.defer(Retired::new(value), true);
    }

    /// [`retire`](Self::retire) of the box behind a raw pointer that readers may still be
    /// reading (crossbeam-epoch's `defer_destroy`): once every section that could see it has
    /// ended, the domain rebuilds the `Box<T>` and drops it. Prefer this to
    /// `retire(Box::from_raw(ptr))`: a `Box` claims unique access to its contents from the
    /// moment it exists, which readers still inside their sections contradict (Miri's Stacked
    /// Borrows reports it); here the box exists only after the grace period.
    ///
    /// Blocking, ordering and panics as [`retire`](Self::retire).
    ///
    /// # Safety
    ///
    /// `ptr` comes from `Box::<T>::into_raw`, has been unpublished (sections that begin after
    /// this call cannot find it), and the caller gives its ownership to the domain: nothing else
    /// frees it or writes through it.
    ///
    /// ```
    /// use drainable::GraceDomain;
    /// use std::sync::atomic::{AtomicPtr, Ordering};
    ///
    /// let domain = GraceDomain::new();
    /// let config = AtomicPtr::new(Box::into_raw(Box::new(String::from("v1"))));
    /// let old = config.swap(Box::into_raw(Box::new("v2".into())), Ordering::AcqRel);
    /// // SAFETY: from `Box::into_raw`, unpublished by the swap, and ours alone to free.
    /// unsafe { domain.retire_raw(old) };
    /// domain.barrier(); // "v1" has been dropped
    /// # drop(unsafe { Box::from_raw(config.into_inner()) });
    /// ```
    pub unsafe fn retire_raw<T: Send + 'static>(&self, ptr: *mut T) {
        track::assert_not_held(self.read.id, "GraceDomain::retire_raw");
        // SAFETY: the caller's contract is `Retired::from_raw`'s.
        self.defer(unsafe { Retired::from_raw(ptr) }, true);
    }

    /// [`retire_raw`](Self::retire_raw) for `GraceCell::store`, which has done the checks.
    pub(super) fn retire_unchecked(&self, value: Retired) {
        self.defer(value, true);
    }

    /// Hands `value` to the domain without ever waiting, even over the backlog limit: for the
    /// drop of a cancelled future (`GraceCell::replace_async`). The value must have been
    /// unpublished before this call.
    pub(crate) fn defer_drop(&self, value: Retired) {
        self.defer(value, false);
    }

    /// Queues `value` for the first grace period that starts after this call (see
    /// `deferred.rs`). With `may_wait`, a full backlog is emptied first (as by `barrier`),
    /// unless this thread is running the domain's deferred drops.
    fn defer(&self, value: Retired, may_wait: bool) {
        let may_wait = may_wait && !self.running_drops_here();
        let mut value = Some(value);
        loop {
            let mut steps = self.lock_steps();
            self.finish_if_done(&mut steps);
            // The first grace period to start after this point, so after the caller
            // unpublished the value: it waits for every section that could see it. Read under
            // the step lock, which every start holds, so targets never decrease.
            let target = steps.started + 1;
            if may_wait && steps.backlog.len() >= self.backlog_limit {
                drop(steps);
                self.empty_backlog();
                continue;
            }
            let open = steps
                .backlog
                .push(target, value.take().expect("pushed once"));
            let len = steps.backlog.len();
            // Relaxed: a hint for `collect`, written under the step lock.
            self.backlog_front
                .store(steps.backlog.front_target(), Ordering::Relaxed);
            // A full batch asks for its grace period; so does a value that must not wait (a
            // cancelled future's, rare: its drop should not wait for a batch to fill).
            if !may_wait || open >= BATCH.min(self.backlog_limit) || len >= self.backlog_limit {
                steps.wanted = steps.wanted.max(target);
            }
            self.advance(steps, slice(), true);
            self.collect();
            return;
        }
    }

    /// Whether the calling thread holds `dropping` (is inside a deferred `Drop` of this
    /// domain). Never true under loom, where thread tokens are 0.
    fn running_drops_here(&self) -> bool {
        let me = platform::thread_token();
        // Relaxed: only this thread stores its own token, so reading it back means it holds the
        // drop lock now (it clears the token before unlocking).
        me != 0 && self.dropping_thread.load(Ordering::Relaxed) == me
    }

    /// Drops the deferred values whose grace period has ended, unless another thread is
    /// dropping some right now (it will be back for more on a later call).
    fn collect(&self) {
        // Relaxed, both: a hint; a stale value only delays a drop to a later call (`barrier`
        // and a full backlog do not use it). `drop_ready` loads `completed` again, `Acquire`.
        if self.completed.load(Ordering::Relaxed) < self.backlog_front.load(Ordering::Relaxed) {
            return;
        }
        if let Some(dropping) = self.dropping.try_lock() {
            self.drop_ready(dropping);
        }
    }

    /// Takes the ready values out of the backlog and drops them, holding the drop lock
    /// (`dropping`) until the last drop has run.
    fn drop_ready(&self, dropping: MutexGuard<'_, ()>) {
        // Acquire: pairs with the Release that counted the grace period complete
        // (`finish_if_done`), so every access of the sections it waited for happens-before the
        // drops.
        let completed = self.completed.load(Ordering::Acquire);
        let ready = {
            let mut steps = self.lock_steps();
            let ready = steps.backlog.take_ready(completed);
            // Relaxed: as in `defer`.
            self.backlog_front
                .store(steps.backlog.front_target(), Ordering::Relaxed);
            ready
        };
        if ready.is_empty() {
            return;
        }
        let _running = RunningDrops::enter(&self.dropping_thread, dropping);
        // Outside the backlog and step locks: a value's drop may use the domain.
        drop(ready);
    }

    /// Waits until every value retired before this call has been dropped, by whichever thread
    /// ran its drop (liburcu's `rcu_barrier`). Use it before tearing down what the deferred
    /// `Drop`s need (a thread pool, a library about to be unloaded), or in tests.
    ///
    /// Blocking: returns at once if the backlog is empty and no drop is running; else waits
    /// for one grace period (as [`synchronize`](Self::synchronize)), then for a deferred drop
    /// running on another thread, then runs the due drops itself, on this thread. Values
    /// retired during the call may or may not be dropped by it.
    ///
    /// # Panics
    ///
    /// If called from a deferred `Drop` running on this domain (it would wait for itself); in
    /// builds with `debug_assertions`, also if the calling thread is inside a read section of
    /// this domain.
    ///
    /// ```
    /// use drainable::GraceCell;
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// struct Flag(Arc<AtomicBool>);
    /// impl Drop for Flag {
    ///     fn drop(&mut self) { self.0.store(true, Ordering::Relaxed) }
    /// }
    /// let dropped = Arc::new(AtomicBool::new(false));
    /// let cell = GraceCell::new(Flag(Arc::clone(&dropped)));
    /// cell.store(Flag(Arc::new(AtomicBool::new(false)))); // retires the first Flag
    /// cell.domain().barrier();
    /// assert!(dropped.load(Ordering::Relaxed));
    /// ```
    pub fn barrier(&self) {
        if self.running_drops_here() {
            barrier_in_drop();
        }
        track::assert_not_held(self.read.id, "GraceDomain::barrier");
        {
            let _dropping = self.dropping.lock();
            if self.lock_steps().backlog.len() == 0 {
                // Every value retired before the call was taken by a collector, and the drop
                // lock we hold says that collector has finished.
                return;
            }
        }
        self.empty_backlog();
    }

    /// The body of `barrier` (and of a `retire` that found the backlog full): a grace period
    /// that starts after this call, then the drops, under the drop lock.
    fn empty_backlog(&self) {
        let done = self.wait_for(self.start_grace_period(), None);
        debug_assert!(done);
        // Every value queued before this call waits for a grace period no later than the one
        // just completed. Blocking: a collector on another thread may be dropping some.
        let dropping = self.dropping.lock();
        self.drop_ready(dropping);
    }

    /// How many retired values wait for their grace period (a snapshot).
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// d.retire(vec![1, 2, 3]);
    /// assert_eq!(d.backlog(), 1); // a batch asks for its grace period when it is full
    /// d.barrier();
    /// assert_eq!(d.backlog(), 0);
    /// ```
    pub fn backlog(&self) -> usize {
        self.lock_steps().backlog.len()
    }

    /// Blocks until `cookie`'s grace period ended, or until the deadline. Returns whether it
    /// ended.
    fn wait_for(&self, cookie: GraceCookie, deadline: Option<Instant>) -> bool {
        loop {
            if self.poll_inner(cookie, false) {
                return true;
            }
            // The sections of the in-flight grace period counted in the slots: their token.
            if !self.word.wait_zero(deadline) {
                return self.poll_inner(cookie, false);
            }
            // Those on the threads' records.
            let Ok(clear) =
                self.wait_records(deadline, &mut Block, &mut RecordWait::after_barrier());
            if !clear {
                return self.poll_inner(cookie, false);
            }
            // The in-flight grace period's sections are gone (or its barrier is still owed).
            // Complete it under the step lock (another thread may hold it briefly, doing the
            // same), paying a barrier owed with this caller's deadline.
            if !self.advance(self.lock_steps(), deadline, false) {
                return self.poll_inner(cookie, false);
            }
        }
    }

    /// Completes the grace period in flight if it is done and starts the next one asked for,
    /// as often as that succeeds; a start's heavy barrier runs here, *outside* the step lock
    /// (which a section may need: `install_slots`), until `deadline`. Returns `false` only if a
    /// barrier gave up at the deadline (it stays owed, to the next call).
    ///
    /// With `share` (a caller that must not block), a barrier that another thread is already
    /// running is left to it: one barrier per grace period, not one per concurrent writer.
    fn advance<'a>(
        &'a self,
        mut steps: MutexGuard<'a, Steps>,
        deadline: Option<Instant>,
        share: bool,
    ) -> bool {
        loop {
            self.finish_if_done(&mut steps);
            let before = steps.started;
            self.start_if_wanted(&mut steps);
            if !steps.barrier_owed {
                if steps.started != before {
                    // Just started, with no barrier to pay (slots to slots, or no records): it
                    // may be over already (no reader in the way).
                    continue;
                }
                return true;
            }
            if share && steps.paying > 0 {
                return true;
            }
            let number = steps.started;
            steps.paying += 1;
            drop(steps);
            // After the flip of grace period `number` (made under the lock we held), so it is
            // that grace period's barrier whichever thread runs it; several may, harmlessly.
            let paid = records::grace_barrier(deadline).is_ok();
            steps = self.lock_steps();
            steps.paying -= 1;
            if !paid {
                return false;
            }
            if steps.barrier_owed && steps.started == number {
                steps.barrier_owed = false;
                // Release: a waiter that reads this number scans the records after the
                // barrier (in happens-before), as `finish_if_done` does through the step lock.
                self.in_flight.store(number, Ordering::Release);
            }
        }
    }

    /// Completes the in-flight grace period if its old phase has emptied.
    fn finish_if_done(&self, steps: &mut Steps) {
        let completed = self.completed.load(Ordering::Relaxed);
        // Acquire: the token release (release → waiter) brings the sections' accesses.
        if steps.started == completed
            || steps.barrier_owed
            || state::count(self.word.load(Ordering::Acquire)) != 0
            || !self.records_clear(steps, completed)
        {
            return;
        }
        // Every section of the old phase has ended. Its slots stay folded until a grace period
        // makes it current again (see the module docs).
        // Release: pollers that see the new count see the sections' accesses too.
        self.completed.store(completed + 1, Ordering::Release);
    }

    /// Starts a grace period if none is in flight and one is wanted.
    fn start_if_wanted(&self, steps: &mut Steps) {
        if steps.started != self.completed.load(Ordering::Relaxed) || steps.started >= steps.wanted
        {
            return;
        }
        let word = self.read.phase.load(Ordering::Relaxed);
        let old = word & 1;
        let slots_only_before = word & records::SLOTS_ONLY != 0;
        let slots_only = steps.choose_slots_only(slots_only_before);
        // Reopen the new phase: it is empty (its last grace period completed) and folded.
        // Release, in `unfold`: a slow section that read `phase` long ago and only now reaches
        // this phase's slot acquires this, so it sees what writers published before asking for
        // this grace period.
        self.read.phases[(old ^ 1) as usize].unfold(&self.word);
        // Release: sections that read the new phase see what writers published before asking
        // for this grace period (writer's publish → reader).
        let mode = if slots_only { records::SLOTS_ONLY } else { 0 };
        self.read.phase.store((old ^ 1) | mode, Ordering::Release);
        // The token the fold gives back once the old phase is empty.
        let token = self.word.add_token();
        self.read.phases[old as usize].fold(&self.word, token);
        steps.started += 1;
        // After the flip, before any scan of the records for the old phase, the heavy barrier:
        // then every section on a record that read the old phase at its re-read is visible to
        // the scans, and every later one sees the flip (`records::try_enter`). It is a system
        // call (the signal barrier, where `membarrier` is refused, waits for each thread's
        // acknowledgement), so it runs outside the step lock: owed here, paid by `advance`.
        //
        // Skipped only when sections went to the slots before this flip and still do: then the
        // only sections on records are those that the barrier of the grace period that sent
        // them to the slots found (every later one saw `SLOTS_ONLY` at its re-read and left),
        // and the scans see them without a barrier (docs/design.md §7a).
        if !(slots_only_before && slots_only) && records::enabled() {
            steps.barrier_owed = true;
        } else {
            // Release: as in `advance`.
            self.in_flight.store(steps.started, Ordering::Release);
        }
    }

    /// Whether no record holds a section of the phase that grace period `completed + 1` (in
    /// flight) waits for. Called by `finish_if_done` under the step lock once the barrier is no
    /// longer owed: after the heavy barrier that `advance` ran after the flip, in
    /// happens-before (the step lock), which is all the scan needs (a `SeqCst` fence ordered
    /// before the scan by happens-before orders it, in C++20's model, which loom checks); or,
    /// from slots to slots, where no barrier is needed (docs/design.md §7a).
    fn records_clear(&self, steps: &mut Steps, completed: u64) -> bool {
        let tag = Self::old_tag(self.read.id, completed);
        steps.blocker = records::first_holding(tag, steps.blocker);
        steps.blocker.is_none()
    }

    /// The tag of the sections grace period `completed + 1` waits for: it flipped the phase
    /// from `completed & 1` (the first one, from phase 0 to 1).
    fn old_tag(id: u64, completed: u64) -> u64 {
        records::section_tag(id, (completed & 1) as u32)
    }

    /// Waits until no record holds a section of the phase that the grace period in flight
    /// waits for, or until that grace period is over, or `deadline` (`Ok(false)`). Returns at
    /// once when none is in flight. A thread spins first: sections are short, and announcing
    /// itself on a record costs a heavy barrier.
    fn wait_records<P: Park>(
        &self,
        deadline: Option<Instant>,
        park: &mut P,
        progress: &mut RecordWait,
    ) -> Result<bool, P::Pending> {
        if !records::enabled() {
            return Ok(true);
        }
        // Acquire: `finish_if_done` orders what the sections did; this only compares numbers.
        let completed = self.completed.load(Ordering::Acquire);
        // Acquire: pairs with the Release after the start's heavy barrier, which the scans
        // below must follow (see `records_clear`).
        if self.in_flight.load(Ordering::Acquire) == completed {
            return Ok(true);
        }
        let tag = Self::old_tag(self.read.id, completed);
        let is_over = || self.completed.load(Ordering::Acquire) > completed;
        // The record last seen holding the tag is re-checked first: one line per spin, not a
        // pass over every thread's record.
        let mut holder = None;
        for _ in 0..P::SPINS {
            holder = records::first_holding(tag, holder);
            if is_over() || holder.is_none() {
                return Ok(true);
            }
            platform::spin_hint();
        }
        Ok(records::wait_clear_with(tag, is_over, deadline, park, progress)?.is_ok())
    }

    /// The domain's number, unique in the process: its key in the debug-build deadlock
    /// detector.
    pub(super) fn id(&self) -> u64 {
        self.read.id
    }

    fn lock_steps(&self) -> MutexGuard<'_, Steps> {
        // Nothing under the lock can panic halfway through a change (the facade's Mutex
        // recovers from poison).
        self.steps.lock()
    }

    fn try_lock_steps(&self) -> Option<MutexGuard<'_, Steps>> {
        self.steps.try_lock()
    }

    /// Bytes the domain holds outside itself: each phase's per-CPU slots in the arena (8 bytes
    /// per slot), from the first section of that phase counted in the slots on (0 before: a
    /// section on a thread's record takes none), and the backlog of deferred drops (its queue
    /// and the boxed values, not what the values own in turn). The records are the process's,
    /// shared by every domain and per-CPU drainable (128 bytes per thread), and not counted.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// assert_eq!(d.heap_bytes(), 0);
    /// drop(d.enter());
    /// let idle = d.heap_bytes(); // 0 on a record, 8 bytes per slot in the slots
    /// d.retire([0u8; 4096]);
    /// assert!(d.heap_bytes() >= idle + 4096);
    /// d.barrier();
    /// ```
    pub fn heap_bytes(&self) -> usize {
        self.read.phases[0].heap_bytes()
            + self.read.phases[1].heap_bytes()
            + self.lock_steps().backlog.heap_bytes()
    }
}

/// The drop lock held while deferred drops run, with its holder's thread token set (and
/// cleared before the unlock, on unwind too).
struct RunningDrops<'a> {
    owner: &'a AtomicUsize,
    _lock: MutexGuard<'a, ()>,
}

impl<'a> RunningDrops<'a> {
    fn enter(owner: &'a AtomicUsize, lock: MutexGuard<'a, ()>) -> Self {
        // Relaxed: read back only by this thread (`running_drops_here`).
        owner.store(platform::thread_token(), Ordering::Relaxed);
        RunningDrops { owner, _lock: lock }
    }
}

impl Drop for RunningDrops<'_> {
    fn drop(&mut self) {
        // Relaxed: as in `enter`; runs before `_lock` unlocks.
        self.owner.store(0, Ordering::Relaxed);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn barrier_in_drop() -> ! {
    panic!(
        "drainable: GraceDomain::barrier called from a deferred Drop running on the same domain; \
         it would wait forever for the drops this thread is running"
    );
}

/// The deadline of a barrier run by a caller that must not block (see [`BARRIER_SLICE`]).
fn slice() -> Option<Instant> {
    Instant::now().checked_add(BARRIER_SLICE)
}

#[cold]
#[inline(never)]
#[track_caller]
fn foreign_cookie(theirs: u64, ours: u64) -> ! {
    panic!(
        "drainable: a GraceCookie of grace domain #{theirs} was passed to grace domain #{ours}; \
         a cookie can only be polled on the domain that issued it"
    );
}

impl fmt::Debug for GraceDomain {
    /// Shows grace periods completed and the read sections running (a snapshot).
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// let _s = d.enter();
    /// assert_eq!(format!("{d:?}"), "GraceDomain { completed: 0, readers: 1, .. }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraceDomain")
            .field("completed", &self.completed.load(Ordering::Relaxed))
            .field(
                "readers",
                &(self.read.phases[0].outstanding()
                    + self.read.phases[1].outstanding()
                    + records::outstanding(records::section_tag(self.read.id, 0))
                    + records::outstanding(records::section_tag(self.read.id, 1))),
            )
            .finish_non_exhaustive()
    }
}

/// A read section of a [`GraceDomain`], from [`GraceDomain::enter`]; it ends when dropped.
///
/// `!Send`: it ends on the thread that began it (which is what lets debug builds catch a
/// thread synchronizing inside its own section).
///
/// ```
/// let d = drainable::GraceDomain::new();
/// let section = d.enter();
/// drop(section);
/// ```
///
/// A section cannot move to another thread:
///
/// ```compile_fail
/// let d = drainable::GraceDomain::new();
/// let section = d.enter();
/// std::thread::scope(|s| { s.spawn(move || drop(section)); });
/// ```
#[must_use = "a read section ends when its guard is dropped"]
pub struct ReadSection<'a> {
    domain: NonNull<GraceDomain>,
    place: Place,
    _borrow: PhantomData<&'a GraceDomain>,
}

/// Where a read section is counted.
#[derive(Clone, Copy)]
enum Place {
    /// An entry of the thread's record, tagged with the domain and the phase.
    Local(LocalHold),
    /// A per-CPU slot of a phase.
    Slot { phase: u32, slot: u32 },
}

/// What an async grace-period wait keeps across its polls: its waker's place and its progress
/// through the records.
#[derive(Debug)]
pub(crate) struct GraceWait {
    waiter: TaskWaiter,
    records: RecordWait,
}

impl GraceWait {
    pub(crate) fn new() -> Self {
        GraceWait {
            waiter: TaskWaiter::new(),
            // `wait_records` scans only after the grace period's heavy barrier (`in_flight`),
            // or, from slots to slots, where none is needed (docs/design.md §7a).
            records: RecordWait::after_barrier(),
        }
    }
}

// SAFETY: a shared `&ReadSection` gives access to nothing.
unsafe impl Sync for ReadSection<'_> {}

impl Drop for ReadSection<'_> {
    #[inline]
    fn drop(&mut self) {
        let domain = self.domain.as_ptr();
        // SAFETY: the section borrows the domain, so it is live; only the id is read.
        track::released(unsafe { *std::ptr::addr_of!((*domain).read.id) });
        match self.place {
            // SAFETY: the section owns the hold, given back once, here; it touches only the
            // record.
            Place::Local(hold) => unsafe { records::release(hold) },
            // SAFETY: the section borrows the domain, so it is live, and owns its count, given
            // back once, here.
            Place::Slot { phase, slot } => unsafe { GraceDomain::leave_raw(domain, phase, slot) },
        }
    }
}

impl fmt::Debug for ReadSection<'_> {
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// assert_eq!(format!("{:?}", d.enter()), "ReadSection { .. }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadSection").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Arc, mpsc};
    use std::thread;

    use crate::test_support::hold_on_thread;

    /// A section counted in the per-CPU slots, as an owned read guard's is.
    struct SlotSection<'a>(&'a GraceDomain, u32, u32);

    impl<'a> SlotSection<'a> {
        fn enter(d: &'a GraceDomain) -> Self {
            let (phase, slot) = d.enter_raw();
            SlotSection(d, phase, slot)
        }
    }

    impl Drop for SlotSection<'_> {
        fn drop(&mut self) {
            // SAFETY: entered in `enter`, left once; the borrow keeps the domain live.
            unsafe { GraceDomain::leave_raw(self.0, self.1, self.2) };
        }
    }

    /// A grace period whose waiter slept on the slots' token leaves no `WAITING` behind: left
    /// up, every later grace period's last give-back would pay a futex wake with nobody
    /// waiting.
    #[test]
    fn a_slept_grace_period_takes_waiting_down() {
        let d = GraceDomain::new();
        thread::scope(|s| {
            let release = hold_on_thread(s, || SlotSection::enter(&d));
            let sync = s.spawn(|| d.synchronize());
            while !d.word.is_waiting() {
                thread::yield_now();
            }
            drop(release);
            sync.join().unwrap();
        });
        assert!(
            !d.word.is_waiting(),
            "WAITING stayed up after the grace period"
        );
        no_wakes_without_waiters(&d);
    }

    /// The same on the records: a waiter that slept on a reader's record leaves no waiter
    /// count behind, so later grace periods and sections wake nobody.
    #[test]
    fn a_grace_period_slept_on_a_record_leaves_no_waiter_behind() {
        if !records::enabled() {
            return; // no membarrier: every section is in the slots (the test above)
        }
        let d = GraceDomain::new();
        thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let (done_tx, done_rx) = mpsc::channel::<()>();
            let (record_tx, record_rx) = mpsc::channel();
            let (d, rx, done_rx) = (
                &d,
                std::sync::Mutex::new(rx),
                std::sync::Mutex::new(done_rx),
            );
            s.spawn(move || {
                let section = d.enter();
                assert!(matches!(section.place, Place::Local(_)), "on the record");
                record_tx
                    .send(records::record_of_this_thread().unwrap())
                    .unwrap();
                rx.lock().unwrap().recv().unwrap();
                drop(section);
                // Keeps the record until the check below: once this thread exits, another
                // test's thread may take it over, and its drainers announce themselves on it.
                let _ = done_rx.lock().unwrap().recv();
            });
            let record = record_rx.recv().unwrap();
            let sync = s.spawn(|| d.synchronize());
            // The reader holds its section until the synchronizer has announced itself on the
            // reader's record.
            while records::announced_on(record) == 0 {
                thread::yield_now();
            }
            tx.send(()).unwrap();
            sync.join().unwrap();
            assert_eq!(
                records::announced_on(record),
                0,
                "the synchronizer stayed counted on the reader's record"
            );
            done_tx.send(()).unwrap();
        });
        no_wakes_without_waiters(&d);
    }

    /// The hybrid: frequent grace periods send sections to the slots (no `membarrier` per grace
    /// period), a quiet spell brings them back to the records; a section in the slots is waited
    /// for like one on a record. (The switches racing open sections: loom, `tests/grace.rs`.)
    #[test]
    #[cfg_attr(
        miri,
        ignore = "the policy reads the clock, and Miri's clock makes back-to-back grace periods far apart"
    )]
    fn frequent_grace_periods_move_sections_to_the_slots_and_back() {
        if !records::enabled() {
            return;
        }
        let d = GraceDomain::new();
        let on_record = |s: &ReadSection<'_>| matches!(s.place, Place::Local(_));
        assert!(
            on_record(&d.enter()),
            "a new domain's sections are on the records"
        );
        // Back to back: well within `FREQUENT` of each other (a descheduled thread only takes a
        // few more).
        let mut n = 0;
        while on_record(&d.enter()) {
            d.synchronize();
            n += 1;
            assert!(
                n < 100_000,
                "frequent grace periods never moved sections to the slots"
            );
        }
        assert!(n >= SWITCH_AFTER as usize, "moved after {n} grace periods");
        thread::scope(|s| {
            let release = hold_on_thread(s, || {
                let section = d.enter();
                assert!(
                    !on_record(&section),
                    "another thread's sections go to the slots too"
                );
                section
            });
            let cookie = d.start_grace_period();
            assert!(
                !d.poll_grace_period(cookie),
                "the section in the slots was not waited for"
            );
            drop(release);
            d.synchronize();
            assert!(d.poll_grace_period(cookie));
        });
        thread::sleep(QUIET * 2);
        d.synchronize();
        assert!(
            on_record(&d.enter()),
            "a quiet spell brings sections back to the records"
        );
    }

    /// A `synchronize_async` future that has returned `Ready` but is not dropped yet is off
    /// the reader's record: later sections there wake nobody. (An outside review found it left
    /// counted, so that each release on that record paid a futex wake until the drop.)
    #[test]
    fn a_ready_future_is_off_the_records() {
        use std::future::Future;
        use std::task::Waker;
        if !records::enabled() {
            return;
        }
        let d = GraceDomain::new();
        thread::scope(|s| {
            let (tx, rx) = mpsc::channel::<()>();
            let (record_tx, record_rx) = mpsc::channel();
            let (more_tx, more_rx) = mpsc::channel::<()>();
            let (wakes_tx, wakes_rx) = mpsc::channel();
            let d = &d;
            s.spawn(move || {
                let section = d.enter();
                record_tx
                    .send(records::record_of_this_thread().unwrap())
                    .unwrap();
                rx.recv().unwrap();
                drop(section);
                more_rx.recv().unwrap();
                let before = crate::platform::wakes::made();
                for _ in 0..100 {
                    drop(d.enter());
                }
                wakes_tx
                    .send(crate::platform::wakes::made() - before)
                    .unwrap();
            });
            let record = record_rx.recv().unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            let mut f = Box::pin(d.synchronize_async());
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                records::announced_on(record),
                1,
                "waits on the reader's record"
            );
            tx.send(()).unwrap();
            while f.as_mut().poll(&mut cx).is_pending() {
                thread::yield_now();
            }
            assert_eq!(
                records::announced_on(record),
                0,
                "a Ready future left counted"
            );
            more_tx.send(()).unwrap();
            assert_eq!(wakes_rx.recv().unwrap(), 0, "later releases woke");
            drop(f);
        });
    }

    fn no_wakes_without_waiters(d: &GraceDomain) {
        let before = crate::platform::wakes::made();
        for _ in 0..10 {
            drop(d.enter());
            let cookie = d.start_grace_period();
            assert!(d.poll_grace_period(cookie) || d.poll_grace_period(cookie));
        }
        assert_eq!(
            crate::platform::wakes::made(),
            before,
            "grace periods without a waiter woke"
        );
    }

    #[test]
    fn synchronize_without_readers_returns() {
        let d = GraceDomain::new();
        d.synchronize();
        d.synchronize();
        assert_eq!(d.completed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn synchronize_waits_for_a_section_that_began_before() {
        let d = GraceDomain::new();
        let left = AtomicBool::new(false);
        thread::scope(|s| {
            let (inside, is_inside) = mpsc::channel();
            let (d, left) = (&d, &left);
            s.spawn(move || {
                let section = d.enter();
                inside.send(()).unwrap();
                // Relaxed on purpose: only the grace period's happens-before makes it visible.
                left.store(true, Ordering::Relaxed);
                drop(section);
            });
            is_inside.recv().unwrap();
            d.synchronize();
            assert!(left.load(Ordering::Relaxed));
        });
    }

    #[test]
    fn sections_that_begin_later_do_not_hold_it_up() {
        let d = GraceDomain::new();
        thread::scope(|s| {
            let cookie = d.start_grace_period();
            let hold = hold_on_thread(s, || d.enter()); // began after the grace period started
            assert!(d.poll_grace_period(cookie));
            d.synchronize_timeout(Duration::ZERO).unwrap_err(); // but a new one must wait
            drop(hold);
            d.synchronize();
        });
    }

    #[test]
    fn poll_is_non_blocking_and_completes_later() {
        let d = GraceDomain::new();
        thread::scope(|s| {
            let hold = hold_on_thread(s, || d.enter());
            let cookie = d.start_grace_period();
            assert!(!d.poll_grace_period(cookie));
            assert!(!d.poll_grace_period(cookie));
            drop(hold);
            while !d.poll_grace_period(cookie) {
                thread::yield_now();
            }
        });
    }

    #[test]
    fn timeout_reports_and_a_later_call_completes() {
        let d = GraceDomain::new();
        thread::scope(|s| {
            let hold = hold_on_thread(s, || d.enter());
            let e = d.synchronize_timeout(Duration::from_millis(2)).unwrap_err();
            assert_eq!(e, GraceTimeoutError(()));
            drop(hold);
            d.synchronize_timeout(Duration::from_secs(60)).unwrap();
        });
    }

    #[test]
    fn concurrent_synchronizers_share_grace_periods() {
        let d = GraceDomain::new();
        thread::scope(|s| {
            let hold = hold_on_thread(s, || d.enter());
            let (asked, cookies) = mpsc::channel();
            let waiters: Vec<_> = (0..4)
                .map(|_| {
                    let (d, asked) = (&d, asked.clone());
                    s.spawn(move || {
                        let cookie = d.start_grace_period();
                        asked.send(cookie).unwrap();
                        assert!(d.wait_for(cookie, None));
                    })
                })
                .collect();
            // Every caller asks while the reader holds the first grace period open.
            let cookies: Vec<_> = cookies.iter().take(4).collect();
            drop(hold);
            for w in waiters {
                w.join().unwrap();
            }
            // The first caller started grace period 1; the rest share grace period 2.
            assert!(cookies.iter().all(|c| c.number <= 2));
        });
        assert_eq!(d.completed.load(Ordering::Relaxed), 2);
    }

    #[test]
    #[should_panic(expected = "a GraceCookie of grace domain")]
    fn a_foreign_cookie_is_refused() {
        let a = GraceDomain::new();
        let b = GraceDomain::new();
        let _section = b.enter(); // b's grace period could never end: the cookie must not pass
        let cookie = a.start_grace_period();
        b.poll_grace_period(cookie);
    }

    #[test]
    fn nested_sections() {
        let d = GraceDomain::new();
        let a = d.enter();
        let b = d.enter();
        assert_eq!(
            format!("{d:?}"),
            "GraceDomain { completed: 0, readers: 2, .. }"
        );
        drop(a);
        drop(b);
        d.synchronize();
    }

    /// A value that counts its drops.
    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            // Relaxed: read after a barrier or join, which order it.
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> Arc<AtomicUsize> {
        Arc::new(AtomicUsize::new(0))
    }

    #[test]
    fn a_retired_value_outlives_the_sections_before_it() {
        let d = GraceDomain::new();
        let drops = counter();
        thread::scope(|s| {
            let hold = hold_on_thread(s, || d.enter());
            d.retire(Count(Arc::clone(&drops)));
            // Every call that may run drops, while the section is open: none may drop it.
            let cookie = d.start_grace_period();
            assert!(!d.poll_grace_period(cookie));
            d.synchronize_timeout(Duration::ZERO).unwrap_err();
            d.retire(0u8);
            assert_eq!(drops.load(Ordering::Relaxed), 0);
            assert_eq!(d.backlog(), 2);
            drop(hold);
            d.barrier();
            assert_eq!(drops.load(Ordering::Relaxed), 1);
            assert_eq!(d.backlog(), 0);
        });
    }

    #[test]
    fn a_full_batch_asks_for_its_grace_period_and_the_next_call_drops_it() {
        let d = GraceDomain::new();
        let drops = counter();
        for _ in 0..BATCH {
            d.retire(Count(Arc::clone(&drops)));
        }
        // The full batch asked for its grace period, which no reader holds up: the retire that
        // filled it started it, ran its barrier, completed it and dropped the batch.
        assert_eq!(d.completed.load(Ordering::Relaxed), 1);
        assert_eq!(drops.load(Ordering::Relaxed), BATCH);
        assert_eq!(d.backlog(), 0);
        d.retire(Count(Arc::clone(&drops)));
        assert_eq!(d.backlog(), 1, "a value short of a batch waits for more");
        d.barrier();
        assert_eq!(drops.load(Ordering::Relaxed), BATCH + 1);
    }

    #[test]
    fn a_full_backlog_makes_retire_wait_for_the_stalled_reader() {
        let d = GraceDomain::with_backlog_limit(2);
        let drops = counter();
        let retired = AtomicBool::new(false);
        thread::scope(|s| {
            let hold = hold_on_thread(s, || d.enter());
            d.retire(Count(Arc::clone(&drops)));
            d.retire(Count(Arc::clone(&drops)));
            let third = s.spawn(|| {
                d.retire(Count(Arc::clone(&drops)));
                retired.store(true, Ordering::Relaxed);
            });
            // It cannot finish while the reader holds the grace period (the sleep only gives
            // it the chance to do wrong).
            thread::sleep(Duration::from_millis(20));
            assert!(!retired.load(Ordering::Relaxed));
            assert!(d.backlog() <= 2);
            assert_eq!(drops.load(Ordering::Relaxed), 0);
            drop(hold);
            third.join().unwrap();
            // It dropped the first two itself before queueing its own.
            assert_eq!(drops.load(Ordering::Relaxed), 2);
            assert_eq!(d.backlog(), 1);
        });
        d.barrier();
        assert_eq!(drops.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn barrier_waits_for_a_drop_running_on_another_thread() {
        struct Slow {
            started: mpsc::Sender<()>,
            go: mpsc::Receiver<()>,
            done: Arc<AtomicBool>,
        }
        impl Drop for Slow {
            fn drop(&mut self) {
                self.started.send(()).unwrap();
                self.go.recv().unwrap();
                // Relaxed: the barrier's drop lock orders it before the barrier returns.
                self.done.store(true, Ordering::Relaxed);
            }
        }
        let d = GraceDomain::with_backlog_limit(1);
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let slow = Slow {
            started: started_tx,
            go: go_rx,
            done: Arc::clone(&done),
        };
        thread::scope(|s| {
            // With a limit of 1 the value asks for its grace period at once; with no reader
            // the same call completes it and runs the drop, which blocks inside `Drop` until
            // told to go on.
            let collector = s.spawn(|| d.retire(slow));
            started.recv().unwrap();
            let barrier = s.spawn(|| {
                d.barrier();
                assert!(
                    done.load(Ordering::Relaxed),
                    "barrier returned before the drop ran"
                );
            });
            thread::sleep(Duration::from_millis(20));
            go.send(()).unwrap();
            collector.join().unwrap();
            barrier.join().unwrap();
        });
    }

    #[test]
    fn a_deferred_drop_may_retire_into_its_domain_but_not_wait_on_it() {
        struct Chain(Arc<GraceDomain>, usize, Arc<AtomicUsize>);
        impl Drop for Chain {
            fn drop(&mut self) {
                self.2.fetch_add(1, Ordering::Relaxed);
                if self.1 > 0 {
                    // A value's drop retires the next (a list freed link by link): past the
                    // limit, without waiting.
                    self.0.retire(Count(Arc::clone(&self.2)));
                }
            }
        }
        let d = Arc::new(GraceDomain::with_backlog_limit(1));
        let drops = counter();
        // With no reader, the retire completes the value's grace period and drops it itself;
        // the drop's own retire is queued past the limit (the drop lock is held).
        d.retire(Chain(Arc::clone(&d), 1, Arc::clone(&drops)));
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert_eq!(d.backlog(), 1); // the link retired by the drop
        d.barrier();
        assert_eq!(drops.load(Ordering::Relaxed), 2);

        struct Waits(Arc<GraceDomain>);
        impl Drop for Waits {
            fn drop(&mut self) {
                self.0.barrier();
            }
        }
        // Dropped by the retire itself (no reader) or by the barrier: either way, from a
        // deferred drop, whose `barrier` panics.
        let r = std::panic::catch_unwind(|| {
            d.retire(Waits(Arc::clone(&d)));
            d.barrier();
        });
        let msg = *r.unwrap_err().downcast::<&str>().unwrap();
        assert!(msg.contains("barrier called from a deferred Drop"), "{msg}");
        // The panic left the domain usable.
        d.retire(1u8);
        d.barrier();
        assert_eq!(d.backlog(), 0);
    }

    #[test]
    fn heap_bytes_counts_the_backlog() {
        let d = GraceDomain::new();
        let idle = d.heap_bytes();
        d.retire([0u64; 64]);
        assert_eq!(d.backlog(), 1); // one value does not fill a batch
        assert!(d.heap_bytes() >= idle + 512);
        d.barrier();
        let after = d.heap_bytes();
        // The queue keeps its buffer; the value is gone.
        assert!(after < idle + 512, "{after} vs {idle}");
    }

    #[test]
    fn values_left_in_the_backlog_drop_with_the_domain() {
        let drops = counter();
        let d = GraceDomain::new();
        d.retire(Count(Arc::clone(&drops)));
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        drop(d);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
    #[should_panic(expected = "GraceDomain::retire called on a thread that holds")]
    fn retire_inside_a_section_panics() {
        let d = GraceDomain::new();
        let _s = d.enter();
        d.retire(1u8);
    }

    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
    #[should_panic(expected = "GraceDomain::synchronize called on a thread that holds")]
    fn synchronize_inside_a_section_panics() {
        let d = GraceDomain::new();
        let _s = d.enter();
        d.synchronize();
    }
}
