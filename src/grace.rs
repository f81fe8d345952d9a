//! Grace periods: [`GraceDomain`] (read sections and `synchronize`) and [`GraceCell<T>`]
//! (publish a new value, wait until no reader can still see the old one, get it back).
//!
//! # Algorithm
//!
//! A domain has two phases, each a set of folding per-CPU counters (`fold.rs`, shared with
//! [`PerCpuDrainable`](crate::PerCpuDrainable)), and a `phase` word saying where new readers
//! go.
//!
//! - **enter**: read `phase` (`Acquire`), increment the current CPU's slot of that phase. If
//!   the slot is folded, a grace period has flipped the phase in between: read `phase` again
//!   and retry. Lock-free; no fence.
//! - **leave**: decrement the slot that was incremented (the guard remembers phase and slot).
//! - **a grace period** (under the domain's step lock, never held while waiting): unfold the
//!   new phase (`Release`; it has been folded and empty since its last grace period), flip
//!   `phase` to it (`Release`), add a token to the domain's futex word, and fold the old phase's
//!   slots (one RMW per slot). The old phase now counts exactly the sections that entered it;
//!   the leave that takes that count to zero gives the token back and wakes the waiter. The old
//!   phase then *stays folded* until the grace period after next flips back to it.
//!
//! A section that read the old `phase` but reached its slot after the fold sees `FOLDED` and
//! retries in the new phase. Its retry *acquired* the fold, which the grace period made after
//! the flip, which the writer made after publishing its new value: so that reader sees the new
//! value. A section counted by the fold is waited for. Either way no reader can see the old
//! value once the grace period ends, with no fence on either side.
//!
//! Why the old phase stays folded: a section may read `phase` and reach its slot much later.
//! Were the old phase reopened when its grace period ended, such a section could slip into it
//! while the *other* phase is current, and the next grace period (which waits for the other
//! phase) would miss it, although it may have read the value that grace period retires. loom
//! found exactly this. Reopening a phase only at the start of the grace period that makes it
//! current means a slow section can only enter it after acquiring that unfold, which the writer
//! made after publishing: it sees the newest value.
//!
//! Grace periods are numbered. `synchronize` asks for the first one that *starts* after the
//! call (if one is in flight, the one after it), and any thread that finds the one in flight
//! finished completes it and starts the next one requested: concurrent callers share grace
//! periods instead of queueing one each.

