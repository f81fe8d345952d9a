//! The harness shared by the model tests in `tests/`: one facade over loom and `std`, so that
//! each scenario is written once and runs two ways.
//!
//! - Under `--cfg drainable_loom` (which also swaps the library's atomics and futex for loom's
//!   models), [`model`] explores every interleaving of the scenario up to a preemption bound,
//!   [`thread`] and [`atomic`] are loom's, and [`Cell`] is a `loom::cell::UnsafeCell`: an access
//!   made under a guard that does not *happen before* the drainer's access after `drain()`
//!   returns is reported by loom as a data race. That is how use-after-drain is detected.
//! - Otherwise [`model`] runs the scenario a few hundred times on real threads (a smoke test,
//!   and a Miri target), and [`Cell`] is a plain unchecked cell.
//!
//! [`Cell`] is the library's own cell shim (`drainable::harness::UnsafeCell`, the one its
//! registry keeps values in), so the two builds cannot disagree on which cell is which.
//!
//! ```text
//! cargo test -p drainable-loom-tests
//! RUSTFLAGS="--cfg drainable_loom" LOOM_MAX_PREEMPTIONS=4 \
//!     cargo test -p drainable-loom-tests --release --target-dir target/loom
//! ```
//!
//! To replay a failure under loom, add `LOOM_LOG=trace LOOM_LOCATION=1` (and
//! `-- --exact <test>` to run only the failing scenario).

#[cfg(drainable_loom)]
pub use loom::sync::atomic;
#[cfg(drainable_loom)]
pub use loom::thread;
#[cfg(not(drainable_loom))]
pub use std::sync::atomic;
#[cfg(not(drainable_loom))]
pub use std::thread;

/// Spawns a thread ([`thread::spawn`]) that takes `value` over, e.g. a guard to release there.
///
/// If the model fails before the thread first runs, loom drops the unstarted closure outside
/// the model, and a guard's release (a loom atomic) would then panic inside that drop and abort
/// the whole test binary, hiding the first failure. So the value travels in a `ManuallyDrop`
/// and is leaked in that case; the thread body takes it out first thing.
pub fn spawn_with<V, R>(value: V, f: impl FnOnce(V) -> R + Send + 'static) -> thread::JoinHandle<R>
where
    V: Send + 'static,
    R: Send + 'static,
{
    let value = std::mem::ManuallyDrop::new(value);
    thread::spawn(move || f(std::mem::ManuallyDrop::into_inner(value)))
}

/// The preemption bound used when `LOOM_MAX_PREEMPTIONS` is not set: 4, the bound CI runs.
/// A real ordering bug of the per-CPU counter passed at 3 and failed at 4; shrink a model
/// that is too slow rather than the bound.
pub const DEFAULT_MAX_PREEMPTIONS: usize = 4;

/// How many times a scenario runs on real threads.
#[cfg(not(drainable_loom))]
pub const ITERATIONS: usize = if cfg!(miri) { 4 } else { 200 };

/// Runs one scenario: exhaustively under loom, repeatedly on real threads otherwise.
///
/// Under loom the preemption bound comes from `LOOM_MAX_PREEMPTIONS` (default
/// [`DEFAULT_MAX_PREEMPTIONS`]); `LOOM_LOG`, `LOOM_LOCATION`, `LOOM_CHECKPOINT_FILE` and the
/// other `LOOM_*` variables work as documented by loom. A failing scenario is named on stderr
/// with the settings to replay it.
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    let scenario = std::thread::current()
        .name()
        .unwrap_or("<unnamed scenario>")
        .to_owned();
    let report = Report::start(scenario);
    run(f);
    report.finish();
}

#[cfg(drainable_loom)]
fn run(f: impl Fn() + Sync + Send + 'static) {
    static DEFAULT_BOUND: std::sync::Once = std::sync::Once::new();
    // `loom::model` (unlike a bare `Builder`) installs the `LOOM_LOG` tracing output, but takes
    // its bound only from the environment: supply the default there, once, before any model
    // starts. std serialises `set_var` with every `std::env::var`, which is how loom reads it.
    DEFAULT_BOUND.call_once(|| {
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            // SAFETY: inside `call_once`, before the first model of this process starts its
            // threads; the other test threads read the environment only through std, which
            // serialises with this write (the hazard is C code reading `environ`; none runs).
            unsafe {
                std::env::set_var("LOOM_MAX_PREEMPTIONS", DEFAULT_MAX_PREEMPTIONS.to_string())
            };
        }
    });
    loom::model(f);
}

#[cfg(not(drainable_loom))]
fn run(f: impl Fn() + Sync + Send + 'static) {
    for _ in 0..ITERATIONS {
        f();
    }
}

/// Names the scenario on stderr when it fails (and its run time when it passes, visible with
/// `--nocapture`).
struct Report {
    scenario: String,
    start: std::time::Instant,
}

impl Report {
    fn start(scenario: String) -> Self {
        Report {
            scenario,
            start: std::time::Instant::now(),
        }
    }

