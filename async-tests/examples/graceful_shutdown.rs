//! Graceful shutdown of a tokio TCP server with a drainable: stop accepting, refuse new
//! requests, wait (with a deadline) for the requests in flight, and cut none of them off.
//!
//! ```text
//! cargo run --release --manifest-path async-tests/Cargo.toml --example graceful_shutdown
//! cargo run --release --manifest-path async-tests/Cargo.toml --example graceful_shutdown -- --duration 3
//! ```
//!
//! The server listens on 127.0.0.1 (an ephemeral port) and speaks a line protocol: a request is
//! `REQ <client> <n> <work>\n`, its reply `OK <client> <n> <check>\n`, or `REFUSED <n>\n` once
//! the server is shutting down. Each request is served under an owned guard
//! ([`Drainable::try_acquire_owned`]), taken by the connection's task and held across the
//! `.await`s of the request's work and of writing its reply. A load generator in the same
//! process (a few clients, each one connection, a bounded number of requests) runs for
//! `--duration` seconds (default 1.5); then the server shuts down:
//!
//! 1. it stops accepting (the listener is dropped);
//! 2. `tokio::time::timeout(deadline, service.drain_async())`: the first poll closes the
//!    drainable, so every request that arrives from then on is refused, cleanly, with a reply;
//!    the drain completes when the last request in flight has written its reply; on timeout
//!    the drainable would reopen ("unload or fail") and the example reports what was left;
//! 3. it reports how many requests were in flight at the close, how many of them finished, how
//!    long the drain took, and checks the generator's side: every request it sent got either a
//!    full, correct reply, or a refusal sent after the close; none was cut off.
//!
//! Exits non-zero if any of that does not hold.

use drainable::Drainable;
use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CLIENTS: u64 = 8;
/// Each client's bound: the run ends by time long before this.
const MAX_REQUESTS: u64 = 1_000_000;
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// What the drainable protects: the service, which a real server would tear down (close its
/// database pool, flush its log) once drained. Its counters are kept in an `Arc` that `main`
/// also holds, to read them after the drain.
struct Service {
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    served: AtomicU64,
    /// Requests that finished (wrote their reply) after the close: the ones the drain waited
    /// for. A request that held a guard at the close finishes seeing the drainable closed
    /// (it stays closed until drained, and the drain waits for that guard).
    finished_after_close: AtomicU64,
    /// Requests holding a guard now: 0 once drained; what is left if the deadline passed.
    in_flight: AtomicU64,
}

/// The reply's check value, so the client can tell a full reply from a damaged one.
fn check(client: u64, n: u64) -> u64 {
    (client.wrapping_mul(1_000_003) ^ n.wrapping_mul(7919)) % 1_000_000_007
}

