//! Staging a function's code: a directory is used in place; a .zip file is checked against its sha256 (when
//! given) and unpacked once into a read-only per-function directory under the agent's state directory.

use std::{
    fs,
    io::{self, Read},
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::spec::CodeSource;

/// Largest total uncompressed size of a zip (Lambda's limit on unzipped code is 250 MB).
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;

/// Errors staging code. Mapped to `INVALID_ARGUMENT` (the spec's code is bad) or `INTERNAL` (the host failed).
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("spec.code.sha256: the zip file's sha256 is {actual}, not {expected}")]
    Checksum { expected: String, actual: String },
    #[error("spec.code.zip_file: {0}")]
    BadZip(String),
    #[error("spec.code.directory: {0} must be readable and searchable by others (mode o+rx, and its files o+r): functions run as an unprivileged user of their own")]
    NotReadable(PathBuf),
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

/// Returns the host directory holding the function's code (the runtime sees it at `LAMBDA_TASK_ROOT`). A
/// directory is used in place; it must be readable by others, since the function runs as its own user (its
/// parent directories need not be: the runtime reaches the code through a bind mount).
pub fn stage(source: &CodeSource, code_root: &Path) -> Result<PathBuf, CodeError> {
    match source {
        CodeSource::Directory(d) => {
            let mode = fs::metadata(d).map_err(io_err(d))?.permissions().mode();
            if mode & 0o005 != 0o005 {
                return Err(CodeError::NotReadable(d.clone()));
            }
            Ok(d.clone())
        }
        CodeSource::Zip { path, sha256 } => stage_zip(path, sha256.as_deref(), code_root),
    }
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

fn stage_zip(zip: &Path, expected: Option<&str>, code_root: &Path) -> Result<PathBuf, CodeError> {
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
    let tmp = tempdir_in(code_root)?;
    unpack(zip, &tmp)?;
    make_read_only(&tmp)?;
    match fs::rename(&tmp, &dest) {
        Ok(()) => Ok(dest),
        // Another create unpacked the same zip first.
        Err(_) if dest.is_dir() => {
            let _ = remove_tree(&tmp);
            Ok(dest)
        }
        Err(e) => {
            let _ = remove_tree(&tmp);
            Err(io_err(&dest)(e))
        }
    }
}

fn tempdir_in(root: &Path) -> Result<PathBuf, CodeError> {
    let p = root.join(format!(".unpack-{}", uuid::Uuid::new_v4()));
    fs::create_dir(&p).map_err(io_err(&p))?;
    Ok(p)
}

fn unpack(zip: &Path, dest: &Path) -> Result<(), CodeError> {
    let file = fs::File::open(zip).map_err(io_err(zip))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| CodeError::BadZip(e.to_string()))?;
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| CodeError::BadZip(e.to_string()))?;
        let name = entry.name().to_owned();
        let rel = safe_relative(&name).ok_or_else(|| {
            CodeError::BadZip(format!("entry {name:?} escapes the code directory"))
        })?;
        let out = dest.join(rel);
        if entry.is_dir() {
            fs::create_dir_all(&out).map_err(io_err(&out))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut f = fs::File::create(&out).map_err(io_err(&out))?;
        let left = MAX_UNZIPPED_BYTES - total;
        let n = io::copy(&mut (&mut entry).take(left + 1), &mut f).map_err(io_err(&out))?;
        total += n;
        if total > MAX_UNZIPPED_BYTES {
            return Err(CodeError::BadZip(format!(
                "unzipped code exceeds {MAX_UNZIPPED_BYTES} bytes"
            )));
        }
        // Keep the executable bit (a provided runtime's bootstrap needs it).
        let exec = entry.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mode = if exec { 0o755 } else { 0o644 };
        fs::set_permissions(&out, fs::Permissions::from_mode(mode)).map_err(io_err(&out))?;
    }
    Ok(())
}

fn safe_relative(name: &str) -> Option<PathBuf> {
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

fn make_read_only(dir: &Path) -> Result<(), CodeError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(io_err(&path))?;
        if meta.is_dir() {
            make_read_only(&path)?;
        }
        let mode = meta.permissions().mode() & 0o555;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).map_err(io_err(dir))
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    // Directories were made read-only; give write back so their entries can be removed.
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
    use std::io::Write;

    fn make_zip(path: &Path, entries: &[(&str, &[u8], u32)]) {
        let f = fs::File::create(path).unwrap();
        let mut w = zip::ZipWriter::new(f);
        for (name, data, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn zip_is_unpacked_read_only_and_reused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("f.zip");
        make_zip(
            &z,
            &[
                ("app.py", b"x=1", 0o644),
                ("bin/bootstrap", b"#!/bin/sh", 0o755),
            ],
        );
        let digest = sha256_file(&z).unwrap();
        let root = t.path().join("code");
        let src = CodeSource::Zip {
            path: z.clone(),
            sha256: Some(digest.clone()),
        };
        let d = stage(&src, &root).unwrap();
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
        // second stage of the same zip reuses the directory
        assert_eq!(stage(&src, &root).unwrap(), d);
        remove_tree(&root).unwrap();
    }

    #[test]
    fn checksum_mismatch_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("f.zip");
        make_zip(&z, &[("a", b"1", 0o644)]);
        let src = CodeSource::Zip {
            path: z,
            sha256: Some("0".repeat(64)),
        };
        let e = stage(&src, &t.path().join("code")).unwrap_err();
        assert!(e.is_invalid_input());
        assert!(e
            .to_string()
            .starts_with("spec.code.sha256: the zip file's sha256 is "));
    }

    #[test]
    fn zip_slip_and_garbage_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("evil.zip");
        make_zip(&z, &[("../escape", b"1", 0o644)]);
        let e = stage(
            &CodeSource::Zip {
                path: z,
                sha256: None,
            },
            &t.path().join("code"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("escapes the code directory"), "{e}");
        let g = t.path().join("garbage.zip");
        fs::write(&g, b"not a zip").unwrap();
        let e = stage(
            &CodeSource::Zip {
                path: g,
                sha256: None,
            },
            &t.path().join("code"),
        )
        .unwrap_err();
        assert!(e.is_invalid_input());
        assert!(!t.path().join("escape").exists());
    }

    #[test]
    fn a_directory_others_cannot_read_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o750)).unwrap();
        let e = stage(
            &CodeSource::Directory(t.path().to_owned()),
            Path::new("/nonexistent"),
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
    fn directory_is_used_in_place() {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = stage(
            &CodeSource::Directory(t.path().to_owned()),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert_eq!(d, t.path());
    }
}
