//! Staging a function's code: a directory is used in place; a .zip file is checked against its sha256 (when
//! given) and unpacked once into a read-only per-function directory under the agent's state directory.
//!
//! Unpacking writes into a fresh `.unpack-<uuid>` directory next to its destination and renames it into place
//! only when the whole archive was accepted: a refused or failed unpack removes everything it wrote (an
//! [`Unpacking`] guard), and [`remove_stale_unpacks`] removes what a crash mid-unpack left. The unpacked size
//! and the number of entries are capped ([`CodeLimits`], `[code]` in the configuration) and checked while
//! unpacking, so a zip bomb stops at the cap, not at the end of the disk.
//!
//! Entries are checked before anything is written for them: a path must stay inside the code directory (no
//! `..`, no absolute path), no entry may pass through a symbolic link or a file of the archive, and a
//! symbolic link must point inside the code directory (it is created as a link, relative). Every such refusal
//! is the caller's fault (`INVALID_ARGUMENT`); only the host failing (disk full, I/O error) is `INTERNAL`.

use std::{
    collections::HashMap,
    fs,
    io::{self, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::spec::CodeSource;

/// Default cap on the total uncompressed size of a zip (Lambda's limit on unzipped code is 250 MB).
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;
/// Default cap on the number of entries of a zip.
pub const MAX_ZIP_ENTRIES: u32 = 100_000;
/// Prefix of the directories zips are unpacked into before they are renamed into place.
const UNPACK_PREFIX: &str = ".unpack-";
/// Longest symbolic link target accepted.
const MAX_LINK_TARGET: u64 = 4096;

/// Limits on unpacked zip code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLimits {
    /// Total uncompressed bytes of all entries.
    pub max_unzipped_bytes: u64,
    /// Entries (files, directories and links).
    pub max_entries: u32,
}

impl Default for CodeLimits {
    fn default() -> Self {
        Self {
            max_unzipped_bytes: MAX_UNZIPPED_BYTES,
            max_entries: MAX_ZIP_ENTRIES,
        }
    }
}

/// Errors staging code. Mapped to `INVALID_ARGUMENT` (the spec's code is bad) or `INTERNAL` (the host failed).
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("spec.code.sha256: the zip file's sha256 is {actual}, not {expected}")]
    Checksum { expected: String, actual: String },
    #[error("spec.code.zip_file: {0}")]
    BadZip(String),
    #[error("spec.code.directory: {0} must be readable and searchable by others (mode o+rx, and its files o+r): functions run as an unprivileged user of their own")]
    NotReadable(PathBuf),
    #[error("spec.code.directory: {path} is not readable by others (mode {mode:04o}; a directory needs o+rx, a file o+r): functions run as an unprivileged user of their own (chmod -R o+rX the code)")]
    EntryNotReadable { path: PathBuf, mode: u32 },
    #[error("staging code in {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl CodeError {
    /// True when the caller's input is at fault (rather than the host).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, CodeError::Io { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CodeError + '_ {
    move |source| CodeError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad(message: impl Into<String>) -> CodeError {
    CodeError::BadZip(message.into())
}

/// Returns the host directory holding the function's code (the runtime sees it at `LAMBDA_TASK_ROOT`). A
/// directory is used in place; it must be readable by others, since the function runs as its own user (its
/// parent directories need not be: the runtime reaches the code through a bind mount).
pub fn stage(
    source: &CodeSource,
    code_root: &Path,
    limits: &CodeLimits,
) -> Result<PathBuf, CodeError> {
    match source {
        CodeSource::Directory(d) => {
            let mode = fs::metadata(d).map_err(io_err(d))?.permissions().mode();
            if mode & 0o005 != 0o005 {
                return Err(CodeError::NotReadable(d.clone()));
            }
            check_readable_by_others(d)?;
            Ok(d.clone())
        }
        CodeSource::Zip { path, sha256 } => stage_zip(path, sha256.as_deref(), code_root, limits),
    }
}

/// The most entries of a code directory [`check_readable_by_others`] looks at (a larger tree is checked that
/// far: the check is a courtesy, so a mistake is reported at create rather than inside the runtime).
const MAX_CHECKED_ENTRIES: usize = 100_000;

