//! Real-thread tests of `Registry`, through the public API only.
//!
//! The stress test frees each entry's heap canary the moment its removal returns, so a removal
//! that returns while a call is still in flight shows up natively as a poisoned canary or a
//! raised "unloaded" flag seen by a callback, and under Miri as a use-after-free.
//!
//! Iteration counts shrink heavily under Miri, which interprets every instruction.

use drainable::{Counter, PerCpu, Registration, Registry, Shared};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Picks the native or the Miri value.
const fn n(native: usize, miri: usize) -> usize {
    if cfg!(miri) { miri } else { native }
}

/// How long a bounded wait may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

const ALIVE: u64 = 0xA11C_E5ED_A11C_E5ED;
const POISON: u64 = 0xDEAD_BEEF_DEAD_BEEF;

/// A registered "module": its private data (the canary, freed right after its removal) and a
/// flag raised right after its removal returned.
struct Module {
    canary: Box<AtomicU64>,
    unloaded: Arc<AtomicBool>,
    calls: AtomicU64,
}

impl Module {
    fn new() -> Self {
        Module {
            canary: Box::new(AtomicU64::new(ALIVE)),
            unloaded: Arc::new(AtomicBool::new(false)),
            calls: AtomicU64::new(0),
        }
    }

    /// The callback. Returns `false` on a violation: the data was freed (poisoned) or the
    /// removal had already returned.
    fn call(&self) -> bool {
        self.calls.fetch_add(1, Relaxed);
        let ok = self.canary.load(Relaxed) == ALIVE && !self.unloaded.load(SeqCst);
        // A little work inside the call, so removals regularly find calls in flight.
        for _ in 0..n(16, 1) {
            std::hint::spin_loop();
        }
        ok && self.canary.load(Relaxed) == ALIVE
    }
}

/// What the controller does right after a removal returned: raise the flag (kept alive a
/// while in `graveyard`, so that a late caller natively reads `true` rather than freed
/// memory), poison the canary, and free everything. Returns the calls the module served.
fn unload(module: Module, graveyard: &mut Vec<Arc<AtomicBool>>) -> u64 {
    module.unloaded.store(true, SeqCst);
    module.canary.store(POISON, Relaxed);
    graveyard.push(Arc::clone(&module.unloaded));
    if graveyard.len() > 64 {
        graveyard.remove(0);
    }
    let calls = module.calls.load(Relaxed);
    drop(module); // kfree(my_data)
    calls
}

/// A small xorshift generator: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Debug, Default)]
struct Tally {
    loads: usize,
    unloads: usize,
    batches: usize,
    undos: usize,
    timeouts_failed: usize,
    timeouts_succeeded: usize,
    served: u64,
}

/// Whether a pass over `r` reaches the module whose flag is `flag`.
fn reaches<C: Counter>(r: &Registry<Module, C>, flag: &Arc<AtomicBool>) -> bool {
    r.iter().any(|m| Arc::ptr_eq(&m.unloaded, flag))
}

