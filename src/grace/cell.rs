//! [`GraceCell<T>`]: a value readers see without locks, that a writer replaces and gets back
//! once no reader can still see it; its read guard is [`GraceGuard`].

use super::deferred::Retired;
use super::{GraceDomain, ReadSection};
use crate::lifecycle::track;
use crate::platform::{self, Mutex, MutexGuard, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

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
    ptr: crate::platform::AtomicPtr<T>,
    domain: DomainRef,
    writer: Mutex<()>,
    /// The thread that holds `writer` (its `platform::thread_token`), or 0: lets a writer that calls
    /// back into its own cell (from `update`'s closure) panic instead of deadlocking.
    writer_thread: crate::platform::AtomicUsize,
}

// The owned domain stays inline: a read reaches its phase word without a pointer chase, and
// cells with a domain of their own are the common case. Boxing it would cost every read.
#[allow(clippy::large_enum_variant)]
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
            ptr: crate::platform::AtomicPtr::new(Box::into_raw(Box::new(value))),
            domain,
            writer: Mutex::new(()),
            writer_thread: crate::platform::AtomicUsize::new(0),
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
            // SAFETY: from `Box::into_raw`, never null. It is freed only after a grace period
            // that began after it was unpublished; this section began before that.
            value: unsafe { NonNull::new_unchecked(ptr) },
            _section: section,
            _value: PhantomData,
        }
    }

    /// Publishes `value`, waits until no reader can still see the old value, and returns it.
    ///
    /// Blocking: waits for other writers' swaps (a mutex held only for a swap, or for
    /// [`update`](Self::update)'s closure), then for one grace period of the domain, which
    /// concurrent writers share.
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
        let writer = self.lock_writer("GraceCell::replace");
        self.swap_and_wait(writer, Box::new(value))
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
        let writer = self.lock_writer("GraceCell::update");
        // SAFETY: only writers replace the value, and we hold the writer lock, so the current
        // value stays alive while `f` reads it.
        let new = f(unsafe { &*self.ptr.load(Ordering::Acquire) });
        self.swap_and_wait(writer, Box::new(new))
    }

    fn swap_and_wait(&self, writer: WriterLock<'_>, new: Box<T>) -> T {
        let domain = self.domain.get();
        track::assert_not_held(domain.id(), "GraceCell::replace");
        let old = self.swap(writer, new);
        domain.synchronize();
        // SAFETY: `old` came from `Box::into_raw`, was unpublished before the grace period, and
        // no section that could have loaded it is still running.
        *unsafe { Box::from_raw(old) }
    }

    /// Publishes `value` and retires the old one ([`GraceDomain::retire`]): the old value is
    /// dropped once no reader can still see it, by the first call on the domain that finds its
    /// grace period over (this one, if it completes the batch's grace period with no reader in
    /// the way), without this writer waiting for readers. The deferred counterpart of [`replace`](Self::replace), for
    /// writers that must not block on a reader and do not need the old value back; the store of
    /// `arc-swap` and of `crossbeam-epoch`'s `Atomic::swap` + `defer_destroy`.
    ///
    /// Writers serialise on the cell's writer lock for the swap only. The drop of the old value
    /// runs where and when `retire`'s docs say, in a batch, on the thread of that call
    /// ([`GraceDomain::barrier`] waits for it). Never waits for readers while the domain's
    /// backlog is under its limit: the store that fills a batch starts its grace period, which
    /// costs a `membarrier` system call unless frequent grace periods have moved the readers to
    /// the slots (and, where `membarrier` was refused, up to about 10 ms of the signal barrier
    /// waiting for acknowledgements, then the barrier is left to a later call). On a full
    /// backlog (a reader stalled in its section for a whole backlog of stores) it waits as
    /// `retire` does.
    ///
    /// # Panics
    ///
    /// As [`replace`](Self::replace): in builds with `debug_assertions`, if the calling thread is
    /// inside a read section of the cell's domain; and from inside [`update`](Self::update)'s
    /// closure on the same cell.
    ///
    /// ```
    /// use drainable::GraceCell;
    ///
    /// let routes = GraceCell::new(vec!["/a"]);
    /// routes.store(vec!["/a", "/b"]); // the old Vec is dropped later, after a grace period
    /// assert_eq!(routes.read().len(), 2);
    /// routes.domain().barrier(); // now it has been dropped
    /// ```
    pub fn store(&self, value: T)
    where
        T: Send + 'static,
    {
        let writer = self.lock_writer("GraceCell::store");
        let domain = self.domain.get();
        track::assert_not_held(domain.id(), "GraceCell::store");
        let old = self.swap(writer, Box::new(value));
        // SAFETY: `old` came from `Box::into_raw` and was unpublished by the swap; ownership
        // passes to the domain, which drops it only after a grace period that starts after this
        // call, so after every section that could have loaded it.
        domain.retire_unchecked(unsafe { Retired::from_raw(old) });
    }

    /// Publishes `new` and unpublishes the current value, which the caller now owns (to free
    /// after a grace period that begins after this). The writer lock is held only for the swap:
    /// writers wait for each other's swaps and `update`'s closures, never for each other's grace
    /// periods (which they share instead).
    pub(crate) fn swap(&self, writer: WriterLock<'_>, new: Box<T>) -> *mut T {
        // AcqRel: Release publishes the new value to readers; Acquire takes ownership of the
        // old one from the writer that published it.
        let old = self.ptr.swap(Box::into_raw(new), Ordering::AcqRel);
        drop(writer);
        old
    }

    /// Reads the current value through a guard that owns a reference to the cell: `Send` and
    /// `'static` (for `T: Send + Sync`), so it can be held across an `.await` and dropped on
    /// another thread. A read section of the cell's domain until dropped, like
    /// [`read`](Self::read).
    ///
    /// Costs a section in the domain's per-CPU slots (one CAS on the current CPU's slot, and a
    /// `fetch_sub` on it when dropped, wherever that happens: a record is written only by its
    /// own thread) plus the `Arc` clone; `read`'s section is plain stores on the thread's
    /// record. The debug-build self-deadlock detector does not track it (it can move between
    /// threads).
    ///
    /// ```
    /// use drainable::GraceCell;
    /// use std::sync::Arc;
    ///
    /// let config = Arc::new(GraceCell::new(String::from("v1")));
    /// let guard = config.read_owned();
    /// let reader = std::thread::spawn(move || guard.len()); // moves to another thread
    /// assert_eq!(reader.join().unwrap(), 2);
    /// assert_eq!(config.replace("v2".into()), "v1");
    /// ```
    #[must_use = "the value is readable only while the guard lives"]
    pub fn read_owned(self: &Arc<Self>) -> OwnedGraceGuard<T> {
        let (phase, slot) = self.domain.get().enter_raw();
        // Acquire: pairs with the writer's swap (publish → reader).
        let ptr = self.ptr.load(Ordering::Acquire);
        OwnedGraceGuard {
            cell: Arc::clone(self),
            // SAFETY: `Box::into_raw` never returns null.
            value: unsafe { NonNull::new_unchecked(ptr) },
            phase,
            slot,
        }
    }

    /// The writer lock, for the futures (`awaiting/grace.rs`).
    #[track_caller]
    pub(crate) fn lock_writer_for(&self, op: &str) -> WriterLock<'_> {
        self.lock_writer(op)
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
        let me = platform::thread_token();
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
pub(crate) struct WriterLock<'a> {
    owner: &'a crate::platform::AtomicUsize,
    _lock: MutexGuard<'a, ()>,
}

