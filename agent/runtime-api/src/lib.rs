//! The Lambda Runtime API (2018-06-01) that each environment's runtime talks to.
//!
//! One HTTP/1.1 server per environment. `/next` long-polls the environment's [`Broker`]; `/response` and
//! `/error` answer an invoke by request id; `/init/error` fails the environment's init (first report wins).
//! Bodies are read frame by frame and refused with 413 as soon as they pass their limit, so a runtime cannot
//! make the agent buffer more than the limit.
//!
//! Every refusal reaches the runtime: runtimes write their whole body before they read the status, so the
//! unread rest of a refused request's body is read and dropped (up to [`DISCARD_MAX_BYTES`], within
//! [`DISCARD_TIMEOUT`]) before the answer is sent, and the connection stays usable. Past that bound the answer
//! carries `Connection: close`.

pub mod broker;
pub mod invocation;
pub mod protocol;
pub mod request_id;

use std::{borrow::Cow, convert::Infallible, fmt, net::SocketAddr, sync::Arc};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Body as _, Incoming},
    header::{
        HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT,
    },
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};

use crate::broker::{Answer, Broker};
use crate::invocation::{ErrorInfo, Event, Outcome};
use crate::protocol::{
    CLIENT_CONTEXT, DEADLINE_MS, ERROR_BODY, ERROR_TYPE, FUNCTION_ARN, PREFIX, REQUEST_ID,
    RESPONSE_MODE, TRACE_ID,
};

/// Lambda's synchronous payload limit as the emulator enforces it (6 MiB + 100 bytes).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024 + 100;
/// Largest streamed response the agent buffers for a unary invoke.
pub const MAX_STREAMED_RESPONSE_BYTES: usize = 20 * 1024 * 1024;
/// Largest `/error` and `/init/error` body.
pub const MAX_ERROR_BYTES: usize = 1024 * 1024;
/// Largest body of a refused request that is read and dropped so that its runtime gets the status on a
/// connection that stays open: every answer the agent accepts fits with a margin (a streamed answer of 20 MiB
/// and then some). A larger body is not read: the status goes out with `Connection: close`.
pub const DISCARD_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// How long the rest of a refused request's body may take to arrive before the answer goes out with
/// `Connection: close` instead: a runtime that stalls mid-body holds its connection no longer than that.
pub const DISCARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
/// The body of every 202: a constant, not JSON serialised per answer.
const ACCEPTED_BODY: &[u8] = br#"{"status":"OK"}"#;

/// What the agent does when the runtime reports an init failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitErrorAnswer {
    /// First report: the environment fails with it (202).
    Accepted,
    /// Already reported by another worker, or init is over (403).
    Refused,
}

/// How the Runtime API tells its environment what the runtime did.
pub trait RuntimeEvents: Send + Sync + fmt::Debug + 'static {
    /// A `/next` arrived (the first one completes init).
    fn polled(&self);
    /// The runtime posted `/init/error`.
    fn init_error(&self, error: ErrorInfo) -> InitErrorAnswer;
}

/// Everything one environment's Runtime API needs.
#[derive(Debug)]
pub struct RuntimeApi {
    broker: Arc<Broker>,
    events: Arc<dyn RuntimeEvents>,
    max_response: usize,
    max_streamed: usize,
    header_timeout: std::time::Duration,
    max_connections: usize,
    settled: SettledAnswers,
}

/// What the API answers a `/response` or `/error` for an invoke the agent has already ended: a late answer
/// (its caller got `Sandbox.Timedout`) or one over the size limit (its caller got
/// `Function.ResponseSizeTooLarge`). Either way the caller's outcome is settled and the body is read and
/// dropped; only the status differs. See "Late and oversized answers" in `docs/ARCHITECTURE.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SettledAnswers {
    /// 202: nothing is left for the runtime to do about it, and the official Go client exits on any other
    /// status (taking every poller of the environment with it).
    #[default]
    Accept,
    /// 410 `InvokeTimeout` for a late answer, 413 `RequestEntityTooLarge` for an oversized one, as Lambda's
    /// emulator answers.
    Refuse,
}