/// Several caller threads run `for_each` in a loop; the controller registers and removes
/// modules in every way the API offers, freeing each module's data the moment its removal
/// returns.
fn stress<C: Counter>(registry: Registry<Module, C>) {
    let callers = n(3, 2);
    let registry = Arc::new(registry);
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(callers + 1));

    let threads: Vec<_> = (0..callers)
        .map(|t| {
            let (registry, stop, violations, start) = (
                Arc::clone(&registry),
                Arc::clone(&stop),
                Arc::clone(&violations),
                Arc::clone(&start),
            );
            thread::spawn(move || {
                start.wait();
                let mut calls = 0u64;
                let mut passes = 0u64;
                while !stop.load(Relaxed) {
                    if t == 0 && passes % 8 == 7 {
                        // Now and then, hold guards from `iter` across a yield.
                        let held: Vec<_> = registry.iter().take(2).collect();
                        thread::yield_now();
                        for m in &held {
                            calls += 1;
                            if !m.call() {
                                violations.fetch_add(1, Relaxed);
                            }
                        }
                    } else {
                        registry.for_each(|m| {
                            calls += 1;
                            if !m.call() {
                                violations.fetch_add(1, Relaxed);
                            }
                        });
                    }
                    passes += 1;
                    if cfg!(miri) {
                        thread::yield_now();
                    }
                }
                calls
            })
        })
        .collect();

    start.wait();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut live: Vec<(Registration<Module>, Arc<AtomicBool>)> = Vec::new();
    let mut graveyard = Vec::new();
    let mut tally = Tally::default();
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut ops = 0;
    while if cfg!(miri) {
        ops < 150
    } else {
        Instant::now() < deadline
    } {
        ops += 1;
        if live.len() < 2 || (live.len() < 12 && rng.below(3) == 0) {
            let m = Module::new();
            let flag = Arc::clone(&m.unloaded);
            live.push((registry.register(m), flag));
            tally.loads += 1;
            continue;
        }
        let (h, flag) = live.swap_remove(rng.below(live.len()));
        match rng.below(6) {
            0 => {
                tally.served += unload(registry.unregister(h), &mut graveyard);
                tally.unloads += 1;
            }
            1 => {
                // A batch: this one and up to three more.
                let extra = rng.below(4).min(live.len());
                let mut batch = vec![h];
                batch.extend(live.drain(..extra).map(|(h, _)| h));
                for m in registry.unregister_all(batch) {
                    tally.served += unload(m, &mut graveyard);
                    tally.unloads += 1;
                }
                tally.batches += 1;
            }
            2 => {
                // Prepare, check that callers no longer reach it, change our mind.
                let pending = registry.prepare_unregister(h);
                assert!(!reaches(&registry, &flag), "reached a closed entry");
                let h = pending.undo();
                assert!(reaches(&registry, &flag), "undo did not reopen");
                live.push((h, flag));
                tally.undos += 1;
            }
            3 => {
                let pending = registry.prepare_unregister(h);
                thread::yield_now(); // callers finish what they started
                tally.served += unload(pending.commit(), &mut graveyard);
                tally.unloads += 1;
            }
            4 => {
                // Unload or fail: a zero timeout fails whenever a call is in flight.
                let timeout = Duration::from_micros(rng.below(2) as u64 * 50);
                match registry.unregister_timeout(h, timeout) {
                    Ok(m) => {
                        tally.served += unload(m, &mut graveyard);
                        tally.unloads += 1;
                        tally.timeouts_succeeded += 1;
                    }
                    Err(e) => {
                        assert!(e.outstanding() >= 1);
                        assert!(reaches(&registry, &flag), "live again after a timeout");
                        live.push((e.into_registration(), flag));
                        tally.timeouts_failed += 1;
                    }
                }
            }
            _ => {
                let pending = registry.prepare_unregister(h);
                match pending.commit_timeout(Duration::ZERO) {
                    Ok(m) => {
                        tally.served += unload(m, &mut graveyard);
                        tally.unloads += 1;
                        tally.timeouts_succeeded += 1;
                    }
                    Err(error) => {
                        let pending = error.into_pending();
                        tally.timeouts_failed += 1;
                        assert!(!reaches(&registry, &flag), "closed while pending");
                        if rng.below(2) == 0 {
                            live.push((pending.undo(), flag));
                            tally.undos += 1;
                        } else {
                            tally.served += unload(pending.commit(), &mut graveyard);
                            tally.unloads += 1;
                        }
                    }
                }
            }
        }
        if cfg!(miri) {
            thread::yield_now();
        }
    }
    let rest = registry.unregister_all(live.into_iter().map(|(h, _)| h));
    for m in rest {
        tally.served += unload(m, &mut graveyard);
        tally.unloads += 1;
    }
    stop.store(true, Relaxed);
    let calls: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();

    eprintln!("registry stress: {calls} calls, {tally:?}");
    assert_eq!(
        violations.load(Relaxed),
        0,
        "a callback ran on removed data"
    );
    assert!(registry.is_empty());
    assert_eq!(tally.loads, tally.unloads);
    assert_eq!(
        calls, tally.served,
        "every call landed on a module that was then removed"
    );
    assert!(
        calls >= n(10_000, 1) as u64,
        "callbacks ran only {calls} times"
    );
    assert!(tally.loads >= n(100, 5), "only {} loads", tally.loads);
}

#[test]
fn stress_shared() {
    stress(Registry::<Module, Shared>::new());
}

#[test]
fn stress_per_cpu() {
    stress(Registry::<Module, PerCpu>::with_counter());
}

/// `unregister_all` closes every entry before it waits for any. Each holder thread keeps a
/// call into its own entry in flight until it observes that *all* the batch's entries are
/// closed (a pass reaches none of them). A removal that closed and waited one entry at a
/// time would wait for a holder that waits for the next close: the holders give up after
/// [`PATIENCE`] and report it, so that failure is an assertion, never a hang.
fn batch_closes_all_before_waiting<C: Counter>(registry: Registry<usize, C>) {
    const K: usize = 3;
    let handles: Vec<_> = (0..K).map(|i| registry.register(i)).collect();
    let holding = AtomicUsize::new(0);
    let gave_up = AtomicBool::new(false);
    thread::scope(|s| {
        for i in 0..K {
            let (registry, holding, gave_up) = (&registry, &holding, &gave_up);
            s.spawn(move || {
                let call = registry.iter().find(|v| **v == i).expect("registered");
                holding.fetch_add(1, SeqCst);
                let deadline = Instant::now() + PATIENCE;
                // Our own entry, closed, is skipped as well: `any` sees only open ones.
                while registry.iter().any(|v| *v < K) {
                    if Instant::now() >= deadline {
                        gave_up.store(true, SeqCst);
                        break;
                    }
                    thread::yield_now();
                }
                drop(call);
            });
        }
        while holding.load(SeqCst) < K {
            thread::yield_now();
        }
        let values = registry.unregister_all(handles);
        assert_eq!(values, [0, 1, 2]);
    });
    assert!(
        !gave_up.load(SeqCst),
        "unregister_all waited for an entry before closing all of them"
    );
    assert!(registry.is_empty());
}

