//! What the kernel says about a process: CPU time (`/proc/PID/stat`), resident memory and its peak
//! (`/proc/PID/status`), and the process behind a Unix socket (`SO_PEERCRED`).

use std::{io, path::Path, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

/// User and system CPU time of every thread of a process, living or exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat` times.
fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Parses `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line.
pub fn parse_stat(stat: &str, ticks_per_second: u64) -> Option<CpuTime> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields after its last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let (utime, stime) = (ticks(11)?, ticks(12)?);
    let to_duration =
        |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000) / ticks_per_second);
    Some(CpuTime {
        user: to_duration(utime),
        system: to_duration(stime),
    })
}

/// The CPU time of process `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat(&stat, ticks_per_second()).with_context(|| format!("{path} has no utime/stime"))
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak since the process started (or since its peak was reset).
    pub peak_rss_kib: u64,
}

/// Parses `VmRSS` and `VmHWM` of a `/proc/PID/status` text.
pub fn parse_status(status: &str) -> Option<Memory> {
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: kib("VmRSS:")?,
        peak_rss_kib: kib("VmHWM:")?,
    })
}

/// The resident memory of process `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status(&status).with_context(|| format!("{path} has no VmRSS/VmHWM"))
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (writes 5 to `/proc/PID/clear_refs`).
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5")
        .with_context(|| format!("writing 5 to {path} (needs the agent's user or root)"))
}

/// The process listening on the Unix socket at `path` (its credentials as of `listen`).
pub fn socket_peer_pid(path: &Path) -> io::Result<u32> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(io::Error::from)?;
    u32::try_from(cred.pid()).map_err(|_| io::Error::other("the socket's peer has no pid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parentheses() {
        let line = "4242 (tokio (rt) worker) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0 1000 \
                    100000000 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let t = parse_stat(line, 100).unwrap();
        assert_eq!(t.user, Duration::from_millis(2500));
        assert_eq!(t.system, Duration::from_millis(750));
        assert_eq!(t.total(), Duration::from_millis(3250));
        assert!(parse_stat("4242 (x) S 1 2", 100).is_none());
    }

    #[test]
    fn status_memory_lines() {
        let status =
            "Name:\tlmi-agent\nVmPeak:\t  900000 kB\nVmHWM:\t   15360 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 12288,
                peak_rss_kib: 15360
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        let me = std::process::id();
        assert!(cpu_time(me).is_ok());
        let m = memory(me).unwrap();
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib);
    }

    #[test]
    fn the_peer_of_a_unix_socket_is_its_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(socket_peer_pid(&path).unwrap(), std::process::id());
    }
}
