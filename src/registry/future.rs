//! The registry's removals as futures: [`Registry::unregister_async`],
//! [`Registry::unregister_all_async`] and [`PendingRemoval::commit_async`].
//!
//! Each polls its slots' drains as [`PendingDrain::commit_async`](crate::PendingDrain) does
//! (`awaiting/drain.rs`), then takes the values as the blocking removals do. Cancelled (dropped
//! before it completed), a removal leaves its entries registered and live, and hands their
//! registrations to the registry for [`Registry::recover`]: a slot still closed is undone, a
//! slot already drained is reopened with its value in place (only the last poll takes values).

use super::{Cell, EntryId, PendingRemoval, Registration, Registry};
use crate::counter::sealed::CounterImpl;
use crate::counter::{Counter, Shared};
use crate::drainable::PendingDrain;
use crate::platform::TaskWaiter;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

impl<T, C: Counter> Registry<T, C> {
    /// [`unregister`](Self::unregister) as a future: closes the entry at its first poll, then
    /// completes with its value once every call in flight into it has returned, without
    /// blocking a thread. Afterwards no callback runs on the value and none will.
    ///
    /// - **Lazy**: nothing happens before the first poll.
    /// - **Cancellation keeps the handle**: dropped before it completed, the future leaves the
    ///   entry registered and live (as an undone [`prepare_unregister`](Self::prepare_unregister))
    ///   and hands the registration to the registry: get it back with
    ///   [`recover`](Self::recover) and the entry's id (note [`Registration::id`] before the
    ///   call). So `tokio::time::timeout(limit, r.unregister_async(h))` is "unload or fail".
    /// - `Send` when `T: Send + Sync`; `Unpin`; any executor. See
    ///   [`DrainableWith::drain_async`](crate::DrainableWith::drain_async) for how it waits.
    ///
    /// # Panics
    ///
    /// Here, not at the first poll, if `registration` was issued by another registry.
    ///
    /// ```
    /// use drainable::Registry;
    /// use std::sync::Arc;
    ///
    /// let hooks = Arc::new(Registry::new());
    /// let h = hooks.register(String::from("filter"));
    /// let call = hooks.get_owned(h.id()).unwrap(); // a call in flight, on another thread
    /// let caller = std::thread::spawn(move || call.len());
    /// let data = pollster::block_on(hooks.unregister_async(h));
    /// assert_eq!((data.as_str(), caller.join().unwrap()), ("filter", 6));
    /// ```
    #[track_caller]
    #[must_use = "futures do nothing unless polled: the entry closes at the first poll"]
    pub fn unregister_async(&self, registration: Registration<T>) -> Unregister<'_, T, C> {
        self.check(&registration);
        Unregister {
            registry: self,
            registration: Some(registration),
            commit: None,
        }
    }

    /// [`unregister_all`](Self::unregister_all) as a future: at its first poll closes *all* the
    /// entries, then completes with their values (in the order of the registrations) once the
    /// calls into each have returned.
    ///
    /// All or nothing: the values are taken only at the last poll, so a future dropped before
    /// it completed leaves *every* entry registered and live (a slot already drained is reopened
    /// with its value) and hands all the registrations to the registry for
    /// [`recover`](Self::recover).
    ///
    /// # Panics
    ///
    /// Here, if any registration was issued by another registry (nothing is closed then; the
    /// registrations passed are consumed, as [`unregister_all`](Self::unregister_all) does).
    ///
    /// ```
    /// use drainable::Registry;
    ///
    /// let r = Registry::new();
    /// let hs = vec![r.register('a'), r.register('b')];
    /// assert_eq!(pollster::block_on(r.unregister_all_async(hs)), ['a', 'b']);
    /// assert!(r.is_empty());
    /// ```
    #[track_caller]
    #[must_use = "futures do nothing unless polled: the entries close at the first poll"]
    pub fn unregister_all_async(
        &self,
        registrations: impl IntoIterator<Item = Registration<T>>,
    ) -> UnregisterAll<'_, T, C> {
        let registrations: Vec<_> = registrations.into_iter().collect();
        for registration in &registrations {
            self.check(registration);
        }
        UnregisterAll {
            registry: self,
            registrations: Some(registrations),
            entries: Vec::new(),
        }
    }
}

