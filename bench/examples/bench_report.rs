//! Runs the benchmark suite and writes `docs/benchmarks.md` (tables of medians and ratios, the
//! machine, the memory each type takes) and `docs/callback-threads.svg` (cost against thread
//! count), all from one run.
//!
//! The page, in order: **Goals** (the speed goals, each with its measured figure, its target
//! and met / not met, from the same numbers as the tables); **Hot path**, one table per
//! harness of `benches/callback.rs` (`callback`, the inlined loop, and `callback_opaque`, each
//! call behind a `dyn Fn` on fresh threads), with each case's overhead over the unprotected
//! call (`X - plain`) and that overhead divided by `crossbeam_epoch`'s and by `arc_swap`'s, at
//! 1 thread and on every core; drain latency; **Grace-period latency**, with the deferred
//! writers (`grace_cell_store`, the baselines) divided by `arc_swap_store` and `seize_retire`
//! at the same label; **Deferred drops keep up**, from `examples/store_backlog.rs` (10 s of
//! `GraceCell::store` against busy readers: stores per second, the backlog against its
//! limit); slot selection, construction, memory.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml --example bench_report              # run the suite (~5 min), then report
//! cargo run --release --manifest-path bench/Cargo.toml --example bench_report -- --no-run  # the last run's results
//! DRAINABLE_STORE_SECS=3 cargo run --release --manifest-path bench/Cargo.toml --example bench_report   # a shorter store_backlog run
//! ```
//!
//! `--no-run` runs nothing: it reads criterion's `target/criterion/**/new/estimates.json` and
//! the last `store_backlog` figures, saved in `target/store_backlog.txt`. Missing numbers
//! print as `-` (and the goals they decide are not met).

use drainable::{Drainable, GraceCell, GraceDomain, PerCpuDrainable, Registry};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The callback cases, in table order, with a short description.
const CALLBACK_CASES: &[(&str, &str)] = &[
    ("plain", "the call alone, no protection"),
    ("drainable", "`Drainable::try_acquire` + drop"),
    ("per_cpu_drainable", "`PerCpuDrainable::try_acquire` + drop"),
    ("grace_cell", "`GraceCell::read` + drop"),
    ("arc", "`Arc` clone + drop"),
    ("rwlock", "`RwLock::read` + unlock"),
    ("crossbeam_epoch", "`crossbeam_epoch::pin` + `Atomic` load"),
    ("seize", "`seize::Collector::enter` + `Guard::protect`"),
    ("arc_swap", "`ArcSwap::load`"),
    ("run_down", "`run_down::RundownRef::try_acquire` + drop"),
];

/// Ends the report with a message for the user, not a panic and its backtrace.
fn fail(message: &str) -> ! {
    eprintln!("bench_report: {message}");
    std::process::exit(1)
}

fn main() {
    let run = !std::env::args().any(|a| a == "--no-run");
    // This crate (bench/), where criterion writes, and the repository root, where the docs are.
    let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = bench
        .parent()
        .expect("bench/ is inside the repository")
        .to_owned();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-probe") {
        memory_probe(args.get(i + 1).map_or("", |s| s.as_str()));
        return;
    }
    if run {
        let status = Command::new(env!("CARGO"))
            .args([
                "bench",
                "--bench",
                "callback",
                "--bench",
                "drain",
                "--bench",
                "grace",
                "--bench",
                "cpu_id",
                "--bench",
                "construct",
            ])
            .current_dir(&bench)
            .status()
            .unwrap_or_else(|e| fail(&format!("could not start `cargo bench`: {e}")));
        if !status.success() {
            fail(&format!(
                "`cargo bench` failed ({status}); its output is above"
            ));
        }
    }
    let criterion = bench.join("target/criterion");
    let results = read_medians(&criterion);
    if results.is_empty() {
        fail(&format!(
            "no criterion results in {}: run without --no-run first (it runs the suite, a few \
             minutes on 2 cores)",
            criterion.display()
        ));
    }

    let store = store_backlog(&bench, run);

    let mut md = String::new();
    header(&mut md);
    goals_section(&mut md, &results);
    callback_tables(&mut md, &results);
    latency_table(&mut md, &results, "drain", "Drain latency", DRAIN_NOTES);
    grace_table(&mut md, &results);
    store_backlog_section(&mut md, store.as_ref());
    latency_table(&mut md, &results, "cpu_id", "Slot selection", CPU_ID_NOTES);
    latency_table(
        &mut md,
        &results,
        "drain_threads",
        "Drain latency against threads alive",
        DRAIN_THREADS_NOTES,
    );
    latency_table(
        &mut md,
        &results,
        "construct",
        "Construction",
        CONSTRUCT_NOTES,
    );
    memory_table(&mut md);
    scaled_memory_table(&mut md);
    let page = root.join("docs/benchmarks.md");
    std::fs::write(&page, md)
        .unwrap_or_else(|e| fail(&format!("could not write {}: {e}", page.display())));
    plot(&root.join("docs/callback-threads.svg"), &results);
    println!("wrote docs/benchmarks.md and docs/callback-threads.svg");
}

