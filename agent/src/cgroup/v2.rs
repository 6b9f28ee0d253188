//! The cgroup v2 (unified hierarchy) driver.

use std::path::{Path, PathBuf};

use super::driver::{CgroupDriver, CgroupVersion, EnvironmentCgroup};
use super::error::CgroupError;
use super::fsutil;
use super::kill::{self, Freezer, KillPlan, KILL_TIMEOUT};
use super::limits::CgroupLimits;
use super::names::validate_name;
use super::placement::Placement;
use super::v2_delegation::{enable_controllers_down, supervisor_leaf_name, Delegation, WriteFn, REQUIRED_CONTROLLERS};

/// How long `rmdir` retries `EBUSY`.
const RMDIR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tuning for [`V2Driver`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct V2Options {
    /// Instead of failing, skip (with a warning) limit files whose controller
    /// is not available, e.g. on a hybrid host's controller-less
    /// `/sys/fs/cgroup/unified`.
    pub skip_unavailable_controllers: bool,
}

/// Driver for a cgroup2 mount.
#[derive(Debug)]
pub struct V2Driver {
    root: PathBuf,
    parent_path: String,
    parent_dir: PathBuf,
    controllers: Vec<String>,
}

impl V2Driver {
    /// Uses the cgroup2 mount `root`, where the agent sits at `own_path`.
    /// Creates `<own_path>/<parent_name>` (`mkdir -p`) and enables
    /// `cpu memory pids` from `own_path` down to it, moving the agent's
    /// processes into `<own_path>/<parent_name>.supervisor` if the kernel
    /// demands it. If `own_path` already is that supervisor leaf (the driver
    /// was built before in this process), its parent is used as own cgroup.
    pub fn new(root: PathBuf, own_path: &str, parent_name: &str, options: V2Options) -> Result<Self, CgroupError> {
        Self::with_writer(root, own_path, parent_name, options, &mut fsutil::write_raw)
    }

    /// [`V2Driver::new`] with an injectable writer for `cgroup.subtree_control`
    /// and `cgroup.procs` (tests simulate `EBUSY` with it).
    pub(crate) fn with_writer(
        root: PathBuf,
        own_path: &str,
        parent_name: &str,
        options: V2Options,
        write: &mut WriteFn<'_>,
    ) -> Result<Self, CgroupError> {
        validate_name(parent_name)?;
        let leaf = supervisor_leaf_name(parent_name);
        let own = normalize_own_path(own_path, &leaf);
        let parent_path = fsutil::rel_child(&own, parent_name);
        let parent_dir = fsutil::mkdir_p(&root, &parent_path)?;
        let controllers = enable_controllers_down(
            &Delegation {
                root: &root,
                own_path: &own,
                target_path: &parent_path,
                supervisor_leaf: &leaf,
                skip_unavailable: options.skip_unavailable_controllers,
            },
            &REQUIRED_CONTROLLERS,
            write,
        )?;
        Ok(Self {
            root,
            parent_path,
            parent_dir,
            controllers,
        })
    }

    /// The cgroup2 mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Controllers enabled for environment cgroups (all of
    /// [`REQUIRED_CONTROLLERS`] unless unavailable ones were skipped).
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    fn handle(&self, name: &str) -> V2Cgroup {
        V2Cgroup {
            name: name.to_owned(),
            path: fsutil::rel_child(&self.parent_path, name),
            dir: self.parent_dir.join(name),
        }
    }

    fn write_limits(&self, dir: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let skip = |c: &str| tracing::warn!(controller = c, cgroup = %dir.display(), "controller not enabled; limit skipped");
        if self.has("cpu") {
            let quota = match limits.cpu_quota_us {
                0 => "max".to_owned(),
                q => q.to_string(),
            };
            fsutil::write_value(&dir.join("cpu.max"), &format!("{quota} {}", limits.cpu_period_us))?;
        } else {
            skip("cpu");
        }
        if self.has("memory") {
            fsutil::write_value(&dir.join("memory.max"), &max_or(limits.memory_bytes))?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                fsutil::write_value(&swap, "0")?;
            }
        } else {
            skip("memory");
        }
        if self.has("pids") {
            fsutil::write_value(&dir.join("pids.max"), &max_or(limits.pids_max))?;
        } else {
            skip("pids");
        }
        Ok(())
    }
}

