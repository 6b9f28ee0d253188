//! The Java runtimes (`runtime-shims/java`) against the real daemon and real JVMs: every handler style, function
//! and init errors, timeouts, the context, and N invokes overlapping on the shim's thread pool.
//! The test functions are tests/fixtures/java (built, cached, by its build.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use serde_json::json;
use support::*;
use tonic::Code;

/// The runtime every test uses unless it says otherwise: the JDK of this host's `java` (17 here).
const RUNTIME: &str = "java17";

/// The fixtures' code directory, built once per test binary (the script is cached and takes a lock).
fn task_root() -> PathBuf {
    built_fixture("java")
}

fn java_spec(function: &str, handler: &str) -> pb::EnvironmentSpec {
    code_spec(function, RUNTIME, handler, &task_root())
}

fn gate(dir: &std::path::Path, count: usize) -> serde_json::Value {
    json!({"action": "gate", "dir": dir.display().to_string(), "count": count, "max_s": 120})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_event_reaches_every_supported_handler_style_and_the_result_comes_back() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let cases = [
        ("iface", "fixtures.Actions::handleRequest"),
        ("iface-default", "fixtures.Actions"),
        ("plain-static", "fixtures.Plain::echo"),
        ("plain-bytes", "fixtures.Plain::bytes"),
        ("plain-streams", "fixtures.Plain::streams"),
        ("stream-iface", "fixtures.Streamer"),
    ];
    let mut created = Vec::new();
    for (function, handler) in cases {
        let mut spec = java_spec(function, handler);
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
            "iface" | "iface-default" => {
                assert_eq!(v["event"], event);
                assert_eq!(v["requestId"], r.request_id.as_str());
                assert_eq!(v["greeting"], "hello, java", "class from lib/greeter.jar");
                assert!(v["thread"].as_str().unwrap().starts_with("lmi-invoke-"));
            }
            "plain-static" => {
                assert_eq!(v["plain"], event);
                assert_eq!(v["requestId"], r.request_id.as_str());
            }
            "plain-bytes" => assert_eq!(v["length"], event.to_string().len()),
            "plain-streams" => {
                assert_eq!(v["streamed"], event);
                assert_eq!(v["function"], function);
            }
            "stream-iface" => assert_eq!(v, event),
            _ => unreachable!(),
        }
    }
    let pids: Vec<u32> = created.iter().map(|e| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_error_reaches_the_caller_with_class_message_and_stack() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(java_spec("jerr", "fixtures.Actions::handleRequest"))
        .await;
    let r = agent
        .invoke(
            "jerr",
            json!({"action": "raise", "message": "bad input: 42"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "java.lang.IllegalArgumentException");
    assert_eq!(e.error_message, "bad input: 42");
    assert!(
        e.stack_trace[0].starts_with("fixtures.Actions.validate(Actions.java:"),
        "{:?}",
        e.stack_trace
    );
    assert!(
        e.stack_trace
            .iter()
            .all(|f| !f.starts_with("lmi.lambda.runtime.") && !f.contains("reflect")),
        "the shim's frames are cut: {:?}",
        e.stack_trace
    );
    // The thread that ran it serves the next invoke.
    let ok = agent
        .invoke("jerr", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(ok.outcome(), Out::Success);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_errors_fail_the_environment_with_their_reason() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let cases = [
        (
            "static-init",
            "fixtures.BadInit::handleRequest",
            "java.lang.IllegalStateException",
            "boom at init",
        ),
        (
            "no-class",
            "fixtures.DoesNotExist::handleRequest",
            "Runtime.ClassNotFound",
            "fixtures.DoesNotExist",
        ),
        (
            "no-method",
            "fixtures.Actions::nothingHere",
            "Runtime.HandlerNotFound",
            "nothingHere",
        ),
        (
            "bad-signature",
            "fixtures.Plain::wrong",
            "Runtime.HandlerNotFound",
            "supported signature",
        ),
        (
            "malformed",
            "fixtures.Actions::",
            "Runtime.MalformedHandlerName",
            "fixtures.Actions::",
        ),
    ];
    let mut created = Vec::new();
    for (function, handler, _, _) in cases {
        let mut spec = java_spec(function, handler);
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
    let mut spec = java_spec("jslow", "fixtures.Actions");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 1;
    let env = agent.create_ready(spec).await;
    let dir = shared_dir();
    // The slow invoke holds a thread (it waits for a file that never comes) past its 1 s deadline.
    let mut never = gate(dir.path(), 99);
    never["max_s"] = json!(4);
    let slow = tokio::spawn(invoke(agent.client.clone(), "jslow", never));
    wait_for_files(dir.path(), 1).await;
    let quick = agent
        .invoke("jslow", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(quick.outcome(), Out::Success, "{quick:?}");
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Timeout);
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Sandbox.Timedout");
    assert_eq!(e.error_message, "Task timed out after 1.00 seconds");
    // The code was not killed: the environment stays READY and keeps serving.
    assert_eq!(agent.get(&env.id).await.state(), St::Ready);
    let after = agent
        .invoke("jslow", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(after.outcome(), Out::Success);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_and_environment_variables_describe_the_function_and_the_invoke() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = java_spec("jctx", "fixtures.Actions");
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
            function_name: "jctx".into(),
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
    assert_eq!(v["functionName"], "jctx");
    assert_eq!(v["functionVersion"], "7");
    assert!(
        v["invokedFunctionArn"]
            .as_str()
            .unwrap()
            .ends_with(":function:jctx:7"),
        "{v}"
    );
    assert_eq!(v["memoryLimitInMB"], 4096);
    assert_eq!(v["logGroupName"], "/aws/lambda/jctx");
    let stream = v["logStreamName"].as_str().unwrap();
    assert!(stream.ends_with(&format!("[7]{}", env.id)), "{stream}");
    // The deadline is the invoke's own: at most 30 s after the handler read the clock, and still ahead.
    let (deadline, now) = (
        v["deadlineMs"].as_i64().unwrap(),
        v["nowMs"].as_i64().unwrap(),
    );
    assert!(deadline > now && deadline <= now + 30_000, "{v}");
    let remaining = v["remainingTimeInMillis"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 30_000, "{v}");
    assert_eq!(v["javaSpecVersion"], "17");
    assert_eq!(v["env"]["GREETING"], "hi from the spec");
    assert_eq!(v["env"]["AWS_EXECUTION_ENV"], "AWS_Lambda_java17");
    assert_eq!(v["env"]["AWS_LAMBDA_MAX_CONCURRENCY"], "3");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_concurrent_invokes_overlap_on_n_threads_of_one_jvm() {
    require_root!();
    let mut agent = TestAgent::start().await;
    const N: usize = 8;
    let mut spec = java_spec("joverlap", "fixtures.Actions");
    spec.max_concurrency = N as u32;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let dir = shared_dir();
    // Each handler announces itself with a file and returns only once all N are present: they can only all
    // succeed if all N were in flight at the same time, in the one JVM.
    let calls: Vec<_> = (0..N)
        .map(|_| {
            tokio::spawn(invoke(
                agent.client.clone(),
                "joverlap",
                gate(dir.path(), N),
            ))
        })
        .collect();
    let mut ids = Vec::new();
    let mut threads = std::collections::BTreeSet::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        assert_eq!(r.environment_id, env.id);
        let v = payload_json(&r);
        assert_eq!(v["seen"].as_array().unwrap().len(), N, "{v}");
        threads.insert(v["thread"].as_str().unwrap().to_owned());
        ids.push(r.request_id.clone());
    }
    assert_eq!(threads.len(), N, "one pool thread per invoke: {threads:?}");
    ids.sort();
    let mut seen: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    seen.sort();
    assert_eq!(ids, seen, "each invoke ran exactly once");
    // One process: the JVM is the environment's only runtime process.
    let dirs = agent.env_cgroup_dirs(&env.id);
    assert_eq!(cgroup_pids(&dirs["memory"]), vec![env.pid]);
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_java_runtime_of_the_catalog_runs_on_its_own_jdk_or_is_reported_unavailable() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let host = agent.host().await;
    let java: Vec<_> = host
        .runtimes
        .iter()
        .filter(|r| r.id.starts_with("java"))
        .cloned()
        .collect();
    let ids: Vec<&str> = java.iter().map(|r| r.id.as_str()).collect();
    assert!(
        ids.contains(&"java17") && ids.contains(&"java21"),
        "{ids:?}"
    );
    let mut pids = Vec::new();
    for rt in &java {
        assert_eq!(rt.default_concurrency_per_vcpu, 32, "{}", rt.id);
        let function = format!("j-{}", rt.id);
        let mut spec = java_spec(&function, "fixtures.Actions");
        spec.runtime = rt.id.clone();
        spec.max_concurrency = 2;
        if !rt.available {
            eprintln!("{} unavailable here: {}", rt.id, rt.unavailable_reason);
            assert!(!rt.unavailable_reason.is_empty());
            let s = agent
                .client
                .create_environment(pb::CreateEnvironmentRequest { spec: Some(spec) })
                .await
                .unwrap_err();
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            continue;
        }
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let r = agent
            .invoke(&function, json!({"action": "context"}))
            .await
            .unwrap();
        assert_eq!(r.outcome(), Out::Success, "{}: {r:?}", rt.id);
        let v = payload_json(&r);
        assert_eq!(v["javaSpecVersion"], rt.id.trim_start_matches("java"));
        assert_eq!(
            v["env"]["AWS_EXECUTION_ENV"],
            format!("AWS_Lambda_{}", rt.id)
        );
    }
    agent.stop_and_assert_clean(&pids);
}
