//! Fault injection for the watchdog tests: `LMI_AGENT_FAULT` arms a fault that SIGUSR2 sets off.
//!
//! - `wedge-main-loop`: the daemon's main loop blocks forever (the watchdog pings come from it).
//! - `wedge-registry`: a thread takes the environment registry's write lock and never releases it, as a
//!   deadlock would; the main loop keeps running but its liveness probe never answers.
//!
//! Either way the agent stops sending `WATCHDOG=1`, which is what the tests check and what makes systemd
//! restart a wedged agent. Without `LMI_AGENT_FAULT` nothing is armed (SIGUSR2 keeps its default action).
//! Before it wedges, the agent sends `STATUS=fault injected: <name>` so a test knows when the fault is in.

use std::sync::Arc;

use anyhow::bail;
use lmi_agent_core::agent::Agent;

/// The variable that arms a fault.
pub(crate) const FAULT_ENV: &str = "LMI_AGENT_FAULT";

/// A fault that SIGUSR2 injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    WedgeMainLoop,
    WedgeRegistry,
}

impl Fault {
    /// The fault armed by `LMI_AGENT_FAULT`, if any.
    pub(crate) fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(FAULT_ENV).ok().as_deref() {
            None | Some("") => Ok(None),
            Some("wedge-main-loop") => Ok(Some(Self::WedgeMainLoop)),
            Some("wedge-registry") => Ok(Some(Self::WedgeRegistry)),
            Some(other) => {
                bail!("{FAULT_ENV}={other:?}: expected wedge-main-loop or wedge-registry")
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::WedgeMainLoop => "wedge-main-loop",
            Self::WedgeRegistry => "wedge-registry",
        }
    }

    /// Injects the fault. `WedgeMainLoop` never returns.
    pub(crate) fn inject(self, agent: &Arc<Agent>) {
        tracing::warn!(fault = self.name(), "fault injection (SIGUSR2)");
        match self {
            Self::WedgeMainLoop => {
                lmi_agent::notify::notify_or_log(&format!(
                    "STATUS=fault injected: {}",
                    self.name()
                ));
                loop {
                    std::thread::park();
                }
            }
            Self::WedgeRegistry => {
                let (tx, rx) = std::sync::mpsc::channel();
                let agent = agent.clone();
                std::thread::spawn(move || {
                    agent.fault_wedge_registry(move || {
                        let _ = tx.send(());
                    })
                });
                // The lock is held once the thread says so: only then is the fault in.
                if rx.recv().is_ok() {
                    lmi_agent::notify::notify_or_log(&format!(
                        "STATUS=fault injected: {}",
                        self.name()
                    ));
                }
            }
        }
    }
}
