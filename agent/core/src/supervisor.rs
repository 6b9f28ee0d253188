//! The task that owns one environment's runtime process from spawn to cleanup.
//!
//! It waits for whichever comes first: the runtime's main process exiting, the init timeout, a failure
//! reported through the Runtime API (`/init/error`), or a stop request (delete, agent shutdown). Then it ends
//! every in-flight invoke with the failure at once, stops the process tree (SIGTERM to the process group,
//! then SIGKILL to everything in the cgroup), removes the cgroup, stops the Runtime API server, removes the
//! environment's network and releases its uid and capacity.

use std::{sync::Arc, time::Duration};

use tokio::{process::Child, task::JoinHandle};

use crate::capacity::Ledger;
use crate::environment::{Environment, State};
use crate::logs::{PendingCapture, Source};
use crate::stats::FunctionStats;
use lmi_cgroup::EnvironmentCgroup;
use lmi_runtime_api::invocation::{
    ErrorInfo, RUNTIME_EXIT_ERROR, RUNTIME_INIT_TIMEOUT, RUNTIME_OUT_OF_MEMORY,
};

/// What the supervisor needs besides the environment.
#[derive(Debug)]
pub struct Supervised {
    pub env: Arc<Environment>,
    pub child: Child,
    pub api_server: JoinHandle<()>,
    /// The environment's bound log socket; its capture (with stdout and stderr) starts with the supervisor.
    pub log_capture: PendingCapture,
    pub ledger: Arc<Ledger>,
    pub init_timeout: Duration,
    pub stop_timeout: Duration,
    /// Where the environment's durable record lives (updated when it fails, so a restart keeps the reason).
    pub state: crate::state::StateStore,
    /// The function version's counters (a failure is counted there by reason).
    pub stats: Arc<FunctionStats>,
}

/// Runs until the environment is cleaned up.
pub async fn supervise(mut s: Supervised) {
    let env = s.env.clone();
    let capture = s.log_capture.start(
        Source {
            function: env.spec.function_name.clone(),
            version: env.spec.version.clone(),
            environment: env.id.clone(),
        },
        env.log_stats.clone(),
        max_log_connections(env.spec.max_concurrency),
        s.child.stdout.take(),
        s.child.stderr.take(),
    );
    let pid = s.child.id();
    let exited = watch(&env, s.init_timeout, s.child.wait()).await;

    let exit = exited.as_ref().map(|status| {
        exit_error(
            status,
            env.cgroup.as_ref(),
            env.state() == State::Initializing,
        )
    });
    if let Some(error) = &exit {
        env.fail(error.clone());
    }

    // Every failure, whatever its path (init timeout, init error, the runtime's exit or OOM kill), is told
    // here once: at WARN with its reason, and counted by reason. The reason is made durable before anything
    // is torn down: an agent that dies from here on still reports this failure after its restart.
    if let Some(failure) = env.status().failure {
        let error = &failure.error;
        tracing::warn!(
            env = %env.id,
            function = %env.spec.function_name,
            version = %env.spec.version,
            error_type = %error.error_type,
            error = %error.message,
            reason = crate::stats::failure_reason(&error.error_type),
            "environment failed"
        );
        s.stats.environment_failed(&error.error_type);
        if let Err(e) = s.state.save(&crate::wire::environment::to_proto(&env)) {
            tracing::warn!(env = %env.id, error = %e, "recording the failure failed");
        }
    }

    // Every caller still waiting learns the outcome now, not at its deadline: the recorded failure, or (a
    // runtime that exited on its own while draining) how it exited.
    let failure = env.status().failure.map(|f| f.error).or(exit);

    let told = env.broker.close(failure.as_ref());
    if told > 0 {
        tracing::info!(env = %env.id, invokes = told, "ended in-flight invokes of a stopped environment");
    }

    if exited.is_none() {
        stop_process_tree(&mut s.child, pid, s.stop_timeout).await;
    }
    s.api_server.abort();
    if let Some(tmp) = &env.tmp {
        if let Err(e) = tmp.remove() {
            tracing::warn!(env = %env.id, error = %e, "removing the environment's /tmp failed");
        }
        // `<state_dir>/envs/<id>`, empty once its /tmp mount point is gone.
        if let Some(env_dir) = tmp.path().parent() {
            let _ = std::fs::remove_dir(env_dir);
        }
    }
    let removed = remove_cgroup(&env.id, env.cgroup.clone()).await;
    // Every process of the runtime is gone: its log streams end; the capture's last record follows them.
    let _ = capture.close();
    if removed {
        s.ledger
            .release(env.spec.vcpus, u64::from(env.spec.memory_mib));
    } else {
        // Something may still run in it: keep its capacity booked rather than hand it out twice.
        tracing::error!(
            env = %env.id,
            vcpus = env.spec.vcpus,
            memory_mib = env.spec.memory_mib,
            "the environment's cgroup could not be removed; its capacity stays reserved"
        );
    }
    // After the capacity (which waits on nothing else): this runs `ip` to remove the veth pair.
    release_sandbox(&env, removed).await;
    env.mark_cleaned();
    tracing::info!(env = %env.id, state = ?env.state(), "environment cleaned up");
}

