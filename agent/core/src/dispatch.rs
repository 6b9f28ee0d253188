//! Choosing the environment an invoke runs on, and the reason when none can take it.

use std::sync::Arc;

use crate::environment::{Environment, Saturation, State};

/// Why an invoke was refused without reaching an environment (one of LMI's throttle reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThrottleReason {
    Concurrency,
    Cpu,
    Memory,
    Disk,
    /// The version has environments here, but none is READY (initializing, draining or failed).
    NoReadyEnvironment,
}

impl ThrottleReason {
    /// The name used on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleReason::Concurrency => "CONCURRENCY",
            ThrottleReason::Cpu => "CPU",
            ThrottleReason::Memory => "MEMORY",
            ThrottleReason::Disk => "DISK",
            ThrottleReason::NoReadyEnvironment => "NO_READY_ENVIRONMENT",
        }
    }
}

/// Where an invoke may go, decided from exact in-flight counts and the sampler's saturation flags.
#[derive(Debug)]
pub struct Plan<'a> {
    /// READY, below their concurrency limit and not saturated; least loaded first. The caller tries them in
    /// turn (a slot can be taken between this look and the submit).
    pub candidates: Candidates<'a>,
    /// The environment the load order would have picked, when it was passed over for saturation: an invoke
    /// that lands elsewhere was redirected.
    pub first_choice_saturated: Option<&'a Arc<Environment>>,
    /// The bottleneck to report if no candidate takes the invoke.
    pub throttle: ThrottleReason,
}

/// A plan's candidates (a slice of them): held inline when the function version has one environment, the
/// common case, so that planning an invoke for it allocates nothing.
#[derive(Debug)]
pub enum Candidates<'a> {
    One(Option<&'a Arc<Environment>>),
    Many(Vec<&'a Arc<Environment>>),
}

impl<'a> std::ops::Deref for Candidates<'a> {
    type Target = [&'a Arc<Environment>];

    fn deref(&self) -> &Self::Target {
        match self {
            Candidates::One(one) => one.as_slice(),
            Candidates::Many(many) => many,
        }
    }
}

/// The reason an environment with a free slot is passed over: memory first (an OOM kill is the worst
/// outcome), then disk (writes fail), then CPU (only slower).
fn saturated_reason(s: Saturation) -> Option<ThrottleReason> {
    if s.contains(Saturation::MEMORY) {
        Some(ThrottleReason::Memory)
    } else if s.contains(Saturation::DISK) {
        Some(ThrottleReason::Disk)
    } else if s.contains(Saturation::CPU) {
        Some(ThrottleReason::Cpu)
    } else {
        None
    }
}

/// A READY environment below its limit: its share of the limit in parts per million, its position among the
/// version's environments, itself and its saturation.
type Open<'a> = (u64, usize, &'a Arc<Environment>, Saturation);

/// Plans an invoke over the environments of one function version.
///
/// Load order: in-flight share of each environment's limit, ascending (ties: creation order). The throttle
/// reason, if nothing can take the invoke: `NO_READY_ENVIRONMENT` when none is READY; when some READY
/// environment had a free slot, the saturated resource that excluded the last of them (in load order);
/// otherwise `CONCURRENCY`.
pub fn plan(envs: &[Arc<Environment>]) -> Plan<'_> {
    let mut any_ready = false;
    let mut open = envs
        .iter()
        .enumerate()
        .filter(|(_, e)| e.state() == State::Ready)
        .inspect(|_| any_ready = true)
        .filter_map(|(i, e)| {
            let (n, max) = (e.broker.in_flight(), e.broker.max());
            // Share of the limit in parts per million, compared as integers.
            (n < max).then(|| {
                (
                    (u64::from(n) * 1_000_000) / u64::from(max.max(1)),
                    i,
                    e,
                    e.saturation(),
                )
            })
        });
    if envs.len() <= 1 {
        let one = open.next();
        let (first_choice_saturated, throttle) = look(one.as_slice(), any_ready);
        return Plan {
            candidates: Candidates::One(one.filter(|(_, _, _, s)| !s.any()).map(|(_, _, e, _)| e)),
            first_choice_saturated,
            throttle,
        };
    }
    let mut open: Vec<Open<'_>> = open.collect();
    open.sort_by_key(|(load, i, _, _)| (*load, *i));
    let (first_choice_saturated, throttle) = look(&open, any_ready);
    Plan {
        candidates: Candidates::Many(
            open.into_iter()
                .filter(|(_, _, _, s)| !s.any())
                .map(|(_, _, e, _)| e)
                .collect(),
        ),
        first_choice_saturated,
        throttle,
    }
}

