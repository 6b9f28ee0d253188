//! The dispatcher's choice (`lmi_agent_core::dispatch::plan`): the READY, unsaturated environments of a function
//! version with a free slot, least loaded first, for 1, 16 and 100 environments with uneven load.
//!
//! The environments are real `Environment` records (made READY by a `/next` poll, as the Runtime API does)
//! with real brokers holding submitted invokes, their cgroups in a fake tree; no process is needed to choose
//! among them.
//!
//! Run: `cargo bench -p lmi-benches --bench dispatch`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lmi_agent_core::dispatch;
use lmi_agent_core::environment::Environment;
use lmi_benches::{environments, Shape};
use lmi_runtime_api::broker::Pending;
use lmi_runtime_api::invocation::Event;
use lmi_runtime_api::RuntimeEvents;

const MAX_CONCURRENCY: u32 = 64;

/// `n` READY environments of one function; environment `i` holds `(i * 7) % MAX_CONCURRENCY` invokes, so
/// loads differ and some environments are full.
fn loaded_environments(
    tree: &std::path::Path,
    code: &std::path::Path,
    n: usize,
) -> (Vec<Arc<Environment>>, Vec<Pending>) {
    let envs = environments(
        tree,
        code,
        n,
        Shape {
            one_function: true,
            max_concurrency: MAX_CONCURRENCY,
        },
    );
    let mut held = Vec::new();
    for (i, env) in envs.iter().enumerate() {
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
    }
    (envs, held)
}

fn candidates(c: &mut Criterion) {
    let code = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("dispatch/plan");
    for n in [1usize, 16, 100] {
        let tree = tempfile::tempdir().unwrap();
        let (envs, _held) = loaded_environments(tree.path(), code.path(), n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &envs, |b, envs| {
            b.iter(|| dispatch::plan(std::hint::black_box(envs)).candidates.len());
        });
    }
    group.finish();
}

criterion_group!(benches, candidates);
criterion_main!(benches);
