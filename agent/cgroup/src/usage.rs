//! What a cgroup uses right now: CPU time, memory in use and its inactive file cache (hence the working set),
//! and pressure stall information.
//!
//! The sampler reads every environment's usage every period, so the files are opened once per cgroup
//! ([`UsageFiles`]) and re-read with `pread(2)` at offset 0 (cgroupfs regenerates a file's content on every
//! read from its start) into a buffer on the stack: a reading makes no `open`, `close` or allocation. A
//! pressure file the kernel does not offer is looked for once, not every period.
//!
//! The kernel's cost differs by file: the two counters (CPU time, memory in use) are a few numbers, while
//! `memory.stat` and the PSI files are generated from many per-CPU figures on each read (on this project's
//! development host, cgroup v1, about 9 µs for `memory.stat` and 3 µs for each PSI file against 1 µs for a
//! counter; `docs/PERFORMANCE.md`, "Sampler tick"). So a reading says which of those it wants
//! ([`UsageParts`]) and the sampler asks for them only when it needs them.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
};

use super::{fsutil, CgroupError};

/// Which of a cgroup's costlier usage files one reading reads; the CPU time and memory in use always are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageParts {
    /// `memory.stat`, for the inactive file cache (so the working set).
    pub memory_stat: bool,
    /// The three PSI files.
    pub pressure: bool,
}

impl UsageParts {
    /// Every file.
    pub const ALL: Self = Self {
        memory_stat: true,
        pressure: true,
    };
    /// The CPU time and memory in use only.
    pub const COUNTERS: Self = Self {
        memory_stat: false,
        pressure: false,
    };
}

/// A point-in-time reading of a cgroup's consumption.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupUsage {
    /// Cumulative CPU time of every task in the cgroup (nanoseconds).
    pub cpu_usage_ns: u64,
    /// Memory charged to the cgroup, page cache included (`memory.usage_in_bytes` / `memory.current`), bytes.
    pub memory_usage_bytes: u64,
    /// The inactive file cache (`memory.stat`), bytes; `None` when the reading did not read `memory.stat`.
    pub inactive_file_bytes: Option<u64>,
    /// Pressure stall information, where the kernel offers it for this cgroup; `None` also when the reading
    /// did not read the PSI files.
    pub pressure: Option<Pressure>,
}

impl CgroupUsage {
    /// Memory in use minus the inactive file cache (what the OOM killer looks at, roughly), bytes; `None` when
    /// the reading did not read `memory.stat`.
    pub fn memory_working_set_bytes(&self) -> Option<u64> {
        self.inactive_file_bytes
            .map(|inactive| self.memory_usage_bytes.saturating_sub(inactive))
    }
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

/// Where one cgroup's usage is read from (host paths; v1 spreads them over hierarchies).
#[derive(Debug, Clone)]
pub(crate) struct UsagePaths {
    /// Cumulative CPU time: `cpuacct.usage` (v1, ns) or `cpu.stat` (v2, its `usage_usec` line).
    pub cpu: PathBuf,
    /// Memory in use: `memory.usage_in_bytes` (v1) or `memory.current` (v2).
    pub memory: PathBuf,
    /// `memory.stat`, whose `inactive_key` line is subtracted from memory in use.
    pub memory_stat: PathBuf,
    pub inactive_key: &'static str,
    /// The cgroup2 directory holding the PSI files, if any (v1 hosts: the controller-less unified tree).
    pub pressure_dir: Option<PathBuf>,
}

/// How [`UsageFiles::read`] turns the CPU file into nanoseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CpuFormat {
    /// One number, nanoseconds (`cpuacct.usage`).
    Nanoseconds,
    /// A keyed file whose `usage_usec` line is microseconds (`cpu.stat`).
    UsageUsec,
}

/// One cgroup's usage files, opened on first use and kept open until [`UsageFiles::close`] (see the module
/// documentation).
#[derive(Debug)]
pub(crate) struct UsageFiles {
    paths: UsagePaths,
    cpu_format: CpuFormat,
    open: Mutex<Option<Opened>>,
}

#[derive(Debug)]
struct Opened {
    cpu: File,
    memory: File,
    memory_stat: File,
    /// cpu, memory, io; `None` for a file the kernel does not offer (looked for once per opening).
    pressure: [Option<File>; 3],
}

