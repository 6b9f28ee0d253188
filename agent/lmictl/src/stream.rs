//! `lmictl invoke --stream`: the events of `InvokeWithResponseStream` written as they arrive.
//!
//! Without `--json`, each chunk's bytes go to stdout as they come (flushed, so a pipe or a terminal sees
//! them at once), exactly as the function wrote them; a newline is added at the end only when stdout is a
//! terminal and the answer lacks one. The completion is then reported as `lmictl invoke` reports an outcome:
//! nothing more for SUCCESS, the error on stderr with exit 1 otherwise (a mid-stream error comes after the
//! chunks already printed). With `--json`, one compact JSON object per line: `{"chunk": TEXT}` (or
//! `{"chunk_base64": …}` when the chunk is not UTF-8) for each chunk as it arrives, then a summary line with
//! the ids, the outcome, the error, and the number of chunks and bytes.

use std::io::Write;

use anyhow::Context as _;
use base64::Engine as _;
use lmi_proto::v1::invoke_with_response_stream_response::Event;
use lmi_proto::v1::{
    InvokeResponse, InvokeStreamComplete, InvokeStreamHead, InvokeWithResponseStreamResponse,
};
use serde::Serialize;
use tokio_stream::{Stream, StreamExt as _};

use crate::output::{Output, EXIT_ERROR};
use crate::render::{self, ErrorView};

/// The `--json` line of one chunk.
#[derive(Debug, Serialize)]
struct ChunkLine<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunk_base64: Option<String>,
}

/// The `--json` line that ends a streamed invoke.
#[derive(Debug, Serialize)]
pub struct StreamSummary {
    pub request_id: String,
    pub environment_id: String,
    pub executed_version: String,
    /// SUCCESS, FUNCTION_ERROR, TIMEOUT or RUNTIME_FAILURE.
    pub outcome: String,
    pub content_type: String,
    /// How many chunks the agent sent, and their bytes in all.
    pub chunks: u64,
    pub bytes: u64,
    pub error: Option<ErrorView>,
}

/// Where the rendering stands.
struct Renderer<'a> {
    out: &'a mut dyn Write,
    json: bool,
    stdout_is_tty: bool,
    head: Option<InvokeStreamHead>,
    chunks: u64,
    bytes: u64,
    last_byte: Option<u8>,
}

/// What writing one chunk came to.
enum Written {
    Done,
    /// The reader of stdout went away (a closed pipe).
    Gone,
}

impl Renderer<'_> {
    fn chunk(&mut self, chunk: &[u8]) -> anyhow::Result<Written> {
        if self.head.is_none() {
            anyhow::bail!("the agent sent a chunk before the invoke's head");
        }
        self.chunks += 1;
        self.bytes += chunk.len() as u64;
        if chunk.is_empty() {
            return Ok(Written::Done);
        }
        let bytes = if self.json {
            let line = match std::str::from_utf8(chunk) {
                Ok(text) => ChunkLine {
                    chunk: Some(text),
                    chunk_base64: None,
                },
                Err(_) => ChunkLine {
                    chunk: None,
                    chunk_base64: Some(base64::engine::general_purpose::STANDARD.encode(chunk)),
                },
            };
            let mut v = serde_json::to_vec(&line)?;
            v.push(b'\n');
            v
        } else {
            self.last_byte = chunk.last().copied();
            chunk.to_vec()
        };
        match self.out.write_all(&bytes).and_then(|()| self.out.flush()) {
            Ok(()) => Ok(Written::Done),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Written::Gone),
            Err(e) => Err(e).context("writing to stdout"),
        }
    }

    fn complete(self, done: InvokeStreamComplete) -> anyhow::Result<Output> {
        let head = self.head.unwrap_or_default();
        if self.json {
            let summary = StreamSummary {
                request_id: head.request_id,
                environment_id: head.environment_id,
                executed_version: head.executed_version,
                outcome: render::outcome_name(done.outcome),
                content_type: head.content_type,
                chunks: self.chunks,
                bytes: self.bytes,
                error: done.error.as_ref().map(render::error_view),
            };
            let mut stdout = serde_json::to_vec(&summary)?;
            stdout.push(b'\n');
            return Ok(Output {
                code: render::invoke_exit_code(done.outcome),
                stdout,
                stderr: String::new(),
            });
        }
        // The outcome as `invoke` reports it; the answer itself is already out.
        let mut out = render::invoke_output(
            &InvokeResponse {
                request_id: head.request_id,
                environment_id: head.environment_id,
                executed_version: head.executed_version,
                outcome: done.outcome,
                payload: Default::default(),
                content_type: head.content_type,
                error: done.error,
            },
            false,
        )?;
        if self.stdout_is_tty && self.last_byte.is_some_and(|b| b != b'\n') {
            out.stdout = b"\n".to_vec();
        }
        Ok(out)
    }
}