use crate::fold::Folding;
use crate::platform::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use crate::state;
use crate::track;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;
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
///   CPU's cache line; no fence, no shared line.
/// - `synchronize`: blocking (spin, then futex); waits for the sections counted in the old
///   phase. A grace period costs one read-modify-write per slot to flip and one to reset.
/// - Memory: `2 × 128 × slots` bytes (slots: CPUs rounded up to a power of two, at most 64).
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
    word: AtomicU32,
    /// Where new read sections go: 0 or 1.
    phase: AtomicU32,
    phases: [Folding; 2],
    /// Grace periods completed. Only grows.
    completed: AtomicU64,
    steps: Mutex<Steps>,
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
    /// Creates a domain with no read section and no grace period in flight. Allocates the
    /// per-CPU slots of both phases.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// drop(d.enter());
    /// ```
    pub fn new() -> Self {
        GraceDomain {
            id: crate::sync::unique_id(),
            word: state::new_word(),
            phase: AtomicU32::new(0),
            // Phase 0 is current; phase 1 stays folded until the first grace period.
            phases: [Folding::new(), Folding::new_folded()],
            completed: AtomicU64::new(0),
            steps: Mutex::new(Steps {
                started: 0,
                wanted: 0,
            }),
        }
    }

    /// Enters a read section, which lasts until the returned guard is dropped. Never blocks
    /// and never fails; nestable.
    ///
    /// Lock-free: one `Acquire` load and one CAS on the current CPU's slot (retried only if a
    /// grace period flipped the phase at that very moment). The load *acquires* the phase flip,
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
        loop {
            // Acquire: pairs with the flip's Release (writer's publish → reader).
            let phase = self.phase.load(Ordering::Acquire) as usize & 1;
            if let Ok(slot) = self.phases[phase].try_increment() {
                track::acquired(self.id);
                return ReadSection {
                    domain: NonNull::from(self),
                    phase: phase as u32,
                    slot,
                    _borrow: PhantomData,
                };
            }
            // The slot is folded: a grace period flipped the phase after our load. Retry.
            crate::sync::spin_hint();
        }
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
    pub fn start_grace_period(&self) -> GraceCookie {
        let mut steps = self.lock_steps();
        self.finish_if_done(&mut steps);
        // A grace period in flight started before this call and may have missed sections that
        // began since; the one after it is needed.
        let target = steps.started + 1;
        steps.wanted = steps.wanted.max(target);
        self.start_if_wanted(&mut steps);
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
        self.completed.load(Ordering::Acquire) >= cookie.number
    }

    /// Blocks until `cookie`'s grace period ended, or until the deadline. Returns whether it
    /// ended.
    fn wait_for(&self, cookie: GraceCookie, deadline: Option<Instant>) -> bool {
        loop {
            if self.poll_grace_period(cookie) {
                return true;
            }
            if !state::wait_zero(&self.word, deadline) {
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
        // Relaxed: the fold's read-modify-writes order it.
        self.word.fetch_add(state::ONE, Ordering::Relaxed);
        self.phases[old as usize].fold(&self.word);
        steps.started += 1;
    }

    fn lock_steps(&self) -> MutexGuard<'_, Steps> {
        // Nothing under the lock can panic halfway through a change.
        self.steps.lock()
    }

    fn try_lock_steps(&self) -> Option<MutexGuard<'_, Steps>> {
        self.steps.try_lock()
    }

    /// Bytes the domain allocated outside itself (both phases' slots).
    ///
    /// ```
    /// assert!(drainable::GraceDomain::new().heap_bytes() >= 256);
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
        // SAFETY: the section borrows the domain, so it is live; `addr_of!` reaches the fields
        // without a reference across the decrement.
        let (phases, word) = unsafe {
            (
                std::ptr::addr_of!((*domain).phases) as *const Folding,
                std::ptr::addr_of!((*domain).word),
            )
        };
        // SAFETY: this section owns one count on slot `slot` of phase `phase`, given back once.
        unsafe { Folding::decrement(phases.add(self.phase as usize), self.slot, word) };
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

/// A value readers see without locks or reference counts, and that a writer replaces: the
/// writer publishes the new value, waits a grace period, and gets the old one back *by value*
/// as soon as the last reader that could see it has left. Deterministic reclamation, unlike
/// `crossbeam-epoch` or `arc-swap`, which free "some time later".
///
/// - [`read`](Self::read): never fails, never blocks, never waits for writers.
/// - [`replace`](Self::replace) / [`update`](Self::update): writers serialise among themselves
///   (a mutex), then wait one grace period of the cell's domain.
///
/// ```
/// use drainable::GraceCell;
///
/// let routes = GraceCell::new(vec!["10.0.0.0/8"]);
/// assert_eq!(routes.read().len(), 1);
/// let old = routes.replace(vec!["10.0.0.0/8", "192.168.0.0/16"]);
/// assert_eq!(old, ["10.0.0.0/8"]); // no reader can see it any more
/// assert_eq!(routes.read().len(), 2);
/// ```
///
/// Readers on several threads share `&T`, so a cell is `Sync` only when `T` is `Send + Sync`:
///
/// ```compile_fail
/// let c = drainable::GraceCell::new(std::cell::Cell::new(1));
/// std::thread::scope(|s| { s.spawn(|| c.read().get()); });
/// ```
pub struct GraceCell<T> {
    ptr: crate::sync::AtomicPtr<T>,
    domain: DomainRef,
    writer: Mutex<()>,
    /// The thread that holds `writer` (its [`thread_token`]), or 0: lets a writer that calls
    /// back into its own cell (from `update`'s closure) panic instead of deadlocking.
    writer_thread: crate::sync::AtomicUsize,
}

