//! A streamed answer through the Runtime API, inside one process: a caller submits with
//! [`Broker::submit_streaming`], a runtime on loopback HTTP/1.1 answers `GET /next` and posts its answer with
//! `Lambda-Runtime-Function-Response-Mode: streaming` (chunked), and the caller reads the chunks from its
//! [`ResponseStream`] as they come, as the gRPC `InvokeWithResponseStream` handler and the Invoke API do
//! (no gRPC or event-stream framing here).
//!
//! - `response_stream/ttfb`: from the submit to the caller holding the first chunk (a 16-byte, one-chunk
//!   answer); the rest of the invoke is not timed.
//! - `response_stream/20MiB/<chunk>`: a 20 MiB answer in chunks of 16 KiB, 64 KiB or 1 MiB, read to its end;
//!   Criterion's throughput is in bytes.
//! - After the group, one line per chunk size: the CPU time the agent's threads spent per MiB streamed
//!   (the Runtime API server, the broker and the caller reading; the runtime's threads are counted apart),
//!   from each thread's `/proc/self/task/<tid>/schedstat` over every iteration (warm-up included).
//!
//! Run: `cargo bench -p lmi-benches --bench response_stream`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use lmi_runtime_api::broker::{Answered, Broker, Piece};
use lmi_runtime_api::invocation::{Event, Outcome};
use lmi_runtime_api::{protocol, RuntimeApi};

const TIMEOUT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;
const TOTAL: usize = 20 * MIB;
/// Thread names (`comm`, at most 15 bytes) that tell the agent's threads from the runtime's.
const AGENT_THREADS: &str = "bench-agent";
const RUNTIME_THREADS: &str = "bench-runtime";

type Body = BoxBody<Bytes, Infallible>;

/// A runtime that answers every event with `count` chunks of `chunk`, streamed, on one keep-alive
/// connection.
struct StreamingRuntime {
    sender: http1::SendRequest<Body>,
    host: String,
}

impl StreamingRuntime {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Self {
            sender,
            host: addr.to_string(),
        }
    }

    async fn next(&mut self) -> String {
        let req = Request::builder()
            .method(Method::GET)
            .uri(protocol::NEXT_PATH)
            .header(HOST, &self.host)
            .body(Empty::new().boxed())
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let id = resp.headers()[protocol::REQUEST_ID]
            .to_str()
            .unwrap()
            .to_owned();
        resp.into_body().collect().await.unwrap();
        id
    }

    async fn stream(&mut self, id: &str, chunk: Bytes, count: usize) {
        let frames = futures_util::stream::iter(
            (0..count).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri(protocol::response_path(id))
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(protocol::RESPONSE_MODE, protocol::STREAMING)
            .body(StreamBody::new(frames).boxed())
            .unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        resp.into_body().collect().await.unwrap();
    }
}

/// A broker behind a real Runtime API server on loopback (on `agent`), with one streaming runtime (on
/// `runtime`) answering `count` chunks of `chunk_size` bytes.
fn environment(
    agent: &tokio::runtime::Runtime,
    runtime: &tokio::runtime::Runtime,
    chunk_size: usize,
    count: usize,
) -> Arc<Broker> {
    let broker = Broker::new(1);
    let api = RuntimeApi::new(broker.clone(), Arc::new(lmi_benches::NoEvents));
    let (listener, addr) = agent.block_on(RuntimeApi::bind_loopback()).unwrap();
    agent.spawn(api.serve(listener));
    let chunk = Bytes::from(vec![b'x'; chunk_size]);
    runtime.spawn(async move {
        let mut rt = StreamingRuntime::connect(addr).await;
        loop {
            let id = rt.next().await;
            rt.stream(&id, chunk.clone(), count).await;
        }
    });
    broker
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn event() -> Event {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Event::new(
        format!("stream-{id}"),
        Bytes::from_static(b"{}"),
        TIMEOUT,
        "arn:aws:lambda:us-east-1:123456789012:function:bench:$LATEST".to_owned(),
        None,
        None,
    )
}

/// One streamed invoke on the agent's runtime: the time to its first chunk and the bytes read to its end.
async fn invoke(broker: Arc<Broker>) -> (Duration, usize) {
    let start = Instant::now();
    let pending = broker.submit_streaming(event()).unwrap();
    let Answered::Stream(mut stream) = pending.wait_streamed(TIMEOUT).await else {
        panic!("the runtime streams its answer");
    };
    let mut first = None;
    let mut bytes = 0;
    while let Some(piece) = stream.next().await {
        match piece {
            Piece::Chunk(c) => {
                first.get_or_insert_with(|| start.elapsed());
                bytes += c.len();
            }
            Piece::End(Outcome::Success { .. }) => {}
            Piece::End(other) => panic!("{other:?}"),
        }
    }
    (first.expect("at least one chunk"), bytes)
}

/// Nanoseconds on CPU of this process's threads named `name` (from each thread's schedstat).
fn cpu_ns(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn response_stream(c: &mut Criterion) {
    // The agent as the daemon runs it (one worker per core: 2 on the reference machine); the runtime apart.
    let agent = runtime(AGENT_THREADS, 2);
    let runtime_rt = runtime(RUNTIME_THREADS, 1);
    let mut group = c.benchmark_group("response_stream");
    group.measurement_time(Duration::from_secs(5));

    let broker = environment(&agent, &runtime_rt, 16, 1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("ttfb", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (first, bytes) = agent.block_on(agent.spawn(invoke(broker.clone()))).unwrap();
                assert_eq!(bytes, 16);
                total += first;
            }
            total
        });
    });

    group.sample_size(10);
    let mut cpu = Vec::new();
    for chunk_size in [16 << 10, 64 << 10, MIB] {
        let broker = environment(&agent, &runtime_rt, chunk_size, TOTAL / chunk_size);
        let (mut agent_ns, mut runtime_ns, mut streamed) = (0u64, 0u64, 0usize);
        group.throughput(Throughput::Bytes(TOTAL as u64));
        group.bench_with_input(
            BenchmarkId::new("20MiB", format!("{}KiB", chunk_size >> 10)),
            &chunk_size,
            |b, _| {
                b.iter_custom(|iters| {
                    let (a0, r0) = (cpu_ns(AGENT_THREADS), cpu_ns(RUNTIME_THREADS));
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (_, bytes) =
                            agent.block_on(agent.spawn(invoke(broker.clone()))).unwrap();
                        assert_eq!(bytes, TOTAL);
                        streamed += bytes;
                    }
                    let elapsed = start.elapsed();
                    agent_ns += cpu_ns(AGENT_THREADS) - a0;
                    runtime_ns += cpu_ns(RUNTIME_THREADS) - r0;
                    elapsed
                });
            },
        );
        let mib = streamed as f64 / MIB as f64;
        cpu.push(format!(
            "response_stream/20MiB/{}KiB: agent CPU {:.3} ms per MiB, runtime CPU {:.3} ms per MiB \
             (over {mib:.0} MiB)",
            chunk_size >> 10,
            agent_ns as f64 / 1e6 / mib,
            runtime_ns as f64 / 1e6 / mib,
        ));
    }
    group.finish();
    for line in cpu {
        println!("{line}");
    }
}

criterion_group!(benches, response_stream);
criterion_main!(benches);