/// Fails on the first file of `dir` (recursively, links not followed) that the function's own user could
/// not read: a regular file without o+r, a directory without o+rx.
fn check_readable_by_others(dir: &Path) -> Result<(), CodeError> {
    let mut pending = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            seen += 1;
            if seen > MAX_CHECKED_ENTRIES {
                return Ok(());
            }
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let mode = meta.permissions().mode() & 0o7777;
            let needed = if meta.is_dir() {
                0o005
            } else if meta.is_file() {
                0o004
            } else {
                continue;
            };
            if mode & needed != needed {
                return Err(CodeError::EntryNotReadable { path, mode });
            }
            if meta.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// Removes the unpack directories a previous life of the agent left in `code_root` (it stopped mid-unpack).
/// Call at start, before any environment is created. Returns how many were removed.
pub fn remove_stale_unpacks(code_root: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(code_root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(UNPACK_PREFIX)
        {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                remove_tree(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            tracing::info!(path = %path.display(), "removed a partial unpack left by an earlier life of the agent");
            removed += 1;
        }
    }
    Ok(removed)
}

fn sha256_file(path: &Path) -> Result<String, CodeError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn stage_zip(
    zip: &Path,
    expected: Option<&str>,
    code_root: &Path,
    limits: &CodeLimits,
) -> Result<PathBuf, CodeError> {
    let actual = sha256_file(zip)?;
    if let Some(expected) = expected {
        if expected != actual {
            return Err(CodeError::Checksum {
                expected: expected.to_owned(),
                actual,
            });
        }
    }
    // Content-addressed: the same zip is unpacked once and shared by every environment that uses it.
    let dest = code_root.join(&actual);
    if dest.is_dir() {
        return Ok(dest);
    }
    fs::create_dir_all(code_root).map_err(io_err(code_root))?;
    let tmp = Unpacking::new(code_root)?;
    unpack(zip, tmp.path(), limits)?;
    make_read_only(tmp.path())?;
    match fs::rename(tmp.path(), &dest) {
        Ok(()) => {
            tmp.keep();
            Ok(dest)
        }
        // Another create unpacked the same zip first (the guard removes this copy).
        Err(_) if dest.is_dir() => Ok(dest),
        Err(e) => Err(io_err(&dest)(e)),
    }
}

/// A directory a zip is being unpacked into: removed with everything in it when dropped, unless
/// [`Unpacking::keep`] was called (it was renamed into place).
#[derive(Debug)]
struct Unpacking {
    path: PathBuf,
    keep: bool,
}

impl Unpacking {
    fn new(root: &Path) -> Result<Self, CodeError> {
        let path = root.join(format!("{UNPACK_PREFIX}{}", uuid::Uuid::new_v4()));
        fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Self { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Unpacking {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match remove_tree(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "removing a refused unpack failed")
            }
        }
    }
}

/// What an entry made, by its path relative to the code directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    File,
    Link,
}

impl Made {
    fn what(self) -> &'static str {
        match self {
            Made::Dir => "a directory",
            Made::File => "a file",
            Made::Link => "a symbolic link",
        }
    }
}

