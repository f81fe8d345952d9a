//! Drainable references: answer "when may I unregister this callback, unload this plugin,
//! free this data?" by *draining*: close the object to new users, then block until every
//! current user is gone.
//!
//! Readers take guards lock-free with [`Drainable::try_acquire`]; once a drain has begun they
//! get `None` instead. [`Drainable::drain`] closes and sleeps until the last guard is dropped;
//! after it returns no reader can still be inside, so the value may be freed at once. Where
//! the remover cannot sleep, [`Drainable::prepare_drain`] closes reversibly and the returned
//! [`PendingDrain`] commits (waits), times out, or undoes, as proposed on linux-kernel in 2003
//! for module unloading and later built as Windows rundown protection and Linux `percpu_ref`.
//!
//! # Which type
//!
//! - [`Drainable<T>`]: one 32-bit counter word. Smallest (4 bytes plus `T`), `const`-
//!   constructible for `static`s, cheapest on one thread. Readers on many cores share its
//!   cache line.
//! - [`PerCpuDrainable<T>`]: the same contract with guards counted in the taking thread's own
//!   cache line (plain stores; the drain side pays a `membarrier`), or in per-CPU slots, so
//!   the hot path stays flat as cores are added and beats `crossbeam-epoch`'s pin even on one
//!   thread; 128 bytes per slot. Both are
//!   [`DrainableWith<T, C>`](DrainableWith) with a different [`Counter`], so generic code and
//!   a one-line switch work.
//! - [`GraceCell<T>`] and [`GraceDomain`]: for *replacing* rather than removing. Readers
//!   never block; a writer publishes a new value and gets the old one back by value once no
//!   reader can still see it (RCU / SRCU grace periods).
//!
//! # A ready-made callback registry
//!
//! [`Registry<T>`] is the 2003 proposal's `register_foo` / `unregister_foo` built on drainables:
//! callers run [`for_each`](Registry::for_each) lock-free over every registered value, and
//! [`unregister`](Registry::unregister) returns the value only once no call into it is in flight,
//! so `unregister(handle); drop(data);` is sound. It also removes several entries at once (closing
//! all before waiting), reversibly ([`PendingRemoval`]), or with a deadline.
//!
//! ```
//! use drainable::Registry;
//!
//! let hooks = Registry::new();
//! let h = hooks.register(Box::new(42)); // a callback's private data
//! hooks.for_each(|data| assert_eq!(**data, 42)); // the hot path
//! let data = hooks.unregister(h); // no call is in flight after this
//! drop(data); // kfree(my_data)
//! ```
//!
//! # Guarantees
//!
//! - **Memory ordering.** Every access made under a guard happens-before `drain()` (or a
//!   successful `commit`) returns. Everything done before `reopen()` happens-before accesses
//!   under guards taken after it.
//! - **Freeing after a drain is sound.** The last guard's drop touches the drainable only with
//!   its final decrement (then a futex wake by address), so the drainer may free the memory the
//!   moment `drain()` returns.
//! - **Progress.** `try_acquire` and guard drops are lock-free, one atomic read-modify-write
//!   each on the fast path. `drain` blocks without burning CPU (short spin, then a futex) and is
//!   starvation-free: it waits only for guards taken before it closed the drainable.
//! - **Misuse.** Draining on a thread that holds a guard of the same drainable panics in debug
//!   builds instead of hanging; a leaked guard is reported by the timed drains; the guard count
//!   never wraps.
//!
//! See `docs/design.md` in the repository for the state machine, the word layout and each
//! ordering.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]
#![doc(test(attr(deny(warnings))))]

mod counter;
/// Slot selection, exposed only for `bench/benches/cpu_id.rs`; not part of the API.
#[doc(hidden)]
pub mod cpu;
mod drainable;
mod epilogue;
mod grace;
mod lifecycle;
/// The platform facade's cell, exposed only for the model tests in `loom-tests/`, whose canary
/// cell wraps it; not part of the API.
#[doc(hidden)]
pub mod harness {
    pub use crate::platform::cell::UnsafeCell;
}
mod platform;
mod registry;

pub use counter::{Counter, PerCpu, Shared};
pub use drainable::{
    CommitTimeoutError, DrainTimeoutError, Drainable, DrainableWith, Guard, OwnedGuard,
    PendingDrain, PerCpuDrainable,
};
pub use grace::{GraceCell, GraceCookie, GraceDomain, GraceGuard, GraceTimeoutError, ReadSection};
pub use registry::{
    EntryGuard, EntryId, PendingRemoval, Registration, Registry, RegistryIter, RemovalTimeoutError,
    UnregisterTimeoutError,
};

#[cfg(all(test, not(drainable_loom)))]
mod test_support;
#[cfg(all(test, not(drainable_loom)))]
mod tests;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