/// `group/function/parameter` → median in nanoseconds, from criterion's `new/estimates.json`.
fn read_medians(dir: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.ends_with("new/estimates.json") {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap();
                let key = rel.to_string_lossy().replace('\\', "/");
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                out.insert(key, v["median"]["point_estimate"].as_f64().unwrap());
            }
        }
    }
    out
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The thread counts `callback.rs` measures: 1, and every core if there is more than one.
fn thread_counts() -> Vec<usize> {
    let mut v = vec![1, threads()];
    v.dedup();
    v
}

fn header(md: &mut String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = write!(
        md,
        "# Benchmarks\n\n\
         Generated by `cargo run --release --manifest-path bench/Cargo.toml --example bench_report` (which runs `cargo bench` for\n\
         the `callback`, `drain`, `grace`, `cpu_id` and `construct` benches and the\n\
         `store_backlog` example, then writes this page and the plot). Every\n\
         number is a criterion median from **one run**; ratios compare cases of that same run.\n\
         On a 2-core virtual machine runs vary by 10-30 %: compare ratios, not absolute times,\n\
         and re-run to check.\n\n\
         - machine: {cpu}, {} hardware threads\n- compiler: {rustc}\n- commit: `{commit}`\n\n",
        threads()
    );
}

/// The two hot-path harnesses of `bench/benches/callback.rs`: criterion group and what it is.
const HARNESSES: &[(&str, &str)] = &[
    (
        "callback",
        "the inlined loop: `call` inlined into the timed loop, on the benchmark's own thread at \
         1 thread",
    ),
    (
        "callback_opaque",
        "each `call` behind a boxed `dyn Fn`, on freshly spawned threads, the way a registry or \
         a plugin host reaches it (no thread-local lookup or check hoisted out of the loop)",
    ),
];

/// `group/case/threads` for a callback harness.
fn callback_ns(r: &BTreeMap<String, f64>, group: &str, case: &str, t: usize) -> Option<f64> {
    r.get(&format!("{group}/{case}/{t}")).copied()
}

/// The overhead over the unprotected call of the same run: `case - plain`, in nanoseconds.
fn overhead(r: &BTreeMap<String, f64>, group: &str, case: &str, t: usize) -> Option<f64> {
    Some(callback_ns(r, group, case, t)? - callback_ns(r, group, "plain", t)?)
}

/// `case`'s overhead divided by `base`'s (`(case - plain) / (base - plain)`); none if either is
/// missing or `base`'s overhead is not above the unprotected call (nothing to divide by).
fn overhead_ratio(
    r: &BTreeMap<String, f64>,
    group: &str,
    case: &str,
    base: &str,
    t: usize,
) -> Option<f64> {
    let b = overhead(r, group, base, t)?;
    (b > 0.0).then_some(overhead(r, group, case, t)? / b)
}

