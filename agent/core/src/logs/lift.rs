//! Finding the invoke's request id (and level) in a line a runtime wrote, in the shapes the official runtime
//! clients and the project's shims write.
//!
//! JSON object lines (the field names say what the value is):
//! - top-level `requestId`: the Python (`awslambdaric`) and Node clients' JSON format, the Go `lambdacontext`
//!   slog handler, .NET `Amazon.Lambda.RuntimeSupport`, and every shim of this project;
//! - top-level `AWSRequestId`: the Java runtime interface client's JSON format;
//! - `spans[].requestId` of the span named `Lambda runtime invoke`, then `span.requestId`, then any
//!   `spans[].requestId`: the Rust `lambda_runtime` crate's span under `tracing-subscriber`'s JSON format
//!   (`span` is the innermost span, `spans` the list from the root).
//!
//! Text lines (the position says what the token is):
//! - `[LEVEL]\t<timestamp>\t<requestId>\t<message>`: Python `awslambdaric`'s text format;
//! - `<timestamp>\t<requestId>\t<LEVEL>\t<message>`: the Node and .NET clients' text format;
//! - `<yyyy-MM-dd> <HH:mm:ss> <requestId> <LEVEL> …`: Java's documented log4j2 pattern
//!   (`%d{yyyy-MM-dd HH:mm:ss} %X{AWSRequestId} %-5p …`; the Java client's own text format has no id);
//! - `requestId=<id>` or `requestId="<id>"` anywhere: Go's slog text handler (`lambdacontext` when the log
//!   format is text) and the Rust crate's span fields under `tracing`'s text format
//!   (`Lambda runtime invoke{requestId="…"}: …`).
//!
//! **Which ids are lifted.** A candidate is lifted only when it is UUID-shaped (every id Lambda and this agent
//! generate) or is the id of an invoke recently delivered to this environment (a caller-chosen id; see
//! [`super::platform::RecentIds`]). Anything else is left in the message untouched: a user's own `requestId`
//! (an S3 or downstream request id), a tab-separated line that merely looks like a client's format. When a
//! shape's candidate is refused, the next shape is tried (so a user span's `requestId` inside the runtime's
//! invoke span does not hide the invoke's id).
//!
//! **Lines without an id are not attributed**, not even when a single invoke is in flight: the agent reads
//! output asynchronously from pipes and sockets, and runtimes buffer it (Python block-buffers a pipe, a
//! client may flush after answering), so a line read while invoke B runs may have been written during A. A
//! wrong id is worse than none. Lambda does the same: it adds no id to what a runtime prints without one;
//! the platform's START and END records bracket those lines in a single-concurrency environment.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

/// The span the Rust `lambda_runtime` crate opens around each invoke.
const RUST_INVOKE_SPAN: &str = "Lambda runtime invoke";
/// The longest id lifted (the longest a caller may choose).
const MAX_ID: usize = 128;

/// What a line says about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lifted<'a> {
    pub request_id: Option<Cow<'a, str>>,
    pub level: Option<Cow<'a, str>>,
}

/// The fields read from a line that is a JSON object. Every field is a [`Value`], so a line whose fields
/// have unexpected types is still an object (nothing is lifted from those fields).
#[derive(Debug, Deserialize)]
struct Probe {
    #[serde(rename = "requestId", default)]
    request_id: Option<Value>,
    #[serde(rename = "AWSRequestId", default)]
    aws_request_id: Option<Value>,
    #[serde(default)]
    span: Option<Value>,
    #[serde(default)]
    spans: Option<Value>,
    #[serde(default)]
    level: Option<Value>,
}

/// Parses `trimmed` when it is one complete JSON object; `None` otherwise (the line is text).
pub fn probe_json(trimmed: &str) -> Option<JsonLine> {
    if !trimmed.starts_with('{') {
        return None;
    }
    serde_json::from_str::<Probe>(trimmed).ok().map(JsonLine)
}

/// A line that is a JSON object; see [`JsonLine::lift`].
#[derive(Debug)]
pub struct JsonLine(Probe);

