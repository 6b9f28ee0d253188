//! The real `lmictl` binary against the real daemon, as an operator uses it: environment ids by unique prefix
//! (and an ambiguous prefix refused with the matches listed), `delete --function`, stdin read only with
//! `--payload -` (a `while read` loop keeps its input), `create --timeout` as the function's timeout with
//! progress on `--wait`, a code file its function cannot read refused at create, readable `logs` by default
//! and `--json`/`--since`/`--tail`/`--environment`, and the hints when no agent can be reached.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use lmi_proto::v1::InvokeOutcome as Out;
use serde_json::{json, Value};
use support::*;

/// Runs `lmictl --socket SOCKET ARGS` with stdin closed.
fn lmictl(socket: &Path, args: &[&str]) -> Output {
    Command::new(LMICTL_BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `lmictl` that must succeed; its stdout.
fn ok(socket: &Path, args: &[&str]) -> String {
    let out = lmictl(socket, args);
    assert!(
        out.status.success(),
        "lmictl {args:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The shortest prefix of `id` that no other id of `all` starts with.
fn unique_prefix<'a>(id: &'a str, all: &[String]) -> &'a str {
    (1..=id.len())
        .map(|n| &id[..n])
        .find(|p| all.iter().filter(|o| o.starts_with(p)).count() == 1)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_delete_by_function_stdin_and_create_timeout() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let socket = agent.socket.clone();

    // Environments of `pfx` until two ids share their first character (at most 17: 16 hex digits), and one
    // of another function.
    let mut ids: Vec<String> = Vec::new();
    let shared = loop {
        let env = agent.create(python_spec("pfx", "echo.handler")).await;
        let first = env.id[..1].to_owned();
        let clash = ids.iter().any(|i| i.starts_with(&first));
        ids.push(env.id);
        if clash {
            break first;
        }
    };
    let other = agent.create(python_spec("other", "echo.handler")).await;
    let mut all = ids.clone();
    all.push(other.id.clone());

    // A unique prefix stands for the whole id, for get and delete alike.
    let id = ids[0].clone();
    let out = ok(&socket, &["get", unique_prefix(&id, &all)]);
    assert!(out.contains(&format!("id:                {id}\n")), "{out}");
    let out = ok(&socket, &["--json", "get", unique_prefix(&other.id, &all)]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["id"], other.id.as_str());

    // An ambiguous prefix is refused, naming every match; nothing matching is NOT_FOUND.
    let out = lmictl(&socket, &["delete", &shared]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    let matching: Vec<&String> = all.iter().filter(|i| i.starts_with(&shared)).collect();
    assert!(
        err.starts_with(&format!(
            "error: environment id prefix `{shared}` matches {} environments",
            matching.len()
        )),
        "{err}"
    );
    for m in &matching {
        assert!(err.contains(m.as_str()), "{m} missing in {err}");
    }
    let out = lmictl(&socket, &["get", "no-such-env"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).starts_with("error: NOT_FOUND"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        agent
            .client
            .clone()
            .list_environments(lmi_proto::v1::ListEnvironmentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .environments
            .len(),
        all.len(),
        "nothing deleted"
    );

    // stdin is read only when asked: inside a `while read` loop every line reaches its own invoke.
    agent
        .wait_state(&other.id, &[lmi_proto::v1::EnvironmentState::Ready])
        .await;
    let script = r#"printf 'a\nb\nc\n' | while read l; do "$0" --socket "$1" invoke other --payload "{\"l\":\"$l\"}"; done"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .arg(LMICTL_BIN.path())
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let seen: Vec<&str> = answers
        .iter()
        .map(|a| a["event"]["l"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["a", "b", "c"], "each answer on its own line");
    // Without --payload the payload is {} even with data waiting on stdin, and the data stays there.
    let out = Command::new("sh")
        .args([
            "-c",
            r#"printf 'kept\n' | { "$0" --socket "$1" invoke other; cat; }"#,
        ])
        .arg(LMICTL_BIN.path())
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (answer, rest) = stdout.split_once('\n').unwrap();
    let v: Value = serde_json::from_str(answer).unwrap();
    assert_eq!(v["event"], json!({}));
    assert_eq!(rest, "kept\n", "stdin was not consumed");
    // With --payload - it is the payload.
    let out = Command::new("sh")
        .args([
            "-c",
            r#"printf '{"from":"stdin"}' | "$0" --socket "$1" invoke other --payload -"#,
        ])
        .arg(LMICTL_BIN.path())
        .arg(&socket)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["event"]["from"], "stdin");

    // delete --function: every environment of the function, drained, with progress; the other stays.
    let out = lmictl(&socket, &["delete", "--function", "pfx", "--grace", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "deleting {} environment(s) of function pfx (any version), with a grace period of 1s\n",
            ids.len()
        )),
        "{err}"
    );
    for id in &ids {
        assert!(
            err.contains(&format!("deleted {id} after ")),
            "{id} in {err}"
        );
        assert!(text(&out.stdout).contains(id.as_str()));
    }
    let out = ok(&socket, &["--json", "list"]);
    let left: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(left.len(), 1, "{out}");
    assert_eq!(left[0]["id"], other.id.as_str());
    let out = lmictl(&socket, &["delete", "--function", "pfx:$LATEST"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stderr),
        "no environments of function pfx:$LATEST; nothing deleted\n"
    );

    // create --timeout is the function's timeout; --wait reports the states it goes through.
    let code = fixtures("python").display().to_string();
    let out = lmictl(
        &socket,
        &[
            "--json",
            "create",
            "--function",
            "timed",
            "--runtime",
            "python3.11",
            "--handler",
            "echo.handler",
            "--code",
            &code,
            "--timeout",
            "7",
            "--wait",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["spec"]["timeout_seconds"], 7);
    assert_eq!(v["state"], "READY");
    let timed = v["id"].as_str().unwrap().to_owned();
    let err = text(&out.stderr);
    assert!(err.starts_with(&format!("created {timed} (")), "{err}");
    assert!(err.contains(&format!("{timed}: READY after ")), "{err}");

    // A code file the function's user cannot read is refused at create, by name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(
        fixtures("python").join("echo.py"),
        dir.path().join("echo.py"),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("echo.py"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let out = lmictl(
        &socket,
        &[
            "create",
            "--function",
            "private",
            "--runtime",
            "python3.11",
            "--handler",
            "echo.handler",
            "--code",
            &dir.path().display().to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: INVALID_ARGUMENT: spec.code.directory: {} is not readable by others (mode 0600; a directory needs o+rx, a file o+r): functions run as an unprivileged user of their own (chmod -R o+rX the code)\n",
            dir.path().join("echo.py").display()
        )
    );

    let pids: Vec<u32> = [other.id.as_str(), timed.as_str()]
        .iter()
        .map(|id| ok(&socket, &["--json", "get", id]))
        .map(|o| {
            serde_json::from_str::<Value>(&o).unwrap()["pid"]
                .as_u64()
                .unwrap() as u32
        })
        .collect();
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_readable_by_default_and_chosen_by_since_tail_and_environment() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let socket = agent.socket.clone();
    let env = agent
        .create_ready(python_spec("chatty", "log_lines.handler"))
        .await;
    let r = agent
        .invoke("chatty", json!({"lines": 4, "tag": "hello"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let rid = r.request_id.clone();
    // Deleting the environment ends its capture: every record is in the file once its end record is.
    agent.delete(&env.id).await;
    let env_id = env.id.clone();
    let s = socket.clone();
    tokio::task::spawn_blocking(move || {
        follow_logs(&s, "chatty", |r| {
            r["stream"] == "lmi-agent"
                && r["environment"] == env_id.as_str()
                && r["message"] == "log capture ended"
        })
    })
    .await
    .unwrap();

    let records: Vec<Value> = ok(&socket, &["logs", "chatty", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let readable = ok(&socket, &["logs", "chatty"]);
    let lines: Vec<&str> = readable.lines().collect();
    assert!(readable.ends_with('\n'));
    // One line a record (a multi-line message would continue on indented lines).
    let heads: Vec<&&str> = lines.iter().filter(|l| !l.starts_with("    ")).collect();
    assert_eq!(heads.len(), records.len(), "{readable}");
    for (line, record) in heads.iter().zip(&records) {
        let ts = record["timestamp"].as_str().unwrap();
        assert!(line.starts_with(&format!("{ts} ")), "{line} / {record}");
        assert!(
            !line.contains("{\""),
            "no JSON in the readable form: {line}"
        );
    }
    let hello = format!(" {rid} hello 0 {rid}");
    assert!(
        lines.iter().any(|l| l.ends_with(&hello)),
        "a runtime line shows time, level, request id, message: {readable}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!(" INFO  {rid} "))),
        "the logging.info line has its level: {readable}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!("{rid} second of two"))),
        "{readable}"
    );

    // --tail N: the last N records.
    let tail = ok(&socket, &["logs", "chatty", "--json", "--tail", "3"]);
    let want: String = records[records.len() - 3..]
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    let got: Vec<Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, records[records.len() - 3..], "{tail}\nwanted\n{want}");

    // --since: a duration covering everything, a time after everything, and a record's own time.
    assert_eq!(
        ok(&socket, &["logs", "chatty", "--json", "--since", "1h"])
            .lines()
            .count(),
        records.len()
    );
    assert_eq!(
        ok(
            &socket,
            &["logs", "chatty", "--since", "2999-01-01T00:00:00Z"]
        ),
        ""
    );
    let mid = records[records.len() / 2]["timestamp"].as_str().unwrap();
    let expected = records
        .iter()
        .filter(|r| r["timestamp"].as_str().unwrap() >= mid)
        .count();
    assert_eq!(
        ok(&socket, &["logs", "chatty", "--json", "--since", mid])
            .lines()
            .count(),
        expected
    );
    let out = lmictl(&socket, &["logs", "chatty", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(3));

    // --environment: a prefix of a deleted environment's id still selects its records (matched on the
    // records); a prefix of nothing selects none.
    let prefix = &env.id[..8];
    assert_eq!(
        ok(
            &socket,
            &["logs", "chatty", "--json", "--environment", prefix]
        )
        .lines()
        .count(),
        records.len()
    );
    let none = if env.id.starts_with('0') { "1" } else { "0" };
    assert_eq!(ok(&socket, &["logs", "chatty", "--environment", none]), "");

    agent.stop_and_assert_clean(&[env.pid]);
}

#[test]
fn without_an_agent_the_error_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    // No socket at all, and a socket file nobody listens on (an agent that died).
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [dir.path().join("missing.sock"), stale] {
        let out = lmictl(&socket, &["list"]);
        assert_eq!(out.status.code(), Some(3));
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "error: cannot connect to lmi-agent at unix:{}",
                socket.display()
            )),
            "{err}"
        );
        assert!(
            err.contains("\nhint: is lmi-agent running? `systemctl status lmi-agent`"),
            "{err}"
        );
        assert!(err.ends_with('\n'));
    }
}

#[test]
fn a_user_who_may_not_use_the_socket_is_told_to_be_root() {
    if lmi_testkit::needs_root("runs lmictl as another user") {
        return;
    }
    // A listening socket in a directory of mode 0700, as the agent's: `nobody` may not connect to it.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(LMICTL_BIN)
        .arg("--socket")
        .arg(&socket)
        .arg("list")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.ends_with(&format!(
            "hint: the agent's socket {} is mode 0600, owned by root: run lmictl as root (sudo lmictl …)\n",
            socket.display()
        )),
        "{err}"
    );
}

#[test]
fn completion_scripts_and_man_pages_come_from_the_binary() {
    for (shell, marker) in [
        ("bash", "complete -F _lmictl"),
        ("zsh", "#compdef lmictl"),
        ("fish", "complete -c lmictl"),
    ] {
        let out = Command::new(LMICTL_BIN)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("rpc-timeout"), "{shell}");
    }
    // bash accepts its script.
    let out = Command::new("bash")
        .args([
            "-c",
            r#"source <("$0" completion bash) && complete -p lmictl"#,
        ])
        .arg(LMICTL_BIN.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("_lmictl"),
        "{}",
        text(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(LMICTL_BIN)
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in [
        "lmictl.1",
        "lmictl-logs.1",
        "lmictl-delete.1",
        "lmictl-completion.1",
    ] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
    // man(1) renders it, when installed.
    if Command::new("man").arg("--version").output().is_ok() {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join("lmictl-delete.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "200")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("--function"),
            "{}",
            text(&out.stdout)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_delete_reports_the_invokes_it_waits_for() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let socket = agent.socket.clone();
    let env = agent
        .create_ready(python_spec("drain", "sleeper.handler"))
        .await;
    // One invoke held in the runtime until a second file appears in `dir` (bounded by 120 s).
    let dir = shared_dir();
    let held = tokio::spawn(invoke(
        agent.client.clone(),
        "drain",
        json!({"dir": dir.path().display().to_string(), "sleep_ms": 120_000, "wait_for": 2}),
    ));
    wait_for_files(dir.path(), 1).await;

    let mut child = Command::new(LMICTL_BIN)
        .arg("--socket")
        .arg(&socket)
        .args(["delete", "--function", "drain", "--grace", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let id = env.id.clone();
    // Read the progress until the held invoke is reported, then release it.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let draining = format!("draining {id}: 1 invoke(s) in flight");
    while !seen.contains(&draining) {
        let line = lines_rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no progress line ({e}); got {seen:#?}"));
        seen.push(line);
    }
    std::fs::write(dir.path().join("release"), b"").unwrap();
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Success, "drained, not cut off: {r:?}");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    seen.extend(lines_rx.iter());
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("deleted {id} after "))),
        "{seen:#?}"
    );
    assert!(text(&out.stdout).contains(id.as_str()));
    agent.stop_and_assert_clean(&[env.pid]);
}
