//! What a cgroup uses right now: CPU time, memory working set, and pressure stall information.

use std::path::Path;

use super::{fsutil, CgroupError};

/// A point-in-time reading of a cgroup's consumption.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupUsage {
    /// Cumulative CPU time of every task in the cgroup (nanoseconds).
    pub cpu_usage_ns: u64,
    /// Memory in use minus inactive file cache (what the OOM killer looks at, roughly), bytes.
    pub memory_working_set_bytes: u64,
    /// Pressure stall information, where the kernel offers it for this cgroup.
    pub pressure: Option<Pressure>,
}

/// `some avg10` of the three PSI files, as fractions (0..1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub cpu_some: f64,
    pub memory_some: f64,
    pub io_some: f64,
}

/// `avg10` of the `some` line of a PSI file (`some avg10=1.23 avg60=… total=…`), as a fraction.
pub fn psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let value = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?;
    value
        .parse::<f64>()
        .ok()
        .map(|p| (p / 100.0).clamp(0.0, 1.0))
}

/// Reads `cpu.pressure`, `memory.pressure` and `io.pressure` of a cgroup2 directory (None if absent).
pub(crate) fn read_pressure(dir: &Path) -> Option<Pressure> {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| psi_some_avg10(&t))
    };
    Some(Pressure {
        cpu_some: read("cpu.pressure")?,
        memory_some: read("memory.pressure").unwrap_or(0.0),
        io_some: read("io.pressure").unwrap_or(0.0),
    })
}

/// Usage minus the `inactive_file` (v2) / `total_inactive_file` (v1) line of memory.stat, floored at 0.
pub(crate) fn working_set(
    usage: u64,
    stat_file: &Path,
    inactive_key: &str,
) -> Result<u64, CgroupError> {
    let stat = fsutil::read_string(stat_file)?;
    let inactive = fsutil::keyed_u64(&stat, inactive_key, stat_file).unwrap_or(0);
    Ok(usage.saturating_sub(inactive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_lines_parse_to_fractions() {
        let t = "some avg10=12.50 avg60=3.00 avg300=0.10 total=12345\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(psi_some_avg10(t), Some(0.125));
        assert_eq!(psi_some_avg10("full avg10=1.00"), None);
        assert_eq!(psi_some_avg10("some avg10=abc"), None);
        assert_eq!(psi_some_avg10(""), None);
        assert_eq!(psi_some_avg10("some avg10=250.0"), Some(1.0));
    }
}
