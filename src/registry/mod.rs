//! [`Registry<T>`]: a callback registry whose removal blocks until no call into the removed
//! entry is in flight, so `unregister(handle); drop(data);` is sound: the 2003 proposal's
//! `register_foo` / `deregister(); kfree(my_data)`, ready-made.
//!
//! # Design
//!
//! Entries live in *slots*, each a [`DrainableWith`] around a cell holding `Option<T>`. Slots
//! sit in an append-only list of chunks (`storage.rs`; chunk `k` holds `8 << k` slots) that
//! are published once with a `Release` store and freed only when the registry is dropped, so a
//! caller can walk them with no lock and no grace period: there is never memory it could still
//! be reading that someone frees.
//!
//! A slot's drainable doubles as the ownership protocol for its value:
//!
//! - A **free** slot is drained (closed, no guards): nobody reads its value, so the one thread
//!   that took the slot off the free list, under the registry's lock, may write it.
//! - `register` writes the value, then [`reopen`](DrainableWith::reopen)s the slot. Its
//!   `Release` pairs with the `Acquire` of every later acquisition: a caller that gets in sees
//!   the value.
//! - Callers ([`Registry::for_each`], [`Registry::iter`]) take a guard on each slot and read the
//!   value under it; [`Registry::get`] takes a guard on one slot and reads the slot's
//!   generation under it too (`id.rs`), to check that the occupant is the one its id names.
//! - `unregister` drains the slot (closed to new callers, then waits out the in-flight ones;
//!   every read under a guard happens-before the drain returns), takes the value out (the slot
//!   is drained, so this is again exclusive), and puts the slot on the free list.
//!
//! The registry's lock orders registrations and removals among themselves; callers never take
//! it.
//!
//! # Files
//!
//! - `mod.rs`: [`Registry`] itself, and the slot protocol above.
//! - `storage.rs`: the slots' segmented vector (chunks, growth, freeing, walking).
//! - `handle.rs`: [`Registration`] and [`PendingRemoval`], the handles that remove an entry.
//! - `id.rs`: [`EntryId`], the copyable name of an entry, and where its generation lives.
//! - `iter.rs`: [`RegistryIter`] and [`EntryGuard`], the callers' side.
//! - `error.rs`: [`UnregisterTimeoutError`] and [`RemovalTimeoutError`].
//! - `tests.rs`: the unit tests.

mod error;
mod future;
mod handle;
mod id;
mod iter;
mod storage;
#[cfg(all(test, not(drainable_loom)))]
mod tests;

pub use error::{RemovalTimeoutError, UnregisterTimeoutError};
pub use future::{CommitRemoval, Unregister, UnregisterAll};
pub use handle::{PendingRemoval, Registration};
pub use id::EntryId;
pub use iter::{EntryGuard, OwnedEntryGuard, RegistryIter};

use crate::counter::{Counter, PerCpu, Shared};
use crate::drainable::{DrainableWith, Guard};
use crate::platform::{self, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};
use std::fmt;
use std::marker::PhantomData;
use std::ptr;
use std::time::Duration;
use storage::{Storage, Tail};

/// One entry's storage: a drainable whose guards are the calls in flight, around the value.
type Slot<T, C> = DrainableWith<Cell<T>, C>;

/// A slot's cell: written only by the thread that owns the drained slot, read under guards.
type Cell<T> = platform::UnsafeCell<Entry<T>>;

/// What a slot's cell holds. Both fields follow the slot protocol (module docs): written only
/// while the slot is drained, by the one thread that owns it then; read only under a guard.
struct Entry<T> {
    /// Which occupant of the slot this is (or was): bumped by each registration into it, so
    /// that an [`EntryId`] of a removed entry never matches a later one. Read only by
    /// [`Registry::get`] and the `id` methods, never by a pass, so `for_each` pays nothing for
    /// it but 8 bytes of the slot.
    generation: u64,
    /// The registered value; `None` in a free slot.
    value: Option<T>,
}

/// A set of callbacks (or any values) that many threads call lock-free, and whose removal
/// blocks until no call into the removed entry is in flight.
///
/// This is the 2003 proposal's `register_foo` / `unregister_foo`: after
/// [`unregister`](Self::unregister) returns, no callback is running on the entry and none will
/// start, so the value it hands back (and anything it points to) may be freed on the next line.
/// Where the remover cannot wait, [`prepare_unregister`](Self::prepare_unregister) closes the entry
/// reversibly, and [`unregister_timeout`](Self::unregister_timeout) is "unload or fail".
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
/// | [`get`](Self::get) | lock-free, O(1) | nothing |
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
    /// The slots, in chunks that are never moved or freed before the registry, and how far
    /// callers may walk them (see `storage.rs`). Appended to under the lock.
    storage: Storage<Slot<T, C>>,
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
    /// The storage's appending side: the slots handed out and the chunks allocated.
    tail: Tail,
    /// Registrations handed back to the registry by a cancelled async removal, for
    /// [`Registry::recover`]: the entries are live again, and their registrations are here.
    parked: Vec<EntryId>,
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
    send_sync::<RemovalTimeoutError<'static, u32>>();
    send::<Registry<std::cell::Cell<u32>>>();
    fn sync<X: Sync>() {}
    sync::<EntryGuard<'static, u32>>();
};

