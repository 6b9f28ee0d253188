//! Validation of an environment spec exactly as Lambda Managed Instances defines it.
//!
//! The rules, limits and the validated [`ValidSpec`]; [`crate::wire::spec::validate`] applies them to a request
//! from the wire, resolving every default or naming the field and the rule it broke ([`SpecError`]).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use crate::catalog::RuntimeEntry;

/// Smallest environment memory (MiB).
pub const MIN_MEMORY_MIB: u32 = 2048;
/// Largest environment memory (MiB).
pub const MAX_MEMORY_MIB: u32 = 32768;
/// Allowed memory-to-vCPU ratios (GiB per vCPU).
pub const RATIOS: [u32; 3] = [2, 4, 8];
/// Default memory-to-vCPU ratio.
pub const DEFAULT_RATIO: u32 = 2;
/// Range of `PerExecutionEnvironmentMaxConcurrency`.
pub const MAX_CONCURRENCY: u32 = 1600;
/// Default function timeout (seconds), as Lambda's.
pub const DEFAULT_TIMEOUT_S: u32 = 3;
/// Largest function timeout (seconds).
pub const MAX_TIMEOUT_S: u32 = 900;
/// Range of ephemeral storage (MiB).
pub const MIN_EPHEMERAL_MIB: u32 = 512;
/// Largest ephemeral storage (MiB).
pub const MAX_EPHEMERAL_MIB: u32 = 10240;
/// Lambda's limit on the total size of customer environment variables (bytes of keys and values).
pub const MAX_ENV_BYTES: usize = 4096;
/// The default function version.
pub const LATEST: &str = "$LATEST";

/// Names the agent sets for the runtime; a spec may not set them.
pub const RESERVED_ENV: &[&str] = &[
    "_HANDLER",
    "_LAMBDA_TELEMETRY_LOG_FD_PROVIDER_SOCKET",
    "_X_AMZN_TRACE_ID",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_FORMAT",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_MAX_CONCURRENCY",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_REGION",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
];

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field breaks a rule (gRPC `INVALID_ARGUMENT`).
    #[error("spec.{field}: {rule}")]
    Invalid { field: String, rule: String },
    /// The runtime exists in the catalog but cannot run on this host (gRPC `FAILED_PRECONDITION`).
    #[error("spec.runtime: runtime {runtime} is not available on this host: {reason}")]
    RuntimeUnavailable { runtime: String, reason: String },
}

pub(crate) fn invalid(field: impl Into<String>, rule: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

/// Where the function's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeSource {
    Directory(PathBuf),
    Zip {
        path: PathBuf,
        sha256: Option<String>,
    },
}

/// A spec with every rule checked and every default resolved. Its `Debug` shows the names of the
/// environment variables, never their values (they may be secrets).
#[derive(Clone)]
pub struct ValidSpec {
    pub function_name: String,
    pub version: String,
    pub arn: String,
    pub runtime: RuntimeEntry,
    pub handler: String,
    pub code: CodeSource,
    pub memory_mib: u32,
    pub memory_gib_per_vcpu: u32,
    pub vcpus: u32,
    pub max_concurrency: u32,
    pub timeout: Duration,
    pub ephemeral_storage_mib: u32,
    pub environment: BTreeMap<String, String>,
}

impl std::fmt::Debug for ValidSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidSpec")
            .field("function_name", &self.function_name)
            .field("version", &self.version)
            .field("arn", &self.arn)
            .field("runtime", &self.runtime)
            .field("handler", &self.handler)
            .field("code", &self.code)
            .field("memory_mib", &self.memory_mib)
            .field("memory_gib_per_vcpu", &self.memory_gib_per_vcpu)
            .field("vcpus", &self.vcpus)
            .field("max_concurrency", &self.max_concurrency)
            .field("timeout", &self.timeout)
            .field("ephemeral_storage_mib", &self.ephemeral_storage_mib)
            .field("environment", &RedactedVariables(&self.environment))
            .finish()
    }
}

/// What the control API and the state records show in place of an environment variable's value: the values
/// are secrets that only the runtime receives (docs/ARCHITECTURE.md, "Sandbox", secrets).
pub const REDACTED_VALUE: &str = "<redacted>";

/// Shows environment variables as their names with `"<redacted>"` values.
pub struct RedactedVariables<'a>(pub &'a BTreeMap<String, String>);

impl std::fmt::Debug for RedactedVariables<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, REDACTED_VALUE)))
            .finish()
    }
}

impl ValidSpec {
    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) * 1024 * 1024
    }

    /// Init timeout: max(130 s, function timeout), as Lambda's.
    pub fn init_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_secs(130))
    }
}

/// Values used to fill in defaults that depend on where the agent runs.
#[derive(Debug, Clone)]
pub struct SpecDefaults {
    pub region: String,
    pub account_id: String,
}

/// Whether `s` is a Lambda function name: 1-64 letters, digits, `-` and `_`.
pub fn valid_function_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `s` is a function version: `$LATEST` or 1-128 letters, digits, `-` and `_`.
pub fn valid_version(s: &str) -> bool {
    s == LATEST
        || ((1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// Whether `s` is a Lambda function ARN: `arn:aws[a-zA-Z-]*:lambda:<region>:<12 digits>:function:<name>`
/// with an optional `:<qualifier>`, at most 256 characters. Every part is visible ASCII, so the ARN can travel
/// in the runtime's `Lambda-Runtime-Invoked-Function-Arn` header as it is.
pub fn valid_function_arn(s: &str) -> bool {
    if s.len() > 256 {
        return false;
    }
    let parts: Vec<&str> = s.split(':').collect();
    let (head, qualifier) = match parts.as_slice() {
        [a, b, c, d, e, f, g] => ([*a, *b, *c, *d, *e, *f, *g], None),
        [a, b, c, d, e, f, g, q] => ([*a, *b, *c, *d, *e, *f, *g], Some(*q)),
        _ => return false,
    };
    let [arn, partition, service, region, account, resource, name] = head;
    arn == "arn"
        && partition
            .strip_prefix("aws")
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-'))
        && service == "lambda"
        && (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource == "function"
        && valid_function_name(name)
        && qualifier.is_none_or(valid_version)
}

pub(crate) fn valid_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
