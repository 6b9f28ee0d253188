//! The environment spec on the wire. A request is validated into a [`ValidSpec`] before anything reaches the
//! core: every default resolved, or a [`SpecError`] naming the field and the rule it broke; nothing is started
//! for an invalid spec. A `ValidSpec` is shown back with its variables' values redacted. The rules and limits
//! are [`crate::spec`]'s.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use lmi_proto::v1 as pb;

use crate::{
    agent::{Agent, CreateRequest},
    catalog::{Availability, Catalog},
    spec::*,
    text::{quote, shown},
};

/// The spec as the wire shows it back, with defaults filled in and the environment variables' values
/// replaced by [`REDACTED_VALUE`] (their names stay).
pub fn to_proto(spec: &ValidSpec) -> pb::EnvironmentSpec {
    pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: spec.function_name.clone(),
            version: spec.version.clone(),
            arn: spec.arn.clone(),
        }),
        runtime: spec.runtime.id.clone(),
        handler: spec.handler.clone(),
        code: Some(match &spec.code {
            CodeSource::Directory(d) => pb::Code {
                source: Some(pb::code::Source::Directory(d.display().to_string())),
                sha256: String::new(),
            },
            CodeSource::Zip { path, sha256 } => pb::Code {
                source: Some(pb::code::Source::ZipFile(path.display().to_string())),
                sha256: sha256.clone().unwrap_or_default(),
            },
        }),
        memory_mib: spec.memory_mib,
        memory_gib_per_vcpu: spec.memory_gib_per_vcpu,
        max_concurrency: spec.max_concurrency,
        timeout_seconds: u32::try_from(spec.timeout.as_secs()).unwrap_or(u32::MAX),
        ephemeral_storage_mib: spec.ephemeral_storage_mib,
        environment: spec
            .environment
            .keys()
            .map(|k| (k.clone(), REDACTED_VALUE.to_owned()))
            .collect(),
    }
}

/// The environment `spec` asks for, validated against `agent`'s catalog and defaults, ready for
/// [`Agent::create`]; the time validation took counts as the first phase of its start-up.
pub fn create_request(
    spec: &pb::EnvironmentSpec,
    agent: &Agent,
) -> Result<CreateRequest, SpecError> {
    let started = std::time::Instant::now();
    let spec = validate(spec, agent.catalog(), agent.spec_defaults())?;
    Ok(CreateRequest {
        spec,
        validated_in: started.elapsed(),
    })
}

