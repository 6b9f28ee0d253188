//! Shared harness of the integration tests: a real `lmi-agent` daemon with its own cgroup parent, socket and
//! state directory, a gRPC client to it, and cleanup that runs even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::HashMap,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lmi_proto::v1::{self as pb, agent_client::AgentClient};
use tonic::transport::Channel;

pub mod scaler;

/// The daemon and the CLI under test (`Command::new(AGENT_BIN)`), built on first use.
pub const AGENT_BIN: Binary = Binary::LMI_AGENT;
pub const LMICTL_BIN: Binary = Binary::LMICTL;

/// A binary of the workspace, in the target directory and profile of the running test (target/<profile>/),
/// built by Cargo on first use in this test process: Cargo rebuilds only what changed, so the binaries are
/// never older than the sources, whichever way the tests were started.
#[derive(Debug, Clone, Copy)]
pub struct Binary(&'static str);

impl Binary {
    pub const LMI_AGENT: Binary = Binary("lmi-agent");
    pub const LMICTL: Binary = Binary("lmictl");

    pub fn path(self) -> &'static Path {
        static AGENT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        static LMICTL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        match self.0 {
            "lmi-agent" => AGENT.get_or_init(|| {
                other_binary("LMI_TEST_AGENT_BIN")
                    .unwrap_or_else(|| built_profile_dir().join("lmi-agent"))
            }),
            _ => LMICTL.get_or_init(|| {
                other_binary("LMI_TEST_LMICTL_BIN")
                    .unwrap_or_else(|| built_profile_dir().join("lmictl"))
            }),
        }
    }
}

/// Binaries built elsewhere, to test instead of this profile's: `LMI_TEST_AGENT_BIN`, `LMI_TEST_LMICTL_BIN`
/// and `LMI_TEST_NATIVE_ECHO_BIN` name them (tests/arm64/run.sh points them at the arm64 build, run under
/// emulation). Unset, the binaries are built and taken from target/<profile>/.
fn other_binary(var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var).filter(|v| !v.is_empty())?);
    assert!(path.is_file(), "{var}={} is not a file", path.display());
    Some(path)
}

impl AsRef<std::ffi::OsStr> for Binary {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path().as_os_str()
    }
}

impl AsRef<Path> for Binary {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

/// target/<profile>/ of this test executable (it runs from target/<profile>/deps/), with `lmi-agent` and
/// `lmictl` freshly built there.
pub fn built_profile_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps")
            .to_owned();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let profile = if profile == "debug" { "dev" } else { profile };
        let status = Command::new(env!("CARGO"))
            .current_dir(built_from())
            .args(["build", "--quiet", "--locked", "--profile", profile])
            .args([
                "-p",
                "lmi-agent",
                "--bin",
                "lmi-agent",
                "-p",
                "lmictl",
                "--bin",
                "lmictl",
            ])
            .status()
            .expect("running cargo build for lmi-agent and lmictl");
        assert!(
            status.success(),
            "cargo build of lmi-agent and lmictl failed"
        );
        dir
    })
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Repository root: where the tests take the files they hand to the agent and its functions (fixtures,
/// shims, examples, the README). `LMI_TEST_REPO` names another copy of the same tree (tests/relocated.sh runs
/// the built tests from a copy under /tmp); unset, the checkout the tests were built from.
pub fn repo() -> PathBuf {
    std::env::var_os("LMI_TEST_REPO")
        .filter(|v| !v.is_empty())
        .map_or_else(built_from, PathBuf::from)
}

/// The checkout the tests were built from: Cargo builds the binaries under test there, into its target dir.
pub fn built_from() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tests' scratch directory in the target dir: Cargo's `CARGO_TARGET_TMPDIR`, or with `LMI_TEST_REPO`
/// set, `target/tmp` of that copy (where a checkout there built with its own target dir would have it).
pub fn target_tmpdir() -> PathBuf {
    match std::env::var_os("LMI_TEST_REPO").filter(|v| !v.is_empty()) {
        Some(root) => {
            let dir = PathBuf::from(root).join("target/tmp");
            std::fs::create_dir_all(&dir).unwrap();
            dir
        }
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    }
}

pub fn fixtures(lang: &str) -> PathBuf {
    repo().join("tests/fixtures").join(lang)
}

/// Skips the calling test (with the reason printed) unless this is root on a host with cgroupfs.
#[macro_export]
macro_rules! require_root {
    () => {
        if $crate::support::missing_privileges() {
            return;
        }
    };
}

/// `true`, with the skip recorded (`lmi_testkit`), unless this is root on a host with cgroupfs.
pub fn missing_privileges() -> bool {
    if lmi_testkit::needs_root("creates cgroups and runtime processes") {
        return true;
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        lmi_testkit::skip("no cgroupfs at /sys/fs/cgroup");
        return true;
    }
    false
}

/// Options of a test agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Top-level keys and whole tables, placed before `[capacity]`.
    pub extra_config: String,
    /// Give the daemon a pipe as stdout (taken with [`TestAgent::take_stdout`]) instead of the log file: the
    /// `stdout` log sink writes there, and a test that does not read it stalls that sink.
    pub pipe_stdout: bool,
    /// Extra environment variables of the daemon (e.g. `WATCHDOG_USEC`).
    pub env: Vec<(String, String)>,
    /// Extra keys of the `[sandbox]` table (`network`, `uid_first` and `uid_count` are chosen per agent).
    pub sandbox_config: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            vcpus: 64,
            memory_mib: 262_144,
            extra_config: String::new(),
            pipe_stdout: false,
            env: Vec::new(),
            sandbox_config: String::new(),
        }
    }
}

