//! Egress for the environments: IPv4 forwarding on, and one nftables table of the agent's (family `inet`:
//! it sees IPv4 and IPv6 alike) that
//!
//! - masquerades what the environments send out over IPv4 (source address = the host's),
//! - forwards into the environments' network only replies (no environment reaches another, nothing outside
//!   opens a connection to one),
//! - drops what an environment sends to the instance metadata service (the host's credentials) and to the
//!   host itself (so no host service, e.g. a control API on TCP, is reachable from a function),
//! - drops every IPv6 packet that comes from or goes to an environment's veth pair, in and through the host.
//!   Environments have no IPv6 at all (it is off on both ends of each pair: [`super::veth`]); these rules
//!   are the second layer, so that a pair whose IPv6 came back on still reaches nothing.
//!
//! The rules match the whole configured network (and the veth pairs by their name prefix), so an environment
//! adds no rule: creating one costs nothing here and there is nothing of it to remove. The table is replaced
//! atomically at start (a crashed earlier life's table is overwritten, and so is the `ip`-family table of
//! agents before IPv6 was filtered) and deleted at shutdown.

use super::{addresses::Subnet, tools::Tool, veth::HOST_PREFIX};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The EC2 instance metadata service.
const METADATA_SERVICE: &str = "169.254.169.254";

/// The agent's nftables table.
#[derive(Debug)]
pub struct NatTable {
    nft: Tool,
    name: String,
}

impl NatTable {
    /// The table's family: both IPv4 and IPv6.
    pub const FAMILY: &'static str = "inet";

    /// The table's name for an agent instance (its cgroup parent): `lmi_` and the name with every character
    /// nftables does not take in an identifier replaced by `_`.
    pub fn name_for(instance: &str) -> String {
        let clean: String = instance
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("lmi_{clean}")
    }

    /// Turns IPv4 forwarding on and (re)places the table for `network`.
    pub fn install(nft: Tool, instance: &str, network: Subnet) -> Result<Self, String> {
        std::fs::write(IP_FORWARD, "1").map_err(|e| format!("enabling {IP_FORWARD}: {e}"))?;
        let name = Self::name_for(instance);
        nft.run(&["-f", "-"], &ruleset(&name, network), None)?;
        Ok(Self { nft, name })
    }

    /// Deletes the table (no error if it is already gone). Forwarding stays on: other services may rely on it.
    pub fn remove(&self) -> Result<(), String> {
        self.nft.run(&["-f", "-"], &delete_script(&self.name), None)
    }
}

/// Deletes the table of either family (an `ip` one is an older agent's): each is declared first, which makes
/// the delete succeed whether or not it exists.
fn delete_script(name: &str) -> String {
    ["ip", NatTable::FAMILY]
        .iter()
        .map(|family| format!("table {family} {name} {{\n}}\ndelete table {family} {name}\n"))
        .collect()
}

/// The whole table, with whatever an earlier life left deleted first, in one transaction: replaced
/// atomically.
fn ruleset(name: &str, net: Subnet) -> String {
    let family = NatTable::FAMILY;
    let veths = format!("\"{HOST_PREFIX}*\"");
    format!(
        "{delete}\
         table {family} {name} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {net} ip daddr != {net} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname {veths} meta nfproto ipv6 drop\n\
         \t\toifname {veths} meta nfproto ipv6 drop\n\
         \t\tip daddr {net} ct state established,related accept\n\
         \t\tip daddr {net} drop\n\
         \t\tip saddr {net} ip daddr {METADATA_SERVICE} drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname {veths} meta nfproto ipv6 drop\n\
         \t\tip saddr {net} ct state established,related accept\n\
         \t\tip saddr {net} drop\n\
         \t}}\n\
         }}\n",
        delete = delete_script(name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_nft_identifiers() {
        assert_eq!(NatTable::name_for("lmi-agent"), "lmi_lmi_agent");
        assert_eq!(NatTable::name_for("a.b_c9"), "lmi_a_b_c9");
    }

    #[test]
    fn the_ruleset_covers_the_network_and_nothing_per_environment() {
        let r = ruleset("lmi_x", Subnet::parse("10.200.0.0/16").unwrap());
        assert!(r.starts_with(
            "table ip lmi_x {\n}\ndelete table ip lmi_x\ntable inet lmi_x {\n}\ndelete table inet lmi_x\n"
        ));
        assert!(r.contains("\ntable inet lmi_x {\n"));
        assert!(r.contains("ip saddr 10.200.0.0/16 ip daddr != 10.200.0.0/16 masquerade"));
        assert!(r.contains("ip daddr 10.200.0.0/16 drop"));
        assert!(r.contains("ip saddr 10.200.0.0/16 ip daddr 169.254.169.254 drop"));
        assert!(r.contains("type filter hook input"));
        // IPv6 from or to a veth pair is dropped in both hooks, before any accept.
        let input = &r[r.find("chain input").unwrap()..];
        let forward = &r[r.find("chain forward").unwrap()..r.find("chain input").unwrap()];
        for (chain, rules) in [(input, 1), (forward, 2)] {
            let first = chain.lines().nth(2).unwrap_or_default();
            assert!(first.contains("meta nfproto ipv6 drop"), "{chain}");
            assert_eq!(
                chain.matches("\"lmi*\" meta nfproto ipv6 drop").count(),
                rules,
                "{chain}"
            );
        }
    }

    #[test]
    fn the_ruleset_loads_and_the_table_goes_away() {
        if lmi_testkit::needs_root("nftables") {
            return;
        }
        let Some(nft) = Tool::find("nft") else {
            lmi_testkit::skip("no nft (tests/setup.sh installs nftables)");
            return;
        };
        let instance = format!("unit-{}", std::process::id());
        let net = Subnet::parse("10.251.0.0/24").unwrap();
        let nft_ok = |args: &[&str]| {
            std::process::Command::new("nft")
                .args(args)
                .output()
                .unwrap()
                .status
                .success()
        };
        // An older agent's IPv4-only table of the same name is replaced, not left next to the new one.
        let name = NatTable::name_for(&instance);
        assert!(nft_ok(&["add", "table", "ip", &name]));
        // Twice: the second install replaces the first.
        let t = NatTable::install(nft.clone(), &instance, net).unwrap();
        let t2 = NatTable::install(nft.clone(), &instance, net).unwrap();
        assert!(
            !nft_ok(&["list", "table", "ip", &name]),
            "the ip table stayed"
        );
        let listed = std::process::Command::new("nft")
            .args(["list", "table", "inet", &t.name])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert_eq!(text.matches("masquerade").count(), 1, "{text}");
        assert_eq!(text.matches("ipv6 drop").count(), 3, "{text}");
        t.remove().unwrap();
        t2.remove().unwrap();
        assert!(!nft_ok(&["list", "table", "inet", &name]));
    }
}
