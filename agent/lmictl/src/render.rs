//! Human and JSON renderings of environments, the host and invoke outcomes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lmi_proto::v1::{
    code, Environment, EnvironmentSpec, EnvironmentState, Failure, FunctionError, Host,
    InvokeOutcome, InvokeResponse, StartupTimings,
};
use serde::Serialize;

use crate::output::{Output, EXIT_ERROR, EXIT_FUNCTION_ERROR, EXIT_OK, EXIT_THROTTLED};
use crate::throttle::Throttle;

// ---------------------------------------------------------------------------------------------------------
// Views (the JSON output; the human output is made from the same data).

#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentView {
    pub id: String,
    pub state: String,
    pub spec: SpecView,
    pub failure: Option<FailureView>,
    pub vcpus: u32,
    pub max_concurrency: u32,
    pub in_flight: u32,
    pub runtime_api: String,
    pub pid: u32,
    pub cgroup: String,
    pub created_at: Option<String>,
    pub ready_at: Option<String>,
    pub init_duration_ms: u64,
    pub log_records: u64,
    pub log_records_dropped: u64,
    pub startup: Option<StartupView>,
}

/// Start-up timings in microseconds (see `StartupTimings` in the proto).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StartupView {
    pub validate_us: u64,
    pub code_us: u64,
    pub sandbox_us: u64,
    pub runtime_api_us: u64,
    pub cgroup_us: u64,
    pub spawn_us: u64,
    pub agent_us: u64,
    pub runtime_init_us: u64,
}

