//! The agent's durable state: one record per environment in `<state_dir>/environments/<id>.pb` (the
//! environment as the control API shows it, protobuf-encoded), written crash-safely (temporary file, fsync,
//! rename, fsync of the directory), so that after a crash or SIGKILL the next agent knows what ran.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use lmi_proto::v1 as pb;
use prost::Message;

/// Errors reading or writing records.
#[derive(Debug, thiserror::Error)]
#[error("state record {path}: {source}")]
pub struct StateError {
    path: PathBuf,
    source: io::Error,
}

/// An environment a previous life of the agent left behind, as its record says: stopped and cleaned up at
/// start-up, shown FAILED until the control plane deletes it.
#[derive(Debug, Clone)]
pub struct LostEnvironment(pb::Environment);

impl LostEnvironment {
    /// The record of an environment found at start-up: FAILED with `error_type` and `message` unless it
    /// already failed (its own failure is kept); no process and no invoke of it remain.
    pub fn from_record(mut record: pb::Environment, error_type: &str, message: &str) -> Self {
        if record.state() != pb::EnvironmentState::Failed {
            record.set_state(pb::EnvironmentState::Failed);
            record.failure = Some(pb::Failure {
                error_type: error_type.to_owned(),
                message: message.to_owned(),
                at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            });
        }
        record.pid = 0;
        record.in_flight = 0;
        Self(record)
    }

    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// Deleted by the control plane.
    pub fn terminate(&mut self) {
        self.0.set_state(pb::EnvironmentState::Terminated);
    }

    /// The record (the environment as the control API shows it).
    pub fn record(&self) -> &pb::Environment {
        &self.0
    }

    pub fn into_record(self) -> pb::Environment {
        self.0
    }
}

/// The records directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl StateStore {
    /// The store under `state_dir` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("environments");
        fs::create_dir_all(&dir).map_err(|source| StateError {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pb"))
    }

    /// Writes (or replaces) an environment's record atomically: a crash leaves the old record or the new
    /// one, never a torn file.
    pub fn save(&self, env: &pb::Environment) -> Result<(), StateError> {
        let path = self.path(&env.id);
        let err = |source| StateError {
            path: path.clone(),
            source,
        };
        if !valid_id(&env.id) {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad environment id",
            )));
        }
        let tmp = self.dir.join(format!(".{}.tmp", env.id));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&env.encode_to_vec()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    /// Removes a record (absent is fine).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        if !valid_id(id) {
            return Ok(());
        }
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError { path, source }),
        }
    }

    /// Every readable record; unreadable or corrupt ones are reported and skipped (and removed), never fatal.
    pub fn load_all(&self) -> Vec<pb::Environment> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return out;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temporary file from a write the crash interrupted.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".pb") else {
                continue;
            };
            match fs::read(&path).map(|b| pb::Environment::decode(b.as_slice())) {
                Ok(Ok(env)) if env.id == id => out.push(env),
                Ok(Ok(_)) | Ok(Err(_)) => {
                    tracing::warn!(path = %path.display(), "corrupt environment record; removing it");
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable environment record")
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let s = StateStore::open(t.path()).unwrap();
        let env = pb::Environment {
            id: "abc-1".into(),
            vcpus: 2,
            ..Default::default()
        };
        s.save(&env).unwrap();
        s.save(&pb::Environment {
            id: "abc-2".into(),
            ..Default::default()
        })
        .unwrap();
        std::fs::write(
            t.path().join("environments/evil.pb"),
            b"\xff\xff\xff garbage",
        )
        .unwrap();
        std::fs::write(t.path().join("environments/.abc-3.tmp"), b"half").unwrap();
        let all = s.load_all();
        assert_eq!(
            all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["abc-1", "abc-2"]
        );
        assert_eq!(all[0].vcpus, 2);
        assert!(!t.path().join("environments/evil.pb").exists());
        assert!(!t.path().join("environments/.abc-3.tmp").exists());
        s.remove("abc-1").unwrap();
        s.remove("abc-1").unwrap();
        assert_eq!(s.load_all().len(), 1);
        assert!(s
            .save(&pb::Environment {
                id: "../x".into(),
                ..Default::default()
            })
            .is_err());
    }
}