/// Waits for the end of the environment's life: the runtime's main process exiting (its status is returned),
/// a recorded failure or a stop request (`None`).
///
/// The init deadline applies only while the environment is INITIALIZING: every state change that matters
/// here (READY on the first `/next`, a failure, a stop) wakes this loop through `env.wake`, the loop then
/// disarms the deadline, and the deadline's own check ([`Environment::init_timed_out`]) is made under the
/// state lock, so a deadline that no longer applies can never fail the environment.
async fn watch(
    env: &Environment,
    init_timeout: Duration,
    exit: impl std::future::Future<Output = std::io::Result<std::process::ExitStatus>>,
) -> Option<std::io::Result<std::process::ExitStatus>> {
    tokio::pin!(exit);
    let init_deadline = tokio::time::sleep(init_timeout);
    tokio::pin!(init_deadline);
    let mut init_armed = true;
    loop {
        // Registered before the state is read: a change after this read still wakes the select below.
        let wake = env.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if env.stop_requested() {
            return None;
        }
        match env.state() {
            State::Failed => return None,
            State::Initializing => {}
            // Init is over (READY), or a delete began: the init deadline no longer applies.
            State::Ready | State::Draining | State::Terminated => init_armed = false,
        }
        tokio::select! {
            status = &mut exit => return Some(status),
            () = &mut init_deadline, if init_armed => {
                init_armed = false;
                let timed_out = ErrorInfo::new(
                    RUNTIME_INIT_TIMEOUT,
                    format!("the runtime did not finish init within {} seconds", init_timeout.as_secs()),
                );
                // Told (WARN, counted) with every other failure once the watch ends.
                env.init_timed_out(timed_out);
            }
            () = &mut wake => {}
        }
    }
}

/// Removes the environment's network and, once its processes are known to be gone (`processes_gone`: its
/// cgroup was removed), gives its uid back; a uid that may still run a process stays held.
async fn release_sandbox(env: &Arc<Environment>, processes_gone: bool) {
    if env.sandbox.is_none() {
        return;
    }
    let e = env.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || {
        if let Some(s) = &e.sandbox {
            s.release(processes_gone);
        }
    })
    .await
    {
        tracing::warn!(env = %env.id, error = %err, "sandbox release task failed");
    }
    if !processes_gone {
        tracing::error!(env = %env.id, "the environment's processes may still run: its uid stays reserved");
    }
}

/// Kills and removes the cgroup, retrying with backoff (a process may take a moment to die). True on success.
async fn remove_cgroup(env_id: &str, cgroup: Arc<dyn EnvironmentCgroup>) -> bool {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        let c = cgroup.clone();
        match tokio::task::spawn_blocking(move || c.remove()).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => {
                tracing::warn!(env = %env_id, attempt, error = %e, "removing the environment's cgroup failed")
            }
            Err(e) => {
                tracing::warn!(env = %env_id, attempt, error = %e, "cgroup removal task failed")
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    false
}

fn exit_error(
    status: &std::io::Result<std::process::ExitStatus>,
    cgroup: &dyn EnvironmentCgroup,
    during_init: bool,
) -> ErrorInfo {
    use std::os::unix::process::ExitStatusExt;
    let how = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("signal: {}", signal_name(sig)),
            _ => s.to_string(),
        },
        Err(e) => format!("wait failed: {e}"),
    };
    let oom = cgroup.oom_kills().unwrap_or(0) > 0;
    let error_type = if oom {
        RUNTIME_OUT_OF_MEMORY
    } else {
        RUNTIME_EXIT_ERROR
    };
    let phase = if during_init { " during init" } else { "" };
    let message = if oom {
        format!(
            "Runtime exited{phase} after an out-of-memory kill in the environment's cgroup: {how}"
        )
    } else {
        format!("Runtime exited{phase} with error: {how}")
    };
    ErrorInfo::new(error_type, message)
}

fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| match s {
            nix::sys::signal::Signal::SIGKILL => "killed".to_owned(),
            nix::sys::signal::Signal::SIGSEGV => "segmentation fault".to_owned(),
            nix::sys::signal::Signal::SIGABRT => "aborted".to_owned(),
            other => other.as_str().to_owned(),
        })
        .unwrap_or_else(|_| sig.to_string())
}

