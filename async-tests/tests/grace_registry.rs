//! The grace-period and registry futures on the four executors (public API only):
//! `GraceDomain::synchronize_async`, `GraceCell::replace_async` and `read_owned`;
//! `Registry::unregister_async`, `unregister_all_async`, `PendingRemoval::commit_async` and
//! `get_owned`, for both counters.
//!
//! As in `executors.rs`: the work done under a read section or a call is counted there and read
//! right after the future completes, so a future that completes too early fails; a cancelled
//! removal must leave its entry live and its registration recoverable; a cancelled replace must
//! not drop the old value while a reader still sees it.

mod support;

use drainable::{Counter, EntryId, GraceCell, PerCpu, Registry, Shared};
use futures_lite::future::{poll_once, yield_now};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;
use support::{Spawner, run, tokio_current_thread, tokio_multi_thread};

type Probe = Arc<AtomicUsize>;

fn work(p: &Probe) {
    // Relaxed: the future's completion orders it.
    p.fetch_add(1, Ordering::Relaxed);
}

fn done(p: &Probe) -> usize {
    p.load(Ordering::Relaxed)
}

/// On a plain OS thread, once `ready()` holds and a little longer (so the awaiting task has
/// gone to sleep): does the work and drops `hold`, the last one.
fn release_when<H: Send + 'static>(
    hold: H,
    probe: Probe,
    ready: impl Fn() -> bool + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !ready() {
            thread::sleep(Duration::from_micros(100));
        }
        thread::sleep(Duration::from_millis(5));
        work(&probe);
        drop(hold);
    })
}

// ---- grace periods -----------------------------------------------------------------------------

/// A value that counts its drops and says which generation it is.
struct Val {
    generation: u32,
    alive: AtomicBool,
    drops: Arc<AtomicUsize>,
}

fn val(generation: u32) -> (Val, Arc<AtomicUsize>) {
    let drops = Arc::new(AtomicUsize::new(0));
    let v = Val {
        generation,
        alive: AtomicBool::new(true),
        drops: Arc::clone(&drops),
    };
    (v, drops)
}

impl Drop for Val {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

fn drops(d: &Arc<AtomicUsize>) -> usize {
    d.load(Ordering::SeqCst)
}

async fn synchronize_with_no_reader_completes_at_first_poll(_: Spawner) {
    let cell = GraceCell::new(1u32);
    assert_eq!(poll_once(cell.domain().synchronize_async()).await, Some(()));
}

/// A read section (an owned read guard) held on a plain OS thread: `synchronize_async`
/// completes only after it ends, and sees its work.
async fn synchronize_waits_for_a_reader_on_an_os_thread(_: Spawner) {
    let p = Probe::default();
    let cell = Arc::new(GraceCell::new(Arc::clone(&p)));
    let section = cell.read_owned();
    let asked = Arc::new(AtomicBool::new(false));
    let reader = release_when(section, Arc::clone(&p), {
        let asked = Arc::clone(&asked);
        move || asked.load(Ordering::SeqCst)
    });
    let sync = cell.domain().synchronize_async();
    asked.store(true, Ordering::SeqCst);
    sync.await;
    assert_eq!(
        done(&p),
        1,
        "the grace period ended before the reader's section did"
    );
    reader.join().unwrap();
}

/// Read guards held across `.await` by other tasks; several tasks synchronize at once, and all
/// complete after every reader has left.
async fn several_synchronizers_and_readers_across_await(spawn: Spawner) {
    const READERS: usize = 4;
    let p = Probe::default();
    let cell = Arc::new(GraceCell::new(Arc::clone(&p)));
    let go = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let section = cell.read_owned();
            let go = Arc::clone(&go);
            spawn.spawn(async move {
                while !go.load(Ordering::SeqCst) {
                    yield_now().await;
                }
                for _ in 0..i * 4 {
                    yield_now().await;
                }
                work(&section);
            })
        })
        .collect();
    let syncs: Vec<_> = (0..3)
        .map(|_| {
            let (cell, p) = (Arc::clone(&cell), Arc::clone(&p));
            spawn.spawn(async move {
                cell.domain().synchronize_async().await;
                assert_eq!(
                    done(&p),
                    READERS,
                    "a grace period ended with a reader inside"
                );
            })
        })
        .collect();
    for _ in 0..20 {
        yield_now().await;
    }
    go.store(true, Ordering::SeqCst);
    for s in syncs {
        s.await;
    }
    for r in readers {
        r.await;
    }
}

