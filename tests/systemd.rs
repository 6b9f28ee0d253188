//! The daemon under systemd's protocols, with a real `NOTIFY_SOCKET`: READY once the listeners are up,
//! WATCHDOG pings at half of `WATCHDOG_USEC` from the main loop, STOPPING on SIGTERM, and no more pings once
//! the main loop or the registry lock is wedged (fault injection with `LMI_AGENT_FAULT` + SIGUSR2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

/// Watchdog interval given to the daemon: pings every 100 ms.
const WATCHDOG_USEC: &str = "200000";
const WAIT: Duration = Duration::from_secs(10);

fn watchdog_agent_options(fault: Option<&str>) -> AgentOptions {
    let mut env = vec![("WATCHDOG_USEC".to_owned(), WATCHDOG_USEC.to_owned())];
    if let Some(f) = fault {
        env.push(("LMI_AGENT_FAULT".to_owned(), f.to_owned()));
    }
    AgentOptions {
        env,
        ..Default::default()
    }
}

/// Reads notifications until one equals `want`; every other one must be in `allowed`.
fn wait_for_notification(agent: &TestAgent, want: &str, allowed: &[&str]) {
    for _ in 0..1000 {
        let m = agent
            .next_notification(WAIT)
            .unwrap_or_else(|| panic!("no {want:?} notification\n{}", agent.log()));
        if m == want {
            return;
        }
        assert!(
            allowed.contains(&m.as_str()),
            "unexpected notification {m:?} while waiting for {want:?}"
        );
    }
    panic!("{want:?} never came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_pings_and_stopping_are_notified() {
    require_root!();
    // TestAgent::start already read READY=1 as the first notification.
    let mut agent = TestAgent::start_with(watchdog_agent_options(None)).await;
    for _ in 0..3 {
        assert_eq!(
            agent.next_notification(WAIT).as_deref(),
            Some("WATCHDOG=1"),
            "{}",
            agent.log()
        );
    }
    agent.signal(Signal::SIGTERM);
    wait_for_notification(&agent, "STOPPING=1", &["WATCHDOG=1"]);
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(agent.leftover_cgroups().is_empty());
}

async fn wedged_agent_stops_pinging(fault: &str) {
    let mut agent = TestAgent::start_with(watchdog_agent_options(Some(fault))).await;
    for _ in 0..2 {
        assert_eq!(
            agent.next_notification(WAIT).as_deref(),
            Some("WATCHDOG=1"),
            "{}",
            agent.log()
        );
    }
    agent.signal(Signal::SIGUSR2);
    wait_for_notification(
        &agent,
        &format!("STATUS=fault injected: {fault}"),
        &["WATCHDOG=1"],
    );
    // Ten ping periods without a ping (systemd would have killed it after two).
    let after = agent.next_notification(Duration::from_secs(1));
    assert_eq!(
        after,
        None,
        "a wedged agent ({fault}) still notified\n{}",
        agent.log()
    );
    // Wedged, not dead: the pings stopped because the agent is stuck, which is what the watchdog is for.
    assert!(
        process_alive(agent.pid() as u32),
        "the agent died instead of wedging"
    );
    agent.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_main_loop_is_blocked_stops_pinging() {
    require_root!();
    wedged_agent_stops_pinging("wedge-main-loop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_registry_lock_is_stuck_stops_pinging() {
    require_root!();
    wedged_agent_stops_pinging("wedge-registry").await;
}

fn oom_score_adj(pid: u32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtimes_do_not_inherit_the_agents_oom_protection() {
    require_root!();
    let mut agent = TestAgent::start().await;
    // What the unit's OOMScoreAdjust=-900 does to the agent. Lowering it needs CAP_SYS_RESOURCE; where this
    // host withholds that, the agent gets a positive adjustment instead, which its runtimes must not inherit
    // either (the same reset path).
    let path = format!("/proc/{}/oom_score_adj", agent.pid());
    let adj = match std::fs::write(&path, "-900") {
        Ok(()) => -900,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("note: no CAP_SYS_RESOURCE here ({e}); checking with oom_score_adj 500 instead of -900");
            std::fs::write(&path, "500").unwrap();
            500
        }
        Err(e) => panic!("{path}: {e}"),
    };
    let env = agent
        .create_ready(python_spec("oomadj", "actions.handler"))
        .await;
    assert_eq!(oom_score_adj(agent.pid() as u32), adj);
    assert_eq!(
        oom_score_adj(env.pid),
        0,
        "the runtime kept the agent's protection"
    );
    agent.stop_and_assert_clean(&[env.pid]);
}