enum DomainRef {
    Own(GraceDomain),
    Shared(Arc<GraceDomain>),
}

impl DomainRef {
    fn get(&self) -> &GraceDomain {
        match self {
            DomainRef::Own(d) => d,
            DomainRef::Shared(d) => d,
        }
    }
}

// SAFETY: the cell owns a `T` (moved in and out by writers on any thread: `T: Send`) and hands
// out `&T` to readers on any thread (`T: Sync`). Its other fields are thread-safe.
unsafe impl<T: Send + Sync> Sync for GraceCell<T> {}
// SAFETY: moving the cell moves the owned `T`.
unsafe impl<T: Send> Send for GraceCell<T> {}

impl<T> GraceCell<T> {
    /// Creates a cell with its own [`GraceDomain`]: its readers delay only its own writers.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(1);
    /// assert_eq!(*c.read(), 1);
    /// ```
    pub fn new(value: T) -> Self {
        Self::with(value, DomainRef::Own(GraceDomain::new()))
    }

    /// Creates a cell in a shared domain. Saves the domain's memory and lets one grace period
    /// serve writers of several cells; but a long read section of any cell in the domain then
    /// delays the writers of all of them.
    ///
    /// ```
    /// use drainable::{GraceCell, GraceDomain};
    /// use std::sync::Arc;
    ///
    /// let domain = Arc::new(GraceDomain::new());
    /// let a = GraceCell::with_domain(1, Arc::clone(&domain));
    /// let b = GraceCell::with_domain("b", domain);
    /// assert_eq!((a.replace(2), *b.read()), (1, "b"));
    /// ```
    pub fn with_domain(value: T, domain: Arc<GraceDomain>) -> Self {
        Self::with(value, DomainRef::Shared(domain))
    }

    fn with(value: T, domain: DomainRef) -> Self {
        GraceCell {
            ptr: crate::sync::AtomicPtr::new(Box::into_raw(Box::new(value))),
            domain,
            writer: Mutex::new(()),
            writer_thread: crate::sync::AtomicUsize::new(0),
        }
    }

