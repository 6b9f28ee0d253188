//! Response streaming through the real daemon: `InvokeWithResponseStream` carries a function's chunks to the
//! caller as the function writes them. The function (tests/fixtures/provided/streaming, a shell bootstrap
//! streaming with curl) writes chunk i, then waits until the test creates `go-i`, which the test does only
//! once chunk i reached it: every chunk arriving proves it was not held back until the next (no timing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
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

/// Starts a streaming invoke of the rendezvous function `function` that writes `chunks` lines, each after the
/// go file of the one before appears in `dir`.
async fn open_stream(
    agent: &mut TestAgent,
    function: &str,
    dir: &std::path::Path,
    chunks: u32,
) -> tonic::Streaming<pb::InvokeWithResponseStreamResponse> {
    agent
        .client
        .invoke_with_response_stream(request(
            function,
            json!({"dir": dir.display().to_string(), "chunks": chunks}),
        ))
        .await
        .expect("the invoke starts")
        .into_inner()
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

/// A fresh agent with one READY environment of the streaming Node function `function`; None (the test
/// skips, and says why) when curl, which the bootstrap needs, is missing.
async fn streaming_agent(function: &str) -> Option<(TestAgent, pb::Environment)> {
    if curl_missing() {
        return None;
    }
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(streaming_spec(function)).await;
    Some((agent, env))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chunk_reaches_the_grpc_caller_before_the_next_is_written() {
    require_root!();
    let Some((mut agent, env)) = streaming_agent("streamer").await else {
        return;
    };
    let dir = shared_dir();
    let mut s = open_stream(&mut agent, "streamer", dir.path(), 5).await;
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
    let Some((mut agent, env)) = streaming_agent("whole").await else {
        return;
    };
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
    let Some((mut agent, env)) = streaming_agent("cancelled").await else {
        return;
    };
    let dir = shared_dir();
    let mut s = open_stream(&mut agent, "cancelled", dir.path(), 3).await;
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

// ---------------------------------------------------------------------------------------------------------
// The Invoke API's InvokeWithResponseStream, read by boto3, from a Node function (awslambda.streamifyResponse).

const INVOKE_API: &str = "[invoke_api]\nlisten = \"127.0.0.1:0\"\n";

async fn agent_with_invoke_api() -> (TestAgent, std::net::SocketAddr) {
    let agent = TestAgent::start_with(AgentOptions {
        extra_config: INVOKE_API.into(),
        ..Default::default()
    })
    .await;
    let addr = agent.invoke_api_addr();
    (agent, addr)
}

fn node_streaming_spec(function: &str) -> pb::EnvironmentSpec {
    code_spec(
        function,
        "nodejs22.x",
        "streaming.handler",
        &fixtures("node"),
    )
}

/// Runs one call through tests/aws_sdk/invoke_stream.py (boto3's invoke_with_response_stream), on a thread
/// of its own so that the test can go on while it reads.
async fn boto3_stream(addr: std::net::SocketAddr, call: serde_json::Value) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let script = repo().join("tests/aws_sdk/invoke_stream.py");
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(format!("http://{addr}"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(call.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "boto3 script failed ({:?}); is boto3 installed (tests/setup.sh)?\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    })
    .await
    .unwrap()
}

fn chunks_text(r: &serde_json::Value) -> String {
    r["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["PayloadChunk"].as_str())
        .collect()
}

fn completion(r: &serde_json::Value) -> serde_json::Value {
    let events = r["events"].as_array().unwrap();
    let last = events.last().expect("at least the completion");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e.get("PayloadChunk").is_some()),
        "chunks, then one completion: {r}"
    );
    last["InvokeComplete"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_five_chunks_of_a_node_function_as_they_are_written() {
    require_root!();
    let (mut agent, addr) = agent_with_invoke_api().await;
    let env = agent.create_ready(node_streaming_spec("nodestream")).await;
    let dir = shared_dir();
    // The reader creates go-i once chunk i reached it; the function writes chunk i+1 only after that.
    let r = boto3_stream(
        addr,
        json!({
            "function": "nodestream",
            "payload": {"chunks": 5, "dir": dir.path().display().to_string()},
            "gate_dir": dir.path().display().to_string(),
        }),
    )
    .await;
    assert_eq!(r["StatusCode"], 200, "{r}");
    assert_eq!(r["ExecutedVersion"], "$LATEST");
    assert_eq!(
        chunks_text(&r),
        "chunk-1\nchunk-2\nchunk-3\nchunk-4\nchunk-5\n"
    );
    let done = completion(&r);
    assert!(done.get("ErrorCode").is_none(), "{done}");
    for i in 1..=4 {
        assert!(dir.path().join(format!("go-{i}")).exists());
    }
    wait_in_flight(&mut agent, &env.id, 0).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_gets_a_mid_stream_error_as_the_invoke_complete_error() {
    require_root!();
    let (mut agent, addr) = agent_with_invoke_api().await;
    let env = agent.create_ready(node_streaming_spec("nodebreaks")).await;
    let dir = shared_dir();
    let r = boto3_stream(
        addr,
        json!({
            "function": "nodebreaks",
            "payload": {"chunks": 3, "dir": dir.path().display().to_string(), "fail_after": 2},
            "gate_dir": dir.path().display().to_string(),
        }),
    )
    .await;
    assert_eq!(r["StatusCode"], 200, "{r}");
    assert_eq!(chunks_text(&r), "chunk-1\nchunk-2\n");
    let done = completion(&r);
    assert_eq!(done["ErrorCode"], "Error", "{done}");
    let details: serde_json::Value =
        serde_json::from_str(done["ErrorDetails"].as_str().unwrap()).unwrap();
    assert_eq!(details["errorMessage"], "broke after chunk 2");
    wait_in_flight(&mut agent, &env.id, 0).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_dry_run_buffered_function_and_refusals_on_the_streaming_api() {
    require_root!();
    if curl_missing() {
        return;
    }
    let (mut agent, addr) = agent_with_invoke_api().await;
    let env = agent.create_ready(streaming_spec("plain")).await;
    // DryRun: 204, no events.
    let r = boto3_stream(
        addr,
        json!({"function": "plain", "payload": {}, "type": "DryRun"}),
    )
    .await;
    assert_eq!(r["StatusCode"], 204, "{r}");
    // A function that does not stream answers in one chunk.
    let r = boto3_stream(addr, json!({"function": "plain", "payload": {"x": 1}})).await;
    assert_eq!(r["StatusCode"], 200, "{r}");
    let events = r["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{r}");
    let v: serde_json::Value = serde_json::from_str(&chunks_text(&r)).unwrap();
    assert_eq!(v, json!({"echo": {"x": 1}}));
    assert!(completion(&r).get("ErrorCode").is_none());
    // No such function: boto3's modeled ResourceNotFoundException.
    let r = boto3_stream(addr, json!({"function": "nobody", "payload": {}})).await;
    assert_eq!(r["code"], "ResourceNotFoundException", "{r}");
    assert_eq!(r["status"], 404);
    agent.stop_and_assert_clean(&[env.pid]);
}

// ---------------------------------------------------------------------------------------------------------
// The official Node.js client (npm aws-lambda-ric), unmodified, in its own streaming mode.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_client_streams_chunk_by_chunk() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(scenarios::node_ric().spec_for("ricstream", "streaming.handler"))
        .await;
    let dir = shared_dir();
    let mut s = open_stream(&mut agent, "ricstream", dir.path(), 3).await;
    assert!(matches!(next_event(&mut s).await, Event::Head(_)));
    for i in 1..=3 {
        read_chunk(&mut s, &format!("chunk-{i}\n")).await;
        std::fs::write(dir.path().join(format!("go-{i}")), "").unwrap();
    }
    match next_event(&mut s).await {
        Event::Complete(c) => assert_eq!(c.outcome(), Out::Success, "{c:?}"),
        other => panic!("expected the completion, got {other:?}"),
    }
    // A mid-stream error (the client's trailers) is the completion's error, after the chunk before it.
    let mut s = agent
        .client
        .invoke_with_response_stream(request(
            "ricstream",
            json!({"dir": dir.path().display().to_string(), "chunks": 2, "fail_after": 1}),
        ))
        .await
        .expect("the invoke starts")
        .into_inner();
    assert!(matches!(next_event(&mut s).await, Event::Head(_)));
    read_chunk(&mut s, "chunk-1\n").await;
    match next_event(&mut s).await {
        Event::Complete(c) => {
            assert_eq!(c.outcome(), Out::FunctionError, "{c:?}");
            let e = c.error.unwrap();
            assert_eq!(e.error_message, "broke after chunk 1", "{e:?}");
        }
        other => panic!("expected the completion, got {other:?}"),
    }
    wait_in_flight(&mut agent, &env.id, 0).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

// ---------------------------------------------------------------------------------------------------------
// `lmictl invoke --stream`, the real binary against the real agent, its stdout read as it writes.

/// A running `lmictl invoke FUNCTION --stream --payload PAYLOAD`, its stdout read line by line on a thread.
struct LmictlStream {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LmictlStream {
    fn start(agent: &TestAgent, function: &str, payload: serde_json::Value) -> Self {
        let mut child = std::process::Command::new(LMICTL_BIN)
            .args(["--socket", &agent.socket.display().to_string()])
            .args([
                "invoke",
                function,
                "--stream",
                "--payload",
                &payload.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("lmictl");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut out = std::io::BufReader::new(out);
            loop {
                let mut line = String::new();
                match std::io::BufRead::read_line(&mut out, &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Self { child, lines }
    }

    /// The next line lmictl printed (with its newline), waiting at most 60 s for it.
    async fn line(&self) -> String {
        tokio::task::block_in_place(|| self.lines.recv_timeout(Duration::from_secs(60)))
            .expect("lmictl printed a line within 60 s")
    }

    /// Waits for lmictl to exit: its status, what else it printed, and its stderr.
    async fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        tokio::task::block_in_place(move || {
            let status = self.child.wait().unwrap();
            let rest: String = self.lines.iter().collect();
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr)
                .unwrap();
            (status, rest, stderr)
        })
    }
}

impl Drop for LmictlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmictl_prints_each_chunk_before_the_function_writes_the_next() {
    require_root!();
    let Some((mut agent, env)) = streaming_agent("lmictlstream").await else {
        return;
    };
    let dir = shared_dir();
    let lmictl = LmictlStream::start(
        &agent,
        "lmictlstream",
        json!({"dir": dir.path().display().to_string(), "chunks": 5}),
    );
    for i in 1..=5 {
        assert_eq!(lmictl.line().await, format!("chunk-{i}\n"));
        // lmictl printed chunk i; only now may the function write chunk i+1.
        assert!(!dir.path().join(format!("go-{i}")).exists());
        std::fs::write(dir.path().join(format!("go-{i}")), "").unwrap();
    }
    let (status, rest, stderr) = lmictl.finish().await;
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!((rest.as_str(), stderr.as_str()), ("", ""));
    wait_in_flight(&mut agent, &env.id, 0).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmictl_reports_a_mid_stream_error_after_the_chunks() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(node_streaming_spec("lmictlbreaks"))
        .await;
    let dir = shared_dir();
    let lmictl = LmictlStream::start(
        &agent,
        "lmictlbreaks",
        json!({"chunks": 3, "dir": dir.path().display().to_string(), "fail_after": 2}),
    );
    assert_eq!(lmictl.line().await, "chunk-1\n");
    std::fs::write(dir.path().join("go-1"), "").unwrap();
    assert_eq!(lmictl.line().await, "chunk-2\n");
    let (status, rest, stderr) = lmictl.finish().await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(rest, "");
    assert!(
        stderr.starts_with("FUNCTION_ERROR: Error: broke after chunk 2\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!("on environment {}\n", env.id)),
        "{stderr}"
    );
    wait_in_flight(&mut agent, &env.id, 0).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmictl_whose_stdout_closes_cancels_the_invoke_and_frees_the_slot() {
    require_root!();
    let Some((mut agent, env)) = streaming_agent("lmictlgone").await else {
        return;
    };
    let dir = shared_dir();
    let payload = json!({"dir": dir.path().display().to_string(), "chunks": 3});
    let mut child = std::process::Command::new(LMICTL_BIN)
        .args(["--socket", &agent.socket.display().to_string()])
        .args([
            "invoke",
            "lmictlgone",
            "--stream",
            "--payload",
            &payload.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lmictl");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| std::io::BufRead::read_line(&mut out, &mut line)).unwrap();
    assert_eq!(line, "chunk-1\n");
    assert_eq!(agent.get(&env.id).await.in_flight, 1);
    // The reader goes away; lmictl finds out when it writes chunk 2.
    drop(out);
    std::fs::write(dir.path().join("go-1"), "").unwrap();
    let done = tokio::task::block_in_place(|| child.wait_with_output()).unwrap();
    assert_eq!(done.status.code(), Some(3), "{done:?}");
    assert_eq!(
        String::from_utf8_lossy(&done.stderr),
        "error: stdout was closed; the invoke was cancelled\n"
    );
    // The function still waits for go-2: the slot was freed by the cancellation, not by its end.
    wait_in_flight(&mut agent, &env.id, 0).await;
    std::fs::write(dir.path().join("go-2"), "").unwrap();
    let r = agent
        .invoke("lmictlgone", json!({"after": true}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    agent.stop_and_assert_clean(&[env.pid]);
}
