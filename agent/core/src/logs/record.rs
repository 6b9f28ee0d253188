//! One function log record: a line of a runtime's output turned into one JSON object.
//!
//! ```json
//! {"timestamp":"2025-01-02T03:04:05.678Z","function":"f","version":"$LATEST","environment":"<id>",
//!  "stream":"socket-3","pid":42,"requestId":"<id>","level":"INFO","message":{…the runtime's object…}}
//! ```
//!
//! - `timestamp`: when the agent read the line (UTC, milliseconds).
//! - `stream`: `stdout` / `stderr` of the runtime's main process, `socket-N` for the N-th connection to the
//!   environment's log socket (with the connecting process's `pid`), `lmi-agent` for the agent's own records
//!   about the capture (drop reports, end of capture), `platform` for the platform's records of each invoke
//!   (see [`super::platform`]).
//! - A line that is a JSON object is kept as such in `message`; its request id (in any of the shapes the
//!   official clients write, see [`super::lift`]) and its `level` (when a string) are copied to the top level.
//!   Any other line is a string `message`, in which `\r` stands for a newline (Node's and Python's clients
//!   write multi-line records that way), and invalid UTF-8 is replaced by U+FFFD; the request id and level of
//!   the clients' text formats are copied to the top level too.
//! - `split: true` marks a piece of an overlong line; the record after it (same stream) continues it. A piece
//!   is never parsed.

use std::{io::Write as _, time::SystemTime};

use super::lift;

/// The function version and environment whose runtime wrote the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub function: String,
    pub version: String,
    pub environment: String,
}

/// Where one line came from inside an environment.
#[derive(Clone, Copy)]
pub struct Origin<'a> {
    pub source: &'a Source,
    pub stream: &'a str,
    pub pid: Option<u32>,
    /// Whether an id that is not UUID-shaped belongs to an invoke of this environment (see [`super::lift`]).
    pub known: &'a dyn Fn(&str) -> bool,
}

impl std::fmt::Debug for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("source", &self.source)
            .field("stream", &self.stream)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// The stream name of the agent's own records.
pub const AGENT_STREAM: &str = "lmi-agent";

/// Appends the record of `line` (one JSON object and a `\n`) to `out`.
pub fn encode_line(
    out: &mut Vec<u8>,
    at: SystemTime,
    origin: Origin<'_>,
    line: &[u8],
    split: bool,
) {
    let text = String::from_utf8_lossy(line);
    let trimmed = text.trim();
    // A JSON object line is kept verbatim: `from_str` accepts only a complete, valid JSON text, so splicing
    // it in as a value keeps the record valid JSON.
    let probe = if split {
        None
    } else {
        lift::probe_json(trimmed)
    };
    let is_json = probe.is_some();
    let lifted = match probe {
        Some(p) => p.lift(origin.known),
        None if split => lift::Lifted::default(),
        None => lift::lift_text(trimmed, origin.known),
    };
    head(out, at, origin);
    if let Some(id) = &lifted.request_id {
        field(out, "requestId", id);
    }
    if let Some(level) = &lifted.level {
        field(out, "level", level);
    }
    if split {
        out.extend_from_slice(b",\"split\":true");
    }
    out.extend_from_slice(b",\"message\":");
    if is_json {
        out.extend_from_slice(trimmed.as_bytes());
    } else if text.contains('\r') {
        json(out, &text.replace('\r', "\n"));
    } else {
        json(out, &text);
    }
    out.extend_from_slice(b"}\n");
}

/// The request id [`encode_line`] lifts from `line` (for the invokes that asked for their log tail).
pub fn request_id_of(line: &[u8], split: bool, known: &dyn Fn(&str) -> bool) -> Option<String> {
    if split {
        return None;
    }
    let text = String::from_utf8_lossy(line);
    let trimmed = text.trim();
    let lifted = match lift::probe_json(trimmed) {
        Some(p) => p.lift(known),
        None => lift::lift_text(trimmed, known),
    };
    lifted.request_id.map(std::borrow::Cow::into_owned)
}

