//! [`Registry<T>`]: a callback registry whose removal blocks until no call into the removed
//! entry is in flight, so `unregister(handle); drop(data);` is sound: the seed thread's
//! `register_foo` / `deregister(); kfree(my_data)`, ready-made.
//!
//! # Design
//!
//! Entries live in *slots*, each a [`DrainableWith`] around a cell holding `Option<T>`. Slots
//! sit in an append-only list of chunks (chunk `k` holds `8 << k` slots) that are published
//! once with a `Release` store and freed only when the registry is dropped, so a caller can
//! walk them with no lock and no grace period: there is never memory it could still be reading
//! that someone frees.
//!
//! A slot's drainable doubles as the ownership protocol for its value:
//!
//! - A **free** slot is drained (closed, no guards): nobody reads its value, so the one thread
//!   that took the slot off the free list, under the registry's lock, may write it.
//! - `register` writes the value, then [`reopen`](DrainableWith::reopen)s the slot. Its
//!   `Release` pairs with the `Acquire` of every later acquisition: a caller that gets in sees
//!   the value.
//! - Callers ([`Registry::for_each`], [`Registry::iter`]) take a guard on each slot and read the
//!   value under it.
//! - `unregister` drains the slot (closed to new callers, then waits out the in-flight ones;
//!   every read under a guard happens-before the drain returns), takes the value out (the slot
//!   is drained, so this is again exclusive), and puts the slot on the free list.
//!
//! The registry's lock orders registrations and removals among themselves; callers never take
//! it.

use crate::counter::{Counter, PerCpu, Shared};
use crate::drainable::{DrainTimeoutError, DrainableWith, Guard, PendingDrain};
use crate::platform::{
    self as sync, AtomicPtr, AtomicU64, AtomicUsize, MutexGuard, Ordering, PoisoningMutex as Mutex,
};
use std::error::Error;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr;
use std::time::Duration;

/// One entry's storage: a drainable whose guards are the calls in flight, around the value.
type Slot<T, C> = DrainableWith<sync::UnsafeCell<Option<T>>, C>;

/// log2 of the number of slots in chunk 0. Under loom the chunks start at one slot, so that a
/// model grows the list (and publishes a chunk) with its second registration.
const BASE_SHIFT: u32 = if cfg!(drainable_loom) { 0 } else { 3 };
/// Slots in chunk 0; chunk `k` holds `BASE << k`.
const BASE: usize = 1 << BASE_SHIFT;
/// Chunks a registry can have: 32 (about 34 billion slots) on 64-bit targets, fewer where the
/// slot index would overflow `usize` (the allocation fails long before), and 4 under loom.
const MAX_CHUNKS: usize = {
    let fits = (usize::BITS - BASE_SHIFT - 1) as usize;
    let want = if cfg!(drainable_loom) { 4 } else { 32 };
    if fits < want {
        fits
    } else {
        want
    }
};

/// Slots in chunk `k`.
const fn chunk_len(k: usize) -> usize {
    BASE << k
}

/// Slots in the first `chunks` chunks.
const fn capacity(chunks: usize) -> usize {
    (BASE << chunks) - BASE
}

/// The chunk and the position in it of slot `index`. Chunk `k` holds the indices from
/// `capacity(k)` up to `capacity(k + 1)`, i.e. `index + BASE` in `[BASE << k, BASE << (k + 1))`.
const fn locate(index: usize) -> (usize, usize) {
    let n = index + BASE;
    let k = (usize::BITS - 1 - n.leading_zeros() - BASE_SHIFT) as usize;
    (k, n - chunk_len(k))
}

/// A set of callbacks (or any values) that many threads call lock-free, and whose removal
/// blocks until no call into the removed entry is in flight.
///
/// This is the seed's `register_foo` / `unregister_foo`: after [`unregister`](Self::unregister)
/// returns, no callback is running on the entry and none will start, so the value it hands
/// back (and anything it points to) may be freed on the next line. Where the remover cannot
/// wait, [`prepare_unregister`](Self::prepare_unregister) closes the entry reversibly, and
/// [`unregister_timeout`](Self::unregister_timeout) is "unload or fail".
///
/// `C` picks how the calls in flight are counted, per entry: [`Shared`] (the default; one
/// word per entry) or [`PerCpu`](crate::PerCpu) (per-CPU counters, so callers on different
/// cores never write the same cache line; it costs `128 ×` CPUs (up to 64) bytes per slot and
/// makes registrations and removals a pass over them).
///
/// # Progress
///
/// | operation | guarantee | waits for |
/// |---|---|---|
/// | [`for_each`](Self::for_each), [`iter`](Self::iter) | lock-free (bar what the callback does) | nothing: never the lock, never a registration or removal |
/// | [`register`](Self::register) | blocking, briefly | the registry's lock (held for O(1) amortised work by other registrations and removals) |
/// | [`prepare_unregister`](Self::prepare_unregister) | does not wait for callers | nothing |
/// | [`unregister`](Self::unregister), [`PendingRemoval::commit`] | blocking, starvation-free | the calls into *that* entry that began before it closed; then the lock, briefly |
/// | [`unregister_all`](Self::unregister_all) | blocking, starvation-free | as `unregister`, for all at once: the longest, not the sum |
/// | [`unregister_timeout`](Self::unregister_timeout) | blocking, bounded by the timeout | as `unregister` |
/// | [`len`](Self::len) | wait-free | nothing |
///
/// # Deadlocks
///
/// A callback must not *wait* for the removal of an entry a call in flight is running on: a
/// callback that unregisters its own entry would wait for itself. Debug builds detect that
/// case and panic (see [`unregister`](Self::unregister)); in release builds it hangs. The
/// same holds for an [`EntryGuard`] held by the removing thread. Registering from a callback,
/// or preparing a removal, is fine.
///
/// # Example
///
/// ```
/// use drainable::Registry;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::thread;
///
/// // Each "module" registers a hook with its own data.
/// struct Hook {
///     name: &'static str,
///     calls: AtomicU64,
/// }
///
/// let hooks = Arc::new(Registry::new());
/// let netfilter = hooks.register(Hook { name: "netfilter", calls: AtomicU64::new(0) });
/// let sched = hooks.register(Hook { name: "sched", calls: AtomicU64::new(0) });
///
/// // The hot path: every packet goes through every hook, lock-free.
/// let host = {
///     let hooks = Arc::clone(&hooks);
///     thread::spawn(move || {
///         for _packet in 0..1000 {
///             hooks.for_each(|h: &Hook| {
///                 h.calls.fetch_add(1, Ordering::Relaxed);
///             });
///         }
///     })
/// };
///
/// // Unload a module while packets flow: when `unregister` returns no call is in flight.
/// let data = hooks.unregister(netfilter);
/// assert_eq!(data.name, "netfilter");
/// drop(data); // kfree(my_data): nothing can touch it any more
///
/// host.join().unwrap();
/// assert_eq!(hooks.unregister(sched).calls.into_inner(), 1000);
/// assert!(hooks.is_empty());
/// ```
///
/// A registry shared between threads needs `T: Send + Sync` (callers on several threads read
/// the values; a value registered on one thread may be unregistered on another):
///
/// ```compile_fail,E0277
/// use drainable::Registry;
/// use std::cell::Cell;
///
/// let r = Registry::new();
/// let _h = r.register(Cell::new(0)); // Cell is Send but not Sync
/// std::thread::scope(|s| {
///     s.spawn(|| r.for_each(|c| c.set(1)));
/// });
/// ```
pub struct Registry<T, C: Counter = Shared> {
    /// Chunk `k` (`chunk_len(k)` slots), or null until it is allocated. Written once, under the
    /// lock, and freed only by `Drop`.
    chunks: [AtomicPtr<Slot<T, C>>; MAX_CHUNKS],
    /// The slots ever handed out (`Control::next`), published for callers: they walk no
    /// further. Every chunk below it is published before it is raised.
    high: AtomicUsize,
    /// Registered values, removals in progress included (a snapshot for `len`).
    len: AtomicUsize,
    /// This registry's identity in its registrations; 0 until the first registration (so that
    /// `new` can be `const`).
    id: AtomicU64,
    control: Mutex<Control>,
    /// The registry owns its `T`s (and drops them).
    _values: PhantomData<T>,
}

