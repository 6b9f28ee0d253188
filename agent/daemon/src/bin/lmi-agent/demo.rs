//! `lmi-agent demo`: the agent's main job on a built-in default, end to end and in plain words.
//!
//! Starts a real agent (its own cgroup parent, socket and state in a temporary directory), creates a
//! pre-warmed Python environment for a built-in example function, fires concurrent invokes through the gRPC
//! control API, shows a throttle, a function error and a timeout, then deletes everything and checks that no
//! cgroup is left.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _};
use lmi_agent_core::config::{Config, LogFormat};
use lmi_proto::connect;
use lmi_proto::v1::{self as pb, agent_client::AgentClient};
use tonic::transport::Channel;

use crate::Daemon;

const FUNCTION: &str = include_str!("demo_function.py");
const MAX_CONCURRENCY: u32 = 8;

fn default_shims_dir() -> PathBuf {
    // Running from the source tree (`cargo run`): use its shims; installed: the packaged ones.
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../runtime-shims");
    if source.join("python/bootstrap.py").is_file() {
        source
    } else {
        Config::default().shims_dir
    }
}

pub(crate) async fn run(shims_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates cgroups and must run as root (try: sudo lmi-agent demo)");
    }
    let dir = tempfile::Builder::new().prefix("lmi-demo-").tempdir()?;
    let code = dir.path().join("function");
    std::fs::create_dir_all(&code)?;
    std::fs::write(code.join("demo_function.py"), FUNCTION)?;

    let state_dir = dir.path().join("state");
    let shims_dir = shims_dir.unwrap_or_else(default_shims_dir);
    // A checkout under /tmp: runtimes cannot see its shims (their /tmp is their own), so they get a copy
    // where they can, removed with the demo.
    let visible_shims =
        if lmi_sandbox::mounts::hidden_from_runtimes(&shims_dir, &state_dir).is_some() {
            Some(copy_shims(&shims_dir)?)
        } else {
            None
        };

    let (host_vcpus, host_mem) = lmi_agent_core::capacity::HostCapacity::detect_totals();
    let mut config = Config {
        socket: dir.path().join("agent.sock"),
        state_dir,
        cgroup_parent: format!("lmi-demo-{}", std::process::id()),
        shims_dir: visible_shims
            .as_ref()
            .map_or(shims_dir, |d| d.path().join("runtime-shims")),
        log_format: LogFormat::Text,
        ..Config::default()
    };
    // Plan with at least 4 vCPUs even on a smaller machine, so the demo runs anywhere (operators may
    // overcommit the same way in agent.toml).
    config.capacity.vcpus = host_vcpus.max(4);
    config.capacity.memory_mib = host_mem.max(8192);

    println!("== lmi-agent demo");
    if visible_shims.is_some() {
        println!(
            "runtime shims: a copy in {}, which runtimes can see (the checkout's are under /tmp)",
            config.shims_dir.display()
        );
    }
    if let Some(missing) = missing_network_tools() {
        // A bare machine may lack iproute2 or nftables; the service refuses to start without them while
        // network isolation is on, but the demo can show everything else without it.
        config.sandbox.network_isolation = false;
        println!(
            "network isolation: off ({missing} not found): environments share the host's network and \
             loopback; install iproute2 and nftables to give each its own network namespace"
        );
    }
    println!(
        "host: {host_vcpus} vCPUs, {host_mem} MiB detected; planning with {} vCPUs",
        config.capacity.vcpus
    );
    let daemon = Daemon::start(&config).await?;
    let result = scenario(&config, &code).await;
    println!("\n== shutting down: draining environments and removing cgroups");
    daemon.shutdown(Duration::from_secs(5)).await?;
    let leftovers = leftover_cgroups(&config.cgroup_parent);
    if leftovers.is_empty() {
        println!("clean: no cgroup named {} is left", config.cgroup_parent);
    } else {
        println!("left behind: {leftovers:?}");
    }
    result
}

async fn scenario(config: &Config, code: &std::path::Path) -> anyhow::Result<()> {
    let mut c = connect::connect_unix(&config.socket)
        .await
        .context("connecting to the agent")?;
    let host = c.get_host(pb::GetHostRequest {}).await?.into_inner();
    println!(
        "agent {} up on {} (cgroup {}), {} vCPUs / {} MiB allocatable",
        host.agent_version,
        config.socket.display(),
        host.cgroup_version,
        host.vcpus_allocatable,
        host.memory_mib_allocatable
    );

    println!("\n== 1. create a pre-warmed Python environment (2 GiB, 1 vCPU, max concurrency {MAX_CONCURRENCY})");
    let spec = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: "hello".into(),
            version: "1".into(),
            arn: String::new(),
        }),
        runtime: "python3.11".into(),
        handler: "demo_function.handler".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(code.display().to_string())),
            sha256: String::new(),
        }),
        memory_mib: 2048,
        memory_gib_per_vcpu: 2,
        max_concurrency: MAX_CONCURRENCY,
        timeout_seconds: 2,
        ..Default::default()
    };
    let env = c
        .create_environment(pb::CreateEnvironmentRequest { spec: Some(spec) })
        .await?
        .into_inner()
        .environment
        .context("no environment in the answer")?;
    println!(
        "created {} ({:?}); runtime pid {}, cgroup {}",
        env.id,
        env.state(),
        env.pid,
        env.cgroup
    );
    let env = wait_ready(&mut c, &env.id).await?;
    println!(
        "READY after {} ms of runtime init: the runtime polls /next, invokes will not cold-start",
        env.init_duration_ms
    );

    println!("\n== 2. {MAX_CONCURRENCY} concurrent invokes, each sleeping 500 ms, multiplexed into one environment");
    let results = burst(&c, MAX_CONCURRENCY as usize, 500).await;
    report(&results);

    println!("\n== 3. {} concurrent invokes against a limit of {MAX_CONCURRENCY}: the extra ones are throttled at once", MAX_CONCURRENCY + 2);
    let results = burst(&c, MAX_CONCURRENCY as usize + 2, 1500).await;
    report(&results);

    println!("\n== 4. a function error and a timeout");
    for (what, payload) in [
        ("function error", serde_json::json!({"action": "fail"})),
        (
            "timeout (function timeout 2 s, handler sleeps 5 s)",
            serde_json::json!({"action": "hang", "s": 5}),
        ),
    ] {
        let r = invoke(c.clone(), payload).await;
        match r {
            Ok(r) => {
                let outcome = r.outcome();
                let e = r.error.unwrap_or_default();
                println!("{what}: {outcome:?} {}: {}", e.error_type, e.error_message);
            }
            Err(s) => println!("{what}: {:?} {}", s.code(), s.message()),
        }
    }

    println!("\n== 5. delete the environment (drains in-flight invokes first)");
    let gone = c
        .delete_environment(pb::DeleteEnvironmentRequest {
            id: env.id.clone(),
            grace_period_seconds: 10,
        })
        .await?
        .into_inner();
    println!("{}: {:?}", gone.id, gone.state());
    Ok(())
}

