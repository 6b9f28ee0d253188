//! Invokes on the wire: the unary `Invoke` and the `InvokeStream` that carries many invokes over one HTTP/2
//! stream. Both run [`Agent::invoke`]; they differ only in how a refusal travels (a gRPC status for the
//! unary call, an [`pb::InvokeRejection`] message on the stream, so that one refusal never ends the stream).

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use lmi_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, Code, Status, Streaming};

use lmi_agent_core::agent::{Agent, InvokeError, InvokeInput};
use lmi_agent_core::dispatch::ThrottleReason;
use lmi_runtime_api::invocation::Outcome;

pub use lmi_proto::wire::THROTTLE_REASON_METADATA;

/// Invokes of one `InvokeStream` in flight at most, answers the caller has not read yet included.
pub const STREAM_MAX_IN_FLIGHT: usize = 1024;

/// The answers of one `InvokeStream`.
pub type AnswerStream = ReceiverStream<Result<pb::InvokeStreamResponse, Status>>;

/// Runs one invoke from its wire request to its wire answer.
pub async fn run(agent: &Agent, r: pb::InvokeRequest) -> Result<pb::InvokeResponse, InvokeError> {
    let result = agent.invoke(input(r)).await?;
    let mut resp = pb::InvokeResponse {
        request_id: result.request_id,
        environment_id: result.environment_id,
        executed_version: result.version,
        ..Default::default()
    };
    let (outcome, error) = outcome_to_wire(result.outcome, |payload, content_type| {
        resp.payload = payload;
        resp.content_type = content_type;
    });
    resp.outcome = outcome.into();
    resp.error = error;
    Ok(resp)
}

/// An outcome's wire form: its kind and, for every kind but success, its error; a success's payload and
/// content type go to `success`.
pub(crate) fn outcome_to_wire(
    outcome: Outcome,
    success: impl FnOnce(bytes::Bytes, String),
) -> (pb::InvokeOutcome, Option<pb::FunctionError>) {
    let (kind, error) = match outcome {
        Outcome::Success {
            payload,
            content_type,
        } => {
            success(payload, content_type);
            (pb::InvokeOutcome::Success, None)
        }
        Outcome::FunctionError(e) => (pb::InvokeOutcome::FunctionError, Some(e)),
        Outcome::Timeout(e) => (pb::InvokeOutcome::Timeout, Some(e)),
        Outcome::RuntimeFailure(e) => (pb::InvokeOutcome::RuntimeFailure, Some(e)),
    };
    let error = error.map(|e| pb::FunctionError {
        error_type: e.error_type,
        error_message: e.message,
        stack_trace: e.stack_trace,
    });
    (kind, error)
}

/// The invoke input of a wire request.
pub(crate) fn input(r: pb::InvokeRequest) -> InvokeInput {
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    InvokeInput {
        function_name: r.function_name,
        version: r.function_version,
        payload: r.payload,
        request_id: non_empty(r.request_id),
        client_context: non_empty(r.client_context),
        trace_id: non_empty(r.trace_id),
    }
}

/// A refused invoke, split into what both wire forms carry.
struct Refusal {
    code: Code,
    message: String,
    throttle: Option<(ThrottleReason, pb::ThrottleDetails)>,
}

fn refusal(e: InvokeError) -> Refusal {
    let plain = |code, e: InvokeError| Refusal {
        code,
        message: e.to_string(),
        throttle: None,
    };
    match e {
        InvokeError::Invalid(message) => Refusal {
            code: Code::InvalidArgument,
            message,
            throttle: None,
        },
        e @ InvokeError::NoEnvironment { .. } => plain(Code::NotFound, e),
        e @ InvokeError::DuplicateRequestId(_) => plain(Code::AlreadyExists, e),
        e @ InvokeError::Draining => plain(Code::Unavailable, e),
        InvokeError::Throttled { reason, message } => {
            let wire = match reason {
                ThrottleReason::Concurrency => pb::ThrottleReason::Concurrency,
                ThrottleReason::Cpu => pb::ThrottleReason::Cpu,
                ThrottleReason::Memory => pb::ThrottleReason::Memory,
                ThrottleReason::Disk => pb::ThrottleReason::Disk,
                ThrottleReason::NoReadyEnvironment => pb::ThrottleReason::NoReadyEnvironment,
            };
            let details = pb::ThrottleDetails {
                reason: wire.into(),
                retry_elsewhere: true,
                message: message.clone(),
            };
            Refusal {
                code: Code::ResourceExhausted,
                message: format!("throttled ({}): {message}", reason.as_str()),
                throttle: Some((reason, details)),
            }
        }
    }
}

