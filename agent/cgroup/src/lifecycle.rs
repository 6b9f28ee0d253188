//! What the v1 and v2 drivers do the same way with an environment cgroup's directories (one per v1
//! hierarchy, one on v2): make them for a create (reusing and emptying any left by an agent that died, and
//! undoing the create on failure), find them for an open, remove them, and remove the drivers' parent.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::driver::EnvironmentCgroup;
use super::error::CgroupError;
use super::fsutil;
use super::usage::UsageFiles;

/// How long `rmdir` retries `EBUSY`.
pub(crate) const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// The directories a create made, found or skipped.
#[derive(Debug, Default)]
pub(crate) struct MadeDirs {
    created: Vec<PathBuf>,
    existed: bool,
    /// Optional directories that could not be made: the cgroup goes without them.
    pub(crate) skipped: Vec<PathBuf>,
}

/// Makes each directory `(dir, optional)` of a new environment cgroup. One there already is kept (the
/// cgroup is emptied before reuse, in `finish_create`). One that cannot be made fails the create, after
/// the ones made here are removed again, unless it is optional: then it is skipped with a warning.
pub(crate) fn make_dirs<'a>(
    dirs: impl IntoIterator<Item = (&'a Path, bool)>,
) -> Result<MadeDirs, CgroupError> {
    let mut made = MadeDirs::default();
    let mut failure = None;
    for (dir, optional) in dirs {
        match std::fs::create_dir(dir) {
            Ok(()) => made.created.push(dir.to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => made.existed = true,
            Err(source) => {
                let err = CgroupError::Create {
                    path: dir.to_owned(),
                    source,
                };
                if optional {
                    tracing::warn!(error = %err, "optional hierarchy skipped for this cgroup");
                } else if failure.is_none() {
                    failure = Some(err);
                }
                made.skipped.push(dir.to_owned());
            }
        }
    }
    match failure {
        Some(e) => Err(made.undo(e)),
        None => Ok(made),
    }
}

impl MadeDirs {
    /// Empties a cgroup that was there already, then writes the limits; on failure removes the directories
    /// this create made.
    pub(crate) fn finish_create(
        self,
        cg: &dyn EnvironmentCgroup,
        write_limits: impl FnOnce() -> Result<(), CgroupError>,
    ) -> Result<(), CgroupError> {
        if self.existed {
            tracing::warn!(cgroup = %cg.path(), "cgroup already exists; emptying and reusing it");
        }
        let result =
            if self.existed { cg.kill_all() } else { Ok(()) }.and_then(|()| write_limits());
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.undo(e)),
        }
    }

    fn undo(&self, e: CgroupError) -> CgroupError {
        for dir in self.created.iter().rev() {
            let _ = fsutil::rmdir_tree(dir, RMDIR_TIMEOUT);
        }
        e
    }
}

/// `cg` if any of its directories exists.
pub(crate) fn open_existing<C: EnvironmentCgroup + 'static>(
    cg: C,
) -> Option<Box<dyn EnvironmentCgroup>> {
    let exists = cg.directories().iter().any(|d| d.is_dir());
    exists.then(|| Box::new(cg) as Box<dyn EnvironmentCgroup>)
}

/// Removes an environment cgroup: kills what runs in it, removes its directories (the last first; every one
/// is tried, the first error returned), then closes its usage files: after the rmdir, so that a reading in
/// between cannot open them again.
pub(crate) fn remove(
    cg: &dyn EnvironmentCgroup,
    usage: &OnceLock<UsageFiles>,
) -> Result<(), CgroupError> {
    cg.kill_all()?;
    let mut first_err = None;
    for dir in cg.directories().iter().rev() {
        if let Err(e) = fsutil::rmdir_tree(dir, RMDIR_TIMEOUT) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(files) = usage.get() {
        files.close();
    }
    first_err.map_or(Ok(()), Err)
}

/// Removes a driver's parent cgroup (its directory in each hierarchy), refused while it has `children`.
pub(crate) fn remove_parent<'a>(
    parent_path: &str,
    children: Vec<String>,
    parent_dirs: impl IntoIterator<Item = &'a Path>,
) -> Result<(), CgroupError> {
    if !children.is_empty() {
        return Err(CgroupError::ParentNotEmpty {
            path: parent_path.to_owned(),
            children,
        });
    }
    for dir in parent_dirs {
        fsutil::rmdir_tree(dir, RMDIR_TIMEOUT)?;
    }
    Ok(())
}