fn callback_tables(md: &mut String, r: &BTreeMap<String, f64>) {
    let _ = write!(
        md,
        "## Hot path: enter + a non-inlined callback + leave\n\n\
         `bench/benches/callback.rs`. The cases:\n\n"
    );
    for (case, what) in CALLBACK_CASES {
        let _ = writeln!(md, "- `{case}`: {what}");
    }
    let counts = thread_counts();
    let n = threads();
    let _ = write!(
        md,
        "\nNanoseconds per operation. *1 thread*: one thread alone; *{n} threads*: every core\n\
         runs the same loop on the same object at once (time per op of the slowest thread).\n\
         *overhead*: the case minus `plain` (the unprotected call) at the same thread count, in\n\
         ns; *÷ epoch* and *÷ arc_swap*: that overhead divided by `crossbeam_epoch`'s and by\n\
         `arc_swap`'s overhead, `(X - plain) / (epoch - plain)` (below 1: cheaper than that\n\
         baseline). An overhead within the noise can come out negative.\n\n"
    );
    for (group, what) in HARNESSES {
        let _ = write!(md, "### `{group}`\n\n{}.\n\n| case |", capitalise(what));
        for &t in &counts {
            let _ = write!(md, " {t} {} | overhead | ÷ epoch | ÷ arc_swap |", plural(t));
        }
        md.push_str("\n|---|");
        for _ in &counts {
            md.push_str("---:|---:|---:|---:|");
        }
        md.push('\n');
        for (case, _) in CALLBACK_CASES {
            let mut row = format!("| `{case}` |");
            for &t in &counts {
                let _ = write!(
                    row,
                    " {} | {} | {} | {} |",
                    fixed(callback_ns(r, group, case, t)),
                    fixed(overhead(r, group, case, t)),
                    times(overhead_ratio(r, group, case, "crossbeam_epoch", t)),
                    times(overhead_ratio(r, group, case, "arc_swap", t)),
                );
            }
            md.push_str(&row);
            md.push('\n');
        }
        md.push('\n');
    }
    md.push_str("![cost against thread count (`callback`)](callback-threads.svg)\n\n");
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn plural(t: usize) -> &'static str {
    if t == 1 {
        "thread"
    } else {
        "threads"
    }
}

/// Nanoseconds with two decimals, or "-".
fn fixed(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// A ratio, or "-".
fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}x"))
}

/// The tracker issue's speed goals, from the numbers of the tables below: one row per goal,
/// harness and thread count; a missing number is "-" and the goal not met.
fn goals_section(md: &mut String, r: &BTreeMap<String, f64>) {
    let _ = write!(
        md,
        "## Goals\n\n\
         The speed goals, checked against the numbers of this run (the tables below). Overheads\n\
         are over the unprotected call of the same run (`X - plain`, see *Hot path*); a goal is\n\
         met when the measured figure is at or under the target. A missing number (`-`) counts\n\
         as not met. One run on a noisy machine: a figure near its target can flip between\n\
         runs.\n\n\
         | goal | measured | target | result |\n|---|---:|---:|---|\n"
    );
    let mut met = 0;
    let mut total = 0;
    let mut row = |md: &mut String, goal: String, measured: Option<f64>, target: f64, ns: bool| {
        let show = |v: f64| if ns { human(v) } else { format!("{v:.2}x") };
        let ok = measured.is_some_and(|m| m <= target);
        total += 1;
        met += usize::from(ok);
        let _ = writeln!(
            md,
            "| {goal} | {} | ≤ {} | {} |",
            measured.map_or_else(|| "-".into(), show),
            show(target),
            if ok { "met" } else { "**not met**" }
        );
    };
    let callback_goals: [(&str, &str, f64); 3] = [
        ("per_cpu_drainable", "crossbeam_epoch", 0.4),
        ("grace_cell", "crossbeam_epoch", 0.5),
        ("grace_cell", "arc_swap", 0.5),
    ];
    for (case, base, target) in callback_goals {
        for (group, _) in HARNESSES {
            for t in thread_counts() {
                row(
                    md,
                    format!(
                        "`{case}` overhead ÷ `{base}` overhead, `{group}`, {t} {}",
                        plural(t)
                    ),
                    overhead_ratio(r, group, case, base, t),
                    target,
                    false,
                );
            }
        }
    }
    let store = r.get("grace/grace_cell_store/busy_reader");
    let arc_swap = r.get("grace/arc_swap_store/busy_reader");
    row(
        md,
        "`grace/grace_cell_store/busy_reader` ÷ `grace/arc_swap_store/busy_reader`".into(),
        store
            .zip(arc_swap)
            .and_then(|(s, a)| (*a > 0.0).then(|| s / a)),
        1.0,
        false,
    );
    row(
        md,
        "`grace/grace_cell_replace/busy_reader` median".into(),
        r.get("grace/grace_cell_replace/busy_reader").copied(),
        10_000.0,
        true,
    );
    let _ = write!(md, "\n{met} of {total} met.\n\n");
}

