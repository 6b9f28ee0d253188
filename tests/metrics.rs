//! `/metrics` as operators chart it (issue 18, point 5), on a real agent:
//! - every family of a scrape parses under a strict reading of the text exposition format (TYPE before
//!   samples, no family twice, valid names and escapes, cumulative histogram buckets) and passes
//!   `promtool check metrics`;
//! - `lmi_build_info`, the `process_*` families and `lmi_throttles_by_reason_total{reason}` are there and agree
//!   with the agent (its version, its pid's start, the per-reason throttle counters);
//! - the Grafana dashboard and the alert rules of `packaging/monitoring/` only name metrics the agent exports,
//!   and the rules pass `promtool check rules` and their unit tests (`promtool test rules`).
//!
//! promtool comes from tests/setup.sh (`$LMI_TEST_TOOLS/bin/promtool`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    process::{Command, Stdio},
};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn promtool() -> PathBuf {
    let p = test_tools().join("bin/promtool");
    assert!(
        p.exists(),
        "{} is missing: run tests/setup.sh (it installs promtool)",
        p.display()
    );
    p
}

fn monitoring() -> PathBuf {
    repo().join("packaging/monitoring")
}

/// `GET /metrics` at `addr`: (head, body).
async fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// One family of a scrape.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    /// (sample name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

