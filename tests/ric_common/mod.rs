//! Scenarios shared by the tests of AWS's own Go and Rust runtime clients (tests/ric_go.rs,
//! tests/ric_rust.rs): each client runs unmodified as the `bootstrap` of a `provided.al2023` function built
//! by tests/setup.sh (tests/fixtures/go-ric, tests/fixtures/rust-ric), whose handler does what the event's
//! `action` says. What differs between the clients (error and panic shapes, log shapes) stays in the test
//! files; what the agent owes every client is here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, path::PathBuf, process::Command, time::Duration};

use lmi_proto::v1::{self as pb, EnvironmentState as State, InvokeOutcome as Out};
use serde_json::{json, Value};

use crate::support::*;

/// The agent's limit on a buffered answer and on a request payload (agent/runtime-api/src/lib.rs).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024 + 100;

/// One official client's test function.
#[derive(Debug, Clone)]
pub struct Ric {
    pub name: &'static str,
    /// The code directory: `bootstrap` and nothing else.
    pub code: PathBuf,
}

impl Ric {
    /// `$LMI_TEST_TOOLS/<dir>/task`, built by `tests/fixtures/<dir>/build.sh` (tests/setup.sh runs it; it is
    /// run again here, once per test binary, so a changed fixture is rebuilt: unchanged, it returns at once).
    fn built(name: &'static str, dir: &str) -> Self {
        static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
        if !built.iter().any(|d| d == dir) {
            let out = Command::new(fixtures(dir).join("build.sh"))
                .env("LMI_TEST_TOOLS", test_tools())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "tests/fixtures/{dir}/build.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            built.push(dir.to_owned());
        }
        let code = test_tools().join(dir).join("task");
        assert!(
            code.join("bootstrap").is_file(),
            "{} is missing after tests/fixtures/{dir}/build.sh",
            code.join("bootstrap").display()
        );
        Self { name, code }
    }

    pub fn go() -> Self {
        Self::built("go", "go-ric")
    }

    pub fn rust() -> Self {
        Self::built("rust", "rust-ric")
    }

    pub fn spec(
        &self,
        function: &str,
        max_concurrency: u32,
        timeout_seconds: u32,
    ) -> pb::EnvironmentSpec {
        native_echo_spec(function, &self.code, max_concurrency, timeout_seconds)
    }
}