/// Large enough for any of the files read here (`memory.stat` is the longest, about 2 KiB on v1 and v2).
const READ_BUFFER: usize = 8192;

/// Large enough for the counters and a PSI file (a few numbers each), so that a reading without `memory.stat`
/// does not clear [`READ_BUFFER`] bytes of stack.
const SMALL_BUFFER: usize = 512;

fn open(path: &Path) -> Result<File, CgroupError> {
    File::open(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `file` from its start into `buf`; the text read. A file longer than the buffer is read whole.
fn pread<'a>(
    file: &File,
    path: &Path,
    buf: &'a mut [u8],
    spill: &'a mut String,
) -> Result<&'a str, CgroupError> {
    let err = |source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    };
    let n = file.read_at(buf, 0).map_err(err)?;
    if n == buf.len() {
        *spill = fsutil::read_string(path)?;
        return Ok(spill.as_str());
    }
    std::str::from_utf8(&buf[..n]).map_err(|_| CgroupError::Parse {
        what: path.display().to_string(),
        reason: "not UTF-8".to_owned(),
    })
}

impl UsageFiles {
    pub(crate) fn new(paths: UsagePaths, cpu_format: CpuFormat) -> Self {
        Self {
            paths,
            cpu_format,
            open: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Opened>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_all(&self) -> Result<Opened, CgroupError> {
        let p = &self.paths;
        let psi = |name: &str| -> Result<Option<File>, CgroupError> {
            let Some(dir) = &p.pressure_dir else {
                return Ok(None);
            };
            let path = dir.join(name);
            match File::open(&path) {
                Ok(f) => Ok(Some(f)),
                // The kernel does not offer it: not looked for again while these files are open.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(CgroupError::Read { path, source }),
            }
        };
        Ok(Opened {
            cpu: open(&p.cpu)?,
            memory: open(&p.memory)?,
            memory_stat: open(&p.memory_stat)?,
            pressure: [
                psi("cpu.pressure")?,
                psi("memory.pressure")?,
                psi("io.pressure")?,
            ],
        })
    }

    /// Closes the files (the cgroup is being removed); a later reading opens them again.
    pub(crate) fn close(&self) {
        self.lock().take();
    }

    /// The cgroup's usage now: the counters, and the files `parts` asks for.
    pub(crate) fn read(&self, parts: UsageParts) -> Result<CgroupUsage, CgroupError> {
        let mut guard = self.lock();
        let o = match &mut *guard {
            Some(o) => o,
            none => none.insert(self.open_all()?),
        };
        let p = &self.paths;
        let mut buf = [0u8; SMALL_BUFFER];
        let mut spill = String::new();

        let text = pread(&o.cpu, &p.cpu, &mut buf, &mut spill)?;
        let cpu_usage_ns = match self.cpu_format {
            CpuFormat::Nanoseconds => fsutil::parse_u64(text, &p.cpu)?,
            CpuFormat::UsageUsec => {
                fsutil::keyed_u64(text, "usage_usec", &p.cpu)?.saturating_mul(1000)
            }
        };
        let text = pread(&o.memory, &p.memory, &mut buf, &mut spill)?;
        let memory_usage_bytes = fsutil::parse_u64(text, &p.memory)?;
        let inactive_file_bytes = if parts.memory_stat {
            let mut large = [0u8; READ_BUFFER];
            let text = pread(&o.memory_stat, &p.memory_stat, &mut large, &mut spill)?;
            Some(fsutil::keyed_u64(text, p.inactive_key, &p.memory_stat).unwrap_or(0))
        } else {
            None
        };

        let mut some = [None; 3];
        let offered = if parts.pressure { &o.pressure[..] } else { &[] };
        for (i, file) in offered.iter().enumerate() {
            if let Some(f) = file {
                some[i] = f
                    .read_at(&mut buf, 0)
                    .ok()
                    .and_then(|n| std::str::from_utf8(&buf[..n]).ok())
                    .and_then(psi_some_avg10);
            }
        }
        let pressure = some[0].map(|cpu_some| Pressure {
            cpu_some,
            memory_some: some[1].unwrap_or(0.0),
            io_some: some[2].unwrap_or(0.0),
        });
        Ok(CgroupUsage {
            cpu_usage_ns,
            memory_usage_bytes,
            inactive_file_bytes,
            pressure,
        })
    }
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
