//! The platform's own records of each invoke, written into the function's log as Lambda's platform lines are:
//!
//! ```text
//! START RequestId: <id> Version: <version>                                   when a /next delivers it
//! <timestamp> <id> Task timed out after 3.00 seconds                         on a timeout, then:
//! END RequestId: <id>                                                        when it ends, with:
//! REPORT RequestId: <id>\tDuration: 12.34 ms\tStatus: success               (\t: tabs, as Lambda's)
//! ```
//!
//! Each is one record of stream `platform` (same format and sinks as the runtime's lines, see
//! [`super::record`]) with the id in `requestId`, the line in `message`, and for machines a `type`
//! (`platform.start`, `platform.timeout`, `platform.end`, `platform.report`); the report also has
//! `durationMs` and `status`, and `errorType` when the invoke ended in an error or a failure.
//!
//! `Status` is `success` (the runtime answered), `error` (it reported a function error, or its answer was
//! refused: too large, cut off), `timeout` (the deadline passed first; the duration is then the time to the
//! deadline), `failure` (the environment stopped: its runtime exited, was killed, or was deleted) or
//! `cancelled` (the caller went away before an outcome; the code may still run and its late answer is
//! refused). The duration runs from the delivery on `/next` to that end. An invoke that never reached the
//! runtime (it timed out or was cancelled while queued) has no records.
//!
//! The broker calls [`PlatformLog`] through [`lmi_runtime_api::broker::InvokeObserver`]: the start record is queued
//! under the broker's lock, so it always comes before the invoke's end records. Records are offered to the
//! bounded queue without waiting, like the runtime's lines: when it is full they are dropped and counted.

