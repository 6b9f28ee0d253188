//! Environment lifecycle against the real daemon: cgroups, limits, processes, validation, capacity, delete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use lmi_proto::v1::{self as pb, EnvironmentState as St};
use support::*;
use tonic::Code;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_files_hold_the_limits_each_ratio_implies_and_the_runtime_runs_inside() {
    require_root!();
    let mut agent = TestAgent::start().await;
    // (memory MiB, GiB per vCPU, expected vCPUs)
    let cases = [(2048u32, 2u32, 1u64), (8192, 4, 2), (32768, 8, 4)];
    let mut pids = Vec::new();
    let mut envs = Vec::new();
    for (i, (mem, ratio, vcpus)) in cases.iter().enumerate() {
        let mut spec = python_spec(&format!("limits{i}"), "actions.handler");
        spec.memory_mib = *mem;
        spec.memory_gib_per_vcpu = *ratio;
        spec.max_concurrency = 2;
        let env = agent.create_ready(spec).await;
        assert_eq!(u64::from(env.vcpus), *vcpus);
        let dirs = agent.env_cgroup_dirs(&env.id);
        let cpu = &dirs["cpu"];
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(
            read(&cpu.join("cpu.cfs_quota_us")),
            (vcpus * 100_000).to_string()
        );
        let memory = &dirs["memory"];
        let bytes = (u64::from(*mem) * 1024 * 1024).to_string();
        assert_eq!(read(&memory.join("memory.limit_in_bytes")), bytes);
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                read(&memory.join("memory.memsw.limit_in_bytes")),
                bytes,
                "no swap"
            );
        }
        assert_eq!(read(&dirs["pids"].join("pids.max")), "4096");
        // The runtime's main process and its 2 workers are in the cgroup of every controller.
        let main_pid = env.pid;
        assert!(main_pid > 0);
        for ctrl in ["cpu", "memory", "pids"] {
            let in_cgroup = cgroup_pids(&dirs[ctrl]);
            assert!(
                in_cgroup.contains(&main_pid),
                "{ctrl}: {main_pid} not in {in_cgroup:?}"
            );
            assert!(
                in_cgroup.len() >= 3,
                "{ctrl}: main + 2 workers expected, got {in_cgroup:?}"
            );
        }
        pids.extend(cgroup_pids(&dirs["memory"]));
        // The environment variables reached the runtime.
        let r = agent
            .invoke(&format!("limits{i}"), serde_json::json!({"action": "echo"}))
            .await
            .unwrap();
        assert_eq!(r.outcome(), pb::InvokeOutcome::Success);
        envs.push((env.id, dirs));
    }
    let host = agent.host().await;
    assert_eq!(host.vcpus_allocated, 7);
    assert_eq!(host.memory_mib_allocated, 2048 + 8192 + 32768);
    assert_eq!(host.cgroup_version, "v1");

    // Delete: processes die with the environment, cgroups go, capacity comes back.
    let (id, dirs) = envs.remove(0);
    let gone = agent.delete(&id).await;
    assert_eq!(gone.state(), St::Terminated);
    for d in dirs.values() {
        assert!(!d.exists(), "{} still exists after delete", d.display());
    }
    let host = agent.host().await;
    assert_eq!(host.vcpus_allocated, 6);
    let status = agent
        .client
        .get_environment(pb::GetEnvironmentRequest { id })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    agent.stop_and_assert_clean(&pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_environment_variables_follow_the_reference() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("envvars", "echo.handler");
    spec.memory_mib = 4096;
    spec.max_concurrency = 3;
    spec.environment.insert("GREETING".into(), "hello".into());
    spec.function.as_mut().unwrap().version = "7".into();
    let env = agent.create_ready(spec).await;
    let r = agent
        .client
        .invoke(pb::InvokeRequest {
            function_name: "envvars".into(),
            function_version: "7".into(),
            payload: br#"{"env_keys": ["GREETING", "AWS_LAMBDA_LOG_STREAM_NAME", "TZ", "_HANDLER", "LAMBDA_TASK_ROOT", "AWS_LAMBDA_RUNTIME_API"]}"#.to_vec().into(),
            request_id: "req-fixed-1".into(),
            trace_id: "Root=1-5e1b4151-5ac6c58f5b5b5b5b5b5b5b5b".into(),
            client_context: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.request_id, "req-fixed-1");
    assert_eq!(r.environment_id, env.id);
    assert_eq!(r.executed_version, "7");
    let v = payload_json(&r);
    assert_eq!(v["requestId"], "req-fixed-1");
    assert_eq!(v["functionName"], "envvars");
    assert_eq!(v["functionVersion"], "7");
    assert_eq!(v["memoryLimitInMB"], "4096");
    assert_eq!(
        v["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:envvars:7"
    );
    let remaining = v["remainingMs"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 3000, "remaining {remaining}");
    let e = &v["env"];
    assert_eq!(e["AWS_LAMBDA_MAX_CONCURRENCY"], "3");
    assert_eq!(
        e["AWS_LAMBDA_INITIALIZATION_TYPE"],
        "lambda-managed-instances"
    );
    assert_eq!(e["AWS_EXECUTION_ENV"], "AWS_Lambda_python3.11");
    assert_eq!(e["AWS_LAMBDA_LOG_FORMAT"], "JSON");
    assert_eq!(e["GREETING"], "hello");
    assert_eq!(e["TZ"], ":UTC");
    assert_eq!(e["_HANDLER"], "echo.handler");
    // The code is bound read-only at Lambda's path inside the runtime's mount namespace.
    assert_eq!(e["LAMBDA_TASK_ROOT"], "/var/task");
    assert_eq!(e["AWS_LAMBDA_RUNTIME_API"], env.runtime_api);
    assert_eq!(
        e["_X_AMZN_TRACE_ID"],
        "Root=1-5e1b4151-5ac6c58f5b5b5b5b5b5b5b5b"
    );
    assert!(e["AWS_LAMBDA_LOG_STREAM_NAME"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/[7]{}", env.id)));
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_spec_field_is_invalid_argument_naming_the_field() {
    require_root!();
    let mut agent = TestAgent::start().await;
    type Mutation = Box<dyn Fn(&mut pb::EnvironmentSpec)>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|s| s.function = None),
            "spec.function: is required",
        ),
        (
            Box::new(|s| s.function.as_mut().unwrap().name = "bad name".into()),
            "spec.function.name:",
        ),
        (
            Box::new(|s| s.function.as_mut().unwrap().version = "v/1".into()),
            "spec.function.version:",
        ),
        (
            Box::new(|s| s.function.as_mut().unwrap().arn = "nope".into()),
            "spec.function.arn:",
        ),
        (
            Box::new(|s| s.runtime = "cobol85".into()),
            "spec.runtime: unknown runtime \"cobol85\"",
        ),
        (
            Box::new(|s| s.handler = String::new()),
            "spec.handler: is required",
        ),
        (Box::new(|s| s.code = None), "spec.code: is required"),
        (
            Box::new(|s| {
                s.code.as_mut().unwrap().source =
                    Some(pb::code::Source::Directory("/no/such".into()))
            }),
            "spec.code.directory: /no/such is not a directory",
        ),
        (
            Box::new(|s| s.code.as_mut().unwrap().sha256 = "12".into()),
            "spec.code.sha256: must be 64 hexadecimal characters",
        ),
        (
            Box::new(|s| s.memory_gib_per_vcpu = 3),
            "spec.memory_gib_per_vcpu: 3 must be one of 2, 4 or 8",
        ),
        (
            Box::new(|s| s.memory_mib = 1024),
            "spec.memory_mib: 1024 must be between 2048 and 32768 MiB",
        ),
        (
            Box::new(|s| s.memory_mib = 65536),
            "spec.memory_mib: 65536 must be between 2048 and 32768 MiB",
        ),
        (
            Box::new(|s| {
                s.memory_mib = 4096;
                s.memory_gib_per_vcpu = 8
            }),
            "spec.memory_mib: 4096 must be a multiple of 8192 MiB",
        ),
        (
            Box::new(|s| s.max_concurrency = 1601),
            "spec.max_concurrency: 1601 must be between 1 and 1600",
        ),
        (
            Box::new(|s| s.timeout_seconds = 901),
            "spec.timeout_seconds: 901 must be between 1 and 900",
        ),
        (
            Box::new(|s| s.ephemeral_storage_mib = 100),
            "spec.ephemeral_storage_mib: 100 must be between 512 and 10240",
        ),
        (
            Box::new(|s| {
                s.environment
                    .insert("AWS_LAMBDA_RUNTIME_API".into(), "x".into());
            }),
            "spec.environment[AWS_LAMBDA_RUNTIME_API]: is a reserved Lambda variable name",
        ),
    ];
    for (i, (mutate, want)) in cases.iter().enumerate() {
        let mut spec = python_spec("invalid", "actions.handler");
        mutate(&mut spec);
        let s = agent.create_refused(spec).await;
        assert_eq!(s.code(), Code::InvalidArgument, "case {i}: {s:?}");
        assert!(
            s.message().starts_with(want),
            "case {i}: {:?} does not start with {want:?}",
            s.message()
        );
    }
    let s = agent
        .client
        .create_environment(pb::CreateEnvironmentRequest { spec: None })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    // Nothing was started for any of them.
    assert_eq!(agent.host().await.environments, 0);
    let leftovers: Vec<_> = agent
        .leftover_cgroups()
        .into_iter()
        .filter(|d| d.file_name().unwrap().to_string_lossy().starts_with("env-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    agent.stop_and_assert_clean(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_larger_than_what_is_free_is_resource_exhausted_and_starts_nothing() {
    require_root!();
    let mut agent = TestAgent::start_with(AgentOptions {
        vcpus: 3,
        memory_mib: 8192,
        ..Default::default()
    })
    .await;
    let a = agent
        .create_ready(python_spec("cap", "actions.handler"))
        .await;
    let mut big = python_spec("cap", "actions.handler");
    big.memory_mib = 8192; // 4 vCPU at 2:1: more than the 2 left
    let s = agent.create_refused(big).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains("cannot fit 4 vCPU and 8192 MiB"),
        "{}",
        s.message()
    );
    let mut mem_heavy = python_spec("cap", "actions.handler");
    mem_heavy.memory_mib = 8192;
    mem_heavy.memory_gib_per_vcpu = 8; // 1 vCPU but 8 GiB: memory is short
    let s = agent.create_refused(mem_heavy).await;
    assert_eq!(s.code(), Code::ResourceExhausted);
    let host = agent.host().await;
    assert_eq!(
        (
            host.environments,
            host.vcpus_allocated,
            host.memory_mib_allocated
        ),
        (1, 1, 2048)
    );
    assert_eq!(
        (
            host.vcpus_total,
            host.vcpus_allocatable,
            host.memory_mib_allocatable
        ),
        (3, 3, 8192)
    );
    let env_dirs: Vec<_> = agent
        .leftover_cgroups()
        .into_iter()
        .filter(|d| d.file_name().unwrap().to_string_lossy().starts_with("env-"))
        .collect();
    // one environment, in each hierarchy the agent manages
    assert!(
        env_dirs
            .iter()
            .all(|d| d.ends_with(format!("env-{}", a.id))),
        "{env_dirs:?}"
    );
    agent.stop_and_assert_clean(&[a.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_runtime_is_invalid_and_an_unavailable_one_is_a_failed_precondition() {
    require_root!();
    let (mut agent, _catalog) = start_with_runtimes(
        "[[runtime]]\nid = \"ghost9\"\ncommand = [\"no-such-interpreter-lmi\", \"x\"]\ndefault_concurrency_per_vcpu = 8\n",
    )
    .await;
    let host = agent.host().await;
    let ghost = host.runtimes.iter().find(|r| r.id == "ghost9").unwrap();
    assert!(!ghost.available);
    assert!(
        ghost
            .unavailable_reason
            .contains("no-such-interpreter-lmi not found"),
        "{ghost:?}"
    );
    assert!(host
        .runtimes
        .iter()
        .any(|r| r.id == "python3.11" && r.available));
    let mut spec = python_spec("ghost", "x.y");
    spec.runtime = "ghost9".into();
    let s = agent.create_refused(spec).await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s
        .message()
        .contains("runtime ghost9 is not available on this host"));
    assert_eq!(agent.host().await.vcpus_allocated, 0);
    agent.stop_and_assert_clean(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_drains_in_flight_invokes_and_refuses_new_ones() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let mut spec = python_spec("drain", "actions.handler");
    spec.max_concurrency = 2;
    spec.timeout_seconds = 60;
    let env = agent.create_ready(spec).await;
    let gate = support::shared_dir();
    let gate_path = gate.path().to_owned();
    let client = agent.client.clone();
    let in_flight = tokio::spawn(invoke(
        client,
        "drain",
        serde_json::json!({"action": "gate", "dir": gate_path.display().to_string(), "count": 2, "max_s": 60}),
    ));
    wait_for_files(gate.path(), 1).await;
    let mut c = agent.client.clone();
    let id = env.id.clone();
    let deleting = tokio::spawn(async move {
        c.delete_environment(pb::DeleteEnvironmentRequest {
            id,
            grace_period_seconds: 60,
        })
        .await
    });
    agent.wait_state(&env.id, &[St::Draining]).await;
    let s = agent
        .invoke("drain", serde_json::json!({"action": "echo"}))
        .await
        .unwrap_err();
    assert_eq!(
        s.code(),
        Code::ResourceExhausted,
        "a draining environment takes no new invoke: {s:?}"
    );
    // Let the in-flight invoke finish: it succeeds although its environment is being deleted.
    std::fs::write(gate.path().join("release"), "").unwrap();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.outcome(), pb::InvokeOutcome::Success);
    let gone = deleting.await.unwrap().unwrap().into_inner();
    assert_eq!(gone.state(), St::Terminated);
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_code_is_checked_and_unpacked_read_only() {
    require_root!();
    let mut agent = TestAgent::start().await;
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("fn.zip");
    let status = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], 'w'); z.write(sys.argv[2], 'main.py'); z.close()"])
        .arg(&zip)
        .arg(fixtures("python").join("echo.py"))
        .status()
        .unwrap();
    assert!(status.success());
    let digest = {
        use sha2::Digest;
        let bytes = std::fs::read(&zip).unwrap();
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let mut spec = python_spec("zipped", "main.handler");
    spec.code = Some(pb::Code {
        source: Some(pb::code::Source::ZipFile(zip.display().to_string())),
        sha256: "0".repeat(64),
    });
    let s = agent.create_refused(spec.clone()).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message()
            .starts_with("spec.code.sha256: the zip file's sha256 is"),
        "{}",
        s.message()
    );
    spec.code.as_mut().unwrap().sha256 = digest.clone();
    let env = agent.create_ready(spec).await;
    let r = agent
        .invoke("zipped", serde_json::json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(payload_json(&r)["event"]["x"], 1);
    let unpacked = agent.dir.path().join("state/code").join(&digest);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&unpacked).unwrap().permissions().mode() & 0o777,
        0o555
    );
    assert_eq!(
        std::fs::metadata(unpacked.join("main.py"))
            .unwrap()
            .permissions()
            .mode()
            & 0o222,
        0
    );
    agent.stop_and_assert_clean(&[env.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_runtime_runs_a_shell_bootstrap() {
    require_root!();
    if which("curl").is_none() {
        lmi_testkit::skip("the shell bootstrap needs curl");
        return;
    }
    let mut agent = TestAgent::start().await;
    let spec = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: "shell".into(),
            ..Default::default()
        }),
        runtime: "provided.al2023".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(
                fixtures("provided/shell").display().to_string(),
            )),
            sha256: String::new(),
        }),
        max_concurrency: 1,
        ..Default::default()
    };
    let env = agent.create_ready(spec).await;
    let r = agent
        .invoke("shell", serde_json::json!({"hello": "world"}))
        .await
        .unwrap();
    assert_eq!(r.outcome(), pb::InvokeOutcome::Success, "{r:?}");
    let v = payload_json(&r);
    assert_eq!(v["echo"]["hello"], "world");
    assert_eq!(v["requestId"], r.request_id);
    agent.stop_and_assert_clean(&[env.pid]);
}

fn which(p: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(p))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_root_only_and_serves_health() {
    require_root!();
    let agent = TestAgent::start().await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let path = agent.socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lmi.agent.v1.Agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Server reflection (what grpcurl and grpcui use) lists the Agent service.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let channel =
        lmi_proto::connect::unix_channel(&agent.socket, lmi_proto::connect::unix_endpoint())
            .await
            .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"lmi.agent.v1.Agent"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    agent.stop_and_assert_clean(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_optional_tcp_listener_serves_the_same_api() {
    require_root!();
    // A free loopback port (bound and released; the agent binds it right after).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = TestAgent::start_with(AgentOptions {
        extra_config: format!("listen_tcp = \"127.0.0.1:{port}\""),
        ..Default::default()
    })
    .await;
    let mut tcp = pb::agent_client::AgentClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let host = tcp
        .get_host(pb::GetHostRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(host.vcpus_total, 64);
    agent.stop_and_assert_clean(&[]);
}
