//! The callers' side: [`RegistryIter`] (from [`Registry::iter`]) and the [`EntryGuard`] it
//! yields for each entry it gets into.

use super::storage::Chunks;
use super::{Cell, EntryId, Registry, Slot, generation, value};
use crate::counter::{Counter, Shared};
use crate::drainable::Guard;
use crate::platform::Ordering;
use std::fmt;
use std::ops::Deref;

/// A registered value, held: a call into the entry is in flight while it lives, so the
/// entry's removal waits for its drop. From [`Registry::iter`] and [`Registry::get`]; derefs
/// to `T`; [`id`](Self::id) names the entry.
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
    pub(super) guard: Guard<'a, Cell<T>, C>,
    /// For [`id`](Self::id): the registry (its number is read only when asked) and the slot.
    pub(super) registry: &'a Registry<T, C>,
    pub(super) index: usize,
}

impl<T, C: Counter> EntryGuard<'_, T, C> {
    /// The [`EntryId`] of the entry held, to find it again with [`Registry::get`]. A method,
    /// so it hides a method `id` of `T`: reach that one with `(*guard).id()`.
    ///
    /// Reads the slot's generation under the guard (no cost unless called).
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let hs = [r.register("a"), r.register("b")];
    /// let b = r.iter().find(|g| **g == "b").map(|g| g.id()).unwrap();
    /// assert_eq!(b, hs[1].id());
    /// assert_eq!(*r.get(b).unwrap(), "b");
    /// # r.unregister_all(hs);
    /// ```
    pub fn id(&self) -> EntryId {
        EntryId {
            // Relaxed: this guard's acquisition synchronised with the `reopen` of the entry's
            // registration, which came after the registry's number was assigned; it never
            // changes after that, so this reads it.
            registry: self.registry.id.load(Ordering::Relaxed),
            index: self.index,
            generation: generation(&self.guard),
        }
    }
}

// SAFETY: sharing a `&EntryGuard` only gives out `&T`, fine across threads when `T: Sync`,
// and its `id`, which reads an atomic of the registry and, under the guard, the slot's
// generation (a `u64` nobody writes while the guard lives). The `&Registry` is never handed out.
unsafe impl<T: Sync, C: Counter> Sync for EntryGuard<'_, T, C> {}

impl<T, C: Counter> Deref for EntryGuard<'_, T, C> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        value(&self.guard)
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
    registry: &'a Registry<T, C>,
    chunks: Chunks<'a, Slot<T, C>>,
    slots: std::slice::Iter<'a, Slot<T, C>>,
    /// The index of the next slot `slots` yields (chunks are consecutive from slot 0).
    next_index: usize,
}

impl<'a, T, C: Counter> RegistryIter<'a, T, C> {
    /// An iterator over the slots of `chunks`, which are `registry`'s from the first.
    pub(super) fn new(registry: &'a Registry<T, C>, chunks: Chunks<'a, Slot<T, C>>) -> Self {
        RegistryIter {
            registry,
            chunks,
            slots: [].iter(),
            next_index: 0,
        }
    }
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
                let index = self.next_index;
                self.next_index += 1;
                if let Some(guard) = slot.try_acquire() {
                    return Some(EntryGuard {
                        guard,
                        registry: self.registry,
                        index,
                    });
                }
            }
            self.slots = self.chunks.next()?.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.slots.len() + self.chunks.remaining()))
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
            .field("slots_left", &(self.slots.len() + self.chunks.remaining()))
            .finish()
    }
}

/// A registered value held by a guard that owns an `Arc` of its registry, from
/// [`Registry::get_owned`]: `Send` and `'static` (for `T: Send + Sync + 'static`), so a call
/// can be held across an `.await` or handed to another thread. A call into the entry is in
/// flight while it lives, exactly as for an [`EntryGuard`]: the entry's removal waits for its
/// drop, on whichever thread drops it.
///
/// The debug-build self-deadlock detector does not track it (it can move between threads).
///
/// ```
/// use drainable::{OwnedEntryGuard, Registry};
/// use std::sync::Arc;
///
/// fn send_static<X: Send + 'static>(_: &X) {}
/// let r = Arc::new(Registry::new());
/// let h = r.register(String::from("tcp"));
/// let call: OwnedEntryGuard<String> = r.get_owned(h.id()).unwrap();
/// send_static(&call);
/// assert_eq!(call.len(), 3);
/// assert_eq!(OwnedEntryGuard::id(&call), h.id());
/// drop(call);
/// r.unregister(h);
/// ```
#[must_use = "an OwnedEntryGuard that is not kept is released at once"]
pub struct OwnedEntryGuard<T, C: Counter = Shared> {
    registry: std::sync::Arc<Registry<T, C>>,
    id: EntryId,
    ticket: <C as crate::counter::sealed::SealedTicket>::Ticket,
}

