//! The signal barrier: the heavy barrier of the thread-local entries
//! (`counter/per_cpu/records.rs`) once `membarrier` is refused after start-up.
//!
//! A sandbox may install a seccomp filter after the process registered for
//! `MEMBARRIER_CMD_PRIVATE_EXPEDITED` and handed out records. Records cannot be taken back
//! (threads keep taking guards on them with a plain store), so the drains still need a
//! barrier that every thread able to write a record passes. This one is the idea of
//! liburcu's signal flavour (`urcu-signal`, <https://liburcu.org>; the code here is our
//! own): a signal to each thread that owns a record, acknowledged from its handler after a
//! full fence.
//!
//! # The handshake
//!
//! ```text
//! drainer                                    owner thread T (in its signal handler)
//!   close the word; SeqCst fence               r = requests        (Acquire)
//!   req = ++requests   (Release)               SeqCst fence
//!   tgkill(T, signal)                          acks = max(acks, r) (Release); futex wake
//!   wait until acks >= req (Acquire)
//!   scan the entries
//! ```
//!
//! The handler runs in T's instruction stream, between two of its instructions, and the
//! acquirer side separates its entry store from its load of the word with a compiler fence,
//! which is exactly what `compiler_fence` orders against a signal handler on the same
//! thread. So the handler whose acknowledgement the drainer reads ran either before T's entry
//! store or after it:
//!
//! - before it: the handler read `requests` after the drainer's increment (it acknowledged
//!   `r >= req`), so the drainer's close happens-before the handler, and T's later load of
//!   the word sees the close (T backs out);
//! - after it: the store is before the handler's fence, and the `Release` acknowledgement
//!   publishes it to the drainer's `Acquire` load: the scan sees the entry.
//!
//! Either way the pair acts as `membarrier` does, and the same holds for a releaser's store
//! of 0 and load of `waiters`. Reading `requests` *before* the fence is what makes the first
//! case work; a handler run for a request it did not read cannot satisfy it.
//!
//! # Who is signalled
//!
//! Each record's [`Handshake`] holds the kernel tid of the thread that may still write its
//! entries (0: none), with a generation bumped by every claim. A thread stamps it when it
//! claims the record and then runs a `SeqCst` fence: a barrier (which reads the stamps after
//! the `SeqCst` fence that follows its close) either sees the stamp, or the thread's later
//! load of the word sees the close. A thread that exits gives its record back (tid 0,
//! `Release`) only if it holds no entry of it any more; one that exits still holding an entry
//! (a leaked guard, or one dropped by a later thread-local destructor, which still writes the
//! record) keeps the record stamped, so it is still signalled; the record is reaped (given
//! back) once a barrier finds the thread gone. The drainer does not signal itself.
//!
//! A thread is gone when `tgkill` answers `ESRCH`, or when `/proc` says it is a zombie (an
//! exited thread-group leader, which `tgkill` still finds). A gone thread runs no more code,
//! and the kernel let it go only after its last writes: the system call that says so, then a
//! `SeqCst` fence, orders them before the drainer's later loads. After a `fork` the child's
//! only thread stamps its record with its new tid (a `pthread_atfork` handler); the other
//! records' owners do not exist in the child and are reaped there.
//!
//! # The signal
//!
//! The handler is installed lazily, by the first barrier that has a thread to signal, so a
//! process where `membarrier` works never gets one. It takes the highest real-time signal
//! whose disposition is the default (never replacing an application's handler), or the one
//! named by `DRAINABLE_SIGNAL=<n>`, which must have the default disposition too. Real-time
//! signals are queued, not merged; and a signal merged with a pending one would still be
//! enough, because a handler acknowledges the `requests` it reads when it runs. So nothing is
//! re-sent, except after `EAGAIN` (the queue of pending signals is full).
//!
//! The signal is sent with `tgkill`, not with `rt_tgsigqueueinfo` and the record's address in
//! `si_value`: any process of the same user can queue a signal with any `si_value`, so the
//! handler must not dereference it; it finds its records by its tid instead, among the
//! records (which are never freed). `tgkill` then carries all that is needed and needs no
//! hand-built `siginfo_t`, whose layout differs between Linux ABIs.
//!
//! The handler only loads and read-modify-writes atomics, makes the `gettid` and `futex`
//! system calls, and restores `errno`: it is async-signal-safe. It is installed with
//! `SA_RESTART` (interrupted system calls restart where the kernel allows it) and
//! `SA_ONSTACK` (an alternate signal stack is used if the thread has one, as runtimes such as
//! Go require of foreign handlers).
//!
//! # Limits
//!
//! - A thread that owns a record and blocks the signal holds every drain up until it
//!   unblocks it or exits: there is no sound way around it. After a second the drain says so
//!   on stderr (naming the thread and the signal, from `/proc`), once, and waits on. So does a
//!   stopped thread, or one in an uninterruptible sleep. A timed drain gives up at its
//!   deadline here as anywhere (its close is then undone or kept, as for any timeout).
//! - If the application installs a handler of its own on the signal later, and that handler
//!   does not chain to drainable's, no thread acknowledges any more: a barrier that waited a
//!   second for a thread that does not block the signal, and found the handler replaced,
//!   panics, saying so.
//! - A timed drain keeps its deadline here, but gives the handlers at least `CHECK_EVERY`
//!   (10 ms) to run, so that a deadline already past does not fail every time.
//! - If the handler cannot be installed (no free real-time signal, `sigaction` refused) or
//!   `tgkill` is refused, there is no sound barrier at all, and the barrier panics with a
//!   message that says why.
//! - A thread-group leader that called `pthread_exit` while holding an entry stays a zombie
//!   that `tgkill` still finds; it is recognised as gone only through `/proc`. Where `/proc`
//!   is not mounted, drains wait for such a thread as for one that blocks the signal.
//! - Every thread that took a per-CPU guard may see a system call interrupted (`EINTR`)
//!   where the kernel does not restart it, as with any signal.
//! - Under ThreadSanitizer a signal handler runs only when the thread next enters a libc
//!   function TSan intercepts: a thread asleep in a raw `futex` system call (as `std`'s
//!   channels and locks are) does not run it until something else wakes it, and a drain waits
//!   for it that long (the deferral: <https://github.com/llvm/llvm-project/issues/83561>,
//!   <https://github.com/google/sanitizers/issues/838>).
//!
//! # Testing aid
//!
//! `DRAINABLE_FORCE_SIGNAL_BARRIER=1`, read once per process (when the first per-CPU
//! drainable is created), makes every heavy barrier a signal barrier while records are handed
//! out as usual, whether or not `membarrier` works. `DRAINABLE_NO_MEMBARRIER` (no records at
//! all) takes precedence.