/// The grace cases in table order; the writers that return before the old value is freed
/// get ratios against `arc_swap_store` and `seize_retire`, the blocking ones do not.
const GRACE_CASES: &[(&str, bool)] = &[
    ("synchronize", false),
    ("grace_cell_replace", false),
    ("grace_cell_store", true),
    ("epoch_defer_flush", true),
    ("seize_retire", true),
    ("arc_swap_store", true),
];

fn grace_table(md: &mut String, r: &BTreeMap<String, f64>) {
    let _ = write!(md, "## Grace-period latency\n\n{GRACE_NOTES}\n\n| case |");
    // The labels (idle, busy_reader) in that order, then any other the run has; the cases
    // likewise, known ones first.
    let keys: Vec<(&str, &str)> = r
        .range("grace/".to_owned().."grace0".to_owned())
        .filter_map(|(k, _)| k["grace/".len()..].split_once('/'))
        .collect();
    let mut labels: Vec<&str> = vec!["idle", "busy_reader"];
    let mut cases: Vec<(&str, bool)> = GRACE_CASES.to_vec();
    for &(case, label) in &keys {
        if !labels.contains(&label) {
            labels.push(label);
        }
        if !cases.iter().any(|(c, _)| *c == case) {
            cases.push((case, false));
        }
    }
    for label in &labels {
        let _ = write!(md, " {label} | ÷ arc_swap_store | ÷ seize_retire |");
    }
    md.push_str("\n|---|");
    for _ in &labels {
        md.push_str("---:|---:|---:|");
    }
    md.push('\n');
    let get = |case: &str, label: &str| r.get(&format!("grace/{case}/{label}")).copied();
    for (case, deferred) in cases {
        let mut row = format!("| `{case}` |");
        for label in &labels {
            let v = get(case, label);
            let _ = write!(row, " {} |", v.map_or_else(|| "-".into(), human));
            for base in ["arc_swap_store", "seize_retire"] {
                if deferred {
                    let ratio = v.zip(get(base, label)).map(|(v, b)| v / b);
                    let _ = write!(row, " {} |", times(ratio));
                } else {
                    row.push_str(" |");
                }
            }
        }
        md.push_str(&row);
        md.push('\n');
    }
    md.push('\n');
}

/// The figures of `examples/store_backlog.rs`, `key: value` lines: from a fresh run if `run`
/// (saved to `target/store_backlog.txt`), else from the last saved run.
fn store_backlog(bench: &Path, run: bool) -> Option<BTreeMap<String, String>> {
    let saved = bench.join("target/store_backlog.txt");
    let text = if run {
        let out = Command::new(env!("CARGO"))
            .args(["run", "--release", "--example", "store_backlog"])
            .current_dir(bench)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| fail(&format!("could not start the store_backlog example: {e}")));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Exit status 1 is a backlog over the limit: still a result, reported as such.
        if !out.status.success() && !text.contains("within_limit:") {
            fail(&format!(
                "the store_backlog example failed ({})",
                out.status
            ));
        }
        let _ = std::fs::write(&saved, &text);
        text
    } else {
        std::fs::read_to_string(&saved).ok()?
    };
    Some(
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    )
}

fn store_backlog_section(md: &mut String, figures: Option<&BTreeMap<String, String>>) {
    md.push_str("## Deferred drops keep up\n\n");
    let Some(f) = figures else {
        md.push_str(
            "Not measured: no saved run of `bench/examples/store_backlog.rs` (the report runs it \
             unless `--no-run`).\n\n",
        );
        return;
    };
    let get = |k: &str| f.get(k).map_or("-", |v| v.as_str());
    let bytes = |k: &str| {
        f.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .map_or_else(|| "-".into(), |b| format!("{:.1} KiB", b / 1024.0))
    };
    let _ = write!(
        md,
        "`bench/examples/store_backlog.rs`: `GraceCell::store` of a `u64` in a loop on one \
         thread for {} s, with {} reader thread(s) looping on `read()`, the domain's \
         `backlog()` and `heap_bytes()` sampled every ~10 ms ({} samples). A store that finds \
         the backlog at its limit waits for a grace period and the drops before it queues its \
         value, so the backlog cannot grow past the limit; the samples show where it sits.\n\n\
         | figure | value |\n|---|---:|\n\
         | stores per second | {} |\n\
         | backlog, max sampled | {} |\n\
         | backlog, when the writer stopped | {} |\n\
         | backlog limit (`GraceDomain::DEFAULT_BACKLOG_LIMIT`) | {} |\n\
         | stayed within the limit | {} |\n\
         | `heap_bytes()`, max sampled | {} |\n\
         | `heap_bytes()`, when the writer stopped | {} |\n\n",
        get("seconds"),
        get("reader_threads"),
        get("samples"),
        f.get("stores_per_second")
            .and_then(|v| v.parse::<f64>().ok())
            .map_or_else(|| "-".into(), |v| format!("{:.2} million", v / 1e6)),
        get("max_backlog"),
        get("final_backlog"),
        get("backlog_limit"),
        get("within_limit"),
        bytes("max_heap_bytes"),
        bytes("final_heap_bytes"),
    );
}

