//! Streamed answers reaching a caller that reads them as a stream: chunk by chunk, bounded, one outcome.

use std::sync::atomic::AtomicU64;

use tokio::sync::mpsc;

use super::*;
use crate::broker::{Answered, Piece, ResponseStream, STREAM_CHUNKS};

type BodyFrame = Result<Frame<Bytes>, Infallible>;

fn submit_streaming(b: &Arc<Broker>, id: &str, timeout: Duration) -> Pending {
    b.submit_streaming(Event::new(
        id.into(),
        Bytes::from_static(b"{}"),
        timeout,
        "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".into(),
        None,
        None,
    ))
    .unwrap()
}

/// A streamed `/response` whose frames the test sends one by one; the runtime's status comes on the handle.
fn streamed_post(
    addr: SocketAddr,
    id: &str,
) -> (mpsc::Sender<BodyFrame>, tokio::task::JoinHandle<Reply>) {
    let (tx, rx) = mpsc::channel::<BodyFrame>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|f| (f, rx))
    }));
    let req = Request::post(format!("http://x{PREFIX}invocation/{id}/response"))
        .header(RESPONSE_MODE, "streaming")
        .header(CONTENT_TYPE, "text/plain")
        .header(
            "Trailer",
            "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body",
        )
        .body(body)
        .unwrap();
    (tx, tokio::spawn(send(addr, req)))
}

async fn stream_of(p: Pending) -> ResponseStream {
    match p.wait_streamed(Duration::from_secs(30)).await {
        Answered::Stream(s) => s,
        Answered::Whole(o) => panic!("expected a stream, got {o:?}"),
    }
}

fn chunk(b: &'static [u8]) -> BodyFrame {
    Ok(Frame::data(Bytes::from_static(b)))
}

#[tokio::test]
async fn each_chunk_reaches_the_caller_before_the_next_is_written() {
    let h = harness(4).await;
    let p = submit_streaming(&h.broker, "s1", Duration::from_secs(30));
    next(h.addr).await;
    let (body, status) = streamed_post(h.addr, "s1");
    body.send(chunk(b"one")).await.unwrap();
    let mut s = stream_of(p).await;
    assert_eq!(s.content_type(), "text/plain");
    // The second chunk is written only once the first has arrived: the rendezvous proves it was not held.
    assert_eq!(
        s.next().await,
        Some(Piece::Chunk(Bytes::from_static(b"one")))
    );
    assert_eq!(
        h.broker.in_flight(),
        1,
        "the slot is held while the stream runs"
    );
    body.send(chunk(b"two")).await.unwrap();
    assert_eq!(
        s.next().await,
        Some(Piece::Chunk(Bytes::from_static(b"two")))
    );
    drop(body);
    assert_eq!(
        s.next().await,
        Some(Piece::End(Outcome::Success {
            payload: Bytes::new(),
            content_type: "text/plain".into()
        }))
    );
    assert_eq!(s.next().await, None, "one end, then nothing");
    assert_eq!(status.await.unwrap().status, StatusCode::ACCEPTED);
    assert_eq!(h.broker.in_flight(), 0);
}

