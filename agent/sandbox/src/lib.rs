//! The sandbox of every environment (docs/ARCHITECTURE.md, "Sandbox"):
//!
//! - [`identity`]: a uid/gid of its own from the configured range;
//! - [`privileges`]: no supplementary group, no capability, `no_new_privs`;
//! - [`mounts`]: its own mount namespace: the code read-only at `/var/task`, its tmpfs at `/tmp` (and
//!   `/var/tmp`, `/dev/shm`, `/run/lock`), its own `/proc` and only its own cgroups at `/sys/fs/cgroup`;
//! - [`pidns`]: its own PID namespace, whose init reaps orphans; its own cgroup namespace;
//! - [`netns`], [`veth`], [`addresses`], [`nat`], [`routes`], [`resolv`]: with network isolation, its own
//!   network namespace whose loopback carries its Runtime API at 127.0.0.1:9001, with egress through a veth
//!   pair and NAT; [`pool`] makes them ahead of the environments;
//! - [`seccomp`]: a filter refusing the system calls a function never needs (`sandbox.seccomp`);
//! - [`confine`]: all of the above applied by the runtime process to itself between `fork` and `exec`;
//! - [`tools`]: the host commands (`ip`, `nft`) the network part runs.
//!
//! [`Sandbox`] is the host's part (set up at start, removed at shutdown); [`EnvironmentSandbox`] is what one
//! environment holds until its processes are gone.

pub mod addresses;
pub mod config;
pub mod confine;
pub mod ephemeral;
pub mod identity;
pub mod mounts;
pub mod nat;
pub mod netns;
pub mod pidns;
pub mod pool;
pub mod privileges;
pub mod resolv;
pub mod routes;
pub mod seccomp;
pub mod tools;
pub mod veth;

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub use addresses::Subnet;

use addresses::{AddressPool, AddressesExhausted, Link};
use config::SandboxConfig;
use confine::Confinement;
use identity::{IdentitiesExhausted, Identity, IdentityPool};
use mounts::{HostMounts, MountPlan, MountPlanError};
use nat::NatTable;
use netns::NetworkNamespace;
use pool::SlotPool;
use seccomp::{Filter, SeccompError};
use tools::Tool;
use veth::Veth;

/// Where a runtime finds its Runtime API inside its network namespace (as on Lambda).
pub const ISOLATED_RUNTIME_API: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9001);

