//! A PID namespace per environment, with a tiny init that reaps orphans.
//!
//! Every runtime starts in a PID namespace of its own, so a function sees (in its own `/proc`, see
//! [`super::mounts`]) only the processes of its environment. The namespace holds:
//!
//! - PID 1, `lmi-init`: the agent binary re-executed with [`INIT_ARG`] ([`run_init_if_asked`] must be the
//!   first thing its `main` does). It runs as root in the host's other namespaces, outside the
//!   environment's cgroup (its memory, about 1 MiB of its own, is the agent's), and does two things: it
//!   reaps every orphan reparented to it (the kernel gives a namespace's orphans to its PID 1, not to the host's
//!   init), and it exits as soon as the runtime's main process has exited, which makes the kernel kill
//!   whatever is left in the namespace. Root and non-dumpable, it cannot be signalled or traced by the
//!   function (and its `/proc` entry is hidden from it: `hidepid=invisible`). As a namespace init it only
//!   receives the signals it handles (none) from inside, and only SIGKILL/SIGSTOP from the host.
//! - PID 2, the runtime's main process, **a direct child of the agent**: the agent waits for it (its exact
//!   exit status or signal, as before), signals its process group (SIGTERM on stop), and finds its OOM kills
//!   and its CPU and memory in the environment's cgroup, which the runtime joins before `exec` as before.
//!
//! How: `unshare(CLONE_NEWPID)` only sets the namespace of the caller's *future children*, and only of the
//! calling thread. [`spawn_in_new_namespace`] therefore does it on a short-lived thread of its own (the
//! agent's threads never change namespace), spawns the init there (it becomes PID 1; `posix_spawn`, so the
//! agent's address space is not copied, and the re-exec leaves nothing of it pinned) and then the runtime
//! (PID 2), then tells the init on its stdin that the runtime exists, and its PID in the namespace (read from
//! the host's `/proc/<pid>/status`, `NSpid`: 2, unless something else started in the namespace first, as
//! qemu-user's helper threads do when the agent runs under emulation); the init then watches it through a
//! pidfd. The agent reaps the init when it exits.

use std::{
    ffi::OsStr,
    io::{self, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Stdio,
};

/// The hidden argument that makes the agent binary run as a namespace's init.
pub const INIT_ARG: &str = "__lmi-pid-namespace-init";
/// `argv[0]` of the init, as the host's `ps` shows it.
const INIT_NAME: &str = "lmi-init";
/// The runtime's PID inside its namespace: the second process created there (the agent sends the init the
/// actual one; this when it could not be read).
const RUNTIME_PID: libc::pid_t = 2;

/// Runs the namespace init (and never returns) when this process was started as one; returns at once
/// otherwise. The agent binary calls this first thing in `main`, before any thread or runtime exists.
pub fn run_init_if_asked() {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new(INIT_ARG)) {
        let code = match init() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{INIT_NAME}: {e}");
                1
            }
        };
        std::process::exit(code);
    }
}

/// The init's life: wait for the go byte, watch the runtime, reap orphans until the runtime is gone.
fn init() -> io::Result<()> {
    // SAFETY: prctl and chdir with constant arguments. Not dumpable: nothing but root may trace it; out of
    // the agent's working directory so it keeps nothing busy.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::chdir(c"/".as_ptr());
    }
    let sigchld = sigchld_fd()?;
    // The agent writes the runtime's PID (in decimal, one write) once the runtime is spawned, or closes the
    // pipe when it could not be.
    let mut go = [0u8; 16];
    // SAFETY: read(2) into a valid buffer of its length.
    let n = retry(|| unsafe { libc::read(0, go.as_mut_ptr().cast(), go.len()) })?;
    if n <= 0 {
        return Ok(());
    }
    let runtime_pid = std::str::from_utf8(&go[..n.unsigned_abs()])
        .ok()
        .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        .unwrap_or(RUNTIME_PID);
    // SAFETY: closing our stdin, which nothing else uses.
    unsafe { libc::close(0) };
    // SAFETY: pidfd_open(2) with integer arguments.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, runtime_pid, 0) };
    if raw < 0 {
        // Already gone (and reaped by the agent): nothing is left to watch.
        return match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        };
    }
    // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
    let runtime = unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) };
    loop {
        reap_all();
        let mut fds = [
            libc::pollfd {
                fd: runtime.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on a valid array of two pollfd.
        retry(|| unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } as isize)?;
        if fds[0].revents != 0 {
            // The runtime's main process exited: returning ends the namespace and everything in it.
            return Ok(());
        }
        if fds[1].revents != 0 {
            let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
            // SAFETY: read(2) into a buffer of the size signalfd reads in.
            let _ =
                unsafe { libc::read(sigchld.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
        }
    }
}

/// SIGCHLD blocked and delivered through a descriptor (no handler, no race with `waitpid`).
fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local, zero-initialised set; sigprocmask and signalfd on it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reaps every child that has exited (orphans the namespace gave to its init).
fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return;
    }
}