/// What registrations and removals change, under the lock.
struct Control {
    /// Slots taken out of service by a finished removal, to reuse (last in, first out).
    free: Vec<usize>,
    /// Slots ever handed out; the next new slot's index.
    next: usize,
    /// Chunks allocated.
    chunks: usize,
}

// SAFETY: a registry owns its values, so sending it sends them (`T: Send`). Nothing else in it
// is tied to a thread: the chunk pointers are its own heap memory, the counters are `Send`.
unsafe impl<T: Send, C: Counter> Send for Registry<T, C> {}

// SAFETY: through a `&Registry`, callers on several threads read values at once (`T: Sync`),
// and a value registered on one thread can be unregistered, i.e. moved out, on another
// (`T: Send`). Every write to a slot's value is exclusive: see the module docs.
unsafe impl<T: Send + Sync, C: Counter> Sync for Registry<T, C> {}

/// The auto traits, checked at compile time (the `compile_fail` example on [`Registry`] checks
/// the negative case).
const _: fn() = || {
    fn send_sync<X: Send + Sync>() {}
    fn send<X: Send>() {}
    send_sync::<Registry<u32>>();
    send_sync::<Registry<u32, PerCpu>>();
    send_sync::<Registration<std::rc::Rc<u32>>>();
    send_sync::<PendingRemoval<'static, u32>>();
    send_sync::<RegistryIter<'static, u32>>();
    send_sync::<UnregisterTimeoutError<u32>>();
    send::<Registry<std::cell::Cell<u32>>>();
    fn sync<X: Sync>() {}
    sync::<EntryGuard<'static, u32>>();
};

impl<T> Registry<T, Shared> {
    sync::const_fn! {
        /// An empty registry, counting calls in flight with one word per entry ([`Shared`];
        /// see [`with_counter`](Registry::with_counter) for the others). Allocates nothing
        /// until the first registration, and is a `const fn`, so a registry can be a
        /// `static`.
        ///
        /// ```
        /// use drainable::Registry;
        ///
        /// static HOOKS: Registry<fn(u32) -> u32> = Registry::new();
        ///
        /// let h = HOOKS.register(|x| x + 1);
        /// let mut sum = 0;
        /// HOOKS.for_each(|f| sum += f(1));
        /// assert_eq!(sum, 2);
        /// HOOKS.unregister(h);
        /// ```
        pub const fn new() -> Self {
            Self::with_counter()
        }
    }
}

impl<T, C: Counter> Registry<T, C> {
    /// An empty chunk pointer, to initialise the table in a `const fn` (an array repeat needs
    /// a constant for a non-`Copy` element). Each use is a fresh atomic.
    #[cfg(not(drainable_loom))]
    #[allow(clippy::declare_interior_mutable_const)]
    const NO_CHUNK: AtomicPtr<Slot<T, C>> = AtomicPtr::new(ptr::null_mut());

    #[cfg(not(drainable_loom))]
    const fn no_chunks() -> [AtomicPtr<Slot<T, C>>; MAX_CHUNKS] {
        [Self::NO_CHUNK; MAX_CHUNKS]
    }

