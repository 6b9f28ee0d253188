//! The gRPC control API (`lmi.agent.v1.Agent`): wire types in, [`Agent`] operations, wire types out.

use std::sync::Arc;

use lmi_proto::v1::{self as pb, agent_server};
use tonic::{Request, Response, Status};

use lmi_agent_core::agent::{Agent, CreateError};
use lmi_agent_core::environment::Environment;
use lmi_agent_core::spec::{SpecError, REDACTED_VALUE};
use lmi_agent_core::text::shown;
use lmi_agent_core::wire::report::ReportBuilder;

pub use invoke::THROTTLE_REASON_METADATA;

pub mod authority;
mod invoke;
pub mod logs;
mod response_stream;

/// Implements the generated `Agent` service on top of [`Agent`].
#[derive(Debug, Clone)]
pub struct ControlService {
    agent: Arc<Agent>,
}

impl ControlService {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

/// The wire view of an environment.
pub fn environment_to_proto(e: &Environment) -> pb::Environment {
    redacted(lmi_agent_core::wire::environment::to_proto(e))
}

/// An environment as the API shows it: the names of its environment variables, never their values. (The
/// spec's own wire view already leaves them out; a record written by an older agent, served for a lost
/// environment, may still hold them.)
pub fn redacted(mut e: pb::Environment) -> pb::Environment {
    if let Some(spec) = e.spec.as_mut() {
        for value in spec.environment.values_mut() {
            REDACTED_VALUE.clone_into(value);
        }
    }
    e
}

fn create_status(e: CreateError) -> Status {
    let msg = e.to_string();
    match e {
        CreateError::Spec(SpecError::Invalid { .. }) | CreateError::Launch(_) => {
            Status::invalid_argument(msg)
        }
        CreateError::Spec(SpecError::RuntimeUnavailable { .. }) => Status::failed_precondition(msg),
        CreateError::Capacity(_) => Status::resource_exhausted(msg),
        CreateError::Sandbox(s) if s.is_exhausted() => Status::resource_exhausted(msg),
        CreateError::Code(c) if c.is_invalid_input() => Status::invalid_argument(msg),
        CreateError::ShuttingDown | CreateError::Draining => Status::unavailable(msg),
        CreateError::Code(_)
        | CreateError::Cgroup(_)
        | CreateError::Spawn(_)
        | CreateError::Listen(_)
        | CreateError::Sandbox(_)
        | CreateError::Ephemeral(_)
        | CreateError::LogSocket(_) => {
            tracing::error!(error = %msg, "creating an environment failed");
            Status::internal(msg)
        }
    }
}

#[tonic::async_trait]
impl agent_server::Agent for ControlService {
    type WatchUtilizationStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::UtilizationReport, Status>>;

