//! Compile-time checks that the guards' auto traits stay what they are. Their rendered bounds
//! were cleaned up by moving the ticket type behind the seal (`counter::sealed::SealedTicket`);
//! these assertions pin the traits themselves, so a change to a field or a bound that adds or
//! drops `Send`, `Sync`, `Unpin`, `UnwindSafe` or `RefUnwindSafe` fails the build, not a user.
//!
//! Positive cases call a generic `const fn`; negative ones use the ambiguity trick of the
//! `static_assertions` crate (two blanket impls that collide only if the type has the trait).

use crate::{
    Commit, CommitRemoval, Drain, Drainable, EntryGuard, Guard, OwnedEntryGuard, OwnedGraceGuard,
    OwnedGuard, PerCpu, Replace, Shared, Synchronize, Unregister, UnregisterAll,
};
use std::cell::Cell;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::MutexGuard;

/// Fails to compile unless `$ty` implements every listed trait.
macro_rules! assert_impl {
    ($ty:ty: $($tr:path),+) => {
        const _: () = {
            const fn check<X: ?Sized $(+ $tr)+>() {}
            check::<$ty>();
        };
    };
}

/// Fails to compile if `$ty` implements `$tr`.
macro_rules! assert_not_impl {
    ($ty:ty: $tr:path) => {
        const _: fn() = || {
            trait AmbiguousIfImpl<A> {
                fn some_item() {}
            }
            impl<X: ?Sized> AmbiguousIfImpl<()> for X {}
            struct Invalid;
            impl<X: ?Sized + $tr> AmbiguousIfImpl<Invalid> for X {}
            let _ = <$ty as AmbiguousIfImpl<_>>::some_item;
        };
    };
}

/// The checks, for each counter.
macro_rules! guards {
    ($c:ty) => {
        // Guard: never Send (released on the taking thread); Sync iff `T: Sync`; Unpin;
        // unwind-safe iff `T` is `RefUnwindSafe`.
        assert_impl!(Guard<'static, i32, $c>: Sync, Unpin, UnwindSafe, RefUnwindSafe);
        assert_not_impl!(Guard<'static, i32, $c>: Send);
        assert_impl!(Guard<'static, Cell<i32>, $c>: Unpin);
        assert_not_impl!(Guard<'static, Cell<i32>, $c>: Sync);
        assert_not_impl!(Guard<'static, Cell<i32>, $c>: UnwindSafe);
        assert_not_impl!(Guard<'static, Cell<i32>, $c>: RefUnwindSafe);

        // OwnedGuard: Send and Sync iff `T: Send + Sync`; Unpin; unwind-safe iff `T` is.
        assert_impl!(OwnedGuard<i32, $c>: Send, Sync, Unpin, UnwindSafe, RefUnwindSafe);
        assert_not_impl!(OwnedGuard<Cell<i32>, $c>: Send);
        assert_not_impl!(OwnedGuard<Cell<i32>, $c>: Sync);
        assert_not_impl!(OwnedGuard<MutexGuard<'static, i32>, $c>: Send);
        assert_not_impl!(OwnedGuard<MutexGuard<'static, i32>, $c>: Sync);
        assert_not_impl!(OwnedGuard<Cell<i32>, $c>: UnwindSafe);

        // EntryGuard: never Send; Sync iff `T: Sync`; Unpin; never unwind-safe (the slot's
        // cell).
        assert_impl!(EntryGuard<'static, i32, $c>: Sync, Unpin);
        assert_not_impl!(EntryGuard<'static, i32, $c>: Send);
        assert_not_impl!(EntryGuard<'static, i32, $c>: UnwindSafe);
        assert_not_impl!(EntryGuard<'static, i32, $c>: RefUnwindSafe);
        assert_not_impl!(EntryGuard<'static, Cell<i32>, $c>: Sync);
    };
}

guards!(Shared);
guards!(PerCpu);

// The counters themselves, which the guards' unwind-safety bounds name.
assert_impl!(Shared: Send, Sync, Unpin, UnwindSafe, RefUnwindSafe);
assert_impl!(PerCpu: Send, Sync, Unpin, UnwindSafe, RefUnwindSafe);
assert_impl!(Drainable<i32>: Send, Sync, Unpin, UnwindSafe, RefUnwindSafe);

/// The futures: `Send` and `Sync` when `T: Send + Sync` (a task holding one can move between
/// an executor's threads), `Unpin` (pollable without pinning); never `Send` for a `T` that is
/// not. The owned guards held across `.await` are `Send + 'static`.
macro_rules! futures {
    ($c:ty) => {
        assert_impl!(Drain<'static, i32, $c>: Send, Sync, Unpin);
        assert_impl!(Commit<'static, i32, $c>: Send, Sync, Unpin);
        assert_impl!(Unregister<'static, i32, $c>: Send, Sync, Unpin);
        assert_impl!(UnregisterAll<'static, i32, $c>: Send, Sync, Unpin);
        assert_impl!(CommitRemoval<'static, i32, $c>: Send, Sync, Unpin);
        assert_impl!(OwnedEntryGuard<i32, $c>: Send, Sync, Unpin);
        assert_not_impl!(Drain<'static, Cell<i32>, $c>: Send);
        assert_not_impl!(Unregister<'static, Cell<i32>, $c>: Send);
        assert_not_impl!(UnregisterAll<'static, Cell<i32>, $c>: Send);
        assert_not_impl!(OwnedEntryGuard<Cell<i32>, $c>: Send);
    };
}

futures!(Shared);
futures!(PerCpu);
assert_impl!(Synchronize<'static>: Send, Sync, Unpin);
assert_impl!(Replace<'static, String>: Send, Sync, Unpin);
assert_impl!(OwnedGraceGuard<String>: Send, Sync, Unpin);
assert_not_impl!(OwnedGraceGuard<Cell<i32>>: Send);
