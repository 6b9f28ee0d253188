//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4), named after the LMI CloudWatch
//! metrics in Prometheus style: snake_case, base units, ratios 0..1, counters ending in `_total`.
//!
//! | CloudWatch (AWS/Lambda) | here |
//! |---|---|
//! | CPUUtilization, MemoryUtilization | `lmi_host_cpu_utilization_ratio`, `lmi_host_memory_utilization_ratio` |
//! | vCPUAvailable, vCPUAllocated | `lmi_host_vcpus_available`, `lmi_host_vcpus_allocated` |
//! | MemoryAvailable, MemoryAllocated | `lmi_host_memory_available_bytes`, `lmi_host_memory_allocated_bytes` |
//! | ExecutionEnvironmentConcurrency(Limit) | `lmi_execution_environment_concurrency`, `…_concurrency_limit` |
//! | ExecutionEnvironmentCPU/MemoryUtilization | `lmi_execution_environment_cpu_utilization_ratio`, `…_memory_…` |
//! | Throttles, ConcurrencyThrottles, CPUThrottles, MemoryThrottles, DiskThrottles | `lmi_throttles_total`, `lmi_concurrency_throttles_total`, `lmi_cpu_throttles_total`, `lmi_memory_throttles_total`, `lmi_disk_throttles_total` |
//! | (none: a reason of this agent's own) | `lmi_no_ready_environment_throttles_total` |
//!
//! plus `lmi_throttles_by_reason_total{reason}` (the five reason counters above as one family, for
//! `sum by (reason)`), `lmi_redirects_total`, `lmi_invocations_total{outcome}`,
//! `lmi_environment_failures_total{reason}`, `lmi_invoke_duration_seconds`, `lmi_sampler_ticks_total`,
//! `lmi_sampler_tick_seconds_total`, `…_tick_cpu_seconds_total` and `…_tick_max_seconds` (the sampler's
//! own cost), `lmi_build_info{version,commit,arch}` and the agent's own `process_*` metrics under the names
//! Prometheus client libraries use ([`process`]).

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header::CONTENT_TYPE, Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::listener::{closing, read_body, ListenerLimits};
use lmi_agent_core::agent::Agent;
use lmi_agent_core::stats::{FAILURE_REASONS, LATENCY_BUCKETS, OUTCOMES};
use lmi_agent_core::wire::report::ReportBuilder;

pub mod process;

/// Reads one reason's count.
type ThrottleField = fn(&lmi_agent_core::stats::ThrottleCounts) -> u64;

/// The reasons of `lmi_throttles_by_reason_total`, each with its counter.
const THROTTLE_REASONS: [(&str, ThrottleField); 5] = [
    ("concurrency", |t| t.concurrency),
    ("cpu", |t| t.cpu),
    ("memory", |t| t.memory),
    ("disk", |t| t.disk),
    ("no_ready_environment", |t| t.no_ready_environment),
];