/// How long a connection may go without a complete request head. hyper counts idle keep-alive time too, and
/// a worker's connection is idle while its handler runs (up to the 900 s maximum function timeout), so the
/// timeout sits above that; it still ends connections that stall forever. A runtime can only reach its own
/// environment's API, so a stalled connection costs that environment alone; the connection cap below
/// protects the agent's file descriptors.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(960);

/// Connections one environment may hold open at once: `max(64, 4 × max_concurrency)`.
pub fn connection_cap(max_concurrency: u32) -> usize {
    (max_concurrency as usize).saturating_mul(4).max(64)
}

impl RuntimeApi {
    pub fn new(broker: Arc<Broker>, events: Arc<dyn RuntimeEvents>) -> Arc<Self> {
        Arc::new(Self {
            events,
            max_response: MAX_RESPONSE_BYTES,
            max_streamed: MAX_STREAMED_RESPONSE_BYTES,
            header_timeout: HEADER_READ_TIMEOUT,
            max_connections: connection_cap(broker.max()),
            settled: SettledAnswers::default(),
            broker,
        })
    }

    /// The same API answering late and oversized answers as `settled` says.
    pub fn with_settled_answers(self: Arc<Self>, settled: SettledAnswers) -> Arc<Self> {
        Arc::new(Self {
            broker: self.broker.clone(),
            events: self.events.clone(),
            settled,
            ..*self
        })
    }

