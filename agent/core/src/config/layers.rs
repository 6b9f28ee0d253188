//! Where the effective configuration comes from: built-in defaults, then the TOML file, then `LMI_AGENT_*`
//! environment variables, then command-line flags (each layer overrides the ones before it).
//!
//! Every value is checked against the traced key list ([`super::keys`]) as it is merged, so an unknown key, an
//! unknown `LMI_AGENT_*` variable or a value of the wrong kind is reported with the key and where it came from
//! (the file, the variable, the flag). The merged table is then deserialized into [`Config`] and checked.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize as _;

use super::{
    keys::{keys_of, Key, Kind, ENV_PREFIX},
    Config, ConfigError,
};

/// `LMI_AGENT_*` variables that are not configuration keys.
pub const RESERVED_ENV: [&str; 3] = [
    // The configuration file's path (`--config`).
    "LMI_AGENT_CONFIG",
    // The log filter (tracing's EnvFilter syntax).
    "LMI_AGENT_LOG",
    // Fault injection for the watchdog tests (see docs/configuration.md).
    "LMI_AGENT_FAULT",
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// The effective configuration and where each key that is not a default came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Dotted key → source, for keys set by the file, the environment or a flag.
    pub sources: BTreeMap<String, Source>,
}

/// The configuration layers being merged.
#[derive(Debug)]
pub struct Layers {
    keys: Vec<Key>,
    table: toml::Table,
    sources: BTreeMap<String, Source>,
    /// The text of each file merged, by its source's name: errors about its keys show the line.
    files: Vec<(String, String)>,
}

impl Default for Layers {
    fn default() -> Self {
        Self::new()
    }
}

impl Layers {
    /// Starts from the built-in defaults.
    pub fn new() -> Self {
        Self {
            keys: keys_of::<Config>(),
            table: toml::Table::new(),
            sources: BTreeMap::new(),
            files: Vec::new(),
        }
    }

