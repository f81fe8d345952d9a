//! [`DrainableWith<T, C>`] ([`Drainable<T>`], [`PerCpuDrainable<T>`]): a value that readers
//! borrow through lock-free guards and that a writer can close and wait out ("drain") before it
//! unregisters, unloads or frees it.
//!
//! The lifecycle lives in one `u32` (see `lifecycle/word.rs` and `docs/design.md`), which is
//! also the futex a drain sleeps on until the last guard's drop wakes it. Where guards are
//! counted is the [`Counter`]'s business: in that word for [`Shared`]; for [`PerCpu`], in the
//! taking thread's own entries (plain stores, `membarrier` on the drain side) or in per-CPU
//! slots. Each step below is one call into the counter, which owns its sequence.

use crate::counter::sealed::CounterImpl;
use crate::counter::{Close, Counter, Outstanding, PerCpu, Shared};
use crate::lifecycle::{self, Hold, Open, Phase, Refused, Word, track};
use crate::platform::{Ordering, Pending, Task, TaskWaiter};
use std::error::Error;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A `T` that readers use through guards and that can be *drained*: closed to new guards, then
/// waited on until every existing guard is dropped.
///
/// This is the answer to "when may I unregister this callback, unload this plugin, free this
/// data?": after [`drain`](Self::drain) returns, no guard exists and none can be taken, every
/// access made under a guard happened before the return, and the drainable's memory is no
/// longer touched by any thread, so it may be dropped or freed at once.
///
/// # Lifecycle
///
/// | phase | `try_acquire` | entered by | left by |
/// |---|---|---|---|
/// | Open | succeeds | [`new`](Self::new), [`reopen`](Self::reopen), last [`undo`](PendingDrain::undo) | any drain |
/// | Pending | fails | [`prepare_drain`](Self::prepare_drain), a [`drain_timeout`](Self::drain_timeout) in flight | `undo`, `commit` |
/// | Closing | fails | [`drain`](Self::drain) while guards remain | the last guard's drop |
/// | Drained | fails | the drain that saw zero guards | [`reopen`](Self::reopen) |
///
/// # Costs and guarantees
///
/// - [`try_acquire`](Self::try_acquire) and dropping a [`Guard`]: lock-free.
///   [`Drainable`]: a relaxed load and a `fetch_add` on the shared word, then a `fetch_sub`, no CAS
///   loop; all readers share that cache line, so under heavy multi-core use it bounces.
///   [`PerCpuDrainable`], on Linux with `membarrier`: loads of the thread's record, the word and a
///   free entry, a plain store into that entry and one more load of the word; dropping is a plain
///   store and a load: no read-modify-write at all; elsewhere, and for [`OwnedGuard`]s, a CAS on
///   the current CPU's slot (retried only if a thread on the same CPU changed it in between) and a
///   `fetch_sub` on that slot. Readers on different CPUs never write the same line.
/// - [`drain`](Self::drain): blocking and starvation-free. Once closed it waits only for the
///   guards taken before the close, however busy the acquirers are: a failed acquisition does
///   not write to the word once the close is visible to it.
/// - `size_of::<Drainable<()>>() == 4` (16 in builds with `debug_assertions`, which keep a
///   key for the deadlock detector), and its `Guard` is one pointer. A `PerCpuDrainable` takes 64
///   bytes (`PerCpuDrainable<()>`, release builds) plus 128 per slot, plus 128 bytes per thread for
///   the whole process (see [`PerCpu`]); its `Guard` adds where the guard is counted (two words).
///
/// # Leaked guards
///
/// A guard passed to [`std::mem::forget`] is never released, and [`drain`](Self::drain) then
/// waits forever. [`drain_timeout`](Self::drain_timeout) and
/// [`PendingDrain::commit_timeout`] report it as outstanding.
///
/// # Example: unregister, then free
///
/// ```
/// use drainable::Drainable;
/// use std::sync::Arc;
/// use std::thread;
///
/// // A "registered callback" with data it needs.
/// let hook = Arc::new(Drainable::new(vec![1, 2, 3]));
///
/// let callers: Vec<_> = (0..4)
///     .map(|_| {
///         let hook = Arc::clone(&hook);
///         thread::spawn(move || {
///             let mut calls = 0;
///             // Callers stop finding the hook once it is being unregistered.
///             while let Some(data) = hook.try_acquire() {
///                 assert_eq!(data.len(), 3);
///                 calls += 1;
///             }
///             calls
///         })
///     })
///     .collect();
///
/// hook.drain(); // unregister: no call is in flight after this returns
/// assert!(hook.is_drained());
/// for c in callers {
///     c.join().unwrap();
/// }
/// let data = Arc::try_unwrap(hook).ok().unwrap().into_inner(); // free the data
/// assert_eq!(data, [1, 2, 3]);
/// ```
///
/// # Example: closing several at once costs the longest wait, not the sum
///
/// Prepare every drain first, so that all of them are closed at once, then commit each. While
/// the first commit waits, the others' guards are already finishing.
///
/// ```
/// use drainable::Drainable;
///
/// let modules = [Drainable::new("netfilter"), Drainable::new("sched"), Drainable::new("tc")];
///
/// let pending: Vec<_> = modules.iter().map(|m| m.prepare_drain()).collect();
/// assert!(modules.iter().all(|m| !m.is_open())); // all closed before any wait
/// for p in pending {
///     p.commit();
/// }
/// assert!(modules.iter().all(Drainable::is_drained));
/// ```
pub struct DrainableWith<T: ?Sized, C: Counter = Shared> {
    pub(crate) state: Word,
    counter: C,
    /// The debug-build deadlock detector's key (zero-sized in release builds).
    key: track::Key,
    /// Dropped with the drainable unless [`drain_and_take`](DrainableWith::drain_and_take)
    /// moved it out (the word's `TAKEN` bit; see `Drop`).
    value: ManuallyDrop<T>,
}

/// A drainable whose guards are counted in its one lifecycle word: see [`DrainableWith`] for
/// every method. 4 bytes plus `T`, `const`-constructible, cheapest on one thread.
///
/// ```
/// use drainable::Drainable;
/// static HOOK: Drainable<fn() -> u8> = Drainable::new(|| 7);
/// assert_eq!(HOOK.try_acquire().map(|f| f()), Some(7));
/// ```
pub type Drainable<T> = DrainableWith<T, Shared>;

