//! The runtime's view of the filesystem, in a mount namespace of its own: the host's tree, with
//!
//! - `/var/task` = the function's code, read-only (`LAMBDA_TASK_ROOT`);
//! - `/tmp` = the environment's size-capped tmpfs, and `/var/tmp` and `/dev/shm` the same tmpfs (so no
//!   world-writable scratch space is shared with the host or another environment, and one cap covers all);
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
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
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
const SCRATCH: [&str; 2] = ["/var/tmp", "/dev/shm"];
const RESOLV_CONF: &str = "/etc/resolv.conf";

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
        })
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
        // SAFETY: umount2 on a static C string.
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error());
        }
        chdir(&self.task_root)
    }
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
    sys_mount(
        None,
        target,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
    )
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
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape_mountinfo("/plain"), b"/plain".to_vec());
        assert_eq!(unescape_mountinfo("/trail\\04"), b"/trail\\04".to_vec());
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
