//! The AWS Lambda Invoke API (`POST /2015-03-31/functions/{FunctionName}/invocations`) over HTTP, so that the
//! AWS CLI (`--endpoint-url`) and SDKs such as boto3 can invoke functions on the agent.
//!
//! Built on [`Agent::invoke`]. What the API does, as Lambda does it:
//! - `FunctionName` is a name, `name:qualifier`, a partial ARN (`account:function:name`) or a full ARN; the
//!   `Qualifier` query parameter names the version (default `$LATEST`; a qualifier in the name must agree).
//! - `X-Amz-Invocation-Type`: `RequestResponse` (default) runs the invoke and answers with its result;
//!   `DryRun` answers 204 when the function version has an environment here; `Event` puts the invoke into a
//!   queue bounded in count (`event_queue`) and in payload bytes (`event_queue_bytes`) and answers 202, or 429
//!   `TooManyRequestsException` (`Reason: EventQueueFull`) when either bound would be passed. Queued invokes
//!   run on `event_workers` tasks; a throttled one is retried with backoff until `event_max_age_seconds`, then
//!   dropped; each one's single outcome is logged.
//! - A function error, timeout or runtime failure is 200 with `X-Amz-Function-Error: Unhandled` and the error
//!   JSON (`errorMessage`, `errorType`, `stackTrace`) as the body.
//! - A throttle is 429 with `x-amzn-ErrorType: TooManyRequestsException` and
//!   `{"Type":"User","message":...,"Reason":...}` (Reason = `CONCURRENCY`, `CPU`, `MEMORY` or `DISK`).
//! - No environment for the function version: 404 `ResourceNotFoundException`.
//! - Every answer carries `X-Amz-Request-Id` (and `x-amzn-RequestId`, which the SDKs read); results carry
//!   `X-Amz-Executed-Version`.
//!
//! - `POST /2021-11-15/functions/{FunctionName}/response-streaming-invocations` (`InvokeWithResponseStream`,
//!   boto3's `invoke_with_response_stream`): the answer is an `application/vnd.amazon.eventstream` body of
//!   `PayloadChunk` events carrying the function's chunks as it writes them (one chunk for a function that
//!   does not stream), then one `InvokeComplete` event whose `ErrorCode` (the error type) and `ErrorDetails`
//!   (the error JSON) say how a failed invoke ended, mid-stream or before. The caller's reading paces the
//!   function (see `lmi_runtime_api::broker`); a caller that disconnects ends the invoke and frees its slot.
//!   `DryRun` answers 204; `Event` is not an invocation type of this operation (400).
//!
//! Requests are not authenticated (SigV4 signatures are ignored): bind the listener to loopback or a private
//! interface only.

use std::{
    borrow::Cow,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Either, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header::{HeaderName, HeaderValue, CONTENT_TYPE},
    Method, Request, Response, StatusCode,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch, Semaphore},
    task::JoinSet,
};

use crate::event_stream;
use crate::listener::{self, BodyError, ListenerLimits};
use lmi_agent_core::agent::{
    Agent, InvokeError, InvokeInput, InvokeResult, StreamedInvoke, MAX_INVOKE_PAYLOAD,
};
use lmi_agent_core::config::InvokeApiConfig;
use lmi_agent_core::spec::LATEST;
use lmi_agent_core::text::{quote, shown};
use lmi_runtime_api::broker::{Answered, Piece};
use lmi_runtime_api::invocation::{ErrorInfo, Outcome};

/// Largest payload of an asynchronous (`Event`) invoke (Lambda's 1 MB limit).
pub const MAX_EVENT_PAYLOAD: usize = 1024 * 1024;

const PATH_PREFIX: &str = "/2015-03-31/functions/";
const PATH_SUFFIX: &str = "/invocations";
const STREAM_PATH_PREFIX: &str = "/2021-11-15/functions/";
const STREAM_PATH_SUFFIX: &str = "/response-streaming-invocations";

/// Event-stream messages of one streamed answer that may wait for the caller.
const STREAM_MESSAGES: usize = 4;

