//! The host's side of a plugin: building the libraries, loading a fresh copy, the value that
//! owns a loaded library, and the checks that an unloaded one is really gone.
//!
//! # Why `Plugin` is safe to hand out as `&Plugin`
//!
//! A loaded library's callbacks are `extern "C" fn` pointers, which Rust treats as `'static`;
//! they are valid only until the library is unloaded. So the pointers never leave this
//! `Plugin`: it owns the `Library`, callers reach the callbacks only through `&Plugin` (in the
//! host, an entry guard of the `Registry`), and the library is closed only in `Plugin`'s
//! `Drop`, which needs the value by ownership, which `Registry::unregister` hands back only
//! once no call into the entry is in flight. The order in `Drop` matters too: first the
//! plugin's own state is freed, by the plugin's code, then the library goes.
//!
//! The naive host of `--no-drain` takes the callbacks out as a [`RawCallbacks`] (`Copy`, no
//! lifetime), the way a C host copies a function pointer out of its list under a lock and
//! calls it after letting go: nothing then ties the call to the library's lifetime.

// Each of the example and tests/plugin_host.rs uses part of this file.
#![allow(dead_code)]

use crate::abi;
use libloading::Library;
use std::ffi::{CStr, CString, c_void};
use std::mem::{ManuallyDrop, MaybeUninit};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::{fmt, fs};

/// The plugin versions, one package each (`plugins/v1` ...).
pub const VERSIONS: [u32; 3] = [1, 2, 3];

