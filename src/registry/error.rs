//! [`UnregisterTimeoutError`], the error of [`Registry::unregister_timeout`].

use super::Registration;
#[cfg(doc)]
use super::Registry; // for the doc links
use crate::drainable::DrainTimeoutError;
use std::error::Error;
use std::fmt;

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
