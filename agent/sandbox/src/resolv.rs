//! Name resolution from inside an environment's network namespace. The host's `/etc/resolv.conf` works
//! there unless it names a resolver on the host's loopback (systemd-resolved's stub at 127.0.0.53 on
//! AL2023), which the namespace cannot reach; then environments get the upstream servers systemd-resolved
//! lists in `/run/systemd/resolve/resolv.conf`, bound over `/etc/resolv.conf` in their mount namespace.

use std::path::{Path, PathBuf};

const HOST_RESOLV: &str = "/etc/resolv.conf";
const UPSTREAM_RESOLV: &str = "/run/systemd/resolve/resolv.conf";

/// What environments should use for `/etc/resolv.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolvers {
    /// The host's file works as it is.
    Host,
    /// This text instead.
    Replace(String),
    /// The host's resolver is on its loopback and no upstream list exists: names will not resolve.
    Unreachable,
}

/// Decides from the host's file and, if present, systemd-resolved's upstream list.
pub fn choose(host: &str, upstream: Option<&str>) -> Resolvers {
    if nameservers(host).iter().all(|n| !is_loopback(n)) {
        return Resolvers::Host;
    }
    match upstream {
        Some(u) if !nameservers(u).is_empty() && nameservers(u).iter().all(|n| !is_loopback(n)) => {
            Resolvers::Replace(u.to_owned())
        }
        _ => Resolvers::Unreachable,
    }
}

/// Reads the host's files and, when environments need their own, writes it to `<state_dir>/resolv.conf`
/// (mode 0644) and returns its path.
pub fn prepare(state_dir: &Path) -> std::io::Result<(Resolvers, Option<PathBuf>)> {
    let host = std::fs::read_to_string(HOST_RESOLV).unwrap_or_default();
    let upstream = std::fs::read_to_string(UPSTREAM_RESOLV).ok();
    let choice = choose(&host, upstream.as_deref());
    let path = match &choice {
        Resolvers::Replace(text) => {
            use std::os::unix::fs::PermissionsExt;
            let p = state_dir.join("resolv.conf");
            std::fs::write(&p, text)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
            Some(p)
        }
        Resolvers::Host | Resolvers::Unreachable => None,
    };
    Ok((choice, path))
}

fn nameservers(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_stub_is_replaced_by_the_upstream_list() {
        let stub = "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch ec2.internal\n";
        let up = "nameserver 10.0.0.2\nsearch ec2.internal\n";
        assert_eq!(choose(stub, Some(up)), Resolvers::Replace(up.to_owned()));
        assert_eq!(choose(stub, None), Resolvers::Unreachable);
        assert_eq!(
            choose(stub, Some("nameserver ::1\n")),
            Resolvers::Unreachable
        );
        assert_eq!(choose("nameserver 10.0.0.2\n", None), Resolvers::Host);
        assert_eq!(choose("", None), Resolvers::Host);
    }
}
