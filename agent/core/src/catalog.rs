//! The runtime catalog: runtime id → command, default concurrency per vCPU and `AWS_EXECUTION_ENV`.
//!
//! The catalog is data (`agent/core/catalog/runtimes.toml`, compiled in as the default and replaceable by a file
//! named in the configuration), so supporting a new runtime version is a data change. Availability of each
//! runtime on this host is probed once when the catalog is loaded.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize;

/// The catalog shipped with the agent.
pub const BUILTIN_CATALOG: &str = include_str!("../catalog/runtimes.toml");

/// Errors reading a catalog file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading runtime catalog {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime catalog {origin}: {message}")]
    Parse { origin: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    runtime: Vec<RuntimeEntry>,
}

/// One runtime of the catalog, as written in the data file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEntry {
    /// Runtime id as used in specs, e.g. `python3.11`.
    pub id: String,
    /// Program and arguments; see the placeholders in the data file.
    pub command: Vec<String>,
    /// A command whose success tells that the runtime can run on this host.
    #[serde(default)]
    pub probe: Vec<String>,
    /// AWS default of `PerExecutionEnvironmentMaxConcurrency` per vCPU for this runtime.
    pub default_concurrency_per_vcpu: u32,
    /// Value of `AWS_EXECUTION_ENV` (absent for `provided` runtimes).
    #[serde(default)]
    pub execution_env: Option<String>,
}

impl RuntimeEntry {
    /// True for runtimes that run the function's own `bootstrap`.
    pub fn is_provided(&self) -> bool {
        self.id.starts_with("provided")
    }
}

/// Availability of a runtime on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Available,
    Unavailable(String),
}

/// A loaded catalog with the availability of each runtime on this host.
#[derive(Debug, Clone)]
pub struct Catalog {
    runtimes: BTreeMap<String, (RuntimeEntry, Availability)>,
}

impl Catalog {
    /// Parses catalog text and probes every runtime (a probe naming `{shims}` cannot run without a shims
    /// directory and reports the runtime unavailable; see [`Catalog::parse_with_shims`]).
    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        Self::parse_with_shims(text, origin, None)
    }

    /// Parses catalog text and probes every runtime, with `{shims}` in probe commands replaced by
    /// `shims_dir` (the runtime-shims directory of the agent's configuration).
    pub fn parse_with_shims(
        text: &str,
        origin: &str,
        shims_dir: Option<&Path>,
    ) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut runtimes = BTreeMap::new();
        for entry in file.runtime {
            if entry.command.is_empty() {
                return Err(CatalogError::Parse {
                    origin: origin.to_owned(),
                    message: format!("runtime {}: command is empty", entry.id),
                });
            }
            if entry.default_concurrency_per_vcpu == 0 {
                return Err(CatalogError::Parse {
                    origin: origin.to_owned(),
                    message: format!("runtime {}: default_concurrency_per_vcpu is 0", entry.id),
                });
            }
            let availability = probe(&entry, shims_dir);
            if runtimes
                .insert(entry.id.clone(), (entry.clone(), availability))
                .is_some()
            {
                return Err(CatalogError::Parse {
                    origin: origin.to_owned(),
                    message: format!("runtime {} is listed twice", entry.id),
                });
            }
        }
        Ok(Self { runtimes })
    }

    /// The built-in catalog, or the file at `path`.
    pub fn load(path: Option<&Path>) -> Result<Self, CatalogError> {
        Self::load_with_shims(path, None)
    }

    /// The built-in catalog, or the file at `path`, probed with `{shims}` = `shims_dir`.
    pub fn load_with_shims(
        path: Option<&Path>,
        shims_dir: Option<&Path>,
    ) -> Result<Self, CatalogError> {
        match path {
            None => Self::parse_with_shims(BUILTIN_CATALOG, "built-in", shims_dir),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| CatalogError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                Self::parse_with_shims(&text, &p.display().to_string(), shims_dir)
            }
        }
    }

    /// The entry and availability of a runtime id.
    pub fn get(&self, id: &str) -> Option<(&RuntimeEntry, &Availability)> {
        self.runtimes.get(id).map(|(e, a)| (e, a))
    }

    /// Every runtime, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = (&RuntimeEntry, &Availability)> {
        self.runtimes.values().map(|(e, a)| (e, a))
    }

    /// Runtime ids, ordered, for error messages.
    pub fn ids(&self) -> Vec<&str> {
        self.runtimes.keys().map(String::as_str).collect()
    }
}

fn probe(entry: &RuntimeEntry, shims_dir: Option<&Path>) -> Availability {
    let program = &entry.command[0];
    if !program.contains('{') && find_in_path(program).is_none() {
        return Availability::Unavailable(format!("{program} not found in PATH"));
    }
    let mut probe = Vec::with_capacity(entry.probe.len());
    for arg in &entry.probe {
        match (arg.contains("{shims}"), shims_dir) {
            (false, _) => probe.push(arg.clone()),
            (true, Some(dir)) => probe.push(arg.replace("{shims}", &dir.display().to_string())),
            (true, None) => {
                return Availability::Unavailable(
                    "probe needs {shims} but no shims directory was given".to_owned(),
                )
            }
        }
    }
    let Some((prog, args)) = probe.split_first() else {
        return Availability::Available;
    };
    match Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => Availability::Available,
        Ok(out) => {
            // The probe's own explanation ("no Java 21 installation found") says more than its exit status.
            let why = first_line(&out.stderr)
                .map(|l| format!(": {l}"))
                .unwrap_or_default();
            Availability::Unavailable(format!(
                "probe `{}` failed ({}){why}",
                probe.join(" "),
                out.status
            ))
        }
        Err(e) => Availability::Unavailable(format!("probe `{}` failed: {e}", probe.join(" "))),
    }
}