/// The body of every answer: whole (not boxed: no allocation for it per answer), or an event stream.
pub type ApiBody = Either<Full<Bytes>, BoxBody<Bytes, Infallible>>;

fn boxed(r: Response<Full<Bytes>>) -> Response<ApiBody> {
    r.map(Either::Left)
}

/// How an invoke is to be run (`X-Amz-Invocation-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    RequestResponse,
    Event,
    DryRun,
}

impl InvocationType {
    fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("RequestResponse") => Ok(Self::RequestResponse),
            Some("Event") => Ok(Self::Event),
            Some("DryRun") => Ok(Self::DryRun),
            Some(other) => Err(ApiError::invalid_parameter(format!(
                "X-Amz-Invocation-Type must be RequestResponse, Event or DryRun, not {}",
                quote(other)
            ))),
        }
    }
}

/// The function and version a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub function: String,
    pub version: String,
}

/// Splits `FunctionName` (already percent-decoded) and `Qualifier` into a function name and version.
pub fn parse_target(function_name: &str, qualifier: Option<&str>) -> Result<Target, String> {
    // At most 8 parts (a full ARN with a qualifier); more is no form below. On the stack: no Vec per request.
    let mut parts = [""; 9];
    let mut n = 0;
    for part in function_name.split(':').take(parts.len()) {
        parts[n] = part;
        n += 1;
    }
    let (name, from_name) = match &parts[..n] {
        [name] => (*name, None),
        [name, q] => (*name, Some(*q)),
        // account:function:name[:qualifier]
        [_, "function", name] => (*name, None),
        [_, "function", name, q] => (*name, Some(*q)),
        // arn:partition:lambda:region:account:function:name[:qualifier]
        ["arn", _, "lambda", _, _, "function", name] => (*name, None),
        ["arn", _, "lambda", _, _, "function", name, q] => (*name, Some(*q)),
        _ => {
            return Err(format!(
                "FunctionName {} is not a function name, name:qualifier or function ARN",
                quote(function_name)
            ))
        }
    };
    let name_ok = !name.is_empty()
        && name.len() <= 140
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(format!(
            "function name {} must be 1-140 letters, digits, '-' or '_'",
            quote(name)
        ));
    }
    let qualifier = qualifier.filter(|q| !q.is_empty());
    let version = match (from_name, qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "the qualifier in FunctionName ({}) does not match the Qualifier parameter ({})",
                shown(a),
                shown(b)
            ))
        }
        (Some(q), _) | (None, Some(q)) => q,
        (None, None) => LATEST,
    };
    let version_ok = !version.is_empty()
        && version.len() <= 128
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"$-_".contains(&b));
    if !version_ok {
        return Err(format!(
            "qualifier {} is not a valid version",
            quote(version)
        ));
    }
    Ok(Target {
        function: name.to_owned(),
        version: version.to_owned(),
    })
}

/// Decodes `%XX` escapes of a URL path segment or query value (borrowed when there is none).
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The value of query parameter `name`, decoded (`+` is a space in query strings).
fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            let v = if v.contains('+') {
                Cow::Owned(v.replace('+', " "))
            } else {
                Cow::Borrowed(v)
            };
            return percent_decode(&v)
                .map(|d| Some(d.into_owned()))
                .ok_or_else(|| {
                    ApiError::invalid_parameter(format!(
                        "query parameter {name} is not valid percent-encoded UTF-8"
                    ))
                });
        }
    }
    Ok(None)
}

