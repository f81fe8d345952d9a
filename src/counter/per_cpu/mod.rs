//! The per-CPU counter's two places to count guards: the thread-local records and the folding
//! slots.

pub(crate) mod records;
pub(crate) mod slots;
