//! [`EntryId`]: a copyable name of one registered entry, for [`Registry::get`].
//!
//! An id is `(registry number, slot index, generation)`. The generation lives in the slot's
//! cell beside the value (`Entry` in `mod.rs`) and follows the value's protocol: `register`
//! bumps it while the slot is drained, before the `Release` of its `reopen`; readers read it
//! only under a guard, whose acquisition is `Acquire`. So a guard sees the generation of the
//! occupant it holds, and that generation cannot change while the guard lives (changing it
//! needs a drained slot). Slots are reused last in, first out; the generation is what tells a
//! later occupant of a slot from the removed one.

#[cfg(doc)]
use super::{EntryGuard, Registration, Registry};

/// The name of one registered entry: `Copy`, `Eq` and `Hash`, so it can be stored, sent and
/// used as a map key freely, unlike the [`Registration`] that removes the entry.
///
/// [`Registry::get`] finds the entry by it in O(1) while it is registered, and never finds
/// anything else: the id of a removed entry does not name the later occupant of its slot
/// (each occupant of a slot has a generation of its own), nor an entry of another registry.
/// From [`Registration::id`] and [`EntryGuard::id`] (so also from [`Registry::iter`]).
///
/// Two ids are equal when they name the same entry. Its `Debug` shows the three parts; their
/// values are not part of the API.
///
/// ```
/// use drainable::Registry;
/// use std::collections::HashMap;
///
/// let r = Registry::new();
/// let h = r.register("eth0");
/// let id = h.id();
/// let mut stats = HashMap::new();
/// stats.insert(id, 0u64);
/// *stats.get_mut(&r.get(id).unwrap().id()).unwrap() += 1;
/// assert_eq!(stats[&id], 1);
///
/// r.unregister(h);
/// let h2 = r.register("eth1"); // reuses the slot
/// assert!(r.get(id).is_none()); // the old id does not find the new occupant
/// assert_eq!(*r.get(h2.id()).unwrap(), "eth1");
/// # r.unregister(h2);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EntryId {
    /// The issuing registry's number (`Registry::id`, never 0).
    pub(super) registry: u64,
    /// The entry's slot.
    pub(super) index: usize,
    /// Which occupant of the slot: bumped by every registration into it, from 1. A `u64`
    /// bumped once per registration never wraps.
    pub(super) generation: u64,
}
