//! Standard gRPC clients on the agent's Unix socket, with their default settings: grpcio (PyPI, with
//! grpcio-status reading the rich error model) and grpcurl, both installed by tests/setup.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use lmi_proto::v1::{self as pb, InvokeOutcome as Out};
use support::*;

/// A tool tests/setup.sh installs under `$LMI_TEST_TOOLS`.
fn tool(rel: &str) -> PathBuf {
    let p = test_tools().join(rel);
    assert!(p.exists(), "{} is missing: run tests/setup.sh", p.display());
    p
}

/// Function `held` with one slot, taken by an invoke that waits until released: any other invoke of it is
/// throttled for concurrency meanwhile.
struct HeldSlot {
    env: pb::Environment,
    dir: tempfile::TempDir,
    invoke: tokio::task::JoinHandle<Result<pb::InvokeResponse, tonic::Status>>,
}

impl HeldSlot {
    async fn take(agent: &mut TestAgent) -> Self {
        let mut spec = python_spec("held", "actions.handler");
        spec.max_concurrency = 1;
        spec.timeout_seconds = 120;
        let env = agent.create_ready(spec).await;
        let dir = shared_dir();
        let invoke = tokio::spawn(invoke(agent.client.clone(), "held", gate(dir.path(), 2)));
        wait_for_files(dir.path(), 1).await;
        Self { env, dir, invoke }
    }

    /// Lets the held invoke end, which must succeed; returns the environment's pid.
    async fn release(self) -> u32 {
        std::fs::write(self.dir.path().join("release"), "").unwrap();
        let r = self.invoke.await.unwrap().unwrap();
        assert_eq!(r.outcome(), Out::Success, "{r:?}");
        self.env.pid
    }
}

/// Runs the Python recipe of docs/operations.md ("Clients in other languages"), its `sh` block as written,
/// with `python` the grpcio-tools venv's, in a temporary directory where `proto` is the checkout's; the
/// stubs are in `<dir>/lmi_client`.
fn python_stubs_as_documented(python: &Path) -> tempfile::TempDir {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let section = doc
        .split("\n## Clients in other languages\n")
        .nth(1)
        .expect("docs/operations.md has a section \"Clients in other languages\"");
    let recipe = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    assert!(recipe.contains("python -m grpc_tools.protoc"), "{recipe}");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("proto"), dir.path().join("proto")).unwrap();
    let path = format!(
        "{}:{}",
        python.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-e", "-c", recipe])
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the recipe of docs/operations.md failed ({}):\n{recipe}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_its_default_authority_lists_and_reads_a_throttle_with_grpcio_status() {
    require_root!();
    let mut agent = TestAgent::start().await;
    // One invoke holds the only slot until the test releases it: the Python client's invoke is throttled.
    let held = HeldSlot::take(&mut agent).await;

    let python = tool("grpc-python/bin/python");
    let stubs = python_stubs_as_documented(&python);
    let (socket, stubs_dir) = (agent.socket.clone(), stubs.path().join("lmi_client"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo().join("tests/fixtures/grpc-python/client.py"))
            .arg(socket)
            .arg(stubs_dir)
            .arg("held")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["environments"], serde_json::json!([held.env.id]), "{v}");
    assert_eq!(v["code"], "RESOURCE_EXHAUSTED", "{v}");
    assert_eq!(
        v["details"],
        serde_json::json!(["type.googleapis.com/lmi.agent.v1.ThrottleDetails"]),
        "{v}"
    );
    assert_eq!(
        v["throttle"]["reason"], "THROTTLE_REASON_CONCURRENCY",
        "{v}"
    );
    assert_eq!(v["throttle"]["retry_elsewhere"], true, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("throttled (CONCURRENCY)"),
        "{v}"
    );

    let pid = held.release().await;
    agent.stop_and_assert_clean(&[pid]);
}

/// grpcurl as the README shows it (`-plaintext -unix SOCKET list`), then a throttled invoke whose details
/// it decodes through server reflection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_the_services_and_shows_a_throttles_details() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let grpcurl = tool("bin/grpcurl");
    let sock = agent.socket.display().to_string();
    // grpcurl [flags] ADDRESS [verb or method]: flags come before the address.
    let run = |flags: &[&str], args: &[&str]| {
        let out = Command::new(&grpcurl)
            .args(["-plaintext", "-unix"])
            .args(flags)
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&[], &["list"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let services: Vec<&str> = stdout.lines().collect();
    for s in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "lmi.agent.v1.Agent",
    ] {
        assert!(services.contains(&s), "{s} not in {services:?}");
    }

    let held = HeldSlot::take(&mut agent).await;
    let (code, stdout, stderr) = run(
        &["-d", r#"{"function_name": "held"}"#],
        &["lmi.agent.v1.Agent/Invoke"],
    );
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("Code: ResourceExhausted"), "{stderr}");
    assert!(
        stderr.contains("\"@type\": \"type.googleapis.com/lmi.agent.v1.ThrottleDetails\""),
        "{stderr}"
    );
    assert!(stderr.contains("THROTTLE_REASON_CONCURRENCY"), "{stderr}");

    let pid = held.release().await;
    agent.stop_and_assert_clean(&[pid]);
}
