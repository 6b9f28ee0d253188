//! An execution environment's record and state machine.
//!
//! ```text
//! INITIALIZING ──first /next──▶ READY ──delete──▶ DRAINING ──stopped──▶ TERMINATED
//!      │                          │                                        ▲
//!      └── init error / init ─────┴── runtime exit / OOM ──▶ FAILED ──delete┘
//!          timeout / exit
//! ```
//! A FAILED environment is never restarted in place (LMI replaces environments): its processes and cgroup
//! are removed at once, its capacity is released, and its record stays, with the reason, until the control
//! plane deletes it.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{watch, Notify};

use crate::logs::LogStats;
use crate::spec::ValidSpec;
use crate::startup::AgentPhases;
use lmi_cgroup::{EnvironmentCgroup, Pressure};
use lmi_runtime_api::broker::Broker;
use lmi_runtime_api::invocation::ErrorInfo;
use lmi_runtime_api::{InitErrorAnswer, RuntimeEvents};
use lmi_sandbox::ephemeral::EphemeralStorage;
use lmi_sandbox::EnvironmentSandbox;

/// Lifecycle states (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initializing,
    Ready,
    Draining,
    Failed,
    Terminated,
}

/// Why an environment failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: ErrorInfo,
    pub at: SystemTime,
}

/// A consistent copy of an environment's changing fields.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    pub failure: Option<Failure>,
    pub ready_at: Option<SystemTime>,
    /// From the runtime's spawn to its first `/next`.
    pub init_duration: Option<Duration>,
    pub pid: Option<u32>,
    /// The agent's start-up phases, known once the runtime is spawned.
    pub agent_phases: Option<AgentPhases>,
    spawned_at: Option<Instant>,
    polled_at: Option<Instant>,
}

/// A utilization as its last raw sample and its smoothed value (0..1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Util {
    pub last: f64,
    pub smoothed: f64,
}

/// What the sampler last measured of an environment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time used, of the environment's vCPUs.
    pub cpu: Util,
    /// Memory working set, of its memory limit.
    pub memory: Util,
    /// /tmp usage, of its ephemeral storage.
    pub disk: Util,
    pub pressure: Option<Pressure>,
}

/// Which resources of an environment are over their admission thresholds (bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Saturation(u8);

impl Saturation {
    pub const CPU: Saturation = Saturation(1);
    pub const MEMORY: Saturation = Saturation(2);
    pub const DISK: Saturation = Saturation(4);
    pub const NONE: Saturation = Saturation(0);

    pub fn contains(self, other: Saturation) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn any(self) -> bool {
        self.0 != 0
    }

    #[must_use]
    pub fn with(self, other: Saturation, on: bool) -> Saturation {
        if on {
            Saturation(self.0 | other.0)
        } else {
            Saturation(self.0 & !other.0)
        }
    }
}

/// One execution environment.
#[derive(Debug)]
pub struct Environment {
    pub id: String,
    pub spec: ValidSpec,
    pub broker: Arc<Broker>,
    pub runtime_api: SocketAddr,
    pub cgroup_path: String,
    /// The environment's cgroup (the supervisor removes it; the sampler reads it).
    pub cgroup: Arc<dyn EnvironmentCgroup>,
    /// The environment's /tmp.
    pub tmp: Option<EphemeralStorage>,
    /// Its uid and network namespace (released by the supervisor once its processes are gone).
    pub sandbox: Option<EnvironmentSandbox>,
    usage: Mutex<Usage>,
    saturation: AtomicU8,
    pub created_at: SystemTime,
    /// Counters of the environment's function log capture.
    pub log_stats: Arc<LogStats>,
    started: Instant,
    status: Mutex<Status>,
    /// Wakes the supervisor: init completed, a failure was recorded or a stop was requested.
    pub(crate) wake: Notify,
    stop_requested: std::sync::atomic::AtomicBool,
    /// Fast path for `/next`: true once init completed (or failed), so polls after the first take no lock.
    init_over: std::sync::atomic::AtomicBool,
    /// Turns true when the supervisor has removed the processes and the cgroup.
    cleaned_tx: watch::Sender<bool>,
}

