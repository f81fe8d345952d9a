//! [`GraceDomain::synchronize_async`] and [`GraceCell::replace_async`]: grace periods as
//! futures.

use crate::grace::{GraceCell, GraceCookie, GraceDomain, GraceWait, Retired};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

impl GraceDomain {
    /// [`synchronize`](Self::synchronize) as a future: completes once every read section that
    /// began before its first poll has ended, without blocking a thread.
    ///
    /// - **Lazy**: the grace period is asked for at the first poll (so sections that begin
    ///   between the call and the first poll are waited for too). To ask now and wait later,
    ///   use [`start_grace_period`](Self::start_grace_period) and
    ///   [`poll_grace_period`](Self::poll_grace_period).
    /// - **Cancellation**: dropping the future changes nothing that matters: the grace period
    ///   stays asked for (a later call or poll completes it), as after a
    ///   [`synchronize_timeout`](Self::synchronize_timeout) that timed out.
    /// - **Completes exactly when `synchronize` would return**, with the same happens-before:
    ///   everything done inside the sections it waited for happens-before the completion.
    ///   The last section to leave wakes the task, on whatever thread leaves it.
    /// - `Send`, `Unpin`, any executor.
    ///
    /// ```
    /// use drainable::GraceDomain;
    ///
    /// let d = GraceDomain::new();
    /// let section = d.enter();
    /// let f = d.synchronize_async(); // nothing asked for yet
    /// drop(section);
    /// pollster::block_on(f);
    /// ```
    #[must_use = "futures do nothing unless polled: the grace period is asked for at the first poll"]
    pub fn synchronize_async(&self) -> Synchronize<'_> {
        Synchronize {
            domain: self,
            cookie: None,
            wait: GraceWait::new(),
            parked: false,
            done: false,
        }
    }
}

/// The future of [`GraceDomain::synchronize_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Synchronize<'a> {
    domain: &'a GraceDomain,
    /// The grace period asked for at the first poll.
    cookie: Option<GraceCookie>,
    wait: GraceWait,
    /// A poll returned `Pending`: the wait may have set `WAITING` on the domain's word.
    parked: bool,
    done: bool,
}

impl Future for Synchronize<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        assert!(
            !this.done,
            "drainable: a Synchronize future was polled after it completed"
        );
        let domain = this.domain;
        let cookie = *this
            .cookie
            .get_or_insert_with(|| domain.start_grace_period());
        match domain.poll_for(cookie, &mut this.wait, cx) {
            Poll::Ready(()) => {
                this.done = true;
                Poll::Ready(())
            }
            Poll::Pending => {
                this.parked = true;
                Poll::Pending
            }
        }
    }
}

impl Drop for Synchronize<'_> {
    fn drop(&mut self) {
        if self.parked && !self.done {
            self.domain.stop_waiting();
        }
    }
}

impl fmt::Debug for Synchronize<'_> {
    /// Shows the grace period asked for (once polled) and whether it has ended.
    ///
    /// ```
    /// let d = drainable::GraceDomain::new();
    /// let f = d.synchronize_async();
    /// assert_eq!(format!("{f:?}"), "Synchronize { cookie: None, done: false }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Synchronize")
            .field("cookie", &self.cookie)
            .field("done", &self.done)
            .finish()
    }
}

