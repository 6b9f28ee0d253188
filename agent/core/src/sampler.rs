//! Periodic measurement of every environment and of the host, and the saturation decisions admission uses.
//!
//! Each tick reads, per environment, its cgroup's CPU time and memory in use and its /tmp usage (two small
//! counter files and one `fstatvfs`: cost linear in environments), and the host's /proc figures once. CPU
//! utilization is the CPU time used since the previous tick over the environment's vCPUs × elapsed time.
//!
//! Freshness: the figures admission decides on are read every tick. The costlier files (`memory.stat`, which
//! the kernel generates from many per-CPU figures, and the three PSI files) are read for each environment
//! once per [`SLOW_REFRESH`], in a slot of that round given at first sight to the least used one, so that
//! each tick carries an even share of those reads instead of all of them. Between two reads of `memory.stat`
//! the working set is the memory in use this tick minus the inactive file cache last read; but whenever the
//! memory in use alone is over the memory threshold (the only case in which the working set could be), the
//! tick reads `memory.stat` for that environment too, so the memory saturation is decided on figures of the
//! same tick as before. PSI is reported, never decided on, and is itself a 10 s average (`avg10`).
//!
//! Smoothing: an exponentially weighted moving average with time constant τ (`smoothing_seconds`):
//! `s ← s + α (x − s)` with `α = 1 − e^(−Δt/τ)`, which weights samples by age, not by count, so changing the
//! period does not change the response. The raw last sample is kept beside it. Admission uses the smoothed CPU
//! (a burst of one period is not saturation) but the raw memory and disk figures (memory near its limit is an
//! OOM kill away; a full /tmp fails writes now).

use std::{
    collections::HashMap,
    fs::File,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use crate::capacity::{Allocated, HostCapacity};
use crate::config::UtilizationConfig;
use crate::environment::{Environment, Saturation, State, Usage, Util};
use crate::host::HostReader;
use lmi_cgroup::{Pressure, UsageParts};
use lmi_sandbox::ephemeral;

/// One smoothing step (see the module documentation).
pub fn ewma(prev: Option<f64>, sample: f64, dt_seconds: f64, tau_seconds: f64) -> f64 {
    match prev {
        None => sample,
        Some(_) if tau_seconds <= 0.0 => sample,
        Some(p) => {
            let alpha = 1.0 - (-dt_seconds.max(0.0) / tau_seconds).exp();
            p + alpha * (sample - p)
        }
    }
}

fn step(prev: Util, sample: f64, first: bool, dt: f64, tau: f64) -> Util {
    Util {
        last: sample,
        smoothed: ewma((!first).then_some(prev.smoothed), sample, dt, tau),
    }
}

/// The host at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSnapshot {
    pub cpu: Util,
    pub memory: Util,
    pub disk: Util,
    pub pressure: Option<Pressure>,
    pub capacity: Option<HostCapacity>,
    pub allocated: Allocated,
    pub draining: bool,
}

/// One environment at one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSnapshot {
    pub id: String,
    pub function: String,
    pub version: String,
    pub state: State,
    pub usage: Usage,
    pub saturation: Saturation,
    pub in_flight: u32,
    pub max_concurrency: u32,
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// Everything one tick measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub at: SystemTime,
    pub host: HostSnapshot,
    pub environments: Vec<EnvSnapshot>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            at: SystemTime::UNIX_EPOCH,
            host: HostSnapshot::default(),
            environments: Vec::new(),
        }
    }
}

/// How often each environment's `memory.stat` (for the inactive file cache) and PSI files are read, at most
/// (see the module documentation).
pub const SLOW_REFRESH: Duration = Duration::from_secs(10);

/// What the sampler keeps of one environment between ticks.
#[derive(Debug)]
struct Tracked {
    /// CPU time and when it was read.
    cpu: (u64, Instant),
    /// The inactive file cache of the last `memory.stat` read, bytes.
    inactive_file: u64,
    /// The last PSI read.
    pressure: Option<Pressure>,
    /// The tick of each round that reads the slow files (given at the end of the tick of first sight).
    slot: Option<usize>,
    /// The /tmp directory, held open for `fstatvfs` while the environment serves (see `measure`).
    tmp: Option<File>,
    /// The last tick that listed the environment.
    seen: u64,
}

