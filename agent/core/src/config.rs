//! The agent's configuration: one TOML file (default `/etc/lmi-agent/agent.toml`), every key optional with a
//! documented default (`docs/configuration.md`), overridable by `LMI_AGENT_<SECTION>_<KEY>` environment
//! variables and command-line flags ([`layers`]). Unknown keys and bad values are errors that name the key.

#[cfg(test)]
mod doc_tests;
pub mod keys;
pub mod layers;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use lmi_sandbox::config::SandboxConfig;
use serde::{Deserialize, Serialize};

/// Lowest uid the sandbox may hand out.
const MIN_SANDBOX_UID: u32 = 1000;
/// Highest uid the sandbox may hand out (uids above 2^31 - 1 confuse tools that read them as signed).
const MAX_SANDBOX_UID: u32 = 2_147_483_647;
/// `nobody`, which must never be an environment's identity.
const NOBODY_UID: u64 = 65_534;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/lmi-agent/agent.toml";

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    /// A key that no configuration struct has. `at`: where it is in the file (empty, or the line with a
    /// caret under the key on lines of their own).
    #[error("{origin}: unknown key `{key}` (known here: {expected}){at}")]
    UnknownKey {
        key: String,
        origin: String,
        expected: String,
        at: String,
    },
    /// An `LMI_AGENT_*` environment variable that names no key.
    #[error("environment variable {var} does not name a configuration key (LMI_AGENT_<SECTION>_<KEY>, see docs/configuration.md)")]
    UnknownEnv { var: String },
    /// A value of the wrong kind or out of range. `at`: where it is in the file (as for `UnknownKey`).
    #[error("{origin}: {key}: {message}{at}")]
    BadValue {
        key: String,
        origin: String,
        message: String,
        at: String,
    },
}

/// Listen addresses (`listen_tcp`, `metrics_listen`, `invoke_api.listen`): an IP literal with a port
/// (`127.0.0.1:9464`, `[::1]:9464`) is taken as it is; `host:port` is resolved once, when the configuration is
/// loaded, with the system resolver (`/etc/hosts`, DNS), and the first address it returns is used.
pub mod listen_addr {
    use std::net::{SocketAddr, ToSocketAddrs};

    use serde::{de::Error as _, Deserialize, Deserializer};

    /// Resolves one listen address; the error says what was wrong, for a configuration error.
    pub fn resolve(text: &str) -> Result<SocketAddr, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!(
                "`{text}` is not an address: expected HOST:PORT, e.g. 127.0.0.1:9464 or localhost:9464"
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!(
                "`{text}` is not an address: expected HOST:PORT with a port of 0..65535, e.g. localhost:9464"
            ));
        }
        match text.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| format!("host `{host}` resolves to no address")),
            Err(e) => Err(format!("cannot resolve host `{host}`: {e}")),
        }
    }

    /// `deserialize_with` for an optional listen address.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => resolve(&text).map(Some).map_err(D::Error::custom),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line (production, journald).
    Json,
    /// Human-readable lines.
    Text,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unix socket of the gRPC control API (created with mode 0600).
    pub socket: PathBuf,
    /// Optional TCP address for the gRPC control API, e.g. "127.0.0.1:50051" (or a host name, [`listen_addr`]).
    #[serde(deserialize_with = "listen_addr::deserialize")]
    pub listen_tcp: Option<SocketAddr>,
    /// File holding the bearer token that calls on `listen_tcp` must carry (mode 0600, at least 32
    /// characters). Required unless `listen_tcp` is a loopback address and network isolation is on.
    pub listen_tcp_token_file: Option<PathBuf>,
    /// Where the agent keeps state (unpacked code, ...).
    pub state_dir: PathBuf,
    /// Name of the agent's cgroup, created under the agent's own cgroup in every hierarchy.
    pub cgroup_parent: String,
    /// Directory holding `runtime-shims/<language>/`.
    pub shims_dir: PathBuf,
    /// Runtime catalog file; absent means the catalog built into the agent.
    pub catalog: Option<PathBuf>,
    /// Region used in derived ARNs and given to runtimes as AWS_REGION.
    pub region: String,
    /// Account used in derived ARNs.
    pub account_id: String,
    /// Log format of the agent's own logs.
    pub log_format: LogFormat,
    /// Host capacity the agent plans with.
    pub capacity: CapacityConfig,
    /// Environment lifecycle settings.
    pub environments: EnvironmentsConfig,
    /// The AWS Lambda compatible Invoke API (HTTP).
    pub invoke_api: InvokeApiConfig,
    /// Function logs: capture limits and sinks.
    pub logs: LogsConfig,
    /// Sampling and admission.
    pub utilization: UtilizationConfig,
    /// The scaler the agent streams utilization reports to.
    pub scaler: ScalerConfig,
    /// Address of the Prometheus `/metrics` endpoint, e.g. "127.0.0.1:9464" or "localhost:9464"; absent = off.
    #[serde(deserialize_with = "listen_addr::deserialize")]
    pub metrics_listen: Option<SocketAddr>,
    /// How each environment's processes are isolated.
    pub sandbox: SandboxConfig,
    /// Limits on zip code unpacked for environments.
    pub code: CodeConfig,
    /// Timeouts and connection caps of the agent's HTTP and gRPC listeners.
    pub listeners: ListenersConfig,
}

