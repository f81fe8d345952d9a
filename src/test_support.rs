//! Helpers shared by the unit tests of several modules (`cfg(test)` only). Tests live with
//! their code or in `tests.rs`; nothing here is a test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::Scope;

/// Iteration counts shrink under Miri, which interprets every instruction.
pub(crate) const fn iters(native: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { native }
}

/// Spawns a thread that takes a guard (or a read section, or a read) with `take`, and returns
/// once it holds it. The thread drops it when the returned sender is used or dropped.
pub(crate) fn hold_on_thread<'s, G>(
    s: &'s Scope<'s, '_>,
    take: impl FnOnce() -> G + Send + 's,
) -> mpsc::Sender<()> {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    s.spawn(move || {
        let held = take();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(held);
    });
    held_rx.recv().unwrap();
    release_tx
}

/// A value that counts its drops in the counter it points to, for the tests that check a
/// value is dropped exactly once.
pub(crate) struct Counted<'a>(pub(crate) &'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        // Relaxed: the tests read the count on the dropping thread.
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
