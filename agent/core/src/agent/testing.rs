//! Fakes of the OS parts an [`Agent`] drives, so that its core (create and its rollback, invoke routing,
//! recovery, shutdown) runs in unit tests as any user: no cgroupfs, no mount, no uid change, no namespace.
//!
//! - [`FakeCgroups`] (from `lmi_cgroup::fake`): a `CgroupDriver` over an in-memory set of names, each cgroup a `FakeCgroup`;
//! - [`FakeSandbox`]: binds the Runtime API on loopback and counts leases held and released;
//! - [`FakeTmp`]: a plain directory as /tmp;
//! - [`FakeSpawner`]: a harmless real process (`sleep`, so that the supervisor owns a real child) and, in
//!   the agent's process, a runtime that talks to the environment's Runtime API over HTTP as a real one
//!   does (`/next`, then an echo, an error, or no answer);
//! - [`FakeHost`]: an agent on all of them, in a temporary state directory.
//!
//! Each fail switch makes the next call of that step fail, as the real part can.

// Test helpers (feature `test-util`): a failed set-up is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use lmi_proto::v1 as pb;

use super::{
    host::{PreparedSandbox, RuntimeSpawner, SandboxHost, SandboxLease, TmpStorage},
    Agent, AgentParts,
};
use crate::capacity::HostCapacity;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::launch::{LaunchPlan, Spawner};
use crate::logs::LogPipeline;
use crate::state::StateStore;
pub use lmi_cgroup::fake::FakeCgroups;
use lmi_cgroup::Placement;
use lmi_runtime_api::protocol;
use lmi_sandbox::ephemeral::{EphemeralError, EphemeralStorage};
use lmi_sandbox::{confine::Confinement, EnvironmentSandbox, SandboxError};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A sandbox that isolates nothing: the Runtime API on a loopback port, leases counted.
#[derive(Debug, Default)]
pub struct FakeSandbox {
    /// The next `prepare` fails.
    pub fail: AtomicBool,
    leases: Arc<Leases>,
    shut_down: AtomicBool,
}

#[derive(Debug, Default)]
struct Leases {
    held: AtomicUsize,
    /// `processes_gone` of every release, in order.
    released: Mutex<Vec<bool>>,
}

impl FakeSandbox {
    /// Leases given out and not released (a lease handed to a running environment stays held: its
    /// supervisor releases only the part [`SandboxLease::hand_over`] gave, none here).
    pub fn held(&self) -> usize {
        self.leases.held.load(Ordering::SeqCst)
    }

    /// `processes_gone` of every release so far.
    pub fn releases(&self) -> Vec<bool> {
        lock(&self.leases.released).clone()
    }

    pub fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::SeqCst)
    }
}

impl SandboxHost for FakeSandbox {
    fn prepare(
        &self,
        _code: &Path,
        _tmp: &Path,
        _log_socket: &Path,
    ) -> Result<PreparedSandbox, SandboxError> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(SandboxError::Network("the fake sandbox refuses".to_owned()));
        }
        let io_err = |source| SandboxError::Io {
            what: "binding the Runtime API listener",
            source,
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let runtime_api = listener.local_addr().map_err(io_err)?;
        self.leases.held.fetch_add(1, Ordering::SeqCst);
        Ok(PreparedSandbox {
            lease: Box::new(FakeLease {
                leases: self.leases.clone(),
                released: AtomicBool::new(false),
            }),
            listener,
            runtime_api,
            confinement: None,
        })
    }

    fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct FakeLease {
    leases: Arc<Leases>,
    released: AtomicBool,
}

impl SandboxLease for FakeLease {
    fn hand_over(&mut self) -> Option<EnvironmentSandbox> {
        None
    }

    fn release(&self, processes_gone: bool) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.leases.held.fetch_sub(1, Ordering::SeqCst);
            lock(&self.leases.released).push(processes_gone);
        }
    }
}

/// A plain directory as an environment's /tmp.
#[derive(Debug, Default)]
pub struct FakeTmp {
    /// The next `create` fails.
    pub fail: AtomicBool,
}

