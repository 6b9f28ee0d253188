//! The agent's view of the host parts that have no trait of their own: the sandbox, an environment's /tmp
//! and the spawn of a runtime into its sandbox. Production wraps [`Sandbox`], [`EphemeralStorage`] and a
//! [`Spawner`]; the unit tests put fakes here (`agent::testing`), so that the agent's core runs without root.

use std::{
    fmt::Debug,
    io,
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::Arc,
};

use tokio::process::Child;

use crate::launch::{LaunchPlan, Spawner};
use lmi_cgroup::Placement;
use lmi_sandbox::ephemeral::{EphemeralError, EphemeralStorage};
use lmi_sandbox::{
    self as sandbox, confine::Confinement, EnvironmentSandbox, Sandbox, SandboxError,
};

/// The host's part of the sandbox as the agent uses it.
pub trait SandboxHost: Send + Sync + Debug {
    /// Prepares an environment's part (see [`Sandbox::prepare`]). Blocking. On error nothing is held.
    fn prepare(
        &self,
        code: &Path,
        tmp: &Path,
        log_socket: &Path,
    ) -> Result<PreparedSandbox, SandboxError>;
    /// Removes the host's part, once every environment is cleaned up. Blocking.
    fn shutdown(&self);
}

/// An environment's sandbox, ready for its runtime.
#[derive(Debug)]
pub struct PreparedSandbox {
    /// What the environment holds until its processes are gone.
    pub lease: Box<dyn SandboxLease>,
    /// The Runtime API listener (non-blocking).
    pub listener: TcpListener,
    /// The Runtime API's address as the runtime sees it (`AWS_LAMBDA_RUNTIME_API`).
    pub runtime_api: SocketAddr,
    /// What the runtime applies to itself before `exec` (None from a sandbox that confines nothing: a fake).
    pub confinement: Option<Confinement>,
}

/// What one environment holds of the sandbox.
pub trait SandboxLease: Send + Sync + Debug {
    /// Moves the part the [`Environment`](crate::environment::Environment) keeps (and its supervisor
    /// releases) out of the lease; `None` when there is no such part.
    fn hand_over(&mut self) -> Option<EnvironmentSandbox>;
    /// Releases what the lease still holds (see [`EnvironmentSandbox::release`]). Idempotent. Blocking.
    fn release(&self, processes_gone: bool);
}

/// Where an environment's /tmp comes from.
pub trait TmpStorage: Send + Sync + Debug {
    /// Makes `dir` (and its parents) the environment's /tmp of `size_mib`. `None`: storage the environment
    /// need not hold (it is removed with [`TmpStorage::remove`]).
    fn create(&self, dir: &Path, size_mib: u32)
        -> Result<Option<EphemeralStorage>, EphemeralError>;
    /// Removes the /tmp at `dir` (also one a previous life of the agent left). Blocking.
    fn remove(&self, dir: &Path) -> io::Result<()>;
}

/// Starts a runtime process in its cgroup and sandbox.
pub trait RuntimeSpawner: Send + Sync + Debug {
    /// See [`Spawner::spawn`]; `confinement` is what [`SandboxHost::prepare`] gave.
    fn spawn(
        &self,
        plan: &LaunchPlan,
        placement: Placement,
        confinement: Option<Confinement>,
    ) -> io::Result<Child>;
}

impl SandboxHost for Sandbox {
    fn prepare(
        &self,
        code: &Path,
        tmp: &Path,
        log_socket: &Path,
    ) -> Result<PreparedSandbox, SandboxError> {
        let sandbox::Prepared {
            lease,
            listener,
            runtime_api,
            confinement,
        } = Sandbox::prepare(self, code, tmp, log_socket)?;
        Ok(PreparedSandbox {
            lease: Box::new(Lease(Some(lease))),
            listener,
            runtime_api,
            confinement: Some(confinement),
        })
    }

    fn shutdown(&self) {
        Sandbox::shutdown(self);
    }
}

/// A [`Sandbox`]'s lease until the environment takes it.
#[derive(Debug)]
struct Lease(Option<EnvironmentSandbox>);

impl SandboxLease for Lease {
    fn hand_over(&mut self) -> Option<EnvironmentSandbox> {
        self.0.take()
    }

    fn release(&self, processes_gone: bool) {
        if let Some(s) = &self.0 {
            s.release(processes_gone);
        }
    }
}

/// A size-capped tmpfs per environment ([`EphemeralStorage`]).
#[derive(Debug, Default)]
pub struct Tmpfs;

impl TmpStorage for Tmpfs {
    fn create(
        &self,
        dir: &Path,
        size_mib: u32,
    ) -> Result<Option<EphemeralStorage>, EphemeralError> {
        EphemeralStorage::create(dir, size_mib).map(Some)
    }

    fn remove(&self, dir: &Path) -> io::Result<()> {
        EphemeralStorage::adopt(dir).remove()
    }
}

/// A [`Spawner`] given the sandbox's confinement; refuses to start a runtime without one.
#[derive(Debug)]
pub struct Confined(pub Arc<dyn Spawner>);

impl RuntimeSpawner for Confined {
    fn spawn(
        &self,
        plan: &LaunchPlan,
        placement: Placement,
        confinement: Option<Confinement>,
    ) -> io::Result<Child> {
        match confinement {
            Some(c) => self.0.spawn(plan, placement, c),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the sandbox gave no confinement for the runtime",
            )),
        }
    }
}
