//! `provided.al2023` with a compiled bootstrap (tests/fixtures/provided/c/bootstrap.c, built with the host's
//! C compiler by its build.sh): the Runtime API loop of a native binary, one invoke at a time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use scenarios::provided_c;
use serde_json::json;
use support::*;

// It writes no log lines: no `logs` scenario.
scenario_tests!(provided_c = provided_c(); echo, function_error, timeout, init_error);

fn c_spec(function: &str) -> pb::EnvironmentSpec {
    let mut spec = provided_c().spec(function);
    spec.max_concurrency = 1;
    spec
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
    assert_throttled(&s, "CONCURRENCY");
    std::fs::write(dir.path().join("release"), "").unwrap();
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    // The slot is free again and the same process serves the next invoke.
    let r = agent.invoke("native1", json!({"n": 3})).await.unwrap();
    assert_eq!(r.outcome(), Out::Success);
    assert_eq!(payload_json(&r)["pid"], pid_in_namespace(env.pid));
    agent.stop_and_assert_clean(&[env.pid]);
}
