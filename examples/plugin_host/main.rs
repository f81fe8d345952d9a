//! A plugin host that really unloads code under load: the 2003 module-unloading story with
//! shared libraries, `libloading` and `dlclose`.
//!
//! It builds three versions of a small `cdylib` (`plugins/`), then loads a fresh copy of one,
//! registers its callbacks in a [`Registry`], and calls every loaded plugin from worker
//! threads at full speed, now and then through a slow callback that spins inside the
//! library. Meanwhile a controller loads the next version (v1, v2, v3, v1, ...) over the
//! current one and unloads the older: `unregister` (which waits for the calls in flight),
//! then drop (the plugin's own `destroy`, then `dlclose`), then a check that the library is
//! really gone. It prints progress, then a summary: loads, unloads, "N of N unloads unmapped",
//! calls per second, unload latency, and that every call returned the value its library's
//! version gives.
//!
//! `--no-drain` runs the same host removing a plugin the naive way, in a child process, while
//! a call is known to be inside the plugin, and reports how the child died and where.
//!
//! ```text
//! cargo run --release --example plugin_host [-- --duration <secs>] [--threads <n>]
//! cargo run --release --example plugin_host -- --no-drain
//! ```
//!
//! # The hazards of real unloading, and what this host does about each
//!
//! - **Code that outlives its library.** An `extern "C" fn` pointer, a `&'static str` or a
//!   trait object's vtable handed out by a plugin points into the library, and Rust calls
//!   them all `'static`. Here the registered value (`plugin::Plugin`) owns the `Library`, the
//!   pointers never leave it, and callers reach them only under a registry guard; the
//!   plugin's name is copied at load.
//! - **What `Drop` must do first.** The plugin's own state was allocated by its code and is
//!   read by its calls: `Plugin::drop` has it freed by the plugin's `destroy` (possible only
//!   once no call is in flight, which `unregister` ensures), and only then closes the library.
//! - **Thread-local destructors.** A plugin whose code registers a thread-local destructor
//!   (a `thread_local!` holding a `Vec`, say, or std's per-thread state behind printing) on a
//!   host thread pins itself: glibc keeps the library mapped, whatever `dlclose` returns, until
//!   every such thread has exited (and then unmaps it at some later `dlclose`). The host cannot
//!   run those destructors early; the plugin must not register them on threads it does not
//!   own. The demo plugins' callbacks use no thread-locals; after
//!   each unload the host checks that the library is really gone (`dlopen` with
//!   `RTLD_NOLOAD` finds nothing and `/proc/self/maps` no longer lists it), which is how such
//!   a plugin would be caught. `tests/plugin_host.rs` shows the effect on purpose.
//! - **`dlopen` of a loaded library returns it again.** Each load maps a fresh copy of the
//!   file at a path of its own, so a reload really loads, and a copy is deleted only once it
//!   is unmapped.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "linux")]
mod abi;
#[cfg(target_os = "linux")]
mod no_drain;
#[cfg(target_os = "linux")]
mod plugin;

#[cfg(not(target_os = "linux"))]
fn main() {
    println!(
        "plugin_host: this example is Linux-only (it reads /proc/self/maps and relies on \
         glibc's dlclose unmapping the library); see examples/module_unload.rs for the same \
         story without real code unloading"
    );
}

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    host::main()
}

#[cfg(target_os = "linux")]
mod host {
    use crate::plugin::{Plugin, Scratch, build_plugins, is_unmapped};
    use crate::{abi, no_drain};
    use drainable::{Registration, Registry};
    use std::collections::VecDeque;
    use std::path::PathBuf;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::sync::atomic::{
        AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed,
    };
    use std::thread;
    use std::time::{Duration, Instant};

    /// Plugins loaded at once: the controller loads the next version, then unloads the oldest.
    const RESIDENT: usize = 2;
    /// How long the controller lets the plugins run between two reload steps.
    const STEP: Duration = Duration::from_millis(1);
    /// Every worker makes one pass of slow calls after this many passes of fast ones ...
    const FAST_PASSES: u32 = 1024;
    /// ... each spinning this long inside the plugin: what the unloads race.
    const SLOW_MICROS: u64 = 20;
    /// The inputs stay below 2^50 (`abi::answer`).
    const X_MASK: u64 = (1 << 50) - 1;

    struct Options {
        duration: Duration,
        threads: usize,
        no_drain: bool,
    }

    const USAGE: &str = "usage: plugin_host [--duration <secs>] [--threads <n>] [--no-drain]";