/// The unary `Invoke`'s status for a refused invoke: a throttle carries a `google.rpc.Status` holding its
/// [`pb::ThrottleDetails`] in the status details (the gRPC rich error model, which standard clients decode)
/// and its reason in the [`THROTTLE_REASON_METADATA`] key.
pub fn status(e: InvokeError) -> Status {
    let r = refusal(e);
    match r.throttle {
        None => Status::new(r.code, r.message),
        Some((reason, details)) => {
            let bytes = details.to_status_details(r.code as i32, &r.message);
            let mut status = Status::with_details(r.code, r.message, bytes.into());
            status.metadata_mut().insert(
                THROTTLE_REASON_METADATA,
                MetadataValue::from_static(reason.as_str()),
            );
            status
        }
    }
}

/// The `InvokeStream` message for a refused invoke.
pub fn rejection(e: InvokeError) -> pb::InvokeRejection {
    let r = refusal(e);
    pb::InvokeRejection {
        code: r.code as i32,
        message: r.message,
        throttle: r.throttle.map(|(_, details)| details),
    }
}

/// Serves one `InvokeStream`: reads invokes while fewer than [`STREAM_MAX_IN_FLIGHT`] are unanswered, runs
/// them concurrently (on this one task: no task per invoke), and sends each answer as its invoke ends.
pub fn serve_stream(
    agent: Arc<Agent>,
    inbound: Streaming<pb::InvokeStreamRequest>,
) -> AnswerStream {
    let (tx, rx) = mpsc::channel(STREAM_MAX_IN_FLIGHT);
    tokio::spawn(drive_stream(agent, inbound, tx));
    ReceiverStream::new(rx)
}

type Answers = mpsc::Sender<Result<pb::InvokeStreamResponse, Status>>;
type AnswerSlot = mpsc::OwnedPermit<Result<pb::InvokeStreamResponse, Status>>;

async fn drive_stream(
    agent: Arc<Agent>,
    mut inbound: Streaming<pb::InvokeStreamRequest>,
    answers: Answers,
) {
    let mut running = FuturesUnordered::new();
    // An invoke is read only once the place for its answer is held: running invokes plus unread answers
    // never pass the channel's capacity, so a caller that stops reading answers stops the reading of
    // invokes (and HTTP/2 flow control pushes back on it) instead of growing a queue.
    let mut slot: Option<AnswerSlot> = None;
    let mut reading = true;
    loop {
        tokio::select! {
            Some(()) = running.next(), if !running.is_empty() => {}
            reserved = answers.clone().reserve_owned(), if reading && slot.is_none() => match reserved {
                Ok(s) => slot = Some(s),
                // The caller cancelled the call: its invokes are cancelled with it (dropped below), as a
                // unary invoke's are when its caller goes.
                Err(_) => return,
            },
            message = inbound.message(), if reading && slot.is_some() => match message {
                Ok(Some(m)) => {
                    if let Some(s) = slot.take() {
                        running.push(answer_one(agent.clone(), m, s));
                    }
                }
                // The caller closed its side: the invokes in flight still end and are answered.
                Ok(None) => reading = false,
                Err(e) => {
                    // A broken request stream (bad message, reset): no more invokes from it; those in flight
                    // still end, and their answers go out if the caller still reads.
                    tracing::debug!(error = %e, "invoke stream: request side ended with an error");
                    reading = false;
                }
            },
            else => return,
        }
    }
}

async fn answer_one(agent: Arc<Agent>, m: pb::InvokeStreamRequest, slot: AnswerSlot) {
    let ran = match m.invoke {
        None => Err(InvokeError::Invalid("invoke is required".to_owned())),
        Some(r) => run(&agent, r).await,
    };
    let result = match ran {
        Ok(resp) => pb::invoke_stream_response::Result::Response(resp),
        Err(e) => pb::invoke_stream_response::Result::Rejected(rejection(e)),
    };
    // If the caller has gone, the answer is dropped with the channel.
    slot.send(Ok(pb::InvokeStreamResponse {
        tag: m.tag,
        result: Some(result),
    }));
}
