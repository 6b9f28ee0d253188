//! The host agent: environments by id and by function version, capacity, and the operations the control
//! API exposes (create, get, list, delete, invoke, host).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use bytes::Bytes;

use tokio::sync::watch;

use crate::{
    broker::Rejected,
    capacity::{HostCapacity, InsufficientCapacity, Ledger},
    catalog::{Availability, Catalog},
    cgroup::{CgroupDriver, CgroupError, CgroupLimits},
    code::{self, CodeError},
    config::Config,
    dispatch::{self, ThrottleReason},
    environment::{Environment, State},
    ephemeral::EphemeralStorage,
    host::HostReader,
    invocation::{Event, Outcome},
    launch::{self, LaunchContext, LaunchError, Spawner},
    logs::{LogPipeline, PendingCapture},
    request_id::{self, InFlightIds},
    runtime_api::{RuntimeApi, SettledAnswers, MAX_RESPONSE_BYTES},
    sampler::{Sampler, Snapshot},
    sandbox::{self, confine::Confinement, mounts, EnvironmentSandbox, Sandbox, SandboxError},
    spec::{self, SpecDefaults, SpecError, LATEST},
    startup::{AgentPhases, Stopwatch},
    state::StateStore,
    stats::Stats,
    supervisor::{self, Supervised},
    text::{quote, shown},
};

/// Runs blocking work (cgroupfs, mounts) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CreateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CreateError::Spawn(std::io::Error::other(e)))
}

/// Largest invoke payload accepted (Lambda's 6 MB synchronous limit).
pub const MAX_INVOKE_PAYLOAD: usize = MAX_RESPONSE_BYTES;

/// Why an environment could not be created. Nothing is left running after any of these.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Capacity(#[from] InsufficientCapacity),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("creating the environment's cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("starting the runtime: {0}")]
    Spawn(std::io::Error),
    #[error("starting the Runtime API listener: {0}")]
    Listen(std::io::Error),
    #[error("binding the environment's log socket: {0}")]
    LogSocket(std::io::Error),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("the host is draining and takes no new environments")]
    Draining,
    #[error(transparent)]
    Ephemeral(#[from] crate::ephemeral::EphemeralError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Why an invoke did not run.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("invalid invoke: {0}")]
    Invalid(String),
    #[error(
        "no execution environment for function {} version {} on this host",
        shown(function),
        shown(version)
    )]
    NoEnvironment { function: String, version: String },
    #[error("request id {} is already in flight", shown(.0))]
    DuplicateRequestId(String),
    #[error("throttled ({}): {message}", reason.as_str())]
    Throttled {
        reason: ThrottleReason,
        message: String,
    },
    #[error("the host is draining and takes no new invokes")]
    Draining,
}

/// An invoke request as the control API passes it.
#[derive(Debug, Clone)]
pub struct InvokeInput {
    pub function_name: String,
    pub version: String,
    pub payload: Bytes,
    pub request_id: Option<String>,
    pub client_context: Option<String>,
    pub trace_id: Option<String>,
}

/// A finished invoke.
#[derive(Debug, Clone)]
pub struct InvokeResult {
    pub request_id: String,
    pub environment_id: String,
    pub version: String,
    pub outcome: Outcome,
}

/// What [`Agent::launch`] starts from: a staged, sandboxed environment-to-be.
#[derive(Debug)]
struct Launch {
    id: String,
    spec: spec::ValidSpec,
    /// The function's code on the host.
    code_dir: PathBuf,
    env_dir: PathBuf,
    listener: std::net::TcpListener,
    runtime_api: std::net::SocketAddr,
    confinement: Confinement,
    log_capture: PendingCapture,
    clock: Stopwatch,
    phases: AgentPhases,
}

#[derive(Debug, Default)]
struct Registry {
    by_id: HashMap<String, Arc<Environment>>,
    by_function: HashMap<(String, String), Vec<Arc<Environment>>>,
}