/// `replace_async` publishes at its first poll, then completes with the old value only once the
/// reader of the old value (on an OS thread) has left; the old value is intact until then.
async fn replace_async_waits_for_the_old_values_readers(spawn: Spawner) {
    let (v1, v1_drops) = val(1);
    let cell = Arc::new(GraceCell::new(v1));
    let old_reader = cell.read_owned();
    let p = Probe::default();
    let completed = Arc::new(AtomicBool::new(false));
    let (v2, v2_drops) = val(2);
    let replacer = spawn.spawn({
        let (cell, p, completed) = (Arc::clone(&cell), Arc::clone(&p), Arc::clone(&completed));
        async move {
            let old = cell.replace_async(v2).await;
            completed.store(true, Ordering::SeqCst);
            assert_eq!(old.generation, 1);
            assert_eq!(
                done(&p),
                1,
                "the old value came back while a reader still saw it"
            );
            assert!(old.alive.load(Ordering::Relaxed));
        }
    });
    while cell.read().generation != 2 {
        yield_now().await;
    }
    for _ in 0..20 {
        yield_now().await;
    }
    assert!(
        !completed.load(Ordering::SeqCst),
        "completed with a reader of the old value"
    );
    assert_eq!(old_reader.generation, 1);
    assert!(old_reader.alive.load(Ordering::Relaxed));
    assert_eq!(drops(&v1_drops), 0);
    let reader = release_when(old_reader, Arc::clone(&p), || true);
    replacer.await;
    assert_eq!(
        drops(&v1_drops),
        1,
        "the old value was given back and then dropped"
    );
    assert_eq!(drops(&v2_drops), 0);
    reader.join().unwrap();
}

/// Dropped unpolled, `replace_async` drops the value it was given and leaves the cell as it was.
async fn an_unpolled_replace_changes_nothing(_: Spawner) {
    let (v1, v1_drops) = val(1);
    let cell = GraceCell::new(v1);
    let (v2, v2_drops) = val(2);
    drop(cell.replace_async(v2));
    assert_eq!(cell.read().generation, 1);
    assert_eq!((drops(&v1_drops), drops(&v2_drops)), (0, 1));
}

/// Cancelled after it published (a reader of the old value still inside), `replace_async`
/// hands the old value to the domain: not dropped while the reader sees it, dropped (once) by a
/// later call on the domain after the grace period.
async fn a_cancelled_replace_defers_the_old_values_drop(_: Spawner) {
    let (v1, v1_drops) = val(1);
    let cell = Arc::new(GraceCell::new(v1));
    let old_reader = cell.read_owned();
    let (v2, v2_drops) = val(2);
    assert!(
        poll_once(cell.replace_async(v2)).await.is_none(),
        "completed with a reader"
    );
    assert_eq!(cell.read().generation, 2, "published at the first poll");
    yield_now().await;
    assert_eq!(
        drops(&v1_drops),
        0,
        "the old value was dropped under its reader"
    );
    assert!(old_reader.alive.load(Ordering::Relaxed) && old_reader.generation == 1);
    drop(old_reader);
    cell.domain().synchronize_async().await;
    assert_eq!(
        drops(&v1_drops),
        1,
        "the domain did not drop the old value after the grace period"
    );
    assert_eq!(drops(&v2_drops), 0);
    drop(cell);
    assert_eq!((drops(&v1_drops), drops(&v2_drops)), (1, 1));
}

