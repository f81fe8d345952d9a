//! The counter schemes behind one sealed trait. The lifecycle (the state word, closing, waiting,
//! undo, reopen) is written once in `state.rs` and `drainable.rs`; a [`Counter`] only decides
//! where guards are counted and how a close turns those counts into something a drainer can
//! wait on.
//!
//! - [`Shared`]: guards are counted in the lifecycle word itself. Zero bytes.
//! - [`PerCpu`]: guards are counted in cache-line-padded per-CPU slots; a close *folds* the
//!   slots into one central count (see the module docs of `PerCpu`).

use crate::state::{self, Refused};
use crate::sync::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};
use std::fmt;

/// How a drainable counts its guards: [`Shared`] (one word, the default) or [`PerCpu`].
///
/// Sealed: the crate's lifecycle code relies on each scheme's exact protocol, so the trait
/// cannot be implemented outside this crate. Use it as a bound to write code generic over
/// both kinds of drainable:
///
/// ```
/// use drainable::{Counter, DrainableWith, Drainable, PerCpuDrainable};
///
/// fn call<T: Fn() -> u32, C: Counter>(hook: &DrainableWith<T, C>) -> Option<u32> {
///     hook.try_acquire().map(|f| f())
/// }
/// assert_eq!(call(&Drainable::new(|| 1)), Some(1));
/// assert_eq!(call(&PerCpuDrainable::new(|| 2)), Some(2));
/// ```
pub trait Counter: sealed::CounterImpl {}

pub(crate) mod sealed {
    use super::*;

    /// The protocol a counter scheme implements. Private to the crate (the module is not
    /// reachable from outside), so its methods are not part of the public API.
    pub trait CounterImpl: Send + Sync + Sized + 'static {
        /// What a guard remembers to give its count back (the slot index, or nothing).
        type Ticket: Copy + Send + Sync + 'static;

        /// The type's name in `Debug` output.
        const NAME: &'static str;

        /// Units of the lifecycle word's count field that a close adds when it closes an open
        /// word, and that the scheme gives back once the guards counted elsewhere are gone.
        const CLOSE_TOKEN: u32;

        fn new_counter() -> Self;

        /// Takes one guard count, or refuses once closed.
        fn try_acquire(&self, word: &AtomicU32) -> Result<Self::Ticket, Refused>;

        /// Gives back the count named by `ticket`.
        ///
        /// # Safety
        /// `this` and `word` belong to one live drainable on which the caller owns that count.
        /// After the call the drainable may already be freed.
        unsafe fn release(this: *const Self, word: *const AtomicU32, ticket: Self::Ticket);

        /// Serialises the operations that open or close the word with the passes over the
        /// counters that go with them. `None` where closing needs no pass.
        fn lock_control(&self) -> Option<MutexGuard<'_, ()>>;

        /// Called, under the control lock, right after this thread closed an open word
        /// (adding `CLOSE_TOKEN`).
        fn closed(&self, word: &AtomicU32);

        /// Called, under the control lock, right after this thread opened a closed word.
        fn opened(&self, word: &AtomicU32);

        /// Guards outstanding, for reports (a snapshot).
        fn outstanding(&self, word: u32) -> usize;

        /// Bytes this counter uses outside the drainable itself.
        fn heap_bytes(&self) -> usize;
    }
}

/// The single-word counter of [`Drainable<T>`](crate::Drainable): guards are counted in the
/// lifecycle word, so a close needs no pass and an acquisition is one `fetch_add` on it.
/// Smallest and cheapest on one thread; every reader writes the same cache line.
///
/// ```
/// use drainable::{DrainableWith, Shared};
/// let d: DrainableWith<u8, Shared> = drainable::Drainable::new(1);
/// assert_eq!(std::mem::size_of_val(&d), 4 + 1 /* u8 */ + 3 /* padding */);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Shared;

impl Counter for Shared {}

impl sealed::CounterImpl for Shared {
    type Ticket = ();
    const NAME: &'static str = "Drainable";
    const CLOSE_TOKEN: u32 = 0;

    fn new_counter() -> Self {
        Shared
    }

    #[inline]
    fn try_acquire(&self, word: &AtomicU32) -> Result<(), Refused> {
        state::try_acquire(word)
    }

    #[inline]
    unsafe fn release(_this: *const Self, word: *const AtomicU32, _ticket: ()) {
        // SAFETY: forwarded from the caller: it owns one count on `word`.
        unsafe { state::release(word) }
    }

    #[inline]
    fn lock_control(&self) -> Option<MutexGuard<'_, ()>> {
        None
    }

    fn closed(&self, _word: &AtomicU32) {}

    fn opened(&self, _word: &AtomicU32) {}

    fn outstanding(&self, word: u32) -> usize {
        state::count(word) as usize
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}