    /// Reads the current value. The guard is a read section of the cell's domain: while it
    /// lives, the value it shows is not given back to any writer.
    ///
    /// Lock-free, never blocks, never fails: [`GraceDomain::enter`] plus one `Acquire` load.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(String::from("v1"));
    /// let v = c.read();
    /// assert_eq!(*v, "v1");
    /// ```
    #[inline]
    #[must_use = "the value is readable only while the guard lives"]
    pub fn read(&self) -> GraceGuard<'_, T> {
        let section = self.domain.get().enter();
        // Acquire: pairs with the writer's swap (publish → reader).
        let ptr = self.ptr.load(Ordering::Acquire);
        GraceGuard {
            // SAFETY: the pointer came from `Box::into_raw` and is freed only after a grace
            // period that began after it was unpublished; this section began before that.
            value: unsafe { &*ptr },
            _section: section,
        }
    }

    /// Publishes `value`, waits until no reader can still see the old value, and returns it.
    ///
    /// Blocking: waits for other writers (a mutex), then for one grace period of the domain.
    ///
    /// # Panics
    ///
    /// In builds with `debug_assertions`, if the calling thread is inside a read section of the
    /// cell's domain (it would wait for itself).
    ///
    /// ```
    /// let c = drainable::GraceCell::new(1);
    /// assert_eq!(c.replace(2), 1);
    /// assert_eq!(*c.read(), 2);
    /// ```
    pub fn replace(&self, value: T) -> T {
        let _writer = self.lock_writer("GraceCell::replace");
        self.swap_and_wait(Box::new(value))
    }

    /// Computes the new value from the current one, publishes it, waits a grace period and
    /// returns the old value. Writers are serialised, so no update is lost.
    ///
    /// # Panics
    ///
    /// As [`replace`](Self::replace). A panic in `f` leaves the value unchanged. If `f` itself
    /// writes this cell (`replace` or `update`), that write panics, in every build: it would
    /// wait forever for the writer lock this call holds. Return the new value from `f` instead.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(vec![1]);
    /// let old = c.update(|v| {
    ///     let mut v = v.clone();
    ///     v.push(2);
    ///     v
    /// });
    /// assert_eq!((old, c.read().clone()), (vec![1], vec![1, 2]));
    /// ```
    pub fn update(&self, f: impl FnOnce(&T) -> T) -> T {
        let _writer = self.lock_writer("GraceCell::update");
        // SAFETY: only writers replace the value, and we hold the writer lock, so the current
        // value stays alive while `f` reads it.
        let new = f(unsafe { &*self.ptr.load(Ordering::Acquire) });
        self.swap_and_wait(Box::new(new))
    }

    fn swap_and_wait(&self, new: Box<T>) -> T {
        let domain = self.domain.get();
        track::assert_not_held(domain.id, "GraceCell::replace");
        // AcqRel: Release publishes the new value to readers; Acquire takes ownership of the
        // old one from the writer that published it.
        let old = self.ptr.swap(Box::into_raw(new), Ordering::AcqRel);
        domain.synchronize();
        // SAFETY: `old` came from `Box::into_raw`, was unpublished before the grace period, and
        // no section that could have loaded it is still running.
        *unsafe { Box::from_raw(old) }
    }

    /// Mutable access; `&mut self` proves there is no reader.
    ///
    /// ```
    /// let mut c = drainable::GraceCell::new(1);
    /// *c.get_mut() += 1;
    /// assert_eq!(*c.read(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        // SAFETY: `&mut self` excludes readers and writers; the pointer is a live Box.
        unsafe { &mut *self.ptr.load(Ordering::Relaxed) }
    }

    /// Consumes the cell and returns the value.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(String::from("x"));
    /// assert_eq!(c.into_inner(), "x");
    /// ```
    pub fn into_inner(self) -> T {
        let this = std::mem::ManuallyDrop::new(self);
        let ptr = this.ptr.load(Ordering::Relaxed);
        // SAFETY: `this` is never dropped, so each field is read out exactly once.
        let (domain, writer) =
            unsafe { (std::ptr::read(&this.domain), std::ptr::read(&this.writer)) };
        drop((domain, writer));
        // `writer_thread` is a plain atomic: nothing to drop.
        // SAFETY: the cell owned this Box; ownership moves to the caller.
        *unsafe { Box::from_raw(ptr) }
    }

    /// The cell's domain.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(());
    /// c.domain().synchronize();
    /// ```
    pub fn domain(&self) -> &GraceDomain {
        self.domain.get()
    }

    /// Takes the writer lock, or panics if this thread already holds it (a write from inside
    /// `update`'s closure), naming `op`.
    #[track_caller]
    fn lock_writer(&self, op: &str) -> WriterLock<'_> {
        let me = thread_token();
        // Relaxed: only this thread ever stores its own token, so reading it back means this
        // thread holds the lock right now (it clears the token before unlocking).
        if me != 0 && self.writer_thread.load(Ordering::Relaxed) == me {
            writer_reentered(op);
        }
        let lock = self.writer.lock();
        // Relaxed: read back only by this thread (above); other threads only compare it with
        // their own, different tokens.
        self.writer_thread.store(me, Ordering::Relaxed);
        WriterLock {
            owner: &self.writer_thread,
            _lock: lock,
        }
    }
}

/// The writer lock of a [`GraceCell`] and the record of who holds it, cleared (on unwind too)
/// before the lock is released.
struct WriterLock<'a> {
    owner: &'a crate::sync::AtomicUsize,
    _lock: MutexGuard<'a, ()>,
}

