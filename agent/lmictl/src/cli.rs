//! The command line (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::output::EXIT_CODES_HELP;
use crate::spec_file;

/// The daemon's default Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/lmi-agent/agent.sock";

/// Operator CLI of lmi-agent: talks to the gRPC service lmi.agent.v1.Agent of one host.
#[derive(Debug, Parser)]
#[command(name = "lmictl", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The agent's Unix socket.
    #[arg(long, global = true, env = "LMI_AGENT_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,

    /// Connect over TCP instead, e.g. http://10.0.0.5:7443 (overrides --socket).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,

    /// File holding the bearer token of the agent's TCP listener (its `listen_tcp_token_file`); sent as
    /// `authorization: Bearer <token>` with --endpoint. Mode 0600, owned by the caller.
    #[arg(
        long,
        global = true,
        env = "LMI_AGENT_LISTEN_TCP_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,

    /// Print JSON instead of human-readable output.
    #[arg(long, global = true)]
    pub json: bool,

    /// Deadline of each RPC (and of connecting), in seconds (fractions allowed). Default: none for the RPC,
    /// 10 s to connect. (Not `--timeout`: `create --timeout` is the function's timeout, as in the AWS CLI.)
    #[arg(long, global = true, value_name = "SECONDS", value_parser = parse_seconds)]
    pub rpc_timeout: Option<Duration>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an execution environment from flags and/or a spec file (TOML or JSON).
    Create(CreateArgs),
    /// List environments as a table.
    List(ListArgs),
    /// Show every field of one environment (a unique prefix of its id is enough).
    Get(GetArgs),
    /// Drain and delete one environment, or every environment of a function (--function NAME[:VERSION]).
    Delete(DeleteArgs),
    /// Invoke a function version once and print its result.
    #[command(after_help = EXIT_CODES_HELP)]
    Invoke(InvokeArgs),
    /// Show the host's capacity, cgroup version and runtimes.
    Host,
    /// Print a function version's log records, oldest first: one readable line each (--json: the records).
    Logs(LogsArgs),
    /// Live view of host and environment utilization (one frame per sampling period).
    Top(TopArgs),
    /// Measure the agent: invoke load (throughput, latency, CPU, RSS) or environment start-up.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    #[command(after_help = COMPLETION_HELP)]
    Completion(CompletionArgs),
    /// Write the man pages (lmictl.1 and one per command) into a directory.
    Man(ManArgs),
}

const COMPLETION_HELP: &str = "\
Install, for example:
  bash: lmictl completion bash > /etc/bash_completion.d/lmictl
  zsh:  lmictl completion zsh > \"${fpath[1]}/_lmictl\"
  fish: lmictl completion fish > ~/.config/fish/completions/lmictl.fish";

/// The shells `completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Drive Invoke at a fixed concurrency (closed loop) or a fixed rate (open loop) for a duration; print
    /// throughput, latency percentiles, outcome counts, and the agent's CPU per invoke and peak RSS.
    Invoke(BenchInvokeArgs),
    /// Create an environment several times and report where its start-up time went (the agent's phases and
    /// the runtime's own init), deleting each one after.
    Startup(BenchStartupArgs),
}

#[derive(Debug, Args)]
pub struct BenchInvokeArgs {
    /// Function name (it must have a READY environment).
    pub function: String,

    /// Function version (default $LATEST).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,

    /// Invokes kept in flight (closed loop: each caller sends its next invoke when the last one ends).
    #[arg(long, short = 'c', value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Send this many invokes per second instead, whatever the answers (open loop); latency is measured
    /// from each invoke's scheduled time. Overrides --concurrency.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// With --rate: the most invokes in flight; a scheduled invoke beyond it is counted as skipped.
    #[arg(long, value_name = "N", default_value = "10000", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,

    /// How long to measure, in seconds (at most 600).
    #[arg(long, short = 'd', value_name = "SECONDS", default_value = "10", value_parser = parse_bench_seconds)]
    pub duration: Duration,