/// Checks every field of `spec` and resolves its defaults.
pub fn validate(
    spec: &pb::EnvironmentSpec,
    catalog: &Catalog,
    defaults: &SpecDefaults,
) -> Result<ValidSpec, SpecError> {
    let function = spec
        .function
        .as_ref()
        .ok_or_else(|| invalid("function", "is required"))?;
    if !valid_function_name(&function.name) {
        return Err(invalid(
            "function.name",
            format!(
                "{} must be 1-64 characters of letters, digits, '-' and '_'",
                quote(&function.name)
            ),
        ));
    }
    let version = if function.version.is_empty() {
        LATEST.to_owned()
    } else if valid_version(&function.version) {
        function.version.clone()
    } else {
        return Err(invalid(
            "function.version",
            format!(
                "{} must be $LATEST or 1-128 letters, digits, '-' and '_'",
                quote(&function.version)
            ),
        ));
    };
    let arn = if function.arn.is_empty() {
        format!(
            "arn:aws:lambda:{}:{}:function:{}:{}",
            defaults.region, defaults.account_id, function.name, version
        )
    } else if valid_function_arn(&function.arn) {
        function.arn.clone()
    } else {
        return Err(invalid(
            "function.arn",
            format!(
                "{} must be a function ARN of at most 256 characters: \
                 arn:aws:lambda:<region>:<12-digit account>:function:<name>[:<qualifier>]",
                quote(&function.arn)
            ),
        ));
    };

    let (runtime, availability) = catalog.get(&spec.runtime).ok_or_else(|| {
        invalid(
            "runtime",
            format!(
                "unknown runtime {}; known: {}",
                quote(&spec.runtime),
                catalog.ids().join(", ")
            ),
        )
    })?;
    if let Availability::Unavailable(reason) = availability {
        return Err(SpecError::RuntimeUnavailable {
            runtime: runtime.id.clone(),
            reason: reason.clone(),
        });
    }

    let handler = spec.handler.clone();
    if !runtime.is_provided() && handler.is_empty() {
        return Err(invalid(
            "handler",
            format!("is required for runtime {}", runtime.id),
        ));
    }
    if handler.len() > 128 || handler.chars().any(char::is_control) {
        return Err(invalid(
            "handler",
            "must be at most 128 characters without control characters",
        ));
    }

    let code = validate_code(spec.code.as_ref())?;

    let ratio = match spec.memory_gib_per_vcpu {
        0 => DEFAULT_RATIO,
        r if RATIOS.contains(&r) => r,
        r => {
            return Err(invalid(
                "memory_gib_per_vcpu",
                format!("{r} must be one of 2, 4 or 8 GiB per vCPU"),
            ))
        }
    };
    let memory_mib = match spec.memory_mib {
        0 => MIN_MEMORY_MIB.max(ratio * 1024),
        m => m,
    };
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
        return Err(invalid(
            "memory_mib",
            format!("{memory_mib} must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB"),
        ));
    }
    let step = ratio * 1024;
    if memory_mib % step != 0 {
        return Err(invalid(
            "memory_mib",
            format!(
                "{memory_mib} must be a multiple of {step} MiB (the ratio of {ratio} GiB per vCPU)"
            ),
        ));
    }
    let vcpus = memory_mib / step;

    let max_concurrency = match spec.max_concurrency {
        0 => runtime
            .default_concurrency_per_vcpu
            .saturating_mul(vcpus)
            .min(MAX_CONCURRENCY),
        c if c <= MAX_CONCURRENCY => c,
        c => {
            return Err(invalid(
                "max_concurrency",
                format!("{c} must be between 1 and {MAX_CONCURRENCY}"),
            ))
        }
    };

    let timeout_s = match spec.timeout_seconds {
        0 => DEFAULT_TIMEOUT_S,
        t if t <= MAX_TIMEOUT_S => t,
        t => {
            return Err(invalid(
                "timeout_seconds",
                format!("{t} must be between 1 and {MAX_TIMEOUT_S} seconds"),
            ))
        }
    };

    let ephemeral_storage_mib = match spec.ephemeral_storage_mib {
        0 => MIN_EPHEMERAL_MIB,
        e if (MIN_EPHEMERAL_MIB..=MAX_EPHEMERAL_MIB).contains(&e) => e,
        e => {
            return Err(invalid(
                "ephemeral_storage_mib",
                format!("{e} must be between {MIN_EPHEMERAL_MIB} and {MAX_EPHEMERAL_MIB} MiB"),
            ))
        }
    };

    let environment = validate_environment(&spec.environment)?;

    Ok(ValidSpec {
        function_name: function.name.clone(),
        version,
        arn,
        runtime: runtime.clone(),
        handler,
        code,
        memory_mib,
        memory_gib_per_vcpu: ratio,
        vcpus,
        max_concurrency,
        timeout: Duration::from_secs(u64::from(timeout_s)),
        ephemeral_storage_mib,
        environment,
    })
}

