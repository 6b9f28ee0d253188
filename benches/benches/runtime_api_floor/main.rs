//! The floor of the Runtime API on this host: what serving a real runtime costs the serving process per
//! invoke when the server does (almost) nothing but the protocol's socket work, next to what the agent's own
//! Runtime API (hyper, the broker) costs for the same load.
//!
//! A plain program (not criterion): it starts the native echo runtime (`target/release/native-echo`, a
//! separate process with `AWS_LAMBDA_MAX_CONCURRENCY` pollers, each on its own keep-alive connection, as
//! every runtime polls) against a server in this process, keeps `concurrency` invokes in flight, and reports
//! invokes per second and this process's CPU per invoke.
//! - `minimal`: a hand-written HTTP/1.1 responder: a request head is read until its blank line, a `/next` is
//!   answered with one pre-formatted write, a `/response` body is read by its Content-Length and answered
//!   with a constant 202. No header map, no allocation per request beyond the payload. In-process callers
//!   (no ingress protocol).
//! - `agent`: the agent's [`RuntimeApi`] and [`Broker`], as each environment runs them; in-process callers.
//! - `minimal-http`, `minimal-grpc-unary`, `minimal-grpc-stream` (`minimal-grpc` is both gRPC modes): the
//!   `minimal` responder behind a minimal ingress, with the callers outside the process: `lmictl bench
//!   invoke`, the sweep's load generator, run as a child (see `ingress`). These are the floors of the HTTP
//!   Invoke API, unary `Invoke` and `InvokeStream`: what the runtime side and the ingress protocol's socket
//!   work cost a server that does nothing else.
//!
//! Each invoke costs either server the same four socket operations (read `/response`, write 202, read
//! `/next`, write the event), which the kernel charges to the process that makes them; on loopback TCP a
//! write also pays for the receiving side's protocol processing and for waking its reader.
//!
//! Run: `cargo build --release -p lmi-native-echo -p lmictl && cargo bench -p lmi-benches --bench
//! runtime_api_floor` (LMI_FLOOR_CONCURRENCY, default 64; LMI_FLOOR_SECONDS, default 5; LMI_FLOOR_SERVERS,
//! default `minimal,agent`, any of `minimal,agent,minimal-http,minimal-grpc,minimal-grpc-unary,
//! minimal-grpc-stream`; LMI_FLOOR_RATE, invokes per second: the ingress floors' load in open loop at that rate,
//! unary and HTTP only).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ingress;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lmi_runtime_api::broker::Broker;
use lmi_runtime_api::invocation::{Event, Outcome};
use lmi_runtime_api::protocol::{DEADLINE_MS_STR, FUNCTION_ARN_STR, REQUEST_ID_STR};
use lmi_runtime_api::RuntimeApi;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{oneshot, Notify},
};

const PAYLOAD: &[u8] = br#"{"hello":"world"}"#;
const ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:floor:$LATEST";
/// A request head longer than this ends the connection (the runtime's and the callers' heads are short).
const MAX_HEAD: usize = 64 * 1024;
/// A body longer than this ends the connection: Lambda's 6 MB payload limit, with room.
const MAX_BODY: usize = 8 * 1024 * 1024;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A binary of the release build, next to this bench's directory, or what to build when it is missing.
fn release_binary(name: &str, package: &str) -> Result<PathBuf, String> {
    // target/release/deps/runtime_api_floor-<hash> → target/release/<name>
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this bench's path: {e}"))?;
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|release| release.join(name))
        .ok_or_else(|| format!("{} has no target directory above it", exe.display()))?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: run `cargo build --release -p {package}` first",
            bin.display()
        ))
    }
}

fn native_echo() -> PathBuf {
    release_binary("native-echo", "lmi-native-echo").unwrap_or_else(|e| panic!("{e}"))
}