/// A drainable whose guards are counted per thread and per CPU, so readers on different cores
/// never write the same cache line and one reader pays no locked instruction: see [`DrainableWith`] for every method, and [`PerCpu`] for the
/// algorithm and the memory it takes. Same contract as [`Drainable`]; switch with one line.
///
/// ```
/// use drainable::PerCpuDrainable;
/// use std::sync::Arc;
///
/// let hook = Arc::new(PerCpuDrainable::new(String::from("fast path")));
/// let t = {
///     let hook = Arc::clone(&hook);
///     std::thread::spawn(move || while let Some(s) = hook.try_acquire() { assert_eq!(s.len(), 9) })
/// };
/// hook.drain();
/// t.join().unwrap();
/// ```
pub type PerCpuDrainable<T> = DrainableWith<T, PerCpu>;

/// The error of [`Drainable::drain_timeout`]: the deadline passed with guards still
/// outstanding, and the drain was abandoned.
///
/// # Example
///
/// ```
/// use drainable::Drainable;
/// use std::time::Duration;
///
/// let d = Drainable::new(());
/// let g = d.try_acquire().unwrap();
/// let err = d.drain_timeout(Duration::from_millis(1)).unwrap_err();
/// assert_eq!(err.outstanding(), 1);
/// assert!(d.is_open()); // reopened: "unload or fail"
/// drop(g);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimeoutError {
    outstanding: usize,
}

impl DrainTimeoutError {
    /// The error for `outstanding` guards at the deadline (the registry builds its own).
    pub(crate) fn new(outstanding: usize) -> Self {
        DrainTimeoutError { outstanding }
    }

    /// How many guards were still outstanding when the deadline passed.
    ///
    /// ```
    /// # use drainable::Drainable;
    /// # use std::time::Duration;
    /// let d = Drainable::new(());
    /// let (a, b) = (d.try_acquire().unwrap(), d.try_acquire().unwrap());
    /// assert_eq!(d.drain_timeout(Duration::ZERO).unwrap_err().outstanding(), 2);
    /// # drop((a, b));
    /// ```
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
}

impl fmt::Display for DrainTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drain timed out with {} guard(s) still outstanding",
            self.outstanding
        )
    }
}

impl Error for DrainTimeoutError {}

impl<T> DrainableWith<T, Shared> {
    crate::platform::const_fn! {
        /// Creates an open drainable owning `value`. A `const fn`, so it works in a `static`.
        ///
        /// ```
        /// use drainable::Drainable;
        ///
        /// static CONFIG: Drainable<&str> = Drainable::new("v1");
        /// assert_eq!(*CONFIG.try_acquire().unwrap(), "v1");
        /// ```
        pub const fn new(value: T) -> Self {
            DrainableWith {
                state: Word::new(),
                counter: Shared,
                key: track::Key::new(),
                value: ManuallyDrop::new(value),
            }
        }
    }
}

impl<T> DrainableWith<T, PerCpu> {
    /// Creates an open per-CPU drainable owning `value`. Allocates the slots (see [`PerCpu`]).
    ///
    /// ```
    /// let d = drainable::PerCpuDrainable::new(5);
    /// assert_eq!(*d.try_acquire().unwrap(), 5);
    /// ```
    pub fn new(value: T) -> Self {
        DrainableWith {
            state: Word::new(),
            counter: PerCpu::new_counter(),
            key: track::Key::new(),
            value: ManuallyDrop::new(value),
        }
    }
}

impl<T, C: Counter> DrainableWith<T, C> {
    /// A drainable that starts drained, as if `drain()` had run (for the registry's free
    /// slots: no system call, no pass over the counters).
    pub(crate) fn new_drained(value: T) -> Self {
        DrainableWith {
            state: Word::new_drained(),
            counter: C::new_drained_counter(),
            key: track::Key::new(),
            value: ManuallyDrop::new(value),
        }
    }