impl JsonLine {
    /// The request id (see the module documentation for the order) and the `level` string.
    pub fn lift(self, known: &dyn Fn(&str) -> bool) -> Lifted<'static> {
        let Probe {
            request_id,
            aws_request_id,
            span,
            spans,
            level,
        } = self.0;
        let spans = match spans {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let field = |v: &Value| {
            v.get("requestId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let invoke_span = spans
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(RUST_INVOKE_SPAN))
            .and_then(field);
        let candidates = [
            into_string(request_id),
            into_string(aws_request_id),
            invoke_span,
            span.as_ref().and_then(field),
        ];
        let request_id = candidates
            .into_iter()
            .flatten()
            .chain(spans.iter().filter_map(field))
            .find(|id| acceptable(id, known))
            .map(Cow::Owned);
        Lifted {
            request_id,
            level: into_string(level).filter(|s| !s.is_empty()).map(Cow::Owned),
        }
    }
}

fn into_string(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A text shape: the candidate id of a line, and its level when the shape has one.
type Shape = fn(&str) -> Option<(&str, Option<&str>)>;

/// The request id and level of a text line in one of the shapes of the module documentation.
pub fn lift_text<'a>(line: &'a str, known: &dyn Fn(&str) -> bool) -> Lifted<'a> {
    let shapes: [Shape; 4] = [python_text, node_text, java_log4j, keyed];
    for shape in shapes {
        if let Some((id, level)) = shape(line) {
            if acceptable(id, known) {
                return Lifted {
                    request_id: Some(Cow::Borrowed(id)),
                    level: level.map(Cow::Borrowed),
                };
            }
        }
    }
    Lifted::default()
}

/// Whether `id` may be lifted: a plausible id (1-128 printable ASCII characters) that is UUID-shaped or known.
pub fn acceptable(id: &str, known: &dyn Fn(&str) -> bool) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.bytes().all(|b| b.is_ascii_graphic())
        && (is_uuid(id) || known(id))
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits of either case.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `[LEVEL]\t<timestamp>\t<id>\t…`
fn python_text(line: &str) -> Option<(&str, Option<&str>)> {
    let mut f = line.splitn(4, '\t');
    let level = f.next()?.strip_prefix('[')?.strip_suffix(']')?;
    let ts = f.next()?;
    let id = f.next()?;
    f.next()?;
    (is_level(level) && starts_like_date(ts)).then_some((id, Some(level)))
}

/// `<timestamp>\t<id>\t<LEVEL>\t…`
fn node_text(line: &str) -> Option<(&str, Option<&str>)> {
    let mut f = line.splitn(4, '\t');
    let ts = f.next()?;
    let id = f.next()?;
    let level = f.next()?;
    f.next()?;
    (starts_like_date(ts) && is_level(level)).then_some((id, Some(level)))
}

/// `<yyyy-MM-dd> <HH:mm:ss…> <id> <LEVEL> …`
fn java_log4j(line: &str) -> Option<(&str, Option<&str>)> {
    let mut f = line.splitn(5, ' ');
    let date = f.next()?;
    let time = f.next()?;
    let id = f.next()?;
    let level = f.next()?;
    let date_ok = date.len() == 10 && starts_like_date(date);
    let time_ok =
        time.len() >= 8 && time.as_bytes()[2] == b':' && time.as_bytes()[0].is_ascii_digit();
    (date_ok && time_ok && is_level(level)).then_some((id, Some(level)))
}

/// `requestId=<id>` or `requestId="<id>"`, the key at the start or after a space, tab, `{` or `,`.
fn keyed(line: &str) -> Option<(&str, Option<&str>)> {
    const KEY: &str = "requestId=";
    let mut from = 0;
    while let Some(at) = line[from..].find(KEY) {
        let start = from + at;
        from = start + KEY.len();
        let boundary =
            start == 0 || matches!(line.as_bytes()[start - 1], b' ' | b'\t' | b'{' | b',');
        if !boundary {
            continue;
        }
        let rest = &line[from..];
        let id = match rest.strip_prefix('"') {
            Some(quoted) => &quoted[..quoted.find('"')?],
            None => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || matches!(c, '}' | ',' | ']'))
                    .unwrap_or(rest.len());
                &rest[..end]
            }
        };
        return Some((id, None));
    }
    None
}