async fn wait_ready(c: &mut AgentClient<Channel>, id: &str) -> anyhow::Result<pb::Environment> {
    let start = std::time::Instant::now();
    loop {
        let e = c
            .get_environment(pb::GetEnvironmentRequest { id: id.into() })
            .await?
            .into_inner();
        match e.state() {
            pb::EnvironmentState::Ready => return Ok(e),
            pb::EnvironmentState::Failed => bail!("environment failed: {:?}", e.failure),
            _ if start.elapsed() > Duration::from_secs(60) => {
                bail!("environment not READY after 60 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn invoke(
    c: AgentClient<Channel>,
    payload: serde_json::Value,
) -> Result<pb::InvokeResponse, tonic::Status> {
    let mut c = c;
    c.invoke(pb::InvokeRequest {
        function_name: "hello".into(),
        function_version: "1".into(),
        payload: payload.to_string().into_bytes().into(),
        ..Default::default()
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn burst(
    c: &AgentClient<Channel>,
    n: usize,
    sleep_ms: u64,
) -> Vec<Result<pb::InvokeResponse, tonic::Status>> {
    let calls: Vec<_> = (0..n)
        .map(|_| tokio::spawn(invoke(c.clone(), serde_json::json!({"sleep_ms": sleep_ms}))))
        .collect();
    let mut out = Vec::new();
    for call in calls {
        out.push(
            call.await
                .unwrap_or_else(|e| Err(tonic::Status::internal(e.to_string()))),
        );
    }
    out
}

fn report(results: &[Result<pb::InvokeResponse, tonic::Status>]) {
    let mut spans = Vec::new();
    let mut pids = std::collections::BTreeSet::new();
    let mut throttled = 0;
    for r in results {
        match r {
            Ok(r) => {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
                if let (Some(s), Some(e)) = (v["start"].as_f64(), v["end"].as_f64()) {
                    spans.push((s, e));
                }
                if let Some(p) = v["pid"].as_u64() {
                    pids.insert(p);
                }
            }
            Err(s) => {
                throttled += 1;
                // The throttle's details, as any gRPC client reads the rich error model: a
                // google.rpc.Status in the status details, holding a ThrottleDetails.
                let reason = pb::ThrottleDetails::from_status_details(s.details())
                    .and_then(|d| pb::ThrottleReason::try_from(d.reason).ok())
                    .map(|r| r.as_str_name().trim_start_matches("THROTTLE_REASON_"))
                    .unwrap_or("?");
                println!("  {:?} [{reason}]: {}", s.code(), s.message());
            }
        }
    }
    // Peak overlap from the handlers' own start/end times.
    let mut edges: Vec<(f64, i32)> = spans
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut cur, mut peak) = (0, 0);
    for (_, d) in edges {
        cur += d;
        peak = peak.max(cur);
    }
    println!(
        "  {} succeeded on {} worker processes, {throttled} throttled; at most {peak} ran at the same moment",
        spans.len(),
        pids.len()
    );
}

/// A copy of the shims directory `src` in a new directory under /run (mode 0755: every environment's uid
/// reads the shims), removed when the returned directory is dropped.
fn copy_shims(src: &std::path::Path) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("lmi-demo-shims-")
        .tempdir_in("/run")
        .context("creating a directory for the runtime shims under /run")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dir.path().join("runtime-shims"))
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!(
            "copying the runtime shims {} failed: {status}",
            src.display()
        );
    }
    Ok(dir)
}

/// The tools network isolation needs that this host lacks (`ip`, `nft`), looked up as the agent does.
fn missing_network_tools() -> Option<String> {
    let missing: Vec<String> = ["ip", "nft"]
        .into_iter()
        .filter(|t| lmi_sandbox::tools::Tool::find(t).is_none())
        .map(|t| format!("`{t}`"))
        .collect();
    (!missing.is_empty()).then(|| missing.join(" and "))
}

fn leftover_cgroups(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(mounts) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    let mut stack: Vec<(PathBuf, usize)> = mounts.flatten().map(|e| (e.path(), 0)).collect();
    while let Some((p, depth)) = stack.pop() {
        if p.file_name().is_some_and(|f| f.to_string_lossy() == name) {
            out.push(p);
            continue;
        }
        if depth < 4 {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| (e.path(), depth + 1)),
                );
            }
        }
    }
    out
}