    /// Consumes the drainable and returns the value. No guard can exist: guards borrow the
    /// drainable, and owned guards keep its `Arc` alive.
    ///
    /// ```
    /// let d = drainable::Drainable::new(String::from("data"));
    /// assert_eq!(d.into_inner(), "data");
    /// ```
    ///
    /// # Panics
    ///
    /// If the value was taken by [`drain_and_take`](Self::drain_and_take) (this is another
    /// owner's `Arc` of that drainable): there is no value left.
    #[track_caller]
    pub fn into_inner(self) -> T {
        if self.state.is_taken() {
            taken("into_inner");
        }
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the value is moved out once, here (not taken:
        // checked above); the counter and the key are dropped in place below, once.
        unsafe {
            let value = ManuallyDrop::take(&mut this.value);
            ptr::drop_in_place(&mut this.counter);
            ptr::drop_in_place(&mut this.key);
            value
        }
    }

    /// Drains, then moves the value out of the `Arc`: the way to get the `T` of a drainable
    /// shared by `Arc` back once its users are gone. Unlike "`drain()`, then `Arc::try_unwrap`",
    /// it never fails because an [`OwnedGuard`] dropped on another thread has given its count
    /// back (letting the drain return) but not yet dropped its `Arc` clone, nor because other
    /// `Arc`s exist: the drain is what proves no one can read the value, not the strong count.
    ///
    /// The drainable stays behind, drained, for the other `Arc` owners: closed for good
    /// ([`try_acquire`](Self::try_acquire) returns `None`, [`reopen`](Self::reopen) refuses),
    /// without a value ([`get_mut`](Self::get_mut) and [`into_inner`](Self::into_inner) panic
    /// on it, its `Drop` drops no value). Owned guards are unaffected: their drop releases, then
    /// drops their `Arc`, as always, and costs nothing more.
    ///
    /// Blocking, as [`drain`](Self::drain), then one read-modify-write of the word.
    ///
    /// # Errors
    ///
    /// Gives the `Arc` back if the value was taken already (another owner's `drain_and_take`
    /// won the race): the only failure, and not a spurious one. If another owner reopens the
    /// drainable between this call's drain and its take, it drains again.
    ///
    /// # Panics
    ///
    /// As [`drain`](Self::drain).
    ///
    /// ```
    /// use drainable::Drainable;
    /// use std::sync::Arc;
    /// use std::thread;
    ///
    /// let d = Arc::new(Drainable::new(vec![1, 2, 3]));
    /// let guards: Vec<_> = (0..4).map(|_| d.try_acquire_owned().unwrap()).collect();
    /// let other = Arc::clone(&d); // another owner, say a metrics task
    /// let t = thread::spawn(move || drop(guards)); // released (and their Arcs dropped) there
    /// let data = Arc::clone(&d).drain_and_take().unwrap(); // waits for the guards, never fails for them
    /// assert_eq!(data, [1, 2, 3]);
    /// t.join().unwrap();
    /// assert!(other.try_acquire().is_none() && !other.reopen()); // drained for good
    /// assert!(other.drain_and_take().is_err()); // taken already
    /// ```
    pub fn drain_and_take(self: Arc<Self>) -> Result<T, Arc<Self>> {
        loop {
            self.drain();
            if self.state.take() {
                break;
            }
            if self.state.is_taken() {
                return Err(self);
            }
            // Another owner reopened it after our drain (or our drain returned because an
            // earlier close ended): drain again.
        }
        // SAFETY: the drain returned, so no guard exists and none can be taken again (the
        // word stays closed: `TAKEN` makes `reopen` refuse), and every access made under a
        // guard happened before; the `take` RMW made this call the one owner of the value,
        // which nothing reads without a guard (`Debug` takes one; `get_mut` and `into_inner`
        // need the only `Arc` and check `TAKEN`; `Drop` checks it too). So the value is moved
        // out exactly once, here, and never touched again.
        Ok(unsafe { ptr::read(&*self.value) })
    }
}

impl<T: ?Sized, C: Counter> DrainableWith<T, C> {
    /// Takes a guard, or returns `None` once a drain has begun (after
    /// [`drain`](Self::drain), [`prepare_drain`](Self::prepare_drain) or
    /// [`drain_timeout`](Self::drain_timeout) closed it, until it is reopened).
    ///
    /// Lock-free: for [`Drainable`] one relaxed load and one `fetch_add`, no CAS loop; for
    /// [`PerCpuDrainable`] a few loads and a plain store into this thread's entry (or, without
    /// `membarrier` or past four guards held at once, one uncontended CAS on the current
    /// CPU's slot). A successful
    /// acquisition *acquires* what opened it, so everything done before the
    /// [`reopen`](Self::reopen) or [`undo`](PendingDrain::undo) that opened it is visible
    /// through the guard.
    ///
    /// # Panics
    ///
    /// For a [`Drainable`], if about 16 million guards of it are outstanding at once (the count
    /// never wraps). A [`PerCpuDrainable`] counts in 63 bits per slot and does not reach a limit
    /// in practice.
    ///
    /// ```
    /// use drainable::Drainable;
    ///
    /// let d = Drainable::new(5);
    /// let g = d.try_acquire().expect("open");
    /// assert_eq!(*g + 1, 6);
    /// drop(g);
    /// d.drain();
    /// assert!(d.try_acquire().is_none());
    /// ```
    #[inline]
    #[must_use = "a guard that is not kept is released at once"]
    pub fn try_acquire(&self) -> Option<Guard<'_, T, C>> {
        match self.counter.try_acquire(&self.state) {
            Ok(ticket) => {
                track::acquired(self.key.get());
                Some(Guard {
                    drainable: NonNull::from(self),
                    ticket,
                    _borrow: PhantomData,
                })
            }
            Err(Refused::Closed) => None,
            Err(Refused::Overflow) => overflow(),
        }
    }

    /// Takes a guard that owns an `Arc` of the drainable, so it is `'static` and can move to
    /// another thread or task. Returns `None` once a drain has begun.
    ///
    /// Costs what [`try_acquire`](Self::try_acquire) costs plus an `Arc` clone.
    ///
    /// # Panics
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// ```
    /// use drainable::Drainable;
    /// use std::sync::Arc;
    ///
    /// let d = Arc::new(Drainable::new(String::from("plugin")));
    /// let g = d.try_acquire_owned().unwrap();
    /// let t = std::thread::spawn(move || g.len());
    /// assert_eq!(t.join().unwrap(), 6);
    /// d.drain();
    /// ```
    #[inline]
    #[must_use = "a guard that is not kept is released at once"]
    pub fn try_acquire_owned(self: &Arc<Self>) -> Option<OwnedGuard<T, C>> {
        match self.counter.try_acquire_owned(&self.state) {
            Ok(ticket) => Some(OwnedGuard {
                drainable: ManuallyDrop::new(Arc::clone(self)),
                ticket,
            }),
            Err(Refused::Closed) => None,
            Err(Refused::Overflow) => overflow(),
        }
    }

    /// Closes the drainable to new guards, then blocks until every guard is dropped.
    ///
    /// After it returns: no guard exists and none can be taken until [`reopen`](Self::reopen);
    /// every access made under a guard *happened before* the return; no thread touches the
    /// drainable's memory any more, so it may be dropped or freed at once, even while the last
    /// guard's owner is still returning from its `Drop`.
    ///
    /// Irreversible (only `reopen` opens it again) and idempotent: on a drained drainable it
    /// returns at once. Concurrent callers all return once it is drained. A concurrent
    /// [`PendingDrain::undo`] does not reopen it.
    ///
    /// Blocking: spins briefly, then sleeps on the counter word as a futex, to be woken by the
    /// drop that releases the last guard. Starvation-free: it waits only for guards taken
    /// before the close, and returns without touching the drainable if that close has ended
    /// meanwhile (another drain saw it drained and it was reopened): it never finishes,
    /// commits or marks drained a later close. One exception, for [`Drainable`], whose one
    /// word cannot number its closes: if by the time this drain looks the drainable was
    /// drained, reopened *and drained again*, it also waits for the guards of that later
    /// drain. [`PerCpuDrainable`] numbers its closes and has no such exception.
    ///
    /// # Panics
    ///
    /// In builds with `debug_assertions`, if the calling thread holds a [`Guard`] of this
    /// drainable (it would wait forever for itself). Owned guards are not tracked.
    ///
    /// For a [`PerCpuDrainable`], if `membarrier` was refused after start-up and the signal
    /// barrier that replaces it cannot be set up either (see [`PerCpu`]): then no drain can be
    /// proven complete, and the drainable stays closed.
    ///
    /// ```
    /// use drainable::Drainable;
    /// use std::sync::Arc;
    /// use std::thread;
    ///
    /// let d = Arc::new(Drainable::new(0u64));
    /// let g = d.try_acquire_owned().unwrap();
    /// let t = thread::spawn(move || drop(g)); // released on another thread, a little later
    /// d.drain(); // returns after that drop
    /// assert!(d.is_drained());
    /// t.join().unwrap();
    /// ```
    pub fn drain(&self) {
        track::assert_not_held(self.key.get(), "Drainable::drain");
        let close = self.counter.close(&self.state, Hold::Committed);
        let drained = self.wait(Hold::Committed, close, None);
        debug_assert!(drained.is_ok());
    }

