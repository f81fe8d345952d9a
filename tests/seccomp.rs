//! `membarrier` refused after start-up, as a sandbox's seccomp filter does: per-CPU drains
//! must still complete, exactly (no guard missed), without a panic and without leaving a
//! drainable stuck closing.
//!
//! The test runs in a child process (the filter cannot be removed, and applies to every
//! thread): the child takes guards on worker threads first (so that thread-local records
//! exist and the process registered for `membarrier`), then installs a filter that makes
//! `membarrier` fail with `EPERM`, then drains in every way while the workers hammer guards
//! on a heap canary that is poisoned right after each drain.
#![cfg(all(target_os = "linux", target_arch = "x86_64", not(miri)))] // Miri cannot spawn the child

mod child;

use drainable::PerCpuDrainable;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const MARKER: &str = "seccomp-child: done";

#[test]
fn drains_complete_after_membarrier_is_refused() {
    if !child::in_child() {
        let (stdout, _) =
            child::expect_child("drains_complete_after_membarrier_is_refused", &[], MARKER);
        // Say which case ran, for whoever reads `--nocapture` output.
        for line in stdout
            .lines()
            .filter_map(|l| l.find("seccomp-child:").map(|i| &l[i..]))
        {
            println!("{line}");
        }
        return;
    }
    child::setup(Duration::from_secs(60));
    let records = child::records_expected(false);

    let value = child::Value::new();
    let d = PerCpuDrainable::new(&value);
    let stats = child::Stats::default();
    let mut filtered = false;
    thread::scope(|s| {
        // Workers that hold guards (so own records) before the filter exists.
        let (ready_tx, ready_rx) = mpsc::channel();
        for _ in 0..2 {
            let ready_tx = ready_tx.clone();
            let (d, stats) = (&d, &stats);
            s.spawn(move || {
                drop(d.try_acquire().expect("open"));
                ready_tx.send(()).unwrap();
                child::reader(d, stats);
            });
        }
        for _ in 0..2 {
            ready_rx.recv().unwrap();
        }
        // One drain while membarrier works: no signal handler gets installed for it.
        d.drain();
        assert!(d.reopen());
        assert_eq!(
            child::rt_signals_with_handlers(),
            Vec::<i32>::new(),
            "a handler was installed while membarrier works"
        );

        filtered = install_membarrier_filter();
        if !filtered {
            println!("seccomp-child: no seccomp filters in this kernel: ran without one");
        } else {
            assert_eq!(
                child::membarrier_expedited(),
                libc::EPERM,
                "the filter does not refuse membarrier"
            );
        }

        child::drain_cycles(&d, &value, &stats, 120);
        stats.stop.store(true, Relaxed);
    });
    assert_eq!(
        stats.violations.load(Relaxed),
        0,
        "a guard outlived a drain"
    );
    assert!(stats.ok.load(Relaxed) > 0);

    // Threads created after the filter, and the registry's unregister path.
    assert_eq!(
        child::registry_cycles(2, 100),
        0,
        "a call outlived unregister"
    );

    if records && filtered {
        assert_ne!(
            child::rt_signals_with_handlers(),
            Vec::<i32>::new(),
            "the drains did not use the signal barrier"
        );
        println!("seccomp-child: records in use, drains went through the signal barrier");
    } else {
        println!("seccomp-child: no thread-local records here (no membarrier): slots only");
    }
    println!("{MARKER}");
}

/// Installs, on every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`), a classic BPF
/// filter that makes `membarrier` fail with `EPERM` and allows everything else. `false` if
/// the kernel has no seccomp filters.
fn install_membarrier_filter() -> bool {
    // <linux/filter.h>: BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JEQ | BPF_K, BPF_RET | BPF_K
    // (BPF_LD, BPF_W and BPF_K are 0); <linux/seccomp.h>, <linux/audit.h>.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: libc::c_uint = 1;
    // struct seccomp_data { int nr; __u32 arch; ... }
    const NR: u32 = 0;
    const ARCH: u32 = 4;

    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const SockFilter,
    }
    let op = |code, jt, jf, k| SockFilter { code, jt, jf, k };
    let prog = [
        op(BPF_LD_W_ABS, 0, 0, ARCH),
        op(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        op(BPF_LD_W_ABS, 0, 0, NR),
        op(BPF_JMP_JEQ_K, 0, 1, libc::SYS_membarrier as u32),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ];
    let fprog = SockFprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "prctl(PR_SET_NO_NEW_PRIVS): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the kernel copies the program (`fprog` and `prog` live on this frame for the
    // call); TSYNC applies it to every thread of the process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const SockFprog,
        )
    };
    let err = std::io::Error::last_os_error();
    if r != 0 && matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return false;
    }
    assert_eq!(r, 0, "seccomp(SET_MODE_FILTER, TSYNC): {err}");
    true
}