/// An error answer in Lambda's REST-JSON error shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
    reason: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
            reason: None,
        }
    }

    fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }

    fn not_found(target: &Target, arn: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!(
                "Function not found: {arn}:{} (no execution environment for {} version {} on this host)",
                target.version, target.function, target.version
            ),
        )
    }

    fn throttled(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: Some(reason.to_owned()),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                message,
            )
        }
    }

    fn response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let mut body = serde_json::json!({ "Type": "User", "message": self.message });
        if let Some(r) = &self.reason {
            body["Reason"] = serde_json::Value::String(r.clone());
        }
        if self.status.is_server_error() {
            body["Type"] = serde_json::Value::String("Service".to_owned());
        }
        let mut r = respond(
            self.status,
            request_id,
            Bytes::from(body.to_string()),
            "application/json",
        );
        r.headers_mut().insert(
            HeaderName::from_static("x-amzn-errortype"),
            HeaderValue::from_static(self.error_type),
        );
        // Answered before the body was read whole: the connection cannot carry another request.
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            r = listener::closing(r);
        }
        r
    }
}

/// One queued asynchronous invoke.
#[derive(Debug)]
struct QueuedEvent {
    input: InvokeInput,
    accepted_at: tokio::time::Instant,
    /// Its payload's share of `invoke_api.event_queue_bytes`, given back when the event ends.
    _bytes: EventBytes,
}

/// The payload bytes of asynchronous invokes accepted and not yet finished, bounded by
/// `invoke_api.event_queue_bytes`: the count bound alone let 1024 queued 1 MB payloads hold about 1 GiB. When
/// they drain to zero after a flood, free heap is handed back to the kernel (`malloc_trim`): glibc may keep freed
/// chunks in its arenas (a 1 MB buffer is served from an arena rather than `mmap` once glibc's dynamic mmap
/// threshold has risen past it), which a trim releases.
#[derive(Debug)]
struct EventBudget {
    limit: usize,
    used: AtomicUsize,
    /// The most bytes held since the last trim.
    peak: AtomicUsize,
}

/// Held bytes past which a drain to zero trims the heap.
const TRIM_AFTER_BYTES: usize = 16 * 1024 * 1024;

impl EventBudget {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// Takes `n` bytes of the budget, or `None` when that would pass the limit.
    fn take(self: &Arc<Self>, n: usize) -> Option<EventBytes> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .ok()?;
        self.peak
            .fetch_max(self.used.load(Ordering::Acquire), Ordering::AcqRel);
        Some(EventBytes {
            budget: self.clone(),
            n,
        })
    }
}

/// A share of the [`EventBudget`]; given back on drop.
#[derive(Debug)]
struct EventBytes {
    budget: Arc<EventBudget>,
    n: usize,
}

impl Drop for EventBytes {
    fn drop(&mut self) {
        let before = self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
        if before != self.n {
            return;
        }
        let peak = self.budget.peak.swap(0, Ordering::AcqRel);
        if peak < TRIM_AFTER_BYTES {
            return;
        }
        // Drained after a flood: hand the freed heap back, off the async workers (a trim walks every arena).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                let trimmed = trim_heap();
                tracing::info!(
                    peak_bytes = peak as u64,
                    trimmed,
                    "asynchronous invoke queue drained; freed heap returned"
                );
            });
        }
    }
}

/// Returns free heap memory to the kernel (`malloc_trim(0)`); whether any was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    // SAFETY: malloc_trim only walks and releases the allocator's free memory; it is thread-safe.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

/// The Invoke API server. Start it with [`InvokeApi::start`].
#[derive(Debug)]
pub struct InvokeApi {
    agent: Arc<Agent>,
    events: mpsc::Sender<QueuedEvent>,
    event_bytes: Arc<EventBudget>,
    arn_prefix: String,
    limits: ListenerLimits,
}

