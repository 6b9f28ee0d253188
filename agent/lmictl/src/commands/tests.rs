//! The real command functions against an in-process fake `Agent` served on a Unix socket in a temp dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser as _;
use lmi_proto::v1::agent_server::{Agent, AgentServer};
use lmi_proto::v1::{
    CreateEnvironmentRequest, CreateEnvironmentResponse, DeleteEnvironmentRequest, Environment,
    EnvironmentState, Failure, FunctionError, GetEnvironmentRequest, GetHostRequest, Host,
    InvokeOutcome, InvokeRequest, InvokeResponse, ListEnvironmentsRequest,
    ListEnvironmentsResponse, RuntimeInfo, StreamLogsRequest, StreamLogsResponse, ThrottleReason,
};
use tonic::{Request, Response, Status};

use super::{run, Io};
use crate::cli::Cli;
use crate::output::Output;
use crate::render::tests::sample_env;
use crate::throttle::tests::throttle_status;

#[derive(Debug, Default)]
struct FakeAgent {
    created: Mutex<Vec<CreateEnvironmentRequest>>,
    invoked: Mutex<Vec<InvokeRequest>>,
    deleted: Mutex<Vec<DeleteEnvironmentRequest>>,
    gets: AtomicU32,
}

#[tonic::async_trait]
impl Agent for FakeAgent {
    async fn create_environment(
        &self,
        request: Request<CreateEnvironmentRequest>,
    ) -> Result<Response<CreateEnvironmentResponse>, Status> {
        let req = request.into_inner();
        let spec = req.spec.clone().unwrap_or_default();
        if spec.memory_mib == 3000 {
            return Err(Status::invalid_argument(
                "spec.memory_mib: 3000 is not a multiple of memory_gib_per_vcpu (2 GiB)",
            ));
        }
        let name = spec.function.clone().unwrap_or_default().name;
        self.created.lock().unwrap().push(req);
        let mut env = sample_env(&format!("env-{name}"), EnvironmentState::Initializing);
        env.spec = Some(spec);
        Ok(Response::new(CreateEnvironmentResponse {
            environment: Some(env),
        }))
    }

    async fn get_environment(
        &self,
        request: Request<GetEnvironmentRequest>,
    ) -> Result<Response<Environment>, Status> {
        let id = request.into_inner().id;
        let n = self.gets.fetch_add(1, Ordering::SeqCst);
        match id.as_str() {
            // READY on the second poll.
            "env-ok" | "env-1" => Ok(Response::new(sample_env(
                &id,
                if n == 0 {
                    EnvironmentState::Initializing
                } else {
                    EnvironmentState::Ready
                },
            ))),
            "env-crash" => {
                let mut env = sample_env(&id, EnvironmentState::Failed);
                env.failure = Some(Failure {
                    error_type: "Runtime.ExitError".into(),
                    message: "exit status 1".into(),
                    at: None,
                });
                Ok(Response::new(env))
            }
            "env-slow" => Ok(Response::new(sample_env(
                &id,
                EnvironmentState::Initializing,
            ))),
            _ => Err(Status::not_found(format!("environment {id} not found"))),
        }
    }

    async fn list_environments(
        &self,
        request: Request<ListEnvironmentsRequest>,
    ) -> Result<Response<ListEnvironmentsResponse>, Status> {
        let req = request.into_inner();
        let mut envs = vec![sample_env("env-1", EnvironmentState::Ready)];
        if req.function_name.is_empty() {
            let mut other = sample_env("env-2", EnvironmentState::Failed);
            other.failure = Some(Failure {
                error_type: "Runtime.OutOfMemory".into(),
                message: "killed".into(),
                at: None,
            });
            envs.push(other);
            envs.push(sample_env("ab12cd", EnvironmentState::Ready));
        }
        Ok(Response::new(ListEnvironmentsResponse {
            environments: envs,
        }))
    }