const DRAIN_NOTES: &str =
    "`bench/benches/drain.rs`. *idle*: `drain()` with no guard; *busy*: `drain()` while \
every other core takes and drops guards in a loop; *wake*: from the last guard's drop on another \
thread to `drain()` returning in a drainer that was asleep; *prepare_undo*: `prepare_drain()` + \
`undo()`.";
const GRACE_NOTES: &str =
    "`bench/benches/grace.rs`. `synchronize` and `grace_cell_replace` return \
once no reader can see the old value (`replace` hands it back). The baselines return before \
that: `epoch_defer_flush` (swap + `defer_destroy` + `flush`), `seize_retire` (swap + `retire`) \
and `arc_swap_store` free the old value later, when their readers let them, and so does `grace_cell_store` (`GraceCell::store`: \
the old value is dropped after a grace period, by a later call on the domain). *busy_reader*: \
a reader loops on every other core. *÷ arc_swap_store*, *÷ seize_retire*: the deferred writers \
against those baselines at the same label (below 1: faster); `synchronize` and \
`grace_cell_replace` wait for readers, so they are absolute only.";

const DRAIN_THREADS_NOTES: &str =
    "`bench/benches/drain.rs`, group `drain_threads`. `drain()` of an idle \
`PerCpuDrainable` while *n* threads are alive, each owning a thread-local record (it took one \
per-CPU guard): the heavy barrier and the scan of every record grow with the threads alive.";

const CONSTRUCT_NOTES: &str =
    "`bench/benches/construct.rs`. One construction, its drop not timed; a registration takes \
a slot never used before (its chunk's allocation amortised). The per-CPU types allocate \
nothing here: their slots come from the per-CPU arena at first use.";

const CPU_ID_NOTES: &str =
    "`bench/benches/cpu_id.rs`. How a per-CPU counter finds its slot: the CPU \
number from glibc's rseq area (what `PerCpu` uses where available), `sched_getcpu` (a vDSO \
call), or a per-thread index (the fallback).";