/// A running Invoke API: the listener and the asynchronous invoke workers.
#[derive(Debug)]
pub struct InvokeApiHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl InvokeApiHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and requests (a request in progress on a connection finishes) and stops
    /// the asynchronous workers: queued events that have not started are dropped (each logged); running ones
    /// finish as the agent drains.
    pub fn begin_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until everything [`InvokeApiHandle::begin_stop`] stopped has ended.
    pub async fn join(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl InvokeApi {
    /// Binds the listener. Separate from [`InvokeApi::start`] so the daemon can bind before it says READY.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    /// Serves the API on `listener` and starts the asynchronous invoke workers.
    pub fn start(
        agent: Arc<Agent>,
        config: &InvokeApiConfig,
        listener: TcpListener,
    ) -> std::io::Result<InvokeApiHandle> {
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(config.event_queue.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let arn_prefix = format!(
            "arn:aws:lambda:{}:{}:function:",
            agent.config().region,
            agent.config().account_id
        );
        let api = Arc::new(Self {
            agent: agent.clone(),
            events: tx,
            event_bytes: EventBudget::new(config.event_queue_bytes.max(1)),
            arn_prefix,
            limits: ListenerLimits::from(&agent.config().listeners),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(api.serve(listener, stop_rx.clone()));
        tasks.spawn(run_events(
            agent,
            rx,
            config.event_workers.max(1),
            Duration::from_secs(u64::from(config.event_max_age_seconds)),
            stop_rx,
        ));
        tracing::info!(%addr, "invoke API listening");
        Ok(InvokeApiHandle { addr, stop, tasks })
    }

    /// Serves the listener with the limits every listener of the agent has (`[listeners]`: header and body
    /// timeouts, connection cap) until `stop`.
    async fn serve(self: Arc<Self>, listener: TcpListener, stop: watch::Receiver<bool>) {
        let limits = self.limits;
        listener::serve_http1("invoke API", listener, limits, stop, move |req| {
            let api = self.clone();
            async move { api.handle(req).await }
        })
        .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ApiBody> {
        // Written straight into a stack buffer (to_string would go through the formatting machinery).
        let mut id_buf = uuid::Uuid::encode_buffer();
        let request_id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id_buf);
        match self.route(req, request_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(request_id, status = %e.status, error = %e.message, "invoke API request refused");
                boxed(e.response(request_id))
            }
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        request_id: &str,
    ) -> Result<Response<ApiBody>, ApiError> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let name_in = |prefix: &str, suffix: &str| {
            path.strip_prefix(prefix)
                .and_then(|p| p.strip_suffix(suffix))
                .filter(|n| !n.is_empty() && !n.contains('/'))
        };
        let (encoded_name, streaming) = match (
            name_in(PATH_PREFIX, PATH_SUFFIX),
            name_in(STREAM_PATH_PREFIX, STREAM_PATH_SUFFIX),
        ) {
            (Some(n), _) => (n, false),
            (None, Some(n)) => (n, true),
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "UnknownOperationException",
                    format!(
                        "no operation at {path}: only POST {PATH_PREFIX}{{FunctionName}}{PATH_SUFFIX} and \
                         {STREAM_PATH_PREFIX}{{FunctionName}}{STREAM_PATH_SUFFIX} are served"
                    ),
                ))
            }
        };
        if parts.method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "UnknownOperationException",
                format!("{} is not allowed here: use POST", parts.method),
            ));
        }
        let function_name = percent_decode(encoded_name).ok_or_else(|| {
            ApiError::invalid_parameter("FunctionName is not valid percent-encoded UTF-8")
        })?;
        let qualifier = query_param(parts.uri.query(), "Qualifier")?;
        let target = parse_target(&function_name, qualifier.as_deref())
            .map_err(ApiError::invalid_parameter)?;
        let header = |name: &str| -> Result<Option<&str>, ApiError> {
            parts
                .headers
                .get(name)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        ApiError::invalid_parameter(format!("header {name} is not visible ASCII"))
                    })
                })
                .transpose()
        };
        let invocation_type = InvocationType::parse(header("x-amz-invocation-type")?)?;
        if streaming && invocation_type == InvocationType::Event {
            return Err(ApiError::invalid_parameter(
                "X-Amz-Invocation-Type of a response-streaming invoke must be RequestResponse or DryRun",
            ));
        }
        let client_context = header("x-amz-client-context")?
            .map(decode_client_context)
            .transpose()?;
        let trace_id = header("x-amzn-trace-id")?.map(str::to_owned);
        // `Tail`: the answer carries the last 4 KB of the invoke's log lines (X-Amz-Log-Result), as Lambda's.
        let log_tail = match header("x-amz-log-type")? {
            None | Some("None") => false,
            Some("Tail") => true,
            Some(other) => {
                return Err(ApiError::invalid_parameter(format!(
                    "X-Amz-Log-Type must be None or Tail, not {other:?}"
                )))
            }
        };
        let limit = match invocation_type {
            InvocationType::Event => MAX_EVENT_PAYLOAD,
            _ => MAX_INVOKE_PAYLOAD,
        };
        let payload = read_payload(body, limit, self.limits.body_timeout).await?;

        // A plain synchronous invoke learns this from `Agent::invoke` (NoEnvironment) without listing every
        // environment of the host per request; the other kinds need it before they answer.
        let plain = !streaming && invocation_type == InvocationType::RequestResponse && !log_tail;
        if !plain && !self.has_environment(&target) {
            return Err(ApiError::not_found(
                &target,
                &format!("{}{}", self.arn_prefix, target.function),
            ));
        }
        let input = InvokeInput {
            function_name: target.function.clone(),
            version: target.version.clone(),
            payload,
            request_id: Some(request_id.to_owned()),
            client_context,
            trace_id,
        };
        if streaming && invocation_type == InvocationType::RequestResponse {
            return self.invoke_streaming(input, target, request_id).await;
        }
        let log_tail = log_tail && invocation_type == InvocationType::RequestResponse;
        self.invoke_whole(input, target, invocation_type, request_id, log_tail)
            .await
            .map(boxed)
    }

    /// Whether the function version has an environment here (in any state).
    fn has_environment(&self, target: &Target) -> bool {
        !self
            .agent
            .list(Some(&target.function), Some(&target.version))
            .is_empty()
    }

    async fn invoke_whole(
        &self,
        input: InvokeInput,
        target: Target,
        invocation_type: InvocationType,
        request_id: &str,
        log_tail: bool,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        match invocation_type {
            InvocationType::DryRun => Ok(respond(
                StatusCode::NO_CONTENT,
                request_id,
                Bytes::new(),
                "application/json",
            )),
            InvocationType::Event => {
                let Some(bytes) = self.event_bytes.take(input.payload.len()) else {
                    return Err(ApiError::throttled(
                        "EventQueueFull",
                        "the agent's queue of asynchronous invokes holds its limit of payload bytes (invoke_api.event_queue_bytes); retry later",
                    ));
                };
                match self.events.try_send(QueuedEvent {
                    input,
                    accepted_at: tokio::time::Instant::now(),
                    _bytes: bytes,
                }) {
                    Ok(()) => Ok(respond(
                        StatusCode::ACCEPTED,
                        request_id,
                        Bytes::new(),
                        "application/json",
                    )),
                    Err(mpsc::error::TrySendError::Full(_)) => Err(ApiError::throttled(
                        "EventQueueFull",
                        "the agent's queue of asynchronous invokes is full (invoke_api.event_queue); retry later",
                    )),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceException",
                        "the agent is shutting down",
                    )),
                }
            }
            InvocationType::RequestResponse if log_tail => {
                let (result, tail) = self
                    .agent
                    .invoke_with_tail(input)
                    .await
                    .map_err(|e| invoke_error(e, &target, &self.arn_prefix))?;
                let mut r = result_response(result);
                if let Ok(v) =
                    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(tail))
                {
                    r.headers_mut().insert("x-amz-log-result", v);
                }
                Ok(r)
            }
            InvocationType::RequestResponse => {
                let result = self.agent.invoke(input).await.map_err(|e| match e {
                    // `Agent::invoke` checks a few things before it looks for an environment (draining, the
                    // input): no environment stays the answer that comes first, as when it was checked here.
                    InvokeError::Draining | InvokeError::Invalid(_)
                        if !self.has_environment(&target) =>
                    {
                        InvokeError::NoEnvironment {
                            function: target.function.clone(),
                            version: target.version.clone(),
                        }
                    }
                    e => e,
                });
                let result = result.map_err(|e| invoke_error(e, &target, &self.arn_prefix))?;
                Ok(result_response(result))
            }
        }
    }
}

