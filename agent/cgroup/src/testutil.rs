//! Test helpers: a "fake cgroupfs" made of plain files in a temp directory.
// Test helpers: a failed set-up is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};

use super::mounts::{Hierarchy, V1Mounts};

/// Creates `dir` (and parents) with the given interface files and contents.
pub fn fake_cgroup(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for (name, contents) in files {
        fs::write(dir.join(name), contents).unwrap();
    }
    dir.to_path_buf()
}

/// Reads a file of the fake tree.
pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

/// The limit specs of the test matrix: (label, vCPUs, memory bytes).
pub const SPECS: [(&str, u64, u64); 3] = [
    ("2-1", 1, 2 << 30),
    ("4-1", 2, 8 << 30),
    ("8-1", 4, 32 << 30),
];

/// Where [`fake_v1_mounts`] puts the agent's own cgroup in each hierarchy, relative to the root it is given.
pub const FAKE_V1_OWN_DIRS: [&str; 6] = [
    "cpu",
    "cpuacct",
    "memory/process_api/abc",
    "pids",
    "freezer",
    "unified",
];

/// A v1 layout shaped like this development host: separate cpu and cpuacct
/// mounts, the agent in `/process_api/abc` of the memory hierarchy, a freezer
/// and a controller-less unified mount.
pub fn fake_v1_mounts(root: &Path) -> V1Mounts {
    for m in FAKE_V1_OWN_DIRS {
        fs::create_dir_all(root.join(m)).unwrap();
    }
    V1Mounts {
        cpu: Hierarchy::new(root.join("cpu"), "/"),
        cpuacct: Some(Hierarchy::new(root.join("cpuacct"), "/")),
        memory: Hierarchy::new(root.join("memory"), "/process_api/abc"),
        pids: Hierarchy::new(root.join("pids"), "/"),
        freezer: Some(Hierarchy::new(root.join("freezer"), "/")),
        unified: Some(Hierarchy::new(root.join("unified"), "/")),
    }
}

/// Pre-creates the directories and interface files the kernel would create
/// for environment `env` under parent `parent` of [`fake_v1_mounts`].
pub fn fake_v1_env(root: &Path, parent: &str, env: &str, memsw: bool) {
    let at = |m: &str| root.join(m).join(parent).join(env);
    fake_cgroup(
        &at("cpu"),
        &[
            ("cgroup.procs", ""),
            ("cpu.cfs_period_us", "100000\n"),
            ("cpu.cfs_quota_us", "-1\n"),
        ],
    );
    fake_cgroup(&at("cpuacct"), &[("cgroup.procs", "")]);
    let mut mem = vec![
        ("cgroup.procs", ""),
        ("memory.limit_in_bytes", "9223372036854771712\n"),
        (
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        ),
    ];
    if memsw {
        mem.push(("memory.memsw.limit_in_bytes", "9223372036854771712\n"));
    }
    fake_cgroup(&at("memory/process_api/abc"), &mem);
    fake_cgroup(&at("pids"), &[("cgroup.procs", ""), ("pids.max", "max\n")]);
    fake_cgroup(
        &at("freezer"),
        &[("cgroup.procs", ""), ("freezer.state", "THAWED\n")],
    );
    fake_cgroup(&at("unified"), &[("cgroup.procs", ""), ("cgroup.kill", "")]);
}

/// An AL2023-like cgroup2 tree: the agent at `/system.slice/lmi-agent.service`
/// with `procs` as its own `cgroup.procs`; parent `lmi-agent` and the
/// supervisor leaf pre-created. Returns the mount root.
pub fn fake_v2_tree(root: &Path, own_controllers: &str, procs: &str) -> PathBuf {
    fake_cgroup(
        root,
        &[
            (
                "cgroup.controllers",
                "cpuset cpu io memory hugetlb pids rdma misc\n",
            ),
            ("cgroup.subtree_control", "cpu memory pids\n"),
        ],
    );
    fake_cgroup(
        &root.join("system.slice"),
        &[
            ("cgroup.controllers", "cpu memory pids\n"),
            ("cgroup.subtree_control", "memory pids\n"),
        ],
    );
    let own = root.join("system.slice/lmi-agent.service");
    fake_cgroup(
        &own,
        &[
            ("cgroup.controllers", own_controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", procs),
        ],
    );
    fake_cgroup(
        &own.join("lmi-agent"),
        &[
            ("cgroup.controllers", own_controllers),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
        ],
    );
    fake_cgroup(&own.join("lmi-agent.supervisor"), &[("cgroup.procs", "")]);
    root.to_path_buf()
}

/// Pre-creates a v2 environment cgroup's interface files.
pub fn fake_v2_env(parent_dir: &Path, env: &str) -> PathBuf {
    fake_cgroup(
        &parent_dir.join(env),
        &[
            ("cgroup.procs", ""),
            ("cgroup.kill", ""),
            ("cpu.max", "max 100000\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("pids.max", "max\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 7\noom 4\noom_kill 3\noom_group_kill 0\n",
            ),
        ],
    )
}
