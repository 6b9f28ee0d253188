//! What a command hands back to `main`: the bytes for stdout and stderr and the process exit code.
//! Commands never print themselves, so tests can run them and look at everything they would have printed.

use serde::Serialize;
use tonic::Code;

/// The command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// `invoke`: the function failed (FUNCTION_ERROR, TIMEOUT, RUNTIME_FAILURE); `create --wait`: the environment FAILED.
pub const EXIT_FUNCTION_ERROR: u8 = 1;
/// `invoke`: throttled (gRPC RESOURCE_EXHAUSTED with ThrottleDetails).
pub const EXIT_THROTTLED: u8 = 2;
/// Usage error, transport error or any other gRPC error.
pub const EXIT_ERROR: u8 = 3;
/// `create --wait`: `--wait-timeout` elapsed before the environment was READY.
pub const EXIT_WAIT_TIMEOUT: u8 = 4;

/// The help text's summary of the exit codes.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  invoke: FUNCTION_ERROR, TIMEOUT or RUNTIME_FAILURE; create --wait: the environment FAILED
  2  invoke: throttled (RESOURCE_EXHAUSTED; the reason is printed)
  3  usage error, transport error or any other gRPC error (printed as `error: <CODE>: <message>`)
  4  create --wait: --wait-timeout elapsed before the environment was READY";

/// Everything one command run prints, and its exit code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: u8,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    /// Exit 0 with `text` on stdout.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            code: EXIT_OK,
            stdout: text.into().into_bytes(),
            stderr: String::new(),
        }
    }

    /// `value` as pretty JSON (newline-terminated) on stdout, with `code`.
    pub fn json<T: Serialize>(value: &T, code: u8) -> anyhow::Result<Self> {
        let mut stdout = serde_json::to_vec_pretty(value)?;
        stdout.push(b'\n');
        Ok(Self {
            code,
            stdout,
            stderr: String::new(),
        })
    }

    /// An error: `error: …` on stderr, exit 3. A gRPC status prints as `error: <CODE>: <message>`, the message
    /// verbatim (INVALID_ARGUMENT messages name the field).
    pub fn error(err: &anyhow::Error) -> Self {
        let stderr = match err.downcast_ref::<tonic::Status>() {
            Some(status) => format!("error: {}\n", status_line(status)),
            None => format!("error: {}\n", chain(err)),
        };
        Self {
            code: EXIT_ERROR,
            stdout: Vec::new(),
            stderr,
        }
    }

    pub fn with_stderr(mut self, text: impl AsRef<str>) -> Self {
        self.stderr.push_str(text.as_ref());
        self
    }

    pub fn with_code(mut self, code: u8) -> Self {
        self.code = code;
        self
    }
}

/// The error and its causes joined by `: `, leaving out a cause whose text the line already has (tonic's and
/// hyper's errors repeat their source in their own message).
pub fn chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `<CODE>: <message>` (just `<CODE>` when the message is empty).
pub fn status_line(status: &tonic::Status) -> String {
    let code = code_name(status.code());
    if status.message().is_empty() {
        code.to_string()
    } else {
        format!("{code}: {}", status.message())
    }
}

/// The canonical upper-case name of a gRPC status code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_print_code_and_verbatim_message() {
        let err = anyhow::Error::new(tonic::Status::invalid_argument(
            "spec.memory_mib: 3000 is not a multiple of 2 GiB",
        ));
        let out = Output::error(&err);
        assert_eq!(out.code, EXIT_ERROR);
        assert_eq!(
            out.stderr,
            "error: INVALID_ARGUMENT: spec.memory_mib: 3000 is not a multiple of 2 GiB\n"
        );
        let out = Output::error(&anyhow::Error::new(tonic::Status::new(Code::NotFound, "")));
        assert_eq!(out.stderr, "error: NOT_FOUND\n");
    }

    #[test]
    fn other_errors_print_their_chain() {
        let err = anyhow::anyhow!("inner").context("outer");
        let out = Output::error(&err);
        assert_eq!(out.code, EXIT_ERROR);
        assert_eq!(out.stderr, "error: outer: inner\n");
        let err = anyhow::anyhow!("No such file")
            .context("transport error: No such file")
            .context("cannot connect");
        assert_eq!(chain(&err), "cannot connect: transport error: No such file");
    }
}
