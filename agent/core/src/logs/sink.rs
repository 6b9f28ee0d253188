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
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::queue::{Entry, QueueReceiver};
use crate::version_map::VersionMap;

/// Records moved from the queue at a time.
const BATCH: usize = 512;
/// After a batch smaller than [`BATCH`], the writer waits this long before taking the next one: records that
/// trickle in (a few per invoke: the runtime's lines and the platform's records) are then written in batches,
/// with one write per function version per batch and one wake-up of the writer per batch instead of one per
/// record (a wake-up is a system call on the invoke path). It bounds how late a record reaches the sinks.
/// 10 ms rather than 1: with many function versions loaded at once a batch of 1 ms held about one record per
/// version, so each record still cost a write of its own (docs/PERFORMANCE.md, "Host scale"); the queue
/// (8,192 records by default) holds 10 ms of records up to about 800,000 records a second, and a full batch
/// is taken at once without waiting.
const COALESCE: Duration = Duration::from_millis(10);
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
    /// written. One entry per version ever logged, as the invoke counters keep.
    files: VersionMap<VersionFile>,
    /// How many of `files` hold an open file.
    open: usize,
    /// Records on their way to the open file, reused from one write to the next.
    buf: Vec<u8>,
}

/// A function version's log file: its path, and the file while it is kept open.
#[derive(Debug)]
struct VersionFile {
    /// `None`: the version's names cannot name a file.
    path: Option<PathBuf>,
    /// The open file and its size. Kept open between batches (a version's records otherwise cost a `mkdir`,
    /// an `open`, a `statx` and a `close` each time another version's record comes between them) until
    /// [`FileSink::close_files`], which the writer calls every [`REOPEN_EVERY`].
    open: Option<(File, u64)>,
}

/// Records are written to a file in chunks of up to this many bytes (a larger record is written alone).
const WRITE_CHUNK: usize = 64 * 1024;
/// At most this many files are kept open at once; past it, every one is closed before the next is opened.
const MAX_OPEN_FILES: usize = 128;
/// Open files are closed this often, so a file an operator moved or deleted (a `logrotate` without
/// `copytruncate`, a cleared directory) is written again at its path within this time.
pub const REOPEN_EVERY: Duration = Duration::from_secs(1);

impl FileSink {
    pub fn new(config: FileSinkConfig) -> Self {
        Self {
            config,
            errors: ErrorReport::new("file"),
            files: VersionMap::default(),
            open: 0,
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
        if self.files.get(function, version).is_none() {
            let path = file_path(&self.config.dir, function, version);
            self.files
                .get_or_insert_with(function, version, || VersionFile { path, open: None });
        }
        let needs_open = self
            .files
            .get(function, version)
            .is_some_and(|f| f.path.is_some() && f.open.is_none());
        if needs_open && self.open >= MAX_OPEN_FILES {
            self.close_files();
        }
        let Some(file) = self.files.get_mut(function, version) else {
            return;
        };
        let was_open = file.open.is_some();
        let result = match &file.path {
            Some(path) => append(path, &mut file.open, &self.config, &mut self.buf, records),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("function {function:?} version {version:?} cannot name a log file"),
            )),
        };
        if result.is_err() {
            // Opened afresh next time (the directory may have been removed under us).
            file.open = None;
        }
        match (was_open, file.open.is_some()) {
            (false, true) => self.open += 1,
            (true, false) => self.open -= 1,
            _ => {}
        }
        if let Err(e) = result {
            self.errors.report(&e, count);
        }
    }

    /// Closes every open file: the next record of each version opens its file at its path again.
    pub fn close_files(&mut self) {
        for file in self.files.values_mut() {
            file.open = None;
        }
        self.open = 0;
    }
}