/// The commit the binary was built from, when the build set `LMI_BUILD_COMMIT` (packaging/build.sh may).
const BUILD_COMMIT: Option<&str> = option_env!("LMI_BUILD_COMMIT");

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// The exposition text of the agent's current state.
pub fn render(agent: &Agent) -> String {
    let snap = agent.utilization().borrow().clone();
    // A fresh builder reports counters since zero: cumulative, as Prometheus counters must be.
    let report = ReportBuilder::new(
        lmi_agent_core::host::hostname(),
        agent.instance_id().to_owned(),
    )
    .build(0, &snap, agent.stats());
    let mut o = Out(String::with_capacity(4096));
    build_and_process(&mut o);
    let host = report.host.unwrap_or_default();
    let mib = 1024.0 * 1024.0;
    let host_gauges: [(&str, &str, f64); 6] = [
        (
            "lmi_host_cpu_utilization_ratio",
            "Host CPU utilization (smoothed), 0..1.",
            host.cpu.map(|u| u.smoothed).unwrap_or(0.0),
        ),
        (
            "lmi_host_memory_utilization_ratio",
            "Host memory in use, of total, 0..1.",
            host.memory.map(|u| u.last).unwrap_or(0.0),
        ),
        (
            "lmi_host_vcpus_available",
            "vCPUs allocatable and not held by environments.",
            f64::from(host.vcpus_available),
        ),
        (
            "lmi_host_vcpus_allocated",
            "vCPUs held by environments.",
            f64::from(host.vcpus_allocated),
        ),
        (
            "lmi_host_memory_available_bytes",
            "Memory allocatable and not held by environments.",
            host.memory_mib_available as f64 * mib,
        ),
        (
            "lmi_host_memory_allocated_bytes",
            "Memory held by environments.",
            host.memory_mib_allocated as f64 * mib,
        ),
    ];
    for (name, help, v) in host_gauges {
        o.family(name, "gauge", help);
        o.sample(name, &[], v);
    }

    type Field = fn(&lmi_proto::v1::FunctionUtilization) -> f64;
    let fn_gauges: [(&str, &str, Field); 5] = [
        (
            "lmi_execution_environments_ready",
            "READY environments of the function version.",
            |f| f64::from(f.ready_environments),
        ),
        (
            "lmi_execution_environment_concurrency",
            "In-flight invokes over READY environments.",
            |f| f64::from(f.concurrency),
        ),
        (
            "lmi_execution_environment_concurrency_limit",
            "Sum of the max concurrency of READY environments.",
            |f| f64::from(f.concurrency_limit),
        ),
        (
            "lmi_execution_environment_cpu_utilization_ratio",
            "Mean CPU utilization of READY environments (of their vCPUs), 0..1.",
            |f| f.cpu_utilization,
        ),
        (
            "lmi_execution_environment_memory_utilization_ratio",
            "Mean memory working set of READY environments (of their limit), 0..1.",
            |f| f.memory_utilization,
        ),
    ];
    for (name, help, field) in fn_gauges {
        o.family(name, "gauge", help);
        for f in &report.functions {
            o.sample(
                name,
                &[
                    ("function", &f.function_name),
                    ("version", &f.function_version),
                ],
                field(f),
            );
        }
    }

    let stats = agent.stats().all();
    type Count = fn(&lmi_agent_core::stats::FunctionCounts) -> u64;
    let counters: [(&str, &str, Count); 7] = [
        (
            "lmi_throttles_total",
            "Invokes throttled, any reason (each also counted under exactly one reason).",
            |c| c.throttles.total,
        ),
        (
            "lmi_concurrency_throttles_total",
            "Invokes throttled because every environment was at its max concurrency.",
            |c| c.throttles.concurrency,
        ),
        (
            "lmi_cpu_throttles_total",
            "Invokes throttled because environments with free slots were CPU-saturated.",
            |c| c.throttles.cpu,
        ),
        (
            "lmi_memory_throttles_total",
            "Invokes throttled because environments with free slots were memory-saturated.",
            |c| c.throttles.memory,
        ),
        (
            "lmi_disk_throttles_total",
            "Invokes throttled because environments with free slots had a full /tmp.",
            |c| c.throttles.disk,
        ),
        (
            "lmi_no_ready_environment_throttles_total",
            "Invokes throttled because no environment of the version was READY (initializing or failed).",
            |c| c.throttles.no_ready_environment,
        ),
        (
            "lmi_redirects_total",
            "Invokes sent to another environment because the first choice was saturated.",
            |c| c.redirects,
        ),
    ];
    let counts: Vec<_> = stats.iter().map(|(k, s)| (k, s.counts())).collect();
    for (name, help, field) in counters {
        o.family(name, "counter", help);
        for ((f, v), c) in &counts {
            o.sample(name, &[("function", f), ("version", v)], field(c) as f64);
        }
    }
    o.family(
        "lmi_throttles_by_reason_total",
        "counter",
        "Invokes throttled, by reason (concurrency, cpu, memory, disk, no_ready_environment): the lmi_*_throttles_total counters as one family.",
    );
    for ((f, v), c) in &counts {
        for (reason, field) in THROTTLE_REASONS {
            o.sample(
                "lmi_throttles_by_reason_total",
                &[("function", f), ("version", v), ("reason", reason)],
                field(&c.throttles) as f64,
            );
        }
    }
    o.family(
        "lmi_invocations_total",
        "counter",
        "Finished invokes by outcome.",
    );
    for ((f, v), c) in &counts {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            o.sample(
                "lmi_invocations_total",
                &[("function", f), ("version", v), ("outcome", outcome)],
                c.outcomes[i] as f64,
            );
        }
    }
    o.family(
        "lmi_environment_failures_total",
        "counter",
        "Execution environments that failed, by reason (init_timeout, init_error, runtime_exit, out_of_memory).",
    );
    for ((f, v), c) in &counts {
        for (i, reason) in FAILURE_REASONS.iter().enumerate() {
            o.sample(
                "lmi_environment_failures_total",
                &[("function", f), ("version", v), ("reason", reason)],
                c.failures[i] as f64,
            );
        }
    }
    o.family(
        "lmi_invoke_duration_seconds",
        "histogram",
        "Invoke duration as the agent saw it (admission to outcome).",
    );
    for ((f, v), s) in &stats {
        let h = s.latency.snapshot();
        let mut cumulative = 0u64;
        for (le, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += n;
            o.sample(
                "lmi_invoke_duration_seconds_bucket",
                &[("function", f), ("version", v), ("le", &le.to_string())],
                cumulative as f64,
            );
        }
        o.sample(
            "lmi_invoke_duration_seconds_bucket",
            &[("function", f), ("version", v), ("le", "+Inf")],
            h.count as f64,
        );
        o.sample(
            "lmi_invoke_duration_seconds_sum",
            &[("function", f), ("version", v)],
            h.sum_seconds,
        );
        o.sample(
            "lmi_invoke_duration_seconds_count",
            &[("function", f), ("version", v)],
            h.count as f64,
        );
    }
    sampler_ticks(&mut o, agent.tick_times().snapshot());
    o.0
}

