//! Connecting to the agent: its Unix socket (default) or a TCP endpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use lmi_proto::auth::AddBearer;
use lmi_proto::v1::agent_client::AgentClient;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

/// Payloads are up to 6 MiB; leave room for the rest of the message.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long connecting may take when no `--timeout` is given.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client whose calls carry the bearer token, when one was given.
pub type Client = AgentClient<InterceptedService<Channel, AddBearer>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(u) => f.write_str(u),
        }
    }
}

/// `--endpoint` wins over `--socket`; an endpoint without a scheme gets `http://`.
pub fn target(socket: &Path, endpoint: Option<&str>) -> anyhow::Result<Target> {
    match endpoint.map(str::trim) {
        None => Ok(Target::Unix(socket.to_path_buf())),
        Some("") => Err(anyhow!("--endpoint is empty")),
        Some(e) if e.starts_with("https://") => Err(anyhow!(
            "--endpoint {e}: TLS is not supported; use http:// (or the Unix socket)"
        )),
        Some(e) if e.starts_with("http://") => Ok(Target::Tcp(e.to_string())),
        Some(e) if e.contains("://") => Err(anyhow!("--endpoint {e}: the scheme must be http://")),
        Some(e) => Ok(Target::Tcp(format!("http://{e}"))),
    }
}

/// The token to send: read from `token_file` for a TCP target (the Unix socket needs none).
pub fn token(target: &Target, token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match (target, token_file) {
        (Target::Tcp(_), Some(path)) => Ok(Some(lmi_proto::auth::read_token(path)?)),
        _ => Ok(None),
    }
}

/// Connects (eagerly, so a missing socket is reported as such) and returns a client that accepts 16 MiB
/// messages and sends `token` with every call. `timeout` bounds connecting and every RPC made through the
/// channel.
pub async fn connect(
    target: &Target,
    timeout: Option<Duration>,
    token: Option<&str>,
) -> anyhow::Result<Client> {
    let bearer = AddBearer::new(token).map_err(|s| anyhow!("--token-file: {}", s.message()))?;
    let uri = match target {
        // The authority is a placeholder: the connector below ignores it.
        Target::Unix(_) => "http://[::]:50051",
        Target::Tcp(u) => u.as_str(),
    };
    let mut endpoint = Endpoint::try_from(uri.to_string())
        .with_context(|| format!("invalid endpoint {uri}"))?
        .connect_timeout(timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT));
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let channel = match target {
        Target::Unix(path) => lmi_proto::connect::unix_channel(path, endpoint).await,
        Target::Tcp(_) => endpoint.connect().await,
    }
    .map_err(|e| with_hint(anyhow::Error::new(e), target))?;
    Ok(AgentClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Why connecting failed, in terms of what to do: the agent not running (no socket, or nobody listening on
/// it), or the caller not allowed on its socket (mode 0600, owned by root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotRunning,
    NotAllowed,
}

/// Finds the OS error under a connection error (tonic keeps it as the source of its transport error).
pub fn refusal(err: &anyhow::Error) -> Option<Refusal> {
    for cause in err.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    return Some(Refusal::NotRunning)
                }
                std::io::ErrorKind::PermissionDenied => return Some(Refusal::NotAllowed),
                _ => {}
            }
        }
    }
    None
}

/// `cannot connect to lmi-agent at …: <cause>`, then what to do about it on a line of its own.
pub fn with_hint(err: anyhow::Error, target: &Target) -> anyhow::Error {
    let hint = match (refusal(&err), target) {
        (Some(Refusal::NotRunning), Target::Unix(_)) => Some(
            "is lmi-agent running? `systemctl status lmi-agent` (start it with `systemctl start lmi-agent`, \
             or give its socket with --socket / LMI_AGENT_SOCKET)"
                .to_owned(),
        ),
        (Some(Refusal::NotRunning), Target::Tcp(_)) => Some(
            "is lmi-agent running there, with `listen_tcp` set to this address? `systemctl status lmi-agent` on \
             that host"
                .to_owned(),
        ),
        (Some(Refusal::NotAllowed), Target::Unix(p)) => Some(format!(
            "the agent's socket {} is mode 0600, owned by root: run lmictl as root (sudo lmictl …)",
            p.display()
        )),
        _ => None,
    };
    let err = err.context(format!("cannot connect to lmi-agent at {target}"));
    match hint {
        Some(h) => anyhow!("{}\nhint: {h}", crate::output::chain(&err)),
        None => err,
    }
}

/// A request carrying `timeout` as its gRPC deadline, so the agent sees it too.
pub fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_selection() {
        let sock = Path::new("/run/x.sock");
        assert_eq!(target(sock, None).unwrap(), Target::Unix(sock.into()));
        assert_eq!(
            target(sock, Some("http://10.0.0.1:7443")).unwrap(),
            Target::Tcp("http://10.0.0.1:7443".into())
        );
        assert_eq!(
            target(sock, Some("localhost:7443")).unwrap(),
            Target::Tcp("http://localhost:7443".into())
        );
        assert!(target(sock, Some("https://h:1")).is_err());
        assert!(target(sock, Some("unix:///x")).is_err());
        assert!(target(sock, Some(" ")).is_err());
    }

    #[tokio::test]
    async fn missing_socket_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("lmictl-none-{}.sock", uuid::Uuid::new_v4()));
        let err = connect(&Target::Unix(path.clone()), None, None)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("cannot connect to lmi-agent at unix:"),
            "{msg}"
        );
        assert!(msg.contains(path.to_str().unwrap()), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
        assert!(
            msg.contains("\nhint: is lmi-agent running? `systemctl status lmi-agent`"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_and_permission_denied_have_hints() {
        let dir = tempfile::tempdir().unwrap();
        // A socket file nobody listens on: connection refused.
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let msg = format!(
            "{:#}",
            connect(&Target::Unix(path), None, None).await.unwrap_err()
        );
        assert!(msg.contains("hint: is lmi-agent running?"), "{msg}");

        let err = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("transport error");
        assert_eq!(refusal(&err), Some(Refusal::NotAllowed));
        let msg = with_hint(err, &Target::Unix("/run/lmi-agent/agent.sock".into())).to_string();
        assert!(
            msg.ends_with("hint: the agent's socket /run/lmi-agent/agent.sock is mode 0600, owned by root: run lmictl as root (sudo lmictl …)"),
            "{msg}"
        );
        let other = anyhow::anyhow!("something else");
        assert_eq!(refusal(&other), None);
    }
}