    /// Load before measuring (not counted), in seconds (0 for none, at most 600).
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_warmup)]
    pub warmup: Duration,

    /// Stop after this many measured invokes even if --duration has not elapsed.
    #[arg(long, short = 'n', value_name = "COUNT")]
    pub max_invokes: Option<u64>,

    /// Payload of every invoke (JSON).
    #[arg(long, value_name = "JSON", default_value = r#"{"hello":"world"}"#)]
    pub payload: String,

    /// How invokes travel: `unary` (a gRPC `Invoke` call each), `stream` (`InvokeStream`: one stream per
    /// connection, the concurrency spread over them; closed loop only) or `http` (the HTTP Invoke API at
    /// --invoke-api: one HTTP/1.1 keep-alive connection per caller).
    #[arg(long, value_enum, value_name = "INGRESS", default_value = "unary")]
    pub via: BenchVia,

    /// The same as --via stream.
    #[arg(long, conflicts_with_all = ["rate", "via"])]
    pub stream: bool,

    /// With --via http: the agent's Invoke API address, host:port (its `[invoke_api] listen`), on loopback.
    #[arg(long, value_name = "HOST:PORT")]
    pub invoke_api: Option<String>,

    /// gRPC connections to spread the invokes over (HTTP/2 multiplexes each).
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub connections: u32,

    /// The agent's process id, for its CPU time and RSS. Default: the peer of the Unix socket.
    #[arg(long, value_name = "PID")]
    pub agent_pid: Option<u32>,

    /// Reset the agent's peak RSS (VmHWM, through /proc/PID/clear_refs) before measuring, so the peak is
    /// this run's.
    #[arg(long)]
    pub reset_peak_rss: bool,
}

/// The ingress `bench invoke` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchVia {
    Unary,
    Stream,
    Http,
}

#[derive(Debug, Args)]
pub struct BenchStartupArgs {
    /// How many environments to create (one at a time); the report gives each and the median.
    #[arg(long, short = 'n', value_name = "N", default_value = "5", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,

    /// The spec, as for `create` (its --wait-timeout bounds each wait for READY; --wait is implied).
    #[command(flatten)]
    pub create: CreateArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Stop after this many frames (default: until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Spec file (.toml or .json) with the field names of EnvironmentSpec; flags override it. Relative code
    /// paths in the file are relative to the file's directory.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,

    /// Function name.
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,

    /// Function version (default $LATEST).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,

    /// Function ARN (default: derived by the agent).
    #[arg(long, value_name = "ARN")]
    pub arn: Option<String>,

    /// Runtime id, e.g. python3.11 or provided.al2023.
    #[arg(long, value_name = "ID")]
    pub runtime: Option<String>,

    /// Handler, e.g. app.handler.
    #[arg(long, value_name = "H")]
    pub handler: Option<String>,

    /// Code: a directory, or a file ending in .zip. Relative paths are made absolute.
    #[arg(long, value_name = "DIR_OR_ZIP")]
    pub code: Option<String>,

    /// Lowercase hex sha256 of the zip file.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,

    /// Memory in MiB (2048..32768).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,

    /// Memory GiB per vCPU: 2, 4 or 8.
    #[arg(long, value_name = "2|4|8", value_parser = parse_ratio)]
    pub ratio: Option<u32>,

    /// Max concurrent invokes (1..1600; default: the runtime's per-vCPU default times vCPUs).
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<u32>,

    /// The function's timeout in seconds (1..900), as `aws lambda create-function --timeout`. (The RPC
    /// deadline is --rpc-timeout.)
    #[arg(
        long = "timeout",
        visible_alias = "timeout-seconds",
        value_name = "SECONDS"
    )]
    pub timeout_seconds: Option<u32>,

    /// Ephemeral storage in MiB (512..10240).
    #[arg(long, value_name = "MIB")]
    pub ephemeral_storage: Option<u32>,

    /// Environment variable KEY=VALUE (repeatable; overrides the spec file's).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = spec_file::parse_env_pair)]
    pub env: Vec<(String, String)>,

    /// Poll until the environment is READY (exit 0) or FAILED (exit 1), reporting its state on stderr.
    #[arg(long)]
    pub wait: bool,

    /// With --wait: give up after this many seconds (exit 4).
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = parse_seconds)]
    pub wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only environments of this function.
    #[arg(long, value_name = "NAME")]
    pub function: Option<String>,
    /// Only environments of this version.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Environment id, or a prefix of it that matches exactly one environment.
    pub id: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["id", "function"])))]
