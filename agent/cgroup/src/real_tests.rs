//! Tests against the real cgroup filesystem of the host. Each skips (with a
//! message) when not root or when the needed hierarchy is absent, and uses a
//! unique parent name plus a guard that kills and removes everything on drop.
//!
//! The scenarios (a process tree placed, killed and removed; an OOM kill; a
//! leftover cgroup reused) are functions shared by the v1 tests here and the
//! pure cgroup v2 tests of [`v2`], which run where the host is pure v2 with a
//! delegated cgroup (the VM of `tests/vm`).

mod v2;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(super) fn unique_parent() -> String {
    format!(
        "lmi-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn v1_mounts() -> Option<V1Mounts> {
    if lmi_testkit::needs_root("real cgroups") {
        return None;
    }
    match detect_layout() {
        Ok(Layout::V1(m)) => {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            eprintln!(
                "ran on cgroup v1/hybrid (memory hierarchy at {}, own cgroup {}, kernel {})",
                m.memory.mount_point.display(),
                m.memory.own_path,
                kernel.trim()
            );
            Some(*m)
        }
        other => {
            lmi_testkit::skip(&format!("no cgroup v1 hierarchies ({other:?})"));
            None
        }
    }
}

/// Kills the children and removes the environment and parent cgroups on drop.
pub(super) struct Guard {
    pub(super) driver: Box<dyn CgroupDriver>,
    pub(super) envs: Vec<Box<dyn EnvironmentCgroup>>,
    pub(super) children: Vec<Child>,
}

impl Guard {
    pub(super) fn new(driver: impl CgroupDriver + 'static) -> Self {
        Self {
            driver: Box::new(driver),
            envs: Vec::new(),
            children: Vec::new(),
        }
    }

    pub(super) fn create(&mut self, name: &str, limits: &CgroupLimits) -> &dyn EnvironmentCgroup {
        let env = self.driver.create(name, limits).unwrap();
        self.envs.push(env);
        self.envs.last().unwrap().as_ref()
    }

    /// Spawns `argv` placed into `env` via `pre_exec`; returns its pid.
    pub(super) fn spawn_in(&mut self, env_index: usize, argv: &[&str]) -> i32 {
        self.spawn_with(env_index, argv, Stdio::null())
    }

    /// [`Guard::spawn_in`] with the child's stdout given.
    pub(super) fn spawn_with(&mut self, env_index: usize, argv: &[&str], stdout: Stdio) -> i32 {
        let placement = self.envs[env_index].placement().unwrap();
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null());
        // SAFETY: Placement::enter only calls write(2); it is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || placement.enter());
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for e in &self.envs {
            if let Err(err) = e.remove() {
                eprintln!("guard: removing {}: {err}", e.path());
            }
        }
        if let Err(err) = self.driver.remove_parent() {
            eprintln!(
                "guard: removing parent {}: {err}",
                self.driver.parent_path()
            );
        }
    }
}

pub(super) fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

pub(super) fn assert_gone(dirs: &[PathBuf]) {
    for d in dirs {
        assert!(!d.exists(), "{} still exists", d.display());
    }
}

/// Full life cycle on the v1 hierarchies; `with_unified` chooses between
/// killing via the hybrid cgroup2 `cgroup.kill` and freezer + SIGKILL.
fn v1_life_cycle(with_unified: bool) {
    let Some(mut mounts) = v1_mounts() else {
        return;
    };
    if !with_unified {
        mounts.unified = None;
    } else if mounts.unified.is_none() {
        lmi_testkit::skip("no controller-less cgroup2 mount");
        return;
    }
    let parent = unique_parent();
    let mut g = Guard::new(V1Driver::new(mounts, &parent).unwrap());
    assert!(g.driver.parent_path().ends_with(&format!("/{parent}")));

    let limits = CgroupLimits::from_vcpus(2, 2 << 30, 64);
    let env = g.create("env-a", &limits);
    assert_eq!(env.cpu_quota().unwrap(), (Some(200_000), 100_000));
    assert_eq!(env.memory_limit().unwrap(), 2 << 30);
    let dirs = env.directories();
    for d in &dirs {
        let f = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
        if d.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                f("memory.memsw.limit_in_bytes").trim(),
                (2u64 << 30).to_string()
            );
        }
        if d.join("pids.max").exists() {
            assert_eq!(f("pids.max").trim(), "64");
        }
    }
    assert_eq!(env.oom_kills().unwrap(), 0);
    open_and_children_scenario(&g, "env-a");
    let pid = process_tree_scenario(&mut g, 0);
    let own_cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own_cgroups.contains(&format!("{parent}/env-a")),
        "{own_cgroups}"
    );
    kill_and_remove_scenario(&mut g, 0, |env| env.kill_all().unwrap());
}

