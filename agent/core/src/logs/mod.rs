//! Function logs: capturing what runtimes write and writing it, one JSON record per line, to the sinks.
//!
//! ```text
//! runtime stdout/stderr ─┐                                 bounded queue                 writer thread
//! log socket conn 1..N ──┼─▶ reader per stream ─▶ record ─▶ (records and bytes) ─▶ file sink (rotated) / stdout
//!                        │   (lines ≤ max_line_bytes)        full: newest dropped,
//!                        │                                   counted per environment
//! ```
//!
//! - [`lines`]: cutting a byte stream into bounded lines.
//! - [`record`]: the JSON record of one line.
//! - [`lift`]: the request id (and level) in the shapes the official runtime clients write.
//! - [`platform`]: the platform's records of each invoke (START, END, REPORT, the timeout line).
//! - [`queue`]: the bounded queue; a full queue drops the newest record.
//! - [`stats`]: an environment's counters (records, drops, split lines, refused connections).
//! - [`socket`]: an environment's log socket (`_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`).
//! - [`capture`]: the readers of one environment and its drop reports.
//! - [`invoke_tail`]: the last 4 KB of the lines of invokes that asked for them (`LogType: Tail`).
//! - [`sink`]: the writer thread, the rotated per-function file and stdout.
//! - [`tail`]: reading a function version's files back (the `StreamLogs` RPC, `lmictl logs`).
//!
//! Memory is bounded by `queue_bytes` of queued records plus, per open stream, one line of at most
//! `max_line_bytes` being assembled and one read buffer.

pub mod capture;
pub mod invoke_tail;
pub mod lift;
pub mod lines;
pub mod platform;
pub mod queue;
pub mod record;
pub mod sink;
pub mod socket;
pub mod stats;

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

pub use capture::Capture;
pub use platform::PlatformLog;
pub use record::Source;
pub use stats::LogStats;

use crate::config::{LogSinkKind, LogsConfig};
use capture::CaptureContext;
use invoke_tail::InvokeTails;
use queue::QueueSender;
use sink::{FileSink, FileSinkConfig, Sinks};
use socket::EnvironmentSocket;

/// Why the log pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("creating the function log directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("starting the log writer thread: {0}")]
    Thread(io::Error),
}

/// The agent's log pipeline: the queue, the writer thread and where environments' sockets live.
#[derive(Debug)]
pub struct LogPipeline {
    queue: Mutex<Option<QueueSender>>,
    socket_dir: PathBuf,
    file_dir: Option<PathBuf>,
    max_line_bytes: usize,
    writer_done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    tails: Arc<InvokeTails>,
}

impl LogPipeline {
    /// Creates the directories, removes sockets left by an earlier agent and starts the writer thread.
    pub fn start(config: &LogsConfig, state_dir: &Path) -> Result<Self, LogsError> {
        let file_dir = config.file_dir(state_dir);
        if let Some(dir) = &file_dir {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|source| LogsError::Dir {
                    path: dir.clone(),
                    source,
                })?;
        }
        let socket_dir = state_dir.join("log-sockets");
        socket::remove_stale_sockets(&socket_dir);
        let sinks = Sinks {
            file: file_dir.clone().map(|dir| {
                FileSink::new(FileSinkConfig {
                    dir,
                    max_file_bytes: config.max_file_bytes,
                    keep_files: config.keep_files,
                })
            }),
            stdout: config.sinks.contains(&LogSinkKind::Stdout),
        };
        let (tx, rx) = queue::bounded(config.queue_records, config.queue_bytes);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lmi-log-writer".to_owned())
            .spawn(move || {
                sink::run(rx, sinks);
                let _ = done_tx.send(());
            })
            .map_err(LogsError::Thread)?;
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            socket_dir,
            file_dir,
            max_line_bytes: config.max_line_bytes,
            writer_done: Mutex::new(Some(done_rx)),
            tails: Arc::default(),
        })
    }

    /// The file sink's directory (`None` when records go to stdout only).
    pub fn file_dir(&self) -> Option<&Path> {
        self.file_dir.as_deref()
    }

    /// The tails of the invokes that asked for theirs (`LogType: Tail`).
    pub fn tails(&self) -> &Arc<InvokeTails> {
        &self.tails
    }

    /// Binds the log socket of a new environment; its capture starts with [`PendingCapture::start`].
    pub fn prepare(&self, env_id: &str) -> io::Result<PendingCapture> {
        Ok(PendingCapture {
            socket: EnvironmentSocket::bind(&self.socket_dir, env_id)?,
            queue: self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            max_line_bytes: self.max_line_bytes,
            platform: OnceLock::new(),
            tails: self.tails.clone(),
        })
    }

    /// Lets the writer finish what is queued and what captures still closing send (their end records), for at
    /// most `wait`. Environments must be stopped first.
    pub async fn shutdown(&self, wait: Duration) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        let done = self
            .writer_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(done) = done {
            let finished = tokio::task::spawn_blocking(move || done.recv_timeout(wait).is_ok())
                .await
                .unwrap_or(false);
            if !finished {
                tracing::warn!(
                    "function log writer did not finish in time; queued records may be lost"
                );
            }
        }
    }
}

/// An environment's bound log socket, waiting for its runtime to be spawned.
#[derive(Debug)]
pub struct PendingCapture {
    socket: EnvironmentSocket,
    queue: Option<QueueSender>,
    max_line_bytes: usize,
    platform: OnceLock<Arc<PlatformLog>>,
    tails: Arc<InvokeTails>,
}

impl PendingCapture {
    /// The path given to the runtime in `_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The platform records of `env`'s invokes (give it to the environment's broker with
    /// [`lmi_runtime_api::broker::Broker::observe`] before the runtime can poll). The capture started later attributes
    /// lines by the ids it saw delivered, and closes it when it ends.
    /// `timeout` is the function's, for the timeout records; `max_concurrency` its slots (with one, every line
    /// of the runtime belongs to the invoke in flight: see [`PlatformLog::serial`]).
    pub fn platform_log(
        &self,
        source: Source,
        stats: Arc<LogStats>,
        timeout: std::time::Duration,
        max_concurrency: u32,
    ) -> Arc<PlatformLog> {
        self.platform
            .get_or_init(|| {
                Arc::new(
                    PlatformLog::new(self.queue.clone(), source, stats, timeout)
                        .with_tails(self.tails.clone())
                        .serial(max_concurrency == 1),
                )
            })
            .clone()
    }

    /// Starts capturing. `max_connections` bounds the log-socket connections open at once.
    pub fn start(
        self,
        source: Source,
        stats: Arc<LogStats>,
        max_connections: usize,
        stdout: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
        stderr: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
    ) -> Capture {
        Capture::start(
            CaptureContext {
                queue: self.queue,
                source: Arc::new(source),
                stats,
                max_line_bytes: self.max_line_bytes,
                max_connections,
                platform: self.platform.into_inner(),
            },
            self.socket,
            stdout,
            stderr,
        )
    }
}
