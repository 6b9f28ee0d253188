//! The Runtime API round trip of an invoke over real loopback HTTP, inside one process: the caller submits
//! to an environment's [`Broker`], a runtime poller's parked `GET /next` is answered with the event, the
//! poller posts `/response`, the server accepts it (202) and the caller has its outcome.
//!
//! The runtime side is the native echo runtime's own client (`lmi_native_echo::client`): one keep-alive
//! HTTP/1.1 connection per poller, as real runtimes poll. No gRPC here: `lmictl bench invoke` measures the
//! whole path through the daemon.
//!
//! Run: `cargo bench -p lmi-benches --bench runtime_api`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lmi_native_echo::client::RuntimeApiClient;
use lmi_runtime_api::broker::Broker;
use lmi_runtime_api::invocation::{Event, Outcome};
use lmi_runtime_api::RuntimeApi;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A broker behind a real Runtime API server on loopback, with `pollers` echoing pollers connected.
fn environment(rt: &tokio::runtime::Runtime, pollers: u32) -> Arc<Broker> {
    let broker = Broker::new(pollers);
    let api = RuntimeApi::new(broker.clone(), Arc::new(lmi_benches::NoEvents));
    let (listener, addr) = rt.block_on(RuntimeApi::bind_loopback()).unwrap();
    rt.spawn(api.serve(listener));
    for _ in 0..pollers {
        rt.spawn(async move {
            let mut client = RuntimeApiClient::connect(&addr.to_string()).await.unwrap();
            loop {
                let inv = client.next().await.unwrap();
                client.respond(&inv.request_id, inv.payload).await.unwrap();
            }
        });
    }
    broker
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn event(payload: &Bytes) -> Event {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Event::new(
        format!("bench-{id}"),
        payload.clone(),
        TIMEOUT,
        "arn:aws:lambda:us-east-1:123456789012:function:bench:$LATEST".to_owned(),
        None,
        None,
    )
}

async fn invoke(broker: &Arc<Broker>, payload: &Bytes) {
    let pending = broker.submit(event(payload)).unwrap();
    let outcome = pending.wait(TIMEOUT).await;
    assert!(matches!(outcome, Outcome::Success { .. }), "{outcome:?}");
}

fn runtime() -> tokio::runtime::Runtime {
    // As the daemon: a multi-threaded runtime with one worker per core (2 on the reference machine).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn round_trip(c: &mut Criterion) {
    let rt = runtime();
    let payload = Bytes::from_static(br#"{"hello":"world"}"#);
    let mut group = c.benchmark_group("runtime_api");
    group.measurement_time(Duration::from_secs(5));

    // One invoke at a time: the latency the Runtime API adds to each invoke.
    let broker = environment(&rt, 1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip/c1", |b| {
        b.to_async(&rt).iter(|| invoke(&broker, &payload));
    });

    // `n` invokes at once over `n` pollers: time per batch, throughput in invokes.
    for n in [16u32, 64] {
        let broker = environment(&rt, n);
        group.throughput(Throughput::Elements(u64::from(n)));
        group.bench_with_input(BenchmarkId::new("batch", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| async {
                let calls = (0..n).map(|_| invoke(&broker, &payload));
                futures_util::future::join_all(calls).await;
            });
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
