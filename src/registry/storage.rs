//! The registry's slots: a segmented vector that grows by whole chunks and never moves or
//! frees one before it is dropped, so that callers walk it with no lock and no grace period:
//! there is never memory they could still be reading that someone frees.
//!
//! # API
//!
//! - [`Storage::new`]: empty, allocates nothing (a `const fn` outside loom). Its [`Tail`]
//!   ([`Tail::new`]) is kept by the owner, apart, so that the owner's one lock covers both
//!   the tail and its own bookkeeping (the registry's free list).
//! - [`Storage::fresh`]: hands out the next never-used index, allocating its chunk first if
//!   the last one is full. Taking the `Tail` by `&mut` is what serialises appends.
//! - [`Storage::get`]: the slot at an index handed out.
//! - [`Storage::chunks`]: the published chunks, as slices, up to the indices handed out.
//! - `Drop`: frees every chunk, dropping every slot in it.
//!
//! # Invariants
//!
//! - Chunk `k` holds [`chunk_len`]`(k) = BASE << k` slots; index `i` is at [`locate`]`(i)`.
//! - A chunk pointer is null until its chunk is allocated, then written once (`Release`) and
//!   freed only by `Drop` (`&mut self`): a reference to a slot lives as long as the storage.
//! - Every slot of an allocated chunk is initialised (by `fill`, when the chunk is allocated),
//!   those past the high-water mark too.
//! - The high-water mark `high` (the indices handed out) only grows, and every chunk below it
//!   is published before it is raised (`Release`): a caller that loads it with `Acquire` may
//!   read every slot below it.
//! - Only `fresh` changes the [`Tail`]: its slots handed out are `high`, its chunks the ones
//!   allocated.

use crate::platform::{AtomicPtr, AtomicUsize, Ordering};
use std::marker::PhantomData;
use std::ptr;

/// log2 of the number of slots in chunk 0. Under loom the chunks start at one slot, so that a
/// model grows the list (and publishes a chunk) with its second registration.
const BASE_SHIFT: u32 = if crate::platform::LOOM { 0 } else { 3 };
/// Slots in chunk 0; chunk `k` holds `BASE << k`.
const BASE: usize = 1 << BASE_SHIFT;
/// Chunks a registry can have: 32 (about 34 billion slots) on 64-bit targets, fewer where the
/// slot index would overflow `usize` (the allocation fails long before), and 4 under loom.
const MAX_CHUNKS: usize = {
    let fits = (usize::BITS - BASE_SHIFT - 1) as usize;
    let want = if crate::platform::LOOM { 4 } else { 32 };
    if fits < want { fits } else { want }
};

/// Slots in chunk `k`.
const fn chunk_len(k: usize) -> usize {
    BASE << k
}

/// Slots in the first `chunks` chunks.
pub(super) const fn capacity(chunks: usize) -> usize {
    (BASE << chunks) - BASE
}

/// The chunk and the position in it of slot `index`. Chunk `k` holds the indices from
/// `capacity(k)` up to `capacity(k + 1)`, i.e. `index + BASE` in `[BASE << k, BASE << (k + 1))`.
const fn locate(index: usize) -> (usize, usize) {
    let n = index + BASE;
    let k = (usize::BITS - 1 - n.leading_zeros() - BASE_SHIFT) as usize;
    (k, n - chunk_len(k))
}

/// The slots of a registry, in chunks: see the module docs.
pub(super) struct Storage<E> {
    /// Chunk `k` (`chunk_len(k)` slots), or null until it is allocated. Written once, by
    /// `fresh` (under the owner's lock: it holds the `&mut Tail`), and freed only by `Drop`.
    chunks: [AtomicPtr<E>; MAX_CHUNKS],
    /// The slots ever handed out (`Tail::next`), published for callers: they walk no
    /// further. Every chunk below it is published before it is raised.
    high: AtomicUsize,
    /// Takes away the automatic `Send` and `Sync` (the atomics have them whatever `E` is), so
    /// that the impls below decide. Changes no other auto trait: `()` has them all.
    _not_auto: PhantomData<*const ()>,
}

// SAFETY: the storage owns its slots (its chunks are its own heap memory, freed by its `Drop`),
// so sending it sends them.
unsafe impl<E: Send> Send for Storage<E> {}

// SAFETY: a `&Storage` gives out only `&E` (on any thread: `E: Sync`); appending writes atomics
// and slots no reference can reach yet, and freeing needs `&mut self`. Appending through `&self`
// builds an `E` on the caller's thread that the owner later drops on its own: `E: Send`.
unsafe impl<E: Send + Sync> Sync for Storage<E> {}

/// The appending side of a [`Storage`]: the slots handed out and the chunks allocated. Only
/// [`Storage::fresh`] changes it; whoever holds it by `&mut` may append (the registry keeps it
/// under its lock).
pub(super) struct Tail {
    /// Slots ever handed out; the next new slot's index.
    next: usize,
    /// Chunks allocated.
    chunks: usize,
}

impl Tail {
    /// The tail of a new, empty [`Storage`].
    pub(super) const fn new() -> Self {
        Tail { next: 0, chunks: 0 }
    }

    /// Slots ever handed out.
    pub(super) fn handed_out(&self) -> usize {
        self.next
    }

    /// Chunks allocated.
    pub(super) fn chunks(&self) -> usize {
        self.chunks
    }
}

impl<E> Storage<E> {
    crate::platform::const_fn! {
        /// An empty storage; allocates nothing. Its tail is [`Tail::new`].
        pub(super) const fn new() -> Self {
            Storage {
                chunks: crate::platform::null_ptrs(),
                high: AtomicUsize::new(0),
                _not_auto: PhantomData,
            }
        }
    }