pub fn startup_view(t: &StartupTimings) -> StartupView {
    StartupView {
        validate_us: t.validate_us,
        code_us: t.code_us,
        sandbox_us: t.sandbox_us,
        runtime_api_us: t.runtime_api_us,
        cgroup_us: t.cgroup_us,
        spawn_us: t.spawn_us,
        agent_us: t.agent_us,
        runtime_init_us: t.runtime_init_us,
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn startup_text(t: &StartupView) -> String {
    let init = if t.runtime_init_us == 0 {
        "-".to_string()
    } else {
        ms(t.runtime_init_us)
    };
    format!(
        "agent {} (validate {}, code {}, sandbox {}, runtime api {}, cgroup {}, spawn {}); runtime init {init}",
        ms(t.agent_us),
        ms(t.validate_us),
        ms(t.code_us),
        ms(t.sandbox_us),
        ms(t.runtime_api_us),
        ms(t.cgroup_us),
        ms(t.spawn_us),
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct SpecView {
    pub function: FunctionView,
    pub runtime: String,
    pub handler: String,
    pub code: Option<CodeView>,
    pub memory_mib: u32,
    pub memory_gib_per_vcpu: u32,
    pub max_concurrency: u32,
    pub timeout_seconds: u32,
    pub ephemeral_storage_mib: u32,
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionView {
    pub name: String,
    pub version: String,
    pub arn: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CodeView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip_file: Option<String>,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureView {
    pub error_type: String,
    pub message: String,
    pub at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub hostname: String,
    pub agent_version: String,
    pub cgroup_version: String,
    pub vcpus_total: u32,
    pub vcpus_allocatable: u32,
    pub vcpus_allocated: u32,
    pub memory_mib_total: u64,
    pub memory_mib_allocatable: u64,
    pub memory_mib_allocated: u64,
    pub environments: u32,
    pub runtimes: Vec<RuntimeView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuntimeView {
    pub id: String,
    pub available: bool,
    pub unavailable_reason: String,
    pub default_concurrency_per_vcpu: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvokeView {
    pub request_id: String,
    pub environment_id: String,
    pub executed_version: String,
    /// SUCCESS, FUNCTION_ERROR, TIMEOUT, RUNTIME_FAILURE or THROTTLED.
    pub outcome: String,
    pub content_type: String,
    /// The result parsed as JSON when it is JSON, else as a string; null when empty or not UTF-8.
    pub payload: Option<serde_json::Value>,
    /// The result in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub error: Option<ErrorView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle: Option<Throttle>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    pub error_type: String,
    pub error_message: String,
    pub stack_trace: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------------
// Conversions.

/// `ENVIRONMENT_STATE_READY` → `READY`; unknown values print as `UNKNOWN(n)`.
pub fn state_name(state: i32) -> String {
    match EnvironmentState::try_from(state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("ENVIRONMENT_STATE_")
            .to_string(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// `INVOKE_OUTCOME_SUCCESS` → `SUCCESS`; unknown values print as `UNKNOWN(n)`.
pub fn outcome_name(outcome: i32) -> String {
    match InvokeOutcome::try_from(outcome) {
        Ok(o) => o
            .as_str_name()
            .trim_start_matches("INVOKE_OUTCOME_")
            .to_string(),
        Err(_) => format!("UNKNOWN({outcome})"),
    }
}

fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.map(ToString::to_string)
}

pub fn failure_view(f: &Failure) -> FailureView {
    FailureView {
        error_type: f.error_type.clone(),
        message: f.message.clone(),
        at: timestamp(f.at.as_ref()),
    }
}

pub fn spec_view(spec: &EnvironmentSpec) -> SpecView {
    let function = spec.function.clone().unwrap_or_default();
    SpecView {
        function: FunctionView {
            name: function.name,
            version: function.version,
            arn: function.arn,
        },
        runtime: spec.runtime.clone(),
        handler: spec.handler.clone(),
        code: spec.code.as_ref().map(|c| CodeView {
            directory: match &c.source {
                Some(code::Source::Directory(d)) => Some(d.clone()),
                _ => None,
            },
            zip_file: match &c.source {
                Some(code::Source::ZipFile(z)) => Some(z.clone()),
                _ => None,
            },
            sha256: c.sha256.clone(),
        }),
        memory_mib: spec.memory_mib,
        memory_gib_per_vcpu: spec.memory_gib_per_vcpu,
        max_concurrency: spec.max_concurrency,
        timeout_seconds: spec.timeout_seconds,
        ephemeral_storage_mib: spec.ephemeral_storage_mib,
        environment: spec
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub fn environment_view(env: &Environment) -> EnvironmentView {
    EnvironmentView {
        id: env.id.clone(),
        state: state_name(env.state),
        spec: spec_view(&env.spec.clone().unwrap_or_default()),
        failure: env.failure.as_ref().map(failure_view),
        vcpus: env.vcpus,
        max_concurrency: env.max_concurrency,
        in_flight: env.in_flight,
        runtime_api: env.runtime_api.clone(),
        pid: env.pid,
        cgroup: env.cgroup.clone(),
        created_at: timestamp(env.created_at.as_ref()),
        ready_at: timestamp(env.ready_at.as_ref()),
        init_duration_ms: env.init_duration_ms,
        log_records: env.log_records,
        log_records_dropped: env.log_records_dropped,
        startup: env.startup.as_ref().map(startup_view),
    }
}

pub fn host_view(host: &Host) -> HostView {
    HostView {
        hostname: host.hostname.clone(),
        agent_version: host.agent_version.clone(),
        cgroup_version: host.cgroup_version.clone(),
        vcpus_total: host.vcpus_total,
        vcpus_allocatable: host.vcpus_allocatable,
        vcpus_allocated: host.vcpus_allocated,
        memory_mib_total: host.memory_mib_total,
        memory_mib_allocatable: host.memory_mib_allocatable,
        memory_mib_allocated: host.memory_mib_allocated,
        environments: host.environments,
        runtimes: host
            .runtimes
            .iter()
            .map(|r| RuntimeView {
                id: r.id.clone(),
                available: r.available,
                unavailable_reason: r.unavailable_reason.clone(),
                default_concurrency_per_vcpu: r.default_concurrency_per_vcpu,
            })
            .collect(),
    }
}

pub fn error_view(e: &FunctionError) -> ErrorView {
    ErrorView {
        error_type: e.error_type.clone(),
        error_message: e.error_message.clone(),
        stack_trace: e.stack_trace.clone(),
    }
}

/// JSON when the payload is JSON, else a string (UTF-8) or base64 (anything else); nothing when empty.
fn payload_json(payload: &[u8]) -> (Option<serde_json::Value>, Option<String>) {
    if payload.is_empty() {
        return (None, None);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) {
        return (Some(v), None);
    }
    match std::str::from_utf8(payload) {
        Ok(s) => (Some(serde_json::Value::String(s.to_string())), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(payload)),
        ),
    }
}

pub fn invoke_view(resp: &InvokeResponse) -> InvokeView {
    let (payload, payload_base64) = payload_json(&resp.payload);
    InvokeView {
        request_id: resp.request_id.clone(),
        environment_id: resp.environment_id.clone(),
        executed_version: resp.executed_version.clone(),
        outcome: outcome_name(resp.outcome),
        content_type: resp.content_type.clone(),
        payload,
        payload_base64,
        error: resp.error.as_ref().map(error_view),
        throttle: None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Human text.

/// Columns padded to their widest cell, two spaces apart; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < cols {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `45s`, `12m`, `5h`, `3d`.
pub fn format_age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn age(ts: Option<&prost_types::Timestamp>, now: i64) -> String {
    ts.map_or_else(|| "-".to_string(), |t| format_age(now - t.seconds))
}

fn version_or_latest(v: &str) -> &str {
    if v.is_empty() {
        "$LATEST"
    } else {
        v
    }
}

fn failure_text(f: &Failure) -> String {
    match (f.error_type.is_empty(), f.message.is_empty()) {
        (false, false) => format!("{}: {}", f.error_type, f.message),
        (false, true) => f.error_type.clone(),
        (true, _) => f.message.clone(),
    }
}

/// The `list` table; `now` is seconds since the epoch (for AGE). A FAILURE column is added when any
/// environment has one.
pub fn environments_table(envs: &[Environment], now: i64) -> String {
    if envs.is_empty() {
        return "no environments\n".to_string();
    }
    let any_failure = envs.iter().any(|e| e.failure.is_some());
    let mut headers = vec![
        "ID",
        "FUNCTION:VERSION",
        "RUNTIME",
        "STATE",
        "VCPU",
        "MEMORY",
        "INFLIGHT/MAX",
        "AGE",
    ];
    if any_failure {
        headers.push("FAILURE");
    }
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            let spec = e.spec.clone().unwrap_or_default();
            let f = spec.function.clone().unwrap_or_default();
            let mut row = vec![
                e.id.clone(),
                format!("{}:{}", f.name, version_or_latest(&f.version)),
                spec.runtime.clone(),
                state_name(e.state),
                e.vcpus.to_string(),
                format!("{}MiB", spec.memory_mib),
                format!("{}/{}", e.in_flight, e.max_concurrency),
                age(e.created_at.as_ref(), now),
            ];
            if any_failure {
                row.push(e.failure.as_ref().map(failure_text).unwrap_or_default());
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

pub fn environments_output(envs: &[Environment], json: bool) -> anyhow::Result<Output> {
    if json {
        let views: Vec<EnvironmentView> = envs.iter().map(environment_view).collect();
        Output::json(&views, EXIT_OK)
    } else {
        Ok(Output::text(environments_table(envs, now_secs())))
    }
}

/// Every field of one environment, one per line.
pub fn environment_details(env: &Environment, now: i64) -> String {
    let v = environment_view(env);
    let s = &v.spec;
    let mut lines: Vec<(&str, String)> = vec![("id", v.id.clone()), ("state", v.state.clone())];
    if let Some(f) = &env.failure {
        let at =
            f.at.as_ref()
                .map(|t| format!(" (at {t})"))
                .unwrap_or_default();
        lines.push(("failure", format!("{}{at}", failure_text(f))));
    }
    let arn = if s.function.arn.is_empty() {
        String::new()
    } else {
        format!(" ({})", s.function.arn)
    };
    lines.push((
        "function",
        format!(
            "{}:{}{arn}",
            s.function.name,
            version_or_latest(&s.function.version)
        ),
    ));
    lines.push(("runtime", s.runtime.clone()));
    lines.push(("handler", or_dash(&s.handler)));
    let code = match &s.code {
        Some(c) => {
            let src = match (&c.directory, &c.zip_file) {
                (Some(d), _) => format!("directory {d}"),
                (None, Some(z)) => format!("zip {z}"),
                (None, None) => "-".to_string(),
            };
            if c.sha256.is_empty() {
                src
            } else {
                format!("{src} (sha256 {})", c.sha256)
            }
        }
        None => "-".to_string(),
    };
    lines.push(("code", code));
    lines.push(("vcpus", v.vcpus.to_string()));
    lines.push((
        "memory",
        format!(
            "{} MiB ({} GiB per vCPU)",
            s.memory_mib, s.memory_gib_per_vcpu
        ),
    ));
    lines.push((
        "max concurrency",
        if s.max_concurrency == 0 {
            format!("{} (runtime default)", v.max_concurrency)
        } else {
            v.max_concurrency.to_string()
        },
    ));
    lines.push(("in flight", v.in_flight.to_string()));
    lines.push(("timeout", format!("{}s", s.timeout_seconds)));
    lines.push((
        "ephemeral storage",
        format!("{} MiB", s.ephemeral_storage_mib),
    ));
    let env_vars = if s.environment.is_empty() {
        "-".to_string()
    } else {
        s.environment
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    lines.push(("environment", env_vars));
    lines.push(("runtime api", or_dash(&v.runtime_api)));
    lines.push((
        "pid",
        if v.pid == 0 {
            "-".to_string()
        } else {
            v.pid.to_string()
        },
    ));
    lines.push(("cgroup", or_dash(&v.cgroup)));
    lines.push((
        "created",
        v.created_at.as_ref().map_or_else(
            || "-".to_string(),
            |t| format!("{t} ({} ago)", age(env.created_at.as_ref(), now)),
        ),
    ));
    lines.push((
        "ready",
        v.ready_at.as_ref().map_or_else(
            || "-".to_string(),
            |t| format!("{t} (init {} ms)", v.init_duration_ms),
        ),
    ));
    lines.push((
        "log records",
        format!("{} ({} dropped)", v.log_records, v.log_records_dropped),
    ));
    lines.push((
        "start-up",
        v.startup
            .as_ref()
            .map_or_else(|| "-".to_string(), startup_text),
    ));
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, val) in lines {
        let _ = writeln!(out, "{:<width$} {val}", format!("{k}:"), width = width);
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

pub fn environment_output(env: &Environment, json: bool) -> anyhow::Result<Output> {
    if json {
        Output::json(&environment_view(env), EXIT_OK)
    } else {
        Ok(Output::text(environment_details(env, now_secs())))
    }
}

pub fn host_details(host: &Host) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "hostname:      {}", host.hostname);
    let _ = writeln!(out, "agent version: {}", host.agent_version);
    let _ = writeln!(out, "cgroup:        {}", host.cgroup_version);
    let _ = writeln!(
        out,
        "vcpus:         total {}, allocatable {}, allocated {} ({} free)",
        host.vcpus_total,
        host.vcpus_allocatable,
        host.vcpus_allocated,
        host.vcpus_allocatable.saturating_sub(host.vcpus_allocated)
    );
    let _ = writeln!(
        out,
        "memory:        total {} MiB, allocatable {} MiB, allocated {} MiB ({} MiB free)",
        host.memory_mib_total,
        host.memory_mib_allocatable,
        host.memory_mib_allocated,
        host.memory_mib_allocatable
            .saturating_sub(host.memory_mib_allocated)
    );
    let _ = writeln!(out, "environments:  {}", host.environments);
    if host.runtimes.is_empty() {
        out.push_str("runtimes:      none\n");
        return out;
    }
    out.push_str("runtimes:\n");
    let rows: Vec<Vec<String>> = host
        .runtimes
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                if r.available { "yes" } else { "no" }.to_string(),
                r.default_concurrency_per_vcpu.to_string(),
                r.unavailable_reason.clone(),
            ]
        })
        .collect();
    for line in table(
        &["RUNTIME", "AVAILABLE", "CONCURRENCY/VCPU", "REASON"],
        &rows,
    )
    .lines()
    {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub fn host_output(host: &Host, json: bool) -> anyhow::Result<Output> {
    if json {
        Output::json(&host_view(host), EXIT_OK)
    } else {
        Ok(Output::text(host_details(host)))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Invoke.

/// The exit code of an invoke outcome.
pub fn invoke_exit_code(outcome: i32) -> u8 {
    match InvokeOutcome::try_from(outcome) {
        Ok(InvokeOutcome::Success) => EXIT_OK,
        Ok(
            InvokeOutcome::FunctionError | InvokeOutcome::Timeout | InvokeOutcome::RuntimeFailure,
        ) => EXIT_FUNCTION_ERROR,
        Ok(InvokeOutcome::Unspecified) | Err(_) => EXIT_ERROR,
    }
}

/// SUCCESS: the payload, raw, on stdout, plus a newline when it lacks one (so shell loops and prompts start on
/// a line of their own; `--json` gives the exact bytes). Other outcomes: the error on stderr. With `json`,
/// one JSON object on stdout either way.
pub fn invoke_output(resp: &InvokeResponse, json: bool) -> anyhow::Result<Output> {
    let code = invoke_exit_code(resp.outcome);
    if json {
        return Output::json(&invoke_view(resp), code);
    }
    let mut out = Output::default().with_code(code);
    match code {
        EXIT_OK => {
            out.stdout = resp.payload.to_vec();
            if !out.stdout.is_empty() && !out.stdout.ends_with(b"\n") {
                out.stdout.push(b'\n');
            }
        }
        EXIT_FUNCTION_ERROR => out.stderr = invoke_error_text(resp),
        _ => {
            out.stderr = format!(
                "error: the agent returned an unknown invoke outcome {} (request {})\n",
                outcome_name(resp.outcome),
                resp.request_id
            );
        }
    }
    Ok(out)
}

/// `FUNCTION_ERROR: Type: message`, the stack trace indented, then which request and environment.
pub fn invoke_error_text(resp: &InvokeResponse) -> String {
    let mut s = outcome_name(resp.outcome);
    let e = resp.error.clone().unwrap_or_default();
    if !e.error_type.is_empty() {
        let _ = write!(s, ": {}", e.error_type);
    }
    if !e.error_message.is_empty() {
        let _ = write!(s, ": {}", e.error_message);
    }
    s.push('\n');
    if !e.stack_trace.is_empty() {
        s.push_str("stack trace:\n");
        for frame in &e.stack_trace {
            let _ = writeln!(s, "  {}", frame.trim_end());
        }
    }
    let _ = writeln!(
        s,
        "request {} on environment {}",
        or_dash(&resp.request_id),
        or_dash(&resp.environment_id)
    );
    s
}

/// `throttled: CONCURRENCY (message)` on stderr (JSON on stdout with `json`), exit 2.
pub fn throttle_output(t: &Throttle, request_id: &str, json: bool) -> anyhow::Result<Output> {
    if json {
        let view = InvokeView {
            request_id: request_id.to_string(),
            environment_id: String::new(),
            executed_version: String::new(),
            outcome: "THROTTLED".to_string(),
            content_type: String::new(),
            payload: None,
            payload_base64: None,
            error: None,
            throttle: Some(t.clone()),
        };
        return Output::json(&view, EXIT_THROTTLED);
    }
    let mut s = format!("throttled: {}", t.reason);
    if !t.message.is_empty() {
        let _ = write!(s, " ({})", t.message);
    }
    s.push('\n');
    if t.retry_elsewhere {
        s.push_str("another host may take this invoke (retry_elsewhere)\n");
    }
    Ok(Output::default().with_code(EXIT_THROTTLED).with_stderr(s))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use lmi_proto::v1::{Code, FunctionRef, RuntimeInfo};

    pub fn sample_env(id: &str, state: EnvironmentState) -> Environment {
        Environment {
            id: id.to_string(),
            spec: Some(EnvironmentSpec {
                function: Some(FunctionRef {
                    name: "orders".into(),
                    version: String::new(),
                    arn: String::new(),
                }),
                runtime: "python3.11".into(),
                handler: "app.handler".into(),
                code: Some(Code {
                    source: Some(code::Source::Directory("/srv/orders".into())),
                    sha256: String::new(),
                }),
                memory_mib: 2048,
                memory_gib_per_vcpu: 2,
                max_concurrency: 0,
                timeout_seconds: 3,
                ephemeral_storage_mib: 512,
                environment: [
                    ("B".to_string(), "2".to_string()),
                    ("A".to_string(), "1".to_string()),
                ]
                .into_iter()
                .collect(),
            }),
            state: state as i32,
            failure: None,
            vcpus: 1,
            max_concurrency: 16,
            in_flight: 3,
            runtime_api: "127.0.0.1:9001".into(),
            pid: 4242,
            cgroup: "/lmi/env-1".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ready_at: None,
            init_duration_ms: 0,
            log_records: 12,
            log_records_dropped: 0,
            startup: Some(StartupTimings {
                validate_us: 40,
                code_us: 10,
                sandbox_us: 0,
                runtime_api_us: 60,
                cgroup_us: 900,
                spawn_us: 1500,
                agent_us: 2510,
                runtime_init_us: 0,
            }),
        }
    }

    #[test]
    fn table_alignment() {
        let t = table(
            &["A", "LONGER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "z".into()],
                vec!["1".into(), "2".into(), String::new()],
            ],
        );
        assert_eq!(t, "A     LONGER  C\nxxxx  y       z\n1     2\n");
    }

    #[test]
    fn list_table() {
        let mut failed = sample_env("env-2", EnvironmentState::Failed);
        failed.failure = Some(Failure {
            error_type: "Runtime.ExitError".into(),
            message: "exit status 1".into(),
            at: None,
        });
        failed
            .spec
            .as_mut()
            .unwrap()
            .function
            .as_mut()
            .unwrap()
            .version = "7".into();
        let now = 1_700_000_000 + 300;
        let t = environments_table(&[sample_env("env-1", EnvironmentState::Ready), failed], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("ID     FUNCTION:VERSION  RUNTIME     STATE   VCPU  MEMORY   INFLIGHT/MAX  AGE  FAILURE"), "{t}");
        assert!(
            lines[1].starts_with(
                "env-1  orders:$LATEST    python3.11  READY   1     2048MiB  3/16          5m"
            ),
            "{t}"
        );
        assert!(
            lines[2].ends_with(
                "FAILED  1     2048MiB  3/16          5m   Runtime.ExitError: exit status 1"
            ),
            "{t}"
        );

        let t = environments_table(&[sample_env("env-1", EnvironmentState::Ready)], now);
        assert!(!t.contains("FAILURE"), "{t}");
        assert_eq!(environments_table(&[], now), "no environments\n");
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(-3), "0s");
        assert_eq!(format_age(59), "59s");
        assert_eq!(format_age(600), "10m");
        assert_eq!(format_age(3 * 3600), "3h");
        assert_eq!(format_age(5 * 86400), "5d");
    }

    #[test]
    fn details_and_json_of_an_environment() {
        let mut env = sample_env("env-1", EnvironmentState::Failed);
        env.failure = Some(Failure {
            error_type: "Runtime.OutOfMemory".into(),
            message: "oom".into(),
            at: Some(prost_types::Timestamp {
                seconds: 1_700_000_060,
                nanos: 0,
            }),
        });
        let d = environment_details(&env, 1_700_000_120);
        for want in [
            "id:                env-1\n",
            "state:             FAILED\n",
            "failure:           Runtime.OutOfMemory: oom (at 2023-11-14T22:14:20Z)\n",
            "function:          orders:$LATEST\n",
            "code:              directory /srv/orders\n",
            "max concurrency:   16 (runtime default)\n",
            "environment:       A=1 B=2\n",
            "created:           2023-11-14T22:13:20Z (2m ago)\n",
            "ready:             -\n",
            "start-up:          agent 2.51 ms (validate 0.04 ms, code 0.01 ms, sandbox 0.00 ms, runtime api 0.06 ms, cgroup 0.90 ms, spawn 1.50 ms); runtime init -\n",
        ] {
            assert!(d.contains(want), "missing {want:?} in\n{d}");
        }
        let out = environment_output(&env, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"], "FAILED");
        assert_eq!(v["failure"]["error_type"], "Runtime.OutOfMemory");
        assert_eq!(v["spec"]["code"]["directory"], "/srv/orders");
        assert!(v["spec"]["code"].get("zip_file").is_none());
        assert_eq!(v["spec"]["environment"]["A"], "1");
        assert_eq!(v["created_at"], "2023-11-14T22:13:20Z");
        assert_eq!(v["startup"]["agent_us"], 2510);
    }

    #[test]
    fn host_rendering() {
        let host = Host {
            hostname: "h1".into(),
            agent_version: "0.1.0".into(),
            cgroup_version: "v2".into(),
            vcpus_total: 16,
            vcpus_allocatable: 14,
            vcpus_allocated: 4,
            memory_mib_total: 65536,
            memory_mib_allocatable: 61440,
            memory_mib_allocated: 8192,
            environments: 3,
            runtimes: vec![
                RuntimeInfo {
                    id: "python3.11".into(),
                    available: true,
                    unavailable_reason: String::new(),
                    default_concurrency_per_vcpu: 16,
                },
                RuntimeInfo {
                    id: "nodejs22.x".into(),
                    available: false,
                    unavailable_reason: "node not found".into(),
                    default_concurrency_per_vcpu: 64,
                },
            ],
        };
        let d = host_details(&host);
        assert!(
            d.contains("vcpus:         total 16, allocatable 14, allocated 4 (10 free)"),
            "{d}"
        );
        assert!(d.contains("(53248 MiB free)"), "{d}");
        assert!(d.contains("cgroup:        v2"), "{d}");
        assert!(
            d.contains("  nodejs22.x  no         64                node not found"),
            "{d}"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&host_output(&host, true).unwrap().stdout).unwrap();
        assert_eq!(v["runtimes"][1]["available"], false);
        assert_eq!(v["memory_mib_allocated"], 8192);
    }

    fn response(outcome: InvokeOutcome, payload: &[u8]) -> InvokeResponse {
        InvokeResponse {
            request_id: "req-1".into(),
            environment_id: "env-1".into(),
            executed_version: "$LATEST".into(),
            outcome: outcome as i32,
            payload: payload.to_vec().into(),
            content_type: "application/json".into(),
            error: (outcome != InvokeOutcome::Success).then(|| FunctionError {
                error_type: "ValueError".into(),
                error_message: "bad input".into(),
                stack_trace: vec!["File \"app.py\", line 3, in handler".into()],
            }),
        }
    }

    #[test]
    fn exit_code_mapping() {
        assert_eq!(invoke_exit_code(InvokeOutcome::Success as i32), 0);
        assert_eq!(invoke_exit_code(InvokeOutcome::FunctionError as i32), 1);
        assert_eq!(invoke_exit_code(InvokeOutcome::Timeout as i32), 1);
        assert_eq!(invoke_exit_code(InvokeOutcome::RuntimeFailure as i32), 1);
        assert_eq!(invoke_exit_code(InvokeOutcome::Unspecified as i32), 3);
        assert_eq!(invoke_exit_code(99), 3);
    }

    #[test]
    fn success_rendering() {
        let r = response(InvokeOutcome::Success, b"{\"ok\":true}");
        let out = invoke_output(&r, false).unwrap();
        assert_eq!(
            (out.code, out.stdout.as_slice(), out.stderr.as_str()),
            (0, &b"{\"ok\":true}\n"[..], "")
        );
        let r2 = response(InvokeOutcome::Success, b"line\n");
        assert_eq!(invoke_output(&r2, false).unwrap().stdout, b"line\n");
        let out = invoke_output(&r, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["payload"]["ok"], true);
        assert_eq!(v["outcome"], "SUCCESS");
        assert_eq!(v["error"], serde_json::Value::Null);
        assert!(v.get("throttle").is_none());

        let v: serde_json::Value = serde_json::from_slice(
            &invoke_output(&response(InvokeOutcome::Success, b"plain text"), true)
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(v["payload"], "plain text");
        let v: serde_json::Value = serde_json::from_slice(
            &invoke_output(&response(InvokeOutcome::Success, &[0xff, 0x00]), true)
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert_eq!(v["payload"], serde_json::Value::Null);
        assert_eq!(v["payload_base64"], "/wA=");
    }

    #[test]
    fn failure_rendering() {
        for (outcome, name) in [
            (InvokeOutcome::FunctionError, "FUNCTION_ERROR"),
            (InvokeOutcome::Timeout, "TIMEOUT"),
            (InvokeOutcome::RuntimeFailure, "RUNTIME_FAILURE"),
        ] {
            let out = invoke_output(&response(outcome, b""), false).unwrap();
            assert_eq!(out.code, 1);
            assert!(out.stdout.is_empty());
            assert_eq!(
                out.stderr,
                format!(
                    "{name}: ValueError: bad input\nstack trace:\n  File \"app.py\", line 3, in handler\n\
                     request req-1 on environment env-1\n"
                )
            );
            let out = invoke_output(&response(outcome, b""), true).unwrap();
            assert_eq!(out.code, 1);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["outcome"], name);
            assert_eq!(v["error"]["error_type"], "ValueError");
            assert_eq!(v["payload"], serde_json::Value::Null);
        }
        let out = invoke_output(&response(InvokeOutcome::Unspecified, b""), false).unwrap();
        assert_eq!(out.code, 3);
        assert!(
            out.stderr.contains("unknown invoke outcome UNSPECIFIED"),
            "{}",
            out.stderr
        );
    }

    #[test]
    fn throttle_rendering() {
        let t = Throttle {
            reason: "CONCURRENCY".into(),
            retry_elsewhere: false,
            message: "all 2 environments busy".into(),
        };
        let out = throttle_output(&t, "", false).unwrap();
        assert_eq!(out.code, 2);
        assert_eq!(
            out.stderr,
            "throttled: CONCURRENCY (all 2 environments busy)\n"
        );
        let out = throttle_output(&t, "r-9", true).unwrap();
        assert_eq!(out.code, 2);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["outcome"], "THROTTLED");
        assert_eq!(v["request_id"], "r-9");
        assert_eq!(v["throttle"]["reason"], "CONCURRENCY");
    }
}
