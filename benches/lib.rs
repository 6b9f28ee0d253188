//! Fixtures shared by the benchmarks in `benches/`: real `Environment` records whose cgroups live in a fake
//! cgroup v2 tree (plain files shaped like cgroupfs), so a benchmark measures the agent's own work and needs
//! neither root nor a runtime process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{fs, path::Path, sync::Arc};

use lmi_agent_core::catalog::Catalog;
use lmi_agent_core::config::UtilizationConfig;
use lmi_agent_core::environment::Environment;
use lmi_agent_core::host::HostReader;
use lmi_agent_core::sampler::Sampler;
use lmi_agent_core::spec::{SpecDefaults, ValidSpec};
use lmi_cgroup::{CgroupDriver, CgroupLimits, V2Driver, V2Options};
use lmi_proto::v1 as pb;

fn write(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        fs::write(dir.join(name), text).unwrap();
    }
}

/// The files of one environment's cgroup, with the figures a busy environment would show.
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

/// How the environments of [`environments`] are named and sized.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// One function for all (`true`, what the dispatcher chooses among) or one function each.
    pub one_function: bool,
    pub max_concurrency: u32,
}

/// `n` environments (INITIALIZING; a `/next` poll makes one READY) whose cgroups live in a fake cgroup v2
/// tree under `root`; `code` is their (empty) code directory.
pub fn environments(root: &Path, code: &Path, n: usize, shape: Shape) -> Vec<Arc<Environment>> {
    let controllers = [
        ("cgroup.controllers", "cpu memory pids\n"),
        ("cgroup.subtree_control", "cpu memory pids\n"),
    ];
    write(root, &controllers);
    for dir in ["agent", "agent/lmi"] {
        write(
            &root.join(dir),
            &[controllers[0], controllers[1], ("cgroup.procs", "")],
        );
    }
    let driver = V2Driver::new(root.to_owned(), "/agent", "lmi", V2Options::default()).unwrap();
    (0..n)
        .map(|i| {
            let name = format!("env-{i}");
            write(&root.join("agent/lmi").join(&name), ENV_FILES);
            let cgroup = driver
                .create(&name, &CgroupLimits::from_vcpus(1, 2 << 30, 4096))
                .unwrap();
            let function = if shape.one_function {
                "bench".to_string()
            } else {
                format!("f{i}")
            };
            Environment::new(
                name,
                spec(code, &function, shape.max_concurrency),
                "127.0.0.1:9001".parse().unwrap(),
                Arc::from(cgroup),
                None,
                None,
            )
        })
        .collect()
}

/// A valid spec of `function` (runtime `bench1`, the default size), its code in `code`.
pub fn spec(code: &Path, function: &str, max_concurrency: u32) -> ValidSpec {
    let catalog = Catalog::parse(
        "[[runtime]]\nid = \"bench1\"\ncommand = [\"sh\"]\ndefault_concurrency_per_vcpu = 16\n",
        "bench",
    )
    .unwrap();
    let defaults = SpecDefaults {
        region: "us-east-1".into(),
        account_id: "000000000000".into(),
    };
    let wire = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: function.to_owned(),
            ..Default::default()
        }),
        runtime: "bench1".into(),
        handler: "app.handler".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(code.display().to_string())),
            sha256: String::new(),
        }),
        max_concurrency,
        ..Default::default()
    };
    lmi_agent_core::wire::spec::validate(&wire, &catalog, &defaults).unwrap()
}

/// `n` environments of one function each (the sampler's view of a busy host) and a sampler with the default
/// settings; `tree` and `code` hold the fake cgroupfs and the code directory.
pub fn sampled_host(tree: &Path, code: &Path, n: usize) -> (Vec<Arc<Environment>>, Sampler) {
    let envs = environments(
        tree,
        code,
        n,
        Shape {
            one_function: false,
            max_concurrency: 0,
        },
    );
    let sampler = Sampler::new(
        UtilizationConfig::default(),
        HostReader::default(),
        code.to_owned(),
    );
    (envs, sampler)
}

/// Environment events for a Runtime API under bench: its own side (READY, init errors) is not measured.
#[derive(Debug)]
pub struct NoEvents;

impl lmi_runtime_api::RuntimeEvents for NoEvents {
    fn polled(&self) {}
    fn init_error(
        &self,
        _error: lmi_runtime_api::invocation::ErrorInfo,
    ) -> lmi_runtime_api::InitErrorAnswer {
        lmi_runtime_api::InitErrorAnswer::Refused
    }
}