/// Why the sandbox could not be set up or an environment's part of it prepared.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Identities(#[from] IdentitiesExhausted),
    #[error(transparent)]
    Addresses(#[from] AddressesExhausted),
    #[error("sandbox.network: {0}")]
    Config(String),
    #[error("sandbox.network_isolation needs the `{tool}` command (package {package}): install it or set sandbox.network_isolation = false")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("sandbox.network {network} overlaps the host's route to {route} on {dev}: choose another network")]
    Overlap {
        network: Subnet,
        route: Subnet,
        dev: String,
    },
    #[error("sandbox: {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("sandbox: {0}")]
    Network(String),
    #[error("sandbox: {0}")]
    Plan(#[from] MountPlanError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

impl SandboxError {
    /// True when the host is out of uids or addresses (a capacity problem, not a fault).
    pub fn is_exhausted(&self) -> bool {
        matches!(self, Self::Identities(_) | Self::Addresses(_))
    }
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
    move |source| SandboxError::Io { what, source }
}

/// The host's part of the sandbox.
#[derive(Debug)]
pub struct Sandbox {
    identities: Arc<IdentityPool>,
    mounts: HostMounts,
    network: Option<HostNetwork>,
    /// Compiled once here, installed by every runtime (None when `sandbox.seccomp` is off).
    seccomp: Option<Filter>,
}

#[derive(Debug)]
struct HostNetwork {
    ip: Tool,
    addresses: Arc<AddressPool>,
    pool: SlotPool,
    nat: NatTable,
    resolv: Option<PathBuf>,
}

/// An environment's sandbox, ready for its runtime.
#[derive(Debug)]
pub struct Prepared {
    /// What the environment holds until its processes are gone.
    pub lease: EnvironmentSandbox,
    /// The Runtime API listener (non-blocking), in the environment's network namespace when isolated.
    pub listener: TcpListener,
    /// The Runtime API's address as the runtime sees it (`AWS_LAMBDA_RUNTIME_API`).
    pub runtime_api: SocketAddr,
    /// What the runtime applies to itself before `exec`.
    pub confinement: Confinement,
}

impl Sandbox {
    /// Sets the host up: mount points, and with network isolation the tools, the address pool (refusing a
    /// network the host already routes; removing veth pairs an earlier life left in it), NAT and resolvers.
    /// `instance` names this agent's host objects (its cgroup parent).
    pub fn start(
        config: &SandboxConfig,
        state_dir: &Path,
        instance: &str,
    ) -> Result<Self, SandboxError> {
        // Compiled first: it touches nothing on the host, so a failure leaves nothing to undo.
        let seccomp = if config.seccomp {
            let filter = Filter::compile()?;
            tracing::info!(
                refused_syscalls = seccomp::REFUSED.len(),
                bpf_instructions = filter.instructions(),
                "seccomp filter on"
            );
            Some(filter)
        } else {
            tracing::warn!("sandbox.seccomp = false: environments may make every system call");
            None
        };
        let mounts = HostMounts::prepare(state_dir).map_err(io_error("preparing mount points"))?;
        let network = if config.network_isolation {
            Some(HostNetwork::start(config, state_dir, instance)?)
        } else {
            None
        };
        Ok(Self {
            identities: Arc::new(IdentityPool::new(config.uid_first, config.uid_count)),
            mounts,
            network,
            seccomp,
        })
    }

    /// True when every runtime installs the seccomp filter.
    pub fn seccomp(&self) -> bool {
        self.seccomp.is_some()
    }

    /// True when every environment has its own network namespace.
    pub fn network_isolation(&self) -> bool {
        self.network.is_some()
    }

    /// How many uids environments hold.
    pub fn identities_held(&self) -> usize {
        self.identities.held()
    }

    /// Prepares an environment whose code is at `code`, whose tmpfs will be mounted at `tmp` and whose log
    /// socket is bound at `log_socket` (host paths; the socket is given to the environment's uid). Blocking
    /// (runs `ip`). On error nothing is held.
    pub fn prepare(
        &self,
        code: &Path,
        tmp: &Path,
        log_socket: &Path,
    ) -> Result<Prepared, SandboxError> {
        let identity = self.identities.allocate()?;
        let lease = EnvironmentSandbox {
            identity,
            identities: self.identities.clone(),
            held: Mutex::new(Held {
                identity: true,
                network: None,
            }),
        };
        match self.prepare_held(&lease, code, tmp, log_socket) {
            Ok((listener, runtime_api, confinement)) => Ok(Prepared {
                lease,
                listener,
                runtime_api,
                confinement,
            }),
            Err(e) => {
                lease.release(true);
                Err(e)
            }
        }
    }

    fn prepare_held(
        &self,
        lease: &EnvironmentSandbox,
        code: &Path,
        tmp: &Path,
        log_socket: &Path,
    ) -> Result<(TcpListener, SocketAddr, Confinement), SandboxError> {
        let resolv = self.network.as_ref().and_then(|n| n.resolv.as_deref());
        let log_dir = log_socket.parent().ok_or_else(|| MountPlanError {
            path: log_socket.to_owned(),
            reason: "has no parent directory",
        })?;
        let mounts = MountPlan::new(&self.mounts, code, tmp, log_dir, resolv)?;
        // Only this environment's uid (and root) may connect to its log socket.
        let id = lease.identity;
        std::os::unix::fs::chown(log_socket, Some(id.uid), Some(id.gid))
            .map_err(io_error("giving the log socket to the environment's uid"))?;
        let Some(net) = &self.network else {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(io_error("binding the Runtime API listener"))?;
            let addr = listener
                .local_addr()
                .map_err(io_error("binding the Runtime API listener"))?;
            return Ok((
                listener,
                addr,
                Confinement {
                    netns: None,
                    mounts,
                    identity: lease.identity,
                    seccomp: self.seccomp.clone(),
                },
            ));
        };
        let pool::NetworkSlot {
            ns,
            listener,
            veth,
            link,
        } = net.pool.take()?;
        let netns = Some(ns.raw_fd());
        lease.lock().network = Some(EnvironmentNetwork {
            ns,
            veth,
            link,
            ip: net.ip.clone(),
            addresses: net.addresses.clone(),
        });
        Ok((
            listener,
            SocketAddr::V4(ISOLATED_RUNTIME_API),
            Confinement {
                netns,
                mounts,
                identity: lease.identity,
                seccomp: self.seccomp.clone(),
            },
        ))
    }

    /// Network slots made ahead and not yet taken (0 without network isolation).
    pub fn network_slots_ready(&self) -> usize {
        self.network.as_ref().map_or(0, |n| n.pool.ready())
    }

    /// Removes the host's part (slots made ahead, NAT table, mount point). Call once every environment is
    /// cleaned up.
    pub fn shutdown(&self) {
        if let Some(net) = &self.network {
            net.pool.stop();
            if let Err(e) = net.nat.remove() {
                tracing::warn!(error = %e, "removing the sandbox's nftables table failed");
            }
        }
        if let Err(e) = self.mounts.remove() {
            tracing::warn!(error = %e, "removing the environments' mount point failed");
        }
    }
}

impl HostNetwork {
    fn start(
        config: &SandboxConfig,
        state_dir: &Path,
        instance: &str,
    ) -> Result<Self, SandboxError> {
        let subnet = Subnet::parse(&config.network).map_err(SandboxError::Config)?;
        let ip = Tool::find("ip").ok_or(SandboxError::MissingTool {
            tool: "ip",
            package: "iproute2",
        })?;
        let nft = Tool::find("nft").ok_or(SandboxError::MissingTool {
            tool: "nft",
            package: "nftables",
        })?;
        for route in routes::host_routes().map_err(io_error("reading the host's routes"))? {
            if !route.network.overlaps(&subnet) {
                continue;
            }
            let ours =
                route.dev.starts_with(veth::HOST_PREFIX) && subnet.contains(route.network.first());
            if !ours {
                return Err(SandboxError::Overlap {
                    network: subnet,
                    route: route.network,
                    dev: route.dev,
                });
            }
            tracing::warn!(dev = %route.dev, network = %route.network, "removing a veth pair left by an earlier life of the agent");
            veth::remove_link(&ip, &route.dev).map_err(SandboxError::Network)?;
        }
        let nat = NatTable::install(nft, instance, subnet).map_err(SandboxError::Network)?;
        let resolv = match resolv::prepare(state_dir) {
            Ok((resolv::Resolvers::Unreachable, _)) => {
                tracing::warn!("the host's resolver is on its loopback and no upstream list was found: names will not resolve inside environments");
                None
            }
            Ok((_, path)) => path,
            Err(e) => {
                let _ = nat.remove();
                return Err(io_error("writing the environments' resolv.conf")(e));
            }
        };
        tracing::info!(network = %subnet, table = %NatTable::name_for(instance), pool = config.network_pool, "network isolation on");
        let addresses = Arc::new(AddressPool::new(subnet));
        Ok(Self {
            pool: SlotPool::start(ip.clone(), addresses.clone(), config.network_pool as usize),
            ip,
            addresses,
            nat,
            resolv,
        })
    }
}

/// What one environment holds: its uid and, when isolated, its network namespace, veth pair and /30.
#[derive(Debug)]
pub struct EnvironmentSandbox {
    identity: Identity,
    identities: Arc<IdentityPool>,
    held: Mutex<Held>,
}

#[derive(Debug)]
struct Held {
    identity: bool,
    network: Option<EnvironmentNetwork>,
}

#[derive(Debug)]
struct EnvironmentNetwork {
    ns: NetworkNamespace,
    veth: Veth,
    link: Link,
    ip: Tool,
    addresses: Arc<AddressPool>,
}

impl EnvironmentSandbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The uid and gid the environment's processes run as.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The environment's address on its veth pair (None without network isolation).
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.lock().network.as_ref().map(|n| n.link.guest)
    }

    /// The host end of its veth pair (None without network isolation).
    pub fn veth(&self) -> Option<String> {
        self.lock()
            .network
            .as_ref()
            .map(|n| n.veth.host_name().to_owned())
    }

    /// Removes the network (veth pair, namespace, /30) and, when `processes_gone`, gives the uid back; a uid
    /// whose processes may still run stays held. Idempotent. Blocking (runs `ip`).
    pub fn release(&self, processes_gone: bool) {
        let mut held = self.lock();
        if let Some(net) = held.network.take() {
            if let Err(e) = net.veth.remove(&net.ip) {
                tracing::warn!(veth = %net.veth.host_name(), error = %e, "removing a veth pair failed");
            }
            drop(net.ns);
            net.addresses.release(&net.link);
        }
        if processes_gone && held.identity {
            held.identity = false;
            self.identities.release(self.identity);
        }
    }
}
