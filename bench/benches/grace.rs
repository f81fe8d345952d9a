//! Grace-period latency: `GraceDomain::synchronize` and `GraceCell::replace`, idle and with a
//! reader busy on every other core, against the deferred-reclamation baselines doing the same
//! job (`crossbeam-epoch`: swap + `defer_destroy` + `flush`; `arc-swap`: `store`; `seize`:
//! swap + `retire`). The baselines return before the old value is freed; `replace` returns it,
//! no reader left. `grace_cell_store` is the deferred store (`GraceCell::store`), which returns
//! before the old value is dropped too, like the baselines; its backlog stays under the
//! domain's limit (the run's maximum is printed). `examples/store_backlog.rs` runs `store`
//! against busy readers for longer (10 s) and samples the backlog and the domain's heap bytes.
//!
//! ```text
//! cargo bench --manifest-path bench/Cargo.toml --bench grace            # full run (about a minute)
//! cargo bench --manifest-path bench/Cargo.toml --bench grace -- --quick # smoke run
//! ```

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use crossbeam_epoch::{self as epoch, Atomic, Owned};
use drainable::{GraceCell, GraceDomain};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn other_cores() -> usize {
    thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

/// Runs `reader` in a loop on every other core while `f` runs, if `busy`.
fn with_readers<R: Send + Sync + 'static>(
    busy: bool,
    state: Arc<R>,
    reader: fn(&R),
    f: impl FnOnce(&R),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..if busy { other_cores() } else { 0 })
        .map(|_| {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    reader(&state);
                }
            })
        })
        .collect();
    f(&state);
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
}

/// A `seize` collector and the pointer it protects.
struct SeizeCell(seize::Collector, std::sync::atomic::AtomicPtr<u64>);

impl SeizeCell {
    fn new(v: u64) -> Self {
        SeizeCell(
            seize::Collector::new(),
            std::sync::atomic::AtomicPtr::new(Box::into_raw(Box::new(v))),
        )
    }
}

impl Drop for SeizeCell {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader is left; the pointer came from `Box::new`.
        drop(unsafe { Box::from_raw(*self.1.get_mut()) });
    }
}

fn grace_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("grace");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.sample_size(20);
    for (label, busy) in [("idle", false), ("busy_reader", true)] {
        g.bench_function(BenchmarkId::new("synchronize", label), |b| {
            with_readers(
                busy,
                Arc::new(GraceDomain::new()),
                |d| drop(black_box(d.enter())),
                |d| b.iter(|| d.synchronize()),
            )
        });
        g.bench_function(BenchmarkId::new("grace_cell_replace", label), |b| {
            with_readers(
                busy,
                Arc::new(GraceCell::new(0u64)),
                |c| {
                    black_box(*c.read());
                },
                |c| {
                    let mut i = 0u64;
                    b.iter(|| {
                        i += 1;
                        black_box(c.replace(i))
                    })
                },
            )
        });
        g.bench_function(BenchmarkId::new("epoch_defer_flush", label), |b| {
            with_readers(
                busy,
                Arc::new(Atomic::new(0u64)),
                |a| {
                    let guard = epoch::pin();
                    // SAFETY: the pointer is protected by the pinned guard.
                    black_box(unsafe { a.load(Ordering::Acquire, &guard).deref() });
                },
                |a| {
                    let mut i = 0u64;
                    b.iter(|| {
                        i += 1;
                        let guard = epoch::pin();
                        let old = a.swap(Owned::new(i), Ordering::AcqRel, &guard);
                        // SAFETY: `old` is unpublished; epoch defers its destruction until no
                        // pinned thread can see it.
                        unsafe { guard.defer_destroy(old) };
                        guard.flush();
                    })
                },
            )
        });
        g.bench_function(BenchmarkId::new("grace_cell_store", label), |b| {
            let mut max_backlog = 0;
            with_readers(
                busy,
                Arc::new(GraceCell::new(0u64)),
                |c| {
                    black_box(*c.read());
                },
                |c| {
                    let mut i = 0u64;
                    b.iter(|| {
                        i += 1;
                        c.store(i);
                        if i.is_multiple_of(1024) {
                            max_backlog = max_backlog.max(c.domain().backlog());
                        }
                    });
                    c.domain().barrier();
                },
            );
            eprintln!("grace_cell_store/{label}: max backlog {max_backlog}");
        });
        g.bench_function(BenchmarkId::new("seize_retire", label), |b| {
            with_readers(
                busy,
                Arc::new(SeizeCell::new(0)),
                |s| {
                    use seize::Guard;
                    let guard = s.0.enter();
                    // SAFETY: protected by the guard; retired only through the collector.
                    black_box(unsafe { *guard.protect(&s.1, Ordering::Acquire) });
                },
                |s| {
                    let mut i = 0u64;
                    b.iter(|| {
                        i += 1;
                        let old = s.1.swap(Box::into_raw(Box::new(i)), Ordering::AcqRel);
                        // SAFETY: unpublished by the swap; freed by the collector once no
                        // guard can see it.
                        unsafe { s.0.retire(old, seize::reclaim::boxed) };
                    })
                },
            )
        });
        g.bench_function(BenchmarkId::new("arc_swap_store", label), |b| {
            with_readers(
                busy,
                Arc::new(ArcSwap::from_pointee(0u64)),
                |s| {
                    black_box(**s.load());
                },
                |s| {
                    let mut i = 0u64;
                    b.iter(|| {
                        i += 1;
                        s.store(Arc::new(i))
                    })
                },
            )
        });
    }
    g.finish();
}

criterion_group!(benches, grace_benches);
criterion_main!(benches);