/// The agent's services, shared by the control API and the daemon.
#[derive(Debug)]
pub struct Agent {
    config: Config,
    catalog: Catalog,
    ledger: Arc<Ledger>,
    cgroups: Arc<dyn CgroupDriver>,
    spawner: Arc<dyn Spawner>,
    logs: Arc<LogPipeline>,
    sandbox: Arc<Sandbox>,
    registry: RwLock<Registry>,
    defaults: SpecDefaults,
    runtime_path: String,
    shutting_down: std::sync::atomic::AtomicBool,
    draining: std::sync::atomic::AtomicBool,
    stats: Stats,
    utilization: watch::Sender<Arc<Snapshot>>,
    instance_id: String,
    state: StateStore,
    /// Environments of a previous life of the agent, found in the state directory at start-up: stopped and
    /// cleaned up, shown FAILED until the control plane deletes them.
    lost: RwLock<HashMap<String, lmi_proto::v1::Environment>>,
    /// Caller-chosen request ids of the invokes running here.
    caller_ids: InFlightIds,
}

/// Error type of an environment that a previous life of the agent left behind.
pub const AGENT_RESTARTED: &str = "Agent.Restarted";

/// What start-up reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Recorded environments, now reported lost.
    pub lost: Vec<String>,
    /// Cgroups of environments without a record, removed.
    pub orphan_cgroups: Vec<String>,
}

/// The host services an [`Agent`] drives: each wraps an OS effect (cgroups, processes, files, namespaces).
#[derive(Debug)]
pub struct HostServices {
    pub cgroups: Arc<dyn CgroupDriver>,
    pub spawner: Arc<dyn Spawner>,
    pub state: StateStore,
    pub logs: Arc<LogPipeline>,
    pub sandbox: Arc<Sandbox>,
}