    /// "Unload or fail", as `delete_module` does: closes, waits up to `timeout` for every guard
    /// to be dropped, and on timeout reopens and reports how many guards were outstanding.
    ///
    /// On success the drainable is drained, exactly as after [`drain`](Self::drain). On
    /// timeout it is reopened, unless another thread holds it closed meanwhile (a
    /// [`drain`](Self::drain), or a [`PendingDrain`]), in which case it stays closed for them.
    ///
    /// # Errors
    ///
    /// [`DrainTimeoutError`] with the number of guards still outstanding at the deadline. A
    /// leaked guard (see the type's docs) always ends here.
    ///
    /// ```
    /// use drainable::Drainable;
    /// use std::time::Duration;
    ///
    /// let d = Drainable::new(());
    /// assert!(d.drain_timeout(Duration::from_secs(1)).is_ok());
    /// assert!(d.is_drained());
    /// ```
    pub fn drain_timeout(&self, timeout: Duration) -> Result<(), DrainTimeoutError> {
        let pending = self.prepare_drain();
        let deadline = Instant::now().checked_add(timeout);
        match self.wait(Hold::Pending, pending.close, deadline) {
            Ok(()) => {
                // The wait gave the pending close back when it committed.
                std::mem::forget(pending);
                Ok(())
            }
            Err(Outstanding(outstanding)) => {
                pending.undo();
                Err(DrainTimeoutError { outstanding })
            }
        }
    }

    /// The `prepare_deregister` of the 2003 proposal (see the crate docs): closes to new guards at
    /// once, reversibly, without waiting. The returned [`PendingDrain`] then either
    /// [`commit`](PendingDrain::commit)s (wait for the guards), or [`undo`](PendingDrain::undo)es
    /// (reopen); dropping it undoes.
    ///
    /// Never waits for guards: a CAS loop on the control bits, contended only by other
    /// control operations (a [`PerCpuDrainable`] also takes its short control lock to fold
    /// its slots). Any number of `PendingDrain`s may be live at once (the word counts
    /// 15; more are counted in a process-wide side table, under a short lock): the drainable
    /// reopens only when the last one is undone and no irreversible drain is under way.
    ///
    /// ```
    /// use drainable::Drainable;
    ///
    /// let d = Drainable::new("device");
    /// let pending = d.prepare_drain();
    /// assert!(d.try_acquire().is_none()); // closed at once
    /// pending.undo(); // the device was needed after all
    /// assert!(d.try_acquire().is_some());
    /// ```
    #[must_use = "dropping a PendingDrain undoes it at once"]
    pub fn prepare_drain(&self) -> PendingDrain<'_, T, C> {
        PendingDrain {
            drainable: self,
            close: self.counter.close(&self.state, Hold::Pending),
        }
    }

    /// Drained → Open, like `percpu_ref_reinit` or `ExReInitializeRundownProtection`. Returns
    /// `true` if it reopened the drainable; in any other phase, or while a [`PendingDrain`] is
    /// still live, it changes nothing and returns `false`.
    ///
    /// Never waits for guards: a CAS on the word for a [`Drainable`]; a
    /// [`PerCpuDrainable`] also takes its short control lock to unfold its slots. A successful
    /// reopen *releases* the word: what the caller did before it is
    /// visible to the guards taken after it.
    ///
    /// ```
    /// use drainable::Drainable;
    ///
    /// let d = Drainable::new(1);
    /// assert!(!d.reopen()); // open, nothing to do
    /// d.drain();
    /// assert!(d.reopen());
    /// assert!(d.try_acquire().is_some());
    /// ```
    #[must_use = "`false` means nothing was reopened (not drained, or a PendingDrain is live)"]
    pub fn reopen(&self) -> bool {
        self.counter.open(&self.state, Open::Reopen)
    }

    /// Whether guards can currently be taken. A snapshot: another thread may change it.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// assert!(d.is_open());
    /// let p = d.prepare_drain();
    /// assert!(!d.is_open());
    /// # drop(p);
    /// ```
    pub fn is_open(&self) -> bool {
        !lifecycle::is_closed(self.state.load(Ordering::Relaxed))
    }

    /// Whether a drain has completed: no guard exists and none can be taken until
    /// [`reopen`](Self::reopen). A snapshot, but a `true` stays true until someone reopens.
    ///
    /// An `Acquire` load: after it returns `true`, every access made under a guard
    /// happened before.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// assert!(!d.is_drained());
    /// d.drain();
    /// assert!(d.is_drained());
    /// ```
    pub fn is_drained(&self) -> bool {
        // Acquire: release → drainer, for callers that act on a `true`.
        lifecycle::phase(self.state.load(Ordering::Acquire)) == Phase::Drained
    }

    /// Mutable access to the value; `&mut self` proves no guard exists.
    ///
    /// ```
    /// let mut d = drainable::Drainable::new(1);
    /// *d.get_mut() += 1;
    /// assert_eq!(*d.try_acquire().unwrap(), 2);
    /// ```
    ///
    /// # Panics
    ///
    /// If the value was taken by [`drain_and_take`](Self::drain_and_take).
    #[track_caller]
    pub fn get_mut(&mut self) -> &mut T {
        if self.state.is_taken() {
            taken("get_mut");
        }
        &mut self.value
    }

    /// Bytes this drainable allocated outside itself: 0 for a [`Drainable`], the slots for a
    /// [`PerCpuDrainable`]. The whole footprint is `size_of_val(&d) + d.heap_bytes()`.
    ///
    /// ```
    /// use drainable::{Drainable, PerCpuDrainable};
    /// assert_eq!(Drainable::new(()).heap_bytes(), 0);
    /// assert!(PerCpuDrainable::new(()).heap_bytes() >= 128);
    /// ```
    pub fn heap_bytes(&self) -> usize {
        self.counter.heap_bytes()
    }

    fn outstanding(&self) -> usize {
        self.counter.outstanding(self.state.load(Ordering::Relaxed))
    }

    /// Waits until the close held by `hold` (`close`) has drained, or has ended since for a
    /// committed hold (see [`CounterImpl::wait`]). On timeout returns the guards outstanding;
    /// the hold stays in place.
    fn wait(&self, hold: Hold, close: Close, deadline: Option<Instant>) -> Result<(), Outstanding> {
        self.counter.wait(&self.state, hold, close, deadline)
    }

    /// Removes one pending close; reopens (and unfolds the counters) if it was the last close.
    fn undo_pending(&self) -> bool {
        self.counter.open(&self.state, Open::Undo)
    }
}

