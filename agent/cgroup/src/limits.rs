//! Resource limits applied to one execution-environment cgroup.

use super::error::CgroupError;

/// CPU, memory and process-count limits for one environment cgroup.
///
/// A value of `0` for `cpu_quota_us`, `memory_bytes` or `pids_max` means
/// "no limit" (`max` / `-1` in the kernel files). Swap is always disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// CPU time (µs) the cgroup may use per period; `0` = unlimited.
    pub cpu_quota_us: u64,
    /// CFS period in µs (1 000 ..= 1 000 000; usually 100 000).
    pub cpu_period_us: u64,
    /// Memory limit in bytes; `0` = unlimited.
    pub memory_bytes: u64,
    /// Maximum number of tasks; `0` = unlimited.
    pub pids_max: u64,
}

impl CgroupLimits {
    /// The customary CFS period (100 ms).
    pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
    /// Smallest period and quota the kernel accepts (1 ms).
    pub const MIN_CPU_US: u64 = 1_000;
    /// Largest period the kernel accepts (1 s).
    pub const MAX_CPU_PERIOD_US: u64 = 1_000_000;

    /// Limits for `vcpus` whole vCPUs over the default period.
    pub fn from_vcpus(vcpus: u64, memory_bytes: u64, pids_max: u64) -> Self {
        Self {
            cpu_quota_us: vcpus.saturating_mul(Self::DEFAULT_CPU_PERIOD_US),
            cpu_period_us: Self::DEFAULT_CPU_PERIOD_US,
            memory_bytes,
            pids_max,
        }
    }

    /// Rejects values the kernel would refuse, before anything is written.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let max = i64::MAX as u64;
        if !(Self::MIN_CPU_US..=Self::MAX_CPU_PERIOD_US).contains(&self.cpu_period_us) {
            return Err(CgroupError::InvalidLimits(format!(
                "cpu_period_us {} not in {}..={}",
                self.cpu_period_us,
                Self::MIN_CPU_US,
                Self::MAX_CPU_PERIOD_US
            )));
        }
        if self.cpu_quota_us != 0 && !(Self::MIN_CPU_US..=max).contains(&self.cpu_quota_us) {
            return Err(CgroupError::InvalidLimits(format!(
                "cpu_quota_us {} must be 0 (unlimited) or >= {}",
                self.cpu_quota_us,
                Self::MIN_CPU_US
            )));
        }
        if self.memory_bytes > max || self.pids_max > max {
            return Err(CgroupError::InvalidLimits(
                "memory_bytes and pids_max must fit in an i64".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_vcpus_uses_default_period() {
        let l = CgroupLimits::from_vcpus(2, 8 << 30, 512);
        assert_eq!(l.cpu_quota_us, 200_000);
        assert_eq!(l.cpu_period_us, 100_000);
        assert!(l.validate().is_ok());
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let ok = CgroupLimits::from_vcpus(1, 1 << 30, 10);
        let bad = [
            CgroupLimits {
                cpu_period_us: 999,
                ..ok
            },
            CgroupLimits {
                cpu_period_us: 1_000_001,
                ..ok
            },
            CgroupLimits {
                cpu_quota_us: 10,
                ..ok
            },
            CgroupLimits {
                memory_bytes: u64::MAX,
                ..ok
            },
        ];
        for b in bad {
            assert!(
                matches!(b.validate(), Err(CgroupError::InvalidLimits(_))),
                "{b:?}"
            );
        }
        assert!(CgroupLimits {
            cpu_quota_us: 0,
            memory_bytes: 0,
            pids_max: 0,
            ..ok
        }
        .validate()
        .is_ok());
    }
}
