//! Keeps `docs/configuration.md` in step with the code: its key table must list exactly the traced keys, each
//! with its environment variable and its default.

use std::collections::BTreeMap;

use super::{
    keys::{keys_of, Kind},
    layers::lookup,
    Config,
};

/// The default of a key as the doc writes it: the TOML value in backticks, or `unset`.
fn default_text(defaults: &toml::Table, path: &str) -> String {
    match lookup(defaults, path) {
        Some(v) => format!("`{v}`"),
        None => "unset".to_owned(),
    }
}

#[test]
fn configuration_doc_lists_every_key_with_its_default() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let mut documented: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `key` | `ENV` | default | meaning |
        if cells.len() < 5 || !cells[1].starts_with('`') || !cells[2].starts_with("`LMI_AGENT_") {
            continue;
        }
        documented.insert(
            cells[1].trim_matches('`').to_owned(),
            (cells[2].trim_matches('`').to_owned(), cells[3].to_owned()),
        );
    }
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    for key in keys_of::<Config>() {
        if matches!(key.kind, Kind::Section(_)) {
            continue;
        }
        let row = (key.env_var(), default_text(&defaults, &key.path));
        expected.insert(key.path, row);
    }
    let rows = |m: &BTreeMap<String, (String, String)>, keys: Vec<&String>| -> String {
        keys.iter()
            .map(|k| {
                let (env, default) = &m[*k];
                format!("| `{k}` | `{env}` | {default} | ... |")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these keys; add rows like:\n{}",
        rows(&expected, missing.clone())
    );
    let stale: Vec<&String> = documented
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys the code does not have: {stale:?}"
    );
    let wrong: Vec<&String> = expected
        .keys()
        .filter(|k| documented[*k] != expected[*k])
        .collect();
    assert!(
        wrong.is_empty(),
        "docs/configuration.md has a wrong variable or default for {wrong:?}; the rows should read:\n{}",
        rows(&expected, wrong.clone())
    );
}

#[test]
fn packaged_default_config_is_valid_and_changes_nothing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/agent.toml");
    let loaded = super::layers::Layers::new()
        .file(std::path::Path::new(path))
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(
        toml::Table::try_from(&loaded.config).unwrap(),
        toml::Table::try_from(Config::default()).unwrap(),
        "packaging/agent.toml must leave every key at its documented default"
    );
}
