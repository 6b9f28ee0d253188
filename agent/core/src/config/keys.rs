//! The configuration's keys, read off the [`Config`](super::Config) type itself.
//!
//! Environment overrides, `check-config`'s listing and the test that keeps `docs/configuration.md` complete all
//! need the list of keys with their kinds. Writing that list by hand would drift from the structs, so it is
//! traced: a probing `serde` deserializer walks the derived `Deserialize` impls and records, for each field, what
//! the impl asks for (a nested struct, a string, an integer, an enum and its variants, a list, an option). A key
//! added to any config struct is therefore known here without further work.

use std::{cell::RefCell, fmt};

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LMI_AGENT_";

/// What a key's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A string (also paths and socket addresses).
    String,
    /// An integer.
    Integer,
    /// A float.
    Float,
    /// `true` or `false`.
    Bool,
    /// One of the listed strings.
    Enum(Vec<&'static str>),
    /// A list of values of the inner kind.
    List(Box<Kind>),
    /// A `[section]` holding further keys.
    Section(Vec<&'static str>),
    /// Something the tracer does not model (a map, bytes...).
    Other(&'static str),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::String => f.write_str("string"),
            Kind::Integer => f.write_str("integer"),
            Kind::Float => f.write_str("float"),
            Kind::Bool => f.write_str("bool"),
            Kind::Enum(v) => write!(f, "one of {}", v.join(", ")),
            Kind::List(inner) => write!(f, "list of {inner}"),
            Kind::Section(_) => f.write_str("section"),
            Kind::Other(what) => f.write_str(what),
        }
    }
}

/// One key of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Dotted path, e.g. `capacity.vcpus`.
    pub path: String,
    /// What its value is.
    pub kind: Kind,
    /// Whether it may be left unset (an `Option`).
    pub optional: bool,
}

impl Key {
    /// The environment variable that overrides this key: `LMI_AGENT_` + the path in upper case, with `.` → `_`.
    pub fn env_var(&self) -> String {
        env_var_for(&self.path)
    }

    /// The path's components.
    pub fn components(&self) -> Vec<&str> {
        self.path.split('.').collect()
    }
}

/// The environment variable name of a dotted key path.
pub fn env_var_for(path: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        path.replace('.', "_").to_ascii_uppercase()
    )
}

/// Every key of `T` (sections and the keys inside them), in declaration order. Sections are listed before
/// their keys.
pub fn keys_of<T: DeserializeOwned>() -> Vec<Key> {
    let mut out = Vec::new();
    let top = match trace::<T>(&[]) {
        Traced {
            kind: Kind::Section(fields),
            ..
        } => fields,
        _ => return out,
    };
    walk::<T>(&mut Vec::new(), &top, &mut out);
    out
}

fn walk<T: DeserializeOwned>(
    prefix: &mut Vec<&'static str>,
    fields: &[&'static str],
    out: &mut Vec<Key>,
) {
    for field in fields {
        prefix.push(field);
        let traced = trace::<T>(prefix);
        let sub = match &traced.kind {
            Kind::Section(sub) => Some(sub.clone()),
            _ => None,
        };
        out.push(Key {
            path: prefix.join("."),
            kind: traced.kind,
            optional: traced.optional,
        });
        if let Some(sub) = sub {
            walk::<T>(prefix, &sub, out);
        }
        prefix.pop();
    }
}

/// What the probe saw at the end of a path.
#[derive(Debug)]
struct Traced {
    kind: Kind,
    optional: bool,
}

#[derive(Debug, Default)]
struct Record {
    /// Wrappers seen on the way to the base kind, outermost first.
    lists: usize,
    optional: bool,
    base: Option<Kind>,
}

/// Runs `T`'s deserializer against a probe that follows `path` and records what the value at its end asks for.
fn trace<T: DeserializeOwned>(path: &[&'static str]) -> Traced {
    let record = RefCell::new(Record::default());
    // The probe always ends the run with an error once it has seen what it came for.
    let _ = T::deserialize(Probe {
        path,
        depth: 0,
        record: &record,
    });
    let r = record.into_inner();
    let mut kind = r.base.unwrap_or(Kind::Other("unknown"));
    for _ in 0..r.lists {
        kind = Kind::List(Box::new(kind));
    }
    Traced {
        kind,
        optional: r.optional,
    }
}

/// The error that ends a probe run.
#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Stop(msg.to_string())
    }
}

#[derive(Clone, Copy)]
struct Probe<'a> {
    path: &'a [&'static str],
    depth: usize,
    record: &'a RefCell<Record>,
}

