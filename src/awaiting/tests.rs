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
        assert!(!d.state.is_waiting(), "WAITING was left set by the cancelled future");
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

mod grace {
    use super::*;
    use crate::test_support::hold_on_thread;
    use crate::{GraceCell, GraceDomain};

    /// Counts its drops in a shared counter ('static, as `replace_async` needs).
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn synchronize_async_waits_for_a_section_that_began_before_its_first_poll() {
        let d = GraceDomain::new();
        let (count, waker) = counting_waker();
        thread::scope(|s| {
            let release = hold_on_thread(s, || d.enter());
            let mut f = pin!(d.synchronize_async());
            assert_eq!(
                f.as_mut().poll(&mut Context::from_waker(&waker)),
                Poll::Pending
            );
            drop(release);
            while count.0.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            while f
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
            {
                thread::yield_now();
            }
        });
        // A section that begins after the grace period does not hold up a later one forever.
        pollster::block_on(d.synchronize_async());
    }

    #[test]
    fn an_unpolled_replace_publishes_nothing_and_drops_its_value() {
        let drops = Arc::new(AtomicUsize::new(0));
        let c = GraceCell::new(Dropped(drops.clone()));
        let f = c.replace_async(Dropped(drops.clone()));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(f);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the unpublished value is dropped"
        );
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn replace_async_returns_the_old_value_once_its_readers_left() {
        let c = GraceCell::new(String::from("v1"));
        let (count, waker) = counting_waker();
        thread::scope(|s| {
            let release = hold_on_thread(s, || c.read());
            let mut f = pin!(c.replace_async(String::from("v2")));
            assert!(
                f.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            assert_eq!(*c.read(), "v2", "published at the first poll");
            drop(release);
            while count.0.load(Ordering::SeqCst) == 0 {
                thread::yield_now();
            }
            let old = loop {
                if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
                    break v;
                }
                thread::yield_now();
            };
            assert_eq!(old, "v1");
        });
    }

