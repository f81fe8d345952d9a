//! drainable's futures on four executors, as an outside crate uses them (public API only):
//! tokio's multi-thread and current-thread runtimes, `async-executor` (smol's executor) on two
//! threads, and `futures::executor::block_on` (with futures' thread pool for spawned tasks).
//!
//! Every scenario runs on every executor, for both counters (`Drainable` and
//! `PerCpuDrainable`). Each asserts what a wrong implementation would get wrong: that a drain
//! does not complete before the last guard's work is done (the work is counted *under* the
//! guard, and the count is read right after the drain completes, before joining anyone), that
//! a cancelled drain leaves the drainable open, that every waiter of one drain completes. A lost
//! wake-up shows as a hang, which the watchdog turns into a failure naming the test.

mod support;

use drainable::{Counter, DrainableWith, PerCpu, Shared};
use futures_lite::future::{poll_once, yield_now};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;
use support::{Spawner, run, tokio_current_thread, tokio_multi_thread};

/// The value a drainable protects here: work done under its guards is counted in `done`, which
/// the test keeps a handle to, so that it can read the count once the drain has completed.
type Probe = Arc<AtomicUsize>;
type D<C> = Arc<DrainableWith<Probe, C>>;

fn probe<C: Counter>() -> (D<C>, Probe) {
    let done = Probe::default();
    (Arc::new(DrainableWith::from(Arc::clone(&done))), done)
}

/// What a task did under its guard: counted just before the guard is dropped.
fn work(g: &Probe) {
    // Relaxed: the drain's completion orders it (every access under a guard happens-before).
    g.fetch_add(1, Ordering::Relaxed);
}

fn done(p: &Probe) -> usize {
    p.load(Ordering::Relaxed)
}

/// On a plain OS thread: waits until a drain has closed `d` (so the drainer has polled and
/// found this guard outstanding), a little longer so that it goes to sleep, then does its work
/// and drops the last guard: the release has to wake the task.
fn release_when_closed<C: Counter>(d: &D<C>) -> thread::JoinHandle<()> {
    let g = d.try_acquire_owned().expect("open");
    let d = Arc::clone(d);
    thread::spawn(move || {
        while d.is_open() {
            thread::sleep(Duration::from_micros(100));
        }
        thread::sleep(Duration::from_millis(5));
        work(&g);
        drop(g);
    })
}

/// In a task: until a drain has closed `d`.
async fn until_closed<C: Counter>(d: &D<C>) {
    while d.is_open() {
        yield_now().await;
    }
}

// ---- scenarios ---------------------------------------------------------------------------------

/// With no guard outstanding, the first poll completes the drain.
async fn no_guard_completes_at_first_poll<C: Counter>(_: Spawner) {
    let (d, _) = probe::<C>();
    assert_eq!(poll_once(d.drain_async()).await, Some(()));
    assert!(d.is_drained() && d.try_acquire().is_none());
    assert!(d.reopen());
    assert!(d.try_acquire().is_some());
}

/// An unpolled future changes nothing.
async fn an_unpolled_drain_changes_nothing<C: Counter>(_: Spawner) {
    let (d, _) = probe::<C>();
    let f = d.drain_async();
    yield_now().await;
    assert!(d.is_open() && d.try_acquire().is_some());
    drop(f);
    assert!(d.is_open() && !d.is_drained());
}

/// The last guard, dropped on a plain OS thread, wakes the awaiting task; its work under the
/// guard is visible when the drain completes.
async fn last_guard_on_os_thread<C: Counter>(_: Spawner) {
    let (d, p) = probe::<C>();
    let releaser = release_when_closed(&d);
    d.drain_async().await;
    assert!(d.is_drained());
    assert_eq!(
        done(&p),
        1,
        "the drain completed before the last guard's work was done"
    );
    assert!(d.try_acquire().is_none() && d.try_acquire_owned().is_none());
    releaser.join().unwrap();
}

/// The last guard, held by another task across `.await`s, dropped there.
async fn last_guard_in_another_task<C: Counter>(spawn: Spawner) {
    let (d, p) = probe::<C>();
    let g = d.try_acquire_owned().unwrap();
    let holder = spawn.spawn({
        let d = Arc::clone(&d);
        async move {
            until_closed(&d).await;
            for _ in 0..10 {
                yield_now().await;
            }
            work(&g);
        }
    });
    d.drain_async().await;
    assert!(d.is_drained());
    assert_eq!(
        done(&p),
        1,
        "the drain completed before the holder task was done"
    );
    holder.await;
}