    /// A never-used slot: the next one past the high-water mark, allocating a chunk (each of
    /// its slots made by `fill`) if the last one is full. `tail` is this storage's.
    ///
    /// # Panics
    ///
    /// If every chunk is allocated and full (about 34 billion slots on 64-bit targets).
    pub(super) fn fresh(&self, tail: &mut Tail, fill: impl FnMut() -> E) -> usize {
        if tail.handed_out() == capacity(tail.chunks()) {
            self.grow(tail, fill);
        }
        let index = tail.next;
        tail.next += 1;
        // Release: callers that read this bound with `Acquire` also see every chunk below it
        // published (chunk → caller).
        self.high.store(tail.next, Ordering::Release);
        index
    }

    #[cold]
    fn grow(&self, tail: &mut Tail, mut fill: impl FnMut() -> E) {
        let k = tail.chunks;
        assert!(
            k < MAX_CHUNKS,
            "drainable: Registry full ({} slots)",
            capacity(MAX_CHUNKS)
        );
        let slots: Box<[E]> = (0..chunk_len(k)).map(|_| fill()).collect();
        let chunk = Box::into_raw(slots) as *mut E;
        // Release: the slots' construction happens-before any caller's use of them
        // (chunk → caller; callers load with `Acquire`).
        self.chunks[k].store(chunk, Ordering::Release);
        tail.chunks = k + 1;
    }

    /// The slot at `index`, which must have been handed out (it is below the high-water mark
    /// the caller synchronised with).
    pub(super) fn get(&self, index: usize) -> &E {
        let (k, offset) = locate(index);
        // Acquire: chunk → caller, as in `chunks()`.
        let chunk = self.chunks[k].load(Ordering::Acquire);
        assert!(
            !chunk.is_null(),
            "drainable: Registry slot {index} not allocated"
        );
        // SAFETY: a non-null chunk pointer came from `grow`: a boxed slice of `chunk_len(k)`
        // initialised slots (`offset` is below it by `locate`), published with the `Release`
        // this load synchronises with, and freed only by `Drop`, which needs `&mut self`.
        unsafe { &*chunk.add(offset) }
    }

    /// The published chunks, as slices, up to the high-water mark.
    pub(super) fn chunks(&self) -> Chunks<'_, E> {
        Chunks {
            storage: self,
            next: 0,
            // Acquire: pairs with the `Release` in `fresh`: every chunk below the bound is
            // published.
            remaining: self.high.load(Ordering::Acquire),
        }
    }
}

impl<E> Drop for Storage<E> {
    fn drop(&mut self) {
        // Owned boxes first, so that if a slot's `drop` panics, unwinding still frees the
        // other chunks (a slice's drop goes on past a panicking element).
        let chunks: Vec<Box<[E]>> = (0..MAX_CHUNKS)
            .map_while(|k| {
                // Relaxed: `&mut self` excludes every other access.
                let chunk = self.chunks[k].load(Ordering::Relaxed);
                (!chunk.is_null()).then(|| {
                    // SAFETY: `chunk` came from `Box::into_raw` of a slice of `chunk_len(k)`
                    // slots in `grow`, is rebuilt only here, once, and nothing can borrow the
                    // slots any more (`&mut self`; guards borrow the registry).
                    unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(chunk, chunk_len(k))) }
                })
            })
            .collect();
        drop(chunks); // drops each slot, hence each value still registered
    }
}

/// The published chunks, as slices, up to a high-water mark read once.
pub(super) struct Chunks<'a, E> {
    storage: &'a Storage<E>,
    next: usize,
    /// Slots below the high-water mark not yet yielded.
    remaining: usize,
}

impl<E> Chunks<'_, E> {
    /// Slots below the high-water mark not yet yielded.
    pub(super) fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<'a, E> Iterator for Chunks<'a, E> {
    type Item = &'a [E];

    #[inline]
    fn next(&mut self) -> Option<&'a [E]> {
        if self.remaining == 0 {
            return None;
        }
        let k = self.next;
        let len = chunk_len(k).min(self.remaining);
        // Acquire: pairs with the `Release` that published the chunk (chunk → caller). The
        // high-water mark already implies it; this keeps the read correct on its own.
        let chunk = self.storage.chunks[k].load(Ordering::Acquire);
        // One branch per chunk and pass, to keep the slice below sound even if the
        // high-water mark were wrong.
        assert!(
            !chunk.is_null(),
            "drainable: Registry chunk {k} not published"
        );
        self.next = k + 1;
        self.remaining -= len;
        // SAFETY: every chunk below the high-water mark (read with `Acquire` in
        // `Storage::chunks`) is published, holds `chunk_len(k) >= len` initialised slots, and
        // lives as long as the storage, which `'a` borrows.
        Some(unsafe { std::slice::from_raw_parts(chunk, len) })
    }
}

#[cfg(all(test, not(drainable_loom)))]
mod tests {
    use super::*;

    #[test]
    fn locate_matches_chunk_layout() {
        let mut index = 0;
        for k in 0..6 {
            assert_eq!(capacity(k), index);
            for offset in 0..chunk_len(k) {
                assert_eq!(locate(index), (k, offset), "index {index}");
                index += 1;
            }
        }
        let last = capacity(MAX_CHUNKS) - 1;
        assert_eq!(
            locate(last),
            (MAX_CHUNKS - 1, chunk_len(MAX_CHUNKS - 1) - 1)
        );
    }
}