impl InvokeApi {
    /// Runs a response-streaming invoke on a task of its own and answers with its event stream once an
    /// environment took it (a refusal before that is the usual error answer).
    async fn invoke_streaming(
        &self,
        input: InvokeInput,
        target: Target,
        request_id: &str,
    ) -> Result<Response<ApiBody>, ApiError> {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(STREAM_MESSAGES);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<String>();
        let closed = tx.clone();
        let agent = self.agent.clone();
        let task = tokio::spawn(async move {
            let run = agent.invoke_streaming(input, |invoke| async move {
                let _ = started_tx.send(invoke.version.clone());
                forward_events(invoke, tx).await;
            });
            tokio::select! {
                ran = run => ran,
                // The caller went away: dropping the invoke cancels it and frees its slot.
                () = closed.closed() => Ok(()),
            }
        });
        let version = match started_rx.await {
            Ok(version) => version,
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => invoke_error(e, &target, &self.arn_prefix),
                    Ok(Ok(())) => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        "the invoke ended before it started",
                    ),
                    Err(e) => ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ServiceException",
                        format!("invoke task failed: {e}"),
                    ),
                })
            }
        };
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut r = Response::new(Either::Right(BodyExt::boxed(body)));
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amz-request-id", v.clone());
            h.insert("x-amzn-requestid", v);
        }
        if let Ok(v) = HeaderValue::from_str(&version) {
            h.insert("x-amz-executed-version", v);
        }
        Ok(r)
    }
}

