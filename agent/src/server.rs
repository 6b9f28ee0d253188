//! The listeners of the control API: a Unix socket (mode 0600: root only) and optionally TCP, each serving
//! `lmi.agent.v1.Agent`, gRPC health and server reflection.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use lmi_proto::v1::agent_server::AgentServer;
use tokio::{net::UnixListener, sync::watch};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::{agent::Agent, config::Config, control::ControlService};

/// Largest gRPC message (invoke payloads and results are up to 6 MiB; streamed results up to 20 MiB).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Why the control API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("control socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("TCP listener {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds the Unix socket with mode 0600, replacing a stale socket file (never any other kind of file).
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    // Created 0600 from the start: the umask is narrowed around bind(2), so there is no window in which
    // another user could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Binds the optional TCP listener of the control API (before the agent says it is ready).
pub async fn bind_tcp(config: &Config) -> Result<Option<tokio::net::TcpListener>, ServeError> {
    let Some(addr) = config.listen_tcp else {
        return Ok(None);
    };
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Tcp {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, "control API listening on TCP");
    Ok(Some(tcp))
}

/// Serves the control API on the bound listeners until `shutdown` turns true.
pub async fn serve(
    agent: Arc<Agent>,
    unix: UnixListener,
    tcp: Option<tokio::net::TcpListener>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<ControlService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lmi_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let control = AgentServer::new(ControlService::new(agent))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(control);

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    match tcp {
        None => {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(unix), stopped(shutdown))
                .await?
        }
        Some(tcp) => {
            let tcp_router = router.clone();
            let (a, b) = tokio::join!(
                router.serve_with_incoming_shutdown(
                    UnixListenerStream::new(unix),
                    stopped(shutdown.clone())
                ),
                tcp_router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(tcp), stopped(shutdown)),
            );
            a?;
            b?;
        }
    }
    Ok(())
}
