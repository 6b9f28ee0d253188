//! The cgroup v2 driver on the real unified hierarchy: the scenarios the fake-tree tests of `v2.rs`,
//! `v2_delegation.rs` and `usage.rs` cover (limits of each ratio, unlimited values, controllers enabled from the
//! own cgroup down, the no-internal-processes move, usage, OOM counting) plus those of the v1 real tests (process
//! tree, kill, removal, a leftover cgroup reused), on files the kernel writes.
//!
//! They run only on a pure cgroup v2 host whose cgroup the test process was delegated (systemd's
//! `trusted.delegate` attribute, as a `Delegate=yes` unit gets, or `LMI_TEST_CGROUP_DELEGATED=1`); they never
//! write above that cgroup. Every test prints `<name>: ran on cgroup v2 (...)` or `skipping: <name>: <why>`;
//! `tests/vm/check.sh` runs them in the VM and fails unless each of them ran there.
//!
//! As the agent does, the first of them to run moves the test process (every process of the delegated cgroup)
//! into a leaf, through the driver: the delegated cgroup must hold no process before controllers can be enabled
//! for its children. The leaf holds the test process until it exits; systemd removes it with the unit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use super::super::fsutil;
use super::super::kill::{self, Freezer, KillPlan};
use super::super::testutil::SPECS;
use super::*;

/// The delegated cgroup, described once per process.
#[derive(Debug)]
struct V2Host {
    root: PathBuf,
    /// The test process's cgroup when it started (the delegated one).
    own: String,
    describe: String,
    /// What the driver's move into the supervisor leaf did (observed once, at set-up).
    vacated: Result<Vacated, String>,
}

#[derive(Debug)]
struct Vacated {
    leaf: String,
    own_procs_before: Vec<i32>,
    own_procs_after: String,
    self_cgroup_after: String,
    own_subtree_control: String,
    above: Option<(PathBuf, String, String)>,
}

static HOST: OnceLock<Result<V2Host, String>> = OnceLock::new();

/// The host when it is pure v2 and delegated (printing which), else `None` after printing why.
fn host(test: &str) -> Option<&'static V2Host> {
    match HOST.get_or_init(probe) {
        Ok(h) => {
            eprintln!("{test}: ran on {}", h.describe);
            Some(h)
        }
        Err(why) => {
            lmi_testkit::skip(why);
            None
        }
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
}

/// The value of extended attribute `name` of `path`, if set.
fn xattr(path: &Path, name: &str) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and the buffer's length is passed.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn probe() -> Result<V2Host, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root".to_owned());
    }
    let h = match detect_layout() {
        Ok(Layout::V2(h)) => h,
        Ok(Layout::V1(m)) => {
            return Err(format!(
                "not a pure cgroup v2 host (cgroup v1/hybrid: memory hierarchy at {})",
                m.memory.mount_point.display()
            ))
        }
        Err(e) => return Err(format!("no cgroup layout: {e}")),
    };
    let own = h.own_path.clone();
    if own == "/" {
        return Err(
            "pure cgroup v2, but the test's cgroup is the hierarchy's root: nothing was \
                    delegated to it (run it in a unit with Delegate=yes)"
                .to_owned(),
        );
    }
    let own_dir = fsutil::abs_dir(&h.mount_point, &own);
    let evidence = if xattr(&own_dir, "trusted.delegate").as_deref() == Some("1") {
        "trusted.delegate=1"
    } else if std::env::var("LMI_TEST_CGROUP_DELEGATED").as_deref() == Ok("1") {
        "LMI_TEST_CGROUP_DELEGATED=1"
    } else {
        return Err(format!(
            "pure cgroup v2, but the test's cgroup {own} is not delegated to it (no trusted.delegate \
             attribute; run it in a unit with Delegate=yes or set LMI_TEST_CGROUP_DELEGATED=1)"
        ));
    };
    let controllers = read(&own_dir, "cgroup.controllers").trim().to_owned();
    for c in REQUIRED_CONTROLLERS {
        if !controllers.split_whitespace().any(|x| x == c) {
            return Err(format!(
                "pure cgroup v2 delegated at {own}, but controller {c} is not available there ({controllers})"
            ));
        }
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let describe = format!(
        "cgroup v2 (pure, delegated at {own} [{evidence}], kernel {}, controllers: {controllers})",
        kernel.trim()
    );
    let vacated = vacate_through_the_driver(&h.mount_point, &own, &own_dir);
    Ok(V2Host {
        root: h.mount_point,
        own,
        describe,
        vacated,
    })
}

