//! The reports of `lmictl bench`: plain text for people, JSON (`--json`) for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::load::{LoadPlan, LoadResult, Mode, Outcomes};
use super::proc_stats::{CpuTime, Memory};
use super::startup::StartupRun;
use crate::cli::BenchInvokeArgs;
use crate::output::Output;
use crate::render::StartupView;

/// CPU and memory of the processes involved, over the measured window.
#[derive(Debug, Clone)]
pub struct ProcessCost {
    pub agent_pid: Option<u32>,
    pub agent_cpu: Option<CpuTime>,
    pub agent_memory: Option<Memory>,
    pub runtime_pids: Vec<u32>,
    pub runtime_cpu: Option<Duration>,
    pub lmictl_cpu: Option<Duration>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// The agent's cost over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCost {
    pub pid: u32,
    pub cpu_user_s: Option<f64>,
    pub cpu_system_s: Option<f64>,
    pub cpu_us_per_invoke: Option<f64>,
    pub rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// Everything `bench invoke` measured.
#[derive(Debug, Clone, Serialize)]
pub struct InvokeReport {
    pub function: String,
    /// "concurrency" or "rate".
    pub mode: String,
    pub concurrency: Option<u32>,
    pub rate_per_s: Option<f64>,
    /// "unary" (an `Invoke` call each), "stream" (`InvokeStream`) or "http" (the HTTP Invoke API).
    pub transport: String,
    pub connections: u32,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub invokes: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub latency: Latency,
    pub outcomes: Outcomes,
    /// Open loop: how late invokes left after their scheduled time (p99, µs).
    pub send_lag_p99_us: Option<f64>,
    pub first_error: Option<String>,
    pub agent: Option<AgentCost>,
    pub runtime_pids: Vec<u32>,
    pub runtime_cpu_us_per_invoke: Option<f64>,
    pub lmictl_cpu_us_per_invoke: Option<f64>,
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl InvokeReport {
    pub fn new(
        args: &BenchInvokeArgs,
        plan: &LoadPlan,
        result: &LoadResult,
        cost: ProcessCost,
    ) -> Self {
        let invokes = result.outcomes.answered();
        let per_invoke =
            |d: Duration| (invokes > 0).then(|| d.as_secs_f64() * 1e6 / invokes as f64);
        let h = &result.latency_ns;
        let latency = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50_us: micros(h.value_at_quantile(0.50)),
                p90_us: micros(h.value_at_quantile(0.90)),
                p99_us: micros(h.value_at_quantile(0.99)),
                p999_us: micros(h.value_at_quantile(0.999)),
                max_us: micros(h.max()),
                mean_us: h.mean() / 1000.0,
            }
        };
        let (mode, concurrency, rate_per_s) = match plan.mode {
            Mode::Closed { concurrency } => ("concurrency", Some(concurrency), None),
            Mode::Open { rate, .. } => ("rate", None, Some(rate)),
        };
        Self {
            function: args.function.clone(),
            mode: mode.to_owned(),
            concurrency,
            rate_per_s,
            transport: plan.transport.name().to_owned(),
            connections: args.connections,
            warmup_s: plan.warmup.as_secs_f64(),
            duration_s: plan.duration.as_secs_f64(),
            payload_bytes: plan.request.payload.len(),
            invokes,
            elapsed_s: result.elapsed.as_secs_f64(),
            throughput_per_s: result.throughput(),
            latency,
            outcomes: result.outcomes.clone(),
            send_lag_p99_us: (!result.send_lag_ns.is_empty())
                .then(|| micros(result.send_lag_ns.value_at_quantile(0.99))),
            first_error: result.first_error.clone(),
            agent: cost.agent_pid.map(|pid| AgentCost {
                pid,
                cpu_user_s: cost.agent_cpu.map(|c| c.user.as_secs_f64()),
                cpu_system_s: cost.agent_cpu.map(|c| c.system.as_secs_f64()),
                cpu_us_per_invoke: cost.agent_cpu.and_then(|c| per_invoke(c.total())),
                rss_mib: cost.agent_memory.map(|m| mib(m.rss_kib)),
                peak_rss_mib: cost.agent_memory.map(|m| mib(m.peak_rss_kib)),
            }),
            runtime_pids: cost.runtime_pids,
            runtime_cpu_us_per_invoke: cost.runtime_cpu.and_then(per_invoke),
            lmictl_cpu_us_per_invoke: cost.lmictl_cpu.and_then(per_invoke),
        }
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}{unit}"))
}

