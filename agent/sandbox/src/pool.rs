//! Network slots made ahead: a network namespace with its loopback up and the Runtime API listener bound
//! inside, plus the veth pair to the host with its /30. Making one runs `ip` twice and takes several
//! milliseconds, most of an environment's start-up on the agent's side; [`SlotPool`] keeps
//! `sandbox.network_pool` of them ready so that `CreateEnvironment` takes one, and a background thread makes
//! the next. With an empty pool (a burst of creates, or a pool of 0) a slot is made on the spot.

use std::{
    net::TcpListener,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
};

use super::{
    addresses::{AddressPool, Link},
    netns::NetworkNamespace,
    tools::Tool,
    veth::Veth,
    SandboxError, ISOLATED_RUNTIME_API,
};

/// One environment's network, not yet given to an environment.
#[derive(Debug)]
pub struct NetworkSlot {
    pub ns: NetworkNamespace,
    /// The Runtime API listener (non-blocking), bound at 127.0.0.1:9001 inside `ns`.
    pub listener: TcpListener,
    pub veth: Veth,
    pub link: Link,
}

impl NetworkSlot {
    /// Makes a slot: a /30, the namespace with its listener, the veth pair. Blocking (runs `ip`). On error
    /// nothing is held.
    pub fn make(ip: &Tool, addresses: &AddressPool) -> Result<Self, SandboxError> {
        let link = addresses.allocate()?;
        let (ns, listener) = match NetworkNamespace::with_listener(ISOLATED_RUNTIME_API) {
            Ok(v) => v,
            Err(source) => {
                addresses.release(&link);
                return Err(SandboxError::Io {
                    what: "creating the network namespace",
                    source,
                });
            }
        };
        match Veth::create(ip, &ns, &link) {
            Ok(veth) => Ok(Self {
                ns,
                listener,
                veth,
                link,
            }),
            Err(e) => {
                addresses.release(&link);
                Err(SandboxError::Network(e))
            }
        }
    }

    /// Removes the veth pair and gives the /30 back; the namespace goes with the last descriptor. Blocking.
    pub fn discard(self, ip: &Tool, addresses: &AddressPool) {
        if let Err(e) = self.veth.remove(ip) {
            tracing::warn!(veth = %self.veth.host_name(), error = %e, "removing a veth pair failed");
        }
        addresses.release(&self.link);
    }
}

#[derive(Debug, Default)]
struct Shelf {
    ready: Vec<NetworkSlot>,
    stopping: bool,
}

#[derive(Debug)]
struct Shared {
    ip: Tool,
    addresses: Arc<AddressPool>,
    size: usize,
    shelf: Mutex<Shelf>,
    /// Signalled when a slot is taken or the pool stops.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Shelf> {
        self.shelf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Up to `size` slots kept ready by a thread of their own.
#[derive(Debug)]
pub struct SlotPool {
    shared: Arc<Shared>,
    filler: Mutex<Option<JoinHandle<()>>>,
}

impl SlotPool {
    /// Starts the pool (and, for `size > 0`, its filler thread).
    pub fn start(ip: Tool, addresses: Arc<AddressPool>, size: usize) -> Self {
        let shared = Arc::new(Shared {
            ip,
            addresses,
            size,
            shelf: Mutex::new(Shelf::default()),
            changed: Condvar::new(),
        });
        let filler = (size > 0)
            .then(|| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name("lmi-netpool".to_owned())
                    .spawn(move || fill(&s))
                    .map_err(|e| tracing::warn!(error = %e, "no network pool thread: slots are made on demand"))
                    .ok()
            })
            .flatten();
        Self {
            shared,
            filler: Mutex::new(filler),
        }
    }

    /// A ready slot, or one made now. Blocking.
    pub fn take(&self) -> Result<NetworkSlot, SandboxError> {
        let ready = self.shared.lock().ready.pop();
        self.shared.changed.notify_one();
        match ready {
            Some(slot) => Ok(slot),
            None => NetworkSlot::make(&self.shared.ip, &self.shared.addresses),
        }
    }

    /// Slots ready now.
    pub fn ready(&self) -> usize {
        self.shared.lock().ready.len()
    }

    /// Stops the filler and removes the slots it made. Blocking (runs `ip`). Idempotent.
    pub fn stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        let filler = self.filler.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = filler {
            let _ = t.join();
        }
        let ready = std::mem::take(&mut self.shared.lock().ready);
        for slot in ready {
            slot.discard(&self.shared.ip, &self.shared.addresses);
        }
    }
}

/// The filler: keeps `size` slots ready until the pool stops. A failure (addresses exhausted, `ip` failing)
/// is logged and retried when the next slot is taken.
fn fill(s: &Shared) {
    loop {
        {
            let mut shelf = s.lock();
            while !shelf.stopping && shelf.ready.len() >= s.size {
                shelf = s.changed.wait(shelf).unwrap_or_else(|p| p.into_inner());
            }
            if shelf.stopping {
                return;
            }
        }
        match NetworkSlot::make(&s.ip, &s.addresses) {
            Ok(slot) => {
                let mut shelf = s.lock();
                if shelf.stopping {
                    drop(shelf);
                    slot.discard(&s.ip, &s.addresses);
                    return;
                }
                shelf.ready.push(slot);
            }
            Err(e) => {
                tracing::warn!(error = %e, "making a network slot ahead failed; retrying when one is taken");
                let shelf = s.lock();
                if shelf.stopping {
                    return;
                }
                drop(s.changed.wait(shelf));
            }
        }
    }
}