/// Builds a driver at the delegated cgroup while the test process is in it: the kernel refuses to enable
/// controllers there (EBUSY) and the driver moves every process into `<own>/<parent>.supervisor`.
fn vacate_through_the_driver(root: &Path, own: &str, own_dir: &Path) -> Result<Vacated, String> {
    let above = own_dir
        .parent()
        .map(|p| p.join("cgroup.subtree_control"))
        .filter(|f| f.exists());
    let above_before = above
        .as_ref()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default());
    let own_procs_before = fsutil::parse_pids(
        &read(own_dir, "cgroup.procs"),
        &own_dir.join("cgroup.procs"),
    )
    .map_err(|e| e.to_string())?;
    let parent = format!("lmi-test-{}-runner", std::process::id());
    let driver = V2Driver::new(root.to_path_buf(), own, &parent, V2Options::default())
        .map_err(|e| format!("V2Driver::new at {own}: {e}"))?;
    let vacated = Vacated {
        leaf: fsutil::rel_child(own, &supervisor_leaf_name(&parent)),
        own_procs_before,
        own_procs_after: read(own_dir, "cgroup.procs"),
        self_cgroup_after: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
        own_subtree_control: read(own_dir, "cgroup.subtree_control"),
        above: above.map(|f| {
            let after = std::fs::read_to_string(&f).unwrap_or_default();
            (f, above_before.unwrap_or_default(), after)
        }),
    };
    driver
        .remove_parent()
        .map_err(|e| format!("removing {parent}: {e}"))?;
    Ok(vacated)
}

impl V2Host {
    /// A driver with a parent of its own under the delegated cgroup, in a guard.
    fn guard(&self) -> Guard {
        self.vacated
            .as_ref()
            .expect("the set-up's move into a leaf");
        let driver = V2Driver::new(
            self.root.clone(),
            &self.own,
            &unique_parent(),
            V2Options::default(),
        )
        .unwrap();
        assert_eq!(driver.version(), CgroupVersion::V2);
        assert_eq!(driver.controllers(), REQUIRED_CONTROLLERS);
        Guard::new(driver)
    }
}

/// Mirrors `v2_delegation`'s fake-tree tests `ebusy_moves_own_processes_to_supervisor_leaf_then_retries` and
/// `enables_controllers_only_from_own_cgroup_down`.
#[test]
fn real_v2_delegation_moves_the_test_process_into_a_leaf_and_enables_controllers_below() {
    let Some(h) =
        host("real_v2_delegation_moves_the_test_process_into_a_leaf_and_enables_controllers_below")
    else {
        return;
    };
    let v = h.vacated.as_ref().unwrap();
    let me = std::process::id() as i32;
    assert!(v.own_procs_before.contains(&me), "{:?}", v.own_procs_before);
    assert_eq!(
        v.own_procs_after, "",
        "the delegated cgroup still holds processes"
    );
    assert_eq!(v.self_cgroup_after.trim(), format!("0::{}", v.leaf));
    for c in REQUIRED_CONTROLLERS {
        assert!(
            v.own_subtree_control.split_whitespace().any(|x| x == c),
            "{c} not in {:?}",
            v.own_subtree_control
        );
    }
    // Nothing above the delegated cgroup was written.
    if let Some((file, before, after)) = &v.above {
        assert_eq!(before, after, "{}", file.display());
    }
    // A second driver beside the first: the parent's subtree has the controllers too.
    let g = h.guard();
    let parent_dir = fsutil::abs_dir(&h.root, g.driver.parent_path());
    let subtree = read(&parent_dir, "cgroup.subtree_control");
    assert_eq!(subtree.trim(), "cpu memory pids");
}

