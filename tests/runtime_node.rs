//! Node.js functions against the real daemon: the nodejs20.x and nodejs22.x runtimes (runtime-shims/node) and
//! the official client `aws-lambda-ric` as a provided.al2023 bootstrap, in multi-concurrent mode. Handlers are in
//! tests/fixtures/node. tests/setup.sh installs Node 22 (`node22`) and builds the official client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use scenarios::{node, node_ric};
use serde_json::{json, Value};
use support::*;
use tonic::Code;

const NODE_RUNTIMES: [&str; 2] = ["nodejs20.x", "nodejs22.x"];

scenario_tests!(
    node20 = node("nodejs20.x");
    echo, concurrency, function_error, timeout, init_error, logs
);
scenario_tests!(
    node22 = node("nodejs22.x");
    echo, concurrency, function_error, timeout, init_error, logs
);
// The official Node.js runtime interface client (npm aws-lambda-ric >= 4), unmodified.
scenario_tests!(node_ric = node_ric(); echo, concurrency, function_error, timeout, logs);

/// A spec for `handler` in tests/fixtures/node on `runtime`.
fn node_spec(function: &str, runtime: &str, handler: &str) -> pb::EnvironmentSpec {
    code_spec(function, runtime, handler, &fixtures("node"))
}

/// A function name unique per runtime: `nodejs22.x` → `name-22`.
fn fname(name: &str, runtime: &str) -> String {
    let major = runtime.trim_start_matches("nodejs").trim_end_matches(".x");
    format!("{name}-{major}")
}

fn major_of(runtime: &str) -> &str {
    runtime.trim_start_matches("nodejs").trim_end_matches(".x")
}

/// Both Node runtimes must be available here: tests/setup.sh installs what they need.
async fn assert_node_runtimes_available(agent: &mut TestAgent) {
    let host = agent.host().await;
    for id in NODE_RUNTIMES {
        let r = host
            .runtimes
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("{id} is not in the catalog"));
        assert!(
            r.available,
            "{id} is unavailable ({}); run tests/setup.sh",
            r.unavailable_reason
        );
        assert_eq!(r.default_concurrency_per_vcpu, 64, "{id}: AWS default");
    }
}

