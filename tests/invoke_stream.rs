//! `InvokeStream` through the real daemon and the native echo runtime: many invokes over one HTTP/2 stream,
//! each answered exactly once under its tag, refusals as messages that do not end the stream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use lmi_proto::v1::{self as pb, invoke_stream_response::Result as Answer, InvokeOutcome as Out};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn invoke(tag: u64, function: &str, payload: serde_json::Value) -> pb::InvokeStreamRequest {
    pb::InvokeStreamRequest {
        tag,
        invoke: Some(pb::InvokeRequest {
            function_name: function.into(),
            payload: payload.to_string().into_bytes().into(),
            ..Default::default()
        }),
    }
}

/// Opens a stream; returns the sender of invokes and the answers.
async fn open(
    agent: &mut TestAgent,
) -> (
    mpsc::Sender<pb::InvokeStreamRequest>,
    tonic::Streaming<pb::InvokeStreamResponse>,
) {
    let (tx, rx) = mpsc::channel(1024);
    let answers = agent
        .client
        .invoke_stream(ReceiverStream::new(rx))
        .await
        .expect("InvokeStream opens")
        .into_inner();
    (tx, answers)
}

async fn next_answer(answers: &mut tonic::Streaming<pb::InvokeStreamResponse>) -> (u64, Answer) {
    let a = tokio::time::timeout(Duration::from_secs(30), answers.message())
        .await
        .expect("an answer within 30 s")
        .expect("the stream is healthy")
        .expect("the stream is still open");
    (a.tag, a.result.expect("every answer has a result"))
}

async fn in_flight(agent: &mut TestAgent, id: &str) -> u32 {
    agent
        .client
        .get_environment(pb::GetEnvironmentRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .in_flight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invoke_on_a_stream_is_answered_once_under_its_tag_and_refusals_do_not_end_it() {
    require_root!();
    let code = native_echo_code_dir();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(native_echo_spec("streamed", code.path(), 8, 60))
        .await;
    let (tx, mut answers) = open(&mut agent).await;

    // 300 invokes sent at once into 8 slots: each either runs (and echoes its own payload) or is refused
    // for concurrency; none is lost, none is answered twice.
    const N: u64 = 300;
    for tag in 0..N {
        tx.send(invoke(tag, "streamed", serde_json::json!({ "n": tag })))
            .await
            .unwrap();
    }
    // Refusals of other kinds, between and after them.
    tx.send(invoke(1000, "no-such-function", serde_json::json!({})))
        .await
        .unwrap();
    tx.send(pb::InvokeStreamRequest {
        tag: 1001,
        invoke: None,
    })
    .await
    .unwrap();
    let mut bad_id = invoke(1002, "streamed", serde_json::json!({}));
    bad_id.invoke.as_mut().unwrap().request_id = "has/slash".into();
    tx.send(bad_id).await.unwrap();
    drop(tx);

    let mut got: BTreeMap<u64, Answer> = BTreeMap::new();
    while let Some(a) = tokio::time::timeout(Duration::from_secs(30), answers.message())
        .await
        .expect("answers keep coming")
        .expect("the stream ends cleanly")
    {
        let previous = got.insert(a.tag, a.result.expect("a result"));
        assert!(previous.is_none(), "tag {} answered twice", a.tag);
    }
    assert_eq!(got.len() as u64, N + 3, "every invoke answered: {got:?}");

    let (mut ran, mut throttled) = (0, 0);
    for tag in 0..N {
        match &got[&tag] {
            Answer::Response(r) => {
                assert_eq!(r.outcome(), Out::Success, "{r:?}");
                let echoed: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                assert_eq!(
                    echoed,
                    serde_json::json!({ "n": tag }),
                    "tag {tag} got its own answer"
                );
                assert_eq!(r.environment_id, env.id);
                ran += 1;
            }
            Answer::Rejected(r) => {
                assert_eq!(r.code, tonic::Code::ResourceExhausted as i32, "{r:?}");
                let t = r.throttle.as_ref().expect("a throttle carries its details");
                assert_eq!(t.reason(), pb::ThrottleReason::Concurrency);
                throttled += 1;
            }
        }
    }
    assert!(ran >= 1, "some invokes ran ({throttled} throttled)");
    let code_of = |tag| match &got[&tag] {
        Answer::Rejected(r) => r.code,
        Answer::Response(r) => panic!("tag {tag} should have been refused: {r:?}"),
    };
    assert_eq!(code_of(1000), tonic::Code::NotFound as i32);
    assert_eq!(code_of(1001), tonic::Code::InvalidArgument as i32);
    assert_eq!(code_of(1002), tonic::Code::InvalidArgument as i32);
    assert_eq!(in_flight(&mut agent, &env.id).await, 0, "no slot leaked");

    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_throttles_with_their_reason_and_timeouts_in_their_turn() {
    require_root!();
    let code = native_echo_code_dir();
    let mut agent = TestAgent::start().await;
    // Two slots, a 2 s timeout: two invokes that wait at a barrier of 3 hold both slots until they time out.
    let env = agent
        .create_ready(native_echo_spec("streamed", code.path(), 2, 2))
        .await;
    let (tx, mut answers) = open(&mut agent).await;
    for tag in [1, 2] {
        tx.send(invoke(
            tag,
            "streamed",
            serde_json::json!({"native_echo": {"barrier": 3}}),
        ))
        .await
        .unwrap();
    }
    let started = std::time::Instant::now();
    while in_flight(&mut agent, &env.id).await < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "both held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The third is refused at once, for concurrency, while the first two still run.
    tx.send(invoke(3, "streamed", serde_json::json!({"x": 1})))
        .await
        .unwrap();
    match next_answer(&mut answers).await {
        (3, Answer::Rejected(r)) => {
            assert_eq!(r.code, tonic::Code::ResourceExhausted as i32);
            assert_eq!(
                r.throttle.unwrap().reason(),
                pb::ThrottleReason::Concurrency
            );
        }
        other => panic!("expected the throttle of tag 3 first, got {other:?}"),
    }

    // Then the two held invokes time out, each answered once.
    let mut timed_out = Vec::new();
    for _ in 0..2 {
        match next_answer(&mut answers).await {
            (tag, Answer::Response(r)) => {
                assert_eq!(r.outcome(), Out::Timeout, "{r:?}");
                assert_eq!(r.error.unwrap().error_type, "Sandbox.Timedout");
                timed_out.push(tag);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    timed_out.sort_unstable();
    assert_eq!(timed_out, [1, 2]);

    // The stream still serves: closing the request side ends it after the last answer.
    drop(tx);
    assert!(
        answers.message().await.unwrap().is_none(),
        "the stream ends once every invoke was answered"
    );
    // The timed-out handlers still hold their slots (their code is not killed); delete the environment
    // with a short grace so that stopping the agent need not wait for them.
    agent
        .client
        .delete_environment(pb::DeleteEnvironmentRequest {
            id: env.id.clone(),
            grace_period_seconds: 1,
        })
        .await
        .unwrap();
    agent.stop_and_assert_clean(&[env.pid]);
}
