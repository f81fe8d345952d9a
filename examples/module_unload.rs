//! The 2003 module-unloading story, running: a host dispatches every packet through every
//! loaded module from several worker threads, while a controller loads and unloads modules in
//! a loop and frees each module's data the moment its unload returns:
//!
//! ```c
//! void foo_exit() {
//!         deregister(...);
//!         kfree(my_data);
//! }
//! ```
//!
//! It prints progress about once a second, then a summary: calls per second and nanoseconds
//! per call, loads and unloads, unload latency, and a check that no callback ran after its
//! unload returned and no freed data was touched (the process exits with status 1 if one did).
//! Each term is explained once, where it is first printed.
//!
//! ```text
//! cargo run --release --example module_unload [-- --duration <secs>] [--threads <n>]
//!                                                [--counter shared|percpu]
//! ```

use drainable::{Counter, PerCpu, Registry, Shared};
use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

const ALIVE: u64 = 0x600D_DA7A_600D_DA7A;
const FREED: u64 = 0xDEAD_DA7A_DEAD_DA7A;

/// Modules loaded at once; loading one more unloads the oldest.
const RESIDENT: usize = 4;
/// How long the controller lets the modules run between two load/unload steps.
const STEP: Duration = Duration::from_micros(500);

/// A module's private data (`my_data`): on the heap, poisoned and freed right after unload.
struct ModuleData {
    canary: AtomicU64,
    key: [u8; 32],
}

/// What a module registers with the host: its data, and a flag the controller raises right
/// after the unload returned. The flag is shared with the controller, which keeps it alive a
/// while after the data is freed, so a late call would read `true` rather than freed memory.
struct Module {
    data: Box<ModuleData>,
    unloaded: Arc<AtomicBool>,
}

/// One worker's counts, flushed to the shared totals now and then.
#[derive(Default)]
struct Local {
    calls: u64,
    violations: u64,
    digest: u64,
}

impl Module {
    fn load(id: u64) -> Self {
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = (id as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        Module {
            data: Box::new(ModuleData {
                canary: AtomicU64::new(ALIVE),
                key,
            }),
            unloaded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The module's packet hook: checks it is still loaded, hashes the packet with its key.
    #[inline(never)]
    fn on_packet(&self, packet: &[u8; 64], local: &mut Local) {
        // Relaxed is enough: a call that reads `true` (or the poison) would be reading a
        // write made after `unregister` returned, which every call happens-before.
        if self.unloaded.load(Relaxed) || self.data.canary.load(Relaxed) != ALIVE {
            local.violations += 1;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
        for (i, b) in packet.iter().enumerate() {
            h = (h ^ u64::from(b ^ self.data.key[i % 32])).wrapping_mul(0x0100_0000_01b3);
        }
        local.digest ^= h;
        local.calls += 1;
    }
}

/// Totals shared between the threads (all statistics: `Relaxed`).
#[derive(Default)]
struct Totals {
    packets: AtomicU64,
    calls: AtomicU64,
    violations: AtomicU64,
    loads: AtomicU64,
    unloads: AtomicU64,
    resident: AtomicU64,
}

struct Options {
    duration: Duration,
    threads: usize,
    per_cpu: bool,
}

const USAGE: &str = "usage: module_unload [--duration <secs>] [--threads <n>] \
                     [--counter shared|percpu]";

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        duration: Duration::from_secs(5),
        threads: thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(2, 8),
        per_cpu: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--duration" => {
                let v = value("--duration")?;
                let secs: f64 = v.parse().map_err(|_| format!("bad --duration {v:?}"))?;
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(format!("bad --duration {v:?}"));
                }
                opts.duration = Duration::from_secs_f64(secs);
            }
            "--threads" => {
                let v = value("--threads")?;
                opts.threads = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("bad --threads {v:?}")),
                };
            }
            "--counter" => {
                let v = value("--counter")?;
                opts.per_cpu = match v.as_str() {
                    "percpu" | "per-cpu" => true,
                    "shared" => false,
                    _ => return Err(format!("bad --counter {v:?}: shared or percpu")),
                };
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.per_cpu {
        run(Registry::<Module, PerCpu>::with_counter(), &opts, "percpu")
    } else {
        run(Registry::<Module, Shared>::new(), &opts, "shared")
    }
}

