//! The systemd watchdog: `WATCHDOG=1` pings that prove the agent is alive, not merely running.
//!
//! systemd sets `WATCHDOG_USEC` (and `WATCHDOG_PID`) when the unit has `WatchdogSec=`; a service that does not
//! ping within that interval is killed (SIGABRT) and, with `Restart=always`, started again. The daemon's main
//! loop pings at half the interval, and only after a [`Liveness`] probe succeeded: a task spawned on the async
//! runtime that takes the environment registry's lock. So an agent whose main loop is blocked, whose runtime
//! has no free worker, or whose registry lock is stuck stops pinging and gets restarted.

use std::time::Duration;

use tokio::task::JoinHandle;

/// Why the watchdog settings in the environment cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchdogError {
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    BadInterval(String),
}

/// The ping period asked for by the environment: half of `WATCHDOG_USEC`, or `None` when the watchdog is off
/// (no `WATCHDOG_USEC`, or a `WATCHDOG_PID` that names another process, as `sd_watchdog_enabled` decides).
pub fn ping_period(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, WatchdogError> {
    let Some(usec) = usec else { return Ok(None) };
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return Ok(None);
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(us) if us > 0 => Ok(Some(Duration::from_micros(us) / 2)),
        _ => Err(WatchdogError::BadInterval(usec.to_owned())),
    }
}

/// [`ping_period`] from this process's environment.
pub fn ping_period_from_env() -> Result<Option<Duration>, WatchdogError> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    ping_period(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Probes the agent's responsiveness: at most one probe task is outstanding at a time.
#[derive(Debug, Default)]
pub struct Liveness {
    pending: Option<JoinHandle<()>>,
    stalled: bool,
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `probe` on a runtime worker and waits up to `within` for it. True when it finished; a probe that
    /// is still running is not started again (the next check waits for the same one), so a stuck lock holds
    /// one worker, not all of them.
    pub async fn check<F>(&mut self, probe: F, within: Duration) -> bool
    where
        F: FnOnce() + Send + 'static,
    {
        let mut handle = match self.pending.take() {
            Some(h) => h,
            None => tokio::spawn(async move { probe() }),
        };
        match tokio::time::timeout(within, &mut handle).await {
            Ok(_) => {
                if self.stalled {
                    tracing::info!("watchdog probe answered again");
                    self.stalled = false;
                }
                true
            }
            Err(_) => {
                if !self.stalled {
                    tracing::error!(
                        within_ms = within.as_millis() as u64,
                        "watchdog probe did not answer: the registry lock or the async runtime is stuck; not pinging systemd"
                    );
                    self.stalled = true;
                }
                self.pending = Some(handle);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn period_is_half_the_interval_for_this_process_only() {
        assert_eq!(ping_period(None, None, 7), Ok(None));
        assert_eq!(
            ping_period(Some("30000000"), None, 7),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(
            ping_period(Some("30000000"), Some("7"), 7),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(ping_period(Some("30000000"), Some("8"), 7), Ok(None));
        assert!(ping_period(Some("0"), None, 7).is_err());
        assert!(ping_period(Some("soon"), None, 7).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_probe_fails_every_check_until_it_finishes() {
        let lock = Arc::new(Mutex::new(()));
        let mut liveness = Liveness::new();
        let l = lock.clone();
        assert!(
            liveness
                .check(
                    move || drop(l.lock().unwrap_or_else(|p| p.into_inner())),
                    Duration::from_secs(10)
                )
                .await
        );
        // Another thread holds the lock until told to let go, as a stuck lock holder would.
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                let _held = lock.lock().unwrap();
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        locked_rx.recv().unwrap();
        let l = lock.clone();
        let short = Duration::from_millis(20);
        assert!(
            !liveness
                .check(
                    move || drop(l.lock().unwrap_or_else(|p| p.into_inner())),
                    short
                )
                .await
        );
        // The same stuck probe is awaited again; this new probe is never started while it is pending.
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = started.clone();
        assert!(
            !liveness
                .check(
                    move || s.store(true, std::sync::atomic::Ordering::SeqCst),
                    short
                )
                .await
        );
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(liveness.check(|| {}, Duration::from_secs(10)).await);
    }
}
