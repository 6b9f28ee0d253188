//! A cgroup that exists only in memory, for unit tests of the logic above [`EnvironmentCgroup`] (the
//! supervisor, the environment's state machine): it holds no process, reports fixed figures and records how
//! often it was removed.
// Test helpers: a failed set-up is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use super::{CgroupError, CgroupUsage, EnvironmentCgroup, Placement};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FakeCgroup {
    name: String,
    path: String,
    /// OOM kills to report.
    pub oom_kills: AtomicU64,
    /// How many times `remove` was called.
    pub removed: AtomicUsize,
}

impl FakeCgroup {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            path: format!("fake/{name}"),
            ..Self::default()
        }
    }
}

impl EnvironmentCgroup for FakeCgroup {
    fn name(&self) -> &str {
        &self.name
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn directories(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn placement(&self) -> Result<Placement, CgroupError> {
        Placement::open::<PathBuf>(&[])
    }
    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(Vec::new())
    }
    fn oom_kills(&self) -> Result<u64, CgroupError> {
        Ok(self.oom_kills.load(Ordering::Relaxed))
    }
    fn memory_limit(&self) -> Result<u64, CgroupError> {
        Ok(u64::MAX)
    }
    fn cpu_quota(&self) -> Result<(Option<u64>, u64), CgroupError> {
        Ok((None, 100_000))
    }
    fn usage(&self) -> Result<CgroupUsage, CgroupError> {
        Ok(CgroupUsage::default())
    }
    fn kill_all(&self) -> Result<(), CgroupError> {
        Ok(())
    }
    fn remove(&self) -> Result<(), CgroupError> {
        self.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