    #[cfg(drainable_loom)]
    fn no_chunks() -> [AtomicPtr<Slot<T, C>>; MAX_CHUNKS] {
        std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut()))
    }

    sync::const_fn! {
        /// An empty registry counting calls in flight with the scheme `C`, e.g. [`PerCpu`]
        /// for hot paths called from many cores (it costs `128 ×` CPUs bytes per slot).
        /// [`new`](Registry::new) is the same for the default, [`Shared`]. Allocates nothing
        /// until the first registration, and is a `const fn`.
        ///
        /// ```
        /// use drainable::{PerCpu, Registry};
        ///
        /// static HOOKS: Registry<&str, PerCpu> = Registry::with_counter();
        ///
        /// let h = HOOKS.register("fast");
        /// assert_eq!(HOOKS.iter().count(), 1);
        /// HOOKS.unregister(h);
        ///
        /// let local = Registry::<u64, PerCpu>::with_counter();
        /// # let _ = local;
        /// ```
        pub const fn with_counter() -> Self {
            Registry {
                chunks: Self::no_chunks(),
                high: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
                id: AtomicU64::new(0),
                control: Mutex::new(Control {
                    free: Vec::new(),
                    next: 0,
                    chunks: 0,
                }),
                _values: PhantomData,
            }
        }
    }

    /// Adds `value`; callers see it from their next pass on (a pass already under way may or
    /// may not). Returns the [`Registration`] that removes it again.
    ///
    /// Reuses the slot of a finished removal if there is one, else allocates: the slot list
    /// grows by doubling chunks, which are never moved or freed before the registry.
    ///
    /// Blocking, briefly: takes the registry's lock, shared only with other registrations and
    /// removals, for O(1) amortised work. Never waits for callers: a free slot has none.
    ///
    /// # Panics
    ///
    /// If the registry has no slot left (about 34 billion on 64-bit targets; memory runs out
    /// first).
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let h = r.register(String::from("eth0"));
    /// assert_eq!(r.len(), 1);
    /// assert_eq!(r.unregister(h), "eth0");
    /// ```
    pub fn register(&self, value: T) -> Registration<T> {
        let (registry, index) = {
            let mut control = self.lock();
            let registry = self.id_or_assign();
            let index = match control.free.pop() {
                Some(index) => index,
                None => self.fresh_slot(&mut control),
            };
            // Relaxed: a statistic; it orders nothing.
            self.len.fetch_add(1, Ordering::Relaxed);
            (registry, index)
        };
        let slot = self.slot(index);
        slot.value.with_mut(|p| {
            // SAFETY: the slot is drained (free slots always are) and this thread took it off
            // the free list (or past the high-water mark) under the lock, so it is the only
            // thread that writes the slot, no guard exists, and none can be taken before the
            // `reopen` below. Readers that read it after the reopen synchronise with it.
            unsafe {
                debug_assert!((*p).is_none(), "a free slot holds a value");
                ptr::write(p, Some(value));
            }
        });
        // Release (inside `reopen`): publishes the value to every caller that gets in.
        let reopened = slot.reopen();
        debug_assert!(reopened, "a free slot was not drained");
        Registration {
            registry,
            index,
            _value: PhantomData,
        }
    }

    /// Calls `f` on every registered value. The hot path.
    ///
    /// An entry whose registration happened before the call (returned on this thread, or
    /// on another one that this thread synchronised with) and whose removal does not begin
    /// during the pass is called exactly once. An entry registered during the pass may or
    /// may not be. An entry whose removal has begun (by any of the `unregister` methods, or
    /// [`prepare_unregister`](Self::prepare_unregister)) is skipped from then on, and its
    /// removal waits until the calls already in it return. No entry is called twice in one
    /// pass.
    ///
    /// Lock-free: never takes the registry's lock and never waits for a registration or a
    /// removal in progress. Per entry, one guard acquisition and release (see
    /// [`DrainableWith::try_acquire`]); the pass walks the slots up to the most ever in use,
    /// skipping free ones with one failed acquisition each.
    ///
    /// # Panics
    ///
    /// If `f` panics: the panic propagates and the pass stops there, having released its
    /// guards. Also if about 33 million calls into one entry are in flight at once (see
    /// [`DrainableWith::try_acquire`]).
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let a = r.register(1);
    /// let b = r.register(2);
    /// let mut sum = 0;
    /// r.for_each(|v| sum += v);
    /// assert_eq!(sum, 3);
    /// # r.unregister_all([a, b]);
    /// ```
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        for chunk in self.chunks() {
            for slot in chunk {
                if let Some(guard) = slot.try_acquire() {
                    f(value(&*guard));
                }
            }
        }
    }

    /// An iterator over the registered values that yields each one under an [`EntryGuard`],
    /// for callers that want to stop early, hold an entry across other work, or compose
    /// with iterator adapters. Visits entries as [`for_each`](Self::for_each) does.
    ///
    /// Lock-free, as `for_each`. A guard that is kept delays the removal of its entry until
    /// it is dropped.
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let hs: Vec<_> = ["lo", "eth0", "wlan0"].into_iter().map(|n| r.register(n)).collect();
    /// let first_e = r.iter().find(|name| name.starts_with('e'));
    /// assert_eq!(first_e.as_deref(), Some(&"eth0"));
    /// drop(first_e); // release it before removing it
    /// assert_eq!(r.iter().count(), 3);
    /// r.unregister_all(hs);
    /// ```
    pub fn iter(&self) -> RegistryIter<'_, T, C> {
        RegistryIter {
            chunks: self.chunks(),
            slots: [].iter(),
        }
    }

    /// Removes an entry: closes it to new calls at once, blocks until every call in flight
    /// into it has returned, then hands its value back. After it returns no callback runs on
    /// the value and none will, so it (and whatever it points to) may be freed at once.
    ///
    /// Blocking and starvation-free: waits only for the calls into this entry that began
    /// before it closed (spinning briefly, then sleeping); calls into other entries, and new
    /// registrations, neither delay it nor are delayed by it. Then takes the registry's lock
    /// briefly to recycle the slot.
    ///
    /// # Panics
    ///
    /// - If `registration` was issued by another registry.
    /// - In builds with `debug_assertions`, if the calling thread is inside a call into this
    ///   entry (a callback unregistering itself, or an [`EntryGuard`] of it held): it would
    ///   wait for itself forever. The entry then stays registered.
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let h = r.register(Box::new([0u8; 64])); // a callback's private data
    /// let data = r.unregister(h);
    /// drop(data); // no call can still be reading it
    /// assert!(r.is_empty());
    /// ```
    #[track_caller]
    pub fn unregister(&self, registration: Registration<T>) -> T {
        self.prepare_unregister(registration).commit()
    }

    /// Removes several entries, closing *all* of them before waiting for any: the total
    /// wait is that of the slowest entry, not the sum. Returns the values in the order of
    /// the registrations.
    ///
    /// Blocking and starvation-free, as [`unregister`](Self::unregister).
    ///
    /// # Panics
    ///
    /// - If any registration was issued by another registry. Every registration is checked
    ///   before the first entry is closed, so nothing is removed; the registrations passed are
    ///   consumed, so their entries stay registered until the registry is dropped.
    /// - In builds with `debug_assertions`, as [`unregister`](Self::unregister); the entries
    ///   not yet removed then stay registered.
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let hs = vec![r.register('a'), r.register('b'), r.register('c')];
    /// assert_eq!(r.unregister_all(hs), ['a', 'b', 'c']);
    /// assert!(r.is_empty());
    /// ```
    #[track_caller]
    pub fn unregister_all(
        &self,
        registrations: impl IntoIterator<Item = Registration<T>>,
    ) -> Vec<T> {
        let registrations: Vec<_> = registrations.into_iter().collect();
        for registration in &registrations {
            self.check(registration);
        }
        let pending: Vec<_> = registrations
            .into_iter()
            .map(|r| self.prepare_unregister(r))
            .collect();
        pending.into_iter().map(PendingRemoval::commit).collect()
    }

    /// The seed's `prepare_deregister`: closes the entry to new calls at once, without
    /// waiting, reversibly. The [`PendingRemoval`] then [`commit`](PendingRemoval::commit)s
    /// (waits, and hands the value back) or [`undo`](PendingRemoval::undo)es (the entry is
    /// live again, and the registration is handed back).
    ///
    /// Never waits for callers. With [`Shared`] counting it is lock-free; with
    /// [`PerCpu`](crate::PerCpu) it folds the entry's per-CPU counts, under a lock only
    /// removals of this entry take.
    ///
    /// # Panics
    ///
    /// If `registration` was issued by another registry.
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let h = r.register("uart0");
    /// let pending = r.prepare_unregister(h);
    /// assert_eq!(r.iter().count(), 0); // callers skip it at once
    /// let h = pending.undo(); // still in use after all
    /// assert_eq!(r.iter().count(), 1);
    /// assert_eq!(r.prepare_unregister(h).commit(), "uart0");
    /// ```
    #[track_caller]
    pub fn prepare_unregister(&self, registration: Registration<T>) -> PendingRemoval<'_, T, C> {
        let index = registration.index;
        let slot = self.check(&registration);
        PendingRemoval {
            registry: self,
            registration: registration.registry,
            index,
            pending: slot.prepare_drain(),
        }
    }

    /// "Unload or fail", as `delete_module` does: closes the entry, waits up to `timeout` for
    /// the calls in flight into it, and on success hands the value back as
    /// [`unregister`](Self::unregister) does. On timeout the entry is live again and the
    /// error gives the registration back.
    ///
    /// Blocking, for at most about `timeout` (then the lock, briefly, on success).
    ///
    /// # Errors
    ///
    /// [`UnregisterTimeoutError`] if calls were still in flight at the deadline; it reports
    /// how many, and [`into_registration`](UnregisterTimeoutError::into_registration) hands
    /// the registration back to try again later.
    ///
    /// # Panics
    ///
    /// If `registration` was issued by another registry.
    ///
    /// ```
    /// use drainable::Registry;
    /// use std::time::Duration;
    ///
    /// let r = Registry::new();
    /// let h = r.register("nvme0");
    ///
    /// let io = r.iter().next().unwrap(); // a call in flight
    /// let err = r.unregister_timeout(h, Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(err.outstanding(), 1);
    /// drop(io);
    /// assert_eq!(r.iter().count(), 1); // live again
    ///
    /// let h = err.into_registration();
    /// assert_eq!(r.unregister_timeout(h, Duration::from_secs(1)).unwrap(), "nvme0");
    /// ```
    #[track_caller]
    pub fn unregister_timeout(
        &self,
        registration: Registration<T>,
        timeout: Duration,
    ) -> Result<T, UnregisterTimeoutError<T>> {
        let slot = self.check(&registration);
        match slot.drain_timeout(timeout) {
            Ok(()) => Ok(self.take_drained(registration.index)),
            // The slot is open again: nobody else closes a slot whose registration we hold.
            Err(error) => Err(UnregisterTimeoutError {
                registration,
                error,
            }),
        }
    }

    /// The number of registered values, entries whose removal is in progress included. A
    /// snapshot: other threads may change it at any time.
    ///
    /// Wait-free: one relaxed load.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// assert_eq!(r.len(), 0);
    /// let h = r.register(());
    /// assert_eq!(r.len(), 1);
    /// r.unregister(h);
    /// assert_eq!(r.len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        // Relaxed: a snapshot that orders nothing.
        self.len.load(Ordering::Relaxed)
    }

    /// Whether no value is registered: `len() == 0`, with the same caveat.
    ///
    /// ```
    /// let r = drainable::Registry::<u8>::new();
    /// assert!(r.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        // Nothing under the lock can panic half-way (the only panic, a full registry, comes
        // before any change), so a poisoned lock holds consistent data.
        self.control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This registry's identity, assigned by the first registration. Call under the lock.
    fn id_or_assign(&self) -> u64 {
        // Relaxed: the only store is below, under the lock we hold.
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let id = sync::unique_id();
        // Relaxed: a thread that holds one of this registry's registrations got it through a
        // chain of happens-before from this store, so it reads this value (coherence); a
        // thread holding a foreign one reads 0 or this value, neither of which matches it.
        self.id.store(id, Ordering::Relaxed);
        id
    }

    /// A never-used slot: the next one past the high-water mark, allocating a chunk if the
    /// last one is full.
    fn fresh_slot(&self, control: &mut Control) -> usize {
        if control.next == capacity(control.chunks) {
            self.grow(control);
        }
        let index = control.next;
        control.next += 1;
        // Release: callers that read this bound with `Acquire` also see every chunk below it
        // published (chunk → caller).
        self.high.store(control.next, Ordering::Release);
        index
    }

    #[cold]
    fn grow(&self, control: &mut Control) {
        let k = control.chunks;
        assert!(
            k < MAX_CHUNKS,
            "drainable: Registry full ({} slots)",
            capacity(MAX_CHUNKS)
        );
        let slots: Box<[Slot<T, C>]> = (0..chunk_len(k))
            // Drained from the start: the state of every free slot.
            .map(|_| Slot::<T, C>::new_drained(sync::UnsafeCell::new(None)))
            .collect();
        let chunk = Box::into_raw(slots) as *mut Slot<T, C>;
        // Release: the slots' construction happens-before any caller's use of them
        // (chunk → caller; callers load with `Acquire`).
        self.chunks[k].store(chunk, Ordering::Release);
        control.chunks = k + 1;
    }

    /// The slot at `index`, which must have been handed out (it is below the high-water mark
    /// the caller synchronised with).
    fn slot(&self, index: usize) -> &Slot<T, C> {
        let (k, offset) = locate(index);
        // Acquire: chunk → caller, as in `chunks()`.
        let chunk = self.chunks[k].load(Ordering::Acquire);
        assert!(
            !chunk.is_null(),
            "drainable: Registry slot {index} not allocated"
        );
        // SAFETY: a non-null chunk pointer came from `grow`: a boxed slice of `chunk_len(k)`
        // initialised slots (`offset` is below it by `locate`), published with the `Release`
        // this load synchronises with, and freed only by `Drop`, which needs `&mut self`.
        unsafe { &*chunk.add(offset) }
    }

    /// The slot of `registration`, after checking that this registry issued it.
    #[track_caller]
    fn check(&self, registration: &Registration<T>) -> &Slot<T, C> {
        // Relaxed: see `id_or_assign`.
        let id = self.id.load(Ordering::Relaxed);
        if registration.registry != id {
            foreign(registration.registry, id);
        }
        self.slot(registration.index)
    }

    /// Takes the value out of a drained slot whose registration the caller owned, and puts
    /// the slot on the free list.
    fn take_drained(&self, index: usize) -> T {
        let slot = self.slot(index);
        debug_assert!(slot.is_drained());
        let value = slot.value.with_mut(|p| {
            // SAFETY: the slot is drained: no guard exists, every read under one
            // happened-before the drain returned, and none can be taken until a `reopen`,
            // which only `register` does, after it takes the slot off the free list, which we
            // do below. The caller owned the registration, so no other thread removes it.
            unsafe { (*p).take() }
        });
        let mut control = self.lock();
        control.free.push(index);
        // Relaxed: a statistic.
        self.len.fetch_sub(1, Ordering::Relaxed);
        drop(control);
        match value {
            Some(value) => value,
            None => unreachable!("drainable: a registered slot held no value"),
        }
    }

    /// The published chunks, as slices, up to the high-water mark.
    fn chunks(&self) -> Chunks<'_, T, C> {
        Chunks {
            registry: self,
            next: 0,
            // Acquire: pairs with the `Release` in `fresh_slot`: every chunk below the bound
            // is published.
            remaining: self.high.load(Ordering::Acquire),
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn foreign(theirs: u64, ours: u64) -> ! {
    if ours == 0 {
        panic!(
            "drainable: a Registration of registry #{theirs} was passed to a Registry that has \
             never registered anything"
        );
    }
    panic!(
        "drainable: a Registration of registry #{theirs} was passed to registry #{ours}; a \
         registration can only remove the entry of the registry that issued it"
    );
}

/// The value of an open (or guarded) slot.
#[inline]
fn value<T>(cell: &sync::UnsafeCell<Option<T>>) -> &T {
    // SAFETY: callers hold a guard of the slot, so it is not drained: its value was written
    // before the `reopen` their acquisition synchronised with, and is taken out only after a
    // drain, which waits for their guard. The reference lives no longer than the borrow of
    // `cell`, i.e. the guard.
    let value = cell.with(|p| unsafe { (*p).as_ref() });
    match value {
        Some(value) => value,
        None => unreachable!("drainable: an open registry slot held no value"),
    }
}

impl<T, C: Counter> Default for Registry<T, C> {
    /// An empty registry, as [`Registry::with_counter`].
    ///
    /// ```
    /// use drainable::{PerCpu, Registry};
    ///
    /// let r: Registry<u32> = Default::default();
    /// assert!(r.is_empty());
    /// let r: Registry<u32, PerCpu> = Default::default();
    /// assert!(r.is_empty());
    /// ```
    fn default() -> Self {
        Self::with_counter()
    }
}

impl<T, C: Counter> Drop for Registry<T, C> {
    fn drop(&mut self) {
        // Owned boxes first, so that if a value's `drop` panics, unwinding still frees the
        // other chunks (a slice's drop goes on past a panicking element).
        let chunks: Vec<Box<[Slot<T, C>]>> = (0..MAX_CHUNKS)
            .map_while(|k| {
                // Relaxed: `&mut self` excludes every other access.
                let chunk = self.chunks[k].load(Ordering::Relaxed);
                (!chunk.is_null()).then(|| {
                    // SAFETY: `chunk` came from `Box::into_raw` of a slice of `chunk_len(k)`
                    // slots in `grow`, is rebuilt only here, once, and nothing can borrow the
                    // slots any more (`&mut self`; guards borrow the registry).
                    unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(chunk, chunk_len(k))) }
                })
            })
            .collect();
        drop(chunks); // drops each slot, hence each value still registered
    }
}