    /// The same API with another header read timeout and connection cap (tests).
    pub fn with_limits(
        self: Arc<Self>,
        header_timeout: std::time::Duration,
        max_connections: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            broker: self.broker.clone(),
            events: self.events.clone(),
            max_response: self.max_response,
            max_streamed: self.max_streamed,
            header_timeout,
            max_connections,
            settled: self.settled,
        })
    }

    /// Serves one connection (any byte stream) to its end.
    pub async fn serve_connection<I>(self: Arc<Self>, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.header_timeout;
        let api = self;
        let svc = service_fn(move |req| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(io), svc);
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "runtime API connection ended with an error");
        }
    }

    /// Serves connections from `listener` until the returned future is dropped (abort its task to stop:
    /// every connection is dropped with it).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if conns.len() >= self.max_connections {
                            // Dropped at once (closed): a runtime cannot exhaust the agent's descriptors.
                            tracing::warn!(cap = self.max_connections, "runtime API connection refused: too many open");
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        conns.spawn(self.clone().serve_connection(stream));
                    }


                    Err(e) => {
                        // Out of file descriptors and the like: log, back off briefly, keep serving.
                        tracing::warn!(error = %e, "runtime API accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }

    /// Binds a loopback listener on an ephemeral port.
    pub async fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
        let l = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = l.local_addr()?;
        Ok((l, addr))
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // A client that waits for `100 Continue` sends no body before it reads a final status: a refusal is
        // answered without reading (hyper then closes the connection instead of sending the 100).
        let waits_for_continue = req
            .headers()
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (mut response, unread) = self.route(req).await;
        if let Some(unread) = unread {
            let drained = !(waits_for_continue && unread.read == 0) && unread.discard().await;
            if !drained {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        response
    }

    /// The answer to a request, with the request's body when it was refused before its end.
    async fn route(&self, mut req: Request<Incoming>) -> Handled {
        // The URI is moved out so that its path can be borrowed while the request is consumed.
        let uri = std::mem::take(req.uri_mut());
        let Some(rest) = uri.path().strip_prefix(PREFIX) else {
            return refuse(not_found(), req);
        };
        let method = req.method().clone();
        match rest {
            protocol::NEXT => {
                if method != Method::GET {
                    return refuse(method_not_allowed(), req);
                }
                (self.next().await, Unread::of(req.into_body()))
            }
            protocol::INIT_ERROR => {
                if method != Method::POST {
                    return refuse(method_not_allowed(), req);
                }
                self.init_error(req).await
            }
            _ => {
                let Some(inv) = rest.strip_prefix(protocol::INVOCATION) else {
                    return refuse(not_found(), req);
                };
                // The id is split off before it is decoded: a decoded id may hold a '/'.
                let (raw_id, action) = match inv.rsplit_once('/') {
                    Some((id, a @ (protocol::RESPONSE | protocol::ERROR)))
                        if !id.is_empty() && !id.contains('/') =>
                    {
                        (id, a)
                    }
                    _ => return refuse(not_found(), req),
                };
                if method != Method::POST {
                    return refuse(method_not_allowed(), req);
                }
                let Some(id) = percent_decode(raw_id) else {
                    return refuse(invalid_request_id(), req);
                };
                if action == protocol::RESPONSE {
                    self.response(&id, req).await
                } else {
                    self.function_error(&id, req).await
                }
            }
        }
    }

    async fn next(&self) -> Response<Full<Bytes>> {
        self.events.polled();
        match self.broker.next().await {
            Some(event) => event_response(event),
            None => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Runtime.ExitError",
                "the execution environment is shutting down",
            ),
        }
    }

    /// Claims the id before its body is read: unknown, already answered or being answered → 400; timed out →
    /// 410 (and the slot the runtime held is freed).
    fn precheck(&self, id: &str) -> Option<Response<Full<Bytes>>> {
        match self.broker.claim(id) {
            Answer::Accepted => None,
            Answer::Unknown => {
                tracing::debug!(
                    request_id = id,
                    "runtime answer refused: unknown or answered id"
                );
                Some(invalid_request_id())
            }
            Answer::TooLate => {
                // The runtime finished a timed-out invoke: that frees its slot; the body is discarded.
                self.broker.settle_late(id);
                tracing::debug!(request_id = id, "late runtime answer: the invoke timed out");
                Some(self.settled_status(too_late()))
            }
        }
    }

    async fn response(&self, id: &str, req: Request<Incoming>) -> Handled {
        let streaming = match req.headers().get(RESPONSE_MODE).map(HeaderValue::to_str) {
            None => false,
            Some(Ok(v)) if v.eq_ignore_ascii_case(protocol::STREAMING) => true,
            Some(_) => {
                return refuse(
                    error(
                        StatusCode::BAD_REQUEST,
                        "InvalidResponseMode",
                        "Lambda-Runtime-Function-Response-Mode must be \"streaming\" or absent",
                    ),
                    req,
                )
            }
        };
        if let Some(r) = self.precheck(id) {
            return refuse(r, req);
        }
        let limit = if streaming {
            self.max_streamed
        } else {
            self.max_response
        };
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let until = self.broker.deadline(id).map(body_deadline);
        if streaming {
            if let Some(chunks) = self.broker.open_stream(id, &content_type) {
                return self.pass_stream(id, req, chunks, content_type, until).await;
            }
        }
        let outcome = match read_body(req, limit, until).await {
            Err(BodyError::TooLarge(unread)) => {
                self.broker.answer(
                    id,
                    Outcome::FunctionError(ErrorInfo::new(
                        "Function.ResponseSizeTooLarge",
                        format!("Response payload size exceeded maximum allowed payload size ({limit} bytes)."),
                    )),
                );
                tracing::debug!(request_id = id, limit, "runtime answer over the size limit");
                return (
                    self.settled_status(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        &format!("response payload exceeds {limit} bytes"),
                    )),
                    Some(unread),
                );
            }
            Err(BodyError::Io(e)) => {
                // The runtime broke the connection mid-body: the invoke ends with that error.
                self.broker.answer(
                    id,
                    Outcome::FunctionError(ErrorInfo::new(
                        "Runtime.TruncatedResponse",
                        format!("the runtime's response body was cut off: {e}"),
                    )),
                );
                return (
                    error(
                        StatusCode::BAD_REQUEST,
                        "TruncatedResponse",
                        "response body was cut off",
                    ),
                    None,
                );
            }
            Err(BodyError::Stalled) => return (self.stalled(id), None),
            Ok((body, trailers)) => match trailers.as_ref().and_then(stream_error) {
                Some(err) => Outcome::FunctionError(err),
                None => Outcome::Success {
                    payload: body,
                    content_type,
                },
            },
        };
        (self.answer_response(self.broker.answer(id, outcome)), None)
    }

    /// Passes a streamed answer's chunks to its caller as they arrive (see the broker's module documentation),
    /// then ends the invoke with the outcome its trailers declare. The 20 MiB limit, a broken connection and
    /// a stall end it as they end a gathered answer; a caller that goes away ends the reading at once and
    /// frees the slot (the rest of the body is dropped).
    async fn pass_stream(
        &self,
        id: &str,
        req: Request<Incoming>,
        chunks: tokio::sync::mpsc::Sender<Bytes>,
        content_type: String,
        until: Option<tokio::time::Instant>,
    ) -> Handled {
        let limit = self.max_streamed;
        let passed = match until {
            Some(t) => tokio::time::timeout_at(t, pass_chunks(req.into_body(), chunks, limit))
                .await
                .unwrap_or(Passed::Stalled),
            None => pass_chunks(req.into_body(), chunks, limit).await,
        };
        let outcome = match passed {
            Passed::Ended(trailers) => match trailers.as_ref().and_then(stream_error) {
                Some(err) => Outcome::FunctionError(err),
                None => Outcome::Success {
                    payload: Bytes::new(),
                    content_type,
                },
            },
            Passed::TooLarge(unread) => {
                self.broker.answer(
                    id,
                    Outcome::FunctionError(ErrorInfo::new(
                        "Function.ResponseSizeTooLarge",
                        format!("Response payload size exceeded maximum allowed payload size ({limit} bytes)."),
                    )),
                );
                tracing::debug!(
                    request_id = id,
                    limit,
                    "streamed answer over the size limit"
                );
                return (
                    self.settled_status(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        &format!("response payload exceeds {limit} bytes"),
                    )),
                    Some(unread),
                );
            }
            Passed::Io(e) => Outcome::FunctionError(ErrorInfo::new(
                "Runtime.TruncatedResponse",
                format!("the runtime's response body was cut off: {e}"),
            )),
            Passed::Stalled => return (self.stalled(id), None),
            Passed::CallerGone(unread) => {
                // The caller's outcome (cancelled or timed out) is settled; the slot is freed now, and the
                // runtime is told once the rest of its body is dropped (or its connection closed).
                self.broker.settle_late(id);
                tracing::debug!(request_id = id, "streamed answer: the caller went away");
                let gone = error(
                    StatusCode::GONE,
                    "CallerGone",
                    "the caller stopped reading the streamed response",
                );
                return (self.settled_status(gone), Some(unread));
            }
        };
        (self.answer_response(self.broker.answer(id, outcome)), None)
    }

    /// The answer's body was still incomplete past the invoke's deadline: the caller has (or now gets) its
    /// timeout, the slot is freed, and the runtime is told with 408 (the connection is closed, its unread
    /// body with it).
    fn stalled(&self, id: &str) -> Response<Full<Bytes>> {
        let timed_out = Outcome::Timeout(ErrorInfo::new(
            "Sandbox.Timedout",
            "the runtime's answer did not arrive completely before the invoke's deadline",
        ));
        self.broker.answer(id, timed_out);
        let mut r = error(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            "the body did not arrive before the invoke's deadline",
        );
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        r
    }

    async fn function_error(&self, id: &str, req: Request<Incoming>) -> Handled {
        if let Some(r) = self.precheck(id) {
            return refuse(r, req);
        }
        let header_type = header_error_type(req.headers());
        let until = self.broker.deadline(id).map(body_deadline);
        let info = match read_body(req, MAX_ERROR_BYTES, until).await {
            Ok((body, _)) => parse_error_body(&body, header_type),
            Err(BodyError::Stalled) => return (self.stalled(id), None),
            Err(BodyError::TooLarge(unread)) => {
                self.broker.answer(
                    id,
                    Outcome::FunctionError(ErrorInfo::new(
                        header_type,
                        format!("the function's error payload exceeded {MAX_ERROR_BYTES} bytes"),
                    )),
                );
                return (
                    self.settled_status(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "RequestEntityTooLarge",
                        &format!("error payload exceeds {MAX_ERROR_BYTES} bytes"),
                    )),
                    Some(unread),
                );
            }
            Err(BodyError::Io(e)) => {
                ErrorInfo::new(header_type, format!("error body was cut off: {e}"))
            }
        };
        (
            self.answer_response(self.broker.answer(id, Outcome::FunctionError(info))),
            None,
        )
    }

    async fn init_error(&self, req: Request<Incoming>) -> Handled {
        let header_type = header_error_type(req.headers());
        let header_type = if header_type == "Function.Unknown" {
            "Runtime.Unknown".to_owned()
        } else {
            header_type
        };
        // An init error is recorded whatever its body: a body too large, cut off or stalled still fails the
        // init, with the header's type and a note instead of the message.
        let until = tokio::time::Instant::now() + INIT_ERROR_BODY_TIMEOUT;
        let mut unread = None;
        let info = match read_body(req, MAX_ERROR_BYTES, Some(until)).await {
            Ok((body, _)) => parse_error_body(&body, header_type),
            Err(BodyError::TooLarge(rest)) => {
                unread = Some(rest);
                ErrorInfo::new(
                    header_type,
                    format!("the init error payload exceeded {MAX_ERROR_BYTES} bytes"),
                )
            }
            Err(BodyError::Io(e)) => {
                ErrorInfo::new(header_type, format!("error body was cut off: {e}"))
            }
            Err(BodyError::Stalled) => ErrorInfo::new(
                header_type,
                "the error body did not arrive in time".to_owned(),
            ),
        };
        let response = match self.events.init_error(info) {
            InitErrorAnswer::Accepted => accepted(),
            InitErrorAnswer::Refused => error(
                StatusCode::FORBIDDEN,
                "InvalidStateTransition",
                "init error already reported or init already complete",
            ),
        };
        (response, unread)
    }
}