/// Mirrors `v2::tests::limits_are_written_exactly_for_each_spec` and `unlimited_values_and_missing_swap_file`.
#[test]
fn real_v2_limits_of_each_ratio_are_in_the_kernel_files() {
    let Some(h) = host("real_v2_limits_of_each_ratio_are_in_the_kernel_files") else {
        return;
    };
    let mut g = h.guard();
    let parent_path = g.driver.parent_path().to_owned();
    let mut names = Vec::new();
    for (label, vcpus, memory) in SPECS {
        let name = format!("env-{label}");
        let env = g.create(&name, &CgroupLimits::from_vcpus(vcpus, memory, 1024));
        let dir = env.directories()[0].clone();
        assert_eq!(
            read(&dir, "cpu.max").trim(),
            format!("{} 100000", vcpus * 100_000),
            "{label}"
        );
        assert_eq!(read(&dir, "memory.max").trim(), memory.to_string());
        assert_eq!(read(&dir, "memory.swap.max").trim(), "0");
        assert_eq!(read(&dir, "pids.max").trim(), "1024");
        assert_eq!(env.cpu_quota().unwrap(), (Some(vcpus * 100_000), 100_000));
        assert_eq!(env.memory_limit().unwrap(), memory);
        assert_eq!(env.oom_kills().unwrap(), 0);
        assert_eq!(env.path(), format!("{parent_path}/{name}"));
        assert_eq!(
            env.placement().unwrap().paths(),
            &[dir.join("cgroup.procs")]
        );
        names.push(name);
    }
    names.sort();
    assert_eq!(g.driver.children().unwrap(), names);

    let unlimited = CgroupLimits {
        cpu_quota_us: 0,
        cpu_period_us: 100_000,
        memory_bytes: 0,
        pids_max: 0,
    };
    let env = g.create("unlimited", &unlimited);
    let dir = env.directories()[0].clone();
    assert_eq!(read(&dir, "cpu.max").trim(), "max 100000");
    assert_eq!(read(&dir, "memory.max").trim(), "max");
    assert_eq!(read(&dir, "pids.max").trim(), "max");
    assert_eq!(env.cpu_quota().unwrap(), (None, 100_000));
    assert_eq!(env.memory_limit().unwrap(), u64::MAX);
}

/// The v1 life cycle's scenarios: a process tree placed at exec and seen in `cgroup.procs`, `cgroup.kill`,
/// removal leaving nothing.
#[test]
fn real_v2_process_tree_is_placed_killed_with_cgroup_kill_and_removed() {
    let Some(h) = host("real_v2_process_tree_is_placed_killed_with_cgroup_kill_and_removed") else {
        return;
    };
    let mut g = h.guard();
    g.create("env-a", &CgroupLimits::from_vcpus(1, 1 << 30, 64));
    open_and_children_scenario(&g, "env-a");
    let pid = process_tree_scenario(&mut g, 0);
    let env = g.envs[0].as_ref();
    let dir = env.directories()[0].clone();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .trim(),
        format!("0::{}", env.path())
    );
    assert!(read(&dir, "cgroup.procs")
        .lines()
        .any(|l| l == pid.to_string()));
    // The kernels of the target hosts (>= 5.14) have cgroup.kill; the driver falls back without it, which
    // real_v2_kill_fallback_freezes_and_sigkills proves.
    assert!(dir.join("cgroup.kill").exists(), "no cgroup.kill");
    kill_and_remove_scenario(&mut g, 0, |env| env.kill_all().unwrap());
}

/// The fallback of `kill_all` where `cgroup.kill` is absent: freeze (`cgroup.freeze`), SIGKILL each member,
/// thaw.
#[test]
fn real_v2_kill_fallback_freezes_and_sigkills() {
    let Some(h) = host("real_v2_kill_fallback_freezes_and_sigkills") else {
        return;
    };
    let mut g = h.guard();
    g.create("env-f", &CgroupLimits::from_vcpus(1, 1 << 30, 64));
    process_tree_scenario(&mut g, 0);
    kill_and_remove_scenario(&mut g, 0, |env| {
        let dirs = env.directories();
        kill::kill_all(&KillPlan {
            label: env.path(),
            dirs: &dirs,
            kill_file: None,
            freezer: Some(Freezer::V2 {
                dir: dirs[0].clone(),
            }),
            timeout: KILL_TIMEOUT,
        })
        .unwrap();
        // Thawed again: a cgroup reused after a kill must not stay frozen.
        assert_eq!(read(&dirs[0], "cgroup.freeze").trim(), "0");
        let events = read(&dirs[0], "cgroup.events");
        assert!(events.lines().any(|l| l == "frozen 0"), "{events}");
    });
}