/// Keeps what is needed between ticks.
#[derive(Debug)]
pub struct Sampler {
    cfg: UtilizationConfig,
    host: HostReader,
    state_dir: PathBuf,
    envs: HashMap<String, Tracked>,
    /// Environments per slot of a round of [`SLOW_REFRESH`] (one slot a tick).
    slots: Vec<u32>,
    /// Environments first seen this tick, given a slot once those that left have freed theirs.
    unplaced: Vec<String>,
    ticks: u64,
    prev_host: Option<(HostSnapshot, Instant)>,
}

impl Sampler {
    pub fn new(cfg: UtilizationConfig, host: HostReader, state_dir: PathBuf) -> Self {
        let period = cfg.sample_interval_ms.max(1);
        let round = u64::try_from(SLOW_REFRESH.as_millis())
            .unwrap_or(u64::MAX)
            .div_ceil(period)
            .max(1);
        Self {
            cfg,
            host,
            state_dir,
            envs: HashMap::new(),
            slots: vec![0; usize::try_from(round).unwrap_or(1)],
            unplaced: Vec::new(),
            ticks: 0,
            prev_host: None,
        }
    }

    /// Measures every live environment (updating its usage and saturation) and the host.
    pub fn tick(
        &mut self,
        envs: &[Arc<Environment>],
        capacity: HostCapacity,
        allocated: Allocated,
        draining: bool,
        now: Instant,
    ) -> Snapshot {
        let tau = self.cfg.smoothing_seconds;
        self.ticks = self.ticks.wrapping_add(1);
        let mut out = Vec::with_capacity(envs.len());
        for env in envs {
            let state = env.state();
            if matches!(state, State::Failed | State::Terminated) || env.is_cleaned() {
                continue;
            }
            if let Some((usage, saturation)) = self.measure(env, state, now, tau) {
                env.set_usage(usage, saturation);
            }
            out.push(EnvSnapshot {
                id: env.id.clone(),
                function: env.spec.function_name.clone(),
                version: env.spec.version.clone(),
                state,
                usage: env.usage(),
                saturation: env.saturation(),
                in_flight: env.broker.in_flight(),
                max_concurrency: env.broker.max(),
                vcpus: env.spec.vcpus,
                memory_mib: env.spec.memory_mib,
            });
        }
        let (ticks, slots) = (self.ticks, &mut self.slots);
        self.envs.retain(|_, t| {
            let keep = t.seen == ticks;
            if let (false, Some(slot)) = (keep, t.slot) {
                slots[slot] = slots[slot].saturating_sub(1);
            }
            keep
        });
        for id in self.unplaced.drain(..) {
            if let Some(t) = self.envs.get_mut(&id) {
                // The least used slot, so that the slow reads stay even as environments come and go.
                let slot = slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, n)| **n)
                    .map_or(0, |(i, _)| i);
                slots[slot] = slots[slot].saturating_add(1);
                t.slot = Some(slot);
            }
        }

        let reading = self.host.read();
        let disk = ephemeral::usage_of(&self.state_dir)
            .map(|(used, size)| ratio(used, size))
            .unwrap_or(0.0);
        let mem = ratio(reading.memory_used_bytes, reading.memory_total_bytes);
        let (prev, dt, first) = match &self.prev_host {
            Some((p, t)) => (p.clone(), now.duration_since(*t).as_secs_f64(), false),
            None => (HostSnapshot::default(), 0.0, true),
        };
        let host = HostSnapshot {
            cpu: step(prev.cpu, reading.cpu, first, dt, tau),
            memory: step(prev.memory, mem, first, dt, tau),
            disk: step(prev.disk, disk, first, dt, tau),
            pressure: reading.pressure,
            capacity: Some(capacity),
            allocated,
            draining,
        };
        self.prev_host = Some((host.clone(), now));
        Snapshot {
            at: SystemTime::now(),
            host,
            environments: out,
        }
    }

    fn measure(
        &mut self,
        env: &Environment,
        state: State,
        now: Instant,
        tau: f64,
    ) -> Option<(Usage, Saturation)> {
        let round = self.slots.len() as u64;
        let (first, due) = match self.envs.get(&env.id) {
            None => (true, true),
            Some(t) => (
                false,
                t.slot.is_some_and(|s| self.ticks % round == s as u64),
            ),
        };
        let parts = if due {
            UsageParts::ALL
        } else {
            UsageParts::COUNTERS
        };
        let limit = env.spec.memory_bytes();
        let reading = env.cgroup.read_usage(parts).and_then(|r| {
            // Memory in use over the threshold: the working set may be too, so it is read now.
            if r.inactive_file_bytes.is_none()
                && ratio(r.memory_usage_bytes, limit) > self.cfg.memory_threshold
            {
                env.cgroup
                    .read_usage(UsageParts {
                        memory_stat: true,
                        pressure: false,
                    })
                    .map(|fresh| lmi_cgroup::CgroupUsage {
                        pressure: r.pressure,
                        ..fresh
                    })
            } else {
                Ok(r)
            }
        });
        let reading = match reading {
            Ok(r) => r,
            Err(e) => {
                // Removed under us (the environment is stopping) or unreadable: keep the last figures.
                tracing::debug!(env = %env.id, error = %e, "cgroup usage unreadable");
                if let Some(t) = self.envs.get_mut(&env.id) {
                    t.seen = self.ticks;
                }
                return None;
            }
        };
        let tracked = match self.envs.get_mut(&env.id) {
            Some(t) => t,
            None => {
                self.unplaced.push(env.id.clone());
                self.envs.entry(env.id.clone()).or_insert(Tracked {
                    cpu: (reading.cpu_usage_ns, now),
                    inactive_file: 0,
                    pressure: None,
                    slot: None,
                    tmp: None,
                    seen: self.ticks,
                })
            }
        };
        tracked.seen = self.ticks;
        // /tmp is held open only while the environment serves: its clean-up unmounts it (lazily, so a
        // descriptor left open would keep the tmpfs and its pages until the next tick closed it).
        if matches!(state, State::Initializing | State::Ready) {
            if first {
                tracked.tmp = env.tmp.as_ref().and_then(|t| File::open(t.path()).ok());
            }
        } else {
            tracked.tmp = None;
        }
        let prev = env.usage();
        let (cpu_sample, dt) = if first {
            (0.0, 0.0)
        } else {
            let (ns, t) = tracked.cpu;
            let dt = now.duration_since(t).as_secs_f64();
            let used = reading.cpu_usage_ns.saturating_sub(ns) as f64 / 1e9;
            let capacity = dt * f64::from(env.spec.vcpus.max(1));
            let sample = if capacity > 0.0 {
                (used / capacity).clamp(0.0, 1.0)
            } else {
                0.0
            };
            (sample, dt)
        };
        tracked.cpu = (reading.cpu_usage_ns, now);
        if let Some(inactive) = reading.inactive_file_bytes {
            tracked.inactive_file = inactive;
        }
        if parts.pressure {
            tracked.pressure = reading.pressure;
        }
        let working_set = reading
            .memory_usage_bytes
            .saturating_sub(tracked.inactive_file);
        let memory = ratio(working_set, limit);
        let tmp = match (&tracked.tmp, &env.tmp) {
            (Some(dir), _) => ephemeral::usage_of_open(dir).ok(),
            (None, Some(t)) => t.usage().ok(),
            (None, None) => None,
        };
        let disk = tmp.map(|(used, size)| ratio(used, size)).unwrap_or(0.0);
        let usage = Usage {
            cpu: step(prev.cpu, cpu_sample, first, dt, tau),
            memory: step(prev.memory, memory, first, dt, tau),
            disk: step(prev.disk, disk, first, dt, tau),
            pressure: tracked.pressure,
        };
        let saturation = Saturation::NONE
            .with(
                Saturation::CPU,
                !first && usage.cpu.smoothed > self.cfg.cpu_threshold,
            )
            .with(
                Saturation::MEMORY,
                usage.memory.last > self.cfg.memory_threshold,
            )
            .with(Saturation::DISK, usage.disk.last > self.cfg.disk_threshold);
        Some((usage, saturation))
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).clamp(0.0, 1.0)
    }
}

