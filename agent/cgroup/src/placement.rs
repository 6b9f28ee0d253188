//! Pre-opened `cgroup.procs` descriptors used to place a child between
//! `fork` and `exec`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::CgroupError;

/// Pre-opened `cgroup.procs` file descriptors, one per hierarchy the runtime
/// must join. Safe to use between fork and exec.
///
/// Typical use:
/// ```ignore
/// let placement = env.placement()?;
/// // SAFETY: `Placement::enter` only calls write(2).
/// unsafe { cmd.pre_exec(move || placement.enter()) };
/// ```
#[derive(Debug)]
pub struct Placement {
    fds: Vec<OwnedFd>,
    paths: Vec<PathBuf>,
}

impl Placement {
    /// Opens each file `O_WRONLY | O_CLOEXEC` (no create).
    pub(crate) fn open<P: AsRef<Path>>(procs_files: &[P]) -> Result<Self, CgroupError> {
        let mut fds = Vec::with_capacity(procs_files.len());
        let mut paths = Vec::with_capacity(procs_files.len());
        for path in procs_files {
            let path = path.as_ref();
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|source| CgroupError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            fds.push(OwnedFd::from(file));
            paths.push(path.to_path_buf());
        }
        Ok(Self { fds, paths })
    }

    /// The `cgroup.procs` files this placement writes to (diagnostics).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Moves the calling process into every cgroup by writing `"0"` to each
    /// descriptor. Async-signal-safe: no allocation, no locks, only `write(2)`.
    /// Stops at and returns the first error. Meant for `CommandExt::pre_exec`.
    pub fn enter(&self) -> io::Result<()> {
        for fd in &self.fds {
            loop {
                // SAFETY: `fd` is an open descriptor owned by `self` and the
                // buffer is a valid 1-byte static slice.
                let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                if n == 1 {
                    break;
                }
                let errno = if n < 0 {
                    nix::errno::Errno::last_raw()
                } else {
                    libc::EIO
                };
                if errno != libc::EINTR {
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enter_writes_zero_to_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.procs");
        let b = dir.path().join("b.procs");
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let p = Placement::open(&[&a, &b]).unwrap();
        p.enter().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "0");
        assert_eq!(p.paths(), &[a, b]);
    }

    #[test]
    fn open_fails_on_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Placement::open(&[dir.path().join("nope")]).unwrap_err();
        assert!(matches!(err, CgroupError::Open { .. }));
    }
}
