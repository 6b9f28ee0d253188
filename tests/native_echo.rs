//! The native echo runtime (tests/fixtures/native-echo, a Rust `provided.al2023` bootstrap with its own
//! Runtime API client) through the real daemon: it echoes, it holds AWS_LAMBDA_MAX_CONCURRENCY invokes at
//! once, and the environment reports where its start-up time went.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_echo_answers_byte_for_byte_and_reports_errors() {
    require_root!();
    let code = native_echo_code_dir();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(native_echo_spec("native", code.path(), 4, 60))
        .await;

    let payload = bytes::Bytes::from_static(
        br#"{"nested": {"list": [1, 2.5, "three"]}, "unicode": "\u00e9t\u00e9"}"#,
    );
    let r = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: "native".into(),
            payload: payload.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    assert_eq!(r.payload, payload, "the echo is byte for byte");
    assert_eq!(r.environment_id, env.id);

    let r = agent
        .invoke(
            "native",
            serde_json::json!({"native_echo": {"error": "Function.Asked"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    assert_eq!(r.error.as_ref().unwrap().error_type, "Function.Asked");

    // The agent's start-up phases add up to its share, and the runtime's init was measured.
    let t = agent.get(&env.id).await.startup.expect("start-up timings");
    assert_eq!(
        t.agent_us,
        t.validate_us + t.code_us + t.sandbox_us + t.runtime_api_us + t.cgroup_us + t.spawn_us,
        "{t:?}"
    );
    assert!(t.spawn_us > 0 && t.cgroup_us > 0, "{t:?}");
    assert!(t.runtime_init_us > 0, "READY, so init was measured: {t:?}");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_echo_holds_max_concurrency_invokes_at_once() {
    require_root!();
    let code = native_echo_code_dir();
    let mut agent = TestAgent::start().await;
    const N: u32 = 8;
    let env = agent
        .create_ready(native_echo_spec("native-c", code.path(), N, 60))
        .await;
    // Each invoke waits in the runtime until N have arrived there: they can only all succeed if the runtime
    // held N distinct invokes at the same time (a rendezvous; a missing poller would time them out).
    let event = serde_json::json!({"native_echo": {"barrier": N}});
    let mut ids = BTreeSet::new();
    let mut seen_together = Vec::new();
    for r in invoke_all_ok(&agent, "native-c", vec![event; N as usize]).await {
        let v = payload_json(&r);
        assert_eq!(v["request_id"], r.request_id.as_str());
        assert_eq!(v["pollers"], N, "one poller per AWS_LAMBDA_MAX_CONCURRENCY");
        let together: BTreeSet<String> = v["barrier_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_owned())
            .collect();
        seen_together.push(together);
        ids.insert(r.request_id);
    }
    assert_eq!(ids.len(), N as usize, "distinct request ids");
    for together in seen_together {
        assert_eq!(together, ids, "all {N} were in the runtime at once");
    }
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmictl_bench_reports_every_invoke_and_the_agents_costs() {
    require_root!();
    let code = native_echo_code_dir();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(native_echo_spec("bench-me", code.path(), 4, 60))
        .await;
    let lmictl = |args: &[&str]| {
        let (ok, json, stderr) = lmictl_json(&agent.socket, args);
        assert!(ok, "lmictl {args:?}: {stderr}");
        json
    };

    // Bounded by count: exactly 200 measured invokes, all answered by the echo.
    let r = lmictl(&[
        "bench", "invoke", "bench-me", "-c", "4", "-d", "60", "--warmup", "0", "-n", "200",
    ]);
    assert_eq!(r["invokes"], 200, "{r:#}");
    assert_eq!(r["outcomes"]["success"], 200, "{r:#}");
    for other in [
        "function_error",
        "timeout",
        "runtime_failure",
        "throttle",
        "other",
    ] {
        assert_eq!(r["outcomes"][other], 0, "{other}: {r:#}");
    }
    // The agent was found through the socket's peer credentials, and its costs were read from /proc.
    assert_eq!(r["agent"]["pid"], agent.pid(), "{r:#}");
    assert!(r["agent"]["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r:#}");
    assert!(r["agent"]["cpu_us_per_invoke"].is_number(), "{r:#}");
    assert_eq!(r["runtime_pids"], serde_json::json!([env.pid]), "{r:#}");
    let l = &r["latency"];
    assert!(
        l["p50_us"].as_f64().unwrap() <= l["p99_us"].as_f64().unwrap(),
        "{r:#}"
    );

    // A function error counts as one, not as success.
    let r = lmictl(&[
        "bench",
        "invoke",
        "bench-me",
        "--warmup",
        "0",
        "-n",
        "3",
        "--payload",
        r#"{"native_echo": {"error": "Function.Asked"}}"#,
    ]);
    assert_eq!(r["outcomes"]["function_error"], 3, "{r:#}");
    assert_eq!(r["outcomes"]["success"], 0, "{r:#}");

    // Start-up: two environments created, measured and deleted.
    let code_arg = code.path().display().to_string();
    let r = lmictl(&[
        "bench",
        "startup",
        "-n",
        "2",
        "--function",
        "startup-me",
        "--runtime",
        "provided.al2023",
        "--code",
        &code_arg,
    ]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{r:#}");
    for run in runs {
        assert!(run["agent_us"].as_u64().unwrap() > 0, "{r:#}");
        assert!(run["runtime_init_us"].as_u64().unwrap() > 0, "{r:#}");
    }
    let left: Vec<_> = agent
        .client
        .list_environments(pb::ListEnvironmentsRequest {
            function_name: "startup-me".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .environments
        .into_iter()
        .filter(|e| e.state() != pb::EnvironmentState::Terminated)
        .collect();
    assert!(
        left.is_empty(),
        "bench startup deletes what it creates: {left:?}"
    );
    agent.stop_and_assert_clean(&[env.pid]);
}
