//! The official Java runtime interface client (`com.amazonaws:aws-lambda-java-runtime-interface-client` 2.10.1
//! from Maven Central), unmodified, as a `provided.al2023` function: its `bootstrap` runs
//! `java -cp <client jars> com.amazonaws.services.lambda.runtime.api.client.AWSLambda <handler>`. The client reads
//! `AWS_LAMBDA_MAX_CONCURRENCY` and runs one `/next` loop per thread of a fixed pool (`pool-1-thread-K`); its HTTP
//! is a JNI library (aws-lambda-cpp over libcurl, one curl handle per thread) that it unpacks into the function's
//! private `/tmp`. The function is tests/fixtures/java-ric (built, cached, by its build.sh, which tests/setup.sh
//! runs).
//!
//! "Every poller is still there" is proven by a rendezvous of `max_concurrency` invokes: each handler writes a
//! file in a shared directory and returns only once all of them are there, which needs every one of the
//! client's threads to take an invoke at the same time. No test relies on timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use std::collections::{BTreeMap, BTreeSet};

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use serde_json::json;
use support::*;

/// A `provided.al2023` spec running the official Java client on `handler` (timeout 60 s).
fn ric_spec(function: &str, handler: &str, max_concurrency: u32) -> pb::EnvironmentSpec {
    let mut spec = code_spec(
        function,
        "provided.al2023",
        handler,
        &built_fixture("java-ric"),
    );
    spec.max_concurrency = max_concurrency;
    spec.timeout_seconds = 60;
    spec
}

const HANDLER: &str = "fixtures.Handler::handleRequest";