#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(any(miri, drainable_loom))
))]
pub(crate) use linux::*;
#[cfg(not(all(
    any(target_os = "linux", target_os = "android"),
    not(any(miri, drainable_loom))
)))]
pub(crate) use stub::*;

/// Everywhere else there is no signal barrier: `membarrier` is Linux's, and under Miri and
/// loom the heavy barrier is a `SeqCst` fence.
#[cfg(not(all(
    any(target_os = "linux", target_os = "android"),
    not(any(miri, drainable_loom))
)))]
// Under loom, records are never given back and no thread forks.
#[cfg_attr(drainable_loom, allow(dead_code))]
mod stub {
    /// A record's side of the signal barrier: nothing here.
    pub(crate) struct Handshake;

    impl Handshake {
        pub(crate) const fn new() -> Self {
            Handshake
        }

        pub(crate) fn claim(&self) {}

        pub(crate) fn give_back(&self) {}

        pub(crate) fn after_fork(&self) {}
    }

    /// Nothing to watch: always `true`.
    pub(crate) fn watch_forks(_child: extern "C" fn()) -> bool {
        true
    }
}

#[cfg(all(
    any(target_os = "linux", target_os = "android"),
    not(any(miri, drainable_loom))
))]
mod linux {
    use crate::platform::membarrier::Owners;
    use crate::platform::{self, AtomicBool, AtomicU32, AtomicU64, Ordering, futex};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// The tid half of [`Handshake::word`]; the generation is the other half.
    const TID: u64 = 0xffff_ffff;
    /// How often a waiting drainer checks that the thread still exists.
    const CHECK_EVERY: Duration = Duration::from_millis(10);
    /// How long a drainer waits for one thread before it reports it on stderr.
    const REPORT_AFTER: Duration = Duration::from_secs(1);
    /// How long a drainer waits before it re-sends a signal the kernel could not queue.
    const QUEUE_FULL_RETRY: Duration = Duration::from_micros(50);