/// The per-CPU counter of [`PerCpuDrainable<T>`](crate::PerCpuDrainable).
///
/// # Algorithm
///
/// Each slot is a 64-bit counter on its own 128-byte line (two lines: x86 prefetches pairs).
/// Bit 63 is `FOLDED`; the rest counts guards taken on that slot and not yet given back.
///
/// - **Acquire**: pick the slot of the current CPU; CAS `n → n + 1` unless `FOLDED` is set
///   (then fail). A CAS rather than a `fetch_add` so that a failed acquisition never touches a
///   folded count: every slot count is exact at every instant. The slot is almost always
///   uncontended (only threads on the same CPU share it), so the CAS succeeds at once.
/// - **Release**: `fetch_sub(1)` on the slot the guard incremented (its ticket), wherever the
///   thread runs now. If the returned value has `FOLDED`, the guard was counted by a close (see
///   below), so it also decrements `central`; the one that takes `central` to zero gives the
///   close's token back to the lifecycle word, waking the drainer.
/// - **Close** (`closed`, under the control lock, after the lifecycle word was closed with one
///   token in its count field): add `BIAS` to `central`, `fetch_or(FOLDED)` every slot, adding
///   the counts it returns, then subtract `BIAS - sum`. Each slot's `fetch_or` is ordered with
///   every acquisition on that slot: an acquisition before it is counted; one after it sees
///   `FOLDED` and fails. So `central` is then the exact number of guards outstanding (plus
///   releases in flight between their two decrements), and the bias kept it from touching zero
///   while the fold was incomplete. Whoever takes `central` to zero gives the token back.
/// - **Open** (`opened`, under the control lock, after the word was opened): `fetch_and(!FOLDED)`
///   every slot; the counts returned are guards that were counted by the close and will now
///   give back only their slot count, so subtract them from `central`.
///
/// No fence on either side: every handshake is a read-modify-write on the slot both sides
/// touch. The control lock (a `Mutex`, taken only by `drain`, `prepare_drain`, `undo` and
/// `reopen`) keeps folds and unfolds in the same order as the closes and opens of the word.
///
/// # Memory
///
/// `128 × slots` bytes on the heap, `slots` being the number of CPUs rounded up to a power of
/// two and capped at 64 (CPUs beyond share slots; correctness does not depend on it).
///
/// ```
/// let d = drainable::PerCpuDrainable::new(());
/// let slots = d.heap_bytes() / 128;
/// assert!(slots.is_power_of_two() && slots <= 64);
/// ```
pub struct PerCpu {
    central: AtomicU64,
    slots: Box<[Slot]>,
    mask: usize,
    control: Mutex<()>,
}

/// One cache-line-padded slot.
#[repr(align(128))]
struct Slot(AtomicU64);

const FOLDED: u64 = 1 << 63;
/// Keeps `central` above zero while a fold is incomplete. Larger than any possible count.
const BIAS: u64 = 1 << 62;
/// Slot values at or above this refuse (folded, or an absurd 2^62 guards on one slot).
const SLOT_LIMIT: u64 = BIAS;
/// At most this many slots.
pub(crate) const MAX_SLOTS: usize = 64;

