//! The scenarios every runtime must pass, written once: echo, the concurrency proof (N invokes inside the
//! function at once), function errors, a timeout (and the environment serving after it), init errors and logs.
//! Each takes a [`Runtime`]: what differs between runtimes (catalog id, test function, handler, how its errors
//! and log lines look in that runtime's words) is data there, not code. The runtimes' test files list which
//! scenarios run for which runtime with [`scenario_tests!`], next to the tests that only make sense for one
//! runtime.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::BTreeSet, path::Path, path::PathBuf};

use lmi_proto::v1::{self as pb, EnvironmentState as St, InvokeOutcome as Out};
use serde_json::{json, Value};
use tonic::Code;

use crate::support::*;

/// One `#[tokio::test]` per scenario named, in a module named after the runtime (`node22::timeout`):
/// `scenario_tests!(java17 = java("java17"); echo, concurrency, timeout);`. The runtime expression is
/// evaluated in the calling file's scope.
#[macro_export]
macro_rules! scenario_tests {
    ($module:ident = $runtime:expr; $($scenario:ident),+ $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    $crate::scenarios::$scenario(&$runtime).await;
                }
            )+
        }
    };
}

/// A runtime as the scenarios see it.
#[derive(Clone)]
pub struct Runtime {
    /// The catalog id (`spec.runtime`).
    pub id: &'static str,
    /// Makes the scenarios' function names unique per runtime description (`java17-echo`).
    pub name: &'static str,
    /// The test function's code directory (a function: a compiled fixture is built on first use, as root).
    pub code: fn() -> PathBuf,
    /// The handler that knows the actions `echo`, `gate` and the one of [`Self::errors`].
    pub handler: &'static str,
    /// Environment variables of every spec (e.g. where an official client is installed).
    pub env: fn() -> Vec<(&'static str, String)>,
    /// When the catalog says the runtime cannot run here: skip (with the reason) instead of failing.
    pub optional: bool,
    /// The catalog's `default_concurrency_per_vcpu` for it, when a scenario should check it.
    pub concurrency_per_vcpu: Option<u32>,
    /// The field of an echo's answer that holds the event.
    pub echo_field: &'static str,
    /// A field of the echo's answer that names what ran it, and how its value starts (a version, say).
    pub echo_names: Option<(&'static str, &'static str)>,
    /// One invoke at a time (max concurrency 1): no second invoke runs beside a held one.
    pub serial: bool,
    /// The runtime is one process (its threads or tasks run the invokes): the environment's cgroup holds only
    /// it, and every answer that names a pid names it.
    pub one_process: bool,
    /// An event the function holds until a file named `release` appears in `dir`, after creating a file
    /// there (its arrival, an event the test waits for).
    pub hold: fn(&Path) -> Value,
    /// The concurrency proof, where the runtime runs invokes side by side.
    pub concurrency: Option<Concurrency>,
    /// Function errors and how this runtime reports them.
    pub errors: Vec<FunctionError>,
    /// Handlers that cannot start and the failure this runtime reports.
    pub init_errors: Vec<InitError>,
    /// How the function writes log lines, where it can.
    pub logs: Option<Logs>,
    /// Where the test function's `context` action answers with the context's fields under Lambda's Java/.NET
    /// names (`invokedFunctionArn`, `remainingTimeInMillis`, ...): further fields of that answer and their
    /// values in this runtime.
    pub context: Option<Vec<(&'static str, &'static str)>>,
}

/// N gate invokes into one environment.
#[derive(Clone, Copy)]
pub struct Concurrency {
    pub n: usize,
    /// Each invoke ran on a thread of its own (the answers' `thread` fields all differ).
    pub thread_per_invoke: bool,
}

/// An invoke that fails in the function, and the error the caller must get.
#[derive(Clone)]
pub struct FunctionError {
    pub handler: &'static str,
    pub event: Value,
    pub error_type: &'static str,
    pub message: &'static str,
    /// The first frame starts with this.
    pub top_frame: Option<&'static str>,
    /// Some frame contains this (the function's own file).
    pub names: Option<&'static str>,
    /// No frame contains any of these (the runtime's own frames are cut).
    pub hides: &'static [&'static str],
    /// The whole stack, when the runtime reports a fixed one.
    pub exact_stack: Option<&'static [&'static str]>,
}

impl FunctionError {
    /// An error with no stack check yet (set the fields that apply).
    pub fn new(
        handler: &'static str,
        event: Value,
        error_type: &'static str,
        message: &'static str,
    ) -> Self {
        Self {
            handler,
            event,
            error_type,
            message,
            top_frame: None,
            names: None,
            hides: &[],
            exact_stack: None,
        }
    }
}