/// `[sandbox]` keys giving one test agent a /24 for its environments and a block of uids of its own,
/// different for every agent of this process and, with high probability, from other test processes on the
/// host (agents that run at once must not share addresses or uids).
pub fn test_sandbox(n: usize) -> String {
    let seed = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (n as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
        ^ u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        );
    // 10.128.0.0/9 holds 32768 /24s; the uid ranges are blocks of 64 from 1_000_000.
    let idx = seed % 32_768;
    format!(
        "network = \"10.{}.{}.0/24\"\nuid_first = {}\nuid_count = 64",
        128 + idx / 256,
        idx % 256,
        1_000_000 + idx * 64
    )
}

/// A directory that the test and sandboxed functions share (rendezvous and release files): under
/// [`visible_root`] (outside `/tmp`: each function has its own) and writable by every environment's uid.
/// Removed on drop.
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let root = visible_root().join("shared");
    std::fs::create_dir_all(&root).unwrap();
    let d = tempfile::Builder::new()
        .prefix("lmi-it-")
        .tempdir_in(&root)
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// True when a sandboxed function cannot see `path` (it lies under `/tmp` or another directory its mount
/// namespace covers).
pub fn hidden_from_functions(path: &Path) -> bool {
    lmi_sandbox::mounts::hidden_from_runtimes(path, Path::new("/nonexistent-state-dir")).is_some()
}

/// Where tests put what sandboxed functions must see: the build's tmp directory, unless the checkout (and so
/// the target directory) lies where functions cannot see it, such as under `/tmp`; then
/// `/var/cache/lmi-agent/test-visible`.
pub fn visible_root() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let target = target_tmpdir();
    if !hidden_from_functions(&target) {
        return target;
    }
    let root = PathBuf::from("/var/cache/lmi-agent/test-visible");
    std::fs::create_dir_all(&root).unwrap();
    for d in [root.as_path(), root.parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

/// The runtime shims the agents under test use: the repository's, or when functions cannot see the
/// checkout (the agent refuses such a `shims_dir`), a copy under [`visible_root`] named by a hash of the
/// shims' relative paths, sizes and modification times (made once, reused while they are unchanged).
pub fn shims_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let src = repo().join("runtime-shims");
        if !hidden_from_functions(&src) {
            return src;
        }
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut stack = vec![src.clone()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    // Relative: copies of the same tree at other places share one copy of the shims.
                    let rel = e.path().strip_prefix(&src).unwrap().to_owned();
                    files.push((rel, m.len(), m.modified().ok()));
                }
            }
        }
        files.sort();
        files.hash(&mut hasher);
        let dst = visible_root().join(format!("runtime-shims-{:016x}", hasher.finish()));
        if !dst.exists() {
            let tmp = visible_root().join(format!(".runtime-shims-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let ok = Command::new("cp")
                .arg("-a")
                .arg(&src)
                .arg(&tmp)
                .status()
                .unwrap()
                .success();
            assert!(ok, "copying {} to {}", src.display(), tmp.display());
            // Another test process may have made the same copy first: then ours goes.
            if std::fs::rename(&tmp, &dst).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        dst
    })
    .clone()
}