/// A response, and the body of its request when the request was refused before its body's end.
type Handled = (Response<Full<Bytes>>, Option<Unread>);

/// `response` for `req`, whose body was not read.
fn refuse(response: Response<Full<Bytes>>, req: Request<Incoming>) -> Handled {
    (response, Unread::of(req.into_body()))
}

/// The rest of a refused request's body.
#[derive(Debug)]
struct Unread {
    body: Incoming,
    /// Bytes of it read before the refusal.
    read: u64,
}

impl Unread {
    /// `body` as unread, or `None` when it has nothing left.
    fn of(body: Incoming) -> Option<Self> {
        (!body.is_end_stream()).then_some(Self { body, read: 0 })
    }

    /// Reads and drops the rest of the body, so that a runtime that writes its whole body before it reads
    /// the status gets the status on a connection that stays open. `false` when the body is (or is declared)
    /// larger than [`DISCARD_MAX_BYTES`], breaks, or is not over within [`DISCARD_TIMEOUT`]: then the
    /// connection cannot be kept.
    async fn discard(self) -> bool {
        let Self { mut body, read } = self;
        let remaining = body.size_hint().exact();
        if remaining.is_some_and(|n| read.saturating_add(n) > DISCARD_MAX_BYTES) {
            return false;
        }
        let drain = async {
            let mut total = read;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return false };
                if let Some(data) = frame.data_ref() {
                    total = total.saturating_add(data.len() as u64);
                    if total > DISCARD_MAX_BYTES {
                        return false;
                    }
                }
            }
            true
        };
        tokio::time::timeout(DISCARD_TIMEOUT, drain)
            .await
            .unwrap_or(false)
    }
}

