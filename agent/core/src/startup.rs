//! Where an environment's start-up time goes: the agent's own work, phase by phase, then the runtime's init.
//!
//! `CreateEnvironment` runs the phases in order; a [`Stopwatch`] charges the time since its last lap to the
//! phase just finished. The runtime's init is measured from its spawn to its first `/next`.

use std::time::{Duration, Instant};

/// The agent's phases of creating an environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentPhases {
    /// Spec validation and the capacity reservation.
    pub validate: Duration,
    /// Staging the code.
    pub code: Duration,
    /// Binding the log socket and preparing the sandbox: a uid, the network namespace with its veth pair and
    /// the Runtime API listener inside it (on a host loopback port without network isolation), the mount plan.
    pub sandbox: Duration,
    /// Starting the Runtime API server on that listener.
    pub runtime_api: Duration,
    /// Creating the cgroup with its limits and opening its placement, and mounting the /tmp.
    pub cgroup: Duration,
    /// Planning the command and spawning the runtime into its cgroup and sandbox.
    pub spawn: Duration,
}

impl AgentPhases {
    /// The agent's share of start-up: every phase.
    pub fn total(&self) -> Duration {
        self.validate + self.code + self.sandbox + self.runtime_api + self.cgroup + self.spawn
    }
}

/// Times consecutive phases: each [`Stopwatch::lap`] returns the time since the previous one.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    last: Instant,
}

impl Stopwatch {
    pub fn start() -> Self {
        Self {
            last: Instant::now(),
        }
    }

    /// Time since the start or the previous lap.
    pub fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let d = now.duration_since(self.last);
        self.last = now;
        d
    }
}

#[cfg(test)]
impl AgentPhases {
    /// Phases of 1 to 6 µs, 21 µs in all: for tests of what is made of them.
    pub(crate) fn sample() -> Self {
        Self {
            validate: Duration::from_micros(1),
            code: Duration::from_micros(2),
            sandbox: Duration::from_micros(6),
            runtime_api: Duration::from_micros(3),
            cgroup: Duration::from_micros(4),
            spawn: Duration::from_micros(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_partition_the_elapsed_time() {
        let begin = Instant::now();
        let mut w = Stopwatch::start();
        let a = w.lap();
        std::hint::black_box((0..1000).sum::<u64>());
        let b = w.lap();
        assert!(a + b <= begin.elapsed());
        assert_eq!(AgentPhases::sample().total(), Duration::from_micros(21));
    }
}
