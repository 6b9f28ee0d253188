//! The official Python runtime interface client (awslambdaric ≥ 4, installed by tests/setup.sh), unmodified,
//! as a `provided.al2023` bootstrap in multi-concurrent mode: success, a function error and concurrency.
//! Its log socket is tested in tests/logs.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use lmi_proto::v1::InvokeOutcome as Out;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_with_a_json_event() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_ric_spec("ric-echo", "ric_app.handler");
    spec.max_concurrency = 2;
    let env = agent.create_ready(spec).await;
    let r = agent
        .invoke("ric-echo", json!({"action": "echo", "n": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["event"]["n"], json!([1, 2]));
    assert_eq!(v["requestId"], r.request_id.as_str());
    let main_pid = agent.get(&env.id).await.pid;
    assert_ne!(
        v["pid"],
        pid_in_namespace(main_pid),
        "a forked worker ran the handler"
    );
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[main_pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_error_reaches_the_caller_with_type_message_and_stack() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_ric_spec("ric-error", "ric_app.handler");
    spec.max_concurrency = 2;
    agent.create_ready(spec).await;
    let r = agent
        .invoke(
            "ric-error",
            json!({"action": "raise", "message": "no such order"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "ValueError");
    assert_eq!(e.error_message, "no such order");
    assert!(
        e.stack_trace.iter().any(|l| l.contains("ric_app.py")),
        "{:?}",
        e.stack_trace
    );
    // The worker carries on.
    let r = agent
        .invoke("ric-error", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invokes_overlap_in_forked_workers() {
    require_root!();
    const N: usize = 4;
    let mut agent = TestAgent::start().await;
    let mut spec = python_ric_spec("ric-overlap", "ric_app.handler");
    spec.max_concurrency = N as u32;
    spec.timeout_seconds = 120;
    agent.create_ready(spec).await;
    let dir = shared_dir();
    // A rendezvous: each invoke announces itself with a file and returns only when all N are there, which
    // can only happen if all N run at the same time.
    let event = json!({"action": "gate", "dir": dir.path().display().to_string(), "count": N, "max_s": 120});
    let mut pids = BTreeSet::new();
    for r in invoke_all_ok(&agent, "ric-overlap", vec![event; N]).await {
        let v = payload_json(&r);
        assert_eq!(v["seen"].as_array().unwrap().len(), N, "{v}");
        pids.insert(v["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), N, "one worker process per concurrent invoke");
}