/// The human rendering of an invoke report.
pub fn invoke_text(r: &InvokeReport) -> String {
    let mut out = String::new();
    let load = match (r.concurrency, r.rate_per_s) {
        (Some(c), _) => format!("concurrency {c}"),
        (_, Some(rate)) => format!("rate {rate}/s"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "bench invoke {}: {load}, {} connection(s), {}, {:.1} s measured after {:.1} s warm-up, payload {} B",
        r.function, r.connections, r.transport, r.duration_s, r.warmup_s, r.payload_bytes
    );
    let _ = writeln!(
        out,
        "invokes     {} in {:.2} s = {:.0} invokes/s",
        r.invokes, r.elapsed_s, r.throughput_per_s
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "latency     p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs  mean {:.1} µs",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
    let o = &r.outcomes;
    let _ = writeln!(
        out,
        "outcomes    success {}  function error {}  timeout {}  runtime failure {}  throttle {}  other {}{}",
        o.success,
        o.function_error,
        o.timeout,
        o.runtime_failure,
        o.throttle,
        o.other,
        if r.rate_per_s.is_some() {
            format!("  skipped {}", o.skipped)
        } else {
            String::new()
        }
    );
    if let Some(lag) = r.send_lag_p99_us {
        let _ = writeln!(out, "send lag    p99 {lag:.1} µs after the scheduled time");
    }
    match &r.agent {
        Some(a) => {
            let _ = writeln!(
                out,
                "agent       pid {}: CPU {} per invoke (user {}, system {}); RSS {}, peak {}",
                a.pid,
                opt(a.cpu_us_per_invoke, " µs"),
                opt(a.cpu_user_s.map(|s| s * 1e3), " ms"),
                opt(a.cpu_system_s.map(|s| s * 1e3), " ms"),
                opt(a.rss_mib, " MiB"),
                opt(a.peak_rss_mib, " MiB"),
            );
        }
        None => {
            let _ = writeln!(
                out,
                "agent       CPU and RSS not measured (give --agent-pid)"
            );
        }
    }
    let pids: Vec<String> = r.runtime_pids.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "runtime     pid {}: CPU {} per invoke (main process only)",
        pids.join(","),
        opt(r.runtime_cpu_us_per_invoke, " µs")
    );
    let _ = writeln!(
        out,
        "lmictl      CPU {} per invoke",
        opt(r.lmictl_cpu_us_per_invoke, " µs")
    );
    if let Some(e) = &r.first_error {
        let _ = writeln!(out, "first error {e}");
    }
    out
}

pub fn invoke_output(r: &InvokeReport, json: bool) -> anyhow::Result<Output> {
    if json {
        Output::json(r, crate::output::EXIT_OK)
    } else {
        Ok(Output::text(invoke_text(r)))
    }
}

/// The median of `values` (the mean of the middle two for an even count); None when empty.
pub fn median(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    })
}

/// `bench startup`'s report: every run and the median of each column.
#[derive(Debug, Clone, Serialize)]
struct StartupReport<'a> {
    runs: &'a [StartupRun],
    median: StartupRun,
}

const STARTUP_COLUMNS: [&str; 10] = [
    "run",
    "agent",
    "validate",
    "code",
    "sandbox",
    "runtime_api",
    "cgroup",
    "spawn",
    "runtime_init",
    "create_rpc",
];

fn startup_median(runs: &[StartupRun]) -> StartupRun {
    let col = |f: fn(&StartupRun) -> u64| {
        median(&mut runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0)
    };
    StartupRun {
        runtime: runs.first().map(|r| r.runtime.clone()).unwrap_or_default(),
        timings: StartupView {
            agent_us: col(|r| r.timings.agent_us),
            validate_us: col(|r| r.timings.validate_us),
            code_us: col(|r| r.timings.code_us),
            sandbox_us: col(|r| r.timings.sandbox_us),
            runtime_api_us: col(|r| r.timings.runtime_api_us),
            cgroup_us: col(|r| r.timings.cgroup_us),
            spawn_us: col(|r| r.timings.spawn_us),
            runtime_init_us: col(|r| r.timings.runtime_init_us),
        },
        create_rpc_us: col(|r| r.create_rpc_us),
    }
}

pub fn startup_output(runs: &[StartupRun], json: bool) -> anyhow::Result<Output> {
    let median = startup_median(runs);
    if json {
        return Output::json(&StartupReport { runs, median }, crate::output::EXIT_OK);
    }
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let row = |label: String, r: &StartupRun| {
        vec![
            label,
            ms(r.timings.agent_us),
            ms(r.timings.validate_us),
            ms(r.timings.code_us),
            ms(r.timings.sandbox_us),
            ms(r.timings.runtime_api_us),
            ms(r.timings.cgroup_us),
            ms(r.timings.spawn_us),
            ms(r.timings.runtime_init_us),
            ms(r.create_rpc_us),
        ]
    };
    let mut rows: Vec<Vec<String>> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| row((i + 1).to_string(), r))
        .collect();
    rows.push(row("median".to_owned(), &median));
    let mut out = format!(
        "bench startup {}: {} run(s), milliseconds (agent = validate + code + sandbox + runtime_api + cgroup + spawn; \
         runtime_init = spawn to first /next; create_rpc = CreateEnvironment round trip seen by lmictl)\n",
        median.runtime,
        runs.len()
    );
    out.push_str(&crate::render::table(&STARTUP_COLUMNS, &rows));
    Ok(Output::text(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5]), Some(5));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
    }

    #[test]
    fn startup_table_has_a_median_row() {
        let run = |agent_us| StartupRun {
            runtime: "provided.al2023".into(),
            timings: StartupView {
                agent_us,
                validate_us: 10,
                code_us: 5,
                sandbox_us: 300,
                runtime_api_us: 50,
                cgroup_us: 800,
                spawn_us: 900,
                runtime_init_us: 4000,
            },
            create_rpc_us: 2500,
        };
        let out = startup_output(&[run(2000), run(1000), run(3000)], false).unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("median"), "{text}");
        assert!(last.contains("2.00"), "{text}");
        let out = startup_output(&[run(2000)], true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["median"]["agent_us"], 2000);
        assert_eq!(v["runs"][0]["runtime"], "provided.al2023");
    }
}
