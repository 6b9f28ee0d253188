//! The host's capacity and the ledger of what environments hold of it.
//!
//! The agent plans with whole vCPUs and MiB: detected from the host (or set in the configuration, so operators
//! may overcommit and tests on small machines may run several environments), minus a configured reserve for
//! the agent and the OS. An environment's vCPUs and memory are reserved before anything is started for it and
//! released when its processes and cgroup are gone.

use std::sync::Mutex;

/// What the host offers, after the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCapacity {
    pub vcpus_total: u32,
    pub memory_mib_total: u64,
    pub vcpus_allocatable: u32,
    pub memory_mib_allocatable: u64,
}

impl HostCapacity {
    /// Capacity from totals (detected or configured) and a reserve.
    pub fn new(
        vcpus_total: u32,
        memory_mib_total: u64,
        reserved_vcpus: u32,
        reserved_memory_mib: u64,
    ) -> Self {
        Self {
            vcpus_total,
            memory_mib_total,
            vcpus_allocatable: vcpus_total.saturating_sub(reserved_vcpus),
            memory_mib_allocatable: memory_mib_total.saturating_sub(reserved_memory_mib),
        }
    }

    /// The host's vCPUs and memory as the OS reports them.
    pub fn detect_totals() -> (u32, u64) {
        let vcpus = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        (vcpus, sys.total_memory() / (1024 * 1024))
    }
}

/// A request for capacity was larger than what is left.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the host cannot fit {vcpus} vCPU and {memory_mib} MiB: {vcpus_free} vCPU and {memory_mib_free} MiB of {vcpus_allocatable} vCPU and {memory_mib_allocatable} MiB allocatable are free")]
pub struct InsufficientCapacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub vcpus_free: u32,
    pub memory_mib_free: u64,
    pub vcpus_allocatable: u32,
    pub memory_mib_allocatable: u64,
}

/// vCPUs and memory currently held by environments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocated {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Reserves and releases capacity atomically.
#[derive(Debug)]
pub struct Ledger {
    capacity: HostCapacity,
    allocated: Mutex<Allocated>,
}

impl Ledger {
    pub fn new(capacity: HostCapacity) -> Self {
        Self {
            capacity,
            allocated: Mutex::new(Allocated::default()),
        }
    }

    pub fn capacity(&self) -> HostCapacity {
        self.capacity
    }

    pub fn allocated(&self) -> Allocated {
        *self.allocated.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `vcpus` and `memory_mib`, or says how much is free.
    pub fn reserve(&self, vcpus: u32, memory_mib: u64) -> Result<(), InsufficientCapacity> {
        let mut a = self.allocated.lock().unwrap_or_else(|p| p.into_inner());
        let vcpus_free = self.capacity.vcpus_allocatable.saturating_sub(a.vcpus);
        let memory_mib_free = self
            .capacity
            .memory_mib_allocatable
            .saturating_sub(a.memory_mib);
        if vcpus > vcpus_free || memory_mib > memory_mib_free {
            return Err(InsufficientCapacity {
                vcpus,
                memory_mib,
                vcpus_free,
                memory_mib_free,
                vcpus_allocatable: self.capacity.vcpus_allocatable,
                memory_mib_allocatable: self.capacity.memory_mib_allocatable,
            });
        }
        a.vcpus += vcpus;
        a.memory_mib += memory_mib;
        Ok(())
    }

    /// Gives back what `reserve` took.
    pub fn release(&self, vcpus: u32, memory_mib: u64) {
        let mut a = self.allocated.lock().unwrap_or_else(|p| p.into_inner());
        a.vcpus = a.vcpus.saturating_sub(vcpus);
        a.memory_mib = a.memory_mib.saturating_sub(memory_mib);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_until_full_then_release() {
        let l = Ledger::new(HostCapacity::new(4, 16384, 1, 2048));
        assert_eq!(l.capacity().vcpus_allocatable, 3);
        assert_eq!(l.capacity().memory_mib_allocatable, 14336);
        l.reserve(2, 4096).unwrap();
        let e = l.reserve(2, 2048).unwrap_err();
        assert_eq!((e.vcpus_free, e.memory_mib_free), (1, 10240));
        assert!(e.to_string().contains("cannot fit 2 vCPU"));
        l.reserve(1, 10240).unwrap();
        assert!(l.reserve(0, 1).is_err());
        l.release(2, 4096);
        assert_eq!(
            l.allocated(),
            Allocated {
                vcpus: 1,
                memory_mib: 10240
            }
        );
        l.reserve(2, 4096).unwrap();
    }

    #[test]
    fn reserve_larger_than_host_is_refused() {
        let l = Ledger::new(HostCapacity::new(2, 4096, 0, 0));
        assert!(l.reserve(3, 1).is_err());
        assert!(l.reserve(1, 4097).is_err());
        assert_eq!(l.allocated(), Allocated::default());
    }

    #[test]
    fn detected_totals_are_plausible() {
        let (v, m) = HostCapacity::detect_totals();
        assert!(v >= 1);
        assert!(m >= 64);
    }
}
