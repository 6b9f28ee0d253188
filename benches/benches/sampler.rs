//! Cost of one sampler tick.
//!
//! - `sampler_tick`: 1, 10, 50 and 100 environments on a fake cgroup v2 tree (plain files shaped like
//!   cgroupfs), so the figure is the agent's own work: opening and parsing each environment's files.
//! - `sampler_tick_real` and `sampler_source_real` (root only; skipped with a message otherwise): 100
//!   environments with real cgroups of this host (the driver `lmi_cgroup::detect` picks, v1 or v2), one
//!   sleeping process and a tmpfs /tmp each: the whole tick, and each file or call of it on its own over the
//!   100 (divide by 100 for the cost per environment), so the kernel's share of each source shows.
//!
//! Run: `cargo bench -p lmi-benches --bench sampler` (`LMI_BENCH_N` sets the real environments, default 100).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    fs::File,
    os::unix::{fs::FileExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::Instant,
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lmi_agent_core::capacity::{Allocated, HostCapacity};
use lmi_agent_core::config::UtilizationConfig;
use lmi_agent_core::environment::Environment;
use lmi_agent_core::host::HostReader;
use lmi_agent_core::sampler::Sampler;
use lmi_benches::sampled_host;
use lmi_cgroup::{CgroupDriver, CgroupLimits};
use lmi_sandbox::ephemeral::EphemeralStorage;

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

/// Real environments: cgroups, one process each, tmpfs /tmp; all removed on drop.
struct RealHost {
    driver: Arc<dyn CgroupDriver>,
    envs: Vec<Arc<Environment>>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl RealHost {
    fn new(n: usize) -> Self {
        let parent = format!("lmi-bench-sampler-{}", std::process::id());
        let driver = lmi_cgroup::detect(&parent).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("lmi-bench-sampler-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let mut host = Self {
            driver,
            envs: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for i in 0..n {
            let name = format!("env-{i}");
            let cgroup: Arc<dyn lmi_cgroup::EnvironmentCgroup> = Arc::from(
                host.driver
                    .create(&name, &CgroupLimits::from_vcpus(1, 2 << 30, 4096))
                    .unwrap(),
            );
            let placement = cgroup.placement().unwrap();
            let mut cmd = Command::new("sleep");
            cmd.arg("3600");
            // SAFETY: `Placement::enter` only calls write(2).
            unsafe { cmd.pre_exec(move || placement.enter()) };
            host.children.push(cmd.spawn().unwrap());
            let tmp =
                EphemeralStorage::create(&host.dir.path().join(&name).join("tmp"), 64).unwrap();
            host.envs.push(Environment::new(
                name.clone(),
                lmi_benches::spec(host.dir.path(), &format!("f{i}"), 0),
                "127.0.0.1:9001".parse().unwrap(),
                cgroup,
                Some(tmp),
                None,
            ));
        }
        host
    }

    /// The file `name` in whichever of the cgroup's directories has it (v1 spreads them over hierarchies).
    fn file(env: &Environment, name: &str) -> Option<PathBuf> {
        env.cgroup
            .directories()
            .into_iter()
            .map(|d| d.join(name))
            .find(|p| p.exists())
    }
}

impl Drop for RealHost {
    fn drop(&mut self) {
        for env in &self.envs {
            env.cgroup.remove().unwrap();
            if let Some(tmp) = &env.tmp {
                tmp.remove().unwrap();
            }
        }
        for child in &mut self.children {
            child.wait().unwrap();
        }
        self.driver.remove_parent().unwrap();
    }
}

fn sampler_real(c: &mut Criterion) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping sampler_tick_real and sampler_source_real: real cgroups need root");
        return;
    }
    let n: usize = std::env::var("LMI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let host = RealHost::new(n);
    let capacity = HostCapacity::new(256, 1 << 20, 0, 0);

    let mut group = c.benchmark_group("sampler_tick_real");
    let mut sampler = Sampler::new(
        UtilizationConfig::default(),
        HostReader::default(),
        host.dir.path().to_owned(),
    );
    group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
        b.iter(|| {
            sampler.tick(
                &host.envs,
                capacity,
                Allocated::default(),
                false,
                Instant::now(),
            )
        });
    });
    group.finish();

    // Each source over the n environments, read the way the sampler reads it (a file opened once, pread at
    // offset 0; statvfs by path; fstatvfs on a descriptor held open).
    let mut group = c.benchmark_group("sampler_source_real");
    let sources = [
        "cpuacct.usage",
        "cpu.stat",
        "memory.usage_in_bytes",
        "memory.current",
        "memory.stat",
        "cpu.pressure",
        "memory.pressure",
        "io.pressure",
    ];
    for source in sources {
        let files: Vec<File> = host
            .envs
            .iter()
            .filter_map(|e| RealHost::file(e, source))
            .map(|p| File::open(p).unwrap())
            .collect();
        if files.len() != n {
            eprintln!("{source}: not in every environment's cgroup on this host, not measured");
            continue;
        }
        let mut buf = [0u8; 8192];
        group.bench_function(BenchmarkId::new(source, n), |b| {
            b.iter(|| {
                for f in &files {
                    std::hint::black_box(f.read_at(&mut buf, 0).unwrap());
                }
            })
        });
    }
    let tmps: Vec<&Path> = host
        .envs
        .iter()
        .map(|e| e.tmp.as_ref().unwrap().path())
        .collect();
    group.bench_function(BenchmarkId::new("statvfs(tmp path)", n), |b| {
        b.iter(|| {
            for p in &tmps {
                std::hint::black_box(nix::sys::statvfs::statvfs(*p).unwrap());
            }
        })
    });
    let dirs: Vec<File> = tmps.iter().map(|p| File::open(p).unwrap()).collect();
    group.bench_function(BenchmarkId::new("fstatvfs(tmp fd)", n), |b| {
        b.iter(|| {
            for d in &dirs {
                std::hint::black_box(nix::sys::statvfs::fstatvfs(d).unwrap());
            }
        })
    });
    group.bench_function(BenchmarkId::new("cgroup.usage()", n), |b| {
        b.iter(|| {
            for e in &host.envs {
                std::hint::black_box(e.cgroup.usage().unwrap());
            }
        })
    });
    group.finish();
    drop(dirs);
    drop(host);
}

criterion_group!(benches, sampler_tick, sampler_real);
criterion_main!(benches);
