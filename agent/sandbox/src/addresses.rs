//! The environments' point-to-point networks: the configured private IPv4 network cut into /30s, one per
//! environment (`.1` the host's end of the veth pair, `.2` the environment's), handed out and taken back.

use std::{collections::BTreeSet, net::Ipv4Addr, sync::Mutex};

/// Shortest prefix accepted for the environments' network.
const MIN_PREFIX: u8 = 12;
/// Longest prefix accepted (room for at least four environments).
const MAX_PREFIX: u8 = 28;

/// A private IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    /// Parses and checks `a.b.c.d/len`: aligned, `len` in 12..=28, inside 10/8, 172.16/12, 192.168/16 or
    /// 100.64/10. The error says which rule failed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not of the form a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "prefix /{prefix} must be between /{MIN_PREFIX} and /{MAX_PREFIX}"
            ));
        }
        let base = u32::from(addr);
        let net = Self { base, prefix };
        if base & !net.mask() != 0 {
            return Err(format!(
                "{addr} is not the first address of a /{prefix} network"
            ));
        }
        let private = [
            ("10.0.0.0", 8),
            ("172.16.0.0", 12),
            ("192.168.0.0", 16),
            ("100.64.0.0", 10),
        ]
        .iter()
        .filter_map(|(a, l)| Some(Self::new(a.parse().ok()?, *l)))
        .any(|p| p.prefix <= prefix && p.contains(addr));
        if !private {
            return Err(format!(
                "{text} is not inside a private network (10/8, 172.16/12, 192.168/16, 100.64/10)"
            ));
        }
        Ok(net)
    }

    fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Self {
            base: u32::from(addr),
            prefix,
        }
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// The network's first address.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// True when `addr` is in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == self.base
    }

    /// True when the two networks share an address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = if self.prefix <= other.prefix {
            self
        } else {
            other
        };
        let longer = if std::ptr::eq(shorter, self) {
            other
        } else {
            self
        };
        shorter.contains(Ipv4Addr::from(longer.base))
    }

    /// How many /30s fit.
    pub fn slots(&self) -> u32 {
        1u32 << (30 - u32::from(self.prefix))
    }

    /// The /30 with index `slot`.
    fn link(&self, slot: u32) -> Link {
        let net = self.base + slot * 4;
        Link {
            slot,
            host: Ipv4Addr::from(net + 1),
            guest: Ipv4Addr::from(net + 2),
        }
    }

    /// A network from its address and prefix length (for routes read from the kernel).
    pub fn from_parts(addr: Ipv4Addr, prefix: u8) -> Self {
        let net = Self {
            base: 0,
            prefix: prefix.min(32),
        };
        Self {
            base: u32::from(addr) & net.mask(),
            prefix: net.prefix,
        }
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// One environment's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    slot: u32,
    /// The host's end (the environment's default gateway).
    pub host: Ipv4Addr,
    /// The environment's end.
    pub guest: Ipv4Addr,
}

/// Every environment's network is full.
#[derive(Debug, thiserror::Error)]
#[error("all {0} /30 networks of sandbox.network are in use")]
pub struct AddressesExhausted(pub u32);

/// Hands out the /30s of a [`Subnet`]; never one still held. Round-robin, so that a released /30 is reused
/// as late as possible (connections tracked for an old environment have expired by then).
#[derive(Debug)]
pub struct AddressPool {
    subnet: Subnet,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    in_use: BTreeSet<u32>,
    next: u32,
}

impl AddressPool {
    pub fn new(subnet: Subnet) -> Self {
        Self {
            subnet,
            state: Mutex::new(PoolState::default()),
        }
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The next free /30.
    pub fn allocate(&self) -> Result<Link, AddressesExhausted> {
        let slots = self.subnet.slots();
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..slots {
            let slot = (s.next + i) % slots;
            if s.in_use.insert(slot) {
                s.next = (slot + 1) % slots;
                return Ok(self.subnet.link(slot));
            }
        }
        Err(AddressesExhausted(slots))
    }

    /// Gives a /30 back.
    pub fn release(&self, link: &Link) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_use
            .remove(&link.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_with_the_rule() {
        let n = Subnet::parse("10.200.0.0/16").unwrap();
        assert_eq!(n.to_string(), "10.200.0.0/16");
        assert_eq!(n.slots(), 16_384);
        assert!(n.contains("10.200.255.254".parse().unwrap()));
        assert!(!n.contains("10.201.0.1".parse().unwrap()));
        for (bad, why) in [
            ("10.200.0.0", "a.b.c.d/len"),
            ("10.200.0.x/16", "not an IPv4 address"),
            ("10.200.0.0/x", "not a prefix length"),
            ("10.0.0.0/8", "between /12 and /28"),
            ("10.200.0.0/30", "between /12 and /28"),
            ("10.200.1.0/16", "not the first address"),
            ("8.8.0.0/16", "not inside a private network"),
            ("172.32.0.0/16", "not inside a private network"),
        ] {
            let e = Subnet::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(Subnet::parse("100.64.0.0/16").is_ok());
        assert!(Subnet::parse("192.168.7.0/24").is_ok());
    }

    #[test]
    fn overlap_is_symmetric() {
        let a = Subnet::parse("10.200.0.0/16").unwrap();
        let b = Subnet::from_parts("10.200.3.7".parse().unwrap(), 24);
        let c = Subnet::from_parts("10.0.0.0".parse().unwrap(), 8);
        let d = Subnet::from_parts("10.201.0.0".parse().unwrap(), 16);
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(a.overlaps(&c) && c.overlaps(&a));
        assert!(!a.overlaps(&d) && !d.overlaps(&a));
        assert_eq!(b.to_string(), "10.200.3.0/24");
    }

    #[test]
    fn slots_are_distinct_reused_last_and_bounded() {
        let pool = AddressPool::new(Subnet::parse("192.168.64.0/28").unwrap());
        let a = pool.allocate().unwrap();
        assert_eq!(
            (a.host, a.guest),
            (
                "192.168.64.1".parse().unwrap(),
                "192.168.64.2".parse().unwrap()
            )
        );
        let b = pool.allocate().unwrap();
        assert_eq!(b.host, "192.168.64.5".parse::<Ipv4Addr>().unwrap());
        pool.release(&a);
        let c = pool.allocate().unwrap();
        let d = pool.allocate().unwrap();
        // a's /30 comes back only after the never-used ones
        assert_eq!(c.host, "192.168.64.9".parse::<Ipv4Addr>().unwrap());
        assert_eq!(d.host, "192.168.64.13".parse::<Ipv4Addr>().unwrap());
        let e = pool.allocate().unwrap();
        assert_eq!(e, a);
        assert!(pool.allocate().is_err());
        pool.release(&b);
        assert_eq!(pool.allocate().unwrap(), b);
    }
}