/// `children` and `open` of a driver whose only environment is `name`.
pub(super) fn open_and_children_scenario(g: &Guard, name: &str) {
    assert_eq!(g.driver.children().unwrap(), vec![name.to_owned()]);
    assert!(g.driver.open(name).unwrap().is_some());
    assert!(g.driver.open("nope").unwrap().is_none());
}

/// A process tree (sh plus two background sleeps) placed into environment
/// `index` at exec: every process is counted in it. Returns sh's pid (child
/// `index` of the guard).
pub(super) fn process_tree_scenario(g: &mut Guard, index: usize) -> i32 {
    let pid = g.spawn_in(index, &["/bin/sh", "-c", "sleep 60 & sleep 60 & wait"]);
    let env = g.envs[index].as_ref();
    assert!(
        wait_until(|| env.pids().unwrap().len() >= 3),
        "{:?}",
        env.pids()
    );
    assert!(env.pids().unwrap().contains(&pid));
    let own_cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(own_cgroups.contains(env.path()), "{own_cgroups}");
    pid
}

/// After [`process_tree_scenario`] on environment `index` (the guard's only
/// child process and only environment): `kill` empties it, removal leaves no
/// directory (twice: idempotent), sh died of SIGKILL, the parent is empty.
pub(super) fn kill_and_remove_scenario(
    g: &mut Guard,
    index: usize,
    kill: impl FnOnce(&dyn EnvironmentCgroup),
) {
    let env = g.envs[index].as_ref();
    let dirs = env.directories();
    kill(env);
    assert!(env.pids().unwrap().is_empty());
    // Removal works even before the (zombie) child is reaped.
    env.remove().unwrap();
    assert_gone(&dirs);
    env.remove().unwrap(); // idempotent
    let status = g.children[index].wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(g.driver.children().unwrap().is_empty());
}

/// The first python3 found, or `None` (with a printed reason).
pub(super) fn python3() -> Option<&'static str> {
    let found = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    if found.is_none() {
        lmi_testkit::skip("python3 not found");
    }
    found
}

/// A process allocating 200 MiB in a 32 MiB environment is killed by the
/// kernel's OOM killer and the environment counts it. Returns the count.
pub(super) fn oom_scenario(g: &mut Guard, python: &str) -> u64 {
    g.create("oom", &CgroupLimits::from_vcpus(1, 32 << 20, 64));
    let index = g.envs.len() - 1;
    g.spawn_in(index, &[python, "-c", "b = bytearray(200 * 1024 * 1024)"]);
    let status = g.children[index].wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let kills = g.envs[index].oom_kills().unwrap();
    assert!(kills >= 1, "oom_kills {kills}");
    kills
}

/// A restarted agent re-creates an existing environment's name: the old
/// process dies and the new limits are written.
pub(super) fn leftover_scenario(g: &mut Guard) {
    g.create("env-c", &CgroupLimits::from_vcpus(1, 1 << 30, 16));
    let index = g.envs.len() - 1;
    let pid = g.spawn_in(index, &["sleep", "60"]);
    assert!(g.envs[index].pids().unwrap().contains(&pid));
    let again = g
        .driver
        .create("env-c", &CgroupLimits::from_vcpus(2, 2 << 30, 16))
        .unwrap();
    assert!(again.pids().unwrap().is_empty());
    assert_eq!(again.cpu_quota().unwrap(), (Some(200_000), 100_000));
    assert_eq!(again.memory_limit().unwrap(), 2 << 30);
    assert_eq!(
        g.children[index].wait().unwrap().signal(),
        Some(libc::SIGKILL)
    );
}

#[test]
fn real_v1_life_cycle_with_unified_cgroup_kill() {
    v1_life_cycle(true);
}

#[test]
fn real_v1_life_cycle_with_freezer_and_sigkill() {
    v1_life_cycle(false);
}

#[test]
fn real_v1_oom_kill_is_counted() {
    let Some(mounts) = v1_mounts() else { return };
    let Some(python) = python3() else { return };
    let parent = unique_parent();
    let mut g = Guard::new(V1Driver::new(mounts, &parent).unwrap());
    oom_scenario(&mut g, python);
}