/// The longest probe message kept, in characters.
const MAX_PROBE_MESSAGE: usize = 300;

/// The first non-blank line of a probe's stderr, trimmed and cut to [`MAX_PROBE_MESSAGE`] characters.
fn first_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut kept: String = line.chars().take(MAX_PROBE_MESSAGE).collect();
    if kept.len() < line.len() {
        kept.push('…');
    }
    Some(kept)
}

/// Looks a program up in `PATH` (a path with a slash is taken as is).
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_with_aws_defaults() {
        let c = Catalog::load(None).unwrap();
        let (py, _) = c.get("python3.11").unwrap();
        assert_eq!(py.default_concurrency_per_vcpu, 16);
        assert_eq!(py.execution_env.as_deref(), Some("AWS_Lambda_python3.11"));
        for node in ["nodejs20.x", "nodejs22.x"] {
            let (entry, _) = c.get(node).unwrap();
            assert_eq!(entry.default_concurrency_per_vcpu, 64, "{node}");
            assert_eq!(
                entry.execution_env.as_deref(),
                Some(format!("AWS_Lambda_{node}").as_str())
            );
            assert!(!entry.probe.is_empty(), "{node} checks its major version");
        }
        let (provided, avail) = c.get("provided.al2023").unwrap();
        assert!(provided.is_provided());
        assert_eq!(provided.execution_env, None);
        assert_eq!(avail, &Availability::Available);
        for (id, env) in [
            ("java17", "AWS_Lambda_java17"),
            ("java21", "AWS_Lambda_java21"),
            ("java25", "AWS_Lambda_java25"),
            ("dotnet8", "AWS_Lambda_dotnet8"),
        ] {
            let (e, _) = c.get(id).unwrap();
            assert_eq!(e.default_concurrency_per_vcpu, 32, "{id}");
            assert_eq!(e.execution_env.as_deref(), Some(env));
        }
    }

    #[test]
    fn missing_interpreter_is_unavailable_with_reason() {
        let c = Catalog::parse(
            r#"[[runtime]]
id = "ghost1.0"
command = ["no-such-interpreter-xyz", "x"]
default_concurrency_per_vcpu = 4
"#,
            "test",
        )
        .unwrap();
        let (_, a) = c.get("ghost1.0").unwrap();
        assert_eq!(
            a,
            &Availability::Unavailable("no-such-interpreter-xyz not found in PATH".into())
        );
    }

    #[test]
    fn failing_probe_is_unavailable() {
        let c = Catalog::parse(
            r#"[[runtime]]
id = "sh"
command = ["sh"]
probe = ["sh", "-c", "exit 3"]
default_concurrency_per_vcpu = 4
"#,
            "test",
        )
        .unwrap();
        assert!(
            matches!(c.get("sh").unwrap().1, Availability::Unavailable(m) if m.contains("exit status: 3"))
        );
    }

    #[test]
    fn failing_probe_says_its_first_stderr_line() {
        let c = Catalog::parse(
            r#"[[runtime]]
id = "java21"
command = ["sh"]
probe = ["sh", "-c", "echo noise on stdout; printf '\\n  no Java 21 installation found  \\nsecond line\\n' >&2; exit 1"]
default_concurrency_per_vcpu = 4
"#,
            "test",
        )
        .unwrap();
        let Availability::Unavailable(m) = &c.get("java21").unwrap().1 else {
            panic!("available")
        };
        assert!(
            m.ends_with("failed (exit status: 1): no Java 21 installation found"),
            "{m}"
        );
        assert_eq!(first_line(b"  \n\n"), None);
        let long = first_line("é".repeat(400).as_bytes()).unwrap();
        assert_eq!(long.chars().count(), MAX_PROBE_MESSAGE + 1);
    }

    #[test]
    fn probes_see_the_shims_directory() {
        let text = r#"[[runtime]]
id = "shimmed"
command = ["{shims}/x/bootstrap"]
probe = ["sh", "-c", "test -f {shims}/marker"]
default_concurrency_per_vcpu = 4
"#;
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::parse_with_shims(text, "test", Some(dir.path())).unwrap();
        assert!(matches!(
            c.get("shimmed").unwrap().1,
            Availability::Unavailable(_)
        ));
        std::fs::write(dir.path().join("marker"), "").unwrap();
        let c = Catalog::parse_with_shims(text, "test", Some(dir.path())).unwrap();
        assert_eq!(c.get("shimmed").unwrap().1, &Availability::Available);
        let c = Catalog::parse(text, "test").unwrap();
        assert!(
            matches!(c.get("shimmed").unwrap().1, Availability::Unavailable(m) if m.contains("{shims}"))
        );
    }

    #[test]
    fn bad_catalogs_are_errors_naming_the_problem() {
        let dup = "[[runtime]]\nid='a'\ncommand=['sh']\ndefault_concurrency_per_vcpu=1\n[[runtime]]\nid='a'\ncommand=['sh']\ndefault_concurrency_per_vcpu=1\n";
        assert!(Catalog::parse(dup, "t")
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
        let unknown =
            "[[runtime]]\nid='a'\ncommand=['sh']\ndefault_concurrency_per_vcpu=1\nflavour='x'\n";
        assert!(Catalog::parse(unknown, "t")
            .unwrap_err()
            .to_string()
            .contains("flavour"));
        let empty = "[[runtime]]\nid='a'\ncommand=[]\ndefault_concurrency_per_vcpu=1\n";
        assert!(Catalog::parse(empty, "t")
            .unwrap_err()
            .to_string()
            .contains("command is empty"));
    }
}
