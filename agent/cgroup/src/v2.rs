//! The cgroup v2 (unified hierarchy) driver.

use std::path::{Path, PathBuf};

use super::driver::{CgroupDriver, CgroupVersion, EnvironmentCgroup};
use super::error::CgroupError;
use super::fsutil;
use super::kill::{self, Freezer, KillPlan, KILL_TIMEOUT};
use super::lifecycle;
use super::limits::CgroupLimits;
use super::names::validate_name;
use super::placement::Placement;
use super::v2_delegation::{
    enable_controllers_down, supervisor_leaf_name, Delegation, WriteFn, REQUIRED_CONTROLLERS,
};

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
    pub fn new(
        root: PathBuf,
        own_path: &str,
        parent_name: &str,
        options: V2Options,
    ) -> Result<Self, CgroupError> {
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
            usage: std::sync::OnceLock::new(),
        }
    }

    fn write_limits(&self, dir: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
        let skip = |c: &str| {
            tracing::warn!(controller = c, cgroup = %dir.display(), "controller not enabled; limit skipped");
        };
        if self.has("cpu") {
            let quota = match limits.cpu_quota_us {
                0 => "max".to_owned(),
                q => q.to_string(),
            };
            fsutil::write_value(
                &dir.join("cpu.max"),
                &format!("{quota} {}", limits.cpu_period_us),
            )?;
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

    fn create(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Box<dyn EnvironmentCgroup>, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let cg = self.handle(name);
        lifecycle::make_dirs([(cg.dir.as_path(), false)])?
            .finish_create(&cg, || self.write_limits(&cg.dir, limits))?;
        tracing::debug!(cgroup = %cg.path, ?limits, "created environment cgroup");
        Ok(Box::new(cg))
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn EnvironmentCgroup>>, CgroupError> {
        validate_name(name)?;
        Ok(lifecycle::open_existing(self.handle(name)))
    }

    fn children(&self) -> Result<Vec<String>, CgroupError> {
        fsutil::child_dirs(&self.parent_dir)
    }

    fn remove_parent(&self) -> Result<(), CgroupError> {
        lifecycle::remove_parent(
            &self.parent_path,
            self.children()?,
            [self.parent_dir.as_path()],
        )
    }
}

/// One environment cgroup on cgroup v2.
#[derive(Debug)]
pub(crate) struct V2Cgroup {
    name: String,
    path: String,
    dir: PathBuf,
    usage: std::sync::OnceLock<super::usage::UsageFiles>,
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

    fn read_usage(&self, parts: super::UsageParts) -> Result<super::CgroupUsage, CgroupError> {
        self.usage
            .get_or_init(|| {
                super::usage::UsageFiles::new(
                    super::usage::UsagePaths {
                        cpu: self.dir.join("cpu.stat"),
                        memory: self.dir.join("memory.current"),
                        memory_stat: self.dir.join("memory.stat"),
                        inactive_key: "inactive_file",
                        pressure_dir: Some(self.dir.clone()),
                    },
                    super::usage::CpuFormat::UsageUsec,
                )
            })
            .read(parts)
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
            freezer: Some(Freezer::V2 {
                dir: self.dir.clone(),
            }),
            timeout: KILL_TIMEOUT,
        })
    }

    fn remove(&self) -> Result<(), CgroupError> {
        lifecycle::remove(self, &self.usage)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_cgroup, fake_v2_env, fake_v2_tree, read, SPECS};
    use crate::{CgroupUsage, UsageParts};

    const OWN: &str = "/system.slice/lmi-agent.service";

    #[test]
    fn limits_are_written_exactly_for_each_spec() {
        for (label, vcpus, memory) in SPECS {
            let tmp = tempfile::tempdir().unwrap();
            let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "");
            let driver =
                V2Driver::new(root.clone(), OWN, "lmi-agent", V2Options::default()).unwrap();
            assert_eq!(
                driver.parent_path(),
                "/system.slice/lmi-agent.service/lmi-agent"
            );
            let name = format!("env-{label}");
            let dir = fake_v2_env(
                &root.join("system.slice/lmi-agent.service/lmi-agent"),
                &name,
            );
            let env = driver
                .create(&name, &CgroupLimits::from_vcpus(vcpus, memory, 1024))
                .unwrap();

            assert_eq!(
                read(&dir.join("cpu.max")),
                format!("{} 100000", vcpus * 100_000),
                "{label}"
            );
            assert_eq!(read(&dir.join("memory.max")), memory.to_string());
            assert_eq!(read(&dir.join("memory.swap.max")), "0");
            assert_eq!(read(&dir.join("pids.max")), "1024");
            assert_eq!(env.cpu_quota().unwrap(), (Some(vcpus * 100_000), 100_000));
            assert_eq!(env.memory_limit().unwrap(), memory);
            assert_eq!(env.oom_kills().unwrap(), 3);
            assert_eq!(env.path(), format!("{OWN}/lmi-agent/{name}"));
            assert_eq!(
                env.placement().unwrap().paths(),
                &[dir.join("cgroup.procs")]
            );
            assert_eq!(driver.children().unwrap(), vec![name]);
        }
    }

    #[test]
    fn unlimited_values_and_missing_swap_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "");
        let driver = V2Driver::new(root.clone(), OWN, "lmi-agent", V2Options::default()).unwrap();
        let dir = fake_v2_env(&root.join("system.slice/lmi-agent.service/lmi-agent"), "e");
        std::fs::remove_file(dir.join("memory.swap.max")).unwrap();
        let limits = CgroupLimits {
            cpu_quota_us: 0,
            cpu_period_us: 100_000,
            memory_bytes: 0,
            pids_max: 0,
        };
        let env = driver.create("e", &limits).unwrap();
        assert_eq!(read(&dir.join("cpu.max")), "max 100000");
        assert_eq!(read(&dir.join("memory.max")), "max");
        assert_eq!(read(&dir.join("pids.max")), "max");
        assert!(!dir.join("memory.swap.max").exists());
        assert_eq!(env.cpu_quota().unwrap(), (None, 100_000));
        assert_eq!(env.memory_limit().unwrap(), u64::MAX);
    }

    #[test]
    fn usage_reads_cpu_memory_working_set_and_pressure() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "");
        let driver = V2Driver::new(root.clone(), OWN, "lmi-agent", V2Options::default()).unwrap();
        let dir = fake_v2_env(&root.join("system.slice/lmi-agent.service/lmi-agent"), "u");
        let env = driver
            .create("u", &CgroupLimits::from_vcpus(1, 1 << 30, 8))
            .unwrap();
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.current"), "104857600\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "anon 80000000\nfile 24857600\ninactive_file 4857600\n",
        )
        .unwrap();
        std::fs::write(dir.join("cpu.pressure"), "some avg10=5.00 avg60=1.00 avg300=0.00 total=9\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap();
        std::fs::write(
            dir.join("memory.pressure"),
            "some avg10=0.50 avg60=0.00 avg300=0.00 total=1\n",
        )
        .unwrap();
        let u = env.usage().unwrap();
        assert_eq!(u.cpu_usage_ns, 2_500_000_000);
        assert_eq!(u.memory_working_set_bytes(), Some(100_000_000));
        let p = u.pressure.unwrap();
        assert_eq!((p.cpu_some, p.memory_some, p.io_some), (0.05, 0.005, 0.0));
        // Only what is asked for: no memory.stat, no PSI.
        assert_eq!(
            env.read_usage(UsageParts::COUNTERS).unwrap(),
            CgroupUsage {
                cpu_usage_ns: 2_500_000_000,
                memory_usage_bytes: 104_857_600,
                inactive_file_bytes: None,
                pressure: None,
            }
        );
        let u = env
            .read_usage(UsageParts {
                memory_stat: true,
                pressure: false,
            })
            .unwrap();
        assert_eq!((u.inactive_file_bytes, u.pressure), (Some(4_857_600), None));
        std::fs::write(dir.join("cpu.stat"), "garbage").unwrap();
        assert!(matches!(env.usage(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn oom_kill_parsing_of_memory_events() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "");
        let driver = V2Driver::new(root.clone(), OWN, "lmi-agent", V2Options::default()).unwrap();
        let dir = fake_v2_env(&root.join("system.slice/lmi-agent.service/lmi-agent"), "e");
        let env = driver
            .create("e", &CgroupLimits::from_vcpus(1, 1 << 30, 8))
            .unwrap();
        assert_eq!(env.oom_kills().unwrap(), 3);
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\n").unwrap();
        assert!(matches!(env.oom_kills(), Err(CgroupError::Parse { .. })));
        std::fs::write(dir.join("cpu.max"), "100000").unwrap();
        assert!(matches!(env.cpu_quota(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn strict_mode_requires_delegated_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu pids\n", "");
        let err = V2Driver::new(root, OWN, "lmi-agent", V2Options::default()).unwrap_err();
        match err {
            CgroupError::ControllerUnavailable { controller, .. } => {
                assert_eq!(controller, "memory")
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn skip_mode_skips_limits_of_unavailable_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_cgroup(
            tmp.path(),
            &[("cgroup.controllers", ""), ("cgroup.subtree_control", "")],
        );
        fake_cgroup(
            &root.join("p"),
            &[("cgroup.controllers", ""), ("cgroup.subtree_control", "")],
        );
        let options = V2Options {
            skip_unavailable_controllers: true,
        };
        let driver = V2Driver::new(root.clone(), "/", "p", options).unwrap();
        assert!(driver.controllers().is_empty());
        assert_eq!(read(&root.join("cgroup.subtree_control")), "");
        let dir = fake_cgroup(&root.join("p/e"), &[("cgroup.procs", "")]);
        let env = driver
            .create("e", &CgroupLimits::from_vcpus(1, 1 << 30, 8))
            .unwrap();
        assert_eq!(env.path(), "/p/e");
        assert!(!dir.join("cpu.max").exists() && !dir.join("memory.max").exists());
    }

    #[test]
    fn own_path_normalisation_strips_the_supervisor_leaf() {
        assert_eq!(
            normalize_own_path("/a/b/x.supervisor", "x.supervisor"),
            "/a/b"
        );
        assert_eq!(normalize_own_path("/x.supervisor", "x.supervisor"), "/");
        assert_eq!(normalize_own_path("/", "x.supervisor"), "/");
        assert_eq!(normalize_own_path("/a/b/", "x.supervisor"), "/a/b");
    }
}