    fn parse_args() -> Result<Options, String> {
        let mut opts = Options {
            duration: Duration::from_secs(5),
            threads: thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8),
            no_drain: false,
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
                "--no-drain" => opts.no_drain = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                _ => return Err(format!("unknown argument {arg:?}")),
            }
        }
        Ok(opts)
    }

    pub fn main() -> ExitCode {
        let mut args = std::env::args_os().skip(1);
        if args.next().is_some_and(|a| a == no_drain::CHILD_ARG) {
            let Some(library) = args.next() else {
                return ExitCode::FAILURE;
            };
            return no_drain::child(library.as_ref());
        }
        let opts = match parse_args() {
            Ok(opts) => opts,
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        println!(
            "building the demo plugins v1, v2, v3 (cargo build --release, target/plugins) ..."
        );
        let t = Instant::now();
        let libs = match build_plugins() {
            Ok(libs) => libs,
            Err(e) => {
                eprintln!("plugin_host: {e}");
                return ExitCode::FAILURE;
            }
        };
        let dir = libs[0]
            .1
            .parent()
            .map_or("?".into(), |d| d.display().to_string());
        println!(
            "  built in {}: {dir}/libdrainable_demo_plugin_v{{1,2,3}}.so",
            fmt_duration(t.elapsed())
        );
        if opts.no_drain {
            no_drain::parent(&libs[0].1)
        } else {
            match run(&opts, &libs) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("plugin_host: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }

    /// Totals shared between the threads (statistics: `Relaxed`).
    #[derive(Default)]
    struct Totals {
        calls: AtomicU64,
        slow_calls: AtomicU64,
        wrong: AtomicU64,
        loads: AtomicU64,
        unloads: AtomicU64,
        unmapped: AtomicU64,
    }

    /// What the controller measured.
    #[derive(Default)]
    struct Unloads {
        /// `unregister`: closing the entry and waiting for the calls in flight.
        unregister: Vec<Duration>,
        /// Dropping the value: the plugin's `destroy`, then `dlclose`.
        dlclose: Vec<Duration>,
        /// Unloads that found calls in flight, and so waited for them.
        waited: u64,
        /// The first library that stayed mapped, if one did.
        still_mapped: Option<PathBuf>,
        loads_per_version: [u64; 3],
    }

    fn run(opts: &Options, libs: &[(u32, PathBuf)]) -> Result<ExitCode, String> {
        let mut scratch = Scratch::new().map_err(|e| format!("scratch directory: {e}"))?;
        let registry: Arc<Registry<Plugin>> = Arc::new(Registry::new());
        let totals = Arc::new(Totals::default());
        let mut unloads = Unloads::default();

        // First the --no-drain scenario, drained: a call known to be inside the plugin
        // (spinning in its text) when the unload comes. `unregister` waits for it.
        let deterministic = {
            let (v, lib) = &libs[0];
            let path = scratch.fresh_copy(lib, *v).map_err(|e| e.to_string())?;
            let handle = registry.register(Plugin::load(&path, *v)?);
            let entered = Arc::new(AtomicU32::new(0));
            let caller = {
                let (registry, entered) = (Arc::clone(&registry), Arc::clone(&entered));
                thread::spawn(move || {
                    let mut answers = Vec::new();
                    registry.for_each(|p| {
                        answers.push((p.version, p.call_slow(7, Some(&entered), 100_000)))
                    });
                    answers
                })
            };
            // Acquire: pairs with the plugin's Release store in `call_slow`: the caller is
            // now inside the library.
            while entered.load(Acquire) == 0 {
                thread::yield_now();
            }
            let t = Instant::now();
            let plugin = registry.unregister(handle);
            let waited = t.elapsed();
            drop(plugin);
            let unmapped = is_unmapped(&path);
            let answers = caller.join().map_err(|_| "the slow caller panicked")?;
            let right = answers == [(1, abi::answer(1, 7))];
            if unmapped {
                let _ = std::fs::remove_file(&path);
            }
            println!(
                "a call inside v1's slow callback (100 ms of spinning in its text) when the unload \
                 comes: unregister waited {} for it; then dlclose; unmapped: {}; the call returned \
                 {}",
                fmt_duration(waited),
                if unmapped { "yes" } else { "NO" },
                if right {
                    "v1's answer"
                } else {
                    "a WRONG answer"
                }
            );
            (unmapped, right)
        };

        println!(
            "host: {} worker thread(s) call every loaded plugin at full speed (one pass in {} \
             through a {SLOW_MICROS} µs slow callback) for {}; a controller loads v1, v2, v3, \
             v1, ... each over the last, {RESIDENT} resident, and unloads the older with \
             unregister + dlclose",
            opts.threads,
            FAST_PASSES + 1,
            fmt_duration(opts.duration)
        );
        println!(
            "(wrong: calls whose value is not their library version's; must stay 0. unmapped: \
             unloads after which dlopen(RTLD_NOLOAD) and /proc/self/maps find the library gone)"
        );

        let stop_workers = Arc::new(AtomicBool::new(false));
        let stop_controller = Arc::new(AtomicBool::new(false));
        let controller = {
            let (registry, totals, stop) = (
                Arc::clone(&registry),
                Arc::clone(&totals),
                Arc::clone(&stop_controller),
            );
            let libs = libs.to_vec();
            thread::spawn(move || {
                let result =
                    controller(&registry, &libs, &mut scratch, &totals, &stop, &mut unloads);
                (result, unloads, scratch)
            })
        };
        while registry.len() < RESIDENT && !controller.is_finished() {
            thread::sleep(Duration::from_millis(1));
        }

        let workers: Vec<_> = (0..opts.threads)
            .map(|w| {
                let (registry, totals, stop) = (
                    Arc::clone(&registry),
                    Arc::clone(&totals),
                    Arc::clone(&stop_workers),
                );
                thread::spawn(move || worker(w as u64, &registry, &totals, &stop))
            })
            .collect();

        let start = Instant::now();
        let (mut last_calls, mut last) = (0, start);
        while start.elapsed() < opts.duration && !controller.is_finished() {
            let left = opts.duration.saturating_sub(start.elapsed());
            thread::sleep(left.min(Duration::from_secs(1)));
            let now = Instant::now();
            let calls = totals.calls.load(Relaxed);
            let rate = (calls - last_calls) as f64 / (now - last).as_secs_f64();
            println!(
                "[{:5.1}s] calls {:>11} ({:>4} M/s)  loads {:>5}  unloads {:>5}  unmapped {:>5}  \
                 wrong {}",
                (now - start).as_secs_f64(),
                calls,
                sig3(rate / 1e6),
                totals.loads.load(Relaxed),
                totals.unloads.load(Relaxed),
                totals.unmapped.load(Relaxed),
                totals.wrong.load(Relaxed),
            );
            (last_calls, last) = (calls, now);
        }
        stop_workers.store(true, Relaxed);
        for w in workers {
            w.join().map_err(|_| "a worker panicked")?;
        }
        let elapsed = start.elapsed();
        stop_controller.store(true, Relaxed);
        let (result, mut unloads, scratch) =
            controller.join().map_err(|_| "the controller panicked")?;
        result?;
        assert!(registry.is_empty());
        drop(scratch);

        let calls = totals.calls.load(Relaxed);
        let wrong = totals.wrong.load(Relaxed);
        let loads = totals.loads.load(Relaxed) + 1; // and the deterministic one
        let unloaded = totals.unloads.load(Relaxed) + 1;
        let unmapped = totals.unmapped.load(Relaxed) + u64::from(deterministic.0);
        let per_second = calls as f64 / elapsed.as_secs_f64();
        let [v1, v2, v3] = unloads.loads_per_version;
        println!();
        println!(
            "summary ({} worker thread(s), {})",
            opts.threads,
            fmt_duration(elapsed)
        );
        println!(
            "  plugin loads:   {loads:>11}  (v1 {}, v2 {v2}, v3 {v3}; each a fresh copy of its \
             library, loaded with dlopen)",
            v1 + 1
        );
        println!(
            "  unloads:        {unloaded:>11}  (unregister, then the plugin's destroy, then \
             dlclose)"
        );
        println!(
            "  unmapped:       {unmapped} of {unloaded} unloads unmapped (dlopen RTLD_NOLOAD \
             returned null and /proc/self/maps no longer listed the file)"
        );
        println!(
            "  calls:          {calls:>11}  ({} M/s over {}, {} ns per call; {} of them slow \
             calls of {SLOW_MICROS} µs)",
            sig3(per_second / 1e6),
            fmt_duration(elapsed),
            sig3(1e9 / per_second),
            totals.slow_calls.load(Relaxed)
        );
        let pct = |v: &mut Vec<Duration>, p: f64| {
            v.sort_unstable();
            v[((v.len() - 1) as f64 * p) as usize]
        };
        let n = unloads.unregister.len();
        println!(
            "  unload latency: median {}, p99 {}, max {} (unregister: close, wait for the calls \
             in flight; {} of {n} found calls in flight and waited)",
            fmt_duration(pct(&mut unloads.unregister, 0.5)),
            fmt_duration(pct(&mut unloads.unregister, 0.99)),
            fmt_duration(pct(&mut unloads.unregister, 1.0)),
            unloads.waited
        );
        println!(
            "  dlclose:        median {}, p99 {}, max {} (the plugin's destroy, then dlclose)",
            fmt_duration(pct(&mut unloads.dlclose, 0.5)),
            fmt_duration(pct(&mut unloads.dlclose, 0.99)),
            fmt_duration(pct(&mut unloads.dlclose, 1.0)),
        );
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        if opts.threads >= cpus {
            println!(
                "  note: {} workers + the controller on {cpus} CPU(s): the latency tail includes \
                 a worker preempted inside a call, and the woken controller waiting for a CPU \
                 (try --threads {})",
                opts.threads,
                cpus.saturating_sub(1).max(1)
            );
        }
        println!("  wrong answers:  {wrong:>11}");
        let mut ok = true;
        if wrong != 0 || !deterministic.1 {
            println!(
                "FAILED: {wrong} call(s) returned a value that is not their library version's"
            );
            ok = false;
        }
        if unmapped != unloaded {
            println!(
                "FAILED: {} unload(s) left the library mapped (first: {}): dlclose was a no-op",
                unloaded - unmapped,
                unloads
                    .still_mapped
                    .map_or("the deterministic one".into(), |p| p.display().to_string())
            );
            ok = false;
        }
        if !ok {
            return Ok(ExitCode::FAILURE);
        }
        println!(
            "ok: no call ran into unloaded code: the process is alive, every call returned its \
             library version's value, and every unload unmapped its library (compare: \
             --no-drain)"
        );
        Ok(ExitCode::SUCCESS)
    }

    /// A worker: calls every loaded plugin, checks each answer against the version it loaded.
    fn worker(w: u64, registry: &Registry<Plugin>, totals: &Totals, stop: &AtomicBool) {
        let mut seq = 0u64;
        let (mut calls, mut wrong) = (0u64, 0u64);
        loop {
            for _ in 0..FAST_PASSES {
                seq += 1;
                let x = ((w << 40) | seq) & X_MASK;
                registry.for_each(|p| {
                    calls += 1;
                    wrong += u64::from(p.call(x) != abi::answer(p.version, x));
                });
            }
            let x = ((w << 40) | seq) & X_MASK;
            let mut slow = 0;
            registry.for_each(|p| {
                slow += 1;
                wrong += u64::from(p.call_slow(x, None, SLOW_MICROS) != abi::answer(p.version, x));
            });
            totals.calls.fetch_add(calls + slow, Relaxed);
            totals.slow_calls.fetch_add(slow, Relaxed);
            totals.wrong.fetch_add(wrong, Relaxed);
            (calls, wrong) = (0, 0);
            if stop.load(Relaxed) {
                return;
            }
        }
    }

    /// The controller: loads the next version over the current one, unloads the oldest, checks
    /// that it is gone.
    fn controller(
        registry: &Registry<Plugin>,
        libs: &[(u32, PathBuf)],
        scratch: &mut Scratch,
        totals: &Totals,
        stop: &AtomicBool,
        unloads: &mut Unloads,
    ) -> Result<(), String> {
        let mut resident = VecDeque::new();
        let mut next = 0;
        let result = loop {
            if stop.load(Relaxed) {
                break Ok(());
            }
            let (version, lib) = &libs[next % libs.len()];
            next += 1;
            let plugin = match scratch
                .fresh_copy(lib, *version)
                .map_err(|e| e.to_string())
                .and_then(|path| Plugin::load(&path, *version))
            {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            resident.push_back(registry.register(plugin));
            totals.loads.fetch_add(1, Relaxed);
            unloads.loads_per_version[(*version - 1) as usize] += 1;
            if resident.len() > RESIDENT {
                unload(registry, resident.pop_front().unwrap(), totals, unloads);
            }
            thread::sleep(STEP);
        };
        for handle in resident.drain(..) {
            unload(registry, handle, totals, unloads);
        }
        result
    }

    fn unload(
        registry: &Registry<Plugin>,
        handle: Registration<Plugin>,
        totals: &Totals,
        unloads: &mut Unloads,
    ) {
        let t = Instant::now();
        let pending = registry.prepare_unregister(handle);
        if pending.outstanding() > 0 {
            unloads.waited += 1;
        }
        let plugin = pending.commit();
        let t1 = Instant::now();
        let path = plugin.path.clone();
        drop(plugin); // the plugin's destroy, then dlclose
        unloads.unregister.push(t1 - t);
        unloads.dlclose.push(t1.elapsed());
        totals.unloads.fetch_add(1, Relaxed);
        if is_unmapped(&path) {
            totals.unmapped.fetch_add(1, Relaxed);
            let _ = std::fs::remove_file(&path);
        } else if unloads.still_mapped.is_none() {
            // Kept on disk: its inode must not be reused by a later copy while it is mapped.
            unloads.still_mapped = Some(path);
        }
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

    /// A duration to 3 significant digits in the largest unit that keeps it at or above 1.
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
}