/// How long the sampler's ticks took (the blocking work of [`Sampler::tick`] with the environments' listing),
/// for the agent's own metrics: a count, the wall-time sum and longest, and the CPU time of the thread that
/// ran them (wall time on a busy host includes waiting for a CPU), in nanoseconds.
#[derive(Debug, Default)]
pub struct TickTimes {
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
    cpu_sum_ns: AtomicU64,
}

/// What [`TickTimes`] holds, read at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickTimesSnapshot {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub cpu_sum_ns: u64,
}

impl TickTimes {
    /// One tick: its wall time and the CPU time its thread spent.
    pub fn record(&self, took: std::time::Duration, cpu: std::time::Duration) {
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns(took), Ordering::Relaxed);
        self.max_ns.fetch_max(ns(took), Ordering::Relaxed);
        self.cpu_sum_ns.fetch_add(ns(cpu), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> TickTimesSnapshot {
        TickTimesSnapshot {
            count: self.count.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            max_ns: self.max_ns.load(Ordering::Relaxed),
            cpu_sum_ns: self.cpu_sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// The CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`: the scheduler's count brought
/// up to now, where `getrusage` and `/proc/thread-self/schedstat` lag until the next tick); zero if the
/// kernel refuses.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec through a pointer to a live, owned, aligned value.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::environment::testing::environment_in;
    use lmi_cgroup::{fake::FakeCgroup, CgroupUsage};

    /// `n` environments in fake cgroups whose figures the test sets, and a sampler of period `period_ms`.
    fn host(n: usize, period_ms: u64) -> (Vec<Arc<FakeCgroup>>, Vec<Arc<Environment>>, Sampler) {
        let cgroups: Vec<_> = (0..n)
            .map(|i| Arc::new(FakeCgroup::new(&format!("f{i}"))))
            .collect();
        let envs = cgroups
            .iter()
            .enumerate()
            .map(|(i, c)| environment_in(&format!("f{i}"), 4, c.clone()))
            .collect();
        let cfg = UtilizationConfig {
            sample_interval_ms: period_ms,
            ..UtilizationConfig::default()
        };
        let dir = std::env::temp_dir();
        (cgroups, envs, Sampler::new(cfg, HostReader::default(), dir))
    }

    fn tick(s: &mut Sampler, envs: &[Arc<Environment>], at: Instant) -> Snapshot {
        s.tick(
            envs,
            HostCapacity::new(64, 262_144, 0, 0),
            Allocated::default(),
            false,
            at,
        )
    }

    fn stat_reads(c: &FakeCgroup) -> usize {
        c.memory_stat_reads.load(Ordering::Relaxed)
    }

    /// Ticks at `t0 + k` s for each k and asserts that each tick read `memory.stat` of exactly two of
    /// `cgroups` (an even share of a round).
    fn two_slow_reads_a_tick(
        s: &mut Sampler,
        envs: &[Arc<Environment>],
        cgroups: &[Arc<FakeCgroup>],
        t0: Instant,
        ks: std::ops::RangeInclusive<u64>,
    ) {
        for k in ks {
            let before: Vec<usize> = cgroups.iter().map(|c| stat_reads(c)).collect();
            tick(s, envs, t0 + Duration::from_secs(k));
            let read = cgroups
                .iter()
                .zip(&before)
                .filter(|(c, b)| stat_reads(c) > **b)
                .count();
            assert_eq!(read, 2, "tick {k}");
        }
    }

    #[test]
    fn the_slow_files_are_read_at_first_sight_then_once_a_round_in_even_shares() {
        // 1 s period: a round of 10 ticks; 20 environments, so 2 of them read memory.stat and PSI a tick.
        let round = SLOW_REFRESH.as_secs();
        assert_eq!(round, 10);
        let (cgroups, mut envs, mut s) = host(20, 1000);
        let t0 = Instant::now();
        tick(&mut s, &envs, t0);
        assert!(cgroups
            .iter()
            .all(|c| stat_reads(c) == 1 && c.pressure_reads.load(Ordering::Relaxed) == 1));
        two_slow_reads_a_tick(&mut s, &envs, &cgroups, t0, 1..=round);
        // One round: each environment read once more, PSI with memory.stat.
        for c in &cgroups {
            assert_eq!(stat_reads(c), 2);
            assert_eq!(c.pressure_reads.load(Ordering::Relaxed), 2);
        }

        // Two environments leave; the two that come take their free slots, so the shares stay even.
        let left = [envs.remove(3), envs.remove(3)];
        let newcomers: Vec<Arc<FakeCgroup>> = (0..2)
            .map(|i| Arc::new(FakeCgroup::new(&format!("g{i}"))))
            .collect();
        envs.extend(
            newcomers
                .iter()
                .enumerate()
                .map(|(i, c)| environment_in(&format!("g{i}"), 4, c.clone())),
        );
        drop(left);
        let mut all: Vec<Arc<FakeCgroup>> = cgroups.clone();
        all.remove(3);
        all.remove(3);
        all.extend(newcomers.iter().cloned());
        tick(&mut s, &envs, t0 + Duration::from_secs(round + 1));
        two_slow_reads_a_tick(&mut s, &envs, &all, t0, round + 2..=2 * round + 1);
    }

    #[test]
    fn memory_in_use_over_the_threshold_reads_the_working_set_in_the_same_tick() {
        // 100 ms period: a round of 100 ticks, so no slow read is due in the ticks below.
        let (cgroups, envs, mut s) = host(1, 100);
        let (c, env) = (&cgroups[0], &envs[0]);
        let limit = env.spec.memory_bytes();
        let set = |used: u64, inactive: u64| {
            *c.usage.lock().unwrap() = CgroupUsage {
                memory_usage_bytes: used,
                inactive_file_bytes: Some(inactive),
                ..CgroupUsage::default()
            };
        };
        // 95% in use, half of it inactive file cache: a 45% working set, not saturated.
        set(limit / 100 * 95, limit / 2);
        let t0 = Instant::now();
        tick(&mut s, &envs, t0);
        assert!(!env.saturation().contains(Saturation::MEMORY));
        assert!((env.usage().memory.last - 0.45).abs() < 0.01);

        // The cache becomes anonymous memory: the next tick sees it (memory in use is over 0.9).
        set(limit / 100 * 95, 0);
        let reads = stat_reads(c);
        tick(&mut s, &envs, t0 + Duration::from_millis(100));
        assert_eq!(stat_reads(c), reads + 1);
        assert!(env.saturation().contains(Saturation::MEMORY));
        assert!((env.usage().memory.last - 0.95).abs() < 0.01);

        // Under the threshold, memory.stat waits for its slot: the working set is the memory in use minus
        // the inactive cache last read (0 here), and cannot be saturated.
        set(limit / 100 * 80, limit / 2);
        let reads = stat_reads(c);
        tick(&mut s, &envs, t0 + Duration::from_millis(200));
        assert_eq!(stat_reads(c), reads);
        assert!(!env.saturation().contains(Saturation::MEMORY));
        assert!((env.usage().memory.last - 0.80).abs() < 0.01);
    }

    #[test]
    fn pressure_is_held_from_one_read_of_the_psi_files_to_the_next() {
        let (cgroups, envs, mut s) = host(1, 1000);
        let (c, env) = (&cgroups[0], &envs[0]);
        let set = |cpu_some: f64| {
            c.usage.lock().unwrap().pressure = Some(Pressure {
                cpu_some,
                ..Pressure::default()
            });
        };
        set(0.25);
        let t0 = Instant::now();
        tick(&mut s, &envs, t0);
        set(0.5);
        let mut seen = Vec::new();
        for k in 1..=SLOW_REFRESH.as_secs() {
            tick(&mut s, &envs, t0 + Duration::from_secs(k));
            seen.push(env.usage().pressure.map(|p| p.cpu_some));
        }
        // One read in the round of ticks; the figure before it is the first read's.
        let changed = seen.iter().position(|p| *p == Some(0.5)).unwrap();
        assert!(seen[..changed].iter().all(|p| *p == Some(0.25)), "{seen:?}");
        assert!(seen[changed..].iter().all(|p| *p == Some(0.5)), "{seen:?}");
        assert_eq!(c.pressure_reads.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ewma_weights_by_time_not_by_count() {
        assert_eq!(ewma(None, 0.7, 1.0, 5.0), 0.7);
        assert_eq!(ewma(Some(0.1), 0.7, 1.0, 0.0), 0.7);
        // one 2 s step equals two 1 s steps
        let one = ewma(Some(0.0), 1.0, 2.0, 5.0);
        let two = ewma(Some(ewma(Some(0.0), 1.0, 1.0, 5.0)), 1.0, 1.0, 5.0);
        assert!((one - two).abs() < 1e-12);
        // after τ, 63% of a step
        assert!((ewma(Some(0.0), 1.0, 5.0, 5.0) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
    }

    #[test]
    fn tick_times_count_sum_and_keep_the_longest() {
        let t = TickTimes::default();
        assert_eq!(t.snapshot(), TickTimesSnapshot::default());
        for us in [300, 900, 200] {
            t.record(
                std::time::Duration::from_micros(us),
                std::time::Duration::from_micros(us / 2),
            );
        }
        assert_eq!(
            t.snapshot(),
            TickTimesSnapshot {
                count: 3,
                sum_ns: 1_400_000,
                max_ns: 900_000,
                cpu_sum_ns: 700_000,
            }
        );
    }

    #[test]
    fn thread_cpu_time_moves_with_work_done_on_the_thread() {
        let before = thread_cpu_time();
        assert!(before > std::time::Duration::ZERO);
        // Spin 5 ms of wall time: the thread runs for some of it, however busy the host.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() > before);
    }
}