impl<T: fmt::Debug, C: Counter> fmt::Debug for Registry<T, C> {
    /// Shows the number of registered values and the ones callers can reach now.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let a = r.register("a");
    /// let b = r.register("b");
    /// let p = r.prepare_unregister(b); // being removed: callers skip it
    /// assert_eq!(format!("{r:?}"), r#"Registry { len: 2, entries: ["a"] }"#);
    /// # drop(p);
    /// # r.unregister(a);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Entries<'a, T, C: Counter>(&'a Registry<T, C>);
        impl<T: fmt::Debug, C: Counter> fmt::Debug for Entries<'_, T, C> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.iter()).finish()
            }
        }
        f.debug_struct("Registry")
            .field("len", &self.len())
            .field("entries", &Entries(self))
            .finish()
    }
}

/// The handle of one registered entry, from [`Registry::register`]; give it back to an
/// `unregister` method (or [`Registry::prepare_unregister`]) to remove the entry.
///
/// Not `Clone`: it names one entry, which is removed once. It is only a token (no borrow, no
/// drop glue) and is `Send` and `Sync` whatever `T` is.
///
/// Dropping it leaves the entry registered for the rest of the registry's life (its value
/// is dropped with the registry): nothing leaks, but nothing can remove the entry either.
///
/// Using it with a registry other than the one that issued it panics:
///
/// ```should_panic
/// use drainable::Registry;
///
/// let a = Registry::new();
/// let b = Registry::new();
/// # let _ = b.register(0);
/// let h = a.register(1);
/// b.unregister(h); // panics: registry #… was passed to registry #…
/// ```
#[must_use = "dropping a Registration leaves its entry registered until the Registry is dropped"]
pub struct Registration<T> {
    registry: u64,
    index: usize,
    _value: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Registration<T> {
    /// Shows the issuing registry's number and the entry's slot.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// assert!(format!("{h:?}").starts_with("Registration { registry: "));
    /// # r.unregister(h);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("registry", &self.registry)
            .field("slot", &self.index)
            .finish()
    }
}

