//! The host agent: environments by id and by function version, capacity, and the operations the control
//! API exposes, one file per operation:
//!
//! - [`create`](Agent::create) (`create.rs`): validate → reserve → stage code → sandbox → cgroup → /tmp →
//!   Runtime API → spawn → register → record, undone step by step on failure;
//! - [`invoke`](Agent::invoke) (`invoke.rs`): routing, redirects and throttle reasons;
//! - [`recover`](Agent::recover) (`recover.rs`): start-up reconciliation with what a previous life left;
//! - [`delete`](Agent::delete), [`drain_host`](Agent::drain_host), [`shutdown`](Agent::shutdown)
//!   (`stop.rs`);
//! - `fault.rs`: the fault-injection hook of the watchdog tests.
//!
//! The OS parts without a trait of their own (sandbox, /tmp, spawning into the sandbox) are reached through
//! the small traits of [`host`], so that the unit tests (`testing.rs`, `tests.rs`) run the core without root.

mod create;
mod fault;
pub mod host;
mod invoke;
mod recover;
mod stop;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use tokio::sync::watch;

use crate::capacity::{HostCapacity, Ledger};
use crate::catalog::{Availability, Catalog};
use crate::config::Config;
use crate::environment::Environment;
use crate::host::HostReader;
use crate::launch::Spawner;
use crate::logs::LogPipeline;
use crate::sampler::{Sampler, Snapshot, TickTimes};
use crate::spec::SpecDefaults;
use crate::state::StateStore;
use crate::stats::Stats;
use lmi_cgroup::CgroupDriver;
use lmi_runtime_api::request_id::InFlightIds;
use lmi_sandbox::Sandbox;

pub use create::{CreateError, CreateRequest};
pub use host::{RuntimeSpawner, SandboxHost, TmpStorage};
pub use invoke::{InvokeError, InvokeInput, InvokeResult, StreamedInvoke, MAX_INVOKE_PAYLOAD};
pub use recover::{Recovery, AGENT_RESTARTED};

use crate::version_map::VersionMap;

/// The environments of one function version.
type Environments = Arc<[Arc<Environment>]>;

#[derive(Debug, Default)]
struct Registry {
    by_id: HashMap<String, Arc<Environment>>,
    /// An invoke looks its names up as they are and takes the list by its reference count; a create or a
    /// delete replaces the list whole.
    by_function: VersionMap<Environments>,
}

impl Registry {
    /// The environments of a function version in the order they were registered; `None` when it has none.
    fn of_function(&self, function: &str, version: &str) -> Option<Environments> {
        self.by_function.get(function, version).cloned()
    }

    /// Adds an environment to its function version's list.
    fn add_to_function(&mut self, env: &Arc<Environment>) {
        let list = self.by_function.get_or_insert_with(
            &env.spec.function_name,
            &env.spec.version,
            Default::default,
        );
        *list = list.iter().chain([env]).cloned().collect();
    }

    /// Removes the environment `id` from the list of its function version, and the list once empty.
    fn remove_from_function(&mut self, function: &str, version: &str, id: &str) {
        if let Some(list) = self.by_function.get_mut(function, version) {
            *list = list.iter().filter(|e| e.id != id).cloned().collect();
            if list.is_empty() {
                self.by_function.remove(function, version);
            }
        }
    }
}

/// The agent's services, shared by the control API and the daemon.
#[derive(Debug)]
pub struct Agent {
    config: Config,
    catalog: Catalog,
    ledger: Arc<Ledger>,
    cgroups: Arc<dyn CgroupDriver>,
    spawner: Arc<dyn RuntimeSpawner>,
    logs: Arc<LogPipeline>,
    sandbox: Arc<dyn SandboxHost>,
    tmp: Arc<dyn TmpStorage>,
    registry: RwLock<Registry>,
    defaults: SpecDefaults,
    runtime_path: String,
    shutting_down: std::sync::atomic::AtomicBool,
    draining: std::sync::atomic::AtomicBool,
    stats: Stats,
    utilization: watch::Sender<Arc<Snapshot>>,
    tick_times: TickTimes,
    instance_id: String,
    state: StateStore,
    /// Environments of a previous life of the agent, found in the state directory at start-up: stopped and
    /// cleaned up, shown FAILED until the control plane deletes them.
    lost: RwLock<HashMap<String, crate::state::LostEnvironment>>,
    /// Caller-chosen request ids of the invokes running here.
    caller_ids: InFlightIds,
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

/// Every part an [`Agent`] drives, as the traits its core uses: [`HostServices`] makes the production set;
/// the unit tests give fakes.
#[derive(Debug)]
pub struct AgentParts {
    pub cgroups: Arc<dyn CgroupDriver>,
    pub spawner: Arc<dyn RuntimeSpawner>,
    pub state: StateStore,
    pub logs: Arc<LogPipeline>,
    pub sandbox: Arc<dyn SandboxHost>,
    pub tmp: Arc<dyn TmpStorage>,
}

impl From<HostServices> for AgentParts {
    fn from(s: HostServices) -> Self {
        Self {
            cgroups: s.cgroups,
            spawner: Arc::new(host::Confined(s.spawner)),
            state: s.state,
            logs: s.logs,
            sandbox: s.sandbox,
            tmp: Arc::new(host::Tmpfs),
        }
    }
}

impl Agent {
    pub fn new(
        config: Config,
        catalog: Catalog,
        capacity: HostCapacity,
        services: HostServices,
    ) -> Arc<Self> {
        Self::with_parts(config, catalog, capacity, services.into())
    }

    /// An agent on any set of parts (fakes in tests).
    pub fn with_parts(
        config: Config,
        catalog: Catalog,
        capacity: HostCapacity,
        parts: AgentParts,
    ) -> Arc<Self> {
        let AgentParts {
            cgroups,
            spawner,
            state,
            logs,
            sandbox,
            tmp,
        } = parts;
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
            tmp,
            registry: RwLock::new(Registry::default()),
            defaults,
            runtime_path,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            stats: Stats::default(),
            utilization: watch::Sender::new(Arc::new(Snapshot::default())),
            tick_times: TickTimes::default(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            state,
            lost: RwLock::new(HashMap::new()),
            caller_ids: InFlightIds::default(),
        })
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

    /// How long the sampler's ticks took so far.
    pub fn tick_times(&self) -> &TickTimes {
        &self.tick_times
    }

    /// True after a drain directive.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
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
                let (started, cpu) = (std::time::Instant::now(), crate::sampler::thread_cpu_time());
                let envs = agent.list(None, None);
                let snap = s.tick(
                    &envs,
                    agent.ledger.capacity(),
                    agent.ledger.allocated(),
                    agent.is_draining(),
                    std::time::Instant::now(),
                );
                agent.tick_times.record(
                    started.elapsed(),
                    crate::sampler::thread_cpu_time().saturating_sub(cpu),
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

    /// The defaults a spec's validation fills in (region, account).
    pub fn spec_defaults(&self) -> &SpecDefaults {
        &self.defaults
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
    pub fn sandbox(&self) -> &dyn SandboxHost {
        self.sandbox.as_ref()
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

    /// Number of environments known (any state, lost ones included).
    pub fn environment_count(&self) -> usize {
        self.read().by_id.len() + self.lost.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
