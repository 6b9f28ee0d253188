//! Soak: a bounded load through the real daemon while runtimes are killed under it, as the control plane
//! replaces what failed. Checks that every invoke ends in exactly one outcome (none lost, none duplicated,
//! no answer given to the wrong caller), that the agent's own counters agree with what the callers saw, and
//! that the agent's file descriptors and memory do not grow.
//!
//! Environments are kept at `LMI_SOAK_ENVIRONMENTS` (at least 2: with one, an invoke could find none between a
//! delete and its replacement). CI runs a reduced size; the full size is by hand (figures in docs/RELIABILITY.md):
//!
//! ```sh
//! LMI_SOAK_SECONDS=600 LMI_SOAK_CALLERS=64 cargo test -p lmi-agent --test soak -- --nocapture
//! ```
//!
//! Knobs (environment): `LMI_SOAK_SECONDS` (default 20), `LMI_SOAK_CALLERS` (16), `LMI_SOAK_ENVIRONMENTS`
//! (3), `LMI_SOAK_KILL_EVERY_MS` (1500). Loopback and the agent's Unix socket only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use support::*;
use tonic::Code;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const FUNCTION: &str = "soak";
const MAX_CONCURRENCY: u32 = 8;

fn spec(code: &std::path::Path) -> pb::EnvironmentSpec {
    // The timeout is far above what an invoke here takes (at most 200 ms): a timeout would mean an answer
    // was lost.
    native_echo_spec(FUNCTION, code, MAX_CONCURRENCY, 30)
}

/// What the callers saw.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    outcomes: BTreeMap<&'static str, u64>,
    throttled: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.throttled += other.throttled;
    }
}