impl<T> Registry<T, Shared> {
    platform::const_fn! {
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
    platform::const_fn! {
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
                storage: Storage::new(),
                len: AtomicUsize::new(0),
                id: AtomicU64::new(0),
                control: Mutex::new(Control {
                    parked: Vec::new(),
                    free: Vec::new(),
                    tail: Tail::new(),
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
                None => self.storage.fresh(&mut control.tail, || {
                    // Drained from the start: the state of every free slot.
                    Slot::<T, C>::new_drained(platform::UnsafeCell::new(Entry {
                        generation: 0,
                        value: None,
                    }))
                }),
            };
            // Relaxed: a statistic; it orders nothing.
            self.len.fetch_add(1, Ordering::Relaxed);
            (registry, index)
        };
        let slot = self.storage.get(index);
        let generation = slot.value_unguarded().with_mut(|p| {
            // SAFETY: the slot is drained (free slots always are) and this thread took it off
            // the free list (or past the high-water mark) under the lock, so it is the only
            // thread that writes the slot, no guard exists, and none can be taken before the
            // `reopen` below. Readers that read it after the reopen synchronise with it.
            unsafe {
                let entry = &mut *p;
                debug_assert!(entry.value.is_none(), "a free slot holds a value");
                entry.generation += 1;
                ptr::write(&mut entry.value, Some(value));
                entry.generation
            }
        });
        // Release (inside `reopen`): publishes the value and its generation to every caller
        // that gets in (their acquisition is `Acquire`).
        let reopened = slot.reopen();
        debug_assert!(reopened, "a free slot was not drained");
        Registration {
            id: EntryId {
                registry,
                index,
                generation,
            },
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
    /// guards. Also if about 16 million calls into one entry are in flight at once (see
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
        for chunk in self.storage.chunks() {
            for slot in chunk {
                if let Some(guard) = slot.try_acquire() {
                    f(value(&guard));
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
    #[must_use = "an iterator does nothing unless consumed"]
    pub fn iter(&self) -> RegistryIter<'_, T, C> {
        RegistryIter::new(self, self.storage.chunks())
    }

    /// The entry named by `id`, held under an [`EntryGuard`] (a call into it in flight, as
    /// from [`iter`](Self::iter)), or `None` if it is not registered any more, its removal has
    /// begun, or `id` is of another registry. Never another entry: the id of a removed entry
    /// does not find the later occupant of its slot.
    ///
    /// An id of another registry gives `None` rather than the panic a foreign
    /// [`Registration`] causes: an id is a copyable name that may be kept past its entry's
    /// life, and a lookup of a name that is not here is an answer, not a misuse; nothing is
    /// changed either way.
    ///
    /// Lock-free and O(1): one relaxed load of the registry's number, one guard acquisition
    /// (see [`DrainableWith::try_acquire`]) and one read under it. A guard that is kept
    /// delays the entry's removal until it is dropped.
    ///
    /// # Panics
    ///
    /// If about 16 million calls into the entry are in flight at once (see
    /// [`DrainableWith::try_acquire`]).
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let plugins: Registry<fn(u32) -> u32> = Registry::new();
    /// let a = plugins.register(|x| x + 1);
    /// let b = plugins.register(|x| x * 2);
    /// let b_id = b.id();
    /// assert_eq!(plugins.get(b_id).map(|f| f(5)), Some(10)); // call just that one
    ///
    /// plugins.unregister(b);
    /// assert!(plugins.get(b_id).is_none());
    /// assert!(Registry::<fn(u32) -> u32>::new().get(a.id()).is_none()); // foreign: None
    /// # plugins.unregister(a);
    /// ```
    #[must_use = "a guard that is not kept is released at once"]
    pub fn get(&self, id: EntryId) -> Option<EntryGuard<'_, T, C>> {
        // Relaxed: see `id_or_assign`: a thread holding one of this registry's ids reads its
        // number; a foreign id never equals what a thread reads here (0 or this number).
        if id.registry != self.id.load(Ordering::Relaxed) {
            return None;
        }
        // The slot exists: this registry handed out `id.index` before the id existed.
        let guard = self.storage.get(id.index).try_acquire()?;
        // Read under the guard. The acquisition is `Acquire` and pairs with the `Release` of
        // the `reopen` that opened the slot for the occupant we hold, which `register` did
        // after writing its generation; the generation cannot change while the guard lives
        // (only a registration into a drained slot writes it). So a stale id compares
        // against the current occupant's generation, never a half-written one.
        if generation(&guard) != id.generation {
            return None; // another occupant: dropping the guard releases it
        }
        Some(EntryGuard {
            guard,
            registry: self,
            index: id.index,
        })
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

    /// The 2003 proposal's `prepare_deregister`: closes the entry to new calls at once, without
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
        let slot = self.check(&registration);
        PendingRemoval {
            registry: self,
            id: registration.id,
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
            Ok(()) => Ok(self.take_drained(registration.id.index)),
            // The slot is open again: nobody else closes a slot whose registration we hold.
            Err(error) => Err(UnregisterTimeoutError {
                registration,
                error,
            }),
        }
    }

    /// The registration of an entry whose async removal was cancelled: an
    /// [`unregister_async`](Self::unregister_async), [`unregister_all_async`](Self::unregister_all_async)
    /// or [`PendingRemoval::commit_async`] future dropped before it completed leaves its
    /// entries registered (live again, as after an undo) and hands their registrations to the
    /// registry, which gives each back once, here. `None` for any other id (a registration
    /// still held elsewhere, one recovered already, a removed entry, another registry).
    ///
    /// Takes the registry's lock briefly.
    ///
    /// ```
    /// use drainable::Registry;
    /// use std::future::Future;
    /// use std::task::{Context, Waker};
    ///
    /// let r = Registry::new();
    /// let h = r.register("eth0");
    /// let id = h.id();
    /// let call = r.get(id).unwrap(); // a call in flight
    /// let mut removal = Box::pin(r.unregister_async(h));
    /// let _ = removal.as_mut().poll(&mut Context::from_waker(Waker::noop())); // closes, waits
    /// drop(removal); // cancelled, e.g. by a timeout
    /// drop(call);
    /// assert_eq!(r.iter().count(), 1); // live again
    /// let h = r.recover(id).expect("the registration came back");
    /// assert!(r.recover(id).is_none()); // once
    /// assert_eq!(pollster::block_on(r.unregister_async(h)), "eth0");
    /// ```
    pub fn recover(&self, id: EntryId) -> Option<Registration<T>> {
        let mut control = self.lock();
        let i = control.parked.iter().position(|p| *p == id)?;
        control.parked.swap_remove(i);
        Some(Registration {
            id,
            _value: PhantomData,
        })
    }

    /// Keeps a registration whose entry is live again after a cancelled async removal, for
    /// [`recover`](Self::recover).
    pub(super) fn park(&self, registration: Registration<T>) {
        self.lock().parked.push(registration.id);
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
        // before any change), so the facade's Mutex may recover from poison.
        self.control.lock()
    }

    /// This registry's identity, assigned by the first registration. Call under the lock.
    fn id_or_assign(&self) -> u64 {
        // Relaxed: the only store is below, under the lock we hold.
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let id = platform::unique_id();
        // Relaxed: a thread that holds one of this registry's registrations got it through a
        // chain of happens-before from this store, so it reads this value (coherence); a
        // thread holding a foreign one reads 0 or this value, neither of which matches it.
        self.id.store(id, Ordering::Relaxed);
        id
    }

    /// The slot of `registration`, after checking that this registry issued it.
    #[track_caller]
    fn check(&self, registration: &Registration<T>) -> &Slot<T, C> {
        // Relaxed: see `id_or_assign`.
        let id = self.id.load(Ordering::Relaxed);
        if registration.id.registry != id {
            foreign(registration.id.registry, id);
        }
        self.storage.get(registration.id.index)
    }

    /// Takes the value out of a drained slot whose registration the caller owned, and puts
    /// the slot on the free list.
    fn take_drained(&self, index: usize) -> T {
        let slot = self.storage.get(index);
        debug_assert!(slot.is_drained());
        let value = slot.value_unguarded().with_mut(|p| {
            // SAFETY: the slot is drained: no guard exists, every read under one
            // happened-before the drain returned, and none can be taken until a `reopen`,
            // which only `register` does, after it takes the slot off the free list, which we
            // do below. The caller owned the registration, so no other thread removes it.
            unsafe { (*p).value.take() }
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

/// The value of a guarded slot.
#[inline]
fn value<'g, T, C: Counter>(guard: &'g Guard<'_, Cell<T>, C>) -> &'g T {
    // SAFETY: the caller holds a guard of the slot, so it is not drained: its value was
    // written before the `reopen` the acquisition synchronised with, and is taken out only
    // after a drain, which waits for the guard. The reference lives no longer than the borrow
    // of the guard.
    let value = guard.with(|p| unsafe { (*p).value.as_ref() });
    match value {
        Some(value) => value,
        None => unreachable!("drainable: an open registry slot held no value"),
    }
}

/// The generation of the occupant of a guarded slot.
#[inline]
fn generation<T, C: Counter>(guard: &Guard<'_, Cell<T>, C>) -> u64 {
    // SAFETY: as in `value`: the slot is not drained while the guard lives, so nobody writes
    // the cell, and the generation was written before the `reopen` the acquisition
    // synchronised with. The read is a copy.
    guard.with(|p| unsafe { (*p).generation })
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
