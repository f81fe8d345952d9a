//! The cost of protecting one callback invocation: "enter + a non-inlined callback + leave".
//!
//! Group `callback`, one benchmark per protection scheme and thread count,
//! `callback/<impl>/<threads>`:
//!
//! - `plain`: the call alone, no protection (the floor).
//! - `drainable`: `Drainable::try_acquire`, call with `&*guard`, drop the guard.
//! - `per_cpu_drainable`: the same through `PerCpuDrainable` (the same generic code).
//! - `grace_cell`: `GraceCell::read`, call with `&*guard`, drop it.
//! - `arc`: `Arc::clone`, call with `&*clone`, drop the clone.
//! - `rwlock`: `std::sync::RwLock::read`, call, unlock.
//! - `crossbeam_epoch`: `crossbeam_epoch::pin()`, `Atomic::load(Acquire)`, call, unpin.
//! - `arc_swap`: `ArcSwap::load`, call, drop the guard.
//! - `run_down`: `run_down::RundownRef::try_acquire` (the existing Rust rundown crate), call,
//!   drop; the value sits beside the `RundownRef`.
//!
//! - `seize`: `seize::Collector::enter`, `Guard::protect` of an `AtomicPtr`, call, leave.
//!
//! Group `callback_opaque`, the same cases reached the way a registry or a plugin host reaches
//! them: each `call` wrapped in a boxed `dyn Fn`, called on a freshly spawned thread, so that
//! the compiler cannot hoist thread-local lookups or checks out of the timed loop.
//!
//! Every case calls the same `#[inline(never)]` callback on a `&u64`. `<threads>` is `1` (one
//! thread, nothing else running) and `available_parallelism` ("every core busy": that many
//! threads run the same loop on the same shared object at once, started by a barrier; the
//! time per op is the slowest thread's wall time divided by the iterations per thread).
//!
//! # Running
//!
//! ```text
//! cargo bench --manifest-path bench/Cargo.toml --bench callback                    # full run, ~40 s after the build
//! cargo bench --manifest-path bench/Cargo.toml --bench callback -- drainable/1     # a filter, as usual with criterion
//! cargo bench --manifest-path bench/Cargo.toml --bench callback -- --quick         # CI smoke run: a few seconds
//! DRAINABLE_BENCH_QUICK=1 cargo bench --manifest-path bench/Cargo.toml --bench callback   # the same, via the environment
//! cargo test --manifest-path bench/Cargo.toml --bench callback                     # run every case once, no timing
//! ```
//!
//! `--quick` is criterion's own quick mode (stops each case once its estimate is stable); this
//! file also shortens the time limits when it sees it. `DRAINABLE_BENCH_QUICK=1` shortens
//! warm-up, measurement and sample count without criterion's quick mode.
//!
//! # Adding a case
//!
//! Implement `Protect` (one `enter + callback + leave` in `call`) and add one line to
//! `bench_callback`; both thread counts come for free. Adding a thread count is one more entry
//! in `thread_counts`.

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use crossbeam_epoch::{self as epoch, Atomic, Shared};
use drainable::{Counter, Drainable, DrainableWith, GraceCell, PerCpuDrainable};
use run_down::RundownRef;
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, RwLock};
use std::thread;
use std::time::{Duration, Instant};

/// The payload every case protects.
const PAYLOAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// The callback: never inlined, takes a `&T`, the same function for every case.
#[inline(never)]
fn callback(value: &u64) -> u64 {
    value.rotate_left(7) ^ 0x5555
}

/// Calls the callback so that the compiler can neither hoist the call out of the loop (the
/// reference is opaque) nor drop it (the result is used).
#[inline(always)]
fn invoke(value: &u64) {
    black_box(callback(black_box(value)));
}

/// One protection scheme: `call` is one "enter + callback + leave". Shared by every thread of
/// a multi-thread case, hence `Sync`.
trait Protect: Sync {
    fn name(&self) -> &'static str;
    fn call(&self);
}

/// No protection: the callback alone.
struct Plain(u64);

impl Protect for Plain {
    fn name(&self) -> &'static str {
        "plain"
    }
    #[inline(always)]
    fn call(&self) {
        invoke(&self.0);
    }
}

/// Both drainables, through the same generic code.
struct DrainableCase<C: Counter>(DrainableWith<u64, C>, &'static str);

impl<C: Counter> Protect for DrainableCase<C> {
    fn name(&self) -> &'static str {
        self.1
    }
    #[inline(always)]
    fn call(&self) {
        if let Some(guard) = self.0.try_acquire() {
            invoke(&guard);
        }
    }
}

struct GraceCase(GraceCell<u64>);

impl Protect for GraceCase {
    fn name(&self) -> &'static str {
        "grace_cell"
    }
    #[inline(always)]
    fn call(&self) {
        invoke(&self.0.read());
    }
}

struct RwLockCase(RwLock<u64>);

impl Protect for RwLockCase {
    fn name(&self) -> &'static str {
        "rwlock"
    }
    #[inline(always)]
    fn call(&self) {
        invoke(&self.0.read().unwrap());
    }
}

struct ArcSwapCase(ArcSwap<u64>);

impl Protect for ArcSwapCase {
    fn name(&self) -> &'static str {
        "arc_swap"
    }
    #[inline(always)]
    fn call(&self) {
        invoke(&self.0.load());
    }
}

struct RunDownCase(RundownRef, u64);

impl Protect for RunDownCase {
    fn name(&self) -> &'static str {
        "run_down"
    }
    #[inline(always)]
    fn call(&self) {
        if let Ok(_guard) = self.0.try_acquire() {
            invoke(&self.1);
        }
    }
}

struct ArcCase(Arc<u64>);

