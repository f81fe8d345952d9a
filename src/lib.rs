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
//!   thread; 8 bytes per CPU slot, and only where slots are needed. Both are
//!   [`DrainableWith<T, C>`](DrainableWith) with a different [`Counter`], so generic code and
//!   a one-line switch work.
//! - [`GraceCell<T>`] and [`GraceDomain`]: for *replacing* rather than removing. Readers
//!   never block and, like `PerCpuDrainable`'s guards, write only their own thread's record;
//!   a writer publishes a new value and either gets the old one back by value once no reader
//!   can still see it ([`replace`](GraceCell::replace): RCU / SRCU grace periods), or goes on
//!   at once and lets the domain drop it later ([`store`](GraceCell::store), `call_rcu`).
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
//! # When to use it (and when not)
//!
//! Use `drainable` when the side that *removes* something must know that every user has left
//! before it goes on: to unload code, free memory that other code points to, close a device,
//! or report "done". After [`drain`](Drainable::drain) or [`Registry::unregister`] returns,
//! nobody is inside and nobody can get in. The neighbours, honestly:
//!
//! - **[`Arc<T>`](std::sync::Arc)** keeps the data alive while anyone holds it, and frees it
//!   wherever the last clone is dropped. It cannot stop new users, and cannot tell the
//!   remover when the last one is gone. If "freed eventually, by whoever is last" is all you
//!   need, `Arc` is simpler, and about as cheap as a [`Drainable`] guard on one thread.
//! - **[`RwLock<T>`](std::sync::RwLock)**: taking the write lock also waits for the readers,
//!   and a writer may then *mutate in place*, which a drainable cannot. But readers block
//!   while a writer holds or (on some platforms) waits for the lock, they all write the lock's
//!   one word, and a waiting `write()` in `std` cannot time out or back out. Drainable readers
//!   never block (they get `None` once a drain began), and a drain can be prepared, timed out
//!   or undone. Use `RwLock` for data that is updated and kept; `drainable` for data that is
//!   retired.
//! - **[`arc-swap`](https://docs.rs/arc-swap)**: swap an `Arc` behind a pointer, with very
//!   cheap loads. The old value is freed when its last reader lets go, possibly on a
//!   reader's thread, and the writer is not told when. That is the right trade for a
//!   high-churn configuration pointer whose writer must not wait. [`GraceCell<T>`] is the
//!   synchronous counterpart: [`replace`](GraceCell::replace) waits for a grace period and
//!   hands the writer the old value, by value, once no reader can see it.
//! - **[`crossbeam-epoch`](https://docs.rs/crossbeam-epoch)**: deferred reclamation for
//!   lock-free data structures. Retired objects are freed *some time later*, by whichever
//!   thread collects them, amortised over many retirements; pinning is cheap. The remover
//!   does not wait, and is not told when one particular object became unreachable. Prefer it for
//!   data structures that retire many nodes; prefer `drainable` when one removal must be
//!   synchronous, or must run its destructor on the remover's thread.
//! - **[`tokio-util`'s `TaskTracker`](https://docs.rs/tokio-util/latest/tokio_util/task/struct.TaskTracker.html)**:
//!   close, then wait (asynchronously) until every tracked task has exited, for graceful
//!   shutdown. Its `close` does not refuse new tasks; it only lets `wait` finish once the
//!   tracker is empty. A drainable refuses new guards from the moment it closes, guards a
//!   value rather than tasks, and needs no runtime.
//!
//! Between the two counters: one [`Drainable`] is one shared word, the cheapest choice on one
//! thread and 4 bytes, but its cache line moves between cores that use it at once, as an
//! `Arc`'s does. [`PerCpuDrainable`] keeps a hot path called from many cores flat, at 56
//! bytes (plus 8 per CPU slot, where slots are needed) and a costlier drain (see *Platforms and fallbacks*).
//!
//! Replacing rather than removing (a configuration reload, a routing-table swap):
//!
//! ```
//! use drainable::GraceCell;
//!
//! let routes = GraceCell::new(vec!["10.0.0.0/8"]);
//! let r = routes.read(); // readers never block
//! assert_eq!(r.len(), 1);
//! drop(r);
//! let old = routes.replace(vec!["10.0.0.0/8", "192.168.0.0/16"]);
//! // No reader can still see `old`: it is ours, on this thread, to drop or reuse.
//! assert_eq!(old, ["10.0.0.0/8"]);
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
//!   each on the fast path (none at all on a [`PerCpuDrainable`]'s thread-local path). `drain` blocks without burning CPU (short spin, then a futex) and is
//!   starvation-free: it waits only for guards taken before it closed the drainable.
//! - **Misuse.** Draining on a thread that holds a guard of the same drainable panics in debug
//!   builds instead of hanging; a leaked guard is reported by the timed drains; the guard count
//!   never wraps.
//!
//! # Platforms and fallbacks
//!
//! The API and its guarantees are the same everywhere; what differs is how a waiter sleeps
//! and how the per-CPU counter's drain reaches the other threads.
//!
//! - **Sleeping and waking.** On Linux and Android, `drain` and the other waits sleep in the
//!   `futex` system call, made directly through `libc`. Every other platform uses
//!   [`atomic-wait`](https://docs.rs/atomic-wait) (the system's wait-on-address:
//!   `WaitOnAddress` on Windows, `__ulock` on macOS, and so on); `atomic-wait` has no timed
//!   wait, so the timed drains there park on a small process-wide table instead.
//! - **The per-CPU hot path** ([`PerCpuDrainable`], [`Registry<T, PerCpu>`](Registry::with_counter))
//!   needs a process-wide memory barrier on the drain side. On Linux and Android that is
//!   [`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`](https://man7.org/linux/man-pages/man2/membarrier.2.html),
//!   registered once per process, when the first per-CPU drainable is created (the
//!   registration can take a while in the kernel; no guard pays for it). A guard is then a
//!   plain store into its thread's own record, and each drain makes one `membarrier` call,
//!   which interrupts every CPU running a thread of the process: microseconds to tens of
//!   microseconds, where a [`Drainable`]'s drain is one atomic read-modify-write and perhaps
//!   a futex wake.
//! - **When `membarrier` is missing at start-up** (other platforms, old kernels, a seccomp
//!   filter already in place): no record is handed out, and every per-CPU guard is counted in
//!   the per-CPU slots instead, with one uncontended compare-and-swap.
//!   Still exact; the hot path costs a little more, and a drain folds the slots (one atomic
//!   read-modify-write each) instead of calling `membarrier`.
//! - **When `membarrier` is refused later** (a sandbox installs a seccomp filter after
//!   records were handed out): records cannot be taken back, so the process switches, for
//!   good, to a *signal barrier*: a real-time signal to every thread that owns a record,
//!   acknowledged from its handler after a full fence, the idea of
//!   [liburcu](https://liburcu.org)'s signal flavour. It takes the highest real-time signal
//!   nobody handles and never replaces an application's handler. A thread that blocks that
//!   signal holds drains up (said once on stderr after a second); a process where no
//!   real-time signal is free, or where signals to its own threads are refused, has no sound
//!   barrier left, and the drain panics saying why.
//! - **The CPU number** for the slots is read from glibc's rseq area on Linux with glibc
//!   (x86-64, AArch64); elsewhere each thread gets a slot index round-robin. Correctness never
//!   depends on it.
//!
//! Environment variables, each read once per process:
//!
//! | variable | effect |
//! |---|---|
//! | `DRAINABLE_NO_MEMBARRIER` (any value) | behave as if `membarrier` were missing at start-up: no records, every per-CPU guard in the slots; wins over the next |
//! | `DRAINABLE_FORCE_SIGNAL_BARRIER=1` (exactly `1`) | records as usual, but every drain's barrier is a signal barrier, whether or not `membarrier` works (a testing aid) |
//! | `DRAINABLE_SIGNAL=<n>` | the signal the signal barrier uses (a real-time signal, or `SIGUSR1` / `SIGUSR2`, at its default disposition) |
//!
//! ```sh
//! DRAINABLE_NO_MEMBARRIER=1 cargo run --release --example module_unload  # slots only
//! ```
//!
//! The [design document](design) (`docs/design.md`), §10, has each backend and its limits.
//!
//! # Async
//!
//! Every wait has a future twin that waits without blocking a thread, on any executor (tokio,
//! smol / `async-executor`, `futures::executor`, `pollster`): the library depends on none.
//!
//! | blocking | future | output |
//! |---|---|---|
//! | [`drain`](Drainable::drain) | [`drain_async`](Drainable::drain_async) | `()` |
//! | [`PendingDrain::commit`] | [`PendingDrain::commit_async`] | `()` |
//! | [`GraceDomain::synchronize`] | [`GraceDomain::synchronize_async`] | `()` |
//! | [`GraceCell::replace`] | [`GraceCell::replace_async`] | the old `T` |
//! | [`Registry::unregister`] | [`Registry::unregister_async`] | `T` |
//! | [`Registry::unregister_all`] | [`Registry::unregister_all_async`] | `Vec<T>` |
//! | [`PendingRemoval::commit`] | [`PendingRemoval::commit_async`] | `T` |
//!
//! - **They complete exactly when the blocking call would return**, with the same guarantees:
//!   after `drain_async().await` no guard exists, everything done under one happens-before,
//!   and the memory may be freed. The release that completes a drain wakes the task, on
//!   whatever thread it runs; the task's waker waits in a process-wide table keyed by the
//!   address of the word it waits on (as Linux's `wait_var_event` keeps its waiters), so
//!   nothing is added to a drainable (a `Drainable<()>` stays 4 bytes) and a release that
//!   wakes nobody costs what it did.
//! - **Lazy**: each closes (or publishes, or asks for its grace period) at its first poll.
//!   To close at once and wait later, use [`prepare_drain`](Drainable::prepare_drain) or
//!   [`prepare_unregister`](Registry::prepare_unregister) and the `commit_async` of what they
//!   return.
//! - **Cancellation is "unload or fail"**: a drain or removal future dropped before it
//!   completes undoes its close, exactly as a timed-out `drain_timeout` does, so
//!   `tokio::time::timeout(limit, d.drain_async())` either drains within `limit` or leaves `d`
//!   as it was. A cancelled removal leaves its entries registered and hands their
//!   registrations to the registry: [`Registry::recover`] gives each back by its [`EntryId`].
//!   A cancelled `replace_async` that had published hands the old value to the domain, which
//!   drops it after the grace period (never while a reader can still see it).
//! - **`Send`** (when `T` is `Send + Sync`) and `Unpin`; no lock is held across a poll.
//! - **Guards held across `.await`**: a [`Guard`] is `!Send`. Use
//!   [`try_acquire_owned`](Drainable::try_acquire_owned), [`Registry::get_owned`] and
//!   [`GraceCell::read_owned`], whose guards own an `Arc` and are `Send + 'static`.
//! - A per-CPU drain makes its `membarrier` system call inside a poll (tens of microseconds);
//!   where `membarrier` was refused, the signal barrier that replaces it waits at most 1 ms
//!   per poll (then the task is woken to try again, so a stopped thread never blocks the
//!   executor, and a timeout still cancels). Everything else in a poll is a few atomic
//!   operations, or a short lock.
//!
//! ```
//! use drainable::Drainable;
//! use std::sync::Arc;
//!
//! // A server's connection tasks hold owned guards of the listener's drainable.
//! let accepting = Arc::new(Drainable::new(()));
//! let conn = accepting.try_acquire_owned().unwrap();
//! let task = std::thread::spawn(move || drop(conn)); // stands in for a task finishing
//! // Shutdown: stop new connections, wait for the open ones (in a runtime:
//! // `tokio::time::timeout(deadline, accepting.drain_async()).await`).
//! pollster::block_on(accepting.drain_async());
//! assert!(accepting.is_drained());
//! task.join().unwrap();
//! ```
//!
//! The async self-deadlock: a task that holds a guard of a drainable and awaits its drain waits
//! forever, as a thread would. A future cannot tell which task holds a guard, so unlike the
//! blocking drain this is not detected; drop the task's guards before awaiting. The demo
//! `async-tests/examples/graceful_shutdown.rs` is a tokio TCP server that drains its
//! connections with a deadline.
//!
//! # Pitfalls
//!
//! - **Where `T::drop` runs.** Guards never drop the value. A [`Drainable`] drops its `T`
//!   wherever the drainable itself is dropped (or [`into_inner`](Drainable::into_inner)
//!   hands it back). [`Registry::unregister`] (and [`PendingRemoval::commit`]) return the
//!   value to the remover, whose thread drops it; values still registered are dropped with
//!   the registry. [`GraceCell::replace`] and [`update`](GraceCell::update) return the old
//!   value to the writer; readers never drop one. One exception to keep in mind: an
//!   [`OwnedGuard`] holds an `Arc` clone of its drainable, so if it is the last clone, the
//!   drainable (and its `T`) is dropped on the thread that drops the guard.
//! - **Draining while holding a guard of the same drainable** waits for itself forever. Debug
//!   builds panic instead (for `drain`, `commit`, `unregister`, and for `synchronize` or
//!   `replace` inside a read section of the same domain); release builds hang. Drop the guard
//!   first:
//!
//!   ```
//!   let d = drainable::Drainable::new(5);
//!   let g = d.try_acquire().unwrap();
//!   let seen = *g;
//!   drop(g); // without this line, the drain below would wait for this thread
//!   d.drain();
//!   assert_eq!(seen, 5);
//!   ```
//! - **Blocking inside async code.** `drain`, `commit`, `unregister`, `synchronize` and
//!   `replace` block the calling thread: in an async task, await their `_async` twins instead
//!   (see *Async*). Guards taken in a task: a [`Guard`] is `!Send`, so a `Send` future cannot
//!   hold one across an `.await`; use the owned guards.
//! - **`Arc::try_unwrap` right after a drain may fail for an instant.** An [`OwnedGuard`]
//!   gives its count back (which lets `drain` return) and only then drops its `Arc` clone,
//!   so `drain(); Arc::try_unwrap(d)` can still see that clone. The drain itself is exact:
//!   dropping your `Arc` is always safe. To get the `T` back, use
//!   [`drain_and_take`](Drainable::drain_and_take), which moves the value out whatever the
//!   strong count (other owners keep a drained, empty drainable):
//!
//!   ```
//!   use drainable::Drainable;
//!   use std::sync::Arc;
//!
//!   let d = Arc::new(Drainable::new(String::from("data")));
//!   let g = d.try_acquire_owned().unwrap();
//!   let worker = std::thread::spawn(move || g.len());
//!   assert_eq!(d.drain_and_take().ok().unwrap(), "data");
//!   assert_eq!(worker.join().unwrap(), 4);
//!   ```
//! - **Leaks.** A guard passed to [`mem::forget`](std::mem::forget) is never released, so
//!   `drain` waits forever; [`drain_timeout`](Drainable::drain_timeout) and
//!   [`commit_timeout`](PendingDrain::commit_timeout) report it as outstanding (and in debug
//!   builds a drain on the thread that leaked a borrowed [`Guard`] panics). A [`PendingDrain`]
//!   passed to `mem::forget` is never undone: the drainable stays closed for good
//!   (`try_acquire` returns `None`, [`reopen`](Drainable::reopen) is refused), though a drain
//!   still completes. Dropping a `PendingDrain` (or a [`PendingRemoval`]) undoes it.
//!
//! See the [design document](design) (`docs/design.md`) for the state machine, the word layout and each
//! ordering. The idea has a long history: proposed on linux-kernel in 2003 for module
//! unloading, then built as
//! [Windows rundown protection](https://learn.microsoft.com/en-us/windows-hardware/drivers/kernel/run-down-protection)
//! and Linux's [`percpu_ref`](https://github.com/torvalds/linux/blob/master/include/linux/percpu-refcount.h);
//! the grace periods follow RCU and SRCU ([liburcu](https://liburcu.org)).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::undocumented_unsafe_blocks
)]
#![doc(test(attr(deny(warnings))))]