/// Mirrors `v2::tests::usage_reads_cpu_memory_working_set_and_pressure` with a process that burns CPU and one
/// that holds 64 MiB.
#[test]
fn real_v2_usage_of_a_cpu_burner_and_an_allocator() {
    let Some(h) = host("real_v2_usage_of_a_cpu_burner_and_an_allocator") else {
        return;
    };
    let Some(python) = python3() else { return };
    let mut g = h.guard();
    g.create("env-u", &CgroupLimits::from_vcpus(1, 1 << 30, 64));
    let env_dir = g.envs[0].directories()[0].clone();
    let before = g.envs[0].usage().unwrap();
    assert_eq!(before.cpu_usage_ns, 0);

    g.spawn_in(0, &["/bin/sh", "-c", "while :; do :; done"]);
    let env = g.envs[0].as_ref();
    // CPU time accrues while the burner runs: 200 ms of it (bounded wait; a second under software emulation).
    assert!(
        wait_until(|| env.usage().unwrap().cpu_usage_ns >= 200_000_000),
        "{:?}",
        env.usage()
    );
    let reading = env.usage().unwrap();
    let usec = fsutil::keyed_u64(
        &read(&env_dir, "cpu.stat"),
        "usage_usec",
        &env_dir.join("cpu.stat"),
    )
    .unwrap();
    assert!(
        usec * 1000 >= reading.cpu_usage_ns,
        "cpu.stat {usec} us, reading {reading:?}"
    );

    // 64 MiB written (so resident), then "ready" on stdout.
    let mb64 = "import sys, time\nb = b'\\x01' * (64 << 20)\nprint('ready', flush=True)\ntime.sleep(120)\n";
    g.spawn_with(0, &[python, "-c", mb64], Stdio::piped());
    let stdout = g.children[1].stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let env = g.envs[0].as_ref();
    let reading = env.usage().unwrap();
    let current: u64 = read(&env_dir, "memory.current").trim().parse().unwrap();
    let working_set = reading.memory_working_set_bytes().unwrap();
    assert!(working_set >= 64 << 20, "{reading:?}");
    assert!(
        working_set <= current + (16 << 20),
        "{reading:?} vs memory.current {current}"
    );
    // PSI: read where the kernel offers it (CONFIG_PSI, not psi=0).
    let psi = std::fs::read_to_string(env_dir.join("cpu.pressure"))
        .ok()
        .and_then(|t| psi_some_avg10(&t));
    assert_eq!(reading.pressure.is_some(), psi.is_some(), "{reading:?}");
    if let Some(p) = reading.pressure {
        for v in [p.cpu_some, p.memory_some, p.io_some] {
            assert!((0.0..=1.0).contains(&v), "{p:?}");
        }
    }
    eprintln!(
        "real_v2_usage_of_a_cpu_burner_and_an_allocator: {reading:?}, memory.current {current}"
    );
    assert_eq!(env.oom_kills().unwrap(), 0);
}

/// Mirrors `v2::tests::oom_kill_parsing_of_memory_events` with a real OOM kill.
#[test]
fn real_v2_oom_kill_is_counted_from_memory_events() {
    let Some(h) = host("real_v2_oom_kill_is_counted_from_memory_events") else {
        return;
    };
    let Some(python) = python3() else { return };
    let mut g = h.guard();
    let kills = oom_scenario(&mut g, python);
    let dir = g.envs[0].directories()[0].clone();
    let events = read(&dir, "memory.events");
    assert!(
        events.lines().any(|l| l == format!("oom_kill {kills}")),
        "{events}"
    );
}

#[test]
fn real_v2_leftover_cgroup_is_emptied_and_reused() {
    let Some(h) = host("real_v2_leftover_cgroup_is_emptied_and_reused") else {
        return;
    };
    let mut g = h.guard();
    leftover_scenario(&mut g);
    let dir = g.envs[0].directories()[0].clone();
    assert_eq!(read(&dir, "cpu.max").trim(), "200000 100000");
    assert_eq!(read(&dir, "memory.max").trim(), (2u64 << 30).to_string());
}

/// `remove_parent` refuses while an environment exists, then removes the parent directory.
#[test]
fn real_v2_parent_is_removed_only_when_empty() {
    let Some(h) = host("real_v2_parent_is_removed_only_when_empty") else {
        return;
    };
    let mut g = h.guard();
    let parent_dir = fsutil::abs_dir(&h.root, g.driver.parent_path());
    g.create("env-p", &CgroupLimits::from_vcpus(1, 1 << 30, 16));
    assert!(matches!(
        g.driver.remove_parent(),
        Err(CgroupError::ParentNotEmpty { .. })
    ));
    assert!(parent_dir.is_dir());
    g.envs[0].remove().unwrap();
    g.driver.remove_parent().unwrap();
    assert!(!parent_dir.exists());
}
