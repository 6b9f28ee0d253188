//! The cgroup v1 (legacy / hybrid) driver: one directory per managed hierarchy.

use std::path::{Path, PathBuf};

use super::driver::{CgroupDriver, CgroupVersion, EnvironmentCgroup};
use super::error::CgroupError;
use super::fsutil;
use super::kill::{self, Freezer, KillPlan, KILL_TIMEOUT};
use super::lifecycle;
use super::limits::CgroupLimits;
use super::mounts::{Hierarchy, V1Mounts};
use super::names::validate_name;
use super::placement::Placement;

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
                    tracing::warn!(
                        ?role,
                        error = %e,
                        "optional cgroup hierarchy unusable; continuing without it"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            managed,
            parent_path,
        })
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
            usage: std::sync::OnceLock::new(),
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

    fn create(
        &self,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Box<dyn EnvironmentCgroup>, CgroupError> {
        validate_name(name)?;
        limits.validate()?;
        let mut cg = self.handle(name);
        let made = lifecycle::make_dirs(
            cg.dirs
                .iter()
                .map(|(roles, dir)| (dir.as_path(), roles.iter().all(|r| r.optional()))),
        )?;
        cg.dirs.retain(|(_, dir)| !made.skipped.contains(dir));
        made.finish_create(&cg, || cg.write_limits(limits))?;
        tracing::debug!(cgroup = %cg.path, ?limits, "created environment cgroup");
        Ok(Box::new(cg))
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn EnvironmentCgroup>>, CgroupError> {
        validate_name(name)?;
        Ok(lifecycle::open_existing(self.handle(name)))
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
        lifecycle::remove_parent(
            &self.parent_path,
            self.children()?,
            self.managed.iter().map(|m| m.parent_dir.as_path()),
        )
    }
}

/// One environment cgroup across the v1 hierarchies.
#[derive(Debug)]
pub(crate) struct V1Cgroup {
    name: String,
    path: String,
    dirs: Vec<(Vec<Role>, PathBuf)>,
    usage: std::sync::OnceLock<super::usage::UsageFiles>,
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
        fsutil::write_value(
            &cpu.join("cpu.cfs_period_us"),
            &limits.cpu_period_us.to_string(),
        )?;
        fsutil::write_value(
            &cpu.join("cpu.cfs_quota_us"),
            &minus_one_or(limits.cpu_quota_us),
        )?;

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
        let files: Vec<PathBuf> = self
            .dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect();
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
        let file = self
            .required_dir(Role::Memory)?
            .join("memory.limit_in_bytes");
        let v = fsutil::parse_u64(&fsutil::read_string(&file)?, &file)?;
        Ok(if v >= V1_UNLIMITED_THRESHOLD {
            u64::MAX
        } else {
            v
        })
    }

    fn read_usage(&self, parts: super::UsageParts) -> Result<super::CgroupUsage, CgroupError> {
        if let Some(files) = self.usage.get() {
            return files.read(parts);
        }
        // cpuacct may be co-mounted with cpu; either way its directory has cpuacct.usage.
        let acct = self
            .dir(Role::Cpuacct)
            .or_else(|| self.dir(Role::Cpu))
            .ok_or_else(|| {
                CgroupError::NoHierarchy(format!("cgroup {} has no cpuacct hierarchy", self.path))
            })?;
        let memory = self.required_dir(Role::Memory)?;
        let paths = super::usage::UsagePaths {
            cpu: acct.join("cpuacct.usage"),
            memory: memory.join("memory.usage_in_bytes"),
            memory_stat: memory.join("memory.stat"),
            inactive_key: "total_inactive_file",
            // On hybrid hosts the controller-less cgroup2 tree still carries PSI per cgroup.
            pressure_dir: self.dir(Role::Unified).map(Path::to_path_buf),
        };
        self.usage
            .get_or_init(|| {
                super::usage::UsageFiles::new(paths, super::usage::CpuFormat::Nanoseconds)
            })
            .read(parts)
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
        lifecycle::remove(self, &self.usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fake_v1_env, fake_v1_mounts, read, FAKE_V1_OWN_DIRS, SPECS};
    use crate::UsageParts;

    #[test]
    fn new_creates_parent_below_own_cgroup_in_every_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let driver = V1Driver::new(fake_v1_mounts(root), "lmi-agent").unwrap();
        assert_eq!(driver.parent_path(), "/process_api/abc/lmi-agent");
        assert_eq!(driver.version(), CgroupVersion::V1);
        for d in FAKE_V1_OWN_DIRS {
            assert!(root.join(d).join("lmi-agent").is_dir(), "{d}");
        }
        // Idempotent.
        V1Driver::new(fake_v1_mounts(root), "lmi-agent").unwrap();
        assert!(driver.children().unwrap().is_empty());
    }

    #[test]
    fn usage_reads_cpuacct_working_set_and_unified_pressure() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let driver = V1Driver::new(fake_v1_mounts(root), "lmi-agent").unwrap();
        fake_v1_env(root, "lmi-agent", "u", true);
        let env = driver
            .create("u", &CgroupLimits::from_vcpus(1, 1 << 30, 64))
            .unwrap();
        let at = |m: &str| root.join(m).join("lmi-agent").join("u");
        std::fs::write(at("cpuacct").join("cpuacct.usage"), "7000000000\n").unwrap();
        let mem = root.join("memory/process_api/abc/lmi-agent/u");
        std::fs::write(mem.join("memory.usage_in_bytes"), "52428800\n").unwrap();
        std::fs::write(
            mem.join("memory.stat"),
            "cache 1000\ninactive_file 99\ntotal_inactive_file 2428800\n",
        )
        .unwrap();
        let u = env.usage().unwrap();
        assert_eq!(u.cpu_usage_ns, 7_000_000_000);
        assert_eq!(u.memory_usage_bytes, 52_428_800);
        assert_eq!(u.memory_working_set_bytes(), Some(50_000_000));
        assert_eq!(u.pressure, None, "no PSI files in the unified tree");
        // The counters alone leave memory.stat unread.
        let u = env.read_usage(UsageParts::COUNTERS).unwrap();
        assert_eq!(
            (u.memory_usage_bytes, u.inactive_file_bytes),
            (52_428_800, None)
        );
        // The files are kept open: a new value is read without reopening them.
        std::fs::write(at("cpuacct").join("cpuacct.usage"), "8000000000\n").unwrap();
        assert_eq!(env.usage().unwrap().cpu_usage_ns, 8_000_000_000);
        std::fs::write(mem.join("memory.usage_in_bytes"), "lots\n").unwrap();
        assert!(env.usage().is_err());

        // PSI where the kernel offers it (a kernel offers it from the cgroup's creation on).
        fake_v1_env(root, "lmi-agent", "p", true);
        let env = driver
            .create("p", &CgroupLimits::from_vcpus(1, 1 << 30, 64))
            .unwrap();
        let at = |m: &str| root.join(m).join("lmi-agent").join("p");
        std::fs::write(at("cpuacct").join("cpuacct.usage"), "1\n").unwrap();
        let mem = root.join("memory/process_api/abc/lmi-agent/p");
        std::fs::write(mem.join("memory.usage_in_bytes"), "0\n").unwrap();
        std::fs::write(mem.join("memory.stat"), "total_inactive_file 0\n").unwrap();
        std::fs::write(
            at("unified").join("cpu.pressure"),
            "some avg10=90.00 avg60=0 avg300=0 total=1\n",
        )
        .unwrap();
        assert_eq!(env.usage().unwrap().pressure.unwrap().cpu_some, 0.9);
        assert_eq!(env.read_usage(UsageParts::COUNTERS).unwrap().pressure, None);
    }

    #[test]
    fn limits_are_written_exactly_for_each_spec() {
        for (label, vcpus, memory) in SPECS {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            let driver = V1Driver::new(fake_v1_mounts(root), "lmi-agent").unwrap();
            let name = format!("env-{label}");
            fake_v1_env(root, "lmi-agent", &name, true);
            let limits = CgroupLimits::from_vcpus(vcpus, memory, 1024);
            let env = driver.create(&name, &limits).unwrap();

            let at = |m: &str, f: &str| read(&root.join(m).join("lmi-agent").join(&name).join(f));
            assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000", "{label}");
            assert_eq!(
                at("cpu", "cpu.cfs_quota_us"),
                (vcpus * 100_000).to_string(),
                "{label}"
            );
            assert_eq!(
                at("memory/process_api/abc", "memory.limit_in_bytes"),
                memory.to_string()
            );
            assert_eq!(
                at("memory/process_api/abc", "memory.memsw.limit_in_bytes"),
                memory.to_string()
            );
            assert_eq!(at("pids", "pids.max"), "1024");

            assert_eq!(env.path(), format!("/process_api/abc/lmi-agent/{name}"));
            assert_eq!(env.name(), name);
            assert_eq!(env.cpu_quota().unwrap(), (Some(vcpus * 100_000), 100_000));
            assert_eq!(env.memory_limit().unwrap(), memory);
            assert_eq!(env.oom_kills().unwrap(), 3);
            assert_eq!(env.placement().unwrap().paths().len(), 6);
            assert_eq!(driver.children().unwrap(), vec![name.clone()]);
            assert!(driver.open(&name).unwrap().is_some());
            assert!(driver.open("absent").unwrap().is_none());
        }
    }

    #[test]
    fn memsw_is_left_alone_when_absent_and_zero_means_unlimited() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let driver = V1Driver::new(fake_v1_mounts(root), "p").unwrap();
        fake_v1_env(root, "p", "e", false);
        let limits = CgroupLimits {
            cpu_quota_us: 0,
            cpu_period_us: 50_000,
            memory_bytes: 0,
            pids_max: 0,
        };
        let env = driver.create("e", &limits).unwrap();
        let mem = root.join("memory/process_api/abc/p/e");
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), "-1");
        assert_eq!(read(&root.join("cpu/p/e/cpu.cfs_quota_us")), "-1");
        assert_eq!(read(&root.join("pids/p/e/pids.max")), "max");
        assert_eq!(env.cpu_quota().unwrap(), (None, 50_000));
    }

    #[test]
    fn garbage_in_files_is_an_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let driver = V1Driver::new(fake_v1_mounts(root), "p").unwrap();
        fake_v1_env(root, "p", "e", true);
        let env = driver
            .create("e", &CgroupLimits::from_vcpus(1, 1 << 30, 10))
            .unwrap();
        let mem = root.join("memory/process_api/abc/p/e");
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert!(matches!(env.oom_kills(), Err(CgroupError::Parse { .. })));
        std::fs::write(mem.join("memory.oom_control"), "oom_kill lots\n").unwrap();
        assert!(matches!(env.oom_kills(), Err(CgroupError::Parse { .. })));
        std::fs::write(mem.join("memory.limit_in_bytes"), "twelve").unwrap();
        assert!(matches!(env.memory_limit(), Err(CgroupError::Parse { .. })));
        std::fs::write(mem.join("cgroup.procs"), "1\nx\n").unwrap();
        assert!(matches!(env.pids(), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn failed_create_rolls_back_and_bad_input_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let driver = V1Driver::new(fake_v1_mounts(root), "p").unwrap();
        // No interface files: the cpu write fails (files are never created).
        let err = driver
            .create("e", &CgroupLimits::from_vcpus(1, 1 << 30, 10))
            .unwrap_err();
        assert!(matches!(err, CgroupError::Write { .. }), "{err}");
        assert!(
            driver.children().unwrap().is_empty(),
            "created dirs were rolled back"
        );
        assert!(!root.join("cpu/p/e/cpu.cfs_quota_us").exists());
        assert!(matches!(
            driver.create("../x", &CgroupLimits::from_vcpus(1, 1, 1)),
            Err(CgroupError::InvalidName(_))
        ));
        assert!(matches!(
            driver.create(
                "e",
                &CgroupLimits {
                    cpu_period_us: 1,
                    ..CgroupLimits::from_vcpus(1, 1, 1)
                }
            ),
            Err(CgroupError::InvalidLimits(_))
        ));
    }

    #[test]
    fn co_mounted_cpu_cpuacct_is_managed_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut mounts = fake_v1_mounts(root);
        mounts.cpuacct = Some(mounts.cpu.clone());
        mounts.unified = None;
        mounts.freezer = None;
        let driver = V1Driver::new(mounts, "p").unwrap();
        let env = driver.handle("e");
        assert_eq!(env.dirs.len(), 3);
        assert_eq!(env.dir(Role::Cpuacct), env.dir(Role::Cpu));
    }

    #[test]
    fn remove_parent_refuses_while_children_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let driver = V1Driver::new(fake_v1_mounts(root), "p").unwrap();
        std::fs::create_dir(root.join("pids/p/leftover")).unwrap();
        assert!(matches!(
            driver.remove_parent(),
            Err(CgroupError::ParentNotEmpty { .. })
        ));
        std::fs::remove_dir(root.join("pids/p/leftover")).unwrap();
        driver.remove_parent().unwrap();
        assert!(!root.join("cpu/p").exists());
        driver.remove_parent().unwrap();
    }
}
