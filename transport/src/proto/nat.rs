//! NAT classification (`docs/architecture.md, "NAT"`): what the node's
//! outbound links tell it about the NAT in front of it.
//!
//! Each outbound link reports the local address its TCP connection is bound
//! to and the address the peer's listener saw it come from (the observed
//! address at the start of handshake message 2, `docs/protocol.md, "Link
//! setup"`). Since outbound links bind the node's link port, an
//! endpoint-independent NAT shows every peer the same external endpoint for
//! that port, and an endpoint-dependent one a different endpoint per peer.
//!
//! Pure and total: any list of reports, in any order, gives a class.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// What one live outbound link says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkReport {
    /// The peer's identity key: reports from the same peer count once.
    pub peer: [u8; 32],
    /// This node's end of the TCP connection.
    pub local: SocketAddr,
    /// Where the peer saw the connection come from.
    pub observed: SocketAddr,
}

/// How the NAT in front of the node maps its connections, if there is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mapping {
    /// No translation: peers see one of the node's own addresses.
    Public,
    /// One local port shows the same external address and port to two or
    /// more different peers.
    EndpointIndependent,
    /// One local port shows different external endpoints to different
    /// peers.
    EndpointDependent,
    /// Too few reports to tell (fewer than two peers on one local port),
    /// or reports that contradict each other.
    Unknown,
}

