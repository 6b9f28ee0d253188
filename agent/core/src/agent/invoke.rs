//! Invokes: checking the request, choosing an environment (least loaded READY, redirect past a saturated
//! one), and the throttle reason and message when none can take it.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;

use crate::dispatch::{self, ThrottleReason};
use crate::environment::State;
use crate::spec::{self, LATEST};
use crate::stats::FunctionStats;
use crate::text::{quote, shown};
use lmi_runtime_api::broker::{Answered, Pending, Rejected};
use lmi_runtime_api::invocation::{Event, Outcome};
use lmi_runtime_api::request_id;
use lmi_runtime_api::MAX_RESPONSE_BYTES;

use super::Agent;

/// Largest invoke payload accepted (Lambda's 6 MB synchronous limit).
pub const MAX_INVOKE_PAYLOAD: usize = MAX_RESPONSE_BYTES;

/// Why an invoke did not run.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("invalid invoke: {0}")]
    Invalid(String),
    #[error(
        "no execution environment for function {} version {} on this host",
        shown(function),
        shown(version)
    )]
    NoEnvironment { function: String, version: String },
    #[error("request id {} is already in flight", shown(.0))]
    DuplicateRequestId(String),
    #[error("throttled ({}): {message}", reason.as_str())]
    Throttled {
        reason: ThrottleReason,
        message: String,
    },
    #[error("the host is draining and takes no new invokes")]
    Draining,
}

/// An invoke request as the control API passes it.
#[derive(Debug, Clone)]
pub struct InvokeInput {
    pub function_name: String,
    pub version: String,
    pub payload: Bytes,
    pub request_id: Option<String>,
    pub client_context: Option<String>,
    pub trace_id: Option<String>,
}

/// A finished invoke.
#[derive(Debug, Clone)]
pub struct InvokeResult {
    pub request_id: String,
    pub environment_id: String,
    pub version: String,
    pub outcome: Outcome,
}

/// A streaming invoke's answer as its consumer receives it: whole, or the stream the runtime began.
#[derive(Debug)]
pub struct StreamedInvoke {
    pub request_id: String,
    pub environment_id: String,
    pub version: String,
    pub answer: Answered,
}

/// An invoke admitted by an environment, handed to what waits for it.
struct Submitted {
    pending: Pending,
    timeout: Duration,
    stats: Arc<FunctionStats>,
    started: std::time::Instant,
    request_id: String,
    environment_id: String,
    version: String,
}

impl Agent {
    /// Runs one invoke on the least-loaded READY environment of the function version.
    pub async fn invoke(&self, input: InvokeInput) -> Result<InvokeResult, InvokeError> {
        self.route(input, false, |s| async move {
            let outcome = s.pending.wait(s.timeout).await;
            s.stats.finished(outcome.kind(), s.started.elapsed());
            InvokeResult {
                request_id: s.request_id,
                environment_id: s.environment_id,
                version: s.version,
                outcome,
            }
        })
        .await
    }

    /// Runs one invoke as [`Agent::invoke`] does and returns with it the last 4 KB of its log lines
    /// (`LogType: Tail`; see [`crate::logs::invoke_tail`]): the lines the capture attributed to its request id
    /// and its START, END and REPORT lines.
    pub async fn invoke_with_tail(
        &self,
        mut input: InvokeInput,
    ) -> Result<(InvokeResult, Vec<u8>), InvokeError> {
        let id = match input.request_id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        input.request_id = Some(id.clone());
        let watch = self.logs.tails().watch(&id);
        let result = self.invoke(input).await?;
        let tail = match watch {
            Some(watch) => watch.settled(TAIL_QUIET, TAIL_SETTLE_MAX).await,
            None => Vec::new(),
        };
        Ok((result, tail))
    }

    /// Runs one invoke as [`Agent::invoke`] does, for a caller that reads a streamed answer as it comes:
    /// `consume` gets the answer (whole, or the runtime's stream) and runs while the invoke holds what it
    /// holds (its slot until the stream ends, a caller-chosen id until `consume` returns).
    pub async fn invoke_streaming<T, F, Fut>(
        &self,
        input: InvokeInput,
        consume: F,
    ) -> Result<T, InvokeError>
    where
        F: FnOnce(StreamedInvoke) -> Fut,
        Fut: Future<Output = T>,
    {
        self.route(input, true, |s| async move {
            let answer = match s.pending.wait_streamed(s.timeout).await {
                Answered::Whole(outcome) => {
                    s.stats.finished(outcome.kind(), s.started.elapsed());
                    Answered::Whole(outcome)
                }
                Answered::Stream(mut stream) => {
                    let (stats, started) = (s.stats.clone(), s.started);
                    stream.on_end(Box::new(move |outcome| {
                        stats.finished(outcome.kind(), started.elapsed());
                    }));
                    Answered::Stream(stream)
                }
            };
            consume(StreamedInvoke {
                request_id: s.request_id,
                environment_id: s.environment_id,
                version: s.version,
                answer,
            })
            .await
        })
        .await
    }

