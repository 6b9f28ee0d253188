//! The HTTP Invoke API as a load generator sees it: `POST /2015-03-31/functions/NAME[:QUALIFIER]/invocations`
//! over HTTP/1.1 keep-alive connections (one per caller, one request at a time on each, as the AWS SDKs and
//! the CLI send them), and how an answer is counted.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    client::conn::http1::SendRequest,
    header::{HeaderValue, CONTENT_TYPE, HOST},
    HeaderMap, Method, Request, StatusCode,
};

use super::load::Answer;

/// What every request of a run carries.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    /// The request's path, the function name and qualifier percent-encoded.
    pub path: String,
    host: HeaderValue,
    pub payload: Bytes,
}

impl HttpTarget {
    pub fn new(addr: SocketAddr, function: &str, version: Option<&str>, payload: Bytes) -> Self {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self {
            addr,
            path: invoke_path(function, version),
            host,
            payload,
        }
    }

    /// One invoke's request (`RequestResponse`, the default invocation type).
    pub fn request(&self) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(self.payload.clone()))
    }
}

/// Percent-encodes what a path segment may not hold as is (`$` of `$LATEST` included, as the SDKs do).
fn encode_segment(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// `/2015-03-31/functions/NAME[:QUALIFIER]/invocations`.
pub fn invoke_path(function: &str, version: Option<&str>) -> String {
    let mut path = String::from("/2015-03-31/functions/");
    encode_segment(function, &mut path);
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        path.push(':');
        encode_segment(v, &mut path);
    }
    path.push_str("/invocations");
    path
}

/// How an answer of the Invoke API ends, as `lmictl bench` counts it: 200 is a success unless it carries
/// `X-Amz-Function-Error`, then the error JSON's `errorType` tells a timeout (`Sandbox.Timedout`) and a
/// runtime failure (`Runtime.ExitError`) from a function error; 429 is a throttle; anything else is other.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Answer {
    match status {
        StatusCode::OK if !headers.contains_key("x-amz-function-error") => Answer::Success,
        StatusCode::OK => {
            let error_type = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("errorType")?.as_str().map(str::to_owned));
            match error_type.as_deref() {
                Some("Sandbox.Timedout") => Answer::Timeout,
                Some("Runtime.ExitError") => Answer::RuntimeFailure,
                _ => Answer::FunctionError,
            }
        }
        StatusCode::TOO_MANY_REQUESTS => Answer::Throttle,
        other => {
            let kind = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            Answer::Other(format!("HTTP {other} {kind}: {text}"))
        }
    }
}

/// One keep-alive connection to the Invoke API.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    /// Connects (TCP_NODELAY, as the agent's side) and drives the connection on a task of its own.
    pub async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender })
    }

    /// Whether the connection can carry another request.
    pub fn is_usable(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends one invoke and reads its whole answer.
    pub async fn invoke(&mut self, target: &HttpTarget) -> Answer {
        let request = match target.request() {
            Ok(r) => r,
            Err(e) => return Answer::Other(format!("building the request: {e}")),
        };
        if let Err(e) = self.sender.ready().await {
            return Answer::Other(format!("connection: {e}"));
        }
        let response = match self.sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => return Answer::Other(format!("sending: {e}")),
        };
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(body) => classify(parts.status, &parts.headers, &body.to_bytes()),
            Err(e) => Answer::Other(format!("reading the answer: {e}")),
        }
    }
}

/// Sends one invoke on `conn`, opening a new connection first when it is absent or closed (a failed one is
/// dropped, so the next invoke reconnects).
pub async fn invoke(conn: &mut Option<Connection>, target: &HttpTarget) -> Answer {
    if !conn.as_ref().is_some_and(Connection::is_usable) {
        match Connection::open(target.addr).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                *conn = None;
                return Answer::Other(format!("connecting to {}: {e}", target.addr));
            }
        }
    }
    let Some(c) = conn.as_mut() else {
        return Answer::Other("no connection".to_owned());
    };
    let answer = c.invoke(target).await;
    if matches!(answer, Answer::Other(_)) && !c.is_usable() {
        *conn = None;
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_the_function_and_its_qualifier() {
        assert_eq!(
            invoke_path("echo", None),
            "/2015-03-31/functions/echo/invocations"
        );
        assert_eq!(
            invoke_path("echo", Some("")),
            "/2015-03-31/functions/echo/invocations"
        );
        assert_eq!(
            invoke_path("echo", Some("$LATEST")),
            "/2015-03-31/functions/echo:%24LATEST/invocations"
        );
        assert_eq!(
            invoke_path("my-fn_2", Some("7")),
            "/2015-03-31/functions/my-fn_2:7/invocations"
        );
        assert_eq!(
            invoke_path("a b/c", None),
            "/2015-03-31/functions/a%20b%2Fc/invocations"
        );
    }

    #[test]
    fn a_request_is_a_json_post_to_the_path() {
        let t = HttpTarget::new(
            "127.0.0.1:9001".parse().unwrap(),
            "echo",
            Some("3"),
            Bytes::from_static(b"{\"a\":1}"),
        );
        let r = t.request().unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/2015-03-31/functions/echo:3/invocations");
        assert_eq!(r.headers()[HOST], "127.0.0.1:9001");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let t2 = t.clone();
        assert_eq!(t2.payload, Bytes::from_static(b"{\"a\":1}"));
    }

    #[test]
    fn answers_are_classified_like_the_grpc_outcomes() {
        let none = HeaderMap::new();
        let mut unhandled = HeaderMap::new();
        unhandled.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
        let err = |t: &str| format!(r#"{{"errorMessage":"m","errorType":"{t}"}}"#).into_bytes();
        assert_eq!(classify(StatusCode::OK, &none, b"{}"), Answer::Success);
        assert_eq!(
            classify(StatusCode::OK, &unhandled, &err("Function.Asked")),
            Answer::FunctionError
        );
        assert_eq!(
            classify(StatusCode::OK, &unhandled, &err("Sandbox.Timedout")),
            Answer::Timeout
        );
        assert_eq!(
            classify(StatusCode::OK, &unhandled, &err("Runtime.ExitError")),
            Answer::RuntimeFailure
        );
        assert_eq!(
            classify(StatusCode::OK, &unhandled, b"not json"),
            Answer::FunctionError
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &none, b"{}"),
            Answer::Throttle
        );
        let mut nf = HeaderMap::new();
        nf.insert(
            "x-amzn-errortype",
            HeaderValue::from_static("ResourceNotFoundException"),
        );
        match classify(StatusCode::NOT_FOUND, &nf, b"{\"message\":\"gone\"}") {
            Answer::Other(m) => {
                assert!(m.contains("404"), "{m}");
                assert!(m.contains("ResourceNotFoundException"), "{m}");
                assert!(m.contains("gone"), "{m}");
            }
            a => panic!("{a:?}"),
        }
    }
}
