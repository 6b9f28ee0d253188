//! The log socket of one environment: the Unix socket named to the runtime in
//! `_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`. Every accepted connection is one log stream (Python workers
//! connect twice and `dup2` the connections onto their stdout and stderr; Node workers connect once each).
//!
//! The socket file is `<socket_dir>/<environment id>/log.sock`, mode 0600, in a directory of its own (mode
//! 0755, root's) that the sandbox binds into the runtime's mount namespace and whose socket it gives to the
//! environment's uid. File and directory are removed when the [`EnvironmentSocket`] is dropped: when the
//! environment is cleaned up, or when its creation fails half-way.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;

/// The socket's file name in its environment's directory.
pub const SOCKET_NAME: &str = "log.sock";

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A bound log socket; the file is removed on drop.
#[derive(Debug)]
pub struct EnvironmentSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl EnvironmentSocket {
    /// Binds `<dir>/<env_id>/log.sock` (creating `dir` mode 0700 and `<dir>/<env_id>` mode 0755). Must run
    /// inside the tokio runtime.
    pub fn bind(dir: &Path, env_id: &str) -> io::Result<Self> {
        Self::bind_with(dir, env_id, |p| UnixListener::bind(p))
    }

    /// [`Self::bind`] with the final `bind(2)` done by `bind_socket` (a test makes it fail). Whatever fails
    /// once the environment's directory exists (`EMFILE` at the bind, for one) removes the directory again.
    fn bind_with(
        dir: &Path,
        env_id: &str,
        bind_socket: impl FnOnce(&Path) -> io::Result<UnixListener>,
    ) -> io::Result<Self> {
        let path = dir.join(env_id).join(SOCKET_NAME);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "log socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket allows; \
                     choose a shorter state_dir",
                    path.display()
                ),
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let own = dir.join(env_id);
        match std::fs::DirBuilder::new().mode(0o700).create(&own) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // From here on an error drops `socket`, whose drop removes the socket file and the directory.
        let mut socket = Self {
            listener: None,
            path,
        };
        // The socket is bound in a directory only the agent can enter and made 0600 before the directory is
        // opened (0755, for the runtime's mount of it): no other user can connect in between. Not by narrowing
        // the umask around bind(2): the umask is the process's, and files other threads create meanwhile
        // would get it.
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700))?;
        remove_stale(&socket.path)?;
        socket.listener = Some(bind_socket(&socket.path)?);
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755))?;
        Ok(socket)
    }

    /// The socket's path, for `_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener; `None` once taken. The file stays until `self` is dropped.
    pub fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for EnvironmentSocket {
    fn drop(&mut self) {
        self.listener = None;
        // Only a socket: a file of another kind here (refused by `bind`) is left for the operator to see.
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some(own) = self.path.parent() {
            let _ = std::fs::remove_dir(own);
        }
    }
}

/// Removes a socket file left at `path` by an earlier agent; any other kind of file is an error.
fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes every environment's socket and directory in `dir` (left by an agent that did not stop cleanly).
pub fn remove_stale_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let own = e.path();
        let sock = own.join(SOCKET_NAME);
        if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&sock);
        }
        let _ = std::fs::remove_dir(&own);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_0600_removes_its_file_and_refuses_long_paths() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("sockets");
        let mut s = EnvironmentSocket::bind(&dir, "env-1").unwrap();
        assert_eq!(s.path(), dir.join("env-1/log.sock"));
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir.join("env-1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o755);
        let listener = s.take_listener().unwrap();
        let client = tokio::net::UnixStream::connect(s.path()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            server.peer_cred().unwrap().pid(),
            Some(std::process::id() as i32)
        );
        drop(client);
        let path = s.path().to_owned();
        // Rebinding over a stale socket works; the drop removes the file.
        drop(listener);
        let again = EnvironmentSocket::bind(&dir, "env-1").unwrap();
        drop(s);
        drop(again);
        assert!(!path.exists());
        assert!(
            !dir.join("env-1").exists(),
            "the environment's directory is removed too"
        );

        let long = t.path().join("x".repeat(120));
        let e = EnvironmentSocket::bind(&long, "env").unwrap_err();
        assert!(e.to_string().contains("longer than the 107"), "{e}");
        std::fs::create_dir_all(dir.join("env-2")).unwrap();
        std::fs::write(dir.join("env-2").join(SOCKET_NAME), "").unwrap();
        let e = EnvironmentSocket::bind(&dir, "env-2").unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert!(
            dir.join("env-2").join(SOCKET_NAME).is_file(),
            "a file that is not a socket is left alone"
        );
    }

    #[tokio::test]
    async fn a_failed_bind_removes_the_directory_it_made() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("sockets");
        let e = EnvironmentSocket::bind_with(&dir, "env-emfile", |_| {
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        })
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
        assert!(dir.is_dir(), "the shared socket directory stays");
        assert!(
            !dir.join("env-emfile").exists(),
            "the environment's own directory is removed"
        );
    }
}
