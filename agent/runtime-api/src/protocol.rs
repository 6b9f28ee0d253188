//! The Lambda Runtime API (2018-06-01) as it travels: its paths and header names, written once here and used
//! by the server in this crate, the native echo runtime (a client) and the benches.
//!
//! Header names are lower case (HTTP/1.1 names are case-insensitive; `HeaderName` keeps them lower case),
//! as constants: a name parsed from a `&str` on every event would be validated and allocated each time. The
//! `_STR` forms are the same names for code that writes raw HTTP or takes `&str`.

use hyper::header::HeaderName;

/// The API version every path starts with.
pub const VERSION: &str = "2018-06-01";
/// The prefix of every path: `/2018-06-01/runtime/`.
pub const PREFIX: &str = "/2018-06-01/runtime/";
/// `GET`: the long poll for the next event.
pub const NEXT_PATH: &str = "/2018-06-01/runtime/invocation/next";
/// `POST`: the runtime failed its init.
pub const INIT_ERROR_PATH: &str = "/2018-06-01/runtime/init/error";
/// Path segment after [`PREFIX`] of the `/next` poll.
pub const NEXT: &str = "invocation/next";
/// Path segment after [`PREFIX`] of the init error.
pub const INIT_ERROR: &str = "init/error";
/// Path segment after [`PREFIX`] before a request id.
pub const INVOCATION: &str = "invocation/";
/// The last segment of a response's path.
pub const RESPONSE: &str = "response";
/// The last segment of a function error's path.
pub const ERROR: &str = "error";

/// `POST` path of the answer to the invoke `request_id` (already percent-encoded if it needs to be).
pub fn response_path(request_id: &str) -> String {
    format!("{PREFIX}{INVOCATION}{request_id}/{RESPONSE}")
}

/// `POST` path of the function error of the invoke `request_id` (already percent-encoded if it needs to be).
pub fn error_path(request_id: &str) -> String {
    format!("{PREFIX}{INVOCATION}{request_id}/{ERROR}")
}

/// Event header: the invoke's request id.
pub const REQUEST_ID_STR: &str = "lambda-runtime-aws-request-id";
/// Event header: the deadline, Unix epoch milliseconds.
pub const DEADLINE_MS_STR: &str = "lambda-runtime-deadline-ms";
/// Event header: the ARN the function was invoked by.
pub const FUNCTION_ARN_STR: &str = "lambda-runtime-invoked-function-arn";
/// Event header: the X-Ray trace header.
pub const TRACE_ID_STR: &str = "lambda-runtime-trace-id";
/// Event header: the base64 client context (mobile SDKs).
pub const CLIENT_CONTEXT_STR: &str = "lambda-runtime-client-context";
/// Event header: the Cognito identity (mobile SDKs).
pub const COGNITO_IDENTITY_STR: &str = "lambda-runtime-cognito-identity";
/// Response header: `streaming` for a streamed (chunked) answer.
pub const RESPONSE_MODE_STR: &str = "lambda-runtime-function-response-mode";
/// Request header of `/error` and `/init/error`, and trailer of a streamed answer that failed: the error type.
pub const ERROR_TYPE_STR: &str = "lambda-runtime-function-error-type";
/// Trailer of a streamed answer that failed: its error body, base64.
pub const ERROR_BODY_STR: &str = "lambda-runtime-function-error-body";

/// [`REQUEST_ID_STR`].
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_STR);
/// [`DEADLINE_MS_STR`].
pub const DEADLINE_MS: HeaderName = HeaderName::from_static(DEADLINE_MS_STR);
/// [`FUNCTION_ARN_STR`].
pub const FUNCTION_ARN: HeaderName = HeaderName::from_static(FUNCTION_ARN_STR);
/// [`TRACE_ID_STR`].
pub const TRACE_ID: HeaderName = HeaderName::from_static(TRACE_ID_STR);
/// [`CLIENT_CONTEXT_STR`].
pub const CLIENT_CONTEXT: HeaderName = HeaderName::from_static(CLIENT_CONTEXT_STR);
/// [`COGNITO_IDENTITY_STR`].
pub const COGNITO_IDENTITY: HeaderName = HeaderName::from_static(COGNITO_IDENTITY_STR);
/// [`RESPONSE_MODE_STR`].
pub const RESPONSE_MODE: HeaderName = HeaderName::from_static(RESPONSE_MODE_STR);
/// [`ERROR_TYPE_STR`].
pub const ERROR_TYPE: HeaderName = HeaderName::from_static(ERROR_TYPE_STR);
/// [`ERROR_BODY_STR`].
pub const ERROR_BODY: HeaderName = HeaderName::from_static(ERROR_BODY_STR);

/// The value of [`RESPONSE_MODE`] for a streamed answer.
pub const STREAMING: &str = "streaming";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_prefix_and_their_segments() {
        assert_eq!(NEXT_PATH, format!("{PREFIX}{NEXT}"));
        assert_eq!(INIT_ERROR_PATH, format!("{PREFIX}{INIT_ERROR}"));
        assert!(PREFIX.contains(VERSION));
        assert_eq!(
            response_path("r-1"),
            "/2018-06-01/runtime/invocation/r-1/response"
        );
        assert_eq!(
            error_path("r-1"),
            "/2018-06-01/runtime/invocation/r-1/error"
        );
    }
}
