//! `lmictl bench`: measuring the agent from outside, as a control plane sees it.
//!
//! - `bench invoke`: load (see `load`) over gRPC or the HTTP Invoke API (`http`), with the agent's CPU time per invoke and its peak RSS read from
//!   `/proc` (`proc_stats`), and the same for the function's runtime process and for lmictl itself, so the
//!   whole machine's CPU is accounted for.
//! - `bench startup`: environment start-up, split into the agent's phases and the runtime's init (`startup`).
//!
//! Benchmarks run against loopback only (the Unix socket, or a TCP endpoint on a loopback address) and are
//! bounded in time and count.

mod http;
mod load;
mod proc_stats;
mod report;
mod startup;

use std::time::Duration;

use anyhow::Context as _;
use lmi_proto::v1::{EnvironmentState, InvokeRequest, ListEnvironmentsRequest};

use crate::cli::{BenchCommand, BenchInvokeArgs, BenchVia, Cli};
use crate::commands::Io;
use crate::connect::{self, Client, Target};
use crate::output::Output;

pub use report::InvokeReport;

/// Runs a `bench` subcommand.
pub async fn run(cli: &Cli, command: BenchCommand, io: &mut Io<'_>) -> anyhow::Result<Output> {
    let target = connect::target(&cli.socket, cli.endpoint.as_deref())?;
    require_loopback(&target)?;
    match command {
        BenchCommand::Invoke(args) => invoke(&target, cli, args).await,
        BenchCommand::Startup(args) => {
            let spec = crate::spec_file::build(&args.create, &io.cwd)?;
            let token = connect::token(&target, cli.token_file.as_deref())?;
            let mut client = connect::connect(&target, cli.rpc_timeout, token.as_deref()).await?;
            let runs =
                startup::run(&mut client, &spec, args.runs, args.create.wait_timeout, io).await?;
            report::startup_output(&runs, cli.json)
        }
    }
}

/// The Invoke API's address from `--invoke-api HOST:PORT`: it must be on loopback, as the gRPC target.
async fn invoke_api_addr(arg: &str) -> anyhow::Result<std::net::SocketAddr> {
    let addrs: Vec<_> = tokio::net::lookup_host(arg)
        .await
        .with_context(|| format!("--invoke-api {arg:?} is not a HOST:PORT address"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.ip().is_loopback())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("--invoke-api {arg:?} resolves to no address"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "bench runs against this host only: --invoke-api {arg} is not a loopback address"
    );
    Ok(addr)
}

/// Benchmarks load the agent hard: only against this host.
fn require_loopback(target: &Target) -> anyhow::Result<()> {
    let Target::Tcp(url) = target else {
        return Ok(());
    };
    let uri: tonic::transport::Uri = url
        .parse()
        .with_context(|| format!("invalid endpoint {url}"))?;
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "bench runs against this host only: --endpoint {url} is not a loopback address (use the Unix socket, 127.0.0.1 or [::1])"
    );
    Ok(())
}