fn slot_count() -> usize {
    if cfg!(any(miri, drainable_loom)) {
        // Two slots, so that tests exercise guards released on another slot.
        return 2;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.clamp(1, MAX_SLOTS).next_power_of_two()
}

impl fmt::Debug for PerCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerCpu")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl Counter for PerCpu {}

impl sealed::CounterImpl for PerCpu {
    type Ticket = u32;
    const NAME: &'static str = "PerCpuDrainable";
    const CLOSE_TOKEN: u32 = state::ONE;

    fn new_counter() -> Self {
        let n = slot_count();
        PerCpu {
            central: AtomicU64::new(0),
            slots: (0..n).map(|_| Slot(AtomicU64::new(0))).collect(),
            mask: n - 1,
            control: Mutex::new(()),
        }
    }

    #[inline]
    fn try_acquire(&self, _word: &AtomicU32) -> Result<u32, Refused> {
        let index = crate::cpu::current() & self.mask;
        // SAFETY: `mask` is `slots.len() - 1` and the length is a power of two.
        let slot = unsafe { &self.slots.get_unchecked(index).0 };
        // Relaxed: the CAS below decides and carries the ordering.
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            if cur >= SLOT_LIMIT {
                return Err(refused(cur));
            }
            // Acquire: pairs with the Release of the unfold that opened the slot
            // (open → acquirer).
            match slot.compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(index as u32),
                Err(actual) => cur = actual,
            }
        }
    }

    #[inline]
    unsafe fn release(this: *const Self, word: *const AtomicU32, index: u32) {
        // SAFETY: `this` is live (the caller's count keeps the drainable from draining); the
        // slice pointer and `central`'s address are read before the decrement.
        let (slot, central) = unsafe {
            let slots: *const Slot = (*this).slots.as_ptr();
            (
                std::ptr::addr_of!((*slots.add(index as usize)).0),
                std::ptr::addr_of!((*this).central),
            )
        };
        // Release: publishes the guard's accesses to the fold's Acquire (release → drainer).
        // SAFETY: the ticket names a slot of this drainable on which the caller owns one count.
        let prev = unsafe { (*slot).fetch_sub(1, Ordering::Release) };
        if prev & FOLDED != 0 {
            // SAFETY: a close counted this guard into `central`, and the drain cannot finish
            // before `central` reaches zero, so the drainable is still live.
            unsafe { release_folded(central, word, 1) };
        }
        // Otherwise the slot decrement was the last access: a later fold will not count it.
    }

    fn lock_control(&self) -> Option<MutexGuard<'_, ()>> {
        // A panic under the lock (only the pending-overflow assertion) leaves nothing
        // half-done: the assertion runs before any change.
        Some(
            self.control
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn closed(&self, word: &AtomicU32) {
        // Relaxed: the bias is only arithmetic; the fold's RMWs below carry the ordering.
        let before = self.central.fetch_add(BIAS, Ordering::Relaxed);
        if before != 0 {
            // An earlier close's token is still out: guards it counted are being given back,
            // and its token returns when `central` reaches zero, which the bias now delays
            // until this fold is complete. One token is enough, so give ours back (the count
            // field stays at least one, so this wakes nobody).
            // SAFETY: our close added this token to the word.
            unsafe { state::release(word) };
        }
        let mut sum = 0u64;
        for slot in self.slots.iter() {
            // Acquire: synchronises with every release already made on the slot
            // (release → drainer).
            let prev = slot.0.fetch_or(FOLDED, Ordering::Acquire);
            debug_assert!(prev & FOLDED == 0, "fold of a folded slot");
            sum += prev;
        }
        // SAFETY: `central` holds BIAS plus this fold's counts; taking it to zero gives the
        // token back to `word`, which belongs to the same live drainable (we hold `&self`).
        unsafe { release_folded(&self.central, word, BIAS - sum) };
    }

    fn opened(&self, word: &AtomicU32) {
        let mut sum = 0u64;
        for slot in self.slots.iter() {
            // Release: what the opener did is visible to acquirers on this slot
            // (open → acquirer).
            let prev = slot.0.fetch_and(!FOLDED, Ordering::Release);
            debug_assert!(prev & FOLDED != 0, "unfold of an open slot");
            sum += prev & !FOLDED;
        }
        if sum != 0 {
            // These guards were counted by the close but will now give back only their slot
            // count: take them out of `central` here.
            // SAFETY: `central` counts at least these guards; same live drainable.
            unsafe { release_folded(&self.central, word, sum) };
        }
    }

    fn outstanding(&self, _word: u32) -> usize {
        // Slot counts are exact at every instant (folded or not), so their sum is the number of
        // guards outstanding, as a snapshot.
        self.slots
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed) & !FOLDED)
            .sum::<u64>() as usize
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

#[cold]
#[inline(never)]
fn refused(slot_value: u64) -> Refused {
    if slot_value & FOLDED != 0 {
        Refused::Closed
    } else {
        Refused::Overflow
    }
}

/// Subtracts `n` from `central`; whoever takes it to zero gives the close's token back to the
/// lifecycle word (waking a drainer if that was the last token).
///
/// # Safety
/// `central` and `word` belong to one live drainable, and `central` counts at least `n`.
#[cold]
#[inline(never)]
unsafe fn release_folded(central: *const AtomicU64, word: *const AtomicU32, n: u64) {
    // AcqRel: Acquire so the one that reaches zero has seen every other decrement (and the
    // accesses of the guards behind them) before it hands the token to the drainer; Release
    // for this thread's own accesses.
    // SAFETY: the caller guarantees `central` is live.
    let prev = unsafe { (*central).fetch_sub(n, Ordering::AcqRel) };
    debug_assert!(prev >= n, "central count underflow");
    if prev == n {
        // SAFETY: the token was added by the close this count belongs to, and is given back
        // exactly once: by whoever takes `central` to zero.
        unsafe { state::release(word) };
    }
}