impl Drop for WriterLock<'_> {
    fn drop(&mut self) {
        // Relaxed: as in `lock_writer`; runs before `_lock` unlocks.
        self.owner.store(0, Ordering::Relaxed);
    }
}

/// A number that tells the running thread apart from every other thread alive: the address of
/// one of its thread-locals. 0 where that cannot be told (under loom, whose model threads share
/// one OS thread, and during thread teardown), which disables the check.
fn thread_token() -> usize {
    #[cfg(not(drainable_loom))]
    {
        thread_local! {
            static TOKEN: u8 = const { 0 };
        }
        TOKEN.try_with(|t| t as *const u8 as usize).unwrap_or(0)
    }
    #[cfg(drainable_loom)]
    0
}

#[cold]
#[inline(never)]
#[track_caller]
fn writer_reentered(op: &str) -> ! {
    panic!(
        "drainable: {op} called from inside GraceCell::update's closure on the same cell; it \
         would wait forever for the writer lock that update holds. Return the new value from \
         the closure instead."
    );
}

impl<T> Drop for GraceCell<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer remains; the pointer is the cell's Box.
        drop(unsafe { Box::from_raw(self.ptr.load(Ordering::Relaxed)) });
    }
}

impl<T: Default> Default for GraceCell<T> {
    /// A cell holding `T::default()` in its own domain.
    ///
    /// ```
    /// let c: drainable::GraceCell<u8> = Default::default();
    /// assert_eq!(*c.read(), 0);
    /// ```
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for GraceCell<T> {
    /// Formats the current value (read inside a section).
    ///
    /// ```
    /// let c = drainable::GraceCell::new(3);
    /// assert_eq!(format!("{c:?}"), "GraceCell { value: 3, .. }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraceCell")
            .field("value", &&*self.read())
            .finish_non_exhaustive()
    }
}

/// A read guard of a [`GraceCell`]: derefs to the value; a read section of the cell's domain
/// until dropped. `!Send`, like [`ReadSection`].
///
/// ```
/// let c = drainable::GraceCell::new([1, 2, 3]);
/// let g = c.read();
/// assert_eq!(g.iter().sum::<i32>(), 6);
/// ```
#[must_use = "the value is readable only while the guard lives"]
pub struct GraceGuard<'a, T> {
    value: &'a T,
    _section: ReadSection<'a>,
}

