//! AWS's own Go runtime client (`github.com/aws/aws-lambda-go` 1.55.1), unmodified, as a `provided.al2023`
//! function (tests/fixtures/go-ric, built by tests/setup.sh): echo, concurrency, errors and panics as the
//! client reports them, a timeout, a failed init, payloads at and over the limit, and its log records.
//! The client runs one `/next` loop per `AWS_LAMBDA_MAX_CONCURRENCY`; any status but 202 on `/response` or
//! `/error`, and any panic in a handler, ends all of them and exits the process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ric_common;
mod support;

use lmi_proto::v1::{EnvironmentState as State, InvokeOutcome as Out};
use ric_common::*;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo() {
    require_root!();
    ric_common::echo(&Ric::go()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_invokes_overlap() {
    require_root!();
    overlap(&Ric::go(), 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_error_has_the_clients_type_and_message() {
    require_root!();
    let e = function_error(&Ric::go()).await;
    // A returned error: the Go type's name and its message, no stack.
    assert!(e.stack_trace.is_empty(), "{e:?}");
}

/// A panic: the client reports it (type of the panic value, its message, the stack) and then exits the
/// process by design, so the environment fails with the exit; the caller still gets the function error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_reaches_the_caller_with_its_stack_then_the_client_exits() {
    require_root!();
    let ric = Ric::go();
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec("go-panic", 2, 30)).await;
    let r = agent
        .invoke("go-panic", json!({"action": "panic", "message": "boom"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "string", "{e:?}");
    assert_eq!(e.error_message, "boom", "{e:?}");
    assert!(
        e.stack_trace.iter().any(|f| f.contains("main.go")),
        "the handler's frame: {:?}",
        e.stack_trace
    );
    let env = agent.wait_state(&env.id, &[State::Failed]).await;
    let f = env.failure.unwrap();
    assert_eq!(f.error_type, "Runtime.ExitError", "{f:?}");
    assert!(f.message.contains("exit status 1"), "{f:?}");
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

/// The handler answers after its deadline. Passes only if the agent accepts a late answer with 202 (and
/// discards it): with 410 the client exits and the environment fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_leaves_the_environment_serving_with_every_poller() {
    require_root!();
    timeout_then_serving(&Ric::go()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_init_fails_the_environment_with_the_exit() {
    require_root!();
    // log.Fatalf before lambda.Start: the message on stderr, exit status 1.
    init_error(&Ric::go(), "init failed: no config table").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_6_mb_payloads_both_ways() {
    require_root!();
    near_limit_payloads(&Ric::go()).await;
}

/// Passes only if the agent accepts an oversized answer with 202 (reading and discarding it) while the
/// caller gets `Function.ResponseSizeTooLarge`: with 413 the client exits and the environment fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_keep_every_poller() {
    require_root!();
    ric_common::oversized_answers_keep_every_poller(&Ric::go()).await;
}

/// The lambdacontext logger writes JSON with a top-level `requestId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_carry_the_request_id() {
    require_root!();
    let (record, rid) = logged_record(&Ric::go()).await;
    assert_eq!(record["message"]["requestId"], rid.as_str(), "{record}");
    assert_eq!(record["message"]["level"], "INFO", "{record}");
    assert_eq!(record["requestId"], rid.as_str(), "{record}");
}
