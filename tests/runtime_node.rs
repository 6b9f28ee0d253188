//! Node.js functions against the real daemon: the nodejs20.x and nodejs22.x runtimes (runtime-shims/node) and
//! the official client `aws-lambda-ric` as a provided.al2023 bootstrap, in multi-concurrent mode. Handlers are in
//! tests/fixtures/node. tests/setup.sh installs Node 22 (`node22`) and builds the official client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use serde_json::{json, Value};
use support::*;
use tonic::Code;

const NODE_RUNTIMES: [&str; 2] = ["nodejs20.x", "nodejs22.x"];

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

fn gate(dir: &Path, count: usize) -> Value {
    json!({"action": "gate", "dir": dir.display().to_string(), "count": count, "max_s": 120})
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
async fn function_errors_reach_the_caller_with_type_message_and_stack() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        let esm = fname("errs-esm", runtime);
        let cb = fname("errs-cb", runtime);
        pids.push(
            agent
                .create_ready(node_spec(&esm, runtime, "actions.handler"))
                .await
                .pid,
        );
        pids.push(
            agent
                .create_ready(node_spec(&cb, runtime, "callback.handler"))
                .await
                .pid,
        );
        // (function, event, type, message, file the stack must name)
        let cases = [
            (
                &esm,
                json!({"action": "raise", "message": "bad input: 42"}),
                "TypeError",
                "bad input: 42",
                Some("actions.mjs"),
            ),
            (
                &esm,
                json!({"action": "reject_string", "message": "just text"}),
                "string",
                "just text",
                None,
            ),
            (
                &cb,
                json!({"action": "raise", "message": "too far"}),
                "RangeError",
                "too far",
                Some("callback.cjs"),
            ),
            (
                &cb,
                json!({"action": "fail", "message": "context.fail said so"}),
                "Error",
                "context.fail said so",
                Some("callback.cjs"),
            ),
            (
                &cb,
                json!({"action": "string_error", "message": "plain string error"}),
                "string",
                "plain string error",
                None,
            ),
        ];
        for (function, event, error_type, message, file) in cases {
            let r = agent.invoke(function, event).await.unwrap();
            assert_eq!(r.outcome(), Out::FunctionError, "{runtime}: {r:?}");
            let e = r.error.unwrap();
            assert_eq!(e.error_type, error_type, "{runtime}: {e:?}");
            assert_eq!(e.error_message, message, "{runtime}: {e:?}");
            if let Some(file) = file {
                assert!(
                    e.stack_trace.iter().any(|l| l.contains(file)),
                    "{runtime}: stack names {file}: {:?}",
                    e.stack_trace
                );
                assert!(
                    !e.stack_trace.iter().any(|l| l.contains("runtime-shims")),
                    "{runtime}: the runtime's own frames are hidden: {:?}",
                    e.stack_trace
                );
            }
        }
        // The environments are fine afterwards.
        for function in [&esm, &cb] {
            let ok = agent
                .invoke(function, json!({"action": "echo"}))
                .await
                .unwrap();
            assert_eq!(ok.outcome(), Out::Success, "{runtime}: {ok:?}");
        }
    }
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_errors_fail_the_environment_with_their_reason() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    // (handler, failure type, text the message must hold)
    let cases = [
        (
            "does_not_exist.handler",
            "Runtime.ImportModuleError",
            "Cannot find module 'does_not_exist'",
        ),
        (
            "missing_dep.handler",
            "Runtime.ImportModuleError",
            "lmi-no-such-package",
        ),
        (
            "actions.nope",
            "Runtime.HandlerNotFound",
            "actions.nope is undefined or not exported",
        ),
        (
            "not_a_function.handler",
            "Runtime.HandlerNotFound",
            "not_a_function.handler is not a function",
        ),
        (
            "syntax_error.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError",
        ),
        ("init_throws.handler", "Error", "boom at init"),
        ("actions", "Runtime.MalformedHandlerName", "actions"),
    ];
    let mut created = Vec::new();
    for runtime in NODE_RUNTIMES {
        for (i, (handler, _, _)) in cases.iter().enumerate() {
            let mut spec = node_spec(&fname(&format!("badinit{i}"), runtime), runtime, handler);
            spec.max_concurrency = 3; // several workers report; the first report wins
            created.push((runtime, i, agent.create(spec).await));
        }
    }
    for (runtime, i, env) in &created {
        let (handler, error_type, text) = cases[*i];
        let failed = agent.wait_state(&env.id, &[St::Failed]).await;
        let f = failed.failure.unwrap();
        assert_eq!(f.error_type, error_type, "{runtime} {handler}: {f:?}");
        assert!(
            f.message.contains(text),
            "{runtime} {handler}: {:?} lacks {text:?}",
            f.message
        );
        assert_eq!(failed.ready_at, None, "{runtime} {handler}: never ready");
        let dirs = agent.env_cgroup_dirs(&env.id);
        eventually("the cgroup is removed", || {
            dirs.values().all(|d| !d.exists())
        })
        .await;
        assert!(!process_alive(env.pid), "{runtime} {handler}: runtime gone");
    }
    assert_eq!(agent.host().await.vcpus_allocated, 0, "capacity is back");
    let pids: Vec<u32> = created.iter().map(|(_, _, e)| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_invoke_gets_sandbox_timedout_and_others_continue() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        let function = fname("slow", runtime);
        let mut spec = node_spec(&function, runtime, "actions.handler");
        spec.max_concurrency = 4;
        spec.timeout_seconds = 1;
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let dir = shared_dir();
        // Held at a gate the test opens only after the deadline has passed.
        let stuck = spawn_invoke(&agent, &function, gate(dir.path(), 2));
        wait_for_files(dir.path(), 1).await;
        let quick = agent
            .invoke(&function, json!({"action": "echo"}))
            .await
            .unwrap();
        assert_eq!(quick.outcome(), Out::Success, "{runtime}: {quick:?}");
        let r = stuck.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Timeout, "{runtime}: {r:?}");
        let e = r.error.unwrap();
        assert_eq!(e.error_type, "Sandbox.Timedout");
        assert_eq!(e.error_message, "Task timed out after 1.00 seconds");
        // Let the stuck handler answer late (410 to the runtime): its slot comes back when it answers, and the
        // runtime carries on.
        std::fs::write(dir.path().join("release"), "").unwrap();
        let start = std::time::Instant::now();
        while agent.get(&env.id).await.in_flight > 0 {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "{runtime}: the late answer never came"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(agent.get(&env.id).await.state(), St::Ready);
        let after = agent
            .invoke(&function, json!({"action": "echo"}))
            .await
            .unwrap();
        assert_eq!(after.outcome(), Out::Success, "{runtime}: {after:?}");
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

/// Fires `n` gate invokes at `function` and checks that all of them were in flight together.
async fn assert_overlap(agent: &TestAgent, function: &str, n: usize) -> Vec<Value> {
    let dir = shared_dir();
    // Each handler announces itself with a file and returns only once all n are there: they can only all
    // succeed if all n were in flight in the environment at the same time.
    let calls: Vec<_> = (0..n)
        .map(|_| spawn_invoke(agent, function, gate(dir.path(), n)))
        .collect();
    let mut ids = Vec::new();
    let mut values = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{function}: {r:?}");
        let v = payload_json(&r);
        assert_eq!(v["seen"].as_array().unwrap().len(), n, "{v}");
        ids.push(r.request_id.clone());
        values.push(v);
    }
    ids.sort();
    let mut seen: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    seen.sort();
    assert_eq!(ids, seen, "each invoke ran exactly once");
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invokes_overlap_in_one_environment_and_within_one_worker() {
    require_root!();
    let mut agent = TestAgent::start().await;
    assert_node_runtimes_available(&mut agent).await;
    let mut pids = Vec::new();
    for runtime in NODE_RUNTIMES {
        // Default worker count (8 per CPU, at most max_concurrency): 12 invokes across the workers.
        let function = fname("overlap", runtime);
        let mut spec = node_spec(&function, runtime, "actions.handler");
        spec.max_concurrency = 12;
        spec.timeout_seconds = 120;
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let values = assert_overlap(&agent, &function, 12).await;
        assert!(
            values.iter().all(|v| v["pid"] == values[0]["pid"]),
            "one process"
        );
        assert_eq!(agent.get(&env.id).await.in_flight, 0);

        // One worker thread: it must take new invokes while its earlier ones are still waiting.
        let single = fname("oneworker", runtime);
        let mut spec = node_spec(&single, runtime, "actions.handler");
        spec.max_concurrency = 6;
        spec.timeout_seconds = 120;
        spec.environment
            .insert("AWS_LAMBDA_NODEJS_WORKER_COUNT".into(), "1".into());
        let env = agent.create_ready(spec).await;
        pids.push(env.pid);
        let values = assert_overlap(&agent, &single, 6).await;
        assert!(
            values.iter().all(|v| v["thread"] == values[0]["thread"]),
            "{runtime}: all six on the one worker thread: {values:?}"
        );
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
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("runtimes.toml");
    let builtin = std::fs::read_to_string(repo().join("agent/catalog/runtimes.toml")).unwrap();
    std::fs::write(
        &catalog,
        format!(
            "{builtin}\n[[runtime]]\nid = \"nodejs99.x\"\ncommand = [\"node\", \"{{shims}}/node/bootstrap.mjs\"]\nprobe = [\"node\", \"-e\", \"process.exit(process.versions.node.split('.')[0] === '99' ? 0 : 1)\"]\ndefault_concurrency_per_vcpu = 64\nexecution_env = \"AWS_Lambda_nodejs99.x\"\n"
        ),
    )
    .unwrap();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!("catalog = {:?}", catalog.display().to_string()),
        ..Default::default()
    })
    .await;
    let host = agent.host().await;
    let ghost = host.runtimes.iter().find(|r| r.id == "nodejs99.x").unwrap();
    assert!(!ghost.available, "{ghost:?}");
    assert!(
        ghost.unavailable_reason.contains("probe") && ghost.unavailable_reason.contains("failed"),
        "{ghost:?}"
    );
    let s = agent
        .client
        .create_environment(pb::CreateEnvironmentRequest {
            spec: Some(node_spec("ghost", "nodejs99.x", "actions.handler")),
        })
        .await
        .unwrap_err();
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

// ---------------------------------------------------------------------------------------------------------
// The official Node.js runtime interface client (npm aws-lambda-ric >= 4), unmodified
// ---------------------------------------------------------------------------------------------------------

/// The aws-lambda-ric package directory that tests/setup.sh builds.
fn node_ric_dir() -> PathBuf {
    let dir = support::test_tools().join("aws-lambda-ric/node_modules/aws-lambda-ric");
    assert!(
        dir.join("rapid-client.node").is_file() && dir.join("index.mjs").is_file(),
        "aws-lambda-ric is not built in {}; run tests/setup.sh",
        dir.display()
    );
    dir
}

/// A provided.al2023 function whose bootstrap (tests/fixtures/node/bootstrap) runs the official client.
fn ric_spec(function: &str, max_concurrency: u32) -> pb::EnvironmentSpec {
    let mut spec = node_spec(function, "provided.al2023", "actions.handler");
    spec.max_concurrency = max_concurrency;
    spec.timeout_seconds = 120;
    spec.environment
        .insert("LMI_NODE_RIC".into(), node_ric_dir().display().to_string());
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_answers_a_json_event() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric_spec("ric-ok", 4)).await;
    let event = json!({"action": "echo", "list": [1, {"x": "y"}]});
    let r = agent.invoke("ric-ok", event.clone()).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["event"], event);
    assert_eq!(v["requestId"], r.request_id.as_str());
    assert!(v["node"].as_str().unwrap().starts_with("22."), "{v}");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_reports_a_function_error_with_type_message_and_stack() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric_spec("ric-err", 4)).await;
    let r = agent
        .invoke(
            "ric-err",
            json!({"action": "raise", "message": "bad input: 7"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "TypeError");
    assert_eq!(e.error_message, "bad input: 7");
    assert!(
        e.stack_trace.iter().any(|l| l.contains("actions.mjs")),
        "{:?}",
        e.stack_trace
    );
    let ok = agent
        .invoke("ric-err", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(ok.outcome(), Out::Success);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_overlaps_concurrent_invokes_in_one_environment() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric_spec("ric-overlap", 12)).await;
    let values = assert_overlap(&agent, "ric-overlap", 12).await;
    assert!(
        values.iter().all(|v| v["pid"] == values[0]["pid"]),
        "one process"
    );
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}
