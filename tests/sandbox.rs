//! The sandbox of each environment, against the real daemon: its own uid with no privilege, its own mount
//! namespace (private, capped /tmp; code read-only), its own network namespace (its Runtime API unreachable
//! from any other environment, egress through NAT, the host unreachable), a root-only control socket, and
//! no secret in the agent's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{net::Ipv4Addr, os::unix::fs::PermissionsExt, time::Duration};

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use lmi_sandbox::{
    addresses::{AddressPool, Subnet},
    nat::NatTable,
    netns::NetworkNamespace,
    tools::Tool,
    veth::Veth,
};
use serde_json::{json, Value};
use support::*;

async fn call(agent: &mut TestAgent, function: &str, event: Value) -> Value {
    let r = agent.invoke(function, event.clone()).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{event}: {r:?}");
    payload_json(&r)
}

fn sandbox_range(agent: &TestAgent) -> std::ops::Range<u64> {
    let config = std::fs::read_to_string(agent.dir.path().join("agent.toml")).unwrap();
    let key = |k: &str| -> u64 {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} = ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    key("uid_first")..key("uid_first") + key("uid_count")
}

fn ip_link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_run_as_their_own_uid_with_no_privilege_and_their_code_read_only() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let a = agent
        .create_ready(python_spec("who-a", "actions.handler"))
        .await;
    let b = agent
        .create_ready(python_spec("who-b", "actions.handler"))
        .await;
    let range = sandbox_range(&agent);
    let mut uids = Vec::new();
    for f in ["who-a", "who-b"] {
        let w = call(&mut agent, f, json!({"action": "whoami"})).await;
        let uid = w["uid"][0].as_str().unwrap().to_owned();
        // Real, effective, saved and filesystem ids are all the environment's own, from the range.
        assert_eq!(w["uid"], json!([&uid, &uid, &uid, &uid]), "{w}");
        assert_eq!(w["gid"], json!([&uid, &uid, &uid, &uid]), "{w}");
        assert!(
            range.contains(&uid.parse::<u64>().unwrap()),
            "{uid} not in {range:?}"
        );
        assert_eq!(w["groups"], json!([]), "supplementary groups: {w}");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(w["caps"][cap], "0000000000000000", "{cap}: {w}");
        }
        assert_eq!(w["noNewPrivs"], "1", "{w}");
        // The code at Lambda's path, read-only; the working directory there; TMPDIR=/tmp.
        assert_eq!(w["taskRoot"], "/var/task");
        assert_eq!(w["cwd"], "/var/task");
        assert_eq!(w["tmpdir"], "/tmp");
        assert_eq!(w["codeWrite"], "EROFS", "{w}");
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two environments share a uid");
    // The runtime's main process (the shim), seen from the host, runs as that uid too.
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.pid)).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        line.split_whitespace().skip(1).all(|u| u == uids[0]),
        "{line}"
    );
    assert!(!std::path::Path::new(&fixtures("python").join("written-by-function")).exists());
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_environment_can_neither_reach_nor_answer_an_environments_runtime_api() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("victim", "actions.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 60; // its gated invoke outlasts B's probe
    let a = agent.create_ready(spec).await;
    let mut spec = python_spec("prober", "actions.handler");
    spec.timeout_seconds = 30; // two blocked connects of 2 s each
    let b = agent.create_ready(spec).await;
    // Every environment's runtime sees its own API at the same loopback address.
    assert_eq!(a.runtime_api, "127.0.0.1:9001");
    assert_eq!(b.runtime_api, "127.0.0.1:9001");
    let wa = call(&mut agent, "victim", json!({"action": "whoami"})).await;
    let wb = call(&mut agent, "prober", json!({"action": "whoami"})).await;
    let (a_addr, a_gw) = (
        wa["address"].as_str().unwrap(),
        wa["gateway"].as_str().unwrap(),
    );
    assert_ne!(wa["address"], wb["address"]);

    // An invoke of A in flight, with its request id known to the test (and so to B's probe).
    let gate = shared_dir();
    let in_flight = tokio::spawn(invoke(
        agent.client.clone(),
        "victim",
        json!({"action": "gate", "dir": gate.path().display().to_string(), "count": 2, "max_s": 60}),
    ));
    wait_for_files(gate.path(), 1).await;
    let a_request = std::fs::read_dir(gate.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();

    // B tries to answer A's invoke: at A's address, at A's end of the host link, and at the Runtime API
    // address B's runtime uses (which is B's own API, that has never heard of A's invoke).
    let probe = call(
        &mut agent,
        "prober",
        json!({
            "action": "probe_runtime_api",
            "request_id": a_request,
            "targets": [[a_addr, 9001], [a_gw, 9001], ["127.0.0.1", 9001]],
            "pid": a.pid,
        }),
    )
    .await;
    let results = probe["results"].as_array().unwrap();
    for r in &results[..2] {
        assert!(r.get("status").is_none(), "B reached A's API: {probe}");
        assert!(
            ["timeout", "ECONNREFUSED", "EHOSTUNREACH"].contains(&r["error"].as_str().unwrap()),
            "{probe}"
        );
    }
    assert_eq!(
        results[2]["status"], 400,
        "B's own API knows no such invoke: {probe}"
    );
    // Nor can B signal A's processes or read their environment: in B's PID namespace they do not exist
    // (tests/isolation.rs; a pid A sees names one of B's own processes in B's namespace, if any).
    assert_eq!(probe["signal"], "ESRCH", "{probe}");
    assert_eq!(probe["environ"], "ENOENT", "{probe}");

    // A's invoke is untouched: it ends with its own answer.
    std::fs::write(gate.path().join("release"), "").unwrap();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["requestId"], a_request.as_str());
    assert_ne!(r.payload, br#""forged by another environment""#.to_vec());
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

/// A network "outside" the host: a namespace joined to the host by a veth pair (host end `.1`, its end `.2`
/// of a /28 in 192.168/16, another for each call), with a TCP listener on 0.0.0.0 inside it. Removed on drop.
struct Outside {
    ip: Tool,
    veth: Veth,
    _ns: NetworkNamespace,
    listener: Option<std::net::TcpListener>,
    address: Ipv4Addr,
    host_end: Ipv4Addr,
}

impl Outside {
    const PORT: u16 = 7070;

    /// Serves one connection (within 60 s) on the listener: reads the 6 bytes the function sends, answers
    /// with the source address it saw, and yields those 6 bytes.
    fn answer_one(&mut self) -> tokio::task::JoinHandle<[u8; 6]> {
        let listener = tokio::net::TcpListener::from_std(self.listener.take().unwrap()).unwrap();
        tokio::spawn(async move {
            let (mut conn, peer) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
                .await
                .expect("no connection from the function")
                .unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut hello = [0u8; 6];
            conn.read_exact(&mut hello).await.unwrap();
            conn.write_all(peer.ip().to_string().as_bytes())
                .await
                .unwrap();
            hello
        })
    }

    fn create() -> Self {
        let ip = Tool::find("ip").expect("ip (tests/setup.sh installs iproute2)");
        // A /28 of its own per call (tests of this binary run in parallel), a /24 per test process.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let x = std::process::id() % 250 + 2;
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
        let subnet = Subnet::parse(&format!("192.168.{x}.{}/28", n * 16)).unwrap();
        let link = AddressPool::new(subnet).allocate().unwrap();
        let (ns, listener) =
            NetworkNamespace::with_listener(format!("0.0.0.0:{}", Self::PORT).parse().unwrap())
                .unwrap();
        let veth = Veth::create(&ip, &ns, &link).unwrap();
        Self {
            ip,
            veth,
            _ns: ns,
            listener: Some(listener),
            address: link.guest,
            host_end: link.host,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.veth.remove(&self.ip);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_reaches_a_server_outside_through_nat_but_not_the_host() {
    require_root!();
    let mut outside = Outside::create();
    let server = outside.answer_one();

    let mut agent = TestAgent::start().await;
    let env = agent
        .create_ready(python_spec("egress", "actions.handler"))
        .await;
    let w = call(&mut agent, "egress", json!({"action": "whoami"})).await;
    let r = call(
        &mut agent,
        "egress",
        json!({"action": "tcp_connect", "host": outside.address.to_string(), "port": Outside::PORT, "timeout_s": 10}),
    )
    .await;
    assert_eq!(&server.await.unwrap(), b"hello\n");
    // The server saw the host's address on its link, not the environment's: masqueraded.
    assert_eq!(r["reply"], outside.host_end.to_string(), "{r}");
    assert_ne!(r["reply"], w["address"]);

    // The host itself is not reachable from the function, even at its end of the environment's link.
    let gw: Ipv4Addr = w["gateway"].as_str().unwrap().parse().unwrap();
    let host_listener = tokio::net::TcpListener::bind((gw, 0)).await.unwrap();
    let port = host_listener.local_addr().unwrap().port();
    let r = call(
        &mut agent,
        "egress",
        json!({"action": "tcp_connect", "host": gw.to_string(), "port": port, "timeout_s": 2}),
    )
    .await;
    assert_eq!(r["error"], "timeout", "{r}");
    assert!(
        tokio::time::timeout(Duration::ZERO, host_listener.accept())
            .await
            .is_err(),
        "the host accepted a connection from a function"
    );

    // The veth pair goes with the environment, the NAT table with the agent.
    let veth = Veth::host_name_for(gw);
    assert!(ip_link_exists(&veth));
    agent.delete(&env.id).await;
    assert!(!ip_link_exists(&veth), "{veth} left behind");
    let table = NatTable::name_for(&agent.cgroup_parent);
    let listed = |t: &str| {
        std::process::Command::new("nft")
            .args(["list", "table", NatTable::FAMILY, t])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(listed(&table));
    agent.stop_and_assert_clean(&[env.pid]);
    assert!(!listed(&table), "nftables table {table} left behind");
    drop(outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_private_to_each_environment_and_capped_at_its_ephemeral_storage() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let a = agent
        .create_ready(python_spec("tmp-a", "actions.handler"))
        .await;
    let b = agent
        .create_ready(python_spec("tmp-b", "actions.handler"))
        .await;
    let wrote = call(
        &mut agent,
        "tmp-a",
        json!({"action": "tmp", "write": "only-in-a"}),
    )
    .await;
    assert_eq!(wrote["error"], Value::Null, "{wrote}");
    // /var/tmp and /dev/shm are the same tmpfs as /tmp (one cap for all scratch space).
    for d in ["/tmp", "/var/tmp", "/dev/shm"] {
        assert!(
            wrote["listing"][d]
                .as_array()
                .unwrap()
                .contains(&json!("only-in-a")),
            "{d}: {wrote}"
        );
    }
    // It is the environment's tmpfs, which the agent mounted under its state directory.
    let host_path = agent
        .dir
        .path()
        .join("state/envs")
        .join(&a.id)
        .join("tmp/only-in-a");
    assert_eq!(std::fs::read(&host_path).unwrap(), b"here");
    // B sees none of it, anywhere.
    let seen = call(&mut agent, "tmp-b", json!({"action": "tmp"})).await;
    for d in ["/tmp", "/var/tmp", "/dev/shm"] {
        assert!(
            !seen["listing"][d]
                .as_array()
                .unwrap()
                .contains(&json!("only-in-a")),
            "B sees A's file in {d}: {seen}"
        );
    }
    // Past ephemeral_storage_mib (512 MiB by default) a write fails with ENOSPC, at the cap.
    let full = call(
        &mut agent,
        "tmp-b",
        json!({"action": "tmp", "write": "fill", "mb": 600}),
    )
    .await;
    assert_eq!(full["error"], "ENOSPC", "{full}");
    let written = full["written"].as_u64().unwrap();
    assert!(
        (500 * 1024 * 1024..=512 * 1024 * 1024).contains(&written),
        "{written}"
    );
    agent.stop_and_assert_clean(&[a.pid, b.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_log_socket_is_reachable_by_its_own_environment_only() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let a = agent
        .create_ready(python_spec("logs-a", "actions.handler"))
        .await;
    let b = agent
        .create_ready(python_spec("logs-b", "actions.handler"))
        .await;
    let host_path = |id: &str| {
        agent
            .state_dir()
            .join("log-sockets")
            .join(id)
            .join("log.sock")
    };
    let (a_sock, b_sock) = (host_path(&a.id), host_path(&b.id));
    // On the host: 0600 and owned by the environment's own uid.
    use std::os::unix::fs::MetadataExt;
    let wa = call(&mut agent, "logs-a", json!({"action": "whoami"})).await;
    let a_uid: u32 = wa["uid"][0].as_str().unwrap().parse().unwrap();
    let meta = std::fs::metadata(&a_sock).unwrap();
    assert_eq!(meta.uid(), a_uid);
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_ne!(std::fs::metadata(&b_sock).unwrap().uid(), a_uid);
    // Inside: each reaches its own at the path it was given, and not the other's host path.
    let own = call(
        &mut agent,
        "logs-b",
        json!({"action": "unix_connect", "path": "/run/lmi-runtime/log.sock"}),
    )
    .await;
    assert_eq!(own["result"], "connected");
    let other = call(
        &mut agent,
        "logs-b",
        json!({"action": "unix_connect", "path": a_sock.display().to_string()}),
    )
    .await;
    // Unreachable from B's namespace (the state directory is root's, and here it even lies under the /tmp
    // that B's own tmpfs covers); were the path reachable, the 0600 socket of A's uid would refuse B's uid.
    assert!(
        ["ENOENT", "EACCES"].contains(&other["result"].as_str().unwrap()),
        "B reached A's log socket: {other}"
    );
    let stop = [a.pid, b.pid];
    agent.stop_and_assert_clean(&stop);
}

/// The first address of the agent's `sandbox.network` (a /24 per test agent).
fn sandbox_base(agent: &TestAgent) -> Ipv4Addr {
    let config = std::fs::read_to_string(agent.dir.path().join("agent.toml")).unwrap();
    let net = config
        .lines()
        .find_map(|l| l.strip_prefix("network = \""))
        .unwrap();
    net.split('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_slots_are_made_ahead_taken_by_creates_and_removed_with_the_agent() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        sandbox_config: "network_pool = 2".into(),
        ..Default::default()
    })
    .await;
    let base = u32::from(sandbox_base(&agent));
    let host_end = |slot: u32| Ipv4Addr::from(base + slot * 4 + 1);
    let veth = |slot: u32| Veth::host_name_for(host_end(slot));
    // Two slots are made before any environment exists.
    eventually("two slots made ahead", || {
        ip_link_exists(&veth(0)) && ip_link_exists(&veth(1))
    })
    .await;
    assert!(!ip_link_exists(&veth(2)), "more slots than the pool holds");
    // A create takes one of them (its gateway is that slot's host end) ...
    let env = agent
        .create_ready(python_spec("pooled", "actions.handler"))
        .await;
    let w = call(&mut agent, "pooled", json!({"action": "whoami"})).await;
    let gw: Ipv4Addr = w["gateway"].as_str().unwrap().parse().unwrap();
    assert!([host_end(0), host_end(1)].contains(&gw), "{gw}");
    // ... and the pool makes the next.
    eventually("the pool refilled", || ip_link_exists(&veth(2))).await;
    // A graceful stop removes the environment's pair and those still waiting.
    agent.stop_and_assert_clean(&[env.pid]);
    for slot in 0..3 {
        assert!(!ip_link_exists(&veth(slot)), "{} left behind", veth(slot));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_refuses_a_non_root_user() {
    require_root!();
    let agent = TestAgent::start().await;
    // Let anyone walk to the socket, so that only the socket's own mode can refuse.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    let connect = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import os, socket, sys\nos.stat(sys.argv[1])\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(e.errno)\n",
        ])
        .arg(&agent.socket);
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, uid);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(connect(None), "connected");
    assert_eq!(connect(Some(65_534)), libc::EACCES.to_string());
    agent.stop_and_assert_clean(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_environment_variables_never_reach_the_agent_log() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4());
    let token = format!("tok-{}", uuid::Uuid::new_v4());
    let with_secrets = |function: &str, handler: &str| {
        let mut spec = python_spec(function, handler);
        spec.environment
            .insert("DB_PASSWORD".into(), secret.clone());
        spec.environment.insert("API_TOKEN".into(), token.clone());
        spec
    };
    // A healthy environment, invoked and deleted.
    let env = agent
        .create_ready(with_secrets("secretive", "actions.handler"))
        .await;
    let w = call(&mut agent, "secretive", json!({"action": "echo"})).await;
    assert_eq!(w["event"]["action"], "echo");
    // One whose init fails, one refused by validation, one whose code others may not read.
    let failed = agent
        .create(with_secrets("secret-init", "init_error.handler"))
        .await;
    agent
        .wait_state(&failed.id, &[pb::EnvironmentState::Failed])
        .await;
    let mut invalid = with_secrets("secret-invalid", "actions.handler");
    invalid.memory_mib = 1;
    let s = agent.create_refused(invalid).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut unreadable = with_secrets("secret-closed", "actions.handler");
    unreadable.code = Some(pb::Code {
        source: Some(pb::code::Source::Directory(
            closed.path().display().to_string(),
        )),
        sha256: String::new(),
    });
    let s = agent.create_refused(unreadable).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(
        s.message()
            .contains("must be readable and searchable by others"),
        "{s:?}"
    );
    agent.delete(&env.id).await;
    agent.delete(&failed.id).await;
    // Stopped first, so the log holds everything the agent wrote, shutdown included.
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status:?}");
    let log = agent.log();
    assert!(agent.leftover_cgroups().is_empty());
    assert!(!process_alive(env.pid) && !process_alive(failed.pid));
    // The log did record these environments (at debug level), just not the values.
    assert!(
        log.contains(&env.id) && log.contains("environment started"),
        "{log}"
    );
    assert!(!log.contains(&secret), "the secret is in the agent log");
    assert!(!log.contains(&token), "the token is in the agent log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_network_isolation_the_runtime_api_is_a_host_loopback_port() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        sandbox_config: "network_isolation = false".into(),
        ..Default::default()
    })
    .await;
    let env = agent
        .create_ready(python_spec("shared-net", "actions.handler"))
        .await;
    let api: std::net::SocketAddr = env.runtime_api.parse().unwrap();
    assert!(api.ip().is_loopback());
    assert_ne!(api.port(), 9001);
    let w = call(&mut agent, "shared-net", json!({"action": "whoami"})).await;
    // Still its own uid and no privilege; the host's network (no veth of its own).
    assert!(sandbox_range(&agent).contains(&w["uid"][0].as_str().unwrap().parse::<u64>().unwrap()));
    assert_eq!(w["caps"]["CapEff"], "0000000000000000");
    let netns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_eq!(
        netns(&env.pid.to_string()),
        netns("self"),
        "the runtime has a network namespace of its own"
    );
    agent.stop_and_assert_clean(&[env.pid]);
}

// IPv6 and the control API (issue 13): no host service is reachable from a function over IPv6, nor the
// control API on any address; its TCP listener needs its token; no API shows a variable's value.

/// The link-local address the kernel would give `dev` (EUI-64 of its MAC) were IPv6 on for it.
fn eui64_link_local(dev: &str) -> std::net::Ipv6Addr {
    let mac = std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).unwrap();
    let b: Vec<u8> = mac
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    std::net::Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        b[0] ^ 2,
        b[1],
        b[2],
        0xff,
        0xfe,
        b[3],
        b[4],
        b[5],
    ])
}

/// (interface, address, scope) of every IPv6 address of the test's own network namespace (the host's).
fn host_ipv6_addresses() -> Vec<(String, std::net::Ipv6Addr, u8)> {
    std::fs::read_to_string("/proc/net/if_inet6")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = u128::from_str_radix(f[0], 16).unwrap();
            (
                f[5].to_owned(),
                std::net::Ipv6Addr::from(addr),
                u8::from_str_radix(f[3], 16).unwrap(),
            )
        })
        .collect()
}

