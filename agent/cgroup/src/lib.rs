//! Per-environment cgroups for function runtimes.
//!
//! The agent owns one *parent* cgroup, `<agent's own cgroup>/<parent_name>`,
//! in every hierarchy it manages, and creates one child per execution
//! environment under it with CPU, memory (no swap) and pids limits.
//!
//! * [`detect`] reads `/proc/self/mountinfo` and `/proc/self/cgroup` and
//!   returns a [`V2Driver`] when a cgroup2 mount has `cpu` and `memory`
//!   available, else a [`V1Driver`] over the cpu/cpuacct/memory/pids
//!   (+freezer, +controller-less cgroup2 on hybrid hosts) hierarchies.
//! * Runtimes join their cgroup between fork and exec through a
//!   [`Placement`] opened beforehand.
//! * On v2 the agent enables `+cpu +memory +pids` from its own cgroup down to
//!   the parent only. If its own cgroup holds processes (the agent itself),
//!   they are first moved into the leaf `<own>/<parent_name>.supervisor`
//!   (see [`supervisor_leaf_name`]).

mod detect;
mod driver;
mod error;
mod fsutil;
mod kill;
mod lifecycle;
mod limits;
mod mounts;
mod names;
mod placement;
mod usage;
mod v1;
mod v2;
mod v2_delegation;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;
#[cfg(test)]
mod real_tests;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;

pub use detect::{detect, detect_layout};
pub use driver::{CgroupDriver, CgroupVersion, EnvironmentCgroup};
pub use error::CgroupError;
pub use kill::KILL_TIMEOUT;
pub use limits::CgroupLimits;
pub use mounts::{
    discover, parse_mountinfo, parse_proc_cgroup, CgroupMount, Hierarchy, Layout, ProcCgroup,
    V1Mounts,
};
pub use names::validate_name;
pub use placement::Placement;
pub use usage::{psi_some_avg10, CgroupUsage, Pressure, UsageParts};
pub use v1::V1Driver;
pub use v2::{V2Driver, V2Options};
pub use v2_delegation::{supervisor_leaf_name, REQUIRED_CONTROLLERS};
