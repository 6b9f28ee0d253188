//! `lmi-agent demo`, the README's first command, as a new user runs it: on a machine without the network
//! sandbox's tools it must still run end to end and say in one line what it left out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{path::PathBuf, process::Command};

use support::*;

/// The files `ip` and `nft` resolve to where the agent looks for them (`PATH`, then the sbin directories).
fn network_tools() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .collect();
    let mut found = Vec::new();
    for tool in ["ip", "nft"] {
        for d in &dirs {
            if let Ok(real) = d.join(tool).canonicalize() {
                if !found.contains(&real) {
                    found.push(real);
                }
            }
        }
    }
    found
}

#[test]
fn demo_runs_without_ip_and_nft_and_says_isolation_is_off() {
    require_root!();
    // A private mount namespace in which every `ip` and `nft` on this host is covered by /dev/null (not an
    // executable file): for the demo they are absent, as on a machine without iproute2 and nftables.
    let mut script = String::from("set -e\n");
    for t in network_tools() {
        script.push_str(&format!("mount --bind /dev/null '{}'\n", t.display()));
    }
    script.push_str(
        "if command -v ip || command -v nft; then echo 'ip or nft still found' >&2; exit 99; fi\n\
         exec \"$0\" demo\n",
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(AGENT_BIN)
        .output()
        .expect("running unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let fallback: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("network isolation: off"))
        .collect();
    assert_eq!(
        fallback,
        ["network isolation: off (`ip` and `nft` not found): environments share the host's network and \
          loopback; install iproute2 and nftables to give each its own network namespace"],
        "{stdout}"
    );
    // The rest of the demo ran: the burst was throttled, and nothing was left behind.
    assert!(
        stdout.contains("ResourceExhausted [CONCURRENCY]"),
        "{stdout}"
    );
    assert!(stdout.contains("\nclean: no cgroup named"), "{stdout}");
}

#[test]
fn demo_from_a_checkout_under_tmp_gives_runtimes_a_copy_of_the_shims() {
    require_root!();
    // As from a checkout under /tmp: the shims lie where runtimes cannot see them (their /tmp is their own).
    let checkout = tempfile::tempdir().unwrap();
    let shims = checkout.path().join("runtime-shims");
    let status = Command::new("cp")
        .arg("-a")
        .arg(repo().join("runtime-shims"))
        .arg(&shims)
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(AGENT_BIN)
        .arg("--shims-dir")
        .arg(&shims)
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("runtime shims: a copy in /run/lmi-demo-shims-"))
        .unwrap_or_else(|| panic!("no line about the shims' copy:\n{stdout}"));
    // Invokes ran in the Python runtime from the copy, and the copy is gone with the demo.
    assert!(stdout.contains(" 8 succeeded on"), "{stdout}");
    let copy = line
        .trim_start_matches("runtime shims: a copy in ")
        .split(", which")
        .next()
        .unwrap();
    assert!(!std::path::Path::new(copy).exists(), "{copy} left behind");
}