/// A running daemon. Dropping it stops the daemon and removes whatever it left.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    child: Option<Child>,
    pub client: AgentClient<Channel>,
    config_path: PathBuf,
    /// The daemon's `NOTIFY_SOCKET`: what it sent after `READY=1` can be read here.
    pub notify: UnixDatagram,
    stdout: Option<std::process::ChildStdout>,
    pipe_stdout: bool,
    /// Extra environment variables of the daemon.
    env: Vec<(String, String)>,
}

impl TestAgent {
    pub async fn start() -> Self {
        Self::start_with(AgentOptions::default()).await
    }

    pub async fn start_with(opts: AgentOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let cgroup_parent = format!("lmi-it-{}-{n}", std::process::id());
        let socket = dir.path().join("agent.sock");
        let config = format!(
            "socket = {socket:?}\nstate_dir = {state:?}\ncgroup_parent = {cgroup_parent:?}\nshims_dir = {shims:?}\nlog_format = \"json\"\n{extra}\n[capacity]\nvcpus = {vcpus}\nmemory_mib = {mem}\nreserved_memory_mib = 0\n[sandbox]\n{own}\n{sandbox}\n",
            own = test_sandbox(n),
            sandbox = opts.sandbox_config,
            socket = socket.display().to_string(),
            state = dir.path().join("state").display().to_string(),
            shims = shims_dir().display().to_string(),
            extra = opts.extra_config,
            vcpus = opts.vcpus,
            mem = opts.memory_mib,
        );
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config).unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut agent = TestAgent {
            dir,
            socket,
            cgroup_parent,
            child: None,
            client: dummy_client(),
            config_path,
            notify,
            stdout: None,
            pipe_stdout: opts.pipe_stdout,
            env: opts.env.clone(),
        };
        agent.spawn_daemon().await;
        agent
    }

    /// Starts the daemon on this agent's config and state and waits for READY=1.
    async fn spawn_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let stdout = if self.pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone().unwrap())
        };
        let mut child = Command::new(AGENT_BIN)
            .arg("--config")
            .arg(&self.config_path)
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("LMI_AGENT_LOG", "info,lmi_agent=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap();
        self.stdout = child.stdout.take();
        self.child = Some(child);

        // The daemon says READY=1 once its listeners are up and start-up reconciliation is done: an event,
        // not a guess.
        let ready = self.notification();
        assert_eq!(ready, "READY=1", "first notification\n{}", self.log());
        self.client = connect(&self.socket).await;
    }

    /// The next sd_notify message from the daemon (bounded wait).
    pub fn notification(&self) -> String {
        let mut buf = [0u8; 256];
        self.notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let n = self
            .notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification from the agent: {e}\n{}", self.log()));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// SIGKILLs the daemon (no drain, no cleanup), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        }
    }

    /// Waits (bounded) for the daemon to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("no daemon");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent did not exit\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a new daemon on the same configuration and state directory (after `kill9` or an exit).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.spawn_daemon().await;
    }

    /// The daemon's stdout pipe (with `pipe_stdout`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.stdout.take()
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The next `sd_notify` message the daemon sent, or `None` if none came within `timeout`.
    pub fn next_notification(&self, timeout: Duration) -> Option<String> {
        self.notify.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.notify.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// The address the agent's Invoke API listens on (`[invoke_api] listen`, logged at start).
    pub fn invoke_api_addr(&self) -> std::net::SocketAddr {
        let addr = self
            .log_field("invoke API listening", "addr")
            .unwrap_or_else(|| panic!("no invoke API address in the log\n{}", self.log()));
        addr.parse()
            .unwrap_or_else(|e| panic!("invoke API address {addr:?}: {e}"))
    }

    /// The value of field `field` of the first JSON log line whose message is `message`.
    pub fn log_field(&self, message: &str, field: &str) -> Option<String> {
        self.log().lines().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v.get("message")?.as_str()? == message)
                .then(|| v.get(field)?.as_str().map(str::to_owned))
                .flatten()
        })
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Kills the daemon with SIGKILL (for a daemon wedged on purpose); `Drop` then removes its cgroups.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Creates an environment (panics with the status on failure).
    pub async fn create(&mut self, spec: pb::EnvironmentSpec) -> pb::Environment {
        self.client
            .create_environment(pb::CreateEnvironmentRequest { spec: Some(spec) })
            .await
            .unwrap_or_else(|s| panic!("create failed: {s:?}"))
            .into_inner()
            .environment
            .unwrap()
    }

    /// A create that must be refused: the status it is refused with.
    pub async fn create_refused(&mut self, spec: pb::EnvironmentSpec) -> tonic::Status {
        self.client
            .create_environment(pb::CreateEnvironmentRequest { spec: Some(spec) })
            .await
            .unwrap_err()
    }

    pub async fn get(&mut self, id: &str) -> pb::Environment {
        self.client
            .get_environment(pb::GetEnvironmentRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Polls the environment until it reaches one of `states` (the API has no watch; bounded by 60 s).
    pub async fn wait_state(
        &mut self,
        id: &str,
        states: &[pb::EnvironmentState],
    ) -> pb::Environment {
        let start = Instant::now();
        loop {
            let e = self.get(id).await;
            if states.contains(&e.state()) {
                return e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "environment {id} stuck in {:?} (wanted {states:?})\n{}",
                e.state(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn create_ready(&mut self, spec: pb::EnvironmentSpec) -> pb::Environment {
        let e = self.create(spec).await;
        let e = self
            .wait_state(
                &e.id,
                &[pb::EnvironmentState::Ready, pb::EnvironmentState::Failed],
            )
            .await;
        assert_eq!(
            e.state(),
            pb::EnvironmentState::Ready,
            "failure: {:?}\n{}",
            e.failure,
            self.log()
        );
        e
    }

    pub async fn invoke(
        &mut self,
        function: &str,
        payload: serde_json::Value,
    ) -> Result<pb::InvokeResponse, tonic::Status> {
        invoke(self.client.clone(), function, payload).await
    }

    /// One invoke that must succeed.
    pub async fn invoke_ok(
        &mut self,
        function: &str,
        payload: serde_json::Value,
    ) -> pb::InvokeResponse {
        let r = self.invoke(function, payload).await.unwrap();
        assert_eq!(r.outcome(), pb::InvokeOutcome::Success, "{function}: {r:?}");
        r
    }

    pub async fn delete(&mut self, id: &str) -> pb::Environment {
        self.client
            .delete_environment(pb::DeleteEnvironmentRequest {
                id: id.into(),
                grace_period_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn host(&mut self) -> pb::Host {
        self.client
            .get_host(pb::GetHostRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Every environment the agent knows.
    pub async fn list(&mut self) -> Vec<pb::Environment> {
        self.client
            .list_environments(pb::ListEnvironmentsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .environments
    }

    /// Why the host's catalog says `runtime` cannot run here, or `None` when it can.
    pub async fn runtime_unavailable(&mut self, runtime: &str) -> Option<String> {
        let host = self.host().await;
        let r = host
            .runtimes
            .iter()
            .find(|r| r.id == runtime)
            .unwrap_or_else(|| panic!("{runtime} is not in the catalog"));
        (!r.available).then(|| r.unavailable_reason.clone())
    }

    /// Absolute cgroup directories of an environment, by controller, from the agent's own cgroups.
    pub fn env_cgroup_dirs(&self, env_id: &str) -> HashMap<String, PathBuf> {
        let own = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid())).unwrap();
        let mut dirs = HashMap::new();
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            for ctrl in ctrls.split(',') {
                let mount = match ctrl {
                    "" => "unified",
                    "name=systemd" => continue,
                    c => c,
                };
                let base = Path::new("/sys/fs/cgroup").join(mount);
                let base = if base.is_dir() {
                    base
                } else {
                    PathBuf::from("/sys/fs/cgroup")
                };
                dirs.insert(
                    mount.to_owned(),
                    base.join(path.trim_start_matches('/'))
                        .join(&self.cgroup_parent)
                        .join(format!("env-{env_id}")),
                );
            }
        }
        dirs
    }

    /// Every cgroup directory belonging to this agent (its parent in each hierarchy, and below).
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        find_dirs_named(Path::new("/sys/fs/cgroup"), &self.cgroup_parent, 6)
    }

    /// Stops the daemon with SIGTERM and waits for it; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon and asserts it left no cgroup and no process behind.
    pub fn stop_and_assert_clean(mut self, pids: &[u32]) {
        let status = self.stop().unwrap();
        assert!(status.success(), "agent exit: {status:?}\n{}", self.log());
        assert_eq!(
            self.leftover_cgroups(),
            Vec::<PathBuf>::new(),
            "cgroups left behind"
        );
        for pid in pids {
            assert!(!process_alive(*pid), "process {pid} left behind");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop();
        // Whatever is still there (a test failed half-way): kill its processes and remove its cgroups.
        let mut dirs = self.leftover_cgroups();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        // An agent that died leaves its environments' /tmp mounts: unmount them so the temp dir can go.
        let root = self.dir.path().to_string_lossy().into_owned();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for point in mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| p.starts_with(&root))
            {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // An agent that died leaves its nftables table (deleting a missing one fails harmlessly).
        let _ = Command::new("nft")
            .args([
                "delete",
                "table",
                lmi_sandbox::nat::NatTable::FAMILY,
                &lmi_sandbox::nat::NatTable::name_for(&self.cgroup_parent),
            ])
            .stderr(Stdio::null())
            .status();
        for d in &dirs {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The pid a live host process has inside its own PID namespace (what a function sees of itself, e.g.
/// `os.getpid()`; every runtime has a PID namespace of its own), from `NSpid` in `/proc/<pid>/status`.
pub fn pid_in_namespace(host_pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|ids| ids.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap()
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes (its parent will reap it).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn find_dirs_named(root: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(name) {
            out.push(p.clone());
            out.extend(
                find_dirs_named(&p, "", depth.saturating_sub(1))
                    .into_iter()
                    .filter(|d| d != &p),
            );
        } else if depth > 0 {
            out.extend(find_dirs_named(&p, name, depth - 1));
        }
    }
    out
}

fn dummy_client() -> AgentClient<Channel> {
    AgentClient::new(Channel::from_static("http://[::1]:1").connect_lazy())
}

/// A client over the agent's Unix socket.
pub async fn connect(socket: &Path) -> AgentClient<Channel> {
    lmi_proto::connect::connect_unix(socket).await.unwrap()
}

/// One invoke; the returned future owns everything it needs (it can be spawned).
pub fn invoke(
    client: AgentClient<Channel>,
    function: &str,
    payload: serde_json::Value,
) -> impl std::future::Future<Output = Result<pb::InvokeResponse, tonic::Status>> + Send + 'static {
    invoke_with_id(client, function, "", payload)
}

/// One invoke under a caller-chosen `request_id` (empty: the agent makes one); spawnable like [`invoke`].
pub fn invoke_with_id(
    mut client: AgentClient<Channel>,
    function: &str,
    request_id: &str,
    payload: serde_json::Value,
) -> impl std::future::Future<Output = Result<pb::InvokeResponse, tonic::Status>> + Send + 'static {
    let request = pb::InvokeRequest {
        function_name: function.into(),
        payload: payload.to_string().into_bytes().into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    async move {
        client
            .invoke(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A Python spec for `handler` in tests/fixtures/python.
pub fn python_spec(function: &str, handler: &str) -> pb::EnvironmentSpec {
    code_spec(function, "python3.11", handler, &fixtures("python"))
}

/// A spec for `handler` on `runtime` with the code directory `code`.
pub fn code_spec(function: &str, runtime: &str, handler: &str, code: &Path) -> pb::EnvironmentSpec {
    pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: function.into(),
            version: String::new(),
            arn: String::new(),
        }),
        runtime: runtime.into(),
        handler: handler.into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(code.display().to_string())),
            sha256: String::new(),
        }),
        ..Default::default()
    }
}

/// The code directory of a compiled fixture (`tests/fixtures/<name>/build.sh` writes `build/task`), built
/// once per test binary; the scripts cache their output by a hash of the sources and take a lock.
pub fn built_fixture(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, dir)) = built.iter().find(|(n, _)| n == name) {
        return dir.clone();
    }
    let dir = fixtures(name);
    let out = Command::new(dir.join("build.sh")).output().unwrap();
    assert!(
        out.status.success(),
        "building the fixtures of tests/fixtures/{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task = dir.join("build/task");
    built.push((name.to_owned(), task.clone()));
    task
}

/// Where tests/setup.sh installs test tools (`$LMI_TEST_TOOLS`).
pub fn test_tools() -> PathBuf {
    std::env::var_os("LMI_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/lmi-agent/test-tools"))
}

/// The interpreter with the official client installed by tests/setup.sh.
pub fn ric_python() -> PathBuf {
    let p = test_tools().join("python-ric/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run tests/setup.sh (it installs awslambdaric)",
        p.display()
    );
    p
}

/// A `provided.al2023` spec whose bootstrap runs the official Python client, unmodified
/// (`python -m awslambdaric <handler>`), on `handler` in tests/fixtures/python-ric.
pub fn python_ric_spec(function: &str, handler: &str) -> pb::EnvironmentSpec {
    let mut spec = python_spec(function, handler);
    spec.runtime = "provided.al2023".into();
    spec.code = Some(pb::Code {
        source: Some(pb::code::Source::Directory(
            fixtures("python-ric").display().to_string(),
        )),
        sha256: String::new(),
    });
    spec.environment
        .insert("LMI_RIC_PYTHON".into(), ric_python().display().to_string());
    spec
}

pub fn payload_json(r: &pb::InvokeResponse) -> serde_json::Value {
    serde_json::from_slice(&r.payload).unwrap_or_else(|e| {
        panic!(
            "payload is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&r.payload)
        )
    })
}

/// Pids of every process in an environment's cgroup (memory hierarchy).
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits (bounded) until `dir` holds at least `n` entries: the fixtures announce themselves by files.
pub async fn wait_for_files(dir: &Path, n: usize) {
    let start = Instant::now();
    while std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0) < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "fewer than {n} files in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Utilization reports from the agent's WatchUtilization until one satisfies `pred` (bounded by 60 s).
pub async fn watch_until(
    client: &AgentClient<Channel>,
    what: &str,
    pred: impl Fn(&pb::UtilizationReport) -> bool,
) -> pb::UtilizationReport {
    let mut c = client.clone();
    let mut stream = c
        .watch_utilization(pb::WatchUtilizationRequest {})
        .await
        .unwrap()
        .into_inner();
    let wait = async {
        while let Some(r) = stream.message().await.unwrap() {
            if pred(&r) {
                return r;
            }
        }
        panic!("utilization stream ended before: {what}");
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("not within 60 s: {what}"))
}

/// Runs `lmictl --socket SOCKET --json ARGS`: whether it exited 0, its stdout as JSON (`Null` when it printed
/// none) and its stderr.
pub fn lmictl_json(socket: &Path, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(LMICTL_BIN)
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A loopback port free right now (for a listener the daemon binds, such as `metrics_listen`).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 20 ms until it holds, for at most 30 s (for states no event announces: a cgroup
/// directory gone, a network link made).
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not within 30 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The environment's entry in a report.
pub fn env_in<'a>(
    r: &'a pb::UtilizationReport,
    id: &str,
) -> Option<&'a pb::EnvironmentUtilization> {
    r.environments.iter().find(|e| e.environment_id == id)
}

/// A `provided.al2023` spec running the native echo runtime from `code` (see [`native_echo_code_dir`]).
pub fn native_echo_spec(
    function: &str,
    code: &Path,
    max_concurrency: u32,
    timeout_seconds: u32,
) -> pb::EnvironmentSpec {
    pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: function.into(),
            ..Default::default()
        }),
        runtime: "provided.al2023".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(code.display().to_string())),
            sha256: String::new(),
        }),
        max_concurrency,
        timeout_seconds,
        ..Default::default()
    }
}