async fn invoke(target: &Target, cli: &Cli, args: BenchInvokeArgs) -> anyhow::Result<Output> {
    anyhow::ensure!(
        !args.function.trim().is_empty(),
        "the function name is empty"
    );
    serde_json::from_str::<serde_json::Value>(&args.payload)
        .with_context(|| format!("--payload {:?} is not JSON", args.payload))?;
    let agent_pid = match (args.agent_pid, target) {
        (Some(pid), _) => Some(pid),
        (None, Target::Unix(path)) => {
            Some(proc_stats::socket_peer_pid(path).with_context(|| {
                format!(
                    "finding the agent's pid from {} (or give --agent-pid)",
                    path.display()
                )
            })?)
        }
        (None, Target::Tcp(_)) => None,
    };
    let mut clients = Vec::new();
    let token = connect::token(target, cli.token_file.as_deref())?;
    for _ in 0..args.connections {
        clients.push(connect::connect(target, cli.rpc_timeout, token.as_deref()).await?);
    }
    let runtime_pids = runtime_pids(&mut clients[0], &args).await?;
    anyhow::ensure!(
        !runtime_pids.is_empty(),
        "function {} has no READY environment to invoke",
        args.function
    );
    if let (Some(pid), true) = (agent_pid, args.reset_peak_rss) {
        proc_stats::reset_peak_rss(pid)?;
    }
    let via = if args.stream {
        BenchVia::Stream
    } else {
        args.via
    };
    let transport = match via {
        BenchVia::Unary => load::Transport::Unary,
        BenchVia::Stream => {
            anyhow::ensure!(
                args.rate.is_none(),
                "--via stream is closed loop only: give --concurrency, not --rate"
            );
            load::Transport::Stream
        }
        BenchVia::Http => {
            let arg = args.invoke_api.as_deref().context(
                "--via http needs --invoke-api HOST:PORT (the agent's [invoke_api] listen)",
            )?;
            load::Transport::Http(std::sync::Arc::new(http::HttpTarget::new(
                invoke_api_addr(arg).await?,
                &args.function,
                args.version.as_deref(),
                args.payload.clone().into_bytes().into(),
            )))
        }
    };
    anyhow::ensure!(
        via == BenchVia::Http || args.invoke_api.is_none(),
        "--invoke-api is for --via http"
    );
    let plan = load::LoadPlan {
        request: InvokeRequest {
            function_name: args.function.clone(),
            function_version: args.version.clone().unwrap_or_default(),
            payload: args.payload.clone().into_bytes().into(),
            ..Default::default()
        },
        mode: match args.rate {
            Some(rate) => load::Mode::Open {
                rate,
                max_in_flight: args.max_in_flight,
            },
            None => load::Mode::Closed {
                concurrency: args.concurrency,
            },
        },
        transport,
        warmup: args.warmup,
        duration: args.duration,
        max_invokes: args.max_invokes,
    };
    let me = std::process::id();
    let cpu_now = |pid: Option<u32>| pid.and_then(|p| proc_stats::cpu_time(p).ok());
    let mut before = None;
    let result = load::run(&clients, &plan, || {
        before = Some(Snapshot {
            agent: cpu_now(agent_pid),
            runtimes: runtime_pids.iter().map(|p| cpu_now(Some(*p))).collect(),
            lmictl: cpu_now(Some(me)),
        });
    })
    .await?;
    let after = Snapshot {
        agent: cpu_now(agent_pid),
        runtimes: runtime_pids.iter().map(|p| cpu_now(Some(*p))).collect(),
        lmictl: cpu_now(Some(me)),
    };
    let before = before.unwrap_or_default();
    let spent =
        |b: Option<proc_stats::CpuTime>, a: Option<proc_stats::CpuTime>| Some(a?.since(&b?));
    let runtime_cpu = before
        .runtimes
        .iter()
        .zip(&after.runtimes)
        .map(|(b, a)| spent(*b, *a))
        .collect::<Option<Vec<_>>>()
        .map(|v| v.iter().map(proc_stats::CpuTime::total).sum::<Duration>());
    let report = InvokeReport::new(
        &args,
        &plan,
        &result,
        report::ProcessCost {
            agent_pid,
            agent_cpu: spent(before.agent, after.agent),
            agent_memory: agent_pid.and_then(|p| proc_stats::memory(p).ok()),
            runtime_pids,
            runtime_cpu,
            lmictl_cpu: spent(before.lmictl, after.lmictl).map(|c| c.total()),
        },
    );
    report::invoke_output(&report, cli.json)
}

/// CPU counters at one moment.
#[derive(Debug, Default)]
struct Snapshot {
    agent: Option<proc_stats::CpuTime>,
    runtimes: Vec<Option<proc_stats::CpuTime>>,
    lmictl: Option<proc_stats::CpuTime>,
}

/// Main processes of the function version's READY environments.
async fn runtime_pids(client: &mut Client, args: &BenchInvokeArgs) -> anyhow::Result<Vec<u32>> {
    let envs = client
        .list_environments(ListEnvironmentsRequest {
            function_name: args.function.clone(),
            function_version: args.version.clone().unwrap_or_else(|| "$LATEST".to_owned()),
        })
        .await?
        .into_inner()
        .environments;
    Ok(envs
        .iter()
        .filter(|e| e.state() == EnvironmentState::Ready && e.pid != 0)
        .map(|e| e.pid)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_benchmarked() {
        let ok = |u: &str| require_loopback(&Target::Tcp(u.into())).is_ok();
        assert!(require_loopback(&Target::Unix("/run/x.sock".into())).is_ok());
        assert!(ok("http://127.0.0.1:7443"));
        assert!(ok("http://[::1]:7443"));
        assert!(ok("http://localhost:7443"));
        assert!(!ok("http://10.0.0.5:7443"));
        assert!(!ok("http://example.com:7443"));
    }

    #[tokio::test]
    async fn the_invoke_api_address_must_be_loopback() {
        assert_eq!(
            invoke_api_addr("127.0.0.1:9001").await.unwrap(),
            "127.0.0.1:9001".parse().unwrap()
        );
        assert!(invoke_api_addr("localhost:9001")
            .await
            .unwrap()
            .ip()
            .is_loopback());
        assert!(invoke_api_addr("10.0.0.5:9001").await.is_err());
        assert!(invoke_api_addr("127.0.0.1").await.is_err(), "no port");
    }
}