/// A path segment with its percent-escapes decoded (`+` stays `+`); `None` when an escape is malformed or
/// the result is not UTF-8.
fn percent_decode(segment: &str) -> Option<Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[derive(Debug)]
enum BodyError {
    /// The body passed its limit; the rest is left unread.
    TooLarge(Unread),
    Io(hyper::Error),
    /// The body was not complete by the invoke's deadline (plus [`BODY_GRACE`]).
    Stalled,
}

/// How long after an invoke's deadline its answer's body may still arrive: the caller has had its timeout
/// by then, and a runtime that trickles (or stalls in) a body must not hold its slot and connection forever.
pub const BODY_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an `/init/error` body may take: init errors are small, and after init the environment would
/// not end a stalled one.
pub const INIT_ERROR_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The instant by which the body of the answer to an invoke due at `deadline` must be complete.
fn body_deadline(deadline: std::time::Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(deadline) + BODY_GRACE
}

/// Reads a body up to `limit` bytes (refusing at once on a larger Content-Length), with its trailers, until
/// `until` at the latest.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    until: Option<tokio::time::Instant>,
) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
    match until {
        Some(t) => tokio::time::timeout_at(t, read_body_unbounded(req, limit))
            .await
            .unwrap_or(Err(BodyError::Stalled)),
        None => read_body_unbounded(req, limit).await,
    }
}

