//! The cgroup v1 (legacy / hybrid) driver: one directory per managed hierarchy.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::driver::{CgroupDriver, CgroupVersion, EnvironmentCgroup};
use super::error::CgroupError;
use super::fsutil;
use super::kill::{self, Freezer, KillPlan, KILL_TIMEOUT};
use super::limits::CgroupLimits;
use super::mounts::{Hierarchy, V1Mounts};
use super::names::validate_name;
use super::placement::Placement;

/// How long `rmdir` retries `EBUSY`.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// Values at or above this in `memory.limit_in_bytes` mean "unlimited"
/// (the kernel reports `PAGE_COUNTER_MAX * PAGE_SIZE`, just under `i64::MAX`).
const V1_UNLIMITED_THRESHOLD: u64 = (i64::MAX as u64) - (1 << 20);

/// What a managed hierarchy is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Cpu,
    Cpuacct,
    Memory,
    Pids,
    Freezer,
    /// Controller-less cgroup2 on a hybrid host (placement + `cgroup.kill`).
    Unified,
}

impl Role {
    /// Hierarchies the driver can live without (warn and drop on failure).
    fn optional(self) -> bool {
        matches!(self, Self::Freezer | Self::Unified)
    }
}

/// One hierarchy the driver manages, with the parent cgroup in it.
#[derive(Debug, Clone)]
struct Managed {
    roles: Vec<Role>,
    parent_dir: PathBuf,
}

/// Driver for cgroup v1 hierarchies.
#[derive(Debug)]
pub struct V1Driver {
    managed: Vec<Managed>,
    parent_path: String,
}

impl V1Driver {
    /// Manages the hierarchies in `mounts` (co-mounted controllers are handled
    /// once) and creates `<own_path>/<parent_name>` in each (`mkdir -p`).
    /// Failing to create it in the optional freezer or unified hierarchy only
    /// drops that hierarchy, with a warning.
    pub fn new(mounts: V1Mounts, parent_name: &str) -> Result<Self, CgroupError> {
        validate_name(parent_name)?;
        let parent_path = fsutil::rel_child(&mounts.memory.own_path, parent_name);
        let candidates: [(Role, Option<&Hierarchy>); 6] = [
            (Role::Memory, Some(&mounts.memory)),
            (Role::Cpu, Some(&mounts.cpu)),
            (Role::Cpuacct, mounts.cpuacct.as_ref()),
            (Role::Pids, Some(&mounts.pids)),
            (Role::Freezer, mounts.freezer.as_ref()),
            (Role::Unified, mounts.unified.as_ref()),
        ];
        let mut seen: Vec<(PathBuf, usize)> = Vec::new();
        let mut managed: Vec<Managed> = Vec::new();
        for (role, h) in candidates {
            let Some(h) = h else { continue };
            if let Some((_, i)) = seen.iter().find(|(m, _)| *m == h.mount_point) {
                if let Some(m) = managed.get_mut(*i) {
                    m.roles.push(role);
                }
                continue;
            }
            let rel = fsutil::rel_child(&h.own_path, parent_name);
            match fsutil::mkdir_p(&h.mount_point, &rel) {
                Ok(parent_dir) => {
                    seen.push((h.mount_point.clone(), managed.len()));
                    managed.push(Managed {
                        roles: vec![role],
                        parent_dir,
                    });
                }
                Err(e) if role.optional() => {
                    tracing::warn!(?role, error = %e, "optional cgroup hierarchy unusable; continuing without it");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self { managed, parent_path })
    }

    fn handle(&self, name: &str) -> V1Cgroup {
        V1Cgroup {
            name: name.to_owned(),
            path: fsutil::rel_child(&self.parent_path, name),
            dirs: self
                .managed
                .iter()
                .map(|m| (m.roles.clone(), m.parent_dir.join(name)))
                .collect(),
        }
    }
}

impl CgroupDriver for V1Driver {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn parent_path(&self) -> &str {
        &self.parent_path
    }

    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Box<dyn EnvironmentCgroup>, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let mut cg = self.handle(name);
        let mut created: Vec<PathBuf> = Vec::new();
        let mut existed = false;
        let mut failure = None;
        cg.dirs.retain(|(roles, dir)| match std::fs::create_dir(dir) {
            Ok(()) => {
                created.push(dir.clone());
                true
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                existed = true;
                true
            }
            Err(source) => {
                let err = CgroupError::Create {
                    path: dir.clone(),
                    source,
                };
                if roles.iter().all(|r| r.optional()) {
                    tracing::warn!(error = %err, "optional hierarchy skipped for this cgroup");
                } else if failure.is_none() {
                    failure = Some(err);
                }
                false
            }
        });
        let result = match failure {
            Some(e) => Err(e),
            None => {
                if existed {
                    tracing::warn!(cgroup = %cg.path, "cgroup already exists; emptying and reusing it");
                }
                (if existed { cg.kill_all() } else { Ok(()) }).and_then(|()| cg.write_limits(limits))
            }
        };
        if let Err(e) = result {
            for dir in created.iter().rev() {
                let _ = fsutil::rmdir_tree(dir, RMDIR_TIMEOUT);
            }
            return Err(e);
        }
        tracing::debug!(cgroup = %cg.path, ?limits, "created environment cgroup");
        Ok(Box::new(cg))
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn EnvironmentCgroup>>, CgroupError> {
        validate_name(name)?;
        let cg = self.handle(name);
        let exists = cg.dirs.iter().any(|(_, d)| d.is_dir());
        Ok(exists.then(|| Box::new(cg) as Box<dyn EnvironmentCgroup>))
    }

    fn children(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for m in &self.managed {
            names.extend(fsutil::child_dirs(&m.parent_dir)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        let children = self.children()?;
        if !children.is_empty() {
            return Err(CgroupError::ParentNotEmpty {
                path: self.parent_path.clone(),
                children,
            });
        }
        for m in &self.managed {
            fsutil::rmdir_tree(&m.parent_dir, RMDIR_TIMEOUT)?;
        }
        Ok(())
    }
}

/// One environment cgroup across the v1 hierarchies.
#[derive(Debug)]
pub(crate) struct V1Cgroup {
    name: String,
    path: String,
    dirs: Vec<(Vec<Role>, PathBuf)>,
}

impl V1Cgroup {
    fn dir(&self, role: Role) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(roles, _)| roles.contains(&role))
            .map(|(_, d)| d.as_path())
    }

    fn required_dir(&self, role: Role) -> Result<&Path, CgroupError> {
        self.dir(role).ok_or_else(|| {
            CgroupError::NoHierarchy(format!("cgroup {} has no {role:?} hierarchy", self.path))
        })
    }

    fn all_dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    fn write_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let cpu = self.required_dir(Role::Cpu)?;
        fsutil::write_value(&cpu.join("cpu.cfs_period_us"), &limits.cpu_period_us.to_string())?;
        fsutil::write_value(&cpu.join("cpu.cfs_quota_us"), &minus_one_or(limits.cpu_quota_us))?;

        let memory = self.required_dir(Role::Memory)?;
        write_memory_limit(memory, &minus_one_or(limits.memory_bytes))?;

        let pids = self.required_dir(Role::Pids)?;
        let pids_value = match limits.pids_max {
            0 => "max".to_owned(),
            n => n.to_string(),
        };
        fsutil::write_value(&pids.join("pids.max"), &pids_value)
    }
}

/// `"-1"` for 0 (unlimited), else the number.
fn minus_one_or(v: u64) -> String {
    if v == 0 {
        "-1".to_owned()
    } else {
        v.to_string()
    }
}

/// Sets `memory.limit_in_bytes` and, when swap accounting exists,
/// `memory.memsw.limit_in_bytes` to the same value (no swap). The kernel
/// enforces memsw >= memory, so memory is written first; if that is refused
/// (raising above the current memsw), memsw goes first.
fn write_memory_limit(dir: &Path, value: &str) -> Result<(), CgroupError> {
    let mem = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    match fsutil::write_raw(&mem, value) {
        Ok(()) => {
            if has_memsw {
                fsutil::write_value(&memsw, value)?;
            }
            Ok(())
        }
        Err(e) if has_memsw && e.raw_os_error() == Some(libc::EINVAL) => {
            fsutil::write_value(&memsw, value)?;
            fsutil::write_value(&mem, value)
        }
        Err(source) => Err(CgroupError::Write {
            path: mem,
            value: value.to_owned(),
            source,
        }),
    }
}

impl EnvironmentCgroup for V1Cgroup {
    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn directories(&self) -> Vec<PathBuf> {
        self.all_dirs()
    }