fn validate_code(code: Option<&pb::Code>) -> Result<CodeSource, SpecError> {
    let code = code.ok_or_else(|| invalid("code", "is required (a directory or a .zip file)"))?;
    let sha256 = if code.sha256.is_empty() {
        None
    } else if code.sha256.len() == 64 && code.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(code.sha256.to_ascii_lowercase())
    } else {
        return Err(invalid("code.sha256", "must be 64 hexadecimal characters"));
    };
    let absolute = |field: &str, p: &str| -> Result<PathBuf, SpecError> {
        let path = PathBuf::from(p);
        if p.is_empty() || !path.is_absolute() {
            return Err(invalid(
                field,
                format!("{} must be an absolute path", quote(p)),
            ));
        }
        Ok(path)
    };
    match &code.source {
        None => Err(invalid("code", "needs a directory or a zip_file")),
        Some(pb::code::Source::Directory(d)) => {
            if sha256.is_some() {
                return Err(invalid(
                    "code.sha256",
                    "applies to zip_file only, not to a directory",
                ));
            }
            let path = absolute("code.directory", d)?;
            if !path.is_dir() {
                return Err(invalid(
                    "code.directory",
                    format!("{} is not a directory", shown(d)),
                ));
            }
            Ok(CodeSource::Directory(path))
        }
        Some(pb::code::Source::ZipFile(z)) => {
            let path = absolute("code.zip_file", z)?;
            if !path.is_file() {
                return Err(invalid(
                    "code.zip_file",
                    format!("{} is not a file", shown(z)),
                ));
            }
            Ok(CodeSource::Zip { path, sha256 })
        }
    }
}

