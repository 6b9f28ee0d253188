//! Emptying a cgroup: `cgroup.kill` where the kernel has it, otherwise
//! freeze → SIGKILL every member → thaw, repeated until no process is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::error::CgroupError;
use super::fsutil::{self, Backoff};

/// How long `EnvironmentCgroup::kill_all` waits for a cgroup to become empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `cgroup.kill` alone is trusted before individual SIGKILLs are added.
const KILL_FILE_GRACE: Duration = Duration::from_millis(500);
/// How long a freeze may take before we signal anyway.
const FREEZE_TIMEOUT: Duration = Duration::from_millis(200);

/// A freezer for one environment cgroup.
#[derive(Debug, Clone)]
pub(crate) enum Freezer {
    /// cgroup v1 `freezer.state` (`FROZEN` / `THAWED`).
    V1 {
        /// Path of `freezer.state`.
        state: PathBuf,
    },
    /// cgroup v2 `cgroup.freeze` (`1` / `0`), progress in `cgroup.events`.
    V2 {
        /// The cgroup directory.
        dir: PathBuf,
    },
}

impl Freezer {
    /// Freezes and waits (bounded) for the freeze to complete. Returns false
    /// when no freezer file exists.
    fn freeze(&self) -> Result<bool, CgroupError> {
        let (file, value) = match self {
            Self::V1 { state } => (state.clone(), "FROZEN"),
            Self::V2 { dir } => (dir.join("cgroup.freeze"), "1"),
        };
        if !file.exists() {
            return Ok(false);
        }
        fsutil::write_value(&file, value)?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        let mut backoff = Backoff::new();
        while !self.is_frozen()? && Instant::now() < deadline {
            backoff.sleep();
        }
        Ok(true)
    }

    fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self {
            Self::V1 { state } => Ok(fsutil::read_string(state)?.trim() == "FROZEN"),
            Self::V2 { dir } => {
                let events = dir.join("cgroup.events");
                match fsutil::read_optional(&events)? {
                    Some(text) => Ok(fsutil::keyed_u64(&text, "frozen", &events)? == 1),
                    None => Ok(true),
                }
            }
        }
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        match self {
            Self::V1 { state } => fsutil::write_value(state, "THAWED"),
            Self::V2 { dir } => fsutil::write_value(&dir.join("cgroup.freeze"), "0"),
        }
    }
}

/// What to kill and how.
#[derive(Debug)]
pub(crate) struct KillPlan<'a> {
    /// Relative path of the environment cgroup, for errors and logs.
    pub label: &'a str,
    /// Directories (one per hierarchy) whose processes must all die.
    pub dirs: &'a [PathBuf],
    /// A cgroup v2 `cgroup.kill` file, used when it exists.
    pub kill_file: Option<PathBuf>,
    /// A freezer to stop forks while signalling.
    pub freezer: Option<Freezer>,
    /// Deadline for the cgroup to become empty.
    pub timeout: Duration,
}

/// Every process in `dirs` (and their sub-cgroups), sorted and de-duplicated.
pub(crate) fn pids_in(dirs: &[PathBuf]) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    for dir in dirs {
        fsutil::collect_pids(dir, &mut pids)?;
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// Kills every process of the plan and polls until none is left.
pub(crate) fn kill_all(plan: &KillPlan<'_>) -> Result<(), CgroupError> {
    let started = Instant::now();
    let mut backoff = Backoff::new();
    let mut kill_file_used = false;
    loop {
        let pids = pids_in(plan.dirs)?;
        if pids.is_empty() {
            return Ok(());
        }
        let waited = started.elapsed();
        if waited >= plan.timeout {
            return Err(CgroupError::NotEmpty {
                path: plan.label.to_owned(),
                pids,
                waited,
            });
        }
        if !kill_file_used {
            kill_file_used = plan.kill_file.as_deref().is_some_and(write_kill_file);
            if kill_file_used {
                tracing::debug!(cgroup = plan.label, "wrote cgroup.kill");
            }
        }
        if !kill_file_used || waited >= KILL_FILE_GRACE {
            signal_round(plan)?;
        }
        backoff.sleep();
    }
}

/// Writes `1` to `cgroup.kill`; false (so signals are used) if that fails.
fn write_kill_file(path: &Path) -> bool {
    match fsutil::write_raw(path, "1") {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cgroup.kill failed; falling back to SIGKILL");
            false
        }
    }
}

/// Freeze (if possible), SIGKILL every member, thaw.
fn signal_round(plan: &KillPlan<'_>) -> Result<(), CgroupError> {
    let frozen = match &plan.freezer {
        Some(f) => match f.freeze() {
            Ok(true) => Some(f),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(cgroup = plan.label, error = %e, "freeze failed; signalling unfrozen");
                // Leave it thawed in case the write half-succeeded.
                let _ = f.thaw();
                None
            }
        },
        None => None,
    };
    let signalled = pids_in(plan.dirs).map(|pids| sigkill_all(plan.label, &pids));
    let thawed = frozen.map_or(Ok(()), Freezer::thaw);
    signalled?;
    thawed
}

fn sigkill_all(label: &str, pids: &[i32]) {
    let me = std::process::id() as i32;
    for &pid in pids {
        if pid <= 0 || pid == me {
            tracing::warn!(cgroup = label, pid, "refusing to SIGKILL this pid");
            continue;
        }
        match kill(Pid::from_raw(pid), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(cgroup = label, pid, error = %e, "SIGKILL failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_cgroup_is_done_immediately() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let dirs = [dir.path().to_path_buf()];
        let plan = KillPlan {
            label: "/x",
            dirs: &dirs,
            kill_file: Some(dir.path().join("cgroup.kill")),
            freezer: None,
            timeout: KILL_TIMEOUT,
        };
        kill_all(&plan).unwrap();
    }

    #[test]
    fn pids_are_collected_from_subcgroups_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "30\n10\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/cgroup.procs"), "20\n10\n").unwrap();
        let dirs = [dir.path().to_path_buf(), dir.path().join("absent")];
        assert_eq!(pids_in(&dirs).unwrap(), vec![10, 20, 30]);
    }

    #[test]
    fn garbage_in_cgroup_procs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "12\nbanana\n").unwrap();
        let err = pids_in(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
    }
}