/// The value goes with the drainable, unless `drain_and_take` moved it out.
impl<T: ?Sized, C: Counter> Drop for DrainableWith<T, C> {
    fn drop(&mut self) {
        if !self.state.is_taken() {
            // SAFETY: not taken, so the value is still here; `&mut self` in `drop`: nobody
            // else can reach it, and it is dropped once.
            unsafe { ManuallyDrop::drop(&mut self.value) };
        }
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn taken(op: &str) -> ! {
    panic!(
        "drainable: {op} on a drainable whose value was taken by drain_and_take (this is \
         another owner's Arc of it: the drainable is drained for good and holds no value)"
    );
}

#[cold]
#[inline(never)]
#[track_caller]
fn overflow() -> ! {
    panic!(
        "drainable: more than {} guards outstanding on one Drainable",
        lifecycle::MAX_GUARDS
    )
}

impl<T: Default, C: Counter> Default for DrainableWith<T, C> {
    /// An open drainable holding `T::default()`.
    ///
    /// ```
    /// let d: drainable::Drainable<Vec<u8>> = Default::default();
    /// assert!(d.try_acquire().unwrap().is_empty());
    /// ```
    fn default() -> Self {
        DrainableWith {
            state: Word::new(),
            counter: C::new_counter(),
            key: track::Key::new(),
            value: ManuallyDrop::new(T::default()),
        }
    }
}

impl<T, C: Counter> From<T> for DrainableWith<T, C> {
    /// An open drainable holding `value`.
    ///
    /// ```
    /// let d = drainable::Drainable::from(7);
    /// assert_eq!(*d.try_acquire().unwrap(), 7);
    /// ```
    fn from(value: T) -> Self {
        DrainableWith {
            state: Word::new(),
            counter: C::new_counter(),
            key: track::Key::new(),
            value: ManuallyDrop::new(value),
        }
    }
}

impl<T: ?Sized + fmt::Debug, C: Counter> fmt::Debug for DrainableWith<T, C> {
    /// Shows the phase, the outstanding guard count and, while the drainable is open, the
    /// value (read under a guard, as a reader would; a closed drainable shows `..`).
    ///
    /// ```
    /// let d = drainable::Drainable::new(3);
    /// let _g = d.try_acquire();
    /// assert_eq!(
    ///     format!("{d:?}"),
    ///     "Drainable { state: Open, outstanding: 1, value: 3 }"
    /// );
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = self.state.load(Ordering::Relaxed);
        let mut s = f.debug_struct(C::NAME);
        s.field("state", &lifecycle::phase(word))
            .field("outstanding", &self.counter.outstanding(word));
        // The value is read under a guard, like any reader's: a closed drainable's value may
        // be on its way out (`drain_and_take`).
        match self.counter.try_acquire_owned(&self.state) {
            Ok(ticket) => {
                s.field("value", &&*self.value);
                // SAFETY: the count was taken just above, released once, here; `&self` keeps
                // the drainable alive across the call.
                unsafe { C::release(&self.counter, &self.state, ticket) };
                s.finish()
            }
            Err(_) => s.finish_non_exhaustive(),
        }
    }
}

/// A borrowed read guard of a [`Drainable`]: derefs to `T`; dropping it releases it, and the
/// drop of the last guard completes a waiting drain.
///
/// `!Send` (like `MutexGuard`): it is released on the thread that took it, which is what lets
/// debug builds detect a thread draining what it holds. Use [`OwnedGuard`] to move one. `Sync`
/// when `T: Sync`.
///
/// ```
/// use drainable::Drainable;
///
/// let d = Drainable::new(String::from("hello"));
/// let g = d.try_acquire().unwrap();
/// assert_eq!(g.len(), 5); // Deref to String
/// drop(g); // release
/// d.drain();
/// ```
///
/// A guard cannot be sent to another thread:
///
/// ```compile_fail
/// let d = drainable::Drainable::new(0);
/// let g = d.try_acquire().unwrap();
/// std::thread::scope(|s| { s.spawn(move || drop(g)); });
/// ```
#[must_use = "a guard that is not kept is released at once"]
pub struct Guard<'a, T: ?Sized, C: Counter = Shared> {
    // A pointer, not a reference: the drop must not hold a reference to the drainable across
    // the decrement that may let a drainer free it (see `Word::release`).
    drainable: NonNull<DrainableWith<T, C>>,
    ticket: C::Ticket,
    _borrow: PhantomData<&'a DrainableWith<T, C>>,
}

// SAFETY: sharing `&Guard` only gives out `&T`, which is fine across threads when `T: Sync`.
unsafe impl<T: ?Sized + Sync, C: Counter> Sync for Guard<'_, T, C> {}

