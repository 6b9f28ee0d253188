//! The agent's own process metrics under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from `/proc/self` at each scrape.
//! A value that cannot be read is left out of the scrape, never guessed.

use std::path::Path;

/// One scrape's worth of process figures; `None` where `/proc` did not answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// The fields of `/proc/<pid>/stat` this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Start time after boot, in clock ticks.
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest[0] is field 3 (state): field N is rest[N - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: num(14)?.checked_add(num(15)?)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
        rss_pages: num(24)?,
    })
}

/// `btime` of `/proc/stat`: the boot time, in seconds since the epoch.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from `/proc/<pid>/limits` (`None` if unlimited or absent).
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Reads the figures of the process whose `/proc` directory is `proc_dir` (`/proc/self` in the agent).
pub fn read(proc_dir: &Path) -> ProcessStats {
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let ticks = sysconf(libc::_SC_CLK_TCK);
    let page = sysconf(libc::_SC_PAGESIZE);
    let stat = read(&proc_dir.join("stat")).and_then(|t| parse_stat(&t));
    let btime = read(Path::new("/proc/stat")).and_then(|t| parse_btime(&t));
    let open_fds = std::fs::read_dir(proc_dir.join("fd"))
        .ok()
        .map(|d| d.count() as f64);
    let max_fds = read(&proc_dir.join("limits"))
        .and_then(|t| parse_max_fds(&t))
        .map(|v| v as f64);
    ProcessStats {
        cpu_seconds: stat.zip(ticks).map(|(s, t)| s.cpu_ticks as f64 / t as f64),
        resident_bytes: stat.zip(page).map(|(s, p)| s.rss_pages as f64 * p as f64),
        virtual_bytes: stat.map(|s| s.vsize_bytes as f64),
        start_time_seconds: stat
            .zip(ticks)
            .zip(btime)
            .map(|((s, t), b)| b as f64 + s.start_ticks as f64 / t as f64),
        open_fds,
        max_fds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as a process may name itself.
        let text = "4242 (lmi (agent) x) S 1 4242 4242 0 -1 4194560 1200 0 3 0 250 75 0 0 20 0 9 0 \
                    123456 987654321 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 325,
                start_ticks: 123456,
                vsize_bytes: 987654321,
                rss_pages: 3000,
            })
        );
        assert_eq!(parse_stat("4242 (trunc) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn btime_and_the_soft_open_files_limit_are_read() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1764900000\nprocesses 9\n"),
            Some(1_764_900_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_is_read_from_proc_self() {
        let s = read(Path::new("/proc/self"));
        let start = s.start_time_seconds.unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // btime is whole seconds and the start time is in ticks: within a second of the truth.
        assert!(start <= now + 1.0, "start {start} after now {now}");
        assert!(s.resident_bytes.unwrap() > 0.0);
        assert!(s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        let open = s.open_fds.unwrap();
        assert!(open >= 3.0 && open <= s.max_fds.unwrap(), "{s:?}");
        assert!(s.cpu_seconds.unwrap() >= 0.0);
    }
}