impl TmpStorage for FakeTmp {
    fn create(
        &self,
        dir: &Path,
        _size_mib: u32,
    ) -> Result<Option<EphemeralStorage>, EphemeralError> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(tmp_error());
        }
        std::fs::create_dir_all(dir).map_err(|_| tmp_error())?;
        Ok(None)
    }

    fn remove(&self, dir: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The error the real storage gives for a directory it cannot make (a file is in the way): it fails
/// before mounting anything.
fn tmp_error() -> EphemeralError {
    match EphemeralStorage::create(Path::new("/dev/null/tmp"), 1) {
        Err(e) => e,
        Ok(_) => panic!("/dev/null is not a directory"),
    }
}

/// What a fake runtime does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeRuntime {
    /// Answers every invoke with its payload.
    Echo,
    /// Reports every invoke as a function error (`errorType` [`FAKE_ERROR_TYPE`]).
    Error,
    /// Takes invokes and never answers them.
    Hold,
    /// Never polls: the environment stays INITIALIZING.
    Silent,
}

/// The `errorType` a [`FakeRuntime::Error`] runtime reports.
pub const FAKE_ERROR_TYPE: &str = "Fake.Error";

/// Starts `sleep` as the runtime's process and a [`FakeRuntime`] task as its behaviour.
#[derive(Default)]
pub struct FakeSpawner {
    /// What the runtimes spawned from now on do.
    runtime: Mutex<Option<FakeRuntime>>,
    /// The next `spawn` fails.
    pub fail: AtomicBool,
    /// Runs inside the next `spawn`, after the process started.
    on_spawn: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Invokes delivered to the runtimes (`/next` answered), all runtimes together.
    delivered: tokio::sync::watch::Sender<usize>,
    /// Every process spawned, in order.
    pids: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for FakeSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSpawner")
            .field("runtime", &*lock(&self.runtime))
            .field("fail", &self.fail)
            .finish_non_exhaustive()
    }
}

impl FakeSpawner {
    /// What the runtimes spawned from now on do (default [`FakeRuntime::Echo`]).
    pub fn set_runtime(&self, runtime: FakeRuntime) {
        *lock(&self.runtime) = Some(runtime);
    }

    /// Runs `f` inside the next spawn, once the process runs.
    pub fn on_next_spawn(&self, f: impl FnOnce() + Send + 'static) {
        *lock(&self.on_spawn) = Some(Box::new(f));
    }

    /// Waits until `n` invokes in all were delivered to runtimes.
    pub async fn delivered(&self, n: usize) {
        let mut rx = self.delivered.subscribe();
        let _ = rx.wait_for(|d| *d >= n).await;
    }

    /// Every process spawned so far, in order.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.pids).clone()
    }

    fn start(&self, plan: &LaunchPlan) -> io::Result<tokio::process::Child> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("the fake spawner refuses"));
        }
        let api = plan
            .env
            .get("AWS_LAMBDA_RUNTIME_API")
            .cloned()
            .ok_or_else(|| io::Error::other("the plan has no AWS_LAMBDA_RUNTIME_API"))?;
        let child = tokio::process::Command::new("sleep")
            .arg("3600")
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        lock(&self.pids).extend(child.id());
        let runtime = lock(&self.runtime).unwrap_or(FakeRuntime::Echo);
        if runtime != FakeRuntime::Silent {
            tokio::spawn(run_runtime(api, runtime, self.delivered.clone()));
        }
        if let Some(f) = lock(&self.on_spawn).take() {
            f();
        }
        Ok(child)
    }
}

impl RuntimeSpawner for FakeSpawner {
    fn spawn(
        &self,
        plan: &LaunchPlan,
        _placement: Placement,
        _confinement: Option<Confinement>,
    ) -> io::Result<tokio::process::Child> {
        self.start(plan)
    }
}

impl Spawner for FakeSpawner {
    fn spawn(
        &self,
        plan: &LaunchPlan,
        _placement: Placement,
        _confinement: Confinement,
    ) -> io::Result<tokio::process::Child> {
        self.start(plan)
    }
}