/// A removal in progress, from [`Registry::prepare_unregister`]: the entry is closed to new
/// calls; [`commit`](Self::commit) waits for the calls in flight and hands the value back,
/// [`undo`](Self::undo) reopens the entry and hands the registration back.
///
/// This is the seed thread's `prepare_deregister` / `commit_deregister` /
/// `undo_deregister`. Dropping it uncommitted undoes it: the entry is live again, and, with
/// its registration gone, stays registered until the registry is dropped (as after dropping
/// the [`Registration`]). Undoing is the drop that cannot block or lose a value; call
/// [`undo`](Self::undo) to keep the registration.
///
/// It is `Send` (when the registry is `Sync`): one thread may prepare, another commit.
///
/// ```
/// use drainable::Registry;
///
/// let r = Registry::new();
/// let (a, b) = (r.register(1), r.register(2));
/// let pa = r.prepare_unregister(a);
/// let pb = r.prepare_unregister(b); // both closed before any wait
/// assert_eq!(pa.commit() + pb.commit(), 3);
/// ```
#[must_use = "dropping a PendingRemoval undoes it at once (and the entry stays registered)"]
pub struct PendingRemoval<'a, T, C: Counter = Shared> {
    registry: &'a Registry<T, C>,
    /// The issuing registry's number, to rebuild the `Registration` on undo.
    registration: u64,
    index: usize,
    /// Holds the slot closed; dropping it undoes.
    pending: PendingDrain<'a, sync::UnsafeCell<Option<T>>, C>,
}

// SAFETY: the fields are a `&Registry` (which may be shared when it is `Sync`) and a
// `PendingDrain` of one of its slots, whose operations (commit, undo, the outstanding count)
// touch only the slot's counters, which are thread-safe. Committing on another thread moves
// the value there, which `T: Send` allows.
unsafe impl<T: Send + Sync, C: Counter> Send for PendingRemoval<'_, T, C> {}

// SAFETY: a `&PendingRemoval` only reads the outstanding count (atomics).
unsafe impl<T: Send + Sync, C: Counter> Sync for PendingRemoval<'_, T, C> {}

impl<'a, T, C: Counter> PendingRemoval<'a, T, C> {
    /// Waits until every call in flight into the entry has returned, then removes it and
    /// hands its value back, exactly as [`Registry::unregister`] does.
    ///
    /// Blocking and starvation-free: waits only for the calls that began before the entry
    /// closed; then takes the registry's lock briefly.
    ///
    /// # Panics
    ///
    /// In builds with `debug_assertions`, if the calling thread is inside a call into this
    /// entry (see [`Registry::unregister`]). The removal is then undone.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(vec![1, 2]);
    /// assert_eq!(r.prepare_unregister(h).commit(), [1, 2]);
    /// ```
    #[track_caller]
    pub fn commit(self) -> T {
        let PendingRemoval {
            registry,
            index,
            pending,
            ..
        } = self;
        pending.commit();
        registry.take_drained(index)
    }

    /// Waits up to `timeout` for the calls in flight into the entry. On success removes it
    /// and hands its value back, as [`commit`](Self::commit) does.
    ///
    /// Blocking, for at most about `timeout`.
    ///
    /// # Errors
    ///
    /// On timeout, gives the `PendingRemoval` back: the entry stays closed, and the caller may
    /// wait again, [`undo`](Self::undo), or ask how many calls are
    /// [`outstanding`](Self::outstanding).
    ///
    /// ```
    /// use drainable::Registry;
    /// use std::time::Duration;
    ///
    /// let r = Registry::new();
    /// let h = r.register("eth0");
    /// let call = r.iter().next().unwrap();
    /// let pending = r.prepare_unregister(h);
    /// let pending = pending.commit_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(pending.outstanding(), 1);
    /// drop(call);
    /// assert_eq!(pending.commit_timeout(Duration::from_secs(1)).unwrap(), "eth0");
    /// ```
    pub fn commit_timeout(self, timeout: Duration) -> Result<T, Self> {
        let PendingRemoval {
            registry,
            registration,
            index,
            pending,
        } = self;
        match pending.commit_timeout(timeout) {
            Ok(()) => Ok(registry.take_drained(index)),
            Err(pending) => Err(PendingRemoval {
                registry,
                registration,
                index,
                pending,
            }),
        }
    }

