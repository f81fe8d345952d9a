//! The single-word counter: guards are counted in the lifecycle word itself.

use super::{Close, Counter, Outstanding, sealed};
use crate::lifecycle::{self, Closing, Hold, Open, Refused, Word};
use crate::platform;
use std::time::Instant;

/// The single-word counter of [`Drainable<T>`](crate::Drainable): guards are counted in the
/// lifecycle word, so a close needs no pass and an acquisition is one `fetch_add` on it.
/// Smallest and cheapest on one thread; every reader writes the same cache line.
///
/// ```
/// use drainable::{DrainableWith, Shared};
/// let d: DrainableWith<u8, Shared> = drainable::Drainable::new(1);
/// // The word, the u8 and padding (debug builds add an 8-byte key for the deadlock detector).
/// let debug_key = if cfg!(debug_assertions) { 8 } else { 0 };
/// assert_eq!(std::mem::size_of_val(&d), (4 + 1 + 3 + debug_key) as usize);
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Shared;

impl Counter for Shared {}

impl sealed::SealedTicket for Shared {
    type Ticket = ();
}

impl sealed::CounterImpl for Shared {
    const NAME: &'static str = "Drainable";

    fn new_counter() -> Self {
        Shared
    }

    fn new_drained_counter() -> Self {
        Shared
    }

    #[inline]
    fn try_acquire(&self, word: &Word) -> Result<(), Refused> {
        word.try_acquire()
    }

    #[inline]
    unsafe fn release(_this: *const Self, word: *const Word, _ticket: ()) {
        // SAFETY: forwarded from the caller: it owns one count on `word`.
        unsafe { Word::release(word) }
    }

    fn close(&self, word: &Word, hold: Hold) -> Close {
        // The guards are in the word: a close adds no token and needs no pass.
        let (Closing::Began([]) | Closing::Joined) = word.close::<0>(hold);
        // The one word has no room to number its closes.
        Close(0)
    }

    fn open(&self, word: &Word, how: Open) -> bool {
        word.open(how)
    }

    type WaitState = ();

    fn wait_with<P: platform::Park>(
        &self,
        word: &Word,
        hold: Hold,
        _close: Close,
        deadline: Option<Instant>,
        park: &mut P,
        _state: &mut (),
    ) -> Result<Result<(), Outstanding>, P::Pending> {
        // Unnumbered: to the word, any close in effect is the waiter's (docs/design.md §2a).
        let waited = word.wait_drained_with(hold, deadline, || true, park)?;
        // The count field holds the guards: report the count the wait saw (re-reading could
        // see a guard dropped a moment later and claim "0 outstanding": found by loom).
        Ok(waited.map_err(|timed_out| Outstanding(timed_out.count as usize)))
    }

    fn outstanding(&self, word: u32) -> usize {
        lifecycle::count(word) as usize
    }

    fn heap_bytes(&self) -> usize {
        0
    }
}
