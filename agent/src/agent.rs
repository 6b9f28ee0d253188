//! The host agent: environments by id and by function version, capacity, and the operations the control
//! API exposes (create, get, list, delete, invoke, host).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use bytes::Bytes;

use crate::{
    broker::Rejected,
    capacity::{HostCapacity, InsufficientCapacity, Ledger},
    catalog::{Availability, Catalog},
    cgroup::{CgroupDriver, CgroupError, CgroupLimits},
    code::{self, CodeError},
    config::Config,
    dispatch::{self, ThrottleReason},
    environment::{Environment, State},
    invocation::{Event, Outcome},
    launch::{self, LaunchContext, LaunchError, Spawner},
    runtime_api::{RuntimeApi, MAX_RESPONSE_BYTES},
    spec::{self, SpecDefaults, SpecError, LATEST},
    startup::{AgentPhases, Stopwatch},
    supervisor::{self, Supervised},
};

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
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// Why an invoke did not run.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("invalid invoke: {0}")]
    Invalid(String),
    #[error("no execution environment for function {function} version {version} on this host")]
    NoEnvironment { function: String, version: String },
    #[error("request id {0} is already in flight")]
    DuplicateRequestId(String),
    #[error("throttled ({}): {message}", reason.as_str())]
    Throttled {
        reason: ThrottleReason,
        message: String,
    },
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
    registry: RwLock<Registry>,
    defaults: SpecDefaults,
    runtime_path: String,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Agent {
    pub fn new(
        config: Config,
        catalog: Catalog,
        capacity: HostCapacity,
        cgroups: Arc<dyn CgroupDriver>,
        spawner: Arc<dyn Spawner>,
    ) -> Arc<Self> {
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
            registry: RwLock::new(Registry::default()),
            defaults,
            runtime_path,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        })
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

    /// Validates, reserves capacity, stages code, creates the cgroup, starts the Runtime API and the
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
        let task_root: PathBuf =
            tokio::task::spawn_blocking(move || code::stage(&source, &code_root))
                .await
                .map_err(|e| CreateError::Spawn(std::io::Error::other(e)))??;
        phases.code = clock.lap();

        let (listener, addr) = RuntimeApi::bind_loopback()
            .await
            .map_err(CreateError::Listen)?;
        phases.runtime_api = clock.lap();
        let plan = launch::plan(
            &spec,
            &LaunchContext {
                env_id: &id,
                task_root: &task_root,
                shims_dir: &self.config.shims_dir,
                runtime_api: addr,
                region: &self.config.region,
                path: &self.runtime_path,
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
        let cgroup = tokio::task::spawn_blocking(move || cgroups.create(&name, &limits))
            .await
            .map_err(|e| CreateError::Spawn(std::io::Error::other(e)))??;
        let placement = match cgroup.placement() {
            Ok(p) => p,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e.into());
            }
        };
        phases.cgroup = clock.lap();

        let init_timeout = match self.config.environments.init_timeout_seconds {
            0 => spec.init_timeout(),
            s => Duration::from_secs(u64::from(s)),
        };
        let env = Environment::new(id, spec, addr, cgroup.path().to_owned());
        let api = RuntimeApi::new(env.broker.clone(), env.clone());
        let api_server = tokio::spawn(api.serve(listener));
        phases.runtime_api += clock.lap();

        let child = match self.spawner.spawn(&plan, placement) {
            Ok(c) => c,
            Err(e) => {
                api_server.abort();
                let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
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
                let mut child = child;
                let _ = child.start_kill();
                let _ = child.wait().await;
                api_server.abort();
                let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
                return Err(CreateError::ShuttingDown);
            }
            r.by_id.insert(env.id.clone(), env.clone());
            r.by_function
                .entry((env.spec.function_name.clone(), env.spec.version.clone()))
                .or_default()
                .push(env.clone());
        }
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
            "environment started"
        );
        tokio::spawn(supervisor::supervise(Supervised {
            env: env.clone(),
            child,
            cgroup,
            api_server,
            ledger: self.ledger.clone(),
            init_timeout,
            stop_timeout: self.config.environments.stop_timeout(),
        }));
        Ok(env)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Environment>> {
        self.read().by_id.get(id).cloned()
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
        let version = if input.version.is_empty() {
            LATEST.to_owned()
        } else {
            input.version
        };
        let request_id = match input.request_id {
            Some(id) if !id.is_empty() => {
                if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) || id.contains('/') {
                    return Err(InvokeError::Invalid(
                        "request_id must be 1-128 visible ASCII characters without '/'".to_owned(),
                    ));
                }
                id
            }
            _ => uuid::Uuid::new_v4().to_string(),
        };
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
        let mut event = Event::new(
            request_id.clone(),
            input.payload,
            Duration::ZERO,
            String::new(),
            input.trace_id,
            input.client_context,
        );
        for env in dispatch::candidates(&envs) {
            let timeout = env.spec.timeout;
            event.function_arn.clone_from(&env.spec.arn);
            event.reset_deadline(timeout);
            match env.broker.submit(event) {
                Ok(pending) => {
                    let outcome = pending.wait(timeout).await;
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
        let ready = envs.iter().filter(|e| e.state() == State::Ready).count();
        let message = if ready == 0 {
            format!(
                "none of the {} environments of {}:{} is READY",
                envs.len(),
                input.function_name,
                version
            )
        } else {
            format!(
                "all {ready} READY environments of {}:{} are at their max concurrency",
                input.function_name, version
            )
        };
        Err(InvokeError::Throttled {
            reason: ThrottleReason::Concurrency,
            message,
        })
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

    /// Number of environments known (any state).
    pub fn environment_count(&self) -> usize {
        self.read().by_id.len()
    }

    /// Graceful stop: refuse new environments and invokes, let in-flight invokes finish within `grace`, stop
    /// every runtime and remove every cgroup, then the agent's parent cgroup.
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
        let cgroups = self.cgroups.clone();
        match tokio::task::spawn_blocking(move || cgroups.remove_parent()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing the agent's parent cgroup failed"),
            Err(e) => tracing::warn!(error = %e, "parent cgroup removal task failed"),
        }
    }
}