/// One caller: invokes in a closed loop until `stop`, checking each answer against what it sent.
async fn caller(
    client: pb::agent_client::AgentClient<tonic::transport::Channel>,
    n: u64,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut t = Tally::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        // Mostly plain echoes; some hold the invoke a while (so kills land mid-invoke), some fail.
        let payload = match seq % 10 {
            0 => serde_json::json!({"native_echo": {"sleep_ms": 200}}),
            5 => serde_json::json!({"native_echo": {"error": "Function.Soak"}}),
            _ => serde_json::json!({"caller": n, "seq": seq, "pad": "x".repeat(64)}),
        };
        t.sent += 1;
        // The invoke's deadline is 30 s: an answer that has not come well after it was lost by the agent.
        let answer = tokio::time::timeout(
            Duration::from_secs(90),
            invoke(client.clone(), FUNCTION, payload.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("caller {n} invoke {seq}: lost (no outcome within 90 s)"));
        let r = match answer {
            Ok(r) => r,
            Err(s) if s.code() == Code::ResourceExhausted => {
                // Throttled: no environment could take it (one was just killed).
                t.throttled += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Err(s) => panic!("caller {n} invoke {seq}: unexpected status {s:?}"),
        };
        assert!(!r.request_id.is_empty(), "{r:?}");
        let kind = match r.outcome() {
            Out::Success => {
                let got: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                if seq % 10 == 0 {
                    assert_eq!(got["request_id"], r.request_id.as_str(), "{r:?}");
                } else {
                    assert_eq!(got, payload, "an answer reached the wrong caller");
                }
                "success"
            }
            Out::FunctionError => {
                assert_eq!(seq % 10, 5, "only the error events fail: {r:?}");
                assert_eq!(r.error.as_ref().unwrap().error_type, "Function.Soak");
                "function_error"
            }
            Out::RuntimeFailure => {
                let e = r.error.as_ref().unwrap();
                assert!(
                    e.error_type.starts_with("Runtime."),
                    "a killed runtime's invokes end with a Runtime.* error: {r:?}"
                );
                "runtime_failure"
            }
            // Every invoke here is answered within 200 ms or ended by its runtime's death: a timeout means the
            // agent lost the answer (or the invoke) somewhere.
            Out::Timeout => panic!("caller {n} invoke {seq} timed out: an answer was lost: {r:?}"),
            Out::Unspecified => panic!("no outcome: {r:?}"),
        };
        *t.outcomes.entry(kind).or_default() += 1;
    }
    t
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `lmi_invocations_total` by outcome and `lmi_throttles_total` for the soak function, from `/metrics`.
async fn agent_counts(port: u16) -> (BTreeMap<String, u64>, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let mut outcomes = BTreeMap::new();
    let mut throttles = 0;
    for line in text.lines().filter(|l| l.contains("function=\"soak\"")) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap() as u64;
        if series.starts_with("lmi_invocations_total{") {
            let outcome = series.split("outcome=\"").nth(1).unwrap();
            outcomes.insert(outcome.trim_end_matches(['"', '}']).to_owned(), value);
        } else if series.starts_with("lmi_throttles_total{") {
            throttles = value;
        }
    }
    (outcomes, throttles)
}

/// The READY environments of the soak function, and those that failed.
async fn environments(agent: &mut TestAgent) -> (Vec<pb::Environment>, Vec<pb::Environment>) {
    let all = agent
        .client
        .list_environments(pb::ListEnvironmentsRequest {
            function_name: FUNCTION.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .environments;
    let ready = all.iter().filter(|e| e.state() == St::Ready).cloned();
    let failed = all.iter().filter(|e| e.state() == St::Failed).cloned();
    (ready.collect(), failed.collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_invoke_ends_in_one_outcome_while_runtimes_are_killed() {
    require_root!();
    let seconds = knob("LMI_SOAK_SECONDS", 20);
    let callers = knob("LMI_SOAK_CALLERS", 16);
    let wanted = knob("LMI_SOAK_ENVIRONMENTS", 3).max(2) as usize;
    let kill_every = Duration::from_millis(knob("LMI_SOAK_KILL_EVERY_MS", 1500));
    let port = free_loopback_port();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
        ..Default::default()
    })
    .await;
    let code = native_echo_code_dir();
    let mut pids = Vec::new();
    for _ in 0..wanted {
        pids.push(agent.create_ready(spec(code.path())).await.pid);
    }
    // Warm up (connections, buffers, allocator), then the baseline.
    {
        let stop = Arc::new(AtomicBool::new(false));
        let warm = tokio::spawn(caller(agent.client.clone(), 999, stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::Relaxed);
        warm.await.unwrap();
    }
    let (fds_before, rss_before) = (fds(agent.pid()), rss_kib(agent.pid()));
    let (warm_outcomes, warm_throttles) = agent_counts(port).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..callers)
        .map(|n| tokio::spawn(caller(agent.client.clone(), n, stop.clone())))
        .collect();
    // The fault injector and the control plane: kill a READY runtime every `kill_every`; replace every
    // FAILED environment (LMI replaces, it never restarts in place).
    let started = Instant::now();
    let mut kills = 0u64;
    let mut replaced = 0u64;
    let mut next_kill = started + kill_every;
    while started.elapsed() < Duration::from_secs(seconds) {
        let (ready, failed) = environments(&mut agent).await;
        for f in failed {
            let failure = f.failure.clone().unwrap();
            assert!(
                failure.error_type.starts_with("Runtime."),
                "a killed runtime's environment fails with a Runtime.* reason: {failure:?}"
            );
            agent.delete(&f.id).await;
            let fresh = agent.create(spec(code.path())).await;
            pids.push(fresh.pid);
            replaced += 1;
        }
        if Instant::now() >= next_kill && ready.len() == wanted {
            let victim = &ready[kills as usize % ready.len()];
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            kills += 1;
            next_kill = Instant::now() + kill_every;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for c in load {
        tally.merge(c.await.unwrap());
    }
    let elapsed = started.elapsed();

    // Every invoke ended exactly once, and as the callers saw it: the agent's own counts per outcome (each
    // finished invoke is counted once, when its one outcome is delivered) equal the callers' tallies since
    // the baseline. An invoke ended twice, or ended without reaching its caller, would show here; one never
    // ended would have failed its caller (see `caller`).
    let (outcomes, throttles) = agent_counts(port).await;
    for kind in lmi_agent::stats::OUTCOMES {
        let counted = outcomes.get(kind).copied().unwrap_or(0)
            - warm_outcomes.get(kind).copied().unwrap_or(0);
        let seen = tally.outcomes.get(kind).copied().unwrap_or(0);
        assert_eq!(counted, seen, "the agent's {kind} count");
    }
    assert_eq!(throttles - warm_throttles, tally.throttled);
    assert!(
        kills > 0,
        "no runtime was killed: the soak injected no fault"
    );
    assert!(
        tally.outcomes.get("success").copied().unwrap_or(0) > 0,
        "{tally:?}"
    );

    // Back to the same number of READY environments: the agent holds what it held before.
    let settle = Instant::now();
    loop {
        let (ready, failed) = environments(&mut agent).await;
        for f in failed {
            agent.delete(&f.id).await;
            pids.push(agent.create(spec(code.path())).await.pid);
            replaced += 1;
        }
        if ready.len() == wanted {
            pids.extend(ready.iter().map(|e| e.pid));
            break;
        }
        assert!(settle.elapsed() < Duration::from_secs(60), "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Deleted environments are cleaned up asynchronously: wait for the descriptors to come back.
    let mut fds_after = fds(agent.pid());
    while fds_after > fds_before && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_after = fds(agent.pid());
    }
    let rss_after = rss_kib(agent.pid());
    println!(
        "soak: {:.1} s, {callers} callers, {wanted} environments: {} invokes ({:.0}/s), outcomes {:?}, \
         throttled {}, runtimes killed {kills}, environments replaced {replaced}; agent fds {fds_before} -> \
         {fds_after}, RSS {rss_before} -> {rss_after} KiB",
        elapsed.as_secs_f64(),
        tally.sent,
        tally.sent as f64 / elapsed.as_secs_f64(),
        tally.outcomes,
        tally.throttled,
    );
    assert!(
        fds_after <= fds_before,
        "the agent's descriptors grew: {fds_before} -> {fds_after}"
    );
    // Memory may settle a little higher (allocator arenas, connection buffers); a leak per invoke or per
    // environment would grow with the run. Generous bound; the figures are in docs/RELIABILITY.md.
    assert!(
        rss_after <= rss_before + rss_before / 2 + 8 * 1024,
        "the agent's RSS grew: {rss_before} -> {rss_after} KiB"
    );
    agent.stop_and_assert_clean(&pids);
}
