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