    /// A record's side of the signal barrier: who owns the record, and the barriers asked of
    /// and acknowledged by that thread.
    pub(crate) struct Handshake {
        /// `generation << 32 | tid`: the kernel tid of the thread that may still write the
        /// record's entries, 0 if none; the generation changes with every claim, so that a
        /// drainer can tell a new owner from an old one with a reused tid.
        word: AtomicU64,
        /// Barriers asked of the owner: bumped by each drainer before it signals.
        requests: AtomicU32,
        /// The highest `requests` an owner's handler read before its fence.
        acks: AtomicU32,
    }

    impl Handshake {
        pub(crate) const fn new() -> Self {
            Handshake {
                word: AtomicU64::new(0),
                requests: AtomicU32::new(0),
                acks: AtomicU32::new(0),
            }
        }

        /// Stamps the calling thread as the owner. Called once the record is this thread's
        /// (taken from the pool, or pushed on the list), before its first entry write.
        pub(crate) fn claim(&self) {
            // Relaxed: the last writer (the previous owner's give-back, or a reaper) stored
            // it before its Release of `in_use`, which the claim's Acquire CAS read.
            let generation = self.word.load(Ordering::Relaxed) >> 32;
            let word = generation.wrapping_add(1) << 32 | u64::from(gettid());
            // Release: a drainer that reads this word knows the previous owner is done with
            // the record (see `Target::done`).
            self.word.store(word, Ordering::Release);
            // SeqCst: pairs with the `SeqCst` fence between a drainer's close and its reads
            // of the words: either that barrier reads this stamp (and signals this thread),
            // or this thread's later loads of the word see the close.
            platform::fence(Ordering::SeqCst);
        }

        /// Gives up the ownership: the calling thread, the owner, will not write the
        /// record again.
        pub(crate) fn give_back(&self) {
            // Relaxed: the owner's own stamp.
            let word = self.word.load(Ordering::Relaxed);
            // Release: a drainer that reads "no owner" sees this thread's entry writes.
            self.word.store(word & !TID, Ordering::Release);
        }

        /// Re-stamps the record with the calling thread's tid, in the child of a `fork`
        /// (the only thread there, and a new tid).
        pub(crate) fn after_fork(&self) {
            // Relaxed: no other thread exists yet in the child.
            let word = self.word.load(Ordering::Relaxed);
            self.word
                .store(word & !TID | u64::from(gettid()), Ordering::Relaxed);
        }