/// Writes the events of one streamed invoke to `out` as they arrive and returns what is left to print (the
/// outcome) and the exit code. A broken stream or one that ends without a completion is an error (exit 3);
/// a closed stdout stops reading, which cancels the invoke, and exits 3.
pub async fn render<S>(
    mut events: S,
    json: bool,
    stdout_is_tty: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Output>
where
    S: Stream<Item = Result<InvokeWithResponseStreamResponse, tonic::Status>> + Unpin,
{
    let mut r = Renderer {
        out,
        json,
        stdout_is_tty,
        head: None,
        chunks: 0,
        bytes: 0,
        last_byte: None,
    };
    while let Some(message) = events.next().await {
        match message?.event {
            Some(Event::Head(head)) => {
                if r.head.is_some() {
                    anyhow::bail!("the agent sent a second head");
                }
                r.head = Some(head);
            }
            Some(Event::Chunk(chunk)) => {
                if let Written::Gone = r.chunk(&chunk)? {
                    return Ok(Output::default()
                        .with_code(EXIT_ERROR)
                        .with_stderr("error: stdout was closed; the invoke was cancelled\n"));
                }
            }
            Some(Event::Complete(done)) => {
                if r.head.is_none() {
                    anyhow::bail!("the agent sent the completion before the invoke's head");
                }
                return r.complete(done);
            }
            None => anyhow::bail!("the agent sent a message without an event"),
        }
    }
    anyhow::bail!(
        "the stream ended before the invoke's completion ({} bytes in {} chunks received)",
        r.bytes,
        r.chunks
    )
}

#[cfg(test)]
mod tests {
    use lmi_proto::v1::{FunctionError, InvokeOutcome};

    use super::*;
    use crate::output::{EXIT_FUNCTION_ERROR, EXIT_OK};

    fn head() -> Event {
        Event::Head(InvokeStreamHead {
            request_id: "r-1".into(),
            environment_id: "env-1".into(),
            executed_version: "$LATEST".into(),
            content_type: "text/plain".into(),
        })
    }

    fn chunk(b: &[u8]) -> Event {
        Event::Chunk(b.to_vec().into())
    }

    fn complete(outcome: InvokeOutcome, error: Option<FunctionError>) -> Event {
        Event::Complete(InvokeStreamComplete {
            outcome: outcome as i32,
            error,
        })
    }

    fn ok(e: Event) -> Result<InvokeWithResponseStreamResponse, tonic::Status> {
        Ok(InvokeWithResponseStreamResponse { event: Some(e) })
    }

    fn boom() -> Option<FunctionError> {
        Some(FunctionError {
            error_type: "Error".into(),
            error_message: "broke mid-stream".into(),
            stack_trace: vec!["at handler (index.mjs:3)".into()],
        })
    }

    async fn run(
        events: Vec<Result<InvokeWithResponseStreamResponse, tonic::Status>>,
        json: bool,
        tty: bool,
    ) -> (anyhow::Result<Output>, Vec<u8>) {
        let mut written = Vec::new();
        let out = render(tokio_stream::iter(events), json, tty, &mut written).await;
        (out, written)
    }

    #[tokio::test]
    async fn chunks_are_written_raw_and_success_adds_nothing() {
        let (out, written) = run(
            vec![
                ok(head()),
                ok(chunk(b"one ")),
                ok(chunk(b"")),
                ok(chunk(b"two")),
                ok(complete(InvokeOutcome::Success, None)),
            ],
            false,
            false,
        )
        .await;
        let out = out.unwrap();
        assert_eq!(written, b"one two");
        assert_eq!(out, Output::default());
    }

    #[tokio::test]
    async fn a_terminal_gets_a_final_newline_when_the_answer_lacks_one() {
        let (out, written) = run(
            vec![
                ok(head()),
                ok(chunk(b"partial")),
                ok(complete(InvokeOutcome::Success, None)),
            ],
            false,
            true,
        )
        .await;
        assert_eq!(written, b"partial");
        assert_eq!(out.unwrap().stdout, b"\n");
        let (out, _) = run(
            vec![
                ok(head()),
                ok(chunk(b"line\n")),
                ok(complete(InvokeOutcome::Success, None)),
            ],
            false,
            true,
        )
        .await;
        assert!(out.unwrap().stdout.is_empty());
    }

    #[tokio::test]
    async fn a_mid_stream_error_comes_after_the_chunks_as_invoke_reports_it() {
        let (out, written) = run(
            vec![
                ok(head()),
                ok(chunk(b"chunk-1\n")),
                ok(complete(InvokeOutcome::FunctionError, boom())),
            ],
            false,
            false,
        )
        .await;
        let out = out.unwrap();
        assert_eq!(written, b"chunk-1\n");
        assert_eq!(out.code, EXIT_FUNCTION_ERROR);
        assert!(out.stdout.is_empty());
        assert_eq!(
            out.stderr,
            "FUNCTION_ERROR: Error: broke mid-stream\nstack trace:\n  at handler (index.mjs:3)\n\
             request r-1 on environment env-1\n"
        );
    }

    #[tokio::test]
    async fn json_is_one_line_per_chunk_then_a_summary() {
        let (out, written) = run(
            vec![
                ok(head()),
                ok(chunk(b"caf\xc3\xa9")),
                ok(chunk(&[0xff, 0x00])),
                ok(complete(InvokeOutcome::Timeout, boom())),
            ],
            true,
            true,
        )
        .await;
        let out = out.unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(written)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"chunk": "café"}),
                serde_json::json!({"chunk_base64": "/wA="}),
            ]
        );
        assert_eq!(out.code, EXIT_FUNCTION_ERROR);
        assert!(out.stdout.ends_with(b"\n"));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            summary,
            serde_json::json!({
                "request_id": "r-1",
                "environment_id": "env-1",
                "executed_version": "$LATEST",
                "outcome": "TIMEOUT",
                "content_type": "text/plain",
                "chunks": 2,
                "bytes": 7,
                "error": {
                    "error_type": "Error",
                    "error_message": "broke mid-stream",
                    "stack_trace": ["at handler (index.mjs:3)"],
                },
            })
        );
        let (out, _) = run(
            vec![ok(head()), ok(complete(InvokeOutcome::Success, None))],
            true,
            false,
        )
        .await;
        let out = out.unwrap();
        assert_eq!(out.code, EXIT_OK);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["outcome"], "SUCCESS");
        assert_eq!(summary["bytes"], 0);
        assert_eq!(summary["error"], serde_json::Value::Null);
    }

    #[tokio::test]
    async fn broken_and_malformed_streams_are_errors() {
        let (out, written) = run(vec![ok(head()), ok(chunk(b"half"))], false, false).await;
        assert_eq!(written, b"half");
        assert_eq!(
            out.unwrap_err().to_string(),
            "the stream ended before the invoke's completion (4 bytes in 1 chunks received)"
        );
        let (out, _) = run(
            vec![
                ok(head()),
                Err(tonic::Status::unavailable("agent stopping")),
            ],
            false,
            false,
        )
        .await;
        let err = out.unwrap_err();
        assert_eq!(
            err.downcast_ref::<tonic::Status>().unwrap().code(),
            tonic::Code::Unavailable
        );
        let (out, written) = run(vec![ok(chunk(b"x"))], false, false).await;
        assert!(written.is_empty());
        assert!(out
            .unwrap_err()
            .to_string()
            .contains("before the invoke's head"));
        let (out, _) = run(vec![ok(head()), ok(head())], false, false).await;
        assert!(out.unwrap_err().to_string().contains("second head"));
        let (out, _) = run(
            vec![Ok(InvokeWithResponseStreamResponse { event: None })],
            false,
            false,
        )
        .await;
        assert!(out.unwrap_err().to_string().contains("without an event"));
    }

    /// A writer whose reader has gone.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_closed_stdout_stops_reading_and_exits_3() {
        // The completion after the chunk is never read: the stream is dropped at the closed pipe.
        let events = vec![
            ok(head()),
            ok(chunk(b"x")),
            Err(tonic::Status::internal("read past the closed pipe")),
        ];
        let out = render(tokio_stream::iter(events), false, false, &mut ClosedPipe)
            .await
            .unwrap();
        assert_eq!(out.code, EXIT_ERROR);
        assert_eq!(
            out.stderr,
            "error: stdout was closed; the invoke was cancelled\n"
        );
    }
}
