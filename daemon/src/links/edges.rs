//! What the datapath asks of the links: this node's agreement edges for
//! its node record, the path policy (anonymity and home node), and the
//! graph cache in the state database.

use umbra_config::RouteTarget;
use umbra_config::Terms;
use umbra_routing::graph::{Edge, MAX_EDGES};
use umbra_routing::path::Anonymity;
use umbra_routing::router::RouteTo;

use super::{Links, now_unix};
use crate::db::AgreementState;

impl Links {
    /// This node's agreement edges for its graph record: `[[peer]]` entries
    /// and stored active agreements. An edge counts in the graph only once
    /// the peer lists this node too.
    pub(crate) fn edges(&self) -> Vec<Edge> {
        let mut edges: Vec<Edge> = self
            .config()
            .peers
            .iter()
            .map(|p| edge(p.key.0, p.terms))
            .collect();
        match self.store().agreements() {
            Ok(list) => edges.extend(
                list.iter()
                    .filter(|a| a.state == AgreementState::Active)
                    .map(|a| edge(a.peer_key, a.terms)),
            ),
            Err(e) => tracing::error!("reading agreements: {e:#}"),
        }
        edges.sort_unstable_by_key(|e| e.peer);
        edges.dedup_by_key(|e| e.peer);
        edges.truncate(MAX_EDGES);
        edges
    }

    /// The path policy (docs/architecture.md, "Path selection"): the
    /// anonymity setting, the home node (`[home] key`, or else the first
    /// agreement made), and the destinations with their own setting
    /// (`[[route]]`).
    pub(crate) fn policy(&self) -> Policy {
        let config = self.config();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let to = match r.to {
                    RouteTarget::Key(k) => RouteTo::Key(k.0),
                    RouteTarget::Address(a) => RouteTo::Address(a),
                };
                (to, anonymity(r.anonymity))
            })
            .collect();
        let home = config.home.key.map(|k| k.0).or_else(|| {
            let list = self.store().agreements().ok()?;
            list.iter()
                .filter(|a| a.state == AgreementState::Active)
                .min_by_key(|a| (a.created_unix, a.id))
                .map(|a| a.peer_key)
        });
        Policy {
            anonymity: anonymity(config.anonymity),
            home,
            routes,
        }
    }

    /// The saved graph, if any.
    pub(crate) fn load_graph(&self) -> Option<Vec<u8>> {
        self.store().load_graph().unwrap_or_else(|e| {
            tracing::warn!("reading the graph cache: {e:#}");
            None
        })
    }

    /// Saves the graph.
    pub(crate) fn save_graph(&self, records: &[u8]) {
        if let Err(e) = self.store().save_graph(records, now_unix()) {
            tracing::warn!("saving the graph cache: {e:#}");
        }
    }
}

/// What [`Links::policy`] returns, for the routing core's `set_policy` and
/// `set_routes`.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) anonymity: Anonymity,
    pub(crate) home: Option<[u8; 32]>,
    pub(crate) routes: Vec<(RouteTo, Anonymity)>,
}

fn anonymity(a: umbra_config::Anonymity) -> Anonymity {
    match a {
        umbra_config::Anonymity::Fast => Anonymity::Fast,
        umbra_config::Anonymity::Balanced => Anonymity::Balanced,
        umbra_config::Anonymity::Strong => Anonymity::Strong,
    }
}

/// An agreement edge; its capacity class is log2 of the terms' bytes per
/// second (so 50GiB/30d, about 20 KiB/s, is class 14).
fn edge(peer: [u8; 32], terms: Terms) -> Edge {
    let per_sec = terms.bytes_per_period / terms.period_secs.max(1);
    Edge {
        peer,
        capacity: (u64::BITS - per_sec.leading_zeros()).saturating_sub(1) as u8,
    }
}