impl Agent {
    pub fn new(
        config: Config,
        catalog: Catalog,
        capacity: HostCapacity,
        services: HostServices,
    ) -> Arc<Self> {
        let HostServices {
            cgroups,
            spawner,
            state,
            logs,
            sandbox,
        } = services;
        let defaults = SpecDefaults {
            region: config.region.clone(),
            account_id: config.account_id.clone(),
        };
        let runtime_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned());
        Arc::new(Self {
            config,
            catalog,
            ledger: Arc::new(Ledger::new(capacity)),
            cgroups,
            spawner,
            logs,
            sandbox,
            registry: RwLock::new(Registry::default()),
            defaults,
            runtime_path,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            stats: Stats::default(),
            utilization: watch::Sender::new(Arc::new(Snapshot::default())),
            instance_id: uuid::Uuid::new_v4().to_string(),
            state,
            lost: RwLock::new(HashMap::new()),
            caller_ids: InFlightIds::default(),
        })
    }

    /// Start-up reconciliation, before the agent takes requests: every environment a previous life left
    /// (per the state records, and any `env-*` cgroup without a record) has its processes killed, its cgroup
    /// and /tmp removed; recorded ones are reported FAILED (`Agent.Restarted`, or the failure they already
    /// had) until deleted. Nothing of a previous life keeps running or holds capacity.
    pub async fn recover(self: &Arc<Self>) -> Recovery {
        let agent = self.clone();
        let recovery = tokio::task::spawn_blocking(move || agent.recover_blocking()).await;
        match recovery {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "start-up reconciliation failed");
                Recovery::default()
            }
        }
    }

    fn recover_blocking(&self) -> Recovery {
        let mut recovery = Recovery::default();
        let records = self.state.load_all();
        for mut rec in records {
            self.remove_leftovers(&rec.id);
            if rec.state() != lmi_proto::v1::EnvironmentState::Failed {
                rec.set_state(lmi_proto::v1::EnvironmentState::Failed);
                rec.failure = Some(lmi_proto::v1::Failure {
                    error_type: AGENT_RESTARTED.to_owned(),
                    message: "the agent stopped without draining (crash or SIGKILL) while this environment ran; \
                              its processes were stopped when the agent restarted"
                        .to_owned(),
                    at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
                });
            }
            rec.pid = 0;
            rec.in_flight = 0;
            if let Err(e) = self.state.save(&rec) {
                tracing::warn!(env = %rec.id, error = %e, "updating a lost environment's record failed");
            }
            tracing::warn!(env = %rec.id, "environment of a previous agent life stopped and reported lost");
            recovery.lost.push(rec.id.clone());
            self.lost
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rec.id.clone(), rec);
        }
        match self.cgroups.children() {
            Ok(children) => {
                for name in children {
                    let Some(id) = name.strip_prefix("env-") else {
                        continue;
                    };
                    if recovery.lost.iter().any(|l| l == id) {
                        continue;
                    }
                    tracing::warn!(cgroup = %name, "removing the cgroup of an unrecorded environment");
                    self.remove_leftovers(id);
                    recovery.orphan_cgroups.push(name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing leftover cgroups failed"),
        }
        recovery
    }

    /// Kills and removes what environment `id` may have left: cgroup (and its processes), /tmp mount, dirs.
    fn remove_leftovers(&self, id: &str) {
        match self.cgroups.open(&format!("env-{id}")) {
            Ok(Some(cg)) => {
                if let Err(e) = cg.remove() {
                    tracing::error!(env = %id, error = %e, "removing a leftover cgroup failed");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(env = %id, error = %e, "opening a leftover cgroup failed"),
        }
        let dir = self.config.state_dir.join("envs").join(id);
        if dir.join("tmp").exists() {
            let _ = EphemeralStorage::adopt(&dir.join("tmp")).remove();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Invoke counters (throttles by reason, redirects, outcomes, latency).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Identifies this life of the agent process in reports.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The latest utilization snapshot, and its updates.
    pub fn utilization(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.utilization.subscribe()
    }

    /// True after a drain directive.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Drains the host: no new environments or invokes; every environment finishes its in-flight invokes
    /// (up to the configured grace) and stops. The records stay until deleted.
    pub async fn drain_host(self: &Arc<Self>, reason: &str) {
        if self
            .draining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        tracing::warn!(reason, "draining the host");
        let grace = Duration::from_secs(u64::from(self.config.environments.delete_grace_seconds));
        let envs = self.list(None, None);
        futures_util::future::join_all(envs.iter().map(|e| self.stop(e, grace))).await;
    }

    /// Samples every environment and the host each period, forever (run it on its own task).
    pub async fn run_sampler(self: Arc<Self>) {
        let period = Duration::from_millis(self.config.utilization.sample_interval_ms);
        let mut sampler = Some(Sampler::new(
            self.config.utilization.clone(),
            HostReader::default(),
            self.config.state_dir.clone(),
        ));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticks.tick().await;
            let Some(mut s) = sampler.take() else { return };
            let agent = self.clone();
            // Reading cgroupfs is blocking file I/O: keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || {
                let envs = agent.list(None, None);
                let snap = s.tick(
                    &envs,
                    agent.ledger.capacity(),
                    agent.ledger.allocated(),
                    agent.is_draining(),
                    std::time::Instant::now(),
                );
                (s, snap)
            })
            .await;
            match done {
                Ok((s, snap)) => {
                    sampler = Some(s);
                    self.utilization.send_replace(Arc::new(snap));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the sampler failed; restarting it");
                    sampler = Some(Sampler::new(
                        self.config.utilization.clone(),
                        HostReader::default(),
                        self.config.state_dir.clone(),
                    ));
                }
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn cgroups(&self) -> &dyn CgroupDriver {
        self.cgroups.as_ref()
    }

    /// The function log pipeline.
    pub fn logs(&self) -> &LogPipeline {
        &self.logs
    }

    /// The host's part of the environments' sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Validates, reserves capacity, stages code, creates the cgroup and /tmp, starts the Runtime API and the
    /// runtime. Returns while the runtime initialises; on any error everything done so far is undone.
    pub async fn create(
        self: &Arc<Self>,
        spec: &lmi_proto::v1::EnvironmentSpec,
    ) -> Result<Arc<Environment>, CreateError> {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(CreateError::ShuttingDown);
        }
        if self.is_draining() {
            return Err(CreateError::Draining);
        }
        let mut clock = Stopwatch::start();
        let spec = spec::validate(spec, &self.catalog, &self.defaults)?;
        self.ledger
            .reserve(spec.vcpus, u64::from(spec.memory_mib))?;
        let (vcpus, memory_mib) = (spec.vcpus, u64::from(spec.memory_mib));
        let phases = AgentPhases {
            validate: clock.lap(),
            ..AgentPhases::default()
        };
        match self.start(spec, clock, phases).await {
            Ok(env) => Ok(env),
            Err(e) => {
                self.ledger.release(vcpus, memory_mib);
                Err(e)
            }
        }
    }

    async fn start(
        self: &Arc<Self>,
        spec: spec::ValidSpec,
        mut clock: Stopwatch,
        mut phases: AgentPhases,
    ) -> Result<Arc<Environment>, CreateError> {
        let id = uuid::Uuid::new_v4().to_string();
        let code_root = self.config.state_dir.join("code");
        let source = spec.code.clone();
        let limits = self.config.code.limits();
        let code_dir: PathBuf =
            tokio::task::spawn_blocking(move || code::stage(&source, &code_root, &limits))
                .await
                .map_err(|e| CreateError::Spawn(std::io::Error::other(e)))??;
        phases.code = clock.lap();

        let env_dir = self.config.state_dir.join("envs").join(&id);
        let env_dir_made = env_dir.clone();
        let log_capture = self.logs.prepare(&id).map_err(CreateError::LogSocket)?;
        let prepared = {
            let (sandbox, code, tmp, log_socket) = (
                self.sandbox.clone(),
                code_dir.clone(),
                env_dir.join("tmp"),
                log_capture.socket_path().to_owned(),
            );
            blocking(move || sandbox.prepare(&code, &tmp, &log_socket)).await??
        };
        let sandbox::Prepared {
            lease,
            listener,
            runtime_api,
            confinement,
        } = prepared;
        phases.sandbox = clock.lap();
        let mut lease = Some(lease);
        let launched = self
            .launch(
                Launch {
                    id,
                    spec,
                    code_dir,
                    env_dir,
                    listener,
                    runtime_api,
                    confinement,
                    log_capture,
                    clock,
                    phases,
                },
                &mut lease,
            )
            .await;
        if let Some(lease) = lease.take() {
            // Never handed to an environment: no process of it ran.
            let _ = blocking(move || lease.release(true)).await;
        }
        if launched.is_err() {
            // Empty by now (its /tmp mount point, if made, was removed with the mount).
            let _ = std::fs::remove_dir(&env_dir_made);
        }
        launched
    }

    /// Plans, creates the cgroup and /tmp, serves the Runtime API and spawns the runtime in its sandbox. Takes
    /// the sandbox `lease` into the environment once there is one (the caller releases it otherwise).
    async fn launch(
        self: &Arc<Self>,
        l: Launch,
        lease: &mut Option<EnvironmentSandbox>,
    ) -> Result<Arc<Environment>, CreateError> {
        let Launch {
            id,
            spec,
            code_dir,
            env_dir,
            listener,
            runtime_api: addr,
            confinement,
            log_capture,
            mut clock,
            mut phases,
        } = l;
        let tmp_dir = env_dir.join("tmp");
        let plan = launch::plan(
            &spec,
            &LaunchContext {
                env_id: &id,
                code_dir: &code_dir,
                task_root: Path::new(mounts::TASK_ROOT),
                shims_dir: &self.config.shims_dir,
                runtime_api: addr,
                region: &self.config.region,
                path: &self.runtime_path,
                tmp_dir: Path::new(mounts::TMP),
                log_socket: Some(Path::new(mounts::LOG_SOCKET)),
            },
        )?;
        phases.spawn = clock.lap();
        let limits = CgroupLimits::from_vcpus(
            u64::from(spec.vcpus),
            spec.memory_bytes(),
            self.config.environments.pids_max,
        );
        let cgroups = self.cgroups.clone();
        let name = format!("env-{id}");
        let cgroup: Arc<dyn crate::cgroup::EnvironmentCgroup> =
            Arc::from(blocking(move || cgroups.create(&name, &limits)).await??);
        let placement = match cgroup.placement() {
            Ok(p) => p,
            Err(e) => {
                let _ = blocking(move || cgroup.remove()).await;
                return Err(e.into());
            }
        };
        let size = spec.ephemeral_storage_mib;
        let tmp = match blocking(move || EphemeralStorage::create(&tmp_dir, size)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let _ = blocking(move || cgroup.remove()).await;
                return Err(e.into());
            }
            Err(e) => {
                let _ = blocking(move || cgroup.remove()).await;
                return Err(e);
            }
        };
        phases.cgroup = clock.lap();
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = blocking(move || {
                    let _ = cgroup.remove();
                    tmp.remove()
                })
                .await;
                return Err(CreateError::Listen(e));
            }
        };

        let init_timeout = match self.config.environments.init_timeout_seconds {
            0 => spec.init_timeout(),
            s => Duration::from_secs(u64::from(s)),
        };
        let env = Environment::new(id, spec, addr, cgroup, Some(tmp), lease.take());
        env.broker.observe(log_capture.platform_log(&env));
        let settled = if self.config.environments.refuse_late_and_oversized_answers {
            SettledAnswers::Refuse
        } else {
            SettledAnswers::Accept
        };
        let api = RuntimeApi::new(env.broker.clone(), env.clone()).with_settled_answers(settled);
        let api_server = tokio::spawn(api.serve(listener));
        phases.runtime_api += clock.lap();

        // Undoes what this function made, for the two failures below.
        let undo = |env: Arc<Environment>, api_server: tokio::task::JoinHandle<()>| async move {
            api_server.abort();
            let _ = blocking(move || {
                let gone = env.cgroup.remove().is_ok();
                if let Some(t) = &env.tmp {
                    let _ = t.remove();
                }
                if let Some(s) = &env.sandbox {
                    s.release(gone);
                }
                let _ = std::fs::remove_dir(env_dir);
            })
            .await;
        };
        let mut child = match self.spawner.spawn(&plan, placement, confinement) {
            Ok(c) => c,
            Err(e) => {
                undo(env, api_server).await;
                return Err(CreateError::Spawn(e));
            }
        };
        phases.spawn += clock.lap();
        env.spawned(child.id(), phases);
        {
            // Registered under the lock that shutdown lists environments with, after one more look at the
            // shutdown flag: an environment created while the agent stops is stopped, never left running.
            let mut r = self.write();
            if self
                .shutting_down
                .load(std::sync::atomic::Ordering::Acquire)
            {
                drop(r);
                let _ = child.start_kill();
                let _ = child.wait().await;
                undo(env, api_server).await;
                return Err(CreateError::ShuttingDown);
            }
            r.by_id.insert(env.id.clone(), env.clone());
            r.by_function
                .entry((env.spec.function_name.clone(), env.spec.version.clone()))
                .or_default()
                .push(env.clone());
        }
        // Recorded after registration: a crash from here on leaves a record for the next life to clean up
        // (and before it, the cgroup name env-<id> is enough for reconciliation to find the leftovers).
        if let Err(e) = self.state.save(&env.to_proto()) {
            tracing::warn!(env = %env.id, error = %e, "recording the environment failed");
        }
        let identity = env.sandbox.as_ref().map(|s| s.identity());
        tracing::info!(
            env = %env.id,
            function = %env.spec.function_name,
            version = %env.spec.version,
            runtime = %env.spec.runtime.id,
            vcpus = env.spec.vcpus,
            memory_mib = env.spec.memory_mib,
            max_concurrency = env.spec.max_concurrency,
            pid = child.id(),
            cgroup = %env.cgroup_path,
            runtime_api = %addr,
            uid = identity.map(|i| i.uid),
            address = env.sandbox.as_ref().and_then(|s| s.address()).map(tracing::field::display),
            sandbox_setup_us = u64::try_from(phases.sandbox.as_micros()).unwrap_or(u64::MAX),
            "environment started"
        );
        tokio::spawn(supervisor::supervise(Supervised {
            env: env.clone(),
            child,
            api_server,
            log_capture,
            ledger: self.ledger.clone(),
            init_timeout,
            stop_timeout: self.config.environments.stop_timeout(),
            state: self.state.clone(),
            stats: self
                .stats
                .function(&env.spec.function_name, &env.spec.version),
        }));
        Ok(env)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Environment>> {
        self.read().by_id.get(id).cloned()
    }

    /// An environment of a previous agent life (see [`Agent::recover`]).
    pub fn get_lost(&self, id: &str) -> Option<lmi_proto::v1::Environment> {
        self.lost
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every environment of a previous agent life, oldest id first.
    pub fn list_lost(&self) -> Vec<lmi_proto::v1::Environment> {
        let mut v: Vec<_> = self
            .lost
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Forgets a lost environment (its leftovers were removed at start-up).
    pub fn delete_lost(&self, id: &str) -> Option<lmi_proto::v1::Environment> {
        let mut env = self
            .lost
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)?;
        if let Err(e) = self.state.remove(id) {
            tracing::warn!(env = %id, error = %e, "removing a record failed");
        }
        env.set_state(lmi_proto::v1::EnvironmentState::Terminated);
        Some(env)
    }

    /// Environments, optionally of one function (and version), oldest first.
    pub fn list(&self, function: Option<&str>, version: Option<&str>) -> Vec<Arc<Environment>> {
        let mut v: Vec<_> = self
            .read()
            .by_id
            .values()
            .filter(|e| function.is_none_or(|f| e.spec.function_name == f))
            .filter(|e| version.is_none_or(|v| e.spec.version == v))
            .cloned()
            .collect();
        v.sort_by_key(|e| e.created_at);
        v
    }

    /// Drains (in-flight invokes may finish within `grace`), stops, cleans up and forgets an environment.
    pub async fn delete(&self, id: &str, grace: Option<Duration>) -> Option<Arc<Environment>> {
        let env = self.get(id)?;
        let grace = grace.unwrap_or(Duration::from_secs(u64::from(
            self.config.environments.delete_grace_seconds,
        )));
        self.stop(&env, grace).await;
        env.mark_deleted();
        let mut r = self.write();
        if r.by_id.remove(id).is_none() {
            // A concurrent delete of the same environment already forgot it.
            return Some(env);
        }
        if let Err(e) = self.state.remove(id) {
            tracing::warn!(env = %id, error = %e, "removing the environment's record failed");
        }
        let key = (env.spec.function_name.clone(), env.spec.version.clone());
        if let Some(list) = r.by_function.get_mut(&key) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                r.by_function.remove(&key);
            }
        }
        Some(env)
    }

    async fn stop(&self, env: &Arc<Environment>, grace: Duration) {
        if env.begin_drain() {
            tracing::info!(env = %env.id, in_flight = env.broker.in_flight(), grace_s = grace.as_secs(), "draining environment");
            let _ = tokio::time::timeout(grace, env.broker.wait_idle()).await;
        } else if env.state() == State::Draining {
            // Another delete is draining it within its own grace period: wait for that one to finish.
            env.cleaned().await;
            return;
        }
        env.request_stop();
        env.cleaned().await;
    }

    /// Runs one invoke on the least-loaded READY environment of the function version.
    pub async fn invoke(&self, input: InvokeInput) -> Result<InvokeResult, InvokeError> {
        if input.payload.len() > MAX_INVOKE_PAYLOAD {
            return Err(InvokeError::Invalid(format!(
                "payload of {} bytes exceeds the {MAX_INVOKE_PAYLOAD}-byte limit",
                input.payload.len()
            )));
        }
        if !spec::valid_function_name(&input.function_name) {
            return Err(InvokeError::Invalid(format!(
                "function_name {} must be 1-64 letters, digits, '-' and '_'",
                quote(&input.function_name)
            )));
        }
        let version = if input.version.is_empty() {
            LATEST.to_owned()
        } else if spec::valid_version(&input.version) {
            input.version
        } else {
            return Err(InvokeError::Invalid(format!(
                "function_version {} must be $LATEST or 1-128 letters, digits, '-' and '_'",
                quote(&input.version)
            )));
        };
        let chosen = input.request_id.filter(|id| !id.is_empty());
        if let Some(id) = &chosen {
            request_id::validate(id).map_err(InvokeError::Invalid)?;
        }
        for (name, value) in [
            ("client_context", &input.client_context),
            ("trace_id", &input.trace_id),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| hyper::header::HeaderValue::from_str(v).is_err())
            {
                return Err(InvokeError::Invalid(format!(
                    "{name} must be visible ASCII (it becomes an HTTP header)"
                )));
            }
        }
        if self.is_draining() {
            return Err(InvokeError::Draining);
        }
        // A caller-chosen id is held host-wide for the whole invoke: the same id cannot run on two
        // environments at once (each broker only knows its own).
        let (request_id, _held) = match chosen {
            Some(id) => match self.caller_ids.hold(&id) {
                Some(held) => (id, Some(held)),
                None => return Err(InvokeError::DuplicateRequestId(id)),
            },
            None => (uuid::Uuid::new_v4().to_string(), None),
        };
        let envs = self
            .read()
            .by_function
            .get(&(input.function_name.clone(), version.clone()))
            .cloned()
            .unwrap_or_default();
        if envs.is_empty() {
            return Err(InvokeError::NoEnvironment {
                function: input.function_name,
                version,
            });
        }
        let stats = self.stats.function(&input.function_name, &version);
        let started = std::time::Instant::now();
        let mut event = Event::new(
            request_id.clone(),
            input.payload,
            Duration::ZERO,
            String::new(),
            input.trace_id,
            input.client_context,
        );
        let plan = dispatch::plan(&envs);
        for env in &plan.candidates {
            let timeout = env.spec.timeout;
            event.function_arn.clone_from(&env.spec.arn);
            event.reset_deadline(timeout);
            match env.broker.submit(event) {
                Ok(pending) => {
                    if let Some(first) = plan.first_choice_saturated {
                        stats.redirected();
                        tracing::debug!(from = %first.id, to = %env.id, request_id = %request_id, "redirected");
                    }
                    let outcome = pending.wait(timeout).await;
                    stats.finished(outcome.kind(), started.elapsed());
                    return Ok(InvokeResult {
                        request_id,
                        environment_id: env.id.clone(),
                        version,
                        outcome,
                    });
                }
                Err(refusal) => match refusal.reason {
                    Rejected::DuplicateId => {
                        return Err(InvokeError::DuplicateRequestId(request_id))
                    }
                    Rejected::Full | Rejected::Closed => event = *refusal.event,
                },
            }
        }
        // Candidates that all filled up between the look and the submit were a concurrency limit.
        let reason = if plan.candidates.is_empty() {
            plan.throttle
        } else {
            ThrottleReason::Concurrency
        };
        stats.throttled(reason);
        let ready = envs.iter().filter(|e| e.state() == State::Ready).count();
        let message = match reason {
            ThrottleReason::NoReadyEnvironment => {
                let initializing = envs
                    .iter()
                    .filter(|e| e.state() == State::Initializing)
                    .count();
                format!(
                    "none of the {} environments of {}:{} is READY ({initializing} initializing, the others failed or draining)",
                    envs.len(),
                    input.function_name,
                    version
                )
            }
            ThrottleReason::Concurrency => format!(
                "all {ready} READY environments of {}:{} are at their max concurrency",
                input.function_name, version
            ),
            other => format!(
                "every READY environment of {}:{} with a free slot is saturated ({} over its threshold)",
                input.function_name,
                version,
                other.as_str()
            ),
        };
        Err(InvokeError::Throttled { reason, message })
    }

    /// Runtimes of the catalog with their availability here.
    pub fn runtimes(&self) -> Vec<(String, Option<String>, u32)> {
        self.catalog
            .iter()
            .map(|(e, a)| {
                let reason = match a {
                    Availability::Available => None,
                    Availability::Unavailable(r) => Some(r.clone()),
                };
                (e.id.clone(), reason, e.default_concurrency_per_vcpu)
            })
            .collect()
    }

    /// Fault injection for the watchdog tests only (`LMI_AGENT_FAULT=wedge-registry`): takes the registry's
    /// write lock on the calling thread and never gives it back, as a deadlock would. Never returns.
    #[doc(hidden)]
    pub fn fault_wedge_registry(&self, locked: impl FnOnce()) -> ! {
        let _held = self.write();
        locked();
        loop {
            std::thread::park();
        }
    }

    /// Number of environments known (any state, lost ones included).
    pub fn environment_count(&self) -> usize {
        self.read().by_id.len() + self.lost.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Graceful stop: refuse new environments and invokes, let in-flight invokes finish within `grace`, stop
    /// every runtime and remove every cgroup, then the sandbox's host part and the agent's parent cgroup.
    pub async fn shutdown(&self, grace: Duration) {
        {
            // Under the registry lock, so that a create either registered before this (and is listed below)
            // or sees the flag when it registers (and stops its own environment).
            let _r = self.write();
            self.shutting_down
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let envs = self.list(None, None);
        let stops = envs.iter().map(|e| self.stop(e, grace));
        futures_util::future::join_all(stops).await;
        // Everything was stopped and cleaned on purpose: nothing is left for the next life to reconcile.
        for e in &envs {
            if let Err(err) = self.state.remove(&e.id) {
                tracing::warn!(env = %e.id, error = %err, "removing a record failed");
            }
        }
        let sandbox = self.sandbox.clone();
        let _ = tokio::task::spawn_blocking(move || sandbox.shutdown()).await;
        let cgroups = self.cgroups.clone();
        match tokio::task::spawn_blocking(move || cgroups.remove_parent()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing the agent's parent cgroup failed"),
            Err(e) => tracing::warn!(error = %e, "parent cgroup removal task failed"),
        }
    }
}
