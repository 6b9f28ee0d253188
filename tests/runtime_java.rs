//! The Java runtimes (`runtime-shims/java`) against the real daemon and real JVMs: every handler style, function
//! and init errors, timeouts, the context, and N invokes overlapping on the shim's thread pool.
//! The test functions are tests/fixtures/java (built, cached, by its build.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use scenarios::{java, Answer};
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
    let agent = TestAgent::start().await;
    let cases = [
        ("iface", "fixtures.Actions::handleRequest", Answer::Actions),
        ("iface-default", "fixtures.Actions", Answer::Actions),
        ("plain-static", "fixtures.Plain::echo", Answer::Plain),
        ("plain-bytes", "fixtures.Plain::bytes", Answer::Bytes),
        ("plain-streams", "fixtures.Plain::streams", Answer::Streams),
        ("stream-iface", "fixtures.Streamer", Answer::Event),
    ];
    scenarios::handler_shapes(agent, &java(RUNTIME), &cases, |_, r, v, event| {
        assert_eq!(v["event"], *event);
        assert_eq!(v["requestId"], r.request_id.as_str());
        assert_eq!(v["greeting"], "hello, java", "class from lib/greeter.jar");
        assert!(v["thread"].as_str().unwrap().starts_with("lmi-invoke-"));
    })
    .await;
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
            let s = agent.create_refused(spec).await;
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