impl<T, C: Counter> Registry<T, C> {
    /// As [`get`](Self::get), with a guard that owns an `Arc` of the registry: `Send` and
    /// `'static`, for a call held across an `.await` or moved to another thread. `None` if
    /// the entry is not registered any more, its removal has begun, or `id` is of another
    /// registry.
    ///
    /// Lock-free and O(1), as `get`, plus the `Arc` clone; for a per-CPU registry the call is
    /// counted in the slots (it may end on another thread), not in the thread's record.
    ///
    /// ```
    /// use drainable::Registry;
    /// use std::sync::Arc;
    ///
    /// let r = Arc::new(Registry::new());
    /// let h = r.register(21);
    /// let call = r.get_owned(h.id()).unwrap();
    /// let doubled = std::thread::spawn(move || *call * 2).join().unwrap();
    /// assert_eq!(doubled, 42);
    /// r.unregister(h);
    /// ```
    pub fn get_owned(self: &std::sync::Arc<Self>, id: EntryId) -> Option<OwnedEntryGuard<T, C>> {
        // Relaxed: as in `get`.
        if id.registry != self.id.load(Ordering::Relaxed) {
            return None;
        }
        let slot = self.storage.get(id.index);
        let ticket = slot.try_acquire_ticket()?;
        // Read under the count just taken, as `get` reads under its guard (the acquisition is
        // `Acquire`, pairing with the `reopen` that published this occupant's generation).
        // SAFETY: the count keeps the slot from draining, so nobody writes the cell; the read
        // is a copy.
        let current = slot.value_unguarded().with(|p| unsafe { (*p).generation });
        if current != id.generation {
            // SAFETY: the count was taken just above and is given back once, here.
            unsafe { Slot::<T, C>::release_ticket(slot, ticket) };
            return None;
        }
        Some(OwnedEntryGuard {
            registry: std::sync::Arc::clone(self),
            id,
            ticket,
        })
    }
}

impl<T, C: Counter> OwnedEntryGuard<T, C> {
    /// The [`EntryId`] of the entry held. An associated function
    /// (`OwnedEntryGuard::id(&g)`), so it does not shadow a method of `T`.
    ///
    /// ```
    /// use drainable::{OwnedEntryGuard, Registry};
    /// let r = std::sync::Arc::new(Registry::new());
    /// let h = r.register(());
    /// assert_eq!(OwnedEntryGuard::id(&r.get_owned(h.id()).unwrap()), h.id());
    /// # r.unregister(h);
    /// ```
    pub fn id(this: &Self) -> EntryId {
        this.id
    }

    /// The registry this guard holds an entry of.
    ///
    /// ```
    /// use drainable::{OwnedEntryGuard, Registry};
    /// use std::sync::Arc;
    /// let r = Arc::new(Registry::new());
    /// let h = r.register(());
    /// let g = r.get_owned(h.id()).unwrap();
    /// assert!(Arc::ptr_eq(OwnedEntryGuard::registry(&g), &r));
    /// # drop(g); r.unregister(h);
    /// ```
    pub fn registry(this: &Self) -> &std::sync::Arc<Registry<T, C>> {
        &this.registry
    }
}

impl<T, C: Counter> Deref for OwnedEntryGuard<T, C> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        let slot = self.registry.storage.get(self.id.index);
        // SAFETY: this guard's count keeps the slot from draining, so its value (written before
        // the `reopen` the acquisition synchronised with) is not taken while `&self` lives.
        let value = slot
            .value_unguarded()
            .with(|p| unsafe { (*p).value.as_ref() });
        match value {
            Some(value) => value,
            None => unreachable!("drainable: an open registry slot held no value"),
        }
    }
}

impl<T, C: Counter> Drop for OwnedEntryGuard<T, C> {
    #[inline]
    fn drop(&mut self) {
        let slot: *const Slot<T, C> = self.registry.storage.get(self.id.index);
        // SAFETY: the `Arc` keeps the registry, and so the slot, alive past the release; the
        // guard owns its count, given back once, here. After it the slot may drain and its
        // value be taken: nothing of it is touched again.
        unsafe { Slot::<T, C>::release_ticket(slot, self.ticket) };
    }
}

impl<T: fmt::Debug, C: Counter> fmt::Debug for OwnedEntryGuard<T, C> {
    /// Formats the value.
    ///
    /// ```
    /// let r = std::sync::Arc::new(drainable::Registry::new());
    /// let h = r.register("x");
    /// assert_eq!(format!("{:?}", r.get_owned(h.id()).unwrap()), "\"x\"");
    /// # r.unregister(h);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
