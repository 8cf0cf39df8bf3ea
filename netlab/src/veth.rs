//! [`Veth`]: a veth pair between two namespaces, with an address on each end.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Netns, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One end of a [`Veth`] pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// Its namespace's name.
    pub netns: String,
    /// The interface's name (inside that namespace).
    pub iface: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// A veth pair joining two namespaces, both ends up and addressed. It goes
/// away with either namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Veth {
    /// The first end.
    pub a: End,
    /// The second end.
    pub b: End,
}

/// `198.18.<subnet>.<host>`: an "internet" address (RFC 2544 benchmarking
/// space, 198.18.0.0/15, never routed).
pub fn internet_ip(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, host)
}

/// `100.64.<subnet>.<host>`: an address behind a NAT (RFC 6598 shared
/// space, 100.64.0.0/10).
pub fn nat_ip(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, subnet, host)
}

impl Veth {
    /// Joins `a` and `b` on `198.18.<subnet>.0/24`: `a` gets `.1`, `b` gets
    /// `.2`. The interfaces get names unique in this process.
    pub fn internet(a: &Netns, b: &Netns, subnet: u8) -> Result<Veth> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Veth::new(
            (a, &format!("veth{n}a"), internet_ip(subnet, 1)),
            (b, &format!("veth{n}b"), internet_ip(subnet, 2)),
            24,
        )
    }

    /// Joins `a.0` and `b.0` with interfaces named `a.1` and `b.1`
    /// (at most 15 bytes; made directly inside their namespaces, so
    /// nothing appears in the host's) and addresses `a.2`, `b.2` on a
    /// `/prefix_len`.
    pub fn new(
        a: (&Netns, &str, Ipv4Addr),
        b: (&Netns, &str, Ipv4Addr),
        prefix_len: u8,
    ) -> Result<Veth> {
        let (ns_a, if_a, ip_a) = a;
        let (ns_b, if_b, ip_b) = b;
        crate::registry::making(|_| {
            crate::sh(&[
                "ip",
                "link",
                "add",
                if_a,
                "netns",
                ns_a.name(),
                "type",
                "veth",
                "peer",
                "name",
                if_b,
                "netns",
                ns_b.name(),
            ])
        })?;
        for (ns, iface, ip) in [(ns_a, if_a, ip_a), (ns_b, if_b, ip_b)] {
            let cidr = format!("{ip}/{prefix_len}");
            ns.exec(&["ip", "addr", "add", &cidr, "dev", iface])?;
            ns.exec(&["ip", "link", "set", iface, "up"])?;
        }
        let end = |ns: &Netns, iface: &str, ip| End {
            netns: ns.name().to_string(),
            iface: iface.to_string(),
            ip,
            prefix_len,
        };
        Ok(Veth {
            a: end(ns_a, if_a, ip_a),
            b: end(ns_b, if_b, ip_b),
        })
    }

    /// The two addresses as text, `a`'s first.
    pub fn ips(&self) -> (String, String) {
        (self.a.ip.to_string(), self.b.ip.to_string())
    }
}
