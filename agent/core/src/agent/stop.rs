//! Ending environments: delete one, drain the host, shut the agent down.

use std::{sync::Arc, time::Duration};

use crate::environment::{Environment, State};

use super::Agent;

impl Agent {
    /// Drains the host: no new environments or invokes; every environment finishes its in-flight invokes
    /// (up to the configured grace) and stops. The records stay until deleted.
    pub async fn drain_host(self: &Arc<Self>, reason: &str) {
        if self
            .draining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        tracing::warn!(reason, "draining the host");
        let grace = Duration::from_secs(u64::from(self.config.environments.delete_grace_seconds));
        let envs = self.list(None, None);
        futures_util::future::join_all(envs.iter().map(|e| self.stop(e, grace))).await;
    }

    /// Drains (in-flight invokes may finish within `grace`), stops, cleans up and forgets an environment.
    pub async fn delete(&self, id: &str, grace: Option<Duration>) -> Option<Arc<Environment>> {
        let env = self.get(id)?;
        let grace = grace.unwrap_or(Duration::from_secs(u64::from(
            self.config.environments.delete_grace_seconds,
        )));
        self.stop(&env, grace).await;
        env.mark_deleted();
        let mut r = self.write();
        if r.by_id.remove(id).is_none() {
            // A concurrent delete of the same environment already forgot it.
            return Some(env);
        }
        if let Err(e) = self.state.remove(id) {
            tracing::warn!(env = %id, error = %e, "removing the environment's record failed");
        }
        r.remove_from_function(&env.spec.function_name, &env.spec.version, id);
        Some(env)
    }

    async fn stop(&self, env: &Arc<Environment>, grace: Duration) {
        if env.begin_drain() {
            tracing::info!(env = %env.id, in_flight = env.broker.in_flight(), grace_s = grace.as_secs(), "draining environment");
            let _ = tokio::time::timeout(grace, env.broker.wait_idle()).await;
        } else if env.state() == State::Draining {
            // Another delete is draining it within its own grace period: wait for that one to finish.
            env.cleaned().await;
            return;
        }
        env.request_stop();
        env.cleaned().await;
    }

    /// Graceful stop: refuse new environments and invokes, let in-flight invokes finish within `grace`, stop
    /// every runtime and remove every cgroup, then the sandbox's host part and the agent's parent cgroup.
    pub async fn shutdown(&self, grace: Duration) {
        {
            // Under the registry lock, so that a create either registered before this (and is listed below)
            // or sees the flag when it registers (and stops its own environment).
            let _r = self.write();
            self.shutting_down
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let envs = self.list(None, None);
        let stops = envs.iter().map(|e| self.stop(e, grace));
        futures_util::future::join_all(stops).await;
        // Everything was stopped and cleaned on purpose: nothing is left for the next life to reconcile.
        for e in &envs {
            if let Err(err) = self.state.remove(&e.id) {
                tracing::warn!(env = %e.id, error = %err, "removing a record failed");
            }
        }
        let sandbox = self.sandbox.clone();
        let _ = tokio::task::spawn_blocking(move || sandbox.shutdown()).await;
        let cgroups = self.cgroups.clone();
        match tokio::task::spawn_blocking(move || cgroups.remove_parent()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing the agent's parent cgroup failed"),
            Err(e) => tracing::warn!(error = %e, "parent cgroup removal task failed"),
        }
    }
}
