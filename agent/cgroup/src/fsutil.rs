//! Small, strict helpers for reading and writing cgroupfs interface files.
//!
//! Interface files are written with a single `write(2)` of the whole value and
//! never created: a missing file means a missing controller, which callers
//! must see as an error rather than silently get a plain file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::error::CgroupError;

/// Deepest nesting of sub-cgroups inside an environment cgroup that is walked
/// when collecting pids or removing directories.
const MAX_DEPTH: usize = 16;

/// Absolute directory of the cgroup at relative path `rel` under `mount`.
pub(crate) fn abs_dir(mount: &Path, rel: &str) -> PathBuf {
    let trimmed = rel.trim_matches('/');
    if trimmed.is_empty() {
        mount.to_path_buf()
    } else {
        mount.join(trimmed)
    }
}

/// Relative cgroup path of child `name` of relative path `rel`.
pub(crate) fn rel_child(rel: &str, name: &str) -> String {
    let base = rel.trim_end_matches('/');
    format!("{base}/{name}")
}

/// Reads a whole file.
pub(crate) fn read_string(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a whole file; `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `value` to an existing interface file with one `write(2)`.
pub(crate) fn write_raw(path: &Path, value: &str) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let n = file.write(value.as_bytes())?;
    if n != value.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write ({n} of {} bytes)", value.len()),
        ));
    }
    Ok(())
}

/// [`write_raw`] with the error mapped to [`CgroupError::Write`].
pub(crate) fn write_value(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_raw(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

/// Creates `rel` under `mount` and every missing component on the way
/// (`mkdir -p`). Existing directories are fine. Returns the absolute path.
pub(crate) fn mkdir_p(mount: &Path, rel: &str) -> Result<PathBuf, CgroupError> {
    let mut dir = mount.to_path_buf();
    for component in rel.split('/').filter(|c| !c.is_empty()) {
        dir.push(component);
        match fs::create_dir(&dir) {
            Ok(()) => tracing::debug!(path = %dir.display(), "created cgroup directory"),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
    }
    Ok(dir)
}

/// Parses the contents of a `cgroup.procs` file.
pub(crate) fn parse_pids(text: &str, what: &Path) -> Result<Vec<i32>, CgroupError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<i32>().map_err(|_| CgroupError::Parse {
                what: what.display().to_string(),
                reason: format!("not a pid: {l:?}"),
            })
        })
        .collect()
}

/// Appends the pids of `dir/cgroup.procs` and of every sub-cgroup below `dir`
/// to `out`. A missing directory contributes nothing.
pub(crate) fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    collect_pids_at(dir, out, 0)
}

fn collect_pids_at(dir: &Path, out: &mut Vec<i32>, depth: usize) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    let Some(text) = read_optional(&procs)? else {
        return Ok(());
    };
    out.extend(parse_pids(&text, &procs)?);
    if depth < MAX_DEPTH {
        for child in child_dirs(dir)? {
            collect_pids_at(&dir.join(child), out, depth + 1)?;
        }
    }
    Ok(())
}

/// Names of the sub-directories (child cgroups) of `dir`, sorted. A missing
/// directory has none.
pub(crate) fn child_dirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the cgroup directory `dir` and any sub-cgroups (deepest first).
/// Retries `EBUSY` (a cgroup whose last task is still exiting) until `timeout`.
/// A missing directory is success.
pub(crate) fn rmdir_tree(dir: &Path, timeout: Duration) -> Result<(), CgroupError> {
    rmdir_tree_at(dir, Instant::now() + timeout, 0)
}

fn rmdir_tree_at(dir: &Path, deadline: Instant, depth: usize) -> Result<(), CgroupError> {
    if depth < MAX_DEPTH {
        for child in child_dirs(dir)? {
            rmdir_tree_at(&dir.join(child), deadline, depth + 1)?;
        }
    }
    let mut backoff = Backoff::new();
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => {
                tracing::debug!(path = %dir.display(), "removed cgroup directory");
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                backoff.sleep();
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Value of `key` in a flat-keyed file (`key value` per line, e.g.
/// `memory.events`, `memory.oom_control`).
pub(crate) fn keyed_u64(text: &str, key: &str, what: &Path) -> Result<u64, CgroupError> {
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(key) {
            let value = fields.next().unwrap_or("");
            return value.parse().map_err(|_| CgroupError::Parse {
                what: what.display().to_string(),
                reason: format!("{key} has non-numeric value {value:?}"),
            });
        }
    }
    Err(CgroupError::Parse {
        what: what.display().to_string(),
        reason: format!("no {key:?} line"),
    })
}

/// Parses a single unsigned number (surrounding whitespace allowed).
pub(crate) fn parse_u64(text: &str, what: &Path) -> Result<u64, CgroupError> {
    let t = text.trim();
    t.parse().map_err(|_| CgroupError::Parse {
        what: what.display().to_string(),
        reason: format!("expected an unsigned number, got {t:?}"),
    })
}

/// Exponential sleep for polling loops: 1 ms doubling up to 50 ms.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const MAX: Duration = Duration::from_millis(50);

    pub(crate) fn new() -> Self {
        Self {
            next: Duration::from_millis(1),
        }
    }

    pub(crate) fn sleep(&mut self) {
        thread::sleep(self.next);
        self.next = (self.next * 2).min(Self::MAX);
    }
}