/// Appends `records` to the file at `path`, opened into `open` if it is not (and reopened there after a
/// rotation).
fn append(
    path: &Path,
    open: &mut Option<(File, u64)>,
    config: &FileSinkConfig,
    buf: &mut Vec<u8>,
    records: impl Iterator<Item = impl AsRef<[u8]>>,
) -> io::Result<()> {
    buf.clear();
    let (file, size) = match open {
        Some(open) => open,
        None => {
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(parent)?;
            }
            open.insert(open_append(path)?)
        }
    };
    for record in records {
        let record = record.as_ref();
        let len = record.len() as u64;
        if *size > 0 && *size + len > config.max_file_bytes {
            write_out(file, buf)?;
            rotate(path, config.keep_files)?;
            (*file, *size) = open_append(path)?;
        }
        if buf.len() + record.len() > WRITE_CHUNK {
            write_out(file, buf)?;
        }
        if record.len() >= WRITE_CHUNK {
            file.write_all(record)?;
        } else {
            buf.extend_from_slice(record);
        }
        *size += len;
    }
    write_out(file, buf)
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
    let mut order: Vec<usize> = Vec::with_capacity(BATCH);
    let mut stdout_errors = ErrorReport::new("stdout");
    let mut opened_at = Instant::now();
    loop {
        let n = rx.blocking_recv_many(&mut batch, BATCH);
        if n == 0 {
            break;
        }
        if let Some(file) = sinks.file.as_mut() {
            if opened_at.elapsed() >= REOPEN_EVERY {
                file.close_files();
                opened_at = Instant::now();
            }
            // Each function version's records go to its file in one write, in the order they came.
            by_version(&batch, &mut order);
            for run in order.chunk_by(|&a, &b| same_version(&batch[a], &batch[b])) {
                let src = &batch[run[0]].source;
                let records = run.iter().map(|&i| batch[i].bytes.as_slice());
                file.write(&src.function, &src.version, records);
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

fn same_version(a: &Entry, b: &Entry) -> bool {
    std::sync::Arc::ptr_eq(&a.source, &b.source)
        || (a.source.function == b.source.function && a.source.version == b.source.version)
}

/// The batch's indices with each function version's records together, in the order of each version's first
/// record, and in their own order within a version (a stable sort by that first position).
fn by_version(batch: &[Entry], order: &mut Vec<usize>) {
    order.clear();
    // The position of its version's first record, for each record: versions in a batch are few.
    let mut firsts: Vec<usize> = Vec::new();
    let mut key = Vec::with_capacity(batch.len());
    for (i, e) in batch.iter().enumerate() {
        let first = firsts
            .iter()
            .copied()
            .find(|&f| same_version(&batch[f], e))
            .unwrap_or_else(|| {
                firsts.push(i);
                i
            });
        key.push(first);
    }
    order.extend(0..batch.len());
    order.sort_by_key(|&i| key[i]);
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

    #[test]
    fn a_version_s_file_stays_open_until_the_files_are_closed() {
        let t = tempfile::tempdir().unwrap();
        let mut s = sink(t.path(), 1 << 20, 1);
        s.write("fn", "1", [b"a\n"]);
        // Moved away (as logrotate does): records keep going to the open file...
        let current = t.path().join("fn/1.log");
        let moved = t.path().join("fn/moved");
        std::fs::rename(&current, &moved).unwrap();
        s.write("fn", "1", [b"b\n"]);
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "a\nb\n");
        assert!(!current.exists());
        // ...until the writer closes its files: then the path is opened again.
        s.close_files();
        s.write("fn", "1", [b"c\n"]);
        assert_eq!(std::fs::read_to_string(&current).unwrap(), "c\n");
        // A removed directory is made again when the files are next opened.
        std::fs::remove_dir_all(t.path().join("fn")).unwrap();
        s.close_files();
        s.write("fn", "1", [b"d\n"]);
        assert_eq!(std::fs::read_to_string(&current).unwrap(), "d\n");
    }

    #[test]
    fn no_more_than_the_limit_of_files_is_open_and_no_record_is_lost_past_it() {
        let t = tempfile::tempdir().unwrap();
        let mut s = sink(t.path(), 1 << 20, 1);
        let versions = MAX_OPEN_FILES + 3;
        for round in 0..2 {
            for v in 0..versions {
                s.write("fn", &v.to_string(), [format!("{round}\n").as_bytes()]);
                assert!(s.open <= MAX_OPEN_FILES, "{} open", s.open);
            }
        }
        for v in 0..versions {
            let text = std::fs::read_to_string(t.path().join(format!("fn/{v}.log"))).unwrap();
            assert_eq!(text, "0\n1\n", "version {v}");
        }
    }

    #[test]
    fn a_batch_is_grouped_by_version_keeping_each_version_s_order() {
        let source = |f: &str, v: &str| {
            std::sync::Arc::new(super::super::record::Source {
                function: f.to_owned(),
                version: v.to_owned(),
                environment: "e".to_owned(),
            })
        };
        let (a, b, c) = (source("f", "1"), source("f", "2"), source("g", "1"));
        // A second Source of version a (another environment of it) groups with a.
        let a2 = source("f", "1");
        let batch: Vec<Entry> = [&a, &b, &a2, &c, &b, &a]
            .iter()
            .enumerate()
            .map(|(i, s)| Entry {
                source: std::sync::Arc::clone(s),
                bytes: vec![b'0' + i as u8],
            })
            .collect();
        let mut order = Vec::new();
        by_version(&batch, &mut order);
        assert_eq!(order, vec![0, 2, 5, 1, 4, 3]);
    }
}
