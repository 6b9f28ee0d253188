//! Tenants apart inside the host's kernel, against the real daemon: each environment has its own PID
//! namespace (its `/proc` lists its own processes only, under a hidden init that reaps its orphans), its
//! own cgroup namespace and cgroupfs view (its own cgroups only, read-only), and a private `/run/lock`;
//! the agent still waits for the runtime (its exact exit status), accounts for everything inside (an
//! orphan's memory is the environment's) and kills everything on delete or exit. Its seccomp filter refuses
//! the system calls listed in `sandbox::seccomp` (with `EPERM`), which the same function makes without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use lmi_proto::v1::{EnvironmentState as St, InvokeOutcome as Out};
use serde_json::{json, Value};
use support::*;

const HANDLER: &str = "isolation.handler";

async fn call(agent: &mut TestAgent, function: &str, event: Value) -> Value {
    let r = agent.invoke(function, event.clone()).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{event}: {r:?}");
    payload_json(&r)
}

/// The PID namespace of a host process.
fn pid_ns(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap()
}

/// A process of a PID namespace, seen from the host.
#[derive(Debug, Clone)]
struct Member {
    host: u32,
    /// Its pid inside the namespace (the last `NSpid` field).
    inner: u32,
    ppid: u32,
    state: char,
}

/// Every process of the PID namespace `ns`, from the host's /proc.
fn members(ns: &Path) -> Vec<Member> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(host) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("ns/pid"))
            .ok()
            .as_deref()
            != Some(ns)
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        out.push(Member {
            host,
            inner: field("NSpid:")
                .split_whitespace()
                .last()
                .unwrap()
                .parse()
                .unwrap(),
            ppid: field("PPid:").parse().unwrap(),
            state: field("State:").chars().next().unwrap(),
        });
    }
    out
}

fn init_of(members: &[Member]) -> &Member {
    members
        .iter()
        .find(|m| m.inner == 1)
        .unwrap_or_else(|| panic!("no init in {members:?}"))
}