/// The workspace root (where `plugins/` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the plugins with cargo (`cargo build --release -p ...`) into `target/plugins`, a
/// target directory of their own: another cargo (the `cargo run` or `cargo test` that started
/// this process) may hold the lock of `target/`. Returns each version's library.
pub fn build_plugins() -> Result<Vec<(u32, PathBuf)>, String> {
    let root = workspace_root();
    if !root.join("plugins/src/plugin.rs").exists() {
        return Err(format!(
            "no plugins/ under {}: run this from a clone of the repository",
            root.display()
        ));
    }
    let target = root.join("target/plugins");
    // The cargo that built this program (cargo run sets CARGO), else the one on the path.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(&target);
    for v in VERSIONS {
        cmd.args(["-p", &format!("drainable-demo-plugin-v{v}")]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!(
            "building the plugins failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(VERSIONS
        .iter()
        .map(|&v| {
            let file = format!("libdrainable_demo_plugin_v{v}.so");
            (v, target.join("release").join(file))
        })
        .collect())
}

/// A directory of fresh copies, one per load, removed with this value.
///
/// Each load needs a path of its own: `dlopen` of a path (or of a file, by device and inode)
/// that is still loaded returns the loaded library, not a new one. And a copy is deleted only
/// once it is known to be unmapped, so that its inode cannot be reused by a later copy while
/// the old library is still mapped.
pub struct Scratch {
    dir: PathBuf,
    copies: u64,
}

impl Scratch {
    /// `<temp>/drainable-plugins-<pid>/`.
    pub fn new() -> std::io::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("drainable-plugins-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(Scratch { dir, copies: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies `library` (version `version`) to a path not used before.
    pub fn fresh_copy(&mut self, library: &Path, version: u32) -> std::io::Result<PathBuf> {
        let path = self.dir.join(format!("v{version}-load{}.so", self.copies));
        self.copies += 1;
        fs::copy(library, &path)?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A loaded plugin: its callbacks, its state, and the library they live in.
pub struct Plugin {
    /// The version the host loaded (the file it copied); the plugin confirmed it at load.
    pub version: u32,
    /// The plugin's name, copied out of the library at load: a `&'static CStr` into its
    /// read-only data would dangle after the unload.
    pub name: String,
    /// The file this load mapped (a fresh copy).
    pub path: PathBuf,
    api: abi::PluginApi,
    state: NonNull<c_void>,
    /// Dropped by hand, last, in `Drop`.
    library: ManuallyDrop<Library>,
}

// SAFETY: the callbacks are thread-safe and the state is immutable once created (the ABI's
// contract, abi.rs); the library handle is `Send`; `destroy` may run on any thread.
unsafe impl Send for Plugin {}
// SAFETY: through `&Plugin` only the thread-safe callbacks run, on the immutable state.
unsafe impl Sync for Plugin {}

impl Plugin {
    /// Loads the library at `path`, which must be version `version` of the demo plugin, and
    /// creates its state.
    pub fn load(path: &Path, version: u32) -> Result<Plugin, String> {
        let err = |what: &str, e: &dyn fmt::Display| format!("{}: {what}: {e}", path.display());
        // SAFETY: loading runs the library's initialisers: the demo plugins' are Rust std's
        // (no constructors of their own), which are sound to run on any thread.
        let library = unsafe { Library::new(path) }.map_err(|e| err("dlopen", &e))?;
        let mut api = MaybeUninit::<abi::PluginApi>::uninit();
        {
            // SAFETY: the symbol is the demo plugins' entry point, of type `EntryFn` (the
            // plugin asserts it at compile time). The `Symbol` borrows `library`, and is gone
            // by the end of this block: the pointer is not kept.
            let entry = unsafe { library.get::<abi::EntryFn>(abi::ENTRY) }
                .map_err(|e| err("no entry point", &e))?;
            // SAFETY: `api` is valid for the write of a `PluginApi`; the library is loaded.
            let status = unsafe { entry(abi::ABI_VERSION, api.as_mut_ptr()) };
            if status != 0 {
                return Err(err("entry point refused ABI", &abi::ABI_VERSION));
            }
        }
        // SAFETY: the entry point returned 0, so it wrote the whole struct.
        let api = unsafe { api.assume_init() };
        if api.version != version {
            return Err(err("wrong version", &api.version));
        }
        // SAFETY: the name is a NUL-terminated string in the loaded library (the ABI's
        // contract); it is copied at once.
        let name = unsafe { CStr::from_ptr(api.name) }
            .to_string_lossy()
            .into_owned();
        let state = NonNull::new((api.create)()).ok_or_else(|| err("create", &"null state"))?;
        Ok(Plugin {
            version,
            name,
            path: path.to_owned(),
            api,
            state,
            library: ManuallyDrop::new(library),
        })
    }

    /// The fast callback: returns `abi::answer(self.version, x)` if the plugin is right.
    #[inline]
    pub fn call(&self, x: u64) -> u64 {
        // SAFETY: the library is loaded and the state alive as long as `self` is (`Drop`).
        unsafe { (self.api.call)(self.state.as_ptr(), x) }
    }

    /// The slow callback: stores 1 into `entered` once it runs the plugin's code, spins there
    /// for `micros` µs, then answers as `call` does.
    pub fn call_slow(&self, x: u64, entered: Option<&AtomicU32>, micros: u64) -> u64 {
        let entered = entered.map_or(std::ptr::null_mut(), AtomicU32::as_ptr);
        // SAFETY: as in `call`; `entered` is null or borrowed for the whole call, and only
        // accessed atomically (the ABI's contract).
        unsafe { (self.api.call_slow)(self.state.as_ptr(), x, entered, micros) }
    }

    /// The thread-local hazard: see `abi::PluginApi::touch_thread_local`.
    pub fn touch_thread_local(&self) -> u64 {
        (self.api.touch_thread_local)()
    }

    /// The callbacks without the library's lifetime: what the naive host calls through.
    pub fn raw_callbacks(&self) -> RawCallbacks {
        RawCallbacks {
            api: self.api,
            state: self.state,
        }
    }
}

impl Drop for Plugin {
    /// The order a plugin's removal needs: first what the plugin owns, by the plugin's code,
    /// then the library. (Field order would drop the library after `Drop::drop` anyway; the
    /// `ManuallyDrop` says so in the code.)
    fn drop(&mut self) {
        // SAFETY: no call is using the state (`Drop` has the value by ownership, so no
        // `&Plugin` is left: in the host, the registry drained its entry) and the library is
        // still loaded.
        unsafe { (self.api.destroy)(self.state.as_ptr()) };
        // SAFETY: dropped once, here; nothing of the library is used after this line.
        unsafe { ManuallyDrop::drop(&mut self.library) }; // dlclose
    }
}

/// A plugin's callbacks copied out of it: `Copy`, and tied to nothing, so that a call
/// through them may run after the library is gone. Only the naive host uses it.
#[derive(Clone, Copy)]
pub struct RawCallbacks {
    api: abi::PluginApi,
    state: NonNull<c_void>,
}

// SAFETY: as for `Plugin`; whether the library is still loaded is the caller's problem (every
// method is `unsafe`).
unsafe impl Send for RawCallbacks {}

impl RawCallbacks {
    /// # Safety
    ///
    /// The plugin these came from is still loaded and its state not destroyed.
    pub unsafe fn call(&self, x: u64) -> u64 {
        // SAFETY: the caller's contract.
        unsafe { (self.api.call)(self.state.as_ptr(), x) }
    }

    /// # Safety
    ///
    /// As for [`call`](Self::call), for the whole call.
    pub unsafe fn call_slow(&self, x: u64, entered: &AtomicU32, micros: u64) -> u64 {
        // SAFETY: the caller's contract; `entered` is borrowed for the whole call.
        unsafe { (self.api.call_slow)(self.state.as_ptr(), x, entered.as_ptr(), micros) }
    }
}

/// One line of `/proc/self/maps` that maps a given file.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: usize,
    pub end: usize,
    pub perms: String,
}

impl Mapping {
    pub fn is_text(&self) -> bool {
        self.perms.contains('x')
    }

    pub fn contains(&self, addr: usize) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x} {}", self.start, self.end, self.perms)
    }
}

/// The mappings of `path` in this process, from `/proc/self/maps`.
///
/// The kernel hands the file out a page at a time and resumes by address, so a read that
/// races another thread's `mmap` or `munmap` can miss a line. This reads it twice and keeps
/// what either read saw; the host's only other mapper is thread creation, and the test
/// serialises its loads.
pub fn mappings(path: &Path) -> Vec<Mapping> {
    let mut found = read_mappings(path);
    for m in read_mappings(path) {
        if !found.iter().any(|f| f.start == m.start) {
            found.push(m);
        }
    }
    found.sort_by_key(|m| m.start);
    found
}

fn read_mappings(path: &Path) -> Vec<Mapping> {
    let Ok(maps) = fs::read("/proc/self/maps") else {
        return Vec::new();
    };
    let path = path.as_os_str().as_bytes();
    maps.split(|&b| b == b'\n')
        .filter_map(|line| {
            // "start-end perms offset dev inode      pathname"
            let mut fields = line.splitn(6, |&b| b == b' ');
            let range = std::str::from_utf8(fields.next()?).ok()?;
            let perms = std::str::from_utf8(fields.next()?).ok()?;
            let name = fields.nth(3)?.trim_ascii_start();
            if name != path {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                perms: perms.to_owned(),
            })
        })
        .collect()
}

/// Whether the dynamic loader still has the library at `path` loaded: `dlopen(path,
/// RTLD_NOLOAD)`, which never loads. Call it while the file still exists: for a name with a
/// slash glibc also compares the file's device and inode with the loaded libraries'.
pub fn is_loaded(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path; with RTLD_NOLOAD, dlopen loads nothing and runs no
    // initialiser, it only looks the library up and, if found, takes a reference to it.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY) };
    if handle.is_null() {
        return false;
    }
    // SAFETY: gives back the reference the successful dlopen just took.
    unsafe { libc::dlclose(handle) };
    true
}

/// After an unload: whether the library at `path` is gone, both to the dynamic loader and from
/// the address space.
pub fn is_unmapped(path: &Path) -> bool {
    !is_loaded(path) && mappings(path).is_empty()
}
