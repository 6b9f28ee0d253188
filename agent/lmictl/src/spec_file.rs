//! The EnvironmentSpec of `create`: a spec file (TOML or JSON, the proto's field names) with flags on top.
//!
//! The file is read into a generic JSON value and walked field by field, so every error names the field
//! (`field `memory_mib`: expected …`), for TOML and JSON alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use lmi_proto::v1::{code, Code, EnvironmentSpec, FunctionRef};
use serde_json::Value;

use crate::cli::CreateArgs;

const SPEC_FIELDS: &str = "function, runtime, handler, code, memory_mib, memory_gib_per_vcpu, \
                           max_concurrency, timeout_seconds, ephemeral_storage_mib, environment";

/// The format of a spec file, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

impl Format {
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("toml") => Ok(Self::Toml),
            Some("json") => Ok(Self::Json),
            _ => bail!(
                "spec file {}: unknown format: the name must end in .toml or .json",
                path.display()
            ),
        }
    }
}

/// Reads a spec file. Relative code paths in it are resolved against the file's directory.
pub fn load(path: &Path) -> anyhow::Result<EnvironmentSpec> {
    let format = Format::from_path(path)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read spec file {}", path.display()))?;
    let dir = path.parent().unwrap_or_else(|| Path::new(""));
    let base = std::path::absolute(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .with_context(|| format!("cannot resolve the directory of {}", path.display()))?;
    parse(&text, format, &base).map_err(|e| anyhow!("spec file {}: {e}", path.display()))
}

/// Parses spec text; `base` is the directory relative code paths are resolved against.
pub fn parse(text: &str, format: Format, base: &Path) -> Result<EnvironmentSpec, String> {
    let value: Value = match format {
        Format::Toml => {
            let table: toml::Table =
                toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?;
            serde_json::to_value(table).map_err(|e| format!("invalid TOML: {e}"))?
        }
        Format::Json => serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?,
    };
    spec_from_value(&value, base)
}

fn spec_from_value(value: &Value, base: &Path) -> Result<EnvironmentSpec, String> {
    let obj = value.as_object().ok_or_else(|| {
        format!(
            "expected a table/object of spec fields, got {}",
            kind(value)
        )
    })?;
    let mut spec = EnvironmentSpec::default();
    for (key, val) in obj {
        match key.as_str() {
            "function" => spec.function = Some(function_ref(val)?),
            "runtime" => spec.runtime = string(key, val)?,
            "handler" => spec.handler = string(key, val)?,
            "code" => spec.code = Some(code_from_value(val, base)?),
            "memory_mib" => spec.memory_mib = uint(key, val)?,
            "memory_gib_per_vcpu" => spec.memory_gib_per_vcpu = uint(key, val)?,
            "max_concurrency" => spec.max_concurrency = uint(key, val)?,
            "timeout_seconds" => spec.timeout_seconds = uint(key, val)?,
            "ephemeral_storage_mib" => spec.ephemeral_storage_mib = uint(key, val)?,
            "environment" => spec.environment = env_map(val)?,
            other => {
                return Err(format!(
                    "unknown field `{other}` (expected one of: {SPEC_FIELDS})"
                ))
            }
        }
    }
    Ok(spec)
}

fn function_ref(val: &Value) -> Result<FunctionRef, String> {
    match val {
        // `function = "name"` is shorthand for `[function] name = "name"`.
        Value::String(name) => Ok(FunctionRef {
            name: name.clone(),
            ..FunctionRef::default()
        }),
        Value::Object(obj) => {
            let mut f = FunctionRef::default();
            for (key, v) in obj {
                let path = format!("function.{key}");
                match key.as_str() {
                    "name" => f.name = string(&path, v)?,
                    "version" => f.version = string(&path, v)?,
                    "arn" => f.arn = string(&path, v)?,
                    _ => {
                        return Err(format!(
                            "unknown field `{path}` (expected one of: name, version, arn)"
                        ))
                    }
                }
            }
            Ok(f)
        }
        other => Err(format!(
            "field `function`: expected a table with name, version, arn, got {}",
            kind(other)
        )),
    }
}

fn code_from_value(val: &Value, base: &Path) -> Result<Code, String> {
    match val {
        // `code = "path"`: a directory, or a zip file when it ends in .zip.
        Value::String(p) => Ok(Code {
            source: Some(code_source(p, base).map_err(|e| format!("field `code`: {e}"))?),
            sha256: String::new(),
        }),
        Value::Object(obj) => {
            let mut c = Code::default();
            for (key, v) in obj {
                let path = format!("code.{key}");
                match key.as_str() {
                    "directory" | "zip_file" => {
                        if c.source.is_some() {
                            return Err(
                                "field `code`: set only one of `code.directory` and `code.zip_file`"
                                    .to_string(),
                            );
                        }
                        let p = string(&path, v)?;
                        let abs =
                            absolutize(&p, base).map_err(|e| format!("field `{path}`: {e}"))?;
                        c.source = Some(if key == "directory" {
                            code::Source::Directory(abs)
                        } else {
                            code::Source::ZipFile(abs)
                        });
                    }
                    "sha256" => c.sha256 = string(&path, v)?,
                    _ => {
                        return Err(format!(
                            "unknown field `{path}` (expected one of: directory, zip_file, sha256)"
                        ))
                    }
                }
            }
            Ok(c)
        }
        other => Err(format!(
            "field `code`: expected a path or a table with directory or zip_file, got {}",
            kind(other)
        )),
    }
}

fn env_map(val: &Value) -> Result<HashMap<String, String>, String> {
    let obj = val.as_object().ok_or_else(|| {
        format!(
            "field `environment`: expected a table of KEY = \"value\", got {}",
            kind(val)
        )
    })?;
    let mut env = HashMap::with_capacity(obj.len());
    for (key, v) in obj {
        // Numbers and booleans are accepted and passed as their text (`PORT = 8080`).
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(format!(
                    "field `environment.{key}`: expected a string, got {}",
                    kind(other)
                ))
            }
        };
        env.insert(key.clone(), s);
    }
    Ok(env)
}

