//! [`GraceDomain`]: read sections ([`ReadSection`]) and the grace periods that wait for them
//! ([`GraceCookie`], [`GraceTimeoutError`]). The algorithm is in the module docs of `grace`.

#[cfg(doc)]
use super::GraceCell; // for the doc links
use crate::counter::slots::{self, Folding};
use crate::lifecycle::track;
use crate::lifecycle::word as state;
use crate::platform::{
    self, AtomicU32, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering, Pending, Task, TaskWaiter,
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
/// - `enter` / dropping the section: lock-free, one uncontended CAS / `fetch_sub` on the current
///   CPU's cache line; no fence, no shared line (the first section of each phase takes the step
///   lock once, to make that phase's slots).
/// - `synchronize`: blocking (spin, then futex); waits for the sections counted in the old
///   phase. A grace period costs one read-modify-write per slot to flip and one to reset.
/// - Memory: inline, whatever the CPU count; plus 8 bytes per slot per phase in the per-CPU
///   arena, from the phase's first section on (slots: CPUs rounded up to a power of two, at
///   most 64).
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
    /// Unique in the process: names the domain in its cookies and in the debug-build
    /// deadlock detector.
    id: u64,
    /// The futex word: the in-flight grace period's token in the count field, and `WAITING`.
    word: state::Word,
    /// Where new read sections go: 0 or 1.
    phase: AtomicU32,
    phases: [Folding; 2],
    /// Grace periods completed. Only grows.
    completed: AtomicU64,
    steps: Mutex<Steps>,
    /// Values to drop once a grace period has completed (`defer_drop`).
    deferred: Deferred,
}

/// Values handed to the domain to drop after a grace period: each waits for the grace period of
/// the cookie it came with, and is dropped by the first call on the domain that finds that grace
/// period complete (`collect`), or with the domain. Today only a `GraceCell::replace_async`
/// dropped before it completed hands values here.
struct Deferred {
    /// Entries in `values`: lets `collect` skip the lock when there are none.
    len: AtomicUsize,
    values: Mutex<Vec<(u64, Box<dyn Send>)>>,
}

