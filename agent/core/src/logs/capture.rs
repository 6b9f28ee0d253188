//! Capturing one environment's output: the runtime's stdout and stderr, and every connection to its log
//! socket, each read by its own task into records offered to the queue.
//!
//! A reader never waits for the sinks: a record the queue refuses is dropped (the newest one) and counted.
//! Drops are reported in the log by an agent record every [`REPORT_EVERY`] while there are new ones, and the
//! capture's last record (`"log capture ended"`) carries the totals. It is queued only after every reader
//! has reached the end of its stream, so every record of the environment comes before it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::{UnixListener, UnixStream},
    sync::oneshot,
    task::JoinSet,
};

use super::{
    lines::LineSplitter,
    platform::PlatformLog,
    queue::{Entry, QueueSender},
    record::{self, Origin, Source},
    socket::EnvironmentSocket,
    stats::LogStats,
};

/// How often new drops are reported in the log.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long the readers may take to drain what the stopped runtime left in its pipes and sockets.
const READERS_GRACE: Duration = Duration::from_secs(5);
/// How long the end record may wait for room in the queue.
const END_RECORD_WAIT: Duration = Duration::from_secs(60);
/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// What a capture needs besides its streams.
#[derive(Debug)]
pub struct CaptureContext {
    pub queue: Option<QueueSender>,
    pub source: Arc<Source>,
    pub stats: Arc<LogStats>,
    pub max_line_bytes: usize,
    /// Log-socket connections an environment may hold open at once; more are refused and counted.
    pub max_connections: usize,
    /// The environment's platform records: which ids it delivered (to lift them from lines); closed when the
    /// capture ends.
    pub platform: Option<Arc<PlatformLog>>,
}

