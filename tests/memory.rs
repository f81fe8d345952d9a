//! The per-instance memory of the per-CPU types at larger CPU counts than this machine's:
//! each test runs in a child process with `DRAINABLE_SLOTS` (read once per process) set, and
//! checks the figures the docs state (docs/design.md §6, the memory tables of
//! docs/benchmarks.md): no slots, so no growth with the CPU count, until a guard needs them;
//! then 8 bytes per slot, at most 64 slots.
#![cfg(all(target_os = "linux", not(miri)))] // Miri cannot spawn the child processes

mod child;

use drainable::{GraceCell, GraceDomain, PerCpuDrainable};
use std::sync::Arc;
use std::time::Duration;

const MARKER: &str = "memory figures hold";

/// Inline bytes of a `PerCpuDrainable<()>`: 56 in release builds; debug builds add the
/// deadlock detector's key (and its padding).
const INLINE: usize = if cfg!(debug_assertions) { 64 } else { 56 };

fn check(cpus: usize) {
    let slots = cpus.next_power_of_two().min(64);
    let d = Arc::new(PerCpuDrainable::new(()));
    assert_eq!(std::mem::size_of_val(&*d), INLINE);
    // Borrowed guards: counted in the thread's record where membarrier works (no slots).
    drop(d.try_acquire());
    let local = d.heap_bytes();
    assert!(
        local == 0 || local == 8 * slots,
        "slots, if any, are 8 bytes each: {local} for {slots} slots"
    );
    // An owned guard is always counted in the slots.
    drop(d.try_acquire_owned());
    assert_eq!(d.heap_bytes(), 8 * slots);
    if !cfg!(debug_assertions) {
        // The bound for the worst case: every guard in the slots.
        assert!(std::mem::size_of_val(&*d) + d.heap_bytes() <= 64 + 8 * slots);
    }

    let g = Arc::new(GraceDomain::new());
    assert_eq!(
        g.heap_bytes(),
        0,
        "a domain takes no slots before its first section"
    );
    drop(g.enter());
    let local = g.heap_bytes();
    assert!(
        local == 0 || local == 8 * slots,
        "a section on a record takes no slots; in the slots, 8 bytes each: {local}"
    );
    // Owned read guards are always counted in the slots, one phase at a time.
    let cell = Arc::new(GraceCell::with_domain((), Arc::clone(&g)));
    drop(cell.read_owned());
    assert_eq!(g.heap_bytes(), 8 * slots, "the first phase's slots");
    g.synchronize();
    drop(cell.read_owned());
    assert_eq!(g.heap_bytes(), 2 * 8 * slots, "both phases' slots");
    println!("{MARKER}");
}

fn in_child_with(name: &str, cpus: usize) {
    if !child::in_child() {
        child::expect_child(name, &[("DRAINABLE_SLOTS", &cpus.to_string())], MARKER);
        return;
    }
    child::setup(Duration::from_secs(60));
    check(cpus);
}

#[test]
fn memory_at_2_cpus() {
    in_child_with("memory_at_2_cpus", 2);
}

#[test]
fn memory_at_64_cpus() {
    in_child_with("memory_at_64_cpus", 64);
}

#[test]
fn memory_at_256_cpus() {
    in_child_with("memory_at_256_cpus", 256);
}
