//! The error type shared by every part of the cgroup module.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while discovering, creating, filling,
/// emptying or removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup (or `/proc`) file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File that was read.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A value could not be written to a cgroup interface file.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// File that was written.
        path: PathBuf,
        /// Value that was written.
        value: String,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A cgroup interface file could not be opened (e.g. `cgroup.procs` for placement).
    #[error("cannot open {path}: {source}")]
    Open {
        /// File that was opened.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup directory {path}: {source}")]
    Create {
        /// Directory that was created.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup directory {path}: {source}")]
    Remove {
        /// Directory that was removed.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file had contents this module does not understand.
    #[error("malformed {what}: {reason}")]
    Parse {
        /// The file (or text) that was parsed.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
    /// No cgroup hierarchy this agent can use was found.
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    /// A controller the agent needs is not available to the agent's cgroup.
    #[error(
        "controller {controller:?} is not available in {path} (delegate it to the agent, \
         e.g. systemd Delegate=yes)"
    )]
    ControllerUnavailable {
        /// Missing controller.
        controller: String,
        /// `cgroup.controllers` file that lacks it.
        path: PathBuf,
    },
    /// A cgroup or parent name is not a single safe path component.
    #[error("invalid cgroup name {0:?}: must be one non-empty path component without '/', NUL or newline")]
    InvalidName(String),
    /// The requested limits are out of the range the kernel accepts.
    #[error("invalid cgroup limits: {0}")]
    InvalidLimits(String),
    /// Processes were still present after the kill deadline.
    #[error("cgroup {path} still has processes {pids:?} after {waited:?}")]
    NotEmpty {
        /// Relative path of the cgroup.
        path: String,
        /// Processes still present.
        pids: Vec<i32>,
        /// How long we waited.
        waited: Duration,
    },
    /// The parent cgroup still has child cgroups and was left in place.
    #[error("parent cgroup {path} still has child cgroups {children:?}")]
    ParentNotEmpty {
        /// Relative path of the parent cgroup.
        path: String,
        /// Names of the remaining children.
        children: Vec<String>,
    },
    /// The agent's own processes could not be moved out of its cgroup (cgroup v2
    /// "no internal processes" rule).
    #[error("cannot vacate {path} for controller delegation: {reason}")]
    Vacate {
        /// The agent's own cgroup directory.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
}

impl CgroupError {
    /// The raw OS error number underneath, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Read { source, .. }
            | Self::Write { source, .. }
            | Self::Open { source, .. }
            | Self::Create { source, .. }
            | Self::Remove { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
