//! lmi-agent-core: what the agent is, without its front ends.
//!
//! Everything the host agent decides lives here; the OS effects sit behind traits of the crates below
//! (`lmi_cgroup::CgroupDriver`, `launch::Spawner`, `lmi_sandbox`), and the gRPC contract is seen only by
//! [`wire`] and [`state`]. Modules, from the bottom up:
//!
//! - [`config`]: the agent's configuration: its sections, layers (file, environment, flags) and the keys table.
//! - [`catalog`]: runtime id → command line and probe (data, not code).
//! - [`spec`]: an environment spec as Lambda Managed Instances defines it, validated.
//! - [`startup`]: where an environment's start-up time goes.
//! - [`capacity`]: the host's vCPUs and memory, and what environments hold of them.
//! - [`code`]: staging a function's code (a directory, or a zip unpacked under caps).
//! - [`launch`]: the runtime's command line and environment, and the `Spawner` seam that starts it.
//! - [`logs`]: function logs: capture, bounded queue, sinks, platform records, reading back.
//! - [`environment`]: an environment's record, state machine and last measured usage.
//! - [`supervisor`]: the task that owns a runtime process from spawn to cleanup.
//! - [`dispatch`]: admission: choosing an environment for an invoke, redirects and throttle reasons.
//! - [`sampler`]: periodic CPU, memory and disk measurement and saturation decisions.
//! - [`host`]: host-wide figures from procfs, and the host's name.
//! - [`stats`]: invoke counters (throttles by reason, redirects, outcomes, latency).
//! - [`state`]: durable environment records for restart reconciliation.
//! - [`agent`]: the host's environments and the operations on them (create, invoke, recover, stop).
//! - [`civil_time`]: UTC calendar dates from Unix time.
//! - [`text`]: quoting caller-supplied text in errors, bounded.
//! - [`wire`]: every conversion between the core's types and the gRPC contract.

pub mod agent;
pub mod capacity;
pub mod catalog;
pub mod civil_time;
pub mod code;
pub mod config;
pub mod dispatch;
pub mod environment;
pub mod host;
pub mod launch;
pub mod logs;
pub mod sampler;
pub mod spec;
pub mod startup;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod text;
pub mod version_map;
pub mod wire;
