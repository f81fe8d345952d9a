//! [`DrainableWith::drain_async`] and [`PendingDrain::commit_async`]: the drain's wait as a
//! future.

use crate::counter::Counter;
use crate::counter::Shared;
use crate::counter::sealed::CounterImpl;
use crate::drainable::{DrainableWith, PendingDrain};
use crate::platform::TaskWaiter;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

impl<T: ?Sized, C: Counter> DrainableWith<T, C> {
    /// [`drain`](Self::drain) as a future: closes the drainable at its first poll, then
    /// completes once every guard is dropped, without blocking a thread.
    ///
    /// - **Lazy**: nothing happens until the first poll; an unpolled future changes nothing.
    ///   To close *now* and wait later, call [`prepare_drain`](Self::prepare_drain) and
    ///   [`commit_async`](PendingDrain::commit_async) on it.
    /// - **Cancellation is "unload or fail"**: dropping the future before it completes undoes
    ///   its close, exactly as a [`drain_timeout`](Self::drain_timeout) that timed out (the
    ///   drainable reopens unless another drain holds it closed). So
    ///   `tokio::time::timeout(limit, d.drain_async())` drains within `limit` or leaves the
    ///   drainable as it was.
    /// - **Completes exactly when [`drain`](Self::drain) would return**: afterwards the
    ///   drainable is drained, every access made under a guard happens-before the completion,
    ///   and the memory may be freed. With no guard outstanding it completes on its first poll
    ///   (for a [`Drainable`](crate::Drainable), without a system call).
    /// - **Any executor**: the future's waker is filed in a process-wide table keyed by the
    ///   drainable's address, and the release of the last guard wakes it (on whatever thread
    ///   drops it). Nothing is added to the drainable, and a release that wakes nobody pays
    ///   nothing extra. The future is `Send` when `T: Sync`, and `Unpin`.
    ///
    /// A [`PerCpuDrainable`](crate::PerCpuDrainable) makes its `membarrier` system call inside
    /// a poll (tens of microseconds), as its blocking drain does. Where `membarrier` was
    /// refused, its replacement (a signal barrier, which waits for other threads to answer a
    /// signal) waits at most 1 ms per poll, then wakes the task to try again: a stopped thread
    /// delays the drain, never the executor thread.
    ///
    /// # Deadlocks
    ///
    /// A task that holds a guard of this drainable (say an
    /// [`OwnedGuard`](crate::OwnedGuard) kept across an `.await`) and awaits its drain waits
    /// forever, as a thread that holds a guard and calls [`drain`](Self::drain) would. The
    /// blocking drain detects its case in debug builds; a future cannot tell which task holds
    /// a guard, so this one is not detected: drop the task's guards before awaiting.
    ///
    /// ```
    /// use drainable::Drainable;
    /// use std::sync::Arc;
    ///
    /// let d = Arc::new(Drainable::new("plugin"));
    /// let g = d.try_acquire_owned().unwrap();
    /// let user = std::thread::spawn(move || drop(g)); // the last user, on another thread
    /// pollster::block_on(d.drain_async()); // or tokio, smol, futures::executor::block_on
    /// assert!(d.is_drained());
    /// user.join().unwrap();
    /// ```
    #[must_use = "futures do nothing unless polled: the drain closes at the first poll"]
    pub fn drain_async(&self) -> Drain<'_, T, C> {
        Drain {
            drainable: self,
            commit: None,
            done: false,
        }
    }
}

impl<'a, T: ?Sized, C: Counter> PendingDrain<'a, T, C> {
    /// [`commit`](Self::commit) as a future: completes once every guard is dropped; the drain
    /// is then irreversible, exactly as after `commit`. The drainable is closed already (it
    /// was when this `PendingDrain` was made).
    ///
    /// Dropping the future before it completes drops the `PendingDrain`, which undoes the
    /// close, as a [`commit_timeout`](Self::commit_timeout) that timed out and was then
    /// dropped. See [`DrainableWith::drain_async`] for how it waits, on which executors, and
    /// the async self-deadlock.
    ///
    /// ```
    /// use drainable::Drainable;
    ///
    /// let d = Drainable::new(());
    /// let g = d.try_acquire().unwrap();
    /// let pending = d.prepare_drain(); // closed now: no new guard
    /// assert!(d.try_acquire().is_none());
    /// drop(g);
    /// pollster::block_on(pending.commit_async());
    /// assert!(d.is_drained());
    /// ```
    #[must_use = "futures do nothing unless polled; dropping this one undoes the pending drain"]
    pub fn commit_async(self) -> Commit<'a, T, C> {
        Commit {
            pending: Some(self),
            waiter: TaskWaiter::new(),
            state: Default::default(),
            parked: false,
        }
    }
}

/// The future of [`DrainableWith::drain_async`]: closes at its first poll, completes once
/// drained; dropped before that, it undoes its close.
#[must_use = "futures do nothing unless polled"]
pub struct Drain<'a, T: ?Sized, C: Counter = Shared> {
    drainable: &'a DrainableWith<T, C>,
    commit: Option<Commit<'a, T, C>>,
    done: bool,
}

impl<T: ?Sized, C: Counter> Future for Drain<'_, T, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        assert!(
            !this.done,
            "drainable: a Drain future was polled after it completed"
        );
        let drainable = this.drainable;
        let commit = this
            .commit
            .get_or_insert_with(|| drainable.prepare_drain().commit_async());
        let ready = Pin::new(commit).poll(cx);
        if ready.is_ready() {
            this.done = true;
            this.commit = None;
        }
        ready
    }
}

impl<T: ?Sized, C: Counter> fmt::Debug for Drain<'_, T, C> {
    /// Shows whether the drain has begun (the future was polled) and whether it completed.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// let f = d.drain_async();
    /// assert_eq!(format!("{f:?}"), "Drain { begun: false, done: false }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("begun", &(self.commit.is_some() || self.done))
            .field("done", &self.done)
            .finish()
    }
}

/// The future of [`PendingDrain::commit_async`]: completes once drained; dropped before that,
/// it undoes the pending drain.
#[must_use = "futures do nothing unless polled; dropping this one undoes the pending drain"]
pub struct Commit<'a, T: ?Sized, C: Counter = Shared> {
    /// `None` once committed.
    pending: Option<PendingDrain<'a, T, C>>,
    waiter: TaskWaiter,
    state: <C as CounterImpl>::WaitState,
    /// A poll returned `Pending`: the wait may have set `WAITING`.
    parked: bool,
}

impl<T: ?Sized, C: Counter> Future for Commit<'_, T, C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let pending = this
            .pending
            .as_ref()
            .expect("drainable: a Commit future was polled after it completed");
        match pending.poll_commit(&mut this.waiter, &mut this.state, cx) {
            Poll::Ready(()) => {
                // The wait traded the pending close in for the committed drain.
                std::mem::forget(this.pending.take());
                Poll::Ready(())
            }
            Poll::Pending => {
                this.parked = true;
                Poll::Pending
            }
        }
    }
}

impl<T: ?Sized, C: Counter> Drop for Commit<'_, T, C> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            if self.parked {
                pending.stop_waiting();
            }
            // Dropped uncommitted: undone, as a timed-out commit.
            drop(pending);
        }
    }
}

impl<T: ?Sized, C: Counter> fmt::Debug for Commit<'_, T, C> {
    /// Shows whether the commit completed.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// let f = d.prepare_drain().commit_async();
    /// assert_eq!(format!("{f:?}"), "Commit { done: false }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commit")
            .field("done", &self.pending.is_none())
            .finish()
    }
}