        /// The signal handler's part, on the owner thread.
        fn acknowledge(&self) {
            // Acquire: pairs with a drainer's increment (Release): its close happens-before
            // this handler, and so before this thread's later loads of the word.
            let request = self.requests.load(Ordering::Acquire);
            // SeqCst: the full barrier in this thread's instruction stream; orders the entry
            // writes of the interrupted code before the acknowledgement.
            platform::fence(Ordering::SeqCst);
            // Relaxed: the CAS below orders what matters.
            let mut acks = self.acks.load(Ordering::Relaxed);
            while !reached(acks, request) {
                // Release: pairs with the drainer's Acquire load in `Target::done`: the
                // writes before the fence are visible to its scan.
                match self.acks.compare_exchange_weak(
                    acks,
                    request,
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now) => acks = now,
                }
            }
            futex::linux::wake_all(&self.acks);
        }
    }

    /// Whether acknowledgement `acks` covers request `request`, across wrap-around.
    fn reached(acks: u32, request: u32) -> bool {
        acks.wrapping_sub(request) as i32 >= 0
    }

    /// Set once the heavy barriers are signal barriers; never cleared.
    static ACTIVE: AtomicBool = AtomicBool::new(false);

    /// Whether the heavy barriers are signal barriers.
    pub(crate) fn active() -> bool {
        // Relaxed: which barrier a drainer runs is no part of any handshake: each is sound
        // on its own, and a drainer that still tries `membarrier` only fails and comes here.
        ACTIVE.load(Ordering::Relaxed)
    }

    /// From now on, every heavy barrier is a signal barrier.
    pub(crate) fn activate() {
        // Relaxed: as in `active`.
        ACTIVE.store(true, Ordering::Relaxed);
    }

    /// Whether `DRAINABLE_FORCE_SIGNAL_BARRIER=1` asks for signal barriers from the start
    /// (the testing aid; see the module docs).
    pub(crate) fn forced() -> bool {
        std::env::var_os("DRAINABLE_FORCE_SIGNAL_BARRIER").is_some_and(|v| v == "1")
    }

    /// Registers `child` to run in the child of a `fork`, once per process; `false` if that
    /// failed (only for lack of memory), in which case no record may be handed out.
    pub(crate) fn watch_forks(child: extern "C" fn()) -> bool {
        static WATCHED: OnceLock<bool> = OnceLock::new();
        *WATCHED.get_or_init(|| {
            // SAFETY: `child` is a plain function that only stamps the calling thread's
            // record; glibc, musl and bionic run it on the forking thread, in the child.
            unsafe { libc::pthread_atfork(None, None, Some(child)) == 0 }
        })
    }

    /// The heavy barrier made of signals: returns once every thread that may write a record,
    /// other than the caller, has passed a full fence after the caller's earlier accesses
    /// (or is gone). The caller has run a `SeqCst` fence after its close.
    ///
    /// `Err` if `deadline` passes first (a timed drain then times out; the requests already
    /// made are harmless: a late acknowledgement satisfies nobody else's). Panics, with a
    /// message that says why, when no signal barrier can be made (see the module docs);
    /// nothing is changed before that.
    pub(crate) fn barrier<O: Owners>(deadline: Option<Instant>) -> Result<(), ()> {
        let me = gettid();
        let mut targets = Vec::new();
        O::each(|handshake, in_use| {
            // Acquire: pairs with `claim` and `give_back` (Release).
            let word = handshake.word.load(Ordering::Acquire);
            let tid = (word & TID) as u32;
            if tid != 0 && tid != me {
                targets.push(Target {
                    handshake,
                    in_use,
                    word,
                    tid,
                    request: 0,
                    state: Sent::Queued,
                });
            }
        });
        if targets.is_empty() {
            // No other thread can be between an entry store and its load of the word.
            return Ok(());
        }
        let signal = match signal::<O>() {
            Ok(signal) => signal,
            Err(why) => unavailable(why),
        };
        for t in &mut targets {
            // Release: the close (before this, and before the caller's SeqCst fence)
            // happens-before a handler that reads this increment or a later one (later
            // increments are RMWs: they continue the release sequence).
            t.request = t
                .handshake
                .requests
                .fetch_add(1, Ordering::Release)
                .wrapping_add(1);
            t.send(signal);
        }
        // A deadline already past (a timed drain of zero) still gives the handlers a moment
        // to run: a barrier that never waited for one would time out every time.
        let deadline = deadline.map(|d| d.max(Instant::now() + CHECK_EVERY));
        // All signals are out before the first wait: the handlers run in parallel.
        for t in &mut targets {
            t.wait::<O>(signal, deadline)?;
        }
        // SeqCst: a thread found gone was found so by a system call, not by a load: this
        // orders that answer before the caller's scan (and pairs with nothing else).
        platform::fence(Ordering::SeqCst);
        Ok(())
    }

    /// One thread a barrier waits for.
    struct Target {
        handshake: &'static Handshake,
        in_use: &'static AtomicBool,
        /// The word the barrier read: the owner, and its generation.
        word: u64,
        tid: u32,
        request: u32,
        state: Sent,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Sent {
        Queued,
        /// The pending-signal queue was full: to be sent again.
        Full,
        /// The thread no longer exists.
        Gone,
    }

    impl Target {
        fn send(&mut self, signal: libc::c_int) {
            self.state = match tgkill(self.tid, signal) {
                Ok(sent) => sent,
                Err(errno) => unavailable(&format!(
                    "tgkill({}, {signal}) refused: {}",
                    self.tid,
                    std::io::Error::from_raw_os_error(errno)
                )),
            };
        }

        /// Whether the barrier is done with this thread, as far as the record says.
        fn done(&self) -> bool {
            // Acquire: pairs with the handler's Release: the thread's entry writes before its
            // fence are visible to the caller's scan.
            reached(self.handshake.acks.load(Ordering::Acquire), self.request)
                // Acquire: pairs with `give_back`, or with the `claim` of a new owner (which
                // came after the old owner's give-back): the owner is done with the record,
                // and its writes are visible. A reaper's change means the thread is gone.
                || self.handshake.word.load(Ordering::Acquire) != self.word
        }

        /// Waits until the thread acknowledged (or is gone); `Err` once `deadline` passed.
        fn wait<O: Owners>(
            &mut self,
            signal: libc::c_int,
            deadline: Option<Instant>,
        ) -> Result<(), ()> {
            let start = Instant::now();
            let mut check_at = start + CHECK_EVERY;
            let mut spins = platform::SPIN_LIMIT;
            let mut reported = false;
            loop {
                if self.done() {
                    return Ok(());
                }
                if self.state == Sent::Gone {
                    self.reap();
                    return Ok(());
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(());
                }
                if spins > 0 {
                    spins -= 1;
                    platform::spin_hint();
                    continue;
                }
                if self.state == Sent::Full {
                    std::thread::sleep(QUEUE_FULL_RETRY);
                    self.send(signal);
                } else {
                    // Relaxed: only the futex's expected value; `done` re-reads it.
                    let acks = self.handshake.acks.load(Ordering::Relaxed);
                    if !reached(acks, self.request) {
                        let until = deadline.map_or(check_at, |d| d.min(check_at));
                        platform::wait_until(&self.handshake.acks, acks, until);
                    }
                }
                let now = Instant::now();
                if now < check_at {
                    continue;
                }
                check_at = now + CHECK_EVERY;
                if matches!(tgkill(self.tid, 0), Ok(Sent::Gone))
                    || status(self.tid).is_some_and(|s| s.state == b'Z' || s.state == b'X')
                {
                    self.state = Sent::Gone;
                } else if now - start >= REPORT_AFTER
                    && !ours(signal)
                    && status(self.tid).is_some_and(|s| {
                        !s.blocks(signal) && !matches!(s.state, b'T' | b't' | b'D')
                    })
                {
                    // The application installed its own handler on our signal since, the
                    // thread is free to run it, and for a second it has not acknowledged: the
                    // handler does not chain to ours, and never will. No sound barrier is left
                    // (replacing the application's handler is not ours to do). A handler that
                    // chains to ours acknowledges, and a thread that blocks the signal for a
                    // while is waited for, as always.
                    unavailable(&format!(
                        "signal {signal}, which drainable's handler took, was given another \
                         handler since; name a signal the application leaves alone with \
                         DRAINABLE_SIGNAL"
                    ));
                } else if !reported && now - start >= REPORT_AFTER {
                    reported = true;
                    report(self.tid, signal, self.state, now - start);
                }
            }
        }

        /// The owner thread is gone: gives the record back to the pool, unless a give-back,
        /// a new claim or another reaper changed its word since the barrier read it.
        fn reap(&self) {
            // SeqCst: orders the system call's answer (the thread is gone, after its last
            // writes) before the give-back below.
            platform::fence(Ordering::SeqCst);
            // Relaxed: the CAS only elects one reaper for this generation; the `in_use`
            // store publishes.
            if self
                .handshake
                .word
                .compare_exchange(
                    self.word,
                    self.word & !TID,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                // Release: the next owner's claim (Acquire) sees the gone thread's entry
                // writes (a leaked guard's entry stays, as after any exit).
                self.in_use.store(false, Ordering::Release);
            }
        }
    }

    /// The signal the barrier sends, installed by the first barrier that needs it.
    fn signal<O: Owners>() -> Result<libc::c_int, &'static str> {
        static SIGNAL: OnceLock<Result<libc::c_int, String>> = OnceLock::new();
        match SIGNAL.get_or_init(install::<O>) {
            Ok(signal) => Ok(*signal),
            Err(why) => Err(why),
        }
    }

    fn install<O: Owners>() -> Result<libc::c_int, String> {
        let (lowest, highest) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        match std::env::var("DRAINABLE_SIGNAL") {
            Err(std::env::VarError::NotPresent) => {
                for signal in (lowest..=highest).rev() {
                    if take::<O>(signal)? {
                        return Ok(signal);
                    }
                }
                Err(format!(
                    "every real-time signal ({lowest} to {highest}) already has a handler or is \
                     ignored; name one with DRAINABLE_SIGNAL"
                ))
            }
            Ok(value) => {
                let signal = value
                    .trim()
                    .parse::<libc::c_int>()
                    .ok()
                    // Real-time signals, or the two user signals: a handler that returns on a
                    // fault signal (SIGSEGV, SIGBUS, ...) would make a real fault loop forever.
                    .filter(|s| {
                        (lowest..=highest).contains(s) || [libc::SIGUSR1, libc::SIGUSR2].contains(s)
                    })
                    .ok_or_else(|| {
                        format!(
                            "DRAINABLE_SIGNAL={value:?} is not a real-time signal ({lowest} to \
                             {highest}) or SIGUSR1 / SIGUSR2"
                        )
                    })?;
                if take::<O>(signal)? {
                    Ok(signal)
                } else {
                    Err(format!(
                        "DRAINABLE_SIGNAL={signal}: that signal already has a handler or is \
                         ignored"
                    ))
                }
            }
            Err(e) => Err(format!("DRAINABLE_SIGNAL: {e}")),
        }
    }

    /// Installs the handler on `signal` if its disposition is the default; `Ok(false)` if it
    /// is not (an application's handler is never replaced).
    fn take<O: Owners>(signal: libc::c_int) -> Result<bool, String> {
        let fail = |what: &str| {
            format!(
                "sigaction({signal}) {what}: {}",
                std::io::Error::last_os_error()
            )
        };
        if disposition(signal).ok_or_else(|| fail("query"))? != libc::SIG_DFL {
            return Ok(false);
        }
        // SAFETY: all-zero is a valid `sigaction` (no handler, empty mask, no flags);
        // `sigemptyset` initialises the mask it is given.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler::<O> as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
        // SAFETY: as above.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: as above.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `action` is initialised, `previous` is written by the call; `handler` is
        // async-signal-safe and lives for the whole process.
        if unsafe { libc::sigaction(signal, &action, &mut previous) } != 0 {
            return Err(fail("install"));
        }
        if previous.sa_sigaction != libc::SIG_DFL {
            // Someone installed a handler in between: it goes back.
            // SAFETY: `previous` is the action the kernel just gave back.
            unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
            return Ok(false);
        }
        // Relaxed: written once, before `signal`'s OnceLock publishes the signal to every
        // barrier that later reads it.
        INSTALLED.store(action.sa_sigaction, Ordering::Relaxed);
        Ok(true)
    }

    /// The handler address `take` installed: what `ours` compares with, rather than taking
    /// `handler::<O>`'s address again (a generic function may have more than one copy, and
    /// copies need not compare equal).
    static INSTALLED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Whether `signal` still runs drainable's handler.
    fn ours(signal: libc::c_int) -> bool {
        // Relaxed: see `INSTALLED`.
        disposition(signal) == Some(INSTALLED.load(Ordering::Relaxed))
    }

    /// The current handler of `signal` (`SIG_DFL`, `SIG_IGN` or an address).
    fn disposition(signal: libc::c_int) -> Option<libc::sighandler_t> {
        // SAFETY: all-zero is a valid `sigaction`, written by the call.
        let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a query only (no new action).
        let r = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
        (r == 0).then_some(current.sa_sigaction)
    }

    /// The signal handler: acknowledges every record the interrupted thread owns.
    /// Async-signal-safe: atomics, the list of records (never freed), `gettid`, `futex`.
    extern "C" fn handler<O: Owners>(_signal: libc::c_int) {
        let errno = errno_location();
        // SAFETY: this thread's errno, read and written back on this thread.
        let saved = unsafe { *errno };
        let me = gettid();
        O::each(|handshake, _| {
            // Relaxed: only this thread stamps its tid (a reaper or a new owner writes a
            // different one).
            if (handshake.word.load(Ordering::Relaxed) & TID) as u32 == me {
                handshake.acknowledge();
            }
        });
        // SAFETY: as above.
        unsafe { *errno = saved };
    }

    fn errno_location() -> *mut libc::c_int {
        // SAFETY: returns this thread's errno address; no preconditions.
        #[cfg(target_os = "linux")]
        return unsafe { libc::__errno_location() };
        // SAFETY: as above.
        #[cfg(target_os = "android")]
        return unsafe { libc::__errno() };
    }

    fn gettid() -> u32 {
        // SAFETY: gettid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_gettid) as u32 }
    }

    /// `tgkill(getpid(), tid, signal)`; signal 0 only checks that the thread exists.
    fn tgkill(tid: u32, signal: libc::c_int) -> Result<Sent, i32> {
        // SAFETY: tgkill takes integers only; a thread of another process is never hit (the
        // kernel checks the thread group).
        let r =
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::pid_t, signal) };
        if r == 0 {
            return Ok(Sent::Queued);
        }
        match std::io::Error::last_os_error().raw_os_error().unwrap_or(0) {
            libc::ESRCH => Ok(Sent::Gone),
            libc::EAGAIN => Ok(Sent::Full),
            errno => Err(errno),
        }
    }

    #[cold]
    #[inline(never)]
    fn unavailable(why: &str) -> ! {
        panic!(
            "drainable: no sound barrier for a per-CPU drain: \
             membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) is refused in this process (or \
             DRAINABLE_FORCE_SIGNAL_BARRIER is set), and the signal barrier that replaces it \
             cannot be used: {why}"
        )
    }

    /// What `/proc` says of a thread.
    #[derive(Debug, PartialEq, Eq)]
    struct Status {
        /// The first letter of `State:` (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, ...).
        state: u8,
        /// `SigBlk:`, signals 1 to 64 (bit `n - 1` for signal `n`).
        blocked: u64,
    }

    impl Status {
        fn blocks(&self, signal: libc::c_int) -> bool {
            (1..=64).contains(&signal) && self.blocked >> (signal - 1) & 1 != 0
        }
    }

    fn status(tid: u32) -> Option<Status> {
        parse_status(&std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?)
    }

    fn parse_status(text: &str) -> Option<Status> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let state = *field("State:")?.as_bytes().first()?;
        let blocked = field("SigBlk:")?;
        // Signals 1 to 64 are the last 16 hex digits.
        let blocked = u64::from_str_radix(&blocked[blocked.len().saturating_sub(16)..], 16).ok()?;
        Some(Status { state, blocked })
    }

    /// Says on stderr, once per wait, why a drain is held up by thread `tid`.
    #[cold]
    fn report(tid: u32, signal: libc::c_int, sent: Sent, waited: Duration) {
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_default();
        let why = match status(tid) {
            _ if sent == Sent::Full => {
                "to which the kernel refuses to queue more signals (too many pending)".to_owned()
            }
            Some(s) if s.blocks(signal) => format!("which blocks signal {signal}"),
            Some(s) if s.state == b'T' || s.state == b't' => "which is stopped".to_owned(),
            Some(s) if s.state == b'D' => "which is in an uninterruptible sleep".to_owned(),
            _ => "which has not run its signal handler yet".to_owned(),
        };
        eprintln!(
            "drainable: a per-CPU drain has waited {:.1} s for thread {tid} ({name:?}), {why}. \
             membarrier is refused in this process (or DRAINABLE_FORCE_SIGNAL_BARRIER is set), \
             so each drain signals every thread that took a per-CPU guard (signal {signal}) and \
             waits for its handler; the drain waits on until the thread runs it or exits. \
             DRAINABLE_SIGNAL=<n> picks another signal.",
            waited.as_secs_f64()
        );
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::PerCpuDrainable;
        use crate::counter::records::RecordList;
        use crate::platform::heavy_barrier_registered;
        use std::sync::mpsc;
        use std::thread;

        /// The handshake of the record stamped with `tid`.
        fn handshake_of(tid: u32) -> Option<&'static Handshake> {
            let mut found = None;
            RecordList::each(|h, _| {
                if (h.word.load(Ordering::Relaxed) & TID) as u32 == tid {
                    found = Some(h);
                }
            });
            found
        }

        #[test]
        fn acknowledgements_compare_across_wrap_around() {
            assert!(reached(5, 5));
            assert!(reached(6, 5));
            assert!(!reached(4, 5));
            assert!(reached(2, u32::MAX)); // acks wrapped past the request
            assert!(!reached(u32::MAX, 2));
        }

        #[test]
        fn status_parses_state_and_blocked_signals() {
            let text = "Name:\tw\nState:\tS (sleeping)\nSigQ:\t0/1\nSigPnd:\t0000000000000000\n\
                        SigBlk:\t8000000000000001\nSigIgn:\t0000000000001000\n";
            let s = parse_status(text).unwrap();
            assert_eq!(s.state, b'S');
            assert!(s.blocks(1) && s.blocks(64) && !s.blocks(2) && !s.blocks(0));
            let z = parse_status("State:\tZ (zombie)\nSigBlk:\t0\n").unwrap();
            assert_eq!(z.state, b'Z');
            assert!(parse_status("State:\tR\n").is_none());
        }

        #[test]
        fn a_barrier_waits_for_the_handler_of_every_other_owner() {
            if !heavy_barrier_registered() {
                return; // no records here
            }
            let d = PerCpuDrainable::new(());
            let (tid_tx, tid_rx) = mpsc::channel();
            let done = AtomicBool::new(false);
            let (d, done) = (&d, &done);
            thread::scope(|s| {
                s.spawn(move || {
                    drop(d.try_acquire().unwrap()); // claims a record
                    tid_tx.send(gettid()).unwrap();
                    // Asleep in a system call, where the handler interrupts it. A sleep, not
                    // a futex: ThreadSanitizer runs a handler only inside a libc call it
                    // intercepts (see the module docs), and `nanosleep` is one.
                    // Relaxed: only a stop flag.
                    while !done.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(1));
                    }
                });
                let tid = tid_rx.recv().unwrap();
                let h = handshake_of(tid).expect("the thread's record");
                // Relaxed: a snapshot; barriers of other tests may bump it meanwhile.
                let before = h.requests.load(Ordering::Relaxed);
                barrier::<RecordList>(None).unwrap();
                // This barrier's request was at least `before + 1`.
                // Relaxed: the barrier returned; its own Acquire loads did the ordering.
                let acks = h.acks.load(Ordering::Relaxed);
                assert!(reached(acks, before.wrapping_add(1)), "not acknowledged");
                done.store(true, Ordering::Relaxed);
            });
        }

        #[test]
        fn a_gone_owner_does_not_hold_a_barrier_up_and_its_record_is_reaped() {
            if !heavy_barrier_registered() {
                return;
            }
            let d = PerCpuDrainable::new(());
            let (tid, h) = thread::scope(|s| {
                s.spawn(|| {
                    // Leaked: the thread exits holding an entry, so its record stays stamped.
                    std::mem::forget(d.try_acquire().unwrap());
                    let tid = gettid();
                    (tid, handshake_of(tid).expect("this thread's record"))
                })
                .join()
                .unwrap()
            });
            // The thread is gone, or still exiting: this barrier (or one of another test)
            // finds out and gives the record back.
            barrier::<RecordList>(None).unwrap();
            assert_ne!(
                (h.word.load(Ordering::Relaxed) & TID) as u32,
                tid,
                "the record of a gone thread is still stamped with it"
            );
        }
    }
}