/// Unpacks `zip` into the empty directory `dest`. Everything an entry would write is checked first against
/// what earlier entries made (kept in memory: nothing on disk is followed), so no write goes through a link.
fn unpack(zip: &Path, dest: &Path, limits: &CodeLimits) -> Result<(), CodeError> {
    let file = fs::File::open(zip).map_err(io_err(zip))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    if archive.len() > limits.max_entries as usize {
        return Err(bad(format!(
            "the zip has {} entries, more than the {} allowed (code.max_zip_entries)",
            archive.len(),
            limits.max_entries
        )));
    }
    let too_large = || {
        bad(format!(
            "unzipped code exceeds {} bytes (code.max_unzipped_bytes)",
            limits.max_unzipped_bytes
        ))
    };
    // The sizes the archive declares: a zip that says it is too large is refused before anything is written.
    // The declared sizes may lie, so the running count below is what holds.
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(|e| bad(e.to_string()))?;
        declared = declared.saturating_add(entry.size());
    }
    if declared > limits.max_unzipped_bytes {
        return Err(too_large());
    }
    let mut made: HashMap<PathBuf, Made> = HashMap::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().to_owned();
        let rel = safe_relative(&name)
            .ok_or_else(|| bad(format!("entry {name:?} escapes the code directory")))?;
        make_parents(dest, &rel, &name, &mut made)?;
        let out = dest.join(&rel);
        let exists = made.get(&rel).copied();
        if entry.is_dir() {
            match exists {
                None => {
                    fs::create_dir(&out).map_err(io_err(&out))?;
                    made.insert(rel, Made::Dir);
                }
                Some(Made::Dir) => {}
                Some(other) => {
                    return Err(bad(format!(
                        "entry {name:?} is a directory, but an earlier entry made it {}",
                        other.what()
                    )))
                }
            }
            continue;
        }
        if let Some(other) = exists {
            return Err(bad(format!(
                "entry {name:?} appears twice (an earlier entry made it {})",
                other.what()
            )));
        }
        if entry.is_symlink() {
            let mut target = Vec::new();
            (&mut entry)
                .take(MAX_LINK_TARGET + 1)
                .read_to_end(&mut target)
                .map_err(|e| bad(format!("reading entry {name:?}: {e}")))?;
            if target.len() as u64 > MAX_LINK_TARGET {
                return Err(bad(format!(
                    "symbolic link {name:?} has a target longer than {MAX_LINK_TARGET} bytes"
                )));
            }
            total += target.len() as u64;
            if total > limits.max_unzipped_bytes {
                return Err(too_large());
            }
            let target = PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target),
            );
            if !link_stays_inside(&rel, &target) {
                return Err(bad(format!(
                    "symbolic link {name:?} points to {}, outside the code directory",
                    target.display()
                )));
            }
            std::os::unix::fs::symlink(&target, &out).map_err(io_err(&out))?;
            made.insert(rel, Made::Link);
            continue;
        }
        // create_new: never opens anything that exists (a link included).
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .map_err(io_err(&out))?;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(bad(format!("reading entry {name:?}: {e}"))),
            };
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limits.max_unzipped_bytes {
                return Err(too_large());
            }
            f.write_all(&buf[..n]).map_err(io_err(&out))?;
        }
        // Keep the executable bit (a provided runtime's bootstrap needs it).
        let exec = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mode = if exec { 0o755 } else { 0o644 };
        fs::set_permissions(&out, fs::Permissions::from_mode(mode)).map_err(io_err(&out))?;
        made.insert(rel, Made::File);
    }
    Ok(())
}

/// Creates the missing parent directories of `rel`, refusing a path through a file or link of the archive.
fn make_parents(
    dest: &Path,
    rel: &Path,
    name: &str,
    made: &mut HashMap<PathBuf, Made>,
) -> Result<(), CodeError> {
    let mut parent = PathBuf::new();
    let components: Vec<_> = rel.components().collect();
    for c in &components[..components.len().saturating_sub(1)] {
        parent.push(c);
        match made.get(&parent) {
            Some(Made::Dir) => {}
            Some(other) => {
                return Err(bad(format!(
                    "entry {name:?} lies under {}, which an earlier entry made {}",
                    parent.display(),
                    other.what()
                )))
            }
            None => {
                let dir = dest.join(&parent);
                fs::create_dir(&dir).map_err(io_err(&dir))?;
                made.insert(parent.clone(), Made::Dir);
            }
        }
    }
    Ok(())
}

/// The entry's path inside the code directory: only normal components (no `..`, no root, no NUL).
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.contains('\0') {
        return None;
    }
    let p = Path::new(name);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// True when a link at `rel` pointing to `target` names a path inside the code directory (read as written:
