//! One invoke as the agent sees it: what goes to the runtime and the single outcome that comes back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// What the runtime receives from `/next`.
#[derive(Debug, Clone)]
pub struct Event {
    pub request_id: String,
    pub payload: Bytes,
    /// Deadline as Unix epoch milliseconds (`Lambda-Runtime-Deadline-Ms`).
    pub deadline_ms: u64,
    pub function_arn: String,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
}

impl Event {
    /// Builds an event whose deadline is `timeout` from now.
    pub fn new(
        request_id: String,
        payload: Bytes,
        timeout: Duration,
        function_arn: String,
        trace_id: Option<String>,
        client_context: Option<String>,
    ) -> Self {
        Self {
            request_id,
            payload,
            deadline_ms: deadline_ms(timeout),
            function_arn,
            trace_id,
            client_context,
        }
    }

    /// Restarts the deadline at `timeout` from now (an event re-targeted to another environment).
    pub fn reset_deadline(&mut self, timeout: Duration) {
        self.deadline_ms = deadline_ms(timeout);
    }
}

fn deadline_ms(timeout: Duration) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from(now_ms + timeout.as_millis()).unwrap_or(u64::MAX)
}

/// An error as the caller receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub error_type: String,
    pub message: String,
    pub stack_trace: Vec<String>,
}

impl ErrorInfo {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error_type: error_type.into(),
            message: message.into(),
            stack_trace: Vec::new(),
        }
    }

    /// `Sandbox.Timedout`, worded as Lambda words it.
    pub fn timed_out(timeout: Duration) -> Self {
        Self::new(
            "Sandbox.Timedout",
            format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
        )
    }
}

/// Error type of an environment whose runtime exited.
pub const RUNTIME_EXIT_ERROR: &str = "Runtime.ExitError";
/// Error type of an environment whose runtime was killed for lack of memory.
pub const RUNTIME_OUT_OF_MEMORY: &str = "Runtime.OutOfMemory";
/// Error type of an environment whose runtime did not finish init (its first `/next`) in time.
pub const RUNTIME_INIT_TIMEOUT: &str = "Runtime.InitTimeout";

/// The one way an invoke ends (a throttle never reaches an environment, so it is not here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success {
        payload: Bytes,
        content_type: String,
    },
    FunctionError(ErrorInfo),
    Timeout(ErrorInfo),
    RuntimeFailure(ErrorInfo),
}

impl Outcome {
    /// Short name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Success { .. } => "success",
            Outcome::FunctionError(_) => "function_error",
            Outcome::Timeout(_) => "timeout",
            Outcome::RuntimeFailure(_) => "runtime_failure",
        }
    }
}
