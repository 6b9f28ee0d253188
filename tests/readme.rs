//! The README's shell examples, run against a real agent so that they cannot rot: every fenced `sh` block of
//! README.md runs, in order, unless an HTML comment on the line before it says why not
//! (`<!-- not run by tests/readme.rs: why -->`) or names the only AWS CLI major version it is for
//! (`<!-- tests/readme.rs runs this only with AWS CLI v1 -->`, `v2`): such a block runs with that CLI first on
//! the `PATH` (v2: Debian's `/usr/bin/aws`, which must be installed; v1: the `aws` on the `PATH`, if it is v1).
//! Each command must exit 0.
//!
//! The agent is the test's own (a socket and an Invoke API port of its own), so the README's defaults are
//! replaced before a command runs: the socket path, the Invoke API address, `./docs/examples/` (the checkout's),
//! the completion file under /etc (a temporary file), and the example id prefix `3f2a` (a prefix of the
//! environment the README's `create` made). A `--follow` command runs until it prints its first record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use support::*;

/// The README's socket, Invoke API address and example id prefix.
const README_SOCKET: &str = "/run/lmi-agent/agent.sock";
const README_INVOKE_API: &str = "127.0.0.1:9001";
const README_ID: &str = "3f2a";
const README_COMPLETION_FILE: &str = "/etc/bash_completion.d/lmictl";

/// One fenced `sh` block: its first line number, its text and the comment on the line before it.
#[derive(Debug)]
struct Snippet {
    line: usize,
    text: String,
    marker: Option<String>,
}

