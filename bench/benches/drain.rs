//! Drain latency, and the cost of a reversible close.
//!
//! ```text
//! cargo bench --manifest-path bench/Cargo.toml --bench drain            # full run (about a minute)
//! cargo bench --manifest-path bench/Cargo.toml --bench drain -- --quick # smoke run
//! ```
//!
//! - `idle`: `drain()` on an open drainable with no guard (then `reopen`, not timed).
//! - `busy`: `drain()` while another thread acquires and releases in a loop on every other core.
//! - `wake`: from the last guard's drop on another thread to `drain()` returning in a drainer
//!   that was already asleep: the wake-up path.
//! - `prepare_undo`: `prepare_drain()` + `undo()` with no guard.
//! - `drain_threads/<n>`: `drain()` of an idle `PerCpuDrainable` (then `reopen`, not timed)
//!   while `n` threads are alive, each owning a thread-local record (it took one per-CPU
//!   guard): the drain's barrier and its scan of every record grow with the threads alive, not
//!   with the drainables.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use drainable::{Counter, Drainable, DrainableWith, PerCpuDrainable};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

fn other_cores() -> usize {
    thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

fn idle<C: Counter>(d: &DrainableWith<u64, C>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        d.drain();
        total += t.elapsed();
        assert!(d.reopen());
    }
    total
}

fn busy<C: Counter>(d: Arc<DrainableWith<u64, C>>, iters: u64) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..other_cores())
        .map(|_| {
            let (d, stop) = (Arc::clone(&d), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(g) = d.try_acquire() {
                        black_box(*g);
                    }
                }
            })
        })
        .collect();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        // Let the workers get going on the open drainable.
        thread::sleep(Duration::from_micros(20));
        let t = Instant::now();
        d.drain();
        total += t.elapsed();
        assert!(d.reopen());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    total
}

/// The holder takes a guard, waits until the drainer is asleep in `drain()`, stamps the time
/// and drops the guard; the drainer stamps the time when `drain()` returns.
fn wake<C: Counter>(d: Arc<DrainableWith<u64, C>>, iters: u64) -> Duration {
    let epoch = Instant::now();
    let dropped_at = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(2));
    let holder = {
        let (d, dropped_at, start) = (Arc::clone(&d), Arc::clone(&dropped_at), Arc::clone(&start));
        thread::spawn(move || {
            for _ in 0..iters {
                let g = d.try_acquire().expect("reopened");
                start.wait();
                // Long enough for the drainer to finish spinning and sleep on the futex.
                thread::sleep(Duration::from_micros(200));
                dropped_at.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                drop(g);
                start.wait(); // the drainer has reopened
            }
        })
    };
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        start.wait();
        d.drain();
        let returned = epoch.elapsed().as_nanos() as u64;
        total += Duration::from_nanos(returned - dropped_at.load(Ordering::Acquire));
        assert!(d.reopen());
        start.wait();
    }
    holder.join().unwrap();
    total
}

fn drain_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("drain");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);

    g.bench_function(BenchmarkId::new("idle", "drainable"), |b| {
        let d = Drainable::new(0u64);
        b.iter_custom(|n| idle(&d, n))
    });
    g.bench_function(BenchmarkId::new("idle", "per_cpu"), |b| {
        let d = PerCpuDrainable::new(0u64);
        b.iter_custom(|n| idle(&d, n))
    });
    g.bench_function(BenchmarkId::new("busy", "drainable"), |b| {
        b.iter_custom(|n| busy(Arc::new(Drainable::new(0u64)), n))
    });
    g.bench_function(BenchmarkId::new("busy", "per_cpu"), |b| {
        b.iter_custom(|n| busy(Arc::new(PerCpuDrainable::new(0u64)), n))
    });
    g.bench_function(BenchmarkId::new("prepare_undo", "drainable"), |b| {
        let d = Drainable::new(0u64);
        b.iter(|| black_box(d.prepare_drain()).undo())
    });
    g.bench_function(BenchmarkId::new("prepare_undo", "per_cpu"), |b| {
        let d = PerCpuDrainable::new(0u64);
        b.iter(|| black_box(d.prepare_drain()).undo())
    });
    // Each iteration sleeps 200 µs on purpose: fewer samples.
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("wake", "drainable"), |b| {
        b.iter_custom(|n| wake(Arc::new(Drainable::new(0u64)), n))
    });
    g.bench_function(BenchmarkId::new("wake", "per_cpu"), |b| {
        b.iter_custom(|n| wake(Arc::new(PerCpuDrainable::new(0u64)), n))
    });
    g.finish();
}

/// `idle` for a per-CPU drainable while `threads` threads that each own a record stay alive.
fn with_threads_alive(c: &mut Criterion) {
    let mut g = c.benchmark_group("drain_threads");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
    for threads in [1usize, 10, 100, 1000] {
        let other = Arc::new(PerCpuDrainable::new(0u64));
        let ready = Arc::new(Barrier::new(threads + 1));
        let done = Arc::new(Barrier::new(threads + 1));
        let alive: Vec<_> = (0..threads)
            .map(|_| {
                let (other, ready, done) =
                    (Arc::clone(&other), Arc::clone(&ready), Arc::clone(&done));
                thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        // Claims this thread's record, which it keeps until it exits.
                        drop(other.try_acquire());
                        ready.wait();
                        done.wait();
                    })
                    .expect("spawn a thread for drain_threads")
            })
            .collect();
        ready.wait();
        let d = PerCpuDrainable::new(0u64);
        g.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|n| idle(&d, n))
        });
        done.wait();
        for t in alive {
            t.join().unwrap();
        }
    }
    g.finish();
}

criterion_group!(benches, drain_benches, with_threads_alive);
criterion_main!(benches);
