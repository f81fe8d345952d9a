//! The process-wide arena of per-CPU cells that the folding slot sets (`slots.rs`) take their
//! slots from: 8 bytes per slot instead of a padded line per slot per instance (Linux's
//! per-CPU allocator packs 8-byte cells of many objects into per-CPU units the same way).
//!
//! # Layout
//!
//! The arena has one *unit* per slot index (`units()`: the CPU count, read once per process,
//! rounded up to a power of two, at most `MAX_SLOTS`). Memory comes in chunks: a chunk is
//! `units` blocks of `COLUMNS` 8-byte cells, each block on its own 128-byte line, block `u`
//! holding unit `u`'s cells. A *column* is one cell index in every block of a chunk: the slots
//! of one slot set. Its slot `u` is `u` blocks further (`Column::slot`).
//!
//! So a CPU writes only its own unit's line, whichever instances it counts for (cells of
//! different instances share a line only within one unit: the false sharing Linux accepts
//! too), and the slots of one instance never share a line.
//!
//! # Lifetime
//!
//! Chunks are never freed (like the thread records). A column is handed out by `take` and given
//! back by `give_back` when its slot set is dropped; a later `take` may hand it out again, and
//! its new owner stores its initial values before publishing it. That reuse is sound because
//! every access to a column happens before its owner's drop: a holder's slot decrement comes
//! before the drop that frees the owner (the guard's borrow or `Arc`, or the fold's token that
//! the drain waits for, `slots.rs`), and nothing touches a slot after its decrement (the
//! release-path rule, docs/design.md §4). A leaked count (a forgotten guard) is overwritten
//! by the next owner's initial store.
//!
//! # Orderings
//! `take` and `give_back` run under the arena's lock, which orders one owner's accesses
//! (before its drop, before `give_back`) before the next owner's initial stores.

use crate::platform::{self, AtomicU64, AtomicUsize, Mutex, Ordering};

/// Cells per block: one 128-byte line. Two under the models, so that they fill a chunk and
/// reuse columns after a few slot sets.
const COLUMNS: usize = if platform::MODEL { 2 } else { 16 };

/// The cells of one unit in one chunk, on a line of their own.
#[repr(align(128))]
// Read only through `Column`'s pointers.
#[allow(dead_code)]
struct Block([AtomicU64; COLUMNS]);

/// Slot 0 of a slot set; slot `u` is `u` blocks further.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Column(*const AtomicU64);

// SAFETY: a column is an address in a chunk that is never freed; the cells are atomics.
unsafe impl Send for Column {}

impl Column {
    /// Slot `unit` of this column.
    ///
    /// # Safety
    /// `this` came from `take` and `unit < units()`.
    #[inline]
    pub(crate) unsafe fn slot(this: *const AtomicU64, unit: usize) -> *const AtomicU64 {
        // SAFETY: the chunk has `units()` blocks, `this` is a cell of block 0, and its
        // provenance is the whole chunk's (`take`).
        unsafe { this.byte_add(unit * std::mem::size_of::<Block>()) }
    }

    /// The column whose slot 0 is at `p` (from [`as_ptr`](Self::as_ptr)).
    pub(crate) fn from_ptr(p: *const AtomicU64) -> Self {
        Column(p)
    }

    pub(crate) fn as_ptr(self) -> *const AtomicU64 {
        self.0
    }

    /// The column's slots.
    pub(crate) fn slots(self) -> impl Iterator<Item = &'static AtomicU64> {
        // SAFETY: `self` came from `take`, every index is below `units()`, and chunks are
        // never freed.
        (0..units()).map(move |u| unsafe { &*Column::slot(self.0, u) })
    }
}

/// Slot indices per set: the arena's units. Two under the models (so that tests exercise
/// counts given back on another slot); else the CPU count read once per process
/// (`platform::cpu::spread`, which `DRAINABLE_SLOTS` overrides), to a power of two, at most
/// `MAX_SLOTS`.
pub(crate) fn configured_units() -> usize {
    if platform::MODEL {
        return 2;
    }
    platform::cpu::spread()
        .clamp(1, super::slots::MAX_SLOTS)
        .next_power_of_two()
}

/// [`configured_units`], as the first `take` fixed it: one load. Only for a caller that holds a
/// column (whose `take` happens-before its use, so this reads the value stored then).
#[inline]
pub(crate) fn units() -> usize {
    if platform::MODEL {
        return 2;
    }
    // Relaxed: stored once, before the first column was handed out (see above).
    units_word().load(Ordering::Relaxed)
}

platform::process_wide! {
    /// [`units`], 0 until the first chunk.
    fn units_word() -> &'static AtomicUsize = AtomicUsize::new(0);
}

/// Bytes of arena one column holds.
pub(crate) fn column_bytes() -> usize {
    units() * std::mem::size_of::<AtomicU64>()
}

struct Free {
    /// Columns given back.
    given_back: Vec<Column>,
    /// The newest chunk's block 0, and how many of its columns were handed out.
    chunk: Column,
    used: usize,
}

platform::process_wide! {
    /// The free columns. Under loom, one per explored execution (its chunks leaked).
    fn free() -> &'static Mutex<Free> = Mutex::new(Free {
        given_back: Vec::new(),
        chunk: Column(std::ptr::null()),
        used: COLUMNS,
    });
}

/// A column for a new slot set; its cells hold whatever its last owner left, for the caller to
/// overwrite before publishing it.
#[cold]
#[inline(never)]
pub(crate) fn take() -> Column {
    let mut free = free().lock();
    if let Some(column) = free.given_back.pop() {
        return column;
    }
    if free.used == COLUMNS {
        let units = configured_units();
        if !platform::MODEL {
            // Relaxed: read by holders of a column, after this `take` (see `units`).
            units_word().store(units, Ordering::Relaxed);
        }
        let chunk: Box<[Block]> = (0..units)
            .map(|_| Block(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        // Never freed: a column's address stays valid for the rest of the process.
        let chunk: &'static [Block] = Box::leak(chunk);
        free.chunk = Column(chunk.as_ptr().cast::<AtomicU64>());
        free.used = 0;
    }
    // SAFETY: `used < COLUMNS`: a cell of block 0 of the newest chunk.
    let column = Column(unsafe { free.chunk.0.add(free.used) });
    free.used += 1;
    column
}

/// Gives a column back, once nothing can touch its cells any more (its slot set is dropped).
pub(crate) fn give_back(column: Column) {
    free().lock().given_back.push(column);
}