fn retry(mut call: impl FnMut() -> isize) -> io::Result<isize> {
    loop {
        let r = call();
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Spawns `runtime` as PID 2 of a new PID namespace whose PID 1 is a `lmi-init` (this binary, re-executed;
/// see the module's documentation). Must be called from within a tokio runtime; blocks for the two
/// spawns. On error nothing is left running (an init whose runtime could not start exits at once).
pub fn spawn_in_new_namespace(
    runtime: tokio::process::Command,
) -> io::Result<tokio::process::Child> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("lmi-pidns".into())
            .spawn_scoped(scope, move || {
                let _entered = handle.enter();
                spawn_on_this_thread(runtime, &handle)
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
    })
}

/// The body of [`spawn_in_new_namespace`], on a thread that is thrown away afterwards (its children's PID
/// namespace is changed for good).
fn spawn_on_this_thread(
    mut runtime: tokio::process::Command,
    handle: &tokio::runtime::Handle,
) -> io::Result<tokio::process::Child> {
    // SAFETY: unshare(2) with a constant flag; it changes this thread's future children only.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut init = tokio::process::Command::new("/proc/self/exe");
    // No pre_exec and no working directory: std uses posix_spawn (no copy of the agent's page tables).
    init.arg0(INIT_NAME)
        .arg(INIT_ARG)
        .env_clear()
        .stdin(Stdio::from(go_read))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(false);
    let mut init = init.spawn()?;
    let spawned = runtime.spawn();
    let mut go = std::fs::File::from(go_write);
    if let Ok(child) = &spawned {
        let pid = child.id().and_then(pid_in_namespace).unwrap_or(RUNTIME_PID);
        // A fresh pipe takes a few bytes without blocking, in one piece. Should this fail, the init exits on
        // EOF and the namespace (with the runtime) ends: the supervisor then sees the runtime killed.
        if let Err(e) = go.write_all(pid.to_string().as_bytes()) {
            tracing::warn!(error = %e, "telling the PID namespace's init that its runtime started failed");
        }
    }
    drop(go);
    // The init exits on its own (EOF on its stdin, or its runtime's exit); the agent reaps it.
    handle.spawn(async move {
        match init.wait().await {
            Ok(status) => tracing::debug!(%status, "a PID namespace's init exited"),
            Err(e) => tracing::warn!(error = %e, "waiting for a PID namespace's init failed"),
        }
    });
    spawned
}

/// The PID of host process `pid` in its own (innermost) PID namespace: the last field of `NSpid` in
/// `/proc/<pid>/status`.
fn pid_in_namespace(pid: u32) -> Option<libc::pid_t> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    /// A process's innermost PID is the one it sees for itself.
    #[test]
    fn the_innermost_pid_is_read_from_nspid() {
        assert_eq!(
            super::pid_in_namespace(std::process::id()),
            libc::pid_t::try_from(std::process::id()).ok()
        );
        assert_eq!(super::pid_in_namespace(u32::MAX), None);
    }
}
