//! `bench startup`: create an environment, wait for READY, read where its start-up time went (the
//! `startup` timings the agent records), delete it; several times, one at a time.

use std::time::Duration;

use anyhow::Context as _;
use lmi_proto::v1::{
    CreateEnvironmentRequest, DeleteEnvironmentRequest, Environment, EnvironmentSpec,
    EnvironmentState, GetEnvironmentRequest,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::commands::Io;
use crate::{connect::Client, render::StartupView};

/// How often READY is polled (the API has no watch; the agent's own timings do not depend on it).
const POLL: Duration = Duration::from_millis(5);

/// One environment's start-up, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StartupRun {
    pub runtime: String,
    /// The agent's phases, its share (`agent_us`, their sum) and the runtime's init, as `lmictl get` shows
    /// them (flattened: the JSON keys are the same).
    #[serde(flatten)]
    pub timings: StartupView,
    /// The CreateEnvironment round trip as lmictl saw it (the agent's share plus gRPC).
    pub create_rpc_us: u64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Creates, measures and deletes `runs` environments from `spec`.
pub async fn run(
    client: &mut Client,
    spec: &EnvironmentSpec,
    runs: u32,
    wait_limit: Duration,
    io: &mut Io<'_>,
) -> anyhow::Result<Vec<StartupRun>> {
    let mut out = Vec::new();
    for i in 1..=runs {
        let started = Instant::now();
        let env = client
            .create_environment(CreateEnvironmentRequest {
                spec: Some(spec.clone()),
            })
            .await?
            .into_inner()
            .environment
            .context("the agent's CreateEnvironmentResponse has no environment")?;
        let create_rpc = started.elapsed();
        let ready = wait_ready(client, &env.id, wait_limit).await;
        // Deleted whatever happened, so a failed run leaves nothing behind.
        let deleted = client
            .delete_environment(DeleteEnvironmentRequest {
                id: env.id.clone(),
                grace_period_seconds: 0,
            })
            .await;
        let ready = ready?;
        deleted.with_context(|| format!("deleting environment {}", env.id))?;
        let t = ready.startup.with_context(|| {
            format!(
                "environment {} has no start-up timings (an older agent?)",
                env.id
            )
        })?;
        let _ = writeln!(
            io.progress,
            "run {i}/{runs}: agent {:.2} ms, runtime init {:.2} ms",
            t.agent_us as f64 / 1000.0,
            t.runtime_init_us as f64 / 1000.0
        );
        out.push(StartupRun {
            runtime: spec.runtime.clone(),
            timings: crate::render::startup_view(&t),
            create_rpc_us: micros(create_rpc),
        });
    }
    Ok(out)
}

async fn wait_ready(client: &mut Client, id: &str, limit: Duration) -> anyhow::Result<Environment> {
    let deadline = Instant::now() + limit;
    loop {
        let env = client
            .get_environment(GetEnvironmentRequest { id: id.to_owned() })
            .await?
            .into_inner();
        match env.state() {
            EnvironmentState::Ready => return Ok(env),
            EnvironmentState::Initializing => {}
            other => {
                let why = env
                    .failure
                    .map(|f| format!(": {}: {}", f.error_type, f.message))
                    .unwrap_or_default();
                anyhow::bail!("environment {id} became {other:?} instead of READY{why}");
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "environment {id} was not READY within {}s (--wait-timeout)",
            limit.as_secs_f64()
        );
        tokio::time::sleep(POLL).await;
    }
}