/// A rendezvous of `n` invokes: each writes a file named by its request id in a fresh shared directory and
/// answers only once `n` files are there, so all succeed only if the runtime held `n` invokes at once (one
/// per poller). Returns their request ids after checking every one saw all the others.
pub async fn rendezvous(agent: &TestAgent, function: &str, n: usize) -> BTreeSet<String> {
    let dir = shared_dir();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let event = json!({"action": "gate", "dir": dir.path().display().to_string(), "count": n, "max_s": 60});
            tokio::spawn(invoke(agent.client.clone(), function, event))
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut seen = Vec::new();
    for c in calls {
        let r = match c.await.unwrap() {
            Ok(r) if r.outcome() == Out::Success => r,
            other => {
                let envs = agent
                    .client
                    .clone()
                    .list_environments(pb::ListEnvironmentsRequest {
                        function_name: function.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .environments;
                let mut lines = String::new();
                for e in &envs {
                    lines += &last_lines(agent, function, &e.id).await;
                }
                panic!("a rendezvous of {n} on {function}: {other:?}; the runtime's last lines:\n{lines}")
            }
        };
        let v = payload_json(&r);
        assert_eq!(v["requestId"], r.request_id.as_str(), "{v}");
        seen.push(
            v["seen"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect::<BTreeSet<_>>(),
        );
        ids.insert(r.request_id);
    }
    assert_eq!(ids.len(), n, "distinct request ids");
    for s in seen {
        assert_eq!(s, ids, "all {n} were in the runtime at once");
    }
    ids
}

/// Polls the environment (the API has no watch; bounded by 60 s) until no invoke holds a slot or it left
/// READY.
pub async fn wait_idle(agent: &mut TestAgent, id: &str) -> pb::Environment {
    let start = std::time::Instant::now();
    loop {
        let e = agent.get(id).await;
        if e.in_flight == 0 || e.state() != State::Ready {
            return e;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "environment {id} still has {} invokes in flight",
            e.in_flight
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The environment is READY, idle, and its runtime is the process it started with.
pub async fn assert_serving(agent: &mut TestAgent, env: &pb::Environment) {
    let now = agent.get(&env.id).await;
    assert_eq!(
        now.state(),
        State::Ready,
        "failure: {:?}\n{}",
        now.failure,
        agent.log()
    );
    assert_eq!(now.pid, env.pid, "the same runtime process");
    assert_eq!(now.in_flight, 0, "no slot left taken");
}

pub async fn echo(ric: &Ric) {
    let function = format!("{}-echo", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, 2, 30)).await;
    let event = json!({"action": "echo", "n": [1, 2.5, "three"], "s": "\u{e9}t\u{e9}"});
    let r = agent.invoke(&function, event.clone()).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    assert_eq!(r.environment_id, env.id);
    let v = payload_json(&r);
    assert_eq!(v["requestId"], r.request_id.as_str(), "{v}");
    assert_eq!(v["event"], event, "{v}");
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

/// `n` invokes in the runtime at once (a rendezvous), twice: the pollers come back after answering.
pub async fn overlap(ric: &Ric, n: u32) {
    let function = format!("{}-overlap", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, n, 120)).await;
    let first = rendezvous(&agent, &function, n as usize).await;
    let second = rendezvous(&agent, &function, n as usize).await;
    assert!(first.is_disjoint(&second));
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

/// A function error (the handler returns the fixture's `OrderError`): the caller gets the client's type and
/// message, the same runtime serves the next invoke. Returns the error for the client's own checks.
pub async fn function_error(ric: &Ric) -> pb::FunctionError {
    let function = format!("{}-error", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, 2, 30)).await;
    let r = agent
        .invoke(
            &function,
            json!({"action": "error", "message": "no such order: 42"}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::FunctionError, "{r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "OrderError", "{e:?}");
    assert_eq!(e.error_message, "no such order: 42", "{e:?}");
    let r = agent
        .invoke(&function, json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
    e
}

/// An invoke past its timeout: the caller gets `Sandbox.Timedout`; the handler keeps running (LMI does not
/// stop it) until the test releases it, after the timeout, so it answers late. Then a rendezvous of
/// max_concurrency invokes can only complete once the late-answering poller is back on `/next`: the
/// environment still serves, with every poller.
pub async fn timeout_then_serving(ric: &Ric) {
    const N: u32 = 2;
    let function = format!("{}-timeout", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, N, 3)).await;
    let dir = shared_dir();
    let r = agent
        .invoke(
            &function,
            json!({"action": "hold", "dir": dir.path().display().to_string(), "max_s": 60}),
        )
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Timeout, "{r:?}");
    assert_eq!(
        r.error.as_ref().unwrap().error_type,
        "Sandbox.Timedout",
        "{r:?}"
    );
    std::fs::write(dir.path().join("release"), b"").unwrap();
    // The agent keeps the slot until the runtime has answered (late): its return is the sign the late
    // answer was received (and, for a client that dies of the status it got, that it has died).
    let env_now = wait_idle(&mut agent, &env.id).await;
    if env_now.state() != State::Ready {
        panic!(
            "after the late answer: {:?} {:?}; the runtime's last lines:\n{}",
            env_now.state(),
            env_now.failure,
            last_lines(&agent, &function, &env.id).await
        );
    }
    rendezvous(&agent, &function, N as usize).await;
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

/// The client's init failure path (the fixture's main fails before the client polls): the environment is
/// FAILED with the exit as its reason, and what the process printed is in the function's log.
pub async fn init_error(ric: &Ric, printed: &str) {
    let function = format!("{}-init", ric.name);
    let mut agent = TestAgent::start().await;
    let mut spec = ric.spec(&function, 2, 30);
    spec.environment
        .insert("LMI_FIXTURE_INIT_FAIL".into(), "no config table".into());
    let env = agent.create(spec).await;
    let env = agent
        .wait_state(&env.id, &[State::Ready, State::Failed])
        .await;
    assert_eq!(env.state(), State::Failed, "{env:?}");
    let f = env.failure.clone().unwrap();
    assert_eq!(f.error_type, "Runtime.ExitError", "{f:?}");
    assert!(
        f.message.contains("during init") && f.message.contains("exit status 1"),
        "{f:?}"
    );
    // An invoke now finds no environment to run on.
    let r = agent.invoke(&function, json!({"action": "echo"})).await;
    assert!(
        r.as_ref()
            .map(|r| r.outcome() != Out::Success)
            .unwrap_or(true),
        "{r:?}"
    );
    let records = logs_until_end(&agent, &function, &env.id).await;
    assert!(
        records.iter().any(|r| r.to_string().contains(printed)),
        "{printed:?} not in the function's log: {records:#?}"
    );
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[]);
}

/// A near-6 MB payload both ways: a 5.9 MB event echoed back inside the answer, and an answer of just under
/// the limit.
pub async fn near_limit_payloads(ric: &Ric) {
    let function = format!("{}-big", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, 2, 60)).await;
    let data = "y".repeat(5_900_000);
    let event = json!({"action": "echo", "data": data});
    let r = agent.invoke(&function, event).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{:?}", r.error);
    assert!(r.payload.len() > 5_900_000 && r.payload.len() <= MAX_PAYLOAD);
    let v = payload_json(&r);
    assert_eq!(v["event"]["data"].as_str().unwrap().len(), 5_900_000);
    assert_eq!(v["requestId"], r.request_id.as_str());
    // A JSON string of n bytes is n + 2 on the wire.
    let n = MAX_PAYLOAD - 2;
    let r = agent
        .invoke(&function, json!({"action": "big", "bytes": n}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{:?}", r.error);
    assert_eq!(r.payload.len(), MAX_PAYLOAD);
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

/// Answers over the limit, as many as there are pollers: each caller gets `Function.ResponseSizeTooLarge`,
/// and afterwards a rendezvous of max_concurrency invokes proves every poller of the runtime is still there
/// (a client that lost a poller, or exited, cannot complete it).
pub async fn oversized_answers_keep_every_poller(ric: &Ric) {
    const N: u32 = 4;
    let function = format!("{}-oversized", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, N, 60)).await;
    for i in 0..N {
        let r = agent
            .invoke(
                &function,
                json!({"action": "big", "bytes": MAX_PAYLOAD + 1024}),
            )
            .await
            .unwrap();
        if r.outcome() != Out::FunctionError {
            panic!(
                "answer {i}: {r:?}; the runtime's last lines:\n{}",
                last_lines(&agent, &function, &env.id).await
            );
        }
        let e = r.error.unwrap();
        assert_eq!(
            e.error_type, "Function.ResponseSizeTooLarge",
            "answer {i}: {e:?}"
        );
    }
    rendezvous(&agent, &function, N as usize).await;
    assert_serving(&mut agent, &env).await;
    agent.delete(&env.id).await;
    agent.stop_and_assert_clean(&[env.pid]);
}

/// The handler logs a marker through the client's own logger; returns the function's record carrying it
/// and the invoke's request id (the environment is deleted to flush its log).
pub async fn logged_record(ric: &Ric) -> (Value, String) {
    let function = format!("{}-logs", ric.name);
    let mut agent = TestAgent::start().await;
    let env = agent.create_ready(ric.spec(&function, 2, 30)).await;
    let marker = format!("marker-{}", std::process::id());
    let r = agent
        .invoke(&function, json!({"action": "log", "marker": marker}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, &function, &env.id).await;
    let hits: Vec<_> = records
        .iter()
        .filter(|r| r["stream"] != "lmi-agent" && r["message"].to_string().contains(&marker))
        .cloned()
        .collect();
    assert_eq!(hits.len(), 1, "one record with {marker}: {records:#?}");
    agent.stop_and_assert_clean(&[env.pid]);
    (hits.into_iter().next().unwrap(), r.request_id)
}

/// For a failure message: the last function log records of an environment that failed (its capture
/// has ended, so its records are all written), or a note when it has not failed.
pub async fn last_lines(agent: &TestAgent, function: &str, env_id: &str) -> String {
    let env = agent
        .client
        .clone()
        .get_environment(pb::GetEnvironmentRequest { id: env_id.into() })
        .await
        .unwrap()
        .into_inner();
    if env.state() != State::Failed {
        return "(the environment has not failed)".into();
    }
    let records = logs_until_end(agent, function, env_id).await;
    records[records.len().saturating_sub(12)..]
        .iter()
        .map(|r| format!("{}\n", r["message"]))
        .collect()
}