fn latency_table(
    md: &mut String,
    r: &BTreeMap<String, f64>,
    group: &str,
    title: &str,
    notes: &str,
) {
    let _ = write!(
        md,
        "## {title}\n\n{notes}\n\n| case | median |\n|---|---:|\n"
    );
    for (k, v) in r.range(format!("{group}/")..format!("{group}0")) {
        let name = k.trim_start_matches(&format!("{group}/"));
        let _ = writeln!(md, "| `{name}` | {} |", human(*v));
    }
    md.push('\n');
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// Counts the bytes allocated and not yet freed, for the memory probe.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Instances per measurement: the arena's chunks and the registry's chunks amortise over them.
const PROBE_INSTANCES: usize = 4096;

/// Bytes per instance, as `(inline, total)`: `make` builds one, `touch` uses it as the case
/// needs (a guard, a section), and the heap the batch holds afterwards, the arena's chunks
/// included, is divided among them.
fn per_instance<V>(inline: usize, make: impl Fn() -> V, touch: impl Fn(&V)) -> (usize, f64) {
    let mut all = Vec::with_capacity(PROBE_INSTANCES);
    let before = live();
    for _ in 0..PROBE_INSTANCES {
        all.push(make());
    }
    for v in &all {
        touch(v);
    }
    let heap = (live() - before) as f64 / PROBE_INSTANCES as f64;
    drop(all);
    (inline, inline as f64 + heap)
}

/// Run in a child process per type (so that no type reuses columns of the arena another one
/// gave back), with `DRAINABLE_SLOTS` (and perhaps `DRAINABLE_NO_MEMBARRIER`) set: prints
/// `name inline total`, bytes per instance.
fn memory_probe(which: &str) {
    use drainable::PerCpu;
    // The Vec's own buffer is allocated before `before` is read, so `total` is inline + heap.
    if which == "per_cpu_drainable" {
        let (i, t) = per_instance(
            std::mem::size_of::<PerCpuDrainable<()>>(),
            || PerCpuDrainable::new(()),
            |d| drop(d.try_acquire()),
        );
        println!("per_cpu_drainable {i} {t}");
    }
    if which == "grace_domain" {
        let (i, t) = per_instance(std::mem::size_of::<GraceDomain>(), GraceDomain::new, |d| {
            // A section in each phase: both phases' slots.
            drop(d.enter());
            d.synchronize();
            drop(d.enter());
        });
        println!("grace_domain {i} {t}");
    }
    if which == "grace_cell" {
        let (i, t) = per_instance(
            std::mem::size_of::<GraceCell<()>>(),
            || GraceCell::new(()),
            |c| {
                drop(c.read());
                c.replace(());
                drop(c.read());
            },
        );
        println!("grace_cell {i} {t}");
    }
    if which != "registry_entry" {
        return;
    }
    // One registry, many entries: bytes per entry, its chunks included.
    let reg: Registry<(), PerCpu> = Registry::with_counter();
    let mut handles = Vec::with_capacity(PROBE_INSTANCES);
    let before = live();
    for _ in 0..PROBE_INSTANCES {
        handles.push(reg.register(()));
    }
    reg.for_each(|_| {});
    let per_entry = (live() - before) as f64 / PROBE_INSTANCES as f64;
    println!("registry_entry 0 {per_entry}");
    reg.unregister_all(handles);
}

/// The types the memory probe measures, one child process each.
const PROBED: [&str; 4] = [
    "per_cpu_drainable",
    "registry_entry",
    "grace_domain",
    "grace_cell",
];

/// The probe's figures for one slot count: only thread-local guards, or (`no_membarrier`)
/// every guard in the slots.
fn probe(slots: usize, no_membarrier: bool) -> BTreeMap<String, (usize, f64)> {
    let mut all = BTreeMap::new();
    for which in PROBED {
        let mut cmd = Command::new(std::env::current_exe().expect("the report's own path"));
        cmd.args(["--memory-probe", which])
            .env("DRAINABLE_SLOTS", slots.to_string());
        if no_membarrier {
            cmd.env("DRAINABLE_NO_MEMBARRIER", "1");
        } else {
            cmd.env_remove("DRAINABLE_NO_MEMBARRIER");
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| fail(&format!("could not run the memory probe: {e}")));
        if !out.status.success() {
            fail(&format!(
                "the memory probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        all.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    Some((
                        w.next()?.to_owned(),
                        (w.next()?.parse().ok()?, w.next()?.parse().ok()?),
                    ))
                }),
        );
    }
    all
}

fn memory_table(md: &mut String) {
    let d = Drainable::new(());
    let p = PerCpuDrainable::new(());
    let g = GraceDomain::new();
    let c = GraceCell::new(());
    let reg: Registry<()> = Registry::new();
    let slots = {
        let p = std::sync::Arc::new(PerCpuDrainable::new(()));
        drop(p.try_acquire_owned());
        p.heap_bytes() / 8
    };
    let _ = write!(
        md,
        "## Memory\n\n\
         Bytes per instance holding a `()` (add the value's size), measured by this run with\n\
         `size_of_val` plus `heap_bytes()`, on instances no guard has used: the per-CPU types\n\
         take their slots (8 bytes each) from the per-CPU arena only when a guard needs them;\n\
         slots are the CPU count rounded up to a power of two, at most 64 (here: {slots}). Once\n\
         per process, not per instance: `PerCpuDrainable` guards use a 128-byte record per\n\
         thread alive at once (shared by every instance, reused when a thread exits). The next\n\
         table has the figures with the slots in use, and for larger machines.\n\n\
         | type | inline | heap | as a function of CPUs |\n|---|---:|---:|---|\n\
         | `Drainable<()>` | {} | {} | 4 bytes, always |\n\
         | `PerCpuDrainable<()>` | {} | {} | inline; + 8 × min(64, next_pow2(CPUs)) once slots are used |\n\
         | `GraceDomain` | {} | {} | inline; + 2 × 8 × min(64, next_pow2(CPUs)) once both phases are used |\n\
         | `GraceCell<()>` (own domain) | {} | {} | as `GraceDomain`, plus the boxed value |\n\
         | `Registry<()>` (empty) | {} | 0 | grows by chunks of slots; see `Registry` docs |\n\
         | `Arc<()>` (for comparison) | 8 | 16 | |\n\n",
        std::mem::size_of_val(&d),
        d.heap_bytes(),
        std::mem::size_of_val(&p),
        p.heap_bytes(),
        std::mem::size_of_val(&g),
        g.heap_bytes(),
        std::mem::size_of_val(&c),
        c.domain().heap_bytes(),
        std::mem::size_of_val(&reg),
    );
}