impl Drop for WriterLock<'_> {
    fn drop(&mut self) {
        // Relaxed: as in `lock_writer`; runs before `_lock` unlocks.
        self.owner.store(0, Ordering::Relaxed);
    }
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

impl<T> From<T> for GraceCell<T> {
    /// A cell holding `value` in its own domain, as [`GraceCell::new`].
    ///
    /// ```
    /// let c: drainable::GraceCell<&str> = "v1".into();
    /// assert_eq!(*c.read(), "v1");
    /// ```
    fn from(value: T) -> Self {
        Self::new(value)
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
    /// A pointer, not a `&'a T`: a reference field of a guard passed by value to `drop` stays
    /// protected until that call returns, after the section has ended, while a writer may
    /// already be freeing the value (Stacked Borrows reports that). The release-path rule of
    /// `docs/design.md` section 4, for the value.
    value: NonNull<T>,
    _section: ReadSection<'a>,
    _value: PhantomData<&'a T>,
}

// SAFETY: a shared `&GraceGuard` gives `&T` only, as the `&'a T` it stands for would
// (`T: Sync`); its section is `Sync` (a `&ReadSection` gives access to nothing).
unsafe impl<T: Sync> Sync for GraceGuard<'_, T> {}

impl<T> Deref for GraceGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: loaded inside the section, which the value outlives (see `read`); the
        // returned reference borrows the guard, so it cannot outlive the section.
        unsafe { self.value.as_ref() }
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
        fmt::Debug::fmt(&**self, f)
    }
}

