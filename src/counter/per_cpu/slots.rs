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

use super::arena::{self, Column};
use crate::lifecycle::{Token, Word};
use crate::platform::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

const FOLDED: u64 = 1 << 63;
/// Keeps `central` above zero while a fold is incomplete. Larger than any possible count.
const BIAS: u64 = 1 << 62;
/// Slot values at or above this refuse (folded, or an absurd 2^62 increments on one slot).
const SLOT_LIMIT: u64 = BIAS;
/// At most this many slots.
pub(crate) const MAX_SLOTS: usize = 64;
/// What [`Folding::try_increment`] returns when the set has no slots yet: the caller installs
/// them ([`Folding::install`]) under its lock and retries. No slot value is 0 and refused.
pub(crate) const NO_SLOTS: u64 = 0;

/// A set of per-CPU slots and the central count they fold into. The slots are a column of the
/// process-wide arena (`arena.rs`), taken on the first increment that needs one.
pub(crate) struct Folding {
    central: AtomicU64,
    /// Null until [`install`](Self::install); then the column, until the set is dropped.
    slots: AtomicPtr<AtomicU64>,
    /// Whether the set is folded: what a column installed now starts as. Read and written only
    /// under the owner's lock (the one that serialises folds and unfolds).
    folded: AtomicBool,
}

impl Folding {
    crate::platform::const_fn! {
        /// An open set, without slots until its first increment.
        pub(crate) const fn new() -> Self {
            Self::with_state(false)
        }
    }

    crate::platform::const_fn! {
        /// A set that starts folded: increments are refused until the first
        /// [`unfold`](Self::unfold).
        pub(crate) const fn new_folded() -> Self {
            Self::with_state(true)
        }
    }

    crate::platform::const_fn! {
        const fn with_state(folded: bool) -> Self {
            Folding {
                central: AtomicU64::new(0),
                slots: AtomicPtr::new(std::ptr::null_mut()),
                folded: AtomicBool::new(folded),
            }
        }
    }

    /// Slots in the set: the arena's units once installed, else 0.
    pub(crate) fn len(&self) -> usize {
        self.column().map_or(0, |_| arena::units())
    }

    pub(crate) fn is_folded(slot_value: u64) -> bool {
        slot_value & FOLDED != 0
    }

    /// The column, if installed.
    #[inline]
    fn column(&self) -> Option<Column> {
        // Acquire: pairs with the Release of `install`, so the column's initial values (and
        // `arena::units`) are seen.
        let p = self.slots.load(Ordering::Acquire);
        (!p.is_null()).then(|| Column::from_ptr(p))
    }

    /// Adds one to the current CPU's slot and returns its index, or returns the slot's value if
    /// it is folded (or absurdly full), or [`NO_SLOTS`] before [`install`](Self::install).
    #[inline]
    pub(crate) fn try_increment(&self) -> Result<u32, u64> {
        // Acquire: pairs with the Release of `install` (the slot's initial value).
        let slots: *const AtomicU64 = self.slots.load(Ordering::Acquire);
        if slots.is_null() {
            return Err(NO_SLOTS);
        }
        let index = crate::cpu::current() & (arena::units() - 1);
        // SAFETY: an installed column, and `index < units()`.
        let slot = unsafe { &*Column::slot(slots, index) };
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

    /// Gives the set its slots if it has none, in its current fold state. Call under the
    /// owner's lock that serialises folds and unfolds, so that a fold sees either no slots (and
    /// the set folded, for slots installed after it) or all of them.
    #[cold]
    #[inline(never)]
    pub(crate) fn install(&self) {
        // Relaxed: written only under the caller's lock, which orders it.
        if !self.slots.load(Ordering::Relaxed).is_null() {
            return;
        }
        let column = arena::take();
        // Relaxed: under the caller's lock, like every fold and unfold.
        let initial = if self.folded.load(Ordering::Relaxed) {
            FOLDED
        } else {
            0
        };
        for slot in column.slots() {
            // Relaxed: published by the Release store below (and a previous owner's accesses
            // happen-before this, through the arena's lock).
            slot.store(initial, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire loads of `try_increment` and `column`.
        self.slots
            .store(column.as_ptr().cast_mut(), Ordering::Release);
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
            // Relaxed: the increment that made the caller's count read the installed column,
            // and happens-before this (the same thread, or a guard handed over); the column
            // changes only at the set's drop.
            let slots: *const AtomicU64 = (*this).slots.load(Ordering::Relaxed);
            (
                Column::slot(slots, index as usize),
                std::ptr::addr_of!((*this).central),
            )
        };
        // Release: publishes the holder's accesses to the fold's Acquire.
        // SAFETY: the caller owns one count on this slot; the arena's chunks are never freed.
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
    /// Under the owner's lock (as `install` and `unfold`).
    pub(crate) fn fold(&self, word: &Word, token: Token) {
        // Relaxed: under the owner's lock, which `install` reads it under.
        self.folded.store(true, Ordering::Relaxed);
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
        // No slots: nothing was counted, and slots installed later start folded.
        for slot in self.locked_slots() {
            // Acquire: synchronises with every decrement already made on the slot.
            let prev = slot.fetch_or(FOLDED, Ordering::Acquire);
            debug_assert!(prev & FOLDED == 0, "fold of a folded slot");
            sum += prev;
        }
        // SAFETY: `central` holds BIAS plus this fold's counts; `word` belongs to the same live
        // owner (the caller holds a reference to it).
        unsafe { release_folded(&self.central, word, BIAS - sum) };
    }

    /// Unfolds every slot, so that increments succeed again. Under the owner's lock.
    pub(crate) fn unfold(&self, word: &Word) {
        // Relaxed: as in `fold`.
        self.folded.store(false, Ordering::Relaxed);
        let mut sum = 0u64;
        for slot in self.locked_slots() {
            // Release: what the opener did is visible to later incrementers on this slot.
            let prev = slot.fetch_and(!FOLDED, Ordering::Release);
            debug_assert!(prev & FOLDED != 0, "unfold of an open slot");
            sum += prev & !FOLDED;
        }
        if sum != 0 {
            // These were counted by the fold but will now be given back only to their slots.
            // SAFETY: `central` counts at least these; same live owner.
            unsafe { release_folded(&self.central, word, sum) };
        }
    }

    /// The slots, read under the owner's lock (empty before `install`).
    fn locked_slots(&self) -> impl Iterator<Item = &'static AtomicU64> {
        // Relaxed: `install` stores it under the same lock.
        let p = self.slots.load(Ordering::Relaxed);
        (!p.is_null())
            .then(|| Column::from_ptr(p).slots())
            .into_iter()
            .flatten()
    }

    /// Counts outstanding, as a snapshot: slot counts are exact at every instant.
    pub(crate) fn outstanding(&self) -> usize {
        self.column().map_or(0, |column| {
            column
                .slots()
                .map(|s| s.load(Ordering::Relaxed) & !FOLDED)
                .sum::<u64>() as usize
        })
    }

    /// Bytes of the arena this set holds: 8 per slot once installed, else 0.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.column().map_or(0, |_| arena::column_bytes())
    }
}

impl Drop for Folding {
    fn drop(&mut self) {
        // Relaxed: `&mut self`: every access to the set, and so to its slots, happens-before.
        let p = self.slots.load(Ordering::Relaxed);
        if !p.is_null() {
            arena::give_back(Column::from_ptr(p));
        }
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