impl<'a, T, C: Counter> PendingRemoval<'a, T, C> {
    /// [`commit`](Self::commit) as a future: completes with the value once every call in
    /// flight into the entry has returned. The entry is closed already.
    ///
    /// Dropped before it completed, the future undoes the removal (the entry is live again)
    /// and hands the registration to the registry for [`Registry::recover`].
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let h = r.register(5);
    /// let pending = r.prepare_unregister(h); // closed now
    /// assert_eq!(pollster::block_on(pending.commit_async()), 5);
    /// ```
    #[must_use = "futures do nothing unless polled; dropping this one undoes the removal"]
    pub fn commit_async(self) -> CommitRemoval<'a, T, C> {
        CommitRemoval {
            pending: Some(self),
            wait: SlotWait::new(),
        }
    }
}

/// One slot's drain, polled: the waker's place and the counter's progress, kept across polls.
struct SlotWait<C: Counter> {
    waiter: TaskWaiter,
    state: <C as CounterImpl>::WaitState,
    /// A poll returned `Pending`: the wait may have set `WAITING` on the slot.
    parked: bool,
}

impl<C: Counter> SlotWait<C> {
    fn new() -> Self {
        SlotWait {
            waiter: TaskWaiter::new(),
            state: Default::default(),
            parked: false,
        }
    }

    fn poll<T>(
        &mut self,
        pending: &PendingDrain<'_, Cell<T>, C>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let polled = pending.poll_commit(&mut self.waiter, &mut self.state, cx);
        if polled.is_pending() {
            self.parked = true;
        }
        polled
    }

    /// Undoes a drain that did not complete (dropping it undoes; `WAITING` first).
    fn cancel<T>(&self, pending: PendingDrain<'_, Cell<T>, C>) {
        if self.parked {
            pending.stop_waiting();
        }
        let reopened = pending.undo();
        // Nobody else closes a slot whose registration we hold.
        debug_assert!(reopened, "a cancelled removal did not reopen its entry");
    }
}

/// The future of [`Registry::unregister_async`]: closes the entry at its first poll,
/// completes with its value; dropped before that, the entry stays registered and its
/// registration goes to [`Registry::recover`].
#[must_use = "futures do nothing unless polled"]
pub struct Unregister<'a, T, C: Counter = Shared> {
    registry: &'a Registry<T, C>,
    /// Until the first poll.
    registration: Option<Registration<T>>,
    commit: Option<CommitRemoval<'a, T, C>>,
}

impl<T, C: Counter> Future for Unregister<'_, T, C> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let Some(registration) = this.registration.take() {
            this.commit = Some(
                this.registry
                    .prepare_unregister(registration)
                    .commit_async(),
            );
        }
        let commit = this
            .commit
            .as_mut()
            .expect("drainable: an Unregister future was polled after it completed");
        let polled = Pin::new(commit).poll(cx);
        if polled.is_ready() {
            this.commit = None;
        }
        polled
    }
}

impl<T, C: Counter> Drop for Unregister<'_, T, C> {
    fn drop(&mut self) {
        // Never polled: the entry was never closed; its registration goes to the registry.
        // (A `commit` in progress parks its own when it is dropped.)
        if let Some(registration) = self.registration.take() {
            self.registry.park(registration);
        }
    }
}

impl<T, C: Counter> fmt::Debug for Unregister<'_, T, C> {
    /// Shows whether the removal has begun and whether it completed.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let f = r.unregister_async(r.register(()));
    /// assert_eq!(format!("{f:?}"), "Unregister { begun: false, done: false }");
    /// # drop(f);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unregister")
            .field("begun", &self.registration.is_none())
            .field(
                "done",
                &(self.registration.is_none() && self.commit.is_none()),
            )
            .finish()
    }
}

/// The future of [`PendingRemoval::commit_async`]: completes with the value; dropped before
/// that, the removal is undone and the registration goes to [`Registry::recover`].
#[must_use = "futures do nothing unless polled; dropping this one undoes the removal"]
pub struct CommitRemoval<'a, T, C: Counter = Shared> {
    /// `None` once completed.
    pending: Option<PendingRemoval<'a, T, C>>,
    wait: SlotWait<C>,
}

impl<T, C: Counter> Future for CommitRemoval<'_, T, C> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let removal = this
            .pending
            .as_ref()
            .expect("drainable: a CommitRemoval future was polled after it completed");
        if this.wait.poll(&removal.pending, cx).is_pending() {
            return Poll::Pending;
        }
        let PendingRemoval {
            registry,
            id,
            pending,
        } = this.pending.take().expect("checked above");
        // The wait traded the pending close in for the committed drain.
        std::mem::forget(pending);
        Poll::Ready(registry.take_drained(id.index))
    }
}

impl<T, C: Counter> Drop for CommitRemoval<'_, T, C> {
    fn drop(&mut self) {
        if let Some(PendingRemoval {
            registry,
            id,
            pending,
        }) = self.pending.take()
        {
            self.wait.cancel(pending);
            registry.park(Registration {
                id,
                _value: PhantomData,
            });
        }
    }
}

