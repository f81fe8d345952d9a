//! Construction: what one instance of each type costs to build (issue 15), the per-CPU ones
//! against `Drainable::new` and a `Registry` (`Shared`) registration on a fresh slot.
//!
//! Each measurement builds `iters` instances in a row and keeps them until the timer stops, so
//! that their drops (and, for a registry, the unregistrations) are not timed and every
//! registration takes a slot never used before.
//!
//! ```text
//! cargo bench --manifest-path bench/Cargo.toml --bench construct            # full run
//! cargo bench --manifest-path bench/Cargo.toml --bench construct -- --quick # smoke run
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use drainable::{Drainable, GraceDomain, PerCpu, PerCpuDrainable, Registry, Shared};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Times building `iters` values with `make`, dropping them after the timer stops.
fn build_many<V>(iters: u64, mut make: impl FnMut() -> V) -> Duration {
    let mut kept = Vec::with_capacity(iters as usize);
    let start = Instant::now();
    for _ in 0..iters {
        kept.push(black_box(make()));
    }
    let elapsed = start.elapsed();
    drop(kept);
    elapsed
}

/// Times `iters` registrations into a new registry, each on a fresh slot.
fn register_fresh<C: drainable::Counter>(iters: u64, registry: Registry<u64, C>) -> Duration {
    let mut kept = Vec::with_capacity(iters as usize);
    let start = Instant::now();
    for i in 0..iters {
        kept.push(registry.register(black_box(i)));
    }
    let elapsed = start.elapsed();
    registry.unregister_all(kept);
    elapsed
}

fn construct(c: &mut Criterion) {
    let mut g = c.benchmark_group("construct");
    g.bench_function(BenchmarkId::new("Drainable::new", "()"), |b| {
        b.iter_custom(|iters| build_many(iters, || Drainable::new(())))
    });
    g.bench_function(BenchmarkId::new("PerCpuDrainable::new", "()"), |b| {
        b.iter_custom(|iters| build_many(iters, || PerCpuDrainable::new(())))
    });
    g.bench_function(BenchmarkId::new("GraceDomain::new", ""), |b| {
        b.iter_custom(|iters| build_many(iters, GraceDomain::new))
    });
    g.bench_function(BenchmarkId::new("Registry::register", "Shared"), |b| {
        b.iter_custom(|iters| register_fresh(iters, Registry::<u64, Shared>::with_counter()))
    });
    g.bench_function(BenchmarkId::new("Registry::register", "PerCpu"), |b| {
        b.iter_custom(|iters| register_fresh(iters, Registry::<u64, PerCpu>::with_counter()))
    });
    g.finish();
}

criterion_group!(benches, construct);
criterion_main!(benches);