/// Inner pids named by the files an `orphans` action wrote into `dir`.
fn orphan_pids(dir: &Path) -> BTreeSet<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_sees_only_its_own_processes_cgroups_and_run_lock() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let a = agent.create_ready(python_spec("iso-a", HANDLER)).await;
    let b = agent.create_ready(python_spec("iso-b", HANDLER)).await;
    let views = [
        (
            &a,
            &b,
            call(
                &mut agent,
                "iso-a",
                json!({"action": "view", "lock": "a-held"}),
            )
            .await,
        ),
        (
            &b,
            &a,
            call(&mut agent, "iso-b", json!({"action": "view"})).await,
        ),
    ];
    let joined = agent.env_cgroup_dirs(&a.id);
    for (env, other, v) in &views {
        let ns = pid_ns(env.pid);
        assert_ne!(
            ns,
            pid_ns(std::process::id()),
            "no PID namespace of its own"
        );
        assert_ne!(
            ns,
            pid_ns(other.pid),
            "two environments share a PID namespace"
        );
        let inside = members(&ns);
        // The runtime's main process is PID 2, under the namespace's init, and still the agent's child.
        let init = init_of(&inside);
        let runtime = inside.iter().find(|m| m.host == env.pid).unwrap();
        assert_eq!(runtime.inner, 2, "{inside:?}");
        assert_eq!(runtime.ppid, agent.pid() as u32);
        assert_eq!(init.ppid, agent.pid() as u32);

        // /proc lists exactly the environment's processes, the (root) init hidden.
        let seen: BTreeSet<u64> = v["pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        let expected: BTreeSet<u64> = inside
            .iter()
            .filter(|m| m.inner != 1)
            .map(|m| u64::from(m.inner))
            .collect();
        assert_eq!(seen, expected, "{v}");
        assert!(seen.contains(&v["pid"].as_u64().unwrap()));
        // So only its own command lines and connection tables can be read.
        for key in ["cmdlines", "netTcp"] {
            let readable: BTreeSet<u64> = v[key]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            assert_eq!(readable, seen, "{key}");
        }
        let cmdlines = v["cmdlines"].to_string();
        assert!(cmdlines.contains("bootstrap"), "{cmdlines}");
        for foreign in ["lmi-agent", "lmi-init", "lmi-pid-namespace"] {
            assert!(!cmdlines.contains(foreign), "{foreign} in {cmdlines}");
        }

        // Its own cgroup namespace: every hierarchy shows the root.
        let own = v["selfCgroup"].as_str().unwrap();
        assert!(!own.is_empty());
        for line in own.lines() {
            assert!(line.ends_with(":/"), "{own}");
        }
        // No mount reveals another environment, the agent's cgroups or a cgroup path.
        let mountinfo = v["mountinfo"].as_str().unwrap();
        assert!(!mountinfo.contains(&other.id), "{mountinfo}");
        assert!(!mountinfo.contains(&agent.cgroup_parent), "{mountinfo}");
        for line in mountinfo.lines().filter(|l| l.contains(" - cgroup")) {
            assert_eq!(line.split(' ').nth(3), Some("/"), "{mountinfo}");
        }
        assert!(
            !mountinfo
                .lines()
                .any(|l| l.split(' ').nth(4) == Some("/proc/sys/fs/binfmt_misc")),
            "the host's /proc submounts: {mountinfo}"
        );

        // cgroupfs: the environment's own cgroup in each hierarchy it joined, with its own processes only.
        let cgroupfs = v["cgroupfs"].as_object().unwrap();
        assert!(cgroupfs.contains_key("memory"), "{cgroupfs:?}");
        for (name, entry) in cgroupfs {
            if entry.get("link").is_some() {
                continue;
            }
            assert!(
                joined.contains_key(name.as_str()) && joined[name.as_str()].is_dir(),
                "{name} is not a hierarchy the environment joined: {cgroupfs:?}"
            );
            assert_eq!(entry["subdirs"], json!([]), "{name}: {entry}");
            let procs = entry["procs"].as_array().unwrap();
            assert!(!procs.is_empty(), "{name}: {entry}");
            for p in procs {
                assert!(seen.contains(&p.as_u64().unwrap()), "{name}: {entry}");
            }
        }
        for hidden in ["cpuset", "devices", "blkio", "systemd"] {
            assert!(!cgroupfs.contains_key(hidden), "{hidden}: {cgroupfs:?}");
        }
        let write = v["cgroupWrite"].as_str().unwrap();
        assert!(write == "EROFS" || write == "EACCES", "{write}");
    }
    // /run/lock is the environment's own.
    let run_lock = |v: &Value| v["runLock"].to_string();
    assert!(
        run_lock(&views[0].2).contains("a-held"),
        "{}",
        run_lock(&views[0].2)
    );
    assert!(
        !run_lock(&views[1].2).contains("a-held"),
        "{}",
        run_lock(&views[1].2)
    );
    assert!(!Path::new("/run/lock/a-held").exists());
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped_inside_accounted_and_killed_with_the_environment() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(python_spec("orphans", HANDLER)).await;
    let ns = pid_ns(env.pid);

    // A burst of orphans (a small fork bomb whose parents exit at once): each is given to the namespace's
    // init, which reaps it when it exits: no zombie is left, none reaches the host's init.
    let burst = shared_dir();
    let n = 64;
    let dir = burst.path().display().to_string();
    call(
        &mut agent,
        "orphans",
        json!({"action": "orphans", "dir": dir, "n": n}),
    )
    .await;
    wait_for_files(burst.path(), n).await;
    let inner = orphan_pids(burst.path());
    assert_eq!(inner.len(), n);
    let inside = members(&ns);
    let init = init_of(&inside).host;
    let orphans: Vec<&Member> = inside.iter().filter(|m| inner.contains(&m.inner)).collect();
    assert_eq!(orphans.len(), n, "{inside:?}");
    for o in &orphans {
        assert_eq!(
            o.ppid, init,
            "not reparented to the namespace's init: {o:?}"
        );
    }
    std::fs::write(burst.path().join("release"), "").unwrap();
    let hosts: Vec<u32> = orphans.iter().map(|o| o.host).collect();
    eventually("every orphan exited and was reaped", || {
        hosts
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    })
    .await;
    let zombies: Vec<Member> = members(&ns)
        .into_iter()
        .filter(|m| m.state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "{zombies:?}");

    // An orphan's memory is the environment's: it is in the environment's cgroup, and the agent's
    // sampling of that cgroup counts it.
    let held = shared_dir();
    let dir = held.path().display().to_string();
    call(
        &mut agent,
        "orphans",
        json!({"action": "orphans", "dir": dir, "n": 1, "hold_mb": 256}),
    )
    .await;
    wait_for_files(held.path(), 1).await;
    let inner = orphan_pids(held.path());
    let orphan = members(&ns)
        .into_iter()
        .find(|m| inner.contains(&m.inner))
        .unwrap();
    let cgroup = agent.env_cgroup_dirs(&env.id)["memory"].clone();
    assert!(cgroup_pids(&cgroup).contains(&orphan.host));
    let id = env.id.clone();
    watch_until(
        &agent.client,
        "the orphan's memory in the environment's",
        |r| {
            env_in(r, &id).and_then(|e| e.memory.map(|m| m.last * f64::from(e.memory_mib)))
                >= Some(256.0)
        },
    )
    .await;

    // Delete: the agent kills everything in the namespace, the orphan and the init included.
    let everything: Vec<u32> = members(&ns).iter().map(|m| m.host).collect();
    assert!(everything.contains(&orphan.host) && everything.contains(&init));
    let gone = agent.delete(&env.id).await;
    assert_eq!(gone.state(), St::Terminated);
    eventually("no process of the environment is left", || {
        everything.iter().all(|p| !process_alive(*p))
    })
    .await;
    eventually("its cgroup is removed", || !cgroup.exists()).await;
    agent.stop_and_assert_clean(&everything);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_exit_is_reported_with_its_status_and_ends_its_namespace() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("exiting", HANDLER);
    spec.max_concurrency = 2;
    let env = agent.create_ready(spec).await;
    let ns = pid_ns(env.pid);
    // An orphan that would live forever.
    let forever = shared_dir();
    let dir = forever.path().display().to_string();
    call(
        &mut agent,
        "exiting",
        json!({"action": "orphans", "dir": dir, "n": 1}),
    )
    .await;
    wait_for_files(forever.path(), 1).await;
    let everything: Vec<u32> = members(&ns).iter().map(|m| m.host).collect();
    assert!(
        everything.len() >= 3,
        "init, runtime, orphan: {everything:?}"
    );

    let r = agent
        .invoke("exiting", json!({"action": "exit", "code": 5}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::RuntimeFailure, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Runtime.ExitError");
    assert_eq!(e.error_message, "Runtime exited with error: exit status 5");
    agent.wait_state(&env.id, &[St::Failed]).await;
    eventually("the namespace is empty", || {
        everything.iter().all(|p| !process_alive(*p))
    })
    .await;
    agent.stop_and_assert_clean(&everything);
}

/// What `syscalls.handler` got for each of its system calls ("ok" or the errno's name), in an agent whose
/// `sandbox.seccomp` is `seccomp`.
async fn syscalls_with(seccomp: bool) -> Value {
    let mut agent = TestAgent::start_with(AgentOptions {
        sandbox_config: format!("seccomp = {seccomp}"),
        ..Default::default()
    })
    .await;
    let env = agent
        .create_ready(python_spec("syscalls", "syscalls.handler"))
        .await;
    let v = call(&mut agent, "syscalls", json!({})).await;
    let gone = agent.delete(&env.id).await;
    assert_eq!(gone.state(), St::Terminated);
    agent.stop_and_assert_clean(&[env.pid]);
    v
}

/// The seccomp filter refuses what the function could otherwise do as its unprivileged uid: the same calls,
/// made by the same code as the same kind of uid, succeed in an agent started with `sandbox.seccomp = false`.
/// What the filter allows still works under it (a thread, glibc's clone3 falling back to clone; querying the
/// personality), and clone3 gets ENOSYS rather than EPERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seccomp_filter_refuses_calls_an_unprivileged_function_could_otherwise_make() {
    require_root!();
    let off = syscalls_with(false).await;
    let on = syscalls_with(true).await;
    for call in ["add_key", "keyctl", "ptrace", "personality"] {
        assert_eq!(off[call], "ok", "{call} without the filter: {off}");
        assert_eq!(on[call], "EPERM", "{call} under the filter: {on}");
    }
    // A user namespace is refused under the filter; without it the host's sysctls decide.
    assert_eq!(on["userns"], "EPERM", "{on}");
    eprintln!(
        "unshare(CLONE_NEWUSER) without the filter: {}",
        off["userns"]
    );
    assert_eq!(off["clone3"], "EINVAL", "{off}");
    assert_eq!(on["clone3"], "ENOSYS", "{on}");
    for v in [&off, &on] {
        assert_eq!(v["query"], "ok", "{v}");
        assert_eq!(v["thread"], "ok", "{v}");
    }
}