impl<T> Deref for GraceGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for GraceGuard<'_, T> {
    /// Formats the value.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(7);
    /// assert_eq!(format!("{:?}", c.read()), "7");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.value, f)
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::mpsc;
    use std::thread;

    use crate::tests::iters;

    /// A thread inside a read section of `d` until the returned sender is used or dropped.
    fn reader_inside<'s>(s: &'s thread::Scope<'s, '_>, d: &'s GraceDomain) -> mpsc::Sender<()> {
        let (release, released) = mpsc::channel::<()>();
        let (inside, is_inside) = mpsc::channel::<()>();
        s.spawn(move || {
            let section = d.enter();
            inside.send(()).unwrap();
            let _ = released.recv();
            drop(section);
        });
        is_inside.recv().unwrap();
        release
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
            let hold = reader_inside(s, &d); // began after the grace period started
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
            let hold = reader_inside(s, &d);
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
            let hold = reader_inside(s, &d);
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
            let hold = reader_inside(s, &d);
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

    #[test]
    #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
    #[should_panic(expected = "GraceCell::replace called on a thread that holds")]
    fn replace_inside_a_read_panics() {
        let c = GraceCell::new(1);
        let _r = c.read();
        c.replace(2);
    }

    #[test]
    #[should_panic(expected = "called from inside GraceCell::update's closure")]
    fn update_whose_closure_writes_the_same_cell_panics() {
        let c = GraceCell::new(1);
        c.update(|v| {
            c.replace(*v + 1);
            *v + 2
        });
    }

    #[test]
    fn update_may_write_another_cell_and_the_lock_survives_a_panic() {
        let a = GraceCell::new(1);
        let b = GraceCell::new(10);
        assert_eq!(a.update(|v| b.replace(*v) + 1), 1);
        assert_eq!((*a.read(), *b.read()), (11, 1));
        // A panicking closure leaves the cell writable (by this thread too).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            a.update(|_| panic!("closure fails"))
        }));
        assert!(r.is_err());
        assert_eq!(a.replace(12), 11);
        // Another thread's writes are not mistaken for this thread's.
        thread::scope(|s| {
            s.spawn(|| a.update(|v| v + 1)).join().unwrap();
        });
        assert_eq!(*a.read(), 13);
    }

    #[test]
    fn cell_replace_update_into_inner() {
        let c = GraceCell::new(String::from("a"));
        assert_eq!(c.replace("b".into()), "a");
        assert_eq!(c.update(|s| format!("{s}c")), "b");
        assert_eq!(*c.read(), "bc");
        assert_eq!(c.into_inner(), "bc");
    }

    #[test]
    fn values_are_dropped_exactly_once() {
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let drops = AtomicUsize::new(0);
        let c = GraceCell::new(Counted(&drops));
        drop(c.replace(Counted(&drops)));
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        drop(c);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        let c = GraceCell::new(Counted(&drops));
        let v = c.into_inner();
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        drop(v);
        assert_eq!(drops.load(Ordering::Relaxed), 3);
    }

    /// Readers check a canary; the writer poisons each old value the moment `replace` hands it
    /// back, then drops it. A reader that could still see an old value would see the poison
    /// (and, under Miri, the free).
    #[test]
    fn replaced_values_are_unreachable_when_returned() {
        const ALIVE: usize = 0x5AFE;
        const POISON: usize = 0xDEAD;
        struct Value {
            canary: AtomicUsize,
            generation: usize,
        }
        let cell = GraceCell::new(Value {
            canary: AtomicUsize::new(ALIVE),
            generation: 0,
        });
        let stop = AtomicBool::new(false);
        let violations = AtomicUsize::new(0);
        let reads = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut last = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let v = cell.read();
                        if v.canary.load(Ordering::Relaxed) != ALIVE || v.generation < last {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        last = v.generation;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Make sure readers are running before the writer starts retiring values.
            while reads.load(Ordering::Relaxed) == 0 {
                thread::yield_now();
            }
            for generation in 1..=iters(2000, 20) {
                let old = cell.replace(Value {
                    canary: AtomicUsize::new(ALIVE),
                    generation,
                });
                old.canary.store(POISON, Ordering::Relaxed);
                assert_eq!(old.generation, generation - 1);
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(violations.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn shared_domain_serves_several_cells() {
        let domain = Arc::new(GraceDomain::new());
        let a = GraceCell::with_domain(1, Arc::clone(&domain));
        let b = GraceCell::with_domain(2, Arc::clone(&domain));
        thread::scope(|s| {
            // A reader of `a` delays writers of `b`: same domain.
            let (inside, is_inside) = mpsc::channel();
            let (release, released) = mpsc::channel::<()>();
            let a = &a;
            s.spawn(move || {
                let r = a.read();
                inside.send(()).unwrap();
                let _ = released.recv();
                drop(r);
            });
            is_inside.recv().unwrap();
            assert!(domain.synchronize_timeout(Duration::ZERO).is_err());
            drop(release);
            assert_eq!(b.replace(3), 2);
        });
    }

    #[test]
    fn auto_traits() {
        fn send_sync<X: Send + Sync>() {}
        send_sync::<GraceDomain>();
        send_sync::<GraceCell<String>>();
        fn sync<X: Sync>() {}
        sync::<ReadSection<'_>>();
        sync::<GraceGuard<'_, u8>>();
    }
}