impl Protect for ArcCase {
    fn name(&self) -> &'static str {
        "arc"
    }
    #[inline(always)]
    fn call(&self) {
        let clone = Arc::clone(&self.0);
        invoke(&clone);
    }
}

struct EpochCase(Atomic<u64>);

impl Protect for EpochCase {
    fn name(&self) -> &'static str {
        "crossbeam_epoch"
    }
    #[inline(always)]
    fn call(&self) {
        let guard = epoch::pin();
        let shared = self.0.load(Ordering::Acquire, &guard);
        // SAFETY: the pointer is set in `new` and only freed in `drop`, after every thread
        // has finished, so it is valid while pinned.
        invoke(unsafe { shared.deref() });
    }
}

impl EpochCase {
    fn new(value: u64) -> Self {
        EpochCase(Atomic::new(value))
    }
}

impl Drop for EpochCase {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no thread is pinned and reading the pointer any more.
        unsafe {
            let guard = epoch::unprotected();
            drop(
                self.0
                    .swap(Shared::null(), Ordering::Relaxed, guard)
                    .into_owned(),
            );
        }
    }
}

struct SeizeCase(seize::Collector, std::sync::atomic::AtomicPtr<u64>);

impl Protect for SeizeCase {
    fn name(&self) -> &'static str {
        "seize"
    }
    #[inline(always)]
    fn call(&self) {
        use seize::Guard;
        let guard = self.0.enter();
        let p = guard.protect(&self.1, Ordering::Acquire);
        // SAFETY: set in `new`, freed only in `drop`, after every thread has finished.
        invoke(unsafe { &*p });
    }
}

impl SeizeCase {
    fn new(value: u64) -> Self {
        SeizeCase(
            seize::Collector::new(),
            std::sync::atomic::AtomicPtr::new(Box::into_raw(Box::new(value))),
        )
    }
}

impl Drop for SeizeCase {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no thread reads the pointer any more; it came from `Box::new`.
        drop(unsafe { Box::from_raw(*self.1.get_mut()) });
    }
}

/// `iters` calls on this thread; the wall time they took.
#[inline(never)]
fn time_loop<P: Protect>(case: &P, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        case.call();
    }
    start.elapsed()
}

/// "Every core busy": `threads` threads run `iters` calls each on the same `case`, released
/// together by a barrier. Returns the slowest thread's wall time, so that criterion's
/// `time / iters` is the time per op with every thread running.
fn time_parallel<P: Protect>(case: &P, threads: usize, iters: u64) -> Duration {
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    time_loop(case, iters)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// `iters` calls of an opaque `dyn Fn` on this thread; the wall time they took.
#[inline(never)]
fn time_opaque_loop(f: &(dyn Fn() + Sync), iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed()
}

/// The opaque case: `call` behind a boxed `dyn Fn`, on `threads` freshly spawned threads (one
/// thread too: a new thread, as a registry's caller would be). The slowest thread's wall time.
fn time_opaque<P: Protect>(case: &P, threads: usize, iters: u64) -> Duration {
    let f: Box<dyn Fn() + Sync + '_> = Box::new(move || case.call());
    let f = black_box(&*f);
    let barrier = Barrier::new(threads);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    time_opaque_loop(f, iters)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}

/// Registers `case` at every thread count: `callback/<name>/<threads>`.
fn bench_case<P: Protect>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    group_name: &str,
    case: &P,
) {
    for threads in thread_counts() {
        group.bench_with_input(
            BenchmarkId::new(case.name(), threads),
            &threads,
            |b, &threads| {
                if group_is_opaque(group_name) {
                    b.iter_custom(|iters| time_opaque(case, threads, iters));
                } else if threads == 1 {
                    b.iter_custom(|iters| time_loop(case, iters));
                } else {
                    b.iter_custom(|iters| time_parallel(case, threads, iters));
                }
            },
        );
    }
}

/// 1, then every core (if there is more than one).
fn thread_counts() -> Vec<usize> {
    let cores = thread::available_parallelism().map_or(1, usize::from);
    if cores > 1 {
        vec![1, cores]
    } else {
        vec![1]
    }
}

fn group_is_opaque(name: &str) -> bool {
    name == "callback_opaque"
}

fn bench_callback(c: &mut Criterion) {
    for name in ["callback", "callback_opaque"] {
        let mut group = c.benchmark_group(name);
        let g = &mut group;
        bench_case(g, name, &Plain(PAYLOAD));
        bench_case(
            g,
            name,
            &DrainableCase(Drainable::new(PAYLOAD), "drainable"),
        );
        bench_case(
            g,
            name,
            &DrainableCase(PerCpuDrainable::new(PAYLOAD), "per_cpu_drainable"),
        );
        bench_case(g, name, &GraceCase(GraceCell::new(PAYLOAD)));
        bench_case(g, name, &ArcCase(Arc::new(PAYLOAD)));
        bench_case(g, name, &RwLockCase(RwLock::new(PAYLOAD)));
        bench_case(g, name, &EpochCase::new(PAYLOAD));
        bench_case(g, name, &SeizeCase::new(PAYLOAD));
        bench_case(g, name, &ArcSwapCase(ArcSwap::from_pointee(PAYLOAD)));
        bench_case(g, name, &RunDownCase(RundownRef::new(), PAYLOAD));
        group.finish();
    }
}

/// Whether to run a short smoke version: criterion's `--quick`, or `DRAINABLE_BENCH_QUICK=1`.
fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
        || std::env::var("DRAINABLE_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Short by default (~4 s per case); command-line options still override these.
fn config() -> Criterion {
    let c = Criterion::default();
    if quick() {
        c.warm_up_time(Duration::from_millis(50))
            .measurement_time(Duration::from_millis(200))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sample_size(30)
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_callback
}
criterion_main!(benches);
