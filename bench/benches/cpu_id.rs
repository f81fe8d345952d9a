//! Which slot a per-CPU counter should use: the three sources measured side by side
//! (`PerCpu` uses rseq where glibc registered it, else the per-thread index).
//!
//! ```text
//! cargo bench --manifest-path bench/Cargo.toml --bench cpu_id
//! ```

use criterion::{criterion_group, criterion_main, Criterion};
use drainable::cpu::sources;
use std::hint::black_box;
use std::time::Duration;

fn cpu_id(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_id");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    if sources::rseq().is_some() {
        g.bench_function("rseq", |b| {
            b.iter(|| black_box(sources::rseq().unwrap_or(0)))
        });
    }
    if sources::sched_getcpu().is_some() {
        g.bench_function("sched_getcpu", |b| {
            b.iter(|| black_box(sources::sched_getcpu().unwrap_or(0)))
        });
    }
    g.bench_function("thread_index", |b| {
        b.iter(|| black_box(sources::thread_index()))
    });
    g.finish();
}

criterion_group!(benches, cpu_id);
criterion_main!(benches);
