//! The agent's core on fakes ([`super::testing`]): nothing here needs root.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use lmi_proto::v1 as pb;

use super::{
    testing::{spec, FakeHost, FakeRuntime, FAKE_ERROR_TYPE},
    Agent, CreateError, InvokeError, InvokeInput, Recovery, AGENT_RESTARTED,
};
use crate::capacity::Allocated;
use crate::dispatch::ThrottleReason;
use crate::environment::{Environment, Saturation, State, Usage};
use crate::spec::LATEST;
use crate::wire::spec::create_request;
use lmi_runtime_api::invocation::Outcome;

/// Bounds every wait of these tests, so that a bug fails them instead of hanging them.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `env` leaves INITIALIZING. Polled: the environment's only state event (`wake`) has a single
/// consumer, its supervisor, which a second waiter would rob.
async fn settled(env: &Environment) -> State {
    let wait = async {
        loop {
            let state = env.state();
            if state != State::Initializing {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the environment left INITIALIZING")
}

async fn ready(host: &FakeHost, function: &str, max: u32) -> Arc<Environment> {
    let env = host
        .agent
        .create(create_request(&spec(function, max), &host.agent).expect("a valid spec"))
        .await
        .expect("create");
    assert_eq!(settled(&env).await, State::Ready);
    env
}

fn input(function: &str, payload: &'static str) -> InvokeInput {
    InvokeInput {
        function_name: function.to_owned(),
        version: String::new(),
        payload: Bytes::from_static(payload.as_bytes()),
        request_id: None,
        client_context: None,
        trace_id: None,
    }
}

/// Stops everything the test started (the runtimes' `sleep` processes among them).
async fn stop(host: &FakeHost) {
    tokio::time::timeout(PATIENCE, host.agent.shutdown(Duration::ZERO))
        .await
        .expect("shutdown");
}

fn records(host: &FakeHost) -> Vec<String> {
    let store = crate::state::StateStore::open(host.dir.path()).expect("state store");
    let mut ids: Vec<_> = store.load_all().into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn create_reaches_ready_and_the_runtime_answers() {
    let host = FakeHost::start().expect("fake host");
    let env = ready(&host, "echo", 2).await;
    assert_eq!(
        host.agent.get(&env.id).map(|e| e.id.clone()),
        Some(env.id.clone())
    );
    assert_eq!(host.agent.list(Some("echo"), None).len(), 1);
    assert_eq!(host.cgroups.names(), vec![format!("env-{}", env.id)]);
    assert_eq!(records(&host), vec![env.id.clone()]);
    assert_eq!(host.sandbox.held(), 1);
    assert_eq!(
        host.agent.ledger().allocated(),
        Allocated {
            vcpus: env.spec.vcpus,
            memory_mib: u64::from(env.spec.memory_mib),
        }
    );

    let done = host
        .agent
        .invoke(input("echo", "\"hi\""))
        .await
        .expect("invoke");
    assert_eq!(done.environment_id, env.id);
    assert_eq!(done.version, LATEST);
    match done.outcome {
        Outcome::Success { payload, .. } => assert_eq!(payload, Bytes::from_static(b"\"hi\"")),
        other => panic!("expected the echo, got {other:?}"),
    }
    stop(&host).await;
}

#[tokio::test]
async fn a_function_error_is_the_invoke_outcome() {
    let host = FakeHost::start().expect("fake host");
    host.spawner.set_runtime(FakeRuntime::Error);
    ready(&host, "fails", 1).await;
    let done = host
        .agent
        .invoke(input("fails", "{}"))
        .await
        .expect("invoke");
    match done.outcome {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, FAKE_ERROR_TYPE),
        other => panic!("expected a function error, got {other:?}"),
    }
    stop(&host).await;
}

/// One environment runs; a second create fails at a step of `fail`; everything the failed create did is
/// undone and the first environment keeps what it holds.
async fn failed_create(
    host: &FakeHost,
    wire: pb::EnvironmentSpec,
    fail: impl FnOnce(&FakeHost),
) -> CreateError {
    let first = ready(host, "kept", 1).await;
    let allocated = host.agent.ledger().allocated();
    let cgroups = host.cgroups.names();
    let env_dirs = host.env_dirs();
    let releases = host.sandbox.releases();
    fail(host);
    let err = host
        .agent
        .create(create_request(&wire, &host.agent).expect("a valid spec"))
        .await
        .expect_err("the create fails");
    assert_eq!(
        host.agent.ledger().allocated(),
        allocated,
        "capacity released"
    );
    assert_eq!(host.cgroups.names(), cgroups, "no cgroup left");
    assert_eq!(host.env_dirs(), env_dirs, "no environment directory left");
    assert_eq!(
        host.sandbox.held(),
        1,
        "only the first environment's lease held"
    );
    assert_eq!(host.agent.list(None, None).len(), 1, "nothing registered");
    assert_eq!(host.agent.environment_count(), 1);
    assert_eq!(records(host), vec![first.id.clone()], "nothing recorded");
    let new_releases = host.sandbox.releases()[releases.len()..].to_vec();
    stop(host).await;
    // A lease the create took was released once, with its uid given back (no process of it can run).
    assert!(
        new_releases.is_empty() || new_releases == [true],
        "{new_releases:?}"
    );
    err
}

#[tokio::test]
async fn code_staging_failure_undoes_the_reservation() {
    let host = FakeHost::start().expect("fake host");
    // A directory the environment's uid could not read: staging refuses it.
    let private = host.dir.path().join("private-code");
    std::fs::create_dir(&private).expect("code dir");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let mut wire = spec("nocode", 1);
    wire.code = Some(pb::Code {
        source: Some(pb::code::Source::Directory(
            private.to_string_lossy().into_owned(),
        )),
        sha256: String::new(),
    });
    let err = failed_create(&host, wire, |_| {}).await;
    assert!(matches!(err, CreateError::Code(_)), "{err}");
    assert!(host.sandbox.releases().is_empty(), "no lease was taken");
}

#[tokio::test]
async fn sandbox_failure_is_undone() {
    let host = FakeHost::start().expect("fake host");
    let err = failed_create(&host, spec("f", 1), |h| {
        h.sandbox
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert!(matches!(err, CreateError::Sandbox(_)), "{err}");
}

#[tokio::test]
async fn launch_plan_failure_releases_the_lease() {
    let host = FakeHost::start().expect("fake host");
    let mut wire = spec("f", 1);
    // `/` has no executable `bootstrap`.
    wire.runtime = "provided.fake".into();
    let before = host.sandbox.releases().len();
    let err = failed_create(&host, wire, |_| {}).await;
    assert!(matches!(err, CreateError::Launch(_)), "{err}");
    // The failed create's release only (the fake's lease stays with a running environment).
    assert_eq!(host.sandbox.releases()[before..], [true]);
}

#[tokio::test]
async fn cgroup_failure_is_undone() {
    let host = FakeHost::start().expect("fake host");
    let err = failed_create(&host, spec("f", 1), |h| {
        h.cgroups
            .fail_create
            .store(true, std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert!(matches!(err, CreateError::Cgroup(_)), "{err}");
}

#[tokio::test]
async fn placement_failure_removes_the_cgroup() {
    let host = FakeHost::start().expect("fake host");
    let err = failed_create(&host, spec("f", 1), |h| {
        h.cgroups
            .fail_placement
            .store(true, std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert!(matches!(err, CreateError::Cgroup(_)), "{err}");
}

#[tokio::test]
async fn tmp_failure_removes_the_cgroup() {
    let host = FakeHost::start().expect("fake host");
    let err = failed_create(&host, spec("f", 1), |h| {
        h.tmp.fail.store(true, std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert!(matches!(err, CreateError::Ephemeral(_)), "{err}");
}

#[tokio::test]
async fn spawn_failure_removes_tmp_cgroup_and_runtime_api() {
    let host = FakeHost::start().expect("fake host");
    let err = failed_create(&host, spec("f", 1), |h| {
        h.spawner
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    assert!(matches!(err, CreateError::Spawn(_)), "{err}");
}

#[tokio::test]
async fn a_create_that_meets_shutdown_stops_its_runtime() {
    let host = FakeHost::start().expect("fake host");
    let agent = Arc::downgrade(&host.agent);
    let pids = host.spawner.pids().len();
    let err = failed_create(&host, spec("f", 1), move |h| {
        // As a shutdown that began while the runtime was being spawned.
        h.spawner.on_next_spawn(move || {
            if let Some(a) = agent.upgrade() {
                a.shutting_down
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        });
    })
    .await;
    assert!(matches!(err, CreateError::ShuttingDown), "{err}");
    let pids = host.spawner.pids()[pids..].to_vec();
    let killed = *pids.last().expect("the failed create spawned");
    assert!(
        !Path::new(&format!("/proc/{killed}")).exists(),
        "its runtime was killed and reaped"
    );
}

#[tokio::test]
async fn draining_and_shutting_down_refuse_creates_and_invokes() {
    let host = FakeHost::start().expect("fake host");
    ready(&host, "f", 1).await;
    host.agent.drain_host("test").await;
    assert!(matches!(
        host.agent
            .create(create_request(&spec("g", 1), &host.agent).expect("a valid spec"))
            .await,
        Err(CreateError::Draining)
    ));
    assert!(matches!(
        host.agent.invoke(input("f", "{}")).await,
        Err(InvokeError::Draining)
    ));
    stop(&host).await;
    assert!(matches!(
        host.agent
            .create(create_request(&spec("g", 1), &host.agent).expect("a valid spec"))
            .await,
        Err(CreateError::ShuttingDown)
    ));
}

#[tokio::test]
async fn invokes_go_to_the_least_loaded_ready_environment() {
    let host = FakeHost::start().expect("fake host");
    host.spawner.set_runtime(FakeRuntime::Hold);
    let first = ready(&host, "f", 2).await;
    host.spawner.set_runtime(FakeRuntime::Echo);
    let second = ready(&host, "f", 2).await;
    // Both idle: the older one.
    let agent = host.agent.clone();
    let held = tokio::spawn(async move {
        agent
            .invoke(InvokeInput {
                request_id: Some("caller-1".into()),
                ..input("f", "held")
            })
            .await
    });
    host.spawner.delivered(1).await;
    assert_eq!(first.broker.in_flight(), 1);
    // A caller-chosen id in flight on one environment is refused on every other.
    assert!(matches!(
        host.agent
            .invoke(InvokeInput {
                request_id: Some("caller-1".into()),
                ..input("f", "{}")
            })
            .await,
        Err(InvokeError::DuplicateRequestId(id)) if id == "caller-1"
    ));
    // The first holds one invoke: the second is less loaded.
    let done = host.agent.invoke(input("f", "{}")).await.expect("invoke");
    assert_eq!(done.environment_id, second.id);
    let counts = host.agent.stats().function("f", LATEST).counts();
    assert_eq!(counts.redirects, 0);
    stop(&host).await;
    // Shutdown ended the held invoke with the environment's end.
    let held = held.await.expect("task").expect("invoke");
    assert_eq!(held.environment_id, first.id);
    assert!(!matches!(held.outcome, Outcome::Success { .. }));
}

#[tokio::test]
async fn a_saturated_first_choice_is_redirected() {
    let host = FakeHost::start().expect("fake host");
    let first = ready(&host, "f", 2).await;
    let second = ready(&host, "f", 2).await;
    first.set_usage(Usage::default(), Saturation::CPU);
    let done = host.agent.invoke(input("f", "{}")).await.expect("invoke");
    assert_eq!(done.environment_id, second.id);
    assert_eq!(
        host.agent.stats().function("f", LATEST).counts().redirects,
        1
    );
    stop(&host).await;
}

async fn throttled(agent: &Agent, function: &str) -> (ThrottleReason, String) {
    match agent.invoke(input(function, "{}")).await {
        Err(InvokeError::Throttled { reason, message }) => (reason, message),
        other => panic!("expected a throttle, got {other:?}"),
    }
}

#[tokio::test]
async fn every_slot_taken_is_a_concurrency_throttle() {
    let host = FakeHost::start().expect("fake host");
    host.spawner.set_runtime(FakeRuntime::Hold);
    ready(&host, "f", 1).await;
    let agent = host.agent.clone();
    let held = tokio::spawn(async move { agent.invoke(input("f", "held")).await });
    host.spawner.delivered(1).await;
    let (reason, message) = throttled(&host.agent, "f").await;
    assert_eq!(reason, ThrottleReason::Concurrency);
    assert_eq!(
        message,
        "all 1 READY environments of f:$LATEST are at their max concurrency"
    );
    let counts = host.agent.stats().function("f", LATEST).counts();
    assert_eq!(
        (counts.throttles.total, counts.throttles.concurrency),
        (1, 1)
    );
    stop(&host).await;
    let _ = held.await;
}

#[tokio::test]
async fn no_ready_environment_is_its_own_throttle() {
    let host = FakeHost::start().expect("fake host");
    host.spawner.set_runtime(FakeRuntime::Silent);
    let env = host
        .agent
        .create(create_request(&spec("f", 1), &host.agent).expect("a valid spec"))
        .await
        .expect("create");
    assert_eq!(env.state(), State::Initializing);
    let (reason, message) = throttled(&host.agent, "f").await;
    assert_eq!(reason, ThrottleReason::NoReadyEnvironment);
    assert_eq!(
        message,
        "none of the 1 environments of f:$LATEST is READY (1 initializing, the others failed or draining)"
    );
    stop(&host).await;
}

#[tokio::test]
async fn a_saturated_only_environment_throttles_with_its_resource() {
    let host = FakeHost::start().expect("fake host");
    let env = ready(&host, "f", 2).await;
    // Memory first (an OOM kill is the worst outcome), then disk, then CPU.
    for (saturation, reason, name) in [
        (
            Saturation::MEMORY.with(Saturation::CPU, true),
            ThrottleReason::Memory,
            "MEMORY",
        ),
        (
            Saturation::DISK.with(Saturation::CPU, true),
            ThrottleReason::Disk,
            "DISK",
        ),
        (Saturation::CPU, ThrottleReason::Cpu, "CPU"),
    ] {
        env.set_usage(Usage::default(), saturation);
        assert_eq!(
            throttled(&host.agent, "f").await,
            (
                reason,
                format!(
                    "every READY environment of f:$LATEST with a free slot is saturated ({name} over its threshold)"
                )
            )
        );
    }
    let throttles = host.agent.stats().function("f", LATEST).counts().throttles;
    assert_eq!(
        (
            throttles.memory,
            throttles.disk,
            throttles.cpu,
            throttles.total
        ),
        (1, 1, 1, 3)
    );
    // Below its thresholds again, it takes invokes.
    env.set_usage(Usage::default(), Saturation::NONE);
    assert!(host.agent.invoke(input("f", "{}")).await.is_ok());
    stop(&host).await;
}

#[tokio::test]
async fn an_unknown_function_or_a_bad_request_is_not_a_throttle() {
    let host = FakeHost::start().expect("fake host");
    assert!(matches!(
        host.agent.invoke(input("nobody", "{}")).await,
        Err(InvokeError::NoEnvironment { .. })
    ));
    assert!(matches!(
        host.agent.invoke(input("bad name!", "{}")).await,
        Err(InvokeError::Invalid(_))
    ));
    stop(&host).await;
}

#[tokio::test]
async fn delete_stops_and_forgets_an_environment() {
    let host = FakeHost::start().expect("fake host");
    let env = ready(&host, "f", 1).await;
    let deleted = host
        .agent
        .delete(&env.id, Some(Duration::ZERO))
        .await
        .expect("known");
    assert_eq!(deleted.id, env.id);
    assert!(env.is_cleaned());
    assert!(host.agent.get(&env.id).is_none());
    assert!(host.cgroups.names().is_empty());
    assert!(records(&host).is_empty());
    assert_eq!(host.agent.ledger().allocated(), Allocated::default());
    assert!(host.agent.delete(&env.id, None).await.is_none());
    stop(&host).await;
}

#[tokio::test]
async fn invokes_find_the_environments_left_after_a_delete() {
    let host = FakeHost::start().expect("fake host");
    let first = ready(&host, "f", 1).await;
    let second = ready(&host, "f", 1).await;
    let other = ready(&host, "g", 1).await;
    host.agent.delete(&first.id, Some(Duration::ZERO)).await;
    for _ in 0..2 {
        let done = host.agent.invoke(input("f", "{}")).await.expect("invoke");
        assert_eq!(done.environment_id, second.id);
    }
    host.agent.delete(&second.id, Some(Duration::ZERO)).await;
    assert!(matches!(
        host.agent.invoke(input("f", "{}")).await,
        Err(InvokeError::NoEnvironment { .. })
    ));
    let done = host.agent.invoke(input("g", "{}")).await.expect("invoke");
    assert_eq!(done.environment_id, other.id);
    let again = ready(&host, "f", 1).await;
    let done = host.agent.invoke(input("f", "{}")).await.expect("invoke");
    assert_eq!(done.environment_id, again.id);
    stop(&host).await;
}

#[tokio::test]
async fn recovery_reports_recorded_environments_lost_and_removes_orphan_cgroups() {
    let host = FakeHost::start().expect("fake host");
    // What a previous life left: a record with its cgroup and /tmp, a cgroup without a record, and a cgroup
    // that is no environment's.
    let store = crate::state::StateStore::open(host.dir.path()).expect("state store");
    let mut rec = pb::Environment {
        id: "0a1b".into(),
        pid: 4242,
        ..Default::default()
    };
    rec.set_state(pb::EnvironmentState::Ready);
    store.save(&rec).expect("record");
    std::fs::create_dir_all(host.dir.path().join("envs/0a1b/tmp")).expect("env dir");
    for name in ["env-0a1b", "env-orphan", "unrelated"] {
        host.cgroups.add(name);
    }

    let recovery = host.agent.recover().await;
    assert_eq!(
        recovery,
        Recovery {
            lost: vec!["0a1b".into()],
            orphan_cgroups: vec!["env-orphan".into()],
        }
    );
    assert_eq!(host.cgroups.names(), vec!["unrelated".to_owned()]);
    assert!(host.env_dirs().is_empty());
    let lost = host.agent.get_lost("0a1b").expect("lost").into_record();
    assert_eq!(lost.state(), pb::EnvironmentState::Failed);
    assert_eq!(
        lost.failure.as_ref().map(|f| f.error_type.as_str()),
        Some(AGENT_RESTARTED)
    );
    assert_eq!(lost.pid, 0);
    assert_eq!(host.agent.environment_count(), 1);
    // The record now says FAILED: a second restart reports it lost again, with the same reason.
    let again = store.load_all();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].state(), pb::EnvironmentState::Failed);

    let forgotten = host
        .agent
        .delete_lost("0a1b")
        .expect("forgotten")
        .into_record();
    assert_eq!(forgotten.state(), pb::EnvironmentState::Terminated);
    assert!(records(&host).is_empty());
    assert_eq!(host.agent.environment_count(), 0);
    stop(&host).await;
}

#[tokio::test]
async fn recovery_after_a_restart_stops_what_the_previous_life_ran() {
    let mut host = FakeHost::start().expect("fake host");
    let env = ready(&host, "f", 1).await;
    let previous = host.agent.clone();
    host.restart().expect("restart");
    let recovery = host.agent.recover().await;
    assert_eq!(recovery.lost, vec![env.id.clone()]);
    assert!(recovery.orphan_cgroups.is_empty());
    assert!(host.cgroups.names().is_empty(), "its cgroup was removed");
    assert!(host.agent.get(&env.id).is_none());
    assert!(host.agent.get_lost(&env.id).is_some());
    // The previous life's runtime (its `sleep`) is the fake's to stop: a real cgroup removal kills it.
    tokio::time::timeout(PATIENCE, previous.shutdown(Duration::ZERO))
        .await
        .expect("shutdown");
    stop(&host).await;
}

#[tokio::test]
async fn shutdown_stops_every_environment_and_the_host_parts() {
    let host = FakeHost::start().expect("fake host");
    let a = ready(&host, "f", 1).await;
    let b = ready(&host, "g", 1).await;
    stop(&host).await;
    for env in [&a, &b] {
        assert!(env.is_cleaned());
        assert_eq!(env.state(), State::Terminated);
    }
    assert!(host.cgroups.names().is_empty());
    assert!(host
        .cgroups
        .parent_removed
        .load(std::sync::atomic::Ordering::SeqCst));
    assert!(host.sandbox.is_shut_down());
    assert!(records(&host).is_empty());
    assert_eq!(host.agent.ledger().allocated(), Allocated::default());
    for pid in host.spawner.pids() {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "runtime {pid} stopped"
        );
    }
    assert!(matches!(
        host.agent
            .create(create_request(&spec("h", 1), &host.agent).expect("a valid spec"))
            .await,
        Err(CreateError::ShuttingDown)
    ));
}
