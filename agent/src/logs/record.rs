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
//!   about the capture (drop reports, end of capture).
//! - A line that is a JSON object is kept as such in `message`; its `requestId` and `level` (when strings)
//!   are copied to the top level. Any other line is a string `message`, in which `\r` stands for a newline
//!   (Node's runtime writes multi-line records that way), and invalid UTF-8 is replaced by U+FFFD.
//! - `split: true` marks a piece of an overlong line; the record after it (same stream) continues it.

use std::{io::Write as _, time::SystemTime};

use serde::Deserialize;

/// The function version and environment whose runtime wrote the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub function: String,
    pub version: String,
    pub environment: String,
}

/// Where one line came from inside an environment.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source: &'a Source,
    pub stream: &'a str,
    pub pid: Option<u32>,
}

/// The stream name of the agent's own records.
pub const AGENT_STREAM: &str = "lmi-agent";

/// The fields read from a line that is a JSON object.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "requestId", default)]
    request_id: Option<serde_json::Value>,
    #[serde(default)]
    level: Option<serde_json::Value>,
}

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
    let probe = (!split && trimmed.starts_with('{'))
        .then(|| serde_json::from_str::<Probe>(trimmed).ok())
        .flatten();
    let as_str = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (request_id, level) = probe
        .as_ref()
        .map_or((None, None), |p| (as_str(&p.request_id), as_str(&p.level)));
    head(out, at, origin);
    if let Some(id) = &request_id {
        field(out, "requestId", id);
    }
    if let Some(level) = &level {
        field(out, "level", level);
    }
    if split {
        out.extend_from_slice(b",\"split\":true");
    }
    out.extend_from_slice(b",\"message\":");
    if probe.is_some() {
        out.extend_from_slice(trimmed.as_bytes());
    } else {
        let message = text.replace('\r', "\n");
        json(out, &message);
    }
    out.extend_from_slice(b"}\n");
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
    out.extend_from_slice(b"{\"timestamp\":");
    json(out, &rfc3339_millis(at));
    field(out, "function", &o.source.function);
    field(out, "version", &o.source.version);
    field(out, "environment", &o.source.environment);
    field(out, "stream", o.stream);
    if let Some(pid) = o.pid {
        let _ = write!(out, ",\"pid\":{pid}");
    }
}

fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    json(out, name);
    out.push(b':');
    json(out, value);
}

fn json(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, day) = crate::launch::civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
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
            },
            line,
            split,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
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
