//! `lmictl logs`: choosing records (`--since`, `--environment`, `--tail`) and showing them, one readable line
//! each by default or the records themselves with `--json`.
//!
//! The agent streams the records as its file sink wrote them (see `StreamLogsResponse`): one JSON object each,
//! with `timestamp` (UTC, `…T…Z`), `level` and `requestId` when known, and `message` (the runtime's text, or
//! its JSON object). The choosing happens here, so it works with any agent that serves `StreamLogs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// `--since`: a duration back from now, or a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    /// Milliseconds since the Unix epoch.
    At(i64),
}

impl Since {
    /// The earliest record time wanted, in milliseconds since the epoch, given the current time.
    pub fn cutoff_ms(self, now: SystemTime) -> i64 {
        match self {
            Since::At(ms) => ms,
            Since::Ago(d) => {
                let now_ms = now
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
        }
    }
}

/// Parses `--since`: `90s`, `10m`, `2h`, `1d` (a whole number and a unit, or several: `1h30m`), or an
/// RFC 3339 time such as `2025-01-02T03:04:05Z` or `2025-01-02T05:04:05.5+02:00`.
pub fn parse_since(s: &str) -> Result<Since, String> {
    let s = s.trim();
    if let Some(ms) = parse_rfc3339_ms(s) {
        return Ok(Since::At(ms));
    }
    parse_duration(s).map(Since::Ago).ok_or_else(|| {
        format!("`{s}` is neither a duration (30s, 10m, 2h, 1d) nor an RFC 3339 time (2025-01-02T03:04:05Z)")
    })
}

fn parse_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0u64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    Some(Duration::from_secs(total))
}

/// Milliseconds since the epoch of an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`), or `None`.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' || !matches!(rb[0], b'+' | b'-') {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (h * 60 + m)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Which records to print.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Earliest `timestamp`, in milliseconds since the epoch.
    pub since_ms: Option<i64>,
    /// The record's `environment` equals it (`Exact`) or starts with it (`Prefix`).
    pub environment: Option<EnvironmentMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvironmentMatch {
    Exact(String),
    Prefix(String),
}

