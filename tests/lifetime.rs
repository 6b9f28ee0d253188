//! An environment lives until it is deleted: once READY, no timer the agent armed for it (the init deadline,
//! the function timeout, anything periodic) can fail it, idle or after a refused or a timed-out invoke. One
//! test per runtime family (the Python, Node, Java and .NET shims, and `provided` with a compiled bootstrap),
//! each with a short init timeout so that the deadlines are far behind when the environment is checked; and the
//! counterpart: an environment still initializing when its init deadline passes does fail.
//!
//! These tests wait on the clock on purpose: what they test is that a deadline passing does nothing. The waits
//! are a few times the (shortened) init timeout, so each test takes seconds, not minutes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
mod support;

use std::time::Duration;

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use scenarios::Runtime;
use serde_json::json;
use support::*;
use tonic::Code;

/// The function timeout of every environment here: the held invoke times out after it.
const FUNCTION_TIMEOUT_S: u32 = 2;

/// One runtime family: its test function (how to make its environment, how it echoes and holds an invoke) and
/// its init timeout.
struct Family {
    rt: Runtime,
    spec: pb::EnvironmentSpec,
    /// The init timeout the agent is configured with: long enough for this runtime to start on a busy
    /// host (a JVM takes seconds), short enough to be passed several times over within the test.
    init_timeout_s: u64,
}

impl Family {
    fn new(rt: Runtime, init_timeout_s: u64) -> Self {
        let spec = rt.spec(&format!("life-{}", rt.name));
        Self {
            rt,
            spec,
            init_timeout_s,
        }
    }
}

fn function(spec: &pb::EnvironmentSpec) -> String {
    spec.function.as_ref().unwrap().name.clone()
}

/// The waits of the test: well past the init deadline (armed when the runtime was spawned, so at most
/// `init_timeout_s` after READY) several times over, and past the function timeout.
fn idle_gap(fam: &Family) -> Duration {
    Duration::from_secs((3 * fam.init_timeout_s + 1).max(u64::from(FUNCTION_TIMEOUT_S) + 1))
}

