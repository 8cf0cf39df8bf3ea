//! [`Router`]: a namespace that forwards for hosts behind it on
//! 100.64.0.0/10 and translates them (nftables) to its outside interface;
//! [`NatSite`]: a host behind one router of a [`NatKind`], or behind two
//! for carrier-grade NAT (docs/architecture.md, "NAT").
//!
//! What the rulesets give, as measured in these namespaces: `masquerade`
//! maps endpoint independently (one local port shows every destination the
//! same external port, also through two NATs in a row) and filters by
//! address and port; `masquerade random` maps a new port for every
//! destination. Three details make a router behave like a home router:
//! - an `input` chain as well as a `forward` one, since an unsolicited SYN
//!   to the router's own outside address is otherwise answered by the
//!   router's TCP stack with a reset, whatever the forward chain says;
//! - `ct state invalid drop`, since a packet conntrack marks invalid
//!   otherwise leaves the outside interface untranslated;
//! - for reset filtering, a TCP reset first and a drop for everything else.

use std::net::Ipv4Addr;

use crate::{Netns, Result, Veth};

/// How a NAT router maps a host's connections to external ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatMapping {
    /// `masquerade`: the same external port for one local port, whatever
    /// the destination (kept when free).
    EndpointIndependent,
    /// `masquerade random`: a new external port for every destination.
    EndpointDependent,
}

/// What a NAT router does with unsolicited packets from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Drops them silently (the sender times out).
    Drop,
    /// Answers TCP with a reset (the sender is refused at once) and drops
    /// the rest.
    Reset,
}

/// One NAT router's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatRules {
    /// Its mapping.
    pub mapping: NatMapping,
    /// Its filtering of unsolicited inbound packets.
    pub filtering: Filtering,
}

impl NatRules {
    /// The nftables ruleset for a router whose outside interface is
    /// `outside`.
    pub fn ruleset(&self, outside: &str) -> String {
        let map = match self.mapping {
            NatMapping::EndpointIndependent => "masquerade",
            NatMapping::EndpointDependent => "masquerade random",
        };
        let filter = match self.filtering {
            Filtering::Drop => format!("iifname \"{outside}\" drop"),
            Filtering::Reset => format!(
                "iifname \"{outside}\" meta l4proto tcp reject with tcp reset\n    iifname \"{outside}\" drop"
            ),
        };
        format!(
            "table ip nat {{\n  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{outside}\" {map}\n  }}\n}}\n\
             table ip filter {{\n  chain input {{ type filter hook input priority filter; policy accept;\n    ct state established,related accept\n    ct state invalid drop\n    {filter}\n  }}\n\
             \x20 chain forward {{ type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n    ct state invalid drop\n    {filter}\n  }}\n}}\n"
        )
    }
}

/// The NAT a [`NatSite`]'s host sits behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// One router: endpoint-independent mapping, drop filtering.
    Eim,
    /// One router: endpoint-independent mapping, reset filtering.
    EimReset,
    /// One router: endpoint-dependent mapping, drop filtering.
    Edm,
    /// Carrier-grade NAT: a home router (endpoint-independent, drop) behind
    /// a carrier's (the same), with 100.65.0.0/16 (inside 100.64.0.0/10)
    /// between them.
    Cgnat,
}

impl NatKind {
    /// Every kind, for tests that try each.
    pub const ALL: [NatKind; 4] = [
        NatKind::Eim,
        NatKind::EimReset,
        NatKind::Edm,
        NatKind::Cgnat,
    ];

    /// A short name: `eim`, `eim-reset`, `edm`, `cgnat`.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::Eim => "eim",
            NatKind::EimReset => "eim-reset",
            NatKind::Edm => "edm",
            NatKind::Cgnat => "cgnat",
        }
    }

    /// The rules of each router, outermost first.
    pub fn routers(self) -> Vec<NatRules> {
        let rules = |mapping, filtering| NatRules { mapping, filtering };
        use Filtering::{Drop, Reset};
        use NatMapping::{EndpointDependent, EndpointIndependent};
        match self {
            NatKind::Eim => vec![rules(EndpointIndependent, Drop)],
            NatKind::EimReset => vec![rules(EndpointIndependent, Reset)],
            NatKind::Edm => vec![rules(EndpointDependent, Drop)],
            NatKind::Cgnat => vec![
                rules(EndpointIndependent, Drop),
                rules(EndpointIndependent, Drop),
            ],
        }
    }
}

/// A NAT router: a namespace with forwarding on and nftables rules that
/// translate what leaves through its outside interface. Hosts behind it use
/// [`Router::route_via`] for their default route. Its rules go with its
/// namespace.
#[derive(Debug)]
pub struct Router {
    /// The router's namespace.
    pub netns: Netns,
    /// Its outside interface (towards the "internet" hosts).
    pub outside: String,
}

impl Router {
    /// Turns `netns` into a NAT router with `rules` on its outside
    /// interface `outside` (mapping, filtering, and a silent router
    /// itself). Needs `nft`.
    pub fn nat(netns: Netns, outside: &str, rules: NatRules) -> Result<Router> {
        Router::forwarding(&netns)?;
        netns.exec(&["nft", &rules.ruleset(outside)])?;
        Ok(Router {
            netns,
            outside: outside.to_string(),
        })
    }

