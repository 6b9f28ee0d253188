//! The host tools the network sandbox drives: `ip` (iproute2) for veth pairs, addresses and routes, and `nft`
//! (nftables) for NAT. Found once at start (in `PATH`, then the sbin directories a service's `PATH` may
//! lack) and run with their script on stdin, so one process does a whole step.

use std::{
    io::Write,
    os::{fd::RawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::netns::NetworkNamespace;

/// Directories searched after `PATH`.
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// A tool found on the host.
#[derive(Debug, Clone)]
pub struct Tool {
    path: PathBuf,
}

impl Tool {
    /// Looks `name` up in `PATH` and the sbin directories.
    pub fn find(name: &str) -> Option<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(SBIN.iter().map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
            .map(|path| Self { path })
    }

    /// Runs the tool with `args`, feeding `script` on stdin, inside the network namespace `netns` when given.
    /// The error holds the tool's own message.
    pub fn run(&self, args: &[&str], script: &str, netns: Option<RawFd>) -> Result<(), String> {
        let mut cmd = Command::new(&self.path);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(fd) = netns {
            // SAFETY: `enter` only calls setns(2) on a descriptor the caller keeps open during the call.
            unsafe {
                cmd.pre_exec(move || NetworkNamespace::enter(fd));
            }
        }
        let name = self.path.display();
        let mut child = cmd.spawn().map_err(|e| format!("running {name}: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing to {name}: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for {name}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{name} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_reports_a_failing_script() {
        let sh = Tool::find("sh").unwrap();
        sh.run(&["-s"], "exit 0\n", None).unwrap();
        let e = sh
            .run(&["-s"], "echo nope >&2; exit 3\n", None)
            .unwrap_err();
        assert!(e.contains("-s failed") && e.ends_with("nope"), "{e}");
        assert!(Tool::find("no-such-tool-lmi").is_none());
    }
}
