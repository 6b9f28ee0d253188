//! Choosing the environment an invoke runs on, and the reason when none can take it.

use std::sync::Arc;

use crate::environment::{Environment, State};

/// Why an invoke was refused without reaching an environment (one of LMI's throttle reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThrottleReason {
    Concurrency,
    Cpu,
    Memory,
    Disk,
}

impl ThrottleReason {
    /// The name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::Concurrency => "CONCURRENCY",
            ThrottleReason::Cpu => "CPU",
            ThrottleReason::Memory => "MEMORY",
            ThrottleReason::Disk => "DISK",
        }
    }
}

/// READY environments with a free slot, least loaded first (by in-flight share of their limit; ties keep
/// creation order). The caller tries them in turn, since a slot can be taken between this look and the submit.
pub fn candidates(envs: &[Arc<Environment>]) -> Vec<&Arc<Environment>> {
    let mut c: Vec<(u64, usize, &Arc<Environment>)> = envs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.state() == State::Ready)
        .filter_map(|(i, e)| {
            let (n, max) = (e.broker.in_flight(), e.broker.max());
            // Share of the limit in parts per million, compared as integers.
            (n < max).then(|| ((u64::from(n) * 1_000_000) / u64::from(max.max(1)), i, e))
        })
        .collect();
    c.sort_by_key(|(load, i, _)| (*load, *i));
    c.into_iter().map(|(_, _, e)| e).collect()
}
