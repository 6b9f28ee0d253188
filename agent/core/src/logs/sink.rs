//! Where records end up: a per-function-version file, rotated by size, and/or the agent's stdout.
//!
//! One writer thread owns the sinks and drains the queue in batches, so file I/O never runs on the async
//! runtime and a slow sink (a full disk, journald not reading stdout) slows nothing but the queue, which then
//! drops (see `queue`).
//!
//! File layout: `<dir>/<function>/<version>.log`, the current file; when writing a record would take it past
//! `max_file_bytes` it becomes `<version>.log.1` (the previous `.1` becomes `.2`, and so on) and the oldest
//! beyond `keep_files` rotated files is deleted. Directories are created mode 0750, files 0640.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::queue::{Entry, QueueReceiver};

/// Records moved from the queue at a time.
const BATCH: usize = 512;
/// After a batch smaller than [`BATCH`], the writer waits this long before taking the next one: records that
/// trickle in (a few per invoke: the runtime's lines and the platform's records) are then written in batches,
/// with one file open per batch and one wake-up of the writer per batch instead of one per record (a wake-up is
/// a system call on the invoke path). It bounds how late a record reaches the sinks.
const COALESCE: Duration = Duration::from_millis(1);
/// A failing sink is reported at most this often.
const ERROR_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The file sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    pub max_file_bytes: u64,
    pub keep_files: u32,
}

/// The current log file of a function version, or `None` when the names cannot be path components (they
/// are validated as function names before an environment exists; this is the last line of defence).
pub fn file_path(dir: &Path, function: &str, version: &str) -> Option<PathBuf> {
    let ok = |s: &str| {
        (1..=128).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_$.".contains(&b))
    };
    (ok(function) && ok(version)).then(|| dir.join(function).join(format!("{version}.log")))
}

/// `<current>.<n>`: the n-th rotated file (1 is the newest).
pub fn rotated_path(current: &Path, n: u32) -> PathBuf {
    let mut s = current.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Writes records into per-function-version files, rotating them by size.
#[derive(Debug)]
pub struct FileSink {
    config: FileSinkConfig,
    errors: ErrorReport,
    /// Each function version's file, by function name then version, built the first time a record of it is
    /// written (`None`: its names cannot name a file). One entry per version ever logged, as the invoke
    /// counters keep.
    paths: HashMap<String, HashMap<String, Option<PathBuf>>>,
    /// Records on their way to the open file, reused from one write to the next.
    buf: Vec<u8>,
}

/// Records are written to a file in chunks of up to this many bytes (a larger record is written alone).
const WRITE_CHUNK: usize = 64 * 1024;

impl FileSink {
    pub fn new(config: FileSinkConfig) -> Self {
        Self {
            config,
            errors: ErrorReport::new("file"),
            paths: HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// Appends `records` (all of one function version, each a complete line) to its file.
    pub fn write<I>(&mut self, function: &str, version: &str, records: I)
    where
        I: IntoIterator,
        I::IntoIter: ExactSizeIterator,
        I::Item: AsRef<[u8]>,
    {
        let records = records.into_iter();
        let count = records.len();
        if !self
            .paths
            .get(function)
            .is_some_and(|v| v.contains_key(version))
        {
            let path = file_path(&self.config.dir, function, version);
            self.paths
                .entry(function.to_owned())
                .or_default()
                .insert(version.to_owned(), path);
        }
        let path = self.paths.get(function).and_then(|v| v.get(version));
        let result = match path.and_then(Option::as_ref) {
            Some(path) => append(path, &self.config, &mut self.buf, records),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("function {function:?} version {version:?} cannot name a log file"),
            )),
        };
        if let Err(e) = result {
            self.errors.report(&e, count);
        }
    }
}

fn append(
    path: &Path,
    config: &FileSinkConfig,
    buf: &mut Vec<u8>,
    records: impl Iterator<Item = impl AsRef<[u8]>>,
) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)?;
    }
    buf.clear();
    let (mut file, mut size) = open_append(path)?;
    for record in records {
        let record = record.as_ref();
        let len = record.len() as u64;
        if size > 0 && size + len > config.max_file_bytes {
            write_out(&mut file, buf)?;
            drop(file);
            rotate(path, config.keep_files)?;
            (file, size) = open_append(path)?;
        }
        if buf.len() + record.len() > WRITE_CHUNK {
            write_out(&mut file, buf)?;
        }
        if record.len() >= WRITE_CHUNK {
            file.write_all(record)?;
        } else {
            buf.extend_from_slice(record);
        }
        size += len;
    }
    write_out(&mut file, buf)
}

