//! The commands: each one prepares its request (reading files and stdin before connecting, so local mistakes
//! are reported as such), calls the agent and renders an `Output`. Nothing here prints or exits.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use lmi_proto::v1::{
    CreateEnvironmentRequest, DeleteEnvironmentRequest, Environment, EnvironmentSpec,
    EnvironmentState, GetEnvironmentRequest, GetHostRequest, InvokeRequest,
    ListEnvironmentsRequest, StreamLogsRequest,
};
use tokio::time::Instant;

use crate::cli::{Cli, Command, CreateArgs, InvokeArgs};
use crate::connect::{self, request, Client};
use crate::output::{Output, EXIT_FUNCTION_ERROR, EXIT_WAIT_TIMEOUT};
use crate::render::{self, state_name};
use crate::{payload, spec_file, throttle};

/// How often `create --wait` polls GetEnvironment.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// The process's stdin/stdout as the commands see them (tests substitute their own).
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdin_is_tty: bool,
    pub stdout_is_tty: bool,
    /// Progress notes for humans (e.g. while waiting); stderr in the real binary.
    pub progress: &'a mut dyn Write,
    /// Where streaming commands (`logs`) write as they go; stdout in the real binary. Other commands return
    /// their output in `Output`.
    pub stdout: &'a mut dyn Write,
    /// Relative `--code` paths are resolved against it.
    pub cwd: PathBuf,
    /// Where streaming commands (`top`) write as they go; stdout in the real binary.
    pub live: &'a mut dyn Write,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("stdin_is_tty", &self.stdin_is_tty)
            .field("stdout_is_tty", &self.stdout_is_tty)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

/// A request ready to send.
#[derive(Debug)]
enum Plan {
    Create {
        spec: Box<EnvironmentSpec>,
        wait: Option<Duration>,
    },
    List(ListEnvironmentsRequest),
    Get(GetEnvironmentRequest),
    Delete(DeleteEnvironmentRequest),
    Invoke(InvokeRequest),
    Host,
    Top {
        count: Option<u64>,
    },
    Logs(StreamLogsRequest),
}

/// Runs one command line to completion. Every error becomes an `Output` with exit code 3.
pub async fn run(cli: Cli, io: &mut Io<'_>) -> Output {
    match try_run(cli, io).await {
        Ok(out) => out,
        Err(err) => Output::error(&err),
    }
}

async fn try_run(mut cli: Cli, io: &mut Io<'_>) -> anyhow::Result<Output> {
    let command = std::mem::replace(&mut cli.command, Command::Host);
    if let Command::Bench(bench) = command {
        return crate::bench::run(&cli, bench, io).await;
    }
    let plan = prepare(command, io)?;
    let target = connect::target(&cli.socket, cli.endpoint.as_deref())?;
    let token = connect::token(&target, cli.token_file.as_deref())?;
    let mut client = connect::connect(&target, cli.timeout, token.as_deref()).await?;
    execute(&mut client, plan, cli.json, cli.timeout, io)
        .await
        .map_err(|err| clarify_timeout(err, cli.timeout))
}

/// tonic reports its client-side deadline as `CANCELLED: Timeout expired`; say what happened instead.
fn clarify_timeout(err: anyhow::Error, timeout: Option<Duration>) -> anyhow::Error {
    match (err.downcast_ref::<tonic::Status>(), timeout) {
        (Some(status), Some(t))
            if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" =>
        {
            tonic::Status::deadline_exceeded(format!(
                "no answer from the agent within --timeout {}s",
                t.as_secs_f64()
            ))
            .into()
        }
        _ => err,
    }
}

fn prepare(command: Command, io: &mut Io<'_>) -> anyhow::Result<Plan> {
    Ok(match command {
        Command::Create(args) => prepare_create(&args, io)?,
        Command::List(args) => Plan::List(ListEnvironmentsRequest {
            function_name: args.function.unwrap_or_default(),
            function_version: args.version.unwrap_or_default(),
        }),
        Command::Get(args) => Plan::Get(GetEnvironmentRequest {
            id: non_empty_id(args.id)?,
        }),
        Command::Delete(args) => Plan::Delete(DeleteEnvironmentRequest {
            id: non_empty_id(args.id)?,
            grace_period_seconds: args.grace.unwrap_or(0),
        }),
        Command::Invoke(args) => Plan::Invoke(prepare_invoke(args, io)?),
        Command::Host => Plan::Host,
        Command::Top(args) => Plan::Top { count: args.count },
        Command::Logs(args) => {
            if args.function.trim().is_empty() {
                anyhow::bail!("the function name is empty");
            }
            Plan::Logs(StreamLogsRequest {
                function_name: args.function,
                function_version: args.version.unwrap_or_default(),
                follow: args.follow,
            })
        }
        Command::Bench(_) => anyhow::bail!("bench is not a single request"),
    })
}

fn non_empty_id(id: String) -> anyhow::Result<String> {
    if id.trim().is_empty() {
        anyhow::bail!("the environment ID is empty");
    }
    Ok(id)
}

fn prepare_create(args: &CreateArgs, io: &Io<'_>) -> anyhow::Result<Plan> {
    let spec = spec_file::build(args, &io.cwd)?;
    Ok(Plan::Create {
        spec: Box::new(spec),
        wait: args.wait.then_some(args.wait_timeout),
    })
}