fn string(field: &str, val: &Value) -> Result<String, String> {
    val.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("field `{field}`: expected a string, got {}", kind(val)))
}

fn uint(field: &str, val: &Value) -> Result<u32, String> {
    val.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            format!(
                "field `{field}`: expected an integer from 0 to {}, got {}",
                u32::MAX,
                describe(val)
            )
        })
}

fn kind(val: &Value) -> &'static str {
    match val {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table/object",
    }
}

fn describe(val: &Value) -> String {
    match val {
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        other => kind(other).to_string(),
    }
}

/// `p` made absolute against `base` (lexically; the path need not exist here).
pub fn absolutize(p: &str, base: &Path) -> Result<String, String> {
    if p.is_empty() {
        return Err("the path is empty".to_string());
    }
    let joined: PathBuf = base.join(p);
    let abs = std::path::absolute(&joined).map_err(|e| format!("{p}: {e}"))?;
    abs.into_os_string()
        .into_string()
        .map_err(|_| format!("{p}: the path is not valid UTF-8"))
}

/// A code path: a zip file when it ends in `.zip` (any case), else a directory; made absolute against `base`.
pub fn code_source(p: &str, base: &Path) -> Result<code::Source, String> {
    let abs = absolutize(p, base)?;
    if p.to_ascii_lowercase().ends_with(".zip") {
        Ok(code::Source::ZipFile(abs))
    } else {
        Ok(code::Source::Directory(abs))
    }
}

