//! `lmictl`: the operator CLI of lmi-agent. It speaks the gRPC service `lmi.agent.v1.Agent` over the agent's
//! Unix socket (or TCP with `--endpoint`).
//!
//! `main` only parses the command line, runs `commands::run` and writes its `Output`; see `output.rs` for the
//! exit codes.

mod bench;
mod cli;
mod commands;
mod connect;
mod docs;
mod logs;
mod output;
mod payload;
mod render;
mod resolve;
mod spec_file;
mod stream;
mod throttle;
mod top;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;

use crate::output::{EXIT_ERROR, EXIT_OK};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version go to stdout with exit 0; usage errors are exit 3, not clap's 2 (2 means
            // "throttled" here).
            let code = if err.use_stderr() {
                EXIT_ERROR
            } else {
                EXIT_OK
            };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let cwd = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("error: cannot read the current directory: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let stdin = std::io::stdin();
    let mut io = commands::Io {
        stdout_is_tty: std::io::stdout().is_terminal(),
        stdin: &mut stdin.lock(),
        progress: &mut std::io::stderr(),
        stdout: &mut std::io::stdout(),
        cwd,
        live: &mut std::io::stdout(),
    };
    let out = runtime.block_on(commands::run(cli, &mut io));

    let mut code = out.code;
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&out.stdout)
        .and_then(|()| stdout.flush())
        .is_err()
        && code == EXIT_OK
    {
        // For example a closed pipe: the output did not arrive.
        code = EXIT_ERROR;
    }
    if !out.stderr.is_empty() {
        let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    }
    ExitCode::from(code)
}
