//! The listeners of the control API: a Unix socket (mode 0600: root only) and optionally TCP, each serving
//! `lmi.agent.v1.Agent`, gRPC health and server reflection. On TCP, with `listen_tcp_token_file`, the agent
//! and reflection services need the bearer token ([`lmi_proto::auth`]).

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use lmi_proto::v1::agent_server::AgentServer;
use tokio::{net::UnixListener, sync::watch};
use tokio_stream::{
    wrappers::{TcpListenerStream, UnixListenerStream},
    StreamExt as _,
};
use tonic::service::interceptor::InterceptedService;

use crate::control::{authority::UnixAuthority, ControlService};
use lmi_agent_core::agent::Agent;
use lmi_agent_core::config::Config;
use lmi_proto::auth::{TokenCheck, TokenError};

pub use lmi_proto::wire::MAX_MESSAGE_BYTES;

/// Why the control API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("control socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("TCP listener {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("listen_tcp_token_file: {0}")]
    Token(#[from] TokenError),
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

/// The TCP listener of the control API and the check its calls pass.
#[derive(Debug)]
pub struct TcpControl {
    listener: tokio::net::TcpListener,
    check: TokenCheck,
}

impl TcpControl {
    /// The bound address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Reads the token (if configured) and binds the optional TCP listener of the control API (before the agent
/// says it is ready). Whether a token is required where the listener binds is the configuration's check.
pub async fn bind_tcp(config: &Config) -> Result<Option<TcpControl>, ServeError> {
    let Some(addr) = config.listen_tcp else {
        return Ok(None);
    };
    let check = match &config.listen_tcp_token_file {
        Some(path) => TokenCheck::bearer(&lmi_proto::auth::read_token(path)?),
        None => TokenCheck::open(),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Tcp {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, token = check.required(), "control API listening on TCP");
    Ok(Some(TcpControl { listener, check }))
}

/// Serves the control API on the bound listeners until `shutdown` turns true.
pub async fn serve(
    agent: Arc<Agent>,
    unix: UnixListener,
    tcp: Option<TcpControl>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServer<ControlService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(lmi_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Every listener's limits (crate::listener): a connection cap, the HTTP/2 preface within the header
    // timeout, and keep-alive pings that close a connection whose peer stopped answering.
    let limits = crate::listener::ListenerLimits::from(&agent.config().listeners);
    let (ping, ping_timeout) = crate::listener::grpc_keepalive(&limits);
    let control = AgentServer::new(ControlService::new(agent))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // One router per listener, the same services behind each listener's check. A listener that needs no token
    // (the Unix socket, and TCP without listen_tcp_token_file) has no interceptor at all: an open check admits
    // every call, and the interceptor would still take each call's request apart and put it back together.
    let router = |check: TokenCheck| {
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(ping)
            .http2_keepalive_timeout(ping_timeout)
            .add_service(health_service.clone());
        if check.required() {
            server
                .add_service(InterceptedService::new(reflection.clone(), check.clone()))
                .add_service(InterceptedService::new(control.clone(), check))
        } else {
            server
                .add_service(reflection.clone())
                .add_service(control.clone())
        }
    };

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let local = router(TokenCheck::open());
    // Standard clients send the socket path as `:authority` on a Unix socket, which the HTTP/2 server would
    // refuse (control::authority): their connections go through the rewrite.
    match tcp {
        None => {
            local
                .serve_with_incoming_shutdown(
                    crate::listener::limit_incoming(
                        "control socket",
                        UnixListenerStream::new(unix).map(|c| c.map(UnixAuthority::new)),
                        limits,
                    ),
                    stopped(shutdown),
                )
                .await?
        }
        Some(TcpControl { listener, check }) => {
            let (a, b) = tokio::join!(
                local.serve_with_incoming_shutdown(
                    crate::listener::limit_incoming(
                        "control socket",
                        UnixListenerStream::new(unix).map(|c| c.map(UnixAuthority::new)),
                        limits
                    ),
                    stopped(shutdown.clone())
                ),
                router(check).serve_with_incoming_shutdown(
                    crate::listener::limit_incoming(
                        "control TCP",
                        // Without TCP_NODELAY a small HTTP/2 write (an answer's HEADERS, DATA and trailers)
                        // can wait for the peer's delayed ACK of the previous one.
                        TcpListenerStream::new(listener).map(|c| c.inspect(|s| {
                            let _ = s.set_nodelay(true);
                        })),
                        limits
                    ),
                    stopped(shutdown)
                ),
            );
            a?;
            b?;
        }
    }
    Ok(())
}