/// `[code]`: limits on a zip's unpacked code, checked while it is unpacked (a zip past them is refused with
/// `INVALID_ARGUMENT` and nothing of it is kept).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeConfig {
    /// Total uncompressed bytes of a zip's entries (Lambda's limit on unzipped code is 250 MB).
    pub max_unzipped_bytes: u64,
    /// Entries (files, directories, links) of a zip.
    pub max_zip_entries: u32,
}

impl Default for CodeConfig {
    fn default() -> Self {
        let d = crate::code::CodeLimits::default();
        Self {
            max_unzipped_bytes: d.max_unzipped_bytes,
            max_zip_entries: d.max_entries,
        }
    }
}

impl CodeConfig {
    /// The limits as the code stager takes them.
    pub fn limits(&self) -> crate::code::CodeLimits {
        crate::code::CodeLimits {
            max_unzipped_bytes: self.max_unzipped_bytes,
            max_entries: self.max_zip_entries,
        }
    }
}

/// `[listeners]`: what every listener of the agent enforces on each connection: the Invoke API and `/metrics`
/// (HTTP/1) and the control API's Unix socket and TCP listener (gRPC: the cap, the HTTP/2 preface within
/// the header timeout, keep-alive pings at its period).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Time a client has to send a request's head (milliseconds); also how long an idle keep-alive
    /// connection is kept. A connection past it is closed.
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's whole body once its head arrived (milliseconds); past it the
    /// request gets 408 and the connection is closed.
    pub body_timeout_ms: u64,
    /// Connections each listener holds at once; one more is closed as soon as it is accepted.
    pub max_connections: u32,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        Self {
            header_timeout_ms: 30_000,
            body_timeout_ms: 60_000,
            max_connections: 4096,
        }
    }
}

/// `[utilization]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UtilizationConfig {
    /// Sampling period (milliseconds, at least 100).
    pub sample_interval_ms: u64,
    /// Time constant of the exponential smoothing of CPU utilization (seconds; 0 = no smoothing).
    pub smoothing_seconds: f64,
    /// An environment whose smoothed CPU utilization (of its vCPUs) is above this is saturated.
    pub cpu_threshold: f64,
    /// An environment whose memory working set (of its limit) is above this is saturated.
    pub memory_threshold: f64,
    /// An environment whose /tmp usage (of its ephemeral storage) is above this is saturated.
    pub disk_threshold: f64,
}

/// `[scaler]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScalerConfig {
    /// gRPC endpoint of the scaler, e.g. "http://10.0.0.5:7000"; absent = no reports.
    pub endpoint: Option<String>,
    /// Report period (milliseconds, 100..60000); the scaler may change it with a directive.
    pub report_interval_ms: u64,
    /// First reconnect delay (milliseconds); doubles up to `backoff_max_ms`, with full jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay (milliseconds).
    pub backoff_max_ms: u64,
}