/// The native echo runtime (tests/fixtures/native-echo), built with this test's profile on first use.
pub fn native_echo_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(bin) = other_binary("LMI_TEST_NATIVE_ECHO_BIN") {
                return bin;
            }
            // The daemon binary sits in target/<profile>/; the fixture is built next to it. Cargo only
            // rebuilds it when its sources changed.
            let dir = built_profile_dir().to_owned();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(built_from()).args([
                "build",
                "--quiet",
                "--locked",
                "-p",
                "lmi-native-echo",
                "--bin",
                "native-echo",
            ]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .expect("running cargo build for the native echo runtime");
            assert!(
                status.success(),
                "building tests/fixtures/native-echo failed"
            );
            let bin = dir.join("native-echo");
            assert!(
                bin.is_file(),
                "{} is missing after the build",
                bin.display()
            );
            bin
        })
        .clone()
}

/// A code directory whose `bootstrap` is the native echo runtime.
pub fn native_echo_code_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(native_echo_binary(), dir.path().join("bootstrap")).unwrap();
    dir
}

/// The agent's `/metrics` text, scraped from `127.0.0.1:port`.
pub async fn scrape_metrics(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// The value of the sample `name` whose labels include every `labels` pair (`None` if there is none).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with('{')
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
        })
        .and_then(|(_, v)| v.parse().ok())
}