/// `"max"` for 0 (unlimited), else the number.
fn max_or(v: u64) -> String {
    if v == 0 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// Strips a trailing supervisor leaf so a second driver in the same process
/// uses the same parent as the first.
fn normalize_own_path(own_path: &str, leaf: &str) -> String {
    let own = own_path.trim_end_matches('/');
    match own.rsplit_once('/') {
        Some((up, last)) if last == leaf => {
            if up.is_empty() {
                "/".to_owned()
            } else {
                up.to_owned()
            }
        }
        _ if own.is_empty() => "/".to_owned(),
        _ => own.to_owned(),
    }
}

impl CgroupDriver for V2Driver {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn parent_path(&self) -> &str {
        &self.parent_path
    }

    fn create(&self, name: &str, limits: &CgroupLimits) -> Result<Box<dyn EnvironmentCgroup>, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let cg = self.handle(name);
        let created = match std::fs::create_dir(&cg.dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tracing::warn!(cgroup = %cg.path, "cgroup already exists; emptying and reusing it");
                cg.kill_all()?;
                false
            }
            Err(source) => return Err(CgroupError::Create { path: cg.dir, source }),
        };
        if let Err(e) = self.write_limits(&cg.dir, limits) {
            if created {
                let _ = fsutil::rmdir_tree(&cg.dir, RMDIR_TIMEOUT);
            }
            return Err(e);
        }
        tracing::debug!(cgroup = %cg.path, ?limits, "created environment cgroup");
        Ok(Box::new(cg))
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn EnvironmentCgroup>>, CgroupError> {
        validate_name(name)?;
        let cg = self.handle(name);
        Ok(cg.dir.is_dir().then(|| Box::new(cg) as Box<dyn EnvironmentCgroup>))
    }

    fn children(&self) -> Result<Vec<String>, CgroupError> {
        fsutil::child_dirs(&self.parent_dir)
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        let children = self.children()?;
        if !children.is_empty() {
            return Err(CgroupError::ParentNotEmpty {
                path: self.parent_path.clone(),
                children,
            });
        }
        fsutil::rmdir_tree(&self.parent_dir, RMDIR_TIMEOUT)
    }
}

/// One environment cgroup on cgroup v2.
#[derive(Debug)]
pub(crate) struct V2Cgroup {
    name: String,
    path: String,
    dir: PathBuf,
}

impl EnvironmentCgroup for V2Cgroup {
    fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn directories(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn placement(&self) -> Result<Placement, CgroupError> {
        Placement::open(&[self.dir.join("cgroup.procs")])
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        kill::pids_in(std::slice::from_ref(&self.dir))
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = self.dir.join("memory.events");
        fsutil::keyed_u64(&fsutil::read_string(&file)?, "oom_kill", &file)
    }

    fn memory_limit(&self) -> Result<u64, CgroupError> {
        let file = self.dir.join("memory.max");
        let text = fsutil::read_string(&file)?;
        match text.trim() {
            "max" => Ok(u64::MAX),
            _ => fsutil::parse_u64(&text, &file),
        }
    }

    fn cpu_quota(&self) -> Result<(Option<u64>, u64), CgroupError> {
        let file = self.dir.join("cpu.max");
        parse_cpu_max(&fsutil::read_string(&file)?, &file)
    }

    fn kill_all(&self) -> Result<(), CgroupError> {
        kill::kill_all(&KillPlan {
            label: &self.path,
            dirs: std::slice::from_ref(&self.dir),
            kill_file: Some(self.dir.join("cgroup.kill")),
            freezer: Some(Freezer::V2 { dir: self.dir.clone() }),
            timeout: KILL_TIMEOUT,
        })
    }

    fn remove(&self) -> Result<(), CgroupError> {
        self.kill_all()?;
        fsutil::rmdir_tree(&self.dir, RMDIR_TIMEOUT)
    }
}

/// Parses `cpu.max`: `"<quota|max> <period>"`.
fn parse_cpu_max(text: &str, file: &Path) -> Result<(Option<u64>, u64), CgroupError> {
    let bad = || CgroupError::Parse {
        what: file.display().to_string(),
        reason: format!("expected \"<quota|max> <period>\", got {:?}", text.trim()),
    };
    let mut fields = text.split_whitespace();
    let (Some(quota), Some(period), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad());
    };
    let period = period.parse().map_err(|_| bad())?;
    let quota = match quota {
        "max" => None,
        q => Some(q.parse().map_err(|_| bad())?),
    };
    Ok((quota, period))
}