impl Default for UtilizationConfig {
    fn default() -> Self {
        Self {
            sample_interval_ms: 1000,
            smoothing_seconds: 5.0,
            cpu_threshold: 0.9,
            memory_threshold: 0.9,
            disk_threshold: 0.9,
        }
    }
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            report_interval_ms: 1000,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
        }
    }
}

/// `[capacity]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// vCPUs of the host; 0 = detected.
    pub vcpus: u32,
    /// Memory of the host in MiB; 0 = detected.
    pub memory_mib: u64,
    /// vCPUs kept for the OS and the agent.
    pub reserved_vcpus: u32,
    /// Memory kept for the OS and the agent (MiB).
    pub reserved_memory_mib: u64,
}

/// `[environments]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvironmentsConfig {
    /// Grace period of DeleteEnvironment when the request gives none (seconds).
    pub delete_grace_seconds: u32,
    /// Time between SIGTERM and SIGKILL when a runtime is stopped (milliseconds).
    pub stop_timeout_ms: u64,
    /// pids.max of every environment's cgroup.
    pub pids_max: u64,
    /// Override of the init timeout (seconds); 0 = Lambda's max(130 s, function timeout).
    pub init_timeout_seconds: u32,
    /// What the Runtime API answers a runtime's answer to an invoke the agent already ended (its caller timed
    /// out, or the answer is over the size limit): false = 202, the body read and dropped (every official
    /// client goes on polling); true = 410 / 413 as Lambda's emulator does (the official Go client exits).
    pub refuse_late_and_oversized_answers: bool,
}

/// Where function log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSinkKind {
    /// `<dir>/<function>/<version>.log`, rotated by size; what `lmictl logs` reads.
    File,
    /// The agent's own stdout, one JSON record a line (journald under systemd). The agent's own diagnostics go
    /// to stderr, so the two never mix.
    Stdout,
}

/// `[logs]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Sinks of function log records: any of "file" and "stdout", at least one.
    pub sinks: Vec<LogSinkKind>,
    /// Directory of the file sink; absent means `<state_dir>/logs`.
    pub dir: Option<PathBuf>,
    /// Size at which a function's log file is rotated (bytes).
    pub max_file_bytes: u64,
    /// Rotated files kept per function version besides the current one (`.log.1` newest … `.log.N`).
    pub keep_files: u32,
    /// Longest line kept as one record (bytes); a longer line is split into records of at most this size,
    /// each marked `"split": true` except the last.
    pub max_line_bytes: usize,
    /// Records the queue between the readers and the sink writer holds at most.
    pub queue_records: usize,
    /// Bytes of encoded records the queue holds at most. When either limit is reached the newest record is
    /// dropped and counted.
    pub queue_bytes: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            sinks: vec![LogSinkKind::File],
            dir: None,
            max_file_bytes: 16 * 1024 * 1024,
            keep_files: 4,
            max_line_bytes: 64 * 1024,
            queue_records: 8192,
            queue_bytes: 32 * 1024 * 1024,
        }
    }
}

/// `[invoke_api]`: the optional HTTP listener that speaks the Lambda Invoke API (`POST
/// /2015-03-31/functions/{name}/invocations`), for the AWS CLI and SDKs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvokeApiConfig {
    /// Address to listen on, e.g. "127.0.0.1:9001" (or a host name, [`listen_addr`]); unset = no listener.
    #[serde(deserialize_with = "listen_addr::deserialize")]
    pub listen: Option<SocketAddr>,
    /// Asynchronous (`Event`) invokes accepted but not yet started; when full, `Event` invokes get 429.
    pub event_queue: usize,
    /// Payload bytes of asynchronous invokes accepted and not yet finished (queued, or running and retried while
    /// throttled); an `Event` invoke that would pass it gets 429 (`EventQueueFull`), as for `event_queue`.
    pub event_queue_bytes: usize,
    /// Asynchronous invokes run at once.
    pub event_workers: usize,
    /// How long a throttled asynchronous invoke is retried before it is dropped (seconds).
    pub event_max_age_seconds: u32,
}

impl Default for InvokeApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            event_queue: 1024,
            event_queue_bytes: 256 * 1024 * 1024,
            event_workers: 16,
            event_max_age_seconds: 300,
        }
    }
}