/// Writes the invoke's answer as event-stream messages: its chunks, then `InvokeComplete`; returns early
/// (dropping the stream, which cancels the invoke) when the caller has gone.
async fn forward_events(
    invoke: StreamedInvoke,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) {
    let send = |m: Bytes| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(m))).await.is_ok() }
    };
    match invoke.answer {
        Answered::Whole(outcome) => {
            if let Outcome::Success { payload, .. } = &outcome {
                if !payload.is_empty() && !send(event_stream::payload_chunk(payload)).await {
                    return;
                }
            }
            let _ = send(complete(&outcome)).await;
        }
        Answered::Stream(mut stream) => {
            while let Some(piece) = stream.next().await {
                let message = match &piece {
                    Piece::Chunk(c) => event_stream::payload_chunk(c),
                    Piece::End(outcome) => complete(outcome),
                };
                if !send(message).await {
                    return;
                }
            }
        }
    }
}

/// The `InvokeComplete` event of an outcome.
fn complete(outcome: &Outcome) -> Bytes {
    match outcome {
        Outcome::Success { .. } => event_stream::invoke_complete(None, None, None),
        Outcome::FunctionError(e) | Outcome::Timeout(e) | Outcome::RuntimeFailure(e) => {
            let details = error_body(e);
            event_stream::invoke_complete(
                Some(&e.error_type),
                Some(&String::from_utf8_lossy(&details)),
                None,
            )
        }
    }
}

fn invoke_error(e: InvokeError, target: &Target, arn_prefix: &str) -> ApiError {
    match e {
        InvokeError::Invalid(m) => {
            ApiError::new(StatusCode::BAD_REQUEST, "InvalidRequestContentException", m)
        }
        InvokeError::NoEnvironment { .. } => {
            ApiError::not_found(target, &format!("{arn_prefix}{}", target.function))
        }
        InvokeError::DuplicateRequestId(id) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            format!("request id {id} is already in flight"),
        ),
        InvokeError::Throttled { reason, message } => {
            ApiError::throttled(reason.as_str(), format!("Rate Exceeded. {message}"))
        }
        e @ InvokeError::Draining => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceException",
            e.to_string(),
        ),
    }
}