mod grace {
    crate::support::on_every_executor!(
        synchronize_with_no_reader_completes_at_first_poll,
        synchronize_waits_for_a_reader_on_an_os_thread,
        several_synchronizers_and_readers_across_await,
        replace_async_waits_for_the_old_values_readers,
        an_unpolled_replace_changes_nothing,
        a_cancelled_replace_defers_the_old_values_drop,
    );
}

/// tokio's timeout around `synchronize_async` and `replace_async`: times out while a reader is
/// inside; the grace period completes later, and the timed-out replace's old value is dropped
/// by the domain, not under its reader.
async fn grace_timeouts(_: Spawner) {
    let (v1, v1_drops) = val(1);
    let cell = Arc::new(GraceCell::new(v1));
    let reader = cell.read_owned();
    let timed_out =
        tokio::time::timeout(Duration::from_millis(10), cell.domain().synchronize_async()).await;
    assert!(
        timed_out.is_err(),
        "a grace period ended with a reader inside"
    );
    let (v2, _) = val(2);
    let timed_out = tokio::time::timeout(Duration::from_millis(5), cell.replace_async(v2)).await;
    assert!(timed_out.is_err());
    assert_eq!(drops(&v1_drops), 0);
    assert!(reader.alive.load(Ordering::Relaxed));
    drop(reader);
    let ok = tokio::time::timeout(Duration::from_secs(30), cell.domain().synchronize_async()).await;
    assert!(ok.is_ok());
    assert_eq!(drops(&v1_drops), 1);
}

// ---- registries --------------------------------------------------------------------------------

type Entry = (u32, Probe);
type R<C> = Arc<Registry<Entry, C>>;

fn registry<C: Counter>() -> (R<C>, Probe) {
    (Arc::new(Registry::with_counter()), Probe::default())
}

/// Whether the entry refuses new calls (closed by a removal, or gone).
fn closed<C: Counter>(r: &R<C>, id: EntryId) -> bool {
    r.get(id).is_none()
}

/// A call in flight (an owned entry guard) on a plain OS thread: `unregister_async` completes
/// with the value only after it returned, and the entry is gone.
async fn unregister_waits_for_a_call_on_an_os_thread<C: Counter>(_: Spawner) {
    let (r, p) = registry::<C>();
    let h = r.register((7, Arc::clone(&p)));
    let id = h.id();
    let call = r.get_owned(id).unwrap();
    let caller = release_when(call, Arc::clone(&p), {
        let r = Arc::clone(&r);
        move || closed(&r, id)
    });
    let (tag, value) = r.unregister_async(h).await;
    assert_eq!(tag, 7);
    assert!(Arc::ptr_eq(&value, &p));
    assert_eq!(
        done(&p),
        1,
        "the removal completed while a call was in flight"
    );
    assert!(r.is_empty() && r.get(id).is_none() && r.get_owned(id).is_none());
    caller.join().unwrap();
}

/// Calls held across `.await` by other tasks.
async fn unregister_waits_for_calls_held_across_await<C: Counter>(spawn: Spawner) {
    const CALLS: usize = 6;
    let (r, p) = registry::<C>();
    let h = r.register((1, Arc::clone(&p)));
    let id = h.id();
    let callers: Vec<_> = (0..CALLS)
        .map(|i| {
            let call = r.get_owned(id).unwrap();
            let r = Arc::clone(&r);
            spawn.spawn(async move {
                while !closed(&r, id) {
                    yield_now().await;
                }
                for _ in 0..i * 3 {
                    yield_now().await;
                }
                work(&call.1);
            })
        })
        .collect();
    let (_, value) = r.unregister_async(h).await;
    assert_eq!(
        done(&value),
        CALLS,
        "the removal completed with calls in flight"
    );
    for c in callers {
        c.await;
    }
}

