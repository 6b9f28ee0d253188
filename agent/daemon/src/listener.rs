//! What every listener of the agent enforces on its connections (`[listeners]` in the configuration), in one
//! place: the Invoke API and `/metrics` (HTTP/1, [`serve_http1`]) and the control API's gRPC listeners
//! ([`limit_incoming`]).
//!
//! - **Connection cap**: a listener holds at most `max_connections` connections; one more is answered (503 on
//!   HTTP/1, where a write does not block) and closed as soon as it is accepted, so a flood of connections
//!   costs a bounded number of file descriptors and buffers.
//! - **Header timeout**: an HTTP/1 client must send a request's whole head within `header_timeout`, and an
//!   idle keep-alive connection is closed after it (hyper's own header timer, which only runs when a timer is
//!   set: without one hyper silently has none). A gRPC client must send the HTTP/2 preface within it; after
//!   that HTTP/2 keep-alive pings (same period) close a connection whose peer stopped answering.
//! - **Body deadline**: an HTTP/1 request's body must arrive whole within `body_timeout` of its head
//!   ([`read_body`]); past it the request gets 408 and the connection is closed. (gRPC streams are long-lived
//!   by design, `InvokeStream` and `WatchUtilization` for hours, so gRPC has no body deadline: HTTP/2 flow
//!   control and the stream cap bound what one connection holds.)

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONNECTION},
    service::service_fn,
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
    time::Sleep,
};
use tokio_stream::{Stream, StreamExt as _};

use lmi_agent_core::config::ListenersConfig;

/// The HTTP/2 client preface: what a gRPC client sends first.
const H2_PREFACE_LEN: usize = 24;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Time to send a request's head (HTTP/1) or the preface (HTTP/2); also the idle keep-alive time.
    pub header_timeout: Duration,
    /// Time to send a request's body once its head arrived (HTTP/1).
    pub body_timeout: Duration,
    /// Connections held at once.
    pub max_connections: usize,
}

impl From<&ListenersConfig> for ListenerLimits {
    fn from(c: &ListenersConfig) -> Self {
        Self {
            header_timeout: Duration::from_millis(c.header_timeout_ms),
            body_timeout: Duration::from_millis(c.body_timeout_ms),
            max_connections: c.max_connections as usize,
        }
    }
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self::from(&ListenersConfig::default())
    }
}

/// The cap on one listener's connections: a permit per connection, held until it closes.
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    name: &'static str,
    max: usize,
    permits: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
}