/// A running capture. [`Capture::close`] (or dropping it) stops accepting connections and removes the socket
/// file; the readers finish on their own once the runtime's processes are gone.
#[derive(Debug)]
pub struct Capture {
    stop: Option<oneshot::Sender<()>>,
    socket: Option<EnvironmentSocket>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Capture {
    /// Starts reading `stdout`, `stderr` and the connections to `socket`.
    pub fn start(
        ctx: CaptureContext,
        mut socket: EnvironmentSocket,
        stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
        stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    ) -> Self {
        let ctx = Arc::new(ctx);
        let mut pipes = JoinSet::new();
        if let Some(out) = stdout {
            pipes.spawn(read_stream(ctx.clone(), "stdout".to_owned(), None, out));
        }
        if let Some(err) = stderr {
            pipes.spawn(read_stream(ctx.clone(), "stderr".to_owned(), None, err));
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let listener = socket.take_listener();
        let task = tokio::spawn(run(ctx, listener, pipes, stop_rx));
        Self {
            stop: Some(stop_tx),
            socket: Some(socket),
            task: Some(task),
        }
    }

    /// Stops accepting connections and removes the socket file. Returns at once with the capture's task, which
    /// ends after the readers are done and the end record is queued.
    pub fn close(mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.stop_now();
        self.task.take()
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.socket = None;
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn accept(listener: Option<&UnixListener>) -> std::io::Result<UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn run(
    ctx: Arc<CaptureContext>,
    listener: Option<UnixListener>,
    mut pipes: JoinSet<()>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = 0u64;
    let mut readers = JoinSet::new();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + REPORT_EVERY, REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(stream) => {
                    if readers.len() >= ctx.max_connections {
                        if ctx.stats.add_refused() {
                            tracing::warn!(env = %ctx.source.environment, limit = ctx.max_connections,
                                "refusing log socket connections beyond the limit (counted)");
                        }
                        continue;
                    }
                    connections += 1;
                    let pid = stream
                        .peer_cred()
                        .ok()
                        .and_then(|c| c.pid())
                        .and_then(|p| u32::try_from(p).ok());
                    readers.spawn(read_stream(ctx.clone(), format!("socket-{connections}"), pid, stream));
                }
                Err(e) => {
                    // For example EMFILE: do not spin; the runtime's connect waits in the backlog.
                    tracing::warn!(env = %ctx.source.environment, error = %e, "accepting a log socket connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tick.tick() => report_drops(&ctx),
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(READERS_GRACE, async {
        while readers.join_next().await.is_some() {}
        while pipes.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(env = %ctx.source.environment, streams = readers.len() + pipes.len(),
            "log streams still open after the runtime stopped; closing them");
        readers.abort_all();
        pipes.abort_all();
    }
    end(&ctx).await;
}

async fn read_stream(
    ctx: Arc<CaptureContext>,
    stream: String,
    pid: Option<u32>,
    mut reader: impl AsyncRead + Unpin,
) {
    let mut lines = LineSplitter::new(ctx.max_line_bytes);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut offer = |line: &[u8], split: bool| offer(&ctx, &stream, pid, line, split);
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lines.push(&chunk[..n], &mut offer),
        }
    }
    lines.finish(&mut offer);
}

/// Encodes one line and offers it to the queue; a refused record is counted as dropped.
fn offer(ctx: &CaptureContext, stream: &str, pid: Option<u32>, line: &[u8], split: bool) {
    if split {
        ctx.stats.add_split();
    }
    if let Some(platform) = ctx.platform.as_ref() {
        if let Some(tails) = platform.active_tails() {
            let known = |id: &str| platform.knows(id);
            // A line naming its invoke goes to that one's tail; in a serial environment, any other line
            // goes to the invoke in flight (or the one just ended, if its tail is still being taken).
            if let Some(id) = record::request_id_of(line, split, &known) {
                tails.line(&id, line);
            } else if let Some(id) = platform.serial_invoke() {
                tails.line(&id, line);
            }
        }
    }
    let Some(queue) = ctx.queue.as_ref().filter(|q| q.has_room()) else {
        ctx.stats.add_drop();
        return;
    };
    let mut bytes = Vec::with_capacity(record::line_capacity(&ctx.source, line.len()));
    let known = |id: &str| ctx.platform.as_ref().is_some_and(|p| p.knows(id));
    record::encode_line(
        &mut bytes,
        SystemTime::now(),
        Origin {
            source: &ctx.source,
            stream,
            pid,
            known: &known,
        },
        line,
        split,
    );
    match queue.try_push(Entry {
        source: ctx.source.clone(),
        bytes,
    }) {
        Ok(()) => ctx.stats.add_record(),
        Err(_) => ctx.stats.add_drop(),
    }
}

fn report_drops(ctx: &CaptureContext) {
    let n = ctx.stats.take_unreported();
    if n == 0 {
        return;
    }
    let Some(queue) = &ctx.queue else {
        return;
    };
    let mut bytes = Vec::with_capacity(384);
    record::encode_agent(
        &mut bytes,
        SystemTime::now(),
        &ctx.source,
        &format!("dropped {n} log records: the log sinks did not keep up (the newest records are dropped)"),
        &[("dropped", n), ("dropped_total", ctx.stats.dropped())],
    );
    if queue
        .try_push(Entry {
            source: ctx.source.clone(),
            bytes,
        })
        .is_err()
    {
        ctx.stats.restore_unreported(n);
    }
}

async fn end(ctx: &CaptureContext) {
    // The environment is gone: no platform record may follow the capture's last record.
    if let Some(platform) = &ctx.platform {
        platform.close();
    }
    let Some(queue) = &ctx.queue else {
        return;
    };
    let n = ctx.stats.take_unreported();
    let mut bytes = Vec::with_capacity(384);
    record::encode_agent(
        &mut bytes,
        SystemTime::now(),
        &ctx.source,
        "log capture ended",
        &[
            ("records", ctx.stats.records()),
            ("dropped", n),
            ("dropped_total", ctx.stats.dropped()),
            ("split_lines", ctx.stats.split_lines()),
            ("refused_connections", ctx.stats.refused_connections()),
        ],
    );
    let entry = Entry {
        source: ctx.source.clone(),
        bytes,
    };
    if tokio::time::timeout(END_RECORD_WAIT, queue.push(entry))
        .await
        .is_err()
    {
        tracing::warn!(env = %ctx.source.environment, "the log sinks took too long; the end-of-capture record is lost");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::queue;
    use tokio::io::AsyncWriteExt;

    fn source() -> Arc<Source> {
        Arc::new(Source {
            function: "f".into(),
            version: "1".into(),
            environment: "env-t".into(),
        })
    }

    fn no_pipe() -> Option<tokio::io::Empty> {
        None
    }

    async fn until(cond: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "condition never met"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The tail of one invoke of an environment with `max_concurrency` slots whose runtime prints a plain
    /// line during the invoke and another after its end (read late, as a line written just before the
    /// answer can be), then a line naming the invoke, then a plain line after the next invoke's delivery.
    async fn tail_of_one_invoke(max_concurrency: u32) -> String {
        use crate::logs::{invoke_tail::InvokeTails, platform::PlatformLog};
        use lmi_runtime_api::broker::{InvokeEnd, InvokeObserver};
        let t = tempfile::tempdir().unwrap();
        let tails = Arc::new(InvokeTails::default());
        let platform = Arc::new(
            PlatformLog::new(
                None,
                (*source()).clone(),
                Arc::new(LogStats::default()),
                Duration::from_secs(3),
            )
            .with_tails(tails.clone())
            .serial(max_concurrency == 1),
        );
        let (mut out, pipe) = tokio::io::duplex(4096);
        let capture = Capture::start(
            CaptureContext {
                queue: None,
                source: source(),
                stats: Arc::new(LogStats::default()),
                max_line_bytes: 1024,
                max_connections: 1,
                platform: Some(platform.clone()),
            },
            EnvironmentSocket::bind(t.path(), "env-t").unwrap(),
            Some(pipe),
            no_pipe(),
        );
        let a: Arc<str> = Arc::from("8f507cfc-1a2b-4697-b07a-ac58fc914c95");
        let b: Arc<str> = Arc::from("0c1d2e3f-1a2b-4697-b07a-ac58fc914c95");
        let watch = tails.watch(&a).unwrap();
        platform.delivered(&a);
        out.write_all(b"plain during\n").await.unwrap();
        let until_read = |text: &'static str| {
            let watch = &watch;
            until(move || String::from_utf8_lossy(&watch.snapshot()).contains(text))
        };
        // The capture reads on a task of its own: the end may be recorded before or after it reads the
        // line; either way the line is the invoke's.
        platform.ended(&a, Duration::from_millis(2), InvokeEnd::Success, None);
        out.write_all(b"plain after the end\n").await.unwrap();
        out.write_all(format!("{{\"requestId\":\"{a}\",\"message\":\"named\"}}\n").as_bytes())
            .await
            .unwrap();
        until_read("named").await;
        platform.delivered(&b);
        out.write_all(b"plain of the next invoke\n").await.unwrap();
        out.write_all(format!("{{\"requestId\":\"{a}\",\"message\":\"last\"}}\n").as_bytes())
            .await
            .unwrap();
        until_read("last").await;
        drop(out);
        capture.close().unwrap().await.unwrap();
        String::from_utf8(watch.snapshot()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_one_slot_every_line_until_the_next_delivery_is_the_invokes() {
        let tail = tail_of_one_invoke(1).await;
        let lines: Vec<&str> = tail.lines().collect();
        let a = "8f507cfc-1a2b-4697-b07a-ac58fc914c95";
        assert_eq!(
            lines[0],
            format!("START RequestId: {a} Version: 1"),
            "{tail}"
        );
        assert_eq!(
            lines[1..3],
            ["plain during", "plain after the end"],
            "{tail}"
        );
        assert!(lines[3].contains("\"named\""), "{tail}");
        assert!(lines[4].contains("\"last\""), "{tail}");
        assert_eq!(lines[5], format!("END RequestId: {a}"), "{tail}");
        assert!(
            lines[6].starts_with(&format!("REPORT RequestId: {a}\t")),
            "{tail}"
        );
        assert_eq!(lines.len(), 7, "{tail}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_more_slots_only_lines_naming_the_invoke_are_its() {
        let tail = tail_of_one_invoke(4).await;
        assert!(
            tail.contains("\"named\"") && tail.contains("\"last\""),
            "{tail}"
        );
        assert!(!tail.contains("plain"), "{tail}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_the_newest_and_counts_every_drop() {
        let t = tempfile::tempdir().unwrap();
        let (tx, mut rx) = queue::bounded(16, 1 << 20);
        let stats = Arc::new(LogStats::default());
        let socket = EnvironmentSocket::bind(t.path(), "env-t").unwrap();
        let path = socket.path().to_owned();
        let capture = Capture::start(
            CaptureContext {
                queue: Some(tx),
                source: source(),
                stats: stats.clone(),
                max_line_bytes: 1024,
                max_connections: 1,
                platform: None,
            },
            socket,
            Some(&b"from stdout\n"[..]),
            no_pipe(),
        );
        // The stdout line is queued before the socket's lines fill the queue (two readers race otherwise;
        // under emulation the socket's reader won and the stdout line was the one dropped).
        until(|| stats.records() == 1).await;
        let mut c = UnixStream::connect(&path).await.unwrap();
        let lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
        c.write_all(lines.as_bytes()).await.unwrap();
        // A second connection is over the limit of 1: refused (closed at once), and counted.
        let mut over = UnixStream::connect(&path).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(over.read(&mut buf).await.unwrap(), 0);
        drop(c);
        until(|| stats.records() + stats.dropped() == 101).await;
        assert_eq!(stats.records(), 16, "the queue holds 16; nobody drains it");
        assert_eq!(stats.dropped(), 85);
        assert_eq!(stats.refused_connections(), 1);

        let task = capture.close().unwrap();
        assert!(!path.exists(), "closing removes the socket file");
        let drain = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let mut batch = Vec::new();
            while rx.blocking_recv_many(&mut batch, 64) > 0 {
                all.append(&mut batch);
            }
            all
        });
        task.await.unwrap();
        let entries = drain.await.unwrap();
        let records: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| serde_json::from_slice(&e.bytes).unwrap())
            .collect();
        let texts: Vec<&str> = records[..16]
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert!(texts.contains(&"from stdout"));
        assert!(texts.contains(&"line 0"), "the oldest are kept: {texts:?}");
        let agent: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["stream"] == record::AGENT_STREAM)
            .collect();
        let reported: u64 = agent.iter().map(|r| r["dropped"].as_u64().unwrap()).sum();
        assert_eq!(reported, 85, "every drop is reported once: {agent:?}");
        let end = records.last().unwrap();
        assert_eq!(end["message"], "log capture ended");
        assert_eq!(end["records"], 16);
        assert_eq!(end["dropped_total"], 85);
        assert_eq!(end["refused_connections"], 1);
        let sock = records.iter().find(|r| r["message"] == "line 0").unwrap();
        assert_eq!(sock["stream"], "socket-1");
        assert_eq!(sock["pid"], std::process::id());
    }
}
