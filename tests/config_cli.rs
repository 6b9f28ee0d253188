//! `lmi-agent check-config` through the real binary: the effective configuration with its sources, and errors
//! that name the key (unknown keys, bad values, from the file, the environment and flags). Needs no root.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, process::Command};

mod support;
use support::AGENT_BIN;

/// Runs `lmi-agent ARGS` with no `LMI_AGENT_*` variable but `env`; returns (success, stdout, stderr).
fn agent(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(AGENT_BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("LMI_AGENT_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn check_config_prints_the_effective_configuration_with_sources() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "agent.toml",
        "region = \"eu-west-1\"\n[capacity]\nvcpus = 8\n[invoke_api]\nlisten = \"127.0.0.1:9001\"\n",
    );
    let (ok, out, err) = agent(
        &[
            "check-config",
            "--config",
            &f,
            "--set",
            "environments.pids_max=512",
            "--socket",
            "/tmp/x.sock",
        ],
        &[("LMI_AGENT_CAPACITY_VCPUS", "16")],
    );
    assert!(ok, "{err}");
    for line in [
        format!("region = \"eu-west-1\"  # from {f}"),
        "vcpus = 16  # from environment variable LMI_AGENT_CAPACITY_VCPUS".to_owned(),
        "pids_max = 512  # from flag --set environments.pids_max".to_owned(),
        "socket = \"/tmp/x.sock\"  # from flag --socket".to_owned(),
        format!("listen = \"127.0.0.1:9001\"  # from {f}"),
        "reserved_memory_mib = 1024".to_owned(),
        "# listen_tcp is unset".to_owned(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
    // The output is itself a valid configuration that yields the same values.
    let again = write(dir.path(), "effective.toml", &out);
    let (ok, out2, err) = agent(&["check-config", "--config", &again], &[]);
    assert!(ok, "{err}");
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split("  # from").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(strip(&out), strip(&out2));
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "agent.toml",
        "[capacity]\nvcpus = 4\nmemory_gib = 8\n",
    );
    let (ok, out, err) = agent(&["check-config", "--config", &f], &[]);
    assert!(!ok, "accepted:\n{out}");
    assert!(
        err.contains(&format!("{f}: unknown key `capacity.memory_gib`")),
        "{err}"
    );
    assert!(
        err.contains("memory_mib"),
        "the known keys are listed: {err}"
    );

    let (ok, _, err) = agent(
        &[
            "check-config",
            "--config",
            &write(dir.path(), "b.toml", "sokcet = \"/x\"\n"),
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("unknown key `sokcet`"), "{err}");

    let (ok, _, err) = agent(
        &["check-config", "--config", &write(dir.path(), "c.toml", "")],
        &[("LMI_AGENT_CAPACITY_VCPU", "4")],
    );
    assert!(!ok);
    assert!(
        err.contains(
            "environment variable LMI_AGENT_CAPACITY_VCPU does not name a configuration key"
        ),
        "{err}"
    );

    let (ok, _, err) = agent(&["check-config", "--set", "capacity.cores=4"], &[]);
    assert!(!ok);
    assert!(
        err.contains("flag --set capacity.cores: unknown key `capacity.cores`"),
        "{err}"
    );
}

#[test]
fn a_bad_value_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key, detail) in [
        ("[capacity]\nvcpus = -1\n", "capacity.vcpus", "-1"),
        ("log_format = \"xml\"\n", "log_format", "xml"),
        ("listen_tcp = \"localhost\"\n", "listen_tcp", "address"),
        (
            "[environments]\npids_max = 4\n",
            "environments.pids_max",
            "at least 16",
        ),
        ("account_id = \"12\"\n", "account_id", "12 digits"),
        (
            "[invoke_api]\nevent_queue = 0\n",
            "invoke_api.event_queue",
            "at least 1",
        ),
        ("capacity = 3\n", "capacity", "must be a table"),
    ] {
        let f = write(dir.path(), "agent.toml", text);
        let (ok, out, err) = agent(&["check-config", "--config", &f], &[]);
        assert!(!ok, "{text:?} accepted:\n{out}");
        assert!(
            err.contains(&format!("{f}: {key}:")) && err.contains(detail),
            "{text:?}: {err}"
        );
        // The file's line follows, with a caret line under it (each offending key is the file's last line).
        let n = text.lines().count();
        let shown = format!("\n{n} | {}\n  |", text.lines().last().unwrap());
        assert!(err.contains(&shown), "{text:?}: no {shown:?} in:\n{err}");
    }
    let (ok, _, err) = agent(
        &["check-config"],
        &[
            ("LMI_AGENT_ENVIRONMENTS_PIDS_MAX", "lots"),
            ("LMI_AGENT_CONFIG", "/nonexistent/agent.toml"),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/agent.toml"),
        "the missing file is reported first: {err}"
    );
    let f = write(dir.path(), "ok.toml", "");
    let (ok, _, err) = agent(
        &["check-config", "--config", &f],
        &[("LMI_AGENT_ENVIRONMENTS_PIDS_MAX", "lots")],
    );
    assert!(!ok);
    assert!(err.contains("environment variable LMI_AGENT_ENVIRONMENTS_PIDS_MAX: environments.pids_max: expected an integer"), "{err}");
    let (ok, _, err) = agent(
        &["check-config", "--config", &f, "--cgroup-parent", "a/b"],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("flag --cgroup-parent: cgroup_parent:"),
        "{err}"
    );
}

#[test]
fn version_is_printed() {
    let (ok, out, _) = agent(&["--version"], &[]);
    assert!(ok);
    assert_eq!(
        out.trim(),
        format!("lmi-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A TOML syntax error is shown as the parser shows it: where (line and column), the line itself with a caret
/// under the column, and what was expected, on lines of their own; by `check-config` and by a start alike.
#[test]
fn a_toml_syntax_error_keeps_the_parsers_caret_display() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "agent.toml",
        "region = \"eu-west-1\"\n[capacity]\nvcpus = = 8\n",
    );
    for args in [vec!["check-config", "--config", &f], vec!["--config", &f]] {
        let (ok, _, err) = agent(&args, &[]);
        assert!(!ok, "{args:?} accepted the file");
        assert!(
            err.contains(&format!("{f}: TOML parse error at line 3, column 9\n")),
            "{args:?}: {err}"
        );
        let lines: Vec<&str> = err.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.ends_with("| vcpus = = 8"))
            .unwrap_or_else(|| panic!("{args:?}: the offending line is not shown:\n{err}"));
        // The caret line sits under the source line, its `^` under column 9 (the second `=`).
        let source = lines[at];
        let caret = lines[at + 1];
        let margin = source.find('|').unwrap() + 2;
        assert_eq!(
            caret.find('^'),
            Some(margin + 8),
            "{args:?}: caret misplaced:\n{err}"
        );
        assert!(
            lines.len() > at + 2 && !lines[at + 2].trim().is_empty(),
            "{args:?}: no explanation after the caret:\n{err}"
        );
    }
}

/// Every address-typed key takes `host:port` (resolved with the system resolver when the configuration is
/// loaded) as well as IP literals, and a name that does not resolve is an error naming the key.
#[test]
fn listen_addresses_take_host_names() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "agent.toml",
        "metrics_listen = \"localhost:9464\"\nlisten_tcp = \"localhost:50051\"\n\
         [invoke_api]\nlisten = \"localhost:9001\"\n",
    );
    let (ok, out, err) = agent(&["check-config", "--config", &f], &[]);
    assert!(ok, "{err}");
    for (key, port) in [
        ("metrics_listen", 9464),
        ("listen_tcp", 50051),
        ("listen", 9001),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{out}"));
        let value = line.split('"').nth(1).unwrap();
        let addr: std::net::SocketAddr = value
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {value:?} is not the resolved address: {e}"));
        assert!(addr.ip().is_loopback() && addr.port() == port, "{line}");
    }
    // The same through an environment variable, and IP literals as before.
    let empty = write(dir.path(), "empty.toml", "");
    let (ok, out, err) = agent(
        &["check-config", "--config", &empty],
        &[
            ("LMI_AGENT_METRICS_LISTEN", "localhost:9464"),
            ("LMI_AGENT_INVOKE_API_LISTEN", "[::1]:9001"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"[::1]:9001\""), "{out}");
    // `.invalid` never resolves (RFC 6761).
    let bad = write(
        dir.path(),
        "bad.toml",
        "metrics_listen = \"no-such-host.invalid:9464\"\n",
    );
    let (ok, _, err) = agent(&["check-config", "--config", &bad], &[]);
    assert!(!ok);
    assert!(
        err.contains(&format!("{bad}: metrics_listen:"))
            && err.contains("cannot resolve host `no-such-host.invalid`"),
        "{err}"
    );
}

/// Text logs written to a pipe (a file, the journal) carry no ANSI colour codes.
#[test]
fn text_logs_to_a_pipe_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A start that fails at its first step, after logging an ERROR (the level is coloured on a terminal):
    // shims under the state directory, which runtimes cannot see.
    let shims = state.join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let empty = write(dir.path(), "empty.toml", "");
    let (ok, _, err) = agent(
        &[
            "--config",
            &empty,
            "--log-format",
            "text",
            "--state-dir",
            state.to_str().unwrap(),
            "--shims-dir",
            shims.to_str().unwrap(),
            "--socket",
            dir.path().join("agent.sock").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok, "the start should have failed:\n{err}");
    assert!(err.contains("start-up failed"), "no log line:\n{err}");
    assert!(err.contains("ERROR"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in piped logs:\n{err:?}"
    );
}
