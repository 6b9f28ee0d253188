//! The host's IPv4 routes (`/proc/net/route`), to refuse an environments' network that overlaps one the host
//! already uses, and to find veth pairs an earlier life of the agent left behind.

use std::net::Ipv4Addr;

use super::addresses::Subnet;

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dev: String,
    pub network: Subnet,
}

/// Reads the main routing table; default routes (prefix 0) are left out: they overlap everything.
pub fn host_routes() -> std::io::Result<Vec<Route>> {
    Ok(parse(&std::fs::read_to_string("/proc/net/route")?))
}

fn parse(text: &str) -> Vec<Route> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, mask) = (f.first()?, f.get(1)?, f.get(7)?);
            // Hex in host byte order (little-endian on the machines the agent runs on).
            let dest = u32::from_str_radix(dest, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(mask, 16).ok()?.swap_bytes();
            let prefix = u8::try_from(mask.count_ones()).ok()?;
            (prefix > 0).then(|| Route {
                dev: (*dev).to_owned(),
                network: Subnet::from_parts(Ipv4Addr::from(dest), prefix),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_and_defaults_skipped() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    lmiab\t0000C80A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n";
        let r = parse(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].dev, "eth0");
        assert_eq!(r[0].network.to_string(), "192.0.2.0/24");
        assert_eq!(r[1].network.to_string(), "10.200.0.0/30");
    }

    #[test]
    fn the_real_table_parses() {
        // Loopback-only hosts have no route in the main table; anything read must be well formed.
        for r in host_routes().unwrap() {
            assert!(!r.dev.is_empty());
        }
    }
}
