//! The futures: each wait of the crate as a task's wait, on any executor.
//!
//! Every future here polls the same wait code as its blocking twin, generic over how it sleeps
//! (`platform::Park`): where a thread would sleep on the futex, the future files its task's
//! waker under the futex word's address (`platform/futex/tasks.rs`) and returns `Pending`; the
//! wake of that address wakes the task, which polls again. So a future completes exactly when
//! its blocking twin would return, and the release paths are unchanged.
//!
//! - `drain.rs`: [`Drain`] and [`Commit`], for drainables.
//! - `grace.rs`: [`Synchronize`] and [`Replace`], for grace periods.

mod drain;
mod grace;
#[cfg(all(test, not(drainable_loom)))]
mod tests;

pub use drain::{Commit, Drain};
pub use grace::{Replace, Synchronize};
