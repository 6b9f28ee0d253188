//! `[sandbox]`, the sandbox's section of the agent's configuration file (composed by the agent's config).

use serde::{Deserialize, Serialize};

/// `[sandbox]`: every environment runs as its own unprivileged uid/gid, in its own mount namespace, and (with
/// `network_isolation`) in its own network namespace. See docs/ARCHITECTURE.md, "Sandbox".
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// First uid (and gid) handed to environments; each environment gets one of its own.
    pub uid_first: u32,
    /// How many uids (from `uid_first`) the agent may hand out: the most environments alive at once.
    pub uid_count: u32,
    /// A network namespace per environment: its Runtime API on its own loopback at 127.0.0.1:9001, egress
    /// through a veth pair and NAT. Off: environments share the host's network and each Runtime API listens
    /// on an ephemeral loopback port of the host (reachable by every local process).
    pub network_isolation: bool,
    /// Private IPv4 network the environments' veth pairs are numbered from, one /30 each ("a.b.c.d/len",
    /// len 12..=28); must not overlap a network the host routes to.
    pub network: String,
    /// Network slots (namespace, Runtime API listener, veth pair) made ahead of environments, so that
    /// creating one does not wait for `ip`; 0 makes each on demand. At most 64.
    pub network_pool: u32,
    /// A seccomp filter in every runtime, refusing the system calls a function never needs (kernel modules,
    /// kexec, bpf, keyrings, ptrace, mounts, namespaces...; the list is in `sandbox::seccomp`).
    pub seccomp: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            uid_first: 1_000_000,
            uid_count: 65_536,
            network_isolation: true,
            network: "10.200.0.0/16".to_owned(),
            network_pool: 2,
            seccomp: true,
        }
    }
}