    /// Every configuration key (traced from [`Config`]).
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    fn key(&self, path: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.path == path)
    }

    /// Merges a TOML file.
    pub fn file(&mut self, path: &Path) -> Result<&mut Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.text(&text, path)
    }

    /// Merges TOML text; `origin` names it in errors.
    pub fn text(&mut self, text: &str, origin: &Path) -> Result<&mut Self, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: origin.to_owned(),
                // The parser's own display: the line, a caret under the column, and what it expected.
                message: e.to_string().trim_end().to_owned(),
            })?;
        let source = Source::File(origin.to_owned());
        self.files.push((source.to_string(), text.to_owned()));
        self.merge_table(table, "", &source)
            .map_err(|e| self.locate(e))?;
        Ok(self)
    }

    fn merge_table(
        &mut self,
        table: toml::Table,
        prefix: &str,
        source: &Source,
    ) -> Result<(), ConfigError> {
        for (name, value) in table {
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            let Some(key) = self.key(&path) else {
                return Err(ConfigError::UnknownKey {
                    at: String::new(),
                    expected: self.siblings(prefix),
                    key: path,
                    origin: source.to_string(),
                });
            };
            match (&key.kind, value) {
                (Kind::Section(_), toml::Value::Table(t)) => self.merge_table(t, &path, source)?,
                (Kind::Section(_), other) => {
                    return Err(ConfigError::BadValue {
                        at: String::new(),
                        message: format!("must be a table ([{path}]), not a {}", other.type_str()),
                        key: path,
                        origin: source.to_string(),
                    })
                }
                (_, value) => self.insert(&path, Some(value), source.clone()),
            }
        }
        Ok(())
    }

    /// Names of the keys directly inside section `prefix` ("" = top level), for error messages.
    fn siblings(&self, prefix: &str) -> String {
        let depth = if prefix.is_empty() {
            1
        } else {
            prefix.split('.').count() + 1
        };
        let names: Vec<&str> = self
            .keys
            .iter()
            .filter(|k| {
                let c = k.components();
                c.len() == depth && (prefix.is_empty() || k.path.starts_with(&format!("{prefix}.")))
            })
            .filter_map(|k| k.components().last().copied())
            .collect();
        names.join(", ")
    }

    /// Sets (`Some`) or unsets (`None`) the value at a dotted leaf path.
    fn insert(&mut self, path: &str, value: Option<toml::Value>, source: Source) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let Some(leaf) = parts.pop() else { return };
        let mut table = &mut self.table;
        for part in parts {
            let entry = table
                .entry(part.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            let toml::Value::Table(t) = entry else { return };
            table = t;
        }
        match value {
            Some(v) => {
                table.insert(leaf.to_owned(), v);
            }
            None => {
                table.remove(leaf);
            }
        }
        self.sources.insert(path.to_owned(), source);
    }

    /// Merges `LMI_AGENT_<SECTION>_<KEY>` variables (every other variable is ignored). A variable with the
    /// prefix that names no key is an error, except the reserved ones ([`RESERVED_ENV`]).
    pub fn env<I>(&mut self, vars: I) -> Result<&mut Self, ConfigError>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let mut ours: Vec<(String, OsString)> = vars
            .into_iter()
            .filter_map(|(name, value)| name.into_string().ok().map(|n| (n, value)))
            .filter(|(name, _)| {
                name.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&name.as_str())
            })
            .collect();
        ours.sort();
        for (name, value) in ours {
            let Some(key) = self
                .keys
                .iter()
                .find(|k| !matches!(k.kind, Kind::Section(_)) && k.env_var() == name)
                .cloned()
            else {
                return Err(ConfigError::UnknownEnv { var: name });
            };
            let source = Source::Env(name);
            let Some(raw) = value.to_str() else {
                return Err(ConfigError::BadValue {
                    at: String::new(),
                    key: key.path,
                    origin: source.to_string(),
                    message: "is not valid UTF-8".to_owned(),
                });
            };
            let parsed = parse_value(&key, raw).map_err(|message| ConfigError::BadValue {
                at: String::new(),
                key: key.path.clone(),
                origin: source.to_string(),
                message,
            })?;
            self.insert(&key.path, parsed, source);
        }
        Ok(self)
    }

    /// Merges one `key=value` given by a command-line flag (`flag` names it in errors).
    pub fn set(&mut self, path: &str, raw: &str, flag: &str) -> Result<&mut Self, ConfigError> {
        let source = Source::Flag(flag.to_owned());
        let Some(key) = self.key(path).cloned() else {
            let prefix = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
            return Err(ConfigError::UnknownKey {
                at: String::new(),
                expected: self.siblings(prefix),
                key: path.to_owned(),
                origin: source.to_string(),
            });
        };
        let parsed = parse_value(&key, raw).map_err(|message| ConfigError::BadValue {
            at: String::new(),
            key: key.path.clone(),
            origin: source.to_string(),
            message,
        })?;
        self.insert(&key.path, parsed, source);
        Ok(self)
    }

    /// Deserializes and checks the merged configuration. A bad value is reported with its key and source.
    pub fn resolve(&self) -> Result<Loaded, ConfigError> {
        let config = match Config::deserialize(toml::Value::Table(self.table.clone())) {
            Ok(c) => c,
            Err(e) => return Err(self.locate(self.culprit(&e.to_string()))),
        };
        if let Err(e) = config.check(Path::new("")) {
            return Err(self.locate(match e {
                ConfigError::Invalid { key, message, .. } => ConfigError::BadValue {
                    at: String::new(),
                    key: key.to_owned(),
                    origin: self
                        .sources
                        .get(key)
                        .cloned()
                        .unwrap_or(Source::Default)
                        .to_string(),
                    message,
                },
                other => other,
            }));
        }
        Ok(Loaded {
            config,
            sources: self.sources.clone(),
        })
    }

    /// Adds to an error about a key set in a file the line of the file where it is, with a caret under the
    /// key (unknown keys) or the value (bad values).
    fn locate(&self, e: ConfigError) -> ConfigError {
        let find = |origin: &str, key: &str, want_key: bool| {
            self.files
                .iter()
                .rev()
                .find(|(name, _)| name == origin)
                .and_then(|(_, text)| snippet(text, key, want_key))
                .map(|s| format!("\n{s}"))
                .unwrap_or_default()
        };
        match e {
            ConfigError::UnknownKey {
                key,
                origin,
                expected,
                at,
            } if at.is_empty() => ConfigError::UnknownKey {
                at: find(&origin, &key, true),
                key,
                origin,
                expected,
            },
            ConfigError::BadValue {
                key,
                origin,
                message,
                at,
            } if at.is_empty() => ConfigError::BadValue {
                at: find(&origin, &key, false),
                key,
                origin,
                message,
            },
            other => other,
        }
    }

    /// Finds the value that makes deserialization fail by trying each set value on its own.
    fn culprit(&self, whole: &str) -> ConfigError {
        for (path, source) in &self.sources {
            let Some(value) = lookup(&self.table, path) else {
                continue;
            };
            let mut alone = Layers {
                keys: Vec::new(),
                table: toml::Table::new(),
                sources: BTreeMap::new(),
                files: Vec::new(),
            };
            alone.insert(path, Some(value.clone()), source.clone());
            if let Err(e) = Config::deserialize(toml::Value::Table(alone.table)) {
                return ConfigError::BadValue {
                    at: String::new(),
                    key: path.clone(),
                    origin: source.to_string(),
                    message: e.to_string().trim().replace('\n', " "),
                };
            }
        }
        ConfigError::BadValue {
            at: String::new(),
            key: "(configuration)".to_owned(),
            origin: "merged configuration".to_owned(),
            message: whole.trim().replace('\n', " "),
        }
    }
}

