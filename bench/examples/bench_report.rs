//! Runs the benchmark suite and writes `docs/benchmarks.md` (tables of medians and ratios, the
//! machine, the memory each type takes) and `docs/callback-threads.svg` (cost against thread
//! count), all from one run.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml --example bench_report              # run the suite (~5 min), then report
//! cargo run --release --manifest-path bench/Cargo.toml --example bench_report -- --no-run  # the last run's results
//! ```

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
    if run {
        let status = Command::new(env!("CARGO"))
            .args([
                "bench", "--bench", "callback", "--bench", "drain", "--bench", "grace", "--bench",
                "cpu_id",
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

    let mut md = String::new();
    header(&mut md);
    callback_table(&mut md, &results);
    latency_table(&mut md, &results, "drain", "Drain latency", DRAIN_NOTES);
    latency_table(
        &mut md,
        &results,
        "grace",
        "Grace-period latency",
        GRACE_NOTES,
    );
    latency_table(&mut md, &results, "cpu_id", "Slot selection", CPU_ID_NOTES);
    memory_table(&mut md);
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
         the `callback`, `drain` and `grace` groups, then writes this page and the plot). Every\n\
         number is a criterion median from **one run**; ratios compare cases of that same run.\n\
         On a 2-core virtual machine runs vary by 10-30 %: compare ratios, not absolute times,\n\
         and re-run to check.\n\n\
         - machine: {cpu}, {} hardware threads\n- compiler: {rustc}\n- commit: `{commit}`\n\n",
        threads()
    );
}

fn callback_table(md: &mut String, r: &BTreeMap<String, f64>) {
    let n = threads();
    let get = |case: &str, t: usize| r.get(&format!("callback/{case}/{t}")).copied();
    let _ = write!(
        md,
        "## Hot path: enter + a non-inlined callback + leave\n\n\
         `bench/benches/callback.rs`. Nanoseconds per operation. *1 thread*: one thread alone; *{n}\n\
         threads*: every core runs the same loop on the same object at once (time per op of the\n\
         slowest thread). Ratios are against `Arc` clone/drop and `crossbeam_epoch::pin` at the\n\
         same thread count.\n\n\
         | case | what | 1 thread | ÷ Arc | ÷ epoch | {n} threads | ÷ Arc | ÷ epoch |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (case, what) in CALLBACK_CASES {
        let mut row = format!("| `{case}` | {what} |");
        for t in [1, n] {
            match (get(case, t), get("arc", t), get("crossbeam_epoch", t)) {
                (Some(v), Some(a), Some(e)) => {
                    let _ = write!(row, " {v:.2} | {:.2}x | {:.2}x |", v / a, v / e);
                }
                _ => row.push_str(" - | - | - |"),
            }
        }
        md.push_str(&row);
        md.push('\n');
    }
    md.push_str("\n![cost against thread count](callback-threads.svg)\n\n");
}

const DRAIN_NOTES: &str =
    "`bench/benches/drain.rs`. *idle*: `drain()` with no guard; *busy*: `drain()` while \
every other core takes and drops guards in a loop; *wake*: from the last guard's drop on another \
thread to `drain()` returning in a drainer that was asleep; *prepare_undo*: `prepare_drain()` + \
`undo()`.";
const GRACE_NOTES: &str =
    "`bench/benches/grace.rs`. `synchronize` and `grace_cell_replace` return \
once no reader can see the old value (`replace` hands it back). The baselines return before \
that: `epoch_defer_flush` (swap + `defer_destroy` + `flush`) and `arc_swap_store` free the old \
value later, when their readers let them. *busy_reader*: a reader loops on every other core.";

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

fn memory_table(md: &mut String) {
    let d = Drainable::new(());
    let p = PerCpuDrainable::new(());
    let g = GraceDomain::new();
    let c = GraceCell::new(());
    let reg: Registry<()> = Registry::new();
    let slots = p.heap_bytes() / 128;
    let _ = write!(
        md,
        "## Memory\n\n\
         Bytes per instance holding a `()` (add the value's size), measured by this run with\n\
         `size_of_val` plus `heap_bytes()`. Per-CPU types allocate 128 bytes per slot; slots are\n\
         the CPU count rounded up to a power of two, at most 64 (here: {slots}). Once per\n\
         process, not per instance: `PerCpuDrainable` guards use a 128-byte record per thread\n\
         alive at once (shared by every instance, reused when a thread exits).\n\n\
         | type | inline | heap | as a function of CPUs |\n|---|---:|---:|---|\n\
         | `Drainable<()>` | {} | {} | 4 bytes, always |\n\
         | `PerCpuDrainable<()>` | {} | {} | inline + 128 × min(64, next_pow2(CPUs)) |\n\
         | `GraceDomain` | {} | {} | inline + 2 × 128 × min(64, next_pow2(CPUs)) |\n\
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

fn plot(path: &Path, r: &BTreeMap<String, f64>) {
    let counts: Vec<usize> = {
        let mut v = vec![1, threads()];
        v.dedup();
        v
    };
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
