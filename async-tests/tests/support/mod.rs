//! The executors every scenario runs on, and the watchdog that turns a hang into a failure.
//! Shared by the test files (each `mod support;`).

#![allow(dead_code)] // each test file uses a part

use futures::task::SpawnExt;
use std::future::Future;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Spawns a task on the executor the scenario runs on; the returned future is its join
/// (re-raising the task's panic).
#[derive(Clone)]
pub struct Spawner(pub Arc<dyn Fn(Task) -> Task + Send + Sync>);

impl Spawner {
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) -> Task {
        (self.0)(Box::pin(f))
    }
}

pub type Scenario = fn(Spawner) -> Task;

/// Runs `scenario` on `executor` on a thread of its own; a scenario that has not finished in a
/// minute (they take milliseconds) is a hang, most likely a lost wake-up, and fails the test.
pub fn run(executor: fn(Scenario), scenario: Scenario) {
    let (tx, rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        executor(scenario);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => runner.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => resume_unwind(runner.join().unwrap_err()),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the scenario did not finish within 60 s: a lost wake-up?")
        }
    }
}

fn tokio_spawner(handle: tokio::runtime::Handle) -> Spawner {
    Spawner(Arc::new(move |t| {
        let join = handle.spawn(t);
        Box::pin(async move {
            if let Err(e) = join.await {
                resume_unwind(e.into_panic());
            }
        })
    }))
}

/// The scenario is itself a task on the runtime (not the `block_on` future), so that it can
/// move between worker threads between polls.
fn on_tokio(rt: tokio::runtime::Runtime, scenario: Scenario) {
    let main = rt.spawn(scenario(tokio_spawner(rt.handle().clone())));
    if let Err(e) = rt.block_on(main) {
        resume_unwind(e.into_panic());
    }
}

pub fn tokio_multi_thread(scenario: Scenario) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    on_tokio(rt, scenario);
}

pub fn tokio_current_thread(scenario: Scenario) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    on_tokio(rt, scenario);
}

/// `async-executor` (the executor of smol), run by this thread and one more.
pub fn smol(scenario: Scenario) {
    let ex = Arc::new(async_executor::Executor::new());
    let (stop, stopped) = futures::channel::oneshot::channel::<()>();
    let helper = {
        let ex = Arc::clone(&ex);
        thread::spawn(move || {
            futures_lite::future::block_on(ex.run(async {
                let _ = stopped.await;
            }))
        })
    };
    let spawner = {
        let ex = Arc::clone(&ex);
        Spawner(Arc::new(move |t| Box::pin(ex.spawn(t))))
    };
    let main = ex.spawn(scenario(spawner));
    futures_lite::future::block_on(ex.run(main));
    drop(stop);
    helper.join().unwrap();
}

/// `futures::executor::block_on` drives the scenario (and so every drain it awaits); spawned
/// tasks run on futures' thread pool.
pub fn futures_block_on(scenario: Scenario) {
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(2)
        .create()
        .unwrap();
    let spawner = Spawner(Arc::new(move |t| {
        Box::pin(pool.spawn_with_handle(t).expect("the pool is running"))
    }));
    futures::executor::block_on(scenario(spawner));
}

/// One `#[test]` per scenario on one executor, in a module named for the executor. A scenario
/// is a function at the test crate's root, `async fn(Spawner)`, with its type arguments.
macro_rules! on_executor {
    ($executor:ident: $($scenario:ident $(::<$counter:ty>)?),* $(,)?) => {
        mod $executor {
            $(
                #[test]
                fn $scenario() {
                    $crate::support::run($crate::support::$executor, |s| {
                        Box::pin($crate::$scenario $(::<$counter>)? (s))
                    });
                }
            )*
        }
    };
}

/// Each scenario on each of the four executors.
macro_rules! on_every_executor {
    ($($scenario:ident $(::<$counter:ty>)?),* $(,)?) => {
        $crate::support::on_executor!(tokio_multi_thread: $($scenario $(::<$counter>)?),*);
        $crate::support::on_executor!(tokio_current_thread: $($scenario $(::<$counter>)?),*);
        $crate::support::on_executor!(smol: $($scenario $(::<$counter>)?),*);
        $crate::support::on_executor!(futures_block_on: $($scenario $(::<$counter>)?),*);
    };
}

pub(crate) use {on_every_executor, on_executor};

/// A scenario whose own future is not `Send` (its spawned tasks are): driven by each
/// executor's `block_on` on the calling thread instead of spawned.
pub type LocalTask = Pin<Box<dyn Future<Output = ()> + 'static>>;
pub type LocalScenario = fn(Spawner) -> LocalTask;

#[derive(Clone, Copy, Debug)]
pub enum Executor {
    TokioMultiThread,
    TokioCurrentThread,
    Smol,
    FuturesBlockOn,
}

pub const EXECUTORS: [Executor; 4] = [
    Executor::TokioMultiThread,
    Executor::TokioCurrentThread,
    Executor::Smol,
    Executor::FuturesBlockOn,
];

/// Runs a [`LocalScenario`] on `executor`, under the same watchdog as [`run`].
pub fn run_local(executor: Executor, scenario: LocalScenario) {
    let (tx, rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        match executor {
            Executor::TokioMultiThread | Executor::TokioCurrentThread => {
                let rt = match executor {
                    Executor::TokioMultiThread => tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build(),
                    _ => tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build(),
                }
                .unwrap();
                let spawner = tokio_spawner(rt.handle().clone());
                rt.block_on(scenario(spawner));
            }
            Executor::Smol => {
                let ex = Arc::new(async_executor::Executor::new());
                let (stop, stopped) = futures::channel::oneshot::channel::<()>();
                let helper = {
                    let ex = Arc::clone(&ex);
                    thread::spawn(move || {
                        futures_lite::future::block_on(ex.run(async {
                            let _ = stopped.await;
                        }))
                    })
                };
                let spawner = {
                    let ex = Arc::clone(&ex);
                    Spawner(Arc::new(move |t| Box::pin(ex.spawn(t))))
                };
                futures_lite::future::block_on(ex.run(scenario(spawner)));
                drop(stop);
                helper.join().unwrap();
            }
            Executor::FuturesBlockOn => {
                let pool = futures::executor::ThreadPool::builder()
                    .pool_size(2)
                    .create()
                    .unwrap();
                let spawner = Spawner(Arc::new(move |t| {
                    Box::pin(pool.spawn_with_handle(t).expect("the pool is running"))
                }));
                futures::executor::block_on(scenario(spawner));
            }
        }
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => runner.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => resume_unwind(runner.join().unwrap_err()),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{executor:?}: the scenario did not finish within 60 s: a lost wake-up?")
        }
    }
}
