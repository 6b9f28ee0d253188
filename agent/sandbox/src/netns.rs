//! An environment's network namespace, created by the agent and kept alive by a file descriptor, with the
//! environment's Runtime API listener bound on its loopback.
//!
//! The namespace is made on a dedicated, short-lived thread: `unshare(CLONE_NEWNET)` moves only that thread,
//! which brings the loopback up, binds the listener (a socket belongs to the namespace it was created in, for
//! life) and ends. The agent's other threads, and the async runtime's pooled threads, never change namespace.
//! The runtime joins the namespace with `setns` between `fork` and `exec` ([`NetworkNamespace::enter`]).
//!
//! IPv6 is off for every interface that later enters the namespace (its `default` configuration has
//! `disable_ipv6 = 1`, which a moved-in veth end takes): the environment's `eth0` gets no address, not even a
//! link-local one, so nothing on the host's side of the pair is reachable over IPv6. The namespace's own
//! loopback keeps `::1` (it reaches only the namespace).

use std::{
    fs::File,
    io,
    net::{SocketAddrV4, TcpListener},
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::PathBuf,
};

use nix::sched::CloneFlags;

/// A network namespace held open by the agent.
#[derive(Debug)]
pub struct NetworkNamespace {
    fd: OwnedFd,
}

impl NetworkNamespace {
    /// Creates a namespace, brings its loopback up and binds a non-blocking TCP listener to `addr` in it.
    pub fn with_listener(addr: SocketAddrV4) -> io::Result<(Self, TcpListener)> {
        std::thread::Builder::new()
            .name("lmi-netns".to_owned())
            .spawn(move || -> io::Result<(Self, TcpListener)> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                let fd = OwnedFd::from(File::open("/proc/thread-self/ns/net")?);
                // Net sysctls are those of the calling thread's namespace: this one's.
                disable_ipv6("default")?;
                loopback_up()?;
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok((Self { fd }, listener))
            })?
            .join()
            .map_err(|_| io::Error::other("the network namespace thread panicked"))?
    }

    /// The descriptor a child passes to [`NetworkNamespace::enter`].
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A path through which other programs (`ip … netns <path>`) can open the namespace.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }

    /// Moves the calling (single-threaded, forked) process into the namespace of `fd`. Async-signal-safe.
    pub fn enter(fd: RawFd) -> io::Result<()> {
        // SAFETY: setns(2) on a descriptor the parent keeps open until the child has exec'd.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Sets `net.ipv6.conf.<conf>.disable_ipv6 = 1` in the calling thread's network namespace (`conf` an
/// interface name, `default` or `all`). A kernel without IPv6 has no such file: nothing to disable.
pub fn disable_ipv6(conf: &str) -> io::Result<()> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
    std::fs::write(&path, "1").map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// Reads `net.ipv6.conf.<conf>.disable_ipv6` of the calling thread's namespace (None without IPv6).
pub fn ipv6_disabled(conf: &str) -> io::Result<Option<bool>> {
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"))?;
    Ok(Some(text.trim() == "1"))
}

/// Sets IFF_UP on `lo` of the calling thread's namespace (a new namespace's loopback is down, without
/// 127.0.0.1).
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills `ifr_ifru.ifru_flags` of a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just wrote the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Reads the inode of a namespace link, which identifies the namespace.
    fn ns_id(path: &str) -> String {
        std::fs::read_link(path).unwrap().display().to_string()
    }

    #[test]
    fn the_listener_lives_in_its_own_namespace_and_the_caller_stays_home() {
        if lmi_testkit::needs_root("creating a network namespace") {
            return;
        }
        let home = ns_id("/proc/thread-self/ns/net");
        let addr: SocketAddrV4 = "127.0.0.1:9001".parse().unwrap();
        let (a, la) = NetworkNamespace::with_listener(addr).unwrap();
        // A second namespace binds the same address: the two loopbacks are distinct.
        let (b, lb) = NetworkNamespace::with_listener(addr).unwrap();
        assert_eq!(ns_id("/proc/thread-self/ns/net"), home);
        assert_ne!(
            ns_id(&a.proc_path().display().to_string()),
            ns_id(&b.proc_path().display().to_string())
        );
        // A child that enters A connects to A's listener, not B's.
        let fd = a.raw_fd();
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "import socket; s = socket.create_connection(('127.0.0.1', 9001), 5); s.sendall(b'hi-a')",
        ]);
        // SAFETY: enter only calls setns(2).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                NetworkNamespace::enter(fd)
            });
        }
        assert!(cmd.status().unwrap().success());
        la.set_nonblocking(false).unwrap();
        let (mut conn, _) = la.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hi-a");
        lb.set_nonblocking(true).unwrap();
        assert_eq!(
            lb.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "B saw A's connection"
        );
    }
}
