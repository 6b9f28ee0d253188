//! Host-wide CPU, memory and pressure, read from procfs (`/proc/stat`, `/proc/meminfo`, `/proc/pressure`).
//!
//! Read directly rather than through `sysinfo`: the sampler needs three small files per period, and
//! `sysinfo`'s refresh walks more than that (see docs/PERFORMANCE.md for the measured cost). `sysinfo` is
//! used once at start-up for the totals (`capacity`).

use std::path::{Path, PathBuf};

use lmi_cgroup::{psi_some_avg10, Pressure};

/// One reading of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostReading {
    /// Busy share of all CPUs since the previous reading (0 on the first one).
    pub cpu: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub pressure: Option<Pressure>,
}

/// Reads the host; keeps the previous CPU counters to turn them into a utilization.
#[derive(Debug)]
pub struct HostReader {
    proc_root: PathBuf,
    prev_cpu: Option<(u64, u64)>,
}

impl Default for HostReader {
    fn default() -> Self {
        Self::new(Path::new("/proc"))
    }
}

impl HostReader {
    /// A reader of the procfs mounted at `proc_root` (tests use a fake tree).
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            prev_cpu: None,
        }
    }

    /// Reads now. Missing or malformed files give zeros (logged once per call at debug), never an error:
    /// the sampler must keep running.
    pub fn read(&mut self) -> HostReading {
        let mut r = HostReading::default();
        if let Some((busy, total)) = std::fs::read_to_string(self.proc_root.join("stat"))
            .ok()
            .and_then(|t| parse_proc_stat(&t))
        {
            if let Some((pb, pt)) = self.prev_cpu {
                let dt = total.saturating_sub(pt);
                if dt > 0 {
                    r.cpu = (busy.saturating_sub(pb) as f64 / dt as f64).clamp(0.0, 1.0);
                }
            }
            self.prev_cpu = Some((busy, total));
        }
        if let Some((total, available)) = std::fs::read_to_string(self.proc_root.join("meminfo"))
            .ok()
            .and_then(|t| parse_meminfo(&t))
        {
            r.memory_total_bytes = total;
            r.memory_used_bytes = total.saturating_sub(available);
        }
        let psi = |f: &str| {
            std::fs::read_to_string(self.proc_root.join("pressure").join(f))
                .ok()
                .and_then(|t| psi_some_avg10(&t))
        };
        r.pressure = psi("cpu").map(|cpu_some| Pressure {
            cpu_some,
            memory_some: psi("memory").unwrap_or(0.0),
            io_some: psi("io").unwrap_or(0.0),
        });
        r
    }
}

/// `(busy jiffies, total jiffies)` from the aggregate `cpu` line (idle and iowait are not busy).
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// `(MemTotal, MemAvailable)` in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|v| v * 1024)
    };
    Some((kib("MemTotal:")?, kib("MemAvailable:")?))
}

/// The local hostname ("" if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_utilization_comes_from_the_delta_of_proc_stat() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("stat"),
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("meminfo"),
            "MemTotal:       1000 kB\nMemFree: 1 kB\nMemAvailable:    250 kB\n",
        )
        .unwrap();
        let mut r = HostReader::new(t.path());
        let first = r.read();
        assert_eq!(first.cpu, 0.0);
        assert_eq!(
            (first.memory_total_bytes, first.memory_used_bytes),
            (1_024_000, 768_000)
        );
        assert_eq!(first.pressure, None);
        // +300 busy, +100 idle
        std::fs::write(t.path().join("stat"), "cpu  250 0 250 900 0 0 0 0 0 0\n").unwrap();
        std::fs::create_dir(t.path().join("pressure")).unwrap();
        std::fs::write(
            t.path().join("pressure/cpu"),
            "some avg10=20.00 avg60=0 avg300=0 total=1\n",
        )
        .unwrap();
        let second = r.read();
        assert!((second.cpu - 0.75).abs() < 1e-9);
        assert_eq!(second.pressure.unwrap().cpu_some, 0.2);
    }

    #[test]
    fn garbage_gives_zeros_not_errors() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("stat"), "cpu  x y z\n").unwrap();
        std::fs::write(t.path().join("meminfo"), "nonsense").unwrap();
        let r = HostReader::new(t.path()).read();
        assert_eq!(r, HostReading::default());
        assert_eq!(parse_proc_stat("cpu 1 2"), None);
    }

    #[test]
    fn the_real_proc_reads() {
        let mut r = HostReader::default();
        let a = r.read();
        assert!(a.memory_total_bytes > 0);
    }
}
