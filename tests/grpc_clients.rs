//! Standard gRPC clients on the agent's Unix socket, with their default settings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
