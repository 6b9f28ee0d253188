//! The Java runtimes (`runtime-shims/java`) against the real daemon and real JVMs: every handler style, function
//! and init errors, timeouts, the context, and N invokes overlapping on the shim's thread pool.
//! The test functions are tests/fixtures/java (built, cached, by its build.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use scenarios::java;
use serde_json::json;
use support::*;
use tonic::Code;

/// The runtime every test uses unless it says otherwise: the JDK of this host's `java` (17 here).
const RUNTIME: &str = "java17";

fn java_spec(function: &str, handler: &str) -> pb::EnvironmentSpec {
    java(RUNTIME).spec_for(function, handler)
}

scenario_tests!(
    java17 = java(RUNTIME);
    echo, concurrency, function_error, timeout, init_error, logs, context
);

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