impl<T: ?Sized, C: Counter> Deref for Guard<'_, T, C> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the pointer came from a `&'a Drainable<T>` and the guard's count keeps the
        // drainable from completing a drain, so it is alive and unmoved for the guard's life.
        unsafe { &(*self.drainable.as_ptr()).value }
    }
}

impl<T: ?Sized, C: Counter> Drop for Guard<'_, T, C> {
    #[inline]
    fn drop(&mut self) {
        let ptr = self.drainable.as_ptr();
        // SAFETY: `ptr` is live (this guard's count keeps it from draining); only the key is
        // read, before the release below.
        track::released(unsafe { (*ptr::addr_of!((*ptr).key)).get() });
        // SAFETY: `ptr` is live (this guard's count keeps it from draining); `addr_of!` reaches
        // the fields without making a reference to the drainable.
        let (word, counter) =
            unsafe { (ptr::addr_of!((*ptr).state), ptr::addr_of!((*ptr).counter)) };
        // SAFETY: this guard owns the count named by its ticket, given back exactly once, here.
        unsafe { C::release(counter, word, self.ticket) };
    }
}

impl<T: ?Sized + fmt::Debug, C: Counter> fmt::Debug for Guard<'_, T, C> {
    /// Formats the guarded value.
    ///
    /// ```
    /// let d = drainable::Drainable::new(3);
    /// assert_eq!(format!("{:?}", d.try_acquire().unwrap()), "3");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// An owned read guard of an `Arc<Drainable<T>>`: `'static`, `Send` and `Sync` when `T` is
/// `Send + Sync`, so it can move to another thread or async task. Derefs to `T`; dropping it
/// releases it.
///
/// Not tracked by the debug-build deadlock detector (it can move between threads unseen).
///
/// Dropping one releases it, then drops its `Arc` clone; so right after a drain,
/// `Arc::try_unwrap` can still see that clone for an instant.
/// [`drain_and_take`](DrainableWith::drain_and_take) takes the value regardless.
///
/// ```
/// use drainable::Drainable;
/// use std::sync::Arc;
///
/// let d = Arc::new(Drainable::new(vec![1, 2]));
/// let guards: Vec<_> = (0..3).map(|_| d.try_acquire_owned().unwrap()).collect();
/// let sum: i32 = std::thread::spawn(move || guards.iter().map(|g| g[1]).sum())
///     .join()
///     .unwrap();
/// assert_eq!(sum, 6);
/// d.drain();
/// ```
#[must_use = "a guard that is not kept is released at once"]
pub struct OwnedGuard<T: ?Sized, C: Counter = Shared> {
    /// Dropped by hand in `Drop`, after the release.
    drainable: ManuallyDrop<Arc<DrainableWith<T, C>>>,
    ticket: C::Ticket,
}

impl<T: ?Sized, C: Counter> OwnedGuard<T, C> {
    /// The drainable this guard belongs to. An associated function (`OwnedGuard::drainable(&g)`)
    /// so it does not shadow a method of `T`.
    ///
    /// ```
    /// use drainable::{Drainable, OwnedGuard};
    /// use std::sync::Arc;
    ///
    /// let d = Arc::new(Drainable::new(()));
    /// let g = d.try_acquire_owned().unwrap();
    /// assert!(Arc::ptr_eq(OwnedGuard::drainable(&g), &d));
    /// ```
    pub fn drainable(this: &Self) -> &Arc<DrainableWith<T, C>> {
        &this.drainable
    }
}

impl<T: ?Sized, C: Counter> Deref for OwnedGuard<T, C> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.drainable.value
    }
}

impl<T: ?Sized, C: Counter> Drop for OwnedGuard<T, C> {
    #[inline]
    fn drop(&mut self) {
        let ptr = Arc::as_ptr(&self.drainable);
        // SAFETY: the `Arc` keeps the drainable alive until after the release.
        let (word, counter) =
            unsafe { (ptr::addr_of!((*ptr).state), ptr::addr_of!((*ptr).counter)) };
        // SAFETY: this guard owns the count named by its ticket, given back exactly once, here.
        unsafe { C::release(counter, word, self.ticket) };
        // SAFETY: taken once, here, and the field is never used again (this is its drop).
        drop(unsafe { ManuallyDrop::take(&mut self.drainable) });
    }
}

impl<T: ?Sized + fmt::Debug, C: Counter> fmt::Debug for OwnedGuard<T, C> {
    /// Formats the guarded value.
    ///
    /// ```
    /// let d = std::sync::Arc::new(drainable::Drainable::new("x"));
    /// assert_eq!(format!("{:?}", d.try_acquire_owned().unwrap()), "\"x\"");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A reversible drain in progress, from [`Drainable::prepare_drain`]: the drainable is closed
/// to new guards; [`commit`](Self::commit) waits for the existing ones, [`undo`](Self::undo)
/// reopens. Dropping it uncommitted undoes it.
///
/// This is the 2003 proposal's `prepare_deregister` / `commit_deregister` / `undo_deregister`,
/// for callers that must not sleep at the moment they decide to remove something.
///
/// ```
/// use drainable::Drainable;
///
/// let a = Drainable::new(1);
/// let b = Drainable::new(2);
/// let pa = a.prepare_drain();
/// let pb = b.prepare_drain(); // both closed before any wait
/// pa.commit();
/// pb.commit();
/// assert!(a.is_drained() && b.is_drained());
/// ```
#[must_use = "dropping a PendingDrain undoes it at once"]
pub struct PendingDrain<'a, T: ?Sized, C: Counter = Shared> {
    drainable: &'a DrainableWith<T, C>,
    /// The counter's name for the close this holds (it cannot change while this lives).
    close: Close,
}

impl<'a, T: ?Sized, C: Counter> PendingDrain<'a, T, C> {
    /// Waits until every guard is dropped; the drain becomes irreversible. Afterwards the
    /// drainable is drained, exactly as after [`Drainable::drain`].
    ///
    /// # Panics
    ///
    /// In builds with `debug_assertions`, if the calling thread holds a [`Guard`] of this
    /// drainable.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// d.prepare_drain().commit();
    /// assert!(d.is_drained());
    /// ```
    pub fn commit(self) {
        track::assert_not_held(self.drainable.key.get(), "PendingDrain::commit");
        let this = std::mem::ManuallyDrop::new(self);
        let drained = this.drainable.wait(Hold::Pending, this.close, None);
        debug_assert!(drained.is_ok());
    }

