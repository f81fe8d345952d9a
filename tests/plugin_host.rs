//! The plugin host's pieces (`examples/plugin_host/`) on real libraries: a load, calls, an
//! unregister while a call is inside the plugin, the unload, and the check that the library is
//! gone; and the thread-local hazard, which keeps an unloaded library mapped.
//!
//! Builds the demo plugins with cargo (`target/plugins`, a second or two the first time).
//! glibc only (musl's `dlclose` never unmaps), and not under Miri (no `dlopen`).

#![cfg(all(target_os = "linux", target_env = "gnu", not(miri)))]

#[path = "../examples/plugin_host/abi.rs"]
mod abi;
#[path = "../examples/plugin_host/plugin.rs"]
mod plugin;

use drainable::Registry;
use plugin::{Plugin, Scratch, build_plugins, is_loaded, is_unmapped, mappings};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Acquire, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// The built libraries, once per test process; `None` outside a clone of the repository (the
/// published package does not ship `plugins/`), where these tests have nothing to load.
fn libraries() -> Option<&'static [(u32, PathBuf)]> {
    static LIBS: OnceLock<Vec<(u32, PathBuf)>> = OnceLock::new();
    if !Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .is_dir()
    {
        eprintln!("no plugins/ here (a published package): nothing to load, test skipped");
        return None;
    }
    Some(LIBS.get_or_init(|| build_plugins().unwrap_or_else(|e| panic!("{e}"))))
}

/// One test at a time maps and unmaps libraries: a read of /proc/self/maps that races an
/// `mmap` or `munmap` on another thread can miss a line (`plugin::mappings`).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn load_call_unregister_unload_and_the_library_is_gone() {
    let _serial = serial();
    let Some(libs) = libraries() else { return };
    let mut scratch = Scratch::new().unwrap();
    let registry: Arc<Registry<Plugin>> = Arc::new(Registry::new());
    let mut paths = Vec::new();
    let mut handles = Vec::new();
    for (version, lib) in libs {
        let path = scratch.fresh_copy(lib, *version).unwrap();
        let plugin = Plugin::load(&path, *version).unwrap();
        assert_eq!(plugin.name, format!("demo plugin v{version}"));
        assert!(is_loaded(&path));
        assert!(mappings(&path).iter().any(|m| m.is_text()));
        handles.push(registry.register(plugin));
        paths.push(path);
    }
    // Every version answers with its own value.
    let mut answers = Vec::new();
    registry.for_each(|p| answers.push(p.call(42)));
    assert_eq!(answers, [1, 2, 3].map(|v| abi::answer(v, 42)));

    // Unregister v2 while a call is spinning inside it: the unregister waits for the call.
    let entered = Arc::new(AtomicU32::new(0));
    let id = handles[1].id();
    let returned = Arc::new(AtomicBool::new(false));
    let caller = {
        let (registry, entered, returned) = (
            Arc::clone(&registry),
            Arc::clone(&entered),
            Arc::clone(&returned),
        );
        thread::spawn(move || {
            let p = registry.get(id).unwrap();
            let answer = p.call_slow(7, Some(&entered), 50_000);
            // Relaxed: the guard's drop (after this) is ordered before unregister's return.
            returned.store(true, Relaxed);
            answer
        })
    };
    while entered.load(Acquire) == 0 {
        thread::yield_now();
    }
    let t = Instant::now();
    let v2 = registry.unregister(handles.remove(1));
    let waited = t.elapsed();
    assert!(
        returned.load(Relaxed),
        "unregister returned before the call did"
    );
    assert_eq!(caller.join().unwrap(), abi::answer(2, 7));
    assert!(
        waited >= Duration::from_millis(10),
        "waited only {waited:?}"
    );
    drop(v2); // the plugin's destroy, then dlclose
    assert!(is_unmapped(&paths[1]), "v2 still mapped after its unload");
    assert!(is_loaded(&paths[0]) && is_loaded(&paths[2]));

    for h in handles {
        drop(registry.unregister(h));
    }
    for path in &paths {
        assert!(is_unmapped(path), "{} still mapped", path.display());
    }
}

/// The hazard the demo plugins' callbacks avoid: a thread-local with a destructor, touched on
/// a host thread, pins the library: `dlclose` returns, and it stays mapped while that thread
/// lives. This is why the host checks every unload instead of trusting `dlclose`.
#[test]
fn a_thread_local_destructor_keeps_an_unloaded_library_mapped() {
    let _serial = serial();
    let Some(libs) = libraries() else { return };
    let mut scratch = Scratch::new().unwrap();
    let (version, lib) = &libs[2];
    let path = scratch.fresh_copy(lib, *version).unwrap();
    let registry: Arc<Registry<Plugin>> = Arc::new(Registry::new());
    let handle = registry.register(Plugin::load(&path, *version).unwrap());

    let (touched_tx, touched_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let thread = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || {
            registry.for_each(|p| touched_tx.send(p.touch_thread_local()).unwrap());
            let _ = exit_rx.recv(); // lives on, with the destructor pending
        })
    };
    assert_eq!(touched_rx.recv().unwrap(), 1);
    drop(registry.unregister(handle)); // destroy, then dlclose: returns as usual
    assert!(
        is_loaded(&path) && !mappings(&path).is_empty(),
        "the library was unmapped with a thread-local destructor pending"
    );
    drop(exit_tx);
    thread.join().unwrap(); // the destructor runs, in the still-mapped library
    // glibc unloads it at the next dlclose of anything once no destructor is pending: here,
    // the one `is_loaded` makes after its probe.
    let _ = is_loaded(&path);
    assert!(is_unmapped(&path), "still mapped after the thread exited");
}
