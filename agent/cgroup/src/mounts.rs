//! Discovery of the cgroup hierarchies and of the agent's own place in them,
//! from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::CgroupError;

/// One mounted hierarchy and the agent's own cgroup in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where the hierarchy is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// The agent's own cgroup relative to `mount_point`, e.g. `/` or
    /// `/system.slice/lmi-agent.service`. Always starts with `/`.
    pub own_path: String,
}

impl Hierarchy {
    /// Convenience constructor.
    pub fn new(mount_point: impl Into<PathBuf>, own_path: impl Into<String>) -> Self {
        Self {
            mount_point: mount_point.into(),
            own_path: own_path.into(),
        }
    }
}

/// The cgroup v1 hierarchies the V1 driver manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mounts {
    /// `cpu` (possibly co-mounted with `cpuacct`).
    pub cpu: Hierarchy,
    /// `cpuacct` when mounted; may be the same mount as `cpu`.
    pub cpuacct: Option<Hierarchy>,
    /// `memory`.
    pub memory: Hierarchy,
    /// `pids`.
    pub pids: Hierarchy,
    /// `freezer` when mounted (used to stop forks while killing).
    pub freezer: Option<Hierarchy>,
    /// A controller-less cgroup2 mount on a hybrid host (gives `cgroup.kill`).
    pub unified: Option<Hierarchy>,
}

/// What [`discover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A cgroup2 mount with `cpu` and `memory` available at its root.
    V2(Hierarchy),
    /// cgroup v1 (legacy or hybrid).
    V1(Box<V1Mounts>),
}

/// A cgroup or cgroup2 line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// Mount point.
    pub mount_point: PathBuf,
    /// The cgroup at the root of this mount (field 4), usually `/`.
    pub root: String,
    /// `None` for cgroup2, else the v1 super options (controllers among them).
    pub v1_options: Option<Vec<String>>,
}

/// The agent's memberships from `/proc/self/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    /// v1 controller (or `name=…`) → cgroup path.
    pub v1: HashMap<String, String>,
    /// The `0::` cgroup2 path, if any.
    pub unified: Option<String>,
}

/// Parses `/proc/self/mountinfo`, keeping only `cgroup` and `cgroup2` mounts.
pub fn parse_mountinfo(text: &str) -> Result<Vec<CgroupMount>, CgroupError> {
    let mut mounts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |reason: &str| CgroupError::Parse {
            what: "/proc/self/mountinfo".to_owned(),
            reason: format!("line {}: {reason}: {line:?}", i + 1),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let sep = fields
            .iter()
            .position(|f| *f == "-")
            .ok_or_else(|| err("missing ' - ' separator"))?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(err("too few fields"));
        }
        let (root, mount_point) = (fields[3], fields[4]);
        let (fstype, super_opts) = (fields[sep + 1], fields[sep + 3]);
        let v1_options = match fstype {
            "cgroup2" => None,
            "cgroup" => Some(super_opts.split(',').map(str::to_owned).collect()),
            _ => continue,
        };
        mounts.push(CgroupMount {
            mount_point: PathBuf::from(unescape(mount_point)),
            root: unescape(root),
            v1_options,
        });
    }
    Ok(mounts)
}

/// Parses `/proc/self/cgroup` (`id:controllers:path` per line).
pub fn parse_proc_cgroup(text: &str) -> Result<ProcCgroup, CgroupError> {
    let mut out = ProcCgroup::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CgroupError::Parse {
                what: "/proc/self/cgroup".to_owned(),
                reason: format!("line {}: expected id:controllers:path, got {line:?}", i + 1),
            });
        };
        if id.parse::<u32>().is_err() || !path.starts_with('/') {
            return Err(CgroupError::Parse {
                what: "/proc/self/cgroup".to_owned(),
                reason: format!("line {}: bad hierarchy id or path in {line:?}", i + 1),
            });
        }
        if id == "0" && controllers.is_empty() {
            out.unified = Some(path.to_owned());
        } else {
            for c in controllers.split(',').filter(|c| !c.is_empty()) {
                out.v1.insert(c.to_owned(), path.to_owned());
            }
        }
    }
    if out.v1.is_empty() && out.unified.is_none() {
        return Err(CgroupError::Parse {
            what: "/proc/self/cgroup".to_owned(),
            reason: "no cgroup memberships listed".to_owned(),
        });
    }
    Ok(out)
}

