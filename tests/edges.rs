//! The agent's edges hold against a hostile or careless client (issue 13, points 4-6), on the real daemon:
//! - refused code leaks nothing: every refused zip (`../`, absolute path, a path through a link, a bomb past
//!   `code.max_unzipped_bytes`) is `INVALID_ARGUMENT` and leaves nothing under `<state_dir>/code`; a partial
//!   unpack a crash left is removed at the next start;
//! - every listener cuts a stalled head and a stalled body and holds a connection cap (`[listeners]`): the
//!   Invoke API, `/metrics` and the control API's TCP listener;
//! - a start that fails at any step after the first exits non-zero with a message naming the step and leaves
//!   no cgroup, no nftables table, no mount and no file of its own;
//! - bad input gets a bounded, clear error (point 8): a 10 kB value is quoted by a short prefix, an ARN with
//!   CR/LF is refused, a `shims_dir` the runtimes cannot see fails the start.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use lmi_proto::v1 as pb;
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

/// The generous outer bound of every wait for the server to close a connection.
const CLOSE_BOUND: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------
// Refused code

/// An entry of a test zip.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
}

fn make_zip(path: &Path, entries: &[E<'_>]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for e in entries {
        match e {
            E::File(name, data) => {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
            E::Link(name, target) => w.add_symlink(*name, *target, opts).unwrap(),
        }
    }
    w.finish().unwrap();
}

fn zip_spec(function: &str, zip: &Path) -> pb::EnvironmentSpec {
    let mut spec = python_spec(function, "main.handler");
    spec.code = Some(pb::Code {
        source: Some(pb::code::Source::ZipFile(zip.display().to_string())),
        sha256: String::new(),
    });
    spec
}

/// Everything under `dir`, links not followed.
fn contents(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                out.extend(contents(&e.path()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_refused_zip_is_invalid_argument_and_leaves_nothing_on_disk() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: "[code]\nmax_unzipped_bytes = 1048576\nmax_zip_entries = 100\n".into(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let abs = format!("{}/abs.py", outside.display());
    let main = b"def handler(e, c):\n    return e\n".as_slice();
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let many: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
    let mut cases: Vec<(&str, Vec<E<'_>>, &str)> = vec![
        (
            "dotdot",
            vec![E::File("main.py", main), E::File("../escape.py", b"x")],
            "escapes the code directory",
        ),
        (
            "absolute",
            vec![E::File("main.py", main), E::File(&abs, b"x")],
            "escapes the code directory",
        ),
        (
            "dir-link",
            vec![
                E::File("main.py", main),
                E::Link("lnk", "sub"),
                E::File("lnk/x.py", b"x"),
            ],
            "which an earlier entry made a symbolic link",
        ),
        (
            "link-outside",
            vec![E::File("main.py", main), E::Link("etc", "/etc")],
            "outside the code directory",
        ),
        (
            "bomb",
            vec![E::File("main.py", main), E::File("zeros", &zeros)],
            "code.max_unzipped_bytes",
        ),
    ];
    cases.push((
        "entries",
        many.iter().map(|n| E::File(n, b"")).collect(),
        "code.max_zip_entries",
    ));
    let code_root = agent.state_dir().join("code");
    for (label, entries, message) in &cases {
        let zip = dir.path().join(format!("{label}.zip"));
        make_zip(&zip, entries);
        if *label == "bomb" {
            assert!(
                std::fs::metadata(&zip).unwrap().len() < 64 * 1024,
                "the bomb is small"
            );
        }
        let s = agent.create_refused(zip_spec(label, &zip)).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{label}: {s:?}");
        assert!(
            s.message().starts_with("spec.code.zip_file: ") && s.message().contains(message),
            "{label}: {}",
            s.message()
        );
        assert_eq!(contents(&code_root), Vec::<PathBuf>::new(), "{label}");
        assert_eq!(contents(&outside), Vec::<PathBuf>::new(), "{label}");
    }
    // A zip within the caps, with a link inside the code, still runs.
    let good = dir.path().join("good.zip");
    make_zip(
        &good,
        &[E::File("real.py", main), E::Link("main.py", "real.py")],
    );
    agent.create_ready(zip_spec("good", &good)).await;
    let r = agent
        .invoke("good", serde_json::json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(payload_json(&r)["x"], 1);
    assert_eq!(
        std::fs::read_dir(&code_root).unwrap().count(),
        1,
        "only the accepted zip's directory"
    );
}

#[tokio::test]
async fn a_partial_unpack_left_by_a_crash_is_removed_at_the_next_start() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let stale = agent.state_dir().join("code/.unpack-left-by-a-crash");
    std::fs::create_dir_all(stale.join("d")).unwrap();
    std::fs::write(stale.join("d/f"), b"x").unwrap();
    agent.kill9();
    agent.restart().await;
    assert!(!stale.exists(), "{}", agent.log());
}

// ---------------------------------------------------------------------------------------------------------
// Listeners

/// Reads until the server closes the connection (bounded): what it sent.
async fn until_closed(s: &mut TcpStream, what: impl std::fmt::Display) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(CLOSE_BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{what}: the server did not close the connection"
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stalled head (nothing, then half a head) and a stalled body are cut on an HTTP/1 listener.
async fn http_stalls_are_cut(addr: SocketAddr, name: &str, method: &str, path: &str) {
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = TcpStream::connect(addr).await.unwrap();
    body.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"a\":")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (s, h, b) = tokio::join!(
        until_closed(&mut silent, format!("{name}: silent connection")),
        until_closed(&mut half, format!("{name}: half a head")),
        until_closed(&mut body, format!("{name}: stalled body")),
    );
    for (what, got) in [("silent", &s), ("half a head", &h)] {
        let t = text(got);
        assert!(
            got.is_empty() || t.starts_with("HTTP/1.1 408"),
            "{name}: {what}: {t}"
        );
    }
    let t = text(&b);
    assert!(t.starts_with("HTTP/1.1 408"), "{name}: stalled body: {t}");
    assert!(
        t.to_ascii_lowercase().contains("connection: close"),
        "{name}: {t}"
    );
}

/// With `max` connections held on `addr`, one more is closed at once; returns what it got.
async fn over_the_cap(addr: SocketAddr, max: usize, name: &str) -> Vec<u8> {
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Accepted in order: these `max` before the next.
    let mut over = TcpStream::connect(addr).await.unwrap();
    let got = until_closed(&mut over, format!("{name}: connection over the cap")).await;
    drop(held);
    got
}

const LISTENERS: &str =
    "[listeners]\nheader_timeout_ms = 3000\nbody_timeout_ms = 3000\nmax_connections = 3\n";

#[tokio::test]
async fn every_listener_cuts_stalled_heads_and_bodies_and_holds_its_cap() {
    require_root!();
    let (invoke, metrics, control) = (
        free_loopback_port(),
        free_loopback_port(),
        free_loopback_port(),
    );
    let agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "metrics_listen = \"127.0.0.1:{metrics}\"\nlisten_tcp = \"127.0.0.1:{control}\"\n\
             [invoke_api]\nlisten = \"127.0.0.1:{invoke}\"\n{LISTENERS}"
        ),
        ..Default::default()
    })
    .await;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    http_stalls_are_cut(
        at(invoke),
        "invoke API",
        "POST",
        "/2015-03-31/functions/f/invocations",
    )
    .await;
    http_stalls_are_cut(at(metrics), "metrics", "GET", "/metrics").await;

    // The control API over TCP (gRPC): a client that never sends the HTTP/2 preface is closed (after the
    // server's own SETTINGS).
    let mut silent = TcpStream::connect(at(control)).await.unwrap();
    until_closed(&mut silent, "control TCP: no preface").await;

    // The caps: one connection more than max_connections is closed at once, answered 503 on HTTP/1.
    for (port, name) in [(invoke, "invoke API"), (metrics, "metrics")] {
        let t = text(&over_the_cap(at(port), 3, name).await);
        assert!(t.starts_with("HTTP/1.1 503"), "{name}: {t}");
    }
    let got = over_the_cap(at(control), 3, "control TCP").await;
    assert!(
        got.is_empty(),
        "control TCP: refused before any byte: {got:?}"
    );

    // The listeners still serve.
    let text = scrape_metrics(metrics).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{control}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = lmi_proto::connect::agent_client(channel);
    client.get_host(pb::GetHostRequest {}).await.unwrap();
    drop(agent);
}

// ---------------------------------------------------------------------------------------------------------
// A failed start

/// A daemon configuration like [`TestAgent`]'s (network isolation on, its own cgroup parent, /24 and uids).
struct FailedStart {
    dir: tempfile::TempDir,
    cgroup_parent: String,
    socket: PathBuf,
    state: PathBuf,
    extra: String,
    shims: PathBuf,
}

impl FailedStart {
    fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            cgroup_parent: format!("lmi-edge-{}-{n}", std::process::id()),
            socket: dir.path().join("agent.sock"),
            state: dir.path().join("state"),
            extra: String::new(),
            shims: shims_dir(),
            dir,
        }
    }

    /// Runs the daemon, which must exit non-zero (bounded); returns its stderr.
    async fn run(&self) -> String {
        let config = format!(
            "socket = {socket:?}\nstate_dir = {state:?}\ncgroup_parent = {parent:?}\nshims_dir = {shims:?}\n\
             log_format = \"text\"\n{extra}\n[sandbox]\n{sandbox}\n",
            socket = self.socket.display().to_string(),
            state = self.state.display().to_string(),
            parent = self.cgroup_parent,
            shims = self.shims.display().to_string(),
            extra = self.extra,
            sandbox = test_sandbox(10_000 + self.cgroup_parent.len()),
        );
        let path = self.dir.path().join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let child = tokio::process::Command::new(AGENT_BIN)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the agent neither started nor failed within 60 s")
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "the start should have failed\n{stderr}"
        );
        stderr
    }

    /// No cgroup, nftables table or mount of this agent is left.
    fn assert_host_clean(&self, what: &str, stderr: &str) {
        let cgroups = find_dirs_named(Path::new("/sys/fs/cgroup"), &self.cgroup_parent, 6);
        assert_eq!(
            cgroups,
            Vec::<PathBuf>::new(),
            "{what}: cgroups left\n{stderr}"
        );
        let tables = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        let table = lmi_sandbox::nat::NatTable::name_for(&self.cgroup_parent);
        assert!(
            !text(&tables.stdout).contains(&table),
            "{what}: nft table {table} left\n{stderr}"
        );
        let root = self.dir.path().display().to_string();
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root) && *p != self.state.display().to_string())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            mounts,
            Vec::<String>::new(),
            "{what}: mounts left\n{stderr}"
        );
        assert!(!self.socket.exists(), "{what}: socket left\n{stderr}");
    }
}

