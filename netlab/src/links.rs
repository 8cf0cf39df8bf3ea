//! [`Links`]: veth pairs along a graph's edges, and what each node listens
//! on and peers with.

use std::net::Ipv4Addr;

use crate::{Netns, Peer, Result, Veth};

/// Veth pairs along `edges` between `nodes`; edge `i` is on
/// `198.18.(subnet_base + i).0/24`, its first node `.1`, its second `.2`.
#[derive(Debug, Clone)]
pub struct Links {
    /// The edges, as indices into the nodes.
    pub edges: Vec<(usize, usize)>,
    /// One pair per edge.
    pub veths: Vec<Veth>,
    /// Per node: its veth addresses.
    pub listen: Vec<Vec<Ipv4Addr>>,
    /// Per node: (neighbour, the neighbour's address on their veth).
    pub peers: Vec<Vec<(usize, Ipv4Addr)>>,
}

impl Links {
    /// Joins `nodes` along `edges`. `names(a, b)` names the interfaces of
    /// edge `(a, b)` in `a` and in `b`.
    pub fn new(
        nodes: &[Netns],
        edges: &[(usize, usize)],
        subnet_base: u8,
        names: impl Fn(usize, usize) -> (String, String),
    ) -> Result<Links> {
        let n = nodes.len();
        let mut links = Links {
            edges: edges.to_vec(),
            veths: Vec::new(),
            listen: vec![Vec::new(); n],
            peers: vec![Vec::new(); n],
        };
        for (i, &(a, b)) in edges.iter().enumerate() {
            let subnet = subnet_base.wrapping_add(i as u8);
            let (if_a, if_b) = names(a, b);
            let v = Veth::new(
                (&nodes[a], &if_a, crate::internet_ip(subnet, 1)),
                (&nodes[b], &if_b, crate::internet_ip(subnet, 2)),
                24,
            )?;
            links.listen[a].push(v.a.ip);
            links.listen[b].push(v.b.ip);
            links.peers[a].push((b, v.b.ip));
            links.peers[b].push((a, v.a.ip));
            links.veths.push(v);
        }
        Ok(links)
    }

    /// A chain `0 – 1 – … – n-1`.
    pub fn chain(n: usize) -> Vec<(usize, usize)> {
        (1..n).map(|i| (i - 1, i)).collect()
    }

    /// Node `i`'s `[listen] https` entries on `port`.
    pub fn listen_on(&self, i: usize, port: u16) -> Vec<String> {
        self.listen[i]
            .iter()
            .map(|ip| format!("{ip}:{port}"))
            .collect()
    }

    /// Node `i`'s `[[peer]]` entries: each neighbour by its key in `keys`,
    /// at its address and `port`, with `terms`.
    pub fn umbra_peers(
        &self,
        i: usize,
        keys: &[String],
        port: u16,
        terms: Option<&str>,
    ) -> Vec<Peer> {
        self.peers[i]
            .iter()
            .map(|&(j, ip)| Peer::new(&keys[j], format!("{ip}:{port}"), terms))
            .collect()
    }
}

/// The interface names `to-<b>` in `a` and `to-<a>` in `b`, after the
/// node each leads to.
pub fn named_after_peer(names: &[&str]) -> impl Fn(usize, usize) -> (String, String) {
    move |a, b| (format!("to-{}", names[b]), format!("to-{}", names[a]))
}

/// Interface names `to-n<b>` and `to-n<a>`, after the index of the node
/// each leads to.
pub fn numbered(a: usize, b: usize) -> (String, String) {
    (format!("to-n{b}"), format!("to-n{a}"))
}