#[test]
fn real_v2_on_controllerless_unified_mount() {
    if lmi_testkit::needs_root("real cgroups") {
        return;
    }
    // Only the hybrid host's controller-less cgroup2 mount: on a pure v2 host
    // this test would have to move the test runner into a supervisor leaf.
    let unified = match detect_layout() {
        Ok(Layout::V1(m)) => m.unified,
        _ => None,
    };
    let Some(h) = unified else {
        lmi_testkit::skip("no controller-less cgroup2 mount");
        return;
    };
    let parent = unique_parent();
    let options = V2Options {
        skip_unavailable_controllers: true,
    };
    let mut g =
        Guard::new(V2Driver::new(h.mount_point.clone(), &h.own_path, &parent, options).unwrap());
    assert_eq!(g.driver.version(), CgroupVersion::V2);
    g.create("env-b", &CgroupLimits::from_vcpus(1, 1 << 30, 16));
    let pid = g.spawn_in(0, &["sleep", "60"]);
    let env = g.envs[0].as_ref();
    assert_eq!(env.pids().unwrap(), vec![pid]);
    assert!(env.directories()[0].join("cgroup.kill").exists());
    env.kill_all().unwrap();
    assert!(env.pids().unwrap().is_empty());
    let dirs = env.directories();
    env.remove().unwrap();
    assert_gone(&dirs);
    assert_eq!(g.children[0].wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn real_detect_builds_a_driver_and_removes_its_parent() {
    if lmi_testkit::needs_root("real cgroups") {
        return;
    }
    match detect_layout() {
        Ok(Layout::V1(_)) => {}
        Ok(Layout::V2(h)) if h.own_path == "/" => {}
        other => {
            lmi_testkit::skip(&format!(
                "detect() would re-arrange this host's cgroups ({other:?})"
            ));
            return;
        }
    }
    let parent = unique_parent();
    let driver = detect(&parent).unwrap();
    assert!(driver.parent_path().ends_with(&parent));
    assert!(driver.children().unwrap().is_empty());
    driver.remove_parent().unwrap();
}

#[test]
fn real_leftover_cgroup_is_emptied_and_reused() {
    let Some(mounts) = v1_mounts() else { return };
    let parent = unique_parent();
    let mut g = Guard::new(V1Driver::new(mounts, &parent).unwrap());
    leftover_scenario(&mut g);
}

/// On this host's v1 hierarchies: the counters alone leave `memory.stat` and PSI unread; every part gives a
/// working set between the resident 64 MiB a process holds and the memory in use, and PSI exactly where the
/// controller-less cgroup2 tree offers it.
#[test]
fn real_v1_usage_reads_the_counters_alone_or_every_part() {
    use std::io::{BufRead, BufReader};
    let Some(mounts) = v1_mounts() else { return };
    let Some(python) = python3() else { return };
    let parent = unique_parent();
    let mut g = Guard::new(V1Driver::new(mounts, &parent).unwrap());
    g.create("env-u", &CgroupLimits::from_vcpus(1, 1 << 30, 64));
    // 64 MiB written (so resident), then "ready" on stdout.
    let mb64 = "import sys, time\nb = b'\\x01' * (64 << 20)\nprint('ready', flush=True)\ntime.sleep(120)\n";
    g.spawn_with(0, &[python, "-c", mb64], Stdio::piped());
    let stdout = g.children[0].stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let env = g.envs[0].as_ref();

    let counters = env.read_usage(UsageParts::COUNTERS).unwrap();
    assert!(counters.cpu_usage_ns > 0, "{counters:?}");
    assert!(counters.memory_usage_bytes >= 64 << 20, "{counters:?}");
    assert_eq!(
        (counters.inactive_file_bytes, counters.pressure),
        (None, None)
    );

    let all = env.read_usage(UsageParts::ALL).unwrap();
    let working_set = all.memory_working_set_bytes().unwrap();
    assert!(working_set >= 64 << 20, "{all:?}");
    assert!(working_set <= all.memory_usage_bytes, "{all:?}");
    assert!(all.cpu_usage_ns >= counters.cpu_usage_ns, "{all:?}");
    let psi = env
        .directories()
        .iter()
        .find_map(|d| std::fs::read_to_string(d.join("cpu.pressure")).ok())
        .and_then(|t| psi_some_avg10(&t));
    assert_eq!(all.pressure.is_some(), psi.is_some(), "{all:?}");
    eprintln!("real_v1_usage_reads_the_counters_alone_or_every_part: {counters:?}; {all:?}");
}