fn run<C: Counter>(registry: Registry<Module, C>, opts: &Options, counter: &str) -> ExitCode {
    println!(
        "host: {} worker thread(s), counter {counter}, {}; controller loads and unloads \
         modules ({RESIDENT} resident)",
        opts.threads,
        fmt_duration(opts.duration)
    );
    println!(
        "(violations: calls that found their module already unloaded or its data freed; \
         must stay 0)"
    );
    let registry = Arc::new(registry);
    let totals = Arc::new(Totals::default());
    let stop_workers = Arc::new(AtomicBool::new(false));
    let stop_controller = Arc::new(AtomicBool::new(false));

    // The controller loads the first modules before the host starts dispatching, and unloads
    // the last ones after it stopped, so that every packet meets a full set of modules.
    let controller = {
        let (registry, totals, stop) = (
            Arc::clone(&registry),
            Arc::clone(&totals),
            Arc::clone(&stop_controller),
        );
        thread::spawn(move || controller(&registry, &totals, &stop))
    };
    while totals.resident.load(Relaxed) < RESIDENT as u64 {
        thread::sleep(Duration::from_millis(1));
    }

    let workers: Vec<_> = (0..opts.threads)
        .map(|w| {
            let (registry, totals, stop) = (
                Arc::clone(&registry),
                Arc::clone(&totals),
                Arc::clone(&stop_workers),
            );
            thread::spawn(move || worker(w, &registry, &totals, &stop))
        })
        .collect();

    // Progress, about once a second.
    let start = Instant::now();
    let mut last_calls = 0;
    let mut last = start;
    while start.elapsed() < opts.duration {
        let left = opts.duration.saturating_sub(start.elapsed());
        thread::sleep(left.min(Duration::from_secs(1)));
        let now = Instant::now();
        let calls = totals.calls.load(Relaxed);
        let rate = (calls - last_calls) as f64 / (now - last).as_secs_f64();
        println!(
            "[{:5.1}s] calls {:>12} ({:>4} M/s, {:>4} ns/call)  loads {:>6}  unloads {:>6}  \
             resident {}  violations {}",
            (now - start).as_secs_f64(),
            calls,
            sig3(rate / 1e6),
            sig3(1e9 / rate),
            totals.loads.load(Relaxed),
            totals.unloads.load(Relaxed),
            totals.resident.load(Relaxed),
            totals.violations.load(Relaxed),
        );
        (last_calls, last) = (calls, now);
    }

    stop_workers.store(true, Relaxed);
    let digest = workers
        .into_iter()
        .map(|w| w.join().expect("worker panicked"))
        .fold(0, |a, b| a ^ b);
    let elapsed = start.elapsed();
    stop_controller.store(true, Relaxed);
    let mut latencies = controller.join().expect("controller panicked");
    assert!(registry.is_empty());

    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let calls = totals.calls.load(Relaxed);
    let violations = totals.violations.load(Relaxed);
    let under_load = latencies.len() - RESIDENT; // the last ones are unloaded after the host stops
    println!();
    println!(
        "summary ({counter} counter, {} worker thread(s))",
        opts.threads
    );
    let packets = totals.packets.load(Relaxed);
    println!(
        "  packets dispatched: {packets:>12}  ({:.2} modules called per packet)",
        calls as f64 / packets.max(1) as f64
    );
    let per_second = calls as f64 / elapsed.as_secs_f64();
    println!(
        "  callback calls:     {calls:>12}  ({} M/s over {}: {} ns per call, {} ns on each of \
         {} worker(s))",
        sig3(per_second / 1e6),
        fmt_duration(elapsed),
        sig3(1e9 / per_second),
        sig3(1e9 * opts.threads as f64 / per_second),
        opts.threads
    );
    println!(
        "  modules loaded:     {:>12}  unloaded: {}",
        totals.loads.load(Relaxed),
        totals.unloads.load(Relaxed)
    );
    println!(
        "  unload latency:     median {}, p99 {}, max {} (unregister; {under_load} of {} \
         under load)",
        fmt_duration(pct(0.5)),
        fmt_duration(pct(0.99)),
        fmt_duration(pct(1.0)),
        latencies.len()
    );
    println!(
        "    (under load: while the workers dispatched; the last {RESIDENT} unloads come after \
         they stopped)"
    );
    if counter == "percpu" {
        println!(
            "    (per-CPU unloads cost ~100x shared ones: each makes a membarrier system call, which \
             interrupts every CPU running this process, tens of µs; a shared unload is one \
             atomic read-modify-write and maybe a futex wake)"
        );
    } else {
        println!(
            "    (a shared unload is one atomic read-modify-write and maybe a futex wake; \
             --counter percpu adds a membarrier system call, ~100x the cost, so that callers \
             share no cache line)"
        );
    }
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if opts.threads >= cpus {
        println!(
            "  note: {} workers + the controller on {cpus} CPU(s): the latency tail includes \
             the woken unloader waiting for a CPU (try --threads {})",
            opts.threads,
            cpus.saturating_sub(1).max(1)
        );
    }
    if violations != 0 {
        println!(
            "FAILED: {violations} call(s) ran after their module's unload returned, or touched \
             freed data"
        );
        return ExitCode::FAILURE;
    }
    println!("  violations:         {violations:>12}");
    println!(
        "  digest:         {digest:016x}  (XOR of every call's hash of its packet and module \
         key: keeps the work from being optimised away; varies from run to run)"
    );
    println!("ok: no callback ran after its unload returned; no freed module data was touched");
    ExitCode::SUCCESS
}

