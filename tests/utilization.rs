//! Sampling, admission (redirects and throttles by bottleneck), the scaler stream and /metrics, against the
//! real daemon and real Python runtimes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use lmi_proto::v1::{self as pb, agent_client::AgentClient, InvokeOutcome as Out};
use support::{scaler::RefScaler, *};
use tonic::{transport::Channel, Code};

/// Fast sampling so that tests wait little. Only the resource under test has a threshold (low enough that a
/// busy CI machine still crosses it); the others are at 1.0, which nothing exceeds, so that a passing spike
/// of another resource (a runtime starting, pages being touched) cannot take part.
fn sampling_for(resource: Resource) -> String {
    let (cpu, memory, disk) = match resource {
        Resource::Cpu => (0.3, 1.0, 1.0),
        Resource::Memory => (1.0, 0.7, 1.0),
        Resource::Disk => (1.0, 1.0, 0.9),
    };
    format!("[utilization]\nsample_interval_ms = 100\nsmoothing_seconds = 0.3\ncpu_threshold = {cpu}\nmemory_threshold = {memory}\ndisk_threshold = {disk}\n")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Resource {
    Cpu,
    Memory,
    Disk,
}

impl Resource {
    fn saturated(self, e: &pb::EnvironmentUtilization) -> bool {
        match self {
            Resource::Cpu => e.cpu_saturated,
            Resource::Memory => e.memory_saturated,
            Resource::Disk => e.disk_saturated,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Resource::Cpu => "CPU",
            Resource::Memory => "MEMORY",
            Resource::Disk => "DISK",
        }
    }

    fn load(self, release: &std::path::Path) -> serde_json::Value {
        let release = release.display().to_string();
        match self {
            Resource::Cpu => serde_json::json!({"action": "burn", "release": release}),
            // 1600 of 2048 MiB: over the 0.7 threshold, safely under the limit.
            Resource::Memory => {
                serde_json::json!({"action": "hold_memory", "mb": 1600, "release": release})
            }
            // 480 of 512 MiB of /tmp: over the 0.9 threshold.
            Resource::Disk => {
                serde_json::json!({"action": "fill_tmp", "mb": 480, "release": release})
            }
        }
    }

    fn count(self, t: &pb::ThrottleCounts) -> u64 {
        match self {
            Resource::Cpu => t.cpu,
            Resource::Memory => t.memory,
            Resource::Disk => t.disk,
        }
    }
}

fn saturated_at_all(e: &pb::EnvironmentUtilization) -> bool {
    e.cpu_saturated || e.memory_saturated || e.disk_saturated
}

/// A function's counters since the agent started: redirects, then throttles (total, of `resource`, of
/// concurrency), then invocations. A new watcher's first report counts since the start.
async fn counters_since_start(
    client: &AgentClient<Channel>,
    function: &str,
    resource: Resource,
) -> [u64; 5] {
    let r = watch_until(client, "the function's counters", |r| {
        r.functions.iter().any(|f| f.function_name == function)
    })
    .await;
    let f = r
        .functions
        .iter()
        .find(|f| f.function_name == function)
        .unwrap();
    let t = f.throttles.unwrap_or_default();
    [
        f.redirects,
        t.total,
        resource.count(&t),
        t.concurrency,
        f.invocations,
    ]
}

/// Waits until every worker process of A and B (one per slot: `slots` of each) has started, then until both
/// are idle and unsaturated.
///
/// An environment is READY at its runtime's first `/next`, but the Python runtime has one worker process per
/// concurrency slot, each importing the handler on its own: when A (8 workers) and B (2) are READY, the
/// others may still be starting, and that CPU of their own can hold A over the test's low CPU threshold with
/// nothing in flight (A's smoothed CPU in the first report after B was READY: 0.12-0.30 in 25 runs), so that
/// the load goes to B, or make B saturated when the echo comes. One gate per slot (all at a count of all the
/// slots: each can only finish once all are inside their own worker at once) proves every worker polled;
/// a gate refused because an environment was saturated meanwhile is sent again after a report in which
/// neither is. Then a report with both idle and unsaturated: with nothing to run, their figures only fall.
async fn every_worker_started_and_idle(
    client: &AgentClient<Channel>,
    function: &str,
    (a_id, b_id): (&str, &str),
    slots: [usize; 2],
) {
    fn neither_saturated(r: &pb::UtilizationReport, ids: &[String; 2]) -> bool {
        ids.iter()
            .all(|id| env_in(r, id).is_some_and(|e| !saturated_at_all(e)))
    }
    let ids = [a_id.to_owned(), b_id.to_owned()];
    let gates = support::shared_dir();
    let all = slots[0] + slots[1];
    let sent: Vec<_> = (0..all)
        .map(|_| {
            let (client, function, payload, ids) = (
                client.clone(),
                function.to_owned(),
                gate(gates.path(), all),
                ids.clone(),
            );
            tokio::spawn(async move {
                loop {
                    match invoke(client.clone(), &function, payload.clone()).await {
                        Ok(r) => return r,
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            eprintln!("warm-up gate refused, sent again once A and B are unsaturated: {s:?}");
                            watch_until(&client, "A and B unsaturated", |r| {
                                neither_saturated(r, &ids)
                            })
                            .await;
                        }
                        Err(s) => panic!("{s:?}"),
                    }
                }
            })
        })
        .collect();
    let mut on = [0; 2];
    for g in sent {
        let r = g.await.unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        on[usize::from(r.environment_id == b_id)] += 1;
    }
    assert_eq!(on, slots, "gates on A and on B: one per slot");
    watch_until(client, "A and B idle and unsaturated", |r| {
        neither_saturated(r, &ids)
            && ids
                .iter()
                .all(|id| env_in(r, id).is_some_and(|e| e.in_flight == 0))
    })
    .await;
}

