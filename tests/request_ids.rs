//! Request ids and slots: which ids a caller may choose, that one id never runs twice at once on the host,
//! and that a delivered invoke's slot comes back however the invoke ends (answer, function error, deadline
//! then a late answer, caller gone, environment gone).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use serde_json::{json, Value};
use support::*;
use tonic::Code;

fn with_id(
    agent: &TestAgent,
    function: &str,
    id: &str,
    payload: Value,
) -> impl std::future::Future<Output = Result<pb::InvokeResponse, tonic::Status>> + Send + 'static {
    invoke_with_id(agent.client.clone(), function, id, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_a_runtime_cannot_answer_are_refused_and_one_id_runs_once_on_the_host() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("ids", "actions.handler");
    spec.max_concurrency = 1;
    spec.timeout_seconds = 60;
    // Two environments of one function: an id held on one must not start on the other.
    let a = agent.create_ready(spec.clone()).await;
    let b = agent.create_ready(spec).await;

    // Ids that need escaping in a URL path (or that a client normalises away) never reach a runtime.
    let too_long = "x".repeat(129);
    for bad in ["a?b", "a#b", "a%2Fb", "a/b", "a b", "..", too_long.as_str()] {
        let s = with_id(&agent, "ids", bad, json!({"action": "echo"}))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad}: {s:?}");
        assert!(
            s.message().contains("A-Z a-z 0-9 - . _ ~"),
            "{}",
            s.message()
        );
    }
    // A URL-safe id is the id the function sees.
    let r = with_id(&agent, "ids", "job_42.retry~1", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    assert_eq!(payload_json(&r)["requestId"], "job_42.retry~1");
    assert_eq!(r.request_id, "job_42.retry~1");

    // The same id while it runs: refused, although the other environment has a free slot.
    let dir = shared_dir();
    let held = tokio::spawn(with_id(&agent, "ids", "dup-1", gate(dir.path(), 2)));
    wait_for_files(dir.path(), 1).await;
    let s = with_id(&agent, "ids", "dup-1", json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::AlreadyExists, "{s:?}");
    // Another id runs on the other environment meanwhile (and completes the rendezvous).
    let other = with_id(&agent, "ids", "dup-2", gate(dir.path(), 2))
        .await
        .unwrap();
    assert_eq!(other.outcome(), Out::Success, "{other:?}");
    let first = held.await.unwrap().unwrap();
    assert_eq!(first.outcome(), Out::Success, "{first:?}");
    assert_ne!(first.environment_id, other.environment_id);
    // Once it ended, the id is free again.
    let again = with_id(&agent, "ids", "dup-1", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(again.outcome(), Out::Success, "{again:?}");
    for env in [&a, &b] {
        assert_eq!(agent.get(&env.id).await.in_flight, 0);
    }
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ending_of_a_delivered_invoke_gives_its_slot_back() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("slots", "actions.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 1;
    let env = agent.create_ready(spec).await;
    // The answer and a function error.
    let r = agent
        .invoke("slots", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success);
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    let r = agent
        .invoke("slots", json!({"action": "raise"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError);
    assert_eq!(agent.get(&env.id).await.in_flight, 0);

    // The deadline: the caller has its timeout, the runtime keeps the slot while it still works, and its late
    // answer (410 to the runtime) gives the slot back.
    let r = agent
        .invoke("slots", json!({"action": "sleep", "s": 2}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Timeout, "{r:?}");
    wait_in_flight(&mut agent, &env.id, 0).await;

    // The caller goes away while the runtime holds the invoke: the runtime's answer still frees the slot.
    let dir = shared_dir();
    let mut spec2 = python_spec("slots-long", "actions.handler");
    spec2.max_concurrency = 2;
    spec2.timeout_seconds = 60;
    let long = agent.create_ready(spec2).await;
    let caller = tokio::spawn(invoke(
        agent.client.clone(),
        "slots-long",
        gate(dir.path(), 2),
    ));
    wait_for_files(dir.path(), 1).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    assert_eq!(agent.get(&long.id).await.in_flight, 1);
    std::fs::write(dir.path().join("release"), "").unwrap();
    wait_in_flight(&mut agent, &long.id, 0).await;

    // The environment goes away with an invoke in flight: the caller is told at once and nothing is held.
    let dir = shared_dir();
    let caller = tokio::spawn(invoke(
        agent.client.clone(),
        "slots-long",
        gate(dir.path(), 2),
    ));
    wait_for_files(dir.path(), 1).await;
    let deleted = agent.delete(&long.id).await;
    assert_eq!(deleted.in_flight, 0);
    let r = caller.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::RuntimeFailure, "{r:?}");
    agent.stop_and_assert_clean(&[env.pid, long.pid]);
}
