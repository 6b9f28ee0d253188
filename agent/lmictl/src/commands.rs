//! The commands: each one prepares its request (reading files and stdin before connecting, so local mistakes
//! are reported as such), calls the agent and renders an `Output`. Nothing here prints or exits.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use lmi_proto::v1::{
    CreateEnvironmentRequest, DeleteEnvironmentRequest, Environment, EnvironmentSpec,
    EnvironmentState, GetEnvironmentRequest, GetHostRequest, InvokeRequest,
    ListEnvironmentsRequest, StreamLogsRequest,
};
use tokio::time::Instant;

use crate::cli::{Cli, Command, CreateArgs, FunctionRef, InvokeArgs, LogsArgs};
use crate::connect::{self, request, Client};
use crate::logs::{EnvironmentMatch, Filter};
use crate::output::{Output, EXIT_FUNCTION_ERROR, EXIT_WAIT_TIMEOUT};
use crate::render::{self, state_name};
use crate::{payload, resolve, spec_file, throttle};

/// How often `create --wait` polls GetEnvironment.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How often a delete in progress reports the invokes its environments are still draining.
const DELETE_POLL: Duration = Duration::from_secs(1);

/// The process's stdin/stdout as the commands see them (tests substitute their own).
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
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
    /// An id or a prefix of one.
    Get(String),
    Delete {
        target: DeleteTarget,
        grace_period_seconds: u32,
    },
    Invoke(InvokeRequest),
    /// `invoke --stream`.
    InvokeStream(InvokeRequest),
    Host,
    Top {
        count: Option<u64>,
    },
    Logs {
        request: StreamLogsRequest,
        since: Option<crate::logs::Since>,
        tail: Option<usize>,
        environment: Option<String>,
    },
}

#[derive(Debug)]
enum DeleteTarget {
    /// An id or a prefix of one.
    Id(String),
    Function(FunctionRef),
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
    match command {
        Command::Bench(bench) => return crate::bench::run(&cli, bench, io).await,
        Command::Completion(args) => return Ok(crate::docs::completion(args.shell)),
        Command::Man(args) => return crate::docs::write_man_pages(&args.dir),
        _ => {}
    }
    let plan = prepare(command, io)?;
    let target = connect::target(&cli.socket, cli.endpoint.as_deref())?;
    let token = connect::token(&target, cli.token_file.as_deref())?;
    let mut client = connect::connect(&target, cli.rpc_timeout, token.as_deref()).await?;
    execute(&mut client, plan, cli.json, cli.rpc_timeout, io)
        .await
        .map_err(|err| clarify_timeout(err, cli.rpc_timeout))
}

