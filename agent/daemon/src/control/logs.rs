//! Reading a function version's records back from the file sink: the `StreamLogs` RPC behind `lmictl logs`.
//!
//! The rotated files are read oldest first (`.log.N` … `.log.1`), then the current file. Following, the
//! current file is polled for growth every [`FOLLOW_POLL`]; when it is rotated away (its inode changes) the
//! rest of the old file is read before the new one, and a file that shrank (truncated by hand) is read again
//! from its start. A rotation while the files are being read once may repeat or skip a file's records.
//!
//! Why an RPC and not a file path: `lmictl` may run on another host (TCP), and the agent is the one that
//! knows its log directory and rotation; streaming keeps memory flat whatever the size of the files.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use lmi_proto::v1 as pb;
use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use lmi_agent_core::logs::{lines::LineSplitter, sink};
use lmi_agent_core::spec::LATEST;
use lmi_agent_core::text::{quote, shown};

/// How often a followed file is checked for new records.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Records per message.
const BATCH_RECORDS: usize = 512;
/// Bytes of records per message (well under the gRPC message limit).
const BATCH_BYTES: usize = 1024 * 1024;
/// A longer line in a log file (not written by the agent) is passed on in pieces.
const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;

/// The stream of `StreamLogs` responses.
pub type LogBatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::StreamLogsResponse, Status>> + Send>>;

