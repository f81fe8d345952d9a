//! Folding per-CPU counters: the scalable counting scheme shared by
//! [`PerCpu`](crate::PerCpu) (one set of slots) and [`GraceDomain`](crate::GraceDomain) (one
//! set per phase).
//!
//! # Algorithm
//!
//! Each slot is a 64-bit counter on its own 128-byte line (two 64-byte lines: x86 prefetches
//! pairs). Bit 63 is `FOLDED`; the rest counts increments not yet given back.
//!
//! - **Increment**: pick the current CPU's slot; CAS `n → n + 1` unless `FOLDED` is set (then
//!   refuse). A CAS rather than a `fetch_add` so that a refused increment never touches a folded
//!   count: every slot count is exact at every instant. The slot is almost always uncontended
//!   (only threads on the same CPU share it), so the CAS succeeds at once.
//! - **Decrement**: `fetch_sub(1)` on the slot that was incremented (the holder remembers it),
//!   wherever the thread runs now. If the value returned has `FOLDED`, the count was folded into
//!   `central`, so it also decrements `central`; whoever takes `central` to zero gives a *token*
//!   back to the owner's lifecycle word, waking a waiter.
//! - **Fold** (handed one token the owner just added to its word's count field): add `BIAS` to
//!   `central`, `fetch_or(FOLDED)` every slot, summing the counts returned, then subtract
//!   `BIAS - sum`. Each slot's `fetch_or` is ordered with every increment on that slot: one
//!   before it is counted; one after it sees `FOLDED` and is refused. So `central` becomes the
//!   exact number outstanding (plus decrements in flight between their two steps), and the bias
//!   keeps it from touching zero while the fold is incomplete.
//! - **Unfold**: `fetch_and(!FOLDED)` every slot; the counts returned were folded into `central`
//!   but will now be given back only to their slots, so subtract them from `central`.
//!
//! No fence on either side: every handshake is a read-modify-write on the one slot both sides
//! touch. Folds and unfolds of one set must not overlap; the owners serialise them with a lock.
//!
//! # Orderings
//! - increment `Acquire` ← unfold `Release`: what the opener did is visible to new holders.
//! - decrement `Release` → fold `Acquire` (one slot), and decrement of `central` `AcqRel`
//!   among themselves → the token release (`Release`) → the waiter's `Acquire`: everything done
//!   by a holder happens-before the waiter returns.

use crate::lifecycle::{Token, Word};
use crate::platform::{AtomicU64, Ordering};

/// One cache-line-padded slot.
#[repr(align(128))]
struct Slot(AtomicU64);

const FOLDED: u64 = 1 << 63;
/// Keeps `central` above zero while a fold is incomplete. Larger than any possible count.
const BIAS: u64 = 1 << 62;
/// Slot values at or above this refuse (folded, or an absurd 2^62 increments on one slot).
const SLOT_LIMIT: u64 = BIAS;
/// At most this many slots.
pub(crate) const MAX_SLOTS: usize = 64;

/// A set of per-CPU slots and the central count they fold into.
pub(crate) struct Folding {
    central: AtomicU64,
    slots: Box<[Slot]>,
    mask: usize,
}

fn slot_count() -> usize {
    if crate::platform::MODEL {
        // Two slots, so that tests exercise counts given back on another slot.
        return 2;
    }
    // Read once per process (`platform::cpu::spread`), not on every construction.
    crate::platform::cpu::spread()
        .clamp(1, MAX_SLOTS)
        .next_power_of_two()
}

impl Folding {
    pub(crate) fn new() -> Self {
        let n = slot_count();
        Folding {
            central: AtomicU64::new(0),
            slots: (0..n).map(|_| Slot(AtomicU64::new(0))).collect(),
            mask: n - 1,
        }
    }