/// The environment is as it was created: READY, same main process, no failure, nothing in flight, the only
/// one of its function; and it serves an invoke with the right answer.
async fn assert_serving(
    agent: &mut TestAgent,
    fam: &Family,
    created: &pb::Environment,
    when: &str,
) {
    let f = function(&fam.spec);
    let env = agent.get(&created.id).await;
    assert_eq!(
        env.state(),
        St::Ready,
        "{f} {when}: failure {:?}\n{}",
        env.failure,
        agent.log()
    );
    assert_eq!(env.failure, None, "{f} {when}");
    assert_eq!(env.pid, created.pid, "{f} {when}: the same runtime process");
    assert!(process_alive(env.pid), "{f} {when}: runtime process gone");
    assert_eq!(env.in_flight, 0, "{f} {when}");
    let listed = agent
        .client
        .list_environments(pb::ListEnvironmentsRequest {
            function_name: f.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .environments;
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [created.id.as_str()],
        "{f} {when}"
    );
    let event = json!({"action": "echo", "when": when});
    let r = agent
        .invoke(&f, event.clone())
        .await
        .unwrap_or_else(|s| panic!("{f} {when}: invoke refused: {s:?}\n{}", agent.log()));
    assert_eq!(r.outcome(), Out::Success, "{f} {when}: {r:?}");
    let v = payload_json(&r);
    assert_eq!(v[fam.rt.echo_field], event, "{f} {when}: {v}");
    assert_eq!(v["requestId"], r.request_id.as_str(), "{f} {when}");
}

/// The whole life: READY; idle past every deadline; a refused invoke (throttled at max concurrency 1) and a
/// timed-out one; idle past every deadline again; serving all along, on the same process.
async fn lives_past_its_timers(mut fam: Family) {
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!(
            "[environments]\ninit_timeout_seconds = {}\n",
            fam.init_timeout_s
        ),
        ..Default::default()
    })
    .await;
    if let Some(reason) = agent.runtime_unavailable(&fam.spec.runtime).await {
        lmi_testkit::skip(&format!("{} unavailable: {reason}", fam.spec.runtime));
        return;
    }
    fam.spec.max_concurrency = 1;
    fam.spec.timeout_seconds = FUNCTION_TIMEOUT_S;
    let f = function(&fam.spec);
    let created = agent.create_ready(fam.spec.clone()).await;
    // For whoever tunes `init_timeout_s`: how close this init came to its deadline.
    println!(
        "{f}: init took {} ms (init timeout {} s)",
        created.init_duration_ms, fam.init_timeout_s
    );

    tokio::time::sleep(idle_gap(&fam)).await;
    assert_serving(
        &mut agent,
        &fam,
        &created,
        "after an idle gap past the init timeout",
    )
    .await;

    // The only slot taken by an invoke the function holds: the next one is refused at once.
    let dir = shared_dir();
    let held = tokio::spawn(invoke(agent.client.clone(), &f, (fam.rt.hold)(dir.path())));
    wait_for_files(dir.path(), 1).await;
    let refused = agent
        .invoke(&f, json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{f}: {refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get(lmi_proto::wire::THROTTLE_REASON_METADATA)
            .unwrap(),
        "CONCURRENCY",
        "{f}"
    );
    // The held invoke times out; the function answers late once released, which frees the slot.
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Timeout, "{f}: {r:?}");
    assert_eq!(r.error.unwrap().error_type, "Sandbox.Timedout", "{f}");
    std::fs::write(dir.path().join("release"), "").unwrap();
    wait_in_flight(&mut agent, &created.id, 0).await;
    assert_serving(
        &mut agent,
        &fam,
        &created,
        "after a refused and a timed-out invoke",
    )
    .await;

    tokio::time::sleep(idle_gap(&fam)).await;
    assert_serving(&mut agent, &fam, &created, "after a second idle gap").await;
    agent.stop_and_assert_clean(&[created.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_environment_lives_past_its_init_and_function_timeouts() {
    require_root!();
    lives_past_its_timers(Family::new(scenarios::python(), 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_environment_lives_past_its_init_and_function_timeouts() {
    require_root!();
    lives_past_its_timers(Family::new(scenarios::node("nodejs20.x"), 2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_environment_lives_past_its_init_and_function_timeouts() {
    require_root!();
    lives_past_its_timers(Family::new(scenarios::java("java17"), 6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotnet_environment_lives_past_its_init_and_function_timeouts() {
    require_root!();
    lives_past_its_timers(Family::new(scenarios::dotnet(), 4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provided_environment_lives_past_its_init_and_function_timeouts() {
    require_root!();
    lives_past_its_timers(Family::new(scenarios::provided_c(), 2)).await;
}

/// The counterpart: the init deadline still applies to an environment that has not finished init, and only
/// to it. A READY environment created first (its deadline comes first) outlives the one that never polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_environment_still_initializing_at_its_deadline_fails_with_init_timeout() {
    require_root!();
    let init_timeout_s = 2;
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: format!("[environments]\ninit_timeout_seconds = {init_timeout_s}\n"),
        ..Default::default()
    })
    .await;
    let mut spec = python_spec("life-ready", "actions.handler");
    spec.max_concurrency = 1;
    let ready = agent.create_ready(spec).await;
    let mute = agent
        .create(code_spec(
            "life-mute",
            "provided.al2023",
            "unused",
            &fixtures("provided/mute"),
        ))
        .await;
    let failed = agent.wait_state(&mute.id, &[St::Failed]).await;
    let failure = failed.failure.unwrap();
    assert_eq!(failure.error_type, "Runtime.InitTimeout", "{failure:?}");
    assert!(
        failure
            .message
            .contains(&format!("{init_timeout_s} seconds")),
        "{failure:?}"
    );
    let s = agent.invoke("life-mute", json!({})).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");

    // The READY one's deadline passed before the mute one's: it is untouched.
    let env = agent.get(&ready.id).await;
    assert_eq!(env.state(), St::Ready, "{:?}", env.failure);
    assert_eq!(env.failure, None);
    assert_eq!(env.pid, ready.pid);
    let r = agent
        .invoke("life-ready", json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    agent.stop_and_assert_clean(&[ready.pid, mute.pid]);
}