impl Environment {
    pub fn new(
        id: String,
        spec: ValidSpec,
        runtime_api: SocketAddr,
        cgroup: Arc<dyn EnvironmentCgroup>,
        tmp: Option<EphemeralStorage>,
        sandbox: Option<EnvironmentSandbox>,
    ) -> Arc<Self> {
        let broker = Broker::new(spec.max_concurrency);
        Arc::new(Self {
            id,
            spec,
            broker,
            runtime_api,
            cgroup_path: cgroup.path().to_owned(),
            cgroup,
            tmp,
            sandbox,
            usage: Mutex::new(Usage::default()),
            saturation: AtomicU8::new(0),
            created_at: SystemTime::now(),
            log_stats: Arc::default(),
            started: Instant::now(),
            status: Mutex::new(Status {
                state: State::Initializing,
                failure: None,
                ready_at: None,
                init_duration: None,
                pid: None,
                agent_phases: None,
                spawned_at: None,
                polled_at: None,
            }),
            wake: Notify::new(),
            stop_requested: std::sync::atomic::AtomicBool::new(false),
            init_over: std::sync::atomic::AtomicBool::new(false),
            cleaned_tx: watch::Sender::new(false),
        })
    }

    /// What the sampler last measured.
    pub fn usage(&self) -> Usage {
        *self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which resources are over their thresholds (read on every invoke: one atomic load).
    pub fn saturation(&self) -> Saturation {
        Saturation(self.saturation.load(Ordering::Acquire))
    }

    pub(crate) fn set_usage(&self, usage: Usage, saturation: Saturation) {
        *self.usage.lock().unwrap_or_else(|p| p.into_inner()) = usage;
        self.saturation.store(saturation.0, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the changing fields.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// The runtime was spawned (`pid`) after the agent's start-up `phases`; its init time counts from now.
    pub(crate) fn spawned(&self, pid: Option<u32>, phases: AgentPhases) {
        let now = Instant::now();
        let mut s = self.lock();
        s.pid = pid;
        s.agent_phases = Some(phases);
        s.spawned_at = Some(now);
        if let Some(polled) = s.polled_at {
            // The runtime polled before this was recorded: its init took (almost) no time.
            s.init_duration = Some(polled.saturating_duration_since(now));
        }
    }

    /// Records a failure (first one wins) and stops admitting. Returns false if the environment had already
    /// failed or was being stopped on purpose.
    pub(crate) fn fail(&self, error: ErrorInfo) -> bool {
        self.fail_if(error, |state| {
            matches!(state, State::Initializing | State::Ready)
        })
    }

    /// The init deadline passed: fails the environment only if it is still INITIALIZING (checked under the
    /// same lock that the first `/next` takes to make it READY). True if it failed now.
    pub(crate) fn init_timed_out(&self, error: ErrorInfo) -> bool {
        self.fail_if(error, |state| state == State::Initializing)
    }

    fn fail_if(&self, error: ErrorInfo, allowed: impl Fn(State) -> bool) -> bool {
        let mut s = self.lock();
        if !allowed(s.state) {
            return false;
        }
        s.state = State::Failed;
        s.failure = Some(Failure {
            error,
            at: SystemTime::now(),
        });
        drop(s);
        self.init_over
            .store(true, std::sync::atomic::Ordering::Release);
        self.broker.stop_admitting();
        self.wake.notify_one();
        true
    }

    /// Starts a delete: no new invokes; in-flight ones go on. False if already draining or gone.
    pub(crate) fn begin_drain(&self) -> bool {
        let mut s = self.lock();
        match s.state {
            State::Initializing | State::Ready => {
                s.state = State::Draining;
                drop(s);
                self.broker.stop_admitting();
                true
            }
            _ => false,
        }
    }

    /// Asks the supervisor to stop the runtime now.
    pub(crate) fn request_stop(&self) {
        self.stop_requested
            .store(true, std::sync::atomic::Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_requested
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Final state after the supervisor cleaned up: FAILED stays FAILED, anything else is TERMINATED.
    pub(crate) fn mark_cleaned(&self) {
        {
            let mut s = self.lock();
            s.pid = None;
            if s.state != State::Failed {
                s.state = State::Terminated;
            }
        }
        self.cleaned_tx.send_replace(true);
    }

    /// A deleted FAILED environment ends TERMINATED too (its failure is kept).
    pub(crate) fn mark_deleted(&self) {
        self.lock().state = State::Terminated;
    }

    /// Resolves once processes and cgroup are gone.
    pub async fn cleaned(&self) {
        let mut rx = self.cleaned_tx.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    pub fn is_cleaned(&self) -> bool {
        *self.cleaned_tx.borrow()
    }
}

impl Environment {
    /// Whose records this environment's log lines are.
    pub fn log_source(&self) -> crate::logs::Source {
        crate::logs::Source {
            function: self.spec.function_name.clone(),
            version: self.spec.version.clone(),
            environment: self.id.clone(),
        }
    }
}

impl RuntimeEvents for Environment {
    fn polled(&self) {
        if self.init_over.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut s = self.lock();
        self.init_over
            .store(true, std::sync::atomic::Ordering::Release);
        if s.state == State::Initializing {
            s.state = State::Ready;
            let now = Instant::now();
            s.ready_at = Some(SystemTime::now());
            s.polled_at = Some(now);
            let since = s.spawned_at.unwrap_or(self.started);
            s.init_duration = Some(now.saturating_duration_since(since));
            drop(s);
            // The supervisor disarms the init deadline on this change.
            self.wake.notify_one();
            tracing::info!(env = %self.id, function = %self.spec.function_name, "environment ready");
        }
    }

    fn init_error(&self, error: ErrorInfo) -> InitErrorAnswer {
        // Checked and applied under one lock: an init error that arrives after the first /next is refused.
        if self.fail_if(error.clone(), |state| state == State::Initializing) {
            tracing::info!(env = %self.id, error_type = %error.error_type, "runtime reported an init error");
            InitErrorAnswer::Accepted
        } else {
            InitErrorAnswer::Refused
        }
    }
}

/// Environments for unit tests: a minimal valid spec on a one-runtime catalog, a [`FakeCgroup`] and no
/// sandbox, so that the logic above them (state machine, supervisor, dispatch) runs without root.
///
/// [`FakeCgroup`]: lmi_cgroup::fake::FakeCgroup
#[cfg(any(test, feature = "test-util"))]
pub(crate) mod testing {
    use lmi_proto::v1 as pb;

    /// A spec of function `function` on runtime `runtime` with code `/`, handler `app.handler` and
    /// `max_concurrency` slots.
    pub(crate) fn wire_spec(
        runtime: &str,
        function: &str,
        max_concurrency: u32,
    ) -> pb::EnvironmentSpec {
        pb::EnvironmentSpec {
            function: Some(pb::FunctionRef {
                name: function.to_owned(),
                ..Default::default()
            }),
            runtime: runtime.into(),
            handler: "app.handler".into(),
            code: Some(pb::Code {
                // A small directory every user can read (create refuses code the function could not read).
                source: Some(pb::code::Source::Directory(
                    concat!(env!("CARGO_MANIFEST_DIR"), "/catalog").into(),
                )),
                sha256: String::new(),
            }),
            max_concurrency,
            ..Default::default()
        }
    }

    /// A new INITIALIZING environment of function `function` with `max_concurrency` slots.
    #[cfg(test)]
    pub(crate) fn environment(
        function: &str,
        max_concurrency: u32,
    ) -> std::sync::Arc<super::Environment> {
        let cgroup = std::sync::Arc::new(lmi_cgroup::fake::FakeCgroup::new(function));
        environment_in(function, max_concurrency, cgroup)
    }

    /// [`environment`] in the cgroup given (a [`FakeCgroup`](lmi_cgroup::fake::FakeCgroup) whose figures
    /// the test sets).
    #[cfg(test)]
    pub(crate) fn environment_in(
        function: &str,
        max_concurrency: u32,
        cgroup: std::sync::Arc<dyn lmi_cgroup::EnvironmentCgroup>,
    ) -> std::sync::Arc<super::Environment> {
        use crate::{catalog::Catalog, spec};

        let catalog = Catalog::parse(
            "[[runtime]]\nid = \"test1\"\ncommand = [\"sh\"]\ndefault_concurrency_per_vcpu = 16\n",
            "test",
        )
        .expect("test catalog");
        let wire = wire_spec("test1", function, max_concurrency);
        let defaults = spec::SpecDefaults {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        };
        let spec = crate::wire::spec::validate(&wire, &catalog, &defaults).expect("test spec");
        super::Environment::new(
            format!("env-{function}"),
            spec,
            "127.0.0.1:9".parse().expect("address"),
            cgroup,
            None,
            None,
        )
    }
}