/// tonic reports its client-side deadline as `CANCELLED: Timeout expired`; say what happened instead.
fn clarify_timeout(err: anyhow::Error, timeout: Option<Duration>) -> anyhow::Error {
    match (err.downcast_ref::<tonic::Status>(), timeout) {
        (Some(status), Some(t))
            if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" =>
        {
            tonic::Status::deadline_exceeded(format!(
                "no answer from the agent within --rpc-timeout {}s",
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
        Command::Get(args) => Plan::Get(non_empty_id(args.id)?),
        Command::Delete(args) => Plan::Delete {
            target: match (args.id, args.function) {
                (_, Some(f)) => DeleteTarget::Function(f),
                (Some(id), None) => DeleteTarget::Id(non_empty_id(id)?),
                (None, None) => {
                    anyhow::bail!("give an environment id or --function NAME[:VERSION]")
                }
            },
            grace_period_seconds: args.grace.unwrap_or(0),
        },
        Command::Invoke(args) if args.stream => Plan::InvokeStream(prepare_invoke(args, io)?),
        Command::Invoke(args) => Plan::Invoke(prepare_invoke(args, io)?),
        Command::Host => Plan::Host,
        Command::Top(args) => Plan::Top { count: args.count },
        Command::Logs(args) => prepare_logs(args)?,
        Command::Bench(_) | Command::Completion(_) | Command::Man(_) => {
            anyhow::bail!("not a request to the agent")
        }
    })
}

fn prepare_logs(args: LogsArgs) -> anyhow::Result<Plan> {
    if args.function.trim().is_empty() {
        anyhow::bail!("the function name is empty");
    }
    let environment = args.environment.map(non_empty_id).transpose()?;
    Ok(Plan::Logs {
        request: StreamLogsRequest {
            function_name: args.function,
            function_version: args.version.unwrap_or_default(),
            follow: args.follow,
        },
        since: args.since,
        tail: args.tail,
        environment,
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
    let source = payload::select(args.payload.as_deref(), args.payload_file.as_deref())?;
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
                    let _ = writeln!(
                        io.progress,
                        "created {} ({}); waiting up to {}s for READY",
                        env.id,
                        state_name(env.state),
                        limit.as_secs_f64()
                    );
                    wait_ready(client, env, limit, json, timeout, io.progress).await
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
        Plan::Get(given) => {
            let id = resolve_id(client, &given, timeout).await?;
            let env = client
                .get_environment(request(GetEnvironmentRequest { id }, timeout))
                .await?
                .into_inner();
            render::environment_output(&env, json)
        }
        Plan::Delete {
            target,
            grace_period_seconds,
        } => {
            delete(
                client,
                target,
                grace_period_seconds,
                json,
                timeout,
                io.progress,
            )
            .await
        }
        Plan::Invoke(req) => {
            let request_id = req.request_id.clone();
            match client.invoke(request(req, timeout)).await {
                Ok(resp) => render::invoke_output(&resp.into_inner(), json),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    render::throttle_output(&throttle::from_status(&status), &request_id, json)
                }
                Err(status) => Err(status.into()),
            }
        }
        Plan::InvokeStream(req) => {
            let request_id = req.request_id.clone();
            match client
                .invoke_with_response_stream(request(req, timeout))
                .await
            {
                Ok(resp) => {
                    crate::stream::render(resp.into_inner(), json, io.stdout_is_tty, io.stdout)
                        .await
                }
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
        Plan::Logs {
            request: req,
            since,
            tail,
            environment,
        } => {
            let environment = match environment {
                None => None,
                Some(given) => {
                    let envs =
                        list(client, &req.function_name, &req.function_version, timeout).await?;
                    // An environment that is gone is not listed: its records are still there, so the
                    // prefix is then matched against the records' ids.
                    Some(match resolve::resolve(&given, &envs)? {
                        Some(id) => EnvironmentMatch::Exact(id),
                        None => EnvironmentMatch::Prefix(given),
                    })
                }
            };
            let filter = Filter {
                since_ms: since.map(|s| s.cutoff_ms(SystemTime::now())),
                environment,
            };
            stream_logs(client, req, filter, tail, json, timeout, io.stdout).await
        }
    }
}

/// The environments of a function (and version; empty: all), or of every function.
async fn list(
    client: &mut Client,
    function: &str,
    version: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<Vec<Environment>> {
    Ok(client
        .list_environments(request(
            ListEnvironmentsRequest {
                function_name: function.to_owned(),
                function_version: version.to_owned(),
            },
            timeout,
        ))
        .await?
        .into_inner()
        .environments)
}

/// The whole id `given` stands for (see `resolve`); `given` itself when no listed environment matches.
async fn resolve_id(
    client: &mut Client,
    given: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<String> {
    let envs = list(client, "", "", timeout).await?;
    Ok(resolve::resolve(given, &envs)?.unwrap_or_else(|| given.to_owned()))
}

/// Deletes one environment or every environment of a function, all at once. Each delete returns when its
/// environment has drained (or its grace period ended) and is gone; meanwhile the invokes still draining are
/// reported on `progress` when their number changes, and each environment when it is gone.
async fn delete(
    client: &mut Client,
    target: DeleteTarget,
    grace_period_seconds: u32,
    json: bool,
    timeout: Option<Duration>,
    progress: &mut dyn Write,
) -> anyhow::Result<Output> {
    let (ids, function) = match &target {
        DeleteTarget::Id(given) => (vec![resolve_id(client, given, timeout).await?], None),
        DeleteTarget::Function(f) => {
            let envs = list(client, &f.name, f.version.as_deref().unwrap_or(""), timeout).await?;
            let what = match &f.version {
                Some(v) => format!("{}:{v}", f.name),
                None => format!("{} (any version)", f.name),
            };
            if envs.is_empty() {
                return Ok(Output::default().with_stderr(format!(
                    "no environments of function {what}; nothing deleted\n"
                )));
            }
            (envs.into_iter().map(|e| e.id).collect(), Some(what))
        }
    };
    let grace = match grace_period_seconds {
        0 => "the agent's grace period".to_owned(),
        s => format!("a grace period of {s}s"),
    };
    let _ = match &function {
        Some(what) => writeln!(
            progress,
            "deleting {} environment(s) of function {what}, with {grace}",
            ids.len()
        ),
        None => writeln!(progress, "deleting {}, with {grace}", ids[0]),
    };
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for id in &ids {
        let mut c = client.clone();
        let req = DeleteEnvironmentRequest {
            id: id.clone(),
            grace_period_seconds,
        };
        tasks.spawn(async move { c.delete_environment(request(req, timeout)).await });
    }
    let mut deleted: Vec<Environment> = Vec::new();
    let mut first_error: Option<anyhow::Error> = None;
    let mut draining: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval_at(started + DELETE_POLL, DELETE_POLL);
    while !tasks.is_empty() {
        tokio::select! {
            done = tasks.join_next() => {
                match done {
                    Some(Ok(Ok(resp))) => {
                        let env = resp.into_inner();
                        draining.remove(&env.id);
                        let _ = writeln!(
                            progress,
                            "deleted {} after {:.1}s",
                            env.id,
                            started.elapsed().as_secs_f64()
                        );
                        deleted.push(env);
                    }
                    Some(Ok(Err(status))) => {
                        let _ = writeln!(progress, "error: {}", crate::output::status_line(&status));
                        first_error.get_or_insert(status.into());
                    }
                    Some(Err(join)) => {
                        first_error.get_or_insert(anyhow::anyhow!("a delete task failed: {join}"));
                    }
                    None => {}
                }
            }
            _ = tick.tick() => {
                // Best effort: a failed look does not stop the deletes.
                let Ok(envs) = list(client, "", "", timeout).await else { continue };
                for env in envs.iter().filter(|e| ids.contains(&e.id) && !deleted.iter().any(|d| d.id == e.id)) {
                    if env.state == EnvironmentState::Draining as i32
                        && draining.insert(env.id.clone(), env.in_flight) != Some(env.in_flight)
                    {
                        let _ = writeln!(
                            progress,
                            "draining {}: {} invoke(s) in flight",
                            env.id, env.in_flight
                        );
                    }
                }
            }
        }
    }
    // In the order the environments were listed.
    deleted.sort_by_key(|e| ids.iter().position(|id| *id == e.id));
    match (first_error, function) {
        (Some(err), _) if deleted.is_empty() => Err(err),
        (Some(err), _) => {
            let out = render::environments_output(&deleted, json)?;
            Ok(out
                .with_code(crate::output::EXIT_ERROR)
                .with_stderr(format!(
                    "error: not every environment was deleted: {}\n",
                    crate::output::chain(&err)
                )))
        }
        (None, None) => match deleted.first() {
            Some(env) => render::environment_output(env, json),
            None => anyhow::bail!("the agent answered no environment"),
        },
        (None, Some(_)) => render::environments_output(&deleted, json),
    }
}

/// Prints the records `filter` keeps as they arrive (readable lines, or the records with `json`); with
/// `tail`, only the last `tail` of those already written, then (following) every new one. A reader that goes
/// away (`lmictl logs f | head`) ends the command quietly.
async fn stream_logs(
    client: &mut Client,
    req: StreamLogsRequest,
    filter: Filter,
    tail: Option<usize>,
    json: bool,
    timeout: Option<Duration>,
    out: &mut dyn Write,
) -> anyhow::Result<Output> {
    let mut skip = 0usize;
    if let Some(n) = tail {
        // The stream does not mark where the records already written end: read them once without
        // following, keep the last `n`, and skip as many records of the followed stream.
        let once = StreamLogsRequest {
            follow: false,
            ..req.clone()
        };
        let mut last: VecDeque<String> = VecDeque::with_capacity(n.min(65_536));
        match client.stream_logs(request(once, timeout)).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while let Some(batch) = stream.message().await? {
                    for record in batch.records {
                        skip += 1;
                        if n > 0 && filter.keeps(&record) {
                            if last.len() == n {
                                last.pop_front();
                            }
                            last.push_back(record);
                        }
                    }
                }
            }
            // Following a function that has not logged yet is fine.
            Err(status) if req.follow && status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
        let text: String = last.iter().map(|r| crate::logs::render(r, json)).collect();
        if !write_or_gone(out, &text)? {
            return Ok(Output::default());
        }
        if !req.follow {
            return Ok(Output::default());
        }
    }
    // A follow has no natural end: --rpc-timeout bounds only the connection, not the stream.
    let timeout = if req.follow { None } else { timeout };
    let mut stream = client
        .stream_logs(request(req, timeout))
        .await?
        .into_inner();
    while let Some(batch) = stream.message().await? {
        let mut text = String::new();
        for record in &batch.records {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if filter.keeps(record) {
                text.push_str(&crate::logs::render(record, json));
            }
        }
        if !write_or_gone(out, &text)? {
            break;
        }
    }
    Ok(Output::default())
}

/// Writes and flushes; `false` when the reader has gone (a closed pipe).
fn write_or_gone(out: &mut dyn Write, text: &str) -> anyhow::Result<bool> {
    if text.is_empty() {
        return Ok(true);
    }
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// Polls until READY (exit 0), a state that will never become READY (exit 1: FAILED, DRAINING,
/// TERMINATED), or `limit` (exit 4). Each change of state is reported on `progress` with the time since the
/// wait began. The environment's details are printed in every case.
async fn wait_ready(
    client: &mut Client,
    mut env: Environment,
    limit: Duration,
    json: bool,
    timeout: Option<Duration>,
    progress: &mut dyn Write,
) -> anyhow::Result<Output> {
    let started = Instant::now();
    let deadline = started + limit;
    let mut shown = env.state;
    loop {
        if env.state != shown {
            shown = env.state;
            let _ = writeln!(
                progress,
                "{}: {} after {:.1}s",
                env.id,
                state_name(env.state),
                started.elapsed().as_secs_f64()
            );
        }
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
