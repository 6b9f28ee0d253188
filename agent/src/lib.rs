//! lmi-agent: the per-host node agent of a Lambda Managed Instances style platform.
//!
//! Read `docs/ARCHITECTURE.md` for the life of an invoke; each module holds one concept:
//!
//! - [`config`]: the agent's configuration file.
//! - [`catalog`]: runtime id → command (data, not code).
//! - [`spec`]: validation of an environment spec as LMI defines it.
//! - [`startup`]: where an environment's start-up time goes.
//! - [`capacity`]: the host's vCPUs and memory, and what environments hold of them.
//! - [`code`]: staging a function's code (directory or zip).
//! - [`cgroup`]: per-environment cgroups, v1 and v2.
//! - [`logs`]: function logs: capture, bounded queue, sinks, reading back.
//! - [`launch`]: the runtime's command line, environment variables and spawn into its cgroup.
//! - [`environment`]: an environment's record, state machine and last measured usage.
//! - [`ephemeral`]: an environment's /tmp (a size-capped tmpfs).
//! - [`sandbox`]: each environment's uid, mount and network namespaces, and no privileges.
//! - [`supervisor`]: the task that owns a runtime process from spawn to cleanup.
//! - [`invocation`]: an invoke's event and its single outcome.
//! - [`request_id`]: which request ids a caller may choose; caller-chosen ids in flight on the host.
//! - [`broker`]: the per-environment exchange between callers and the runtime's pollers.
//! - [`runtime_api`]: the Lambda Runtime API server each runtime talks to.
//! - [`dispatch`]: admission: choosing an environment for an invoke, redirects and throttle reasons.
//! - [`sampler`]: periodic CPU/memory/disk measurement and saturation decisions.
//! - [`host`]: host-wide figures from procfs.
//! - [`scaler`]: streaming reports to the scaler and obeying its directives.
//! - [`metrics`]: Prometheus `/metrics`.
//! - [`report`]: utilization reports for the scaler and operators.
//! - [`stats`]: invoke counters (throttles by reason, redirects, outcomes, latency).
//! - [`agent`]: the host's environments and the operations on them.
//! - [`control`]: the gRPC control API on top of [`agent`].
//! - [`server`]: the control API's listeners.
//! - [`auth`]: the bearer token of the control API's TCP listener.
//! - [`state`]: durable environment records for restart reconciliation.
//! - [`client`]: connecting a gRPC client to the control API.
//! - [`notify`]: readiness and stopping notifications to systemd.
//! - [`watchdog`]: the systemd watchdog's liveness probe and ping period.
//! - [`invoke_api`]: the AWS Lambda compatible Invoke API over HTTP.
//! - [`listener`]: what every listener enforces: header and body timeouts, a connection cap.

pub mod agent;
pub mod auth;
pub mod broker;
pub mod capacity;
pub mod catalog;
pub mod cgroup;
pub mod client;
pub mod code;
pub mod config;
pub mod control;
pub mod dispatch;
pub mod environment;
pub mod ephemeral;
pub mod host;
pub mod invocation;
pub mod invoke_api;
pub mod launch;
pub mod listener;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod request_id;
pub mod runtime_api;
pub mod sampler;
pub mod sandbox;
pub mod scaler;
pub mod server;
pub mod spec;
pub mod startup;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod text;
pub mod watchdog;