/// A read guard of an `Arc<GraceCell<T>>`, from [`GraceCell::read_owned`]: derefs to the value;
/// a read section of the cell's domain until dropped, on whichever thread drops it. `Send` and
/// `Sync` when `T: Send + Sync`, and `'static` when `T` is: it can be held across an `.await`.
///
/// ```
/// use drainable::{GraceCell, OwnedGraceGuard};
/// use std::sync::Arc;
///
/// fn send_static<X: Send + 'static>(_: &X) {}
/// let cell = Arc::new(GraceCell::new(vec![1, 2]));
/// let g: OwnedGraceGuard<Vec<i32>> = cell.read_owned();
/// send_static(&g);
/// assert_eq!(g.len(), 2);
/// ```
#[must_use = "the value is readable only while the guard lives"]
pub struct OwnedGraceGuard<T> {
    cell: Arc<GraceCell<T>>,
    value: NonNull<T>,
    phase: u32,
    slot: u32,
}

// SAFETY: the guard shares `&T` with whichever thread holds it (`T: Sync`) and keeps an
// `Arc<GraceCell<T>>`, which is `Send` for `T: Send + Sync`; its section ends on any thread
// (`GraceDomain::leave_raw` is a decrement of a shared slot).
unsafe impl<T: Send + Sync> Send for OwnedGraceGuard<T> {}
// SAFETY: `&OwnedGraceGuard` gives `&T` only (`T: Sync`).
unsafe impl<T: Send + Sync> Sync for OwnedGraceGuard<T> {}

impl<T> OwnedGraceGuard<T> {
    /// The cell this guard reads. An associated function (`OwnedGraceGuard::cell(&g)`), so it
    /// does not shadow a method of `T`.
    ///
    /// ```
    /// use drainable::{GraceCell, OwnedGraceGuard};
    /// use std::sync::Arc;
    ///
    /// let cell = Arc::new(GraceCell::new(1));
    /// let g = cell.read_owned();
    /// assert!(Arc::ptr_eq(OwnedGraceGuard::cell(&g), &cell));
    /// ```
    pub fn cell(this: &Self) -> &Arc<GraceCell<T>> {
        &this.cell
    }
}

impl<T> Deref for OwnedGraceGuard<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the pointer was published when the section began, and is freed only after a
        // grace period that began after it was unpublished; this section holds that up.
        unsafe { self.value.as_ref() }
    }
}

impl<T> Drop for OwnedGraceGuard<T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the `Arc` keeps the cell, and so its domain, alive past the decrement; the
        // guard owns the section, ended once, here.
        unsafe { GraceDomain::leave_raw(self.cell.domain.get(), self.phase, self.slot) };
    }
}

impl<T: fmt::Debug> fmt::Debug for OwnedGraceGuard<T> {
    /// Formats the value.
    ///
    /// ```
    /// let c = std::sync::Arc::new(drainable::GraceCell::new(7));
    /// assert_eq!(format!("{:?}", c.read_owned()), "7");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::thread;
    use std::time::Duration;

    use crate::test_support::{Counted, hold_on_thread, iters};

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

    /// `store` retires the old value: never dropped while a reader that loaded it is inside,
    /// dropped by the barrier after.
    #[test]
    fn store_retires_the_old_value() {
        let drops = Arc::new(AtomicUsize::new(0));
        struct Count(Arc<AtomicUsize>, u32);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let cell = Arc::new(GraceCell::new(Count(Arc::clone(&drops), 1)));
        let guard = cell.read_owned(); // the slots path, held on another thread below
        let reader = thread::spawn(move || {
            assert_eq!(guard.1, 1);
            guard
        });
        let guard = reader.join().unwrap();
        cell.store(Count(Arc::clone(&drops), 2));
        assert_eq!(cell.read().1, 2);
        cell.domain()
            .synchronize_timeout(Duration::ZERO)
            .unwrap_err();
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        assert_eq!(guard.1, 1);
        drop(guard);
        cell.domain().barrier();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert_eq!(cell.domain().backlog(), 0);
    }

    #[test]
    #[should_panic(expected = "GraceCell::store called from inside GraceCell::update")]
    fn store_inside_update_panics() {
        let c = GraceCell::new(1);
        c.update(|v| {
            c.store(*v);
            *v
        });
    }

    #[test]
    fn shared_domain_serves_several_cells() {
        let domain = Arc::new(GraceDomain::new());
        let a = GraceCell::with_domain(1, Arc::clone(&domain));
        let b = GraceCell::with_domain(2, Arc::clone(&domain));
        thread::scope(|s| {
            // A reader of `a` delays writers of `b`: same domain.
            let release = hold_on_thread(s, || a.read());
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
