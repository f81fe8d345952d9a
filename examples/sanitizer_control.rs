//! Positive controls for the sanitizer runs in `.ci/run`: each one commits, on purpose, the
//! kind of bug its sanitizer exists to find, so that CI can check the sanitizer really is on
//! and really reports. A sanitizer step that passes the library's tests proves nothing if the
//! instrumentation was silently missing (a flag dropped, a std not rebuilt, a report that does
//! not fail the process); this program must make that same step fail.
//!
//! ```text
//! sanitizer_control race             # a data race: ThreadSanitizer must report it
//! sanitizer_control use-after-free   # a heap use-after-free: AddressSanitizer must report it
//! sanitizer_control leak             # a leaked allocation: LeakSanitizer (part of ASan) too
//! ```
//!
//! With no argument (as `cargo run --example sanitizer_control` would run it) it prints this
//! usage and exits successfully without doing anything. Only the arguments above run the
//! planted bugs; the first two are undefined behaviour: run them only under the matching
//! sanitizer, which stops the process at the report. `cargo test` builds this example but
//! never runs it.

use std::cell::UnsafeCell;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;

const USAGE: &str = "usage: sanitizer_control race|use-after-free|leak  \
                     (deliberate undefined behaviour: run it only under ThreadSanitizer / \
                     AddressSanitizer, see .ci/run)";

/// A word shared between threads with no synchronisation at all.
struct Unsynchronised(UnsafeCell<u64>);

// SAFETY: this is the planted bug. Nothing makes sharing it sound; the `race` control shares
// it precisely so that two threads write it at once.
unsafe impl Sync for Unsynchronised {}

/// Two threads write the same plain (non-atomic) word through a raw pointer, with nothing
/// ordering the writes: ThreadSanitizer must report "ThreadSanitizer: data race".
///
/// A barrier starts both; then each writes once, says so through a *relaxed* flag (which
/// ThreadSanitizer rightly does not count as synchronisation) and waits for the other's flag
/// before writing again. So the second writes certainly overlap the other thread's writes
/// while both threads are alive, and no lock or fence in between orders them. (Simpler
/// versions detect unreliably: a loop of writes after `Barrier::wait` is often ordered after
/// the other thread's writes by that barrier's own mutex, and ThreadSanitizer ignores
/// volatile accesses altogether; both checked with this toolchain.)
fn race() {
    let word = Unsynchronised(UnsafeCell::new(0));
    let start = Barrier::new(2);
    let wrote = [AtomicBool::new(false), AtomicBool::new(false)];
    thread::scope(|s| {
        for t in 0..2 {
            let (word, start, wrote) = (&word, &start, &wrote);
            s.spawn(move || {
                let p = word.0.get();
                start.wait();
                // SAFETY: none: these unsynchronised writes race with the other thread's, on
                // purpose. Plain writes (not volatile: see above); `black_box` keeps the first
                // one from being folded into the second.
                unsafe { *p = black_box(t as u64) };
                wrote[t].store(true, Relaxed);
                while !wrote[1 - t].load(Relaxed) {
                    std::hint::spin_loop();
                }
                // SAFETY: none, as above.
                unsafe { *p = black_box(t as u64 + 2) };
            });
        }
    });
    // SAFETY: both writers have been joined.
    println!("raced; last value {}", unsafe { *word.0.get() });
}

/// Frees a heap allocation, then reads it. AddressSanitizer must report
/// "heap-use-after-free".
fn use_after_free() {
    let p: *const u64 = Box::into_raw(Box::new(0xA11C_E5ED_u64));
    // SAFETY: `p` came from `Box::into_raw` and is freed exactly once, here.
    drop(unsafe { Box::from_raw(p as *mut u64) });
    // SAFETY: none: `p` was freed just above; this read is the planted use-after-free
    // (volatile so that it is not optimised away).
    let v = unsafe { p.read_volatile() };
    println!("read {v:#x} from freed memory");
}

/// Loses the only pointer to a heap allocation. Not undefined behaviour, but LeakSanitizer
/// (on by default with AddressSanitizer on Linux) must report "detected memory leaks" at exit,
/// which shows the ASan runs would also catch a leak.
fn leak() {
    std::mem::forget(black_box(Box::new([0xA11C_E5ED_u64; 16])));
    println!("leaked 128 bytes");
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("race") => race(),
        Some("use-after-free") => use_after_free(),
        Some("leak") => leak(),
        None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("unknown control {other:?}; {USAGE}");
            return ExitCode::from(2);
        }
    }
    // Reached only if no sanitizer stopped the process at the bug (none is on, or it reports
    // without halting). Fail either way: the bug is never a success.
    eprintln!(
        "sanitizer_control: the planted bug ran to completion; unless a sanitizer report \
         precedes this line (or, for the leak, follows it at exit), it was NOT caught"
    );
    ExitCode::FAILURE
}
