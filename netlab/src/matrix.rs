//! [`NatMatrix`]: the NAT matrix (docs/architecture.md, "NAT traversal"):
//! pairs of umbra nodes behind every kind of NAT the lab builds, each pair
//! with an agreement that names no endpoint (so it must link by traversal),
//! and two public nodes P and Q that every node has an agreement with (the
//! partners the pairs share, and the two views that classify each NAT).
//!
//! The kinds ([`Site`]): no NAT; endpoint-independent mapping with drop or
//! reset filtering; endpoint-dependent mapping; carrier-grade NAT (two
//! endpoint-independent NATs in a row); and "mapped", an
//! endpoint-dependent router that grants port mappings (miniupnpd). A cell
//! of the matrix is a pair of kinds; a kind paired with itself uses two
//! nodes of that kind behind two routers.
//!
//! Addresses: the internet namespace forwards between `198.18.<n>.0/24`
//! subnets: P on 1, Q on 2, the STUN server the gateways need on 3, and the
//! sites from 11 up. Hosts behind a NAT are `100.64.<n>.2`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::{
    Daemon, NatKind, NatSite, Netns, Peer, Result, Router, StunServer, UmbraConfig, UpnpGateway,
    UpnpOptions, Veth, internet_ip, nat_ip,
};

/// The port every node listens on.
pub const MATRIX_PORT: u16 = 443;

/// The terms of every agreement in the matrix.
pub const MATRIX_TERMS: &str = "1TB/30d";

/// What stands between a matrix node and the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// Nothing.
    Public,
    /// A NAT router of this kind ([`NatSite`]).
    Nat(NatKind),
    /// An endpoint-dependent router that grants port mappings
    /// ([`UpnpGateway`]).
    Mapped,
}

impl Site {
    /// The kinds of the matrix, in its order.
    pub const ALL: [Site; 5] = [
        Site::Public,
        Site::Nat(NatKind::Eim),
        Site::Nat(NatKind::Edm),
        Site::Nat(NatKind::Cgnat),
        Site::Mapped,
    ];

    /// `public`, `eim`, `eim-reset`, `edm`, `cgnat` or `mapped`.
    pub fn name(self) -> &'static str {
        match self {
            Site::Public => "public",
            Site::Nat(k) => k.name(),
            Site::Mapped => "mapped",
        }
    }

    /// The NAT mapping `umbra status` must report behind it.
    pub fn mapping(self) -> &'static str {
        match self {
            Site::Public => "public",
            Site::Nat(NatKind::Edm) | Site::Mapped => "endpoint-dependent",
            Site::Nat(_) => "endpoint-independent",
        }
    }

    fn punchable(self) -> bool {
        matches!(
            self,
            Site::Nat(NatKind::Eim | NatKind::EimReset | NatKind::Cgnat)
        )
    }

    fn dialable(self) -> bool {
        matches!(self, Site::Public | Site::Mapped)
    }
}

/// The link kind a cell must end with: `direct` when either side can be
/// dialed (no NAT, or a port mapping), `punched` when both NATs map
/// endpoint independently, `relayed` otherwise.
pub fn expected_kind(a: Site, b: Site) -> &'static str {
    if a.dialable() || b.dialable() {
        "direct"
    } else if a.punchable() && b.punchable() {
        "punched"
    } else {
        "relayed"
    }
}

/// Every cell of the full matrix: each pair of [`Site::ALL`], the same kind
/// twice included (15), and the endpoint-independent row again with routers
/// that answer unsolicited SYNs with a reset (5).
pub fn full_matrix() -> Vec<(Site, Site)> {
    let mut cells = Vec::new();
    for (i, &a) in Site::ALL.iter().enumerate() {
        for &b in Site::ALL.get(i..).unwrap_or_default() {
            cells.push((a, b));
        }
    }
    let reset = Site::Nat(NatKind::EimReset);
    for b in [
        Site::Public,
        reset,
        Site::Nat(NatKind::Edm),
        Site::Nat(NatKind::Cgnat),
        Site::Mapped,
    ] {
        cells.push((reset, b));
    }
    cells
}

/// One node of the matrix.
#[derive(Debug)]
pub struct MatrixNode {
    /// `p`, `q`, or the site's name and instance (`eim1`, `eim2`, …).
    pub name: String,
    /// Where it sits.
    pub site: Site,
    /// Its address in its namespace (what it listens on).
    pub ip: Ipv4Addr,
    /// Its key, hex.
    pub key: String,
    /// Its overlay address.
    pub address: String,
    /// Its config (peers included), to rewrite and reload.
    pub config: UmbraConfig,
    /// The daemon (not started by [`NatMatrix::build`]).
    pub daemon: Daemon,
    /// The routers in front of it, and its namespace, behind a NAT router.
    pub nat: Option<NatSite>,
    /// Its namespace otherwise.
    own: Option<Netns>,
    /// The mapped site's router and gateway.
    pub gateway: Option<(Netns, UpnpGateway)>,
}