/// Runs `n` invokes that can only all succeed if `n` of the client's threads hold one at the same time, and
/// returns the names of the threads that ran them.
async fn rendezvous(agent: &TestAgent, function: &str, n: usize) -> BTreeSet<String> {
    scenarios::overlap(agent, function, n)
        .await
        .iter()
        .map(|(r, v)| {
            assert_eq!(v["requestId"], r.request_id.as_str());
            v["thread"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_event_comes_back_from_the_official_client() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric_spec("jric-echo", HANDLER, 2)).await;
    let event = json!({"action": "echo", "name": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    let r = agent.invoke("jric-echo", event.clone()).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["event"], event);
    assert_eq!(v["requestId"], r.request_id.as_str());
    assert!(
        v["thread"].as_str().unwrap().starts_with("pool-"),
        "a thread of the client's pool ran it: {v}"
    );
    // One process: the JVM, which is the bootstrap (exec) and the environment's only runtime process.
    let dirs = agent.env_cgroup_dirs(&env.id);
    assert_eq!(cgroup_pids(&dirs["memory"]), vec![env.pid]);
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_concurrent_invokes_overlap_on_n_threads_of_the_client() {
    require_root!();
    const N: usize = 4;
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(ric_spec("jric-overlap", HANDLER, N as u32))
        .await;
    let threads = rendezvous(&agent, "jric-overlap", N).await;
    assert_eq!(
        threads.len(),
        N,
        "one client thread per invoke: {threads:?}"
    );
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_error_reaches_the_caller_with_type_message_and_stack() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric_spec("jric-error", HANDLER, 2)).await;
    let r = agent
        .invoke(
            "jric-error",
            json!({"action": "raise", "message": "bad input: 42"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "java.lang.IllegalArgumentException");
    assert_eq!(e.error_message, "bad input: 42");
    assert!(
        e.stack_trace[0].starts_with("fixtures.Handler.validate(Handler.java:"),
        "{:?}",
        e.stack_trace
    );
    assert!(
        e.stack_trace
            .iter()
            .any(|f| f.starts_with("fixtures.Handler.handleRequest(Handler.java:")),
        "{:?}",
        e.stack_trace
    );
    // Both threads carry on.
    let threads = rendezvous(&agent, "jric-error", 2).await;
    assert_eq!(threads.len(), 2, "{threads:?}");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_invoke_leaves_the_client_serving_with_every_thread() {
    require_root!();
    // Refusing mode: the late answer gets 410 (the default answers 202), and the client survives it.
    let mut agent = refusing_agent().await;
    let mut spec = ric_spec("jric-slow", HANDLER, 2);
    spec.timeout_seconds = 2;
    let env = agent.create_ready(spec).await;
    // The slow invoke holds a thread until the test releases it (the second file of its gate), well past
    // its 2 s deadline.
    let hold = shared_dir();
    let slow = tokio::spawn(invoke(
        agent.client.clone(),
        "jric-slow",
        gate(hold.path(), 2),
    ));
    wait_for_files(hold.path(), 1).await;
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Timeout, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Sandbox.Timedout");
    assert_eq!(e.error_message, "Task timed out after 2.00 seconds");
    // The code was not stopped: the other thread serves while the slow one is still held.
    assert_eq!(agent.get(&env.id).await.state(), St::Ready);
    let quick = agent
        .invoke("jric-slow", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(quick.outcome(), Out::Success, "{quick:?}");
    // Released, the held thread answers too late. The client logs what the Runtime API told it and goes
    // back to `/next`: both threads then take an invoke at once.
    let socket = agent.socket.clone();
    let follow = tokio::task::spawn_blocking(move || {
        follow_logs(&socket, "jric-slow", |r| {
            record_text(r).contains("Failed to post invocation response")
        })
    });
    std::fs::write(hold.path().join("release"), b"").unwrap();
    let records = follow.await.unwrap();
    // It received the Runtime API's 410 (not a broken connection: that would be code -1).
    let refused = record_text(records.last().unwrap());
    assert!(refused.contains("Response code: '410'"), "{refused}");
    let threads = rendezvous(&agent, "jric-slow", 2).await;
    assert_eq!(threads.len(), 2, "{threads:?}");
    let env = agent.get(&env.id).await;
    assert_eq!(env.state(), St::Ready);
    assert_eq!(env.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_class_init_throws_is_an_init_error() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create(ric_spec(
            "jric-badinit",
            "fixtures.BadInit::handleRequest",
            2,
        ))
        .await;
    let env = agent.wait_state(&env.id, &[St::Failed, St::Ready]).await;
    assert_eq!(env.state(), St::Failed);
    let f = env.failure.clone().unwrap();
    // The client posts `/init/error` with the body's errorType `java.lang.ExceptionInInitializerError`
    // and the message "Error loading class fixtures.BadInit", then exits.
    assert_eq!(
        f.error_type, "java.lang.ExceptionInInitializerError",
        "{f:?}"
    );
    assert!(
        f.message.contains("Error loading class fixtures.BadInit"),
        "{f:?}"
    );
    assert_eq!(env.ready_at, None);
    let s = agent.invoke("jric-badinit", json!({})).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_handler_class_is_not_an_init_error_each_invoke_fails_instead() {
    require_root!();
    let mut agent = TestAgent::start().await;
    // The client does not report a missing class at init: it starts its loops and fails every invoke.
    let env = agent
        .create_ready(ric_spec(
            "jric-noclass",
            "fixtures.DoesNotExist::handleRequest",
            2,
        ))
        .await;
    for _ in 0..2 {
        let r = agent.invoke("jric-noclass", json!({})).await.unwrap();
        assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
        let e = r.error.unwrap();
        assert_eq!(e.error_type, "java.lang.ClassNotFoundException", "{e:?}");
        assert_eq!(e.error_message, "Class not found: fixtures.DoesNotExist");
        // The client reports its own faults without a stack.
        assert_eq!(e.stack_trace, Vec::<String>::new());
    }
    let env = agent.get(&env.id).await;
    assert_eq!(env.state(), St::Ready);
    assert_eq!(env.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_6_mb_payload_goes_both_ways() {
    require_root!();
    const BYTES: usize = 6_000_000;
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric_spec("jric-big", HANDLER, 2)).await;
    let data = "y".repeat(BYTES);
    let event = json!({"action": "size", "data": data});
    assert!(event.to_string().len() > BYTES);
    let r = agent.invoke("jric-big", event).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{:?}", r.error);
    assert!(r.payload.len() > BYTES, "{}", r.payload.len());
    let v = payload_json(&r);
    assert_eq!(v["length"], BYTES);
    assert!(v["data"] == data.as_str(), "the data came back unchanged");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_response_size_too_large_and_every_thread_survives() {
    require_root!();
    const N: usize = 4;
    // Refusing mode: each oversized answer gets 413 (the default answers 202), and the client survives it.
    let mut agent = refusing_agent().await;
    let env = agent
        .create_ready(ric_spec("jric-huge", HANDLER, N as u32))
        .await;
    // Rounds of N answers of 6.5 MiB, each round after a rendezvous: every thread of the client is refused
    // once per round.
    const ROUNDS: usize = 2;
    for _ in 0..ROUNDS {
        let dir = shared_dir();
        let mut event = gate(dir.path(), N);
        event["action"] = json!("big");
        event["bytes"] = json!(6_815_744);
        let calls: Vec<_> = (0..N)
            .map(|_| tokio::spawn(invoke(agent.client.clone(), "jric-huge", event.clone())))
            .collect();
        for c in calls {
            let r = c.await.unwrap().unwrap();
            assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
            let e = r.error.unwrap();
            assert_eq!(e.error_type, "Function.ResponseSizeTooLarge", "{e:?}");
        }
    }
    // Each refusal reached the client as the Runtime API's 413 (a broken connection would be code -1), which
    // it logs.
    let socket = agent.socket.clone();
    let records = tokio::task::spawn_blocking(move || {
        let refused = std::sync::atomic::AtomicUsize::new(0);
        follow_logs(&socket, "jric-huge", |r| {
            record_text(r).contains("Failed to post invocation response")
                && refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == ROUNDS * N
        })
    })
    .await
    .unwrap();
    for r in records
        .iter()
        .filter(|r| record_text(r).contains("Failed to post invocation response"))
    {
        assert!(record_text(r).contains("Response code: '413'"), "{r}");
    }
    // Every poller is still there: N invokes are held by N threads at once.
    let threads = rendezvous(&agent, "jric-huge", N).await;
    assert_eq!(threads.len(), N, "{threads:?}");
    let env = agent.get(&env.id).await;
    assert_eq!(env.state(), St::Ready);
    assert_eq!(env.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_log_records_carry_the_invokes_request_id() {
    require_root!();
    const N: usize = 4;
    const LINES: usize = 20;
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(ric_spec("jric-logs", HANDLER, N as u32))
        .await;
    let event = json!({"action": "log", "lines": LINES});
    let ids: BTreeSet<String> = invoke_all_ok(&agent, "jric-logs", vec![event; N])
        .await
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, "jric-logs", &env.id).await;
    let mut per_id: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut lifted = 0;
    for r in &records {
        let t = record_text(r);
        let mut words = t.split(' ');
        if words.next() != Some("jric") {
            continue;
        }
        let i: usize = words.next().unwrap().parse().unwrap();
        let rid = words.next().unwrap().to_owned();
        // The client's own JSON line (AWS_LAMBDA_LOG_FORMAT=JSON), kept as written: the id is its
        // `AWSRequestId`.
        assert_eq!(r["message"]["AWSRequestId"], rid.as_str(), "{r}");
        assert_eq!(r["message"]["level"], "INFO", "{r}");
        assert_eq!(r["level"], "INFO", "{r}");
        assert_eq!(r["stream"], "stdout", "{r}");
        assert!(
            per_id.entry(rid.clone()).or_default().insert(i),
            "twice: {r}"
        );
        if r["requestId"] == rid.as_str() {
            lifted += 1;
        }
    }
    assert_eq!(per_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    for (rid, lines) in &per_id {
        assert_eq!(lines.len(), LINES, "{rid}");
    }
    // The client read AWS_LAMBDA_MAX_CONCURRENCY and said so, in a record of no invoke.
    let started = records
        .iter()
        .find(|r| record_text(r) == format!("Starting {N} concurrent function handler threads."))
        .unwrap_or_else(|| panic!("no thread pool record in {records:#?}"));
    assert_eq!(started["message"].get("AWSRequestId"), None, "{started}");
    // The agent lifts the client's `AWSRequestId` into the record's `requestId`.
    assert_eq!(
        lifted,
        N * LINES,
        "records whose requestId the agent lifted from AWSRequestId"
    );
}