    /// Checks an invoke, chooses its environment and submits it there; `run` waits for it.
    async fn route<T, F, Fut>(
        &self,
        input: InvokeInput,
        streaming: bool,
        run: F,
    ) -> Result<T, InvokeError>
    where
        F: FnOnce(Submitted) -> Fut,
        Fut: Future<Output = T>,
    {
        if input.payload.len() > MAX_INVOKE_PAYLOAD {
            return Err(InvokeError::Invalid(format!(
                "payload of {} bytes exceeds the {MAX_INVOKE_PAYLOAD}-byte limit",
                input.payload.len()
            )));
        }
        if !spec::valid_function_name(&input.function_name) {
            return Err(InvokeError::Invalid(format!(
                "function_name {} must be 1-64 letters, digits, '-' and '_'",
                quote(&input.function_name)
            )));
        }
        let version = if input.version.is_empty() {
            LATEST.to_owned()
        } else if spec::valid_version(&input.version) {
            input.version
        } else {
            return Err(InvokeError::Invalid(format!(
                "function_version {} must be $LATEST or 1-128 letters, digits, '-' and '_'",
                quote(&input.version)
            )));
        };
        let chosen = input.request_id.filter(|id| !id.is_empty());
        if let Some(id) = &chosen {
            request_id::validate(id).map_err(InvokeError::Invalid)?;
        }
        for (name, value) in [
            ("client_context", &input.client_context),
            ("trace_id", &input.trace_id),
        ] {
            if value.as_deref().is_some_and(|v| !is_header_value(v)) {
                return Err(InvokeError::Invalid(format!(
                    "{name} must be visible ASCII (it becomes an HTTP header)"
                )));
            }
        }
        if self.is_draining() {
            return Err(InvokeError::Draining);
        }
        // A caller-chosen id is held host-wide for the whole invoke: the same id cannot run on two
        // environments at once (each broker only knows its own).
        let (request_id, _held) = match chosen {
            Some(id) => match self.caller_ids.hold(&id) {
                Some(held) => (id, Some(held)),
                None => return Err(InvokeError::DuplicateRequestId(id)),
            },
            None => (uuid::Uuid::new_v4().to_string(), None),
        };
        let found = self.read().of_function(&input.function_name, &version);
        let envs = match found {
            Some(envs) if !envs.is_empty() => envs,
            _ => {
                return Err(InvokeError::NoEnvironment {
                    function: input.function_name,
                    version,
                })
            }
        };
        let stats = self.stats.function(&input.function_name, &version);
        let started = std::time::Instant::now();
        let mut event = Event::new(
            request_id.clone(),
            input.payload,
            Duration::ZERO,
            String::new(),
            input.trace_id,
            input.client_context,
        );
        let plan = dispatch::plan(&envs);
        for env in plan.candidates.iter() {
            let timeout = env.spec.timeout;
            event.function_arn.clone_from(&env.spec.arn);
            event.reset_deadline(timeout);
            let submitted = if streaming {
                env.broker.submit_streaming(event)
            } else {
                env.broker.submit(event)
            };
            match submitted {
                Ok(pending) => {
                    if let Some(first) = plan.first_choice_saturated {
                        stats.redirected();
                        tracing::debug!(from = %first.id, to = %env.id, request_id = %request_id, "redirected");
                    }
                    return Ok(run(Submitted {
                        pending,
                        timeout,
                        stats,
                        started,
                        request_id,
                        environment_id: env.id.clone(),
                        version,
                    })
                    .await);
                }
                Err(refusal) => match refusal.reason {
                    Rejected::DuplicateId => {
                        return Err(InvokeError::DuplicateRequestId(request_id))
                    }
                    Rejected::Full | Rejected::Closed => event = *refusal.event,
                },
            }
        }
        // Candidates that all filled up between the look and the submit were a concurrency limit.
        let reason = if plan.candidates.is_empty() {
            plan.throttle
        } else {
            ThrottleReason::Concurrency
        };
        stats.throttled(reason);
        let ready = envs.iter().filter(|e| e.state() == State::Ready).count();
        let message = match reason {
            ThrottleReason::NoReadyEnvironment => {
                let initializing = envs
                    .iter()
                    .filter(|e| e.state() == State::Initializing)
                    .count();
                format!(
                    "none of the {} environments of {}:{} is READY ({initializing} initializing, the others failed or draining)",
                    envs.len(),
                    input.function_name,
                    version
                )
            }
            ThrottleReason::Concurrency => format!(
                "all {ready} READY environments of {}:{} are at their max concurrency",
                input.function_name, version
            ),
            other => format!(
                "every READY environment of {}:{} with a free slot is saturated ({} over its threshold)",
                input.function_name,
                version,
                other.as_str()
            ),
        };
        Err(InvokeError::Throttled { reason, message })
    }
}

/// Whether `s` can be an HTTP header value as it is: the bytes `hyper::header::HeaderValue::from_str`
/// accepts, checked without copying them into one.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// An invoke's tail is taken when no line came for this long after its answer...
const TAIL_QUIET: Duration = Duration::from_millis(10);
/// ...or after this long at most (see [`crate::logs::invoke_tail::TailWatch::settled`]).
const TAIL_SETTLE_MAX: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::is_header_value;
    use hyper::header::HeaderValue;

    #[test]
    fn header_values_are_checked_as_hyper_checks_them() {
        let mut values: Vec<String> = (0..=0x7f_u8).map(|b| format!("a{}b", b as char)).collect();
        values.extend(
            [
                "",
                "Root=1-5759e988-bd862e3fe1be46a994272793",
                "é",
                "\u{7f}x",
                "x\n",
            ]
            .map(String::from),
        );
        for v in &values {
            assert_eq!(
                is_header_value(v),
                HeaderValue::from_str(v).is_ok(),
                "{v:?}"
            );
        }
    }
}
