//! An environment on the wire: its record as the control API shows it and the state store keeps it, its state,
//! and where its start-up time went.

use std::time::Duration;

use lmi_proto::v1 as pb;

use crate::{
    environment::{Environment, State},
    startup::AgentPhases,
};

/// The environment as the control API shows it (the spec's variable values redacted).
pub fn to_proto(env: &Environment) -> pb::Environment {
    let st = env.status();
    pb::Environment {
        id: env.id.clone(),
        spec: Some(super::spec::to_proto(&env.spec)),
        state: state(st.state).into(),
        failure: st.failure.map(|f| pb::Failure {
            error_type: f.error.error_type,
            message: f.error.message,
            at: Some(prost_types::Timestamp::from(f.at)),
        }),
        vcpus: env.spec.vcpus,
        max_concurrency: env.spec.max_concurrency,
        in_flight: env.broker.in_flight(),
        runtime_api: env.runtime_api.to_string(),
        pid: st.pid.unwrap_or(0),
        cgroup: env.cgroup_path.clone(),
        created_at: Some(prost_types::Timestamp::from(env.created_at)),
        ready_at: st.ready_at.map(prost_types::Timestamp::from),
        init_duration_ms: st
            .init_duration
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        log_records: env.log_stats.records(),
        log_records_dropped: env.log_stats.dropped(),
        startup: st.agent_phases.map(|p| startup(&p, st.init_duration)),
    }
}

/// The wire state of an environment state.
pub fn state(s: State) -> pb::EnvironmentState {
    match s {
        State::Initializing => pb::EnvironmentState::Initializing,
        State::Ready => pb::EnvironmentState::Ready,
        State::Draining => pb::EnvironmentState::Draining,
        State::Failed => pb::EnvironmentState::Failed,
        State::Terminated => pb::EnvironmentState::Terminated,
    }
}

/// The start-up timings on the wire, with the runtime's `init` (spawn to first `/next`) once known.
pub fn startup(phases: &AgentPhases, init: Option<Duration>) -> pb::StartupTimings {
    fn micros(d: Duration) -> u64 {
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
    }
    let mut t = pb::StartupTimings {
        validate_us: micros(phases.validate),
        code_us: micros(phases.code),
        sandbox_us: micros(phases.sandbox),
        runtime_api_us: micros(phases.runtime_api),
        cgroup_us: micros(phases.cgroup),
        spawn_us: micros(phases.spawn),
        agent_us: 0,
        runtime_init_us: init.map_or(0, micros),
    };
    // The sum of the phases as shown, so that the figures add up exactly.
    t.agent_us =
        t.validate_us + t.code_us + t.sandbox_us + t.runtime_api_us + t.cgroup_us + t.spawn_us;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_share_is_the_sum_of_the_phases_as_shown() {
        let phases = AgentPhases::sample();
        let t = startup(&phases, Some(Duration::from_micros(7)));
        assert_eq!(t.agent_us, 21);
        assert_eq!(t.runtime_init_us, 7);
        assert_eq!(startup(&phases, None).runtime_init_us, 0);
    }
}