async fn read_body_unbounded(
    req: Request<Incoming>,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), BodyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(Unread { body, read: 0 }));
    }
    let capacity = declared
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
        .min(limit);
    // A body that arrives in one frame (the common case: a small answer in one segment) is kept as that
    // frame, without a copy; only a body in several frames is gathered into one buffer.
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut len = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Io)?;
        match frame.into_data() {
            Ok(data) => {
                len += data.len();
                if len > limit {
                    return Err(BodyError::TooLarge(Unread {
                        body,
                        read: len as u64,
                    }));
                }
                if let Some(buf) = gathered.as_mut() {
                    buf.extend_from_slice(&data);
                } else if let Some(head) = first.take() {
                    let mut buf = BytesMut::with_capacity(capacity.max(len));
                    buf.extend_from_slice(&head);
                    buf.extend_from_slice(&data);
                    gathered = Some(buf);
                } else {
                    first = Some(data);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    let body = match (gathered, first) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(data)) => data,
        (None, None) => Bytes::new(),
    };
    Ok((body, trailers))
}

/// How passing a streamed body on ended.
#[derive(Debug)]
enum Passed {
    /// The body ended, with these trailers.
    Ended(Option<HeaderMap>),
    /// The body passed the limit; the rest is unread.
    TooLarge(Unread),
    Io(hyper::Error),
    /// The caller stopped reading (went away or timed out); the rest is unread.
    CallerGone(Unread),
    /// The deadline passed first.
    Stalled,
}

