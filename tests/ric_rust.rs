//! AWS's own Rust runtime client (`lambda_runtime` 1.5, `run_concurrent`, feature `concurrency-tokio`),
//! unmodified, as a `provided.al2023` function (tests/fixtures/rust-ric, built by tests/setup.sh): echo,
//! concurrency, errors and panics as the client reports them, a timeout, a failed init, payloads at and over
//! the limit, and its log records. The client keeps one tokio task per `AWS_LAMBDA_MAX_CONCURRENCY`; a
//! refused answer (410, 413, 400) is logged and the task carries on, but a broken connection ends that task
//! for good, so every scenario ends with a rendezvous of max_concurrency invokes that needs every task.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ric_common;
mod support;

use lmi_proto::v1::InvokeOutcome as Out;
use ric_common::*;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo() {
    require_root!();
    ric_common::echo(&Ric::rust()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_invokes_overlap() {
    require_root!();
    overlap(&Ric::rust(), 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_error_has_the_clients_type_and_message() {
    require_root!();
    let e = function_error(&Ric::rust()).await;
    // The crate's Diagnostic has no stack.
    assert!(e.stack_trace.is_empty(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_function_error_and_the_task_carries_on() {
    require_root!();
    let ric = Ric::rust();
    let mut agent = TestAgent::start().await;
    const N: u32 = 2;
    let env = agent.create_ready(ric.spec("rust-panic", N, 30)).await;
    for _ in 0..N {
        let r = agent
            .invoke("rust-panic", json!({"action": "panic", "message": "boom"}))
            .await
            .unwrap();
        assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
        let e = r.error.unwrap();
        // What the crate's CatchPanicService reports: the type of the panic payload, no stack.
        assert_eq!(
            e.error_type, "&alloc::boxed::Box<dyn core::any::Any + core::marker::Send>",
            "{e:?}"
        );
        assert_eq!(e.error_message, "Lambda panicked: boom", "{e:?}");
        assert!(e.stack_trace.is_empty(), "{e:?}");
    }
    rendezvous(&agent, "rust-panic", N as usize).await;
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_leaves_the_environment_serving_with_every_poller() {
    require_root!();
    timeout_then_serving(&Ric::rust()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_init_fails_the_environment_with_the_exit() {
    require_root!();
    // `main` returning Err: Rust prints it on stderr and exits with status 1.
    init_error(&Ric::rust(), "init failed: no config table").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_6_mb_payloads_both_ways() {
    require_root!();
    near_limit_payloads(&Ric::rust()).await;
}

/// Fails while the Runtime API answers an oversized body by closing the connection: the client then sees
/// EPIPE, not 413, and that task ends (the rendezvous misses a poller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_keep_every_poller() {
    require_root!();
    ric_common::oversized_answers_keep_every_poller(&Ric::rust()).await;
}

/// The crate's JSON tracing puts the request id in `span.requestId`: the agent lifts it to the record's
/// `requestId` (issue 12, point 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_carry_the_request_id() {
    require_root!();
    let (record, rid) = logged_record(&Ric::rust()).await;
    assert_eq!(
        record["message"]["span"]["requestId"],
        rid.as_str(),
        "{record}"
    );
    assert_eq!(record["message"]["level"], "INFO", "{record}");
    assert_eq!(
        record["requestId"],
        rid.as_str(),
        "lifted from span.requestId: {record}"
    );
}
