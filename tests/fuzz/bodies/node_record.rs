//! The body of the `node_record` fuzz target (cargo-fuzz,
//! `fuzz_targets/node_record.rs`) and of its property-test twin
//! (`tests/fuzz/twins.rs`, run by the normal suite as `fuzz_twins`). It
//! depends only on `umbra-routing`, so both can include it by path.
//!
//! Arbitrary bytes go everywhere a graph parser meets bytes from outside:
//! as one node record, as a graph message (both decoders), as what a link
//! delivers to the graph core (the lazy flood path), and as a graph cache
//! read back from the state database. Every parser is total; what decodes
//! is canonical (re-encodes to the same bytes); and records that decode
//! build a graph whose queries do not panic.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use umbra_routing::Identity;
use umbra_routing::graph::{
    Edge, Graph, GraphCore, GraphMessage, LinkId, NodeRecord, RecordVerifier, Time,
};

/// The fuzzed node's clock: 2025-06-15, as the simulation's.
const NOW: Time = Time::from_unix_secs(1_750_000_000);
const LINK: LinkId = LinkId(1);

/// Takes every signature as valid, so that structurally valid records get
/// into a graph (a fuzzer cannot forge Ed25519; the signature check itself
/// is tested on its own).
struct AcceptAll;

impl RecordVerifier for AcceptAll {
    fn verify(&self, _record: &NodeRecord) -> bool {
        true
    }
}

fn check_record(bytes: &[u8]) -> Option<NodeRecord> {
    let peeked = NodeRecord::peek(bytes);
    let rec = NodeRecord::decode(bytes).ok()?;
    assert_eq!(rec.as_bytes(), bytes, "a decoded record is canonical");
    assert_eq!(rec.encoded_len(), bytes.len());
    assert_eq!(peeked.ok(), Some((*rec.key(), rec.seq())));
    assert_eq!(rec.edges().count(), rec.edge_count());
    let mut prev: Option<[u8; 32]> = None;
    for e in rec.edges() {
        assert_ne!(&e.peer, rec.key(), "no edge to itself");
        assert!(prev.is_none_or(|p| p < e.peer), "edges sorted, unique");
        assert_eq!(rec.lists(&e.peer), Some(e.capacity));
        prev = Some(e.peer);
    }
    let _ = rec.verify_signature();
    Some(rec)
}

/// Puts `records` in a graph (signatures taken as valid) and asks it
/// everything path selection asks.
fn check_graph(records: Vec<Arc<NodeRecord>>) {
    let mut g = Graph::new();
    for rec in records {
        let _ = g.insert(rec, NOW, &AcceptAll);
    }
    let edges = g.counted_edges();
    assert_eq!(edges.len(), g.edge_count());
    let keys: Vec<[u8; 32]> = g.records().map(|r| *r.key()).collect();
    for (a, b) in &edges {
        assert!(g.edge(a, b).is_some() && g.edge(b, a).is_some());
    }
    for a in keys.iter().take(4) {
        let _ = g.neighbours(a);
        for b in keys.iter().take(4) {
            if let Some(path) = g.shortest_path(a, b) {
                assert_eq!((path.first(), path.last()), (Some(a), Some(b)));
                for w in path.windows(2) {
                    assert!(g.edge(&w[0], &w[1]).is_some(), "paths follow edges");
                }
            }
        }
    }
    let back = Graph::import_with(&g.export(), NOW, &AcceptAll).map(|(g, _)| g.node_count());
    assert_eq!(back, Ok(g.node_count()), "a graph cache reads back");
}

/// The whole target.
pub(crate) fn node_record(data: &[u8]) {
    // One record.
    if let Some(rec) = check_record(data) {
        check_graph(vec![Arc::new(rec)]);
    }

    // A graph message, through the eager decoder.
    if let Ok(msg) = GraphMessage::decode(data) {
        assert_eq!(msg.encode(), data, "a decoded message is canonical");
        assert_eq!(msg.encoded_len(), data.len());
        if let GraphMessage::Records(recs) = msg {
            for r in &recs {
                assert!(check_record(r.as_bytes()).is_some());
            }
            check_graph(recs);
        }
    }

    // What a link delivers to the graph core: the lazy flood path, which
    // peeks, drops duplicates and decodes only what is new.
    // Deriving the key pair is most of a run's cost; do it once.
    static IDENTITIES: OnceLock<(Identity, [u8; 32])> = OnceLock::new();
    let (own, peer) = IDENTITIES.get_or_init(|| {
        (
            Identity::from_seed(&[1; 32]),
            Identity::from_seed(&[2; 32]).public(),
        )
    });
    let peer = *peer;
    let edges = [Edge { peer, capacity: 1 }];
    if let Ok(mut core) = GraphCore::new(own.clone(), NOW, &edges) {
        core.link_up(NOW, LINK, peer);
        while core.poll_transmit().is_some() {}
        core.handle_message(NOW, LINK, data);
        core.handle_timeout(NOW + Duration::from_secs(61));
        while core.poll_transmit().is_some() {}
    }

    // A graph cache from the state database.
    if let Ok((g, _)) = Graph::import_with(data, NOW, &AcceptAll) {
        let records: Vec<Arc<NodeRecord>> = g.records().cloned().collect();
        check_graph(records);
    }
}