impl Drop for FailedStart {
    fn drop(&mut self) {
        // Whatever a failing test left: its mounts, table and cgroups.
        let root = self.dir.path().display().to_string();
        if let Ok(m) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&root))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let table = lmi_sandbox::nat::NatTable::name_for(&self.cgroup_parent);
        for family in ["ip", "inet"] {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", family, &table])
                .stderr(Stdio::null())
                .status();
        }
        let mut dirs = find_dirs_named(Path::new("/sys/fs/cgroup"), &self.cgroup_parent, 6);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[tokio::test]
async fn a_start_that_fails_at_a_listener_leaves_nothing() {
    require_root!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cases = [
        (
            "invoke_api.listen",
            format!("[invoke_api]\nlisten = \"127.0.0.1:{port}\"\n"),
            "invoke_api.listen: binding",
        ),
        (
            "metrics_listen",
            format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
            "metrics_listen: binding",
        ),
        (
            "listen_tcp",
            format!("listen_tcp = \"127.0.0.1:{port}\"\n"),
            "TCP listener",
        ),
    ];
    for (i, (what, extra, message)) in cases.into_iter().enumerate() {
        let mut f = FailedStart::new(i);
        f.extra = extra;
        let stderr = f.run().await;
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert!(
            stderr.to_lowercase().contains("address") && stderr.to_lowercase().contains("in use"),
            "{what}: {stderr}"
        );
        f.assert_host_clean(what, &stderr);
        assert!(
            !f.state.exists(),
            "{what}: the state directory it created is left"
        );
    }
    // A socket path that cannot be bound: its parent is a file.
    let mut f = FailedStart::new(3);
    std::fs::write(f.dir.path().join("file"), b"").unwrap();
    f.socket = f.dir.path().join("file/agent.sock");
    let stderr = f.run().await;
    assert!(stderr.contains("control socket"), "{stderr}");
    f.assert_host_clean("socket", &stderr);
    assert!(
        !f.state.exists(),
        "socket: the state directory it created is left"
    );
    // A socket path too long for a Unix socket, in directories the start creates: removed again.
    let mut f = FailedStart::new(4);
    let deep = f.dir.path().join("made/by/the/start");
    f.socket = deep.join("s".repeat(120));
    let stderr = f.run().await;
    assert!(stderr.contains("control socket"), "{stderr}");
    f.assert_host_clean("long socket path", &stderr);
    assert!(
        !f.dir.path().join("made").exists(),
        "the socket's directories are left"
    );
}

