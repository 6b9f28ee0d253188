//! Response streaming through the real daemon: `InvokeWithResponseStream` carries a function's chunks to the
//! caller as the function writes them. The function (tests/fixtures/provided/streaming, a shell bootstrap
//! streaming with curl) writes chunk i, then waits until the test creates `go-i`, which the test does only
//! once chunk i reached it: every chunk arriving proves it was not held back until the next (no timing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use lmi_proto::v1::{
    self as pb, invoke_with_response_stream_response::Event, InvokeOutcome as Out,
};
use serde_json::json;
use support::*;

fn streaming_spec(function: &str) -> pb::EnvironmentSpec {
    let mut spec = code_spec(
        function,
        "provided.al2023",
        "",
        &fixtures("provided/streaming"),
    );
    spec.max_concurrency = 1;
    spec
}

fn request(function: &str, payload: serde_json::Value) -> pb::InvokeRequest {
    pb::InvokeRequest {
        function_name: function.into(),
        payload: payload.to_string().into_bytes().into(),
        ..Default::default()
    }
}

async fn next_event(s: &mut tonic::Streaming<pb::InvokeWithResponseStreamResponse>) -> Event {
    tokio::time::timeout(Duration::from_secs(60), s.message())
        .await
        .expect("a message within 60 s")
        .expect("the stream is healthy")
        .expect("the stream is still open")
        .event
        .expect("every message has an event")
}

/// Reads chunks until `want` has arrived whole (a chunk of the function may come in more than one piece).
async fn read_chunk(s: &mut tonic::Streaming<pb::InvokeWithResponseStreamResponse>, want: &str) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        match next_event(s).await {
            Event::Chunk(c) => got.extend_from_slice(&c),
            other => panic!("expected {want:?}, got {other:?} after {got:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), want);
}

fn curl_missing() -> bool {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("curl").is_file());
    if !found {
        lmi_testkit::skip("the streaming bootstrap needs curl");
    }
    !found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chunk_reaches_the_grpc_caller_before_the_next_is_written() {
    require_root!();
    if curl_missing() {
        return;
    }
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(streaming_spec("streamer")).await;
    let dir = shared_dir();
    let mut s = agent
        .client
        .invoke_with_response_stream(request(
            "streamer",
            json!({"dir": dir.path().display().to_string(), "chunks": 5}),
        ))
        .await
        .expect("the invoke starts")
        .into_inner();
    match next_event(&mut s).await {
        Event::Head(h) => {
            assert_eq!(h.environment_id, env.id);
            assert_eq!(h.content_type, "text/plain");
            assert!(!h.request_id.is_empty());
        }
        other => panic!("expected the head, got {other:?}"),
    }
    for i in 1..=5 {
        read_chunk(&mut s, &format!("chunk-{i}\n")).await;
        // Only now may the function write the next chunk.
        std::fs::write(dir.path().join(format!("go-{i}")), "").unwrap();
    }
    match next_event(&mut s).await {
        Event::Complete(c) => {
            assert_eq!(c.outcome(), Out::Success, "{c:?}");
            assert!(c.error.is_none());
        }
        other => panic!("expected the completion, got {other:?}"),
    }
    assert!(
        s.message().await.unwrap().is_none(),
        "nothing after the end"
    );
    wait_in_flight(&mut agent, &env.id, 0).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_does_not_stream_answers_in_one_chunk() {
    require_root!();
    if curl_missing() {
        return;
    }
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(streaming_spec("whole")).await;
    let mut s = agent
        .client
        .invoke_with_response_stream(request("whole", json!({"x": 1})))
        .await
        .expect("the invoke starts")
        .into_inner();
    assert!(matches!(next_event(&mut s).await, Event::Head(_)));
    match next_event(&mut s).await {
        Event::Chunk(c) => {
            let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
            assert_eq!(v, json!({"echo": {"x": 1}}));
        }
        other => panic!("expected one chunk, got {other:?}"),
    }
    match next_event(&mut s).await {
        Event::Complete(c) => assert_eq!(c.outcome(), Out::Success, "{c:?}"),
        other => panic!("expected the completion, got {other:?}"),
    }
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_cancels_mid_stream_frees_the_slot() {
    require_root!();
    if curl_missing() {
        return;
    }
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(streaming_spec("cancelled")).await;
    let dir = shared_dir();
    let mut s = agent
        .client
        .invoke_with_response_stream(request(
            "cancelled",
            json!({"dir": dir.path().display().to_string(), "chunks": 3}),
        ))
        .await
        .expect("the invoke starts")
        .into_inner();
    assert!(matches!(next_event(&mut s).await, Event::Head(_)));
    read_chunk(&mut s, "chunk-1\n").await;
    assert_eq!(agent.get(&env.id).await.in_flight, 1);
    // The function now waits for go-1; the caller goes away instead.
    drop(s);
    wait_in_flight(&mut agent, &env.id, 0).await;
    // Let the function finish its (no longer wanted) stream; the environment serves the next invoke.
    for i in 1..=2 {
        std::fs::write(dir.path().join(format!("go-{i}")), "").unwrap();
    }
    let r = agent
        .invoke("cancelled", json!({"after": true}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    assert_eq!(payload_json(&r), json!({"echo": {"after": true}}));
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_streaming_invoke_is_the_calls_status() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let status = agent
        .client
        .invoke_with_response_stream(request("nobody", json!({})))
        .await
        .expect_err("no environment");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    agent.stop_and_assert_clean(&[]);
}