#[test]
fn batch_closes_all_before_waiting_shared() {
    batch_closes_all_before_waiting(Registry::new());
}

#[test]
fn batch_closes_all_before_waiting_per_cpu() {
    batch_closes_all_before_waiting(Registry::<usize, PerCpu>::with_counter());
}

/// A removal prepared on one thread can be committed on another, while a call is in flight.
#[test]
fn pending_removal_commits_on_another_thread() {
    let registry = Registry::new();
    let h = registry.register(String::from("dev"));
    let call = registry.iter().next().unwrap();
    let pending = registry.prepare_unregister(h);
    assert_eq!(pending.outstanding(), 1);
    thread::scope(|s| {
        let committer = s.spawn(move || pending.commit());
        thread::sleep(Duration::from_millis(n(5, 0) as u64));
        drop(call);
        assert_eq!(committer.join().unwrap(), "dev");
    });
    assert!(registry.is_empty());
}

/// A `static` registry, registered into and called from several threads.
#[test]
fn static_registry() {
    static HOOKS: Registry<fn(u64) -> u64> = Registry::new();
    let double = HOOKS.register(|x| 2 * x);
    let square = HOOKS.register(|x| x * x);
    let sums: Vec<u64> = (0..2)
        .map(|_| {
            thread::spawn(|| {
                let mut sum = 0;
                HOOKS.for_each(|f| sum += f(3));
                sum
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(sums, [15, 15]);
    HOOKS.unregister_all([double, square]);
    assert!(HOOKS.is_empty());
}

/// `?` on a `PendingRemoval::commit_timeout` undoes the removal (the entry is live again) and
/// loses nothing: the boxed error is an `UnregisterTimeoutError` holding the registration.
#[test]
fn removal_timeout_question_mark_keeps_the_registration() {
    use drainable::UnregisterTimeoutError;
    use std::error::Error;

    fn unload(
        r: &Registry<u32>,
        h: Registration<u32>,
    ) -> Result<u32, Box<dyn Error + Send + Sync>> {
        Ok(r.prepare_unregister(h).commit_timeout(Duration::ZERO)?)
    }
    let r = Registry::new();
    let h = r.register(41);
    let call = r.iter().next().unwrap();
    let err = unload(&r, h).unwrap_err();
    assert_eq!(r.iter().count(), 1, "undone: the entry is reachable again");
    assert_eq!(r.len(), 1);
    let err = err.downcast::<UnregisterTimeoutError<u32>>().unwrap();
    assert_eq!(err.outstanding(), 1);
    drop(call);
    assert_eq!(unload(&r, err.into_registration()).unwrap(), 41);
    assert!(r.is_empty());
}

/// Lookups by id race a remover that keeps reusing one slot (LIFO): every id names a different
/// occupant of slot 0, and a lookup must find either the occupant its id names or nothing,
/// never a later one. With the generation check taken out of `Registry::get`, a stale id
/// finds the next occupant (whose value differs) and this test fails within its first rounds.
fn ids_never_find_a_later_occupant<C: Counter>() {
    use std::sync::Mutex;
    let rounds = n(1_000, 40);
    let r: Registry<(usize, Box<u64>), C> = Registry::with_counter();
    let seen: Mutex<Vec<(drainable::EntryId, usize)>> = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let missed = AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut k = 0usize;
                while !done.load(Relaxed) {
                    let pick = {
                        let seen = seen.lock().unwrap();
                        (!seen.is_empty()).then(|| seen[k % seen.len()])
                    };
                    k = k.wrapping_add(7);
                    let Some((id, value)) = pick else { continue };
                    match r.get(id) {
                        Some(g) => {
                            assert_eq!(g.0, value, "a stale id found another occupant");
                            assert_eq!(*g.1, ALIVE, "a removed value was read");
                            assert_eq!(g.id(), id);
                        }
                        None => {
                            missed.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
        }
        // At least `rounds`, and on until a lookup has missed (a stale id was tried: on a
        // loaded machine the lookup threads may not run at all during the first rounds),
        // up to a cap far beyond what that takes.
        let mut i = 0;
        while i < rounds || (!cfg!(miri) && missed.load(Relaxed) == 0 && i < rounds * 200) {
            i += 1;
            let h = r.register((i, Box::new(ALIVE)));
            assert_eq!(h.id(), r.get(h.id()).unwrap().id());
            seen.lock().unwrap().push((h.id(), i));
            if i % 2 == 0 {
                thread::yield_now(); // let lookups find the live one too
            }
            let (v, mut canary) = r.unregister(h);
            assert_eq!(v, i);
            *canary = POISON;
        }
        done.store(true, Relaxed);
    });
    // Both outcomes happened, so the race was exercised (natively; Miri runs few rounds).
    if !cfg!(miri) {
        assert!(missed.load(Relaxed) > 0, "no stale lookup was tried");
    }
    assert_eq!(r.len(), 0);
}

#[test]
fn ids_never_find_a_later_occupant_shared() {
    ids_never_find_a_later_occupant::<Shared>();
}

#[test]
fn ids_never_find_a_later_occupant_per_cpu() {
    ids_never_find_a_later_occupant::<PerCpu>();
}