/// Writes what `buf` holds to `file` and empties it.
fn write_out(file: &mut File, buf: &mut Vec<u8>) -> io::Result<()> {
    let result = file.write_all(buf);
    buf.clear();
    result
}

/// `.log` → `.log.1` → … → `.log.<keep>`; what would become `.log.<keep+1>` is deleted.
fn rotate(current: &Path, keep: u32) -> io::Result<()> {
    if keep == 0 {
        return remove_if_exists(current);
    }
    remove_if_exists(&rotated_path(current, keep))?;
    for n in (1..keep).rev() {
        rename_if_exists(&rotated_path(current, n), &rotated_path(current, n + 1))?;
    }
    rename_if_exists(current, &rotated_path(current, 1))
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reports a failing sink through the agent's own log, at most once a minute, with what was lost meanwhile.
#[derive(Debug)]
struct ErrorReport {
    sink: &'static str,
    last: Option<Instant>,
    lost_since: u64,
}

impl ErrorReport {
    fn new(sink: &'static str) -> Self {
        Self {
            sink,
            last: None,
            lost_since: 0,
        }
    }

    fn report(&mut self, e: &io::Error, lost: usize) {
        self.lost_since += lost as u64;
        if self.last.is_none_or(|t| t.elapsed() >= ERROR_REPORT_EVERY) {
            tracing::error!(sink = self.sink, error = %e, records_lost = self.lost_since, "writing function log records failed");
            self.last = Some(Instant::now());
            self.lost_since = 0;
        }
    }
}

/// The sinks the writer thread feeds.
#[derive(Debug)]
pub struct Sinks {
    pub file: Option<FileSink>,
    pub stdout: bool,
}

/// The writer thread's loop: until every sender is gone and the queue is empty.
pub fn run(mut rx: QueueReceiver, mut sinks: Sinks) {
    let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
    let mut stdout_errors = ErrorReport::new("stdout");
    loop {
        let n = rx.blocking_recv_many(&mut batch, BATCH);
        if n == 0 {
            break;
        }
        if let Some(file) = sinks.file.as_mut() {
            // Consecutive records of the same function version go to their file in one open.
            let mut start = 0;
            while start < batch.len() {
                let src = &batch[start].source;
                let end = batch[start..]
                    .iter()
                    .position(|e| {
                        e.source.function != src.function || e.source.version != src.version
                    })
                    .map_or(batch.len(), |n| start + n);
                let records = batch[start..end].iter().map(|e| e.bytes.as_slice());
                file.write(&src.function, &src.version, records);
                start = end;
            }
        }
        if sinks.stdout {
            let mut out = io::stdout().lock();
            let result = batch
                .iter()
                .try_for_each(|e| out.write_all(&e.bytes))
                .and_then(|()| out.flush());
            if let Err(e) = result {
                stdout_errors.report(&e, batch.len());
            }
        }
        rx.written(batch.iter().map(|e| e.bytes.len()).sum());
        batch.clear();
        if n < BATCH {
            std::thread::sleep(COALESCE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Path, max: u64, keep: u32) -> FileSink {
        FileSink::new(FileSinkConfig {
            dir: dir.to_owned(),
            max_file_bytes: max,
            keep_files: keep,
        })
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotation_keeps_k_files_in_order() {
        let t = tempfile::tempdir().unwrap();
        let mut s = sink(t.path(), 100, 3);
        // 40 records of 10 bytes: 10 per file, so the last 4 files hold records 0..40 (rotations drop the rest).
        for i in 0..40 {
            let rec = format!("{i:09}\n");
            s.write("fn", "$LATEST", &[rec.as_bytes()]);
        }
        let dir = t.path().join("fn");
        assert_eq!(
            files(&dir),
            vec![
                "$LATEST.log",
                "$LATEST.log.1",
                "$LATEST.log.2",
                "$LATEST.log.3"
            ]
        );
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        for name in files(&dir) {
            assert!(read(&name).len() <= 100, "{name}");
        }
        // Oldest to newest: .3, .2, .1, current; numbers continue across files.
        let all: String = [
            "$LATEST.log.3",
            "$LATEST.log.2",
            "$LATEST.log.1",
            "$LATEST.log",
        ]
        .iter()
        .map(|n| read(n))
        .collect();
        let nums: Vec<u32> = all.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(nums, (0..40).collect::<Vec<_>>());
        // A batch that crosses the limit rotates in the middle.
        let recs: Vec<String> = (40..55).map(|i| format!("{i:09}\n")).collect();
        let refs: Vec<&[u8]> = recs.iter().map(|r| r.as_bytes()).collect();
        s.write("fn", "$LATEST", &refs);
        assert_eq!(files(&dir).len(), 4);
        assert!(read("$LATEST.log").starts_with("000000050"));
    }

    #[test]
    fn keep_zero_keeps_only_the_current_file_and_an_oversized_record_is_written_whole() {
        let t = tempfile::tempdir().unwrap();
        let mut s = sink(t.path(), 100, 0);
        let big = vec![b'x'; 300];
        s.write("fn", "1", [&b"a\n"[..], &big, b"b\n"]);
        let dir = t.path().join("fn");
        assert_eq!(files(&dir), vec!["1.log"]);
        assert_eq!(std::fs::read_to_string(dir.join("1.log")).unwrap(), "b\n");
    }

    #[test]
    fn records_beyond_one_write_chunk_arrive_whole_and_in_order() {
        let t = tempfile::tempdir().unwrap();
        let mut s = sink(t.path(), 1 << 30, 1);
        let mut records: Vec<Vec<u8>> = (0..100u8)
            .map(|i| [vec![b'a' + i % 26; 999], vec![b'\n']].concat())
            .collect();
        records.insert(50, [vec![b'L'; WRITE_CHUNK + 10], vec![b'\n']].concat());
        s.write("fn", "1", &records);
        s.write("fn", "1", [b"last\n"]);
        let want = [records.concat(), b"last\n".to_vec()].concat();
        assert_eq!(std::fs::read(t.path().join("fn/1.log")).unwrap(), want);
    }

    #[test]
    fn names_that_are_not_path_components_are_refused() {
        let d = Path::new("/l");
        assert_eq!(
            file_path(d, "f", "$LATEST"),
            Some(PathBuf::from("/l/f/$LATEST.log"))
        );
        for (f, v) in [
            ("..", "1"),
            ("a/b", "1"),
            ("f", "../x"),
            ("", "1"),
            ("f", ".x"),
        ] {
            assert_eq!(file_path(d, f, v), None, "{f} {v}");
        }
        assert_eq!(
            rotated_path(Path::new("/l/f/1.log"), 2),
            PathBuf::from("/l/f/1.log.2")
        );
    }

    #[test]
    fn an_unwritable_directory_loses_records_without_panicking() {
        let t = tempfile::tempdir().unwrap();
        let blocker = t.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let mut s = sink(&blocker, 100, 1);
        s.write("fn", "1", &[b"a\n"]);
    }
}