async fn serve_connection(service: Arc<Drainable<Service>>, stream: TcpStream) {
    // The reply goes out in two writes: without this, Nagle's algorithm holds the second
    // back for the client's delayed ACK (tens of milliseconds a request).
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut fields = line.split_whitespace().skip(1).map(|f| f.parse::<u64>());
        let (Some(Ok(client)), Some(Ok(n)), Some(Ok(work))) =
            (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        // One guard per request, held across every `.await` until its reply is written.
        let Some(guard) = service.try_acquire_owned() else {
            // Closed: refuse cleanly, with a reply, and end the connection.
            let _ = write.write_all(format!("REFUSED {n}\n").as_bytes()).await;
            return;
        };
        guard.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // The reply in two writes with the work between them: a request cut off midway would
        // leave the client a partial line.
        let replied = async {
            write.write_all(b"OK ").await?;
            if work % 4 == 0 {
                tokio::time::sleep(Duration::from_micros(200 + work % 2000)).await;
            } else {
                tokio::task::yield_now().await;
            }
            let rest = format!("{client} {n} {}\n", check(client, n));
            write.write_all(rest.as_bytes()).await
        }
        .await;
        if replied.is_ok() {
            guard.stats.served.fetch_add(1, Ordering::Relaxed);
            if !service.is_open() {
                guard
                    .stats
                    .finished_after_close
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        guard.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        drop(guard);
        if replied.is_err() {
            return; // the client went away
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct ClientReport {
    sent: u64,
    full_replies: u64,
    refused: u64,
    refused_before_shutdown: u64,
    cut_off: u64,
}

/// One client of the load generator: requests one at a time on one connection, until refused
/// (or the bound). A reply that is missing, partial or wrong is a request cut off.
async fn client(
    id: u64,
    addr: std::net::SocketAddr,
    shutdown_began: Arc<AtomicBool>,
) -> ClientReport {
    let mut r = ClientReport::default();
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the server");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (read, mut write) = stream.into_split();
    let mut replies = BufReader::new(read);
    let mut line = String::new();
    let mut seed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for n in 0..MAX_REQUESTS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let request = format!("REQ {id} {n} {}\n", seed % 10_000);
        if write.write_all(request.as_bytes()).await.is_err() {
            // Nothing was sent: the server had ended the connection after a refusal.
            break;
        }
        r.sent += 1;
        line.clear();
        let read = replies.read_line(&mut line).await;
        let refused_before = !shutdown_began.load(Ordering::SeqCst);
        match read {
            Ok(_) if line == format!("OK {id} {n} {}\n", check(id, n)) => r.full_replies += 1,
            Ok(_) if line == format!("REFUSED {n}\n") => {
                r.refused += 1;
                r.refused_before_shutdown += u64::from(refused_before);
                break;
            }
            _ => {
                r.cut_off += 1;
                break;
            }
        }
    }
    r
}

fn duration_arg() -> Duration {
    let args: Vec<String> = std::env::args().collect();
    let secs = match args.iter().position(|a| a == "--duration") {
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse::<f64>().ok())
            .expect("--duration takes a number of seconds"),
        None => 1.5,
    };
    Duration::from_secs_f64(secs)
}

#[tokio::main]
async fn main() -> ExitCode {
    let load_for = duration_arg();
    let stats = Arc::new(Stats::default());
    let service = Arc::new(Drainable::new(Service {
        stats: Arc::clone(&stats),
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    println!(
        "graceful_shutdown: serving on {addr}; {CLIENTS} clients for {:.1} s, then shutdown \
         (drain deadline {} s)",
        load_for.as_secs_f64(),
        DRAIN_DEADLINE.as_secs()
    );

    let (stop_accepting, mut stop) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tokio::spawn({
        let service = Arc::clone(&service);
        async move {
            let mut connections = 0u64;
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (stream, _) = accepted.expect("accept");
                        connections += 1;
                        tokio::spawn(serve_connection(Arc::clone(&service), stream));
                    }
                    _ = &mut stop => break connections, // the listener is dropped here
                }
            }
        }
    });

    let shutdown_began = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(id, addr, Arc::clone(&shutdown_began))))
        .collect();

    tokio::time::sleep(load_for).await;

    // 1. Stop accepting.
    stop_accepting.send(()).unwrap();
    let connections = acceptor.await.unwrap();
    // 2. Drain with a deadline. Set before the close, so that a client that sees this still
    //    false when its refusal arrives shows a refusal before shutdown.
    shutdown_began.store(true, Ordering::SeqCst);
    let served_before = stats.served.load(Ordering::Relaxed);
    let started = Instant::now();
    let drain = tokio::time::timeout(DRAIN_DEADLINE, service.drain_async());
    let mut drain = std::pin::pin!(drain);
    // Its first poll closes the drainable: from here on every new request is refused.
    let first = std::future::poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx))).await;
    println!("shutdown: stopped accepting ({connections} connections); closed; draining");
    let drained = match first {
        Poll::Ready(r) => r,
        Poll::Pending => drain.await,
    };
    let took = started.elapsed();

    let mut failures = Vec::new();
    if drained.is_err() {
        failures.push(format!(
            "the drain missed its {} s deadline: the drainable was reopened (unload failed)",
            DRAIN_DEADLINE.as_secs()
        ));
    }
    // Relaxed: once drained, every access made under a guard happened before this point.
    let finished = stats.finished_after_close.load(Ordering::Relaxed);
    let left = stats.in_flight.load(Ordering::Relaxed);
    let served = stats.served.load(Ordering::Relaxed);
    println!(
        "drain took {:.3} ms: {} requests were in flight at the close, {finished} finished, {left} \
         left (served {served} in all, {served_before} before the shutdown)",
        took.as_secs_f64() * 1e3,
        finished + left,
    );
    if left != 0 {
        failures.push(format!(
            "{left} requests were still in flight after the drain"
        ));
    }

    // 3. The generator's side.
    let mut total = ClientReport::default();
    for c in clients {
        let r = tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .expect("a client did not finish within 10 s of the drain")
            .unwrap();
        total.sent += r.sent;
        total.full_replies += r.full_replies;
        total.refused += r.refused;
        total.refused_before_shutdown += r.refused_before_shutdown;
        total.cut_off += r.cut_off;
    }
    println!(
        "clients: {} requests sent, {} full replies, {} refused cleanly after the close, {} cut off",
        total.sent, total.full_replies, total.refused, total.cut_off
    );
    if total.cut_off != 0 {
        failures.push(format!("{} requests were cut off", total.cut_off));
    }
    if total.refused_before_shutdown != 0 {
        failures.push(format!(
            "{} requests were refused before the shutdown",
            total.refused_before_shutdown
        ));
    }
    if total.full_replies + total.refused != total.sent {
        failures.push("a request got neither a reply nor a refusal".into());
    }
    if total.full_replies != served {
        failures.push(format!(
            "the server served {served} requests, the clients got {} replies",
            total.full_replies
        ));
    }
    if total.full_replies == 0 {
        failures.push("no request was served".into());
    }
    if failures.is_empty() {
        println!("ok: every request sent before the shutdown got its full reply; none was cut off");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}
