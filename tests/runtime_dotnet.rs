//! The .NET runtime (`runtime-shims/dotnet`, run under Mono here) against the real daemon: every handler shape,
//! function and init errors, timeouts, the context, and N invokes in flight as tasks of one process.
//! The test functions are tests/fixtures/dotnet (built, cached, by its build.sh with mcs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use serde_json::json;
use support::*;
use tonic::Code;

const RUNTIME: &str = "dotnet8";

/// The fixtures' code directory, built once per test binary (the script is cached and takes a lock).
fn task_root() -> PathBuf {
    built_fixture("dotnet")
}

/// Skips the calling test (with the reason) when the host's catalog says dotnet8 is unavailable (no Mono).
macro_rules! require_dotnet {
    ($agent:expr) => {
        let host = $agent.host().await;
        let rt = host.runtimes.iter().find(|r| r.id == RUNTIME).unwrap();
        assert_eq!(rt.default_concurrency_per_vcpu, 32);
        if !rt.available {
            eprintln!("skipping: {RUNTIME} unavailable: {}", rt.unavailable_reason);
            return;
        }
    };
}

fn dotnet_spec(function: &str, handler: &str) -> pb::EnvironmentSpec {
    code_spec(function, RUNTIME, handler, &task_root())
}

fn gate(dir: &std::path::Path, count: usize) -> serde_json::Value {
    json!({"action": "gate", "dir": dir.display().to_string(), "count": count, "max_s": 120})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_event_reaches_every_supported_handler_shape_and_the_result_comes_back() {
    require_root!();
    let mut agent = TestAgent::start().await;
    require_dotnet!(agent);
    let cases = [
        ("task-of-string", "Fixtures::Fixtures.Actions::Handle"),
        ("static-string", "Fixtures::Fixtures.Plain::Echo"),
        ("bytes", "Fixtures::Fixtures.Plain::Bytes"),
        ("streams", "Fixtures::Fixtures.Plain::Streams"),
    ];
    let mut created = Vec::new();
    for (function, handler) in cases {
        let mut spec = dotnet_spec(function, handler);
        spec.max_concurrency = 2;
        created.push(agent.create(spec).await);
    }
    let event = json!({"action": "echo", "name": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    for ((function, _), env) in cases.iter().zip(&created) {
        let function = *function;
        let env = agent.wait_state(&env.id, &[St::Ready, St::Failed]).await;
        assert_eq!(env.state(), St::Ready, "{function}: {:?}", env.failure);
        let r = agent.invoke(function, event.clone()).await.unwrap();
        assert_eq!(r.outcome(), Out::Success, "{function}: {r:?}");
        let v = payload_json(&r);
        match function {
            "task-of-string" => {
                assert_eq!(v["event"], event);
                assert_eq!(v["requestId"], r.request_id.as_str());
                assert_eq!(v["greeting"], "hello, dotnet", "Fixtures.Lib.dll resolved");
                assert_eq!(v["pid"], pid_in_namespace(env.pid));
            }
            "static-string" => {
                assert_eq!(v["plain"], event);
                assert_eq!(v["requestId"], r.request_id.as_str());
            }
            "bytes" => assert_eq!(v["length"], event.to_string().len()),
            "streams" => {
                assert_eq!(v["streamed"], event);
                assert_eq!(v["function"], function);
            }
            _ => unreachable!(),
        }
    }
    let pids: Vec<u32> = created.iter().map(|e| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_error_reaches_the_caller_with_type_message_and_stack() {
    require_root!();
    let mut agent = TestAgent::start().await;
    require_dotnet!(agent);
    let env = agent
        .create_ready(dotnet_spec("nerr", "Fixtures::Fixtures.Actions::Handle"))
        .await;
    let r = agent
        .invoke(
            "nerr",
            json!({"action": "raise", "message": "bad input: 42"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "ArgumentException");
    assert_eq!(e.error_message, "bad input: 42");
    assert!(
        e.stack_trace[0].starts_with("at Fixtures.Actions.Validate"),
        "{:?}",
        e.stack_trace
    );
    assert!(
        e.stack_trace
            .iter()
            .all(|f| !f.contains("Lmi.Lambda.RuntimeSupport") && !f.contains("System.Reflection")),
        "the shim's frames are cut: {:?}",
        e.stack_trace
    );
    let ok = agent
        .invoke("nerr", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(ok.outcome(), Out::Success);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_errors_fail_the_environment_with_their_reason() {
    require_root!();
    let mut agent = TestAgent::start().await;
    require_dotnet!(agent);
    let cases = [
        (
            "static-ctor",
            "Fixtures::Fixtures.BadInit::Handle",
            "InvalidOperationException",
            "boom at init",
        ),
        (
            "no-assembly",
            "Nope::Fixtures.Actions::Handle",
            "Runtime.AssemblyNotFound",
            "Nope",
        ),
        (
            "no-type",
            "Fixtures::Fixtures.DoesNotExist::Handle",
            "Runtime.ClassNotFound",
            "Fixtures.DoesNotExist",
        ),
        (
            "no-method",
            "Fixtures::Fixtures.Actions::NothingHere",
            "Runtime.HandlerNotFound",
            "NothingHere",
        ),
        (
            "bad-signature",
            "Fixtures::Fixtures.Plain::Wrong",
            "Runtime.HandlerNotFound",
            "supported signature",
        ),
        (
            "malformed",
            "Fixtures.Actions::Handle",
            "Runtime.MalformedHandlerName",
            "Fixtures.Actions::Handle",
        ),
    ];
    let mut created = Vec::new();
    for (function, handler, _, _) in cases {
        let mut spec = dotnet_spec(function, handler);
        spec.max_concurrency = 3;
        created.push(agent.create(spec).await);
    }
    for ((function, _, error_type, message), env) in cases.iter().zip(&created) {
        let env = agent.wait_state(&env.id, &[St::Failed, St::Ready]).await;
        assert_eq!(env.state(), St::Failed, "{function}");
        let f = env.failure.unwrap();
        assert_eq!(&f.error_type, error_type, "{function}: {f:?}");
        assert!(f.message.contains(message), "{function}: {f:?}");
        assert_eq!(env.ready_at, None);
        let s = agent.invoke(function, json!({})).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{function}");
    }
    let pids: Vec<u32> = created.iter().map(|e| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_invoke_gets_sandbox_timedout_and_others_continue() {
    require_root!();
    let mut agent = TestAgent::start().await;
    require_dotnet!(agent);
    let mut spec = dotnet_spec("nslow", "Fixtures::Fixtures.Actions::Handle");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 1;
    let env = agent.create_ready(spec).await;
    let dir = shared_dir();
    // The slow invoke waits for files that never come, past its 1 s deadline (and gives up after 4 s).
    let mut never = gate(dir.path(), 99);
    never["max_s"] = json!(4);
    let slow = tokio::spawn(invoke(agent.client.clone(), "nslow", never));
    wait_for_files(dir.path(), 1).await;
    let quick = agent
        .invoke("nslow", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(quick.outcome(), Out::Success, "{quick:?}");
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Timeout);
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Sandbox.Timedout");
    assert_eq!(e.error_message, "Task timed out after 1.00 seconds");
    assert_eq!(agent.get(&env.id).await.state(), St::Ready);
    let after = agent
        .invoke("nslow", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(after.outcome(), Out::Success);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_and_environment_variables_describe_the_function_and_the_invoke() {
    require_root!();
    let mut agent = TestAgent::start().await;
    require_dotnet!(agent);
    let mut spec = dotnet_spec("nctx", "Fixtures::Fixtures.Actions::Handle");
    spec.function.as_mut().unwrap().version = "7".into();
    spec.memory_mib = 4096;
    spec.max_concurrency = 3;
    spec.timeout_seconds = 30;
    spec.environment
        .insert("GREETING".into(), "hi from the spec".into());
    let env = agent.create_ready(spec).await;
    let r = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: "nctx".into(),
            function_version: "7".into(),
            payload: json!({"action": "context"}).to_string().into_bytes().into(),
            request_id: "ctx-request-1".into(),
            client_context: r#"{"custom":{"k":"v"}}"#.into(),
            trace_id: "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["requestId"], "ctx-request-1");
    assert_eq!(v["clientContext"], r#"{"custom":{"k":"v"}}"#);
    assert_eq!(
        v["traceId"],
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
    );
    assert_eq!(v["functionName"], "nctx");
    assert_eq!(v["functionVersion"], "7");
    assert!(
        v["invokedFunctionArn"]
            .as_str()
            .unwrap()
            .ends_with(":function:nctx:7"),
        "{v}"
    );
    assert_eq!(v["memoryLimitInMB"], 4096);
    assert_eq!(v["logGroupName"], "/aws/lambda/nctx");
    let stream = v["logStreamName"].as_str().unwrap();
    assert!(stream.ends_with(&format!("[7]{}", env.id)), "{stream}");
    let (deadline, now) = (
        v["deadlineMs"].as_i64().unwrap(),
        v["nowMs"].as_i64().unwrap(),
    );
    assert!(deadline > now && deadline <= now + 30_000, "{v}");
    let remaining = v["remainingTimeInMillis"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 30_000, "{v}");
    assert_eq!(v["env"]["GREETING"], "hi from the spec");
    assert_eq!(v["env"]["AWS_EXECUTION_ENV"], "AWS_Lambda_dotnet8");
    assert_eq!(v["env"]["AWS_LAMBDA_MAX_CONCURRENCY"], "3");
    agent.stop_and_assert_clean(&[env.pid]);
}

/// N gate invokes into one environment: they can only all succeed if all N were in flight at once.
async fn assert_n_overlap(agent: &mut TestAgent, function: &'static str, handler: &str) {
    const N: usize = 8;
    let mut spec = dotnet_spec(function, handler);
    spec.max_concurrency = N as u32;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let dir = shared_dir();
    let calls: Vec<_> = (0..N)
        .map(|_| tokio::spawn(invoke(agent.client.clone(), function, gate(dir.path(), N))))
        .collect();
    let mut ids = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{handler}: {r:?}");
        assert_eq!(r.environment_id, env.id);
        let v = payload_json(&r);
        assert_eq!(v["seen"].as_array().unwrap().len(), N, "{v}");
        assert_eq!(
            v["pid"],
            pid_in_namespace(env.pid),
            "one process serves every invoke"
        );
        ids.push(r.request_id.clone());
    }
    ids.sort();
    let mut seen: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    seen.sort();
    assert_eq!(ids, seen, "each invoke ran exactly once");
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.delete(&env.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_concurrent_invokes_overlap_as_tasks_of_one_process_async_and_blocking() {
    require_root!();
    let mut agent = TestAgent::start().await;
    require_dotnet!(agent);
    assert_n_overlap(
        &mut agent,
        "noverlap-async",
        "Fixtures::Fixtures.Actions::Handle",
    )
    .await;
    assert_n_overlap(
        &mut agent,
        "noverlap-sync",
        "Fixtures::Fixtures.Actions::SyncGate",
    )
    .await;
    agent.stop_and_assert_clean(&[]);
}