impl ConnectionCap {
    /// A cap of `max` connections (at least 1) for the listener `name` (named in logs).
    pub fn new(name: &'static str, max: usize) -> Self {
        let max = max.max(1);
        Self {
            name,
            max,
            permits: Arc::new(Semaphore::new(max)),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A permit for one more connection, or `None` (logged) when the listener is full.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at the 1st, 2nd, 4th, 8th... refusal: a flood cannot flood the log.
                if n.is_power_of_two() {
                    tracing::warn!(
                        listener = self.name,
                        max_connections = self.max,
                        refused_total = n,
                        "connection refused: the listener holds its maximum (listeners.max_connections)"
                    );
                }
                None
            }
        }
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Connections refused since the cap was made.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// An HTTP/1 server connection builder with the header timeout armed.
pub fn http1_builder(limits: &ListenerLimits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    b
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Answers a connection over the cap with 503 when the socket takes it at once, then closes it.
fn refuse(stream: TcpStream) {
    const FULL: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let _ = stream.try_write(FULL);
}

/// Serves HTTP/1 on `listener` until `stop` turns true: each connection is admitted by the listener's cap
/// (or refused at once), read with the header timeout, and answered by `handler`, which must read a body
/// with [`read_body`]. On stop the listener closes, idle connections close and a request in progress
/// finishes; the future ends when every connection has.
pub async fn serve_http1<H, Fut, B>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cap = ConnectionCap::new(name, limits.max_connections);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Some(permit) = cap.admit() else {
                        refuse(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let handler = handler.clone();
                    let mut conn_stop = stop.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        let svc = service_fn(move |req| {
                            let handler = handler.clone();
                            async move { Ok::<_, Infallible>(handler(req).await) }
                        });
                        let conn = http1_builder(&limits).serve_connection(TokioIo::new(stream), svc);
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => if let Err(e) = r {
                                tracing::debug!(listener = name, error = %e, "connection ended with an error");
                            },
                            _ = stopped(&mut conn_stop) => {
                                // Let the request in progress finish, then close.
                                conn.as_mut().graceful_shutdown();
                                let _ = conn.await;
                            }
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {} ms (listeners.body_timeout_ms)", .0.as_millis())]
    TimedOut(Duration),
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

impl BodyError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut(_) => StatusCode::REQUEST_TIMEOUT,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads a request body of at most `limit` bytes (refused as soon as its declared or running size passes
/// it, never buffered past it) that must arrive whole within `deadline`.
pub async fn read_body(
    body: Incoming,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    use hyper::body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge { limit });
    }
    // Sized from Content-Length when there is one: growing by doubling leaves up to half of a large body's
    // buffer unused, and the frozen buffer keeps all of it for as long as the payload lives (a queued event).
    let capacity = usize::try_from(body.size_hint().lower()).map_or(0, |n| n.min(limit));
    let read = async {
        let mut body = body;
        let mut buf = BytesMut::with_capacity(capacity);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| BodyError::TimedOut(deadline))?
}

/// Marks a response as the connection's last (`Connection: close`): for an answer sent before the request's
/// body was read whole (too large, too slow), after which the connection cannot carry another request.
pub fn closing<B>(mut r: Response<B>) -> Response<B> {
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// A connection of a gRPC listener: holds its permit of the listener's cap until it closes, and fails its
/// reads when the HTTP/2 preface has not arrived within the header timeout.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    /// The preface deadline and the preface bytes still expected (`None` once they arrived).
    preface: Option<(Pin<Box<Sleep>>, usize)>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some((_, left)) = &mut this.preface {
                    let n = buf.filled().len() - before;
                    *left = left.saturating_sub(n);
                    if *left == 0 || n == 0 {
                        this.preface = None;
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                if let Some((deadline, _)) = &mut this.preface {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.preface = None;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 preface within listeners.header_timeout_ms",
                        )));
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// Implements `AsyncWrite` for a reader-side wrapper `$wrapper<IO>` by handing every write straight to its
/// `io` field (the wrappers here only change what is read).
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<IO: AsyncWrite + Unpin> AsyncWrite for $wrapper<IO> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}
pub(crate) use forward_async_write;

forward_async_write!(Limited);

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections of a gRPC listener's `incoming`, each admitted by the listener's cap (one over it is closed
/// at once) and given the preface deadline. Accept errors pass through.
pub fn limit_incoming<S, IO>(
    name: &'static str,
    incoming: S,
    limits: ListenerLimits,
) -> impl Stream<Item = io::Result<Limited<IO>>>
where
    S: Stream<Item = io::Result<IO>>,
{
    let cap = ConnectionCap::new(name, limits.max_connections);
    incoming.filter_map(move |accepted| match accepted {
        Ok(io) => cap.admit().map(|permit| {
            Ok(Limited {
                io,
                _permit: permit,
                preface: Some((
                    Box::pin(tokio::time::sleep(limits.header_timeout)),
                    H2_PREFACE_LEN,
                )),
            })
        }),
        Err(e) => Some(Err(e)),
    })
}

/// HTTP/2 keep-alive settings of the gRPC listeners: a ping after `header_timeout` of silence, and the
/// connection closed when the answer does not come within it.
pub fn grpc_keepalive(limits: &ListenerLimits) -> (Option<Duration>, Option<Duration>) {
    (Some(limits.header_timeout), Some(limits.header_timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max_connections: usize) -> ListenerLimits {
        ListenerLimits {
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(200),
            max_connections,
        }
    }

    /// Reads until the server closes (bounded by 10 s): what it sent.
    async fn until_eof(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server did not close the connection within 10 s")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn echo_server(limits: ListenerLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(serve_http1(
            "test",
            l,
            limits,
            rx,
            move |req: Request<Incoming>| async move {
                match read_body(req.into_body(), 1024, limits.body_timeout).await {
                    Ok(b) => Response::new(Full::new(b)),
                    Err(e) => {
                        let mut r = Response::new(Full::new(Bytes::from(e.to_string())));
                        *r.status_mut() = e.status();
                        closing(r)
                    }
                }
            },
        ));
        (addr, tx)
    }

    #[tokio::test]
    async fn stalled_heads_bodies_and_idle_connections_are_cut() {
        let (addr, _stop) = echo_server(limits(8)).await;
        // A served request; then the connection, idle, is closed by the header timeout.
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let text = until_eof(&mut ok).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("hi"), "{text}");
        // Nothing at all, and half a head: closed.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut head = TcpStream::connect(addr).await.unwrap();
        head.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        for s in [&mut silent, &mut head] {
            let text = until_eof(s).await;
            assert!(!text.starts_with("HTTP/1.1 2"), "{text}");
        }
        // A body that stops short of its length: 408, and closed.
        let mut body = TcpStream::connect(addr).await.unwrap();
        body.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap();
        let text = until_eof(&mut body).await;
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("connection: close"), "{text}");
        assert!(text.contains("listeners.body_timeout_ms"), "{text}");
    }

    #[tokio::test]
    async fn one_connection_over_the_cap_is_refused_at_once() {
        let (addr, _stop) = echo_server(ListenerLimits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            max_connections: 1,
        })
        .await;
        let mut held = TcpStream::connect(addr).await.unwrap();
        // The held connection is admitted once a request on it is answered.
        held.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
            .await
            .unwrap();
        let mut got = [0u8; 12];
        held.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200");
        let mut over = TcpStream::connect(addr).await.unwrap();
        let text = until_eof(&mut over).await;
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        drop(held);
    }

    #[tokio::test]
    async fn a_grpc_connection_without_preface_fails_its_reads() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        let mut incoming = Box::pin(limit_incoming("test", incoming, limits(1)));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let mut buf = [0u8; 8];
        let e = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the read was not failed within 10 s")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // The first connection still holds the only permit: the next is dropped, the one after that
        // (once the first is gone) admitted.
        let mut over = TcpStream::connect(addr).await.unwrap();
        let next = tokio::spawn(async move { incoming.next().await.map(|c| c.is_ok()) });
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), over.read_to_end(&mut buf))
            .await
            .expect("the connection over the cap was not closed")
            .unwrap();
        drop(conn);
        let _admitted = TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), next)
                .await
                .unwrap()
                .unwrap(),
            Some(true)
        );
    }

    #[tokio::test]
    async fn a_body_past_its_limit_is_refused_by_its_declared_length() {
        let (addr, _stop) = echo_server(limits(4)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
            .await
            .unwrap();
        let text = until_eof(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    }
}
