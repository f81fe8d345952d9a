//! The one place that names the platform: atomics, fences, the futex wait and wake, and the
//! spin hint. Under `--cfg drainable_loom` every item is swapped for a loom model, so the
//! rest of the crate is written once and model-checked as it is.
//!
//! Nothing outside this module names `std::sync::atomic`, `loom`, `libc` or `atomic-wait`.

#[cfg(not(drainable_loom))]
pub(crate) use std::sync::{
    atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};

#[cfg(drainable_loom)]
pub(crate) use loom::sync::{
    atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    Mutex, MutexGuard,
};

/// Only the real builds use it: under Miri and loom the acquirer side runs a full fence.
#[cfg(not(any(miri, drainable_loom)))]
pub(crate) use std::sync::atomic::compiler_fence;

/// Under loom, the registry's slots are loom's checked cells: loom then reports a write to a
/// slot's value (registering, removing) that is not ordered with a caller's read of it.
#[cfg(drainable_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// `std`'s `UnsafeCell` behind loom's closure API, so that code written for loom's checked
/// cell runs unchanged in real builds.
#[cfg(not(drainable_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(drainable_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a pointer to read the value through.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a pointer to write the value through.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// A process-wide unique, non-zero number (a registry's identity).
///
/// A `std` atomic even under loom: the number only has to differ from every other one, it
/// takes part in no protocol that loom should explore, and a `static` cannot hold a loom
/// atomic. A `u64` incremented once per registry never wraps.
pub(crate) fn unique_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    // Relaxed: only uniqueness matters, which the RMW gives.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How many times a waiter re-reads the word before it goes to sleep. A guard is usually held
/// for nanoseconds, so a short spin often saves the two system calls of a sleep and a wake.
/// Under loom the spin is pointless (every read is an explored interleaving), and under Miri
/// it only slows the interpreter down.
#[cfg(not(any(drainable_loom, miri)))]
pub(crate) const SPIN_LIMIT: u32 = 100;
#[cfg(any(drainable_loom, miri))]
pub(crate) const SPIN_LIMIT: u32 = 0;

/// A hint that this thread is spinning on a word another thread will change.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(drainable_loom))]
    std::hint::spin_loop();
    #[cfg(drainable_loom)]
    loom::thread::yield_now();
}

/// Declares a `const fn` that loses its `const` under loom, whose atomics have no `const`
/// constructor. Real builds keep `Drainable::new` usable in a `static`.
macro_rules! const_fn {
    ($(#[$attr:meta])* $vis:vis const fn $($rest:tt)*) => {
        #[cfg(not(drainable_loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(drainable_loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn;

pub(crate) use futex::{wait, wait_until, wake_all};

/// Unit tests count the futex wakes their own thread makes: a wake on a path that should not
/// make one is a system call per operation, invisible to every functional test.
#[cfg(all(test, not(drainable_loom)))]
pub(crate) mod wakes {
    use std::cell::Cell;

    thread_local! {
        static WAKES: Cell<u64> = const { Cell::new(0) };
    }

    pub(super) fn count() {
        let _ = WAKES.try_with(|w| w.set(w.get() + 1));
    }

    /// Futex wakes this thread has made so far.
    pub(crate) fn made() -> u64 {
        WAKES.with(Cell::get)
    }
}

/// Futex waits on the real platforms.
#[cfg(not(drainable_loom))]
mod futex {
    use super::AtomicU32;
    use std::time::Instant;

    /// Sleeps while `*word == expected`, until a [`wake_all`] on the same address. May return
    /// spuriously: callers re-check their condition.
    #[inline]
    pub(crate) fn wait(word: &AtomicU32, expected: u32) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        linux::futex_wait(word, expected, None);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        atomic_wait::wait(word, expected);
    }

    /// Wakes every thread sleeping in [`wait`] or [`wait_until`] on `word`.
    ///
    /// Takes a raw pointer on purpose: the releaser that completes a drain calls this after its
    /// decrement, when the drainer may already have freed the word. A futex wake only uses the
    /// address as a key and never dereferences it, so a dangling pointer is fine.
    #[inline]
    pub(crate) fn wake_all(word: *const AtomicU32) {
        #[cfg(test)]
        super::wakes::count();
        #[cfg(any(target_os = "linux", target_os = "android"))]
        linux::futex_wake_all(word);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            atomic_wait::wake_all(word);
            super::parking::unpark_all(word);
        }
    }

    /// Like [`wait`], but gives up at `deadline`. Returns `true` when the deadline has passed.
    pub(crate) fn wait_until(word: &AtomicU32, expected: u32, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        timed_wait(word, expected, deadline - now);
        Instant::now() >= deadline
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn timed_wait(word: &AtomicU32, expected: u32, timeout: std::time::Duration) {
        linux::futex_wait(word, expected, Some(timeout));
    }

    /// The futex calls, made directly on Linux and Android. `atomic-wait` 1.1 (used on the other
    /// platforms) passes `&AtomicU32` where the kernel ABI says `u32 *`; current Miri checks
    /// variadic argument types and rejects that, so here the exact types are passed.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    mod linux {
        use super::AtomicU32;
        use std::time::Duration;

        pub(super) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
            // A relative timeout; values past the range of `time_t` are clamped (years away).
            let ts = timeout.map(|t| libc::timespec {
                tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: t.subsec_nanos().into(),
            });
            let ts_ptr = ts
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: FUTEX_WAIT reads the u32 behind `word` (kept alive by the reference for
            // the call) and the timespec (on this frame, or null for no timeout). Every error
            // (EAGAIN: the value changed, EINTR, ETIMEDOUT) returns to the caller's re-check.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    expected,
                    ts_ptr,
                );
            }
        }

        pub(super) fn futex_wake_all(word: *const AtomicU32) {
            // SAFETY: FUTEX_WAKE uses the address only as a key and never dereferences it, so
            // a dangling `word` (the drainer may have freed it) is fine; the cast keeps the
            // address. `AtomicU32` has the layout of `u32`.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word as *mut u32,
                    libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                    i32::MAX,
                );
            }
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn timed_wait(word: &AtomicU32, expected: u32, timeout: std::time::Duration) {
        super::parking::park_timeout(word, expected, timeout);
    }
}