/// The native echo runtime against the Runtime API at `addr`, with `concurrency` pollers.
fn spawn_runtime(addr: std::net::SocketAddr, concurrency: u32) -> tokio::process::Child {
    tokio::process::Command::new(native_echo())
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_MAX_CONCURRENCY", concurrency.to_string())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64
}

/// The minimal server's exchange: queued events and the callers waiting for their answers.
#[derive(Default)]
struct Exchange {
    queue: Mutex<VecDeque<(u64, Bytes)>>,
    queued: Notify,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    next_id: AtomicU64,
}

impl Exchange {
    /// Queues an event for the runtime: its id (the `floor-<id>` request id) and where its answer comes.
    fn submit(&self, payload: Bytes) -> (u64, oneshot::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        self.queue.lock().unwrap().push_back((id, payload));
        self.queued.notify_one();
        (id, rx)
    }

    async fn invoke(&self, payload: Bytes) -> Bytes {
        self.submit(payload).1.await.unwrap()
    }

    async fn next(&self) -> (u64, Bytes) {
        loop {
            let notified = self.queued.notified();
            if let Some(e) = self.queue.lock().unwrap().pop_front() {
                return e;
            }
            notified.await;
        }
    }
}

/// Position of the end of a request head (after its blank line) in `buf`.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    Some(
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0),
    )
}

/// The next HTTP/1.1 request on a keep-alive connection: its first line and its body (`buf` keeps what
/// was read past it). None when the connection ends, fails, or sends a head or body beyond the limits.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Bytes)> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let first_line = buf[..end].split(|b| *b == b'\r').next()?.to_vec();
    let body_len = content_length(&buf[..end]).filter(|n| *n <= MAX_BODY)?;
    while buf.len() < end + body_len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = Bytes::copy_from_slice(&buf[end..end + body_len]);
    buf.drain(..end + body_len);
    Some((first_line, body))
}

/// The `minimal` Runtime API on one of the runtime's connections.
async fn minimal_connection(mut stream: TcpStream, exchange: Arc<Exchange>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    while let Some((first_line, body)) = read_request(&mut stream, &mut buf).await {
        let reply = if first_line.starts_with(b"GET ") {
            let (id, payload) = exchange.next().await;
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{REQUEST_ID_STR}: floor-{id}\r\n\
                 {DEADLINE_MS_STR}: 4102444800000\r\n{FUNCTION_ARN_STR}: {ARN}\r\n\
                 content-length: {}\r\n\r\n",
                payload.len()
            )
            .into_bytes();
            r.extend_from_slice(&payload);
            r
        } else {
            // POST <protocol::PREFIX>invocation/floor-<id>/response
            let line = String::from_utf8_lossy(&first_line);
            let Some(id) = line
                .split("floor-")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                return;
            };
            if let Some(tx) = exchange.waiting.lock().unwrap().remove(&id) {
                let _ = tx.send(body);
            }
            b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"OK\"}"
                .to_vec()
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Serves the `minimal` Runtime API on `listener` until the process ends.
fn serve_minimal(listener: TcpListener, exchange: Arc<Exchange>) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(minimal_connection(s, exchange.clone()));
        }
    });
}

enum Server {
    Minimal(Arc<Exchange>),
    Agent(Arc<Broker>),
}

impl Server {
    async fn invoke(&self, id: u64) {
        let payload = Bytes::from_static(PAYLOAD);
        match self {
            Server::Minimal(x) => {
                let answer = x.invoke(payload).await;
                assert_eq!(answer.as_ref(), PAYLOAD);
            }
            Server::Agent(broker) => {
                let event = Event::new(
                    format!("floor-{id}"),
                    payload,
                    Duration::from_secs(60),
                    ARN.to_owned(),
                    None,
                    None,
                );
                let pending = broker.submit(event).unwrap();
                let outcome = pending.wait(Duration::from_secs(60)).await;
                assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
            }
        }
    }
}