impl Filter {
    /// Whether `record` (one line of the stream) is wanted. A record that is not JSON, or has no readable
    /// timestamp, passes `--since` (it cannot be placed in time) but not `--environment`.
    pub fn keeps(&self, record: &str) -> bool {
        if self.since_ms.is_none() && self.environment.is_none() {
            return true;
        }
        let value: Option<Value> = serde_json::from_str(record).ok();
        if let Some(cutoff) = self.since_ms {
            let at = value
                .as_ref()
                .and_then(|v| v.get("timestamp"))
                .and_then(Value::as_str)
                .and_then(parse_rfc3339_ms);
            if at.is_some_and(|at| at < cutoff) {
                return false;
            }
        }
        if let Some(m) = &self.environment {
            let env = value
                .as_ref()
                .and_then(|v| v.get("environment"))
                .and_then(Value::as_str);
            let ok = match (m, env) {
                (EnvironmentMatch::Exact(id), Some(e)) => e == id,
                (EnvironmentMatch::Prefix(p), Some(e)) => e.starts_with(p.as_str()),
                (_, None) => false,
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// One record as a line for people, newline-terminated:
/// `<timestamp> <LEVEL> <request id> <message>`, `-` for a missing level or request id. The message is the
/// runtime's text, or its JSON object's `message` (or `msg`, or tracing's `fields.message`), else the object
/// itself, compact. A multi-line message (`\r` stands for a newline in the records) continues on indented
/// lines. A line that is not a record is printed as it is.
pub fn readable(record: &str) -> String {
    let Ok(Value::Object(r)) = serde_json::from_str::<Value>(record) else {
        return format!("{}\n", record.trim_end());
    };
    let field = |k: &str| r.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let timestamp = field("timestamp").unwrap_or("-");
    let level = field("level").unwrap_or("-");
    let request_id = field("requestId").unwrap_or("-");
    let message = match r.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => ["message", "msg"]
            .iter()
            .find_map(|k| m.get(*k).and_then(Value::as_str))
            .or_else(|| {
                m.get("fields")
                    .and_then(|f| f.get("message"))
                    .and_then(Value::as_str)
            })
            .map_or_else(|| Value::Object(m.clone()).to_string(), str::to_owned),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let message = message.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines = message.trim_end_matches('\n').split('\n');
    let mut out = format!(
        "{timestamp} {level:<5} {request_id} {}\n",
        lines.next().unwrap_or_default()
    );
    for line in lines {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The text to print for one record.
pub fn render(record: &str, json: bool) -> String {
    if json {
        format!("{}\n", record.trim_end_matches('\n'))
    } else {
        readable(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_durations_and_times() {
        assert_eq!(parse_since("10m"), Ok(Since::Ago(Duration::from_secs(600))));
        assert_eq!(
            parse_since("1h30m"),
            Ok(Since::Ago(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_since("1d"),
            Ok(Since::Ago(Duration::from_secs(86_400)))
        );
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z"),
            Ok(Since::At(1_700_000_000_000))
        );
        assert_eq!(
            parse_since("2023-11-15T00:13:20.5+02:00"),
            Ok(Since::At(1_700_000_000_500))
        );
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "-5m",
            "2023-11-14",
            "2023-13-14T22:13:20Z",
            "soon",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(Since::Ago(Duration::from_secs(10)).cutoff_ms(now), 990_000);
    }

    const REC: &str = r#"{"timestamp":"2023-11-14T22:13:20.123Z","function":"f","version":"$LATEST","environment":"ab12cd","stream":"stdout","requestId":"r-1","level":"INFO","message":"hello"}"#;

    #[test]
    fn readable_lines() {
        assert_eq!(readable(REC), "2023-11-14T22:13:20.123Z INFO  r-1 hello\n");
        // A JSON message: its `message`; a multi-line text: continuation lines indented.
        let obj = r#"{"timestamp":"t","level":"ERROR","requestId":"r","message":{"timestamp":"x","level":"ERROR","message":"boom","requestId":"r"}}"#;
        assert_eq!(readable(obj), "t ERROR r boom\n");
        let tracing =
            r#"{"timestamp":"t","message":{"fields":{"message":"from rust"},"target":"f"}}"#;
        assert_eq!(readable(tracing), "t -     - from rust\n");
        let other = r#"{"timestamp":"t","message":{"a":1}}"#;
        assert_eq!(readable(other), "t -     - {\"a\":1}\n");
        let multi = r#"{"timestamp":"t","level":"ERROR","message":"Traceback:\r  File x\r"}"#;
        assert_eq!(readable(multi), "t ERROR - Traceback:\n      File x\n");
        let platform =
            r#"{"timestamp":"t","stream":"platform","requestId":"r","message":"END RequestId: r"}"#;
        assert_eq!(readable(platform), "t -     r END RequestId: r\n");
        assert_eq!(readable("not json"), "not json\n");
        assert!(!readable(REC).contains('{'), "no JSON by default");
        assert_eq!(render(REC, true), format!("{REC}\n"));
    }

    #[test]
    fn filters() {
        let all = Filter::default();
        assert!(all.keeps(REC));
        let later = Filter {
            since_ms: Some(1_700_000_000_124),
            ..Filter::default()
        };
        assert!(!later.keeps(REC));
        let earlier = Filter {
            since_ms: Some(1_700_000_000_123),
            ..Filter::default()
        };
        assert!(earlier.keeps(REC));
        let env = |m| Filter {
            environment: Some(m),
            ..Filter::default()
        };
        assert!(env(EnvironmentMatch::Exact("ab12cd".into())).keeps(REC));
        assert!(!env(EnvironmentMatch::Exact("ab12".into())).keeps(REC));
        assert!(env(EnvironmentMatch::Prefix("ab12".into())).keeps(REC));
        assert!(!env(EnvironmentMatch::Prefix("b".into())).keeps(REC));
        assert!(!env(EnvironmentMatch::Prefix("a".into())).keeps("not json"));
    }
}
