//! Runtime API behaviour over real loopback HTTP.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::*;
use crate::broker::Pending;

#[derive(Debug, Default)]
struct Recorder {
    polls: AtomicUsize,
    init_errors: Mutex<Vec<ErrorInfo>>,
}

impl RuntimeEvents for Recorder {
    fn polled(&self) {
        self.polls.fetch_add(1, Ordering::SeqCst);
    }
    fn init_error(&self, error: ErrorInfo) -> InitErrorAnswer {
        let mut v = self.init_errors.lock().unwrap();
        v.push(error);
        if v.len() == 1 {
            InitErrorAnswer::Accepted
        } else {
            InitErrorAnswer::Refused
        }
    }
}

struct Harness {
    addr: SocketAddr,
    broker: Arc<Broker>,
    events: Arc<Recorder>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn harness(max: u32) -> Harness {
    harness_with(max, HEADER_READ_TIMEOUT).await
}

/// The API in the mode that refuses late (410) and oversized (413) answers: most tests here check that a
/// refusal's status reaches the runtime; [`accepting_harness`] runs the default mode.
async fn harness_with(max: u32, header_timeout: Duration) -> Harness {
    serve(max, header_timeout, crate::SettledAnswers::Refuse).await
}

/// The default mode: a late or oversized answer is read, dropped and answered 202.
async fn accepting_harness(max: u32) -> Harness {
    serve(max, HEADER_READ_TIMEOUT, crate::SettledAnswers::Accept).await
}

async fn serve(max: u32, header_timeout: Duration, settled: crate::SettledAnswers) -> Harness {
    let broker = Broker::new(max);
    let events = Arc::new(Recorder::default());
    let api = RuntimeApi::new(broker.clone(), events.clone())
        .with_limits(header_timeout, 8)
        .with_settled_answers(settled);
    let (l, addr) = RuntimeApi::bind_loopback().await.unwrap();
    let server = tokio::spawn(api.serve(l));
    Harness {
        addr,
        broker,
        events,
        server,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn post(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post(format!("http://x{PREFIX}{path}"))
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

async fn next(addr: SocketAddr) -> Reply {
    send(
        addr,
        Request::get(format!("http://x{PREFIX}invocation/next"))
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await
}

fn submit(b: &Arc<Broker>, id: &str) -> Pending {
    b.submit(Event::new(
        id.into(),
        Bytes::from_static(br#"{"k":1}"#),
        Duration::from_secs(30),
        "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
        Some("Root=1-abc".into()),
        Some("eyJjIjoxfQ==".into()),
    ))
    .unwrap()
}

#[tokio::test]
async fn next_carries_the_event_and_headers_and_response_reaches_the_caller() {
    let h = harness(4).await;
    let p = submit(&h.broker, "req-1");
    let r = next(h.addr).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), br#"{"k":1}"#);
    assert_eq!(r.headers["lambda-runtime-aws-request-id"], "req-1");
    assert_eq!(r.headers["lambda-runtime-trace-id"], "Root=1-abc");
    assert_eq!(r.headers["lambda-runtime-client-context"], "eyJjIjoxfQ==");
    assert_eq!(
        r.headers["lambda-runtime-invoked-function-arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST"
    );
    let deadline: u64 = r.headers["lambda-runtime-deadline-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(deadline > 1_600_000_000_000);
    assert_eq!(h.events.polls.load(Ordering::SeqCst), 1);

    let mut req = post("invocation/req-1/response", b"\"hi\"");
    req.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let r = send(h.addr, req).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json(), serde_json::json!({"status": "OK"}));
    assert_eq!(
        p.wait(Duration::from_secs(5)).await,
        Outcome::Success {
            payload: Bytes::from_static(b"\"hi\""),
            content_type: "text/plain".into()
        }
    );
    // a second answer for the same id
    let r = send(h.addr, post("invocation/req-1/response", b"1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errorType"], "InvalidRequestID");
}

#[tokio::test]
async fn error_carries_type_message_and_stack() {
    let h = harness(4).await;
    let p = submit(&h.broker, "e1");
    next(h.addr).await;
    let mut req = post(
        "invocation/e1/error",
        br#"{"errorMessage":"bad input: 7","errorType":"ValueError","stackTrace":["  File \"app.py\", line 3, in handler\n"]}"#,
    );
    req.headers_mut()
        .insert(ERROR_TYPE, HeaderValue::from_static("Function.ValueError"));
    assert_eq!(send(h.addr, req).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        p.wait(Duration::from_secs(5)).await,
        Outcome::FunctionError(ErrorInfo {
            error_type: "ValueError".into(),
            message: "bad input: 7".into(),
            stack_trace: vec!["  File \"app.py\", line 3, in handler\n".into()],
        })
    );
}

#[tokio::test]
async fn a_node_error_body_gives_its_trace_as_the_stack() {
    let h = harness(4).await;
    let p = submit(&h.broker, "e3");
    next(h.addr).await;
    // What aws-lambda-ric posts: no error-type header, the stack under "trace".
    let req = post(
        "invocation/e3/error",
        br#"{"errorType":"TypeError","errorMessage":"nope","trace":["TypeError: nope","    at handler (file:///var/task/index.mjs:3:9)"]}"#,
    );
    assert_eq!(send(h.addr, req).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        p.wait(Duration::from_secs(5)).await,
        Outcome::FunctionError(ErrorInfo {
            error_type: "TypeError".into(),
            message: "nope".into(),
            stack_trace: vec![
                "TypeError: nope".into(),
                "    at handler (file:///var/task/index.mjs:3:9)".into()
            ],
        })
    );
}

#[tokio::test]
async fn error_body_that_is_not_json_becomes_the_message() {
    let h = harness(4).await;
    let p = submit(&h.broker, "e2");
    next(h.addr).await;
    let mut req = post("invocation/e2/error", b"segfault");
    req.headers_mut()
        .insert(ERROR_TYPE, HeaderValue::from_static("not shaped"));
    assert_eq!(send(h.addr, req).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        p.wait(Duration::from_secs(5)).await,
        Outcome::FunctionError(ErrorInfo::new("Function.Unknown", "segfault"))
    );
}

#[tokio::test]
async fn unknown_and_late_ids() {
    let h = harness(4).await;
    let r = send(h.addr, post("invocation/nope/response", b"1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = send(h.addr, post("invocation/nope/error", b"{}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let p = submit(&h.broker, "slow");
    next(h.addr).await;
    assert!(matches!(
        p.wait(Duration::from_millis(10)).await,
        Outcome::Timeout(_)
    ));
    let r = send(h.addr, post("invocation/slow/response", b"1")).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(h.broker.in_flight(), 0, "the late answer frees the slot");
}

#[tokio::test]
async fn oversized_response_by_content_length_tells_the_caller_before_the_body_and_the_runtime_after_it(
) {
    let h = harness(4).await;
    let p = submit(&h.broker, "big");
    next(h.addr).await;
    let mut c = RawConn::open(h.addr).await;
    let len = MAX_RESPONSE_BYTES + 1;
    c.write(&post_head("invocation/big/response", len)).await;
    // The caller is told from the declared length alone, before any byte of the body arrived.
    match p.wait(Duration::from_secs(5)).await {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        other => panic!("{other:?}"),
    }
    // The runtime, which writes its whole body before it reads, gets the 413 on an open connection.
    c.write(&vec![b'x'; len]).await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), None);
    assert_still_serves(&h, &mut c).await;
}

#[tokio::test]
async fn oversized_chunked_response_is_cut_at_the_limit() {
    let h = harness(4).await;
    let p = submit(&h.broker, "chunky");
    next(h.addr).await;
    let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
    let frames = (0..8).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post(format!("http://x{PREFIX}invocation/chunky/response"))
        .body(body)
        .unwrap();
    let r = send(h.addr, req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    match p.wait(Duration::from_secs(5)).await {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn streamed_response_with_and_without_trailer_error() {
    let h = harness(4).await;
    let ok = submit(&h.broker, "s-ok");
    let bad = submit(&h.broker, "s-bad");
    next(h.addr).await;
    next(h.addr).await;
    let stream_req = |id: &str, trailers: Option<HeaderMap>| {
        let mut frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"part1-"))),
            Ok(Frame::data(Bytes::from_static(b"part2"))),
        ];
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        Request::post(format!("http://x{PREFIX}invocation/{id}/response"))
            .header(RESPONSE_MODE, "streaming")
            .header(
                "Trailer",
                "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body",
            )
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap()
    };
    assert_eq!(
        send(h.addr, stream_req("s-ok", None)).await.status,
        StatusCode::ACCEPTED
    );
    match ok.wait(Duration::from_secs(5)).await {
        Outcome::Success { payload, .. } => assert_eq!(payload.as_ref(), b"part1-part2"),
        other => panic!("{other:?}"),
    }
    let mut t = HeaderMap::new();
    t.insert(ERROR_TYPE, HeaderValue::from_static("Function.StreamBroke"));
    let body = base64::engine::general_purpose::STANDARD
        .encode(br#"{"errorMessage":"mid-stream","errorType":"StreamBroke"}"#);
    t.insert(ERROR_BODY, HeaderValue::from_str(&body).unwrap());
    assert_eq!(
        send(h.addr, stream_req("s-bad", Some(t))).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        bad.wait(Duration::from_secs(5)).await,
        Outcome::FunctionError(ErrorInfo::new("StreamBroke", "mid-stream"))
    );
}

#[tokio::test]
async fn bad_response_mode_is_400() {
    let h = harness(4).await;
    let _p = submit(&h.broker, "m");
    next(h.addr).await;
    let mut req = post("invocation/m/response", b"1");
    req.headers_mut()
        .insert(RESPONSE_MODE, HeaderValue::from_static("buffered-ish"));
    let r = send(h.addr, req).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errorType"], "InvalidResponseMode");
    assert_eq!(
        h.broker.claim("m"),
        Answer::Accepted,
        "the invoke can still be answered"
    );
}

#[tokio::test]
async fn init_error_first_wins_then_403() {
    let h = harness(4).await;
    let mut req = post(
        "init/error",
        br#"{"errorMessage":"boom","errorType":"Runtime.ImportModuleError","stackTrace":[]}"#,
    );
    req.headers_mut().insert(
        ERROR_TYPE,
        HeaderValue::from_static("Runtime.ImportModuleError"),
    );
    assert_eq!(send(h.addr, req).await.status, StatusCode::ACCEPTED);
    let r = send(h.addr, post("init/error", b"{}")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let errors = h.events.init_errors.lock().unwrap().clone();
    assert_eq!(
        errors[0],
        ErrorInfo::new("Runtime.ImportModuleError", "boom")
    );
    assert_eq!(errors[1].error_type, "Runtime.Unknown");
}

#[tokio::test]
async fn an_oversized_init_error_still_fails_the_init() {
    let h = harness(1).await;
    let mut c = RawConn::open(h.addr).await;
    let mut req = format!(
        "POST {PREFIX}init/error HTTP/1.1\r\nHost: x\r\nLambda-Runtime-Function-Error-Type: Runtime.Huge\r\nContent-Length: {}\r\n\r\n",
        MAX_ERROR_BYTES + 1
    )
    .into_bytes();
    req.resize(req.len() + MAX_ERROR_BYTES + 1, b'e');
    c.write(&req).await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("connection"), None);
    let errors = h.events.init_errors.lock().unwrap().clone();
    assert_eq!(errors[0].error_type, "Runtime.Huge");
    assert!(errors[0].message.contains("exceeded"), "{errors:?}");
    // A second worker's report, on the same connection, is refused with 403.
    c.write(&post_bytes("init/error", b"{}")).await;
    assert_eq!(c.read_reply().await.status, 403);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let h = harness(1).await;
    let r = send(h.addr, post("invocation/next", b"")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = send(
        h.addr,
        Request::get(format!("http://x{PREFIX}invocation/x/response"))
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    for p in [
        "/",
        "/2018-06-01/runtime/",
        "/2018-06-01/runtime/invocation/a/b/response",
        "/2018-06-01/runtime/invocation//response",
    ] {
        let r = send(
            h.addr,
            Request::get(format!("http://x{p}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{p}");
    }
}

#[tokio::test]
async fn closing_the_environment_answers_parked_next_with_500() {
    let h = harness(1).await;
    let addr = h.addr;
    let parked = tokio::spawn(async move { next(addr).await });
    while h.events.polls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    h.broker.close(None);
    let r = parked.await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn garbage_on_the_socket_does_not_hurt_the_server() {
    let h = harness(1).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"\x00\x01NOT HTTP AT ALL\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let p = submit(&h.broker, "after");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    assert_eq!(
        send(h.addr, post("invocation/after/response", b"1"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert!(matches!(
        p.wait(Duration::from_secs(5)).await,
        Outcome::Success { .. }
    ));
}

#[tokio::test]
async fn a_client_that_stalls_in_its_headers_is_cut_off() {
    let h = harness_with(4, Duration::from_millis(300)).await;
    // Slowloris: half a request head, then nothing. The server closes the connection.
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_the_api_keeps_serving() {
    let h = harness(4).await; // cap 8 in the harness
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        // Make sure the server accepted it (a full request/response on it).
        s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
        held.push(s);
    }
    let mut extra = TcpStream::connect(h.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n,
        0,
        "the ninth connection got an answer: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // Closing one frees a place.
    drop(held.pop());
    let p = submit(&h.broker, "after-cap");
    let start = std::time::Instant::now();
    let r = loop {
        // The server notices the close asynchronously; retry until a place is free (bounded).
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let _ = s
            .write_all(
                format!("GET {PREFIX}invocation/next HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            )
            .await;
        let mut buf = [0u8; 2048];
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => assert!(start.elapsed() < Duration::from_secs(10), "no place freed"),
        }
        tokio::task::yield_now().await;
    };
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    drop(p);
}

#[test]
fn error_type_header_shapes() {
    let mut h = HeaderMap::new();
    assert_eq!(header_error_type(&h), "Function.Unknown");
    h.insert(ERROR_TYPE, HeaderValue::from_static("Runtime.OutOfMemory"));
    assert_eq!(header_error_type(&h), "Runtime.OutOfMemory");
    h.insert(ERROR_TYPE, HeaderValue::from_static("Function."));
    assert_eq!(header_error_type(&h), "Function.Unknown");
    h.insert(ERROR_TYPE, HeaderValue::from_static("Evil\"Type"));
    assert_eq!(header_error_type(&h), "Function.Unknown");
}

#[tokio::test]
async fn a_response_body_that_stalls_ends_at_the_invoke_deadline_and_frees_the_slot() {
    let h = harness(4).await;
    let p = h
        .broker
        .submit(Event::new(
            "slow".into(),
            Bytes::from_static(b"{}"),
            Duration::from_millis(300),
            "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
            None,
            None,
        ))
        .unwrap();
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    // Headers promise 100 bytes; 10 come, then nothing.
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(
        format!(
            "POST {PREFIX}invocation/slow/response HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The caller gets its timeout at the deadline, whatever the runtime is still sending.
    let outcome = p.wait(Duration::from_millis(300)).await;
    assert!(matches!(outcome, Outcome::Timeout(_)), "{outcome:?}");
    // Past the deadline and the grace, the runtime is told 408 and its connection is closed.
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // The slot the stalled answer held is free again, and the id is answered.
    assert_eq!(h.broker.in_flight(), 0);
    assert_eq!(
        send(h.addr, post("invocation/slow/response", b"late"))
            .await
            .status,
        StatusCode::GONE
    );
}

// ---- Refusals reach the runtime, and its connection stays usable (raw HTTP/1.1, as a runtime writes it) ----

/// One client connection written and read by hand: the whole request (head and body) is written before the
/// status is read, as the official runtime clients do.
struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl RawConn {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one response (its body by Content-Length).
    async fn read_reply(&mut self) -> RawReply {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap()["HTTP/1.1 ".len()..][..3]
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        self.buf.drain(..head_end + 4);
        while self.buf.len() < len {
            self.fill().await;
        }
        let body = self.buf.drain(..len).collect();
        RawReply {
            status,
            headers,
            body,
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
            .await
            .expect("no reply within 30 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Whether the server closed the connection (EOF or reset) with nothing more to read.
    async fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn post_head(path: &str, content_length: usize) -> Vec<u8> {
    format!("POST {PREFIX}{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n\r\n")
        .into_bytes()
}

fn post_bytes(path: &str, body: &[u8]) -> Vec<u8> {
    let mut v = post_head(path, body.len());
    v.extend_from_slice(body);
    v
}

/// `body` in chunked transfer coding, in chunks of `chunk` bytes.
fn post_chunked(path: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut v =
        format!("POST {PREFIX}{path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    for c in body.chunks(chunk) {
        v.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        v.extend_from_slice(c);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

/// The connection `c` still serves: a new invoke is polled and answered on it (and on a new connection).
async fn assert_still_serves(h: &Harness, c: &mut RawConn) {
    static N: AtomicUsize = AtomicUsize::new(0);
    for fresh in [false, true] {
        let id = format!("after-{}", N.fetch_add(1, Ordering::SeqCst));
        let p = submit(&h.broker, &id);
        let mut new_conn;
        let conn = if fresh {
            new_conn = RawConn::open(h.addr).await;
            &mut new_conn
        } else {
            &mut *c
        };
        conn.write(format!("GET {PREFIX}invocation/next HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let r = conn.read_reply().await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("lambda-runtime-aws-request-id"), Some(id.as_str()));
        conn.write(&post_bytes(&format!("invocation/{id}/response"), b"\"ok\""))
            .await;
        assert_eq!(conn.read_reply().await.status, 202);
        assert!(matches!(
            p.wait(Duration::from_secs(5)).await,
            Outcome::Success { .. }
        ));
    }
    assert_eq!(h.broker.in_flight(), 0);
}

#[tokio::test]
async fn an_unknown_id_is_refused_with_400_after_its_body_and_the_connection_stays_usable() {
    let h = harness(4).await;
    let mut c = RawConn::open(h.addr).await;
    // A body larger than a socket buffer: the client must write all of it before it reads.
    let body = vec![b'x'; 2 * 1024 * 1024];
    for path in ["invocation/nope/response", "invocation/nope/error"] {
        c.write(&post_bytes(path, &body)).await;
        let r = c.read_reply().await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["errorType"], "InvalidRequestID");
        assert_eq!(r.header("connection"), None);
        c.write(&post_chunked(path, &body, 64 * 1024)).await;
        assert_eq!(c.read_reply().await.status, 400, "{path} chunked");
    }
    assert_still_serves(&h, &mut c).await;
}

#[tokio::test]
async fn a_late_answer_is_refused_with_410_after_its_body_and_the_connection_stays_usable() {
    let h = harness(4).await;
    for (i, chunked) in [false, true].into_iter().enumerate() {
        let id = format!("late-{i}");
        let p = submit(&h.broker, &id);
        assert_eq!(next(h.addr).await.status, StatusCode::OK);
        assert!(matches!(
            p.wait(Duration::from_millis(10)).await,
            Outcome::Timeout(_)
        ));
        let mut c = RawConn::open(h.addr).await;
        let body = vec![b'y'; 3 * 1024 * 1024];
        let path = format!("invocation/{id}/response");
        c.write(&if chunked {
            post_chunked(&path, &body, 100_000)
        } else {
            post_bytes(&path, &body)
        })
        .await;
        let r = c.read_reply().await;
        assert_eq!(r.status, 410);
        assert_eq!(r.json()["errorType"], "InvokeTimeout");
        assert_eq!(r.header("connection"), None);
        assert_eq!(h.broker.in_flight(), 0, "the late answer frees the slot");
        assert_still_serves(&h, &mut c).await;
    }
}

#[tokio::test]
async fn an_oversized_chunked_answer_gets_413_and_the_connection_stays_usable() {
    let h = harness(4).await;
    let p = submit(&h.broker, "chunky");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    let mut c = RawConn::open(h.addr).await;
    let body = vec![b'z'; MAX_RESPONSE_BYTES + 1024 * 1024];
    c.write(&post_chunked(
        "invocation/chunky/response",
        &body,
        256 * 1024,
    ))
    .await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["errorType"], "RequestEntityTooLarge");
    assert_eq!(r.header("connection"), None);
    match p.wait(Duration::from_secs(5)).await {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        other => panic!("{other:?}"),
    }
    assert_still_serves(&h, &mut c).await;
}

#[tokio::test]
async fn an_oversized_error_body_gets_413_and_the_connection_stays_usable() {
    let h = harness(4).await;
    let p = submit(&h.broker, "err-big");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    let mut c = RawConn::open(h.addr).await;
    c.write(&post_bytes(
        "invocation/err-big/error",
        &vec![b'e'; MAX_ERROR_BYTES + 1],
    ))
    .await;
    assert_eq!(c.read_reply().await.status, 413);
    assert!(matches!(
        p.wait(Duration::from_secs(5)).await,
        Outcome::FunctionError(_)
    ));
    assert_still_serves(&h, &mut c).await;
}

#[tokio::test]
async fn a_body_declared_past_the_discard_bound_gets_its_status_with_connection_close() {
    let h = harness(4).await;
    let p = submit(&h.broker, "huge");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    let mut c = RawConn::open(h.addr).await;
    // Only the head: a body this large is not read, the status goes out at once and the connection ends.
    let declared = usize::try_from(DISCARD_MAX_BYTES).unwrap() + 1;
    c.write(&post_head("invocation/huge/response", declared))
        .await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server().await);
    match p.wait(Duration::from_secs(5)).await {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        other => panic!("{other:?}"),
    }
    let mut fresh = RawConn::open(h.addr).await;
    assert_still_serves(&h, &mut fresh).await;
}

#[tokio::test]
async fn a_chunked_body_past_the_discard_bound_ends_the_connection() {
    let h = harness(4).await;
    let p = submit(&h.broker, "endless");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // The client keeps writing past the bound; the server stops reading there and closes.
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST {PREFIX}invocation/endless/response HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'q'; 1024 * 1024];
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        // Far past the bound: more than the socket buffers on both sides can hold once the server stops.
        for _ in 0..(DISCARD_MAX_BYTES / (1024 * 1024) + 64) {
            wr.write_all(&framed).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    assert!(
        writer.await.unwrap().is_err(),
        "the server read a body past the discard bound"
    );
    // Whatever reached the client before the reset is a 413 saying Connection: close.
    let mut buf = Vec::new();
    let _ = rd.read_to_end(&mut buf).await;
    if !buf.is_empty() {
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 413"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
    }
    match p.wait(Duration::from_secs(5)).await {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        other => panic!("{other:?}"),
    }
    let mut fresh = RawConn::open(h.addr).await;
    assert_still_serves(&h, &mut fresh).await;
}

#[tokio::test]
async fn a_client_waiting_for_100_continue_gets_the_refusal_without_sending_its_body() {
    let h = harness(4).await;
    let mut c = RawConn::open(h.addr).await;
    c.write(
        format!(
            "POST {PREFIX}invocation/nope/response HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    let mut fresh = RawConn::open(h.addr).await;
    assert_still_serves(&h, &mut fresh).await;
}

#[tokio::test]
async fn refusals_of_paths_and_modes_read_the_body_too() {
    let h = harness(4).await;
    let _p = submit(&h.broker, "m");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    let mut c = RawConn::open(h.addr).await;
    let body = vec![b'b'; 1024 * 1024];
    c.write(&post_bytes("invocation/a/b/response", &body)).await;
    assert_eq!(c.read_reply().await.status, 404);
    c.write(&post_bytes("nowhere", &body)).await;
    assert_eq!(c.read_reply().await.status, 404);
    let mut mode = format!(
        "POST {PREFIX}invocation/m/response HTTP/1.1\r\nHost: x\r\nLambda-Runtime-Function-Response-Mode: nope\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    mode.extend_from_slice(&body);
    c.write(&mode).await;
    assert_eq!(c.read_reply().await.status, 400);
    c.write(&post_bytes("invocation/m/response", b"1")).await;
    assert_eq!(c.read_reply().await.status, 202);
    assert_still_serves(&h, &mut c).await;
}

#[test]
fn path_segments_are_percent_decoded() {
    assert_eq!(percent_decode("plain-id_1.2:3").unwrap(), "plain-id_1.2:3");
    assert_eq!(percent_decode("a%2Fb%3Fc%23d%25e").unwrap(), "a/b?c#d%e");
    assert_eq!(percent_decode("a%2fb").unwrap(), "a/b");
    assert_eq!(percent_decode("sp%20ace+plus").unwrap(), "sp ace+plus");
    assert_eq!(percent_decode("%C3%A9").unwrap(), "é");
    for bad in ["%", "%2", "%zz", "a%g1", "%FF"] {
        assert_eq!(percent_decode(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn an_id_encoded_in_the_path_is_decoded_before_it_is_matched() {
    let h = harness(4).await;
    let id = "a/b?c#d%e";
    let p = submit(&h.broker, id);
    let r = next(h.addr).await;
    assert_eq!(r.headers["lambda-runtime-aws-request-id"], id);
    let mut c = RawConn::open(h.addr).await;
    c.write(&post_bytes(
        "invocation/a%2Fb%3Fc%23d%25e/response",
        b"\"enc\"",
    ))
    .await;
    assert_eq!(c.read_reply().await.status, 202);
    match p.wait(Duration::from_secs(5)).await {
        Outcome::Success { payload, .. } => assert_eq!(payload.as_ref(), b"\"enc\""),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.broker.in_flight(), 0);
    // A malformed escape is an id no invoke has.
    c.write(&post_bytes("invocation/a%zz/response", b"1")).await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorType"], "InvalidRequestID");
}

/// The default mode: a late answer and an oversized one (declared, chunked, and an oversized error body) are
/// read to their end and answered 202 on a connection that stays open, while the caller's outcome is what it
/// is in the refusing mode: its timeout, or `Function.ResponseSizeTooLarge`. The official Go client exits on
/// any other status.
#[tokio::test]
async fn by_default_late_and_oversized_answers_get_202_and_the_caller_its_outcome() {
    let h = accepting_harness(4).await;
    let mut c = RawConn::open(h.addr).await;

    let late = submit(&h.broker, "late");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    assert!(matches!(
        late.wait(Duration::from_millis(10)).await,
        Outcome::Timeout(_)
    ));
    c.write(&post_bytes(
        "invocation/late/response",
        &vec![b'y'; 1024 * 1024],
    ))
    .await;
    let r = c.read_reply().await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("connection"), None);
    assert_eq!(h.broker.in_flight(), 0, "the late answer frees the slot");

    let big = vec![b'z'; MAX_RESPONSE_BYTES + 1024 * 1024];
    for (id, request) in [
        ("declared", post_bytes("invocation/declared/response", &big)),
        (
            "chunked",
            post_chunked("invocation/chunked/response", &big, 256 * 1024),
        ),
        (
            "error",
            post_bytes("invocation/error/error", &vec![b'e'; MAX_ERROR_BYTES + 1]),
        ),
    ] {
        let p = submit(&h.broker, id);
        assert_eq!(next(h.addr).await.status, StatusCode::OK);
        c.write(&request).await;
        let r = c.read_reply().await;
        assert_eq!(r.status, 202, "{id}");
        assert_eq!(r.header("connection"), None, "{id}");
        match p.wait(Duration::from_secs(5)).await {
            Outcome::FunctionError(e) if id == "error" => {
                assert!(e.message.contains("exceeded"), "{e:?}")
            }
            Outcome::FunctionError(e) => {
                assert_eq!(e.error_type, "Function.ResponseSizeTooLarge", "{id}")
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    // An unknown id is still a runtime bug, and still refused.
    c.write(&post_bytes("invocation/nope/response", b"{}"))
        .await;
    assert_eq!(c.read_reply().await.status, 400);
    assert_still_serves(&h, &mut c).await;
}

/// The runtime's connection goes away in the middle of its answer: the caller learns it at once (not at its
/// deadline), the slot comes back, and the API serves the next invoke.
#[tokio::test]
async fn an_answer_cut_off_by_a_closed_connection_ends_the_invoke_and_frees_its_slot() {
    let h = harness(2).await;
    let p = submit(&h.broker, "cut");
    assert_eq!(next(h.addr).await.status, StatusCode::OK);
    let mut c = RawConn::open(h.addr).await;
    let mut request = post_head("invocation/cut/response", 1000);
    request.extend_from_slice(b"{\"partial\":");
    c.write(&request).await;
    drop(c);
    match p.wait(Duration::from_secs(60)).await {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Runtime.TruncatedResponse"),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.broker.in_flight(), 0);
    let mut fresh = RawConn::open(h.addr).await;
    assert_still_serves(&h, &mut fresh).await;
}

mod streaming;