/// The bench's Tokio runtime: two workers, as the host's two CPUs.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn run(kind: &str, concurrency: u32, seconds: f64) {
    tokio_runtime().block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::new(match kind {
            "minimal" => {
                let exchange = Arc::new(Exchange::default());
                serve_minimal(listener, exchange.clone());
                Server::Minimal(exchange)
            }
            "agent" => {
                let broker = Broker::new(concurrency);
                let api = RuntimeApi::new(broker.clone(), Arc::new(lmi_benches::NoEvents));
                tokio::spawn(api.serve(listener));
                Server::Agent(broker)
            }
            other => panic!("unknown server {other:?}"),
        });
        let mut runtime = spawn_runtime(addr, concurrency);
        let runtime_pid = runtime.id().unwrap().to_string();

        let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
        let measure_from = Instant::now() + Duration::from_secs(1);
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        for _ in 0..concurrency {
            let (server, done, stop, next_id, latencies) = (
                server.clone(),
                done.clone(),
                stop.clone(),
                next_id.clone(),
                latencies.clone(),
            );
            callers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    server.invoke(next_id.fetch_add(1, Ordering::Relaxed)).await;
                    if sent >= measure_from {
                        mine.push(sent.elapsed());
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
        tokio::time::sleep_until(measure_from.into()).await; // warm-up
        let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
        let (me0, rt0) = (cpu_seconds("self"), cpu_seconds(&runtime_pid));
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let (n1, t1) = (done.load(Ordering::Relaxed), Instant::now());
        let (me1, rt1) = (cpu_seconds("self"), cpu_seconds(&runtime_pid));
        stop.store(true, Ordering::Relaxed);
        for c in callers {
            c.await.unwrap();
        }
        let _ = runtime.kill().await;
        let n = (n1 - n0) as f64;
        let mut l = std::mem::take(&mut *latencies.lock().unwrap());
        l.sort_unstable();
        let pct = |q: f64| {
            l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        println!(
            "{kind:>8} server, concurrency {concurrency}: {:.0} invokes/s; round trip p50 {:.1} µs, p99 {:.1} µs; \
             CPU per invoke: server {:.1} µs, runtime {:.1} µs",
            n / (t1 - t0).as_secs_f64(),
            pct(0.5),
            pct(0.99),
            (me1 - me0) * 1e6 / n,
            (rt1 - rt0) * 1e6 / n,
        );
    });
}

/// One run of the bench: an in-process server (`minimal`, `agent`) or an ingress floor.
enum Step<'a> {
    InProcess(&'a str),
    Ingress(ingress::Ingress),
}

fn main() {
    let concurrency = setting("LMI_FLOOR_CONCURRENCY", 64u32);
    let seconds = setting("LMI_FLOOR_SECONDS", 5.0f64);
    let servers: String = setting("LMI_FLOOR_SERVERS", "minimal,agent".to_owned());
    // `cargo bench` passes --bench; nothing else is taken. Every name is checked before anything runs.
    let mut plan = Vec::new();
    for kind in servers.split(',').map(str::trim) {
        match kind {
            "minimal" | "agent" => plan.push(Step::InProcess(kind)),
            other => match ingress::Ingress::named(other) {
                Some(modes) => plan.extend(modes.iter().copied().map(Step::Ingress)),
                None => {
                    eprintln!(
                        "runtime_api_floor: unknown server {other:?} in LMI_FLOOR_SERVERS: one of minimal, agent, \
                         minimal-http, minimal-grpc (both gRPC modes), minimal-grpc-unary, minimal-grpc-stream"
                    );
                    std::process::exit(2);
                }
            },
        }
    }
    for step in plan {
        match step {
            Step::InProcess(kind) => run(kind, concurrency, seconds),
            Step::Ingress(ingress) => {
                if let Err(e) = ingress::run(ingress, concurrency, seconds) {
                    eprintln!("runtime_api_floor: {}: {e}", ingress.name());
                    std::process::exit(1);
                }
            }
        }
    }
}
