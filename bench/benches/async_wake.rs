//! Async wake latency: from the last guard's release on a plain OS thread to the awaiting task
//! running again, on tokio's multi-thread runtime.
//!
//! ```text
//! cargo bench --manifest-path bench/Cargo.toml --bench async_wake -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `wake/*`: a task awaits the end of a drain and, when it runs again, sends back the `Instant`
//! it saw; the bench's own thread (not a runtime worker) releases the last hold just after
//! taking its start `Instant`. Before the release it waits until the task has announced that it
//! is about to await, then 50 µs more, so that the task has polled, found a hold outstanding,
//! and its worker has gone idle: the wake-up path is what is timed, not a completion at the
//! first poll. The spawn, the announcement and the settling are not timed.
//!
//! - `drain_async`: `Drainable::drain_async().await`; the hold is an `OwnedGuard`.
//! - `task_tracker`: tokio-util's `TaskTracker`, `close()` then `wait().await`; the hold is a
//!   `TaskTrackerToken`, which is what a tracked task holds and drops as it finishes (so its
//!   drop is "the last task finishing", without a task's own wake-up on top).
//! - `drain_crate`: linkerd's `drain`, `Signal::drain().await`; the hold is the last
//!   `ReleaseShutdown` (from `Watch::ignore_signaled`).
//!
//! The three cases are interleaved: every timed iteration of one case is followed by one
//! untimed iteration of each other case, so drift in the machine's state (frequency, other
//! load, the runtime's workers) falls on all three alike.
//!
//! `first_poll/drain_async_no_guard`: one poll of a fresh `drain_async` future on a
//! `Drainable` with no guard outstanding, which completes it (then an untimed `reopen`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use drainable::Drainable;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;

const SETTLE: Duration = Duration::from_micros(50);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    DrainAsync,
    TaskTracker,
    DrainCrate,
}

const CASES: [Case; 3] = [Case::DrainAsync, Case::TaskTracker, Case::DrainCrate];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::DrainAsync => "drain_async",
            Case::TaskTracker => "task_tracker",
            Case::DrainCrate => "drain_crate",
        }
    }
}

/// A hold that the bench thread releases: whatever the case's waiter waits for.
#[expect(dead_code, reason = "held only to be dropped: the drop is the release")]
enum Hold {
    Guard(drainable::OwnedGuard<()>),
    Token(tokio_util::task::task_tracker::TaskTrackerToken),
    Release(drain::ReleaseShutdown),
}

/// One wake: spawns the waiter, lets it go to sleep, releases the hold, returns the time from
/// just before the release to the waiter running again.
fn wake_once(rt: &Runtime, case: Case) -> Duration {
    let (woke_tx, woke_rx) = mpsc::sync_channel::<Instant>(1);
    let about_to_wait = Arc::new(AtomicBool::new(false));
    let announce = Arc::clone(&about_to_wait);
    let hold = match case {
        Case::DrainAsync => {
            let d = Arc::new(Drainable::new(()));
            let g = d.try_acquire_owned().unwrap();
            rt.spawn(async move {
                announce.store(true, Ordering::Release);
                d.drain_async().await;
                woke_tx.send(Instant::now()).unwrap();
                assert!(d.is_drained());
            });
            Hold::Guard(g)
        }
        Case::TaskTracker => {
            let tracker = TaskTracker::new();
            let token = tracker.token();
            rt.spawn(async move {
                announce.store(true, Ordering::Release);
                tracker.close();
                tracker.wait().await;
                woke_tx.send(Instant::now()).unwrap();
                assert!(tracker.is_empty());
            });
            Hold::Token(token)
        }
        Case::DrainCrate => {
            let (signal, watch) = drain::channel();
            let release = watch.ignore_signaled();
            rt.spawn(async move {
                announce.store(true, Ordering::Release);
                signal.drain().await;
                woke_tx.send(Instant::now()).unwrap();
            });
            Hold::Release(release)
        }
    };
    while !about_to_wait.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let settle = Instant::now();
    while settle.elapsed() < SETTLE {
        std::hint::spin_loop();
    }
    let start = Instant::now();
    drop(hold);
    let woke = woke_rx.recv().expect("the waiter ran");
    woke.saturating_duration_since(start)
}

fn wake(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("a tokio runtime");
    let mut group = c.benchmark_group("wake");
    for case in CASES {
        group.bench_function(BenchmarkId::new(case.name(), "multi_thread"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for other in CASES {
                        let t = wake_once(&rt, other);
                        if other == case {
                            total += t;
                        }
                    }
                }
                total
            })
        });
    }
    group.finish();
}

fn first_poll(c: &mut Criterion) {
    let mut group = c.benchmark_group("first_poll");
    group.bench_function("drain_async_no_guard", |b| {
        let d = Drainable::new(0u64);
        let mut cx = Context::from_waker(Waker::noop());
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let ready = pin!(black_box(&d).drain_async()).poll(&mut cx);
                total += t.elapsed();
                assert_eq!(ready, Poll::Ready(()));
                assert!(d.reopen());
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, wake, first_poll);
criterion_main!(benches);