impl Mapping {
    /// `public`, `endpoint-independent`, `endpoint-dependent` or `unknown`,
    /// as `umbra status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mapping::Public => "public",
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::EndpointDependent => "endpoint-dependent",
            Mapping::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classification and the external endpoints it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatClass {
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// The distinct addresses peers saw this node come from, sorted: the
    /// translated ones behind a NAT, the node's own ones when public.
    pub external: Vec<SocketAddr>,
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

/// Classifies the NAT in front of the node from its live outbound links'
/// `reports` and the node's own addresses `local_addrs` (its interfaces'
/// or listeners' addresses; may be empty). The rule:
///
/// - A report is *untranslated* when the observed IP is the IP the link is
///   bound to or one of `local_addrs`. If every report is untranslated
///   (and there is at least one), the node is [`Mapping::Public`].
/// - Otherwise only translated reports count (untranslated ones come from
///   peers inside the same NAT). They are grouped by local port and
///   address family; a peer that saw two different endpoints from one port
///   is left out of that group. A group with two or more peers that all
///   saw the same endpoint is endpoint-independent; one whose peers saw
///   different endpoints is endpoint-dependent.
/// - Groups that disagree, or no group with two peers, give
///   [`Mapping::Unknown`].
pub fn classify(reports: &[LinkReport], local_addrs: &[IpAddr]) -> NatClass {
    let locals: BTreeSet<IpAddr> = local_addrs.iter().copied().map(canonical).collect();
    let reports: BTreeSet<LinkReport> = reports
        .iter()
        .map(|r| LinkReport {
            peer: r.peer,
            local: canonical_addr(r.local),
            observed: canonical_addr(r.observed),
        })
        .collect();
    let (untranslated, translated): (Vec<LinkReport>, Vec<LinkReport>) = reports
        .into_iter()
        .partition(|r| r.observed.ip() == r.local.ip() || locals.contains(&r.observed.ip()));
    let distinct = |rs: &[LinkReport]| -> Vec<SocketAddr> {
        let set: BTreeSet<SocketAddr> = rs.iter().map(|r| r.observed).collect();
        set.into_iter().collect()
    };
    if translated.is_empty() {
        let mapping = if untranslated.is_empty() {
            Mapping::Unknown
        } else {
            Mapping::Public
        };
        return NatClass {
            mapping,
            external: distinct(&untranslated),
        };
    }
    // (local port, IPv4?) -> peer -> the endpoints that peer saw.
    let mut groups: BTreeMap<(u16, bool), BTreeMap<[u8; 32], BTreeSet<SocketAddr>>> =
        BTreeMap::new();
    for r in &translated {
        groups
            .entry((r.local.port(), r.local.is_ipv4()))
            .or_default()
            .entry(r.peer)
            .or_default()
            .insert(r.observed);
    }
    let mut independent = false;
    let mut dependent = false;
    for peers in groups.values() {
        let seen: Vec<SocketAddr> = peers
            .values()
            .filter(|endpoints| endpoints.len() == 1)
            .filter_map(|endpoints| endpoints.first().copied())
            .collect();
        if seen.len() < 2 {
            continue;
        }
        if seen.iter().all(|e| *e == seen[0]) {
            independent = true;
        } else {
            dependent = true;
        }
    }
    let mapping = match (independent, dependent) {
        (true, false) => Mapping::EndpointIndependent,
        (false, true) => Mapping::EndpointDependent,
        _ => Mapping::Unknown,
    };
    NatClass {
        mapping,
        external: distinct(&translated),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    fn report(peer: u8, local: &str, observed: &str) -> LinkReport {
        LinkReport {
            peer: [peer; 32],
            local: addr(local),
            observed: addr(observed),
        }
    }

    #[test]
    fn no_reports_is_unknown() {
        let c = classify(&[], &[]);
        assert_eq!(c.mapping, Mapping::Unknown);
        assert!(c.external.is_empty());
    }

    #[test]
    fn one_translated_report_is_unknown_but_lists_its_endpoint() {
        let c = classify(&[report(1, "100.64.1.2:443", "198.18.11.2:443")], &[]);
        assert_eq!(c.mapping, Mapping::Unknown);
        assert_eq!(c.external, vec![addr("198.18.11.2:443")]);
    }

    #[test]
    fn the_same_endpoint_to_two_peers_is_endpoint_independent() {
        let c = classify(
            &[
                report(1, "100.64.1.2:443", "198.18.11.2:443"),
                report(2, "100.64.1.2:443", "198.18.11.2:443"),
            ],
            &[],
        );
        assert_eq!(c.mapping, Mapping::EndpointIndependent);
        assert_eq!(c.external, vec![addr("198.18.11.2:443")]);
    }

    #[test]
    fn different_ports_to_two_peers_is_endpoint_dependent() {
        let c = classify(
            &[
                report(1, "100.64.1.2:443", "198.18.11.2:37983"),
                report(2, "100.64.1.2:443", "198.18.11.2:14792"),
            ],
            &[],
        );
        assert_eq!(c.mapping, Mapping::EndpointDependent);
        assert_eq!(
            c.external,
            vec![addr("198.18.11.2:14792"), addr("198.18.11.2:37983")]
        );
    }

    #[test]
    fn two_peers_from_two_local_ports_tell_nothing() {
        let c = classify(
            &[
                report(1, "100.64.1.2:443", "198.18.11.2:443"),
                report(2, "100.64.1.2:50000", "198.18.11.2:50000"),
            ],
            &[],
        );
        assert_eq!(c.mapping, Mapping::Unknown);
    }

    #[test]
    fn the_same_peer_twice_counts_once() {
        let r = report(1, "100.64.1.2:443", "198.18.11.2:443");
        assert_eq!(classify(&[r, r], &[]).mapping, Mapping::Unknown);
    }

    #[test]
    fn the_bound_ip_seen_is_public() {
        let c = classify(&[report(1, "198.18.1.2:443", "198.18.1.2:443")], &[]);
        assert_eq!(c.mapping, Mapping::Public);
        assert_eq!(c.external, vec![addr("198.18.1.2:443")]);
    }

    #[test]
    fn an_own_address_seen_is_public() {
        // Bound to the unspecified address (a report the kernel would not
        // give, but the rule must still hold) and seen at a local address.
        let c = classify(
            &[report(1, "0.0.0.0:443", "198.18.1.2:443")],
            &["198.18.1.2".parse().expect("ip")],
        );
        assert_eq!(c.mapping, Mapping::Public);
    }

    #[test]
    fn ipv4_mapped_addresses_compare_as_ipv4() {
        let c = classify(
            &[report(1, "[::ffff:198.18.1.2]:443", "198.18.1.2:443")],
            &[],
        );
        assert_eq!(c.mapping, Mapping::Public);
        assert_eq!(c.external, vec![addr("198.18.1.2:443")]);
    }

    #[test]
    fn peers_inside_the_nat_do_not_hide_it() {
        let c = classify(
            &[
                report(1, "100.64.1.2:443", "198.18.11.2:443"),
                report(2, "100.64.1.2:443", "198.18.11.2:443"),
                report(3, "100.64.1.2:443", "100.64.1.2:443"),
            ],
            &[],
        );
        assert_eq!(c.mapping, Mapping::EndpointIndependent);
        assert_eq!(c.external, vec![addr("198.18.11.2:443")]);
    }

    #[test]
    fn groups_that_disagree_are_unknown() {
        let c = classify(
            &[
                report(1, "100.64.1.2:443", "198.18.11.2:443"),
                report(2, "100.64.1.2:443", "198.18.11.2:443"),
                report(1, "100.64.1.2:50000", "198.18.11.2:1000"),
                report(2, "100.64.1.2:50000", "198.18.11.2:2000"),
            ],
            &[],
        );
        assert_eq!(c.mapping, Mapping::Unknown);
    }

    #[test]
    fn a_peer_that_saw_two_endpoints_is_left_out() {
        let c = classify(
            &[
                report(1, "100.64.1.2:443", "198.18.11.2:443"),
                report(1, "100.64.1.2:443", "198.18.11.2:444"),
                report(2, "100.64.1.2:443", "198.18.11.2:443"),
            ],
            &[],
        );
        assert_eq!(c.mapping, Mapping::Unknown);
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            // Few distinct values, so reports collide and share ports.
            (0u8..3, 0u16..3).prop_map(|(h, p)| SocketAddr::from(([100, 64, 0, h], 443 + p))),
        ]
    }

    fn any_report() -> impl Strategy<Value = LinkReport> {
        (0u8..4, any_addr(), any_addr()).prop_map(|(peer, local, observed)| LinkReport {
            peer: [peer; 32],
            local,
            observed,
        })
    }

    proptest! {
        #[test]
        fn total_and_independent_of_order(
            reports in proptest::collection::vec(any_report(), 0..12),
            locals in proptest::collection::vec(any_addr().prop_map(|a| a.ip()), 0..3),
            seed in any::<u64>(),
        ) {
            let c = classify(&reports, &locals);
            let mut shuffled = reports.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed | 1;
            for i in (1..shuffled.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                shuffled.swap(i, (s % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(&classify(&shuffled, &locals), &c);
            // The endpoints listed are sorted, distinct and all observed.
            prop_assert!(c.external.windows(2).all(|w| w[0] < w[1]));
            for e in &c.external {
                prop_assert!(reports.iter().any(|r| canonical_addr(r.observed) == *e));
            }
            if reports.is_empty() {
                prop_assert_eq!(c.mapping, Mapping::Unknown);
            }
        }

        #[test]
        fn a_modelled_nat_is_recognised(
            peers in 2usize..6,
            port in 1024u16..,
            external_port in 1024u16..,
            dependent in any::<bool>(),
        ) {
            // An endpoint-independent NAT maps the port once; a dependent
            // one gives every peer its own external port.
            let reports: Vec<LinkReport> = (0..peers)
                .map(|i| LinkReport {
                    peer: [i as u8; 32],
                    local: SocketAddr::from(([100, 64, 1, 2], port)),
                    observed: SocketAddr::from((
                        [198, 18, 11, 2],
                        if dependent { external_port.wrapping_add(i as u16) } else { external_port },
                    )),
                })
                .collect();
            let c = classify(&reports, &[]);
            let want = if dependent { Mapping::EndpointDependent } else { Mapping::EndpointIndependent };
            prop_assert_eq!(c.mapping, want);
            prop_assert_eq!(c.external.len(), if dependent { peers } else { 1 });
        }
    }
}