fn validate_environment(
    env: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, SpecError> {
    let mut total = 0usize;
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let field = format!("environment[{}]", shown(k));
        if RESERVED_ENV.contains(&k.as_str()) {
            return Err(invalid(field, "is a reserved Lambda variable name"));
        }
        if !valid_env_name(k) {
            return Err(invalid(
                field,
                "names must start with a letter and hold only letters, digits and '_'",
            ));
        }
        if v.contains('\0') {
            return Err(invalid(field, "values may not contain NUL"));
        }
        total += k.len() + v.len();
        out.insert(k.clone(), v.clone());
    }
    if total > MAX_ENV_BYTES {
        return Err(invalid(
            "environment",
            format!("{total} bytes exceeds the {MAX_ENV_BYTES}-byte limit on variables"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(
            r#"
[[runtime]]
id = "python3.11"
command = ["sh"]
default_concurrency_per_vcpu = 16
execution_env = "AWS_Lambda_python3.11"
[[runtime]]
id = "provided.al2023"
command = ["{code}/bootstrap"]
default_concurrency_per_vcpu = 16
[[runtime]]
id = "ghost1"
command = ["no-such-interpreter-xyz"]
default_concurrency_per_vcpu = 8
"#,
            "test",
        )
        .unwrap()
    }

    fn defaults() -> SpecDefaults {
        SpecDefaults {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
        }
    }

    fn base() -> pb::EnvironmentSpec {
        pb::EnvironmentSpec {
            function: Some(pb::FunctionRef {
                name: "hello".into(),
                version: String::new(),
                arn: String::new(),
            }),
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            code: Some(pb::Code {
                source: Some(pb::code::Source::Directory("/tmp".into())),
                sha256: String::new(),
            }),
            ..Default::default()
        }
    }

    fn err(spec: &pb::EnvironmentSpec) -> String {
        validate(spec, &catalog(), &defaults())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_wire_view_names_variables_without_their_values() {
        let mut spec = base();
        spec.environment
            .insert("DB_PASSWORD".into(), "hunter2".into());
        spec.environment.insert("EMPTY".into(), String::new());
        let v = validate(&spec, &catalog(), &defaults()).unwrap();
        // The runtime gets the values; the wire view (and the state records) only the names.
        assert_eq!(v.environment["DB_PASSWORD"], "hunter2");
        let shown = to_proto(&v).environment;
        assert_eq!(shown.len(), 2);
        assert_eq!(shown["DB_PASSWORD"], REDACTED_VALUE);
        assert_eq!(shown["EMPTY"], REDACTED_VALUE);
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn defaults_are_resolved() {
        let v = validate(&base(), &catalog(), &defaults()).unwrap();
        assert_eq!(v.memory_mib, 2048);
        assert_eq!(v.memory_gib_per_vcpu, 2);
        assert_eq!(v.vcpus, 1);
        assert_eq!(v.max_concurrency, 16);
        assert_eq!(v.timeout, Duration::from_secs(3));
        assert_eq!(v.init_timeout(), Duration::from_secs(130));
        assert_eq!(v.ephemeral_storage_mib, 512);
        assert_eq!(v.version, "$LATEST");
        assert_eq!(
            v.arn,
            "arn:aws:lambda:us-east-1:123456789012:function:hello:$LATEST"
        );
    }

    #[test]
    fn vcpus_follow_memory_and_ratio() {
        for (mem, ratio, vcpus) in [
            (2048, 2, 1),
            (32768, 2, 16),
            (4096, 4, 1),
            (32768, 4, 8),
            (8192, 8, 1),
            (32768, 8, 4),
        ] {
            let mut s = base();
            s.memory_mib = mem;
            s.memory_gib_per_vcpu = ratio;
            let v = validate(&s, &catalog(), &defaults()).unwrap();
            assert_eq!(v.vcpus, vcpus, "{mem} MiB at {ratio}:1");
            assert_eq!(v.max_concurrency, (16 * vcpus).min(1600));
        }
        // ratio 8 with memory unset resolves to the smallest valid size for that ratio
        let mut s = base();
        s.memory_gib_per_vcpu = 8;
        assert_eq!(
            validate(&s, &catalog(), &defaults()).unwrap().memory_mib,
            8192
        );
    }

    #[test]
    fn every_invalid_field_is_named_with_its_rule() {
        type Mutation = Box<dyn Fn(&mut pb::EnvironmentSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.function = None), "spec.function: is required"),
            (Box::new(|s| s.function.as_mut().unwrap().name = "bad name".into()), "spec.function.name: \"bad name\" must be 1-64 characters"),
            (Box::new(|s| s.function.as_mut().unwrap().name = "x".repeat(65)), "spec.function.name:"),
            (Box::new(|s| s.function.as_mut().unwrap().version = "v 1".into()), "spec.function.version: \"v 1\" must be $LATEST"),
            (Box::new(|s| s.function.as_mut().unwrap().arn = "nope".into()), "spec.function.arn: \"nope\" must be a function ARN"),
            (Box::new(|s| s.runtime = "cobol85".into()), "spec.runtime: unknown runtime \"cobol85\"; known: ghost1, provided.al2023, python3.11"),
            (Box::new(|s| s.handler = String::new()), "spec.handler: is required for runtime python3.11"),
            (Box::new(|s| s.handler = "a\nb".into()), "spec.handler: must be at most 128 characters"),
            (Box::new(|s| s.code = None), "spec.code: is required"),
            (Box::new(|s| s.code.as_mut().unwrap().source = None), "spec.code: needs a directory or a zip_file"),
            (Box::new(|s| s.code.as_mut().unwrap().source = Some(pb::code::Source::Directory("rel/dir".into()))), "spec.code.directory: \"rel/dir\" must be an absolute path"),
            (Box::new(|s| s.code.as_mut().unwrap().source = Some(pb::code::Source::Directory("/no/such/dir".into()))), "spec.code.directory: /no/such/dir is not a directory"),
            (Box::new(|s| s.code.as_mut().unwrap().source = Some(pb::code::Source::ZipFile("/no/such.zip".into()))), "spec.code.zip_file: /no/such.zip is not a file"),
            (Box::new(|s| s.code.as_mut().unwrap().sha256 = "xyz".into()), "spec.code.sha256: must be 64 hexadecimal characters"),
            (Box::new(|s| s.code.as_mut().unwrap().sha256 = "a".repeat(64)), "spec.code.sha256: applies to zip_file only"),
            (Box::new(|s| s.memory_gib_per_vcpu = 3), "spec.memory_gib_per_vcpu: 3 must be one of 2, 4 or 8 GiB per vCPU"),
            (Box::new(|s| s.memory_mib = 1024), "spec.memory_mib: 1024 must be between 2048 and 32768 MiB"),
            (Box::new(|s| s.memory_mib = 34816), "spec.memory_mib: 34816 must be between 2048 and 32768 MiB"),
            (Box::new(|s| s.memory_mib = 3072), "spec.memory_mib: 3072 must be a multiple of 2048 MiB (the ratio of 2 GiB per vCPU)"),
            (Box::new(|s| { s.memory_mib = 6144; s.memory_gib_per_vcpu = 4 }), "spec.memory_mib: 6144 must be a multiple of 4096 MiB (the ratio of 4 GiB per vCPU)"),
            (Box::new(|s| { s.memory_mib = 4096; s.memory_gib_per_vcpu = 8 }), "spec.memory_mib: 4096 must be a multiple of 8192 MiB"),
            (Box::new(|s| s.max_concurrency = 1601), "spec.max_concurrency: 1601 must be between 1 and 1600"),
            (Box::new(|s| s.timeout_seconds = 901), "spec.timeout_seconds: 901 must be between 1 and 900 seconds"),
            (Box::new(|s| s.ephemeral_storage_mib = 511), "spec.ephemeral_storage_mib: 511 must be between 512 and 10240 MiB"),
            (Box::new(|s| s.ephemeral_storage_mib = 10241), "spec.ephemeral_storage_mib: 10241 must be between 512 and 10240 MiB"),
            (Box::new(|s| { s.environment.insert("AWS_REGION".into(), "x".into()); }), "spec.environment[AWS_REGION]: is a reserved Lambda variable name"),
            (Box::new(|s| { s.environment.insert("AWS_LAMBDA_MAX_CONCURRENCY".into(), "9".into()); }), "spec.environment[AWS_LAMBDA_MAX_CONCURRENCY]: is a reserved"),
            (Box::new(|s| { s.environment.insert("_PRIVATE".into(), "x".into()); }), "spec.environment[_PRIVATE]: names must start with a letter"),
            (Box::new(|s| { s.environment.insert("A-B".into(), "x".into()); }), "spec.environment[A-B]: names must start with a letter"),
            (Box::new(|s| { s.environment.insert("BIG".into(), "x".repeat(5000)); }), "spec.environment: 5003 bytes exceeds the 4096-byte limit"),
        ];
        for (i, (mutate, expected)) in cases.iter().enumerate() {
            let mut s = base();
            mutate(&mut s);
            let e = err(&s);
            assert!(
                e.starts_with(expected),
                "case {i}: got {e:?}, want prefix {expected:?}"
            );
        }
    }

    #[test]
    fn function_arns_are_checked_part_by_part() {
        for ok in [
            "arn:aws:lambda:us-east-1:123456789012:function:hello",
            "arn:aws:lambda:us-east-1:123456789012:function:hello:$LATEST",
            "arn:aws-us-gov:lambda:us-gov-west-1:123456789012:function:a_b-c:7",
            "arn:aws-cn:lambda:cn-north-1:123456789012:function:f:prod",
        ] {
            assert!(valid_function_arn(ok), "{ok}");
        }
        let long_name = format!(
            "arn:aws:lambda:us-east-1:123456789012:function:{}",
            "f".repeat(65)
        );
        for bad in [
            "arn:aws:lambda:us-east-1:123456789012:function:hello\r\nX-Injected: 1",
            "arn:aws:lambda:us-east-1:123456789012:function:hello:1\n",
            "arn:aws:lambda:us-east-1:12345678901:function:hello",
            "arn:aws:lambda:us-east-1:1234567890ab:function:hello",
            "arn:aws:s3:us-east-1:123456789012:function:hello",
            "arn:gcp:lambda:us-east-1:123456789012:function:hello",
            "arn:aws:lambda:US-EAST-1:123456789012:function:hello",
            "arn:aws:lambda:us-east-1:123456789012:layer:hello",
            "arn:aws:lambda:us-east-1:123456789012:function:",
            "arn:aws:lambda:us-east-1:123456789012:function:hello:",
            "arn:aws:lambda:us-east-1:123456789012:function:hello:1:2",
            "arn:aws:lambda:us-east-1:123456789012:function:héllo",
            long_name.as_str(),
        ] {
            assert!(!valid_function_arn(bad), "{bad:?}");
        }
        let mut s = base();
        s.function.as_mut().unwrap().arn =
            "arn:aws:lambda:us-east-1:123456789012:function:hello\r\n".into();
        let e = err(&s);
        assert!(e.starts_with("spec.function.arn: \"arn:aws:lambda:us-east-1:123456789012:function:hello\\r\\n\" must be"), "{e}");
    }

    #[test]
    fn a_huge_value_is_quoted_by_a_bounded_prefix() {
        let huge = "n".repeat(10_000);
        type Mutation<'a> = Box<dyn Fn(&mut pb::EnvironmentSpec) + 'a>;
        let cases: Vec<Mutation<'_>> = vec![
            Box::new(|s| s.function.as_mut().unwrap().name = huge.clone()),
            Box::new(|s| s.function.as_mut().unwrap().version = huge.clone()),
            Box::new(|s| s.function.as_mut().unwrap().arn = huge.clone()),
            Box::new(|s| s.runtime = huge.clone()),
            Box::new(|s| {
                s.code.as_mut().unwrap().source = Some(pb::code::Source::Directory(huge.clone()))
            }),
            Box::new(|s| {
                s.code.as_mut().unwrap().source =
                    Some(pb::code::Source::Directory(format!("/{huge}")))
            }),
            Box::new(|s| {
                s.code.as_mut().unwrap().source =
                    Some(pb::code::Source::ZipFile(format!("/{huge}")))
            }),
            Box::new(|s| {
                s.environment.insert(format!("{huge}-"), "x".into());
            }),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut s = base();
            mutate(&mut s);
            let e = err(&s);
            assert!(e.len() < 400, "case {i}: {} bytes: {e}", e.len());
            assert!(e.contains("bytes)"), "case {i}: {e}");
        }
    }

    #[test]
    fn boundaries_are_accepted() {
        let mut s = base();
        s.max_concurrency = 1600;
        s.timeout_seconds = 900;
        s.ephemeral_storage_mib = 10240;
        s.memory_mib = 32768;
        let v = validate(&s, &catalog(), &defaults()).unwrap();
        assert_eq!(
            (
                v.max_concurrency,
                v.timeout.as_secs(),
                v.init_timeout().as_secs()
            ),
            (1600, 900, 900)
        );
        s.max_concurrency = 1;
        s.timeout_seconds = 1;
        s.ephemeral_storage_mib = 512;
        assert!(validate(&s, &catalog(), &defaults()).is_ok());
    }

    #[test]
    fn unavailable_runtime_is_a_precondition_failure() {
        let mut s = base();
        s.runtime = "ghost1".into();
        match validate(&s, &catalog(), &defaults()) {
            Err(SpecError::RuntimeUnavailable { runtime, reason }) => {
                assert_eq!(runtime, "ghost1");
                assert!(reason.contains("not found in PATH"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn provided_runtime_needs_no_handler() {
        let mut s = base();
        s.runtime = "provided.al2023".into();
        s.handler = String::new();
        assert!(validate(&s, &catalog(), &defaults()).is_ok());
    }

    #[test]
    fn default_concurrency_is_capped_at_1600() {
        let c = Catalog::parse(
            "[[runtime]]\nid='node'\ncommand=['sh']\ndefault_concurrency_per_vcpu=64\n",
            "t",
        )
        .unwrap();
        let mut s = base();
        s.runtime = "node".into();
        s.memory_mib = 32768;
        let v = validate(&s, &c, &defaults()).unwrap();
        assert_eq!(v.vcpus, 16);
        assert_eq!(v.max_concurrency, 1024);
    }
}