/// An agent whose catalog is the built-in one (agent/core/catalog/runtimes.toml) followed by `extra` (more
/// `[[runtime]]` entries), with the folder that holds that catalog (keep it while the agent runs).
pub async fn start_with_runtimes(extra: &str) -> (TestAgent, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("runtimes.toml");
    let builtin = std::fs::read_to_string(repo().join("agent/core/catalog/runtimes.toml")).unwrap();
    std::fs::write(&catalog, format!("{builtin}\n{extra}")).unwrap();
    let agent = TestAgent::start_with(AgentOptions {
        extra_config: format!("catalog = {:?}", catalog.display().to_string()),
        ..Default::default()
    })
    .await;
    (agent, dir)
}

/// An agent whose Runtime API refuses late answers with 410 and oversized ones with 413 (Lambda's emulator's
/// statuses; `environments.refuse_late_and_oversized_answers`) instead of the default 202: the tests that show
/// a runtime reads those refusals and keeps every poller.
pub async fn refusing_agent() -> TestAgent {
    TestAgent::start_with(AgentOptions {
        extra_config: "[environments]\nrefuse_late_and_oversized_answers = true\n".into(),
        ..Default::default()
    })
    .await
}

/// `lmictl logs FUNCTION --follow --json`, read line by line as records (the process is killed on drop).
pub struct LogFollower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    records: Vec<serde_json::Value>,
}