/// `lmi_sampler_ticks_total`, `lmi_sampler_tick_seconds_total` (wall time: the mean tick is one over the
/// other), `lmi_sampler_tick_cpu_seconds_total` and `lmi_sampler_tick_max_seconds`.
fn sampler_ticks(o: &mut Out, t: lmi_agent_core::sampler::TickTimesSnapshot) {
    o.family(
        "lmi_sampler_ticks_total",
        "counter",
        "Sampler ticks done (each reads every environment's cgroup and the host).",
    );
    o.sample("lmi_sampler_ticks_total", &[], t.count as f64);
    o.family(
        "lmi_sampler_tick_seconds_total",
        "counter",
        "Time the sampler's ticks took, in seconds.",
    );
    o.sample("lmi_sampler_tick_seconds_total", &[], t.sum_ns as f64 / 1e9);
    o.family(
        "lmi_sampler_tick_cpu_seconds_total",
        "counter",
        "CPU time the sampler's ticks used (the thread that ran them, user and system), in seconds.",
    );
    o.sample(
        "lmi_sampler_tick_cpu_seconds_total",
        &[],
        t.cpu_sum_ns as f64 / 1e9,
    );
    o.family(
        "lmi_sampler_tick_max_seconds",
        "gauge",
        "The longest sampler tick since the agent started, in seconds.",
    );
    o.sample("lmi_sampler_tick_max_seconds", &[], t.max_ns as f64 / 1e9);
}

/// `lmi_build_info` and the `process_*` families of the agent itself.
fn build_and_process(o: &mut Out) {
    o.family(
        "lmi_build_info",
        "gauge",
        "Always 1; the labels say which agent build is running.",
    );
    let mut labels = vec![("version", env!("CARGO_PKG_VERSION"))];
    if let Some(commit) = BUILD_COMMIT {
        labels.push(("commit", commit));
    }
    labels.push(("arch", std::env::consts::ARCH));
    o.sample("lmi_build_info", &labels, 1.0);

    let p = process::read(std::path::Path::new("/proc/self"));
    let families: [(&str, &str, &str, Option<f64>); 6] = [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time the agent process spent, in seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the agent process, in bytes.",
            p.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory of the agent process, in bytes.",
            p.virtual_bytes,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the agent process since the Unix epoch, in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "File descriptors the agent process holds open.",
            p.open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "The agent process's limit on open file descriptors (soft RLIMIT_NOFILE).",
            p.max_fds,
        ),
    ];
    for (name, kind, help, value) in families {
        if let Some(v) = value {
            o.family(name, kind, help);
            o.sample(name, &[], v);
        }
    }
}

/// Largest request body `/metrics` reads (a scrape has none).
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Serves `GET /metrics` on `listener` until the task is dropped, with the limits every listener of the agent
/// has (`[listeners]`: header and body timeouts, connection cap).
pub async fn serve(agent: Arc<Agent>, listener: TcpListener) {
    let limits = ListenerLimits::from(&agent.config().listeners);
    // Never stopped: the task is aborted at shutdown.
    let (_keep, stop) = tokio::sync::watch::channel(false);
    crate::listener::serve_http1("metrics", listener, limits, stop, move |req| {
        let agent = agent.clone();
        async move { answer(&agent, req, limits).await }
    })
    .await;
}

async fn answer(
    agent: &Agent,
    req: Request<hyper::body::Incoming>,
    limits: ListenerLimits,
) -> Response<Full<Bytes>> {
    let scrape = req.method() == Method::GET && req.uri().path() == "/metrics";
    // The body is read (and dropped) so that a request never holds its connection past the body deadline.
    if let Err(e) = read_body(req.into_body(), MAX_REQUEST_BODY, limits.body_timeout).await {
        let mut r = Response::new(Full::new(Bytes::from(format!("{e}\n"))));
        *r.status_mut() = e.status();
        return closing(r);
    }
    if scrape {
        let mut r = Response::new(Full::new(Bytes::from(render(agent))));
        r.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
