//! The handles that remove an entry: [`Registration`] (from [`Registry::register`]) and
//! [`PendingRemoval`] (a removal in progress, from [`Registry::prepare_unregister`]).

use super::{Cell, EntryId, Registry, RemovalTimeoutError};
use crate::counter::{Counter, Shared};
use crate::drainable::PendingDrain;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

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
    /// The entry: the issuing registry's number, the slot and the occupant's generation.
    pub(super) id: EntryId,
    pub(super) _value: PhantomData<fn() -> T>,
}

impl<T> Registration<T> {
    /// The entry's [`EntryId`]: a copyable name to find it with [`Registry::get`] while it is
    /// registered, long after this registration has moved on to a remover.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register("lo");
    /// let id = h.id();
    /// assert_eq!(*r.get(id).unwrap(), "lo");
    /// assert_eq!(r.get(id).unwrap().id(), id);
    /// r.unregister(h);
    /// assert!(r.get(id).is_none());
    /// ```
    pub fn id(&self) -> EntryId {
        self.id
    }
}

/// Two registrations are equal when they name the same entry (their [`id`](Registration::id)s
/// are equal: same registry, slot and generation). A registration is not `Clone` and its slot
/// is reused only after it is consumed, so two live registrations are never equal: a
/// registration can key a map of live entries.
///
/// ```
/// use std::collections::HashMap;
///
/// let r = drainable::Registry::new();
/// let (a, b) = (r.register("a"), r.register("b"));
/// assert!(a != b);
/// let mut names = HashMap::new();
/// names.insert(a, "first");
/// names.insert(b, "second");
/// assert_eq!(names.len(), 2);
/// r.unregister_all(names.into_keys());
/// ```
impl<T> PartialEq for Registration<T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<T> Eq for Registration<T> {}

impl<T> std::hash::Hash for Registration<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<T> fmt::Debug for Registration<T> {
    /// Shows the issuing registry's number, the entry's slot and its generation.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// assert!(format!("{h:?}").starts_with("Registration { registry: "));
    /// # r.unregister(h);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("registry", &self.id.registry)
            .field("slot", &self.id.index)
            .field("generation", &self.id.generation)
            .finish()
    }
}

/// A removal in progress, from [`Registry::prepare_unregister`]: the entry is closed to new
/// calls; [`commit`](Self::commit) waits for the calls in flight and hands the value back,
/// [`undo`](Self::undo) reopens the entry and hands the registration back.
///
/// This is the 2003 proposal's `prepare_deregister` / `commit_deregister` /
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
    pub(super) registry: &'a Registry<T, C>,
    /// The entry, to rebuild the `Registration` on undo.
    pub(super) id: EntryId,
    /// Holds the slot closed; dropping it undoes.
    pub(super) pending: PendingDrain<'a, Cell<T>, C>,
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
            id,
            pending,
        } = self;
        pending.commit();
        registry.take_drained(id.index)
    }

    /// Waits up to `timeout` for the calls in flight into the entry. On success removes it
    /// and hands its value back, as [`commit`](Self::commit) does.
    ///
    /// Blocking, for at most about `timeout`.
    ///
    /// # Errors
    ///
    /// On timeout, a [`RemovalTimeoutError`], which still holds the removal: the entry stays
    /// closed while it lives. [`into_pending`](RemovalTimeoutError::into_pending) gives the
    /// `PendingRemoval` back to wait again or [`undo`](Self::undo). `?` into a
    /// `Box<dyn Error>` (with `T: 'static`) undoes the removal, so the entry is live again,
    /// and boxes an [`UnregisterTimeoutError<T>`](super::UnregisterTimeoutError) that keeps
    /// the [`Registration`]: downcast to it to remove the entry later.
    ///
    /// ```
    /// use drainable::Registry;
    /// use std::time::Duration;
    ///
    /// let r = Registry::new();
    /// let h = r.register("eth0");
    /// let call = r.iter().next().unwrap();
    /// let pending = r.prepare_unregister(h);
    /// let err = pending.commit_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(err.outstanding(), 1);
    /// drop(call);
    /// let pending = err.into_pending();
    /// assert_eq!(pending.commit_timeout(Duration::from_secs(1)).unwrap(), "eth0");
    /// ```
    ///
    /// With `?`:
    ///
    /// ```
    /// use drainable::{Registration, Registry, UnregisterTimeoutError};
    /// use std::error::Error;
    /// use std::time::Duration;
    ///
    /// fn unload(r: &Registry<&'static str>, h: Registration<&'static str>)
    ///     -> Result<&'static str, Box<dyn Error + Send + Sync>> {
    ///     Ok(r.prepare_unregister(h).commit_timeout(Duration::from_millis(1))?)
    /// }
    ///
    /// let r = Registry::new();
    /// let h = r.register("eth0");
    /// let call = r.iter().next().unwrap();
    /// let err = unload(&r, h).unwrap_err();
    /// drop(call);
    /// assert_eq!(r.iter().count(), 1); // undone: live again
    /// let err = err.downcast::<UnregisterTimeoutError<&str>>().unwrap();
    /// assert_eq!(err.outstanding(), 1);
    /// assert_eq!(unload(&r, err.into_registration()).unwrap(), "eth0");
    /// ```
    pub fn commit_timeout(self, timeout: Duration) -> Result<T, RemovalTimeoutError<'a, T, C>> {
        let PendingRemoval {
            registry,
            id,
            pending,
        } = self;
        match pending.commit_timeout(timeout) {
            Ok(()) => Ok(registry.take_drained(id.index)),
            Err(error) => Err(RemovalTimeoutError {
                outstanding: error.outstanding(),
                pending: PendingRemoval {
                    registry,
                    id,
                    pending: error.into_pending(),
                },
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
            id: self.id,
            _value: PhantomData,
        }
    }

    /// The [`EntryId`] of the entry being removed (it finds nothing while the removal is
    /// pending, and again the entry if the removal is undone).
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(1);
    /// let id = h.id();
    /// let p = r.prepare_unregister(h);
    /// assert_eq!(p.id(), id);
    /// assert!(r.get(id).is_none()); // being removed
    /// let h = p.undo();
    /// assert!(r.get(id).is_some());
    /// # r.unregister(h);
    /// ```
    pub fn id(&self) -> EntryId {
        self.id
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
            .field("slot", &self.id.index)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}
