//! `provided.al2023` with a compiled bootstrap (tests/fixtures/provided/c/bootstrap.c, built with the host's
//! C compiler by its build.sh): the Runtime API loop of a native binary, one invoke at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use serde_json::json;
use support::*;
use tonic::Code;

/// The code directory holding the compiled `bootstrap`, built once per test binary (cached, locked).
fn task_root() -> PathBuf {
    built_fixture("provided/c")
}

fn c_spec(function: &str) -> pb::EnvironmentSpec {
    let mut spec = code_spec(function, "provided.al2023", "unused", &task_root());
    spec.max_concurrency = 1;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_bootstrap_echoes_json_events_and_reports_errors() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(c_spec("native")).await;
    let mut pids = Vec::new();
    for i in 0..3 {
        let event = json!({"n": i, "text": "héllo", "list": [1, 2, {"deep": true}]});
        let r = agent.invoke("native", event.clone()).await.unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        let v = payload_json(&r);
        assert_eq!(v["echo"], event);
        assert_eq!(v["requestId"], r.request_id.as_str());
        pids.push(v["pid"].as_u64().unwrap());
    }
    let main = pid_in_namespace(env.pid);
    assert!(
        pids.iter().all(|p| *p == u64::from(main)),
        "the bootstrap itself is the runtime process and serves every invoke: {pids:?} vs {main}"
    );
    let r = agent
        .invoke("native", json!({"fail": "no such order"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Function.Failed");
    assert_eq!(e.error_message, "no such order");
    assert_eq!(e.stack_trace, vec!["main (bootstrap.c)".to_owned()]);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_concurrency_one_a_second_invoke_is_throttled_while_the_first_runs() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(c_spec("native1")).await;
    let dir = shared_dir();
    let held = tokio::spawn(invoke(
        agent.client.clone(),
        "native1",
        json!({"hold": dir.path().display().to_string()}),
    ));
    // The bootstrap announces the held invoke with a file; while it runs, the single slot is taken.
    wait_for_files(dir.path(), 1).await;
    assert_eq!(agent.get(&env.id).await.in_flight, 1);
    let s = agent.invoke("native1", json!({"n": 2})).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(
        s.metadata().get("lmi-throttle-reason").unwrap(),
        "CONCURRENCY"
    );
    std::fs::write(dir.path().join("release"), "").unwrap();
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    // The slot is free again and the same process serves the next invoke.
    let r = agent.invoke("native1", json!({"n": 3})).await.unwrap();
    assert_eq!(r.outcome(), Out::Success);
    assert_eq!(payload_json(&r)["pid"], pid_in_namespace(env.pid));
    agent.stop_and_assert_clean(&[env.pid]);
}