/// Starts an invoke in the background (the function name is owned by the task).
fn spawn_invoke(
    agent: &TestAgent,
    function: &str,
    payload: Value,
) -> tokio::task::JoinHandle<Result<pb::InvokeResponse, tonic::Status>> {
    let client = agent.client.clone();
    let function = function.to_owned();
    tokio::spawn(async move { invoke(client, &function, payload).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_style_answers_a_json_event_on_both_node_versions() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    // (handler, action, style the handler reports)
    let cases = [
        ("actions.handler", "echo", "esm-async"),
        ("esm_pkg/app.handler", "echo", "esm-js-in-module-package"),
        ("cjs_async.handler", "echo", "cjs-async"),
        ("callback.handler", "echo", "cjs-callback"),
        ("callback.handler", "succeed", "context.succeed"),
        ("callback.handler", "done", "context.done"),
    ];
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        for (i, (handler, action, style)) in cases.iter().enumerate() {
            let function = fname(&format!("style{i}"), runtime);
            let mut spec = node_spec(&function, runtime, handler);
            spec.max_concurrency = 2;
            let env = agent.create_ready(spec).await;
            pids.push(env.pid);
            let event = json!({"action": action, "list": [1, 2.5, {"nested": "é"}], "flag": true});
            let r = agent.invoke(&function, event.clone()).await.unwrap();
            assert_eq!(r.outcome(), Out::Success, "{runtime} {handler}: {r:?}");
            let v = payload_json(&r);
            assert_eq!(
                v["event"], event,
                "{runtime} {handler}: the event arrives intact"
            );
            assert_eq!(v["style"], *style, "{runtime} {handler}");
            assert_eq!(v["requestId"], r.request_id.as_str());
            let node = v["node"].as_str().unwrap();
            assert!(
                node.starts_with(&format!("{}.", major_of(runtime))),
                "{runtime} ran on Node {node}"
            );
        }
    }
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_reads_its_context_and_environment() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        let function = fname("ctx", runtime);
        let mut spec = node_spec(&function, runtime, "actions.handler");
        spec.memory_mib = 4096;
        spec.max_concurrency = 3;
        spec.function.as_mut().unwrap().version = "7".into();
        spec.environment.insert("GREETING".into(), "hello".into());
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let request_id = format!("req-node-{}", major_of(runtime));
        let payload = json!({"action": "context", "env_keys": ["GREETING", "AWS_EXECUTION_ENV", "AWS_LAMBDA_MAX_CONCURRENCY", "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_FORMAT", "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_RUNTIME_API", "TZ", "AWS_REGION"]});
        let r = agent
            .client
            .invoke(pb::InvokeRequest {
                function_name: function.clone(),
                function_version: "7".into(),
                payload: payload.to_string().into_bytes().into(),
                request_id: request_id.clone(),
                client_context: r#"{"custom":{"tenant":"blue"},"env":{"locale":"en"}}"#.into(),
                trace_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), Out::Success, "{runtime}: {r:?}");
        let v = payload_json(&r);
        assert_eq!(v["requestId"], request_id.as_str());
        assert_eq!(v["functionName"], function.as_str());
        assert_eq!(v["functionVersion"], "7");
        assert_eq!(v["memoryLimitInMB"], "4096");
        assert_eq!(
            v["logGroupName"],
            format!("/aws/lambda/{function}").as_str()
        );
        assert!(
            v["logStreamName"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/[7]{}", env.id)),
            "{v}"
        );
        assert_eq!(
            v["arn"],
            format!("arn:aws:lambda:us-east-1:000000000000:function:{function}:7").as_str()
        );
        let remaining = v["remainingMs"].as_i64().unwrap();
        assert!(remaining > 0 && remaining <= 3000, "remaining {remaining}");
        assert_eq!(v["clientContext"]["custom"]["tenant"], "blue");
        assert_eq!(v["clientContext"]["env"]["locale"], "en");
        let e = &v["env"];
        assert_eq!(e["GREETING"], "hello");
        assert_eq!(
            e["AWS_EXECUTION_ENV"],
            format!("AWS_Lambda_{runtime}").as_str()
        );
        assert_eq!(e["AWS_LAMBDA_MAX_CONCURRENCY"], "3");
        assert_eq!(
            e["AWS_LAMBDA_INITIALIZATION_TYPE"],
            "lambda-managed-instances"
        );
        assert_eq!(e["AWS_LAMBDA_LOG_FORMAT"], "JSON");
        assert_eq!(e["_HANDLER"], "actions.handler");
        // The code is where Lambda puts it, inside the environment's own mount namespace.
        assert_eq!(e["LAMBDA_TASK_ROOT"], "/var/task");
        assert_eq!(e["AWS_LAMBDA_RUNTIME_API"], env.runtime_api.as_str());
        assert_eq!(e["TZ"], ":UTC");
        assert!(e["AWS_REGION"].as_str().is_some_and(|s| !s.is_empty()));
    }
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_thread_that_dies_fails_the_environment() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        let function = fname("crashy", runtime);
        let mut spec = node_spec(&function, runtime, "actions.handler");
        spec.max_concurrency = 4;
        spec.timeout_seconds = 600; // the outcome must come from the crash, not a deadline
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let dir = shared_dir();
        let bystander = spawn_invoke(&agent, &function, gate(dir.path(), 99));
        wait_for_files(dir.path(), 1).await;
        // An exception thrown from a timer is uncaught: its worker thread dies, so the runtime exits.
        let crasher = agent
            .invoke(&function, json!({"action": "crash"}))
            .await
            .unwrap();
        let bystander = bystander.await.unwrap().unwrap();
        for r in [&crasher, &bystander] {
            assert_eq!(r.outcome(), Out::RuntimeFailure, "{runtime}: {r:?}");
            let e = r.error.as_ref().unwrap();
            assert_eq!(e.error_type, "Runtime.ExitError", "{runtime}: {e:?}");
            assert_eq!(e.error_message, "Runtime exited with error: exit status 1");
        }
        let failed = agent.wait_state(&env.id, &[St::Failed]).await;
        assert_eq!(failed.failure.unwrap().error_type, "Runtime.ExitError");
    }
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_concurrency_is_64_per_vcpu() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut spec = node_spec("defaults", "nodejs20.x", "actions.handler");
    spec.memory_mib = 4096; // 2 vCPUs at 2 GiB per vCPU
    spec.max_concurrency = 0;
    let env = agent.create_ready(spec).await;
    assert_eq!(env.vcpus, 2);
    assert_eq!(env.max_concurrency, 128);
    let r = agent
        .invoke(
            "defaults",
            json!({"action": "context", "env_keys": ["AWS_LAMBDA_MAX_CONCURRENCY"]}),
        )
        .await
        .unwrap();
    assert_eq!(payload_json(&r)["env"]["AWS_LAMBDA_MAX_CONCURRENCY"], "128");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_wrong_major_version_is_unavailable() {
    require_root!();
    // A catalog entry whose interpreter exists but is not the version it names: the probe refuses it.
    let (mut agent, _catalog) = start_with_runtimes(
        "[[runtime]]\nid = \"nodejs99.x\"\ncommand = [\"node\", \"{shims}/node/bootstrap.mjs\"]\nprobe = [\"node\", \"-e\", \"process.exit(process.versions.node.split('.')[0] === '99' ? 0 : 1)\"]\ndefault_concurrency_per_vcpu = 64\nexecution_env = \"AWS_Lambda_nodejs99.x\"\n",
    )
    .await;
    let host = agent.host().await;
    let ghost = host.runtimes.iter().find(|r| r.id == "nodejs99.x").unwrap();
    assert!(!ghost.available, "{ghost:?}");
    assert!(
        ghost.unavailable_reason.contains("probe") && ghost.unavailable_reason.contains("failed"),
        "{ghost:?}"
    );
    let s = agent
        .create_refused(node_spec("ghost", "nodejs99.x", "actions.handler"))
        .await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        s.message()
            .contains("runtime nodejs99.x is not available on this host"),
        "{}",
        s.message()
    );
    assert_eq!(agent.host().await.environments, 0);
    agent.stop_and_assert_clean(&[]);
}

/// One worker thread (`AWS_LAMBDA_NODEJS_WORKER_COUNT=1`) takes new invokes while its earlier ones still wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_runs_concurrent_invokes_side_by_side() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        let single = fname("oneworker", runtime);
        let mut spec = node_spec(&single, runtime, "actions.handler");
        spec.max_concurrency = 6;
        spec.timeout_seconds = 120;
        spec.environment
            .insert("AWS_LAMBDA_NODEJS_WORKER_COUNT".into(), "1".into());
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let answers = scenarios::overlap(&agent, &single, 6).await;
        assert!(
            answers
                .iter()
                .all(|(_, v)| v["thread"] == answers[0].1["thread"]),
            "{runtime}: all six on the one worker thread: {answers:?}"
        );
        assert!(
            answers
                .iter()
                .all(|(_, v)| v["pid"] == pid_in_namespace(env.pid)),
            "{runtime}: in the one process"
        );
    }
    agent.stop_and_assert_clean(&pids);
}
