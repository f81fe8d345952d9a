//! [`UnregisterTimeoutError`], the error of [`Registry::unregister_timeout`], and
//! [`RemovalTimeoutError`], the error of [`PendingRemoval::commit_timeout`].

#[cfg(doc)]
use super::Registry; // for the doc links
use super::{PendingRemoval, Registration};
use crate::counter::{Counter, Shared};
use crate::drainable::DrainTimeoutError;
use std::error::Error;
use std::fmt;

/// The error of [`Registry::unregister_timeout`]: calls into the entry were still in flight
/// at the deadline, so the removal was abandoned and the entry is live again. Holds the
/// [`Registration`], to try again later. A [`RemovalTimeoutError`] turned into a
/// `Box<dyn Error>` (by `?`) is one of these, so a downcast recovers the registration.
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
    pub(super) registration: Registration<T>,
    pub(super) error: DrainTimeoutError,
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

    /// The registration and the typed cause, without a [`source`](Error::source) downcast.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(5);
    /// let call = r.iter().next();
    /// let (h, cause) = r.unregister_timeout(h, Duration::ZERO).unwrap_err().into_parts();
    /// assert_eq!(cause.outstanding(), 1);
    /// drop(call);
    /// assert_eq!(r.unregister(h), 5);
    /// ```
    pub fn into_parts(self) -> (Registration<T>, DrainTimeoutError) {
        (self.registration, self.error)
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

/// The error of [`PendingRemoval::commit_timeout`]: calls into the entry were still in flight
/// at the deadline. It holds the [`PendingRemoval`], so the entry stays closed while it lives.
///
/// Two ways out:
///
/// - [`into_pending`](Self::into_pending): the removal back, to wait again, commit or undo.
/// - `?` (or `.into()`) into a `Box<dyn Error + Send + Sync>` or a `Box<dyn Error>` (for
///   `T: 'static`): the conversion **undoes** the removal, so the entry is live again, and
///   boxes an [`UnregisterTimeoutError<T>`] holding the [`Registration`] and the count of
///   calls in flight at the deadline. Nothing is lost: downcast the box to
///   `UnregisterTimeoutError<T>` and [`into_registration`](UnregisterTimeoutError::into_registration)
///   gives the handle back; dropping the box leaves the entry registered until the registry
///   is dropped, as dropping a [`Registration`] does.
///
/// Not an [`Error`] itself: it borrows the registry and owns a removal in progress.
///
/// ```
/// use drainable::{Registry, UnregisterTimeoutError};
/// use std::error::Error;
/// use std::time::Duration;
///
/// let r = Registry::new();
/// let h = r.register(7u32);
/// let call = r.iter().next();
/// let err = r.prepare_unregister(h).commit_timeout(Duration::ZERO).unwrap_err();
/// assert_eq!(err.to_string(), "removal timed out with 1 call(s) still in flight");
/// let boxed: Box<dyn Error + Send + Sync> = err.into(); // undoes the removal
/// drop(call);
/// assert_eq!(r.iter().count(), 1);
/// let h = boxed.downcast::<UnregisterTimeoutError<u32>>().unwrap().into_registration();
/// assert_eq!(r.unregister(h), 7);
/// ```
#[must_use = "dropping a RemovalTimeoutError undoes the removal (and the entry stays registered)"]
pub struct RemovalTimeoutError<'a, T, C: Counter = Shared> {
    pub(super) pending: PendingRemoval<'a, T, C>,
    pub(super) outstanding: usize,
}

impl<'a, T, C: Counter> RemovalTimeoutError<'a, T, C> {
    /// How many calls into the entry were in flight at the deadline.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// let calls: Vec<_> = r.iter().chain(r.iter()).collect();
    /// let err = r.prepare_unregister(h).commit_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(err.outstanding(), 2);
    /// # drop(calls);
    /// # err.into_pending().commit();
    /// ```
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The removal in progress, still closed, to wait again or undo.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(3);
    /// let call = r.iter().next();
    /// let err = r.prepare_unregister(h).commit_timeout(Duration::ZERO).unwrap_err();
    /// let h = err.into_pending().undo();
    /// # drop(call);
    /// assert_eq!(r.unregister(h), 3);
    /// ```
    pub fn into_pending(self) -> PendingRemoval<'a, T, C> {
        self.pending
    }

    /// The `'static` error this becomes: undoes the removal and keeps the registration.
    fn undo_into_error(self) -> UnregisterTimeoutError<T> {
        UnregisterTimeoutError {
            registration: self.pending.undo(),
            error: DrainTimeoutError::new(self.outstanding),
        }
    }
}

impl<T, C: Counter> fmt::Debug for RemovalTimeoutError<'_, T, C> {
    /// Shows the removal in progress and the calls in flight at the deadline.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// let call = r.iter().next();
    /// let err = r.prepare_unregister(h).commit_timeout(Duration::ZERO).unwrap_err();
    /// assert!(format!("{err:?}").starts_with("RemovalTimeoutError { pending: PendingRemoval"));
    /// # drop(call);
    /// # err.into_pending().commit();
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemovalTimeoutError")
            .field("pending", &self.pending)
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl<T, C: Counter> fmt::Display for RemovalTimeoutError<'_, T, C> {
    /// Says what timed out and how many calls were in flight.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(());
    /// let call = r.iter().next();
    /// let err = r.prepare_unregister(h).commit_timeout(Duration::ZERO).unwrap_err();
    /// assert!(err.to_string().starts_with("removal timed out"));
    /// # drop(call);
    /// # err.into_pending().commit();
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removal timed out with {} call(s) still in flight",
            self.outstanding
        )
    }
}

impl<T: 'static, C: Counter> From<RemovalTimeoutError<'_, T, C>>
    for Box<dyn Error + Send + Sync + 'static>
{
    /// Undoes the removal and boxes an [`UnregisterTimeoutError<T>`] with the registration:
    /// what `?` does.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let r = drainable::Registry::new();
    /// let h = r.register(1u8);
    /// let call = r.iter().next();
    /// let err = r.prepare_unregister(h).commit_timeout(Duration::ZERO).unwrap_err();
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = err.into();
    /// # drop(call);
    /// let err = boxed.downcast::<drainable::UnregisterTimeoutError<u8>>().unwrap();
    /// assert_eq!(r.unregister(err.into_registration()), 1);
    /// ```
    fn from(error: RemovalTimeoutError<'_, T, C>) -> Self {
        Box::new(error.undo_into_error())
    }
}

impl<T: 'static, C: Counter> From<RemovalTimeoutError<'_, T, C>> for Box<dyn Error + 'static> {
    /// Undoes the removal and boxes an [`UnregisterTimeoutError<T>`] with the registration:
    /// what `?` does.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use drainable::{Registration, Registry};
    /// fn unload(r: &Registry<u8>, h: Registration<u8>) -> Result<u8, Box<dyn std::error::Error>> {
    ///     Ok(r.prepare_unregister(h).commit_timeout(Duration::ZERO)?)
    /// }
    /// let r = Registry::new();
    /// let h = r.register(1u8);
    /// let call = r.iter().next();
    /// let err = unload(&r, h).unwrap_err();
    /// # drop(call);
    /// let err = err.downcast::<drainable::UnregisterTimeoutError<u8>>().unwrap();
    /// assert_eq!(r.unregister(err.into_registration()), 1);
    /// ```
    fn from(error: RemovalTimeoutError<'_, T, C>) -> Self {
        Box::new(error.undo_into_error())
    }
}