    /// Reopens the entry (callers reach it again) and hands its registration back.
    ///
    /// Never waits for callers (with [`PerCpu`](crate::PerCpu) counting it takes a lock only
    /// removals of this entry take).
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(7);
    /// let h = r.prepare_unregister(h).undo();
    /// assert_eq!(r.iter().map(|v| *v).sum::<i32>(), 7);
    /// # r.unregister(h);
    /// ```
    pub fn undo(self) -> Registration<T> {
        let reopened = self.pending.undo();
        // Nobody else closes a slot whose registration we hold.
        debug_assert!(reopened, "undo did not reopen the entry");
        Registration {
            registry: self.registration,
            index: self.index,
            _value: PhantomData,
        }
    }

    /// Calls into the entry still in flight (a snapshot).
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// let call = r.iter().next();
    /// let p = r.prepare_unregister(h);
    /// assert_eq!(p.outstanding(), 1);
    /// drop(call);
    /// assert_eq!(p.outstanding(), 0);
    /// # p.commit();
    /// ```
    pub fn outstanding(&self) -> usize {
        self.pending.outstanding()
    }
}

impl<T, C: Counter> fmt::Debug for PendingRemoval<'_, T, C> {
    /// Shows the entry's slot and the calls still in flight.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let p = r.prepare_unregister(r.register(()));
    /// assert_eq!(format!("{p:?}"), "PendingRemoval { slot: 0, outstanding: 0 }");
    /// # p.commit();
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRemoval")
            .field("slot", &self.index)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

/// The error of [`Registry::unregister_timeout`]: calls into the entry were still in flight
/// at the deadline, so the removal was abandoned and the entry is live again. Holds the
/// [`Registration`], to try again later.
///
/// Its [`source`](Error::source) is the slot's [`DrainTimeoutError`].
///
/// ```
/// use drainable::Registry;
/// use std::error::Error;
/// use std::time::Duration;
///
/// let r = Registry::new();
/// let h = r.register(());
/// let call = r.iter().next();
/// let err = r.unregister_timeout(h, Duration::ZERO).unwrap_err();
/// assert_eq!(err.to_string(), "unregister timed out; the entry is registered again");
/// assert_eq!(
///     err.source().unwrap().to_string(),
///     "drain timed out with 1 guard(s) still outstanding"
/// );
/// drop(call);
/// r.unregister(err.into_registration());
/// ```
pub struct UnregisterTimeoutError<T> {
    registration: Registration<T>,
    error: DrainTimeoutError,
}

impl<T> UnregisterTimeoutError<T> {
    /// How many calls into the entry were in flight at the deadline.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// let calls: Vec<_> = r.iter().chain(r.iter()).collect();
    /// let err = r.unregister_timeout(h, Duration::ZERO).unwrap_err();
    /// assert_eq!(err.outstanding(), 2);
    /// # drop(calls);
    /// # r.unregister(err.into_registration());
    /// ```
    pub fn outstanding(&self) -> usize {
        self.error.outstanding()
    }

    /// The registration, to remove the entry later.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(5);
    /// let call = r.iter().next();
    /// let err = r.unregister_timeout(h, Duration::ZERO).unwrap_err();
    /// drop(call);
    /// assert_eq!(r.unregister(err.into_registration()), 5);
    /// ```
    pub fn into_registration(self) -> Registration<T> {
        self.registration
    }
}

impl<T> fmt::Debug for UnregisterTimeoutError<T> {
    /// Shows the registration and the calls in flight at the deadline.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// let call = r.iter().next();
    /// let err = r.unregister_timeout(h, Duration::ZERO).unwrap_err();
    /// assert!(format!("{err:?}").ends_with("outstanding: 1 }"));
    /// # drop(call);
    /// # r.unregister(err.into_registration());
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnregisterTimeoutError")
            .field("registration", &self.registration)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl<T> fmt::Display for UnregisterTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unregister timed out; the entry is registered again")
    }
}

impl<T> Error for UnregisterTimeoutError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

/// A registered value, held: a call into the entry is in flight while it lives, so the
/// entry's removal waits for its drop. From [`Registry::iter`]; derefs to `T`.
///
/// `!Send`, like [`Guard`]: it is released on the thread that took it (which is what lets
/// debug builds catch a thread removing an entry it holds). `Sync` when `T` is.
///
/// ```
/// let r = drainable::Registry::new();
/// let h = r.register(String::from("hook"));
/// let g = r.iter().next().unwrap();
/// assert_eq!(g.len(), 4);
/// drop(g);
/// r.unregister(h);
/// ```
#[must_use = "an EntryGuard that is not kept is released at once"]
pub struct EntryGuard<'a, T, C: Counter = Shared> {
    guard: Guard<'a, sync::UnsafeCell<Option<T>>, C>,
}

// SAFETY: sharing a `&EntryGuard` only gives out `&T`, fine across threads when `T: Sync`.
unsafe impl<T: Sync, C: Counter> Sync for EntryGuard<'_, T, C> {}

impl<T, C: Counter> Deref for EntryGuard<'_, T, C> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        value(&*self.guard)
    }
}

impl<T: fmt::Debug, C: Counter> fmt::Debug for EntryGuard<'_, T, C> {
    /// Formats the value.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(3);
    /// assert_eq!(format!("{:?}", r.iter().next().unwrap()), "3");
    /// # r.unregister(h);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The iterator of [`Registry::iter`]: yields an [`EntryGuard`] for each registered value
/// it can reach, skipping entries being removed. Lock-free.
///
/// ```
/// let r = drainable::Registry::new();
/// let hs = [r.register(1), r.register(2)];
/// let total: i32 = r.iter().map(|v| *v).sum();
/// assert_eq!(total, 3);
/// # r.unregister_all(hs);
/// ```
pub struct RegistryIter<'a, T, C: Counter = Shared> {
    chunks: Chunks<'a, T, C>,
    slots: std::slice::Iter<'a, Slot<T, C>>,
}

// SAFETY: an `Iter` only gives out guards of a `&Registry`, which may be shared across threads
// when `T: Send + Sync`; moving or sharing it is no different from moving or sharing that
// reference.
unsafe impl<T: Send + Sync, C: Counter> Send for RegistryIter<'_, T, C> {}
// SAFETY: as for `Send`; `&Iter` exposes nothing.
unsafe impl<T: Send + Sync, C: Counter> Sync for RegistryIter<'_, T, C> {}

impl<'a, T, C: Counter> Iterator for RegistryIter<'a, T, C> {
    type Item = EntryGuard<'a, T, C>;

    #[inline]
    fn next(&mut self) -> Option<EntryGuard<'a, T, C>> {
        loop {
            for slot in self.slots.by_ref() {
                if let Some(guard) = slot.try_acquire() {
                    return Some(EntryGuard { guard });
                }
            }
            self.slots = self.chunks.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.slots.len() + self.chunks.remaining))
    }
}

// Once `next` returns `None`, the chunks are exhausted and stay so.
impl<T, C: Counter> std::iter::FusedIterator for RegistryIter<'_, T, C> {}