/// Appends a record of the agent itself about `source` (stream `lmi-agent`) with counters.
pub fn encode_agent(
    out: &mut Vec<u8>,
    at: SystemTime,
    source: &Source,
    message: &str,
    counters: &[(&str, u64)],
) {
    head(
        out,
        at,
        Origin {
            source,
            stream: AGENT_STREAM,
            pid: None,
            known: &|_| false,
        },
    );
    for (name, value) in counters {
        out.push(b',');
        json(out, name);
        let _ = write!(out, ":{value}");
    }
    field(out, "message", message);
    out.extend_from_slice(b"}\n");
}

fn head(out: &mut Vec<u8>, at: SystemTime, o: Origin<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_rfc3339_millis(out, at);
    out.push(b'"');
    field(out, "function", &o.source.function);
    field(out, "version", &o.source.version);
    field(out, "environment", &o.source.environment);
    field(out, "stream", o.stream);
    if let Some(pid) = o.pid {
        let _ = write!(out, ",\"pid\":{pid}");
    }
}

/// A record's text besides its line and its source's names: keys, the timestamp, the stream's name and the
/// pid, a lifted request id (a UUID) and level, and the escapes of a few characters (205 bytes in a test of
/// a Python runtime's text line).
const LINE_TEXT: usize = 256;

/// Room for the record of a line of `line_len` bytes from `source` ([`encode_line`]), so that encoding it
/// does not grow the buffer unless the line needs many escapes or names a long request id.
pub(super) fn line_capacity(source: &Source, line_len: usize) -> usize {
    LINE_TEXT + line_len + source.function.len() + source.version.len() + source.environment.len()
}

pub(super) fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    json(out, name);
    out.push(b':');
    json(out, value);
}

pub(super) fn json(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    write_rfc3339_millis(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) to `out`.
pub(super) fn write_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    out.extend_from_slice(&rfc3339_millis_bytes(t));
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), digits written directly (this runs for every record; a year past 9999
/// keeps its last four digits).
pub(super) fn rfc3339_millis_bytes(t: SystemTime) -> [u8; 24] {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, day) = crate::civil_time::civil_from_days(days);
    let rem = secs % 86_400;
    let mut a = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, mut v: u64, n: usize| {
        for i in (at..at + n).rev() {
            // `% 10` keeps the value in 0..=9.
            a[i] = b'0' + u8::try_from(v % 10).unwrap_or(0);
            v /= 10;
        }
    };
    put(0, u64::try_from(y).unwrap_or(0), 4);
    put(5, u64::from(m), 2);
    put(8, u64::from(day), 2);
    put(11, rem / 3600, 2);
    put(14, rem % 3600 / 60, 2);
    put(17, rem % 60, 2);
    put(20, u64::from(d.subsec_millis()), 3);
    a
}