/// The answer to a finished synchronous invoke.
fn result_response(result: InvokeResult) -> Response<Full<Bytes>> {
    let (body, content_type, error) = match result.outcome {
        Outcome::Success {
            payload,
            content_type,
        } => (payload, Cow::Owned(content_type), false),
        Outcome::FunctionError(e) | Outcome::Timeout(e) | Outcome::RuntimeFailure(e) => {
            (error_body(&e), Cow::Borrowed(JSON), true)
        }
    };
    let content_type = if content_type.is_empty() {
        JSON
    } else {
        &content_type
    };
    let mut r = respond(StatusCode::OK, &result.request_id, body, content_type);
    let version = if result.version == LATEST {
        Ok(HeaderValue::from_static(LATEST))
    } else {
        HeaderValue::from_str(&result.version)
    };
    if let Ok(v) = version {
        r.headers_mut().insert(X_AMZ_EXECUTED_VERSION, v);
    }
    if error {
        r.headers_mut().insert(
            HeaderName::from_static("x-amz-function-error"),
            HeaderValue::from_static("Unhandled"),
        );
    }
    r
}

/// The error JSON Lambda returns for a failed invoke.
fn error_body(e: &ErrorInfo) -> Bytes {
    let mut body = serde_json::json!({ "errorMessage": e.message, "errorType": e.error_type });
    if !e.stack_trace.is_empty() {
        body["stackTrace"] = serde_json::json!(e.stack_trace);
    }
    Bytes::from(body.to_string())
}

fn respond(
    status: StatusCode,
    request_id: &str,
    body: Bytes,
    content_type: &str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    // Four headers at most here and one or two more after: room for them at once.
    h.reserve(6);
    let content_type = if content_type == JSON {
        HeaderValue::from_static(JSON)
    } else {
        HeaderValue::from_str(content_type)
            .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
    };
    h.insert(CONTENT_TYPE, content_type);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_AMZ_REQUEST_ID, v.clone());
        h.insert(X_AMZN_REQUESTID, v);
    }
    r
}

const JSON: &str = "application/json";
const X_AMZ_REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");
const X_AMZN_REQUESTID: HeaderName = HeaderName::from_static("x-amzn-requestid");
const X_AMZ_EXECUTED_VERSION: HeaderName = HeaderName::from_static("x-amz-executed-version");

/// `X-Amz-Client-Context` is base64 of a JSON object; the runtime gets the JSON.
fn decode_client_context(value: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "X-Amz-Client-Context must be a base64-encoded JSON object",
        )
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| bad())?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if !json.is_object() {
        return Err(bad());
    }
    Ok(json.to_string())
}