/// The fake runtime's loop: `/next`, then answer as `runtime` says; ends when the Runtime API goes away.
async fn run_runtime(
    api: String,
    runtime: FakeRuntime,
    delivered: tokio::sync::watch::Sender<usize>,
) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    loop {
        let Ok(uri) = format!("http://{api}{}", protocol::NEXT_PATH).parse::<hyper::Uri>() else {
            return;
        };
        let Ok(next) = client.get(uri).await else {
            return;
        };
        let id = next
            .headers()
            .get(protocol::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Ok(body) = next.into_body().collect().await else {
            return;
        };
        let Some(id) = id else { return };
        delivered.send_modify(|n| *n += 1);
        let (path, body) = match runtime {
            FakeRuntime::Echo => (protocol::response_path(&id), body.to_bytes()),
            FakeRuntime::Error => (
                protocol::error_path(&id),
                Bytes::from(format!(
                    r#"{{"errorMessage":"the fake runtime fails","errorType":"{FAKE_ERROR_TYPE}"}}"#
                )),
            ),
            FakeRuntime::Hold | FakeRuntime::Silent => continue,
        };
        let Ok(request) = hyper::Request::post(format!("http://{api}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
        else {
            return;
        };
        if client.request(request).await.is_err() {
            return;
        }
    }
}

/// An agent on fakes, in a temporary state directory.
#[derive(Debug)]
pub struct FakeHost {
    pub dir: tempfile::TempDir,
    pub cgroups: Arc<FakeCgroups>,
    pub sandbox: Arc<FakeSandbox>,
    pub tmp: Arc<FakeTmp>,
    pub spawner: Arc<FakeSpawner>,
    pub agent: Arc<Agent>,
}

/// The runtimes of [`FakeHost`]'s catalog: `fake` (any code) and `provided.fake` (needs a `bootstrap`).
const CATALOG: &str =
    "[[runtime]]\nid = \"fake\"\ncommand = [\"sh\"]\ndefault_concurrency_per_vcpu = 16\n\
                       [[runtime]]\nid = \"provided.fake\"\ncommand = [\"{code}/bootstrap\"]\n\
                       default_concurrency_per_vcpu = 16\n";

impl FakeHost {
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (cgroups, sandbox, tmp, spawner): (
            Arc<FakeCgroups>,
            Arc<FakeSandbox>,
            Arc<FakeTmp>,
            Arc<FakeSpawner>,
        ) = Default::default();
        Ok(Self {
            agent: Self::agent_on(dir.path(), &cgroups, &sandbox, &tmp, &spawner)?,
            dir,
            cgroups,
            sandbox,
            tmp,
            spawner,
        })
    }

    /// A new agent on the same state directory and fakes, as after a restart.
    pub fn restart(&mut self) -> io::Result<()> {
        self.agent = Self::agent_on(
            self.dir.path(),
            &self.cgroups,
            &self.sandbox,
            &self.tmp,
            &self.spawner,
        )?;
        Ok(())
    }

    fn agent_on(
        state_dir: &Path,
        cgroups: &Arc<FakeCgroups>,
        sandbox: &Arc<FakeSandbox>,
        tmp: &Arc<FakeTmp>,
        spawner: &Arc<FakeSpawner>,
    ) -> io::Result<Arc<Agent>> {
        let mut config = Config {
            state_dir: state_dir.to_owned(),
            ..Config::default()
        };
        config.environments.stop_timeout_ms = 500;
        config.environments.delete_grace_seconds = 1;
        let catalog = Catalog::parse(CATALOG, "fake").map_err(io::Error::other)?;
        let logs = LogPipeline::start(&config.logs, state_dir).map_err(io::Error::other)?;
        let state = StateStore::open(state_dir).map_err(io::Error::other)?;
        Ok(Agent::with_parts(
            config,
            catalog,
            HostCapacity::new(64, 256 * 1024, 0, 0),
            AgentParts {
                cgroups: cgroups.clone(),
                spawner: spawner.clone(),
                state,
                logs: Arc::new(logs),
                sandbox: sandbox.clone(),
                tmp: tmp.clone(),
            },
        ))
    }

    /// `<state_dir>/envs`'s entries (environment directories).
    pub fn env_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("envs"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

/// A spec of function `function` on runtime `fake` with code `/`, 1 vCPU and `max_concurrency` slots.
pub fn spec(function: &str, max_concurrency: u32) -> pb::EnvironmentSpec {
    crate::environment::testing::wire_spec("fake", function, max_concurrency)
}
