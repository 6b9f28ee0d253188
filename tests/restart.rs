//! The agent's own life: SIGKILL and restart (nothing of the previous life keeps running; what ran is
//! reported), and a graceful SIGTERM (in-flight invokes finish, then everything is removed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use support::*;
use tonic::Code;

/// Mounts of environments (their /tmp) under the agent's state directory. The sandbox's own bind mount of
/// `<state>/envs` onto itself is the host's part and lives as long as an agent runs.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    mounts_starting_with(&format!("{}/", dir.join("state/envs").display()))
}

/// Every mount point whose path starts with `root`.
fn mounts_starting_with(root: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(root))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_next_agent_stops_the_leftovers_and_reports_them_lost() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("survivor", "actions.handler");
    spec.max_concurrency = 2;
    let env = agent.create_ready(spec.clone()).await;
    agent.invoke_ok("survivor", serde_json::json!({})).await;
    let dirs = agent.env_cgroup_dirs(&env.id);
    let pids = cgroup_pids(&dirs["memory"]);
    assert!(pids.len() >= 3, "{pids:?}");

    agent.kill9();
    // The runtime outlives the agent (nothing kills it but the next agent).
    assert!(process_alive(env.pid), "the runtime died with the agent");
    assert!(
        !mounts_under(agent.dir.path()).is_empty(),
        "the /tmp mount is still there"
    );

    agent.restart().await;
    // READY came after reconciliation: the previous life's processes, cgroups and mounts are gone.
    for pid in &pids {
        assert!(
            !process_alive(*pid),
            "process {pid} of the previous life still runs"
        );
    }
    for d in dirs.values() {
        assert!(!d.exists(), "{} still exists", d.display());
    }
    assert!(
        mounts_under(agent.dir.path()).is_empty(),
        "{:?}",
        mounts_under(agent.dir.path())
    );
    // The control plane sees what was lost, and why.
    let lost = agent.get(&env.id).await;
    assert_eq!(lost.state(), St::Failed);
    assert_eq!(lost.failure.as_ref().unwrap().error_type, "Agent.Restarted");
    let listed = agent.list().await;
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [env.id.as_str()]
    );
    let host = agent.host().await;
    assert_eq!(
        host.vcpus_allocated, 0,
        "a lost environment holds no capacity"
    );
    // It takes no invokes; a replacement can be created and serves.
    let s = agent
        .invoke("survivor", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let replacement = agent.create_ready(spec).await;
    agent.invoke_ok("survivor", serde_json::json!({})).await;
    // Deleting the lost one forgets it for good.
    let gone = agent.delete(&env.id).await;
    assert_eq!(gone.state(), St::Terminated);
    assert_eq!(
        agent
            .client
            .get_environment(pb::GetEnvironmentRequest { id: env.id.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    agent.stop_and_assert_clean(&[env.pid, replacement.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_environment_cgroup_is_removed_and_a_failure_survives_a_restart() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let orphan = agent
        .create_ready(python_spec("orphan", "actions.handler"))
        .await;
    let mut crashy = python_spec("crashy", "actions.handler");
    crashy.timeout_seconds = 60;
    let failed = agent.create_ready(crashy).await;
    let r = agent
        .invoke("crashy", serde_json::json!({"action": "exit", "code": 9}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::RuntimeFailure);
    agent.wait_state(&failed.id, &[St::Failed]).await;
    // The failure is recorded before the cgroup is removed: once it is gone, the record holds the reason.
    let failed_dirs = agent.env_cgroup_dirs(&failed.id);
    let start = std::time::Instant::now();
    while failed_dirs.values().any(|d| d.exists()) {
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let orphan_dirs = agent.env_cgroup_dirs(&orphan.id);
    agent.kill9();
    // As if the agent had died between creating the cgroup and recording the environment.
    std::fs::remove_file(
        agent
            .dir
            .path()
            .join("state/environments")
            .join(format!("{}.pb", orphan.id)),
    )
    .unwrap();

    agent.restart().await;
    assert!(!process_alive(orphan.pid));
    assert!(orphan_dirs.values().all(|d| !d.exists()));
    let status = agent
        .client
        .get_environment(pb::GetEnvironmentRequest {
            id: orphan.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::NotFound,
        "an unrecorded environment cannot be reported, only removed"
    );
    // The failed environment keeps its own reason across the restart.
    let f = agent.get(&failed.id).await;
    assert_eq!(f.state(), St::Failed);
    let failure = f.failure.unwrap();
    assert_eq!(
        (failure.error_type.as_str(), failure.message.as_str()),
        (
            "Runtime.ExitError",
            "Runtime exited with error: exit status 9"
        )
    );
    assert!(agent
        .log()
        .contains("removing the cgroup of an unrecorded environment"));
    agent.stop_and_assert_clean(&[orphan.pid, failed.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_invokes_finish_then_removes_everything() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("graceful", "actions.handler");
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let gates = shared_dir();
    let held = tokio::spawn(invoke(
        agent.client.clone(),
        "graceful",
        serde_json::json!({"action": "gate", "dir": gates.path().display().to_string(), "count": 2, "max_s": 120}),
    ));
    wait_for_files(gates.path(), 1).await;
    agent.sigterm();
    assert_eq!(agent.notification(), "STOPPING=1");
    // Draining: new invokes are refused, the one in flight goes on.
    agent.wait_state(&env.id, &[St::Draining]).await;
    let s = agent
        .invoke("graceful", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    std::fs::write(gates.path().join("release"), "").unwrap();
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Success, "the in-flight invoke finished");
    let status = agent.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(
        agent.leftover_cgroups().is_empty(),
        "{:?}",
        agent.leftover_cgroups()
    );
    assert!(!process_alive(env.pid));
    // After a graceful stop not even the sandbox's own mount is left.
    let left = mounts_starting_with(&agent.dir.path().display().to_string());
    assert!(left.is_empty(), "{left:?}");
    assert!(!agent.socket.exists(), "the control socket is removed");
    let records = std::fs::read_dir(agent.dir.path().join("state/environments"))
        .unwrap()
        .count();
    assert_eq!(records, 0, "a graceful stop leaves no record to reconcile");
}
