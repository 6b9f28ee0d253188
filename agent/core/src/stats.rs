//! Counters of what happened to invokes: throttles by reason, redirects, outcomes and latency.
//!
//! Lock-free on the invoke path (atomics); one lookup by function name and version per invoke, under a read
//! lock and without allocating, finds a function version's counters.
//! Counters only grow; reports compute deltas from them (see `report`).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, RwLock,
    },
    time::Duration,
};

use crate::dispatch::ThrottleReason;
use crate::version_map::VersionMap;

/// Upper bounds (seconds) of the invoke latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// Outcome kinds counted per function version.
pub const OUTCOMES: [&str; 4] = ["success", "function_error", "timeout", "runtime_failure"];

/// Why environments failed, as counted per function version. A bounded set (a metrics label): the error type
/// itself may be any string a runtime reports through `/init/error`.
pub const FAILURE_REASONS: [&str; 4] = [
    "init_timeout",
    "init_error",
    "runtime_exit",
    "out_of_memory",
];

/// The [`FAILURE_REASONS`] entry of an environment failure's error type.
pub fn failure_reason(error_type: &str) -> &'static str {
    use lmi_runtime_api::invocation::{
        RUNTIME_EXIT_ERROR, RUNTIME_INIT_TIMEOUT, RUNTIME_OUT_OF_MEMORY,
    };
    match error_type {
        RUNTIME_INIT_TIMEOUT => "init_timeout",
        RUNTIME_EXIT_ERROR => "runtime_exit",
        RUNTIME_OUT_OF_MEMORY => "out_of_memory",
        // Anything else was reported by the runtime itself (`/init/error`).
        _ => "init_error",
    }
}

/// Throttle counts; `total` is the sum of the reasons (each throttle counted once in total and once in
/// exactly one reason, as LMI's `Throttles` metric and its four reason metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleCounts {
    pub total: u64,
    pub concurrency: u64,
    pub cpu: u64,
    pub memory: u64,
    pub disk: u64,
    pub no_ready_environment: u64,
}

impl ThrottleCounts {
    /// `self - earlier`, per field (counters never go down).
    pub fn since(&self, earlier: &ThrottleCounts) -> ThrottleCounts {
        ThrottleCounts {
            total: self.total.saturating_sub(earlier.total),
            concurrency: self.concurrency.saturating_sub(earlier.concurrency),
            cpu: self.cpu.saturating_sub(earlier.cpu),
            memory: self.memory.saturating_sub(earlier.memory),
            disk: self.disk.saturating_sub(earlier.disk),
            no_ready_environment: self
                .no_ready_environment
                .saturating_sub(earlier.no_ready_environment),
        }
    }
}

#[derive(Debug, Default)]
struct Throttles {
    concurrency: AtomicU64,
    cpu: AtomicU64,
    memory: AtomicU64,
    disk: AtomicU64,
    no_ready_environment: AtomicU64,
}

impl Throttles {
    fn add(&self, reason: ThrottleReason) {
        match reason {
            ThrottleReason::Concurrency => &self.concurrency,
            ThrottleReason::Cpu => &self.cpu,
            ThrottleReason::Memory => &self.memory,
            ThrottleReason::Disk => &self.disk,
            ThrottleReason::NoReadyEnvironment => &self.no_ready_environment,
        }
        .fetch_add(1, Relaxed);
    }

    fn counts(&self) -> ThrottleCounts {
        let c = ThrottleCounts {
            total: 0,
            concurrency: self.concurrency.load(Relaxed),
            cpu: self.cpu.load(Relaxed),
            memory: self.memory.load(Relaxed),
            disk: self.disk.load(Relaxed),
            no_ready_environment: self.no_ready_environment.load(Relaxed),
        };
        ThrottleCounts {
            total: c.concurrency + c.cpu + c.memory + c.disk + c.no_ready_environment,
            ..c
        }
    }
}

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len()],
    /// Observations above the last bucket go only here (the `+Inf` bucket is `count`).
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A copy of a histogram's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Non-cumulative count per bucket of [`LATENCY_BUCKETS`].
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Counters of one function version.
#[derive(Debug, Default)]
pub struct FunctionStats {
    throttles: Throttles,
    redirects: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES.len()],
    failures: [AtomicU64; FAILURE_REASONS.len()],
    pub latency: Histogram,
}

/// A copy of one function version's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionCounts {
    pub throttles: ThrottleCounts,
    pub redirects: u64,
    /// Per [`OUTCOMES`].
    pub outcomes: [u64; OUTCOMES.len()],
    /// Environments failed, per [`FAILURE_REASONS`].
    pub failures: [u64; FAILURE_REASONS.len()],
}

impl FunctionCounts {
    pub fn invocations(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}

impl FunctionStats {
    pub fn throttled(&self, reason: ThrottleReason) {
        self.throttles.add(reason);
    }