    async fn delete_environment(
        &self,
        request: Request<DeleteEnvironmentRequest>,
    ) -> Result<Response<Environment>, Status> {
        let req = request.into_inner();
        let env = sample_env(&req.id, EnvironmentState::Terminated);
        self.deleted.lock().unwrap().push(req);
        Ok(Response::new(env))
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let req = request.into_inner();
        self.invoked.lock().unwrap().push(req.clone());
        let mut resp = InvokeResponse {
            request_id: if req.request_id.is_empty() {
                "generated-id".into()
            } else {
                req.request_id.clone()
            },
            environment_id: "env-1".into(),
            executed_version: "$LATEST".into(),
            outcome: InvokeOutcome::Success as i32,
            payload: Default::default(),
            content_type: "application/json".into(),
            error: None,
        };
        match req.function_name.as_str() {
            "echo" => resp.payload = req.payload,
            "boom" | "slow" => {
                resp.outcome = if req.function_name == "boom" {
                    InvokeOutcome::FunctionError as i32
                } else {
                    InvokeOutcome::Timeout as i32
                };
                resp.error = Some(FunctionError {
                    error_type: "KeyError".into(),
                    error_message: "'id'".into(),
                    stack_trace: vec!["  File \"/var/task/app.py\", line 2, in handler".into()],
                });
            }
            "busy" => {
                return Err(throttle_status(
                    ThrottleReason::Concurrency,
                    false,
                    "all 2 environments of busy:$LATEST are at max concurrency",
                ))
            }
            "hang" => {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
            "big" => resp.payload = vec![b'x'; 6 * 1024 * 1024].into(),
            _ => {
                return Err(Status::not_found(format!(
                    "function {} has no READY environment",
                    req.function_name
                )))
            }
        }
        Ok(Response::new(resp))
    }

    type InvokeStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<lmi_proto::v1::InvokeStreamResponse, Status>>;

    async fn invoke_stream(
        &self,
        _request: Request<tonic::Streaming<lmi_proto::v1::InvokeStreamRequest>>,
    ) -> Result<Response<Self::InvokeStreamStream>, Status> {
        Err(Status::unimplemented("the fake agent has no invoke stream"))
    }

    type InvokeWithResponseStreamStream = tokio_stream::wrappers::ReceiverStream<
        Result<lmi_proto::v1::InvokeWithResponseStreamResponse, Status>,
    >;

    /// `echo` streams its payload back in two chunks; `boom` fails after one chunk; `busy` is throttled.
    async fn invoke_with_response_stream(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<Self::InvokeWithResponseStreamStream>, Status> {
        use lmi_proto::v1::invoke_with_response_stream_response::Event;
        use lmi_proto::v1::{
            InvokeStreamComplete, InvokeStreamHead, InvokeWithResponseStreamResponse,
        };
        let req = request.into_inner();
        self.invoked.lock().unwrap().push(req.clone());
        let (chunks, complete) = match req.function_name.as_str() {
            "echo" => {
                let half = req.payload.len() / 2;
                (
                    vec![req.payload.slice(..half), req.payload.slice(half..)],
                    InvokeStreamComplete {
                        outcome: InvokeOutcome::Success as i32,
                        error: None,
                    },
                )
            }
            "boom" => (
                vec![prost::bytes::Bytes::from_static(b"chunk-1\n")],
                InvokeStreamComplete {
                    outcome: InvokeOutcome::FunctionError as i32,
                    error: Some(FunctionError {
                        error_type: "Error".into(),
                        error_message: "mid-stream".into(),
                        stack_trace: vec![],
                    }),
                },
            ),
            "busy" => {
                return Err(throttle_status(
                    ThrottleReason::Concurrency,
                    false,
                    "all 2 environments of busy:$LATEST are at max concurrency",
                ))
            }
            other => {
                return Err(Status::not_found(format!(
                    "function {other} has no READY environment"
                )))
            }
        };
        let head = Event::Head(InvokeStreamHead {
            request_id: "generated-id".into(),
            environment_id: "env-1".into(),
            executed_version: "$LATEST".into(),
            content_type: "application/json".into(),
        });
        let events: Vec<Event> = std::iter::once(head)
            .chain(chunks.into_iter().map(Event::Chunk))
            .chain(std::iter::once(Event::Complete(complete)))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(events.len());
        for event in events {
            let _ = tx.try_send(Ok(InvokeWithResponseStreamResponse { event: Some(event) }));
        }
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    type WatchUtilizationStream =
        tokio_stream::wrappers::ReceiverStream<Result<lmi_proto::v1::UtilizationReport, Status>>;

    async fn watch_utilization(
        &self,
        _request: Request<lmi_proto::v1::WatchUtilizationRequest>,
    ) -> Result<Response<Self::WatchUtilizationStream>, Status> {
        Err(Status::unimplemented("the fake agent has no utilization"))
    }

    type StreamLogsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<StreamLogsResponse, Status>> + Send>,
    >;

    async fn stream_logs(
        &self,
        request: Request<StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = request.into_inner();
        if req.function_name != "chatty" {
            return Err(Status::not_found(format!(
                "no log records for function {} version $LATEST on this host",
                req.function_name
            )));
        }
        let record = |n: u32, env: &str| {
            format!(
                r#"{{"timestamp":"2023-11-14T22:13:2{n}.000Z","environment":"{env}","requestId":"r-{n}","level":"INFO","message":"line {n} follow={}"}}"#,
                req.follow
            )
        };
        let batches = vec![
            Ok(StreamLogsResponse {
                records: vec![record(1, "env-1"), record(2, "ab12cd")],
            }),
            Ok(StreamLogsResponse {
                records: vec![record(3, "env-1")],
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn get_host(&self, _request: Request<GetHostRequest>) -> Result<Response<Host>, Status> {
        Ok(Response::new(Host {
            hostname: "fake-host".into(),
            agent_version: "0.1.0".into(),
            cgroup_version: "v2".into(),
            vcpus_total: 8,
            vcpus_allocatable: 7,
            vcpus_allocated: 2,
            memory_mib_total: 32768,
            memory_mib_allocatable: 30720,
            memory_mib_allocated: 4096,
            environments: 2,
            runtimes: vec![RuntimeInfo {
                id: "python3.11".into(),
                available: true,
                unavailable_reason: String::new(),
                default_concurrency_per_vcpu: 16,
            }],
        }))
    }
}

struct Harness {
    dir: PathBuf,
    socket: PathBuf,
    agent: Arc<FakeAgent>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start() -> Harness {
    let dir = std::env::temp_dir().join(format!("lmictl-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let agent = Arc::new(FakeAgent::default());
    let service = AgentServer::from_arc(agent.clone())
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    Harness { dir, socket, agent }
}

/// Runs `lmictl --socket <fake> ARGS` with `stdin` piped in (not a terminal) and a non-terminal stdout.
async fn lmictl(h: &Harness, args: &[&str], stdin: &[u8]) -> Output {
    let mut argv: Vec<String> = vec![
        "lmictl".into(),
        "--socket".into(),
        h.socket.display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut input = std::io::Cursor::new(stdin.to_vec());
    let mut progress = Vec::new();
    let mut streamed = Vec::new();
    let mut io = Io {
        stdin: &mut input,
        stdout_is_tty: false,
        progress: &mut progress,
        stdout: &mut streamed,
        cwd: PathBuf::from("/home/op"),
        live: &mut std::io::sink(),
    };
    let mut out = run(cli, &mut io).await;
    // What a streaming command wrote comes first, as it would on a terminal.
    streamed.extend_from_slice(&out.stdout);
    out.stdout = streamed;
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn invoke_success_prints_the_payload_and_exits_0() {
    let h = start().await;
    let out = lmictl(
        &h,
        &[
            "invoke",
            "echo",
            "--payload",
            r#"{"n":1}"#,
            "--request-id",
            "r-1",
        ],
        b"",
    )
    .await;
    assert_eq!(
        (out.code, stdout(&out).as_str(), out.stderr.as_str()),
        (0, "{\"n\":1}\n", "")
    );

    // Stdin is the payload only when asked, with `--payload -`.
    let out = lmictl(
        &h,
        &[
            "invoke",
            "echo",
            "--version",
            "3",
            "--trace-id",
            "Root=1",
            "--payload",
            "-",
        ],
        b"[1,2]",
    )
    .await;
    assert_eq!((out.code, stdout(&out).as_str()), (0, "[1,2]\n"));
    let out = lmictl(&h, &["invoke", "echo"], b"[3]").await;
    assert_eq!(
        (out.code, stdout(&out).as_str()),
        (0, "{}\n"),
        "piped stdin is not read unasked"
    );
    let invoked = h.agent.invoked.lock().unwrap().clone();
    assert_eq!(invoked[0].request_id, "r-1");
    assert_eq!(invoked[1].function_version, "3");
    assert_eq!(invoked[1].trace_id, "Root=1");
    assert_eq!(&invoked[2].payload[..], b"{}");

    // --payload-file.
    let file = h.dir.join("p.json");
    std::fs::write(&file, b"{\"from\":\"file\"}").unwrap();
    let out = lmictl(
        &h,
        &["invoke", "echo", "--payload-file", file.to_str().unwrap()],
        b"ignored",
    )
    .await;
    assert_eq!(stdout(&out), "{\"from\":\"file\"}\n");

    // --json: one object, the payload parsed.
    let out = lmictl(
        &h,
        &["--json", "invoke", "echo", "--payload", r#"{"a":[true]}"#],
        b"",
    )
    .await;
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payload"]["a"][0], true);
    assert_eq!(v["request_id"], "generated-id");
    assert_eq!(v["environment_id"], "env-1");
    assert_eq!(v["outcome"], "SUCCESS");
}

#[tokio::test]
async fn invoke_large_payload_round_trips() {
    let h = start().await;
    let out = lmictl(&h, &["invoke", "big"], b"{}").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.len(),
        6 * 1024 * 1024 + 1,
        "the payload and a newline"
    );
}

#[tokio::test]
async fn invoke_function_error_and_timeout_exit_1() {
    let h = start().await;
    let out = lmictl(&h, &["invoke", "boom", "--payload", "{}"], b"").await;
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr
            .starts_with("FUNCTION_ERROR: KeyError: 'id'\nstack trace:\n"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("app.py\", line 2"), "{}", out.stderr);

    let out = lmictl(&h, &["invoke", "slow", "--payload", "{}"], b"").await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("TIMEOUT: KeyError"),
        "{}",
        out.stderr
    );

    let out = lmictl(&h, &["--json", "invoke", "boom"], b"{}").await;
    assert_eq!(out.code, 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "FUNCTION_ERROR");
    assert_eq!(v["error"]["error_type"], "KeyError");
}

#[tokio::test]
async fn invoke_throttle_exits_2() {
    let h = start().await;
    let out = lmictl(&h, &["invoke", "busy", "--payload", "{}"], b"").await;
    assert_eq!(out.code, 2);
    assert_eq!(
        out.stderr,
        "throttled: CONCURRENCY (all 2 environments of busy:$LATEST are at max concurrency)\n"
    );
    let out = lmictl(
        &h,
        &["invoke", "busy", "--json", "--request-id", "r-7"],
        b"{}",
    )
    .await;
    assert_eq!(out.code, 2);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "THROTTLED");
    assert_eq!(v["throttle"]["reason"], "CONCURRENCY");
    assert_eq!(v["request_id"], "r-7");
}

#[tokio::test]
async fn invoke_stream_prints_the_chunks_then_reports_the_outcome() {
    let h = start().await;
    let out = lmictl(
        &h,
        &[
            "invoke",
            "echo",
            "--stream",
            "--payload",
            r#"{"a":[1,2,3]}"#,
        ],
        b"",
    )
    .await;
    assert_eq!((out.code, stdout(&out).as_str()), (0, r#"{"a":[1,2,3]}"#));
    assert_eq!(out.stderr, "");
    assert_eq!(
        h.agent.invoked.lock().unwrap()[0].payload,
        r#"{"a":[1,2,3]}"#.as_bytes()
    );

    let out = lmictl(&h, &["invoke", "boom", "--stream"], b"").await;
    assert_eq!(out.code, 1);
    assert_eq!(stdout(&out), "chunk-1\n");
    assert_eq!(
        out.stderr,
        "FUNCTION_ERROR: Error: mid-stream\nrequest generated-id on environment env-1\n"
    );

    let out = lmictl(&h, &["invoke", "boom", "--stream", "--json"], b"").await;
    assert_eq!(out.code, 1);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], serde_json::json!({"chunk": "chunk-1\n"}));
    assert_eq!(lines[1]["outcome"], "FUNCTION_ERROR");
    assert_eq!(lines[1]["bytes"], 8);

    let out = lmictl(&h, &["invoke", "busy", "--stream"], b"").await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.starts_with("throttled: CONCURRENCY"),
        "{}",
        out.stderr
    );
    let out = lmictl(&h, &["invoke", "nope", "--stream"], b"").await;
    assert_eq!(out.code, 3);
    assert_eq!(
        out.stderr,
        "error: NOT_FOUND: function nope has no READY environment\n"
    );
}

#[tokio::test]
async fn other_grpc_errors_exit_3_verbatim() {
    let h = start().await;
    let out = lmictl(&h, &["invoke", "nope", "--payload", "{}"], b"").await;
    assert_eq!(out.code, 3);
    assert_eq!(
        out.stderr,
        "error: NOT_FOUND: function nope has no READY environment\n"
    );

    let out = lmictl(
        &h,
        &[
            "create",
            "--function",
            "f",
            "--runtime",
            "python3.11",
            "--code",
            "/c",
            "--memory",
            "3000",
        ],
        b"",
    )
    .await;
    assert_eq!(out.code, 3);
    assert_eq!(
        out.stderr,
        "error: INVALID_ARGUMENT: spec.memory_mib: 3000 is not a multiple of memory_gib_per_vcpu (2 GiB)\n"
    );

    let out = lmictl(&h, &["get", "env-missing"], b"").await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (3, "error: NOT_FOUND: environment env-missing not found\n")
    );
}

#[tokio::test]
async fn rpc_timeout_is_an_error_exit_3() {
    let h = start().await;
    let started = std::time::Instant::now();
    let out = lmictl(&h, &["--rpc-timeout", "0.2", "invoke", "hang"], b"{}").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(out.code, 3);
    assert_eq!(
        out.stderr,
        "error: DEADLINE_EXCEEDED: no answer from the agent within --rpc-timeout 0.2s\n"
    );
}

#[tokio::test]
async fn transport_and_usage_errors_exit_3() {
    let missing = Harness {
        dir: std::env::temp_dir().join(format!("lmictl-missing-{}", uuid::Uuid::new_v4().simple())),
        socket: Path::new("/nonexistent/lmi/agent.sock").to_path_buf(),
        agent: Arc::new(FakeAgent::default()),
    };
    let out = lmictl(&missing, &["host"], b"").await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr
            .starts_with("error: cannot connect to lmi-agent at unix:/nonexistent/lmi/agent.sock"),
        "{}",
        out.stderr
    );

    // A bad spec is reported before connecting (so even without an agent).
    let out = lmictl(&missing, &["create", "--runtime", "r", "--code", "d"], b"").await;
    assert_eq!(out.code, 3);
    assert!(out.stderr.contains("--function"), "{}", out.stderr);
}

#[tokio::test]
async fn create_builds_the_spec_and_waits() {
    let h = start().await;
    let spec = h.dir.join("ok.toml");
    std::fs::write(
        &spec,
        "runtime = \"python3.11\"\nhandler = \"app.handler\"\n[function]\nname = \"ok\"\n[code]\ndirectory = \"src\"\n[environment]\nA = \"1\"\n",
    )
    .unwrap();
    let out = lmictl(
        &h,
        &[
            "create",
            "--spec",
            spec.to_str().unwrap(),
            "--env",
            "B=2",
            "--code",
            "pkg.zip",
            "--wait",
        ],
        b"",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        stdout(&out).contains("state:             READY"),
        "{}",
        stdout(&out)
    );
    let created = h.agent.created.lock().unwrap()[0].spec.clone().unwrap();
    assert_eq!(
        created.code.unwrap().source,
        Some(lmi_proto::v1::code::Source::ZipFile(
            "/home/op/pkg.zip".into()
        ))
    );
    assert_eq!(created.environment.len(), 2);
    assert!(h.agent.gets.load(Ordering::SeqCst) >= 2);

    // Without --wait: the INITIALIZING environment at once.
    let out = lmictl(
        &h,
        &[
            "--json",
            "create",
            "--function",
            "x",
            "--runtime",
            "python3.11",
            "--code",
            "/c",
        ],
        b"",
    )
    .await;
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "INITIALIZING");
    assert_eq!(v["id"], "env-x");
}

#[tokio::test]
async fn create_wait_failed_exits_1_and_timeout_exits_4() {
    let h = start().await;
    let base = ["--runtime", "python3.11", "--code", "/c", "--wait"];
    let mut args = vec!["create", "--function", "crash"];
    args.extend_from_slice(&base);
    let out = lmictl(&h, &args, b"").await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        "error: environment env-crash is FAILED: Runtime.ExitError: exit status 1\n"
    );
    assert!(
        stdout(&out).contains("failure:           Runtime.ExitError: exit status 1"),
        "{}",
        stdout(&out)
    );

    let mut args = vec!["create", "--function", "slow", "--wait-timeout", "0.3"];
    args.extend_from_slice(&base);
    let out = lmictl(&h, &args, b"").await;
    assert_eq!(out.code, 4);
    assert!(
        out.stderr
            .contains("env-slow is still INITIALIZING after 0.3s"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn list_get_delete_host() {
    let h = start().await;
    let out = lmictl(&h, &["list"], b"").await;
    assert_eq!(out.code, 0);
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "ID      FUNCTION:VERSION  RUNTIME     STATE   VCPU  MEMORY   INFLIGHT/MAX  AGE"
        ),
        "{text}"
    );
    assert!(text.contains("Runtime.OutOfMemory: killed"), "{text}");

    let out = lmictl(&h, &["list", "--function", "orders", "--json"], b"").await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["spec"]["function"]["name"], "orders");

    let out = lmictl(&h, &["get", "env-crash"], b"").await;
    assert_eq!(out.code, 0);
    assert!(stdout(&out).contains("failure:           Runtime.ExitError: exit status 1"));

    let out = lmictl(&h, &["delete", "env-1", "--grace", "30"], b"").await;
    assert_eq!(out.code, 0);
    assert!(stdout(&out).contains("state:             TERMINATED"));
    assert_eq!(h.agent.deleted.lock().unwrap()[0].grace_period_seconds, 30);

    // A unique prefix stands for the whole id; an ambiguous one lists the matches.
    let out = lmictl(&h, &["delete", "ab"], b"").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(h.agent.deleted.lock().unwrap()[1].id, "ab12cd");
    let out = lmictl(&h, &["get", "env-"], b"").await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.starts_with(
            "error: environment id prefix `env-` matches 2 environments; give more of the id:\n  env-1  orders:$LATEST  READY\n  env-2"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(h.agent.deleted.lock().unwrap().len(), 2);

    // Every environment of a function.
    let out = lmictl(&h, &["delete", "--function", "orders", "--grace", "1"], b"").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(stdout(&out).starts_with("ID "), "a table: {}", stdout(&out));
    let deleted = h.agent.deleted.lock().unwrap().clone();
    assert_eq!(
        (deleted[2].id.as_str(), deleted[2].grace_period_seconds),
        ("env-1", 1)
    );

    let out = lmictl(&h, &["host"], b"").await;
    assert_eq!(out.code, 0);
    assert!(stdout(&out).contains("vcpus:         total 8, allocatable 7, allocated 2 (5 free)"));
    let out = lmictl(&h, &["host", "--json"], b"").await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["runtimes"][0]["id"], "python3.11");
}

#[tokio::test]
async fn logs_prints_each_record_on_its_own_line() {
    let h = start().await;
    let out = lmictl(&h, &["logs", "chatty", "--follow"], b"").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        stdout(&out),
        "2023-11-14T22:13:21.000Z INFO  r-1 line 1 follow=true\n\
         2023-11-14T22:13:22.000Z INFO  r-2 line 2 follow=true\n\
         2023-11-14T22:13:23.000Z INFO  r-3 line 3 follow=true\n"
    );
    let out = lmictl(&h, &["logs", "chatty", "--json"], b"").await;
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["message"], "line 3 follow=false");

    // --since, --tail and --environment (a prefix) choose records.
    let out = lmictl(
        &h,
        &["logs", "chatty", "--since", "2023-11-14T22:13:22Z"],
        b"",
    )
    .await;
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    let out = lmictl(&h, &["logs", "chatty", "--tail", "1"], b"").await;
    assert_eq!(
        stdout(&out),
        "2023-11-14T22:13:23.000Z INFO  r-3 line 3 follow=false\n"
    );
    let out = lmictl(&h, &["logs", "chatty", "--environment", "ab"], b"").await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        stdout(&out),
        "2023-11-14T22:13:22.000Z INFO  r-2 line 2 follow=false\n"
    );
    // --tail with --follow: the last records written, then the followed stream's new ones (none here: the
    // fake's followed stream holds the same three).
    let out = lmictl(&h, &["logs", "chatty", "--tail", "2", "--follow"], b"").await;
    assert_eq!(
        stdout(&out),
        "2023-11-14T22:13:22.000Z INFO  r-2 line 2 follow=false\n\
         2023-11-14T22:13:23.000Z INFO  r-3 line 3 follow=false\n"
    );
    let out = lmictl(&h, &["logs", "quiet"], b"").await;
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("NOT_FOUND") && out.stderr.contains("quiet"),
        "{}",
        out.stderr
    );
}
