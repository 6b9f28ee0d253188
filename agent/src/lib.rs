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
//! - [`launch`]: the runtime's command line, environment variables and spawn into its cgroup.
//! - [`environment`]: an environment's record and state machine.
//! - [`supervisor`]: the task that owns a runtime process from spawn to cleanup.
//! - [`invocation`]: an invoke's event and its single outcome.
//! - [`broker`]: the per-environment exchange between callers and the runtime's pollers.
//! - [`runtime_api`]: the Lambda Runtime API server each runtime talks to.
//! - [`dispatch`]: choosing an environment for an invoke, and throttle reasons.
//! - [`agent`]: the host's environments and the operations on them.
//! - [`control`]: the gRPC control API on top of [`agent`].
//! - [`server`]: the control API's listeners.
//! - [`client`]: connecting a gRPC client to the control API.
//! - [`notify`]: readiness and stopping notifications to systemd.

pub mod agent;
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
pub mod invocation;
pub mod launch;
pub mod notify;
pub mod runtime_api;
pub mod server;
pub mod spec;
pub mod startup;
pub mod supervisor;
