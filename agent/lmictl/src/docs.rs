//! `lmictl completion SHELL` and `lmictl man --dir DIR`: both generated from the clap definitions in
//! `cli.rs` (with `clap_complete` and `clap_mangen`), so they cannot drift from the command line.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::{Cli, Shell};
use crate::output::Output;

/// The completion script of `shell`, on stdout.
pub fn completion(shell: Shell) -> Output {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "lmictl", &mut script)
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "lmictl", &mut script)
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "lmictl", &mut script)
        }
    }
    if !script.ends_with(b"\n") {
        script.push(b'\n');
    }
    Output {
        stdout: script,
        ..Output::default()
    }
}

/// Writes `lmictl.1` and `lmictl-<command>.1` for every command into `dir` (created if missing) and lists
/// the files written.
pub fn write_man_pages(dir: &Path) -> anyhow::Result<Output> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("lmictl") && n.ends_with(".1"))
        .collect();
    pages.sort();
    let mut text = String::new();
    for page in pages {
        text.push_str(&dir.join(page).display().to_string());
        text.push('\n');
    }
    Ok(Output::text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let out = completion(shell);
        assert_eq!(out.code, 0);
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn completion_scripts_know_the_commands_and_flags() {
        let bash = script(Shell::Bash);
        assert!(bash.contains("complete -F _lmictl"), "{bash}");
        for word in [
            "create",
            "delete",
            "logs",
            "--rpc-timeout",
            "--payload",
            "--since",
            "--tail",
        ] {
            assert!(bash.contains(word), "bash: {word} missing");
        }
        let zsh = script(Shell::Zsh);
        assert!(zsh.starts_with("#compdef lmictl"), "{zsh}");
        assert!(zsh.contains("--function"), "zsh");
        let fish = script(Shell::Fish);
        assert!(fish.contains("complete -c lmictl"), "{fish}");
        assert!(fish.contains("-l since"), "fish");
        // The shell names are checked by clap.
        assert!(<Cli as clap::Parser>::try_parse_from(["lmictl", "completion", "tcsh"]).is_err());
    }

    #[test]
    fn man_pages_for_every_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = write_man_pages(dir.path()).unwrap();
        let listed = String::from_utf8(out.stdout).unwrap();
        for page in [
            "lmictl.1",
            "lmictl-create.1",
            "lmictl-delete.1",
            "lmictl-logs.1",
        ] {
            assert!(listed.contains(page), "{page} missing in {listed}");
            let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(
                text.starts_with(".ie \\n(.g .ds Aq"),
                "{page} is not roff: {text}"
            );
        }
        let logs = std::fs::read_to_string(dir.path().join("lmictl-logs.1")).unwrap();
        assert!(logs.contains("since"), "{logs}");
    }
}