    fn placement(&self) -> Result<Placement, CgroupError> {
        let files: Vec<PathBuf> = self.dirs.iter().map(|(_, d)| d.join("cgroup.procs")).collect();
        Placement::open(&files)
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        kill::pids_in(&self.all_dirs())
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = self.required_dir(Role::Memory)?.join("memory.oom_control");
        fsutil::keyed_u64(&fsutil::read_string(&file)?, "oom_kill", &file)
    }

    fn memory_limit(&self) -> Result<u64, CgroupError> {
        let file = self.required_dir(Role::Memory)?.join("memory.limit_in_bytes");
        let v = fsutil::parse_u64(&fsutil::read_string(&file)?, &file)?;
        Ok(if v >= V1_UNLIMITED_THRESHOLD { u64::MAX } else { v })
    }

    fn cpu_quota(&self) -> Result<(Option<u64>, u64), CgroupError> {
        let cpu = self.required_dir(Role::Cpu)?;
        let period_file = cpu.join("cpu.cfs_period_us");
        let period = fsutil::parse_u64(&fsutil::read_string(&period_file)?, &period_file)?;
        let quota_file = cpu.join("cpu.cfs_quota_us");
        let text = fsutil::read_string(&quota_file)?;
        let quota = match text.trim() {
            "-1" => None,
            _ => Some(fsutil::parse_u64(&text, &quota_file)?),
        };
        Ok((quota, period))
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        let dirs = self.all_dirs();
        kill::kill_all(&KillPlan {
            label: &self.path,
            dirs: &dirs,
            kill_file: self.dir(Role::Unified).map(|d| d.join("cgroup.kill")),
            freezer: self.dir(Role::Freezer).map(|d| Freezer::V1 {
                state: d.join("freezer.state"),
            }),
            timeout: KILL_TIMEOUT,
        })
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        let mut first_err = None;
        for (_, dir) in self.dirs.iter().rev() {
            if let Err(e) = fsutil::rmdir_tree(dir, RMDIR_TIMEOUT) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
