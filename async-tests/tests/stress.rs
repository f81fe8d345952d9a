//! Stress on tokio's multi-thread runtime: the value behind a drainable is poisoned right after
//! each `drain_async` completes, and no guard holder may ever see the poison.
//!
//! Holder tasks take owned guards, check the canary, hold the guard across `.await`s, check it
//! again; a plain OS thread does the same with short holds. A controller task repeatedly drains,
//! poisons the canary (what freeing or unloading it would do), checks that nobody saw poison,
//! restores it and reopens. The second test churns cancellations: each drain races a timeout of
//! 0-100 µs (tokio's `timeout`, and a finer deadline of our own), and after every cancel the
//! drainable must be open again, since no other drain is in flight.
//!
//! Each test runs for `DRAINABLE_ASYNC_STRESS_SECS` seconds (default 3), for both counters.

use drainable::{Counter, DrainableWith, OwnedGuard, PerCpu, Shared};
use futures_lite::future::yield_now;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const GOOD: u64 = 0x600d_600d_600d_600d;
const POISON: u64 = 0xdead_dead_dead_dead;

/// What the drainable protects. The controller writes it only while drained.
struct Canary {
    alive: AtomicBool,
    pattern: AtomicU64,
}

impl Canary {
    /// Whether a guard holder sees a healthy value. Relaxed loads: a read under a guard happens
    /// before the drain completes and so before the poison is written; coherence then forbids
    /// it to read the poison, without any ordering of its own.
    fn healthy(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && self.pattern.load(Ordering::Relaxed) == GOOD
    }

    fn poison(&self) {
        self.alive.store(false, Ordering::Relaxed);
        self.pattern.store(POISON, Ordering::Relaxed);
    }

    /// Relaxed: the `reopen` that follows releases it to the guards taken after.
    fn restore(&self) {
        self.pattern.store(GOOD, Ordering::Relaxed);
        self.alive.store(true, Ordering::Relaxed);
    }
}

type D<C> = Arc<DrainableWith<Arc<Canary>, C>>;

struct Stats {
    stop: AtomicBool,
    /// Guards under which poison was seen: must stay 0.
    poisoned_reads: AtomicUsize,
    acquired: AtomicUsize,
}

fn secs() -> f64 {
    std::env::var("DRAINABLE_ASYNC_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0)
}

/// xorshift64: the test needs varied delays, not good randomness.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn check<C: Counter>(g: &OwnedGuard<Arc<Canary>, C>, s: &Stats) {
    if !g.healthy() {
        s.poisoned_reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// A task that takes guards as long as the test runs, holding each across a few `.await`s.
async fn holder<C: Counter>(d: D<C>, s: Arc<Stats>, mut seed: u64) {
    while !s.stop.load(Ordering::Relaxed) {
        match d.try_acquire_owned() {
            Some(g) => {
                s.acquired.fetch_add(1, Ordering::Relaxed);
                check(&g, &s);
                // Mostly short holds, now and then a long one.
                let n = next(&mut seed);
                let holds = if n.is_multiple_of(8) { 64 } else { n % 8 };
                for _ in 0..holds {
                    yield_now().await;
                    check(&g, &s);
                }
                drop(g);
            }
            None => yield_now().await,
        }
    }
}

/// A plain OS thread doing the same with short holds: releases from outside the runtime.
fn os_holder<C: Counter>(d: D<C>, s: Arc<Stats>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        while !s.stop.load(Ordering::Relaxed) {
            match d.try_acquire_owned() {
                Some(g) => {
                    s.acquired.fetch_add(1, Ordering::Relaxed);
                    check(&g, &s);
                    for _ in 0..next(&mut seed) % 200 {
                        std::hint::spin_loop();
                    }
                    check(&g, &s);
                }
                None => thread::yield_now(),
            }
        }
    })
}

/// After a completed drain: poison, let the holders run (none may get a guard), check that no
/// holder saw poison, restore, reopen.
async fn poison_check_restore<C: Counter>(d: &D<C>, canary: &Canary, s: &Stats) {
    assert!(
        d.is_drained(),
        "drain_async completed but the drainable is not drained"
    );
    canary.poison();
    for _ in 0..4 {
        yield_now().await;
        assert!(d.try_acquire().is_none(), "a guard of a drained drainable");
    }
    assert_eq!(
        s.poisoned_reads.load(Ordering::Relaxed),
        0,
        "a guard holder saw the value poisoned after drain_async completed"
    );
    canary.restore();
    assert!(
        d.reopen(),
        "drained and no PendingDrain live: reopen must succeed"
    );
}

