//! Helpers shared by the unit tests of several modules (`cfg(test)` only). Tests live with
//! their code or in `tests.rs`; nothing here is a test.

/// Iteration counts shrink under Miri, which interprets every instruction.
pub(crate) const fn iters(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}