/// Sends each data frame of `body` to `chunks`, waiting while the channel is full (so that hyper stops
/// reading the connection and TCP flow control reaches the runtime), up to `limit` bytes in all.
async fn pass_chunks(
    mut body: Incoming,
    chunks: tokio::sync::mpsc::Sender<Bytes>,
    limit: usize,
) -> Passed {
    let mut len = 0usize;
    let mut trailers = None;
    loop {
        // A caller that goes away while the runtime is between chunks ends the pass at once.
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = chunks.closed() => return Passed::CallerGone(Unread { body, read: len as u64 }),
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Passed::Io(e),
        };
        match frame.into_data() {
            Ok(data) => {
                len = len.saturating_add(data.len());
                if len > limit {
                    return Passed::TooLarge(Unread {
                        body,
                        read: len as u64,
                    });
                }
                if data.is_empty() {
                    continue;
                }
                if chunks.send(data).await.is_err() {
                    return Passed::CallerGone(Unread {
                        body,
                        read: len as u64,
                    });
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Passed::Ended(trailers)
}

/// The error a streamed response declared in its trailers, if any.
fn stream_error(trailers: &HeaderMap) -> Option<ErrorInfo> {
    let error_type = trailers.get(ERROR_TYPE)?.to_str().ok()?.trim().to_owned();
    if error_type.is_empty() {
        return None;
    }
    let body = trailers
        .get(ERROR_BODY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .ok()
        })
        .unwrap_or_default();
    Some(parse_error_body(&body, error_type))
}

/// The error type header, kept when shaped `Function.Xxx` / `Runtime.Xxx`, else `Function.Unknown`.
fn header_error_type(headers: &HeaderMap) -> String {
    let v = headers
        .get(ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let shaped = ["Function.", "Runtime."].iter().any(|p| {
        v.strip_prefix(p).is_some_and(|rest| {
            !rest.is_empty()
                && rest.len() <= 128
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        })
    });
    if shaped {
        v.to_owned()
    } else {
        "Function.Unknown".to_owned()
    }
}

/// `{"errorMessage","errorType","stackTrace"}` → ErrorInfo; a body that is not that JSON becomes the message.
/// The stack may also come as `trace`: the shape Node.js runtimes report (the official `aws-lambda-ric` sends
/// `{"errorType","errorMessage","trace"}`).
fn parse_error_body(body: &[u8], header_type: String) -> ErrorInfo {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "errorMessage", default)]
        message: Option<serde_json::Value>,
        #[serde(rename = "errorType", default)]
        error_type: Option<String>,
        #[serde(rename = "stackTrace", alias = "trace", default)]
        stack_trace: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => ErrorInfo {
            error_type: b
                .error_type
                .filter(|t| !t.is_empty())
                .unwrap_or(header_type),
            message: match b.message {
                Some(serde_json::Value::String(s)) => s,
                Some(serde_json::Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            },
            stack_trace: match b.stack_trace {
                Some(serde_json::Value::Array(items)) => items
                    .into_iter()
                    .map(|i| match i {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect(),
                Some(serde_json::Value::String(s)) => s.lines().map(str::to_owned).collect(),
                _ => Vec::new(),
            },
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
            ErrorInfo::new(header_type, text)
        }
    }
}

fn event_response(event: Event) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(event.payload));
    let h = r.headers_mut();
    h.reserve(6);
    h.insert(CONTENT_TYPE, APPLICATION_JSON);
    h.insert(DEADLINE_MS, HeaderValue::from(event.deadline_ms));
    // Values were validated at the control API; a value that still cannot be a header is left out rather
    // than failing the invoke.
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(REQUEST_ID, &event.request_id);
    set(FUNCTION_ARN, &event.function_arn);
    if let Some(t) = &event.trace_id {
        set(TRACE_ID, t);
    }
    if let Some(c) = &event.client_context {
        set(CLIENT_CONTEXT, c);
    }
    r
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    r
}

fn error(status: StatusCode, error_type: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        Bytes::from(
            serde_json::json!({ "errorMessage": message, "errorType": error_type }).to_string(),
        ),
    )
}

fn accepted() -> Response<Full<Bytes>> {
    json_response(StatusCode::ACCEPTED, Bytes::from_static(ACCEPTED_BODY))
}

fn not_found() -> Response<Full<Bytes>> {
    error(StatusCode::NOT_FOUND, "NotFound", "unknown path")
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "method not allowed",
    )
}

fn invalid_request_id() -> Response<Full<Bytes>> {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "unknown request id, or the invoke was already answered",
    )
}

fn too_late() -> Response<Full<Bytes>> {
    error(
        StatusCode::GONE,
        "InvokeTimeout",
        "the invoke already timed out",
    )
}

impl RuntimeApi {
    /// The status of an answer to an invoke the agent already ended: `refusal` in [`SettledAnswers::Refuse`]
    /// mode, else 202.
    fn settled_status(&self, refusal: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        match self.settled {
            SettledAnswers::Accept => accepted(),
            SettledAnswers::Refuse => refusal,
        }
    }

    fn answer_response(&self, a: Answer) -> Response<Full<Bytes>> {
        match a {
            Answer::Accepted => accepted(),
            Answer::Unknown => invalid_request_id(),
            Answer::TooLate => self.settled_status(too_late()),
        }
    }
}

#[cfg(test)]
mod tests;
