//! `--no-drain`: the same host removing a plugin the naive way, in a child process so that the
//! demo survives it.
//!
//! The naive host keeps its plugins in a `RwLock<Vec<Plugin>>`; a caller copies the callbacks
//! out under the read lock and calls them after letting go of it (holding a lock across a
//! callback is the other classic bug), so a removal waits for the lock, not for the calls. The
//! child makes the crash certain rather than likely: one caller enters the plugin's slow
//! callback, which stores a flag the host gave it and then spins in the plugin's text; once
//! the host sees the flag it unlinks the plugin and drops it (`destroy`, then `dlclose`) at
//! once. The caller's next instruction is in a page that is no longer mapped.
//!
//! Before the unload the child writes the library's mappings (from `/proc/self/maps`) to
//! stderr; a `sigaction(SA_SIGINFO)` handler writes the fault's `si_addr` there too, with
//! `write(2)` alone (async-signal-safe), and lets the fault kill the process. The parent
//! reports the signal and whether the address lies in the unloaded library's former text.

use crate::plugin::{Mapping, Plugin, RawCallbacks, Scratch, mappings};
use std::ffi::{c_int, c_void};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

/// The argument that makes the program the child.
pub const CHILD_ARG: &str = "--no-drain-child";

/// How long the slow callback spins at most: far longer than the child needs to crash, and
/// bounded, so that a child that does not crash still ends.
const SLOW_CALL_MICROS: u64 = 3_000_000;

/// The parent: runs the child, reports how it died. Success means it crashed as it must.
pub fn parent(library: &Path) -> ExitCode {
    println!(
        "--no-drain: the same host, removing a plugin the naive way (unlink it from the list, \
         then dlclose at once), in a child process"
    );
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("plugin_host: cannot find this program to re-run it: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match Command::new(exe).arg(CHILD_ARG).arg(library).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("plugin_host: cannot run the child: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut maps = Vec::new();
    let mut fault = None;
    let mut scratch = None;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if let Some(m) = line.strip_prefix("map ") {
            maps.extend(parse_mapping(m));
        } else if let Some(f) = line.strip_prefix("fault ") {
            fault = fault.or_else(|| parse_fault(f));
        } else if let Some(dir) = line.strip_prefix("scratch ") {
            scratch = Some(PathBuf::from(dir));
        } else {
            println!("  | {line}");
        }
    }
    // The child died before it could remove its copies of the library.
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }

    let Some(signal) = out.status.signal() else {
        println!(
            "FAILED: the child was not killed by a signal ({}): the naive unload did not crash \
             (was the dlclose a no-op?)",
            out.status
        );
        return ExitCode::FAILURE;
    };
    println!(
        "  the child was killed by {} (signal {signal}): a call ran into unloaded code",
        signal_name(signal)
    );
    let Some((fault_signal, addr)) = fault else {
        println!("FAILED: the child's fault handler reported no address");
        return ExitCode::FAILURE;
    };
    let text: Vec<&Mapping> = maps.iter().filter(|m| m.is_text()).collect();
    match maps.iter().find(|m| m.contains(addr)) {
        Some(m) if m.is_text() => println!(
            "  faulting address {addr:#x} ({}): inside the unloaded library's former text \
             {m}, at offset {:#x}",
            signal_name(fault_signal),
            addr - m.start
        ),
        Some(m) => println!(
            "  faulting address {addr:#x} ({}): inside the unloaded library's former mapping \
             {m}",
            signal_name(fault_signal)
        ),
        None => {
            println!(
                "FAILED: faulting address {addr:#x} is not in the unloaded library's former \
                 mappings ({} text: {})",
                text.len(),
                text.iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::FAILURE;
        }
    }
    println!(
        "ok: this is the crash the drain prevents (without --no-drain, unregister waits for \
         the call to return before the dlclose)"
    );
    ExitCode::SUCCESS
}

fn parse_mapping(s: &str) -> Option<Mapping> {
    let (range, perms) = s.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: parse_hex(start)?,
        end: parse_hex(end)?,
        perms: perms.to_owned(),
    })
}

/// `signal=<n> addr=0x<hex>`
fn parse_fault(s: &str) -> Option<(i32, usize)> {
    let (sig, addr) = s.split_once(' ')?;
    let sig = sig.strip_prefix("signal=")?.parse().ok()?;
    Some((sig, parse_hex(addr.strip_prefix("addr=")?)?))
}

fn parse_hex(s: &str) -> Option<usize> {
    usize::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        libc::SIGILL => "SIGILL".into(),
        libc::SIGABRT => "SIGABRT".into(),
        n => format!("signal {n}"),
    }
}

