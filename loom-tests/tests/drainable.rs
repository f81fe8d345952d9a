//! The drainable contract's loom scenarios (`scenarios/mod.rs`) for the single-word
//! `Drainable`.

use drainable::{Drainable, OwnedGuard};

mod scenarios;
