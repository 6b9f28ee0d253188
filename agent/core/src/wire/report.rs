//! Utilization reports: a sampler snapshot plus invoke counters, as the scaler and operators receive them.
//!
//! Counters in a report are deltas since the previous report *to the same receiver*: each receiver has its
//! own [`ReportBuilder`]. A receiver that is not reached (the scaler is down) simply gets no report; the next
//! one it gets covers everything since the last it got, so nothing is queued while disconnected.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use lmi_proto::v1 as pb;

use crate::environment::{Saturation, State, Util};
use crate::sampler::Snapshot;
use crate::stats::{FunctionCounts, FunctionKey, Stats, ThrottleCounts};
use lmi_cgroup::Pressure;

/// Builds successive reports for one receiver.
#[derive(Debug)]
pub struct ReportBuilder {
    hostname: String,
    instance_id: String,
    sent: HashMap<FunctionKey, FunctionCounts>,
    sent_totals: FunctionCounts,
}

fn util(u: Util) -> Option<pb::Utilization> {
    Some(pb::Utilization {
        last: u.last,
        smoothed: u.smoothed,
    })
}

fn pressure(p: Option<Pressure>) -> Option<pb::Pressure> {
    Some(match p {
        Some(p) => pb::Pressure {
            cpu_some: p.cpu_some,
            memory_some: p.memory_some,
            io_some: p.io_some,
            available: true,
        },
        None => pb::Pressure::default(),
    })
}

fn throttles(t: ThrottleCounts) -> Option<pb::ThrottleCounts> {
    Some(pb::ThrottleCounts {
        total: t.total,
        concurrency: t.concurrency,
        cpu: t.cpu,
        memory: t.memory,
        disk: t.disk,
        no_ready_environment: t.no_ready_environment,
    })
}

impl ReportBuilder {
    pub fn new(hostname: String, instance_id: String) -> Self {
        Self {
            hostname,
            instance_id,
            sent: HashMap::new(),
            sent_totals: FunctionCounts::default(),
        }
    }

    /// The report of `snap` with counter deltas since this builder's previous report.
    pub fn build(
        &mut self,
        sequence: u64,
        snap: &Snapshot,
        stats: &Stats,
    ) -> pb::UtilizationReport {
        let h = &snap.host;
        let cap = h
            .capacity
            .unwrap_or(crate::capacity::HostCapacity::new(0, 0, 0, 0));
        let host = pb::HostUtilization {
            cpu: util(h.cpu),
            memory: util(h.memory),
            disk: util(h.disk),
            vcpus_total: cap.vcpus_total,
            vcpus_allocated: h.allocated.vcpus,
            vcpus_available: cap.vcpus_allocatable.saturating_sub(h.allocated.vcpus),
            memory_mib_total: cap.memory_mib_total,
            memory_mib_allocated: h.allocated.memory_mib,
            memory_mib_available: cap
                .memory_mib_allocatable
                .saturating_sub(h.allocated.memory_mib),
            pressure: pressure(h.pressure),
            draining: h.draining,
        };
        let environments = snap
            .environments
            .iter()
            .map(|e| pb::EnvironmentUtilization {
                environment_id: e.id.clone(),
                function_name: e.function.clone(),
                function_version: e.version.clone(),
                state: super::environment::state(e.state).into(),
                cpu: util(e.usage.cpu),
                memory: util(e.usage.memory),
                disk: util(e.usage.disk),
                in_flight: e.in_flight,
                max_concurrency: e.max_concurrency,
                vcpus: e.vcpus,
                memory_mib: e.memory_mib,
                pressure: pressure(e.usage.pressure),
                cpu_saturated: e.saturation.contains(Saturation::CPU),
                memory_saturated: e.saturation.contains(Saturation::MEMORY),
                disk_saturated: e.saturation.contains(Saturation::DISK),
            })
            .collect();

        // Per function version: environments from the snapshot, counters from the stats.
        #[derive(Default)]
        struct Acc {
            envs: u32,
            ready: u32,
            concurrency: u32,
            limit: u32,
            cpu: f64,
            mem: f64,
        }
        let mut by_fn: BTreeMap<FunctionKey, Acc> = BTreeMap::new();
        for e in &snap.environments {
            let a = by_fn
                .entry((e.function.clone(), e.version.clone()))
                .or_default();
            a.envs += 1;
            if e.state == State::Ready {
                a.ready += 1;
                a.concurrency += e.in_flight;
                a.limit += e.max_concurrency;
                a.cpu += e.usage.cpu.smoothed;
                a.mem += e.usage.memory.last;
            }
        }
        let all: Vec<_> = stats.all();
        for (key, _) in &all {
            by_fn.entry(key.clone()).or_default();
        }
        let counts: HashMap<FunctionKey, FunctionCounts> =
            all.into_iter().map(|(k, s)| (k, s.counts())).collect();
        let mut functions = Vec::with_capacity(by_fn.len());
        for (key, a) in by_fn {
            let now = counts.get(&key).cloned().unwrap_or_default();
            let before = self.sent.get(&key).cloned().unwrap_or_default();
            let mean = |sum: f64| {
                if a.ready == 0 {
                    0.0
                } else {
                    sum / f64::from(a.ready)
                }
            };
            functions.push(pb::FunctionUtilization {
                function_name: key.0.clone(),
                function_version: key.1.clone(),
                environments: a.envs,
                ready_environments: a.ready,
                concurrency: a.concurrency,
                concurrency_limit: a.limit,
                cpu_utilization: mean(a.cpu),
                memory_utilization: mean(a.mem),
                throttles: throttles(now.throttles.since(&before.throttles)),
                redirects: now.redirects.saturating_sub(before.redirects),
                invocations: now.invocations().saturating_sub(before.invocations()),
            });
            self.sent.insert(key, now);
        }
        let totals = stats.totals();
        let report = pb::UtilizationReport {
            sequence,
            timestamp: Some(prost_types::Timestamp::from(snap.at)),
            hostname: self.hostname.clone(),
            agent_instance_id: self.instance_id.clone(),
            host: Some(host),
            environments,
            functions,
            throttles: throttles(totals.throttles.since(&self.sent_totals.throttles)),
            redirects: totals.redirects.saturating_sub(self.sent_totals.redirects),
        };
        self.sent_totals = totals;
        report
    }
}

/// A shared, strictly increasing sequence for one agent life.
pub type Sequence = Arc<std::sync::atomic::AtomicU64>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::ThrottleReason;

    #[test]
    fn counters_are_deltas_per_receiver_and_coalesce_between_reports() {
        let stats = Stats::default();
        let snap = Snapshot::default();
        let mut a = ReportBuilder::new("h".into(), "i".into());
        let mut b = ReportBuilder::new("h".into(), "i".into());
        let f = stats.function("f", "1");
        f.throttled(ThrottleReason::Cpu);
        f.redirected();
        let r1 = a.build(1, &snap, &stats);
        assert_eq!(r1.throttles.unwrap().cpu, 1);
        assert_eq!(r1.functions[0].redirects, 1);
        f.throttled(ThrottleReason::Memory);
        f.throttled(ThrottleReason::Memory);
        let r2 = a.build(2, &snap, &stats);
        let t = r2.functions[0].throttles.unwrap();
        assert_eq!((t.total, t.cpu, t.memory), (2, 0, 2));
        assert_eq!(r2.functions[0].redirects, 0);
        // b was not sent anything yet: its first report covers everything.
        let rb = b.build(1, &snap, &stats);
        assert_eq!(rb.throttles.unwrap().total, 3);
    }
}