impl MatrixNode {
    /// Its namespace.
    pub fn host(&self) -> &Netns {
        match (&self.nat, &self.own) {
            (Some(s), _) => &s.host,
            (None, Some(ns)) => ns,
            (None, None) => unreachable!("a matrix node has a namespace"),
        }
    }
}

/// One cell: two nodes (indexes into [`NatMatrix::nodes`]) and the link kind
/// they must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The first node.
    pub a: usize,
    /// The second node.
    pub b: usize,
    /// `direct`, `punched` or `relayed`.
    pub expect: &'static str,
}

/// The built matrix: namespaces, routers, gateways and configured daemons.
#[derive(Debug)]
pub struct NatMatrix {
    /// The internet namespace.
    pub inet: Netns,
    /// P and Q first, then the sites' nodes.
    pub nodes: Vec<MatrixNode>,
    /// The cells, in the order asked for.
    pub cells: Vec<Cell>,
    /// The STUN server the gateways need, when there is a mapped site.
    pub stun: Option<(Netns, StunServer)>,
}

/// How to make the matrix's daemons.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    /// The `umbra` binary.
    pub umbra: PathBuf,
    /// Top-level TOML for every node (`anonymity = "fast"`, …).
    pub top: String,
    /// More TOML for every node, after `[listen]` (`[nat] …`).
    pub extra: String,
    /// `RUST_LOG` for the daemons.
    pub log_filter: String,
    /// Whether each cell's pair gets an agreement in its configs (without,
    /// the nodes share only P and Q, for tests that make agreements).
    pub pair_agreements: bool,
}