impl LogFollower {
    pub fn start(socket: &Path, function: &str) -> Self {
        let mut child = Command::new(LMICTL_BIN)
            .args([
                "--socket",
                &socket.display().to_string(),
                "logs",
                function,
                "--follow",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            records: Vec::new(),
        }
    }

    /// Reads records until one satisfies `done` (bounded by 60 s without a record); `what` names it in a
    /// failure.
    pub fn until(&mut self, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| {
                    panic!(
                        "no record for {what} ({e}); got {} records: {:#?}",
                        self.records.len(),
                        &self.records[self.records.len().saturating_sub(20)..]
                    )
                });
            let r: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            let hit = done(&r);
            self.records.push(r);
            if hit {
                return;
            }
        }
    }

    /// Every record read so far.
    pub fn finish(mut self) -> Vec<serde_json::Value> {
        std::mem::take(&mut self.records)
    }
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lmictl logs FUNCTION --follow` until a record satisfies `done`; returns every record.
pub fn follow_logs(
    socket: &Path,
    function: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut f = LogFollower::start(socket, function);
    f.until("the awaited record", done);
    f.finish()
}

/// The agent's last record of an environment's logs, written when their capture ends.
pub const LOG_CAPTURE_ENDED: &str = "log capture ended";

/// Whether `r` is the record that ends the logs of environment `env_id`.
pub fn is_end_of(r: &serde_json::Value, env_id: &str) -> bool {
    r["stream"] == "lmi-agent" && r["environment"] == env_id && r["message"] == LOG_CAPTURE_ENDED
}

/// Every record of `function` that `lmictl logs --follow` prints until the end record of `env_id` (the
/// environment must be gone or going for that record to come).
pub async fn logs_until_end(
    agent: &TestAgent,
    function: &str,
    env_id: &str,
) -> Vec<serde_json::Value> {
    let socket = agent.socket.clone();
    let function = function.to_owned();
    let env_id = env_id.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = LogFollower::start(&socket, &function);
        f.until(&env_id, |r| is_end_of(r, &env_id));
        f.finish()
    })
    .await
    .unwrap()
}

/// Sends every event to `function` at once and waits for all the answers, each a success; returns them in
/// the order of the events.
pub async fn invoke_all_ok(
    agent: &TestAgent,
    function: &str,
    events: impl IntoIterator<Item = serde_json::Value>,
) -> Vec<pb::InvokeResponse> {
    let calls: Vec<_> = events
        .into_iter()
        .map(|event| tokio::spawn(invoke(agent.client.clone(), function, event)))
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), pb::InvokeOutcome::Success, "{function}: {r:?}");
        answers.push(r);
    }
    answers
}

/// Asserts that `s` is a throttle (RESOURCE_EXHAUSTED) for `reason` (the reason metadata's value).
pub fn assert_throttled(s: &tonic::Status, reason: &str) {
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert_eq!(
        s.metadata()
            .get(lmi_proto::wire::THROTTLE_REASON_METADATA)
            .map(|v| v.to_str().unwrap()),
        Some(reason),
        "{s:?}"
    );
}

/// The `gate` action of the test functions (every shim's fixture and the official clients' ones): the handler
/// creates `dir/<requestId>`, then waits until `dir` holds `count` entries (or 120 s pass) and returns
/// `{"seen": [entries]}`. A rendezvous: N invokes at `count` N can only all succeed if all N were inside the
/// function at once; one invoke at `count` 2 is held until the test writes a `release` file.
pub fn gate(dir: &Path, count: usize) -> serde_json::Value {
    serde_json::json!({"action": "gate", "dir": dir.display().to_string(), "count": count, "max_s": 120})
}

/// Waits (bounded by 30 s) until the environment's in-flight count is `n`: an answer that arrives after the
/// caller's deadline frees its slot, an event the test cannot await directly.
pub async fn wait_in_flight(agent: &mut TestAgent, id: &str, n: u32) {
    let start = Instant::now();
    loop {
        let e = agent.get(id).await;
        if e.in_flight == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "in_flight of {id} stuck at {} (wanted {n})\n{}",
            e.in_flight,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The text a log record carries: its message, or the `message` of the runtime's own JSON object.
pub fn record_text(r: &serde_json::Value) -> String {
    match &r["message"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}