pub struct DeleteArgs {
    /// Environment id, or a prefix of it that matches exactly one environment.
    pub id: Option<String>,
    /// Delete every environment of this function (all its versions), or of one version with NAME:VERSION.
    #[arg(long, value_name = "NAME[:VERSION]", conflicts_with = "id", value_parser = parse_function_ref)]
    pub function: Option<FunctionRef>,
    /// Seconds in-flight invokes may run before the runtime is stopped (default: the agent's).
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<u32>,
}

/// `NAME` or `NAME:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: String,
    /// `None`: every version.
    pub version: Option<String>,
}

/// Parses `NAME[:VERSION]` (neither part empty).
pub fn parse_function_ref(s: &str) -> Result<FunctionRef, String> {
    let (name, version) = match s.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    if name.trim().is_empty() {
        return Err(format!("`{s}`: the function name is empty"));
    }
    if version.is_some_and(|v| v.trim().is_empty()) {
        return Err(format!("`{s}`: the version after `:` is empty"));
    }
    Ok(FunctionRef {
        name: name.to_string(),
        version: version.map(str::to_string),
    })
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Function name.
    pub function: String,

    /// Function version (default $LATEST).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,

    /// Payload (JSON). "-" reads stdin. Without --payload/--payload-file the payload is {} and stdin is not
    /// read.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    pub payload: Option<String>,

    /// Read the payload from a file ("-" is stdin).
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,

    /// Request id (default: a new UUID chosen by the agent).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,

    /// Passed to the runtime as Lambda-Runtime-Client-Context.
    #[arg(long, value_name = "CONTEXT")]
    pub client_context: Option<String>,

    /// Passed to the runtime as Lambda-Runtime-Trace-Id.
    #[arg(long, value_name = "TRACE_ID")]
    pub trace_id: Option<String>,

    /// Print the answer as the function streams it (InvokeWithResponseStream): each chunk goes to stdout
    /// when it arrives, byte for byte, then the outcome is reported as without --stream. With --json, one
    /// JSON line per chunk ({"chunk": TEXT} or {"chunk_base64": ...}), then a summary line.
    #[arg(long)]
    pub stream: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Function name.
    pub function: String,

    /// Function version (default $LATEST).
    #[arg(long, value_name = "V")]
    pub version: Option<String>,

    /// Keep printing records as they are written (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,

    /// Only records written since then: a duration back from now (30s, 10m, 2h, 1d) or an RFC 3339 time
    /// (2025-01-02T03:04:05Z).
    #[arg(long, value_name = "DURATION|TIME", value_parser = crate::logs::parse_since)]
    pub since: Option<crate::logs::Since>,

    /// Only the last N records (of those --since selects); with --follow, then the new ones.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,

    /// Only records of this environment (a unique prefix of its id is enough).
    #[arg(long, value_name = "ID")]
    pub environment: Option<String>,
}

/// A positive number of seconds, fractions allowed.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("`{s}`: must be greater than 0"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// A rate of invokes per second: positive and at most 1,000,000.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of invokes per second"))?;
    if !(rate > 0.0 && rate <= 1_000_000.0) {
        return Err(format!("`{s}`: must be greater than 0 and at most 1000000"));
    }
    Ok(rate)
}

/// A benchmark duration: positive, at most 600 seconds (benchmarks are bounded).
pub fn parse_bench_seconds(s: &str) -> Result<Duration, String> {
    let d = parse_seconds(s)?;
    if d > Duration::from_secs(600) {
        return Err(format!("`{s}`: at most 600 seconds"));
    }
    Ok(d)
}

/// A warm-up: 0 or a benchmark duration.
pub fn parse_warmup(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_bench_seconds(s)
}

