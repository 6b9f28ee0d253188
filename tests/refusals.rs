//! Refused answers reach the runtime, and cost it no poller (issue 12, point 2), on real runtimes behind the
//! real agent: oversized answers (413 to the runtime, `Function.ResponseSizeTooLarge` to the caller) and late
//! ones (410) on the Python and Node shims, and oversized answers on the official Python client. The agents
//! here run in the refusing mode (`environments.refuse_late_and_oversized_answers`); the default answers both
//! with 202 (the official Go client's tests run that).
//!
//! "No poller lost" is proved without timing: `max_concurrency` invokes that each wait until all of them
//! have started (a rendezvous of files) can only finish if the runtime serves all of them at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use serde_json::json;
use support::*;

const N: usize = 4;
/// Past the 6 MiB + 100 B limit of a buffered answer.
const OVERSIZED: usize = 7 * 1024 * 1024;
/// Under the limit, but too big for the socket buffers: a server that refused it before reading it and closed
/// would make the runtime see EPIPE instead of the status.
const BIG_LATE: usize = 2 * 1024 * 1024;

fn python(function: &str) -> pb::EnvironmentSpec {
    python_spec(function, "oversize.handler")
}

fn node(function: &str) -> pb::EnvironmentSpec {
    code_spec(
        function,
        "nodejs20.x",
        "oversize.handler",
        &fixtures("node"),
    )
}

fn python_ric(function: &str) -> pb::EnvironmentSpec {
    python_ric_spec(function, "ric_oversize.handler")
}

/// `N` invokes that each return only once all `N` have started: all succeed only if the runtime still has
/// `N` live pollers (Python workers) or capacity for `N` (Node workers), and the environment still serves.
async fn assert_serves_all_at_once(agent: &TestAgent, function: &str) {
    let dir = shared_dir();
    let event =
        json!({"action": "gate", "dir": dir.path().display().to_string(), "count": N, "max_s": 60});
    let calls: Vec<_> = (0..N)
        .map(|_| tokio::spawn(invoke(agent.client.clone(), function, event.clone())))
        .collect();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}\n{}", agent.log());
        assert_eq!(
            payload_json(&r)["seen"].as_array().unwrap().len(),
            N,
            "{r:?}"
        );
    }
}

/// Rounds of `N` concurrent oversized answers: every caller gets `Function.ResponseSizeTooLarge`, and
/// afterwards the environment is READY with all its pollers.
async fn oversized_answers_cost_no_poller(mut agent: TestAgent, mut spec: pb::EnvironmentSpec) {
    let function = spec.function.clone().unwrap().name;
    spec.max_concurrency = N as u32;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    for _round in 0..3 {
        let calls: Vec<_> = (0..N)
            .map(|_| {
                tokio::spawn(invoke(
                    agent.client.clone(),
                    &function,
                    json!({"action": "big", "bytes": OVERSIZED}),
                ))
            })
            .collect();
        for c in calls {
            let r = c.await.unwrap().unwrap();
            assert_eq!(r.outcome(), Out::FunctionError, "{r:?}\n{}", agent.log());
            assert_eq!(
                r.error.as_ref().unwrap().error_type,
                "Function.ResponseSizeTooLarge",
                "{r:?}"
            );
        }
    }
    assert_serves_all_at_once(&agent, &function).await;
    assert_eq!(agent.get(&env.id).await.state(), St::Ready);
    agent.stop_and_assert_clean(&[env.pid]);
}

/// An invoke times out while its handler holds; then the handler answers (a big answer): the runtime gets
/// 410, the slot comes back, and all pollers are still there.
async fn a_late_answer_costs_no_poller(mut agent: TestAgent, mut spec: pb::EnvironmentSpec) {
    let function = spec.function.clone().unwrap().name;
    spec.max_concurrency = N as u32;
    spec.timeout_seconds = 10;
    let env = agent.create_ready(spec).await;
    // A gate of 2 that the handler's own file half fills: the test's file releases it.
    let hold = shared_dir();
    let late = tokio::spawn(invoke(
        agent.client.clone(),
        &function,
        json!({"action": "gate", "dir": hold.path().display().to_string(), "count": 2, "max_s": 120,
               "pad_bytes": BIG_LATE}),
    ));
    wait_for_files(hold.path(), 1).await;
    let r = late.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Timeout, "{r:?}");
    std::fs::write(hold.path().join("release"), b"").unwrap();
    // The late answer frees the slot the runtime held.
    watch_until(&agent.client, "the late answer frees its slot", |u| {
        env_in(u, &env.id).is_some_and(|e| e.in_flight == 0)
    })
    .await;
    assert_serves_all_at_once(&agent, &function).await;
    assert_eq!(agent.get(&env.id).await.state(), St::Ready);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_shim_oversized_answers_cost_no_poller() {
    require_root!();
    oversized_answers_cost_no_poller(refusing_agent().await, python("big-py")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_shim_oversized_answers_cost_no_poller() {
    require_root!();
    oversized_answers_cost_no_poller(refusing_agent().await, node("big-node")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_oversized_answers_cost_no_poller() {
    require_root!();
    oversized_answers_cost_no_poller(refusing_agent().await, python_ric("big-ric")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_shim_late_answer_costs_no_poller() {
    require_root!();
    a_late_answer_costs_no_poller(refusing_agent().await, python("late-py")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_shim_late_answer_costs_no_poller() {
    require_root!();
    a_late_answer_costs_no_poller(refusing_agent().await, node("late-node")).await;
}