/// Serves one `StreamLogs` request from the file sink under `dir` (`None`: the agent has no file sink).
pub fn stream_logs(
    dir: Option<&Path>,
    request: pb::StreamLogsRequest,
) -> Result<LogBatchStream, Status> {
    let dir = dir.ok_or_else(|| {
        Status::failed_precondition(
            "this agent writes function logs to stdout only (logs.sinks has no \"file\"); read them from its journal",
        )
    })?;
    let version = if request.function_version.is_empty() {
        LATEST.to_owned()
    } else {
        request.function_version
    };
    let current = sink::file_path(dir, &request.function_name, &version).ok_or_else(|| {
        Status::invalid_argument(format!(
            "function {} version {} is not a function name and version",
            quote(&request.function_name),
            quote(&version)
        ))
    })?;
    let rotated = rotated_files(&current);
    if !request.follow && rotated.is_empty() && !current.exists() {
        return Err(Status::not_found(format!(
            "no log records for function {} version {} on this host",
            shown(&request.function_name),
            shown(&version)
        )));
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut out = Batcher {
            tx,
            batch: Vec::new(),
            bytes: 0,
        };
        if let Err(e) = read_all(&current, rotated, request.follow, &mut out).await {
            let _ = out
                .tx
                .send(Err(Status::internal(format!(
                    "reading {}: {e}",
                    current.display()
                ))))
                .await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Rotated files of `current` that exist, oldest (highest number) first.
fn rotated_files(current: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (current.parent(), current.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n: u32 = e
                .file_name()
                .to_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Collects records into messages; `false` from a method means the client has gone.
struct Batcher {
    tx: mpsc::Sender<Result<pb::StreamLogsResponse, Status>>,
    batch: Vec<String>,
    bytes: usize,
}

impl Batcher {
    async fn add(&mut self, line: &[u8]) -> bool {
        self.bytes += line.len();
        self.batch.push(String::from_utf8_lossy(line).into_owned());
        if self.batch.len() >= BATCH_RECORDS || self.bytes >= BATCH_BYTES {
            return self.flush().await;
        }
        true
    }

    async fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return !self.tx.is_closed();
        }
        self.bytes = 0;
        let records = std::mem::take(&mut self.batch);
        self.tx
            .send(Ok(pb::StreamLogsResponse { records }))
            .await
            .is_ok()
    }
}

/// A file being read: its handle, its inode and a splitter holding an unfinished last line.
struct Reader {
    file: tokio::fs::File,
    inode: u64,
    pos: u64,
    lines: LineSplitter,
}

impl Reader {
    async fn open(path: &Path) -> io::Result<Option<Self>> {
        match tokio::fs::File::open(path).await {
            Ok(file) => {
                let inode = file.metadata().await?.ino();
                Ok(Some(Self {
                    file,
                    inode,
                    pos: 0,
                    lines: LineSplitter::new(MAX_RECORD_BYTES),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads to the current end of the file; complete lines go to `out`. False: the client has gone.
    async fn drain(&mut self, out: &mut Batcher) -> io::Result<bool> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = self.file.read(&mut chunk).await?;
            if n == 0 {
                return Ok(true);
            }
            self.pos += n as u64;
            let mut lines = Vec::new();
            self.lines
                .push(&chunk[..n], &mut |l: &[u8], _| lines.push(l.to_vec()));
            for l in lines {
                if !out.add(&l).await {
                    return Ok(false);
                }
            }
        }
    }

    /// Passes on an unfinished last line (the file will not grow any more).
    async fn finish(&mut self, out: &mut Batcher) -> bool {
        let mut rest = Vec::new();
        self.lines.finish(&mut |l: &[u8], _| rest.push(l.to_vec()));
        for l in rest {
            if !out.add(&l).await {
                return false;
            }
        }
        true
    }
}

async fn read_all(
    current: &Path,
    rotated: Vec<PathBuf>,
    follow: bool,
    out: &mut Batcher,
) -> io::Result<()> {
    // Open every file before reading any, so a rotation meanwhile does not move a file out from under us.
    let mut old = Vec::new();
    for p in &rotated {
        if let Some(r) = Reader::open(p).await? {
            old.push(r);
        }
    }
    let mut cur = Reader::open(current).await?;
    for mut r in old {
        if !r.drain(out).await? || !r.finish(out).await {
            return Ok(());
        }
    }
    if !follow {
        if let Some(r) = cur.as_mut() {
            if !r.drain(out).await? || !r.finish(out).await {
                return Ok(());
            }
        }
        out.flush().await;
        return Ok(());
    }
    loop {
        if let Some(r) = cur.as_mut() {
            if !r.drain(out).await? {
                return Ok(());
            }
        }
        if !out.flush().await {
            return Ok(());
        }
        tokio::select! {
            () = out.tx.closed() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let meta = match tokio::fs::metadata(current).await {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        match (cur.as_mut(), meta) {
            (Some(r), Some(m)) if m.ino() == r.inode => {
                if m.len() < r.pos {
                    // Truncated in place: start again.
                    use tokio::io::AsyncSeekExt;
                    r.file.seek(io::SeekFrom::Start(0)).await?;
                    r.pos = 0;
                    r.lines = LineSplitter::new(MAX_RECORD_BYTES);
                }
            }
            (Some(r), meta) => {
                // Rotated away (or removed): finish the old file, then the new one from its start.
                if !r.drain(out).await? || !r.finish(out).await {
                    return Ok(());
                }
                cur = match meta {
                    Some(_) => Reader::open(current).await?,
                    None => None,
                };
            }
            (None, Some(_)) => cur = Reader::open(current).await?,
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn request(function: &str, follow: bool) -> pb::StreamLogsRequest {
        pb::StreamLogsRequest {
            function_name: function.into(),
            function_version: String::new(),
            follow,
        }
    }

    async fn next_records(s: &mut LogBatchStream) -> Vec<String> {
        s.next().await.unwrap().unwrap().records
    }

    #[tokio::test]
    async fn reads_rotated_files_oldest_first_then_the_current_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("f");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("$LATEST.log.2"), "a\nb\n").unwrap();
        std::fs::write(dir.join("$LATEST.log.1"), "c\n").unwrap();
        std::fs::write(dir.join("$LATEST.log.x"), "not a rotated file\n").unwrap();
        std::fs::write(dir.join("$LATEST.log"), "d\ne").unwrap();
        let mut s = stream_logs(Some(t.path()), request("f", false)).unwrap();
        let mut all = Vec::new();
        while let Some(batch) = s.next().await {
            all.extend(batch.unwrap().records);
        }
        assert_eq!(all, vec!["a", "b", "c", "d", "e"]);
    }

    #[tokio::test]
    async fn errors_name_what_is_wrong() {
        let t = tempfile::tempdir().unwrap();
        let code = |r: Result<LogBatchStream, Status>| r.err().map(|s| s.code());
        assert_eq!(
            code(stream_logs(Some(t.path()), request("nothing", false))),
            Some(tonic::Code::NotFound)
        );
        assert_eq!(
            code(stream_logs(Some(t.path()), request("../etc", false))),
            Some(tonic::Code::InvalidArgument)
        );
        assert_eq!(
            code(stream_logs(None, request("f", false))),
            Some(tonic::Code::FailedPrecondition)
        );
    }

    #[tokio::test]
    async fn follow_sees_new_records_across_a_rotation() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("f");
        std::fs::create_dir_all(&dir).unwrap();
        let cur = dir.join("$LATEST.log");
        // Following a file that does not exist yet waits for it.
        let mut s = stream_logs(Some(t.path()), request("f", true)).unwrap();
        std::fs::write(&cur, "1\n").unwrap();
        assert_eq!(next_records(&mut s).await, vec!["1"]);
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
            f.write_all(b"2\n").unwrap();
        }
        assert_eq!(next_records(&mut s).await, vec!["2"]);
        // Rotation: the old file gets one more record after being renamed, then a new file appears.
        std::fs::rename(&cur, dir.join("$LATEST.log.1")).unwrap();
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("$LATEST.log.1"))
                .unwrap();
            f.write_all(b"3\n").unwrap();
        }
        std::fs::write(&cur, "4\n").unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(next_records(&mut s).await);
        }
        assert_eq!(got, vec!["3", "4"]);
    }
}