/// 2, 4 or 8 GiB per vCPU.
pub fn parse_ratio(s: &str) -> Result<u32, String> {
    match s.trim() {
        "2" => Ok(2),
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err(format!("`{s}`: must be 2, 4 or 8 (GiB per vCPU)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "lmictl",
            "list",
            "--json",
            "--socket",
            "/tmp/x.sock",
            "--rpc-timeout",
            "1.5",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(cli.rpc_timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn create_timeout_is_the_functions_and_rpc_timeout_the_deadline() {
        let cli = Cli::try_parse_from(["lmictl", "create", "--timeout", "60"]).unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.timeout_seconds, Some(60));
        assert_eq!(cli.rpc_timeout, None);
        let cli = Cli::try_parse_from(["lmictl", "create", "--timeout-seconds", "7"]).unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        assert_eq!(args.timeout_seconds, Some(7));
        // Elsewhere `--timeout` would be ambiguous: it is refused, not taken as the deadline.
        let err = Cli::try_parse_from(["lmictl", "list", "--timeout", "5"]).unwrap_err();
        assert!(err.to_string().contains("--rpc-timeout"), "{err}");
    }

    #[test]
    fn delete_takes_an_id_or_a_function() {
        let cli = Cli::try_parse_from(["lmictl", "delete", "ab12"]).unwrap();
        let Command::Delete(args) = cli.command else {
            panic!("not delete")
        };
        assert_eq!((args.id.as_deref(), args.function), (Some("ab12"), None));
        let cli =
            Cli::try_parse_from(["lmictl", "delete", "--function", "f:3", "--grace", "5"]).unwrap();
        let Command::Delete(args) = cli.command else {
            panic!("not delete")
        };
        assert_eq!(
            args.function,
            Some(FunctionRef {
                name: "f".into(),
                version: Some("3".into())
            })
        );
        assert_eq!(args.grace, Some(5));
        assert_eq!(
            parse_function_ref("f"),
            Ok(FunctionRef {
                name: "f".into(),
                version: None
            })
        );
        assert!(parse_function_ref(":1").is_err());
        assert!(parse_function_ref("f:").is_err());
        assert!(Cli::try_parse_from(["lmictl", "delete"]).is_err());
        assert!(Cli::try_parse_from(["lmictl", "delete", "x", "--function", "f"]).is_err());
    }

    #[test]
    fn logs_filters_parse() {
        let cli = Cli::try_parse_from([
            "lmictl",
            "logs",
            "f",
            "--since",
            "10m",
            "--tail",
            "5",
            "--environment",
            "ab",
        ])
        .unwrap();
        let Command::Logs(args) = cli.command else {
            panic!("not logs")
        };
        assert_eq!(args.tail, Some(5));
        assert_eq!(args.environment.as_deref(), Some("ab"));
        assert!(args.since.is_some());
        assert!(Cli::try_parse_from(["lmictl", "logs", "f", "--since", "soon"]).is_err());
        assert!(Cli::try_parse_from(["lmictl", "logs", "f", "--tail", "-1"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("abc").is_err());
        assert!(parse_ratio("3").is_err());
        assert_eq!(parse_ratio("8"), Ok(8));
        let err = Cli::try_parse_from(["lmictl", "create", "--env", "NOEQUALS"]).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        assert!(Cli::try_parse_from([
            "lmictl",
            "invoke",
            "f",
            "--payload",
            "{}",
            "--payload-file",
            "x"
        ])
        .is_err());
    }

    #[test]
    fn logs_takes_a_function_and_follow() {
        let cli = Cli::try_parse_from(["lmictl", "logs", "f", "-f", "--version", "3"]).unwrap();
        let Command::Logs(args) = cli.command else {
            panic!("not logs")
        };
        assert_eq!(
            (args.function.as_str(), args.version.as_deref(), args.follow),
            ("f", Some("3"), true)
        );
        assert!(Cli::try_parse_from(["lmictl", "logs"]).is_err());
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("2  invoke: throttled"), "{help}");
    }
}
