//! Periodic measurement of every environment and of the host, and the saturation decisions admission uses.
//!
//! Each tick reads, per environment, its cgroup's CPU time and memory working set and its /tmp usage (a few
//! small files: cost linear in environments), and the host's /proc figures once. CPU utilization is the CPU
//! time used since the previous tick over the environment's vCPUs × elapsed time.
//!
//! Smoothing: an exponentially weighted moving average with time constant τ (`smoothing_seconds`):
//! `s ← s + α (x − s)` with `α = 1 − e^(−Δt/τ)`, which weights samples by age, not by count, so changing the
//! period does not change the response. The raw last sample is kept beside it. Admission uses the smoothed CPU
//! (a burst of one period is not saturation) but the raw memory and disk figures (memory near its limit is an
//! OOM kill away; a full /tmp fails writes now).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use crate::capacity::{Allocated, HostCapacity};
use crate::config::UtilizationConfig;
use crate::environment::{Environment, Saturation, State, Usage, Util};
use crate::host::HostReader;
use lmi_cgroup::Pressure;
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

/// Keeps what is needed between ticks.
#[derive(Debug)]
pub struct Sampler {
    cfg: UtilizationConfig,
    host: HostReader,
    state_dir: PathBuf,
    /// Per environment: CPU time and when it was read.
    prev_cpu: HashMap<String, (u64, Instant)>,
    prev_host: Option<(HostSnapshot, Instant)>,
}

impl Sampler {
    pub fn new(cfg: UtilizationConfig, host: HostReader, state_dir: PathBuf) -> Self {
        Self {
            cfg,
            host,
            state_dir,
            prev_cpu: HashMap::new(),
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
        let mut seen = Vec::with_capacity(envs.len());
        let mut out = Vec::with_capacity(envs.len());
        for env in envs {
            let state = env.state();
            if matches!(state, State::Failed | State::Terminated) || env.is_cleaned() {
                continue;
            }
            seen.push(env.id.as_str());
            if let Some((usage, saturation)) = self.measure(env, now, tau) {
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
        self.prev_cpu.retain(|id, _| seen.contains(&id.as_str()));

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
        now: Instant,
        tau: f64,
    ) -> Option<(Usage, Saturation)> {
        let reading = match env.cgroup.usage() {
            Ok(r) => r,
            Err(e) => {
                // Removed under us (the environment is stopping) or unreadable: keep the last figures.
                tracing::debug!(env = %env.id, error = %e, "cgroup usage unreadable");
                return None;
            }
        };
        let prev = env.usage();
        let (cpu_sample, dt, first) = match self.prev_cpu.get(&env.id) {
            Some((ns, t)) => {
                let dt = now.duration_since(*t).as_secs_f64();
                let used = reading.cpu_usage_ns.saturating_sub(*ns) as f64 / 1e9;
                let capacity = dt * f64::from(env.spec.vcpus.max(1));
                (
                    if capacity > 0.0 {
                        (used / capacity).clamp(0.0, 1.0)
                    } else {
                        0.0
                    },
                    dt,
                    false,
                )
            }
            None => (0.0, 0.0, true),
        };
        self.prev_cpu
            .insert(env.id.clone(), (reading.cpu_usage_ns, now));
        let memory = ratio(reading.memory_working_set_bytes, env.spec.memory_bytes());
        let disk = env
            .tmp
            .as_ref()
            .and_then(|t| t.usage().ok())
            .map(|(used, size)| ratio(used, size))
            .unwrap_or(0.0);
        let usage = Usage {
            cpu: step(prev.cpu, cpu_sample, first, dt, tau),
            memory: step(prev.memory, memory, first, dt, tau),
            disk: step(prev.disk, disk, first, dt, tau),
            pressure: reading.pressure,
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