use std::{
    collections::{HashSet, VecDeque},
    io::Write as _,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use super::{
    invoke_tail::InvokeTails,
    lift,
    queue::{Entry, QueueSender},
    record::{self, Source},
    stats::LogStats,
};
use lmi_runtime_api::broker::{InvokeEnd, InvokeObserver};

/// The stream name of the platform's records.
pub const PLATFORM_STREAM: &str = "platform";

/// A platform record's text besides its fixed fields, request id, version and error type: keys, the
/// timestamp (twice in a timeout's line), the message's words, the duration and the status (about 225 bytes
/// in the report of a failed invoke, the longest).
const RECORD_TEXT: usize = 256;

/// How many ids that are not UUID-shaped are remembered per environment after their delivery.
const RECENT_IDS: usize = 1024;

/// The platform's records of one environment's invokes, and the ids delivered to it (see [`RecentIds`]).
pub struct PlatformLog {
    /// Taken when the environment's capture ends: nothing is written after the capture's last record, and
    /// the log writer can finish although the environment object lives on.
    queue: RwLock<Option<QueueSender>>,
    source: Arc<Source>,
    stats: Arc<LogStats>,
    /// The function's timeout, for the `Task timed out after` line.
    timeout: Duration,
    recent: RecentIds,
    /// `,"function":…,"version":…,"environment":…,"stream":"platform"`: the same for every record.
    fixed: Vec<u8>,
    /// The invokes that asked for their log tail: the platform lines of those are copied there.
    tails: Option<Arc<InvokeTails>>,
    /// For an environment that runs one invoke at a time (max concurrency 1): the invoke delivered last,
    /// to which its lines without a request id belong (`None` for other environments).
    serial: Option<Mutex<Option<Arc<str>>>>,
}

impl std::fmt::Debug for PlatformLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformLog")
            .field("source", &self.source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PlatformLog {
    pub fn new(
        queue: Option<QueueSender>,
        source: Source,
        stats: Arc<LogStats>,
        timeout: Duration,
    ) -> Self {
        let mut fixed = Vec::with_capacity(160);
        record::field(&mut fixed, "function", &source.function);
        record::field(&mut fixed, "version", &source.version);
        record::field(&mut fixed, "environment", &source.environment);
        record::field(&mut fixed, "stream", PLATFORM_STREAM);
        Self {
            queue: RwLock::new(queue),
            source: Arc::new(source),
            stats,
            timeout,
            recent: RecentIds::default(),
            fixed,
            tails: None,
            serial: None,
        }
    }

    /// Marks the environment as running one invoke at a time (max concurrency 1), as Lambda's classic
    /// model does: then every line its runtime writes from one invoke's delivery to the next belongs to that
    /// invoke, whether or not it carries the request id (see [`Self::serial_invoke`]).
    pub fn serial(mut self, serial: bool) -> Self {
        self.serial = serial.then(Mutex::default);
        self
    }

    /// The invoke a line without a request id belongs to: in a serial environment, the one delivered last
    /// (it may have ended: a line written just before the answer can be read after it); otherwise none,
    /// since invokes running side by side cannot be told apart by such a line.
    pub fn serial_invoke(&self) -> Option<Arc<str>> {
        self.serial
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Copies the platform lines of invokes watched in `tails` there (and lets the capture copy theirs).
    pub fn with_tails(mut self, tails: Arc<InvokeTails>) -> Self {
        self.tails = Some(tails);
        self
    }

    /// The tails to copy lines into, when any invoke is watched.
    pub fn active_tails(&self) -> Option<&InvokeTails> {
        self.tails.as_deref().filter(|t| t.active())
    }

    /// Whether `id` was delivered to this environment recently (for ids that are not UUID-shaped).
    pub fn knows(&self, id: &str) -> bool {
        self.recent.contains(id)
    }

    /// Stops writing: the environment's capture has ended.
    pub fn close(&self) {
        self.queue.write().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Room for `records` records of the invoke `id` (`error_type`: the one a report names), so that building
    /// them does not grow the buffer: each holds the fixed fields once, the id twice, and the version once
    /// more (a start) or the error type twice (a report), and [`RECORD_TEXT`] covers the rest.
    fn capacity(&self, records: u64, id: &str, error_type: &str) -> usize {
        let each = RECORD_TEXT
            + self.fixed.len()
            + 2 * id.len()
            + self.source.version.len().max(2 * error_type.len());
        each * usize::try_from(records).unwrap_or(1)
    }

    /// Builds records with `build` into `capacity` bytes only when the queue has room, and offers them;
    /// counts them either way.
    fn offer(&self, records: u64, capacity: usize, build: impl FnOnce(&mut Vec<u8>)) {
        let queue = self.queue.read().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queue.as_ref().filter(|q| q.has_room()) else {
            self.stats.add_drops(records);
            return;
        };
        let mut bytes = Vec::with_capacity(capacity);
        build(&mut bytes);
        match queue.try_push(Entry {
            source: self.source.clone(),
            bytes,
        }) {
            Ok(()) => self.stats.add_records(records),
            Err(_) => self.stats.add_drops(records),
        }
    }

    /// `{"timestamp":"<ts>","function":…,…,"stream":"platform","requestId":"<id>","type":"<kind>","message":"`
    /// (the message's text follows, then [`close_record`]).
    fn head(&self, out: &mut Vec<u8>, ts: &[u8], id: &str, kind: &str) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(ts);
        out.push(b'"');
        out.extend_from_slice(&self.fixed);
        out.extend_from_slice(b",\"requestId\":\"");
        record::json_inner(out, id);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\"");
    }

    fn start_record(&self, out: &mut Vec<u8>, ts: &[u8], id: &str) {
        self.head(out, ts, id, "platform.start");
        out.extend_from_slice(b",\"message\":\"START RequestId: ");
        record::json_inner(out, id);
        out.extend_from_slice(b" Version: ");
        record::json_inner(out, &self.source.version);
        close_record(out);
    }

    fn end_records(
        &self,
        out: &mut Vec<u8>,
        ts: &[u8],
        id: &str,
        ran: Duration,
        end: InvokeEnd,
        error_type: Option<&str>,
    ) {
        if end == InvokeEnd::Timeout {
            self.head(out, ts, id, "platform.timeout");
            out.extend_from_slice(b",\"message\":\"");
            out.extend_from_slice(ts);
            out.push(b' ');
            record::json_inner(out, id);
            let _ = write!(
                out,
                " Task timed out after {:.2} seconds",
                self.timeout.as_secs_f64()
            );
            close_record(out);
        }
        self.head(out, ts, id, "platform.end");
        out.extend_from_slice(b",\"message\":\"END RequestId: ");
        record::json_inner(out, id);
        close_record(out);

        // Hundredths of a millisecond, rounded, in integers: `12.35`.
        let hundredths = (ran.as_nanos() + 5_000) / 10_000;
        let (ms, frac) = (hundredths / 100, hundredths % 100);
        let status = end.as_str();
        let error_type =
            error_type.filter(|_| matches!(end, InvokeEnd::Error | InvokeEnd::Failure));
        self.head(out, ts, id, "platform.report");
        let _ = write!(
            out,
            ",\"durationMs\":{ms}.{frac:02},\"status\":\"{status}\""
        );
        if let Some(t) = error_type {
            record::field(out, "errorType", t);
        }
        out.extend_from_slice(b",\"message\":\"REPORT RequestId: ");
        record::json_inner(out, id);
        let _ = write!(out, "\\tDuration: {ms}.{frac:02} ms\\tStatus: {status}");
        if let Some(t) = error_type {
            out.extend_from_slice(b"\\tError Type: ");
            record::json_inner(out, t);
        }
        close_record(out);
    }
}

impl PlatformLog {
    /// The end lines of a watched invoke, as its records' messages say them (tabs as tabs).
    fn tail_end_lines(
        &self,
        tails: &InvokeTails,
        id: &str,
        ran: Duration,
        end: InvokeEnd,
        error_type: Option<&str>,
    ) {
        if end == InvokeEnd::Timeout {
            let ts = record::rfc3339_millis_bytes(SystemTime::now());
            let line = format!(
                "{} {id} Task timed out after {:.2} seconds",
                String::from_utf8_lossy(&ts),
                self.timeout.as_secs_f64()
            );
            tails.end_line(id, line.as_bytes());
        }
        tails.end_line(id, format!("END RequestId: {id}").as_bytes());
        let hundredths = (ran.as_nanos() + 5_000) / 10_000;
        let (ms, frac) = (hundredths / 100, hundredths % 100);
        let mut line = format!(
            "REPORT RequestId: {id}\tDuration: {ms}.{frac:02} ms\tStatus: {}",
            end.as_str()
        );
        if let Some(t) = error_type.filter(|_| matches!(end, InvokeEnd::Error | InvokeEnd::Failure))
        {
            line.push_str("\tError Type: ");
            line.push_str(t);
        }
        tails.end_line(id, line.as_bytes());
    }
}

/// Ends a message string and its record.
fn close_record(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"}\n");
}

impl InvokeObserver for PlatformLog {
    fn delivered(&self, id: &Arc<str>) {
        if !lift::is_uuid(id) {
            self.recent.insert(id);
        }
        if let Some(last) = &self.serial {
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        }
        if let Some(tails) = self.active_tails() {
            let line = format!("START RequestId: {id} Version: {}", self.source.version);
            tails.line(id, line.as_bytes());
        }
        self.offer(1, self.capacity(1, id, ""), |out| {
            self.start_record(out, &record::rfc3339_millis_bytes(SystemTime::now()), id);
        });
    }

    fn ended(&self, id: &str, ran: Duration, end: InvokeEnd, error_type: Option<&str>) {
        if let Some(tails) = self.active_tails() {
            self.tail_end_lines(tails, id, ran, end, error_type);
        }
        let records = if end == InvokeEnd::Timeout { 3 } else { 2 };
        let capacity = self.capacity(records, id, error_type.unwrap_or(""));
        self.offer(records, capacity, |out| {
            // One timestamp for the records of one end.
            let ts = record::rfc3339_millis_bytes(SystemTime::now());
            self.end_records(out, &ts, id, ran, end, error_type);
        });
    }
}

/// The last [`RECENT_IDS`] request ids delivered to an environment that are not UUID-shaped (caller-chosen
/// ids), so that its log lines naming them can be attributed (see [`super::lift`]). UUIDs are lifted on
/// their shape and never entered, so the common case costs nothing. Kept past the end of an invoke: its
/// last lines are often read after its answer.
#[derive(Debug, Default)]
pub struct RecentIds {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl RecentIds {
    fn insert(&self, id: &Arc<str>) {
        let mut r = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if r.set.insert(id.clone()) {
            r.order.push_back(id.clone());
            if r.order.len() > RECENT_IDS {
                if let Some(old) = r.order.pop_front() {
                    r.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::queue;
    use serde_json::Value;

    fn platform(records: usize) -> (PlatformLog, queue::QueueReceiver, Arc<LogStats>) {
        let (tx, rx) = queue::bounded(records, 1 << 20);
        let stats = Arc::new(LogStats::default());
        let p = PlatformLog::new(
            Some(tx),
            Source {
                function: "f".into(),
                version: "7".into(),
                environment: "env-p".into(),
            },
            stats.clone(),
            Duration::from_secs(3),
        );
        (p, rx, stats)
    }

    fn drain(rx: &mut queue::QueueReceiver) -> Vec<Value> {
        // Everything is queued already: one call takes it all.
        let mut batch = Vec::new();
        let mut out = Vec::new();
        rx.blocking_recv_many(&mut batch, 64);
        for e in batch {
            assert_eq!(e.bytes.last(), Some(&b'\n'));
            for line in e.bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice(line).unwrap());
            }
        }
        out
    }

    #[test]
    fn start_end_and_report_records() {
        let (p, mut rx, stats) = platform(16);
        let id: Arc<str> = Arc::from("8f507cfc-1a2b-4697-b07a-ac58fc914c95");
        p.delivered(&id);
        p.ended(&id, Duration::from_micros(12_345), InvokeEnd::Success, None);
        let r = drain(&mut rx);
        assert_eq!(r.len(), 3);
        for rec in &r {
            assert_eq!(rec["stream"], PLATFORM_STREAM);
            assert_eq!(rec["function"], "f");
            assert_eq!(rec["version"], "7");
            assert_eq!(rec["environment"], "env-p");
            assert_eq!(rec["requestId"], &*id);
            assert!(rec["timestamp"].as_str().unwrap().ends_with('Z'));
        }
        assert_eq!(r[0]["type"], "platform.start");
        assert_eq!(r[0]["message"], format!("START RequestId: {id} Version: 7"));
        assert_eq!(r[1]["type"], "platform.end");
        assert_eq!(r[1]["message"], format!("END RequestId: {id}"));
        assert_eq!(r[2]["type"], "platform.report");
        assert_eq!(
            r[2]["message"],
            format!("REPORT RequestId: {id}\tDuration: 12.35 ms\tStatus: success")
        );
        assert_eq!(r[2]["durationMs"], 12.35);
        assert_eq!(r[2]["status"], "success");
        assert!(r[2].get("errorType").is_none());
        assert_eq!(stats.records(), 3);
        assert!(
            !p.knows(&id),
            "UUIDs are not remembered: their shape suffices"
        );
    }

    #[test]
    fn a_timeout_writes_lambdas_line_before_end_and_report() {
        let (p, mut rx, _) = platform(16);
        p.ended(
            "r-1",
            Duration::from_secs(3),
            InvokeEnd::Timeout,
            Some("Sandbox.Timedout"),
        );
        let r = drain(&mut rx);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["type"], "platform.timeout");
        let m = r[0]["message"].as_str().unwrap();
        let (ts, rest) = m.split_once(' ').unwrap();
        assert_eq!(ts, r[0]["timestamp"].as_str().unwrap());
        assert_eq!(rest, "r-1 Task timed out after 3.00 seconds");
        assert_eq!(r[1]["message"], "END RequestId: r-1");
        assert_eq!(r[2]["status"], "timeout");
        assert!(r[2].get("errorType").is_none());
    }

    #[test]
    fn errors_and_failures_name_their_type() {
        let (p, mut rx, _) = platform(16);
        p.ended("a", Duration::ZERO, InvokeEnd::Error, Some("Handled"));
        p.ended(
            "b",
            Duration::ZERO,
            InvokeEnd::Failure,
            Some("Runtime.ExitError"),
        );
        p.ended("c", Duration::ZERO, InvokeEnd::Cancelled, Some("ignored"));
        let r = drain(&mut rx);
        let reports: Vec<&Value> = r
            .iter()
            .filter(|x| x["type"] == "platform.report")
            .collect();
        assert_eq!(
            reports[0]["message"],
            "REPORT RequestId: a\tDuration: 0.00 ms\tStatus: error\tError Type: Handled"
        );
        assert_eq!(reports[0]["errorType"], "Handled");
        assert_eq!(reports[1]["status"], "failure");
        assert_eq!(reports[1]["errorType"], "Runtime.ExitError");
        assert_eq!(reports[2]["status"], "cancelled");
        assert!(reports[2].get("errorType").is_none());
    }

    #[test]
    fn a_full_queue_or_a_closed_log_drops_and_counts() {
        let (p, mut rx, stats) = platform(1);
        let id: Arc<str> = Arc::from("x");
        p.delivered(&id);
        p.delivered(&id);
        assert_eq!((stats.records(), stats.dropped()), (1, 1));
        assert_eq!(drain(&mut rx).len(), 1);
        p.close();
        p.ended("x", Duration::ZERO, InvokeEnd::Success, None);
        assert_eq!((stats.records(), stats.dropped()), (1, 3));
        assert!(
            p.knows("x"),
            "ids stay known for the lines still being read"
        );
    }

    #[test]
    fn recent_ids_are_bounded() {
        let r = RecentIds::default();
        for i in 0..RECENT_IDS + 10 {
            r.insert(&Arc::from(format!("id-{i}")));
        }
        assert!(!r.contains("id-0") && !r.contains("id-9"));
        assert!(r.contains("id-10") && r.contains(&format!("id-{}", RECENT_IDS + 9)));
        let inner = r.inner.lock().unwrap();
        assert_eq!(
            (inner.set.len(), inner.order.len()),
            (RECENT_IDS, RECENT_IDS)
        );
    }

    #[test]
    fn records_are_built_in_the_room_reserved_for_them() {
        let id: Arc<str> = Arc::from("8f507cfc-1a2b-4697-b07a-ac58fc914c96");
        let error_type = "Runtime.ExitError";
        let long = Source {
            function: "f".repeat(64),
            version: "v".repeat(128),
            environment: "8f507cfc-1a2b-4697-b07a-ac58fc914c95".into(),
        };
        let (short, mut short_rx, _) = platform(8);
        let (tx, mut long_rx) = queue::bounded(8, 1 << 20);
        let long = PlatformLog::new(Some(tx), long, Arc::default(), Duration::from_secs(900));
        for (p, rx) in [(short, &mut short_rx), (long, &mut long_rx)] {
            p.delivered(&id);
            let (failed, timed_out) = (Duration::from_secs(899), Duration::from_secs(900));
            p.ended(&id, failed, InvokeEnd::Failure, Some(error_type));
            p.ended(&id, timed_out, InvokeEnd::Timeout, None);
            let mut batch = Vec::new();
            rx.blocking_recv_many(&mut batch, 8);
            let room = [
                p.capacity(1, &id, ""),
                p.capacity(2, &id, error_type),
                p.capacity(3, &id, ""),
            ];
            assert_eq!(batch.len(), room.len());
            for (e, room) in batch.iter().zip(room) {
                let text = String::from_utf8_lossy(&e.bytes);
                assert!(
                    e.bytes.len() <= room,
                    "{} bytes in {room}: {text}",
                    e.bytes.len()
                );
                assert_eq!(e.bytes.capacity(), room, "reserved once, never grown");
            }
        }
    }

    #[test]
    fn names_are_escaped() {
        let (tx, mut rx) = queue::bounded(4, 1 << 20);
        let p = PlatformLog::new(
            Some(tx),
            Source {
                function: "f\"x".into(),
                version: "$LATEST".into(),
                environment: "e".into(),
            },
            Arc::default(),
            Duration::from_millis(1500),
        );
        p.ended("q\"id", Duration::ZERO, InvokeEnd::Timeout, None);
        let r = drain(&mut rx);
        assert_eq!(r[0]["function"], "f\"x");
        assert_eq!(r[0]["requestId"], "q\"id");
        assert!(r[0]["message"]
            .as_str()
            .unwrap()
            .ends_with("q\"id Task timed out after 1.50 seconds"));
    }
}