/// A handler (or a code directory) that fails the environment's init.
#[derive(Clone)]
pub struct InitError {
    pub handler: &'static str,
    /// Another code directory than the runtime's.
    pub code: Option<fn() -> PathBuf>,
    pub error_type: &'static str,
    /// Text the failure's message must hold.
    pub message: &'static str,
}

impl InitError {
    pub fn new(handler: &'static str, error_type: &'static str, message: &'static str) -> Self {
        Self {
            handler,
            code: None,
            error_type,
            message,
        }
    }
}

/// How the function writes `LOG_LINES` lines holding `marker`.
#[derive(Clone)]
pub struct Logs {
    /// The handler that logs (`None`: the runtime's).
    pub handler: Option<&'static str>,
    pub event: Value,
    pub marker: &'static str,
}

/// The lines a log event asks for (each runtime writes at least this many records holding the marker).
pub const LOG_LINES: usize = 3;

impl Runtime {
    /// A spec of this runtime's test function on `handler`.
    pub fn spec_for(&self, function: &str, handler: &str) -> pb::EnvironmentSpec {
        let mut spec = code_spec(function, self.id, handler, &(self.code)());
        for (k, v) in (self.env)() {
            spec.environment.insert(k.into(), v);
        }
        spec
    }

    /// A spec on the runtime's handler.
    pub fn spec(&self, function: &str) -> pb::EnvironmentSpec {
        self.spec_for(function, self.handler)
    }

    /// The scenario's function name.
    fn function(&self, scenario: &str) -> String {
        format!("{}-{scenario}", self.name)
    }