/// The line of `text` holding the dotted `key` (its name if `want_key`, else its value) with a caret line under
/// it, in the TOML parser's own layout (`N | line`).
fn snippet(text: &str, key: &str, want_key: bool) -> Option<String> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let parts: Vec<&str> = key.split('.').collect();
    let mut span = None;
    for (i, part) in parts.iter().enumerate() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part)?;
        if i + 1 == parts.len() {
            span = Some(if want_key { k.span() } else { v.span() });
        } else if let toml::de::DeValue::Table(t) = v.get_ref() {
            table = t;
        } else {
            return None;
        }
    }
    let span = span?;
    let start = text.get(..span.start)?;
    let line_start = start.rfind('\n').map_or(0, |i| i + 1);
    let line_no = start.matches('\n').count() + 1;
    let line = text[line_start..]
        .split('\n')
        .next()?
        .trim_end_matches('\r');
    let column = text[line_start..span.start].chars().count();
    let width = text
        .get(span.start..span.end.min(line_start + line.len()))
        .map_or(1, |s| s.chars().count().max(1));
    let gutter = " ".repeat(line_no.to_string().len());
    Some(format!(
        "{gutter} |\n{line_no} | {line}\n{gutter} | {}{}",
        " ".repeat(column),
        "^".repeat(width)
    ))
}

/// The value at a dotted path of a table.
pub fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Turns the text of an environment variable or flag into a TOML value of the key's kind. An empty text
/// unsets an optional key.
fn parse_value(key: &Key, raw: &str) -> Result<Option<toml::Value>, String> {
    if raw.is_empty() && key.optional {
        return Ok(None);
    }
    parse_kind(&key.kind, raw).map(Some)
}

fn parse_kind(kind: &Kind, raw: &str) -> Result<toml::Value, String> {
    match kind {
        Kind::String | Kind::Enum(_) => Ok(toml::Value::String(raw.to_owned())),
        Kind::Integer => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer, got `{raw}`")),
        Kind::Float => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| format!("expected a number, got `{raw}`")),
        Kind::Bool => match raw.trim() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err(format!("expected true or false, got `{raw}`")),
        },
        Kind::List(inner) => {
            let trimmed = raw.trim();
            if trimmed.starts_with('[') {
                return toml_literal(trimmed);
            }
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|item| parse_kind(inner, item))
                .collect::<Result<Vec<_>, _>>()
                .map(toml::Value::Array)
        }
        Kind::Section(_) => Err("is a section: set the keys inside it instead".to_owned()),
        Kind::Other(_) => toml_literal(raw),
    }
}

fn toml_literal(raw: &str) -> Result<toml::Value, String> {
    let doc: toml::Table = format!("v = {raw}")
        .parse()
        .map_err(|e: toml::de::Error| format!("not a TOML value: {}", e.message()))?;
    doc.get("v")
        .cloned()
        .ok_or_else(|| "not a TOML value".to_owned())
}

impl Loaded {
    /// The effective configuration as TOML, every key listed (unset optional keys as comments), each value
    /// that is not a default followed by a comment naming where it came from.
    pub fn render(&self) -> Result<String, ConfigError> {
        let values = toml::Table::try_from(&self.config).map_err(|e| ConfigError::BadValue {
            at: String::new(),
            key: "(configuration)".to_owned(),
            origin: "effective configuration".to_owned(),
            message: e.to_string(),
        })?;
        let keys = keys_of::<Config>();
        let mut out = String::from(
            "# Effective lmi-agent configuration (defaults < file < LMI_AGENT_* < flags).\n",
        );
        let mut sections: Vec<&Key> = Vec::new();
        // Top-level values first: TOML puts every key after a [section] header into that section.
        for key in &keys {
            match key.kind {
                Kind::Section(_) => sections.push(key),
                _ if !key.path.contains('.') => self.render_key(&mut out, key, &values, &key.path),
                _ => {}
            }
        }
        for section in sections {
            out.push_str(&format!("\n[{}]\n", section.path));
            let prefix = format!("{}.", section.path);
            for key in &keys {
                let Some(name) = key.path.strip_prefix(&prefix) else {
                    continue;
                };
                if name.contains('.') || matches!(key.kind, Kind::Section(_)) {
                    continue;
                }
                self.render_key(&mut out, key, &values, name);
            }
        }
        Ok(out)
    }