/// Grace-period bookkeeping, changed only under `GraceDomain::steps`.
#[derive(Debug)]
struct Steps {
    /// Grace periods started. Equals `completed`, or `completed + 1` while one is in flight.
    started: u64,
    /// The highest grace-period number anyone asked for.
    wanted: u64,
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
        GraceDomain {
            id: crate::platform::unique_id(),
            word: state::Word::new(),
            phase: AtomicU32::new(0),
            // Phase 0 is current; phase 1 stays folded until the first grace period.
            phases: [Folding::new(), Folding::new_folded()],
            completed: AtomicU64::new(0),
            steps: Mutex::new(Steps {
                started: 0,
                wanted: 0,
            }),
            deferred: Deferred {
                len: AtomicUsize::new(0),
                values: Mutex::new(Vec::new()),
            },
        }
    }

    /// Enters a read section, which lasts until the returned guard is dropped. Never blocks
    /// and never fails; nestable.
    ///
    /// Lock-free: one `Acquire` load and one CAS on the current CPU's slot (retried only if a
    /// grace period flipped the phase at that very moment). Except the first section of each
    /// phase, which takes the per-CPU slots of that phase from the arena under the step lock
    /// (held only for bounded passes over the slots, never across a wait): blocking, briefly,
    /// twice per domain. The load *acquires* the phase flip,
    /// so a section sees everything a writer published before the grace period it is not
    /// waited for.
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
        let (phase, slot) = self.enter_raw();
        track::acquired(self.id);
        ReadSection {
            domain: NonNull::from(self),
            phase,
            slot,
            _borrow: PhantomData,
        }
    }

    /// Enters a section that is not tied to a thread (the debug-build detector does not track
    /// it): its phase and slot, to give to [`leave_raw`](Self::leave_raw) once, on any thread.
    #[inline]
    pub(crate) fn enter_raw(&self) -> (u32, u32) {
        loop {
            // Acquire: pairs with the flip's Release (writer's publish → reader).
            let phase = self.phase.load(Ordering::Acquire) as usize & 1;
            match self.phases[phase].try_increment() {
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
        self.phases[phase].install();
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
                std::ptr::addr_of!((*domain).phases) as *const Folding,
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
        track::assert_not_held(self.id, "GraceDomain::synchronize");
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
    /// `start_poll_synchronize_srcu`). Never waits for readers; takes the domain's step lock
    /// for a bounded pass over the slots.
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
        self.start_if_wanted(&mut steps);
        drop(steps);
        self.collect();
        GraceCookie {
            domain: self.id,
            number: target,
        }
    }

    /// Whether the grace period of `cookie` has ended. Never blocks: if the one in flight is
    /// done it completes it (and starts the next one asked for), under the step lock when that
    /// is free. After `true`, every section the cookie covers has ended and happens-before.
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
        if cookie.domain != self.id {
            foreign_cookie(cookie.domain, self.id);
        }
        // Acquire: pairs with the Release that counted the grace period complete.
        if self.completed.load(Ordering::Acquire) >= cookie.number {
            return true;
        }
        if let Some(mut steps) = self.try_lock_steps() {
            self.finish_if_done(&mut steps);
            self.start_if_wanted(&mut steps);
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
        waiter: &mut TaskWaiter,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if self.poll_grace_period(cookie) {
                return Poll::Ready(());
            }
            match self.word.wait_zero_with(None, &mut Task { waiter, cx }) {
                Err(Pending) => return Poll::Pending,
                // The token is back: complete the grace period, as `wait_for` does.
                Ok(_) => {
                    let mut steps = self.lock_steps();
                    self.finish_if_done(&mut steps);
                    self.start_if_wanted(&mut steps);
                }
            }
        }
    }

    /// A task that polled [`poll_for`](Self::poll_for) into `Pending` gives up: takes
    /// `WAITING` down, as a timed-out wait does.
    pub(crate) fn stop_waiting(&self) {
        self.word.stop_waiting();
    }

    /// Hands `value` to the domain, to drop once the grace period of `cookie` (a cookie of this
    /// domain) has ended: by the first later call on the domain that finds it ended
    /// (`poll_grace_period`, `start_grace_period`, `synchronize` and the futures, through
    /// `collect`), or with the domain. The drop runs on that caller's thread, outside every
    /// lock of the domain.
    pub(crate) fn defer_drop(&self, cookie: GraceCookie, value: Box<dyn Send>) {
        debug_assert_eq!(cookie.domain, self.id);
        self.deferred.values.lock().push((cookie.number, value));
        // Relaxed: a hint for `collect`; a stale zero only delays a drop to a later call.
        self.deferred.len.fetch_add(1, Ordering::Relaxed);
        self.collect();
    }

    /// Drops the deferred values whose grace period has ended.
    fn collect(&self) {
        // Relaxed: a hint (see `defer_drop`).
        if self.deferred.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        // Acquire: pairs with the Release that counted the grace period complete, so every
        // access of the sections it waited for happens-before the drops.
        let completed = self.completed.load(Ordering::Acquire);
        let mut ready = Vec::new();
        {
            let Some(mut values) = self.deferred.values.try_lock() else {
                // Another caller is collecting.
                return;
            };
            let mut i = 0;
            while i < values.len() {
                if values[i].0 <= completed {
                    ready.push(values.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            // Relaxed: as in `defer_drop`.
            self.deferred.len.fetch_sub(ready.len(), Ordering::Relaxed);
        }
        // Outside the lock: a value's drop may use the domain.
        drop(ready);
    }

    /// Blocks until `cookie`'s grace period ended, or until the deadline. Returns whether it
    /// ended.
    fn wait_for(&self, cookie: GraceCookie, deadline: Option<Instant>) -> bool {
        loop {
            if self.poll_grace_period(cookie) {
                return true;
            }
            if !self.word.wait_zero(deadline) {
                return self.poll_grace_period(cookie);
            }
            // The token is back: the in-flight grace period's sections are gone. Complete it
            // under the step lock (another thread may hold it briefly, doing the same).
            let mut steps = self.lock_steps();
            self.finish_if_done(&mut steps);
            self.start_if_wanted(&mut steps);
        }
    }

    /// Completes the in-flight grace period if its old phase has emptied.
    fn finish_if_done(&self, steps: &mut Steps) {
        let completed = self.completed.load(Ordering::Relaxed);
        // Acquire: the token release (release → waiter) brings the sections' accesses.
        if steps.started == completed || state::count(self.word.load(Ordering::Acquire)) != 0 {
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
        let old = self.phase.load(Ordering::Relaxed);
        // Reopen the new phase: it is empty (its last grace period completed) and folded.
        // Release, in `unfold`: a slow section that read `phase` long ago and only now reaches
        // this phase's slot acquires this, so it sees what writers published before asking for
        // this grace period.
        self.phases[(old ^ 1) as usize].unfold(&self.word);
        // Release: sections that read the new phase see what writers published before asking
        // for this grace period (writer's publish → reader).
        self.phase.store(old ^ 1, Ordering::Release);
        // The token the fold gives back once the old phase is empty.
        let token = self.word.add_token();
        self.phases[old as usize].fold(&self.word, token);
        steps.started += 1;
    }

    /// The domain's number, unique in the process: its key in the debug-build deadlock
    /// detector.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    fn lock_steps(&self) -> MutexGuard<'_, Steps> {
        // Nothing under the lock can panic halfway through a change (the facade's Mutex
        // recovers from poison).
        self.steps.lock()
    }

    fn try_lock_steps(&self) -> Option<MutexGuard<'_, Steps>> {
        self.steps.try_lock()
    }

    /// Bytes the domain holds outside itself: each phase's slots in the per-CPU arena (8
    /// bytes per slot), from that phase's first read section on; 0 before.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// assert_eq!(d.heap_bytes(), 0);
    /// drop(d.enter());
    /// assert!(d.heap_bytes() >= 8);
    /// ```
    pub fn heap_bytes(&self) -> usize {
        self.phases[0].heap_bytes() + self.phases[1].heap_bytes()
    }
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
                &(self.phases[0].outstanding() + self.phases[1].outstanding()),
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
    phase: u32,
    slot: u32,
    _borrow: PhantomData<&'a GraceDomain>,
}

// SAFETY: a shared `&ReadSection` gives access to nothing.
unsafe impl Sync for ReadSection<'_> {}

impl Drop for ReadSection<'_> {
    #[inline]
    fn drop(&mut self) {
        let domain = self.domain.as_ptr();
        // SAFETY: the section borrows the domain, so it is live; only the id is read.
        track::released(unsafe { *std::ptr::addr_of!((*domain).id) });
        // SAFETY: the section borrows the domain, so it is live, and owns its count, given
        // back once, here.
        unsafe { GraceDomain::leave_raw(domain, self.phase, self.slot) };
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
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::thread;

    use crate::test_support::hold_on_thread;

    /// A grace period whose waiter slept leaves no `WAITING` behind: left up, every later
    /// grace period's last give-back would pay a futex wake with nobody waiting.
    #[test]
    fn a_slept_grace_period_takes_waiting_down() {
        let d = GraceDomain::new();
        thread::scope(|s| {
            let release = hold_on_thread(s, || d.enter());
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
        let before = crate::platform::wakes::made();
        for _ in 0..10 {
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

    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
    #[should_panic(expected = "GraceDomain::synchronize called on a thread that holds")]
    fn synchronize_inside_a_section_panics() {
        let d = GraceDomain::new();
        let _s = d.enter();
        d.synchronize();
    }
}