    /// A set whose slots start folded: increments are refused until the first
    /// [`unfold`](Self::unfold).
    pub(crate) fn new_folded() -> Self {
        let f = Self::new();
        for slot in f.slots.iter() {
            // Relaxed: not yet shared with any other thread.
            slot.0.store(FOLDED, Ordering::Relaxed);
        }
        f
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn is_folded(slot_value: u64) -> bool {
        slot_value & FOLDED != 0
    }

    /// Adds one to the current CPU's slot and returns its index, or returns the slot's value if
    /// it is folded (or absurdly full).
    #[inline]
    pub(crate) fn try_increment(&self) -> Result<u32, u64> {
        let index = crate::cpu::current() & self.mask;
        // SAFETY: `mask` is `slots.len() - 1` and the length is a power of two.
        let slot = unsafe { &self.slots.get_unchecked(index).0 };
        // Relaxed: the CAS below decides and carries the ordering.
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            if cur >= SLOT_LIMIT {
                return Err(cur);
            }
            // Acquire: pairs with the Release of the unfold that opened the slot.
            match slot.compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(index as u32),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back one count on slot `index`.
    ///
    /// # Safety
    /// `this` and `word` belong to one live owner, and the caller owns one count on slot `index`
    /// of `this`. After the call the owner may already be freed: the last access to it is the
    /// slot decrement, or, for a folded count, the token release on `word`.
    #[inline]
    pub(crate) unsafe fn decrement(this: *const Self, index: u32, word: *const Word) {
        // SAFETY: `this` is live (the caller's count keeps its owner from finishing a wait); the
        // slot and `central` addresses are computed before the decrement.
        let (slot, central) = unsafe {
            let slots: *const Slot = (*this).slots.as_ptr();
            (
                std::ptr::addr_of!((*slots.add(index as usize)).0),
                std::ptr::addr_of!((*this).central),
            )
        };
        // Release: publishes the holder's accesses to the fold's Acquire.
        // SAFETY: the caller owns one count on this slot.
        let prev = unsafe { (*slot).fetch_sub(1, Ordering::Release) };
        if prev & FOLDED != 0 {
            // SAFETY: a fold counted this into `central`, and no wait can finish before
            // `central` reaches zero, so the owner is still live.
            unsafe { release_folded(central, word, 1) };
        }
        // Otherwise the slot decrement was the last access: a later fold will not count it.
    }

    /// Folds every slot into `central`. `token` is one the caller just added to
    /// `word`'s count field; it is given back once nothing counted here is outstanding.
    pub(crate) fn fold(&self, word: &Word, token: Token) {
        // Relaxed: the bias is only arithmetic; the fold's RMWs below carry the ordering.
        let before = self.central.fetch_add(BIAS, Ordering::Relaxed);
        if before != 0 {
            // An earlier fold's token is still out: counts it folded are being given back, and
            // its token returns when `central` reaches zero, which the bias now delays until
            // this fold is complete. One token is enough, so give ours back (the count field
            // stays at least one, so this wakes nobody).
            word.give_back(token);
        } else {
            // Out until `central` reaches zero: whoever takes it there gives it back.
            token.stash();
        }
        let mut sum = 0u64;
        for slot in self.slots.iter() {
            // Acquire: synchronises with every decrement already made on the slot.
            let prev = slot.0.fetch_or(FOLDED, Ordering::Acquire);
            debug_assert!(prev & FOLDED == 0, "fold of a folded slot");
            sum += prev;
        }
        // SAFETY: `central` holds BIAS plus this fold's counts; `word` belongs to the same live
        // owner (the caller holds a reference to it).
        unsafe { release_folded(&self.central, word, BIAS - sum) };
    }

    /// Unfolds every slot, so that increments succeed again.
    pub(crate) fn unfold(&self, word: &Word) {
        let mut sum = 0u64;
        for slot in self.slots.iter() {
            // Release: what the opener did is visible to later incrementers on this slot.
            let prev = slot.0.fetch_and(!FOLDED, Ordering::Release);
            debug_assert!(prev & FOLDED != 0, "unfold of an open slot");
            sum += prev & !FOLDED;
        }
        if sum != 0 {
            // These were counted by the fold but will now be given back only to their slots.
            // SAFETY: `central` counts at least these; same live owner.
            unsafe { release_folded(&self.central, word, sum) };
        }
    }

    /// Counts outstanding, as a snapshot: slot counts are exact at every instant.
    pub(crate) fn outstanding(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed) & !FOLDED)
            .sum::<u64>() as usize
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

/// Subtracts `n` from `central`; whoever takes it to zero gives the fold's token back to the
/// owner's word (waking a waiter if that was the last token).
///
/// # Safety
/// `central` and `word` belong to one live owner, and `central` counts at least `n`.
#[cold]
#[inline(never)]
unsafe fn release_folded(central: *const AtomicU64, word: *const Word, n: u64) {
    // AcqRel: Acquire so the one that reaches zero has seen every other decrement (and the
    // accesses behind them) before it hands the token on; Release for this thread's own.
    // SAFETY: the caller guarantees `central` is live.
    let prev = unsafe { (*central).fetch_sub(n, Ordering::AcqRel) };
    debug_assert!(prev >= n, "central count underflow");
    if prev == n {
        // SAFETY: the token stashed by the fold this count belongs to is reclaimed exactly
        // once: by whoever takes `central` to zero. The caller guarantees `word` is live.
        unsafe { Word::give_back_raw(word, Token::reclaim()) };
    }
}
