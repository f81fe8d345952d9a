//! The side table: state of a drainable that does not fit in its one lifecycle word, kept in
//! one process-wide place and keyed by the word's address (as Linux keeps `wait_var_event`'s
//! waiters in a table hashed by address, outside the object).
//!
//! An entry exists only while it holds something, and while the closes it counts are live the
//! drainable cannot move or be freed: each borrows it (a `PendingDrain`, a `drain_timeout` in
//! flight). Only closes leaked with `mem::forget` on their `PendingDrain` outlive that borrow;
//! their drainable stays closed for good (as a leaked guard keeps it from draining), and if it
//! is then dropped or moved, its entry stays behind, stale. The next drainable to use that
//! address removes it as its pending field climbs to the limit, before any close of its own can
//! be counted here (`Word::add_pending`). So a stale entry is never taken for a live close,
//! and stale entries are bounded by the leaked ones.
//!
//! Today an entry holds the reversible closes beyond what the word's pending field counts
//! (`word::PENDING_SPILL`). The table is a fixed array of shards, each a mutex over a short
//! list; a shard lock is taken only on cold paths (a drainable with that many reversible closes
//! live at once), never by a guard.

use crate::platform::{self, Mutex, MutexGuard};

/// What the table keeps for one drainable.
#[derive(Debug, Default)]
pub(crate) struct Side {
    /// Reversible closes counted here rather than in the word.
    pub(crate) spilled_closes: u64,
}

impl Side {
    fn is_empty(&self) -> bool {
        self.spilled_closes == 0
    }
}

type Entries = Vec<(usize, Side)>;

/// 64 shards; one under loom: the model has one drainable per scenario, and fewer locks to
/// model.
const SHARDS: usize = if platform::LOOM { 1 } else { 64 };

fn shard(addr: usize) -> &'static Mutex<Entries> {
    platform::process_wide! {
        fn table() -> &'static [Mutex<Entries>; SHARDS] = [Mutex::new(Vec::new()); SHARDS];
    }
    &table()[index(addr)]
}

/// The shard of an address: a multiplicative hash of the address above its alignment bits.
fn index(addr: usize) -> usize {
    // Fibonacci hashing; the top bits of the product are the well-mixed ones.
    let product = (addr as u64 >> 2).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (product >> 32) as usize % SHARDS
}

/// The locked shard of one drainable, with access to its entry. Removes the entry when it is
/// dropped empty.
pub(crate) struct Locked {
    entries: MutexGuard<'static, Entries>,
    addr: usize,
}

/// Locks the shard of the drainable whose word is at `addr`.
pub(crate) fn lock(addr: usize) -> Locked {
    Locked {
        // Nothing under a shard lock can panic halfway through a change (plain arithmetic
        // on an entry), so a poisoned lock holds consistent data.
        entries: shard(addr).lock(),
        addr,
    }
}

impl Locked {
    /// The entry, if there is one.
    pub(crate) fn get(&mut self) -> Option<&mut Side> {
        let addr = self.addr;
        self.entries
            .iter_mut()
            .find(|(a, _)| *a == addr)
            .map(|(_, side)| side)
    }

    /// Removes the entry, if there is one.
    pub(crate) fn clear(&mut self) {
        let addr = self.addr;
        self.entries.retain(|(a, _)| *a != addr);
    }

    /// The entry, made empty if there was none.
    pub(crate) fn entry(&mut self) -> &mut Side {
        let addr = self.addr;
        let i = match self.entries.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                self.entries.push((addr, Side::default()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[i].1
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let addr = self.addr;
        self.entries
            .retain(|(a, side)| *a != addr || !side.is_empty());
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;

    #[test]
    fn entries_come_and_go() {
        let key = 0x1000;
        assert!(lock(key).get().is_none());
        lock(key).entry().spilled_closes += 2;
        assert_eq!(lock(key).get().map(|s| s.spilled_closes), Some(2));
        lock(key).entry().spilled_closes -= 2;
        let mut l = lock(key);
        assert!(l.get().is_none(), "an empty entry is removed");
        assert!(!l.entries.iter().any(|(a, _)| *a == key));
    }

    #[test]
    fn shards_spread_neighbouring_addresses() {
        let used: std::collections::HashSet<_> = (0..64usize).map(|i| index(i * 64)).collect();
        assert!(used.len() > 16, "only {} shards used", used.len());
    }
}