    /// A replace dropped between its publish and its grace period's end: the old value is not
    /// dropped while a reader can still see it, and is dropped exactly once afterwards.
    #[test]
    fn a_cancelled_replace_defers_the_old_value_to_the_domain() {
        let drops = Arc::new(AtomicUsize::new(0));
        let c = GraceCell::new(Dropped(drops.clone()));
        let (_count, waker) = counting_waker();
        thread::scope(|s| {
            // The reader sees the first value, and holds its section.
            let release = hold_on_thread(s, || c.read());
            let mut f = Box::pin(c.replace_async(Dropped(drops.clone())));
            assert!(
                f.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            drop(f);
            // Other calls on the domain while the reader is inside drop nothing.
            assert!(
                !c.domain()
                    .poll_grace_period(c.domain().start_grace_period())
            );
            assert_eq!(
                drops.load(Ordering::SeqCst),
                0,
                "dropped while a reader could see it"
            );
            drop(release);
        });
        c.domain().synchronize();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "dropped once the grace period ended"
        );
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    /// With nobody calling the domain again, the deferred value goes with the cell.
    #[test]
    fn a_deferred_value_is_dropped_with_the_domain() {
        let drops = Arc::new(AtomicUsize::new(0));
        let c = GraceCell::new(Dropped(drops.clone()));
        let (_count, waker) = counting_waker();
        thread::scope(|s| {
            let release = hold_on_thread(s, || c.read());
            let mut f = Box::pin(c.replace_async(Dropped(drops.clone())));
            assert!(
                f.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            drop(f);
            drop(release);
        });
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(c);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    /// Writers wait for each other's swaps only: a second writer publishes while the first
    /// one's grace period is still held up by a reader, and they share grace periods.
    #[test]
    fn a_writer_does_not_wait_for_another_writers_grace_period() {
        let c = GraceCell::new(1);
        let (_count, waker) = counting_waker();
        thread::scope(|s| {
            let release = hold_on_thread(s, || c.read());
            let first = s.spawn(|| c.replace(2));
            while *c.read() != 2 {
                thread::yield_now();
            }
            let mut second = Box::pin(c.replace_async(3));
            assert!(
                second
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            assert_eq!(
                *c.read(),
                3,
                "the second writer published during the first's wait"
            );
            drop(release);
            assert_eq!(first.join().unwrap(), 1);
            assert_eq!(pollster::block_on(second), 2);
        });
    }

    #[test]
    fn an_owned_read_moves_to_another_thread_and_holds_up_the_grace_period() {
        let c = Arc::new(GraceCell::new(String::from("v1")));
        let g = c.read_owned();
        assert!(
            !c.domain()
                .poll_grace_period(c.domain().start_grace_period())
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = thread::spawn(move || {
            assert_eq!(*g, "v1");
            rx.recv().unwrap();
            drop(g);
        });
        let cookie = c.domain().start_grace_period();
        assert!(!c.domain().poll_grace_period(cookie));
        tx.send(()).unwrap();
        reader.join().unwrap();
        // The section has ended: a grace period completes (a poll may need a second pass to
        // complete the one in flight and then the cookie's).
        c.domain().synchronize();
        assert!(c.domain().poll_grace_period(cookie));
        assert_eq!(pollster::block_on(c.replace_async("v2".into())), "v1");
    }
}

mod registry {
    use super::*;
    use crate::{PerCpu, Registry};

    fn noop() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    macro_rules! both_registries {
        ($($name:ident: |$r:ident| $body:block)*) => {
            mod shared {
                use super::*;
                $( #[test] fn $name() { let $r = Arc::new(Registry::<String>::new()); $body } )*
            }
            mod per_cpu {
                use super::*;
                $( #[test] fn $name() {
                    let $r = Arc::new(Registry::<String, PerCpu>::with_counter()); $body
                } )*
            }
        };
    }

    both_registries! {
        unregister_async_waits_for_the_call_in_flight: |r| {
            let h = r.register("a".into());
            let call = r.get_owned(h.id()).unwrap();
            let (count, waker) = counting_waker();
            let mut f = Box::pin(r.unregister_async(h));
            assert!(f.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            assert_eq!(r.iter().count(), 0, "closed at the first poll");
            thread::spawn(move || drop(call)).join().unwrap();
            assert!(count.0.load(Ordering::SeqCst) >= 1);
            assert_eq!(pollster::block_on(f), "a");
            assert!(r.is_empty());
        }

        an_unpolled_unregister_changes_nothing_and_parks_its_registration: |r| {
            let h = r.register("a".into());
            let id = h.id();
            drop(r.unregister_async(h));
            assert_eq!(r.iter().count(), 1);
            let h = r.recover(id).expect("parked");
            assert_eq!(r.unregister(h), "a");
        }

        a_cancelled_unregister_keeps_the_entry_and_its_registration: |r| {
            let h = r.register("a".into());
            let id = h.id();
            let call = r.get(id).unwrap();
            let mut f = Box::pin(r.unregister_async(h));
            assert!(f.as_mut().poll(&mut noop()).is_pending());
            drop(f);
            drop(call);
            assert_eq!(r.iter().count(), 1, "live again");
            assert!(r.get(id).is_some(), "the id still names the entry");
            let h = r.recover(id).expect("parked");
            assert!(r.recover(id).is_none());
            assert_eq!(pollster::block_on(r.unregister_async(h)), "a");
            assert!(r.recover(id).is_none());
        }

        a_cancelled_commit_removal_undoes_and_parks: |r| {
            let h = r.register("a".into());
            let id = h.id();
            let call = r.get(id).unwrap();
            let mut f = Box::pin(r.prepare_unregister(h).commit_async());
            assert!(f.as_mut().poll(&mut noop()).is_pending());
            drop(f);
            drop(call);
            assert_eq!(r.iter().count(), 1);
            let p = r.prepare_unregister(r.recover(id).unwrap());
            assert_eq!(pollster::block_on(p.commit_async()), "a");
        }

        unregister_all_async_is_all_or_nothing: |r| {
            let hs: Vec<_> = ["a", "b", "c"].iter().map(|s| r.register(s.to_string())).collect();
            let ids: Vec<_> = hs.iter().map(|h| h.id()).collect();
            // A call holds up "b" only.
            let call = r.get(ids[1]).unwrap();
            let mut f = Box::pin(r.unregister_all_async(hs));
            assert!(f.as_mut().poll(&mut noop()).is_pending());
            assert_eq!(r.iter().count(), 0, "all closed at the first poll");
            drop(call);
            drop(f); // "a" and "c" had drained: they come back too, values in place
            assert_eq!(r.iter().count(), 3);
            let hs: Vec<_> = ids.iter().map(|id| r.recover(*id).expect("parked")).collect();
            assert_eq!(pollster::block_on(r.unregister_all_async(hs)), ["a", "b", "c"]);
            assert!(r.is_empty());
        }

        an_owned_entry_guard_of_a_removed_or_reused_slot_is_none: |r| {
            let h = r.register("a".into());
            let old = h.id();
            r.unregister(h);
            let h = r.register("b".into());
            assert!(r.get_owned(old).is_none(), "a stale id found the slot's new occupant");
            let g = r.get_owned(h.id()).unwrap();
            assert_eq!(*g, "b");
            let other = Arc::new(Registry::<String>::new());
            let _ = other.register("x".into());
            assert!(other.get_owned(h.id()).is_none());
            drop(g);
            r.unregister(h);
        }
    }
}
