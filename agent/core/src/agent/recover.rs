//! Start-up reconciliation: what a previous life of the agent left (records of environments, `env-*`
//! cgroups) is stopped and removed; recorded environments are reported lost until deleted.

use std::sync::Arc;

use super::Agent;
use crate::state::LostEnvironment;

/// Error type of an environment that a previous life of the agent left behind.
pub const AGENT_RESTARTED: &str = "Agent.Restarted";

/// What start-up reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Recorded environments, now reported lost.
    pub lost: Vec<String>,
    /// Cgroups of environments without a record, removed.
    pub orphan_cgroups: Vec<String>,
}

impl Agent {
    /// Start-up reconciliation, before the agent takes requests: every environment a previous life left
    /// (per the state records, and any `env-*` cgroup without a record) has its processes killed, its cgroup
    /// and /tmp removed; recorded ones are reported FAILED (`Agent.Restarted`, or the failure they already
    /// had) until deleted. Nothing of a previous life keeps running or holds capacity.
    pub async fn recover(self: &Arc<Self>) -> Recovery {
        let agent = self.clone();
        let recovery = tokio::task::spawn_blocking(move || agent.recover_blocking()).await;
        match recovery {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "start-up reconciliation failed");
                Recovery::default()
            }
        }
    }

    fn recover_blocking(&self) -> Recovery {
        let mut recovery = Recovery::default();
        let records = self.state.load_all();
        for rec in records {
            self.remove_leftovers(&rec.id);
            let rec = LostEnvironment::from_record(
                rec,
                AGENT_RESTARTED,
                "the agent stopped without draining (crash or SIGKILL) while this environment ran; \
                 its processes were stopped when the agent restarted",
            );
            if let Err(e) = self.state.save(rec.record()) {
                tracing::warn!(env = %rec.id(), error = %e, "updating a lost environment's record failed");
            }
            tracing::warn!(env = %rec.id(), "environment of a previous agent life stopped and reported lost");
            recovery.lost.push(rec.id().to_owned());
            self.lost
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(rec.id().to_owned(), rec);
        }
        match self.cgroups.children() {
            Ok(children) => {
                for name in children {
                    let Some(id) = name.strip_prefix("env-") else {
                        continue;
                    };
                    if recovery.lost.iter().any(|l| l == id) {
                        continue;
                    }
                    tracing::warn!(cgroup = %name, "removing the cgroup of an unrecorded environment");
                    self.remove_leftovers(id);
                    recovery.orphan_cgroups.push(name);
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing leftover cgroups failed"),
        }
        recovery
    }

    /// Kills and removes what environment `id` may have left: cgroup (and its processes), /tmp mount, dirs.
    fn remove_leftovers(&self, id: &str) {
        match self.cgroups.open(&format!("env-{id}")) {
            Ok(Some(cg)) => {
                if let Err(e) = cg.remove() {
                    tracing::error!(env = %id, error = %e, "removing a leftover cgroup failed");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(env = %id, error = %e, "opening a leftover cgroup failed"),
        }
        let dir = self.config.state_dir.join("envs").join(id);
        if dir.join("tmp").exists() {
            let _ = self.tmp.remove(&dir.join("tmp"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An environment of a previous agent life (see [`Agent::recover`]).
    pub fn get_lost(&self, id: &str) -> Option<LostEnvironment> {
        self.lost
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every environment of a previous agent life, oldest id first.
    pub fn list_lost(&self) -> Vec<LostEnvironment> {
        let mut v: Vec<_> = self
            .lost
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    /// Forgets a lost environment (its leftovers were removed at start-up).
    pub fn delete_lost(&self, id: &str) -> Option<LostEnvironment> {
        let mut env = self
            .lost
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)?;
        if let Err(e) = self.state.remove(id) {
            tracing::warn!(env = %id, error = %e, "removing a record failed");
        }
        env.terminate();
        Some(env)
    }
}