impl<T, C: Counter> fmt::Debug for CommitRemoval<'_, T, C> {
    /// Shows whether the removal completed.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let f = r.prepare_unregister(r.register(())).commit_async();
    /// assert_eq!(format!("{f:?}"), "CommitRemoval { done: false }");
    /// # drop(f);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitRemoval")
            .field("done", &self.pending.is_none())
            .finish()
    }
}

/// One entry of an [`UnregisterAll`]: its slot's drain until it completes, then nothing but
/// the id (the slot stays drained, its value in place, until the last poll takes them all).
struct AllEntry<'a, T, C: Counter> {
    id: EntryId,
    /// `None` once drained.
    pending: Option<PendingDrain<'a, Cell<T>, C>>,
    wait: SlotWait<C>,
}

// SAFETY: as `PendingRemoval`'s (`handle.rs`): the drain of one of the registry's slots
// touches only the slot's counters, which are thread-safe, and the value is moved out only by
// the poll that completes the future, on whatever thread polls it (`T: Send`); `&AllEntry`
// exposes nothing.
unsafe impl<T: Send + Sync, C: Counter> Send for AllEntry<'_, T, C> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync, C: Counter> Sync for AllEntry<'_, T, C> {}

/// The future of [`Registry::unregister_all_async`]: closes every entry at its first poll,
/// completes with all the values; dropped before that, every entry stays registered and the
/// registrations go to [`Registry::recover`].
#[must_use = "futures do nothing unless polled"]
pub struct UnregisterAll<'a, T, C: Counter = Shared> {
    registry: &'a Registry<T, C>,
    /// Until the first poll.
    registrations: Option<Vec<Registration<T>>>,
    entries: Vec<AllEntry<'a, T, C>>,
}

impl<T, C: Counter> Future for UnregisterAll<'_, T, C> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        let registry = this.registry;
        if let Some(registrations) = this.registrations.take() {
            // Close them all before waiting for any.
            this.entries = registrations
                .into_iter()
                .map(|r| {
                    let PendingRemoval { id, pending, .. } = registry.prepare_unregister(r);
                    AllEntry {
                        id,
                        pending: Some(pending),
                        wait: SlotWait::new(),
                    }
                })
                .collect();
        } else if this.entries.is_empty() {
            // Completed (or nothing to remove, which completed at the first poll).
            panic!("drainable: an UnregisterAll future was polled after it completed");
        }
        let mut all = true;
        for entry in &mut this.entries {
            if let Some(pending) = &entry.pending {
                if entry.wait.poll(pending, cx).is_ready() {
                    // The wait traded the pending close in for the committed drain.
                    std::mem::forget(entry.pending.take());
                } else {
                    all = false;
                }
            }
        }
        if !all {
            return Poll::Pending;
        }
        let values = std::mem::take(&mut this.entries)
            .into_iter()
            .map(|entry| registry.take_drained(entry.id.index))
            .collect();
        Poll::Ready(values)
    }
}

impl<T, C: Counter> Drop for UnregisterAll<'_, T, C> {
    fn drop(&mut self) {
        let registry = self.registry;
        for registration in self.registrations.take().into_iter().flatten() {
            registry.park(registration);
        }
        for entry in std::mem::take(&mut self.entries) {
            match entry.pending {
                Some(pending) => entry.wait.cancel(pending),
                None => {
                    // Drained, value in place: open it again, as the undo of a close would.
                    let reopened = registry.storage.get(entry.id.index).reopen();
                    debug_assert!(
                        reopened,
                        "a drained slot of a cancelled removal did not reopen"
                    );
                }
            }
            registry.park(Registration {
                id: entry.id,
                _value: PhantomData,
            });
        }
    }
}

impl<T, C: Counter> fmt::Debug for UnregisterAll<'_, T, C> {
    /// Shows how many entries are being removed and how many have drained.
    ///
    /// ```
    /// let r = drainable::Registry::new();
    /// let f = r.unregister_all_async([r.register(1), r.register(2)]);
    /// assert_eq!(format!("{f:?}"), "UnregisterAll { entries: 2, drained: 0 }");
    /// # drop(f);
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (entries, drained) = match &self.registrations {
            Some(r) => (r.len(), 0),
            None => (
                self.entries.len(),
                self.entries.iter().filter(|e| e.pending.is_none()).count(),
            ),
        };
        f.debug_struct("UnregisterAll")
            .field("entries", &entries)
            .field("drained", &drained)
            .finish()
    }
}