    /// The max concurrency of a scenario that wants two invokes side by side (one for a serial runtime).
    fn pair(&self) -> u32 {
        if self.serial {
            1
        } else {
            2
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------------------

/// A test agent when this is root and the catalog can run `rt` here (`None`: skipped, the reason printed).
async fn start(rt: &Runtime) -> Option<TestAgent> {
    if missing_privileges() {
        return None;
    }
    let mut agent = TestAgent::start().await;
    let host = agent.host().await;
    let entry = host
        .runtimes
        .iter()
        .find(|r| r.id == rt.id)
        .unwrap_or_else(|| panic!("{} is not in the catalog", rt.id));
    if let Some(n) = rt.concurrency_per_vcpu {
        assert_eq!(entry.default_concurrency_per_vcpu, n, "{}", rt.id);
    }
    if !entry.available {
        assert!(
            rt.optional,
            "{} is unavailable ({}); run tests/setup.sh",
            rt.id, entry.unavailable_reason
        );
        lmi_testkit::skip(&format!(
            "{} unavailable: {}",
            rt.id, entry.unavailable_reason
        ));
        return None;
    }
    Some(agent)
}

/// Events come back from the function, with the invoke's request id, from the environment that ran them.
pub async fn echo(rt: &Runtime) {
    let Some(mut agent) = start(rt).await else {
        return;
    };
    let function = rt.function("echo");
    let mut spec = rt.spec(&function);
    spec.max_concurrency = rt.pair();
    let env = agent.create_ready(spec).await;
    for i in 0..3 {
        let event =
            json!({"action": "echo", "n": i, "text": "héllo", "list": [1, 2.5, {"deep": true}]});
        let r = agent.invoke(&function, event.clone()).await.unwrap();
        assert_eq!(r.outcome(), Out::Success, "{}: {r:?}", rt.name);
        assert_eq!(r.environment_id, env.id);
        let v = payload_json(&r);
        assert_eq!(
            v[rt.echo_field], event,
            "{}: the event arrives intact",
            rt.name
        );
        assert_eq!(v["requestId"], r.request_id.as_str(), "{}", rt.name);
        if rt.one_process && !v["pid"].is_null() {
            assert_eq!(
                v["pid"],
                pid_in_namespace(env.pid),
                "{}: the runtime process itself serves every invoke",
                rt.name
            );
        }
        if let Some((field, prefix)) = rt.echo_names {
            assert!(
                v[field].as_str().is_some_and(|s| s.starts_with(prefix)),
                "{}: {field} starts with {prefix:?}: {v}",
                rt.name
            );
        }
    }
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

/// Fires `n` gate invokes at `function`: each announces itself with a file and returns only once all `n` are
/// there, so they can only all succeed if all `n` were inside the function at the same time. Checks that each
/// ran exactly once and returns their answers.
pub async fn overlap(
    agent: &TestAgent,
    function: &str,
    n: usize,
) -> Vec<(pb::InvokeResponse, Value)> {
    let dir = shared_dir();
    let calls: Vec<_> = (0..n)
        .map(|_| tokio::spawn(invoke(agent.client.clone(), function, gate(dir.path(), n))))
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{function}: {r:?}");
        let v = payload_json(&r);
        assert_eq!(
            v["seen"].as_array().unwrap().len(),
            n,
            "{function}: not all {n} at once: {v}"
        );
        if !v["requestId"].is_null() {
            assert_eq!(v["requestId"], r.request_id.as_str(), "{function}");
        }
        answers.push((r, v));
    }
    let mut ids: Vec<String> = answers.iter().map(|(r, _)| r.request_id.clone()).collect();
    ids.sort();
    let mut seen: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    seen.sort();
    assert_eq!(ids, seen, "{function}: each invoke ran exactly once");
    answers
}

/// N invokes inside the function at once, in one environment (and, where the runtime is one process, in that
/// process; where it runs an invoke per thread, on N threads).
pub async fn concurrency(rt: &Runtime) {
    let c = rt
        .concurrency
        .unwrap_or_else(|| panic!("{} runs one invoke at a time", rt.name));
    let Some(mut agent) = start(rt).await else {
        return;
    };
    let function = rt.function("concurrency");
    let mut spec = rt.spec(&function);
    spec.max_concurrency = c.n as u32;
    spec.timeout_seconds = 120;
    let env = agent.create_ready(spec).await;
    let answers = overlap(&agent, &function, c.n).await;
    let mut threads = BTreeSet::new();
    for (r, v) in &answers {
        assert_eq!(r.environment_id, env.id);
        if rt.one_process && !v["pid"].is_null() {
            assert_eq!(
                v["pid"],
                pid_in_namespace(env.pid),
                "{}: one process serves every invoke",
                rt.name
            );
        }
        threads.insert(v["thread"].to_string());
    }
    if c.thread_per_invoke {
        assert_eq!(threads.len(), c.n, "one thread per invoke: {threads:?}");
    }
    if rt.one_process {
        let dirs = agent.env_cgroup_dirs(&env.id);
        assert_eq!(
            cgroup_pids(&dirs["memory"]),
            vec![env.pid],
            "{}: the runtime is the environment's only process",
            rt.name
        );
    }
    assert_eq!(agent.get(&env.id).await.in_flight, 0);
    agent.stop_and_assert_clean(&[env.pid]);
}

/// An error in the function reaches the caller with its type, message and stack in the runtime's words, and
/// the environment serves the next invoke.
pub async fn function_error(rt: &Runtime) {
    assert!(
        !rt.errors.is_empty(),
        "{}: no function error described",
        rt.name
    );
    let Some(mut agent) = start(rt).await else {
        return;
    };
    // One environment per handler the cases use.
    let mut handlers: Vec<&str> = rt.errors.iter().map(|e| e.handler).collect();
    handlers.sort_unstable();
    handlers.dedup();
    let mut envs = Vec::new();
    for (i, handler) in handlers.iter().enumerate() {
        let function = rt.function(&format!("error{i}"));
        let mut spec = rt.spec_for(&function, handler);
        spec.max_concurrency = rt.pair();
        envs.push((function, *handler, agent.create_ready(spec).await));
    }
    for case in &rt.errors {
        let (function, _, _) = envs.iter().find(|(_, h, _)| *h == case.handler).unwrap();
        let r = agent.invoke(function, case.event.clone()).await.unwrap();
        assert_eq!(r.outcome(), Out::FunctionError, "{function}: {r:?}");
        let e = r.error.unwrap();
        assert_eq!(e.error_type, case.error_type, "{function}: {e:?}");
        assert_eq!(e.error_message, case.message, "{function}: {e:?}");
        let stack = &e.stack_trace;
        if let Some(top) = case.top_frame {
            assert!(
                stack.first().is_some_and(|f| f.starts_with(top)),
                "{function}: the stack starts in the function: {stack:?}"
            );
        }
        if let Some(file) = case.names {
            assert!(
                stack.iter().any(|f| f.contains(file)),
                "{function}: the stack names {file}: {stack:?}"
            );
        }
        for hidden in case.hides {
            assert!(
                stack.iter().all(|f| !f.contains(hidden)),
                "{function}: the runtime's own frames ({hidden}) are cut: {stack:?}"
            );
        }
        if let Some(exact) = case.exact_stack {
            assert_eq!(stack, exact, "{function}");
        }
    }
    // The environments are fine afterwards.
    for (function, _, env) in &envs {
        let ok = agent
            .invoke(function, json!({"action": "echo"}))
            .await
            .unwrap();
        assert_eq!(ok.outcome(), Out::Success, "{function}: {ok:?}");
        assert_eq!(ok.environment_id, env.id);
    }
    let pids: Vec<u32> = envs.iter().map(|(_, _, e)| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

/// An invoke past its deadline gets `Sandbox.Timedout` while another runs beside it; the code is not killed:
/// its late answer frees the slot, and the environment stays READY and keeps serving.
pub async fn timeout(rt: &Runtime) {
    let Some(mut agent) = start(rt).await else {
        return;
    };
    let function = rt.function("timeout");
    let mut spec = rt.spec(&function);
    spec.max_concurrency = rt.pair();
    spec.timeout_seconds = 1;
    let env = agent.create_ready(spec).await;
    let dir = shared_dir();
    let held = tokio::spawn(invoke(
        agent.client.clone(),
        &function,
        (rt.hold)(dir.path()),
    ));
    wait_for_files(dir.path(), 1).await;
    if !rt.serial {
        let quick = agent
            .invoke(&function, json!({"action": "echo"}))
            .await
            .unwrap();
        assert_eq!(quick.outcome(), Out::Success, "{function}: {quick:?}");
    }
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.outcome(), Out::Timeout, "{function}: {r:?}");
    let e = r.error.unwrap();
    assert_eq!(e.error_type, "Sandbox.Timedout");
    assert_eq!(e.error_message, "Task timed out after 1.00 seconds");
    // Released, the held invoke answers late; its slot comes back when it does.
    std::fs::write(dir.path().join("release"), "").unwrap();
    wait_in_flight(&mut agent, &env.id, 0).await;
    let now = agent.get(&env.id).await;
    assert_eq!(now.state(), St::Ready, "{function}: {:?}", now.failure);
    assert_eq!(now.pid, env.pid, "{function}: the same runtime process");
    let after = agent
        .invoke(&function, json!({"action": "echo"}))
        .await
        .unwrap();
    assert_eq!(after.outcome(), Out::Success, "{function}: {after:?}");
    agent.stop_and_assert_clean(&[env.pid]);
}

/// Each init error fails its environment with the runtime's reason, before it was ever READY; its processes
/// and cgroup go and its capacity comes back without a delete; invokes are refused at once; a delete keeps the
/// reason.
pub async fn init_error(rt: &Runtime) {
    assert!(
        !rt.init_errors.is_empty(),
        "{}: no init error described",
        rt.name
    );
    let Some(mut agent) = start(rt).await else {
        return;
    };
    let mut created = Vec::new();
    for (i, case) in rt.init_errors.iter().enumerate() {
        let function = rt.function(&format!("badinit{i}"));
        let mut spec = rt.spec_for(&function, case.handler);
        if let Some(code) = case.code {
            spec.code = code_spec(&function, rt.id, case.handler, &code()).code;
        }
        // Where several workers or threads report, the first report wins.
        spec.max_concurrency = if rt.serial { 1 } else { 3 };
        created.push((function, case, agent.create(spec).await));
    }
    for (function, case, env) in &created {
        let what = format!("{function} ({})", case.handler);
        let failed = agent.wait_state(&env.id, &[St::Failed, St::Ready]).await;
        assert_eq!(failed.state(), St::Failed, "{what}");
        let f = failed.failure.unwrap();
        assert_eq!(f.error_type, case.error_type, "{what}: {f:?}");
        assert!(
            f.message.contains(case.message),
            "{what}: {:?} lacks {:?}",
            f.message,
            case.message
        );
        assert_eq!(failed.ready_at, None, "{what}: never ready");
        let dirs = agent.env_cgroup_dirs(&env.id);
        eventually("the cgroup is removed", || {
            dirs.values().all(|d| !d.exists())
        })
        .await;
        assert!(!process_alive(env.pid), "{what}: runtime gone");
        // Refused at once rather than queued on a dead environment.
        let s = agent.invoke(function, json!({})).await.unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{what}: {s:?}");
    }
    assert_eq!(agent.host().await.vcpus_allocated, 0, "capacity is back");
    for (function, case, env) in &created {
        let gone = agent.delete(&env.id).await;
        assert_eq!(gone.state(), St::Terminated, "{function}");
        assert_eq!(
            gone.failure.unwrap().error_type,
            case.error_type,
            "{function}"
        );
    }
    let pids: Vec<u32> = created.iter().map(|(_, _, e)| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

/// Lines the function writes reach `lmictl logs`, each a record of its invoke's request id.
pub async fn logs(rt: &Runtime) {
    let logs = rt
        .logs
        .clone()
        .unwrap_or_else(|| panic!("{}: no log lines described", rt.name));
    let Some(mut agent) = start(rt).await else {
        return;
    };
    let function = rt.function("logs");
    let mut spec = rt.spec_for(&function, logs.handler.unwrap_or(rt.handler));
    spec.max_concurrency = rt.pair();
    let env = agent.create_ready(spec).await;
    let r = agent.invoke(&function, logs.event.clone()).await.unwrap();
    assert_eq!(r.outcome(), Out::Success, "{function}: {r:?}");
    // Deleting the environment ends its log capture: every line it wrote is in the log by then.
    agent.delete(&env.id).await;
    let records = logs_until_end(&agent, &function, &env.id).await;
    let lines: Vec<&Value> = records
        .iter()
        .filter(|r| record_text(r).contains(logs.marker))
        .collect();
    assert!(
        lines.len() >= LOG_LINES,
        "{function}: {} records hold {:?}: {records:#?}",
        lines.len(),
        logs.marker
    );
    for line in lines {
        assert_eq!(
            line["requestId"],
            r.request_id.as_str(),
            "{function}: {line}"
        );
        assert_eq!(line["environment"], env.id.as_str(), "{function}: {line}");
    }
    agent.stop_and_assert_clean(&[env.pid]);
}

/// The handler's context and environment variables describe the function, its version and the invoke (its
/// request id, client context, trace id and deadline).
pub async fn context(rt: &Runtime) {
    let extra = rt
        .context
        .clone()
        .unwrap_or_else(|| panic!("{}: no context action described", rt.name));
    let Some(mut agent) = start(rt).await else {
        return;
    };
    let function = rt.function("context");
    let mut spec = rt.spec(&function);
    spec.function.as_mut().unwrap().version = "7".into();
    spec.memory_mib = 4096;
    spec.max_concurrency = 3;
    spec.timeout_seconds = 30;
    spec.environment
        .insert("GREETING".into(), "hi from the spec".into());
    let env = agent.create_ready(spec).await;
    let trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1";
    let r = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: function.clone(),
            function_version: "7".into(),
            payload: json!({"action": "context"}).to_string().into_bytes().into(),
            request_id: "ctx-request-1".into(),
            client_context: r#"{"custom":{"k":"v"}}"#.into(),
            trace_id: trace.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Out::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["requestId"], "ctx-request-1");
    assert_eq!(v["clientContext"], r#"{"custom":{"k":"v"}}"#);
    assert_eq!(v["traceId"], trace);
    assert_eq!(v["functionName"], function.as_str());
    assert_eq!(v["functionVersion"], "7");
    assert!(
        v["invokedFunctionArn"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":function:{function}:7")),
        "{v}"
    );
    assert_eq!(v["memoryLimitInMB"], 4096);
    assert_eq!(
        v["logGroupName"],
        format!("/aws/lambda/{function}").as_str()
    );
    let stream = v["logStreamName"].as_str().unwrap();
    assert!(stream.ends_with(&format!("[7]{}", env.id)), "{stream}");
    // The deadline is the invoke's own: at most 30 s after the handler read the clock, and still ahead.
    let (deadline, now) = (
        v["deadlineMs"].as_i64().unwrap(),
        v["nowMs"].as_i64().unwrap(),
    );
    assert!(deadline > now && deadline <= now + 30_000, "{v}");
    let remaining = v["remainingTimeInMillis"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 30_000, "{v}");
    for (field, value) in extra {
        assert_eq!(v[field], value, "{}: {field}", rt.name);
    }
    assert_eq!(v["env"]["GREETING"], "hi from the spec");
    assert_eq!(
        v["env"]["AWS_EXECUTION_ENV"],
        format!("AWS_Lambda_{}", rt.id).as_str()
    );
    assert_eq!(v["env"]["AWS_LAMBDA_MAX_CONCURRENCY"], "3");
    agent.stop_and_assert_clean(&[env.pid]);
}

// ---------------------------------------------------------------------------------------------------------
// The runtimes
// ---------------------------------------------------------------------------------------------------------

fn no_env() -> Vec<(&'static str, String)> {
    Vec::new()
}

fn gate_held(dir: &Path) -> Value {
    gate(dir, 2)
}

/// How a handler of the Java and .NET test functions answers the echo event of [`handler_shapes`].
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// The fixtures' Actions class: the caller checks its answer.
    Actions,
    /// `{"plain": event, "requestId"}`.
    Plain,
    /// `{"length": the event's length in bytes}`.
    Bytes,
    /// `{"streamed": event, "function"}`.
    Streams,
    /// The event itself.
    Event,
}

/// Every handler shape of a runtime gets the same JSON event and its answer comes back: one environment a
/// `(function, handler, answer)` case (the spec from `rt`, 2 invokes at most), all created before any is
/// invoked; `actions` checks the answers of the [`Answer::Actions`] cases (environment, response, payload,
/// event). Stops the agent and checks it left nothing behind.
pub async fn handler_shapes(
    mut agent: TestAgent,
    rt: &Runtime,
    cases: &[(&str, &str, Answer)],
    actions: impl Fn(&pb::Environment, &pb::InvokeResponse, &Value, &Value),
) {
    let mut created = Vec::new();
    for (function, handler, _) in cases {
        let mut spec = rt.spec_for(function, handler);
        spec.max_concurrency = 2;
        created.push(agent.create(spec).await);
    }
    let event = json!({"action": "echo", "name": "world", "n": [1, 2, 3], "nested": {"ok": true}});
    for ((function, _, answer), env) in cases.iter().zip(&created) {
        let env = agent.wait_state(&env.id, &[St::Ready, St::Failed]).await;
        assert_eq!(env.state(), St::Ready, "{function}: {:?}", env.failure);
        let r = agent.invoke_ok(function, event.clone()).await;
        let v = payload_json(&r);
        match answer {
            Answer::Actions => actions(&env, &r, &v, &event),
            Answer::Plain => {
                assert_eq!(v["plain"], event, "{function}");
                assert_eq!(v["requestId"], r.request_id.as_str(), "{function}");
            }
            Answer::Bytes => assert_eq!(v["length"], event.to_string().len(), "{function}"),
            Answer::Streams => {
                assert_eq!(v["streamed"], event, "{function}");
                assert_eq!(v["function"], *function);
            }
            Answer::Event => assert_eq!(v, event, "{function}"),
        }
    }
    let pids: Vec<u32> = created.iter().map(|e| e.pid).collect();
    agent.stop_and_assert_clean(&pids);
}

/// Python 3.11 (runtime-shims/python), tests/fixtures/python: one worker process per concurrent invoke.
pub fn python() -> Runtime {
    Runtime {
        id: "python3.11",
        name: "python",
        code: || fixtures("python"),
        handler: "actions.handler",
        env: no_env,
        optional: false,
        concurrency_per_vcpu: None,
        echo_field: "event",
        echo_names: None,
        serial: false,
        one_process: false,
        hold: gate_held,
        concurrency: Some(Concurrency {
            n: 16,
            thread_per_invoke: false,
        }),
        errors: vec![FunctionError {
            names: Some("actions.py"),
            ..FunctionError::new(
                "actions.handler",
                json!({"action": "raise", "message": "bad input: 42"}),
                "ValueError",
                "bad input: 42",
            )
        }],
        init_errors: vec![
            InitError::new("init_error.handler", "RuntimeError", "boom at init"),
            InitError::new(
                "does_not_exist.handler",
                "Runtime.ImportModuleError",
                "does_not_exist",
            ),
        ],
        logs: Some(Logs {
            handler: Some("log_lines.handler"),
            event: json!({"tag": "scenario-line", "lines": LOG_LINES}),
            marker: "scenario-line",
        }),
        context: None,
    }
}

/// A Java runtime (`java17`, `java21`, ...; runtime-shims/java), tests/fixtures/java: one JVM, a pool thread
/// per concurrent invoke.
pub fn java(id: &'static str) -> Runtime {
    Runtime {
        id,
        name: id,
        code: || built_fixture("java"),
        handler: "fixtures.Actions::handleRequest",
        env: no_env,
        optional: false,
        concurrency_per_vcpu: Some(32),
        echo_field: "event",
        echo_names: Some(("greeting", "hello, java")),
        serial: false,
        one_process: true,
        hold: gate_held,
        concurrency: Some(Concurrency {
            n: 8,
            thread_per_invoke: true,
        }),
        errors: vec![FunctionError {
            top_frame: Some("fixtures.Actions.validate(Actions.java:"),
            hides: &["lmi.lambda.runtime.", "reflect"],
            ..FunctionError::new(
                "fixtures.Actions::handleRequest",
                json!({"action": "raise", "message": "bad input: 42"}),
                "java.lang.IllegalArgumentException",
                "bad input: 42",
            )
        }],
        init_errors: vec![
            InitError::new(
                "fixtures.BadInit::handleRequest",
                "java.lang.IllegalStateException",
                "boom at init",
            ),
            InitError::new(
                "fixtures.DoesNotExist::handleRequest",
                "Runtime.ClassNotFound",
                "fixtures.DoesNotExist",
            ),
            InitError::new(
                "fixtures.Actions::nothingHere",
                "Runtime.HandlerNotFound",
                "nothingHere",
            ),
            InitError::new(
                "fixtures.Plain::wrong",
                "Runtime.HandlerNotFound",
                "supported signature",
            ),
            InitError::new(
                "fixtures.Actions::",
                "Runtime.MalformedHandlerName",
                "fixtures.Actions::",
            ),
        ],
        logs: Some(Logs {
            handler: None,
            event: json!({"action": "log", "text": "scenario-line", "lines": LOG_LINES}),
            marker: "scenario-line",
        }),
        context: Some(vec![("javaSpecVersion", id.trim_start_matches("java"))]),
    }
}

/// .NET 8 (runtime-shims/dotnet, under Mono here; skipped where the catalog says it is unavailable),
/// tests/fixtures/dotnet: one process, a task per concurrent invoke.
pub fn dotnet() -> Runtime {
    Runtime {
        id: "dotnet8",
        name: "dotnet8",
        code: || built_fixture("dotnet"),
        handler: "Fixtures::Fixtures.Actions::Handle",
        env: no_env,
        optional: true,
        concurrency_per_vcpu: Some(32),
        echo_field: "event",
        echo_names: Some(("greeting", "hello, dotnet")),
        serial: false,
        one_process: true,
        hold: gate_held,
        concurrency: Some(Concurrency {
            n: 8,
            thread_per_invoke: false,
        }),
        errors: vec![FunctionError {
            top_frame: Some("at Fixtures.Actions.Validate"),
            hides: &["Lmi.Lambda.RuntimeSupport", "System.Reflection"],
            ..FunctionError::new(
                "Fixtures::Fixtures.Actions::Handle",
                json!({"action": "raise", "message": "bad input: 42"}),
                "ArgumentException",
                "bad input: 42",
            )
        }],
        init_errors: vec![
            InitError::new(
                "Fixtures::Fixtures.BadInit::Handle",
                "InvalidOperationException",
                "boom at init",
            ),
            InitError::new(
                "Nope::Fixtures.Actions::Handle",
                "Runtime.AssemblyNotFound",
                "Nope",
            ),
            InitError::new(
                "Fixtures::Fixtures.DoesNotExist::Handle",
                "Runtime.ClassNotFound",
                "Fixtures.DoesNotExist",
            ),
            InitError::new(
                "Fixtures::Fixtures.Actions::NothingHere",
                "Runtime.HandlerNotFound",
                "NothingHere",
            ),
            InitError::new(
                "Fixtures::Fixtures.Plain::Wrong",
                "Runtime.HandlerNotFound",
                "supported signature",
            ),
            InitError::new(
                "Fixtures.Actions::Handle",
                "Runtime.MalformedHandlerName",
                "Fixtures.Actions::Handle",
            ),
        ],
        logs: Some(Logs {
            handler: None,
            event: json!({"action": "log", "text": "scenario-line", "lines": LOG_LINES}),
            marker: "scenario-line",
        }),
        context: Some(Vec::new()),
    }
}

/// The function errors of tests/fixtures/node, in Node's words (an ES module and a callback handler).
fn node_errors() -> Vec<FunctionError> {
    let esm = "actions.handler";
    let cb = "callback.handler";
    let hides: &[&str] = &["runtime-shims"];
    vec![
        FunctionError {
            names: Some("actions.mjs"),
            hides,
            ..FunctionError::new(
                esm,
                json!({"action": "raise", "message": "bad input: 42"}),
                "TypeError",
                "bad input: 42",
            )
        },
        FunctionError::new(
            esm,
            json!({"action": "reject_string", "message": "just text"}),
            "string",
            "just text",
        ),
        FunctionError {
            names: Some("callback.cjs"),
            hides,
            ..FunctionError::new(
                cb,
                json!({"action": "raise", "message": "too far"}),
                "RangeError",
                "too far",
            )
        },
        FunctionError {
            names: Some("callback.cjs"),
            hides,
            ..FunctionError::new(
                cb,
                json!({"action": "fail", "message": "context.fail said so"}),
                "Error",
                "context.fail said so",
            )
        },
        FunctionError::new(
            cb,
            json!({"action": "string_error", "message": "plain string error"}),
            "string",
            "plain string error",
        ),
    ]
}

/// A Node.js runtime (`nodejs20.x`, `nodejs22.x`; runtime-shims/node), tests/fixtures/node: one process,
/// worker threads that each run many invokes.
pub fn node(id: &'static str) -> Runtime {
    let (name, version) = match id {
        "nodejs20.x" => ("node20", "20."),
        "nodejs22.x" => ("node22", "22."),
        _ => panic!("no test description of {id}"),
    };
    Runtime {
        id,
        name,
        code: || fixtures("node"),
        handler: "actions.handler",
        env: no_env,
        optional: false,
        concurrency_per_vcpu: Some(64),
        echo_field: "event",
        echo_names: Some(("node", version)),
        serial: false,
        one_process: true,
        hold: gate_held,
        concurrency: Some(Concurrency {
            n: 12,
            thread_per_invoke: false,
        }),
        errors: node_errors(),
        init_errors: vec![
            InitError::new(
                "does_not_exist.handler",
                "Runtime.ImportModuleError",
                "Cannot find module 'does_not_exist'",
            ),
            InitError::new(
                "missing_dep.handler",
                "Runtime.ImportModuleError",
                "lmi-no-such-package",
            ),
            InitError::new(
                "actions.nope",
                "Runtime.HandlerNotFound",
                "actions.nope is undefined or not exported",
            ),
            InitError::new(
                "not_a_function.handler",
                "Runtime.HandlerNotFound",
                "not_a_function.handler is not a function",
            ),
            InitError::new(
                "syntax_error.handler",
                "Runtime.UserCodeSyntaxError",
                "SyntaxError",
            ),
            InitError::new("init_throws.handler", "Error", "boom at init"),
            InitError::new("actions", "Runtime.MalformedHandlerName", "actions"),
        ],
        // console.log('line', i, 'of', requestId)
        logs: Some(Logs {
            handler: None,
            event: json!({"action": "log", "lines": LOG_LINES}),
            marker: "line ",
        }),
        // Its `context` answer has Node's names: tests/runtime_node.rs checks it.
        context: None,
    }
}

/// The aws-lambda-ric package directory that tests/setup.sh builds.
pub fn node_ric_dir() -> PathBuf {
    let dir = test_tools().join("aws-lambda-ric/node_modules/aws-lambda-ric");
    assert!(
        dir.join("rapid-client.node").is_file() && dir.join("index.mjs").is_file(),
        "aws-lambda-ric is not built in {}; run tests/setup.sh",
        dir.display()
    );
    dir
}

/// The official Node.js client (npm aws-lambda-ric >= 4), unmodified, as a provided.al2023 function whose
/// bootstrap (tests/fixtures/node/bootstrap) execs it on Node 22.
pub fn node_ric() -> Runtime {
    Runtime {
        id: "provided.al2023",
        name: "node-ric",
        env: || vec![("LMI_NODE_RIC", node_ric_dir().display().to_string())],
        concurrency_per_vcpu: None,
        errors: vec![FunctionError {
            names: Some("actions.mjs"),
            ..FunctionError::new(
                "actions.handler",
                json!({"action": "raise", "message": "bad input: 7"}),
                "TypeError",
                "bad input: 7",
            )
        }],
        init_errors: Vec::new(),
        ..node("nodejs22.x")
    }
}

/// `provided.al2023` with a compiled bootstrap (tests/fixtures/provided/c): the Runtime API loop of a native
/// binary, one invoke at a time; it writes no log lines.
pub fn provided_c() -> Runtime {
    Runtime {
        id: "provided.al2023",
        name: "provided-c",
        code: || built_fixture("provided/c"),
        handler: "unused",
        env: no_env,
        optional: false,
        concurrency_per_vcpu: None,
        echo_field: "echo",
        echo_names: None,
        serial: true,
        one_process: true,
        hold: |dir| json!({"hold": dir.display().to_string()}),
        concurrency: None,
        errors: vec![FunctionError {
            exact_stack: Some(&["main (bootstrap.c)"]),
            ..FunctionError::new(
                "unused",
                json!({"fail": "no such order"}),
                "Function.Failed",
                "no such order",
            )
        }],
        init_errors: vec![InitError {
            code: Some(|| fixtures("provided/exits-in-init")),
            ..InitError::new(
                "unused",
                "Runtime.ExitError",
                "Runtime exited during init with error: exit status 3",
            )
        }],
        logs: None,
        context: None,
    }
}