impl NatMatrix {
    /// Builds the lab for `cells` under `dir`, namespaces from `netns(tag)`:
    /// the internet, P and Q, one site per node the cells need, and every
    /// daemon's config (its identity made with `umbra init`). Needs `nft`,
    /// and `miniupnpd` and `stund` for mapped sites.
    pub fn build(
        cells: &[(Site, Site)],
        dir: &Path,
        options: &MatrixOptions,
        mut netns: impl FnMut(&str) -> Result<Netns>,
    ) -> Result<NatMatrix> {
        let inet = netns("inet")?;
        Router::forwarding(&inet)?;
        // Which nodes: instance 1 of every kind named, and instance 2 of a
        // kind paired with itself.
        let mut wanted: Vec<(Site, u8)> = Vec::new();
        for &(a, b) in cells {
            for (site, n) in [(a, 1), (b, if a == b { 2 } else { 1 })] {
                if !wanted.contains(&(site, n)) {
                    wanted.push((site, n));
                }
            }
        }
        let stun = if wanted.iter().any(|(s, _)| *s == Site::Mapped) {
            let ns = netns("stun")?;
            let v = Veth::internet(&inet, &ns, 3)?;
            Router::route_via(&ns, v.a.ip)?;
            let server = StunServer::start(
                &ns,
                internet_ip(3, 2),
                internet_ip(3, 3),
                &dir.join("stund.log"),
            )?;
            Some((ns, server))
        } else {
            None
        };

        let mut nodes = Vec::new();
        for (name, subnet) in [("p", 1u8), ("q", 2)] {
            let host = netns(name)?;
            let v = Veth::internet(&inet, &host, subnet)?;
            Router::route_via(&host, v.a.ip)?;
            nodes.push(blank_node(
                name,
                Site::Public,
                Some(host),
                v.b.ip,
                dir,
                options,
            )?);
        }
        for (i, &(site, n)) in wanted.iter().enumerate() {
            let subnet = 11 + u8::try_from(i).unwrap_or(u8::MAX - 11);
            let name = format!("{}{n}", site.name());
            let mut node = match site {
                Site::Public => {
                    let host = netns(&name)?;
                    let v = Veth::internet(&inet, &host, subnet)?;
                    Router::route_via(&host, v.a.ip)?;
                    blank_node(&name, site, Some(host), v.b.ip, dir, options)?
                }
                Site::Nat(kind) => {
                    let s = NatSite::build(kind, &inet, subnet, |tag| netns(&format!("{tag}{n}")))?;
                    let mut node = blank_node(&name, site, None, s.host_ip, dir, options)?;
                    node.nat = Some(s);
                    node
                }
                Site::Mapped => {
                    let router = netns(&format!("mapped-router{n}"))?;
                    let host = netns(&name)?;
                    Veth::new(
                        (&inet, &format!("nat{subnet}"), internet_ip(subnet, 1)),
                        (&router, "wan", internet_ip(subnet, 2)),
                        24,
                    )?;
                    Veth::new(
                        (&router, "lan", nat_ip(subnet, 1)),
                        (&host, "eth0", nat_ip(subnet, 2)),
                        24,
                    )?;
                    Router::route_via(&router, internet_ip(subnet, 1))?;
                    Router::route_via(&host, nat_ip(subnet, 1))?;
                    let gw_dir = dir.join(format!("{name}-gateway"));
                    std::fs::create_dir_all(&gw_dir).map_err(crate::Error::io(&gw_dir))?;
                    let Some((_, stun)) = &stun else {
                        return Err(crate::Error::Output(
                            "a mapped site needs the STUN server".into(),
                        ));
                    };
                    let gateway = UpnpGateway::start(
                        &router,
                        "wan",
                        "lan",
                        stun,
                        &gw_dir,
                        UpnpOptions {
                            endpoint_dependent: true,
                            ..UpnpOptions::default()
                        },
                    )?;
                    let mut node =
                        blank_node(&name, site, Some(host), nat_ip(subnet, 2), dir, options)?;
                    node.gateway = Some((router, gateway));
                    node
                }
            };
            node.daemon.env = vec![
                ("RUST_LOG".into(), options.log_filter.clone()),
                ("NO_COLOR".into(), "1".into()),
            ];
            nodes.push(node);
        }

        // Agreements: every node with P and Q (which the node dials), and
        // each cell's pair with no endpoint at all.
        let index = |site: Site, n: u8| {
            let name = format!("{}{n}", site.name());
            nodes.iter().position(|x| x.name == name).unwrap_or(0)
        };
        let cell_list: Vec<Cell> = cells
            .iter()
            .map(|&(a, b)| Cell {
                a: index(a, 1),
                b: index(b, if a == b { 2 } else { 1 }),
                expect: expected_kind(a, b),
            })
            .collect();
        let keys: Vec<String> = nodes.iter().map(|n| n.key.clone()).collect();
        let ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.ip).collect();
        for i in 2..nodes.len() {
            for hub in [0, 1] {
                let to_hub = Peer::new(
                    &keys[hub],
                    format!("{}:{MATRIX_PORT}", ips[hub]),
                    Some(MATRIX_TERMS),
                );
                nodes[i].config.peers.push(to_hub);
                nodes[hub]
                    .config
                    .peers
                    .push(Peer::unreachable(&keys[i], Some(MATRIX_TERMS)));
            }
        }
        for c in cell_list.iter().filter(|_| options.pair_agreements) {
            for (x, y) in [(c.a, c.b), (c.b, c.a)] {
                nodes[x]
                    .config
                    .peers
                    .push(Peer::unreachable(&keys[y], Some(MATRIX_TERMS)));
            }
        }
        for n in &mut nodes {
            n.daemon.rewrite(&n.config)?;
        }
        Ok(NatMatrix {
            inet,
            nodes,
            cells: cell_list,
            stun,
        })
    }

    /// Starts every daemon (P and Q first) without waiting for links.
    pub fn start(&mut self) -> Result<()> {
        for n in &mut self.nodes {
            let ns = match (&n.nat, &n.own) {
                (Some(s), _) => &s.host,
                (None, Some(ns)) => ns,
                (None, None) => continue,
            };
            n.daemon.start(ns)?;
        }
        Ok(())
    }
}

/// A node with its identity made and a config listening on `ip`, no peers
/// yet.
fn blank_node(
    name: &str,
    site: Site,
    own: Option<Netns>,
    ip: Ipv4Addr,
    dir: &Path,
    options: &MatrixOptions,
) -> Result<MatrixNode> {
    let mut config = UmbraConfig::new(&dir.join(name));
    config.top = format!("{}\n", options.top);
    config.listen = Some(vec![format!("{ip}:{MATRIX_PORT}")]);
    config.extra = options.extra.clone();
    let daemon = Daemon::new(&options.umbra, &config)?;
    let id = daemon.init()?;
    Ok(MatrixNode {
        name: name.to_string(),
        site,
        ip,
        key: id.key,
        address: id.address,
        config,
        daemon,
        nat: None,
        own,
        gateway: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_matrix_has_twenty_cells_and_every_kind() {
        let cells = full_matrix();
        assert_eq!(cells.len(), 20);
        for kind in ["direct", "punched", "relayed"] {
            assert!(
                cells.iter().any(|&(a, b)| expected_kind(a, b) == kind),
                "{kind}"
            );
        }
        let (eim, edm) = (Site::Nat(NatKind::Eim), Site::Nat(NatKind::Edm));
        assert_eq!(expected_kind(eim, eim), "punched");
        assert_eq!(expected_kind(edm, edm), "relayed");
        assert_eq!(expected_kind(edm, eim), "relayed");
        assert_eq!(expected_kind(edm, Site::Mapped), "direct");
        assert_eq!(expected_kind(Site::Nat(NatKind::Cgnat), eim), "punched");
    }
}
