//! Creating an environment: validate → reserve capacity → stage the code → prepare the sandbox → cgroup →
//! /tmp → Runtime API → spawn → register → record. Every step that leaves something behind is recorded in
//! one [`Rollback`], which undoes exactly those steps, in reverse order, when the create fails (or is
//! cancelled); a registered environment belongs to its supervisor instead.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{process::Child, task::AbortHandle};

use crate::capacity::{InsufficientCapacity, Ledger};
use crate::code::{self, CodeError};
use crate::environment::Environment;
use crate::launch::{self, LaunchContext, LaunchError};
use crate::spec::{self, SpecError};
use crate::startup::{AgentPhases, Stopwatch};
use crate::supervisor::{self, Supervised};
use lmi_cgroup::{CgroupError, CgroupLimits, EnvironmentCgroup};
use lmi_runtime_api::{RuntimeApi, SettledAnswers};
use lmi_sandbox::{mounts, SandboxError};

use super::{
    host::{PreparedSandbox, SandboxLease, TmpStorage},
    Agent,
};

/// Runs blocking work (cgroupfs, mounts) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CreateError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CreateError::Spawn(std::io::Error::other(e)))
}

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
    Ephemeral(#[from] lmi_sandbox::ephemeral::EphemeralError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// An environment to create: its spec, validated, and the time validation took (a phase of its start-up).
#[derive(Debug)]
pub struct CreateRequest {
    pub spec: spec::ValidSpec,
    pub validated_in: Duration,
}

impl Agent {
    /// Reserves capacity, stages code, creates the cgroup and /tmp, starts the Runtime API and the runtime, for
    /// a spec validated on the wire ([`crate::wire::spec::create_request`]). Returns while the runtime
    /// initialises; on any error everything done so far is undone.
    pub async fn create(
        self: &Arc<Self>,
        request: CreateRequest,
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
        let CreateRequest { spec, validated_in } = request;
        let mut done = Rollback::new(self.ledger.clone(), self.tmp.clone());
        let (vcpus, memory_mib) = (spec.vcpus, u64::from(spec.memory_mib));
        self.ledger.reserve(vcpus, memory_mib)?;
        done.reserved = Some((vcpus, memory_mib));
        let phases = AgentPhases {
            validate: validated_in + clock.lap(),
            ..AgentPhases::default()
        };
        match self.start(spec, clock, phases, &mut done).await {
            Ok(env) => Ok(env),
            Err(e) => {
                done.fail().await;
                Err(e)
            }
        }
    }

    /// Every step after the reservation; what it leaves behind is recorded in `done`.
    async fn start(
        self: &Arc<Self>,
        spec: spec::ValidSpec,
        mut clock: Stopwatch,
        mut phases: AgentPhases,
        done: &mut Rollback,
    ) -> Result<Arc<Environment>, CreateError> {
        let id = uuid::Uuid::new_v4().to_string();
        let code_root = self.config.state_dir.join("code");
        let source = spec.code.clone();
        let limits = self.config.code.limits();
        let code_dir: PathBuf =
            blocking(move || code::stage(&source, &code_root, &limits)).await??;
        phases.code = clock.lap();

        let env_dir = self.config.state_dir.join("envs").join(&id);
        let tmp_dir = env_dir.join("tmp");
        // Made by the /tmp step; removed (once empty) on failure from here on.
        done.env_dir = Some(env_dir.clone());
        let log_capture = self.logs.prepare(&id).map_err(CreateError::LogSocket)?;
        let PreparedSandbox {
            lease,
            listener,
            runtime_api: addr,
            confinement,
        } = {
            let (sandbox, code, tmp, log_socket) = (
                self.sandbox.clone(),
                code_dir.clone(),
                tmp_dir.clone(),
                log_capture.socket_path().to_owned(),
            );
            blocking(move || sandbox.prepare(&code, &tmp, &log_socket)).await??
        };
        done.lease = Some(HeldLease {
            lease,
            environment: None,
        });
        phases.sandbox = clock.lap();

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
        let cgroup: Arc<dyn EnvironmentCgroup> =
            Arc::from(blocking(move || cgroups.create(&name, &limits)).await??);
        done.cgroup = Some(cgroup.clone());
        let placement = cgroup.placement()?;

        let (storage, size) = (self.tmp.clone(), spec.ephemeral_storage_mib);
        let dir = tmp_dir.clone();
        let tmp = blocking(move || storage.create(&dir, size)).await??;
        done.tmp = Some(tmp_dir);
        phases.cgroup = clock.lap();

        let listener = tokio::net::TcpListener::from_std(listener).map_err(CreateError::Listen)?;
        let init_timeout = match self.config.environments.init_timeout_seconds {
            0 => spec.init_timeout(),
            s => Duration::from_secs(u64::from(s)),
        };
        let env = Environment::new(id, spec, addr, cgroup, tmp, done.hand_over_lease());
        done.lease_held_by(&env);
        env.broker.observe(log_capture.platform_log(
            env.log_source(),
            env.log_stats.clone(),
            env.spec.timeout,
            env.spec.max_concurrency,
        ));
        let settled = if self.config.environments.refuse_late_and_oversized_answers {
            SettledAnswers::Refuse
        } else {
            SettledAnswers::Accept
        };
        let api = RuntimeApi::new(env.broker.clone(), env.clone()).with_settled_answers(settled);
        let api_server = tokio::spawn(api.serve(listener));
        done.api_server = Some(api_server.abort_handle());
        phases.runtime_api += clock.lap();

        let child = self
            .spawner
            .spawn(&plan, placement, confinement)
            .map_err(CreateError::Spawn)?;
        let pid = child.id();
        phases.spawn += clock.lap();
        env.spawned(pid, phases);
        {
            // Registered under the lock that shutdown lists environments with, after one more look at the
            // shutdown flag: an environment created while the agent stops is stopped, never left running.
            let mut r = self.write();
            if self
                .shutting_down
                .load(std::sync::atomic::Ordering::Acquire)
            {
                // No await since the spawn: the process is recorded only where it is to be undone.
                done.child = Some(child);
                return Err(CreateError::ShuttingDown);
            }
            r.by_id.insert(env.id.clone(), env.clone());
            r.add_to_function(&env);
        }
        // Registered: from here on the supervisor owns the process, the Runtime API and every cleanup.
        done.commit();
        // Recorded after registration: a crash from here on leaves a record for the next life to clean up
        // (and before it, the cgroup name env-<id> is enough for reconciliation to find the leftovers).
        if let Err(e) = self.state.save(&crate::wire::environment::to_proto(&env)) {
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
}

/// The sandbox lease of an environment being created, and the environment that holds its part once made.
#[derive(Debug)]
struct HeldLease {
    lease: Box<dyn SandboxLease>,
    environment: Option<Arc<Environment>>,
}

/// What a create has done so far. Undone in reverse order by [`Rollback::fail`], or on drop (a cancelled
/// create), unless [`Rollback::commit`] handed it to the supervisor first. A cancelled create's blocking step
/// still running (cgroup creation, say) finishes unrecorded: what it makes is left for the next start's
/// reconciliation, as everything of a cancelled create was before this guard.
#[derive(Debug)]
pub(super) struct Rollback {
    ledger: Arc<Ledger>,
    storage: Arc<dyn TmpStorage>,
    /// 1. Capacity reserved: released.
    reserved: Option<(u32, u64)>,
    /// 2. `<state_dir>/envs/<id>`: removed once empty.
    env_dir: Option<PathBuf>,
    /// 3. The sandbox lease: released (the uid given back only once no process of it can run).
    lease: Option<HeldLease>,
    /// 4. The cgroup: its processes killed, removed.
    cgroup: Option<Arc<dyn EnvironmentCgroup>>,
    /// 5. The /tmp: removed.
    tmp: Option<PathBuf>,
    /// 6. The Runtime API server: stopped.
    api_server: Option<AbortHandle>,
    /// 7. The runtime process: killed and reaped.
    child: Option<Child>,
}

impl Rollback {
    fn new(ledger: Arc<Ledger>, storage: Arc<dyn TmpStorage>) -> Self {
        Self {
            ledger,
            storage,
            reserved: None,
            env_dir: None,
            lease: None,
            cgroup: None,
            tmp: None,
            api_server: None,
            child: None,
        }
    }

    /// The part of the lease the environment keeps; the lease stays recorded to be released through it.
    fn hand_over_lease(&mut self) -> Option<lmi_sandbox::EnvironmentSandbox> {
        self.lease.as_mut().and_then(|l| l.lease.hand_over())
    }

    fn lease_held_by(&mut self, env: &Arc<Environment>) {
        if let Some(l) = &mut self.lease {
            l.environment = Some(env.clone());
        }
    }

    /// The create succeeded: nothing is undone; the supervisor owns what was made.
    fn commit(&mut self) {
        self.reserved = None;
        self.env_dir = None;
        self.lease = None;
        self.cgroup = None;
        self.tmp = None;
        self.api_server = None;
        self.child = None;
    }

    fn take(&mut self) -> Self {
        std::mem::replace(self, Self::new(self.ledger.clone(), self.storage.clone()))
    }

    fn is_empty(&self) -> bool {
        self.reserved.is_none()
            && self.env_dir.is_none()
            && self.lease.is_none()
            && self.cgroup.is_none()
            && self.tmp.is_none()
            && self.api_server.is_none()
            && self.child.is_none()
    }

    /// Undoes every recorded step, last first.
    pub(super) async fn fail(&mut self) {
        self.take().undo().await;
    }

    async fn undo(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        if let Some(api_server) = self.api_server.take() {
            api_server.abort();
        }
        let (storage, tmp, cgroup, lease, env_dir) = (
            self.storage.clone(),
            self.tmp.take(),
            self.cgroup.take(),
            self.lease.take(),
            self.env_dir.take(),
        );
        let removed = tokio::task::spawn_blocking(move || {
            undo_blocking(storage.as_ref(), tmp, cgroup, lease, env_dir)
        })
        .await;
        if let Err(e) = removed {
            tracing::error!(error = %e, "undoing a failed create did not finish");
        }
        if let Some((vcpus, memory_mib)) = self.reserved.take() {
            self.ledger.release(vcpus, memory_mib);
        }
    }
}

/// Steps 5 to 2, which block (umount, cgroupfs, `ip`).
fn undo_blocking(
    storage: &dyn TmpStorage,
    tmp: Option<PathBuf>,
    cgroup: Option<Arc<dyn EnvironmentCgroup>>,
    lease: Option<HeldLease>,
    env_dir: Option<PathBuf>,
) {
    if let Some(dir) = tmp {
        if let Err(e) = storage.remove(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the /tmp of a failed create failed");
        }
    }
    let cgroup_removed = match cgroup {
        Some(cg) => match cg.remove() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(cgroup = %cg.path(), error = %e, "removing the cgroup of a failed create failed");
                false
            }
        },
        None => true,
    };
    if let Some(HeldLease { lease, environment }) = lease {
        match environment.as_ref().and_then(|e| e.sandbox.as_ref()) {
            // Handed to the environment: a runtime may have run, so the uid comes back only with the cgroup.
            Some(s) => s.release(cgroup_removed),
            // Never handed to an environment: no process of it ran.
            None => lease.release(environment.is_none() || cgroup_removed),
        }
    }
    if let Some(dir) = env_dir {
        // Empty by now (its /tmp mount point, if made, was removed with the mount).
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for Rollback {
    /// A create dropped half-way (its caller went away) is undone on a task of its own.
    fn drop(&mut self) {
        if self.is_empty() {
            return;
        }
        let rest = self.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(rest.undo());
            }
            Err(_) => tracing::error!("a cancelled create could not be undone: no runtime"),
        }
    }
}