/// A token file (0600, root's) in `dir`, and its token.
fn token_file(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let path = dir.join("control.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, token)
}

/// A port free on every address right now (bound on `[::]` and released; the agent binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A control API client over TCP that sends `token` (when given) with every call.
async fn tcp_client(
    url: String,
    token: Option<&str>,
) -> pb::agent_client::AgentClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        lmi_proto::auth::AddBearer,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::agent_client::AgentClient::with_interceptor(
        channel,
        lmi_proto::auth::AddBearer::new(token).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_reaches_no_host_service_over_ipv6_nor_the_control_api_while_egress_works() {
    require_root!();
    // The outside server, reached over IPv4 through NAT, answers with the source address it saw.
    let mut outside = Outside::create();
    let server = outside.answer_one();
    // A host service on every address of both families, and the control API on [::] (with its token).
    let host_service = std::net::TcpListener::bind("[::]:0").unwrap();
    host_service.set_nonblocking(true).unwrap();
    let service_port = host_service.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (token_path, token) = token_file(dir.path());
    let control_port = free_port();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "listen_tcp = \"[::]:{control_port}\"\nlisten_tcp_token_file = \"{}\"",
            token_path.display()
        ),
        ..Default::default()
    })
    .await;
    let mut spec = python_spec("v6-prober", "actions.handler");
    spec.timeout_seconds = 60;
    let env = agent.create_ready(spec).await;
    let w = call(&mut agent, "v6-prober", json!({"action": "whoami"})).await;
    let gw: Ipv4Addr = w["gateway"].as_str().unwrap().parse().unwrap();
    let veth = Veth::host_name_for(gw);

    // Inside: IPv6 only on the namespace's own loopback; eth0 has none, not even link-local.
    let inside = call(&mut agent, "v6-prober", json!({"action": "ipv6_state"})).await;
    assert_eq!(inside["addresses"], json!({"lo": ["::1"]}), "{inside}");
    assert_eq!(inside["disabled"]["eth0"], "1", "{inside}");
    // The host's end of the pair: off, no address.
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{veth}/disable_ipv6"))
            .unwrap()
            .trim(),
        "1"
    );
    let host_v6 = host_ipv6_addresses();
    assert!(
        host_v6.iter().all(|(dev, _, _)| dev != &veth),
        "{veth} has an IPv6 address: {host_v6:?}"
    );

    // Every way in: the link-local the host end would have had (scoped to eth0), each global IPv6 address
    // of the host, and the host end's IPv4 address; to the host service and to the control API.
    let link_local = eui64_link_local(&veth);
    let mut hosts = vec![format!("{link_local}%eth0"), gw.to_string()];
    hosts.extend(
        host_v6
            .iter()
            .filter(|(_, _, scope)| *scope == 0)
            .map(|(_, a, _)| a.to_string()),
    );
    for host in &hosts {
        for port in [service_port, control_port] {
            let r = call(
                &mut agent,
                "v6-prober",
                json!({"action": "tcp_connect", "host": host, "port": port, "timeout_s": 2}),
            )
            .await;
            // A connection made and then left unanswered is a reach too.
            assert!(
                r.get("reply").is_none() && r.get("connected").is_none(),
                "reached [{host}]:{port}: {r}"
            );
            // Refused (ECONNREFUSED) would mean the host's stack answered: not one of these.
            assert!(
                ["ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL", "timeout"]
                    .contains(&r["error"].as_str().unwrap_or_default()),
                "[{host}]:{port}: {r}"
            );
        }
    }
    assert_eq!(
        host_service.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the host service accepted a connection from a function"
    );

    // Egress to the world still works, masqueraded.
    let r = call(
        &mut agent,
        "v6-prober",
        json!({"action": "tcp_connect", "host": outside.address.to_string(), "port": Outside::PORT, "timeout_s": 10}),
    )
    .await;
    assert_eq!(r["reply"], outside.host_end.to_string(), "{r}");
    server.await.unwrap();

    // The control API on [::] does serve the host itself, with the token.
    let mut tcp = tcp_client(format!("http://[::1]:{control_port}"), Some(&token)).await;
    let listed = tcp
        .list_environments(pb::ListEnvironmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.environments.len(), 1);
    agent.stop_and_assert_clean(&[env.pid]);
    drop(outside);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_control_api_needs_its_token_and_no_api_shows_a_variables_value() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (token_path, token) = token_file(dir.path());
    let port = free_port();
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "listen_tcp = \"127.0.0.1:{port}\"\nlisten_tcp_token_file = \"{}\"",
            token_path.display()
        ),
        ..Default::default()
    })
    .await;
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4());
    let mut spec = python_spec("secret-keeper", "actions.handler");
    spec.environment
        .insert("DB_PASSWORD".into(), secret.clone());
    let created = agent.create_ready(spec).await;
    let redacted = |e: &pb::Environment| {
        let vars = &e.spec.as_ref().unwrap().environment;
        assert_eq!(vars.len(), 1, "{vars:?}");
        assert_eq!(vars["DB_PASSWORD"], lmi_agent_core::spec::REDACTED_VALUE);
        assert!(!format!("{e:?}").contains(&secret));
    };
    redacted(&created);
    // The runtime still gets the value.
    let r = call(&mut agent, "secret-keeper", json!({"action": "echo"})).await;
    assert_eq!(r["event"]["action"], "echo");

    let url = format!("http://127.0.0.1:{port}");
    // Without the token, or with another one, nothing but health answers.
    for sent in [None, Some("x".repeat(40)), Some(format!("{token}x"))] {
        let mut c = tcp_client(url.clone(), sent.as_deref()).await;
        let e = c.get_host(pb::GetHostRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{sent:?}: {e:?}");
        let e = c
            .list_environments(pb::ListEnvironmentsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(!e.message().contains(&token));
    }
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // With it: the same API, and no value anywhere (TCP or the Unix socket, get or list).
    let mut c = tcp_client(url.clone(), Some(&token)).await;
    let got = c
        .get_environment(pb::GetEnvironmentRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    redacted(&got);
    let listed = c
        .list_environments(pb::ListEnvironmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.environments.len(), 1);
    redacted(&listed.environments[0]);
    let local = agent
        .client
        .get_environment(pb::GetEnvironmentRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    redacted(&local);
    // Nor in the environment's record on disk.
    let record = std::fs::read(
        agent
            .state_dir()
            .join("environments")
            .join(format!("{}.pb", created.id)),
    )
    .unwrap();
    assert!(!String::from_utf8_lossy(&record).contains(&secret));

    // lmictl sends the token from --token-file; without it the agent refuses.
    let lmictl = |with_token: bool| {
        let mut cmd = std::process::Command::new(LMICTL_BIN);
        cmd.args(["--endpoint", &url, "--json", "get", &created.id])
            .env_remove("LMI_AGENT_LISTEN_TCP_TOKEN_FILE");
        if with_token {
            cmd.arg("--token-file").arg(&token_path);
        }
        cmd.output().unwrap()
    };
    let ok = lmictl(true);
    assert!(ok.status.success(), "{ok:?}");
    let shown = String::from_utf8(ok.stdout).unwrap();
    assert!(
        shown.contains("DB_PASSWORD") && !shown.contains(&secret),
        "{shown}"
    );
    let refused = lmictl(false);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated")
            || String::from_utf8_lossy(&refused.stdout).contains("UNAUTHENTICATED")
            || String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"),
        "{refused:?}"
    );
    agent.stop_and_assert_clean(&[created.pid]);
}