/// Environment A (max 8) gets a load that saturates `resource`; B (max 2) stays healthy. Invokes whose first
/// choice is A go to B (redirects); once B is full, an invoke is throttled with `resource` as the reason;
/// when the load stops, A takes invokes again.
async fn saturation_redirects_then_throttles_then_recovers(resource: Resource) {
    let function = format!("sat-{}", resource.reason().to_lowercase());
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: sampling_for(resource),
        ..Default::default()
    })
    .await;
    let mut spec = python_spec(&function, "actions.handler");
    spec.timeout_seconds = 120;
    let mut a_spec = spec.clone();
    a_spec.max_concurrency = 8;
    let mut b_spec = spec;
    b_spec.max_concurrency = 2;
    let a = agent.create_ready(a_spec).await;
    let b = agent.create_ready(b_spec).await;
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    every_worker_started_and_idle(&agent.client, &function, (&a_id, &b_id), [8, 2]).await;
    let before = counters_since_start(&agent.client, &function, resource).await;

    let release = support::shared_dir();
    let release_file = release.path().join("release");
    // Both idle: the load goes to A (ties go to the older environment).
    let loader = tokio::spawn(invoke(
        agent.client.clone(),
        &function,
        resource.load(&release_file),
    ));
    // A saturated by the load it runs, not by anything else; B idle and not saturated. Before each invoke
    // below, the latest report must still say so, with B holding the gates sent so far (a CPU load on a
    // host busy enough can fall under the threshold for a while).
    let client = agent.client.clone();
    let a_saturated_and_b_holds = |gates: u32| {
        let (client, a_id, b_id) = (client.clone(), a_id.clone(), b_id.clone());
        async move {
            let what = format!("A saturated by the load, B not and holding {gates} gates");
            watch_until(&client, &what, |r| {
                env_in(r, &a_id).is_some_and(|e| resource.saturated(e) && e.in_flight == 1)
                    && env_in(r, &b_id)
                        .is_some_and(|e| !resource.saturated(e) && e.in_flight == gates)
            })
            .await;
        }
    };
    a_saturated_and_b_holds(0).await;

    let gates = support::shared_dir();
    // B is idle (least loaded): the first gate goes there without a redirect.
    let g1 = tokio::spawn(invoke(
        agent.client.clone(),
        &function,
        gate(gates.path(), 3),
    ));
    wait_for_files(gates.path(), 1).await;
    a_saturated_and_b_holds(1).await;
    // Now A (1/8) is the first choice but saturated: the invoke is redirected to B (1/2).
    let echo = agent
        .invoke(&function, serde_json::json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(echo.outcome(), Out::Success);
    assert_eq!(
        echo.environment_id, b.id,
        "redirected away from the saturated environment"
    );
    let g2 = tokio::spawn(invoke(
        agent.client.clone(),
        &function,
        gate(gates.path(), 3),
    ));
    wait_for_files(gates.path(), 2).await;
    a_saturated_and_b_holds(2).await;
    // B is full and A is saturated: throttled, naming the resource.
    let s = agent
        .invoke(&function, serde_json::json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_throttled(&s, resource.reason());

    // The load stops: A is admitted again.
    std::fs::write(&release_file, "").unwrap();
    let done = loader.await.unwrap().unwrap();
    assert_eq!(done.outcome(), Out::Success, "{done:?}");
    assert_eq!(done.environment_id, a.id);
    watch_until(&agent.client, "A no longer saturated", |r| {
        env_in(r, &a_id).is_some_and(|e| !resource.saturated(e))
    })
    .await;
    let again = agent
        .invoke(&function, serde_json::json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(again.outcome(), Out::Success);
    assert_eq!(
        again.environment_id, a.id,
        "B is still full: only A can take it"
    );

    std::fs::write(gates.path().join("release"), "").unwrap();
    for g in [g1, g2] {
        let r = g.await.unwrap().unwrap();
        assert_eq!(
            (r.outcome(), r.environment_id.as_str()),
            (Out::Success, b.id.as_str())
        );
    }
    // Since the warm-up: 2 redirects, 1 throttle of this reason and none of concurrency; load, 2 gates,
    // 2 echoes (the throttled invoke never ran).
    let after = counters_since_start(&agent.client, &function, resource).await;
    let since: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.wrapping_sub(*b))
        .collect();
    assert_eq!(since, [2, 1, 1, 0, 5], "{before:?} then {after:?}");
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_saturation_redirects_then_throttles_for_cpu_then_recovers() {
    require_root!();
    saturation_redirects_then_throttles_then_recovers(Resource::Cpu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_saturation_redirects_then_throttles_for_memory_then_recovers() {
    require_root!();
    saturation_redirects_then_throttles_then_recovers(Resource::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tmp_redirects_then_throttles_for_disk_then_recovers() {
    require_root!();
    saturation_redirects_then_throttles_then_recovers(Resource::Disk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tmp_of_an_environment_is_capped_at_its_ephemeral_storage() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(python_spec("tmpcap", "actions.handler"))
        .await;
    // 600 MiB into a 512 MiB /tmp: the write fails with ENOSPC inside the function.
    let r = agent
        .invoke(
            "tmpcap",
            serde_json::json!({"action": "fill_tmp", "mb": 600, "release": "/nonexistent"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert!(e.error_message.contains("No space left on device"), "{e:?}");
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scaler_gets_matching_reports_across_its_restart_and_can_drain_the_host() {
    require_root!();
    let mut scaler = RefScaler::start("127.0.0.1:0".parse().unwrap()).await;
    let addr = scaler.addr;
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "[utilization]\nsample_interval_ms = 100\n[scaler]\nendpoint = \"http://{addr}\"\nreport_interval_ms = 100\nbackoff_initial_ms = 50\nbackoff_max_ms = 400\n"
        ),
        ..Default::default()
    })
    .await;
    let mut spec = python_spec("reported", "actions.handler");
    spec.max_concurrency = 3;
    spec.memory_mib = 4096;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;

    // Reports match the environment.
    let id = env.id.clone();
    let (r, _) = scaler
        .until("the environment READY", |r| {
            env_in(r, &id).is_some_and(|e| e.state() == pb::EnvironmentState::Ready)
        })
        .await;
    let e = env_in(&r, &env.id).unwrap();
    assert_eq!(
        (e.max_concurrency, e.in_flight, e.vcpus, e.memory_mib),
        (3, 0, 2, 4096)
    );
    assert_eq!(e.function_name, "reported");
    let f = r
        .functions
        .iter()
        .find(|f| f.function_name == "reported")
        .unwrap();
    assert_eq!(
        (f.environments, f.ready_environments, f.concurrency_limit),
        (1, 1, 3)
    );
    let host = r.host.unwrap();
    assert_eq!(
        (
            host.vcpus_allocated,
            host.vcpus_available,
            host.memory_mib_allocated
        ),
        (2, 62, 4096)
    );
    assert!(!r.agent_instance_id.is_empty());

    // A concurrency throttle shows up in the next reports' deltas (exactly once in total).
    let gates = support::shared_dir();
    let held: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(invoke(
                agent.client.clone(),
                "reported",
                gate(gates.path(), 4),
            ))
        })
        .collect();
    wait_for_files(gates.path(), 3).await;
    let s = agent
        .invoke("reported", serde_json::json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    let id = env.id.clone();
    let (r, before) = scaler
        .until("a throttle", |r| r.throttles.is_some_and(|t| t.total > 0))
        .await;
    let t = r.throttles.unwrap();
    assert_eq!((t.total, t.concurrency), (1, 1));
    assert!(before
        .iter()
        .all(|b| b.throttles.is_none_or(|t| t.total == 0)));
    let (r, _) = scaler
        .until("3 in flight", |r| {
            env_in(r, &id).is_some_and(|e| e.in_flight == 3)
        })
        .await;
    let last_before_restart = r.sequence;
    std::fs::write(gates.path().join("release"), "").unwrap();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().outcome(), Out::Success);
    }

    // The scaler goes away: invokes still succeed and the agent does not grow.
    drop(scaler);
    let rss_before = rss_kib(agent.pid());
    for _ in 0..20 {
        let r = agent
            .invoke("reported", serde_json::json!({"action": "echo"}))
            .await
            .unwrap();
        assert_eq!(r.outcome(), Out::Success);
    }
    let rss_after = rss_kib(agent.pid());
    assert!(
        rss_after < rss_before + 8 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // It comes back on the same address: the agent reconnects and the sequence keeps increasing.
    let mut scaler = RefScaler::start(addr).await;
    let r = scaler.next().await;
    assert!(
        r.sequence > last_before_restart,
        "{} after {last_before_restart}",
        r.sequence
    );
    let next = scaler.next().await;
    assert_eq!(next.sequence, r.sequence + 1);

    // Directives: drain the host.
    scaler
        .directives
        .send(pb::ScalerDirective {
            directive: Some(pb::scaler_directive::Directive::DrainHost(pb::DrainHost {
                reason: "rotation".into(),
            })),
        })
        .await
        .unwrap();
    let (r, _) = scaler
        .until("draining", |r| r.host.is_some_and(|h| h.draining))
        .await;
    assert!(r.host.unwrap().draining);
    let s = agent
        .invoke("reported", serde_json::json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let s = agent
        .create_refused(python_spec("late", "actions.handler"))
        .await;
    assert_eq!(s.code(), Code::Unavailable);
    let drained = agent
        .wait_state(&env.id, &[pb::EnvironmentState::Terminated])
        .await;
    assert_eq!(drained.state(), pb::EnvironmentState::Terminated);
    agent.stop_and_assert_clean(&[env.pid]);
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_parser_and_count_the_throttles_caused() {
    require_root!();
    let port = free_loopback_port();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "metrics_listen = \"127.0.0.1:{port}\"\n[utilization]\nsample_interval_ms = 100\n"
        ),
        ..Default::default()
    })
    .await;
    let mut spec = python_spec("metered", "actions.handler");
    spec.max_concurrency = 1;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let gates = support::shared_dir();
    let held = tokio::spawn(invoke(
        agent.client.clone(),
        "metered",
        gate(gates.path(), 2),
    ));
    wait_for_files(gates.path(), 1).await;
    for _ in 0..2 {
        let s = agent
            .invoke("metered", serde_json::json!({}))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted);
    }
    std::fs::write(gates.path().join("release"), "").unwrap();
    assert_eq!(held.await.unwrap().unwrap().outcome(), Out::Success);
    let err = agent
        .invoke("metered", serde_json::json!({"action": "raise"}))
        .await
        .unwrap();
    assert_eq!(err.outcome(), Out::FunctionError);
    let id = env.id.clone();
    watch_until(&agent.client, "sampled", |r| env_in(r, &id).is_some()).await;

    // Parse with prometheus_client's own parser (PyPI), as a scraper would.
    let script = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1]).read().decode()
out = {}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        key = s.name + json.dumps(s.labels, sort_keys=True)
        out[key] = s.value
print(json.dumps(out))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script, &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let get = |name: &str, labels: &str| {
        m.get(format!("{name}{labels}"))
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("{name}{labels} missing"))
    };
    let fl = r#"{"function": "metered", "version": "$LATEST"}"#;
    assert_eq!(get("lmi_throttles_total", fl), 2.0);
    assert_eq!(get("lmi_concurrency_throttles_total", fl), 2.0);
    assert_eq!(get("lmi_cpu_throttles_total", fl), 0.0);
    assert_eq!(get("lmi_redirects_total", fl), 0.0);
    assert_eq!(
        get(
            "lmi_invocations_total",
            r#"{"function": "metered", "outcome": "success", "version": "$LATEST"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            "lmi_invocations_total",
            r#"{"function": "metered", "outcome": "function_error", "version": "$LATEST"}"#
        ),
        1.0
    );
    assert_eq!(get("lmi_invoke_duration_seconds_count", fl), 2.0);
    assert_eq!(get("lmi_execution_environment_concurrency_limit", fl), 1.0);
    assert_eq!(get("lmi_host_vcpus_allocated", "{}"), 1.0);
    assert_eq!(
        get("lmi_host_memory_allocated_bytes", "{}"),
        2048.0 * 1024.0 * 1024.0
    );
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmictl_top_streams_frames_of_the_live_state() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: "[utilization]\nsample_interval_ms = 100\n".into(),
        ..Default::default()
    })
    .await;
    let env = agent
        .create_ready(python_spec("topped", "actions.handler"))
        .await;
    let out = tokio::process::Command::new(LMICTL_BIN)
        .args([
            "--socket",
            &agent.socket.display().to_string(),
            "--json",
            "top",
            "--count",
            "3",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 3);
    let last = &frames[2];
    let e = last["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == env.id.as_str())
        .unwrap();
    assert_eq!(e["function"], "topped");
    assert_eq!(e["max_concurrency"], 16);
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["sequence"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    agent.stop_and_assert_clean(&[env.pid]);
    let _ = Duration::ZERO;
}
