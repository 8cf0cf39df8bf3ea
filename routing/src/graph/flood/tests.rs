//! [`GraphCore`] and its messages: unit and property tests.

use super::super::REQUEST_TIMEOUT;
use super::super::message::{KIND_SUMMARY, MESSAGE_VERSION};
use super::*;
use proptest::prelude::*;
use std::time::Duration;

const T0: Time = Time::from_unix_secs(1_700_000_000);
const L: LinkId = LinkId(1);

fn ident(n: u8) -> Identity {
    Identity::from_seed(&[n; 32])
}

fn edge_to(n: u8) -> Edge {
    Edge {
        peer: ident(n).public(),
        capacity: 1,
    }
}

fn core(n: u8, peers: &[u8]) -> GraphCore {
    let edges: Vec<Edge> = peers.iter().map(|&p| edge_to(p)).collect();
    GraphCore::new(ident(n), T0, &edges).expect("core")
}

/// Moves every message between two cores joined by link `L`, advancing
/// time to each due timeout, until both are quiet or `until`. Returns the
/// time reached and the messages moved.
fn exchange(a: &mut GraphCore, b: &mut GraphCore, mut now: Time, until: Time) -> (Time, usize) {
    let mut moved = 0;
    loop {
        let mut any = false;
        while let Some((link, bytes)) = a.poll_transmit() {
            b.handle_message(now, link, &bytes);
            moved += 1;
            any = true;
        }
        while let Some((link, bytes)) = b.poll_transmit() {
            a.handle_message(now, link, &bytes);
            moved += 1;
            any = true;
        }
        if any {
            continue;
        }
        let next = a.poll_timeout().into_iter().chain(b.poll_timeout()).min();
        match next {
            Some(t) if t <= until => {
                now = now.max(t);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
            _ => return (now, moved),
        }
    }
}

fn up(a: &mut GraphCore, b: &mut GraphCore, now: Time) {
    let (ka, kb) = (*a.key(), *b.key());
    a.link_up(now, L, kb);
    b.link_up(now, L, ka);
}

#[test]
fn two_nodes_learn_each_other_and_count_the_edge() {
    let (mut a, mut b) = (core(1, &[2]), core(2, &[1]));
    up(&mut a, &mut b, T0);
    let (_, moved) = exchange(&mut a, &mut b, T0, T0 + Duration::from_secs(1));
    // Two summaries, two requests, one record each way.
    assert_eq!(moved, 6);
    for c in [&a, &b] {
        assert_eq!(c.graph().node_count(), 2);
        assert_eq!(c.graph().edge_count(), 1);
        assert_eq!(c.counters().accepted, 1);
    }
}

#[test]
fn an_edge_change_floods_and_a_second_sync_sends_only_summaries() {
    let (mut a, mut b) = (core(1, &[2]), core(2, &[1]));
    up(&mut a, &mut b, T0);
    let (now, _) = exchange(&mut a, &mut b, T0, T0 + Duration::from_secs(1));
    // b drops the agreement: a learns the new record and the edge is gone.
    assert!(b.set_local_edges(now, &[]).expect("edges"));
    assert!(!b.set_local_edges(now, &[]).expect("same edges"));
    let (now, moved) = exchange(&mut a, &mut b, now, now + Duration::from_secs(1));
    assert_eq!(moved, 1);
    assert_eq!(
        a.graph().get(b.key()).map(|r| r.seq()),
        Some(b.own_record().seq())
    );
    assert_eq!(a.graph().edge_count(), 0);
    // Reconnecting with equal graphs costs the two summaries and nothing else.
    a.link_down(now, L);
    b.link_down(now, L);
    up(&mut a, &mut b, now);
    let (_, moved) = exchange(&mut a, &mut b, now, now + Duration::from_secs(1));
    assert_eq!(moved, 2);
}

#[test]
fn older_records_are_answered_with_ours_and_bad_ones_are_counted() {
    let (mut a, mut b) = (core(1, &[2]), core(2, &[1]));
    up(&mut a, &mut b, T0);
    let (now, _) = exchange(&mut a, &mut b, T0, T0 + Duration::from_secs(1));
    let old_b = b.own_record().clone();
    b.set_local_edges(now, &[edge_to(1), edge_to(3)])
        .expect("edges");
    let (now, _) = exchange(&mut a, &mut b, now, now + Duration::from_secs(1));
    let new_b = b.own_record().clone();
    // Someone replays b's old record to a: a counts it stale and sends the
    // new one back on that link.
    let replay = GraphMessage::Records(vec![old_b.clone()]).encode();
    a.handle_message(now, L, &replay);
    assert_eq!(a.counters().stale, 1);
    a.handle_timeout(now + FLOOD_BATCH_DELAY);
    let (_, bytes) = a.poll_transmit().expect("a answers");
    assert_eq!(
        GraphMessage::decode(&bytes),
        Ok(GraphMessage::Records(vec![new_b.clone()]))
    );

    // A forged newer record: well formed, bad signature.
    let mut forged = new_b.as_bytes().to_vec();
    forged[1 + 32..1 + 32 + 8].copy_from_slice(&(new_b.seq() + 5).to_be_bytes());
    let msg = [
        &[1u8, 1, 0, 1][..],
        &(forged.len() as u16).to_be_bytes(),
        &forged,
    ]
    .concat();
    a.handle_message(now, L, &msg);
    assert_eq!(a.counters().bad_signature, 1);
    assert_eq!(a.graph().get(b.key()).map(|r| r.seq()), Some(new_b.seq()));
    // Garbage, an unknown link, a malformed record.
    a.handle_message(now, L, &[1, 9]);
    a.handle_message(now, LinkId(77), &replay);
    a.handle_message(now, L, &[1, 1, 0, 1, 0, 3, 1, 2, 3]);
    let c = a.counters();
    assert_eq!(
        (c.malformed_message, c.unknown_link, c.malformed_record),
        (1, 1, 1)
    );
}

#[test]
fn a_restarted_node_re_signs_above_its_old_record() {
    let (mut a, mut b) = (core(1, &[2]), core(2, &[1]));
    let later = T0 + Duration::from_secs(10);
    // b re-signs a few times quickly, so its seq runs ahead of the clock.
    for n in 3..8 {
        b.set_local_edges(T0, &[edge_to(1), edge_to(n)])
            .expect("edges");
    }
    up(&mut a, &mut b, T0);
    let (_, _) = exchange(&mut a, &mut b, T0, T0 + Duration::from_secs(1));
    let before = b.own_record().seq();
    // b restarts with its clock 8 s behind: its new first record has a
    // lower seq than the one a holds.
    let mut b2 =
        GraphCore::new(ident(2), later - Duration::from_secs(8), &[edge_to(1)]).expect("b2");
    assert!(b2.own_record().seq() < before);
    a.link_down(later, L);
    up(&mut a, &mut b2, later);
    let (_, _) = exchange(&mut a, &mut b2, later, later + Duration::from_secs(1));
    assert_eq!(b2.counters().own_record_conflict, 1);
    assert!(b2.own_record().seq() > before);
    assert_eq!(
        a.graph().get(b2.key()).map(|r| r.seq()),
        Some(b2.own_record().seq())
    );
}

#[test]
fn records_expire_and_the_own_record_is_refreshed() {
    let (mut a, mut b) = (core(1, &[2]), core(2, &[1]));
    up(&mut a, &mut b, T0);
    let (now, _) = exchange(&mut a, &mut b, T0, T0 + Duration::from_secs(1));
    // b dies. a refreshes its own record every 30 minutes and drops b's
    // after its lifetime.
    b.link_down(now, L);
    let mut t = now;
    let end = T0 + RECORD_LIFETIME + Duration::from_secs(1);
    let first_seq = a.own_record().seq();
    while let Some(next) = a.poll_timeout() {
        if next > end {
            break;
        }
        t = next;
        a.handle_timeout(t);
        if a.graph().get(b.key()).is_some() {
            assert!(t < T0 + RECORD_LIFETIME);
        }
    }
    assert!(t >= T0 + RECORD_LIFETIME);
    assert!(a.graph().get(b.key()).is_none());
    assert_eq!(a.counters().expired_removed, 1);
    assert_eq!(a.graph().node_count(), 1);
    assert!(a.own_record().seq() > first_seq);
    assert!(a.own_record().expiry() > end.unix_secs());
}

#[test]
fn a_large_graph_syncs_in_chunks() {
    // c holds 3,500 records; a fresh node d gets them all through one link.
    let mut c = core(1, &[]);
    let ids: Vec<Identity> = (0..3500u32)
        .map(|i| {
            let mut seed = [9u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            Identity::from_seed(&seed)
        })
        .collect();
    let expiry = (T0 + RECORD_LIFETIME).unix_secs();
    for id in &ids {
        let rec = NodeRecord::sign(id, 1, expiry, 0, &[]).expect("sign");
        c.graph
            .insert(Arc::new(rec), T0, &Ed25519Verifier)
            .expect("insert");
    }
    let mut d = core(2, &[]);
    up(&mut c, &mut d, T0);
    let (_, moved) = exchange(&mut c, &mut d, T0, T0 + Duration::from_secs(1));
    assert_eq!(d.graph().node_count(), 3502);
    // 3 summary chunks from c and 1 from d; a request per chunk each
    // way (3 + 1); the records in 64 kB messages, one of them part-full
    // per request; and d's record.
    let record_msgs = (3501 * (2 + MIN_RECORD_LEN)).div_ceil(MAX_MESSAGE_LEN - 4);
    assert!(moved <= 4 + 4 + record_msgs + 3 + 1, "{moved} messages");
    assert_eq!(d.counters().keys_requested, 3501);
    assert_eq!(d.counters().accepted, 3501);
    // A second sync moves no records.
    c.link_down(T0, L);
    d.link_down(T0, L);
    up(&mut c, &mut d, T0);
    let (_, moved) = exchange(&mut c, &mut d, T0, T0 + Duration::from_secs(1));
    assert_eq!(moved, 6);
    // Import into a restarted d, seeded from its cache.
    let cache = d.export();
    let graph = Graph::import(&cache, T0).expect("import");
    let d2 = core(2, &[]).with_graph(T0, graph);
    assert_eq!(d2.graph().node_count(), 3502);
    assert!(d2.own_record().seq() > d.own_record().seq());
}

use super::super::MIN_RECORD_LEN;

fn summary_of(recs: &[&Arc<NodeRecord>]) -> GraphMessage {
    let mut entries: Vec<([u8; 32], u64)> = recs.iter().map(|r| (*r.key(), r.seq())).collect();
    entries.sort_unstable();
    GraphMessage::Summary(Summary {
        first: true,
        last: true,
        entries,
    })
}

#[test]
fn a_key_is_requested_on_one_link_and_again_when_that_link_fails() {
    let (l1, l2, l3) = (LinkId(1), LinkId(2), LinkId(3));
    let x = core(9, &[]).own_record().clone();
    let mut a = core(1, &[]);
    for (l, n) in [(l1, 2), (l2, 3), (l3, 4)] {
        a.link_up(T0, l, ident(n).public());
    }
    while a.poll_message().is_some() {}
    // Peers on l1 and l2 both hold x; a asks l1 only.
    a.handle(T0, l1, summary_of(&[&x]));
    a.handle(T0, l2, summary_of(&[&x]));
    let sent: Vec<_> = std::iter::from_fn(|| a.poll_message()).collect();
    assert_eq!(sent, vec![(l1, GraphMessage::Request(vec![*x.key()]))]);
    // l1 fails before answering: a asks the next link.
    a.link_down(T0, l1);
    let sent: Vec<_> = std::iter::from_fn(|| a.poll_message()).collect();
    assert_eq!(sent, vec![(l2, GraphMessage::Request(vec![*x.key()]))]);
    // The answer is flooded to l3, not back to l2, whose summary had it.
    a.handle(T0, l2, GraphMessage::Records(vec![x.clone()]));
    a.handle_timeout(T0 + FLOOD_BATCH_DELAY);
    let sent: Vec<_> = std::iter::from_fn(|| a.poll_message()).collect();
    assert_eq!(sent, vec![(l3, GraphMessage::Records(vec![x.clone()]))]);
    assert_eq!(a.counters().keys_requested, 2);
    // A request nobody answers is given up after REQUEST_TIMEOUT.
    let y = core(8, &[]).own_record().clone();
    a.handle(T0, l3, summary_of(&[&x, &y]));
    assert_eq!(
        a.poll_message(),
        Some((l3, GraphMessage::Request(vec![*y.key()])))
    );
    a.handle_timeout(T0 + REQUEST_TIMEOUT);
    assert_eq!(a.counters().requests_expired, 1);
    // Then a later summary may ask again.
    a.handle(T0 + REQUEST_TIMEOUT, l2, summary_of(&[&y]));
    assert_eq!(
        a.poll_message(),
        Some((l2, GraphMessage::Request(vec![*y.key()])))
    );
}

#[test]
fn requests_are_answered_at_once_and_bad_summaries_counted() {
    let mut a = core(1, &[]);
    a.link_up(T0, L, ident(2).public());
    while a.poll_message().is_some() {}
    let request = GraphMessage::Request(vec![*a.key(), [7; 32]]).encode();
    a.handle_message(T0, L, &request);
    assert_eq!(
        a.poll_message(),
        Some((L, GraphMessage::Records(vec![a.own_record().clone()])))
    );
    assert_eq!(a.counters().keys_served, 1);
    let unsorted = [1u8, 2, 3, 0, 2]
        .into_iter()
        .chain([[5u8; 40], [4u8; 40]].concat())
        .collect::<Vec<_>>();
    a.handle_message(T0, L, &unsorted);
    assert_eq!(a.counters().malformed_message, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut a = core(1, &[2]);
        a.link_up(T0, L, ident(2).public());
        a.handle_message(T0, L, &bytes);
        a.handle_timeout(T0 + Duration::from_secs(1));
        while a.poll_transmit().is_some() {}
        if let Ok(msg) = GraphMessage::decode(&bytes) {
            prop_assert_eq!(msg.encode(), bytes);
        }
    }

    #[test]
    fn shaped_messages_never_panic(
        kind in 1u8..4,
        count in 0u16..5,
        body in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = vec![MESSAGE_VERSION, kind];
        if kind == KIND_SUMMARY {
            bytes.push(3);
        }
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&body);
        let mut a = core(1, &[2]);
        a.link_up(T0, L, ident(2).public());
        a.handle_message(T0, L, &bytes);
        let _ = GraphMessage::decode(&bytes);
    }

    #[test]
    fn messages_round_trip(
        n in 0usize..4,
        entries in proptest::collection::btree_map(any::<[u8; 32]>(), any::<u64>(), 0..20),
        first in any::<bool>(),
    ) {
        let recs: Vec<Arc<NodeRecord>> = (0..n)
            .map(|i| Arc::new(NodeRecord::sign(&ident(i as u8), i as u64, 5, 0, &[edge_to(9)]).expect("sign")))
            .collect();
        let m = GraphMessage::Records(recs);
        prop_assert_eq!(GraphMessage::decode(&m.encode()), Ok(m.clone()));
        prop_assert_eq!(m.encode().len(), m.encoded_len());
        let s = GraphMessage::Summary(Summary { first, last: true, entries: entries.into_iter().collect() });
        prop_assert_eq!(GraphMessage::decode(&s.encode()), Ok(s.clone()));
        prop_assert_eq!(s.encode().len(), s.encoded_len());
    }
}