    fn render_key(&self, out: &mut String, key: &Key, values: &toml::Table, name: &str) {
        let from = match self.sources.get(&key.path) {
            Some(s) if *s != Source::Default => format!("  # from {s}"),
            _ => String::new(),
        };
        match lookup(values, &key.path) {
            Some(v) => out.push_str(&format!("{name} = {v}{from}\n")),
            None => out.push_str(&format!("# {name} is unset{from}\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn errors_about_a_file_key_show_its_line_with_a_caret() {
        let load = |text: &str| {
            Layers::new()
                .text(text, Path::new("a.toml"))
                .and_then(|l| l.resolve())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        // (file, first line of the error, the file line shown, the caret line under it)
        for (text, first, line, caret) in [
            (
                "region = \"x\"\n[capacity]\nvcpus = -1\n",
                "a.toml: capacity.vcpus: invalid value",
                "3 | vcpus = -1",
                "  |         ^^",
            ),
            (
                "[capacity]\nvcpu = 3\n",
                "a.toml: unknown key `capacity.vcpu` (known here:",
                "2 | vcpu = 3",
                "  | ^^^^",
            ),
            (
                "[environments]\npids_max = 4\n",
                "a.toml: environments.pids_max: must be at least 16",
                "2 | pids_max = 4",
                "  |            ^",
            ),
            (
                "capacity.vcpus = \"eight\"\n",
                "a.toml: capacity.vcpus: invalid type: string",
                "1 | capacity.vcpus = \"eight\"",
                "  |                  ^^^^^^^",
            ),
            (
                "\n\n\n\n\n\n\n\n\n\nlog_format = \"xml\"\n",
                "a.toml: log_format: unknown variant `xml`",
                "11 | log_format = \"xml\"",
                "   |              ^^^^^",
            ),
        ] {
            let e = load(text);
            let lines: Vec<&str> = e.lines().collect();
            assert!(lines[0].starts_with(first), "{text:?}: {e}");
            assert_eq!(&lines[2..], [line, caret], "{text:?}: {e}");
        }
        // Values from the environment or flags have no file line to show.
        let e = Layers::new()
            .set("capacity.vcpus", "x", "--set capacity.vcpus")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn later_layers_override_earlier_ones_and_are_recorded() {
        let mut l = Layers::new();
        l.text(
            "socket = '/a.sock'\n[capacity]\nvcpus = 8\nmemory_mib = 1024\n",
            Path::new("f.toml"),
        )
        .unwrap();
        l.env(env(&[
            ("LMI_AGENT_CAPACITY_VCPUS", "16"),
            ("LMI_AGENT_LOG", "debug"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        l.set("socket", "/b.sock", "--socket").unwrap();
        let loaded = l.resolve().unwrap();
        assert_eq!(loaded.config.capacity.vcpus, 16);
        assert_eq!(loaded.config.capacity.memory_mib, 1024);
        assert_eq!(loaded.config.socket, Path::new("/b.sock"));
        assert_eq!(
            loaded.sources.get("capacity.vcpus"),
            Some(&Source::Env("LMI_AGENT_CAPACITY_VCPUS".into()))
        );
        assert_eq!(
            loaded.sources.get("capacity.memory_mib"),
            Some(&Source::File("f.toml".into()))
        );
        assert_eq!(
            loaded.sources.get("socket"),
            Some(&Source::Flag("--socket".into()))
        );
    }

    #[test]
    fn env_values_take_the_kind_of_their_key() {
        let mut l = Layers::new();
        l.env(env(&[
            ("LMI_AGENT_ACCOUNT_ID", "123456789012"),
            ("LMI_AGENT_LOG_FORMAT", "text"),
            ("LMI_AGENT_LISTEN_TCP", "127.0.0.1:50051"),
            ("LMI_AGENT_INVOKE_API_LISTEN", "127.0.0.1:9001"),
        ]))
        .unwrap();
        let c = l.resolve().unwrap().config;
        assert_eq!(c.account_id, "123456789012");
        assert_eq!(c.log_format, super::super::LogFormat::Text);
        assert_eq!(c.listen_tcp, Some("127.0.0.1:50051".parse().unwrap()));
        assert_eq!(c.invoke_api.listen, Some("127.0.0.1:9001".parse().unwrap()));
        // An empty value unsets an optional key set by an earlier layer.
        let mut l = Layers::new();
        l.text("listen_tcp = '127.0.0.1:1'", Path::new("f.toml"))
            .unwrap();
        l.env(env(&[("LMI_AGENT_LISTEN_TCP", "")])).unwrap();
        assert_eq!(l.resolve().unwrap().config.listen_tcp, None);
    }

    #[test]
    fn errors_name_the_key_and_its_source() {
        let e = Layers::new()
            .env(env(&[("LMI_AGENT_CAPACITY_VCPUSS", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LMI_AGENT_CAPACITY_VCPUSS") && e.contains("does not name"),
            "{e}"
        );
        let e = Layers::new()
            .env(env(&[("LMI_AGENT_CAPACITY_VCPUS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("environment variable LMI_AGENT_CAPACITY_VCPUS: capacity.vcpus: expected an integer"),
            "{e}"
        );
        let e = Layers::new()
            .env(env(&[("LMI_AGENT_CAPACITY", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LMI_AGENT_CAPACITY does not name"), "{e}");
        // Out of range for the field's type: found by deserialization, attributed to the variable.
        let mut l = Layers::new();
        l.env(env(&[("LMI_AGENT_CAPACITY_VCPUS", "-3")])).unwrap();
        let e = l.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("environment variable LMI_AGENT_CAPACITY_VCPUS: capacity.vcpus:"),
            "{e}"
        );
        // A semantic check, attributed to the flag that set the value.
        let mut l = Layers::new();
        l.set("cgroup_parent", "../up", "--cgroup-parent").unwrap();
        let e = l.resolve().unwrap_err().to_string();
        assert!(
            e.starts_with("flag --cgroup-parent: cgroup_parent: must be"),
            "{e}"
        );
        let e = Layers::new()
            .text("[capacity]\nvcpu = 1", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.toml: unknown key `capacity.vcpu`") && e.contains("vcpus"),
            "{e}"
        );
        let e = Layers::new()
            .text("capacity = 4", Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("capacity: must be a table"), "{e}");
        let mut l = Layers::new();
        l.text("[environments]\npids_max = 'lots'", Path::new("f.toml"))
            .unwrap();
        let e = l.resolve().unwrap_err().to_string();
        assert!(e.starts_with("f.toml: environments.pids_max:"), "{e}");
    }

    #[test]
    fn rendered_configuration_is_toml_that_reads_back_the_same() {
        let mut l = Layers::new();
        l.text(
            "listen_tcp = '127.0.0.1:50051'\n[capacity]\nvcpus = 12\n[invoke_api]\nlisten = '127.0.0.1:9001'\n",
            Path::new("f.toml"),
        )
        .unwrap();
        l.env(env(&[("LMI_AGENT_ENVIRONMENTS_PIDS_MAX", "99")]))
            .unwrap();
        let loaded = l.resolve().unwrap();
        let text = loaded.render().unwrap();
        assert!(text.contains("vcpus = 12  # from f.toml"), "{text}");
        assert!(
            text.contains(
                "pids_max = 99  # from environment variable LMI_AGENT_ENVIRONMENTS_PIDS_MAX"
            ),
            "{text}"
        );
        assert!(text.contains("# catalog is unset"), "{text}");
        let again = Config::parse(&text, Path::new("rendered")).unwrap();
        assert_eq!(
            toml::Table::try_from(&again).unwrap(),
            toml::Table::try_from(&loaded.config).unwrap()
        );
    }

    #[test]
    fn every_key_has_a_distinct_env_var_and_a_known_kind() {
        let keys = keys_of::<Config>();
        assert!(keys.iter().any(|k| k.path == "capacity.vcpus"));
        let mut seen = std::collections::HashSet::new();
        for k in keys.iter().filter(|k| !matches!(k.kind, Kind::Section(_))) {
            assert!(
                !matches!(k.kind, Kind::Other(_)),
                "{} has an untraceable kind {}",
                k.path,
                k.kind
            );
            assert!(seen.insert(k.env_var()), "two keys map to {}", k.env_var());
            assert!(
                !RESERVED_ENV.contains(&k.env_var().as_str()),
                "{} is reserved",
                k.env_var()
            );
        }
    }
}
