//! The cell behind a registry slot's value, with loom's closure API (`with`, `with_mut`):
//! loom's checked cell under loom, `std`'s `UnsafeCell` otherwise, so that code written for the
//! checked cell runs unchanged in real builds.
//!
//! `pub` (hidden from the docs, re-exported as `drainable::harness::UnsafeCell`) only so that
//! the model tests' canary cell (`loom-tests/src/lib.rs`) is this cell, not a second copy.

/// Under loom, the registry's slots are loom's checked cells: loom then reports a write to a
/// slot's value (registering, removing) that is not ordered with a caller's read of it.
#[cfg(drainable_loom)]
pub use loom::cell::UnsafeCell;

/// `std`'s `UnsafeCell` behind loom's closure API.
#[cfg(not(drainable_loom))]
#[derive(Debug)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(drainable_loom))]
impl<T> UnsafeCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a pointer to read the value through.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a pointer to write the value through.
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
