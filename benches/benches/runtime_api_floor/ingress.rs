//! The per-ingress floors: the `minimal` Runtime API responder behind a minimal ingress of each kind, loaded
//! from outside this process by the sweep's own load generator, `lmictl bench invoke`, run as a child.
//!
//! - `minimal-http`: the HTTP Invoke API on loopback TCP. A request head is read to its blank line, its body
//!   by its Content-Length; a `POST /2015-03-31/functions/NAME/invocations` is submitted to the exchange and
//!   answered with one pre-formatted `200` write holding the result (the agent's answer headers: content
//!   type, executed version, the request id under both its names); keep-alive. Anything else is a 404.
//! - `minimal-grpc-unary`, `minimal-grpc-stream`: `lmi.agent.v1.Agent` over HTTP/2 on a Unix socket (as the
//!   agent's control socket), made with the `h2` crate directly: no tonic, tower or routing layers. A unary
//!   `Invoke` reads its one message to the end of the stream and answers with headers, one message and a
//!   `grpc-status: 0` trailer; `InvokeStream` answers each message, matched by its tag, as soon as the
//!   runtime has answered it. h2's window sizes and stream limit are hyper's server defaults, the agent's.
//!
//! Both modes serve `ListEnvironments` too: `lmictl bench invoke` asks for the function's READY
//! environments (whose runtime pids it measures) before it sends load, over the gRPC socket even with
//! `--via http`. The answer is one READY environment whose pid is the native echo's.
//!
//! Every figure is lmictl's, over its measured window: throughput and round trip as the generator sees them,
//! this process's CPU (`--agent-pid` is this process), the runtime's, and lmictl's own. A run in which any
//! invoke did not succeed is printed and then reported as a failure.

use std::sync::Arc;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use h2::{server::SendResponse, RecvStream};
use hyper::http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, Request, Response};
use lmi_proto::v1::{
    invoke_stream_response, Environment, EnvironmentState, InvokeOutcome, InvokeRejection,
    InvokeRequest, InvokeResponse, InvokeStreamRequest, InvokeStreamResponse,
    ListEnvironmentsRequest, ListEnvironmentsResponse,
};
use prost::Message;
use serde_json::Value;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
};

use super::{
    read_request, release_binary, serve_minimal, spawn_runtime, tokio_runtime, Exchange, MAX_BODY,
};

/// The one function this server has.
const FUNCTION: &str = "floor";
const ENVIRONMENT_ID: &str = "floor-environment";
const INVOKE: &str = "/lmi.agent.v1.Agent/Invoke";
const INVOKE_STREAM: &str = "/lmi.agent.v1.Agent/InvokeStream";
const LIST_ENVIRONMENTS: &str = "/lmi.agent.v1.Agent/ListEnvironments";
/// hyper's HTTP/2 server defaults, which the agent's tonic server keeps.
const WINDOW: u32 = 1024 * 1024;
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// gRPC status codes (google.rpc.Code).
const INVALID_ARGUMENT: u32 = 3;
const NOT_FOUND: u32 = 5;
const RESOURCE_EXHAUSTED: u32 = 8;
const UNIMPLEMENTED: u32 = 12;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// A gRPC status: its code and message.
type Status = (u32, String);

/// Which ingress a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Http,
    Unary,
    Stream,
}

impl Ingress {
    /// The runs a name of `LMI_FLOOR_SERVERS` stands for.
    pub fn named(name: &str) -> Option<&'static [Ingress]> {
        match name {
            "minimal-http" => Some(&[Ingress::Http]),
            "minimal-grpc" => Some(&[Ingress::Unary, Ingress::Stream]),
            "minimal-grpc-unary" => Some(&[Ingress::Unary]),
            "minimal-grpc-stream" => Some(&[Ingress::Stream]),
            _ => None,
        }
    }

    /// Its name in the result line.
    pub fn name(self) -> &'static str {
        match self {
            Ingress::Http => "minimal-http",
            Ingress::Unary => "minimal-grpc-unary",
            Ingress::Stream => "minimal-grpc-stream",
        }
    }

    /// lmictl's `--via`.
    fn via(self) -> &'static str {
        match self {
            Ingress::Http => "http",
            Ingress::Unary => "unary",
            Ingress::Stream => "stream",
        }
    }
}