fn snippets(readme: &str) -> Vec<Snippet> {
    let mut out = Vec::new();
    let mut lines = readme.lines().enumerate().peekable();
    let mut previous = "";
    while let Some((n, line)) = lines.next() {
        if line.trim() == "```sh" {
            let marker = previous
                .trim()
                .strip_prefix("<!--")
                .and_then(|m| m.strip_suffix("-->"))
                .map(|m| m.trim().to_owned());
            let mut text = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                text.push_str(l);
                text.push('\n');
            }
            out.push(Snippet {
                line: n + 2,
                text,
                marker,
            });
            previous = "";
            continue;
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    out
}

/// A block's commands: one per line (`\`-continued lines joined), or the whole block when it holds a
/// here-document.
fn commands(text: &str) -> Vec<String> {
    if text.contains("<<") {
        return vec![text.to_owned()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    out
}

/// Debian's AWS CLI v2 (`awscli`, installed by tests/setup.sh).
const AWS_CLI_V2: &str = "/usr/bin/aws";

/// The major version of the AWS CLI `aws` (`aws-cli/2.9.19 …` → `2`).
fn aws_cli_major(aws: &Path) -> Option<char> {
    let out = Command::new(aws).arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.strip_prefix("aws-cli/")?.chars().next()
}

/// An AWS CLI of each major version found here, by major: the first `aws` on `path`, and [`AWS_CLI_V2`].
fn aws_clis(path: &str) -> Vec<(char, PathBuf)> {
    let mut found: Vec<(char, PathBuf)> = Vec::new();
    let on_path = std::env::split_paths(path)
        .map(|d| d.join("aws"))
        .find(|f| f.is_file());
    for aws in on_path.into_iter().chain([PathBuf::from(AWS_CLI_V2)]) {
        if let Some(major) = aws_cli_major(&aws) {
            if !found.iter().any(|(m, _)| *m == major) {
                found.push((major, aws));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_shell_examples_run_against_a_real_agent() {
    require_root!();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let blocks = snippets(&readme);
    let mut agent = TestAgent::start_with(AgentOptions {
        extra_config: "[invoke_api]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
    .await;
    let invoke_api = agent.invoke_api_addr().to_string();
    let work = tempfile::tempdir().unwrap();
    let completion = work.path().join("lmictl.bash");
    let bin_dir = LMICTL_BIN.path().parent().unwrap().to_owned();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        test_tools().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let aws = aws_clis(&path);
    let mut aws_ran = Vec::new();
    let examples = format!("{}/", repo().join("docs/examples").display());
    let socket = agent.socket.display().to_string();
    let mut pids = Vec::new();
    let mut ran = 0;

    for block in &blocks {
        let only = |v: &str| {
            block
                .marker
                .as_deref()
                .is_some_and(|m| m.contains(&format!("only with AWS CLI {v}")))
        };
        if let Some(why) = block
            .marker
            .as_deref()
            .filter(|m| m.contains("not run by tests/readme.rs"))
        {
            println!("README.md:{}: skipped ({why})", block.line);
            continue;
        }
        let wanted = if only("v1") {
            Some('1')
        } else if only("v2") {
            Some('2')
        } else {
            None
        };
        // A block for one AWS CLI major runs with that one first on the PATH (a directory holding only a
        // link to it); v2 must be there (tests/setup.sh installs it), v1 is run when found.
        let mut block_path = path.clone();
        if let Some(v) = wanted {
            let Some((_, cli)) = aws.iter().find(|(m, _)| *m == v) else {
                assert_ne!(
                    v, '2',
                    "README.md:{}: no AWS CLI v2 at {AWS_CLI_V2} (tests/setup.sh installs it)",
                    block.line
                );
                println!(
                    "README.md:{}: skipped: for AWS CLI v{v}, found: {aws:?}",
                    block.line
                );
                continue;
            };
            let dir = work.path().join(format!("aws-v{v}"));
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                std::os::unix::fs::symlink(cli, dir.join("aws")).unwrap();
            }
            block_path = format!("{}:{path}", dir.display());
            println!("README.md:{}: AWS CLI v{v}: {}", block.line, cli.display());
            aws_ran.push(v);
        }
        for command in commands(&block.text) {
            let mut command = command
                .replace(README_SOCKET, &socket)
                .replace(README_INVOKE_API, &invoke_api)
                .replace("./docs/examples/", &examples)
                .replace(README_COMPLETION_FILE, &completion.display().to_string());
            if command.contains(README_ID) {
                let envs = agent.list().await;
                let [env] = &envs[..] else {
                    panic!(
                        "README.md:{}: {README_ID} stands for the one environment, found {envs:?}",
                        block.line
                    )
                };
                command = command.replace(README_ID, &env.id[..8]);
            }
            let out = run(&command, block.line, work.path(), &block_path, &socket);
            if wanted.is_some() && command.contains("--log-type Tail") {
                // The decoded X-Amz-Log-Result: Lambda's lines for the invoke.
                for line in [
                    "START RequestId: ",
                    "\nEND RequestId: ",
                    "\nREPORT RequestId: ",
                ] {
                    assert!(
                        out.contains(line),
                        "README.md:{}: no {line:?} in\n{out}",
                        block.line
                    );
                }
            }
            ran += 1;
            pids.extend(agent.list().await.iter().map(|e| e.pid).filter(|&p| p != 0));
        }
    }
    println!("{ran} README commands ran");
    // The grpcurl, lmictl and boto3 examples at least.
    assert!(ran >= 15, "only {ran} README commands ran");
    assert!(aws_ran.contains(&'2'), "the AWS CLI v2 example did not run");
    assert!(std::fs::metadata(&completion).unwrap().len() > 0);
    // The examples delete what they create.
    assert_eq!(agent.list().await, vec![]);
    pids.sort_unstable();
    pids.dedup();
    agent.stop_and_assert_clean(&pids);
}

/// Runs one README command under bash (pipefail), asserts it exits 0 and returns its stdout; a `--follow`
/// command must print a line (returned), then is stopped.
fn run(command: &str, line: usize, dir: &Path, path: &str, socket: &str) -> String {
    let follow = command.contains("--follow");
    let script = if follow {
        format!("exec {command}")
    } else {
        command.to_owned()
    };
    let aws_files = dir.join("no-aws-config");
    let mut cmd = Command::new("bash");
    cmd.args(["-o", "pipefail", "-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env("LMI_AGENT_SOCKET", socket)
        .env("AWS_ACCESS_KEY_ID", "AKIDREADME")
        .env("AWS_SECRET_ACCESS_KEY", "readme")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", &aws_files)
        .env("AWS_SHARED_CREDENTIALS_FILE", &aws_files)
        .env("AWS_PAGER", "")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if follow {
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert!(
            !first.trim().is_empty(),
            "README.md:{line}: {command}\nprinted nothing before it ended ({:?})\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        println!("README.md:{line}: {command}\n{first}");
        return first;
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README.md:{line}: {command}\nexit: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    println!("README.md:{line}: {command}\n{stdout}");
    stdout.into_owned()
}

#[test]
fn snippets_and_their_markers_are_read_as_the_readme_writes_them() {
    let text = "intro\n<!-- not run by tests/readme.rs: demo -->\n```sh\ndemo\n```\n\nthen:\n\n```sh\na \\\n  b\n\nc # note\n```\n```toml\nx = 1\n```\n";
    let s = snippets(text);
    assert_eq!(s.len(), 2);
    assert_eq!(
        s[0].marker.as_deref(),
        Some("not run by tests/readme.rs: demo")
    );
    assert_eq!(s[0].line, 4);
    assert_eq!(s[1].marker, None);
    assert_eq!(commands(&s[1].text), vec!["a    b", "c # note"]);
    assert_eq!(commands("python3 - <<'EOF'\nx\nEOF\n").len(), 1);
}