impl<'a, T, C: Counter> IntoIterator for &'a Registry<T, C> {
    type Item = EntryGuard<'a, T, C>;
    type IntoIter = RegistryIter<'a, T, C>;

    /// The same as [`Registry::iter`].
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(2);
    /// for v in &r {
    ///     assert_eq!(*v, 2);
    /// }
    /// # r.unregister(h);
    /// ```
    fn into_iter(self) -> RegistryIter<'a, T, C> {
        self.iter()
    }
}

impl<T, C: Counter> fmt::Debug for RegistryIter<'_, T, C> {
    /// Shows how many slots are left to visit.
    ///
    /// ```
    /// let r = drainable::Registry::<()>::new();
    /// assert_eq!(format!("{:?}", r.iter()), "RegistryIter { slots_left: 0 }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryIter")
            .field("slots_left", &(self.slots.len() + self.chunks.remaining))
            .finish()
    }
}

/// The published chunks, as slices, up to a high-water mark read once.
struct Chunks<'a, T, C: Counter> {
    registry: &'a Registry<T, C>,
    next: usize,
    /// Slots below the high-water mark not yet yielded.
    remaining: usize,
}

impl<'a, T, C: Counter> Iterator for Chunks<'a, T, C> {
    type Item = &'a [Slot<T, C>];

    #[inline]
    fn next(&mut self) -> Option<&'a [Slot<T, C>]> {
        if self.remaining == 0 {
            return None;
        }
        let k = self.next;
        let len = chunk_len(k).min(self.remaining);
        // Acquire: pairs with the `Release` that published the chunk (chunk → caller). The
        // high-water mark already implies it; this keeps the read correct on its own.
        let chunk = self.registry.chunks[k].load(Ordering::Acquire);
        // One branch per chunk and pass, to keep the slice below sound even if the
        // high-water mark were wrong.
        assert!(
            !chunk.is_null(),
            "drainable: Registry chunk {k} not published"
        );
        self.next = k + 1;
        self.remaining -= len;
        // SAFETY: every chunk below the high-water mark (read with `Acquire` in
        // `Registry::chunks`) is published, holds `chunk_len(k) >= len` initialised slots, and
        // lives as long as the registry, which `'a` borrows.
        Some(unsafe { std::slice::from_raw_parts(chunk, len) })
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;

    use crate::tests::iters;

    #[test]
    fn locate_matches_chunk_layout() {
        let mut index = 0;
        for k in 0..6 {
            assert_eq!(capacity(k), index);
            for offset in 0..chunk_len(k) {
                assert_eq!(locate(index), (k, offset), "index {index}");
                index += 1;
            }
        }
        let last = capacity(MAX_CHUNKS) - 1;
        assert_eq!(
            locate(last),
            (MAX_CHUNKS - 1, chunk_len(MAX_CHUNKS - 1) - 1)
        );
    }