/// Reads the request body up to `limit` bytes (refusing as soon as it is passed) within `deadline`, and checks
/// it is JSON; an empty body is the empty object.
async fn read_payload(body: Incoming, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    let buf = listener::read_body(body, limit, deadline)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!("Request must be smaller than {limit} bytes for the Invoke operation"),
            ),
            BodyError::TimedOut(_) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                e.to_string(),
            ),
            BodyError::Read(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContentException",
                e.to_string(),
            ),
        })?;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&buf).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json: the payload must be JSON",
        ));
    }
    Ok(buf)
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs queued asynchronous invokes, at most `workers` at once, until `stop`.
async fn run_events(
    agent: Arc<Agent>,
    mut rx: mpsc::Receiver<QueuedEvent>,
    workers: usize,
    max_age: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(workers));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let event = tokio::select! {
            _ = stopped(&mut stop) => break,
            e = rx.recv() => match e { Some(e) => e, None => break },
        };
        let agent = agent.clone();
        let stop = stop.clone();
        running.spawn(async move {
            run_event(&agent, event, max_age, stop).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    // Stopping: events that never started end here, each with its one outcome logged.
    rx.close();
    while let Ok(event) = rx.try_recv() {
        tracing::warn!(request_id = event.input.request_id.as_deref().unwrap_or(""), function = %event.input.function_name,
            "asynchronous invoke dropped: the agent is shutting down");
    }
    while running.join_next().await.is_some() {}
}

/// One asynchronous invoke: retried with backoff while throttled, until `max_age` since it was accepted.
async fn run_event(
    agent: &Agent,
    event: QueuedEvent,
    max_age: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let request_id = event.input.request_id.clone().unwrap_or_default();
    let function = event.input.function_name.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        match agent.invoke(event.input.clone()).await {
            Ok(result) => {
                match &result.outcome {
                    Outcome::Success { .. } => {
                        tracing::info!(request_id, function, version = %result.version, env = %result.environment_id, outcome = result.outcome.kind(), "asynchronous invoke finished")
                    }
                    Outcome::FunctionError(e)
                    | Outcome::Timeout(e)
                    | Outcome::RuntimeFailure(e) => {
                        tracing::warn!(request_id, function, version = %result.version, env = %result.environment_id, outcome = result.outcome.kind(), error_type = %e.error_type, error = %e.message, "asynchronous invoke failed")
                    }
                }
                return;
            }
            Err(InvokeError::Throttled { reason, .. })
                if event.accepted_at.elapsed() + backoff < max_age =>
            {
                tracing::debug!(
                    request_id,
                    function,
                    reason = reason.as_str(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "asynchronous invoke throttled; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut stop) => {
                        tracing::warn!(request_id, function, "asynchronous invoke dropped: the agent is shutting down");
                        return;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                tracing::warn!(request_id, function, error = %e, "asynchronous invoke dropped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_in_every_form() {
        let t = |n: &str, q: Option<&str>| parse_target(n, q);
        let latest = Target {
            function: "hello".into(),
            version: "$LATEST".into(),
        };
        let v3 = Target {
            function: "hello".into(),
            version: "3".into(),
        };
        assert_eq!(t("hello", None), Ok(latest.clone()));
        assert_eq!(t("hello", Some("")), Ok(latest.clone()));
        assert_eq!(t("hello", Some("3")), Ok(v3.clone()));
        assert_eq!(t("hello:3", None), Ok(v3.clone()));
        assert_eq!(t("hello:3", Some("3")), Ok(v3.clone()));
        assert_eq!(t("123456789012:function:hello", None), Ok(latest.clone()));
        assert_eq!(
            t(
                "arn:aws:lambda:us-east-1:123456789012:function:hello:3",
                None
            ),
            Ok(v3.clone())
        );
        assert_eq!(
            t(
                "arn:aws:lambda:us-east-1:123456789012:function:hello",
                Some("$LATEST")
            ),
            Ok(latest)
        );
        assert!(t("hello:3", Some("4"))
            .unwrap_err()
            .contains("does not match"));
        assert!(t("", None).is_err());
        assert!(t("he/llo", None).is_err());
        assert!(t("a:b:c", None).is_err());
        assert!(t("arn:aws:lambda:r:1:function:hello:3:x", None).is_err());
        assert!(t("a:b:c:d:e:f:g:h:i:j:k", None).is_err());
        assert!(t("hello", Some("v 1")).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab").as_deref(), Some("a:b"));
        assert_eq!(percent_decode("%24LATEST").as_deref(), Some("$LATEST"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn invocation_types() {
        assert_eq!(
            InvocationType::parse(None).unwrap(),
            InvocationType::RequestResponse
        );
        assert_eq!(
            InvocationType::parse(Some("Event")).unwrap(),
            InvocationType::Event
        );
        assert_eq!(
            InvocationType::parse(Some("DryRun")).unwrap(),
            InvocationType::DryRun
        );
        let e = InvocationType::parse(Some("Later")).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("Later"));
    }

    #[test]
    fn client_context_is_base64_json_object() {
        let enc = base64::engine::general_purpose::STANDARD.encode(br#"{"custom":{"a":1}}"#);
        assert_eq!(
            decode_client_context(&enc).unwrap(),
            r#"{"custom":{"a":1}}"#
        );
        assert!(decode_client_context("not base64!").is_err());
        let arr = base64::engine::general_purpose::STANDARD.encode(b"[1]");
        assert!(decode_client_context(&arr).is_err());
    }

    #[test]
    fn error_answers_have_the_rest_json_shape() {
        let r = ApiError::throttled("CONCURRENCY", "Rate Exceeded.").response("rid");
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
        assert_eq!(r.headers()["x-amz-request-id"], "rid");
    }
}