/// Cancelled (dropped after a `Pending` poll), `unregister_async` leaves the entry live and
/// the registration recoverable, once; the recovered registration then removes it.
async fn a_cancelled_unregister_keeps_the_entry<C: Counter>(_: Spawner) {
    let (r, p) = registry::<C>();
    let h = r.register((3, Arc::clone(&p)));
    let id = h.id();
    let call = r.get_owned(id).unwrap();
    assert!(
        poll_once(r.unregister_async(h)).await.is_none(),
        "completed during a call"
    );
    assert_eq!(r.len(), 1);
    assert!(
        !closed(&r, id),
        "the cancelled removal left the entry closed"
    );
    let h = r
        .recover(id)
        .expect("the cancelled removal lost the registration");
    assert!(r.recover(id).is_none(), "recovered twice");
    let caller = release_when(call, Arc::clone(&p), {
        let r = Arc::clone(&r);
        move || closed(&r, id)
    });
    let (tag, _) = r.unregister_async(h).await;
    assert_eq!(tag, 3);
    assert_eq!(done(&p), 1);
    assert!(r.is_empty());
    caller.join().unwrap();
}

/// `unregister_all_async` closes every entry at its first poll and completes with the values,
/// in the order of the registrations, once the calls into each have returned.
async fn unregister_all_waits_for_every_entry<C: Counter>(_: Spawner) {
    let (r, p) = registry::<C>();
    let hs: Vec<_> = (0..4).map(|i| r.register((i, Arc::clone(&p)))).collect();
    let ids: Vec<_> = hs.iter().map(|h| h.id()).collect();
    let callers: Vec<_> = [1, 3]
        .into_iter()
        .map(|i| {
            let r2 = Arc::clone(&r);
            let id = ids[i];
            release_when(r.get_owned(id).unwrap(), Arc::clone(&p), move || {
                closed(&r2, id)
            })
        })
        .collect();
    let values = r.unregister_all_async(hs).await;
    assert_eq!(values.iter().map(|v| v.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(
        done(&p),
        2,
        "completed while calls into some entries were in flight"
    );
    assert!(r.is_empty());
    for c in callers {
        c.join().unwrap();
    }
}

/// Cancelled, `unregister_all_async` leaves every entry live (those already drained too) and
/// every registration recoverable.
async fn a_cancelled_unregister_all_keeps_every_entry<C: Counter>(_: Spawner) {
    let (r, p) = registry::<C>();
    let hs: Vec<_> = (0..3).map(|i| r.register((i, Arc::clone(&p)))).collect();
    let ids: Vec<_> = hs.iter().map(|h| h.id()).collect();
    let call = r.get_owned(ids[2]).unwrap();
    assert!(poll_once(r.unregister_all_async(hs)).await.is_none());
    assert_eq!(r.len(), 3);
    for &id in &ids {
        assert!(
            !closed(&r, id),
            "an entry was left closed by the cancelled removal"
        );
    }
    let hs: Vec<_> = ids
        .iter()
        .map(|&id| r.recover(id).expect("a registration was lost"))
        .collect();
    drop(call);
    let values = r.unregister_all_async(hs).await;
    assert_eq!(values.iter().map(|v| v.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(r.is_empty());
}

/// `prepare_unregister` closes at once; `commit_async` completes after the call; a cancelled
/// `commit_async` leaves the entry live and the registration recoverable.
async fn commit_removal_async_and_its_cancel<C: Counter>(_: Spawner) {
    let (r, p) = registry::<C>();
    let h = r.register((5, Arc::clone(&p)));
    let id = h.id();
    let call = r.get_owned(id).unwrap();
    let pending = r.prepare_unregister(h);
    assert!(closed(&r, id), "prepare_unregister did not close the entry");
    assert!(poll_once(pending.commit_async()).await.is_none());
    assert!(
        !closed(&r, id),
        "the cancelled commit left the entry closed"
    );
    let h = r
        .recover(id)
        .expect("the cancelled commit lost the registration");
    let pending = r.prepare_unregister(h);
    let caller = release_when(call, Arc::clone(&p), || true);
    let (tag, _) = pending.commit_async().await;
    assert_eq!(tag, 5);
    assert_eq!(
        done(&p),
        1,
        "the commit completed while a call was in flight"
    );
    assert!(r.is_empty());
    caller.join().unwrap();
}

macro_rules! on_registry_executors {
    ($counter:ty) => {
        crate::support::on_every_executor!(
            unregister_waits_for_a_call_on_an_os_thread::<$counter>,
            unregister_waits_for_calls_held_across_await::<$counter>,
            a_cancelled_unregister_keeps_the_entry::<$counter>,
            commit_removal_async_and_its_cancel::<$counter>,
            unregister_all_waits_for_every_entry::<$counter>,
            a_cancelled_unregister_all_keeps_every_entry::<$counter>,
        );
    };
}

mod registry_shared {
    on_registry_executors!(drainable::Shared);
}

mod registry_per_cpu {
    on_registry_executors!(drainable::PerCpu);
}

/// `tokio::time::timeout(limit, r.unregister_async(h))` is "unload or fail": on timeout the
/// entry is live and its registration recoverable; later the removal succeeds.
async fn unregister_timeout_is_unload_or_fail<C: Counter>(_: Spawner) {
    let (r, p) = registry::<C>();
    let h = r.register((9, Arc::clone(&p)));
    let id = h.id();
    let call = r.get_owned(id).unwrap();
    let timed_out = tokio::time::timeout(Duration::from_millis(10), r.unregister_async(h)).await;
    assert!(timed_out.is_err(), "removed with a call in flight");
    assert!(!closed(&r, id));
    let h = r
        .recover(id)
        .expect("the timed-out removal lost the registration");
    drop(call);
    let removed = tokio::time::timeout(Duration::from_secs(30), r.unregister_async(h)).await;
    assert_eq!(removed.expect("no call in flight").0, 9);
    assert!(r.is_empty());
}

#[test]
fn grace_timeouts_tokio_multi_thread() {
    run(tokio_multi_thread, |s| Box::pin(grace_timeouts(s)));
}

#[test]
fn grace_timeouts_tokio_current_thread() {
    run(tokio_current_thread, |s| Box::pin(grace_timeouts(s)));
}

#[test]
fn unregister_timeout_tokio_multi_thread_shared() {
    run(tokio_multi_thread, |s| {
        Box::pin(unregister_timeout_is_unload_or_fail::<Shared>(s))
    });
}

#[test]
fn unregister_timeout_tokio_multi_thread_per_cpu() {
    run(tokio_multi_thread, |s| {
        Box::pin(unregister_timeout_is_unload_or_fail::<PerCpu>(s))
    });
}

#[test]
fn unregister_timeout_tokio_current_thread_shared() {
    run(tokio_current_thread, |s| {
        Box::pin(unregister_timeout_is_unload_or_fail::<Shared>(s))
    });
}

/// Send (and so spawnable on a multi-thread runtime) and `'static` where they must be:
/// checked at compile time.
#[test]
fn the_futures_and_owned_guards_are_send() {
    fn send<T: Send>(t: T) -> T {
        t
    }
    fn send_static<T: Send + 'static>(t: T) -> T {
        t
    }
    let cell = Arc::new(GraceCell::new(String::from("v1")));
    drop(send(cell.domain().synchronize_async()));
    drop(send(cell.replace_async(String::from("v2"))));
    drop(send_static(cell.read_owned()));
    let r: Arc<Registry<String, Shared>> = Arc::new(Registry::new());
    let h = r.register(String::from("e"));
    drop(send_static(r.get_owned(h.id()).unwrap()));
    let values = futures::executor::block_on(send(r.unregister_all_async([h])));
    assert_eq!(values, ["e"]);
    let h = r.register(String::from("f"));
    assert_eq!(
        futures::executor::block_on(send(r.unregister_async(h))),
        "f"
    );
    assert_eq!(cell.read().as_str(), "v1");
}
