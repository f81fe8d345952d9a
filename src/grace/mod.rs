//! Grace periods: [`GraceDomain`] (read sections and `synchronize`) and [`GraceCell<T>`]
//! (publish a new value, wait until no reader can still see the old one, get it back).
//!
//! # Algorithm
//!
//! A domain has two phases, each a set of folding per-CPU counters (`counter/per_cpu/slots.rs`,
//! shared with [`PerCpuDrainable`](crate::PerCpuDrainable)), and a `phase` word saying where new
//! readers go. Most sections are not counted in the slots at all but on the reading thread's
//! record (`counter/per_cpu/records.rs`): an entry tagged with the domain and the phase, with
//! plain stores, which a grace period finds after its flip and a `membarrier`
//! (`docs/design.md` §7a). What follows is the slot protocol, used by owned sections
//! ([`GraceCell::read_owned`]), by a thread's sections past its record's free entries, and
//! where `membarrier` is unavailable; a grace period waits for both places.
//!
//! - **enter**: read `phase` (`Acquire`), increment the current CPU's slot of that phase. If
//!   the slot is folded, a grace period has flipped the phase in between: read `phase` again
//!   and retry. Lock-free; no fence.
//! - **leave**: decrement the slot that was incremented (the guard remembers phase and slot).
//! - **a grace period** (under the domain's step lock, never held while waiting): unfold the
//!   new phase (`Release`; it has been folded and empty since its last grace period), flip
//!   `phase` to it (`Release`), add a token to the domain's futex word, and fold the old phase's
//!   slots (one RMW per slot). The old phase now counts exactly the sections that entered it;
//!   the leave that takes that count to zero gives the token back and wakes the waiter. The old
//!   phase then *stays folded* until the grace period after next flips back to it.
//!
//! A section that read the old `phase` but reached its slot after the fold sees `FOLDED` and
//! retries in the new phase. Its retry *acquired* the fold, which the grace period made after
//! the flip, which the writer made after publishing its new value: so that reader sees the new
//! value. A section counted by the fold is waited for. Either way no reader can see the old
//! value once the grace period ends, with no fence on either side.
//!
//! Why the old phase stays folded: a section may read `phase` and reach its slot much later.
//! Were the old phase reopened when its grace period ended, such a section could slip into it
//! while the *other* phase is current, and the next grace period (which waits for the other
//! phase) would miss it, although it may have read the value that grace period retires. loom
//! found exactly this. Reopening a phase only at the start of the grace period that makes it
//! current means a slow section can only enter it after acquiring that unfold, which the writer
//! made after publishing: it sees the newest value.
//!
//! Grace periods are numbered. `synchronize` asks for the first one that *starts* after the
//! call (if one is in flight, the one after it), and any thread that finds the one in flight
//! finished completes it and starts the next one requested: concurrent callers share grace
//! periods instead of queueing one each.
//!
//! # Files
//!
//! - `domain.rs`: [`GraceDomain`], its read sections ([`ReadSection`]), cookies
//!   ([`GraceCookie`]) and timeout error ([`GraceTimeoutError`]).
//! - `cell.rs`: [`GraceCell`] and its read guard ([`GraceGuard`]), built on a domain.
//! - `deferred.rs`: the backlog of deferred drops ([`GraceDomain::retire`],
//!   [`GraceCell::store`]) and the batch and barrier protocol.

mod cell;
mod deferred;
mod domain;

pub use cell::{GraceCell, GraceGuard, OwnedGraceGuard};
pub(crate) use deferred::Retired;
pub(crate) use domain::GraceWait;
pub use domain::{GraceCookie, GraceDomain, GraceTimeoutError, ReadSection};