/// A portable timed wait for platforms where `atomic-wait` has no timeout (its issue #4: macOS
/// has no public timed futex). Waiters register in a process-wide table under a lock; the
/// waker takes the same lock after its decrement, so a waiter either sees the new value or is
/// in the table when the waker looks. Only the cold paths (a timed drain, the final wake) use it.
#[cfg(not(drainable_loom))]
#[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
mod parking {
    use super::{AtomicU32, Ordering};
    use std::sync::Mutex;
    use std::thread::{self, Thread};
    use std::time::Duration;

    static PARKED: Mutex<Vec<(usize, Thread)>> = Mutex::new(Vec::new());

    fn table() -> std::sync::MutexGuard<'static, Vec<(usize, Thread)>> {
        // A panic while holding this lock cannot leave the table inconsistent (push/retain).
        PARKED.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn park_timeout(word: &AtomicU32, expected: u32, timeout: Duration) {
        let key = word as *const AtomicU32 as usize;
        {
            let mut t = table();
            // Relaxed: the table lock orders this load after any waker's decrement.
            if word.load(Ordering::Relaxed) != expected {
                return;
            }
            t.push((key, thread::current()));
        }
        thread::park_timeout(timeout);
        let me = thread::current().id();
        table().retain(|(k, th)| !(*k == key && th.id() == me));
    }

    pub(crate) fn unpark_all(word: *const AtomicU32) {
        let key = word as usize;
        let t = table();
        for (_, th) in t.iter().filter(|(k, _)| *k == key) {
            th.unpark();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::sync::Arc;
        use std::time::Instant;

        #[test]
        fn times_out_when_nobody_wakes() {
            let w = AtomicU32::new(7);
            let start = Instant::now();
            park_timeout(&w, 7, Duration::from_millis(5));
            assert!(start.elapsed() >= Duration::from_millis(5) || cfg!(miri));
        }

        #[test]
        fn returns_at_once_when_the_value_differs() {
            let w = AtomicU32::new(1);
            park_timeout(&w, 2, Duration::from_secs(3600));
        }

        #[test]
        fn unpark_wakes_a_parked_waiter() {
            let w = Arc::new(AtomicU32::new(0));
            let w2 = Arc::clone(&w);
            let t = thread::spawn(move || {
                while w2.load(Ordering::Acquire) == 0 {
                    park_timeout(&w2, 0, Duration::from_secs(3600));
                }
            });
            w.store(1, Ordering::Release);
            unpark_all(&*w);
            t.join().unwrap();
        }
    }
}

/// loom has no futex. A waiter sleeps on one model-wide condition variable after checking the
/// word under its mutex; a waker takes the mutex after its decrement and notifies everyone.
/// That keeps the futex's no-lost-wake-up property, so a missing wake is a loom deadlock.
#[cfg(drainable_loom)]
mod futex {
    use super::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};
    use std::time::Instant;

    loom::lazy_static! {
        static ref LOCK: Mutex<()> = Mutex::new(());
        static ref COND: Condvar = Condvar::new();
    }

    pub(crate) fn wait(word: &AtomicU32, expected: u32) {
        let guard = LOCK.lock().unwrap();
        // Relaxed: the mutex orders this load after any waker's decrement.
        if word.load(Ordering::Relaxed) == expected {
            drop(COND.wait(guard).unwrap());
        }
    }

    pub(crate) fn wake_all(_word: *const AtomicU32) {
        let _guard = LOCK.lock().unwrap();
        COND.notify_all();
    }

    /// loom has no time: a timed wait is modelled as "the deadline passed at once".
    pub(crate) fn wait_until(_word: &AtomicU32, _expected: u32, _deadline: Instant) -> bool {
        true
    }
}
