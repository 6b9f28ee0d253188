//! What the sandbox costs per environment, on this host: `Sandbox::prepare` (uid, network namespace with its
//! Runtime API listener, veth pair; the figure the agent logs as `sandbox_setup_us`), the extra time a
//! confined spawn takes over a plain one (the seccomp filter's install included), the release (veth
//! removal), and the seccomp filter on its own: compiling it (once per agent) and installing it (in each
//! runtime, before `exec`). Needs root, `ip` and `nft`.
//!
//! `cargo bench -p lmi-benches --bench sandbox_setup` (LMI_BENCH_N environments, default 50).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::Command,
    time::{Duration, Instant},
};

use lmi_agent_core::config::SandboxConfig;
use lmi_sandbox::ephemeral::EphemeralStorage;
use lmi_sandbox::{seccomp::Filter, Sandbox};

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: the sandbox needs root");
        return;
    }
    let n: usize = std::env::var("LMI_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let state = tempfile::Builder::new()
        .prefix("lmi-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let code = state.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = SandboxConfig {
        uid_first: 5_000_000,
        uid_count: 1024,
        network_isolation: true,
        network: "10.248.0.0/20".to_owned(),
        // Nothing made ahead: `prepare` here is the full cost of a slot made on demand (what the pool takes
        // off the create path).
        network_pool: 0,
        seccomp: true,
    };
    let instance = format!("lmi-bench-{}", std::process::id());
    let sandbox = Sandbox::start(&config, &state.path().join("state"), &instance).unwrap();
    let (mut prepare, mut plain, mut confined, mut release) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("{i:08x}-bench");
        let tmp_dir = state.path().join("state/envs").join(&id).join("tmp");
        let tmp = EphemeralStorage::create(&tmp_dir, 16).unwrap();

        let log_dir = state.path().join("log-sockets").join(&id);
        std::fs::create_dir_all(&log_dir).unwrap();
        let log_socket = log_dir.join("log.sock");
        let log_listener = std::os::unix::net::UnixListener::bind(&log_socket).unwrap();

        let t = Instant::now();
        let prepared = sandbox.prepare(&code, &tmp_dir, &log_socket).unwrap();
        prepare.push(t.elapsed());

        let t = Instant::now();
        assert!(Command::new("/bin/true").status().unwrap().success());
        plain.push(t.elapsed());
        let confinement = prepared.confinement;
        let mut cmd = Command::new("/bin/true");
        // SAFETY: Confinement::enter only makes system calls on values prepared before fork.
        unsafe {
            cmd.pre_exec(move || confinement.enter());
        }
        let t = Instant::now();
        assert!(cmd.status().unwrap().success());
        confined.push(t.elapsed());

        drop(prepared.listener);
        let t = Instant::now();
        prepared.lease.release(true);
        release.push(t.elapsed());
        tmp.remove().unwrap();
        drop(log_listener);
        std::fs::remove_dir_all(&log_dir).unwrap();
        let _ = std::fs::remove_dir(tmp_dir.parent().unwrap());
    }
    sandbox.shutdown();
    println!("{n} environments, network isolation on");
    report("prepare (uid + netns + listener + veth)", &mut prepare);
    report("spawn /bin/true, plain", &mut plain);
    report("spawn /bin/true, confined", &mut confined);
    report("release (veth removal)", &mut release);

    let (mut compile, mut install) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let filter = Filter::compile().unwrap();
        compile.push(t.elapsed());
        install.push(install_in_child(&filter));
    }
    println!(
        "seccomp filter: {} BPF instructions",
        Filter::compile().unwrap().instructions()
    );
    report_us("seccomp compile (once per agent)", &mut compile);
    report_us("seccomp install (per runtime, in the child)", &mut install);
}

/// Forks, installs `filter` in the child and times it there (the parent must stay unfiltered).
fn install_in_child(filter: &Filter) -> Duration {
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: the child makes system calls only (clock reads, seccomp, write, _exit).
    let pid = unsafe { nix::libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let t = Instant::now();
        let ok = filter.install().is_ok();
        let nanos: u64 = if ok {
            t.elapsed().as_nanos() as u64
        } else {
            u64::MAX
        };
        // SAFETY: write(2) of a local buffer, then _exit.
        unsafe {
            nix::libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&w),
                nanos.to_ne_bytes().as_ptr().cast(),
                8,
            );
            nix::libc::_exit(0);
        }
    }
    drop(w);
    let mut buf = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::from(r), &mut buf).unwrap();
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    let nanos = u64::from_ne_bytes(buf);
    assert_ne!(nanos, u64::MAX, "installing the filter failed");
    Duration::from_nanos(nanos)
}

fn report_us(what: &str, v: &mut [Duration]) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:42} p50 {:7.1} µs  p90 {:7.1} µs  max {:7.1} µs",
        us(at(0.5)),
        us(at(0.9)),
        us(at(1.0))
    );
}

fn report(what: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:42} p50 {:7.2} ms  p90 {:7.2} ms  max {:7.2} ms",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0))
    );
}