    pub fn redirected(&self) {
        self.redirects.fetch_add(1, Relaxed);
    }

    /// Records a finished invoke by its outcome kind (one of [`OUTCOMES`]) and its duration.
    pub fn finished(&self, kind: &str, took: Duration) {
        if let Some(i) = OUTCOMES.iter().position(|k| *k == kind) {
            self.outcomes[i].fetch_add(1, Relaxed);
        }
        self.latency.observe(took);
    }

    /// Records an environment of this version that failed with `error_type`.
    pub fn environment_failed(&self, error_type: &str) {
        let reason = failure_reason(error_type);
        if let Some(i) = FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.failures[i].fetch_add(1, Relaxed);
        }
    }

    pub fn counts(&self) -> FunctionCounts {
        FunctionCounts {
            throttles: self.throttles.counts(),
            redirects: self.redirects.load(Relaxed),
            outcomes: std::array::from_fn(|i| self.outcomes[i].load(Relaxed)),
            failures: std::array::from_fn(|i| self.failures[i].load(Relaxed)),
        }
    }
}

/// Function name and version.
pub type FunctionKey = (String, String);

/// Every function version's counters. Entries are kept for the life of the agent (counters must not go
/// back to zero while the process lives); there is one per function version ever invoked here.
#[derive(Debug, Default)]
pub struct Stats {
    /// By function name, then version, so that an invoke looks its names up without building a key.
    functions: RwLock<VersionMap<Arc<FunctionStats>>>,
}

impl Stats {
    /// The counters of a function version, created on first use.
    pub fn function(&self, name: &str, version: &str) -> Arc<FunctionStats> {
        if let Some(s) = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name, version)
        {
            return s.clone();
        }
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(name, version, Default::default)
            .clone()
    }

    /// Every function version's counters, sorted by key.
    pub fn all(&self) -> Vec<(FunctionKey, Arc<FunctionStats>)> {
        let mut v: Vec<_> = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, version, s)| ((name.to_owned(), version.to_owned()), s.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Host-wide totals.
    pub fn totals(&self) -> FunctionCounts {
        let mut t = FunctionCounts::default();
        for (_, s) in self.all() {
            let c = s.counts();
            t.throttles.total += c.throttles.total;
            t.throttles.concurrency += c.throttles.concurrency;
            t.throttles.cpu += c.throttles.cpu;
            t.throttles.memory += c.throttles.memory;
            t.throttles.disk += c.throttles.disk;
            t.redirects += c.redirects;
            for (a, b) in t.outcomes.iter_mut().zip(c.outcomes) {
                *a += b;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_throttle_counts_once_in_total_and_once_in_its_reason() {
        let s = Stats::default();
        let f = s.function("f", "1");
        f.throttled(ThrottleReason::Cpu);
        f.throttled(ThrottleReason::Cpu);
        f.throttled(ThrottleReason::Disk);
        f.throttled(ThrottleReason::NoReadyEnvironment);
        s.function("g", "1").throttled(ThrottleReason::Concurrency);
        let c = f.counts().throttles;
        assert_eq!(
            c,
            ThrottleCounts {
                total: 4,
                concurrency: 0,
                cpu: 2,
                memory: 0,
                disk: 1,
                no_ready_environment: 1,
            }
        );
        assert_eq!(s.totals().throttles.total, 5);
        let later = ThrottleCounts {
            total: 5,
            cpu: 3,
            ..c
        };
        assert_eq!(
            later.since(&c),
            ThrottleCounts {
                total: 1,
                cpu: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn environment_failures_count_under_a_bounded_reason() {
        let f = FunctionStats::default();
        f.environment_failed("Runtime.InitTimeout");
        f.environment_failed("Runtime.ExitError");
        f.environment_failed("Runtime.ImportModuleError");
        f.environment_failed("whatever a runtime says");
        f.environment_failed("Runtime.OutOfMemory");
        let c = f.counts().failures;
        let at = |r: &str| c[FAILURE_REASONS.iter().position(|x| *x == r).unwrap()];
        assert_eq!(
            (
                at("init_timeout"),
                at("init_error"),
                at("runtime_exit"),
                at("out_of_memory")
            ),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn outcomes_and_latency_buckets() {
        let f = FunctionStats::default();
        f.finished("success", Duration::from_micros(90));
        f.finished("timeout", Duration::from_secs(3));
        f.finished("success", Duration::from_secs(100));
        let c = f.counts();
        assert_eq!(c.outcomes, [2, 0, 1, 0]);
        assert_eq!(c.invocations(), 3);
        let h = f.latency.snapshot();
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(
            h.buckets.iter().sum::<u64>(),
            2,
            "the 100 s one is only in +Inf"
        );
        assert!((h.sum_seconds - 103.00009).abs() < 1e-6);
    }
}
