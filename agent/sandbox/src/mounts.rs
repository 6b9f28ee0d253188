//! The runtime's view of the filesystem, in a mount namespace of its own: the host's tree, with
//!
//! - `/var/task` = the function's code, read-only (`LAMBDA_TASK_ROOT`);
//! - `/tmp` = the environment's size-capped tmpfs, and `/var/tmp`, `/dev/shm` and `/run/lock` the same
//!   tmpfs (so no world-writable scratch space is shared with the host or another environment, and one cap
//!   covers all);
//! - `/proc` = a proc of the runtime's own PID namespace ([`super::pidns`]), `hidepid=invisible`: only the
//!   environment's processes (the namespace's init, root, is hidden too);
//! - `/sys/fs/cgroup` = the environment's own cgroups only, read-only ([`CgroupView`]): a small read-only
//!   tmpfs holding a bind of the environment's directory in each hierarchy it joined (or, on a pure
//!   cgroup v2 host, that one bind over the whole); with the runtime's cgroup namespace, `/proc/self/cgroup`
//!   and `mountinfo` show them as `/`;
//! - `/run/lmi-runtime` = the environment's log socket directory, holding `log.sock`
//!   (`_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`; the socket belongs to the environment's uid);
//! - optionally `/etc/resolv.conf` = a file naming resolvers reachable from the environment's network;
//! - no trace of any environment's tmpfs at its host path (every copy is detached, so the namespace pins no
//!   other environment's memory).
//!
//! Propagation is `rslave`: nothing mounted in the namespace reaches the host, and host unmounts reach the
//! namespace (it never keeps a host filesystem busy). The host side is prepared once by
//! [`HostMounts::prepare`]; each runtime's side is a [`MountPlan`] built before `fork` and applied in the
//! child with system calls only.