struct Run<C: Counter> {
    d: D<C>,
    canary: Arc<Canary>,
    s: Arc<Stats>,
    holders: Vec<tokio::task::JoinHandle<()>>,
    os: thread::JoinHandle<()>,
}

fn start<C: Counter>() -> Run<C> {
    let canary = Arc::new(Canary {
        alive: AtomicBool::new(true),
        pattern: AtomicU64::new(GOOD),
    });
    let d: D<C> = Arc::new(DrainableWith::from(Arc::clone(&canary)));
    let s = Arc::new(Stats {
        stop: AtomicBool::new(false),
        poisoned_reads: AtomicUsize::new(0),
        acquired: AtomicUsize::new(0),
    });
    let holders = (0..8)
        .map(|i| tokio::spawn(holder(Arc::clone(&d), Arc::clone(&s), 0x1234_5678 + i)))
        .collect();
    let os = os_holder(Arc::clone(&d), Arc::clone(&s));
    Run {
        d,
        canary,
        s,
        holders,
        os,
    }
}

impl<C: Counter> Run<C> {
    async fn finish(self) {
        self.s.stop.store(true, Ordering::Relaxed);
        for h in self.holders {
            h.await.unwrap();
        }
        self.os.join().unwrap();
        assert_eq!(self.s.poisoned_reads.load(Ordering::Relaxed), 0);
        assert!(
            self.s.acquired.load(Ordering::Relaxed) > 0,
            "no guard was ever taken"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn poison_after_drain<C: Counter>() {
    runtime().block_on(async {
        // The controller is a task too, so that it moves between workers.
        tokio::spawn(async {
            let run = start::<C>();
            let deadline = Instant::now() + Duration::from_secs_f64(secs());
            let mut drains = 0u64;
            while Instant::now() < deadline {
                for _ in 0..drains % 16 {
                    yield_now().await;
                }
                run.d.drain_async().await;
                poison_check_restore(&run.d, &run.canary, &run.s).await;
                drains += 1;
            }
            println!(
                "{drains} drains, {} guards",
                run.s.acquired.load(Ordering::Relaxed)
            );
            assert!(drains > 0);
            run.finish().await;
        })
        .await
        .unwrap();
    });
}

/// A future that is ready once `limit` has passed since its creation, checked at every poll
/// (finer than tokio's millisecond timer wheel).
async fn after(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        yield_now().await;
    }
}

fn cancellation_churn<C: Counter>() {
    runtime().block_on(async {
        tokio::spawn(async {
            let run = start::<C>();
            let deadline = Instant::now() + Duration::from_secs_f64(secs());
            let mut seed = 0xfeed_f00d_u64;
            let (mut completed, mut cancelled) = (0u64, 0u64);
            while Instant::now() < deadline {
                // Give the holders time to take guards again (else most drains find none and
                // complete at their first poll, racing nothing).
                let acquired = run.s.acquired.load(Ordering::Relaxed);
                for _ in 0..1000 {
                    if run.s.acquired.load(Ordering::Relaxed) > acquired + 2 {
                        break;
                    }
                    yield_now().await;
                }
                let limit = Duration::from_micros(next(&mut seed) % 101);
                let drained = if next(&mut seed).is_multiple_of(2) {
                    tokio::time::timeout(limit, run.d.drain_async())
                        .await
                        .is_ok()
                } else {
                    // `or` polls the drain first: a drain that can complete does.
                    futures_lite::future::or(
                        async {
                            run.d.drain_async().await;
                            true
                        },
                        async {
                            after(limit).await;
                            false
                        },
                    )
                    .await
                };
                if drained {
                    completed += 1;
                    poison_check_restore(&run.d, &run.canary, &run.s).await;
                } else {
                    cancelled += 1;
                    // The only drain was this one: its cancel must have reopened.
                    assert!(
                        run.d.is_open(),
                        "a cancelled drain left the drainable closed"
                    );
                    assert!(!run.d.is_drained());
                }
            }
            println!("{completed} drains completed, {cancelled} cancelled");
            assert!(
                completed > 0 && cancelled > 0,
                "the churn did not race both ways"
            );
            run.finish().await;
        })
        .await
        .unwrap();
    });
}

#[test]
fn poison_after_drain_shared() {
    poison_after_drain::<Shared>();
}

#[test]
fn poison_after_drain_per_cpu() {
    poison_after_drain::<PerCpu>();
}

#[test]
fn cancellation_churn_shared() {
    cancellation_churn::<Shared>();
}

#[test]
fn cancellation_churn_per_cpu() {
    cancellation_churn::<PerCpu>();
}