impl Probe<'_> {
    fn at_target(&self) -> bool {
        self.depth >= self.path.len()
    }

    fn base<V>(&self, kind: Kind) -> Result<V, Stop> {
        if self.at_target() {
            self.record.borrow_mut().base = Some(kind);
            Err(Stop("traced".into()))
        } else {
            Err(Stop("not a section".into()))
        }
    }
}

macro_rules! base_kinds {
    ($($method:ident => $kind:expr),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
            self.base($kind)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    base_kinds! {
        deserialize_any => Kind::Other("any value"),
        deserialize_bool => Kind::Bool,
        deserialize_i8 => Kind::Integer,
        deserialize_i16 => Kind::Integer,
        deserialize_i32 => Kind::Integer,
        deserialize_i64 => Kind::Integer,
        deserialize_i128 => Kind::Integer,
        deserialize_u8 => Kind::Integer,
        deserialize_u16 => Kind::Integer,
        deserialize_u32 => Kind::Integer,
        deserialize_u64 => Kind::Integer,
        deserialize_u128 => Kind::Integer,
        deserialize_f32 => Kind::Float,
        deserialize_f64 => Kind::Float,
        deserialize_char => Kind::String,
        deserialize_str => Kind::String,
        deserialize_string => Kind::String,
        deserialize_bytes => Kind::Other("bytes"),
        deserialize_byte_buf => Kind::Other("bytes"),
        deserialize_unit => Kind::Other("unit"),
        deserialize_map => Kind::Other("table"),
        deserialize_identifier => Kind::String,
        deserialize_ignored_any => Kind::Other("ignored"),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.at_target() {
            self.record.borrow_mut().optional = true;
        }
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.base(Kind::Other("unit"))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if !self.at_target() {
            return Err(Stop("not a section".into()));
        }
        self.record.borrow_mut().lists += 1;
        visitor.visit_seq(OneElement { probe: Some(self) })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.base(Kind::Other("tuple"))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.base(Kind::Other("tuple"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        if self.at_target() {
            return self.base(Kind::Section(fields.to_vec()));
        }
        let key = self.path[self.depth];
        visitor.visit_map(OneField {
            key: Some(key),
            value: Probe {
                depth: self.depth + 1,
                ..self
            },
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.base(Kind::Enum(variants.to_vec()))
    }

    fn is_human_readable(&self) -> bool {
        // Configuration is text: types such as SocketAddr then ask for a string, as they do from TOML.
        true
    }
}

/// A map with the single key the probe follows.
struct OneField<'a> {
    key: Option<&'static str>,
    value: Probe<'a>,
}

impl<'de> MapAccess<'de> for OneField<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Stop> {
        seed.deserialize(self.value)
    }
}

/// A list with one element, the probe (to learn the element's kind).
struct OneElement<'a> {
    probe: Option<Probe<'a>>,
}

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Stop;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Stop> {
        match self.probe.take() {
            Some(p) => seed.deserialize(p).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, path::PathBuf};

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Color {
        #[default]
        Red,
        Green,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Inner {
        depth: u32,
        colors: Vec<Color>,
        ratio: f64,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        dir: PathBuf,
        listen: Option<SocketAddr>,
        on: bool,
        color: Color,
        inner: Inner,
    }

    #[test]
    fn traces_every_field_with_its_kind() {
        let keys = keys_of::<Outer>();
        let got: Vec<(String, Kind, bool)> = keys
            .into_iter()
            .map(|k| (k.path, k.kind, k.optional))
            .collect();
        assert_eq!(
            got,
            vec![
                ("name".into(), Kind::String, false),
                ("dir".into(), Kind::String, false),
                ("listen".into(), Kind::String, true),
                ("on".into(), Kind::Bool, false),
                ("color".into(), Kind::Enum(vec!["red", "green"]), false),
                (
                    "inner".into(),
                    Kind::Section(vec!["depth", "colors", "ratio"]),
                    false
                ),
                ("inner.depth".into(), Kind::Integer, false),
                (
                    "inner.colors".into(),
                    Kind::List(Box::new(Kind::Enum(vec!["red", "green"]))),
                    false
                ),
                ("inner.ratio".into(), Kind::Float, false),
            ]
        );
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_for("capacity.vcpus"), "LMI_AGENT_CAPACITY_VCPUS");
        assert_eq!(env_var_for("log_format"), "LMI_AGENT_LOG_FORMAT");
    }
}
