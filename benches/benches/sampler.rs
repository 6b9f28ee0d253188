//! Cost of one sampler tick at 1, 10 and 50 environments, on a fake cgroup v2 tree (plain files shaped like
//! cgroupfs), so the figure is the agent's own work: opening and parsing each environment's files.
//! Run: `cargo bench -p lmi-benches --bench sampler`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{fs, path::Path, sync::Arc, time::Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lmi_agent::{
    capacity::{Allocated, HostCapacity},
    catalog::Catalog,
    cgroup::{CgroupDriver, CgroupLimits, V2Driver, V2Options},
    config::UtilizationConfig,
    environment::Environment,
    host::HostReader,
    sampler::Sampler,
    spec::{self, SpecDefaults},
};
use lmi_proto::v1 as pb;

fn write(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        fs::write(dir.join(name), text).unwrap();
    }
}

const ENV_FILES: &[(&str, &str)] = &[
    ("cgroup.procs", ""),
    ("cgroup.kill", ""),
    ("cpu.max", "max 100000\n"),
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("pids.max", "max\n"),
    ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
    ("cpu.stat", "usage_usec 123456789\nuser_usec 100000000\nsystem_usec 23456789\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"),
    ("memory.current", "524288000\n"),
    ("memory.stat", "anon 400000000\nfile 124288000\nkernel 1000000\nactive_file 100000000\ninactive_file 24288000\n"),
    ("cpu.pressure", "some avg10=1.00 avg60=0.50 avg300=0.10 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
    ("memory.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
    ("io.pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
];

/// `n` environments whose cgroups live in a fake cgroup v2 tree under `root`.
fn environments(root: &Path, code: &Path, n: usize) -> Vec<Arc<Environment>> {
    let controllers = [
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.subtree_control", "cpu memory pids\n"),
    ];
    write(root, &controllers);
    write(
        &root.join("agent"),
        &[controllers[0], controllers[1], ("cgroup.procs", "")],
    );
    write(
        &root.join("agent/lmi"),
        &[controllers[0], controllers[1], ("cgroup.procs", "")],
    );
    let driver = V2Driver::new(root.to_owned(), "/agent", "lmi", V2Options::default()).unwrap();
    let catalog = Catalog::parse(
        "[[runtime]]\nid = \"bench1\"\ncommand = [\"sh\"]\ndefault_concurrency_per_vcpu = 16\n",
        "bench",
    )
    .unwrap();
    let defaults = SpecDefaults {
        region: "us-east-1".into(),
        account_id: "000000000000".into(),
    };
    (0..n)
        .map(|i| {
            let name = format!("env-{i}");
            write(&root.join("agent/lmi").join(&name), ENV_FILES);
            let cgroup = driver
                .create(&name, &CgroupLimits::from_vcpus(1, 2 << 30, 4096))
                .unwrap();
            let wire = pb::EnvironmentSpec {
                function: Some(pb::FunctionRef {
                    name: format!("f{i}"),
                    ..Default::default()
                }),
                runtime: "bench1".into(),
                handler: "app.handler".into(),
                code: Some(pb::Code {
                    source: Some(pb::code::Source::Directory(code.display().to_string())),
                    sha256: String::new(),
                }),
                ..Default::default()
            };
            let spec = spec::validate(&wire, &catalog, &defaults).unwrap();
            Environment::new(
                name,
                spec,
                "127.0.0.1:9001".parse().unwrap(),
                Arc::from(cgroup),
                None,
            )
        })
        .collect()
}

fn sampler_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampler_tick");
    for n in [1usize, 10, 50] {
        let tree = tempfile::tempdir().unwrap();
        let code = tempfile::tempdir().unwrap();
        let envs = environments(tree.path(), code.path(), n);
        let mut sampler = Sampler::new(
            UtilizationConfig::default(),
            HostReader::default(),
            code.path().to_owned(),
        );
        let capacity = HostCapacity::new(64, 262_144, 0, 0);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| sampler.tick(&envs, capacity, Allocated::default(), false, Instant::now()));
        });
    }
    group.finish();
}

criterion_group!(benches, sampler_tick);
criterion_main!(benches);