/// One run: the runtime against the `minimal` responder, the ingress, and lmictl's load at `concurrency`
/// for `seconds` (after a 1 s warm-up, as the in-process servers). Prints the result line.
pub fn run(ingress: Ingress, concurrency: u32, seconds: f64) -> Result<(), String> {
    let lmictl = release_binary("lmictl", "lmictl")?;
    let dir =
        tempfile::tempdir().map_err(|e| format!("creating a directory for the socket: {e}"))?;
    let socket = dir.path().join("floor.sock");
    tokio_runtime().block_on(async {
        let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
        let runtime_api = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(io("binding the Runtime API"))?;
        let runtime_api_addr = runtime_api
            .local_addr()
            .map_err(io("the Runtime API's address"))?;
        let exchange = Arc::new(Exchange::default());
        serve_minimal(runtime_api, exchange.clone());
        let mut runtime = spawn_runtime(runtime_api_addr, concurrency);
        let runtime_pid = runtime
            .id()
            .ok_or("the native echo runtime exited at once")?;
        serve_grpc(
            UnixListener::bind(&socket).map_err(io("binding the gRPC socket"))?,
            Arc::new(Grpc {
                exchange: exchange.clone(),
                runtime_pid,
                max_concurrency: concurrency,
            }),
        );
        let mut args = vec![
            "--socket".to_owned(),
            socket.display().to_string(),
            "--json".to_owned(),
            "bench".to_owned(),
            "invoke".to_owned(),
            FUNCTION.to_owned(),
            "-c".to_owned(),
            concurrency.to_string(),
            "-d".to_owned(),
            seconds.to_string(),
            "--warmup".to_owned(),
            "1".to_owned(),
            "--via".to_owned(),
            ingress.via().to_owned(),
            "--agent-pid".to_owned(),
            std::process::id().to_string(),
        ];
        // Open loop at a fixed rate instead (`LMI_FLOOR_RATE`, invokes per second; unary and HTTP only, as
        // lmictl's `--rate`): compares servers at the same offered load, which a closed loop does not.
        if let Some(rate) = std::env::var("LMI_FLOOR_RATE")
            .ok()
            .filter(|_| ingress != Ingress::Stream)
        {
            args.extend(["--rate".to_owned(), rate]);
        }
        if ingress == Ingress::Http {
            let listener = TcpListener::bind(("127.0.0.1", 0))
                .await
                .map_err(io("binding the Invoke API"))?;
            let addr = listener
                .local_addr()
                .map_err(io("the Invoke API's address"))?;
            serve_invoke_api(listener, exchange.clone());
            args.extend(["--invoke-api".to_owned(), addr.to_string()]);
        }
        let command = format!("{} {}", lmictl.display(), args.join(" "));
        eprintln!("{}: the load: {command}", ingress.name());
        let out = tokio::process::Command::new(&lmictl)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", lmictl.display()));
        let _ = runtime.kill().await;
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "`{command}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "`{command}` printed no JSON report ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        report_line(ingress, concurrency, &report)
    })
}

/// Prints the result line from lmictl's report, in the in-process servers' format plus the generator's CPU
/// and the outcomes; an error when any invoke did not succeed.
fn report_line(ingress: Ingress, concurrency: u32, r: &Value) -> Result<(), String> {
    let number = |pointer: &str| {
        r.pointer(pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("lmictl's report has no number at {pointer}: {r}"))
    };
    let invokes = r.pointer("/invokes").and_then(Value::as_u64).unwrap_or(0);
    let success = r
        .pointer("/outcomes/success")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    println!(
        "{:>8} server, concurrency {concurrency}: {:.0} invokes/s; round trip p50 {:.1} µs, p99 {:.1} µs; \
         CPU per invoke: server {:.1} µs, runtime {:.1} µs, generator {:.1} µs; {success} of {invokes} \
         invokes succeeded (lmictl --via {})",
        ingress.name(),
        number("/throughput_per_s")?,
        number("/latency/p50_us")?,
        number("/latency/p99_us")?,
        number("/agent/cpu_us_per_invoke")?,
        number("/runtime_cpu_us_per_invoke")?,
        number("/lmictl_cpu_us_per_invoke")?,
        ingress.via(),
    );
    if invokes == 0 || success != invokes {
        return Err(format!(
            "{} of {invokes} invokes did not succeed: outcomes {}, first error {}",
            invokes - success.min(invokes),
            r.pointer("/outcomes").unwrap_or(&Value::Null),
            r.pointer("/first_error").unwrap_or(&Value::Null),
        ));
    }
    Ok(())
}

// ---- The HTTP Invoke API ----

fn serve_invoke_api(listener: TcpListener, exchange: Arc<Exchange>) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(invoke_api_connection(s, exchange.clone()));
        }
    });
}