/// `--env KEY=VALUE` (split at the first `=`; the value may be empty or contain `=`).
pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("`{s}`: the KEY before `=` is empty"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Builds the spec of `create`: the `--spec` file if any, then every given flag on top. `cwd` resolves a
/// relative `--code`.
pub fn build(args: &CreateArgs, cwd: &Path) -> anyhow::Result<EnvironmentSpec> {
    let mut spec = match &args.spec {
        Some(path) => load(path)?,
        None => EnvironmentSpec::default(),
    };
    apply_flags(&mut spec, args, cwd)?;
    check_required(&spec)?;
    Ok(spec)
}

/// Flags override the file, field by field; `--env` keys override the file's keys.
pub fn apply_flags(
    spec: &mut EnvironmentSpec,
    args: &CreateArgs,
    cwd: &Path,
) -> anyhow::Result<()> {
    if args.function.is_some() || args.version.is_some() || args.arn.is_some() {
        let f = spec.function.get_or_insert_with(FunctionRef::default);
        if let Some(v) = &args.function {
            f.name.clone_from(v);
        }
        if let Some(v) = &args.version {
            f.version.clone_from(v);
        }
        if let Some(v) = &args.arn {
            f.arn.clone_from(v);
        }
    }
    if let Some(v) = &args.runtime {
        spec.runtime.clone_from(v);
    }
    if let Some(v) = &args.handler {
        spec.handler.clone_from(v);
    }
    if let Some(p) = &args.code {
        // Another artefact: the file's sha256 (if any) no longer applies.
        let source = code_source(p, cwd).map_err(|e| anyhow!("--code: {e}"))?;
        spec.code = Some(Code {
            source: Some(source),
            sha256: String::new(),
        });
    }
    if let Some(sha) = &args.sha256 {
        match spec.code.as_mut() {
            Some(c) => c.sha256.clone_from(sha),
            None => bail!("--sha256 needs --code (or [code] in the spec file)"),
        }
    }
    if let Some(v) = args.memory {
        spec.memory_mib = v;
    }
    if let Some(v) = args.ratio {
        spec.memory_gib_per_vcpu = v;
    }
    if let Some(v) = args.max_concurrency {
        spec.max_concurrency = v;
    }
    if let Some(v) = args.timeout_seconds {
        spec.timeout_seconds = v;
    }
    if let Some(v) = args.ephemeral_storage {
        spec.ephemeral_storage_mib = v;
    }
    for (k, v) in &args.env {
        spec.environment.insert(k.clone(), v.clone());
    }
    Ok(())
}

/// What no create can do without (the agent validates everything else and names the field).
fn check_required(spec: &EnvironmentSpec) -> anyhow::Result<()> {
    if spec.function.as_ref().is_none_or(|f| f.name.is_empty()) {
        bail!("missing the function name: pass --function NAME (or `name` under [function] in --spec)");
    }
    if spec.runtime.is_empty() {
        bail!("missing the runtime: pass --runtime ID (or `runtime` in --spec)");
    }
    if spec.code.as_ref().is_none_or(|c| c.source.is_none()) {
        bail!("missing the code: pass --code DIR_OR_ZIP (or [code] directory/zip_file in --spec)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut argv = vec!["lmictl", "create"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Create(a) => a,
            other => panic!("not create: {other:?}"),
        }
    }

    const TOML_SPEC: &str = r#"
runtime = "python3.11"
handler = "app.handler"
memory_mib = 4096
memory_gib_per_vcpu = 4
max_concurrency = 32
timeout_seconds = 30
ephemeral_storage_mib = 1024

[function]
name = "orders"
version = "7"
arn = "arn:aws:lambda:eu-west-1:123456789012:function:orders"

[code]
zip_file = "build/orders.zip"
sha256 = "abc123"

[environment]
LOG_LEVEL = "debug"
PORT = 8080
"#;

    #[test]
    fn toml_spec_parses_every_field() {
        let spec = parse(TOML_SPEC, Format::Toml, Path::new("/srv/specs")).unwrap();
        let f = spec.function.clone().unwrap();
        assert_eq!(f.name, "orders");
        assert_eq!(f.version, "7");
        assert!(f.arn.ends_with(":function:orders"));
        assert_eq!(spec.runtime, "python3.11");
        assert_eq!(spec.handler, "app.handler");
        assert_eq!(spec.memory_mib, 4096);
        assert_eq!(spec.memory_gib_per_vcpu, 4);
        assert_eq!(spec.max_concurrency, 32);
        assert_eq!(spec.timeout_seconds, 30);
        assert_eq!(spec.ephemeral_storage_mib, 1024);
        let code = spec.code.unwrap();
        assert_eq!(
            code.source,
            Some(code::Source::ZipFile("/srv/specs/build/orders.zip".into()))
        );
        assert_eq!(code.sha256, "abc123");
        assert_eq!(
            spec.environment.get("LOG_LEVEL").map(String::as_str),
            Some("debug")
        );
        assert_eq!(
            spec.environment.get("PORT").map(String::as_str),
            Some("8080")
        );
    }

    #[test]
    fn json_spec_parses_and_code_string_shorthand() {
        let json = r#"{"function": {"name": "f"}, "runtime": "provided.al2023",
                       "code": "/opt/fn", "memory_mib": 2048, "environment": {"A": "1"}}"#;
        let spec = parse(json, Format::Json, Path::new("/ignored")).unwrap();
        assert_eq!(spec.function.unwrap().name, "f");
        assert_eq!(
            spec.code.unwrap().source,
            Some(code::Source::Directory("/opt/fn".into()))
        );
        assert_eq!(spec.memory_mib, 2048);
        assert_eq!(spec.environment.len(), 1);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: &[(&str, Format, &str)] = &[
            ("memry_mib = 1", Format::Toml, "unknown field `memry_mib`"),
            ("memory_mib = \"lots\"", Format::Toml, "field `memory_mib`"),
            ("memory_mib = -5", Format::Toml, "field `memory_mib`"),
            (
                r#"{"timeout_seconds": 1.5}"#,
                Format::Json,
                "field `timeout_seconds`",
            ),
            (
                r#"{"max_concurrency": 4294967296}"#,
                Format::Json,
                "field `max_concurrency`",
            ),
            (
                "[function]\nnmae = \"x\"",
                Format::Toml,
                "unknown field `function.nmae`",
            ),
            (
                "[code]\ndirectory = 5",
                Format::Toml,
                "field `code.directory`",
            ),
            (
                "[code]\ndirectory = \"a\"\nzip_file = \"b.zip\"",
                Format::Toml,
                "only one of",
            ),
            (
                "[environment]\nA = [1]",
                Format::Toml,
                "field `environment.A`",
            ),
            ("runtime = 3", Format::Toml, "field `runtime`"),
            ("[1, 2]", Format::Json, "expected a table/object"),
            ("runtime = ", Format::Toml, "invalid TOML"),
            ("{", Format::Json, "invalid JSON"),
        ];
        for (text, format, want) in cases {
            let err = parse(text, *format, Path::new("/")).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(
            Format::from_path(Path::new("a.TOML")).unwrap(),
            Format::Toml
        );
        assert_eq!(
            Format::from_path(Path::new("x/a.json")).unwrap(),
            Format::Json
        );
        assert!(Format::from_path(Path::new("a.yaml")).is_err());
        assert!(Format::from_path(Path::new("spec")).is_err());
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env_pair("A=b"), Ok(("A".into(), "b".into())));
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env_pair("A="), Ok(("A".into(), String::new())));
        let err = parse_env_pair("NOEQUALS").unwrap_err();
        assert!(
            err.contains("NOEQUALS") && err.contains("KEY=VALUE"),
            "{err}"
        );
        assert!(parse_env_pair("=v").is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("lmictl-spec-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("spec.toml");
        std::fs::write(&file, TOML_SPEC).unwrap();
        let args = create_args(&[
            "--spec",
            file.to_str().unwrap(),
            "--version",
            "8",
            "--memory",
            "8192",
            "--ratio",
            "8",
            "--code",
            "src",
            "--env",
            "LOG_LEVEL=info",
            "--env",
            "NEW=1",
        ]);
        let spec = build(&args, Path::new("/home/op")).unwrap();
        let f = spec.function.clone().unwrap();
        assert_eq!((f.name.as_str(), f.version.as_str()), ("orders", "8"));
        assert_eq!(spec.memory_mib, 8192);
        assert_eq!(spec.memory_gib_per_vcpu, 8);
        assert_eq!(
            spec.max_concurrency, 32,
            "unset flags keep the file's value"
        );
        let code = spec.code.unwrap();
        assert_eq!(
            code.source,
            Some(code::Source::Directory("/home/op/src".into()))
        );
        assert_eq!(
            code.sha256, "",
            "the file's sha256 belonged to the replaced code"
        );
        assert_eq!(spec.environment["LOG_LEVEL"], "info");
        assert_eq!(spec.environment["NEW"], "1");
        assert_eq!(spec.environment["PORT"], "8080");

        // The file's relative code path is relative to the file's directory.
        let args = create_args(&["--spec", file.to_str().unwrap()]);
        let spec = build(&args, Path::new("/elsewhere")).unwrap();
        let want = dir.join("build/orders.zip").to_str().unwrap().to_string();
        assert_eq!(spec.code.unwrap().source, Some(code::Source::ZipFile(want)));

        // An error in the file names the file and the field.
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"memory_mib": "2G"}"#).unwrap();
        let args = create_args(&["--spec", bad.to_str().unwrap()]);
        let err = format!("{:#}", build(&args, Path::new("/")).unwrap_err());
        assert!(
            err.contains("bad.json") && err.contains("field `memory_mib`"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn flags_alone_and_required_fields() {
        let args = create_args(&[
            "--function",
            "f",
            "--runtime",
            "python3.12",
            "--code",
            "/abs/pkg.ZIP",
            "--sha256",
            "ff",
        ]);
        let spec = build(&args, Path::new("/cwd")).unwrap();
        let code = spec.code.unwrap();
        assert_eq!(
            code.source,
            Some(code::Source::ZipFile("/abs/pkg.ZIP".into()))
        );
        assert_eq!(code.sha256, "ff");
        assert_eq!(
            spec.function.unwrap().version,
            "",
            "empty version means $LATEST"
        );

        let err = build(
            &create_args(&["--runtime", "x", "--code", "d"]),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--function"), "{err}");
        let err = build(
            &create_args(&["--function", "f", "--code", "d"]),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--runtime"), "{err}");
        let err = build(
            &create_args(&["--function", "f", "--runtime", "r"]),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--code"), "{err}");
        let err = build(
            &create_args(&["--function", "f", "--runtime", "r", "--sha256", "ab"]),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--sha256"), "{err}");
        let err = build(
            &create_args(&["--spec", "/nonexistent/x.toml"]),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/x.toml"),
            "{err:#}"
        );
    }
}