/// The child: loads version 1, runs a caller at full speed and one inside the slow callback,
/// and unloads the plugin the naive way while that call is known to be inside it.
pub fn child(library: &Path) -> ExitCode {
    install_fault_handler();
    let mut scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("child: cannot make a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("scratch {}", scratch.dir().display());
    let plugin = match scratch
        .fresh_copy(library, 1)
        .map_err(|e| e.to_string())
        .and_then(|path| Plugin::load(&path, 1))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("child: {e}");
            return ExitCode::FAILURE;
        }
    };
    let maps = mappings(&plugin.path);
    eprintln!(
        "child: loaded {} from {} ({} mappings, text {})",
        plugin.name,
        plugin.path.display(),
        maps.len(),
        maps.iter()
            .filter(|m| m.is_text())
            .map(|m| format!("{:#x}-{:#x}", m.start, m.end))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for m in &maps {
        eprintln!("map {m}");
    }

    // The naive host's list.
    let list = Arc::new(RwLock::new(vec![plugin]));
    let snapshot = |list: &RwLock<Vec<Plugin>>| -> Vec<RawCallbacks> {
        let list = list.read().unwrap_or_else(|e| e.into_inner());
        list.iter().map(Plugin::raw_callbacks).collect()
    };

    // A caller at full speed, as the drained host's workers.
    let stop = Arc::new(AtomicBool::new(false));
    let fast = {
        let (list, stop) = (Arc::clone(&list), Arc::clone(&stop));
        thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for cb in snapshot(&list) {
                    x += 1;
                    // SAFETY: none: this is the naive host's bug, on purpose. The callbacks
                    // were copied out of the list, and nothing keeps the library loaded until
                    // the call returns.
                    std::hint::black_box(unsafe { cb.call(x) });
                }
            }
        })
    };

    // The caller that is known to be inside the plugin when the unload comes.
    let entered = Arc::new(AtomicU32::new(0));
    let slow = {
        let (list, entered) = (Arc::clone(&list), Arc::clone(&entered));
        thread::spawn(move || {
            for cb in snapshot(&list) {
                // SAFETY: none, as above: the library is unloaded during this call.
                std::hint::black_box(unsafe { cb.call_slow(7, &entered, SLOW_CALL_MICROS) });
            }
        })
    };

    let t = Instant::now();
    // Acquire: pairs with the Release store in the plugin's `call_slow`: from here on the
    // caller is running the plugin's code.
    while entered.load(Ordering::Acquire) == 0 {
        if t.elapsed() > Duration::from_secs(10) {
            eprintln!("child: the slow call never entered the plugin");
            return ExitCode::FAILURE;
        }
        thread::yield_now();
    }
    eprintln!("child: a call is inside the plugin's slow callback; unlinking and dlclosing now");
    let plugin = list.write().unwrap_or_else(|e| e.into_inner()).remove(0); // unlink
    drop(plugin); // the plugin's destroy, then dlclose: nothing waits for the calls
    eprintln!("child: dlclosed");

    // The crash comes now, in the caller inside the plugin or the next fast call. Should it
    // not (the library stayed mapped), the slow call returns within its bound.
    let _ = slow.join();
    stop.store(true, Ordering::Relaxed);
    let _ = fast.join();
    eprintln!("child: survived the unload");
    ExitCode::SUCCESS
}

/// SIGSEGV, SIGBUS and SIGILL (what running unmapped or remapped code gives) report their
/// fault address on stderr and then kill the process as they would have. No core dump.
fn install_fault_handler() {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit; lowering our own core size limit has no other effect.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    for signal in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL] {
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        let handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) = on_fault;
        action.sa_sigaction = handler as *const () as usize;
        // SA_RESETHAND: the handler runs once, then the default action (terminate) is back.
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
        // SAFETY: installs a handler that only calls async-signal-safe functions (`write`);
        // this replaces std's stack-overflow handler, which the child does not need.
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
}

/// Writes `fault signal=<n> addr=0x<hex>` to stderr and returns: the default action is back
/// (`SA_RESETHAND`), and returning re-runs the faulting instruction, which faults again and
/// kills the process with the same signal, so the parent sees how it died.
extern "C" fn on_fault(signal: c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    // SAFETY: the kernel passes an SA_SIGINFO handler a valid siginfo; for these signals
    // `si_addr` is the fault's address.
    let addr = unsafe { (*info).si_addr() } as usize;
    let mut buf = [0u8; 64];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    put(b"fault signal=");
    put(&[b'0' + (signal / 10 % 10) as u8, b'0' + (signal % 10) as u8]);
    put(b" addr=0x");
    let mut hex = [0u8; 16];
    for (i, h) in hex.iter_mut().enumerate() {
        *h = b"0123456789abcdef"[(addr >> (60 - 4 * i)) & 0xf];
    }
    put(&hex);
    put(b"\n");
    // SAFETY: `write` is async-signal-safe; `buf` is valid for `len` bytes.
    unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len) };
}
