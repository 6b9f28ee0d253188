//! Function logs against the real daemon and real Python runtimes: one record per line with the right
//! requestId under concurrency, nothing lost at normal rates, bounded memory and counted drops under a flood,
//! garbage on the log socket, and rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    sync::mpsc,
    time::Duration,
};

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use serde_json::{json, Value};
use support::*;

/// `lmictl logs FUNCTION` (no follow): every record in the files.
fn read_all(socket: &Path, function: &str) -> Vec<Value> {
    let out = Command::new(LMICTL_BIN)
        .args([
            "--socket",
            &socket.display().to_string(),
            "logs",
            function,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Resident and peak resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invokes_log_one_record_per_line_with_their_request_id() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("chatty", "log_lines.handler");
    spec.max_concurrency = 8;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let dir = shared_dir();
    const LINES: usize = 300;
    // The rendezvous holds all 8 invokes in flight before any writes: their lines interleave.
    let event =
        json!({"lines": LINES, "dir": dir.path().display().to_string(), "count": 8, "max_s": 120});
    let ids: BTreeSet<String> = invoke_all_ok(&agent, "chatty", vec![event; 8])
        .await
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids.len(), 8);
    let live = agent.get(&env.id).await;
    // The agent may still be reading the last lines (the count is complete at the end record, below).
    assert!(live.log_records > 0, "{live:?}");
    assert_eq!(live.log_records_dropped, 0);

    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, "chatty", &env.id).await;

    let mut per_id: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["function"], "chatty");
        assert_eq!(r["version"], "$LATEST");
        assert_eq!(r["environment"], env.id.as_str());
        let t = record_text(r);
        let mut words = t.split(' ');
        if words.next() == Some("line") {
            let i: usize = words.next().unwrap().parse().unwrap();
            let rid = words.next().unwrap().to_owned();
            assert_eq!(
                r["requestId"],
                rid.as_str(),
                "a line carries its own invoke's id: {r}"
            );
            assert!(r["stream"].as_str().unwrap().starts_with("socket-"), "{r}");
            assert!(r["pid"].as_u64().is_some(), "{r}");
            assert_eq!(r["level"], "INFO");
            assert!(
                per_id.entry(rid).or_default().insert(i),
                "line {i} twice: {r}"
            );
        }
    }
    assert_eq!(per_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    for (rid, lines) in &per_id {
        assert_eq!(lines.len(), LINES, "{rid}: lines lost");
        // A print of two lines is two records, both with the id; the logging line too.
        for want in ["first of two", "second of two", &format!("logging {rid}")] {
            let n = records
                .iter()
                .filter(|r| record_text(r) == want && r["requestId"] == rid.as_str())
                .count();
            assert_eq!(n, 1, "{want:?} of {rid}");
        }
    }
    let end = records.last().unwrap();
    assert_eq!(end["dropped_total"], 0, "{end}");
    let runtime_records = records
        .iter()
        .filter(|r| r["stream"] != "lmi-agent")
        .count();
    assert_eq!(end["records"], runtime_records as u64, "{end}");

    // Read once (no follow), the file holds the same records.
    let socket = agent.socket.clone();
    let again = tokio::task::spawn_blocking(move || read_all(&socket, "chatty"))
        .await
        .unwrap();
    assert_eq!(again, records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_keeps_the_agent_bounded_and_counts_what_it_drops() {
    require_root!();
    const QUEUE_BYTES: u64 = 4 * 1024 * 1024;
    const FLOOD_MB: u64 = 128;
    let mut agent = TestAgent::start_with(AgentOptions {
        // The stdout sink only, and nobody reads the agent's stdout during the flood: the sink stalls like a
        // journald that does not keep up, so the queue fills and drops, whatever the speed of this machine.
        extra_config: format!(
            "[logs]\nsinks = [\"stdout\"]\nqueue_records = 1024\nqueue_bytes = {QUEUE_BYTES}\nmax_line_bytes = 16384\n"
        ),
        pipe_stdout: true,
        ..Default::default()
    })
    .await;
    let stdout = agent.take_stdout().unwrap();
    let mut spec = python_spec("flood", "flood.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 300;
    let env = agent.create_ready(spec).await;
    let pid = agent.pid();
    let (rss_before, _) = rss_kib(pid);

    let r = agent
        .invoke("flood", json!({"mb": FLOOD_MB, "line_bytes": 1024}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let produced = payload_json(&r)["lines"].as_u64().unwrap();
    assert!(produced >= FLOOD_MB * 1024, "{produced}");
    let (_, peak) = rss_kib(pid);
    // Bound: the queue's bytes plus generous room for the runtime's allocator, stacks and buffers. An agent
    // that queued the flood would hold ~FLOOD_MB MiB more.
    let bound_kib = QUEUE_BYTES / 1024 + 48 * 1024;
    assert!(
        peak.saturating_sub(rss_before) < bound_kib,
        "agent peak RSS grew by {} KiB during a {FLOOD_MB} MiB flood (bound {bound_kib} KiB)",
        peak.saturating_sub(rss_before)
    );
    let live = agent.get(&env.id).await;
    assert!(live.log_records_dropped > 0, "{live:?}");

    // Now read the agent's stdout: the stalled sink drains; delete the environment and wait for its end record.
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let r: Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(r).is_err() {
                break;
            }
        }
    });
    agent.delete(&env.id).await;
    let env_id = env.id.clone();
    let records = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        loop {
            let r = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("no end record on stdout");
            let done = is_end_of(&r, &env_id);
            v.push(r);
            if done {
                return v;
            }
        }
    })
    .await
    .unwrap();
    let flood_seen = records
        .iter()
        .filter(|r| record_text(r).starts_with("flood "))
        .count() as u64;
    let end = records.last().unwrap();
    let dropped_total = end["dropped_total"].as_u64().unwrap();
    let reported: u64 = records
        .iter()
        .filter(|r| r["stream"] == "lmi-agent")
        .map(|r| r["dropped"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        reported, dropped_total,
        "every drop is reported once in the log"
    );
    assert!(dropped_total >= live.log_records_dropped);
    assert!(
        flood_seen > 0 && flood_seen < produced,
        "{flood_seen} of {produced}"
    );
    // Every line the flood wrote, and the platform's 3 records of its one invoke (START, END, REPORT), was
    // either written by the sink or counted as dropped. Besides those, the only lines of this runtime are its
    // 2 workers' exit lines when the environment is deleted (`GET /next answered 500`): the queue may still
    // be full then, so they may be dropped too.
    let platform_seen = records.iter().filter(|r| r["stream"] == "platform").count() as u64;
    assert!(platform_seen <= 3);
    let accounted = (produced - flood_seen) + (3 - platform_seen);
    assert!(
        (accounted..=accounted + 2).contains(&dropped_total),
        "{accounted} flood and platform records missing, {dropped_total} dropped: {end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_log_socket_does_not_hurt_the_agent() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: "[logs]\nmax_line_bytes = 4096\n".into(),
        ..Default::default()
    })
    .await;
    let mut spec = python_spec("garbage", "actions.handler");
    spec.max_concurrency = 2;
    let env = agent.create_ready(spec).await;
    let path = agent
        .state_dir()
        .join("log-sockets")
        .join(&env.id)
        .join("log.sock");
    assert!(path.exists(), "{}", path.display());
    let (rss_before, _) = rss_kib(agent.pid());

    let garbage = std::thread::spawn({
        let path = path.clone();
        move || {
            let mut s = UnixStream::connect(&path).unwrap();
            // 8 MiB of pseudo-random bytes without a newline, then invalid UTF-8, NULs and escape sequences.
            let mut x: u32 = 12345;
            let blob: Vec<u8> = (0..8 * 1024 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    match (x >> 7) as u8 {
                        b'\n' => 0,
                        b => b,
                    }
                })
                .collect();
            s.write_all(&blob).unwrap();
            s.write_all(b"\n\xff\xfe\xfd\n\x00\x00\x00\n\x1b[31m{\"requestId\":\n{\"requestId\":\"6a1c0f8e-0000-4000-8000-00000000beef\",\"level\":7}\n")
                .unwrap();
            // Half a line, then the connection closes.
            s.write_all(b"unfinished").unwrap();
        }
    });
    // The agent read all of it (the socket buffer is far smaller than 8 MiB): the connection was accepted.
    garbage.join().unwrap();
    // Many connections at once: beyond the limit (2 × 2 + 16) they are closed by the agent.
    let mut conns: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let mut refused = 0;
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 1];
        if matches!(c.read(&mut b), Ok(0)) {
            refused += 1;
        }
    }
    assert!(refused > 0, "no connection beyond the limit was refused");
    drop(conns);

    // The agent and the environment carry on.
    let r = agent
        .invoke("garbage", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let (_, peak) = rss_kib(agent.pid());
    assert!(
        peak.saturating_sub(rss_before) < 64 * 1024,
        "peak RSS grew by {} KiB",
        peak - rss_before
    );
    assert_eq!(
        agent.get(&env.id).await.state(),
        pb::EnvironmentState::Ready
    );

    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, "garbage", &env.id).await;
    assert!(
        !path.exists(),
        "the socket file is removed with the environment"
    );
    let split = records.iter().filter(|r| r["split"] == true).count();
    assert!(split >= 8 * 1024 * 1024 / 4096 - 1, "{split} split pieces");
    let with_id: Vec<&Value> = records
        .iter()
        .filter(|r| r["requestId"] == "6a1c0f8e-0000-4000-8000-00000000beef")
        .collect();
    assert_eq!(
        with_id.len(),
        1,
        "the JSON line among the garbage keeps its requestId"
    );
    assert!(
        with_id[0].get("level").is_none(),
        "a non-string level is not lifted"
    );
    assert!(records.iter().any(|r| r["message"] == "unfinished"));
    let end = records.last().unwrap();
    assert!(end["refused_connections"].as_u64().unwrap() > 0, "{end}");
    assert_eq!(end["split_lines"].as_u64().unwrap(), split as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_sink_rotates_and_keeps_k_files() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: "[logs]\nmax_file_bytes = 8192\nkeep_files = 2\n".into(),
        ..Default::default()
    })
    .await;
    let env = agent
        .create_ready(python_spec("rotating", "log_lines.handler"))
        .await;
    let socket = agent.socket.clone();
    let first = agent.invoke("rotating", json!({"lines": 1})).await.unwrap();
    let mut follower = LogFollower::start(&socket, "rotating");
    let want = format!("logging {}", first.request_id);
    follower = tokio::task::spawn_blocking(move || {
        follower.until(&want, |r| record_text(r) == want);
        follower
    })
    .await
    .unwrap();
    // Each invoke writes ~5 KiB, less than a file, so at most one rotation happens between two of the
    // follower's polls; it is waited for after each invoke, so it never falls behind by more than that.
    for _ in 0..12 {
        let r = agent
            .invoke("rotating", json!({"lines": 10}))
            .await
            .unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        let want = format!("logging {}", r.request_id);
        follower = tokio::task::spawn_blocking(move || {
            follower.until(&want, |r| record_text(r) == want);
            follower
        })
        .await
        .unwrap();
    }
    agent.delete(&env.id).await;
    let env_id = env.id.clone();
    let followed = tokio::task::spawn_blocking(move || {
        follower.until(&env_id, |r| is_end_of(r, &env_id));
        follower.finish()
    })
    .await
    .unwrap();
    let lines = followed
        .iter()
        .filter(|r| record_text(r).starts_with("line "))
        .count();
    if lines != 1 + 12 * 10 {
        let summary: Vec<String> = followed
            .iter()
            .map(|r| format!("{} {}", r["requestId"], record_text(r)))
            .collect();
        panic!(
            "following across rotations lost lines: {lines}\n{}",
            summary.join("\n")
        );
    }

    let dir = agent.state_dir().join("logs").join("rotating");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["$LATEST.log", "$LATEST.log.1", "$LATEST.log.2"]);
    for n in &names {
        let len = std::fs::metadata(dir.join(n)).unwrap().len();
        assert!(len <= 8192, "{n}: {len} bytes");
    }
    // Read back oldest first: what is kept is the newest records, in order, ending with the end record.
    let socket = agent.socket.clone();
    let kept = tokio::task::spawn_blocking(move || read_all(&socket, "rotating"))
        .await
        .unwrap();
    assert!(kept.len() < followed.len(), "older files were deleted");
    assert_eq!(kept[..], followed[followed.len() - kept.len()..]);
    assert_eq!(kept.last().unwrap()["message"], LOG_CAPTURE_ENDED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_client_logs_through_the_socket() {
    require_root!();
    const N: usize = 4;
    const LINES: usize = 50;
    let mut agent = TestAgent::start().await;
    let mut spec = python_ric_spec("ric-logs", "ric_app.handler");
    spec.max_concurrency = N as u32;
    let env = agent.create_ready(spec).await;
    let main_pid = u64::from(env.pid);
    let event = json!({"action": "log", "lines": LINES});
    let ids: BTreeSet<String> = invoke_all_ok(&agent, "ric-logs", vec![event; N])
        .await
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, "ric-logs", &env.id).await;
    let mut per_id: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for r in &records {
        let t = record_text(r);
        let mut words = t.split(' ');
        if words.next() != Some("ric") {
            continue;
        }
        let i: usize = words.next().unwrap().parse().unwrap();
        let rid = words.next().unwrap().to_owned();
        // awslambdaric's own JSON line, kept as written, with its requestId lifted.
        assert_eq!(r["requestId"], rid.as_str(), "{r}");
        assert_eq!(r["message"]["requestId"], rid.as_str(), "{r}");
        assert_eq!(r["message"]["logger"], "fixture.ric", "{r}");
        assert_eq!(r["level"], "INFO");
        assert!(r["stream"].as_str().unwrap().starts_with("socket-"), "{r}");
        assert_ne!(r["pid"], main_pid, "written by a forked worker: {r}");
        assert!(per_id.entry(rid).or_default().insert(i), "twice: {r}");
    }
    assert_eq!(per_id.keys().cloned().collect::<BTreeSet<_>>(), ids);
    for (rid, lines) in &per_id {
        assert_eq!(lines.len(), LINES, "{rid}");
    }
    assert_eq!(records.last().unwrap()["dropped_total"], 0);
}