/// Whether a request line is `POST /2015-03-31/functions/NAME[:QUALIFIER]/invocations[?...] HTTP/1.1`.
fn is_invoke(first_line: &[u8]) -> bool {
    let mut parts = first_line.split(|b| *b == b' ');
    let (Some(b"POST"), Some(target)) = (parts.next(), parts.next()) else {
        return false;
    };
    let path = target.split(|b| *b == b'?').next().unwrap_or(target);
    path.starts_with(b"/2015-03-31/functions/") && path.ends_with(b"/invocations")
}

/// One caller's keep-alive connection: one request at a time, one write per answer.
async fn invoke_api_connection(mut stream: TcpStream, exchange: Arc<Exchange>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    while let Some((first_line, body)) = read_request(&mut stream, &mut buf).await {
        let reply = if is_invoke(&first_line) {
            let (id, answer) = exchange.submit(body);
            let Ok(result) = answer.await else {
                return;
            };
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-amz-executed-version: $LATEST\r\n\
                 x-amz-request-id: floor-{id}\r\nx-amzn-requestid: floor-{id}\r\ncontent-length: {}\r\n\r\n",
                result.len()
            )
            .into_bytes();
            r.extend_from_slice(&result);
            r
        } else {
            let body = r#"{"message":"this server answers POST /2015-03-31/functions/NAME/invocations only"}"#;
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\
                 x-amzn-errortype: ResourceNotFoundException\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

// ---- gRPC over h2 ----

/// What the gRPC calls share.
struct Grpc {
    exchange: Arc<Exchange>,
    runtime_pid: u32,
    max_concurrency: u32,
}

fn serve_grpc(listener: UnixListener, grpc: Arc<Grpc>) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(grpc_connection(s, grpc.clone()));
        }
    });
}

/// One HTTP/2 connection: the connection's own task reads and writes its frames; each call runs in a task
/// of its own (as hyper's server runs each stream).
async fn grpc_connection(io: UnixStream, grpc: Arc<Grpc>) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(io);
    let Ok(mut connection) = handshake.await else {
        return;
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        tokio::spawn(call(request, respond, grpc.clone()));
    }
}

async fn call(request: Request<RecvStream>, mut respond: SendResponse<Bytes>, grpc: Arc<Grpc>) {
    let (head, mut body) = request.into_parts();
    let answer = match head.uri.path() {
        INVOKE => invoke(&mut body, &grpc).await,
        LIST_ENVIRONMENTS => list_environments(&mut body, &grpc).await,
        INVOKE_STREAM => return invoke_stream(body, respond, &grpc).await,
        other => Err((
            UNIMPLEMENTED,
            format!("{other}: this floor server answers Invoke, InvokeStream and ListEnvironments"),
        )),
    };
    match answer {
        Ok(message) => {
            let Ok(mut send) = respond.send_response(ok_head(), false) else {
                return;
            };
            if send.send_data(message, false).is_ok() {
                let _ = send.send_trailers(trailers(0, ""));
            }
        }
        Err((code, message)) => {
            // Trailers-only: the status in the one header block that ends the stream.
            let mut head = ok_head();
            *head.headers_mut() = trailers(code, &message);
            head.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            let _ = respond.send_response(head, true);
        }
    }
}

fn ok_head() -> Response<()> {
    let mut head = Response::new(());
    head.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    head
}

/// `grpc-status` (and `grpc-message` unless empty, reduced to printable ASCII without `%`, which needs no
/// percent-encoding).
fn trailers(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert("grpc-status", HeaderValue::from(code));
    let plain: String = message
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '%' || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&plain) {
        if !plain.is_empty() {
            t.insert("grpc-message", v);
        }
    }
    t
}

/// A message in gRPC's length-prefixed framing (uncompressed).
fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut out)
        .expect("a BytesMut grows as needed");
    out.freeze()
}

/// The next whole message at the front of `buf`, if it holds one.
fn next_message(buf: &mut BytesMut) -> Result<Option<Bytes>, Status> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err((
            UNIMPLEMENTED,
            "compressed messages are not supported".to_owned(),
        ));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_BODY {
        return Err((
            RESOURCE_EXHAUSTED,
            format!("a message of {len} bytes is over {MAX_BODY}"),
        ));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let mut message = buf.split_to(5 + len);
    message.advance(5);
    Ok(Some(message.freeze()))
}

/// The one message of a unary call, read to the end of its stream.
async fn unary_message(body: &mut RecvStream) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| (INTERNAL, format!("reading the request: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > 5 + MAX_BODY {
            return Err((RESOURCE_EXHAUSTED, "the request is too large".to_owned()));
        }
        buf.extend_from_slice(&chunk);
    }
    match next_message(&mut buf)? {
        Some(message) if buf.is_empty() => Ok(message),
        _ => Err((
            INVALID_ARGUMENT,
            "a unary call takes exactly one whole message".to_owned(),
        )),
    }
}

