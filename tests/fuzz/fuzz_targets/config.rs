//! The agent's configuration layers and its runtime catalog on any text: a clear error or a configuration
//! that passes its own checks, never a panic.
//!
//! The input is the configuration file's text; lines after a `---` line are `LMI_AGENT_*=value` environment
//! variables merged on top (the same bytes are also tried as a runtime catalog).
#![no_main]

use std::{ffi::OsString, path::Path};

use libfuzzer_sys::fuzz_target;
use lmi_agent_core::catalog::Catalog;
use lmi_agent_core::config::layers::Layers;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once("\n---\n").unwrap_or((text, ""));
    let vars: Vec<(OsString, OsString)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
    let mut layers = Layers::new();
    let merged = layers
        .text(file, Path::new("/etc/lmi-agent/agent.toml"))
        .and_then(|l| l.env(vars));
    if merged.is_ok() {
        if let Ok(loaded) = layers.resolve() {
            // An accepted configuration renders, and what it renders is accepted again.
            let rendered = loaded.render().expect("an accepted configuration renders");
            let mut again = Layers::new();
            again
                .text(&rendered, Path::new("rendered.toml"))
                .expect("the rendered configuration parses");
            let reloaded = again.resolve().expect("the rendered configuration is valid");
            assert_eq!(reloaded.config.state_dir, loaded.config.state_dir);
        }
    }
    let _ = Catalog::parse(text, "fuzz");
});