/// Bytes per instance at 2, 64 and 256 CPUs (`DRAINABLE_SLOTS`, read once per process, in a
/// child process per figure), with only thread-local guards and with every guard in the slots
/// (`DRAINABLE_NO_MEMBARRIER`).
fn scaled_memory_table(md: &mut String) {
    const CPUS: [usize; 3] = [2, 64, 256];
    let local: Vec<_> = CPUS.iter().map(|&n| probe(n, false)).collect();
    let slots: Vec<_> = CPUS.iter().map(|&n| probe(n, true)).collect();
    let _ = write!(
        md,
        "## Memory at 2, 64 and 256 CPUs\n\n\
         Bytes per instance holding a `()`, inline plus everything it holds on the heap, measured\n\
         by this run with a counting allocator over {PROBE_INSTANCES} instances (so the per-CPU\n\
         arena's chunks and the registry's chunks are included, amortised), in a child process\n\
         per column with `DRAINABLE_SLOTS` set to the CPU count (slots: at most 64).\n\
         *Thread-local*: each instance used by a borrowed guard where `membarrier` works (no\n\
         slots); *slots*: with `DRAINABLE_NO_MEMBARRIER=1`, so the guard is counted in the slots\n\
         (the worst case, as owned guards are). A `GraceDomain` always counts in its slots; it\n\
         is measured after a section in each phase.\n\n\
         | type | path | 2 CPUs | 64 CPUs | 256 CPUs |\n|---|---|---:|---:|---:|\n"
    );
    let rows = [
        ("per_cpu_drainable", "`PerCpuDrainable<()>`"),
        ("registry_entry", "`Registry<(), PerCpu>` entry"),
        ("grace_domain", "`GraceDomain`"),
        ("grace_cell", "`GraceCell<()>` (own domain)"),
    ];
    for (key, name) in rows {
        for (path, table) in [("thread-local", &local), ("slots", &slots)] {
            if key.starts_with("grace") && path == "thread-local" {
                continue;
            }
            let mut row = format!("| {name} | {path} |");
            for t in table.iter() {
                match t.get(key) {
                    Some((_, total)) => {
                        let _ = write!(row, " {total:.0} |");
                    }
                    None => row.push_str(" - |"),
                }
            }
            md.push_str(&row);
            md.push('\n');
        }
    }
    md.push('\n');
}

fn plot(path: &Path, r: &BTreeMap<String, f64>) {
    let counts = thread_counts();
    let series: Vec<(&str, Vec<(usize, f64)>)> = CALLBACK_CASES
        .iter()
        .map(|(case, _)| {
            (
                *case,
                counts
                    .iter()
                    .filter_map(|&t| r.get(&format!("callback/{case}/{t}")).map(|v| (t, *v)))
                    .collect::<Vec<(usize, f64)>>(),
            )
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(0.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "enter + callback + leave: ns per op vs threads",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .right_y_label_area_size(10)
        .build_cartesian_2d(0.8f64..(*counts.last().unwrap() as f64 + 0.2), 0f64..max)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("threads running the loop at once")
        .y_desc("ns per operation (median)")
        .x_labels(counts.len() + 1)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .unwrap();
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = pts.iter().map(|(t, v)| (*t as f64, *v)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .unwrap()
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .unwrap();
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
