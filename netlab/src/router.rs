//! [`Router`]: a namespace that forwards for hosts behind it on
//! 100.64.0.0/10 and masquerades them (nftables) to its outside interface.

use crate::{Netns, Result};

/// A NAT router: a namespace with forwarding on and an nftables masquerade
/// rule for what leaves through its outside interface. Hosts behind it use
/// [`Router::route_via`] for their default route.
#[derive(Debug)]
pub struct Router {
    /// The router's namespace.
    pub netns: Netns,
    /// Its outside interface (towards the "internet" hosts).
    pub outside: String,
}

impl Router {
    /// Turns `netns` into a NAT router that masquerades to `outside`.
    /// Needs `nft` (Debian's `nftables`).
    pub fn masquerade(netns: Netns, outside: &str) -> Result<Router> {
        netns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        netns.exec(&["nft", "add", "table", "ip", "nat"])?;
        netns.exec(&[
            "nft",
            "add",
            "chain",
            "ip",
            "nat",
            "post",
            "{ type nat hook postrouting priority srcnat; }",
        ])?;
        netns.exec(&[
            "nft",
            "add",
            "rule",
            "ip",
            "nat",
            "post",
            "oifname",
            outside,
            "masquerade",
        ])?;
        Ok(Router {
            netns,
            outside: outside.to_string(),
        })
    }

    /// Gives `host` a default route via `gateway` (the router's inside
    /// address on their shared veth).
    pub fn route_via(host: &Netns, gateway: std::net::Ipv4Addr) -> Result<()> {
        host.exec(&["ip", "route", "add", "default", "via", &gateway.to_string()])
            .map(drop)
    }
}
