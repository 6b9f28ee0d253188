//! Cgroups that exist only in memory, for unit tests of the logic above the traits: [`FakeCgroup`] (one
//! environment's: it holds no process, reports the figures it is given, counts the costlier usage reads and
//! records how often it was removed) and
//! [`FakeCgroups`] (a [`CgroupDriver`] whose cgroups are names in memory, each of its failures one switch away).
// Test helpers: a failed set-up is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use std::{
    collections::BTreeSet,
    io,
    sync::{atomic::AtomicBool, Arc, Mutex},
};

use super::{
    CgroupDriver, CgroupError, CgroupLimits, CgroupUsage, CgroupVersion, EnvironmentCgroup,
    Placement, UsageParts,
};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct FakeCgroup {
    name: String,
    path: String,
    /// OOM kills to report.
    pub oom_kills: AtomicU64,
    /// How many times `remove` was called.
    pub removed: AtomicUsize,
    /// What a reading of every part gives; a reading leaves out the parts it does not ask for.
    pub usage: Mutex<CgroupUsage>,
    /// How many readings asked for `memory.stat`.
    pub memory_stat_reads: AtomicUsize,
    /// How many readings asked for the PSI files.
    pub pressure_reads: AtomicUsize,
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
    fn read_usage(&self, parts: UsageParts) -> Result<CgroupUsage, CgroupError> {
        let all = *lock(&self.usage);
        if parts.memory_stat {
            self.memory_stat_reads.fetch_add(1, Ordering::Relaxed);
        }
        if parts.pressure {
            self.pressure_reads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(CgroupUsage {
            inactive_file_bytes: all.inactive_file_bytes.filter(|_| parts.memory_stat),
            pressure: all.pressure.filter(|_| parts.pressure),
            ..all
        })
    }
    fn kill_all(&self) -> Result<(), CgroupError> {
        Ok(())
    }
    fn remove(&self) -> Result<(), CgroupError> {
        self.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cgroups that exist only as names in memory.
#[derive(Debug, Default)]
pub struct FakeCgroups {
    existing: Arc<Mutex<BTreeSet<String>>>,
    /// The next `create` fails.
    pub fail_create: AtomicBool,
    /// The next cgroup created cannot give its placement.
    pub fail_placement: AtomicBool,
    /// `remove_parent` was called (with no child left).
    pub parent_removed: AtomicBool,
}

impl FakeCgroups {
    /// The cgroups that exist now, sorted.
    pub fn names(&self) -> Vec<String> {
        lock(&self.existing).iter().cloned().collect()
    }

    /// Makes a cgroup exist, as one a previous life of the agent left.
    pub fn add(&self, name: &str) {
        lock(&self.existing).insert(name.to_owned());
    }

    fn handle(&self, name: &str, fail_placement: bool) -> Box<dyn EnvironmentCgroup> {
        Box::new(FakeEnvironmentCgroup {
            cgroup: FakeCgroup::new(name),
            existing: self.existing.clone(),
            fail_placement,
        })
    }
}

impl CgroupDriver for FakeCgroups {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn parent_path(&self) -> &str {
        "/fake"
    }

    fn create(
        &self,
        name: &str,
        _limits: &CgroupLimits,
    ) -> Result<Box<dyn EnvironmentCgroup>, CgroupError> {
        if self.fail_create.swap(false, Ordering::SeqCst) {
            return Err(CgroupError::Create {
                path: PathBuf::from("/fake").join(name),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
        lock(&self.existing).insert(name.to_owned());
        Ok(self.handle(name, self.fail_placement.swap(false, Ordering::SeqCst)))
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn EnvironmentCgroup>>, CgroupError> {
        let exists = lock(&self.existing).contains(name);
        Ok(exists.then(|| self.handle(name, false)))
    }

    fn children(&self) -> Result<Vec<String>, CgroupError> {
        Ok(self.names())
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        let children = self.names();
        if !children.is_empty() {
            return Err(CgroupError::ParentNotEmpty {
                path: "/fake".to_owned(),
                children,
            });
        }
        self.parent_removed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A [`FakeCgroup`] whose removal also removes its name from its [`FakeCgroups`].
#[derive(Debug)]
struct FakeEnvironmentCgroup {
    cgroup: FakeCgroup,
    existing: Arc<Mutex<BTreeSet<String>>>,
    fail_placement: bool,
}

impl EnvironmentCgroup for FakeEnvironmentCgroup {
    fn name(&self) -> &str {
        self.cgroup.name()
    }
    fn path(&self) -> &str {
        self.cgroup.path()
    }
    fn directories(&self) -> Vec<PathBuf> {
        self.cgroup.directories()
    }
    fn placement(&self) -> Result<Placement, CgroupError> {
        if self.fail_placement {
            return Err(CgroupError::Open {
                path: PathBuf::from(self.cgroup.path()).join("cgroup.procs"),
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        self.cgroup.placement()
    }
    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        self.cgroup.pids()
    }
    fn oom_kills(&self) -> Result<u64, CgroupError> {
        self.cgroup.oom_kills()
    }
    fn memory_limit(&self) -> Result<u64, CgroupError> {
        self.cgroup.memory_limit()
    }
    fn cpu_quota(&self) -> Result<(Option<u64>, u64), CgroupError> {
        self.cgroup.cpu_quota()
    }
    fn read_usage(&self, parts: UsageParts) -> Result<CgroupUsage, CgroupError> {
        self.cgroup.read_usage(parts)
    }
    fn kill_all(&self) -> Result<(), CgroupError> {
        self.cgroup.kill_all()
    }
    fn remove(&self) -> Result<(), CgroupError> {
        self.cgroup.remove()?;
        lock(&self.existing).remove(self.cgroup.name());
        Ok(())
    }
}
