//! The futures polled by hand, with a waker that counts its wakes: laziness, cancellation,
//! several waiters, the wake from a release on another thread, for both counters.

use crate::platform::wakes;
use crate::{Drainable, PerCpuDrainable};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

struct Count(AtomicUsize);
impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Arc<Count>, Waker) {
    let c = Arc::new(Count(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}

/// Whether a guard of `d` can be taken and released on this thread without a futex wake.
///
/// A per-CPU guard's release wakes if any drainer is counted on this thread's record, and a
/// test thread's record may be one that an exited thread of another test gave back while a
/// drainer of that test was still counted on it (that drainer withdraws at its next poll or
/// wake-up: a spurious wake, once). So a release that wakes is retried for a while; only
/// wakes that never stop fail. Seen in a parallel `cargo test --workspace`, about once in
/// seven runs, before this retry.
fn releases_without_a_wake<C: crate::Counter>(d: &crate::DrainableWith<u32, C>) -> bool {
    (0..200).any(|_| {
        let before = wakes::made();
        drop(d.try_acquire().unwrap());
        let clean = wakes::made() == before;
        if !clean {
            thread::sleep(std::time::Duration::from_millis(1));
        }
        clean
    })
}

macro_rules! both_counters {
    ($($name:ident: |$d:ident| $body:block)*) => {
        mod shared {
            use super::*;
            $( #[test] fn $name() { let $d = Arc::new(Drainable::new(7u32)); $body } )*
        }
        mod per_cpu {
            use super::*;
            $( #[test] fn $name() { let $d = Arc::new(PerCpuDrainable::new(7u32)); $body } )*
        }
    };
}

both_counters! {
    an_unpolled_drain_changes_nothing: |d| {
        let f = d.drain_async();
        assert!(d.is_open());
        drop(f);
        assert!(d.is_open() && d.try_acquire().is_some());
    }

    a_drain_closes_at_its_first_poll_and_completes_at_the_last_release: |d| {
        let (count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let g = d.try_acquire_owned().unwrap();
        let mut f = pin!(d.drain_async());
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending);
        assert!(!d.is_open() && d.try_acquire().is_none());
        thread::spawn(move || drop(g)).join().unwrap();
        assert!(count.0.load(Ordering::SeqCst) >= 1, "the last release wakes the task");
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(()));
        assert!(d.is_drained());
    }

    a_cancelled_drain_reopens_like_a_timed_out_one: |d| {
        let (_count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let g = d.try_acquire().unwrap();
        {
            let mut f = pin!(d.drain_async());
            assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending);
            assert!(!d.is_open());
        }
        assert!(d.is_open(), "dropping the future undoes its close");
        drop(g);
        // Nothing is left behind: the next drain works, and no release pays a wake.
        assert!(
            releases_without_a_wake(&d),
            "the cancelled future left WAITING set, or its announcement on the record"
        );
        pollster::block_on(d.drain_async());
        assert!(d.is_drained());
    }

    a_cancelled_commit_undoes_and_a_later_commit_works: |d| {
        let (_count, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let g = d.try_acquire().unwrap();
        let mut f = Box::pin(d.prepare_drain().commit_async());
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Pending);
        drop(f);
        assert!(d.is_open());
        let p = d.prepare_drain();
        drop(g);
        pollster::block_on(p.commit_async());
        assert!(d.is_drained());
    }

    several_futures_awaiting_one_drain_all_complete: |d| {
        let wakers: Vec<_> = (0..3).map(|_| counting_waker()).collect();
        let g = d.try_acquire_owned().unwrap();
        let mut futures: Vec<_> = (0..3).map(|_| Box::pin(d.drain_async())).collect();
        for (f, (_, w)) in futures.iter_mut().zip(&wakers) {
            assert_eq!(f.as_mut().poll(&mut Context::from_waker(w)), Poll::Pending);
        }
        thread::spawn(move || drop(g)).join().unwrap();
        for (f, (count, w)) in futures.iter_mut().zip(&wakers) {
            assert!(count.0.load(Ordering::SeqCst) >= 1);
            assert_eq!(f.as_mut().poll(&mut Context::from_waker(w)), Poll::Ready(()));
        }
        assert!(d.is_drained());
    }

    a_drain_with_no_guard_completes_at_its_first_poll: |d| {
        let (count, waker) = counting_waker();
        let before = wakes::made();
        let mut f = pin!(d.drain_async());
        assert_eq!(f.as_mut().poll(&mut Context::from_waker(&waker)), Poll::Ready(()));
        assert_eq!(wakes::made(), before);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(d.is_drained());
    }

    an_async_drain_and_a_blocking_one_both_complete: |d| {
        let g = d.try_acquire_owned().unwrap();
        let d2 = Arc::clone(&d);
        let blocking = thread::spawn(move || d2.drain());
        let (_c, waker) = counting_waker();
        let mut f = Box::pin(d.drain_async());
        let _ = f.as_mut().poll(&mut Context::from_waker(&waker));
        thread::sleep(std::time::Duration::from_millis(10));
        drop(g);
        pollster::block_on(f);
        blocking.join().unwrap();
        assert!(d.is_drained());
    }
}

/// A future polled across threads (moved to another thread between polls) completes.
#[test]
fn the_futures_are_send_and_move_between_threads() {
    fn send<F: Send>(f: F) -> F {
        f
    }
    let d = Arc::new(PerCpuDrainable::new(String::from("x")));
    let g = d.try_acquire_owned().unwrap();
    let (_c, waker) = counting_waker();
    let d2 = Arc::clone(&d);
    let polled = thread::scope(|s| {
        let mut f = Box::pin(send(d2.drain_async()));
        assert_eq!(
            f.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        s.spawn(move || {
            drop(g);
            pollster::block_on(f);
        })
        .join()
        .unwrap();
        true
    });
    assert!(polled && d.is_drained());
}

/// A per-CPU guard counted in its thread's record (not a slot): the task waits on the record,
/// and the release on that thread wakes it.
#[test]
fn a_thread_local_guard_released_later_wakes_the_task() {
    let d = PerCpuDrainable::new(1u8);
    let (count, waker) = counting_waker();
    let (taken_tx, taken_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    thread::scope(|s| {
        let d = &d;
        s.spawn(move || {
            let g = d.try_acquire().unwrap();
            taken_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(g);
        });
        taken_rx.recv().unwrap();
        let mut f = pin!(d.drain_async());
        assert_eq!(
            f.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        assert_eq!(
            f.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Pending
        );
        release_tx.send(()).unwrap();
        while count.0.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        // Woken: the poll after the wake finds the entry clear.
        while f
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
        {
            thread::yield_now();
        }
    });
    assert!(d.is_drained());
}