/// `2024-01-02…`: four digits and a dash.
fn starts_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// A level word: 1-16 ASCII letters (`INFO`, `WARN`, `info`, `Information`…).
fn is_level(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8f507cfc-1a2b-4697-b07a-ac58fc914c95";

    fn none(_: &str) -> bool {
        false
    }

    fn json(line: &str, known: &dyn Fn(&str) -> bool) -> Lifted<'static> {
        probe_json(line).expect("a JSON object").lift(known)
    }

    fn id_of(l: &Lifted<'_>) -> Option<String> {
        l.request_id.as_deref().map(str::to_owned)
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid(ID));
        assert!(is_uuid(&ID.to_uppercase()));
        assert!(!is_uuid(&ID[1..]));
        assert!(!is_uuid(&ID.replace('-', "_")));
        assert!(!is_uuid("8f507cfc-1a2b-4697-b07a-ac58fc914c9g"));
    }

    #[test]
    fn json_shapes_of_every_client() {
        // Python awslambdaric / Node / Go lambdacontext / .NET / the shims: top-level requestId.
        let l = json(
            &format!(r#"{{"timestamp":"t","level":"INFO","message":"m","requestId":"{ID}"}}"#),
            &none,
        );
        assert_eq!(id_of(&l).as_deref(), Some(ID));
        assert_eq!(l.level.as_deref(), Some("INFO"));
        // .NET's level names are kept as written.
        let l = json(
            &format!(r#"{{"level":"Information","requestId":"{ID}"}}"#),
            &none,
        );
        assert_eq!(l.level.as_deref(), Some("Information"));
        // Java RIC JSON format.
        let l = json(
            &format!(
                r#"{{"timestamp":"t","message":"m","level":"UNDEFINED","AWSRequestId":"{ID}"}}"#
            ),
            &none,
        );
        assert_eq!(id_of(&l).as_deref(), Some(ID));
        // Rust lambda_runtime under tracing-subscriber's JSON format: span and spans.
        let rust = format!(
            r#"{{"timestamp":"t","level":"INFO","fields":{{"message":"hi"}},"target":"f","span":{{"requestId":"{ID}","name":"Lambda runtime invoke"}},"spans":[{{"requestId":"{ID}","name":"Lambda runtime invoke"}}]}}"#
        );
        assert_eq!(id_of(&json(&rust, &none)).as_deref(), Some(ID));
        // Only `span` (span list turned off).
        let l = json(&format!(r#"{{"span":{{"requestId":"{ID}"}}}}"#), &none);
        assert_eq!(id_of(&l).as_deref(), Some(ID));
    }

    #[test]
    fn the_invoke_span_wins_over_a_user_span() {
        // The innermost span is the user's, with its own requestId (not UUID-shaped): the invoke span's id is
        // lifted, not the user's.
        let line = format!(
            r#"{{"span":{{"requestId":"S3REQ1234","name":"put"}},"spans":[{{"requestId":"{ID}","name":"Lambda runtime invoke"}},{{"requestId":"S3REQ1234","name":"put"}}]}}"#
        );
        assert_eq!(id_of(&json(&line, &none)).as_deref(), Some(ID));
        // A UUID-shaped user span id is still behind the invoke span.
        let other = "00000000-0000-4000-8000-000000000000";
        let line = format!(
            r#"{{"span":{{"requestId":"{other}"}},"spans":[{{"name":"Lambda runtime invoke","requestId":"{ID}"}},{{"requestId":"{other}"}}]}}"#
        );
        assert_eq!(id_of(&json(&line, &none)).as_deref(), Some(ID));
    }

    #[test]
    fn json_ids_that_are_not_lifted() {
        // Not UUID-shaped and not known: left in the message only.
        for line in [
            r#"{"requestId":"4442587FB7D0A2F9"}"#,
            r#"{"AWSRequestId":"r-1"}"#,
            r#"{"span":{"requestId":"abc"}}"#,
            r#"{"requestId":""}"#,
            r#"{"requestId":5,"span":7,"spans":"x"}"#,
            r#"{"requestId":{"nested":"8f507cfc-1a2b-4697-b07a-ac58fc914c95"}}"#,
        ] {
            assert_eq!(json(line, &none).request_id, None, "{line}");
        }
        // A known id (caller-chosen, delivered here) is lifted whatever its shape.
        let known = |id: &str| id == "order-42";
        let l = json(r#"{"requestId":"order-42"}"#, &known);
        assert_eq!(id_of(&l).as_deref(), Some("order-42"));
        // An id with a control character is never lifted.
        let l = json(r#"{"requestId":"a\nb"}"#, &|_: &str| true);
        assert_eq!(l.request_id, None);
        // The first acceptable candidate wins: a foreign top-level id falls through to the Java field.
        let l = json(
            &format!(r#"{{"requestId":"foreign","AWSRequestId":"{ID}"}}"#),
            &none,
        );
        assert_eq!(id_of(&l).as_deref(), Some(ID));
    }

    #[test]
    fn text_shapes_of_every_client() {
        let cases = [
            // Python awslambdaric text format.
            (format!("[INFO]\t2024-01-02T03:04:05.678Z\t{ID}\thello"), Some("INFO")),
            (format!("[ERROR]\t2024-01-02T03:04:05.678Z\t{ID}\tboom\rTraceback"), Some("ERROR")),
            // Node and .NET text formats.
            (format!("2024-01-02T03:04:05.678Z\t{ID}\tINFO\thello"), Some("INFO")),
            (format!("2024-01-02T03:04:05.678Z\t{ID}\tinfo\thello\tworld"), Some("info")),
            // Java log4j2 pattern from the AWS documentation.
            (format!("2024-01-02 03:04:05 {ID} INFO  Handler - hello"), Some("INFO")),
            // Go slog text handler.
            (format!("timestamp=2024-01-02T03:04:05.678Z level=INFO message=hi requestId={ID}"), None),
            // Rust tracing text format: the invoke span's fields.
            (format!("2024-01-02T03:04:05.678901Z  INFO Lambda runtime invoke{{requestId=\"{ID}\" xrayTraceId=\"Root=1\"}}: f: hi"), None),
        ];
        for (line, level) in &cases {
            let l = lift_text(line, &none);
            assert_eq!(id_of(&l).as_deref(), Some(ID), "{line:?}");
            assert_eq!(l.level.as_deref(), *level, "{line:?}");
        }
    }

    #[test]
    fn text_lines_that_are_not_lifted() {
        let lines = [
            // Shapes with an id that is neither UUID-shaped nor known.
            "[INFO]\t2024-01-02T03:04:05.678Z\tnot-an-id\thello".to_owned(),
            "2024-01-02T03:04:05.678Z\tr-1\tINFO\thello".to_owned(),
            "2024-01-02 03:04:05 r-1 INFO Handler - hello".to_owned(),
            "level=INFO requestId=abc".to_owned(),
            // Outside an invoke the clients write an empty id.
            "[INFO]\t2024-01-02T03:04:05.678Z\t\tinit done".to_owned(),
            "2024-01-02 03:04:05  INFO  Handler - init".to_owned(),
            // Not one of the shapes, though a UUID is in the line.
            format!("processing {ID} now"),
            format!("a\t{ID}\tINFO\tmsg"),
            format!("[INFO] {ID} hello"),
            format!("xrequestId={ID}"),
            format!("2024-01-02T03:04:05Z\t{ID}\tIN FO\tmsg"),
            // Broken shapes.
            "requestId=\"unterminated".to_owned(),
            "[".to_owned(),
            String::new(),
        ];
        for line in &lines {
            assert_eq!(lift_text(line, &none), Lifted::default(), "{line:?}");
        }
        // A known caller-chosen id is lifted from the same shapes.
        let known = |id: &str| id == "r-1";
        let l = lift_text("2024-01-02T03:04:05.678Z\tr-1\tINFO\thello", &known);
        assert_eq!(id_of(&l).as_deref(), Some("r-1"));
    }

    #[test]
    fn keyed_skips_a_key_inside_a_word_and_takes_a_later_one() {
        let line = format!("myrequestId=zzz requestId={ID}");
        assert_eq!(id_of(&lift_text(&line, &none)).as_deref(), Some(ID));
        let line = format!("{{requestId={ID},x=1}}");
        assert_eq!(id_of(&lift_text(&line, &none)).as_deref(), Some(ID));
    }

    #[test]
    fn no_panic_on_odd_input() {
        for line in [
            "requestId=",
            "requestId=\"",
            "\t\t\t",
            "[]\t\t\t",
            "2024-\t\t\t",
            "2024-01-02 0",
            "2024-01-02 ab:cd:ef x INFO",
            "é\té\té\té",
            "2024-01-02 é:é:é",
        ] {
            let _ = lift_text(line, &|_: &str| true);
        }
    }
}