fn prepare_invoke(args: InvokeArgs, io: &mut Io<'_>) -> anyhow::Result<InvokeRequest> {
    if args.function.trim().is_empty() {
        anyhow::bail!("the function name is empty");
    }
    let source = payload::select(
        args.payload.as_deref(),
        args.payload_file.as_deref(),
        io.stdin_is_tty,
    )?;
    let payload = payload::read(&source, io.stdin)?;
    Ok(InvokeRequest {
        function_name: args.function,
        function_version: args.version.unwrap_or_default(),
        payload: payload.into(),
        request_id: args.request_id.unwrap_or_default(),
        client_context: args.client_context.unwrap_or_default(),
        trace_id: args.trace_id.unwrap_or_default(),
    })
}

async fn execute(
    client: &mut Client,
    plan: Plan,
    json: bool,
    timeout: Option<Duration>,
    io: &mut Io<'_>,
) -> anyhow::Result<Output> {
    match plan {
        Plan::Create { spec, wait } => {
            let resp = client
                .create_environment(request(
                    CreateEnvironmentRequest { spec: Some(*spec) },
                    timeout,
                ))
                .await?
                .into_inner();
            let env = resp
                .environment
                .context("the agent's CreateEnvironmentResponse has no environment")?;
            match wait {
                None => render::environment_output(&env, json),
                Some(limit) => {
                    if !json {
                        let _ = writeln!(
                            io.progress,
                            "created {} ({}); waiting up to {}s for READY",
                            env.id,
                            state_name(env.state),
                            limit.as_secs_f64()
                        );
                    }
                    wait_ready(client, env, limit, json, timeout).await
                }
            }
        }
        Plan::List(req) => {
            let resp = client
                .list_environments(request(req, timeout))
                .await?
                .into_inner();
            render::environments_output(&resp.environments, json)
        }
        Plan::Get(req) => {
            let env = client
                .get_environment(request(req, timeout))
                .await?
                .into_inner();
            render::environment_output(&env, json)
        }
        Plan::Delete(req) => {
            let env = client
                .delete_environment(request(req, timeout))
                .await?
                .into_inner();
            render::environment_output(&env, json)
        }
        Plan::Invoke(req) => {
            let request_id = req.request_id.clone();
            match client.invoke(request(req, timeout)).await {
                Ok(resp) => render::invoke_output(&resp.into_inner(), json, io.stdout_is_tty),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    render::throttle_output(&throttle::from_status(&status), &request_id, json)
                }
                Err(status) => Err(status.into()),
            }
        }
        Plan::Top { count } => {
            // `top` streams: no per-call deadline (the connection timeout still applies).
            let clear = io.stdout_is_tty && !json;
            crate::top::run(client, count, json, clear, io.live).await?;
            Ok(Output::text(""))
        }
        Plan::Host => {
            let host = client
                .get_host(request(GetHostRequest {}, timeout))
                .await?
                .into_inner();
            render::host_output(&host, json)
        }
        Plan::Logs(req) => stream_logs(client, req, timeout, io.stdout).await,
    }
}

/// Prints every record as it arrives, one JSON object a line (the records are JSON already, so `--json`
/// changes nothing). A reader that goes away (`lmictl logs f | head`) ends the command quietly.
async fn stream_logs(
    client: &mut Client,
    req: StreamLogsRequest,
    timeout: Option<Duration>,
    out: &mut dyn Write,
) -> anyhow::Result<Output> {
    // A follow has no natural end: --timeout bounds only the connection, not the stream.
    let timeout = if req.follow { None } else { timeout };
    let mut stream = client
        .stream_logs(request(req, timeout))
        .await?
        .into_inner();
    while let Some(batch) = stream.message().await? {
        let mut text = String::new();
        for record in &batch.records {
            text.push_str(record);
            text.push('\n');
        }
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => return Err(e).context("writing to stdout"),
        }
    }
    Ok(Output::default())
}

/// Polls until READY (exit 0), a state that will never become READY (exit 1: FAILED, DRAINING,
/// TERMINATED), or `limit` (exit 4). The environment's details are printed in every case.
async fn wait_ready(
    client: &mut Client,
    mut env: Environment,
    limit: Duration,
    json: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Output> {
    let deadline = Instant::now() + limit;
    loop {
        match EnvironmentState::try_from(env.state) {
            Ok(EnvironmentState::Ready) => return render::environment_output(&env, json),
            Ok(
                EnvironmentState::Failed
                | EnvironmentState::Draining
                | EnvironmentState::Terminated,
            ) => {
                let out = render::environment_output(&env, json)?.with_code(EXIT_FUNCTION_ERROR);
                let why = env.failure.as_ref().map_or_else(String::new, |f| {
                    format!(": {}: {}", f.error_type, f.message)
                });
                return Ok(out.with_stderr(format!(
                    "error: environment {} is {}{why}\n",
                    env.id,
                    state_name(env.state)
                )));
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= deadline {
            let out = render::environment_output(&env, json)?.with_code(EXIT_WAIT_TIMEOUT);
            return Ok(out.with_stderr(format!(
                "error: environment {} is still {} after {}s (--wait-timeout)\n",
                env.id,
                state_name(env.state),
                limit.as_secs_f64()
            )));
        }
        tokio::time::sleep(WAIT_POLL.min(deadline - now)).await;
        env = client
            .get_environment(request(
                GetEnvironmentRequest { id: env.id.clone() },
                timeout,
            ))
            .await?
            .into_inner();
    }
}

#[cfg(test)]
mod tests;