/// Decides between V1 and V2 and finds the agent's own cgroup in each
/// hierarchy. `read_controllers` returns the contents of a cgroup2 root's
/// `cgroup.controllers` (injected so tests need no real cgroupfs).
pub fn discover(
    mountinfo: &str,
    proc_cgroup: &str,
    read_controllers: &dyn Fn(&Path) -> Option<String>,
) -> Result<Layout, CgroupError> {
    let mounts = parse_mountinfo(mountinfo)?;
    let own = parse_proc_cgroup(proc_cgroup)?;

    let unified = own.unified.as_deref().and_then(|path| {
        mounts
            .iter()
            .filter(|m| m.v1_options.is_none())
            .find_map(|m| hierarchy_for(m, path))
    });
    if let Some(h) = &unified {
        let controllers =
            read_controllers(&h.mount_point.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("cpu") && has("memory") {
            return Ok(Layout::V2(h.clone()));
        }
    }

    let find_v1 = |controller: &str| -> Option<Hierarchy> {
        let path = own.v1.get(controller)?;
        mounts
            .iter()
            .filter(|m| {
                m.v1_options
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|x| x == controller))
            })
            .find_map(|m| hierarchy_for(m, path))
    };
    let (cpu, memory, pids) = (find_v1("cpu"), find_v1("memory"), find_v1("pids"));
    match (cpu, memory, pids) {
        (Some(cpu), Some(memory), Some(pids)) => Ok(Layout::V1(Box::new(V1Mounts {
            cpu,
            cpuacct: find_v1("cpuacct"),
            memory,
            pids,
            freezer: find_v1("freezer"),
            unified,
        }))),
        (cpu, memory, pids) => {
            let missing: Vec<&str> = [
                ("cpu", cpu.is_none()),
                ("memory", memory.is_none()),
                ("pids", pids.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(n, _)| *n)
            .collect();
            Err(CgroupError::NoHierarchy(format!(
                "no cgroup2 mount with cpu+memory delegated{}, and cgroup v1 controller(s) {} not mounted \
                 or not visible",
                if unified.is_some() { " (cgroup2 found without them)" } else { "" },
                missing.join(", ")
            )))
        }
    }
}

/// The agent's cgroup `path` as seen from mount `m`, if that mount shows it.
fn hierarchy_for(m: &CgroupMount, path: &str) -> Option<Hierarchy> {
    let root = m.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        path.to_owned()
    } else if path == root {
        "/".to_owned()
    } else {
        let rest = path.strip_prefix(root)?;
        if !rest.starts_with('/') {
            return None;
        }
        rest.to_owned()
    };
    Some(Hierarchy::new(m.mount_point.clone(), rel))
}

