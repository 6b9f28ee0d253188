//! An environment's ephemeral storage: a tmpfs of `ephemeral_storage_mib`, mounted under the agent's state
//! directory and given to the runtime as its temporary directory. tmpfs makes the size a hard cap (a write
//! past it fails with ENOSPC) and makes usage cheap to read (`statvfs`, no directory walk), which the
//! sampler needs every period.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors creating the storage.
#[derive(Debug, thiserror::Error)]
#[error("ephemeral storage {path}: {source}")]
pub struct EphemeralError {
    path: PathBuf,
    source: io::Error,
}

/// A mounted tmpfs; unmounted and removed by [`EphemeralStorage::remove`] (not on drop: removal may block).
#[derive(Debug)]
pub struct EphemeralStorage {
    dir: PathBuf,
}

impl EphemeralStorage {
    /// Mounts a tmpfs of `size_mib` at `dir` (created), mode 1777 like /tmp.
    pub fn create(dir: &Path, size_mib: u32) -> Result<Self, EphemeralError> {
        let err = |source| EphemeralError {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let options = format!("size={size_mib}m,mode=1777");
        mount(
            Some("lmi-tmp"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| err(io::Error::from(e)))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Takes charge of a storage mounted earlier (by a previous life of the agent), to remove it.
    pub fn adopt(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Where the runtime's temporary files go.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `(used bytes, size bytes)`.
    pub fn usage(&self) -> io::Result<(u64, u64)> {
        usage_of(&self.dir)
    }

    /// Unmounts (lazily, so a process still holding a file cannot block it) and removes the directory.
    pub fn remove(&self) -> io::Result<()> {
        match umount2(&self.dir, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        match std::fs::remove_dir(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `(used bytes, size bytes)` of the filesystem holding `path`.
pub fn usage_of(path: &Path) -> io::Result<(u64, u64)> {
    Ok(used_and_size(&nix::sys::statvfs::statvfs(path)?))
}

/// [`usage_of`] a directory held open (`fstatvfs`: no path lookup, a third of `statvfs`'s cost on a
/// storage's path; held open, it keeps a lazily unmounted tmpfs alive until closed).
pub fn usage_of_open(dir: &std::fs::File) -> io::Result<(u64, u64)> {
    Ok(used_and_size(&nix::sys::statvfs::fstatvfs(dir)?))
}

fn used_and_size(st: &nix::sys::statvfs::Statvfs) -> (u64, u64) {
    let frsize = st.fragment_size();
    let size = st.blocks().saturating_mul(frsize);
    let free = st.blocks_free().saturating_mul(frsize);
    (size.saturating_sub(free), size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tmpfs_is_capped_and_its_usage_is_read() {
        if lmi_testkit::needs_root("mounting a tmpfs") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let s = EphemeralStorage::create(&t.path().join("tmp"), 4).unwrap();
        let (used, size) = s.usage().unwrap();
        assert_eq!(size, 4 * 1024 * 1024);
        assert!(used < 64 * 1024);
        let mut f = std::fs::File::create(s.path().join("fill")).unwrap();
        f.write_all(&vec![1u8; 3 * 1024 * 1024]).unwrap();
        f.sync_all().unwrap();
        let (used, _) = s.usage().unwrap();
        assert!(used >= 3 * 1024 * 1024, "{used}");
        // The same figures through a descriptor held open.
        let dir = std::fs::File::open(s.path()).unwrap();
        assert_eq!(usage_of_open(&dir).unwrap(), s.usage().unwrap());
        drop(dir);
        // Past the cap: ENOSPC.
        let e = f
            .write_all(&vec![1u8; 2 * 1024 * 1024])
            .and_then(|()| f.sync_all())
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        drop(f);
        s.remove().unwrap();
        assert!(!t.path().join("tmp").exists());
        s.remove().unwrap();
    }
}