/// Appends `s` as the inside of a JSON string (no quotes): as is when nothing in it needs escaping (ids,
/// versions, names: the common case), else escaped.
pub(super) fn json_inner(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.extend_from_slice(s.as_bytes());
    } else {
        let start = out.len();
        json(out, s);
        // Drop the quotes serde_json wrote around it.
        out.pop();
        out.remove(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::time::Duration;

    fn source() -> Source {
        Source {
            function: "f\"n".into(),
            version: "$LATEST".into(),
            environment: "env-1".into(),
        }
    }

    fn record(line: &[u8], split: bool) -> Value {
        let s = source();
        let mut out = Vec::new();
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        encode_line(
            &mut out,
            at,
            Origin {
                source: &s,
                stream: "socket-2",
                pid: Some(7),
                known: &|id| id == "r-1",
            },
            line,
            split,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_line_is_encoded_in_the_room_reserved_for_it() {
        let uuid = "8f507cfc-1a2b-4697-b07a-ac58fc914c95";
        let source = Source {
            function: "f".repeat(64),
            version: "$LATEST".into(),
            environment: uuid.into(),
        };
        let known = |_: &str| false;
        let text = format!("[INFO]\t2026-12-05T08:00:00.000Z\t{uuid}\tHello from the handler");
        let json =
            format!(r#"{{"timestamp":"t","level":"INFO","requestId":"{uuid}","message":"m"}}"#);
        for line in [text, json] {
            let room = line_capacity(&source, line.len());
            let mut out = Vec::with_capacity(room);
            let origin = Origin {
                source: &source,
                stream: "socket-1024",
                pid: Some(4_194_304),
                known: &known,
            };
            encode_line(&mut out, SystemTime::now(), origin, line.as_bytes(), false);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["requestId"], uuid, "{line}");
            assert_eq!(
                out.capacity(),
                room,
                "never grown: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn a_json_object_line_is_kept_and_its_request_id_and_level_lifted() {
        let r = record(
            br#"{"timestamp":"t","level":"WARN","requestId":"r-1","message":"hi","n":[1,2]}"#,
            false,
        );
        assert_eq!(r["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(r["function"], "f\"n");
        assert_eq!(r["version"], "$LATEST");
        assert_eq!(r["environment"], "env-1");
        assert_eq!(r["stream"], "socket-2");
        assert_eq!(r["pid"], 7);
        assert_eq!(r["requestId"], "r-1");
        assert_eq!(r["level"], "WARN");
        assert_eq!(
            r["message"],
            json!({"timestamp":"t","level":"WARN","requestId":"r-1","message":"hi","n":[1,2]})
        );
        assert!(r.get("split").is_none());
    }

    #[test]
    fn other_lines_are_text_messages() {
        let r = record(b"plain text", false);
        assert_eq!(r["message"], "plain text");
        assert!(r.get("requestId").is_none());
        // Not an object, broken JSON, or a non-string requestId: text, nothing lifted.
        for line in [
            &b"[1,2]"[..],
            b"{\"requestId\": \"x\"",
            b"\"str\"",
            b"{\"a\":1} trailing",
        ] {
            let r = record(line, false);
            assert_eq!(r["message"], String::from_utf8_lossy(line).as_ref());
            assert!(r.get("requestId").is_none());
        }
        let r = record(br#"{"requestId": 5, "level": null}"#, false);
        assert!(r.get("requestId").is_none() && r.get("level").is_none());
        assert_eq!(r["message"], json!({"requestId": 5, "level": null}));
    }

    #[test]
    fn carriage_returns_stand_for_newlines() {
        let r = record(b"Error: boom\r    at f (a.js:1)\r    at g (b.js:2)", false);
        assert_eq!(
            r["message"],
            "Error: boom\n    at f (a.js:1)\n    at g (b.js:2)"
        );
    }

    #[test]
    fn garbage_becomes_a_valid_record() {
        let r = record(b"\x00\x01\xff\xfe{\"x\x1b[31m", false);
        let m = r["message"].as_str().unwrap();
        assert!(
            m.starts_with("\u{0}\u{1}\u{FFFD}\u{FFFD}{\"x\u{1b}"),
            "{m:?}"
        );
        let r = record(br#"{"requestId":"r"}"#, true);
        assert_eq!(r["split"], true);
        assert_eq!(
            r["message"], r#"{"requestId":"r"}"#,
            "a piece is never parsed"
        );
    }

    #[test]
    fn timestamps_and_inner_strings() {
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(rfc3339_millis(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(951_782_400_007)),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            rfc3339_millis(at(4_102_444_799_999)),
            "2099-12-31T23:59:59.999Z"
        );
        let inner = |s: &str| {
            let mut out = b"\"".to_vec();
            json_inner(&mut out, s);
            out.push(b'"');
            serde_json::from_slice::<String>(&out).unwrap()
        };
        for s in ["8f507cfc-1a2b", "a\"b\\c\td\u{1}é", "", "$LATEST"] {
            assert_eq!(inner(s), s);
        }
    }

    #[test]
    fn agent_records() {
        let mut out = Vec::new();
        encode_agent(
            &mut out,
            SystemTime::UNIX_EPOCH,
            &source(),
            "dropped",
            &[("dropped", 3), ("dropped_total", 9)],
        );
        let r: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(r["stream"], AGENT_STREAM);
        assert_eq!(r["dropped"], 3);
        assert_eq!(r["dropped_total"], 9);
        assert_eq!(r["message"], "dropped");
        assert_eq!(r["timestamp"], "1970-01-01T00:00:00.000Z");
    }
}