    /// Turns on IPv4 forwarding in `netns` (off by default in every
    /// namespace), for routers and the "internet" core between hosts.
    pub fn forwarding(netns: &Netns) -> Result<()> {
        netns
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            .map(drop)
    }

    /// Gives `host` a default route via `gateway` (the router's inside
    /// address on their shared veth).
    pub fn route_via(host: &Netns, gateway: Ipv4Addr) -> Result<()> {
        host.exec(&["ip", "route", "add", "default", "via", &gateway.to_string()])
            .map(drop)
    }

    /// The translations the router holds (`conntrack -L -p tcp`), for
    /// test failure messages. Needs `conntrack`.
    pub fn conntrack(&self) -> Result<String> {
        self.netns.exec(&["conntrack", "-L", "-p", "tcp"])
    }
}

/// A host behind NAT, joined to an "internet" namespace:
///
/// - the outermost router's outside interface is `wan` at
///   `198.18.<subnet>.2/24`, the internet side `.1` (which the internet
///   namespace must forward between; see [`Router::forwarding`]);
/// - the host is `100.64.<subnet>.2/24` on `eth0`, its router `.1` on
///   `lan`;
/// - with [`NatKind::Cgnat`], the carrier's `lan` is `100.65.<subnet>.1/24`
///   and the home router's `wan` `100.65.<subnet>.2/24`.
///
/// Everything goes with the namespaces.
#[derive(Debug)]
pub struct NatSite {
    /// The kind.
    pub kind: NatKind,
    /// The routers, outermost first.
    pub routers: Vec<Router>,
    /// The host's namespace.
    pub host: Netns,
    /// The host's address.
    pub host_ip: Ipv4Addr,
    /// The outermost router's outside address: what hosts outside see.
    pub wan_ip: Ipv4Addr,
}

impl NatSite {
    /// Builds a site of `kind` on `subnet` off `internet`, its namespaces
    /// from `netns(tag)` (tags `<kind>-router`, `<kind>-home`,
    /// `<kind>-host`). Needs `nft`.
    pub fn build(
        kind: NatKind,
        internet: &Netns,
        subnet: u8,
        mut netns: impl FnMut(&str) -> Result<Netns>,
    ) -> Result<NatSite> {
        let name = kind.name();
        let wan_ip = crate::internet_ip(subnet, 2);
        let rules = kind.routers();
        let mut routers: Vec<Router> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let ns = netns(&format!(
                "{name}-{}",
                if i == 0 { "router" } else { "home" }
            ))?;
            let (up_ns, up_if, up_ip, my_ip) = match routers.last() {
                None => (
                    internet,
                    format!("nat{subnet}"),
                    crate::internet_ip(subnet, 1),
                    wan_ip,
                ),
                Some(outer) => (
                    &outer.netns,
                    "lan".to_string(),
                    Ipv4Addr::new(100, 65, subnet, 1),
                    Ipv4Addr::new(100, 65, subnet, 2),
                ),
            };
            Veth::new((up_ns, &up_if, up_ip), (&ns, "wan", my_ip), 24)?;
            Router::route_via(&ns, up_ip)?;
            routers.push(Router::nat(ns, "wan", *r)?);
        }
        let host = netns(&format!("{name}-host"))?;
        let host_ip = crate::nat_ip(subnet, 2);
        let gateway = crate::nat_ip(subnet, 1);
        let inner = routers
            .last()
            .ok_or_else(|| crate::Error::Output(format!("{name}: a NAT site needs a router")))?;
        Veth::new((&inner.netns, "lan", gateway), (&host, "eth0", host_ip), 24)?;
        Router::route_via(&host, gateway)?;
        Ok(NatSite {
            kind,
            routers,
            host,
            host_ip,
            wan_ip,
        })
    }

    /// Every router's translations, outermost first, for failure messages.
    pub fn conntrack(&self) -> String {
        self.routers
            .iter()
            .map(|r| {
                format!(
                    "{}:\n{}",
                    r.netns.name(),
                    r.conntrack().unwrap_or_else(|e| e.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_name_the_mapping_and_filtering() {
        let eim = NatRules {
            mapping: NatMapping::EndpointIndependent,
            filtering: Filtering::Drop,
        }
        .ruleset("wan");
        assert!(eim.contains("oifname \"wan\" masquerade\n"), "{eim}");
        assert!(eim.contains("chain input"), "{eim}");
        assert_eq!(eim.matches("ct state invalid drop").count(), 2, "{eim}");
        assert!(!eim.contains("reset"), "{eim}");
        let edm = NatRules {
            mapping: NatMapping::EndpointDependent,
            filtering: Filtering::Reset,
        }
        .ruleset("wan");
        assert!(edm.contains("masquerade random"), "{edm}");
        assert_eq!(edm.matches("reject with tcp reset").count(), 2, "{edm}");
    }

    #[test]
    fn cgnat_is_two_routers() {
        assert_eq!(NatKind::Cgnat.routers().len(), 2);
        for k in NatKind::ALL {
            assert!(!k.routers().is_empty(), "{k:?}");
        }
    }
}
