//! The dispatcher's choice (`lmi_agent::dispatch::candidates`): the READY environments of a function version
//! with a free slot, least loaded first, for 1, 16 and 100 environments with uneven load.
//!
//! The environments are real `Environment` records (made READY by a `/next` poll, as the Runtime API does)
//! with real brokers holding submitted invokes; no process or cgroup is needed to choose among them.
//!
//! Run: `cargo bench -p lmi-benches --bench dispatch`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lmi_agent::{
    broker::Pending,
    catalog::Catalog,
    dispatch,
    environment::Environment,
    invocation::Event,
    runtime_api::RuntimeEvents,
    spec::{self, SpecDefaults},
};
use lmi_proto::v1 as pb;

const MAX_CONCURRENCY: u32 = 64;

/// `n` READY environments of one function; environment `i` holds `(i * 7) % MAX_CONCURRENCY` invokes, so
/// loads differ and some environments are full.
fn environments(n: usize, code: &std::path::Path) -> (Vec<Arc<Environment>>, Vec<Pending>) {
    let catalog = Catalog::load(None).unwrap();
    let defaults = SpecDefaults {
        region: "us-east-1".into(),
        account_id: "123456789012".into(),
    };
    let wire = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: "bench".into(),
            ..Default::default()
        }),
        runtime: "provided.al2023".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(code.display().to_string())),
            sha256: String::new(),
        }),
        max_concurrency: MAX_CONCURRENCY,
        ..Default::default()
    };
    let valid = spec::validate(&wire, &catalog, &defaults).unwrap();
    let mut held = Vec::new();
    let envs = (0..n)
        .map(|i| {
            let env = Environment::new(
                format!("env-{i}"),
                valid.clone(),
                "127.0.0.1:9001".parse().unwrap(),
                format!("/lmi/env-{i}"),
            );
            env.polled();
            let load = (i * 7) % MAX_CONCURRENCY as usize;
            for j in 0..load {
                let ev = Event::new(
                    format!("{i}-{j}"),
                    Bytes::new(),
                    Duration::from_secs(60),
                    String::new(),
                    None,
                    None,
                );
                held.push(env.broker.submit(ev).unwrap());
            }
            env
        })
        .collect();
    (envs, held)
}

fn candidates(c: &mut Criterion) {
    let code = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("dispatch/candidates");
    for n in [1usize, 16, 100] {
        let (envs, _held) = environments(n, code.path());
        group.bench_with_input(BenchmarkId::from_parameter(n), &envs, |b, envs| {
            b.iter(|| dispatch::candidates(std::hint::black_box(envs)).len());
        });
    }
    group.finish();
}

criterion_group!(benches, candidates);
criterion_main!(benches);