/// `v` rounded to 3 significant digits (for values from 0.001 up; larger ones keep their
/// integer digits).
fn sig3(v: f64) -> String {
    let decimals = match v.abs() {
        a if a >= 99.95 => 0,
        a if a >= 9.995 => 1,
        a if a >= 0.9995 => 2,
        _ => 3,
    };
    format!("{v:.decimals$}")
}

/// A duration to 3 significant digits in the largest unit that keeps it at or above 1:
/// `950 ns`, `22.0 µs`, `1.63 ms`, `5.00 s`.
fn fmt_duration(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    let (v, unit) = if ns < 999.5 {
        (ns, "ns")
    } else if ns < 999_500.0 {
        (ns / 1e3, "µs")
    } else if ns < 999_500_000.0 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", sig3(v))
}

/// A host worker: builds packets and runs each through every loaded module.
fn worker<C: Counter>(
    w: usize,
    registry: &Registry<Module, C>,
    totals: &Totals,
    stop: &AtomicBool,
) -> u64 {
    let mut local = Local::default();
    let mut packet = [0u8; 64];
    let mut seq: u64 = 0;
    let mut flushed = Local::default();
    loop {
        for _ in 0..256 {
            seq += 1;
            packet[..8].copy_from_slice(&seq.to_le_bytes());
            packet[8] = w as u8;
            registry.for_each(|m| m.on_packet(&packet, &mut local));
        }
        totals.packets.fetch_add(256, Relaxed);
        totals.calls.fetch_add(local.calls - flushed.calls, Relaxed);
        totals
            .violations
            .fetch_add(local.violations - flushed.violations, Relaxed);
        (flushed.calls, flushed.violations) = (local.calls, local.violations);
        if stop.load(Relaxed) {
            return local.digest;
        }
    }
}

/// The controller: loads a module, lets the modules run a little, unloads the oldest, frees
/// its data at once. Returns the unload latencies.
fn controller<C: Counter>(
    registry: &Registry<Module, C>,
    totals: &Totals,
    stop: &AtomicBool,
) -> Vec<Duration> {
    let mut resident = VecDeque::new();
    // Flags of recently unloaded modules, kept alive so that a late call would read `true`.
    let mut graveyard = VecDeque::new();
    let mut latencies = Vec::new();
    let mut next_id = 0u64;

    let mut unload = |handle, latencies: &mut Vec<Duration>| {
        let t = Instant::now();
        let module: Module = registry.unregister(handle); // deregister(...)
        latencies.push(t.elapsed());
        module.unloaded.store(true, Relaxed);
        module.data.canary.store(FREED, Relaxed);
        graveyard.push_back(Arc::clone(&module.unloaded));
        if graveyard.len() > 1024 {
            graveyard.pop_front();
        }
        drop(module); // kfree(my_data)
        totals.unloads.fetch_add(1, Relaxed);
    };

    while !stop.load(Relaxed) {
        resident.push_back(registry.register(Module::load(next_id)));
        next_id += 1;
        totals.loads.fetch_add(1, Relaxed);
        if resident.len() > RESIDENT {
            unload(resident.pop_front().unwrap(), &mut latencies);
        }
        totals.resident.store(resident.len() as u64, Relaxed);
        thread::sleep(STEP);
    }
    for handle in resident.drain(..) {
        unload(handle, &mut latencies);
    }
    totals.resident.store(0, Relaxed);
    latencies
}
