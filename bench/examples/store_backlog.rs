//! Do deferred drops keep up? `GraceCell::store` in a loop for a while (10 s by default) with a
//! reader busy on every other core (each loops on `cell.read()`), sampling the domain's
//! `backlog()` and `heap_bytes()` every ~10 ms from a third thread.
//!
//! Prints one `key: value` line per figure: the stores per second, the maximum and final
//! backlog (values retired and not yet dropped), the maximum and final `heap_bytes()`, and
//! whether the backlog stayed within `GraceDomain::DEFAULT_BACKLOG_LIMIT`. It must: a store
//! that finds the backlog full waits for a grace period and the drops before it queues its value.
//! The exit status is 1 if it did not. `bench_report` runs it and puts the figures in
//! `docs/benchmarks.md` ("Deferred drops keep up").
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml --example store_backlog                # 10 s
//! cargo run --release --manifest-path bench/Cargo.toml --example store_backlog -- --secs 2    # 2 s
//! DRAINABLE_STORE_SECS=2 cargo run --release --manifest-path bench/Cargo.toml --example store_backlog
//! ```
//!
//! The samples are snapshots: a peak between two samples is not seen (the bound holds at every
//! instant by construction; the samples show where the backlog sits in practice).

use drainable::{GraceCell, GraceDomain};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The run's length: `--secs N`, else `DRAINABLE_STORE_SECS`, else 10 s. Fractions allowed.
fn secs() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    let arg = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1).cloned());
    let text = arg.or_else(|| std::env::var("DRAINABLE_STORE_SECS").ok());
    match text {
        None => 10.0,
        Some(t) => match t.parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => s,
            _ => {
                eprintln!("store_backlog: --secs wants a positive number of seconds, not {t:?}");
                std::process::exit(2)
            }
        },
    }
}

/// The maximum and the last of a series of samples.
#[derive(Default)]
struct Samples {
    count: usize,
    max_backlog: usize,
    max_heap: usize,
}

impl Samples {
    fn take(&mut self, domain: &GraceDomain) {
        self.count += 1;
        self.max_backlog = self.max_backlog.max(domain.backlog());
        self.max_heap = self.max_heap.max(domain.heap_bytes());
    }
}

fn main() {
    let run_for = Duration::from_secs_f64(secs());
    let readers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1);
    let cell = GraceCell::new(0u64);
    let stop = AtomicBool::new(false);
    let (mut samples, stores, elapsed, final_backlog, final_heap) = thread::scope(|s| {
        for _ in 0..readers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    black_box(*cell.read());
                }
            });
        }
        let sampler = s.spawn(|| {
            let mut samples = Samples::default();
            while !stop.load(Ordering::Relaxed) {
                samples.take(cell.domain());
                thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        // The writer: this thread. The clock is read once per 256 stores.
        let start = Instant::now();
        let mut stores = 0u64;
        loop {
            for _ in 0..256 {
                stores += 1;
                cell.store(stores);
            }
            if start.elapsed() >= run_for {
                break;
            }
        }
        let elapsed = start.elapsed();
        // The state the writer leaves behind, before anything else runs the drops.
        let (final_backlog, final_heap) = (cell.domain().backlog(), cell.domain().heap_bytes());
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().expect("the sampler panicked");
        (samples, stores, elapsed, final_backlog, final_heap)
    });
    samples.max_backlog = samples.max_backlog.max(final_backlog);
    samples.max_heap = samples.max_heap.max(final_heap);
    cell.domain().barrier();
    let limit = GraceDomain::DEFAULT_BACKLOG_LIMIT;
    let within = samples.max_backlog <= limit;
    println!("seconds: {:.2}", elapsed.as_secs_f64());
    println!("reader_threads: {readers}");
    println!("stores: {stores}");
    println!(
        "stores_per_second: {:.0}",
        stores as f64 / elapsed.as_secs_f64()
    );
    println!("samples: {}", samples.count);
    println!("max_backlog: {}", samples.max_backlog);
    println!("final_backlog: {final_backlog}");
    println!("backlog_after_barrier: {}", cell.domain().backlog());
    println!("max_heap_bytes: {}", samples.max_heap);
    println!("final_heap_bytes: {final_heap}");
    println!("backlog_limit: {limit}");
    println!("within_limit: {}", if within { "yes" } else { "no" });
    if !within {
        std::process::exit(1);
    }
}
