//! The .NET runtime (`runtime-shims/dotnet`, run under Mono here) against the real daemon: every handler shape,
//! function and init errors, timeouts, the context, and N invokes in flight as tasks of one process.
//! The test functions are tests/fixtures/dotnet (built, cached, by its build.sh with mcs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use scenarios::dotnet;
use serde_json::json;
use support::*;

const RUNTIME: &str = "dotnet8";

/// Skips the calling test (with the reason) when the host's catalog says dotnet8 is unavailable (no Mono).
macro_rules! require_dotnet {
    ($agent:expr) => {
        let host = $agent.host().await;
        let rt = host.runtimes.iter().find(|r| r.id == RUNTIME).unwrap();
        assert_eq!(rt.default_concurrency_per_vcpu, 32);
        if !rt.available {
            lmi_testkit::skip(&format!("{RUNTIME} unavailable: {}", rt.unavailable_reason));
            return;
        }
    };
}

fn dotnet_spec(function: &str, handler: &str) -> pb::EnvironmentSpec {
    dotnet().spec_for(function, handler)
}

scenario_tests!(
    dotnet8 = dotnet();
    echo, concurrency, function_error, timeout, init_error, logs, context
);

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

/// A blocking handler: each invoke holds a thread of the pool while it waits, and still all N overlap.
fn dotnet_blocking() -> scenarios::Runtime {
    scenarios::Runtime {
        name: "dotnet8-sync",
        handler: "Fixtures::Fixtures.Actions::SyncGate",
        ..dotnet()
    }
}

scenario_tests!(dotnet8_blocking = dotnet_blocking(); concurrency);