impl LogsConfig {
    /// The file sink's directory, resolved against `state_dir`; `None` when the file sink is off.
    pub fn file_dir(&self, state_dir: &Path) -> Option<PathBuf> {
        self.sinks
            .contains(&LogSinkKind::File)
            .then(|| self.dir.clone().unwrap_or_else(|| state_dir.join("logs")))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/lmi-agent/agent.sock"),
            listen_tcp: None,
            listen_tcp_token_file: None,
            state_dir: PathBuf::from("/var/lib/lmi-agent"),
            cgroup_parent: "lmi-agent".to_owned(),
            shims_dir: PathBuf::from("/usr/share/lmi-agent/runtime-shims"),
            catalog: None,
            region: "us-east-1".to_owned(),
            account_id: "000000000000".to_owned(),
            log_format: LogFormat::Json,
            capacity: CapacityConfig::default(),
            environments: EnvironmentsConfig::default(),
            utilization: UtilizationConfig::default(),
            scaler: ScalerConfig::default(),
            metrics_listen: None,
            logs: LogsConfig::default(),
            invoke_api: InvokeApiConfig::default(),
            sandbox: SandboxConfig::default(),
            code: CodeConfig::default(),
            listeners: ListenersConfig::default(),
        }
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            vcpus: 0,
            memory_mib: 0,
            reserved_vcpus: 0,
            reserved_memory_mib: 1024,
        }
    }
}

impl Default for EnvironmentsConfig {
    fn default() -> Self {
        Self {
            delete_grace_seconds: 30,
            stop_timeout_ms: 2000,
            pids_max: 4096,
            init_timeout_seconds: 0,
            refuse_late_and_oversized_answers: false,
        }
    }
}

impl EnvironmentsConfig {
    pub fn stop_timeout(&self) -> Duration {
        Duration::from_millis(self.stop_timeout_ms)
    }
}