    /// Waits up to `timeout` for every guard to be dropped. On success the drain is committed,
    /// as with [`commit`](Self::commit).
    ///
    /// # Errors
    ///
    /// On timeout, a [`CommitTimeoutError`], which still holds the close: the drainable stays
    /// closed while it lives. [`into_pending`](CommitTimeoutError::into_pending) gives the
    /// `PendingDrain` back to wait again or [`undo`](Self::undo); `?` into a
    /// `Box<dyn Error>` drops it, which undoes the close ("unload or fail"), and leaves a
    /// [`DrainTimeoutError`] with the count of guards outstanding at the deadline.
    ///
    /// ```
    /// use drainable::Drainable;
    /// use std::time::Duration;
    ///
    /// let d = Drainable::new(());
    /// let g = d.try_acquire().unwrap();
    /// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(err.outstanding(), 1);
    /// assert!(!d.is_open()); // still closed: the error holds the close
    /// drop(g);
    /// err.into_pending().commit_timeout(Duration::from_secs(10)).unwrap();
    /// assert!(d.is_drained());
    /// ```
    ///
    /// With `?`, a timeout undoes the close and becomes a `'static` error:
    ///
    /// ```
    /// use drainable::{DrainTimeoutError, Drainable};
    /// use std::error::Error;
    /// use std::time::Duration;
    ///
    /// fn unload(d: &Drainable<()>) -> Result<(), Box<dyn Error + Send + Sync>> {
    ///     d.prepare_drain().commit_timeout(Duration::from_millis(1))?;
    ///     Ok(())
    /// }
    ///
    /// let d = Drainable::new(());
    /// let g = d.try_acquire().unwrap();
    /// let err = unload(&d).unwrap_err();
    /// assert_eq!(err.downcast_ref::<DrainTimeoutError>().unwrap().outstanding(), 1);
    /// assert!(d.is_open()); // undone: "unload or fail"
    /// drop(g);
    /// assert!(unload(&d).is_ok());
    /// ```
    pub fn commit_timeout(self, timeout: Duration) -> Result<(), CommitTimeoutError<'a, T, C>> {
        let deadline = Instant::now().checked_add(timeout);
        match self.drainable.wait(Hold::Pending, self.close, deadline) {
            Ok(()) => {
                std::mem::forget(self);
                Ok(())
            }
            Err(Outstanding(outstanding)) => Err(CommitTimeoutError {
                pending: self,
                outstanding,
            }),
        }
    }

    /// Reopens the drainable, unless another [`PendingDrain`] or an irreversible drain still
    /// holds it closed. Returns `true` if this reopened it.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// let p = d.prepare_drain();
    /// assert!(p.undo());
    /// assert!(d.is_open());
    /// ```
    pub fn undo(self) -> bool {
        let this = std::mem::ManuallyDrop::new(self);
        this.drainable.undo_pending()
    }

    /// Guards still outstanding (a snapshot).
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// let g = d.try_acquire();
    /// let p = d.prepare_drain();
    /// assert_eq!(p.outstanding(), 1);
    /// # drop((g, p));
    /// ```
    pub fn outstanding(&self) -> usize {
        self.drainable.outstanding()
    }

    /// The drainable being drained.
    ///
    /// ```
    /// let d = drainable::Drainable::new(9);
    /// let p = d.prepare_drain();
    /// assert!(std::ptr::eq(p.drainable(), &d));
    /// ```
    pub fn drainable(&self) -> &'a DrainableWith<T, C> {
        self.drainable
    }
}

impl<T: ?Sized, C: Counter> Drop for PendingDrain<'_, T, C> {
    fn drop(&mut self) {
        self.drainable.undo_pending();
    }
}

/// The task side of a commit, for the futures in `awaiting/`.
impl<T: ?Sized, C: Counter> PendingDrain<'_, T, C> {
    /// One poll of [`commit`](Self::commit): `Ready` once the drain is committed (the pending
    /// close traded in: the caller then forgets `self`), else the task's waker is filed and
    /// `Pending`. `waiter` and `state` are the future's, kept across polls.
    pub(crate) fn poll_commit(
        &self,
        waiter: &mut TaskWaiter,
        state: &mut C::WaitState,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let d = self.drainable;
        let mut park = Task { waiter, cx };
        match d
            .counter
            .wait_with(&d.state, Hold::Pending, self.close, None, &mut park, state)
        {
            Ok(Ok(())) => Poll::Ready(()),
            // Only a deadline ends a wait with an error, and a task's wait has none.
            Ok(Err(_)) => unreachable!("a wait without a deadline timed out"),
            Err(Pending) => Poll::Pending,
        }
    }

    /// A task that polled [`poll_commit`](Self::poll_commit) into `Pending` gives up (its
    /// future is dropped): takes `WAITING` down, as a timed-out wait does (the other waiters
    /// set it again). The pending close is then undone by dropping `self`.
    pub(crate) fn stop_waiting(&self) {
        self.drainable.state.stop_waiting();
    }
}

impl<T: ?Sized, C: Counter> fmt::Debug for PendingDrain<'_, T, C> {
    /// Shows the outstanding guard count.
    ///
    /// ```
    /// let d = drainable::Drainable::new(());
    /// let p = d.prepare_drain();
    /// assert_eq!(format!("{p:?}"), "PendingDrain { outstanding: 0 }");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingDrain")
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

/// The error of [`PendingDrain::commit_timeout`]: the deadline passed with guards still
/// outstanding. It holds the [`PendingDrain`], so the drainable stays closed while it lives.
///
/// Two ways out:
///
/// - [`into_pending`](Self::into_pending): the close back, to wait again, commit or undo.
/// - `?` (or `.into()`) into a `Box<dyn Error + Send + Sync>` or a `Box<dyn Error>`: the
///   conversion drops the `PendingDrain`, which **undoes** the close ("unload or fail"; the
///   drainable reopens unless someone else holds it closed), and boxes a [`DrainTimeoutError`]
///   with the count of guards outstanding at the deadline, `'static` and free of the borrow.
///
/// It is not an [`Error`] itself (it borrows the drainable and owns a close); that is what lets
/// it convert into a boxed error with the undo above rather than through `std`'s blanket
/// conversion.
///
/// ```
/// use drainable::Drainable;
/// use std::error::Error;
/// use std::time::Duration;
///
/// let d = Drainable::new(());
/// let g = d.try_acquire().unwrap();
/// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
/// assert_eq!(err.to_string(), "commit of a drain timed out with 1 guard(s) still outstanding");
/// let boxed: Box<dyn Error> = err.into(); // undoes the close
/// assert!(d.is_open());
/// assert_eq!(boxed.to_string(), "drain timed out with 1 guard(s) still outstanding");
/// # drop(g);
/// ```
#[must_use = "dropping a CommitTimeoutError undoes its close at once"]
pub struct CommitTimeoutError<'a, T: ?Sized, C: Counter = Shared> {
    pending: PendingDrain<'a, T, C>,
    outstanding: usize,
}