fn invoke_response(id: u64, payload: Bytes) -> InvokeResponse {
    InvokeResponse {
        request_id: format!("floor-{id}"),
        environment_id: ENVIRONMENT_ID.to_owned(),
        executed_version: "$LATEST".to_owned(),
        outcome: InvokeOutcome::Success.into(),
        payload,
        content_type: "application/json".to_owned(),
        error: None,
    }
}

fn unknown_function(name: &str) -> Status {
    (
        NOT_FOUND,
        format!("function {name:?} not found: this server has {FUNCTION}"),
    )
}

fn runtime_gone() -> Status {
    (UNAVAILABLE, "the runtime went away".to_owned())
}

async fn invoke(body: &mut RecvStream, grpc: &Grpc) -> Result<Bytes, Status> {
    let message = unary_message(body).await?;
    let request = InvokeRequest::decode(message)
        .map_err(|e| (INVALID_ARGUMENT, format!("InvokeRequest: {e}")))?;
    if request.function_name != FUNCTION {
        return Err(unknown_function(&request.function_name));
    }
    let (id, answer) = grpc.exchange.submit(request.payload);
    let payload = answer.await.map_err(|_| runtime_gone())?;
    Ok(frame(&invoke_response(id, payload)))
}

async fn list_environments(body: &mut RecvStream, grpc: &Grpc) -> Result<Bytes, Status> {
    let message = unary_message(body).await?;
    let request = ListEnvironmentsRequest::decode(message)
        .map_err(|e| (INVALID_ARGUMENT, format!("ListEnvironmentsRequest: {e}")))?;
    let ours = [FUNCTION, ""].contains(&request.function_name.as_str());
    let environments = if ours {
        vec![Environment {
            id: ENVIRONMENT_ID.to_owned(),
            state: EnvironmentState::Ready.into(),
            max_concurrency: grpc.max_concurrency,
            pid: grpc.runtime_pid,
            ..Default::default()
        }]
    } else {
        Vec::new()
    };
    Ok(frame(&ListEnvironmentsResponse { environments }))
}

/// `InvokeStream`: every message is submitted as it arrives; every answer is sent, under its tag, as soon
/// as the runtime has given it, whatever the order.
async fn invoke_stream(mut body: RecvStream, mut respond: SendResponse<Bytes>, grpc: &Grpc) {
    let Ok(mut send) = respond.send_response(ok_head(), false) else {
        return;
    };
    let mut buf = BytesMut::new();
    let mut answers = FuturesUnordered::new();
    let mut reading = true;
    let (code, message) = 'serve: loop {
        tokio::select! {
            chunk = body.data(), if reading => match chunk {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    buf.extend_from_slice(&data);
                    loop {
                        let request = match next_message(&mut buf) {
                            Ok(Some(m)) => m,
                            Ok(None) => break,
                            Err(status) => break 'serve status,
                        };
                        let request = match InvokeStreamRequest::decode(request) {
                            Ok(r) => r,
                            Err(e) => break 'serve (INVALID_ARGUMENT, format!("InvokeStreamRequest: {e}")),
                        };
                        let tag = request.tag;
                        match request.invoke {
                            Some(invoke) if invoke.function_name == FUNCTION => {
                                let (id, answer) = grpc.exchange.submit(invoke.payload);
                                answers.push(async move { (tag, id, answer.await) });
                            }
                            other => {
                                let name = other.map(|i| i.function_name).unwrap_or_default();
                                let result = Some(rejection(unknown_function(&name)));
                                if send.send_data(frame(&InvokeStreamResponse { tag, result }), false).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
                Some(Err(_)) => return,
                None => reading = false,
            },
            Some((tag, id, answer)) = answers.next(), if !answers.is_empty() => {
                let result = Some(match answer {
                    Ok(payload) => invoke_stream_response::Result::Response(invoke_response(id, payload)),
                    Err(_) => rejection(runtime_gone()),
                });
                if send.send_data(frame(&InvokeStreamResponse { tag, result }), false).is_err() {
                    return;
                }
            }
            else => break (0, String::new()),
        }
    };
    let _ = send.send_trailers(trailers(code, &message));
}

fn rejection((code, message): Status) -> invoke_stream_response::Result {
    invoke_stream_response::Result::Rejected(InvokeRejection {
        code: i32::try_from(code).unwrap_or(i32::MAX),
        message,
        throttle: None,
    })
}