/// Owned guards held across `.await` by many tasks (which may move between threads between
/// polls): the drain waits for all of them, and refuses guards to tasks that come after.
async fn owned_guards_across_await<C: Counter>(spawn: Spawner) {
    const TASKS: usize = 16;
    let (d, p) = probe::<C>();
    let holders: Vec<_> = (0..TASKS)
        .map(|i| {
            let g = d.try_acquire_owned().unwrap();
            let d = Arc::clone(&d);
            spawn.spawn(async move {
                until_closed(&d).await;
                for _ in 0..(i % 5) * 3 {
                    yield_now().await;
                }
                // The guard still reads its value after all those awaits.
                assert!(done(&g) < TASKS);
                work(&g);
            })
        })
        .collect();
    d.drain_async().await;
    assert_eq!(
        done(&p),
        TASKS,
        "the drain completed with guards outstanding"
    );
    let late = spawn.spawn({
        let d = Arc::clone(&d);
        async move { assert!(d.try_acquire_owned().is_none(), "a guard after the drain") }
    });
    late.await;
    for h in holders {
        h.await;
    }
}

/// Several tasks awaiting one drain (and a `commit_async` of a `PendingDrain` taken meanwhile)
/// all complete, each seeing the drainable drained.
async fn several_waiters_of_one_drain<C: Counter>(spawn: Spawner) {
    const WAITERS: usize = 4;
    let (d, p) = probe::<C>();
    let completed = Arc::new(AtomicUsize::new(0));
    let g = d.try_acquire_owned().unwrap();
    let mut waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (d, p, completed) = (Arc::clone(&d), Arc::clone(&p), Arc::clone(&completed));
            spawn.spawn(async move {
                d.drain_async().await;
                assert!(d.is_drained());
                assert_eq!(done(&p), 1);
                completed.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    waiters.push(spawn.spawn({
        let (d, p, completed) = (Arc::clone(&d), Arc::clone(&p), Arc::clone(&completed));
        async move {
            until_closed(&d).await;
            d.prepare_drain().commit_async().await;
            assert!(d.is_drained());
            assert_eq!(done(&p), 1);
            completed.fetch_add(1, Ordering::Relaxed);
        }
    }));
    until_closed(&d).await;
    // Let the waiters get to their first polls (not needed for the test to pass: a waiter
    // polled after the release completes at once).
    for _ in 0..20 {
        yield_now().await;
    }
    assert_eq!(
        completed.load(Ordering::Relaxed),
        0,
        "a waiter completed with a guard held"
    );
    let releaser = thread::spawn(move || {
        work(&g);
        drop(g);
    });
    for w in waiters {
        w.await;
    }
    assert_eq!(completed.load(Ordering::Relaxed), WAITERS + 1);
    releaser.join().unwrap();
}

/// `prepare_drain` closes at once; `commit_async` then waits for the guard released on another
/// thread.
async fn commit_async_waits_for_the_last_guard<C: Counter>(_: Spawner) {
    let (d, p) = probe::<C>();
    let releaser = release_when_closed(&d);
    let pending = d.prepare_drain();
    assert!(!d.is_open() && d.try_acquire().is_none());
    assert_eq!(pending.outstanding(), 1);
    pending.commit_async().await;
    assert!(d.is_drained());
    assert_eq!(
        done(&p),
        1,
        "the commit completed before the last guard's work was done"
    );
    releaser.join().unwrap();
}

/// Cancelling (dropping after a `Pending` poll) a drain or a commit undoes its close; a later
/// drain of the same drainable works.
async fn cancelled_drain_and_commit_reopen<C: Counter>(_: Spawner) {
    let (d, p) = probe::<C>();
    let g = d.try_acquire_owned().unwrap();
    assert_eq!(
        poll_once(d.drain_async()).await,
        None,
        "completed with a guard held"
    );
    assert!(
        d.is_open() && !d.is_drained(),
        "the cancelled drain left it closed"
    );
    let g2 = d.try_acquire_owned().expect("open again after the cancel");
    drop(g2);
    let pending = d.prepare_drain();
    assert_eq!(poll_once(pending.commit_async()).await, None);
    assert!(d.is_open(), "the cancelled commit left it closed");
    // A cancelled future left nothing behind that a later drain trips on.
    let releaser = release_when_closed(&d);
    drop(g);
    d.drain_async().await;
    assert!(d.is_drained());
    assert_eq!(done(&p), 1);
    releaser.join().unwrap();
}

/// Drain, reopen, drain again, many times, with the last guard released by another task each
/// time: no state from one drain leaks into the next.
async fn drain_reopen_cycles<C: Counter>(spawn: Spawner) {
    const CYCLES: usize = 50;
    let (d, p) = probe::<C>();
    for cycle in 1..=CYCLES {
        let g = d.try_acquire_owned().expect("reopened");
        let holder = spawn.spawn({
            let d = Arc::clone(&d);
            async move {
                until_closed(&d).await;
                work(&g);
            }
        });
        d.drain_async().await;
        assert_eq!(done(&p), cycle);
        holder.await;
        assert!(d.reopen(), "cycle {cycle}: drained, so reopen must succeed");
    }
}

macro_rules! every_scenario {
    ($counter:ty) => {
        crate::support::on_every_executor!(
            no_guard_completes_at_first_poll::<$counter>,
            an_unpolled_drain_changes_nothing::<$counter>,
            last_guard_on_os_thread::<$counter>,
            last_guard_in_another_task::<$counter>,
            owned_guards_across_await::<$counter>,
            several_waiters_of_one_drain::<$counter>,
            commit_async_waits_for_the_last_guard::<$counter>,
            cancelled_drain_and_commit_reopen::<$counter>,
            drain_reopen_cycles::<$counter>,
        );
    };
}

mod shared {
    every_scenario!(drainable::Shared);
}

mod per_cpu {
    every_scenario!(drainable::PerCpu);
}

// ---- tokio's timeout: "unload or fail" ---------------------------------------------------------

/// `tokio::time::timeout(limit, d.drain_async())` with a guard held past the limit: times out,
/// and the drainable is open again (new guards can be taken); once the guard is gone a later
/// drain completes. The same for `commit_async`.
async fn timeout_is_unload_or_fail<C: Counter>(spawn: Spawner) {
    let (d, p) = probe::<C>();
    let g = d.try_acquire_owned().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = spawn.spawn(async move {
        let _ = released.await; // held across this await
        work(&g);
    });

    let failed = tokio::time::timeout(Duration::from_millis(20), d.drain_async()).await;
    assert!(failed.is_err(), "drained with a guard held");
    assert!(
        d.is_open() && !d.is_drained(),
        "a timed-out drain left it closed"
    );
    let g2 = d.try_acquire_owned().expect("open again after the timeout");

    let failed =
        tokio::time::timeout(Duration::from_millis(5), d.prepare_drain().commit_async()).await;
    assert!(failed.is_err(), "committed with guards held");
    assert!(d.is_open(), "a timed-out commit left it closed");

    drop(g2);
    release.send(()).unwrap();
    let ok = tokio::time::timeout(Duration::from_secs(30), d.drain_async()).await;
    assert!(ok.is_ok() && d.is_drained());
    assert_eq!(done(&p), 1);
    holder.await;
}

/// Send: both futures can be spawned on the multi-thread runtime (checked at compile time).
fn assert_send<T: Send>(t: T) -> T {
    t
}

#[test]
fn the_futures_are_send() {
    let d = drainable::Drainable::new(1u32);
    let pd = drainable::PerCpuDrainable::new(1u32);
    drop(assert_send(d.drain_async()));
    drop(assert_send(pd.drain_async()));
    drop(assert_send(d.prepare_drain().commit_async()));
    drop(assert_send(pd.prepare_drain().commit_async()));
    assert!(d.is_open() && pd.is_open());
}

#[test]
fn timeout_is_unload_or_fail_tokio_multi_thread_shared() {
    run(tokio_multi_thread, |s| {
        Box::pin(timeout_is_unload_or_fail::<Shared>(s))
    });
}

#[test]
fn timeout_is_unload_or_fail_tokio_multi_thread_per_cpu() {
    run(tokio_multi_thread, |s| {
        Box::pin(timeout_is_unload_or_fail::<PerCpu>(s))
    });
}

#[test]
fn timeout_is_unload_or_fail_tokio_current_thread_shared() {
    run(tokio_current_thread, |s| {
        Box::pin(timeout_is_unload_or_fail::<Shared>(s))
    });
}

#[test]
fn timeout_is_unload_or_fail_tokio_current_thread_per_cpu() {
    run(tokio_current_thread, |s| {
        Box::pin(timeout_is_unload_or_fail::<PerCpu>(s))
    });
}