/// SIGTERM to the runtime's process group, then (after `grace`) the caller's cgroup removal SIGKILLs the rest.
async fn stop_process_tree(child: &mut Child, pid: Option<u32>, grace: Duration) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Log-socket connections an environment may hold open: Python workers open two each (stdout, stderr),
/// Node workers one; the rest is headroom for the main process and helpers.
fn max_log_connections(max_concurrency: u32) -> usize {
    usize::try_from(max_concurrency)
        .unwrap_or(usize::MAX)
        .saturating_mul(2)
        .saturating_add(16)
}

#[cfg(test)]
mod tests {
    use std::{future::pending, sync::Arc, time::Duration};

    use super::watch;
    use crate::environment::{testing::environment, State};
    use lmi_runtime_api::invocation::ErrorInfo;
    use lmi_runtime_api::RuntimeEvents;

    const INIT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The supervisor's wait for the end, on its own task, with a runtime that never exits.
    fn spawn_watch(
        env: &Arc<crate::environment::Environment>,
    ) -> tokio::task::JoinHandle<Option<std::io::Result<std::process::ExitStatus>>> {
        let env = env.clone();
        tokio::spawn(async move { watch(&env, INIT_TIMEOUT, pending()).await })
    }

    /// Runs every ready task of the (paused) runtime until none can progress.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The bug of issue 12: the init deadline armed at spawn fired after the first `/next` had made the
    /// environment READY, and failed it with Runtime.InitTimeout 130 s after creation.
    #[tokio::test(start_paused = true)]
    async fn a_ready_environment_outlives_its_init_deadline() {
        let env = environment("ready", 4);
        let watching = spawn_watch(&env);
        settle().await;
        tokio::time::advance(INIT_TIMEOUT / 2).await;
        env.polled();
        assert_eq!(env.state(), State::Ready);
        settle().await;
        // Far past the deadline: hours of an idle life.
        for _ in 0..100 {
            tokio::time::advance(INIT_TIMEOUT * 36).await;
            settle().await;
        }
        assert_eq!(env.state(), State::Ready);
        assert!(env.status().failure.is_none());
        assert!(
            !watching.is_finished(),
            "the supervisor stopped a READY environment"
        );
        env.request_stop();
        assert!(watching.await.expect("watch task").is_none());
        assert_eq!(env.state(), State::Ready);
    }

    /// READY in the same instant the deadline fires: the state decides, not the order the timer and the
    /// wake-up are seen in.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_no_longer_applies_cannot_fail_the_environment() {
        let env = environment("race", 1);
        let watching = spawn_watch(&env);
        settle().await;
        tokio::time::advance(INIT_TIMEOUT - Duration::from_millis(1)).await;
        env.polled();
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(env.state(), State::Ready);
        assert!(!env.init_timed_out(ErrorInfo::new("Runtime.InitTimeout", "late")));
        assert_eq!(env.state(), State::Ready);
        assert!(!watching.is_finished());
        env.request_stop();
        assert!(watching.await.expect("watch task").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_environment_still_initializing_at_its_deadline_fails() {
        let env = environment("slow", 1);
        let watching = spawn_watch(&env);
        settle().await;
        tokio::time::advance(INIT_TIMEOUT + Duration::from_millis(1)).await;
        assert!(watching.await.expect("watch task").is_none());
        assert_eq!(env.state(), State::Failed);
        let failure = env.status().failure.expect("failure");
        assert_eq!(failure.error.error_type, "Runtime.InitTimeout");
        // A /next after the failure does not revive it.
        env.polled();
        assert_eq!(env.state(), State::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delete_during_init_is_not_an_init_timeout() {
        let env = environment("deleted", 1);
        let watching = spawn_watch(&env);
        settle().await;
        assert!(env.begin_drain());
        tokio::time::advance(INIT_TIMEOUT * 2).await;
        settle().await;
        assert_eq!(env.state(), State::Draining);
        assert!(!watching.is_finished());
        env.request_stop();
        assert!(watching.await.expect("watch task").is_none());
        assert!(env.status().failure.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_runtime_exiting_ends_the_watch_with_its_status() {
        use std::os::unix::process::ExitStatusExt;
        let env = environment("exits", 1);
        env.polled();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let env2 = env.clone();
        let watching = tokio::spawn(async move {
            watch(&env2, INIT_TIMEOUT, async move {
                let _ = rx.await;
                Ok(std::process::ExitStatus::from_raw(1 << 8))
            })
            .await
        });
        settle().await;
        tokio::time::advance(INIT_TIMEOUT * 3).await;
        settle().await;
        assert!(!watching.is_finished());
        tx.send(()).expect("send");
        let status = watching
            .await
            .expect("watch task")
            .expect("exit")
            .expect("status");
        assert_eq!(status.code(), Some(1));
    }
}