/// Undoes mountinfo's octal escapes (`\040` = space, etc.).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(&[b'\\', a, b, c]) = bytes.get(i..i + 4) {
            let digits = [a, b, c];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/self/mountinfo` (cgroup part) of the hybrid development host.
    const HYBRID_MOUNTINFO: &str = "\
25 1 253:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/234658e754e3c4896f13b0b12ad3049d
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";
    /// Amazon Linux 2023: pure cgroup v2, agent run by systemd.
    const AL2023_MOUNTINFO: &str = "\
22 1 259:1 / / rw,noatime shared:1 - xfs /dev/nvme0n1p1 rw,seclabel
26 21 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,seclabel,nsdelegate,memory_recursiveprot
";
    const AL2023_CGROUP: &str = "0::/system.slice/lmi-agent.service\n";

    fn controllers(text: &'static str) -> impl Fn(&Path) -> Option<String> {
        move |_| Some(text.to_owned())
    }

    #[test]
    fn hybrid_host_is_v1_with_unified_and_freezer() {
        let layout = discover(HYBRID_MOUNTINFO, HYBRID_CGROUP, &controllers("")).unwrap();
        let cg = |m: &str, own: &str| Hierarchy::new(format!("/sys/fs/cgroup/{m}"), own);
        assert_eq!(
            layout,
            Layout::V1(Box::new(V1Mounts {
                cpu: cg("cpu", "/"),
                cpuacct: Some(cg("cpuacct", "/")),
                memory: cg("memory", "/process_api/234658e754e3c4896f13b0b12ad3049d"),
                pids: cg("pids", "/"),
                freezer: Some(cg("freezer", "/")),
                unified: Some(cg("unified", "/")),
            }))
        );
    }

    #[test]
    fn al2023_is_v2_at_the_service_cgroup() {
        let layout = discover(
            AL2023_MOUNTINFO,
            AL2023_CGROUP,
            &controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
        )
        .unwrap();
        assert_eq!(
            layout,
            Layout::V2(Hierarchy::new(
                "/sys/fs/cgroup",
                "/system.slice/lmi-agent.service"
            ))
        );
    }

    #[test]
    fn v2_without_cpu_and_memory_and_no_v1_is_an_error() {
        let err = discover(AL2023_MOUNTINFO, AL2023_CGROUP, &controllers("pids io\n")).unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(_)), "{err}");
        assert!(err.to_string().contains("cpu, memory, pids"), "{err}");
    }

    #[test]
    fn co_mounted_cpu_cpuacct_and_container_roots() {
        let mountinfo = "\
30 25 0:26 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids\\040x rw - cgroup cgroup rw,pids
";
        let proc_cgroup =
            "4:pids:/docker/abc\n3:memory:/docker/abc/sub\n2:cpu,cpuacct:/docker/abc\n";
        let Layout::V1(m) = discover(mountinfo, proc_cgroup, &controllers("")).unwrap() else {
            panic!("expected v1");
        };
        assert_eq!(m.cpu, Hierarchy::new("/sys/fs/cgroup/cpu,cpuacct", "/"));
        assert_eq!(m.cpuacct, Some(m.cpu.clone()));
        assert_eq!(m.memory, Hierarchy::new("/sys/fs/cgroup/memory", "/sub"));
        assert_eq!(
            m.pids,
            Hierarchy::new("/sys/fs/cgroup/pids x", "/docker/abc")
        );
        assert_eq!(m.freezer, None);
        assert_eq!(m.unified, None);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let none = controllers("");
        let err = discover("this is not mountinfo", HYBRID_CGROUP, &none).unwrap_err();
        assert!(err.to_string().contains("/proc/self/mountinfo"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");

        let err = discover(HYBRID_MOUNTINFO, "garbage\n", &none).unwrap_err();
        assert!(err.to_string().contains("/proc/self/cgroup"), "{err}");
        let err = discover(HYBRID_MOUNTINFO, "x:cpu:/\n", &none).unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
        let err = discover(HYBRID_MOUNTINFO, "", &none).unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{err}");

        let no_cgroups = "25 1 253:0 / / rw,relatime - ext4 /dev/vda rw\n";
        let err = discover(no_cgroups, HYBRID_CGROUP, &none).unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(_)), "{err}");
    }

    #[test]
    fn mount_root_not_covering_own_cgroup_is_skipped() {
        let mi = "30 25 0:26 /other /x rw - cgroup2 cgroup2 rw\n";
        let err = discover(mi, "0::/mine\n", &controllers("cpu memory pids")).unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(_)), "{err}");
    }
}
