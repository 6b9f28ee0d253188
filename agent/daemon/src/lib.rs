//! lmi-agent: the daemon's front ends around the core (`lmi_agent_core`): the gRPC control API, the
//! Invoke API, metrics, the scaler client and systemd integration. The binary is `src/bin/lmi-agent`.
//!
//! - [`control`]: the gRPC control API (`lmi.agent.v1.Agent`) on top of the core's `Agent`.
//! - [`server`]: the control API's listeners: the Unix socket, and TCP behind a bearer token.
//! - [`invoke_api`]: the AWS Lambda compatible Invoke API over HTTP.
//! - [`metrics`]: Prometheus `/metrics`.
//! - [`scaler`]: streaming utilization reports to the scaler and obeying its directives.
//! - [`listener`]: what every listener enforces: header and body timeouts, a connection cap.
//! - [`watchdog`]: the systemd watchdog's liveness probe and ping period.
//! - [`notify`]: readiness and stopping notifications to systemd.

pub mod control;
pub mod event_stream;
pub mod invoke_api;
pub mod listener;
pub mod metrics;
pub mod notify;
pub mod scaler;
pub mod server;
pub mod watchdog;