// ---------------------------------------------------------------------------------------------------------
// The platform's records of each invoke, and the request id of the official clients' text formats
// ---------------------------------------------------------------------------------------------------------

/// The records of `id` in the order they were written.
fn of_id<'a>(records: &'a [Value], id: &str) -> Vec<(usize, &'a Value)> {
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["requestId"] == id)
        .collect()
}

/// The `type`s of the platform records of `id`, in order.
fn platform_types(records: &[Value], id: &str) -> Vec<String> {
    of_id(records, id)
        .into_iter()
        .filter(|(_, r)| r["stream"] == "platform")
        .map(|(_, r)| r["type"].as_str().unwrap().to_owned())
        .collect()
}

fn platform_record<'a>(records: &'a [Value], id: &str, kind: &str) -> (usize, &'a Value) {
    of_id(records, id)
        .into_iter()
        .find(|(_, r)| r["stream"] == "platform" && r["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} record for {id}"))
}

async fn invoke_with_id(
    agent: &TestAgent,
    function: &str,
    id: &str,
    payload: Value,
) -> pb::InvokeResponse {
    let mut client = agent.client.clone();
    client
        .invoke(pb::InvokeRequest {
            function_name: function.into(),
            request_id: id.into(),
            payload: payload.to_string().into_bytes().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_records_bracket_every_invoke_with_its_outcome() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("platform", "actions.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 1;
    let env = agent.create_ready(spec).await;

    let ok = agent
        .invoke("platform", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(ok.outcome(), Out::Success, "{ok:?}");
    let failed = agent
        .invoke("platform", json!({"action": "raise", "message": "no"}))
        .await
        .unwrap();
    assert_eq!(failed.outcome(), Out::FunctionError, "{failed:?}");
    // Outlives its 1 s timeout: the caller gets the timeout while the code still runs.
    let slow = agent
        .invoke("platform", json!({"action": "sleep", "s": 30}))
        .await
        .unwrap();
    assert_eq!(slow.outcome(), Out::Timeout, "{slow:?}");
    // A caller-chosen id (not a UUID) is bracketed the same way.
    let chosen = invoke_with_id(&agent, "platform", "order-42.a", json!({"action": "echo"})).await;
    assert_eq!(chosen.outcome(), Out::Success, "{chosen:?}");
    assert_eq!(chosen.request_id, "order-42.a");

    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, "platform", &env.id).await;

    for (r, status) in [(&ok, "success"), (&failed, "error"), (&chosen, "success")] {
        let id = r.request_id.as_str();
        assert_eq!(
            platform_types(&records, id),
            ["platform.start", "platform.end", "platform.report"],
            "{id}"
        );
        let (_, start) = platform_record(&records, id, "platform.start");
        assert_eq!(
            start["message"],
            format!("START RequestId: {id} Version: $LATEST")
        );
        assert_eq!(start["environment"], env.id.as_str());
        let (_, end) = platform_record(&records, id, "platform.end");
        assert_eq!(end["message"], format!("END RequestId: {id}"));
        let (_, report) = platform_record(&records, id, "platform.report");
        assert_eq!(report["status"], status);
        let m = report["message"].as_str().unwrap();
        let fields: Vec<&str> = m.split('\t').collect();
        assert_eq!(fields[0], format!("REPORT RequestId: {id}"), "{m}");
        assert!(
            fields[1].starts_with("Duration: ") && fields[1].ends_with(" ms"),
            "{m}"
        );
        assert_eq!(fields[2], format!("Status: {status}"), "{m}");
        assert!(report["durationMs"].as_f64().is_some(), "{report}");
    }
    let (_, report) = platform_record(&records, &failed.request_id, "platform.report");
    let error_type = &failed.error.as_ref().unwrap().error_type;
    assert_eq!(report["errorType"], error_type.as_str());
    assert!(report["message"]
        .as_str()
        .unwrap()
        .ends_with(&format!("\tError Type: {error_type}")));

    // The timeout: Lambda's line, then END and REPORT with status timeout.
    let id = slow.request_id.as_str();
    assert_eq!(
        platform_types(&records, id),
        [
            "platform.start",
            "platform.timeout",
            "platform.end",
            "platform.report"
        ]
    );
    let (_, line) = platform_record(&records, id, "platform.timeout");
    assert_eq!(
        line["message"],
        format!(
            "{} {id} Task timed out after 1.00 seconds",
            line["timestamp"].as_str().unwrap()
        )
    );
    assert_eq!(
        platform_record(&records, id, "platform.report").1["status"],
        "timeout"
    );

    // Each invoke's start is written before anything else about it, and the capture's end record is last.
    for r in [&ok, &failed, &slow, &chosen] {
        let first = of_id(&records, &r.request_id)[0].1;
        assert_eq!(first["type"], "platform.start", "{first}");
    }
    assert!(is_end_of(records.last().unwrap(), &env.id));
}

/// A copy of `fixture` (a tests/fixtures directory) whose bootstrap runs the original one with the official
/// client's text log format (the agent sets JSON, Lambda Managed Instances' only format; the clients' text
/// format is what they write elsewhere).
fn with_text_log_format(fixture: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures(fixture)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let name = entry.file_name();
            let to = if name == "bootstrap" {
                dir.path().join("bootstrap.json")
            } else {
                dir.path().join(&name)
            };
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    let bootstrap = dir.path().join("bootstrap");
    std::fs::write(
        &bootstrap,
        "#!/bin/sh\nAWS_LAMBDA_LOG_FORMAT=Text exec sh \"$LAMBDA_TASK_ROOT/bootstrap.json\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&bootstrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_and_node_clients_lines_carry_their_invokes_request_id() {
    require_root!();
    let mut agent = TestAgent::start().await;
    // Python awslambdaric: `[INFO]\t<timestamp>\t<requestId>\t<message>`.
    let py_code = with_text_log_format("python-ric");
    let mut py = python_ric_spec("ric-text-py", "ric_app.handler");
    py.code = Some(pb::Code {
        source: Some(pb::code::Source::Directory(
            py_code.path().display().to_string(),
        )),
        sha256: String::new(),
    });
    py.max_concurrency = 2;
    // Node aws-lambda-ric: it writes its JSON format in this mode whatever AWS_LAMBDA_LOG_FORMAT says, and
    // `"requestId":"-"` outside an invoke (not lifted).
    let ric = test_tools().join("aws-lambda-ric/node_modules/aws-lambda-ric");
    assert!(
        ric.join("index.mjs").is_file(),
        "aws-lambda-ric is not built; run tests/setup.sh"
    );
    let mut node = code_spec(
        "ric-text-node",
        "provided.al2023",
        "actions.handler",
        &fixtures("node"),
    );
    node.max_concurrency = 2;
    node.timeout_seconds = 60;
    node.environment
        .insert("LMI_NODE_RIC".into(), ric.display().to_string());
    let py_env = agent.create_ready(py).await;
    let node_env = agent.create_ready(node).await;

    const LINES: usize = 3;
    let mut py_ids = BTreeSet::new();
    for id in [None, Some("py-chosen-1")] {
        let payload = json!({"action": "log", "lines": LINES});
        let r = match id {
            None => agent.invoke("ric-text-py", payload).await.unwrap(),
            Some(id) => invoke_with_id(&agent, "ric-text-py", id, payload).await,
        };
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        py_ids.insert(r.request_id);
    }
    let mut node_ids = BTreeSet::new();
    for _ in 0..2 {
        let r = agent
            .invoke("ric-text-node", json!({"action": "log", "lines": LINES}))
            .await
            .unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        node_ids.insert(r.request_id);
    }
    agent.delete(&py_env.id).await;
    agent.delete(&node_env.id).await;

    let py_records = logs_until_end(&agent, "ric-text-py", &py_env.id).await;
    // "ric <i> <requestId>", logged by the handler with logging.info in the client's text format.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &py_records {
        let Some(m) = r["message"].as_str() else {
            continue;
        };
        let Some(pos) = m.find("\tric ") else {
            continue;
        };
        assert!(
            m.starts_with("[INFO]\t"),
            "the client's text format, kept as written: {m:?}"
        );
        let rid = m[pos..].split(' ').nth(2).unwrap().to_owned();
        assert_eq!(r["requestId"], rid.as_str(), "{r}");
        assert_eq!(r["level"], "INFO", "{r}");
        *seen.entry(rid).or_default() += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        py_ids,
        "{seen:?}"
    );
    assert!(seen.values().all(|n| *n == LINES), "{seen:?}");

    let node_records = logs_until_end(&agent, "ric-text-node", &node_env.id).await;
    // console.log('line', i, 'of', requestId).
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &node_records {
        if r["message"]["requestId"] == "-" {
            assert!(r.get("requestId").is_none(), "{r}");
        }
        let m = record_text(r);
        if !m.starts_with("line ") {
            continue;
        }
        let rid = m.rsplit(' ').next().unwrap().to_owned();
        assert_eq!(r["requestId"], rid.as_str(), "{r}");
        assert_eq!(r["level"], "INFO", "{r}");
        *seen.entry(rid).or_default() += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        node_ids,
        "{seen:?}"
    );
    assert!(seen.values().all(|n| *n == LINES), "{seen:?}");
}