/// relative, never climbing above the top). The agent itself never follows a link of unpacked code.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() || target.as_os_str().as_encoded_bytes().contains(&0) {
        return false;
    }
    let mut depth = rel.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn make_read_only(dir: &Path) -> Result<(), CodeError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        // Not followed: a link's own mode means nothing, and chmod would change its target.
        let meta = entry.metadata().map_err(io_err(&path))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            make_read_only(&path)?;
        }
        let mode = meta.permissions().mode() & 0o555;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(io_err(dir))
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    // Directories were made read-only; give write back so their entries can be removed. Links are not
    // followed (symlink_metadata), and remove_dir_all does not follow them either.
    fn writable(p: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(p)?;
        if meta.is_dir() {
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
            for e in fs::read_dir(p)? {
                writable(&e?.path())?;
            }
        }
        Ok(())
    }
    writable(dir)?;
    fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CodeLimits = CodeLimits {
        max_unzipped_bytes: MAX_UNZIPPED_BYTES,
        max_entries: MAX_ZIP_ENTRIES,
    };

    /// An entry of a test zip.
    enum E<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    fn make_zip(path: &Path, entries: &[E<'_>]) {
        let f = fs::File::create(path).unwrap();
        let mut w = zip::ZipWriter::new(f);
        for e in entries {
            match e {
                E::File(name, data, mode) => {
                    let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
                    w.start_file(*name, opts).unwrap();
                    w.write_all(data).unwrap();
                }
                E::Dir(name) => w
                    .add_directory(*name, zip::write::SimpleFileOptions::default())
                    .unwrap(),
                E::Link(name, target) => w
                    .add_symlink(*name, *target, zip::write::SimpleFileOptions::default())
                    .unwrap(),
            }
        }
        w.finish().unwrap();
    }

    fn zip_source(path: &Path) -> CodeSource {
        CodeSource::Zip {
            path: path.to_owned(),
            sha256: None,
        }
    }

    /// Everything in `dir` (recursively, links not followed).
    fn contents(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                out.push(e.path());
                if e.file_type().unwrap().is_dir() {
                    out.extend(contents(&e.path()));
                }
            }
        }
        out
    }

    #[test]
    fn zip_is_unpacked_read_only_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("f.zip");
        make_zip(
            &z,
            &[
                E::File("app.py", b"x=1", 0o644),
                E::File("bin/bootstrap", b"#!/bin/sh", 0o755),
                E::Dir("empty/"),
                E::Link("bin/app", "../app.py"),
                E::Link("lib", "bin"),
            ],
        );
        let digest = sha256_file(&z).unwrap();
        let root = t.path().join("code");
        let src = CodeSource::Zip {
            path: z.clone(),
            sha256: Some(digest.clone()),
        };
        let d = stage(&src, &root, &LIMITS).unwrap();
        assert_eq!(d, root.join(&digest));
        assert_eq!(fs::read(d.join("app.py")).unwrap(), b"x=1");
        let boot = fs::metadata(d.join("bin/bootstrap"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(boot & 0o777, 0o555);
        assert_eq!(
            fs::metadata(d.join("app.py")).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o555
        );
        assert!(d.join("empty").is_dir());
        // Links inside the code are links, and resolve inside it.
        assert_eq!(
            fs::read_link(d.join("bin/app")).unwrap(),
            Path::new("../app.py")
        );
        assert_eq!(fs::read(d.join("bin/app")).unwrap(), b"x=1");
        assert_eq!(fs::read(d.join("lib/bootstrap")).unwrap(), b"#!/bin/sh");
        // second stage of the same zip reuses the directory
        assert_eq!(stage(&src, &root, &LIMITS).unwrap(), d);
        assert_eq!(fs::read_dir(&root).unwrap().count(), 1, "only the digest");
        remove_tree(&root).unwrap();
    }

    #[test]
    fn checksum_mismatch_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("f.zip");
        make_zip(&z, &[E::File("a", b"1", 0o644)]);
        let src = CodeSource::Zip {
            path: z,
            sha256: Some("0".repeat(64)),
        };
        let e = stage(&src, &t.path().join("code"), &LIMITS).unwrap_err();
        assert!(e.is_invalid_input());
        assert!(e
            .to_string()
            .starts_with("spec.code.sha256: the zip file's sha256 is "));
    }

    /// Every refused zip is the caller's fault and leaves nothing in the code directory, nor outside it.
    #[test]
    fn refused_zips_leave_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let out = outside.display().to_string();
        let abs = format!("{out}/abs");
        let cases: Vec<(&str, Vec<E<'_>>, &str)> = vec![
            (
                "dotdot",
                vec![E::File("a", b"1", 0o644), E::File("../escape", b"1", 0o644)],
                "escapes the code directory",
            ),
            (
                "absolute",
                vec![E::File("a", b"1", 0o644), E::File(&abs, b"1", 0o644)],
                "escapes the code directory",
            ),
            (
                "dir-link",
                vec![
                    E::File("a", b"1", 0o644),
                    E::Link("lnk", "sub"),
                    E::File("lnk/x", b"1", 0o644),
                ],
                "which an earlier entry made a symbolic link",
            ),
            (
                "link-outside",
                vec![E::File("a", b"1", 0o644), E::Link("lnk", &out)],
                "outside the code directory",
            ),
            (
                "link-climbs",
                vec![E::Dir("d/"), E::Link("d/lnk", "../../outside")],
                "outside the code directory",
            ),
            (
                "under-a-file",
                vec![E::File("a", b"1", 0o644), E::File("a/b", b"1", 0o644)],
                "which an earlier entry made a file",
            ),
            (
                "file-then-dir",
                vec![E::File("a", b"1", 0o644), E::Dir("a/")],
                "is a directory",
            ),
            (
                "twice",
                vec![E::File("a", b"1", 0o644), E::Link("./a", "b")],
                "appears twice",
            ),
        ];
        for (label, entries, message) in cases {
            let z = t.path().join(format!("{label}.zip"));
            make_zip(&z, &entries);
            let root = t.path().join("code");
            let e = stage(&zip_source(&z), &root, &LIMITS).unwrap_err();
            assert!(e.is_invalid_input(), "{label}: {e}");
            assert!(
                e.to_string().starts_with("spec.code.zip_file: "),
                "{label}: {e}"
            );
            assert!(e.to_string().contains(message), "{label}: {e}");
            assert_eq!(contents(&root), Vec::<PathBuf>::new(), "{label}");
            assert_eq!(contents(&outside), Vec::<PathBuf>::new(), "{label}");
        }
        let g = t.path().join("garbage.zip");
        fs::write(&g, b"not a zip").unwrap();
        let e = stage(&zip_source(&g), &t.path().join("code"), &LIMITS).unwrap_err();
        assert!(e.is_invalid_input());
        assert_eq!(contents(&t.path().join("code")), Vec::<PathBuf>::new());
    }

    /// Patches every size field of a one-entry zip to claim `claimed` uncompressed bytes.
    fn lie_about_size(zip: &Path, claimed: u32) {
        let mut b = fs::read(zip).unwrap();
        let mut i = 0;
        while i + 4 <= b.len() {
            let at = match &b[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => Some(i + 22), // local file header
                [0x50, 0x4b, 0x01, 0x02] => Some(i + 24), // central directory header
                _ => None,
            };
            if let Some(at) = at {
                b[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
            }
            i += 1;
        }
        fs::write(zip, b).unwrap();
    }

    #[test]
    fn the_caps_stop_a_bomb_while_unpacking() {
        let t = tempfile::tempdir().unwrap();
        let limits = CodeLimits {
            max_unzipped_bytes: 1024 * 1024,
            max_entries: 10,
        };
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let bomb = t.path().join("bomb.zip");
        {
            let f = fs::File::create(&bomb).unwrap();
            let mut w = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            w.start_file("zeros", opts).unwrap();
            w.write_all(&zeros).unwrap();
            w.finish().unwrap();
        }
        assert!(
            fs::metadata(&bomb).unwrap().len() < 64 * 1024,
            "compressible"
        );
        let root = t.path().join("code");
        // Declared as what it is: refused before a byte is written.
        let e = stage(&zip_source(&bomb), &root, &limits).unwrap_err();
        assert!(e.is_invalid_input());
        assert!(
            e.to_string()
                .contains("exceeds 1048576 bytes (code.max_unzipped_bytes)"),
            "{e}"
        );
        assert_eq!(contents(&root), Vec::<PathBuf>::new());
        // Declared as 1 byte: stopped by the running count at the cap, and removed.
        lie_about_size(&bomb, 1);
        let e = stage(&zip_source(&bomb), &root, &limits).unwrap_err();
        assert!(e.is_invalid_input());
        assert!(e.to_string().contains("code.max_unzipped_bytes"), "{e}");
        assert_eq!(contents(&root), Vec::<PathBuf>::new());
        // Too many entries.
        let many = t.path().join("many.zip");
        let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
        make_zip(&many, &entries);
        let e = stage(&zip_source(&many), &root, &limits).unwrap_err();
        assert!(
            e.to_string()
                .contains("11 entries, more than the 10 allowed"),
            "{e}"
        );
        assert_eq!(contents(&root), Vec::<PathBuf>::new());
        // At the caps exactly: accepted.
        let fits = t.path().join("fits.zip");
        let mb = vec![7u8; 1024 * 1024];
        make_zip(&fits, &[E::File("mb", &mb, 0o644)]);
        let d = stage(&zip_source(&fits), &root, &limits).unwrap();
        assert_eq!(fs::metadata(d.join("mb")).unwrap().len(), 1024 * 1024);
        remove_tree(&root).unwrap();
    }

    #[test]
    fn stale_unpacks_are_removed_and_nothing_else() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("code");
        assert_eq!(remove_stale_unpacks(&root).unwrap(), 0, "no directory yet");
        let z = t.path().join("f.zip");
        make_zip(&z, &[E::File("a", b"1", 0o644)]);
        let kept = stage(&zip_source(&z), &root, &LIMITS).unwrap();
        // What a crash mid-unpack leaves: a partial tree, part of it read-only.
        let stale = root.join(format!("{UNPACK_PREFIX}dead"));
        fs::create_dir_all(stale.join("d")).unwrap();
        fs::write(stale.join("d/f"), b"x").unwrap();
        fs::set_permissions(stale.join("d"), fs::Permissions::from_mode(0o555)).unwrap();
        assert_eq!(remove_stale_unpacks(&root).unwrap(), 1);
        assert!(!stale.exists());
        assert_eq!(fs::read(kept.join("a")).unwrap(), b"1");
        remove_tree(&root).unwrap();
    }

    #[test]
    fn link_targets_are_read_as_written() {
        let inside = |rel: &str, target: &str| link_stays_inside(Path::new(rel), Path::new(target));
        assert!(inside("a", "b"));
        assert!(inside("d/a", "../b"));
        assert!(inside("d/e/a", "../../b/./c"));
        assert!(!inside("a", "../b"));
        assert!(!inside("d/a", "../../b"));
        assert!(!inside("a", "/etc"));
        assert!(!inside("a", ""));
    }

    #[test]
    fn a_directory_others_cannot_read_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let e = stage(
            &CodeSource::Directory(t.path().to_owned()),
            Path::new("/nonexistent"),
            &LIMITS,
        )
        .unwrap_err();
        assert!(e.is_invalid_input());
        assert!(
            e.to_string().starts_with(&format!(
                "spec.code.directory: {} must be readable",
                t.path().display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_file_others_cannot_read_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let sub = t.path().join("pkg");
        fs::create_dir(&sub).unwrap();
        fs::write(t.path().join("app.py"), b"x = 1").unwrap();
        fs::set_permissions(t.path().join("app.py"), fs::Permissions::from_mode(0o644)).unwrap();
        let secret = sub.join("secret.py");
        fs::write(&secret, b"y = 2").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let run = || {
            stage(
                &CodeSource::Directory(t.path().to_owned()),
                Path::new("/nonexistent"),
                &LIMITS,
            )
        };
        let e = run().unwrap_err();
        assert!(e.is_invalid_input());
        assert_eq!(
            e.to_string(),
            format!(
                "spec.code.directory: {} is not readable by others (mode 0600; a directory needs o+rx, a file o+r): functions run as an unprivileged user of their own (chmod -R o+rX the code)",
                secret.display()
            )
        );
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o750)).unwrap();
        let e = run().unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "{} is not readable by others (mode 0750",
                sub.display()
            )),
            "{e}"
        );
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(run().unwrap(), t.path());
    }

    #[test]
    fn directory_is_used_in_place() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = stage(
            &CodeSource::Directory(t.path().to_owned()),
            Path::new("/nonexistent"),
            &LIMITS,
        )
        .unwrap();
        assert_eq!(d, t.path());
    }
}
