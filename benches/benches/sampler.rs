//! Cost of one sampler tick at 1, 10, 50 and 100 environments, on a fake cgroup v2 tree (plain files shaped like
//! cgroupfs), so the figure is the agent's own work: opening and parsing each environment's files.
//! Run: `cargo bench -p lmi-benches --bench sampler`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lmi_agent_core::capacity::{Allocated, HostCapacity};
use lmi_benches::sampled_host;

fn sampler_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampler_tick");
    for n in [1usize, 10, 50, 100] {
        let tree = tempfile::tempdir().unwrap();
        let code = tempfile::tempdir().unwrap();
        let (envs, mut sampler) = sampled_host(tree.path(), code.path(), n);
        let capacity = HostCapacity::new(64, 262_144, 0, 0);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| sampler.tick(&envs, capacity, Allocated::default(), false, Instant::now()));
        });
    }
    group.finish();
}

criterion_group!(benches, sampler_tick);
criterion_main!(benches);
