//! `InvokeWithResponseStream`: one invoke whose answer reaches the caller as the function produces it.
//!
//! The invoke runs on a task of its own ([`Agent::invoke_streaming`]); its messages (a head, the chunks, one
//! completion) go to the caller through a channel of [`MESSAGES`] messages, which tonic reads only as fast
//! as HTTP/2 flow control lets it send: a caller that stops reading fills the channel, the task stops reading
//! the function's stream, and the Runtime API stops reading the runtime. A refusal before the invoke starts
//! is the call's status (as for the unary `Invoke`); a caller that goes away (the channel closes) cancels the
//! invoke, which frees its slot.

use std::sync::Arc;

use bytes::Bytes;
use lmi_proto::v1 as pb;
use pb::invoke_with_response_stream_response::Event;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use lmi_agent_core::agent::{Agent, StreamedInvoke};
use lmi_runtime_api::broker::{Answered, Piece};
use lmi_runtime_api::invocation::Outcome;

use super::invoke::{input, outcome_to_wire, status};

/// Messages of one call that may wait for the caller.
pub const MESSAGES: usize = 4;

/// The messages of one `InvokeWithResponseStream`.
pub type ResponseStream = ReceiverStream<Result<pb::InvokeWithResponseStreamResponse, Status>>;

type Messages = mpsc::Sender<Result<pb::InvokeWithResponseStreamResponse, Status>>;

/// Starts the invoke; answers its stream once an environment took it, or the refusal.
pub async fn serve(
    agent: Arc<Agent>,
    request: pb::InvokeRequest,
) -> Result<ResponseStream, Status> {
    let (tx, rx) = mpsc::channel(MESSAGES);
    let (started_tx, started_rx) = oneshot::channel();
    let closed = tx.clone();
    let task = tokio::spawn(async move {
        let run = agent.invoke_streaming(input(request), |invoke| async move {
            let _ = started_tx.send(());
            forward(invoke, tx).await;
        });
        tokio::select! {
            ran = run => ran,
            // The caller went away (before the start, or while no message was being sent): the invoke is
            // dropped, which cancels it.
            () = closed.closed() => Ok(()),
        }
    });
    if started_rx.await.is_ok() {
        return Ok(ReceiverStream::new(rx));
    }
    match task.await {
        Ok(Err(e)) => Err(status(e)),
        Ok(Ok(())) => Err(Status::cancelled("the invoke ended before it started")),
        Err(e) => Err(Status::internal(format!("invoke task failed: {e}"))),
    }
}

fn message(event: Event) -> Result<pb::InvokeWithResponseStreamResponse, Status> {
    Ok(pb::InvokeWithResponseStreamResponse { event: Some(event) })
}

/// Sends the head, the chunks and the completion; returns early (dropping the stream, which cancels the
/// invoke) when the caller has gone.
async fn forward(invoke: StreamedInvoke, tx: Messages) {
    let content_type = match &invoke.answer {
        Answered::Stream(s) => s.content_type().to_owned(),
        Answered::Whole(Outcome::Success { content_type, .. }) => content_type.clone(),
        Answered::Whole(_) => String::new(),
    };
    let head = Event::Head(pb::InvokeStreamHead {
        request_id: invoke.request_id,
        environment_id: invoke.environment_id,
        executed_version: invoke.version,
        content_type,
    });
    if tx.send(message(head)).await.is_err() {
        return;
    }
    match invoke.answer {
        Answered::Whole(outcome) => {
            // A function that did not stream: its answer is one chunk.
            let _ = send_end(&tx, outcome).await;
        }
        Answered::Stream(mut stream) => {
            while let Some(piece) = stream.next().await {
                let sent = match piece {
                    Piece::Chunk(bytes) => tx.send(message(Event::Chunk(bytes))).await.is_ok(),
                    Piece::End(outcome) => send_end(&tx, outcome).await,
                };
                if !sent {
                    return;
                }
            }
        }
    }
}

/// Sends a success's payload (when not empty) as a chunk, then the completion.
async fn send_end(tx: &Messages, outcome: Outcome) -> bool {
    let mut payload = Bytes::new();
    let (kind, error) = outcome_to_wire(outcome, |p, _| payload = p);
    if !payload.is_empty() && tx.send(message(Event::Chunk(payload))).await.is_err() {
        return false;
    }
    let complete = Event::Complete(pb::InvokeStreamComplete {
        outcome: kind.into(),
        error,
    });
    tx.send(message(complete)).await.is_ok()
}
