//! Invokes against the real daemon and real Python runtimes: concurrency, throttling and every outcome.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use scenarios::python;
use support::*;
use tonic::Code;

// Echo, the concurrency proof (16 invokes at once), a function error, a timeout, init errors and logs on
// Python 3.11.
scenario_tests!(python = python(); echo, concurrency, function_error, timeout, init_error, logs);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fifth_invoke_at_max_concurrency_four_is_throttled_for_concurrency() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("four", "actions.handler");
    spec.max_concurrency = 4;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let dir = support::shared_dir();
    // Four handlers hold their slots until a fifth file appears; the test adds it after the 5th invoke.
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(invoke(agent.client.clone(), "four", gate(dir.path(), 5))))
        .collect();
    wait_for_files(dir.path(), 4).await;
    assert_eq!(agent.get(&env.id).await.in_flight, 4);
    let s = agent
        .invoke("four", serde_json::json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_throttled(&s, "CONCURRENCY");
    let details = pb::ThrottleDetails::from_status_details(s.details()).unwrap();
    assert_eq!(details.reason(), pb::ThrottleReason::Concurrency);
    assert!(details.retry_elsewhere);
    assert!(
        s.message().contains("at their max concurrency"),
        "{}",
        s.message()
    );
    std::fs::write(dir.path().join("release"), "").unwrap();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
    }
    // Slots are free again.
    let r = agent
        .invoke("four", serde_json::json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invokes_spread_over_environments_before_throttling() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("spread", "actions.handler");
    spec.max_concurrency = 1;
    spec.timeout_seconds = 120;
    let a = agent.create_ready(spec.clone()).await;
    let b = agent.create_ready(spec).await;
    let dir = support::shared_dir();
    let calls: Vec<_> = (0..2)
        .map(|_| tokio::spawn(invoke(agent.client.clone(), "spread", gate(dir.path(), 3))))
        .collect();
    wait_for_files(dir.path(), 2).await;
    let s = agent
        .invoke("spread", serde_json::json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    std::fs::write(dir.path().join("release"), "").unwrap();
    let mut envs: Vec<String> = Vec::new();
    for c in calls {
        envs.push(c.await.unwrap().unwrap().environment_id);
    }
    envs.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(envs, want, "one invoke on each environment");
    let s = agent
        .invoke("nothing-here", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

/// Another function's environment on the same agent, to show that a fault stays where it happened.
async fn neighbour(agent: &mut TestAgent) -> pb::Environment {
    let mut spec = python_spec("neighbour", "actions.handler");
    spec.max_concurrency = 2;
    agent.create_ready(spec).await
}

/// The neighbour still runs the same process and serves.
async fn assert_unaffected(agent: &mut TestAgent, before: &pb::Environment) {
    let now = agent.get(&before.id).await;
    assert_eq!(now.state(), St::Ready, "{now:?}");
    assert_eq!(now.pid, before.pid, "the neighbour's runtime was restarted");
    let r = agent
        .invoke("neighbour", serde_json::json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    assert_eq!(r.environment_id, before.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_crash_mid_invoke_ends_every_in_flight_invoke_with_exit_error() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("crashy", "actions.handler");
    spec.max_concurrency = 4;
    spec.timeout_seconds = 600; // the outcome must come from the crash, not a deadline
    let env = agent.create_ready(spec).await;
    let other = neighbour(&mut agent).await;
    let dir = support::shared_dir();
    let bystander = tokio::spawn(invoke(agent.client.clone(), "crashy", gate(dir.path(), 99)));
    wait_for_files(dir.path(), 1).await;
    let killer = agent
        .invoke("crashy", serde_json::json!({"action": "kill_main"}))
        .await
        .unwrap();
    let bystander = bystander.await.unwrap().unwrap();
    for r in [&killer, &bystander] {
        assert_eq!(r.outcome(), Out::RuntimeFailure, "{r:?}");
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.error_type, "Runtime.ExitError");
        assert_eq!(e.error_message, "Runtime exited with error: signal: killed");
    }
    let failed = agent.wait_state(&env.id, &[St::Failed]).await;
    assert_eq!(failed.failure.unwrap().error_type, "Runtime.ExitError");
    let dirs = agent.env_cgroup_dirs(&env.id);
    eventually("the cgroup is removed", || {
        dirs.values().all(|d| !d.exists())
    })
    .await;
    // Not restarted in place (LMI replaces environments): it stays FAILED, with no process.
    assert_eq!(agent.get(&env.id).await.state(), St::Failed);
    assert!(!process_alive(env.pid));
    assert_unaffected(&mut agent, &other).await;
    agent.stop_and_assert_clean(&[env.pid, other.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exit_fails_the_environment_with_the_exit_status() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("exits", "actions.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 600;
    let env = agent.create_ready(spec).await;
    let r = agent
        .invoke("exits", serde_json::json!({"action": "exit", "code": 7}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::RuntimeFailure);
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Runtime.ExitError");
    assert_eq!(e.error_message, "Runtime exited with error: exit status 7");
    agent.wait_state(&env.id, &[St::Failed]).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_ends_in_flight_invokes_with_out_of_memory() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("hungry", "actions.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 600;
    let env = agent.create_ready(spec).await; // 2048 MiB, no swap
    let other = neighbour(&mut agent).await;
    let dir = support::shared_dir();
    let bystander = tokio::spawn(invoke(agent.client.clone(), "hungry", gate(dir.path(), 99)));
    wait_for_files(dir.path(), 1).await;
    let r = agent
        .invoke("hungry", serde_json::json!({"action": "alloc", "mb": 3072}))
        .await
        .unwrap();
    let b = bystander.await.unwrap().unwrap();
    for r in [&r, &b] {
        assert_eq!(r.outcome(), Out::RuntimeFailure, "{r:?}");
        assert_eq!(
            r.error.as_ref().unwrap().error_type,
            "Runtime.OutOfMemory",
            "{r:?}"
        );
    }
    let failed = agent.wait_state(&env.id, &[St::Failed]).await;
    assert_eq!(failed.failure.unwrap().error_type, "Runtime.OutOfMemory");
    assert_unaffected(&mut agent, &other).await;
    agent.stop_and_assert_clean(&[env.pid, other.pid]);
}

/// A runtime that never polls: while it initializes and after its init timeout fails it, an invoke is
/// throttled as NO_READY_ENVIRONMENT (not CONCURRENCY); the failure is logged at WARN with its reason and
/// counted in /metrics by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_never_polls_times_out_its_init() {
    require_root!();
    let port = free_loopback_port();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "metrics_listen = \"127.0.0.1:{port}\"\n[environments]\ninit_timeout_seconds = 2\n"
        ),
        ..Default::default()
    })
    .await;
    let spec = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: "mute".into(),
            ..Default::default()
        }),
        runtime: "provided.al2023".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(
                fixtures("provided/mute").display().to_string(),
            )),
            sha256: String::new(),
        }),
        ..Default::default()
    };
    let created = agent.create(spec).await;
    let not_ready = |s: tonic::Status| {
        assert_throttled(&s, "NO_READY_ENVIRONMENT");
        let details = pb::ThrottleDetails::from_status_details(s.details()).unwrap();
        assert_eq!(details.reason(), pb::ThrottleReason::NoReadyEnvironment);
        assert!(details.message.contains("is READY"), "{}", details.message);
    };
    // Initializing (or, on a very slow machine, already failed: the same reason either way).
    not_ready(
        agent
            .invoke("mute", serde_json::json!({}))
            .await
            .unwrap_err(),
    );
    let env = agent.wait_state(&created.id, &[St::Failed]).await;
    let f = env.failure.unwrap();
    assert_eq!(f.error_type, "Runtime.InitTimeout");
    not_ready(
        agent
            .invoke("mute", serde_json::json!({}))
            .await
            .unwrap_err(),
    );

    let metrics = scrape_metrics(port).await;
    let fails = |reason| {
        metric_value(
            &metrics,
            "lmi_environment_failures_total",
            &[("function", "mute"), ("reason", reason)],
        )
    };
    assert_eq!(fails("init_timeout"), Some(1.0), "{metrics}");
    assert_eq!(fails("runtime_exit"), Some(0.0), "{metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            "lmi_no_ready_environment_throttles_total",
            &[("function", "mute")]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "lmi_throttles_total", &[("function", "mute")]),
        Some(2.0)
    );
    // One WARN line, with the reason, for the failure.
    let warned: Vec<serde_json::Value> = agent
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "environment failed")
        .collect();
    assert_eq!(warned.len(), 1, "{}", agent.log());
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["env"], created.id.as_str());
    assert_eq!(warned[0]["error_type"], "Runtime.InitTimeout");
    assert_eq!(warned[0]["reason"], "init_timeout");
    agent.stop_and_assert_clean(&[created.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_exits_during_init_fails_at_once_with_its_exit_status() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let other = neighbour(&mut agent).await;
    let spec = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: "quitter".into(),
            ..Default::default()
        }),
        runtime: "provided.al2023".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(
                fixtures("provided/exits-in-init").display().to_string(),
            )),
            sha256: String::new(),
        }),
        ..Default::default()
    };
    let created = agent.create(spec).await;
    // Known when the process exits: long before the 130 s init timeout (wait_state gives up at 60 s).
    let env = agent.wait_state(&created.id, &[St::Failed]).await;
    let f = env.failure.unwrap();
    assert_eq!(f.error_type, "Runtime.ExitError");
    assert_eq!(
        f.message,
        "Runtime exited during init with error: exit status 3"
    );
    // An invoke finds nothing to run on: a clear throttle, not a wait.
    let s = agent
        .invoke("quitter", serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    let dirs = agent.env_cgroup_dirs(&created.id);
    eventually("the cgroup is removed", || {
        dirs.values().all(|d| !d.exists())
    })
    .await;
    assert_unaffected(&mut agent, &other).await;
    agent.stop_and_assert_clean(&[created.pid, other.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_request_ids_and_oversized_payloads_are_refused() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("dup", "actions.handler");
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let dir = support::shared_dir();
    let mut c = agent.client.clone();
    let payload = gate(dir.path(), 2).to_string().into_bytes();
    let first = tokio::spawn(async move {
        c.invoke(pb::InvokeRequest {
            function_name: "dup".into(),
            payload: payload.into(),
            request_id: "same-id".into(),
            ..Default::default()
        })
        .await
    });
    wait_for_files(dir.path(), 1).await;
    let s = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: "dup".into(),
            payload: b"{}".to_vec().into(),
            request_id: "same-id".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists);
    std::fs::write(dir.path().join("release"), "").unwrap();
    assert_eq!(
        first.await.unwrap().unwrap().into_inner().outcome(),
        Out::Success
    );
    let big = vec![b'x'; 6 * 1024 * 1024 + 101];
    let s = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: "dup".into(),
            payload: big.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("exceeds the 6291556-byte limit"),
        "{}",
        s.message()
    );
    agent.stop_and_assert_clean(&[env.pid]);
}