#[tokio::test]
async fn a_mid_stream_error_in_the_trailers_ends_the_stream_with_it() {
    let h = harness(4).await;
    let p = submit_streaming(&h.broker, "s2", Duration::from_secs(30));
    next(h.addr).await;
    let (body, status) = streamed_post(h.addr, "s2");
    body.send(chunk(b"partial")).await.unwrap();
    let mut s = stream_of(p).await;
    assert_eq!(
        s.next().await,
        Some(Piece::Chunk(Bytes::from_static(b"partial")))
    );
    let mut t = HeaderMap::new();
    t.insert(ERROR_TYPE, HeaderValue::from_static("Function.Broke"));
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(br#"{"errorMessage":"half way","errorType":"Broke"}"#);
    t.insert(ERROR_BODY, HeaderValue::from_str(&encoded).unwrap());
    body.send(Ok(Frame::trailers(t))).await.unwrap();
    drop(body);
    assert_eq!(
        s.next().await,
        Some(Piece::End(Outcome::FunctionError(ErrorInfo::new(
            "Broke", "half way"
        ))))
    );
    assert_eq!(status.await.unwrap().status, StatusCode::ACCEPTED);
    assert_eq!(h.broker.in_flight(), 0);
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_stream_frees_the_slot_and_the_runtime_is_told() {
    let h = harness(1).await;
    let p = submit_streaming(&h.broker, "s3", Duration::from_secs(30));
    next(h.addr).await;
    let (body, status) = streamed_post(h.addr, "s3");
    body.send(chunk(b"first")).await.unwrap();
    let mut s = stream_of(p).await;
    assert_eq!(
        s.next().await,
        Some(Piece::Chunk(Bytes::from_static(b"first")))
    );
    drop(s);
    // The runtime is between chunks: the slot is freed without waiting for its next one.
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.broker.in_flight() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the slot is freed while the runtime writes nothing");
    body.send(chunk(b"unwanted")).await.unwrap();
    drop(body);
    let r = status.await.unwrap();
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.json()["errorType"], "CallerGone");
    assert_eq!(h.broker.in_flight(), 0, "the slot is free");
    // and it can be used again
    let _again = submit_streaming(&h.broker, "s3b", Duration::from_secs(30));
}

#[tokio::test]
async fn a_buffered_answer_reaches_a_streaming_caller_whole() {
    let h = harness(4).await;
    let p = submit_streaming(&h.broker, "s4", Duration::from_secs(30));
    next(h.addr).await;
    let r = send(h.addr, post("invocation/s4/response", b"whole")).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    match p.wait_streamed(Duration::from_secs(5)).await {
        Answered::Whole(Outcome::Success { payload, .. }) => assert_eq!(&payload[..], b"whole"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_buffered_caller_still_gets_a_streamed_answer_gathered() {
    let h = harness(4).await;
    let p = submit(&h.broker, "s6");
    next(h.addr).await;
    let (body, status) = streamed_post(h.addr, "s6");
    body.send(chunk(b"ab")).await.unwrap();
    body.send(chunk(b"cd")).await.unwrap();
    drop(body);
    assert_eq!(status.await.unwrap().status, StatusCode::ACCEPTED);
    match p.wait(Duration::from_secs(5)).await {
        Outcome::Success { payload, .. } => assert_eq!(&payload[..], b"abcd"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stream_over_the_limit_ends_with_response_size_too_large() {
    let h = harness(4).await;
    let p = submit_streaming(&h.broker, "s5", Duration::from_secs(60));
    next(h.addr).await;
    let (body, status) = streamed_post(h.addr, "s5");
    let reader = tokio::spawn(async move {
        let mut s = stream_of(p).await;
        let mut got = 0usize;
        loop {
            match s.next().await {
                Some(Piece::Chunk(c)) => got += c.len(),
                Some(Piece::End(o)) => return (got, o),
                None => panic!("no end"),
            }
        }
    });
    let mib = Bytes::from(vec![b'x'; 1024 * 1024]);
    for _ in 0..21 {
        if body.send(Ok(Frame::data(mib.clone()))).await.is_err() {
            break;
        }
    }
    drop(body);
    let (got, outcome) = reader.await.unwrap();
    assert!(got <= MAX_STREAMED_RESPONSE_BYTES, "{got} bytes passed on");
    match outcome {
        Outcome::FunctionError(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        other => panic!("{other:?}"),
    }
    assert_eq!(status.await.unwrap().status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(h.broker.in_flight(), 0);
}

/// A caller that does not read stops the reading of the runtime: with the runtime's connection an in-memory
/// pipe and the clock paused, "everything is blocked" is an event (the clock jumps only then), so the bytes
/// the runtime got to write are counted without a timing threshold.
#[tokio::test(start_paused = true)]
async fn a_caller_that_does_not_read_stops_the_reading_of_the_runtime() {
    const TOTAL: usize = 20 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let broker = Broker::new(1);
    let api = RuntimeApi::new(broker.clone(), Arc::new(Recorder::default()));
    let p = submit_streaming(&broker, "bp", Duration::from_secs(600));
    let _delivered = broker.next().await.unwrap();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(api.serve_connection(server_io));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let written = Arc::new(AtomicU64::new(0));
    let counted = written.clone();
    let frames = futures_util::stream::iter((0..TOTAL / CHUNK).map(move |_| {
        counted.fetch_add(CHUNK as u64, Ordering::SeqCst);
        Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; CHUNK])))
    }));
    let req = Request::post(format!("http://x{PREFIX}invocation/bp/response"))
        .header(RESPONSE_MODE, "streaming")
        .body(StreamBody::new(frames))
        .unwrap();
    let status = tokio::spawn(async move { sender.send_request(req).await.unwrap().status() });
    let mut s = stream_of(p).await;
    // Nothing runs any more (the clock only advances then): the runtime's writes are blocked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled_at = written.load(Ordering::SeqCst);
    eprintln!("bytes the runtime wrote of a {TOTAL}-byte stream with nobody reading: {stalled_at}");
    let bound = ((STREAM_CHUNKS + 8) * CHUNK + 2 * 1024 * 1024) as u64;
    assert!(
        stalled_at < bound,
        "{stalled_at} bytes left the runtime with nobody reading (bound {bound})"
    );
    let mut got = 0usize;
    loop {
        match s.next().await.unwrap() {
            Piece::Chunk(c) => got += c.len(),
            Piece::End(o) => {
                assert!(matches!(o, Outcome::Success { .. }), "{o:?}");
                break;
            }
        }
    }
    assert_eq!(got, TOTAL);
    assert_eq!(status.await.unwrap(), StatusCode::ACCEPTED);
    assert_eq!(broker.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stream_past_its_deadline_ends_with_a_timeout_and_frees_the_slot_when_the_runtime_ends() {
    let b = Broker::new(1);
    let p = submit_streaming(&b, "late", Duration::from_secs(3));
    b.next().await.unwrap();
    assert_eq!(b.claim("late"), crate::broker::Answer::Accepted);
    let chunks = b.open_stream("late", "text/plain").unwrap();
    chunks.send(Bytes::from_static(b"a")).await.unwrap();
    let mut s = stream_of(p).await;
    assert_eq!(s.next().await, Some(Piece::Chunk(Bytes::from_static(b"a"))));
    match s.next().await {
        Some(Piece::End(Outcome::Timeout(e))) => assert_eq!(e.error_type, "Sandbox.Timedout"),
        other => panic!("{other:?}"),
    }
    assert!(
        chunks.send(Bytes::from_static(b"b")).await.is_err(),
        "the runtime's next chunk is refused"
    );
    assert_eq!(b.in_flight(), 1, "held until the runtime's side ends");
    b.settle_late("late");
    assert_eq!(b.in_flight(), 0);
}