use std::{
    ffi::{CString, OsStr},
    io,
    os::unix::{
        ffi::{OsStrExt, OsStringExt},
        fs::PermissionsExt,
    },
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where the function's code appears (`LAMBDA_TASK_ROOT`), as on Lambda.
pub const TASK_ROOT: &str = "/var/task";
/// Where the environment's tmpfs appears (`TMPDIR`).
pub const TMP: &str = "/tmp";
/// Where the environment's log socket directory appears.
pub const LOG_DIR: &str = "/run/lmi-runtime";
/// The log socket as the runtime sees it (`_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`).
pub const LOG_SOCKET: &str = "/run/lmi-runtime/log.sock";
/// Other world-writable scratch directories covered with the same tmpfs when the host has them.
const SCRATCH: [&str; 3] = ["/var/tmp", "/dev/shm", "/run/lock"];
const RESOLV_CONF: &str = "/etc/resolv.conf";
const PROC: &str = "/proc";
/// Options of the runtime's proc: a process it may not trace (another uid's) has no entry at all.
const PROC_OPTIONS: &str = "hidepid=invisible";
/// Where hosts mount their cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The tmpfs holding the mount points of [`CgroupView`] (a few directories and symlinks).
const CGROUP_TMPFS_OPTIONS: &str = "mode=755,size=64k,nr_inodes=64";
/// Hierarchies a [`CgroupView`] binds at most (v1 has about a dozen controllers).
const MAX_CGROUP_BINDS: usize = 16;

/// The host directory under which a runtime cannot see `path` (for a directory the runtime must read, such
/// as `shims_dir`): one its mount namespace covers (`/tmp`, the other scratch directories, `/proc`,
/// `/sys/fs/cgroup`, [`LOG_DIR`], [`TASK_ROOT`]) or `state_dir` (private to root). Checks `path` as
/// written and, when it exists, with its links resolved.
pub fn hidden_from_runtimes(path: &Path, state_dir: &Path) -> Option<PathBuf> {
    let covered = [TMP, PROC, CGROUP_ROOT, LOG_DIR, TASK_ROOT]
        .into_iter()
        .chain(SCRATCH)
        .map(PathBuf::from)
        .chain([state_dir.to_owned()]);
    let forms: Vec<PathBuf> = [Some(path.to_owned()), path.canonicalize().ok()]
        .into_iter()
        .flatten()
        .collect();
    covered
        .flat_map(|c| {
            let resolved = c.canonicalize().ok();
            [Some(c), resolved]
        })
        .flatten()
        .find(|c| forms.iter().any(|f| f.starts_with(c)))
}

/// What the host needs for every runtime's mount namespace.
#[derive(Debug)]
pub struct HostMounts {
    envs: PathBuf,
    bound_here: bool,
}

impl HostMounts {
    /// Makes `state_dir` private to root (mode 0700: environments reach nothing in it except through their
    /// own mounts), makes `<state_dir>/envs` a private bind mount of itself (so a runtime can detach every
    /// environment's tmpfs in one call) and creates the `/var/task` mount point. Idempotent.
    pub fn prepare(state_dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(state_dir)?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;
        let envs = state_dir.join("envs");
        std::fs::create_dir_all(&envs)?;
        let envs = envs.canonicalize()?;
        let mut bound_here = false;
        if !is_mount_point(&envs)? {
            mount(
                Some(&envs),
                &envs,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            bound_here = true;
        }
        mount(
            None::<&str>,
            &envs,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )?;
        for mount_point in [TASK_ROOT, LOG_DIR] {
            if !Path::new(mount_point).is_dir() {
                std::fs::create_dir_all(mount_point)?;
                std::fs::set_permissions(mount_point, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        Ok(Self { envs, bound_here })
    }

    /// The directory holding every environment's tmpfs.
    pub fn envs_dir(&self) -> &Path {
        &self.envs
    }

    /// Undoes the bind mount of `envs` (at agent shutdown, once every environment is gone).
    pub fn remove(&self) -> io::Result<()> {
        if !self.bound_here && !is_mount_point(&self.envs)? {
            return Ok(());
        }
        match umount2(&self.envs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// True when `path` (canonical) is a mount point, from `/proc/self/mountinfo`.
fn is_mount_point(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| unescape_mountinfo(p) == path.as_os_str().as_bytes()))
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// One runtime's mounts, with every path turned into a C string before `fork`.
#[derive(Debug)]
pub struct MountPlan {
    envs: CString,
    code: CString,
    tmp: CString,
    log_dir: CString,
    resolv: Option<CString>,
    scratch: Vec<CString>,
    task_root: CString,
    log_target: CString,
    tmp_target: CString,
    resolv_target: CString,
    root: CString,
    proc: CString,
    proc_options: CString,
    cgroups: Option<CgroupView>,
}

/// A path the plan cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MountPlanError {
    pub path: PathBuf,
    pub reason: &'static str,
}

impl MountPlan {
    /// Plans the namespace of a runtime whose code is at `code`, whose tmpfs is mounted at `tmp` and whose
    /// log socket lies in `log_dir` (host paths), with `resolv` bound over `/etc/resolv.conf` when given.
    pub fn new(
        host: &HostMounts,
        code: &Path,
        tmp: &Path,
        log_dir: &Path,
        resolv: Option<&Path>,
    ) -> Result<Self, MountPlanError> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| MountPlanError {
                path: p.to_owned(),
                reason: "holds a NUL byte",
            })
        };
        Ok(Self {
            envs: c(&host.envs)?,
            code: c(code)?,
            tmp: c(tmp)?,
            log_dir: c(log_dir)?,
            resolv: resolv.map(c).transpose()?,
            scratch: SCRATCH
                .iter()
                .map(Path::new)
                .filter(|p| p.is_dir())
                .map(c)
                .collect::<Result<_, _>>()?,
            task_root: c(Path::new(TASK_ROOT))?,
            log_target: c(Path::new(LOG_DIR))?,
            tmp_target: c(Path::new(TMP))?,
            resolv_target: c(Path::new(RESOLV_CONF))?,
            root: c(Path::new("/"))?,
            proc: c(Path::new(PROC))?,
            proc_options: c(Path::new(PROC_OPTIONS))?,
            cgroups: None,
        })
    }

    /// Shows the runtime its own cgroups at `/sys/fs/cgroup` (see [`CgroupView`]).
    pub fn show_cgroups(&mut self, view: CgroupView) {
        self.cgroups = Some(view);
    }

    /// Applies the plan in a process that has just entered a new mount namespace. Async-signal-safe: only
    /// `chdir`, `mount` and `umount2` on strings prepared by [`MountPlan::new`]. Leaves the working directory
    /// at `/var/task`.
    pub fn apply(&self) -> io::Result<()> {
        // Hold the environments' directory as the working directory while its path still resolves (a state
        // directory under /tmp is covered below); it is detached through "." at the end.
        chdir(&self.envs)?;
        sys_mount(None, &self.root, libc::MS_REC | libc::MS_SLAVE)?;
        bind_read_only(&self.code, &self.task_root)?;
        // Writable (connecting to a socket is a write), but the directory is root's: nothing can be created.
        sys_mount(Some(&self.log_dir), &self.log_target, libc::MS_BIND)?;
        sys_mount(
            None,
            &self.log_target,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        )?;
        if let Some(resolv) = &self.resolv {
            bind_read_only(resolv, &self.resolv_target)?;
        }
        // The code, log and resolver sources were bound first: they may lie under /tmp.
        sys_mount(Some(&self.tmp), &self.tmp_target, libc::MS_BIND)?;
        for dir in &self.scratch {
            sys_mount(Some(&self.tmp_target), dir, libc::MS_BIND)?;
        }
        // A proc of the runtime's PID namespace instead of the host's (and its submounts).
        detach(&self.proc)?;
        mount_fs(
            c"proc",
            &self.proc,
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            &self.proc_options,
        )?;
        if let Some(view) = &self.cgroups {
            view.apply()?;
        }
        // SAFETY: umount2 on a static C string.
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        chdir(&self.task_root)
    }
}

/// What a runtime sees at `/sys/fs/cgroup`: its environment's own cgroup directory in each hierarchy it
/// joined, read-only, and nothing else (no other environment's, the agent's or the host's cgroups). On a
/// v1 or hybrid host a small read-only tmpfs covers `/sys/fs/cgroup` and holds one mount point per bound
/// hierarchy (plus the host's alias symlinks of co-mounted ones, such as `cpu -> cpu,cpuacct`); on a pure
/// v2 host the environment's directory is bound over `/sys/fs/cgroup` itself. Built before `fork` from the
/// host's `mountinfo`; applied with system calls only.
#[derive(Debug)]
pub struct CgroupView {
    /// The tmpfs over `root` (v1 and hybrid hosts); without it the one bind covers `root`.
    tmpfs: bool,
    root: CString,
    tmpfs_options: CString,
    /// (the environment's directory on the host, where it appears).
    binds: Vec<(CString, CString)>,
    /// (what the link points to, the link) inside the tmpfs.
    links: Vec<(CString, CString)>,
}

impl CgroupView {
    /// The view of the environment whose cgroup directories are `dirs` (one per hierarchy), from this
    /// host's cgroup mounts. `None` when the host has no cgroup hierarchy under `/sys/fs/cgroup`.
    pub fn new(dirs: &[PathBuf]) -> Result<Option<Self>, MountPlanError> {
        let io_error = |reason| MountPlanError {
            path: PathBuf::from("/proc/self/mountinfo"),
            reason,
        };
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|_| io_error("cannot be read"))?;
        let links: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(CGROUP_ROOT)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let target = std::fs::read_link(e.path()).ok()?;
                        Some((e.file_name().into(), target))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self::plan(&info, dirs, &links)
    }

    /// [`CgroupView::new`] on a given `mountinfo` and the symlinks (name, target) found in `/sys/fs/cgroup`.
    fn plan(
        mountinfo: &str,
        dirs: &[PathBuf],
        links: &[(PathBuf, PathBuf)],
    ) -> Result<Option<Self>, MountPlanError> {
        let root = Path::new(CGROUP_ROOT);
        let mounts = cgroup_mounts(mountinfo);
        let whole = mounts.iter().any(|m| m == root);
        let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
        for dir in dirs {
            // The hierarchy holding `dir`: the cgroup mount with the longest matching mount point.
            let Some(point) = mounts
                .iter()
                .filter(|m| dir.starts_with(m))
                .max_by_key(|m| m.as_os_str().len())
            else {
                continue;
            };
            let shown = if whole {
                point == root
            } else {
                point.parent() == Some(root)
            };
            if shown && !binds.iter().any(|(_, p)| p == point) {
                binds.push((dir.clone(), point.clone()));
            }
        }
        if binds.is_empty() {
            return Ok(None);
        }
        if binds.len() > MAX_CGROUP_BINDS {
            return Err(MountPlanError {
                path: root.to_owned(),
                reason: "holds more cgroup hierarchies than a view can bind",
            });
        }
        let names: Vec<&OsStr> = binds.iter().filter_map(|(_, p)| p.file_name()).collect();
        let links = if whole {
            Vec::new()
        } else {
            links
                .iter()
                .filter(|(name, target)| {
                    name.components().count() == 1
                        && target.components().count() == 1
                        && names.contains(&target.as_os_str())
                })
                .map(|(name, target)| (target.clone(), root.join(name)))
                .collect()
        };
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| MountPlanError {
                path: p.to_owned(),
                reason: "holds a NUL byte",
            })
        };
        let pairs = |v: &[(PathBuf, PathBuf)]| -> Result<Vec<(CString, CString)>, MountPlanError> {
            v.iter().map(|(a, b)| Ok((c(a)?, c(b)?))).collect()
        };
        Ok(Some(Self {
            tmpfs: !whole,
            root: c(root)?,
            tmpfs_options: c(Path::new(CGROUP_TMPFS_OPTIONS))?,
            binds: pairs(&binds)?,
            links: pairs(&links)?,
        }))
    }

    /// Applies the view in the runtime's new mount namespace. Async-signal-safe: `open_tree`, `umount2`,
    /// `mount`, `mkdir`, `symlink`, `move_mount` and `close` on strings prepared by [`CgroupView::new`].
    fn apply(&self) -> io::Result<()> {
        // Detached copies of the sources first: the tmpfs below covers the paths they are reached by.
        let mut trees = [-1 as libc::c_int; MAX_CGROUP_BINDS];
        for ((source, _), tree) in self.binds.iter().zip(trees.iter_mut()) {
            // SAFETY: open_tree(2) on a C string prepared before fork.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    source.as_ptr(),
                    OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            *tree = fd as libc::c_int;
        }
        // The host's hierarchies (and whatever covers /sys/fs/cgroup) leave the namespace altogether.
        detach(&self.root)?;
        if self.tmpfs {
            mount_fs(
                c"tmpfs",
                &self.root,
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                &self.tmpfs_options,
            )?;
            for (_, target) in &self.binds {
                // SAFETY: mkdir(2) on a C string prepared before fork.
                if unsafe { libc::mkdir(target.as_ptr(), 0o755) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (to, link) in &self.links {
                // SAFETY: symlink(2) on C strings prepared before fork.
                if unsafe { libc::symlink(to.as_ptr(), link.as_ptr()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        for ((_, target), tree) in self.binds.iter().zip(trees) {
            // SAFETY: move_mount(2) of a descriptor open_tree returned above, to a C string prepared before
            // fork; close(2) of that descriptor.
            let rc = unsafe {
                let rc = libc::syscall(
                    libc::SYS_move_mount,
                    tree,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    target.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                libc::close(tree);
                rc
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            sys_mount(None, target, READ_ONLY_BIND | libc::MS_NOEXEC)?;
        }
        if self.tmpfs {
            sys_mount(None, &self.root, READ_ONLY_BIND | libc::MS_NOEXEC)?;
        }
        Ok(())
    }
}

/// `open_tree(2)`: a detached copy of the mount (linux/mount.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
/// `move_mount(2)`: the source is the descriptor itself (linux/mount.h).
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
/// Remount flags of a read-only bind mount.
const READ_ONLY_BIND: libc::c_ulong =
    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;

/// Mount points of the cgroup (v1) and cgroup2 filesystems in a `mountinfo`.
fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2")
                .then(|| PathBuf::from(std::ffi::OsString::from_vec(unescape_mountinfo(point))))
        })
        .collect()
}

/// Detaches whatever is mounted at `target` (with its submounts); nothing when nothing is.
fn detach(target: &CString) -> io::Result<()> {
    // SAFETY: umount2 on a C string prepared before fork.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Ok(())
}

/// mount(2) of a filesystem without a source device, with options.
fn mount_fs(
    fstype: &std::ffi::CStr,
    target: &CString,
    flags: libc::c_ulong,
    options: &CString,
) -> io::Result<()> {
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn chdir(path: &CString) -> io::Result<()> {
    // SAFETY: chdir on a valid C string.
    if unsafe { libc::chdir(path.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind_read_only(source: &CString, target: &CString) -> io::Result<()> {
    sys_mount(Some(source), target, libc::MS_BIND)?;
    sys_mount(None, target, READ_ONLY_BIND)
}

fn sys_mount(source: Option<&CString>, target: &CString, flags: libc::c_ulong) -> io::Result<()> {
    let src = source.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: mount(2) with valid C strings (or NULL source), no filesystem type and no data.
    let rc = unsafe {
        libc::mount(
            src,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_the_runtimes_cannot_see_are_named() {
        let state = Path::new("/var/lib/lmi-agent");
        for (path, hidden) in [
            ("/tmp/shims", Some("/tmp")),
            ("/tmp", Some("/tmp")),
            ("/dev/shm/x/y", Some("/dev/shm")),
            ("/var/tmp/shims", Some("/var/tmp")),
            ("/var/task/shims", Some("/var/task")),
            ("/run/lmi-runtime/s", Some("/run/lmi-runtime")),
            ("/var/lib/lmi-agent/shims", Some("/var/lib/lmi-agent")),
            ("/usr/share/lmi-agent/runtime-shims", None),
            ("/tmpfoo/shims", None),
        ] {
            assert_eq!(
                hidden_from_runtimes(Path::new(path), state),
                hidden.map(PathBuf::from),
                "{path}"
            );
        }
        // A link outside that leads inside is seen through.
        let t = tempfile::tempdir_in("/tmp").unwrap();
        let outside =
            tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")).unwrap();
        let link = outside.path().join("shims");
        std::os::unix::fs::symlink(t.path(), &link).unwrap();
        assert_eq!(
            hidden_from_runtimes(&link, state),
            Some(PathBuf::from("/tmp"))
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape_mountinfo("/plain"), b"/plain".to_vec());
        assert_eq!(unescape_mountinfo("/trail\\04"), b"/trail\\04".to_vec());
    }

    fn targets(view: &CgroupView) -> Vec<(String, String)> {
        let s = |c: &CString| c.to_str().unwrap().to_owned();
        view.binds.iter().map(|(a, b)| (s(a), s(b))).collect()
    }

    const HYBRID: &str = "\
24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
28 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
30 25 0:28 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
";

    #[test]
    fn a_hybrid_host_gets_a_tmpfs_with_the_environments_own_hierarchies_and_their_aliases() {
        let dirs = [
            PathBuf::from("/sys/fs/cgroup/memory/agent/lmi/env-1"),
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/agent/lmi/env-1"),
            PathBuf::from("/sys/fs/cgroup/unified/agent/lmi/env-1"),
            // Not under a cgroup mount: ignored.
            PathBuf::from("/elsewhere/env-1"),
        ];
        let links = [
            (PathBuf::from("cpu"), PathBuf::from("cpu,cpuacct")),
            (PathBuf::from("cpuacct"), PathBuf::from("cpu,cpuacct")),
            (PathBuf::from("net_cls"), PathBuf::from("net_cls,net_prio")),
        ];
        let view = CgroupView::plan(HYBRID, &dirs, &links).unwrap().unwrap();
        assert!(view.tmpfs);
        assert_eq!(
            targets(&view),
            [
                (
                    "/sys/fs/cgroup/memory/agent/lmi/env-1",
                    "/sys/fs/cgroup/memory"
                ),
                (
                    "/sys/fs/cgroup/cpu,cpuacct/agent/lmi/env-1",
                    "/sys/fs/cgroup/cpu,cpuacct"
                ),
                (
                    "/sys/fs/cgroup/unified/agent/lmi/env-1",
                    "/sys/fs/cgroup/unified"
                ),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        let links: Vec<_> = view
            .links
            .iter()
            .map(|(to, at)| (to.to_str().unwrap(), at.to_str().unwrap()))
            .collect();
        assert_eq!(
            links,
            [
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu"),
                ("cpu,cpuacct", "/sys/fs/cgroup/cpuacct")
            ]
        );
    }

    #[test]
    fn a_pure_v2_host_gets_the_environments_cgroup_over_the_whole() {
        let info = "25 24 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let dirs = [PathBuf::from("/sys/fs/cgroup/system.slice/lmi/env-1")];
        let view = CgroupView::plan(info, &dirs, &[]).unwrap().unwrap();
        assert!(!view.tmpfs);
        assert_eq!(
            targets(&view),
            [(
                "/sys/fs/cgroup/system.slice/lmi/env-1".to_owned(),
                "/sys/fs/cgroup".to_owned()
            )]
        );
    }

    #[test]
    fn without_a_cgroup_mount_there_is_no_view() {
        let info = "24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw\n";
        let dirs = [PathBuf::from("/sys/fs/cgroup/memory/env-1")];
        assert!(CgroupView::plan(info, &dirs, &[]).unwrap().is_none());
        assert!(CgroupView::plan(HYBRID, &[], &[]).unwrap().is_none());
    }

    #[test]
    fn a_nul_in_a_path_is_refused_by_name() {
        let host = HostMounts {
            envs: PathBuf::from("/x/envs"),
            bound_here: false,
        };
        let bad = PathBuf::from(std::ffi::OsStr::from_bytes(b"/code\0x"));
        let e = MountPlan::new(&host, &bad, Path::new("/t"), Path::new("/l"), None).unwrap_err();
        assert_eq!(e.reason, "holds a NUL byte");
    }
}
