//! The version-independent interface the rest of the agent uses.

use std::fmt;
use std::path::PathBuf;

use super::error::CgroupError;
use super::limits::CgroupLimits;
use super::placement::Placement;

/// Which cgroup API a driver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// Legacy/hybrid: one hierarchy per controller.
    V1,
    /// Unified hierarchy.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// Creates and finds the agent's environment cgroups under its parent cgroup.
pub trait CgroupDriver: Send + Sync + fmt::Debug {
    /// The cgroup API in use.
    fn version(&self) -> CgroupVersion;
    /// Relative path (from the hierarchy's mount point) of the agent's parent
    /// cgroup, e.g. `/lmi-agent`. On v1 the agent may sit at different paths
    /// in different hierarchies; this is the path in the `memory` hierarchy.
    fn parent_path(&self) -> &str;
    /// Creates `<parent>/<name>` in every hierarchy this driver manages and
    /// writes the limits. An existing cgroup of that name (left by a crashed
    /// agent) is emptied with `kill_all` and reused.
    fn create(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Box<dyn EnvironmentCgroup>, CgroupError>;
    /// Re-opens an existing child cgroup (for cleanup after an agent restart);
    /// `None` if it exists in no managed hierarchy.
    fn open(&self, name: &str) -> Result<Option<Box<dyn EnvironmentCgroup>>, CgroupError>;
    /// Names of the existing child cgroups under the parent (sorted, union over hierarchies).
    fn children(&self) -> Result<Vec<String>, CgroupError>;
    /// Removes the parent cgroup in every hierarchy. Fails with
    /// [`CgroupError::ParentNotEmpty`] (and removes nothing) while children exist.
    fn remove_parent(&self) -> Result<(), CgroupError>;
}

/// One execution environment's cgroup (in every managed hierarchy).
pub trait EnvironmentCgroup: Send + Sync + fmt::Debug {
    /// The name given to [`CgroupDriver::create`].
    fn name(&self) -> &str;
    /// Relative path `<parent>/<name>` (on v1: in the `memory` hierarchy).
    fn path(&self) -> &str;
    /// Absolute directories of this cgroup, one per managed hierarchy.
    fn directories(&self) -> Vec<PathBuf>;
    /// Opens (`O_WRONLY|O_CLOEXEC`) every `cgroup.procs` the runtime must join,
    /// BEFORE fork; use [`Placement::enter`] in `pre_exec`.
    fn placement(&self) -> Result<Placement, CgroupError>;
    /// Every process in the cgroup and its sub-cgroups (all hierarchies, sorted, deduplicated).
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Number of OOM kills (v1 `memory.oom_control`, v2 `memory.events` `oom_kill`).
    fn oom_kills(&self) -> Result<u64, CgroupError>;
    /// The memory limit in bytes; `u64::MAX` when unlimited.
    fn memory_limit(&self) -> Result<u64, CgroupError>;
    /// `(quota µs or None for unlimited, period µs)`.
    fn cpu_quota(&self) -> Result<(Option<u64>, u64), CgroupError>;
    /// CPU time and memory in use, with the inactive file cache and (where the kernel has it) pressure when
    /// `parts` asks for them, read now.
    fn read_usage(&self, parts: super::UsageParts) -> Result<super::CgroupUsage, CgroupError>;
    /// Every figure of [`read_usage`](Self::read_usage), read now.
    fn usage(&self) -> Result<super::CgroupUsage, CgroupError> {
        self.read_usage(super::UsageParts::ALL)
    }
    /// Kills every process in the cgroup and polls (bounded by
    /// [`KILL_TIMEOUT`](super::KILL_TIMEOUT)) until it is empty. Uses
    /// `cgroup.kill` when present, else freeze → SIGKILL each pid → thaw.
    fn kill_all(&self) -> Result<(), CgroupError>;
    /// `kill_all`, then removes the directory in every hierarchy (retrying
    /// `EBUSY` briefly). Idempotent: an absent cgroup is `Ok`.
    fn remove(&self) -> Result<(), CgroupError>;
}
