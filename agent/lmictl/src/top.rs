//! `lmictl top`: a live view of the host and its environments, one frame per utilization report.

use std::io::Write;

use lmi_proto::v1::{UtilizationReport, WatchUtilizationRequest};
use serde::Serialize;

use crate::connect::Client;
use crate::render::{state_name, table};

#[derive(Debug, Serialize)]
struct FrameView {
    sequence: u64,
    host: HostLine,
    environments: Vec<EnvLine>,
    functions: Vec<FnLine>,
}

#[derive(Debug, Serialize)]
struct HostLine {
    cpu: f64,
    memory: f64,
    disk: f64,
    vcpus_allocated: u32,
    vcpus_available: u32,
    memory_mib_allocated: u64,
    memory_mib_available: u64,
    draining: bool,
}

#[derive(Debug, Serialize)]
struct EnvLine {
    id: String,
    function: String,
    version: String,
    state: String,
    cpu: f64,
    memory: f64,
    disk: f64,
    in_flight: u32,
    max_concurrency: u32,
    saturated: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct FnLine {
    function: String,
    version: String,
    concurrency: u32,
    concurrency_limit: u32,
    throttles: u64,
    redirects: u64,
    invocations: u64,
}

fn view(r: &UtilizationReport) -> FrameView {
    let h = r.host.unwrap_or_default();
    let smoothed = |u: Option<lmi_proto::v1::Utilization>| u.map(|u| u.smoothed).unwrap_or(0.0);
    let last = |u: Option<lmi_proto::v1::Utilization>| u.map(|u| u.last).unwrap_or(0.0);
    FrameView {
        sequence: r.sequence,
        host: HostLine {
            cpu: smoothed(h.cpu),
            memory: last(h.memory),
            disk: last(h.disk),
            vcpus_allocated: h.vcpus_allocated,
            vcpus_available: h.vcpus_available,
            memory_mib_allocated: h.memory_mib_allocated,
            memory_mib_available: h.memory_mib_available,
            draining: h.draining,
        },
        environments: r
            .environments
            .iter()
            .map(|e| {
                let mut saturated = Vec::new();
                if e.cpu_saturated {
                    saturated.push("CPU");
                }
                if e.memory_saturated {
                    saturated.push("MEMORY");
                }
                if e.disk_saturated {
                    saturated.push("DISK");
                }
                EnvLine {
                    id: e.environment_id.clone(),
                    function: e.function_name.clone(),
                    version: e.function_version.clone(),
                    state: state_name(e.state),
                    cpu: smoothed(e.cpu),
                    memory: last(e.memory),
                    disk: last(e.disk),
                    in_flight: e.in_flight,
                    max_concurrency: e.max_concurrency,
                    saturated,
                }
            })
            .collect(),
        functions: r
            .functions
            .iter()
            .map(|f| FnLine {
                function: f.function_name.clone(),
                version: f.function_version.clone(),
                concurrency: f.concurrency,
                concurrency_limit: f.concurrency_limit,
                throttles: f.throttles.map(|t| t.total).unwrap_or(0),
                redirects: f.redirects,
                invocations: f.invocations,
            })
            .collect(),
    }
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// One frame of the human view.
fn frame_text(v: &FrameView) -> String {
    let h = &v.host;
    let mut out = format!(
        "host  cpu {}  mem {}  disk {}  vcpus {} allocated / {} free  memory {} MiB allocated / {} MiB free{}\n\n",
        pct(h.cpu),
        pct(h.memory),
        pct(h.disk),
        h.vcpus_allocated,
        h.vcpus_available,
        h.memory_mib_allocated,
        h.memory_mib_available,
        if h.draining { "  DRAINING" } else { "" }
    );
    let rows: Vec<Vec<String>> = v
        .environments
        .iter()
        .map(|e| {
            vec![
                e.id.chars().take(8).collect(),
                format!("{}:{}", e.function, e.version),
                e.state.clone(),
                pct(e.cpu),
                pct(e.memory),
                pct(e.disk),
                format!("{}/{}", e.in_flight, e.max_concurrency),
                if e.saturated.is_empty() {
                    "-".into()
                } else {
                    e.saturated.join(",")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ENV",
            "FUNCTION:VERSION",
            "STATE",
            "CPU",
            "MEM",
            "DISK",
            "INFLIGHT",
            "SATURATED",
        ],
        &rows,
    ));
    let rows: Vec<Vec<String>> = v
        .functions
        .iter()
        .map(|f| {
            vec![
                format!("{}:{}", f.function, f.version),
                format!("{}/{}", f.concurrency, f.concurrency_limit),
                f.invocations.to_string(),
                f.throttles.to_string(),
                f.redirects.to_string(),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "FUNCTION:VERSION",
            "CONCURRENCY",
            "INVOKES/PERIOD",
            "THROTTLES",
            "REDIRECTS",
        ],
        &rows,
    ));
    out
}

/// Streams reports and writes a frame for each, `count` times (forever when None).
pub async fn run(
    client: &mut Client,
    count: Option<u64>,
    json: bool,
    clear: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut stream = client
        .watch_utilization(WatchUtilizationRequest {})
        .await?
        .into_inner();
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        let Some(report) = stream.message().await? else {
            break;
        };
        let v = view(&report);
        if json {
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        } else {
            if clear {
                write!(out, "\x1b[H\x1b[2J")?;
            }
            writeln!(out, "{}", frame_text(&v))?;
        }
        out.flush()?;
        shown += 1;
    }
    Ok(())
}
