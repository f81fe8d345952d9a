//! The drainable contract's loom scenarios (`scenarios/mod.rs`) for the single-word
//! `Drainable`.

use drainable::{Drainable, OwnedGuard};

/// Readers racing the drains of scenario (10): two, so that back-outs of two threads land
/// between the drains' reads of the one word.
const BACKING_OUT_READERS: usize = 2;

/// Whether scenario (12) closes again after its reopen while the other drain may still be
/// asleep: yes for the single word.
const RECLOSE_WHILE_DRAINING: bool = true;

mod scenarios;