impl Config {
    /// Parses configuration text (no environment, no flags); `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        Ok(layers::Layers::new().text(text, origin)?.resolve()?.config)
    }

    /// Reads and parses a configuration file (no environment, no flags).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(layers::Layers::new().file(path)?.resolve()?.config)
    }

    /// Checks values that their types alone do not constrain. `origin` names the file in errors.
    pub fn check(&self, origin: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: &str| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message: message.to_owned(),
        };
        let name_ok = !self.cgroup_parent.is_empty()
            && self
                .cgroup_parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !self.cgroup_parent.starts_with('.');
        if !name_ok {
            return Err(bad(
                "cgroup_parent",
                "must be a single path component of letters, digits, '-', '_' and '.'",
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err(bad("socket", "must not be empty"));
        }
        if let Some(addr) = self.listen_tcp {
            if self.listen_tcp_token_file.is_none() {
                if !addr.ip().is_loopback() {
                    return Err(bad(
                        "listen_tcp",
                        "a control API beyond the loopback needs listen_tcp_token_file (a bearer token)",
                    ));
                }
                if !self.sandbox.network_isolation {
                    return Err(bad(
                        "listen_tcp",
                        "without sandbox.network_isolation functions share the host's loopback: set listen_tcp_token_file (a bearer token)",
                    ));
                }
            }
        }
        if !self.state_dir.is_absolute() {
            return Err(bad("state_dir", "must be an absolute path"));
        }
        if self.environments.pids_max < 16 {
            return Err(bad("environments.pids_max", "must be at least 16"));
        }
        let u = &self.utilization;
        if u.sample_interval_ms < 100 {
            return Err(bad(
                "utilization.sample_interval_ms",
                "must be at least 100",
            ));
        }
        if !(u.smoothing_seconds.is_finite() && u.smoothing_seconds >= 0.0) {
            return Err(bad(
                "utilization.smoothing_seconds",
                "must be a number of seconds >= 0",
            ));
        }
        for (key, v) in [
            ("utilization.cpu_threshold", u.cpu_threshold),
            ("utilization.memory_threshold", u.memory_threshold),
            ("utilization.disk_threshold", u.disk_threshold),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(bad(key, "must be a fraction in (0, 1]"));
            }
        }
        let sc = &self.scaler;
        if !(100..=60_000).contains(&sc.report_interval_ms) {
            return Err(bad(
                "scaler.report_interval_ms",
                "must be between 100 and 60000",
            ));
        }
        if sc.backoff_initial_ms == 0 || sc.backoff_max_ms < sc.backoff_initial_ms {
            return Err(bad(
                "scaler.backoff_initial_ms",
                "must be > 0 and at most scaler.backoff_max_ms",
            ));
        }
        if let Some(e) = &sc.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad("scaler.endpoint", "must be an http:// or https:// URL"));
            }
        }
        self.check_logs(origin)?;
        if self.invoke_api.event_queue == 0 {
            return Err(bad("invoke_api.event_queue", "must be at least 1"));
        }
        if self.invoke_api.event_queue_bytes == 0 {
            return Err(bad("invoke_api.event_queue_bytes", "must be at least 1"));
        }
        if self.invoke_api.event_workers == 0 {
            return Err(bad("invoke_api.event_workers", "must be at least 1"));
        }
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("account_id", "must be 12 digits"));
        }
        let sb = &self.sandbox;
        if sb.uid_first < MIN_SANDBOX_UID {
            return Err(bad(
                "sandbox.uid_first",
                "must be at least 1000 (above the system accounts)",
            ));
        }
        let last = u64::from(sb.uid_first) + u64::from(sb.uid_count);
        if sb.uid_count == 0 || last > u64::from(MAX_SANDBOX_UID) + 1 {
            return Err(bad(
                "sandbox.uid_count",
                "must be at least 1, and uid_first + uid_count - 1 at most 2147483647",
            ));
        }
        if (u64::from(sb.uid_first)..last).contains(&NOBODY_UID) {
            return Err(bad(
                "sandbox.uid_first",
                "the range must not hold 65534 (nobody)",
            ));
        }
        if let Err(e) = lmi_sandbox::Subnet::parse(&sb.network) {
            return Err(bad("sandbox.network", &e));
        }
        if sb.network_pool > 64 {
            return Err(bad("sandbox.network_pool", "must be at most 64"));
        }
        if self.code.max_unzipped_bytes == 0 {
            return Err(bad("code.max_unzipped_bytes", "must be at least 1"));
        }
        if self.code.max_zip_entries == 0 {
            return Err(bad("code.max_zip_entries", "must be at least 1"));
        }
        let li = &self.listeners;
        for (key, ms) in [
            ("listeners.header_timeout_ms", li.header_timeout_ms),
            ("listeners.body_timeout_ms", li.body_timeout_ms),
        ] {
            if !(10..=3_600_000).contains(&ms) {
                return Err(bad(key, "must be between 10 and 3600000"));
            }
        }
        if li.max_connections == 0 {
            return Err(bad("listeners.max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

impl Config {
    fn check_logs(&self, origin: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, message: String| ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        };
        let l = &self.logs;
        if l.sinks.is_empty() {
            return Err(bad(
                "logs.sinks",
                "must name at least one sink: \"file\", \"stdout\"".to_owned(),
            ));
        }
        if l.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(bad("logs.dir", "must be an absolute path".to_owned()));
        }
        if !(256..=1024 * 1024).contains(&l.max_line_bytes) {
            return Err(bad(
                "logs.max_line_bytes",
                "must be between 256 and 1048576".to_owned(),
            ));
        }
        if l.max_file_bytes < 4096 {
            return Err(bad(
                "logs.max_file_bytes",
                "must be at least 4096".to_owned(),
            ));
        }
        if l.keep_files > 1000 {
            return Err(bad("logs.keep_files", "must be at most 1000".to_owned()));
        }
        if l.queue_records < 16 {
            return Err(bad("logs.queue_records", "must be at least 16".to_owned()));
        }
        // A record can be several times its line (JSON escapes of control bytes) plus its fields: the queue
        // must hold at least a few of the largest.
        let least = l.max_line_bytes.saturating_mul(8);
        if l.queue_bytes < least {
            return Err(bad(
                "logs.queue_bytes",
                format!("must be at least 8 × logs.max_line_bytes ({least})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c.socket, Path::new("/run/lmi-agent/agent.sock"));
        assert_eq!(c.capacity.reserved_memory_mib, 1024);
        assert_eq!(c.environments.delete_grace_seconds, 30);
    }

    #[test]
    fn keys_are_read() {
        let c = Config::parse(
            "socket = '/tmp/a.sock'\nlisten_tcp = '127.0.0.1:50051'\n[capacity]\nvcpus = 64\nmemory_mib = 262144\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.capacity.vcpus, 64);
        assert_eq!(c.listen_tcp, Some("127.0.0.1:50051".parse().unwrap()));
    }

    #[test]
    fn listen_addresses_take_ip_literals_and_host_names() {
        let parse =
            |text: &str| Config::parse(text, Path::new("t.toml")).map_err(|e| e.to_string());
        // IP literals, as before.
        let c = parse("metrics_listen = '127.0.0.1:9464'\nlisten_tcp = '[::1]:50051'\n[invoke_api]\nlisten = '0.0.0.0:9001'").unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.listen_tcp, Some("[::1]:50051".parse().unwrap()));
        assert_eq!(c.invoke_api.listen, Some("0.0.0.0:9001".parse().unwrap()));
        // A host name, through the system resolver (`localhost` is in every /etc/hosts), in each address key.
        for key in ["metrics_listen", "listen_tcp", "invoke_api.listen"] {
            let text = match key.split_once('.') {
                Some((section, k)) => format!("[{section}]\n{k} = 'localhost:9464'"),
                None => format!("{key} = 'localhost:9464'"),
            };
            let c = parse(&text).unwrap();
            let got = match key {
                "metrics_listen" => c.metrics_listen,
                "listen_tcp" => c.listen_tcp,
                _ => c.invoke_api.listen,
            }
            .unwrap();
            assert!(got.ip().is_loopback() && got.port() == 9464, "{key}: {got}");
        }
        // Names that do not resolve, and text that is no address, name the key and say why.
        let e = parse("metrics_listen = 'no-such-host.invalid:9464'").unwrap_err();
        assert!(
            e.contains("metrics_listen")
                && e.contains("cannot resolve host `no-such-host.invalid`"),
            "{e}"
        );
        for bad in ["localhost", "localhost:http", ":9464", "localhost:70000"] {
            let e = parse(&format!("[invoke_api]\nlisten = '{bad}'")).unwrap_err();
            assert!(
                e.contains("invoke_api.listen") && e.contains("HOST:PORT"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_tcp_control_api_functions_or_other_hosts_can_reach_needs_a_token() {
        let check = |text: &str| {
            Config::parse(text, Path::new("t.toml"))
                .and_then(|c| c.check(Path::new("t.toml")))
                .map_err(|e| e.to_string())
        };
        // Loopback with network isolation: only local users reach it (as before).
        check("listen_tcp = '127.0.0.1:50051'").unwrap();
        check("listen_tcp = '[::1]:50051'").unwrap();
        for open in [
            "listen_tcp = '0.0.0.0:50051'",
            "listen_tcp = '[::]:50051'",
            "listen_tcp = '10.0.0.5:50051'",
        ] {
            let e = check(open).unwrap_err();
            assert!(
                e.starts_with("t.toml: listen_tcp:") && e.contains("listen_tcp_token_file"),
                "{open}: {e}"
            );
            check(&format!(
                "{open}\nlisten_tcp_token_file = '/etc/lmi-agent/token'"
            ))
            .unwrap();
        }
        let e = check("listen_tcp = '127.0.0.1:50051'\n[sandbox]\nnetwork_isolation = false")
            .unwrap_err();
        assert!(e.contains("share the host's loopback"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::parse("sockett = 'x'", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `sockett`"), "{e}");
        let e = Config::parse("[capacity]\nvcpus = -1", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vcpus"), "{e}");
        let e = Config::parse("cgroup_parent = '../x'", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cgroup_parent"), "{e}");
        let e = Config::parse("log_format = 'xml'", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("xml"), "{e}");
    }

    #[test]
    fn logs_table_is_read_and_checked() {
        let c = Config::parse(
            "[logs]\nsinks = ['file', 'stdout']\ndir = '/var/log/lmi'\nkeep_files = 2\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.logs.sinks, vec![LogSinkKind::File, LogSinkKind::Stdout]);
        assert_eq!(
            c.logs.file_dir(Path::new("/s")),
            Some(PathBuf::from("/var/log/lmi"))
        );
        let c = Config::parse("[logs]\nsinks = ['stdout']\n", Path::new("t.toml")).unwrap();
        assert_eq!(c.logs.file_dir(Path::new("/s")), None);
        assert_eq!(
            Config::default().logs.file_dir(Path::new("/s")),
            Some(PathBuf::from("/s/logs"))
        );
        for (text, key) in [
            ("[logs]\nsinks = []", "logs.sinks"),
            ("[logs]\nsinks = ['syslog']", "syslog"),
            ("[logs]\ndir = 'rel'", "logs.dir"),
            ("[logs]\nmax_line_bytes = 10", "logs.max_line_bytes"),
            ("[logs]\nmax_file_bytes = 10", "logs.max_file_bytes"),
            ("[logs]\nqueue_records = 1", "logs.queue_records"),
            ("[logs]\nqueue_bytes = 1000", "logs.queue_bytes"),
            ("[logs]\nrotate = 3", "unknown key `logs.rotate`"),
        ] {
            let e = Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn code_and_listener_limits_are_read_and_checked() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert_eq!(c.code.limits(), crate::code::CodeLimits::default());
        assert_eq!(c.listeners.header_timeout_ms, 30_000);
        let c = Config::parse(
            "[code]\nmax_unzipped_bytes = 1000\nmax_zip_entries = 5\n[listeners]\nheader_timeout_ms = 200\nbody_timeout_ms = 300\nmax_connections = 2\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.code.limits().max_unzipped_bytes, 1000);
        assert_eq!(c.code.limits().max_entries, 5);
        assert_eq!(c.listeners.body_timeout_ms, 300);
        assert_eq!(c.listeners.max_connections, 2);
        for (text, key) in [
            ("[code]\nmax_unzipped_bytes = 0", "code.max_unzipped_bytes"),
            ("[code]\nmax_zip_entries = 0", "code.max_zip_entries"),
            (
                "[listeners]\nheader_timeout_ms = 0",
                "listeners.header_timeout_ms",
            ),
            (
                "[listeners]\nbody_timeout_ms = 9",
                "listeners.body_timeout_ms",
            ),
            (
                "[listeners]\nmax_connections = 0",
                "listeners.max_connections",
            ),
        ] {
            let e = Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn sandbox_defaults_and_bad_values_name_the_key() {
        let c = Config::parse("", Path::new("t.toml")).unwrap();
        assert!(c.sandbox.network_isolation);
        assert!(c.sandbox.seccomp);
        assert_eq!(c.sandbox.uid_first, 1_000_000);
        assert_eq!(c.sandbox.network, "10.200.0.0/16");
        for (text, key) in [
            ("[sandbox]\nuid_first = 0", "sandbox.uid_first"),
            ("[sandbox]\nuid_first = 500", "sandbox.uid_first"),
            (
                "[sandbox]\nuid_first = 60000\nuid_count = 10000",
                "sandbox.uid_first",
            ),
            ("[sandbox]\nuid_count = 0", "sandbox.uid_count"),
            (
                "[sandbox]\nuid_first = 2147483000\nuid_count = 1000",
                "sandbox.uid_count",
            ),
            ("[sandbox]\nnetwork = '10.200.0.0'", "sandbox.network"),
            ("[sandbox]\nnetwork = '10.200.0.1/16'", "sandbox.network"),
            ("[sandbox]\nnetwork = '8.8.0.0/16'", "sandbox.network"),
            ("[sandbox]\nnetwork = '10.0.0.0/8'", "sandbox.network"),
            ("[sandbox]\nnetworks = 'x'", "networks"),
            ("[sandbox]\nnetwork_pool = 65", "sandbox.network_pool"),
        ] {
            let e = Config::parse(text, Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = Config::parse(
            "[sandbox]\nnetwork_isolation = false\nnetwork = '192.168.64.0/24'\nuid_first = 70000\nuid_count = 10\nseccomp = false",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(!c.sandbox.network_isolation);
        assert!(!c.sandbox.seccomp);
        assert_eq!(c.sandbox.uid_count, 10);
    }
}
