//! The 2003 proposal's scenario, end to end: a callback with private data is registered, called
//! from several threads, then unregistered by draining, and its data freed the moment the drain
//! returns. Prints what happened and checks that no call ran after the unregister returned.
//!
//! ```text
//! cargo run --release --example unregister [-- <threads> <milliseconds>]
//! ```

use drainable::Drainable;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The callback's private data (`my_data` in the 2003 thread). Poisoned on drop, so a call that
/// ran after the data was freed would see it.
struct MyData {
    blah: AtomicU64,
}

const ALIVE: u64 = 0x600D_DA7A;
const FREED: u64 = 0xDEAD_DA7A;

impl Drop for MyData {
    fn drop(&mut self) {
        self.blah.store(FREED, Ordering::SeqCst);
    }
}

#[inline(never)]
fn foo_callback(data: &MyData) -> bool {
    data.blah.load(Ordering::Relaxed) == ALIVE
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let millis: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);

    // register_foo(&hook)
    let hook = Arc::new(Drainable::new(MyData {
        blah: AtomicU64::new(ALIVE),
    }));
    let unregistered = Arc::new(AtomicBool::new(false));
    let bad_calls = Arc::new(AtomicU64::new(0));

    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (hook, unregistered, bad) = (
                Arc::clone(&hook),
                Arc::clone(&unregistered),
                Arc::clone(&bad_calls),
            );
            thread::spawn(move || {
                let (mut calls, mut refused) = (0u64, 0u64);
                loop {
                    match hook.try_acquire() {
                        Some(data) => {
                            // A call that starts after unregister returned, or sees freed data,
                            // is exactly the oops the thread was about.
                            if unregistered.load(Ordering::SeqCst) || !foo_callback(&data) {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                            calls += 1;
                        }
                        None => {
                            refused += 1;
                            if refused > 1000 {
                                return (calls, refused);
                            }
                        }
                    }
                }
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(millis));

    // foo_exit(): deregister(...); kfree(my_data);
    let t = Instant::now();
    hook.drain();
    let drain_time = t.elapsed();
    unregistered.store(true, Ordering::SeqCst);

    let mut calls = 0;
    for c in callers {
        calls += c.join().expect("caller panicked").0;
    }
    let data = Arc::try_unwrap(hook)
        .ok()
        .expect("callers are gone")
        .into_inner();
    drop(data); // kfree(my_data)

    let bad = bad_calls.load(Ordering::Relaxed);
    println!("threads:              {threads}");
    println!("callbacks run:        {calls} in {millis} ms");
    println!("unregister (drain):   {drain_time:?} under load");
    println!("calls after drain or on freed data: {bad}");
    if bad != 0 {
        eprintln!("FAILED: a callback ran after unregister returned");
        std::process::exit(1);
    }
    println!("ok: no callback ran after unregister returned; data freed right after it");
}
