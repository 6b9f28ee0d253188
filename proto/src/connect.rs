//! Connecting a gRPC client to the agent's control API (used by `lmictl`, the demo and the tests).

use std::path::Path;

use crate::v1::agent_client::AgentClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::wire::MAX_MESSAGE_BYTES;

/// A channel over the agent's Unix socket. `endpoint` carries the caller's timeouts; its URI is ignored.
pub async fn unix_channel(
    path: &Path,
    endpoint: Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// A placeholder endpoint for Unix-socket channels.
pub fn unix_endpoint() -> Endpoint {
    Endpoint::from_static("http://[::]:50051")
}

/// An `Agent` client accepting messages as large as the agent sends.
pub fn agent_client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Connects to the agent's Unix socket with default settings.
pub async fn connect_unix(path: &Path) -> Result<AgentClient<Channel>, tonic::transport::Error> {
    Ok(agent_client(unix_channel(path, unix_endpoint()).await?))
}