    #[test]
    fn foreign_registration_panics_with_a_clear_message() {
        let a = Registry::new();
        let b = Registry::new();
        let _kept = b.register(0);
        let h = a.register(1);
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.unregister(h)))
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("was passed to registry #"), "{msg}");
        assert!(msg.contains("only remove the entry of the registry that issued it"));
        // Nothing was changed in either registry.
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(a.iter().map(|v| *v).collect::<Vec<_>>(), [1]);

        let empty = Registry::<i32>::new();
        let h = a.register(2);
        let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| empty.unregister(h)))
            .unwrap_err()
            .downcast::<String>()
            .unwrap();
        assert!(msg.contains("never registered anything"), "{msg}");
    }

    #[test]
    fn unregister_all_checks_every_registration_before_closing_any() {
        let a = Registry::new();
        let b = Registry::new();
        let a1 = a.register(1);
        let b1 = b.register(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            a.unregister_all([a1, b1]);
        }));
        assert!(r.is_err());
        // a1's entry was neither closed nor removed.
        assert_eq!(a.iter().map(|v| *v).collect::<Vec<_>>(), [1]);
        assert_eq!(a.len(), 1);
    }

    /// The contract tests, once per counter scheme.
    macro_rules! registry_tests {
        ($name:ident, $counter:ty) => {
            mod $name {
                use super::*;

                type R<T> = Registry<T, $counter>;

                impl<T> Registry<T, $counter> {
                    fn fresh() -> Self {
                        Self::with_counter()
                    }
                }

                fn collect<T: Copy>(r: &R<T>) -> Vec<T> {
                    let mut v = Vec::new();
                    r.for_each(|x| v.push(*x));
                    v
                }

                #[test]
                fn register_call_unregister() {
                    let r = R::fresh();
                    assert!(r.is_empty());
                    let a = r.register(1);
                    let b = r.register(2);
                    assert_eq!(r.len(), 2);
                    assert_eq!(collect(&r), [1, 2]);
                    assert_eq!(r.unregister(a), 1);
                    assert_eq!(collect(&r), [2]);
                    assert_eq!(r.unregister(b), 2);
                    assert!(collect(&r).is_empty());
                    assert!(r.is_empty());
                }

                #[test]
                fn slots_are_reused_last_in_first_out() {
                    let r = R::fresh();
                    let a = r.register(1);
                    let b = r.register(2);
                    let (ia, ib) = (a.index, b.index);
                    r.unregister(a);
                    r.unregister(b);
                    let c = r.register(3);
                    let d = r.register(4);
                    assert_eq!((c.index, d.index), (ib, ia));
                    assert_eq!(r.lock().next, 2, "no new slot was handed out");
                    r.unregister_all([c, d]);
                }

                #[test]
                fn grows_across_chunks_and_visits_each_entry_once() {
                    let r = R::fresh();
                    let n = capacity(3) + 1; // into the fourth chunk
                    let hs: Vec<_> = (0..n).map(|i| r.register(i)).collect();
                    assert_eq!(r.lock().chunks, 4);
                    assert_eq!(collect(&r), (0..n).collect::<Vec<_>>());
                    assert_eq!(r.iter().count(), n);
                    // Remove every other one; the rest are still visited once each.
                    let (odd, even): (Vec<_>, Vec<_>) =
                        hs.into_iter().partition(|h| h.index % 2 == 1);
                    let removed = r.unregister_all(odd);
                    assert!(removed.iter().all(|v| v % 2 == 1));
                    assert_eq!(collect(&r), (0..n).step_by(2).collect::<Vec<_>>());
                    assert_eq!(r.len(), even.len());
                    r.unregister_all(even);
                    assert!(r.is_empty() && collect(&r).is_empty());
                }

                #[test]
                fn pending_removal_skips_then_undo_or_commit() {
                    let r = R::fresh();
                    let h = r.register(5);
                    let keep = r.register(6);
                    let p = r.prepare_unregister(h);
                    assert_eq!(collect(&r), [6], "a closed entry is skipped");
                    assert_eq!(r.len(), 2, "still registered until committed");
                    let h = p.undo();
                    assert_eq!(collect(&r), [5, 6]);
                    let p = r.prepare_unregister(h);
                    assert_eq!(p.commit(), 5);
                    assert_eq!(collect(&r), [6]);
                    r.unregister(keep);
                }

                #[test]
                fn dropping_a_pending_removal_undoes_it() {
                    let r = R::fresh();
                    let h = r.register(9);
                    drop(r.prepare_unregister(h));
                    assert_eq!(collect(&r), [9], "live again");
                    assert_eq!(r.len(), 1);
                }

                #[test]
                fn commit_timeout_keeps_it_closed_until_the_call_returns() {
                    let r = R::fresh();
                    let h = r.register(1);
                    let call = r.iter().next().unwrap();
                    let p = r.prepare_unregister(h);
                    let p = p.commit_timeout(Duration::ZERO).unwrap_err();
                    assert_eq!(p.outstanding(), 1);
                    assert!(collect(&r).is_empty(), "still closed after a timeout");
                    drop(call);
                    assert_eq!(p.commit_timeout(Duration::from_secs(60)).unwrap(), 1);
                    assert!(r.is_empty());
                }

                #[test]
                fn unregister_timeout_fails_reopens_and_returns_the_registration() {
                    let r = R::fresh();
                    let h = r.register(1);
                    let calls: Vec<_> = r.iter().chain(r.iter()).collect();
                    let e = r
                        .unregister_timeout(h, Duration::from_millis(1))
                        .unwrap_err();
                    assert_eq!(e.outstanding(), 2);
                    assert_eq!(collect(&r), [1], "live again");
                    drop(calls);
                    let h = e.into_registration();
                    assert_eq!(r.unregister_timeout(h, Duration::from_secs(60)).unwrap(), 1);
                    assert!(r.is_empty());
                }

                #[test]
                fn unregister_waits_for_a_call_on_another_thread() {
                    let r = R::fresh();
                    let h = r.register(AtomicUsize::new(0));
                    let returned = AtomicBool::new(false);
                    thread::scope(|s| {
                        let (entered_tx, entered_rx) = mpsc::channel();
                        let (go_tx, go_rx) = mpsc::channel::<()>();
                        let (r, returned) = (&r, &returned);
                        s.spawn(move || {
                            r.for_each(|v| {
                                entered_tx.send(()).unwrap();
                                let _ = go_rx.recv();
                                v.fetch_add(1, Ordering::Relaxed);
                                // Relaxed: only the removal's happens-before makes it visible.
                                returned.store(true, Ordering::Relaxed);
                            });
                        });
                        entered_rx.recv().unwrap();
                        s.spawn(move || {
                            let ms = if cfg!(miri) { 0 } else { 5 };
                            thread::sleep(Duration::from_millis(ms));
                            drop(go_tx);
                        });
                        let v = r.unregister(h);
                        assert!(returned.load(Ordering::Relaxed));
                        assert_eq!(v.into_inner(), 1);
                    });
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
                    {
                        let r = R::fresh();
                        let a = r.register(Counted(&drops));
                        let _b = r.register(Counted(&drops));
                        let _c = r.register(Counted(&drops));
                        drop(r.unregister(a));
                        assert_eq!(drops.load(Ordering::Relaxed), 1);
                        // Dropped handles: `_b` and `_c` stay registered until `r` drops.
                    }
                    assert_eq!(drops.load(Ordering::Relaxed), 3);
                }

                #[test]
                fn iter_guards_nest_and_registering_from_a_callback_is_fine() {
                    let r = R::fresh();
                    let a = r.register(1);
                    let mut inner = None;
                    r.for_each(|_| {
                        // Re-entrant: a callback may register, and may iterate.
                        inner = Some(r.register(2));
                        assert!(r.iter().count() >= 1);
                    });
                    let pairs = r.iter().flat_map(|x| r.iter().map(move |y| (*x, *y)));
                    assert_eq!(pairs.count(), 4);
                    r.unregister_all([a, inner.unwrap()]);
                }

                #[test]
                #[cfg_attr(not(debug_assertions), ignore = "detection is a debug-build check")]
                fn unregistering_from_its_own_callback_panics_and_stays_registered() {
                    let r = R::fresh();
                    let mut h = Some(r.register(1));
                    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        r.for_each(|_| {
                            r.unregister(h.take().unwrap());
                        });
                    }));
                    let msg = caught.unwrap_err().downcast::<String>().unwrap();
                    assert!(msg.contains("holds 1 Guard(s)"), "{msg}");
                    assert_eq!(collect(&r), [1], "the removal was undone");
                }

                #[test]
                fn debug_output() {
                    let r = R::fresh();
                    let h = r.register(4);
                    assert_eq!(format!("{r:?}"), "Registry { len: 1, entries: [4] }");
                    let p = r.prepare_unregister(h);
                    assert_eq!(format!("{r:?}"), "Registry { len: 1, entries: [] }");
                    assert_eq!(
                        format!("{p:?}"),
                        "PendingRemoval { slot: 0, outstanding: 0 }"
                    );
                    let h = p.undo();
                    assert!(format!("{h:?}").ends_with("slot: 0 }"));
                    r.unregister(h);
                }

                /// Callers check a heap canary in each value; the remover poisons and frees it
                /// the moment `unregister` returns, while callers may still be returning from
                /// their release. Under Miri any access after the return is a use-after-free.
                #[test]
                fn free_right_after_unregister() {
                    const ALIVE: usize = 0xA11C_E5ED;
                    const POISON: usize = 0xDEAD;
                    struct Module {
                        canary: Box<AtomicUsize>,
                    }
                    let r = R::fresh();
                    let violations = AtomicUsize::new(0);
                    let stop = AtomicBool::new(false);
                    thread::scope(|s| {
                        for _ in 0..2 {
                            s.spawn(|| {
                                while !stop.load(Ordering::Relaxed) {
                                    r.for_each(|m: &Module| {
                                        if m.canary.load(Ordering::Relaxed) != ALIVE {
                                            violations.fetch_add(1, Ordering::Relaxed);
                                        }
                                    });
                                    thread::yield_now();
                                }
                            });
                        }
                        for _ in 0..iters(500, 8) {
                            let h = r.register(Module {
                                canary: Box::new(AtomicUsize::new(ALIVE)),
                            });
                            thread::yield_now();
                            let m = r.unregister(h);
                            m.canary.store(POISON, Ordering::Relaxed);
                            drop(m);
                        }
                        stop.store(true, Ordering::Relaxed);
                    });
                    assert_eq!(violations.load(Ordering::Relaxed), 0);
                }

                #[test]
                fn registers_and_removes_from_many_threads() {
                    let r = Arc::new(R::fresh());
                    let threads: Vec<_> = (0..3)
                        .map(|t| {
                            let r = Arc::clone(&r);
                            thread::spawn(move || {
                                for i in 0..iters(200, 5) {
                                    let h = r.register(t * 1000 + i);
                                    let mut seen = false;
                                    r.for_each(|v| seen |= *v == t * 1000 + i);
                                    assert!(seen, "an entry live for the whole pass was missed");
                                    assert_eq!(r.unregister(h), t * 1000 + i);
                                }
                            })
                        })
                        .collect();
                    for t in threads {
                        t.join().unwrap();
                    }
                    assert!(r.is_empty());
                    // Three threads, at most three live at once: at most three slots used.
                    assert!(r.lock().next <= 3);
                }
            }
        };
    }

    registry_tests!(shared, Shared);
    registry_tests!(per_cpu, PerCpu);
}