/// The saturated first choice and the throttle reason of `open` (in load order).
fn look<'a>(open: &[Open<'a>], any_ready: bool) -> (Option<&'a Arc<Environment>>, ThrottleReason) {
    let first_choice_saturated = open
        .first()
        .filter(|(_, _, _, s)| s.any())
        .map(|(_, _, e, _)| *e);
    let throttle = open
        .iter()
        .rev()
        .find_map(|(_, _, _, s)| saturated_reason(*s))
        .unwrap_or(if any_ready {
            ThrottleReason::Concurrency
        } else {
            ThrottleReason::NoReadyEnvironment
        });
    (first_choice_saturated, throttle)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{plan, ThrottleReason};
    use crate::environment::testing::environment;
    use lmi_runtime_api::invocation::Event;
    use lmi_runtime_api::RuntimeEvents;

    fn event(id: &str) -> Event {
        Event::new(
            id.to_owned(),
            bytes::Bytes::new(),
            Duration::from_secs(60),
            String::new(),
            None,
            None,
        )
    }

    #[test]
    fn none_ready_is_its_own_reason_not_concurrency() {
        let initializing = environment("f", 2);
        let failed = environment("f", 2);
        failed.fail(lmi_runtime_api::invocation::ErrorInfo::new(
            "Runtime.ExitError",
            "gone",
        ));
        let envs = [initializing, failed];
        let p = plan(&envs);
        assert!(p.candidates.is_empty());
        assert_eq!(p.throttle, ThrottleReason::NoReadyEnvironment);
        assert_eq!(p.throttle.as_str(), "NO_READY_ENVIRONMENT");
    }

    #[test]
    fn ready_environments_at_their_limit_are_a_concurrency_throttle() {
        let full = environment("f", 1);
        full.polled();
        let _held = full.broker.submit(event("a")).expect("a free slot");
        let initializing = environment("f", 1);
        let envs = [full, initializing];
        let p = plan(&envs);
        assert!(p.candidates.is_empty());
        assert_eq!(p.throttle, ThrottleReason::Concurrency);
    }

    #[test]
    fn a_single_environment_is_planned_as_several_are() {
        use crate::environment::{Saturation, Usage};
        use std::sync::Arc;
        let only = environment("f", 1);
        let envs = [only.clone()];
        let is_only = |e: Option<&&Arc<_>>| e.is_some_and(|e| Arc::ptr_eq(e, &only));
        assert!(plan(&envs).candidates.is_empty());
        assert_eq!(plan(&envs).throttle, ThrottleReason::NoReadyEnvironment);
        only.polled();
        let p = plan(&envs);
        assert_eq!(p.candidates.len(), 1);
        assert!(is_only(p.candidates.first()) && p.first_choice_saturated.is_none());
        only.set_usage(Usage::default(), Saturation::MEMORY);
        let p = plan(&envs);
        assert!(p.candidates.is_empty());
        assert!(is_only(p.first_choice_saturated.as_ref()));
        assert_eq!(p.throttle, ThrottleReason::Memory);
        only.set_usage(Usage::default(), Saturation::NONE);
        let _held = only.broker.submit(event("a")).expect("a free slot");
        let p = plan(&envs);
        assert!(p.candidates.is_empty() && p.first_choice_saturated.is_none());
        assert_eq!(p.throttle, ThrottleReason::Concurrency);
    }

    #[test]
    fn a_ready_environment_with_a_free_slot_is_a_candidate() {
        let ready = environment("f", 1);
        ready.polled();
        let envs = [environment("f", 1), ready];
        let p = plan(&envs);
        assert_eq!(p.candidates.len(), 1);
        assert!(p.first_choice_saturated.is_none());
    }
}