mod auto_traits;
mod awaiting;
mod counter;
/// Slot selection, exposed only for `bench/benches/cpu_id.rs`; not part of the API.
#[doc(hidden)]
pub mod cpu;
mod drainable;
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

pub use awaiting::{Commit, Drain, Replace, Synchronize};
pub use counter::{Counter, PerCpu, Shared};
pub use drainable::{
    CommitTimeoutError, DrainTimeoutError, Drainable, DrainableWith, Guard, OwnedGuard,
    PendingDrain, PerCpuDrainable,
};
pub use grace::{
    GraceCell, GraceCookie, GraceDomain, GraceGuard, GraceTimeoutError, OwnedGraceGuard,
    ReadSection,
};
pub use registry::{
    CommitRemoval, EntryGuard, EntryId, OwnedEntryGuard, PendingRemoval, Registration, Registry,
    RegistryIter, RemovalTimeoutError, Unregister, UnregisterAll, UnregisterTimeoutError,
};

#[cfg(all(test, not(drainable_loom)))]
mod test_support;
#[cfg(all(test, not(drainable_loom)))]
mod tests;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The design document, `docs/design.md` in the repository: the lifecycle state machine, the
/// word layout, each memory ordering and what it pairs with, the wait and wake protocols, the
/// per-CPU counter, grace periods, the registry, the async waits, and how each is verified.
/// It names files and items of the source; none of it is API.
#[doc = include_str!("../docs/design.md")]
#[allow(rustdoc::broken_intra_doc_links)]
pub mod design {}
