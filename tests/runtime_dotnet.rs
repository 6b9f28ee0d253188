//! The .NET runtime (`runtime-shims/dotnet`, run under Mono here) against the real daemon: every handler shape,
//! function and init errors, timeouts, the context, and N invokes in flight as tasks of one process.
//! The test functions are tests/fixtures/dotnet (built, cached, by its build.sh with mcs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use scenarios::{dotnet, Answer};
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
        (
            "task-of-string",
            "Fixtures::Fixtures.Actions::Handle",
            Answer::Actions,
        ),
        (
            "static-string",
            "Fixtures::Fixtures.Plain::Echo",
            Answer::Plain,
        ),
        ("bytes", "Fixtures::Fixtures.Plain::Bytes", Answer::Bytes),
        (
            "streams",
            "Fixtures::Fixtures.Plain::Streams",
            Answer::Streams,
        ),
    ];
    scenarios::handler_shapes(agent, &dotnet(), &cases, |env, r, v, event| {
        assert_eq!(v["event"], *event);
        assert_eq!(v["requestId"], r.request_id.as_str());
        assert_eq!(v["greeting"], "hello, dotnet", "Fixtures.Lib.dll resolved");
        assert_eq!(v["pid"], pid_in_namespace(env.pid));
    })
    .await;
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
