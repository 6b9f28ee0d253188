//! An environment's link to the host: a veth pair whose host end (`lmi<hex address>`, address `.1` of the
//! environment's /30) stays in the host's namespace and whose other end is `eth0` in the environment's
//! namespace (address `.2`, default route via `.1`). Removing the host end removes the pair.
//!
//! Neither end has IPv6: `eth0` arrives in a namespace whose default turns it off ([`super::netns`]) and the
//! host end has it turned off right after it is made (before any environment can be in the namespace), so
//! neither gets a link-local address and the host's kernel drops any IPv6 packet that arrives on the pair.

use super::{addresses::Link, netns::NetworkNamespace, tools::Tool};

/// Prefix of the host ends' names.
pub const HOST_PREFIX: &str = "lmi";
/// Longest interface name Linux accepts.
const IFNAMSIZ_MAX: usize = 15;

/// A veth pair of one environment.
#[derive(Debug)]
pub struct Veth {
    host_name: String,
}

impl Veth {
    /// The host end's name for the host end's address: the prefix and the address in hex. Unique while
    /// the address is (one /30 per pair), and known before any environment is (pairs are made ahead).
    pub fn host_name_for(host: std::net::Ipv4Addr) -> String {
        let name = format!("{HOST_PREFIX}{:08x}", u32::from(host));
        debug_assert!(name.len() <= IFNAMSIZ_MAX);
        name
    }

    /// Creates the pair with its far end in `ns`, numbers both ends from `link` and routes the namespace's
    /// traffic through the host. On failure nothing is left.
    pub fn create(ip: &Tool, ns: &NetworkNamespace, link: &Link) -> Result<Self, String> {
        let host_name = Self::host_name_for(link.host);
        let host = format!(
            "link add {host_name} type veth peer name eth0 netns {ns}\n\
             addr add {addr}/30 dev {host_name}\n\
             link set {host_name} up\n",
            ns = ns.proc_path().display(),
            addr = link.host,
        );
        let veth = Self { host_name };
        let host_end = ip.run(&["-batch", "-"], &host, None).and_then(|()| {
            super::netns::disable_ipv6(&veth.host_name)
                .map_err(|e| format!("turning IPv6 off on {}: {e}", veth.host_name))
        });
        if let Err(e) = host_end {
            let _ = veth.remove(ip);
            return Err(e);
        }
        let inside = format!(
            "addr add {guest}/30 dev eth0\nlink set eth0 up\nroute add default via {gw}\n",
            guest = link.guest,
            gw = link.host,
        );
        if let Err(e) = ip.run(&["-batch", "-"], &inside, Some(ns.raw_fd())) {
            let _ = veth.remove(ip);
            return Err(e);
        }
        Ok(veth)
    }

    /// The host end's name.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// Deletes the pair (no error if it is already gone).
    pub fn remove(&self, ip: &Tool) -> Result<(), String> {
        remove_link(ip, &self.host_name)
    }
}

/// Deletes a link by name; a link that does not exist is not an error.
pub fn remove_link(ip: &Tool, name: &str) -> Result<(), String> {
    match ip.run(&["-batch", "-"], &format!("link del {name}\n"), None) {
        Ok(()) => Ok(()),
        Err(e) if e.contains("Cannot find device") => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_follow_the_address() {
        let n = Veth::host_name_for(std::net::Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(n, "lmi0ac80001");
        assert!(n.len() <= IFNAMSIZ_MAX);
        let m = Veth::host_name_for(std::net::Ipv4Addr::new(255, 255, 255, 253));
        assert_eq!(m, "lmifffffffd");
    }

    #[test]
    fn neither_end_of_a_pair_has_ipv6() {
        if lmi_testkit::needs_root("creating a veth pair") {
            return;
        }
        let Some(ip) = Tool::find("ip") else {
            lmi_testkit::skip("no ip (tests/setup.sh installs iproute2)");
            return;
        };
        if super::super::netns::ipv6_disabled("default")
            .unwrap()
            .is_none()
        {
            lmi_testkit::skip("this kernel has no IPv6");
            return;
        }
        let net =
            crate::addresses::Subnet::parse(&format!("10.252.{}.0/28", std::process::id() % 250))
                .unwrap();
        let link = crate::addresses::AddressPool::new(net).allocate().unwrap();
        let addr = "127.0.0.1:9001".parse().unwrap();
        let (ns, _listener) = NetworkNamespace::with_listener(addr).unwrap();
        let veth = Veth::create(&ip, &ns, &link).unwrap();
        // The interfaces with an IPv6 address, in the calling thread's namespace.
        let v6_interfaces = || -> Vec<String> {
            std::fs::read_to_string("/proc/thread-self/net/if_inet6")
                .unwrap()
                .lines()
                .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
                .collect()
        };
        // The host end: off, no address (not even link-local).
        assert_eq!(
            super::super::netns::ipv6_disabled(veth.host_name()).unwrap(),
            Some(true)
        );
        assert!(!v6_interfaces().contains(&veth.host_name().to_owned()));
        // Inside: eth0 off and without address, loopback still ::1.
        let fd = ns.raw_fd();
        let inside = std::thread::spawn(move || {
            NetworkNamespace::enter(fd).unwrap();
            (
                super::super::netns::ipv6_disabled("eth0").unwrap(),
                super::super::netns::ipv6_disabled("lo").unwrap(),
                v6_interfaces(),
            )
        })
        .join()
        .unwrap();
        assert_eq!((inside.0, inside.1), (Some(true), Some(false)));
        assert_eq!(inside.2, ["lo"], "only the loopback has an IPv6 address");
        veth.remove(&ip).unwrap();
    }
}