#[tokio::test]
async fn a_start_that_fails_after_cgroups_and_sandbox_undoes_them() {
    require_root!();
    // A read-only state directory: fails after the cgroups are made (the log directory cannot be created).
    let f = FailedStart::new(5);
    std::fs::create_dir(&f.state).unwrap();
    let ro = f.state.display().to_string();
    for args in [
        vec!["--bind", ro.as_str(), ro.as_str()],
        vec!["-o", "remount,bind,ro", ro.as_str()],
    ] {
        let s = std::process::Command::new("mount")
            .args(&args)
            .status()
            .unwrap();
        assert!(s.success(), "mount {args:?}");
    }
    let stderr = f.run().await;
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    f.assert_host_clean("read-only state_dir", &stderr);
    assert_eq!(contents(&f.state), Vec::<PathBuf>::new());
    drop(f);

    // A state directory whose `environments` is a file: fails after the sandbox is up (nft table, mounts).
    let f = FailedStart::new(6);
    std::fs::create_dir(&f.state).unwrap();
    std::fs::write(f.state.join("environments"), b"not a directory").unwrap();
    let stderr = f.run().await;
    assert!(stderr.contains("environments"), "{stderr}");
    assert!(
        stderr.contains("network isolation on"),
        "the sandbox was up before the failure\n{stderr}"
    );
    f.assert_host_clean("environments is a file", &stderr);
    assert_eq!(
        contents(&f.state),
        vec![f.state.join("environments")],
        "only what was there before"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Bad input

/// The longest error message a refusal of a huge value may carry.
const SHORT_MESSAGE: usize = 400;

fn assert_short(what: &str, s: &tonic::Status, code: Code, names: &str) {
    assert_eq!(s.code(), code, "{what}: {s:?}");
    assert!(
        s.message().len() < SHORT_MESSAGE,
        "{what}: a {}-byte message",
        s.message().len()
    );
    assert!(
        s.message().contains(names) && s.message().contains("…(10000 bytes)"),
        "{what}: {}",
        s.message()
    );
}

#[tokio::test]
async fn a_huge_value_is_refused_with_a_short_message_and_a_crlf_arn_is_refused() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let huge = "f".repeat(10_000);
    let spec_with = |edit: &dyn Fn(&mut pb::EnvironmentSpec)| {
        let mut spec = python_spec("bounded", "main.handler");
        edit(&mut spec);
        pb::CreateEnvironmentRequest { spec: Some(spec) }
    };
    let creates: Vec<(&str, pb::CreateEnvironmentRequest, &str)> = vec![
        (
            "name",
            spec_with(&|s| s.function.as_mut().unwrap().name = huge.clone()),
            "spec.function.name",
        ),
        (
            "version",
            spec_with(&|s| s.function.as_mut().unwrap().version = huge.clone()),
            "spec.function.version",
        ),
        (
            "arn",
            spec_with(&|s| s.function.as_mut().unwrap().arn = huge.clone()),
            "spec.function.arn",
        ),
        (
            "runtime",
            spec_with(&|s| s.runtime = huge.clone()),
            "spec.runtime",
        ),
    ];
    for (what, request, names) in creates {
        let s = agent.client.create_environment(request).await.unwrap_err();
        assert_short(what, &s, Code::InvalidArgument, names);
    }
    let s = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_short("invoke name", &s, Code::InvalidArgument, "function_name");
    let s = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: "bounded".into(),
            function_version: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_short(
        "invoke version",
        &s,
        Code::InvalidArgument,
        "function_version",
    );
    let s = agent
        .client
        .get_environment(pb::GetEnvironmentRequest { id: huge.clone() })
        .await
        .unwrap_err();
    assert_short("get", &s, Code::NotFound, "no environment");
    let s = agent
        .client
        .delete_environment(pb::DeleteEnvironmentRequest {
            id: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_short("delete", &s, Code::NotFound, "no environment");

    // An ARN that would be dropped from the runtime's headers (CR/LF, a control character, not visible
    // ASCII) or is not a function ARN is refused at create, and nothing is created.
    for arn in [
        "arn:aws:lambda:us-east-1:123456789012:function:bounded\r\nX-Injected: 1",
        "arn:aws:lambda:us-east-1:123456789012:function:bounded:1\n",
        "arn:aws:lambda:us-east-1:123456789012:function:bounded\u{7f}",
        "arn:aws:lambda:us-east-1:123456789012:function:bounded:é",
        "arn:aws:s3:::bucket",
    ] {
        let s = agent
            .client
            .create_environment(spec_with(&|s| {
                s.function.as_mut().unwrap().arn = arn.into()
            }))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{arn:?}: {s:?}");
        assert!(
            s.message().starts_with("spec.function.arn: ")
                && s.message().contains("must be a function ARN"),
            "{arn:?}: {}",
            s.message()
        );
    }
    let listed = agent.list().await;
    assert!(listed.is_empty(), "{listed:?}");
    // A well-formed ARN with a qualifier is taken as it is.
    let arn = "arn:aws:lambda:us-east-1:123456789012:function:bounded:7";
    let env = agent
        .create(
            spec_with(&|s| s.function.as_mut().unwrap().arn = arn.into())
                .spec
                .unwrap(),
        )
        .await;
    assert_eq!(env.spec.unwrap().function.unwrap().arn, arn);
}

#[tokio::test]
async fn a_shims_dir_the_runtimes_cannot_see_fails_the_start() {
    require_root!();
    // Under /tmp: each runtime's /tmp is its own tmpfs, so the shims would be missing in every environment.
    let mut f = FailedStart::new(7);
    let copy = f.dir.path().join("runtime-shims");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo().join("runtime-shims"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    f.shims = copy.clone();
    let stderr = f.run().await;
    assert!(
        stderr.contains(&format!("shims_dir {} is under /tmp", copy.display()))
            && stderr.contains("runtimes cannot see"),
        "{stderr}"
    );
    f.assert_host_clean("shims under /tmp", &stderr);
}
