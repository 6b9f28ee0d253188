//! The systemd notification protocol (`sd_notify`), spoken directly: one datagram per state change to the
//! Unix socket named in `NOTIFY_SOCKET` (a path, or an abstract name starting with '@').

use std::{io, os::unix::net::UnixDatagram};

/// Sends `state` (e.g. "READY=1") when `NOTIFY_SOCKET` is set. Returns whether a message was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &target)?;
    }
    Ok(true)
}

/// Like [`notify`], logging failures instead of returning them (notification is best effort).
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}