impl<T: Send + 'static> GraceCell<T> {
    /// [`replace`](Self::replace) as a future: publishes `value` at its first poll, then
    /// completes with the old value once no reader can still see it.
    ///
    /// - **Lazy**: nothing is published until the first poll; dropped unpolled, the future
    ///   drops `value` and the cell is unchanged.
    /// - **Cancellation never frees too early**: dropped after it published but before it
    ///   completed, the future hands the old value to the cell's [`GraceDomain`] as
    ///   [`GraceDomain::retire`] does (its drop runs where and when `retire`'s docs say), but
    ///   never blocks, even on a full backlog. That is why `T: Send + 'static`.
    /// - The first poll waits for other writers' swaps (the cell's writer lock, held only for
    ///   a swap or an [`update`](Self::update)'s closure; never across an `.await`, so the
    ///   future is `Send`).
    ///
    /// # Panics
    ///
    /// If polled from inside an [`update`](Self::update) closure on the same cell, as
    /// `replace` does.
    ///
    /// ```
    /// use drainable::GraceCell;
    ///
    /// let routes = GraceCell::new(vec!["/a"]);
    /// let old = pollster::block_on(routes.replace_async(vec!["/a", "/b"]));
    /// assert_eq!(old, ["/a"]);
    /// assert_eq!(routes.read().len(), 2);
    /// ```
    #[must_use = "futures do nothing unless polled: the value is published at the first poll"]
    pub fn replace_async(&self, value: T) -> Replace<'_, T> {
        Replace {
            cell: self,
            new: Some(Box::new(value)),
            old: None,
            wait: GraceWait::new(),
            parked: false,
        }
    }
}

/// The future of [`GraceCell::replace_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Replace<'a, T: Send + 'static> {
    cell: &'a GraceCell<T>,
    /// The value to publish, until the first poll.
    new: Option<Box<T>>,
    /// The value unpublished by the first poll and the grace period it waits for, until the
    /// future completes.
    old: Option<(OldValue<T>, GraceCookie)>,
    wait: GraceWait,
    parked: bool,
}

/// An unpublished value, owned by the future (from `Box::into_raw`).
struct OldValue<T>(std::ptr::NonNull<T>);

// SAFETY: the future owns the value (nobody else frees it) and only moves it out or drops it,
// both of which `T: Send` allows on any thread; readers of it only ever read through `&T` in
// their own sections, which the grace period waits for.
unsafe impl<T: Send> Send for OldValue<T> {}
// SAFETY: `&OldValue` gives access to nothing.
unsafe impl<T: Send> Sync for OldValue<T> {}

impl<T: Send + 'static> Future for Replace<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let domain = this.cell.domain();
        if let Some(new) = this.new.take() {
            let writer = this.cell.lock_writer_for("GraceCell::replace_async");
            let old = this.cell.swap(writer, new);
            // A grace period that begins after the swap: every section that can still see
            // `old` began before it.
            let cookie = domain.start_grace_period();
            // SAFETY: the cell's pointers come from `Box::into_raw`, which never returns null.
            let old = OldValue(unsafe { std::ptr::NonNull::new_unchecked(old) });
            this.old = Some((old, cookie));
        }
        let (_, cookie) = this
            .old
            .as_ref()
            .expect("drainable: a Replace future was polled after it completed");
        match domain.poll_for(*cookie, &mut this.wait, cx) {
            Poll::Ready(()) => {
                let (old, _) = this.old.take().expect("checked above");
                // SAFETY: the value came from `Box::into_raw`, was unpublished before the grace
                // period of `cookie` began, and that grace period has ended: no section that
                // could have loaded it is still running. The future owned it; it moves out once.
                Poll::Ready(*unsafe { Box::from_raw(old.0.as_ptr()) })
            }
            Poll::Pending => {
                this.parked = true;
                Poll::Pending
            }
        }
    }
}

impl<T: Send + 'static> Drop for Replace<'_, T> {
    fn drop(&mut self) {
        let domain = self.cell.domain();
        if self.parked && self.old.is_some() {
            domain.stop_waiting();
        }
        if let Some((old, _)) = self.old.take() {
            // SAFETY: the future owns the value, from `Box::into_raw`, unpublished by the first
            // poll's swap; it passes to the domain, which rebuilds the box and drops it only
            // after a grace period that starts after this call.
            domain.defer_drop(unsafe { Retired::from_raw(old.0.as_ptr()) });
        }
    }
}

impl<T: Send + 'static> fmt::Debug for Replace<'_, T> {
    /// Shows whether the value has been published and whether the future completed.
    ///
    /// ```
    /// let c = drainable::GraceCell::new(1);
    /// let f = c.replace_async(2);
    /// assert_eq!(format!("{f:?}"), "Replace { published: false, done: false }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replace")
            .field("published", &self.new.is_none())
            .field("done", &(self.new.is_none() && self.old.is_none()))
            .finish()
    }
}