impl<'a, T: ?Sized, C: Counter> CommitTimeoutError<'a, T, C> {
    /// How many guards were still outstanding at the deadline (a
    /// [`PendingDrain::outstanding`] now may differ).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let d = drainable::Drainable::new(());
    /// let gs = [d.try_acquire(), d.try_acquire()];
    /// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(err.outstanding(), 2);
    /// # drop((gs, err));
    /// ```
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The pending close, still closed, to wait again ([`PendingDrain::commit_timeout`],
    /// [`PendingDrain::commit`]) or [`undo`](PendingDrain::undo).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let d = drainable::Drainable::new(());
    /// let g = d.try_acquire();
    /// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
    /// let pending = err.into_pending();
    /// assert!(!d.is_open());
    /// assert!(pending.undo());
    /// # drop(g);
    /// ```
    pub fn into_pending(self) -> PendingDrain<'a, T, C> {
        self.pending
    }

    /// The `'static` error this becomes: drops (undoes) the close and keeps the count.
    fn undo_into_error(self) -> DrainTimeoutError {
        let outstanding = self.outstanding;
        drop(self.pending); // undoes the close
        DrainTimeoutError { outstanding }
    }
}

impl<T: ?Sized, C: Counter> fmt::Debug for CommitTimeoutError<'_, T, C> {
    /// Shows the guards outstanding at the deadline.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let d = drainable::Drainable::new(());
    /// let g = d.try_acquire();
    /// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
    /// assert_eq!(format!("{err:?}"), "CommitTimeoutError { outstanding: 1 }");
    /// # drop((g, err));
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitTimeoutError")
            .field("outstanding", &self.outstanding)
            .finish()
    }
}

impl<T: ?Sized, C: Counter> fmt::Display for CommitTimeoutError<'_, T, C> {
    /// Says what timed out and how many guards were outstanding.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let d = drainable::Drainable::new(());
    /// let g = d.try_acquire();
    /// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
    /// assert!(err.to_string().contains("1 guard(s)"));
    /// # drop((g, err));
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "commit of a drain timed out with {} guard(s) still outstanding",
            self.outstanding
        )
    }
}

impl<T: ?Sized, C: Counter> From<CommitTimeoutError<'_, T, C>>
    for Box<dyn Error + Send + Sync + 'static>
{
    /// Undoes the close and boxes a [`DrainTimeoutError`]: what `?` does.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let d = drainable::Drainable::new(());
    /// let g = d.try_acquire();
    /// let err = d.prepare_drain().commit_timeout(Duration::ZERO).unwrap_err();
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = err.into();
    /// assert!(boxed.is::<drainable::DrainTimeoutError>());
    /// assert!(d.is_open());
    /// # drop(g);
    /// ```
    fn from(error: CommitTimeoutError<'_, T, C>) -> Self {
        Box::new(error.undo_into_error())
    }
}

impl<T: ?Sized, C: Counter> From<CommitTimeoutError<'_, T, C>> for Box<dyn Error + 'static> {
    /// Undoes the close and boxes a [`DrainTimeoutError`]: what `?` does.
    ///
    /// ```
    /// # use std::time::Duration;
    /// fn unload(d: &drainable::Drainable<()>) -> Result<(), Box<dyn std::error::Error>> {
    ///     Ok(d.prepare_drain().commit_timeout(Duration::ZERO)?)
    /// }
    /// let d = drainable::Drainable::new(());
    /// let g = d.try_acquire();
    /// assert!(unload(&d).unwrap_err().is::<drainable::DrainTimeoutError>());
    /// assert!(d.is_open());
    /// # drop(g);
    /// ```
    fn from(error: CommitTimeoutError<'_, T, C>) -> Self {
        Box::new(error.undo_into_error())
    }
}

/// Access for crate code that keeps a protocol of its own on top of the drainable, so that it
/// needs no `pub(crate)` field.
impl<T: ?Sized, C: Counter> DrainableWith<T, C> {
    /// The value, with no guard taken. For values whose own protocol says who may touch them
    /// when: the registry's slots hold a cell that only the thread owning a drained slot
    /// writes (no guard exists then, and none can be taken until it reopens the slot).
    #[inline]
    pub(crate) fn value_unguarded(&self) -> &T {
        &self.value
    }

    /// Takes a count that may be given back on any thread, as an [`OwnedGuard`]'s, for a
    /// guard type of the crate that keeps the drainable alive by other means (the registry's
    /// owned entry guard holds an `Arc` of its registry). `None` once closed.
    #[inline]
    pub(crate) fn try_acquire_ticket(&self) -> Option<C::Ticket> {
        match self.counter.try_acquire_owned(&self.state) {
            Ok(ticket) => Some(ticket),
            Err(Refused::Closed) => None,
            Err(Refused::Overflow) => overflow(),
        }
    }

    /// Gives back a count from [`try_acquire_ticket`](Self::try_acquire_ticket).
    ///
    /// # Safety
    /// `this` is live, and the caller owns the count `ticket`, given back once, here. After
    /// the call the drainable may be drained (and its value taken) at once.
    #[inline]
    pub(crate) unsafe fn release_ticket(this: *const Self, ticket: C::Ticket) {
        // SAFETY: the caller keeps `this` live; `addr_of!` reaches the fields without a
        // reference across the release.
        let (word, counter) =
            unsafe { (ptr::addr_of!((*this).state), ptr::addr_of!((*this).counter)) };
        // SAFETY: forwarded: the caller owns the count.
        unsafe { C::release(counter, word, ticket) };
    }
}
