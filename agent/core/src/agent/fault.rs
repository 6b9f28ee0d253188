//! Fault injection for the watchdog tests.

use super::Agent;

impl Agent {
    /// Fault injection for the watchdog tests only (`LMI_AGENT_FAULT=wedge-registry`): takes the registry's
    /// write lock on the calling thread and never gives it back, as a deadlock would. Never returns.
    #[doc(hidden)]
    pub fn fault_wedge_registry(&self, locked: impl FnOnce()) -> ! {
        let _held = self.write();
        locked();
        loop {
            std::thread::park();
        }
    }
}