fn valid_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses `{k="v",...}` (escapes `\\`, `\"`, `\n` only); the rest of the line after `}`.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !valid_name(name, false) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// A strict reading of the text format (0.0.4): every sample belongs to the family whose TYPE came last and
/// has a name that family may use; no family is declared twice; no series twice; histograms are cumulative
/// with `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text".into()))?;
            if !helped.insert(name.to_owned()) {
                return Err(at("HELP twice".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without kind".into()))?;
            if !valid_name(name, true) {
                return Err(at("bad family name".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            if families.contains_key(name) {
                return Err(at("family declared twice".into()));
            }
            if !helped.contains(name) {
                return Err(at("TYPE without HELP".into()));
            }
            families.insert(
                name.to_owned(),
                Family {
                    kind: kind.to_owned(),
                    ..Default::default()
                },
            );
            current = Some(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| at("sample without value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family_name = current
            .clone()
            .ok_or_else(|| at("sample before any TYPE".into()))?;
        let family = families.get_mut(&family_name).unwrap();
        let allowed = match family.kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{family_name}{s}")),
            _ => name == family_name,
        };
        if !allowed {
            return Err(at(format!("sample outside its family {family_name}")));
        }
        if family.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("series twice".into()));
        }
        family.samples.push((name.to_owned(), labels, value));
    }
    for (name, f) in &families {
        if f.kind != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for (sample, labels, v) in &f.samples {
            let mut key = labels.clone();
            let le = key.remove("le");
            let key = format!("{key:?}");
            if sample.ends_with("_bucket") {
                let le = parse_value(&le.ok_or(format!("{name}: bucket without le"))?)?;
                by_series.entry(key).or_default().push((le, *v));
            } else if sample.ends_with("_count") {
                counts.insert(key, *v);
            }
        }
        for (key, buckets) in by_series {
            let sorted = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            let last = buckets.last().unwrap();
            if !sorted || last.0 != f64::INFINITY || counts.get(&key) != Some(&last.1) {
                return Err(format!(
                    "{name}{key}: buckets not cumulative up to +Inf = _count"
                ));
            }
        }
    }
    Ok(families)
}

/// Metric names a PromQL expression uses: identifiers outside quotes that start with `lmi_` or `process_`
/// (the agent's namespaces; functions, keywords and labels never do).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.chars().peekable();
    let mut prev_ident = false;
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for d in chars.by_ref() {
                if d == c && !escaped {
                    break;
                }
                escaped = d == '\\' && !escaped;
            }
            prev_ident = false;
            continue;
        }
        if (c.is_ascii_alphabetic() || c == '_' || c == ':') && !prev_ident {
            let mut ident = String::from(c);
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    ident.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            if ident.starts_with("lmi_") || ident.starts_with("process_") {
                names.insert(ident);
            }
            prev_ident = false;
            continue;
        }
        // `$__rate_interval` and digits followed by letters (`5m`) are not names.
        prev_ident = c.is_ascii_alphanumeric() || c == '$';
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets (`expr`) and template queries.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

#[test]
fn the_query_scanner_finds_metric_names_and_nothing_else() {
    assert_eq!(
        metric_names(
            r#"sum by (reason) (rate(lmi_throttles_by_reason_total{job=~"$job", reason="lmi_x"}[$__rate_interval])) / process_max_fds"#
        ),
        BTreeSet::from([
            "lmi_throttles_by_reason_total".into(),
            "process_max_fds".into()
        ])
    );
    assert!(metric_names(r#"label_values(up{job="lmi_agent"}, instance)"#).is_empty());
}

#[test]
fn the_strict_parser_refuses_what_the_format_forbids() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n";
    assert_eq!(parse_exposition(ok).unwrap()["a_total"].samples.len(), 1);
    for bad in [
        "a_total 1\n",
        "# HELP a A.\n# TYPE a gauge\nb 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1} 1\n",
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a A.\n# TYPE a gauge\n# HELP a A.\n# TYPE a gauge\n",
        "# HELP a A.\n# TYPE a counter\na -1\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// The families an operator's dashboard and alerts rely on, all present on a fresh agent.
const EXPECTED: [(&str, &str); 14] = [
    ("lmi_build_info", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_max_fds", "gauge"),
    ("process_start_time_seconds", "gauge"),
    ("lmi_throttles_total", "counter"),
    ("lmi_throttles_by_reason_total", "counter"),
    ("lmi_environment_failures_total", "counter"),
    ("lmi_invocations_total", "counter"),
    ("lmi_invoke_duration_seconds", "histogram"),
    ("lmi_host_cpu_utilization_ratio", "gauge"),
    ("lmi_sampler_tick_cpu_seconds_total", "counter"),
    ("lmi_sampler_tick_max_seconds", "gauge"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agents_metrics_parse_and_the_dashboard_and_rules_use_only_them() {
    require_root!();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let port = free_loopback_port();
    // A host name, as operators write it: resolved once at start.
    let listen = format!("localhost:{port}");
    let addr = listen.to_socket_addrs().unwrap().next().unwrap();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!("metrics_listen = \"{listen}\"\n"),
        ..Default::default()
    })
    .await;
    let code = native_echo_code_dir();
    let env = agent
        .create_ready(native_echo_spec("charted", code.path(), 1, 30))
        .await;
    // One invoke held in the only slot, a second one throttled (concurrency), then the first one done.
    let held = tokio::spawn(invoke(
        agent.client.clone(),
        "charted",
        serde_json::json!({"native_echo": {"sleep_ms": 1500}}),
    ));
    wait_in_flight(&mut agent, &env.id, 1).await;
    let throttled = agent.invoke("charted", serde_json::json!({})).await;
    assert!(throttled.is_err(), "{throttled:?}");
    held.await.unwrap().unwrap();

    let (head, text) = scrape(addr).await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let families = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in EXPECTED {
        let f = families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in:\n{text}"));
        assert_eq!(f.kind, kind, "{name}");
        assert!(!f.samples.is_empty(), "{name} has no sample:\n{text}");
    }

    // promtool's own parser and linter on the same text.
    let mut check = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Build info: this build's version and architecture.
    let (_, labels, v) = &families["lmi_build_info"].samples[0];
    assert_eq!(*v, 1.0);
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(labels["arch"], std::env::consts::ARCH);
    // Process metrics are the agent's: it started between `before` and now (btime has whole seconds).
    let value = |name: &str| families[name].samples[0].2;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = value("process_start_time_seconds");
    assert!(
        start >= before.floor() - 1.0 && start <= now + 1.0,
        "{start} not in [{before}, {now}]"
    );
    assert!(
        value("process_open_fds") > 2.0 && value("process_open_fds") <= value("process_max_fds")
    );
    assert!(value("process_resident_memory_bytes") > 0.0);
    assert!(value("process_cpu_seconds_total") >= 0.0);

    // Throttles by reason: the concurrency throttle, and every reason equal to its own counter.
    let of = |name: &str, reason: Option<&str>| {
        families[name]
            .samples
            .iter()
            .filter(|(_, l, _)| {
                l.get("function").map(String::as_str) == Some("charted")
                    && reason.is_none_or(|r| l.get("reason").map(String::as_str) == Some(r))
            })
            .map(|s| s.2)
            .sum::<f64>()
    };
    assert_eq!(
        of("lmi_throttles_by_reason_total", Some("concurrency")),
        1.0,
        "{text}"
    );
    assert_eq!(
        of("lmi_throttles_by_reason_total", None),
        of("lmi_throttles_total", None)
    );
    for reason in [
        "concurrency",
        "cpu",
        "memory",
        "disk",
        "no_ready_environment",
    ] {
        assert_eq!(
            of("lmi_throttles_by_reason_total", Some(reason)),
            of(&format!("lmi_{reason}_throttles_total"), None),
            "{reason}"
        );
    }

    // The dashboard and the alert rules name only metrics this agent exports.
    let exported: BTreeSet<String> = families
        .values()
        .flat_map(|f| f.samples.iter().map(|s| s.0.clone()))
        .chain(families.keys().cloned())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("lmi-agent-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    let rules = std::fs::read_to_string(monitoring().join("lmi-agent-alerts.yml")).unwrap();
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_owned())
        .collect();
    assert!(rule_exprs.len() >= 5, "{rule_exprs:?}");
    for q in queries.iter().chain(&rule_exprs) {
        let names = metric_names(q);
        assert!(!names.is_empty() || q.contains("up{"), "no metric in {q:?}");
        for n in names {
            assert!(
                exported.contains(&n),
                "{q:?} uses {n}, which the agent does not export"
            );
        }
    }
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[]);
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        ["check", "rules", "lmi-agent-alerts.yml"],
        ["test", "rules", "lmi-agent-alerts.test.yml"],
    ] {
        let out = Command::new(promtool())
            .args(args)
            .current_dir(monitoring())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