    fn finish(self) {
        eprintln!(
            "scenario `{}` passed in {:.2?} ({})",
            self.scenario,
            self.start.elapsed(),
            mode()
        );
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!(
            "scenario `{}` FAILED after {:.2?} ({}). Under loom, replay it with \
             LOOM_LOG=trace LOOM_LOCATION=1 and `-- --exact {}`.",
            self.scenario,
            self.start.elapsed(),
            mode(),
            self.scenario
        );
    }
}

#[cfg(drainable_loom)]
fn mode() -> String {
    let bound = std::env::var("LOOM_MAX_PREEMPTIONS")
        .unwrap_or_else(|_| DEFAULT_MAX_PREEMPTIONS.to_string());
    format!("loom, LOOM_MAX_PREEMPTIONS={bound}")
}

#[cfg(not(drainable_loom))]
fn mode() -> String {
    format!("{ITERATIONS} runs on real threads")
}

/// A canary cell with loom's `with` / `with_mut` API.
///
/// Under loom every access is checked: two accesses, at least one of them a write, that are not
/// ordered by happens-before are reported as a data race. The scenarios use it for the value a
/// guard protects: readers access it under guards, the drainer writes it after `drain()`
/// returns, and the library's guarantee is exactly that the two never race.
///
/// On real threads it is a plain `UnsafeCell`: a library bug would make the scenario a data
/// race (undefined behaviour), which is what this test crate exists to find; Miri reports it.
#[derive(Debug)]
pub struct Cell<T> {
    inner: drainable::harness::UnsafeCell<T>,
}

// SAFETY: a test double for data guarded by a drainable: all sharing goes through
// `with`/`with_mut`, whose callers promise (and under loom, have checked) that no access races
// with a write. `T: Send` because the value is effectively handed from thread to thread.
unsafe impl<T: Send> Sync for Cell<T> {}

impl<T> Cell<T> {
    /// A cell holding `value`. Under loom, create it inside the model closure.
    pub fn new(value: T) -> Self {
        Cell {
            inner: drainable::harness::UnsafeCell::new(value),
        }
    }

    /// Runs `f` with a pointer to read the value through: a read access.
    #[track_caller]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        self.inner.with(f)
    }

    /// Runs `f` with a pointer to write the value through: a write access.
    #[track_caller]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        self.inner.with_mut(f)
    }
}

impl<T: Copy> Cell<T> {
    /// Reads the value (a checked read access under loom).
    #[track_caller]
    pub fn get(&self) -> T {
        // SAFETY: the pointer is valid for the call. That no write races with this read is the
        // property the scenarios check (loom reports it; see the type's docs).
        self.with(|p| unsafe { *p })
    }

    /// Overwrites the value (a checked write access under loom).
    #[track_caller]
    pub fn set(&self, value: T) {
        // SAFETY: as in `get`; no access may race with this write.
        self.with_mut(|p| unsafe { *p = value })
    }
}

/// A waker for the async scenarios that only counts its wakes: for a future polled by hand
/// (once, then dropped), whose task nobody runs again. The wakes a scenario may see are then
/// exact (loom runs its threads one at a time on one OS thread, so a std atomic is exact; it is
/// the scenario's bookkeeping, not part of the model).
///
/// It does not unpark a thread: loom's `Thread::unpark` makes a thread that is blocked on a
/// loom `Mutex` runnable, and loom then panics with "expected to be able to acquire lock"
/// when that thread resumes with the mutex still held. [`block_on`] uses loom's own executor.
#[derive(Debug, Default)]
pub struct Wakes {
    count: std::sync::atomic::AtomicUsize,
}

impl Wakes {
    /// A counting waker, and its handle to read the count.
    pub fn new() -> (std::sync::Arc<Wakes>, std::task::Waker) {
        let wakes = std::sync::Arc::new(Wakes::default());
        (std::sync::Arc::clone(&wakes), wakes.into())
    }

    /// Wakes so far.
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Polls `f` once with `waker`.
pub fn poll_once<F: std::future::Future + ?Sized>(
    f: std::pin::Pin<&mut F>,
    waker: &std::task::Waker,
) -> std::task::Poll<F::Output> {
    f.poll(&mut std::task::Context::from_waker(waker))
}

/// Drives `f` to completion on the calling thread, sleeping between polls until a wake.
///
/// Under loom, `loom::future::block_on`: its thread waits on a modelled notification that the
/// waker sets, so a wake-up that never comes is a loom deadlock (spurious wakes are explored
/// too). On real threads, a loop that parks the thread, with a waker that unparks it.
#[cfg(drainable_loom)]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    loom::future::block_on(f)
}

/// Drives `f` to completion on the calling thread, sleeping between polls until a wake.
#[cfg(not(drainable_loom))]
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::sync::Arc::new(Unpark(std::thread::current())).into();
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(out) = poll_once(f.as_mut(), &waker) {
            return out;
        }
        std::thread::park();
    }
}
