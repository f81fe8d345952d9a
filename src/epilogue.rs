//! Owned guards between their release and the drop of their `Arc` ("in their epilogue"),
//! counted per address in a process-wide table, so that
//! [`DrainableWith::drain_and_take`](crate::DrainableWith::drain_and_take) can tell the
//! `Arc` clone of a guard that is still returning from its drop from a genuine other owner.
//!
//! # Why a table outside the drainable
//!
//! An [`OwnedGuard`](crate::OwnedGuard) must release its count (which may complete a drain)
//! while its `Arc` keeps the drainable alive, so it drops the `Arc` after the release. A taker
//! that the release lets through may then see one strong reference too many. To wait for such
//! a guard, the taker needs a mark that the guard clears *after* its `Arc` drop; a mark inside
//! the drainable cannot be cleared then (that drop may have freed it, and the release rule of
//! `docs/design.md` §4 says the drainable is not touched after the decrement anyway). So the
//! mark is a counter in this `'static` table, in the bucket of the drainable's address.
//!
//! # Protocol
//!
//! - Guard: [`enter`] (`fetch_add`, `Relaxed`) *before* its release; then the release; then
//!   its `Arc` drop; then [`Entered::leave`] (`fetch_sub`, `Release`).
//! - Taker, after its drain has returned: reads the bucket ([`quiet`], `Acquire`), *then*
//!   tries `Arc::try_unwrap`. If that fails although the bucket read zero, the extra strong
//!   reference is a genuine owner's.
//!
//! # Orderings
//!
//! - `enter` can be `Relaxed`: it is sequenced before the guard's release, which the drain
//!   acquires (release → drainer, §3), so the taker's later load is ordered after it and
//!   reads it or a later value (coherence).
//! - `leave` is `Release`, `quiet` is `Acquire` (epilogue → taker): a zero read after a
//!   guard's `enter` is a value after that guard's `leave` in the bucket's modification order
//!   (each `leave` follows its own `enter`, so a zero counts every entered guard as left); the
//!   load synchronises with that `leave` (RMWs continue its release sequence), so the guard's
//!   `Arc` decrement happens before the taker's `try_unwrap`, which therefore sees it.
//!
//! Other drainables' guards in the same bucket only make a taker wait longer, never fail.

use crate::platform::{self, AtomicUsize, Ordering};

/// 64 buckets; one under loom (one drainable per model, fewer atomics to explore).
const BUCKETS: usize = if platform::LOOM { 1 } else { 64 };

/// One bucket, on a cache line of its own: guards of unrelated drainables do not share it.
#[repr(align(128))]
struct Bucket(AtomicUsize);

fn bucket(addr: usize) -> &'static AtomicUsize {
    platform::process_wide! {
        fn table() -> &'static [Bucket; BUCKETS] = [Bucket(AtomicUsize::new(0)); BUCKETS];
    }
    &table()[index(addr)].0
}

/// The bucket of an address: a multiplicative hash of the address above its alignment bits.
fn index(addr: usize) -> usize {
    // Fibonacci hashing; the top bits of the product are the well-mixed ones.
    let product = (addr as u64 >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (product >> 32) as usize % BUCKETS
}

/// An owned guard of the drainable at `addr` is in its epilogue until it calls
/// [`Entered::leave`]. Call before the release.
#[inline]
pub(crate) fn enter(addr: usize) -> Entered {
    let bucket = bucket(addr);
    // Relaxed: ordered before the taker by the release that follows (module docs).
    bucket.fetch_add(1, Ordering::Relaxed);
    Entered(bucket)
}

/// An owned guard in its epilogue: [`leave`](Self::leave) after its `Arc` is dropped.
#[must_use = "an epilogue that is never left makes drain_and_take wait forever"]
pub(crate) struct Entered(&'static AtomicUsize);

impl Entered {
    /// The guard's `Arc` is dropped: it holds no strong reference any more.
    #[inline]
    pub(crate) fn leave(self) {
        // Release: epilogue → taker: publishes the `Arc` drop before it (pairs with `quiet`).
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// Whether no owned guard of the drainable at `addr` (or of another in its bucket) is in its
/// epilogue. Call after the drain, before `Arc::try_unwrap`.
pub(crate) fn quiet(addr: usize) -> bool {
    // Acquire: epilogue → taker (pairs with `Entered::leave`).
    bucket(addr).load(Ordering::Acquire) == 0
}