    async fn watch_utilization(
        &self,
        _request: Request<pb::WatchUtilizationRequest>,
    ) -> Result<Response<Self::WatchUtilizationStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let agent = self.agent.clone();
        tokio::spawn(async move {
            let mut updates = agent.utilization();
            let mut builder = ReportBuilder::new(
                lmi_agent_core::host::hostname(),
                agent.instance_id().to_owned(),
            );
            let mut sequence = 0u64;
            loop {
                // The current snapshot first, then one report per sampler tick; a slow reader skips ticks
                // (the watch keeps only the latest) instead of queueing them.
                let snap = updates.borrow_and_update().clone();
                sequence += 1;
                let report = builder.build(sequence, &snap, agent.stats());
                if tx.send(Ok(report)).await.is_err() || updates.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn create_environment(
        &self,
        request: Request<pb::CreateEnvironmentRequest>,
    ) -> Result<Response<pb::CreateEnvironmentResponse>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: is required"))?;
        // Runs on its own task: a caller that goes away mid-create must not leave reserved capacity or a
        // half-made cgroup behind (the create either completes and is listed, or undoes itself).
        let request = lmi_agent_core::wire::spec::create_request(&spec, &self.agent)
            .map_err(|e| create_status(e.into()))?;
        let agent = self.agent.clone();
        let env = tokio::spawn(async move { agent.create(request).await })
            .await
            .map_err(|e| Status::internal(format!("create task failed: {e}")))?
            .map_err(create_status)?;
        Ok(Response::new(pb::CreateEnvironmentResponse {
            environment: Some(environment_to_proto(&env)),
        }))
    }

    async fn get_environment(
        &self,
        request: Request<pb::GetEnvironmentRequest>,
    ) -> Result<Response<pb::Environment>, Status> {
        let id = request.into_inner().id;
        if let Some(env) = self.agent.get(&id) {
            return Ok(Response::new(environment_to_proto(&env)));
        }
        self.agent
            .get_lost(&id)
            .map(|e| Response::new(redacted(e.into_record())))
            .ok_or_else(|| Status::not_found(format!("no environment {}", shown(&id))))
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        let r = request.into_inner();
        let f = (!r.function_name.is_empty()).then_some(r.function_name.as_str());
        let v = (!r.function_version.is_empty()).then_some(r.function_version.as_str());
        let mut environments: Vec<pb::Environment> = self
            .agent
            .list(f, v)
            .iter()
            .map(|e| environment_to_proto(e))
            .collect();
        let matches = |e: &pb::Environment| {
            let func = e.spec.as_ref().and_then(|s| s.function.as_ref());
            f.is_none_or(|f| func.is_some_and(|x| x.name == f))
                && v.is_none_or(|v| func.is_some_and(|x| x.version == v))
        };
        environments.extend(
            self.agent
                .list_lost()
                .into_iter()
                .map(|e| e.into_record())
                .filter(|e| matches(e))
                .map(redacted),
        );
        Ok(Response::new(pb::ListEnvironmentsResponse { environments }))
    }

    async fn delete_environment(
        &self,
        request: Request<pb::DeleteEnvironmentRequest>,
    ) -> Result<Response<pb::Environment>, Status> {
        let r = request.into_inner();
        if let Some(lost) = self.agent.delete_lost(&r.id) {
            return Ok(Response::new(redacted(lost.into_record())));
        }
        let grace = (r.grace_period_seconds > 0)
            .then(|| std::time::Duration::from_secs(u64::from(r.grace_period_seconds)));
        // The delete completes even if the caller goes away: it runs on its own task.
        let agent = self.agent.clone();
        let id = r.id.clone();
        let env = tokio::spawn(async move { agent.delete(&id, grace).await })
            .await
            .map_err(|e| Status::internal(format!("delete task failed: {e}")))?
            .ok_or_else(|| Status::not_found(format!("no environment {}", shown(&r.id))))?;
        Ok(Response::new(environment_to_proto(&env)))
    }

    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        invoke::run(&self.agent, request.into_inner())
            .await
            .map(Response::new)
            .map_err(invoke::status)
    }

    type InvokeStreamStream = invoke::AnswerStream;

    async fn invoke_stream(
        &self,
        request: Request<tonic::Streaming<pb::InvokeStreamRequest>>,
    ) -> Result<Response<Self::InvokeStreamStream>, Status> {
        Ok(Response::new(invoke::serve_stream(
            self.agent.clone(),
            request.into_inner(),
        )))
    }

    type InvokeWithResponseStreamStream = response_stream::ResponseStream;

    async fn invoke_with_response_stream(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<Self::InvokeWithResponseStreamStream>, Status> {
        response_stream::serve(self.agent.clone(), request.into_inner())
            .await
            .map(Response::new)
    }

    type StreamLogsStream = crate::control::logs::LogBatchStream;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        crate::control::logs::stream_logs(self.agent.logs().file_dir(), request.into_inner())
            .map(Response::new)
    }

    async fn get_host(
        &self,
        _request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let cap = self.agent.ledger().capacity();
        let alloc = self.agent.ledger().allocated();
        Ok(Response::new(pb::Host {
            hostname: lmi_agent_core::host::hostname(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            cgroup_version: self.agent.cgroups().version().to_string(),
            vcpus_total: cap.vcpus_total,
            vcpus_allocatable: cap.vcpus_allocatable,
            vcpus_allocated: alloc.vcpus,
            memory_mib_total: cap.memory_mib_total,
            memory_mib_allocatable: cap.memory_mib_allocatable,
            memory_mib_allocated: alloc.memory_mib,
            environments: u32::try_from(self.agent.environment_count()).unwrap_or(u32::MAX),
            runtimes: self
                .agent
                .runtimes()
                .into_iter()
                .map(|(id, unavailable, per_vcpu)| pb::RuntimeInfo {
                    id,
                    available: unavailable.is_none(),
                    unavailable_reason: unavailable.unwrap_or_default(),
                    default_concurrency_per_vcpu: per_vcpu,
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_value_is_never_shown() {
        // As an older agent's record holds it.
        let mut e = pb::Environment {
            id: "e1".into(),
            spec: Some(pb::EnvironmentSpec::default()),
            ..Default::default()
        };
        let spec = e.spec.as_mut().unwrap();
        spec.environment.insert("TOKEN".into(), "s3cr3t".into());
        spec.environment.insert("EMPTY".into(), String::new());
        let shown = redacted(e);
        let env = &shown.spec.as_ref().unwrap().environment;
        assert_eq!(env.len(), 2);
        assert!(env.values().all(|v| v == REDACTED_VALUE), "{env:?}");
        // An environment without a spec passes unchanged.
        let bare = pb::Environment::default();
        assert_eq!(redacted(bare.clone()), bare);
    }
}
