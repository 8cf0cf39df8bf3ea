//! Ledgers across many nodes (docs/architecture.md, "Ledgers"), sans-IO:
//! each node's [`Ledgers`] counts the cells of random circuits as they
//! cross its links, exactly as the router calls it, and every link's two
//! sides exchange signed reports.
//!
//! The network: 60 nodes on a random agreement graph. 40 are honest: they
//! originate traffic and relay. 12 are pure relays: they relay and
//! originate nothing. 8 are free riders: they originate as much as an
//! honest node and do nothing else (no circuit passes or ends at one).
//! Circuits take random walks of 2 to 4 relays through honest nodes and
//! pure relays to a random destination.
//!
//! What must hold:
//! - every free rider ends past its debt limit at every neighbour it sent
//!   through (lower priority everywhere);
//! - no pure relay ends in debt over all its agreements: relaying nets out
//!   (and serving as a destination earns);
//! - no honest node (which originates, relays and serves) is past its
//!   debt limit at every neighbour, as free riders are;
//! - every report between two neighbours agrees, and the two sides of
//!   every link mirror each other exactly.

use std::time::Instant;

use umbra_routing::crypto::Identity;
use umbra_routing::ledger::report::Counts;
use umbra_routing::ledger::{
    CELL_BYTES, Classifier, LedgerTerms, Ledgers, REPORT_AFTER_IDLE, Standing,
};
use umbra_tests::sim::topology::{is_connected, ring_with_chords};
use umbra_tests::sim::{Rng, seed};

const NODES: usize = 60;
const FREE_RIDERS: usize = 8;
const PURE_RELAYS: usize = 12;
const CIRCUITS: usize = 30_000;
/// A unix time inside one period.
const T0: u64 = 1_800_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Honest,
    PureRelay,
    FreeRider,
}

struct Node {
    id: Identity,
    kind: Kind,
    ledgers: Ledgers,
    /// Neighbour index → (link id here, cells written to it).
    links: Vec<(usize, u64)>,
    wire: std::collections::HashMap<u64, Counts>,
}

struct Net {
    nodes: Vec<Node>,
    /// Next circuit id each node allocates.
    next_circ: Vec<u32>,
    now: Instant,
}

impl Net {
    fn link_id(&self, a: usize, b: usize) -> u64 {
        self.nodes[a]
            .links
            .iter()
            .find(|(n, _)| *n == b)
            .map(|(_, l)| *l)
            .expect("neighbours")
    }

    /// A cell crosses link a → b on a circuit `creator` (a or b) created.
    fn cross(&mut self, a: usize, b: usize, circ_id: u32) {
        let (la, lb) = (self.link_id(a, b), self.link_id(b, a));
        let now = self.now;
        self.nodes[a].ledgers.count(now, T0, la, circ_id, true);
        let classifier = Classifier::new(&self.nodes[a].id.public(), &self.nodes[b].id.public());
        classifier.count(self.nodes[a].wire.entry(la).or_default(), circ_id);
        self.nodes[b].ledgers.count(now, T0, lb, circ_id, false);
    }

    /// A circuit id `creator` allocates on its link to `other`.
    fn circ_id(&mut self, creator: usize, other: usize) -> u32 {
        self.next_circ[creator] += 1;
        let n = self.next_circ[creator] & 0x7fff_ffff;
        let (c, o) = (
            self.nodes[creator].id.public(),
            self.nodes[other].id.public(),
        );
        if c < o { 0x8000_0000 | n } else { n }
    }

    /// Every due report goes to the other side and is checked there.
    fn exchange(&mut self) -> (usize, usize) {
        self.now += REPORT_AFTER_IDLE;
        let (mut checked, mut agreed) = (0, 0);
        for a in 0..self.nodes.len() {
            while let Some((link, draft)) = self.nodes[a].ledgers.poll_report(self.now, T0) {
                let b = self.nodes[a]
                    .links
                    .iter()
                    .find(|(_, l)| *l == link)
                    .map(|(n, _)| *n)
                    .expect("a link");
                let sent = self.nodes[a].wire.get(&link).copied().unwrap_or_default();
                let bytes = draft.finish(sent, &self.nodes[a].id);
                let lb = self.link_id(b, a);
                let now = self.now;
                self.nodes[b].ledgers.handle_report(now, T0, lb, &bytes);
                while let Some(ev) = self.nodes[b].ledgers.poll_event() {
                    if let umbra_routing::ledger::LedgerEvent::Checked { agreed: ok, .. } = ev {
                        checked += 1;
                        agreed += usize::from(ok);
                    }
                }
            }
        }
        (checked, agreed)
    }
}

fn terms() -> LedgerTerms {
    LedgerTerms {
        amount: 1 << 40,
        period_secs: 30 * 86_400,
        // A debt limit of 1,500 cells: about fifty circuits' worth.
        debt: 1_500 * CELL_BYTES,
        cutoff: 1 << 40,
        carry: 1 << 40,
        circuits_per_sec: 1_000,
    }
}

#[test]
fn free_riders_lose_priority_everywhere_and_relaying_never_leaves_a_node_in_debt() {
    let seed = seed(0x1ed6e5);
    let mut rng = Rng::new(seed);
    let ctx = format!("seed {seed:#x} (replay with UMBRA_SIM_SEED={seed:#x})");
    let edges = ring_with_chords(NODES, 2, &mut rng);
    assert!(is_connected(NODES, &edges));
    let now = Instant::now();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            let id = Identity::from_seed(&rng.bytes32());
            let kind = if i < FREE_RIDERS {
                Kind::FreeRider
            } else if i < FREE_RIDERS + PURE_RELAYS {
                Kind::PureRelay
            } else {
                Kind::Honest
            };
            Node {
                ledgers: Ledgers::new(id.public()),
                id,
                kind,
                links: Vec::new(),
                wire: Default::default(),
            }
        })
        .collect();
    let mut next_link = 0u64;
    for &(a, b) in &edges {
        for (x, y) in [(a, b), (b, a)] {
            next_link += 1;
            nodes[x].links.push((y, next_link));
        }
    }
    for x in 0..NODES {
        let list: Vec<([u8; 32], LedgerTerms)> = nodes[x]
            .links
            .iter()
            .map(|&(y, _)| (nodes[y].id.public(), terms()))
            .collect();
        nodes[x].ledgers.set_terms(&list, now);
        let links = nodes[x].links.clone();
        for (y, l) in links {
            let peer = nodes[y].id.public();
            // Both sides of a link share its session.
            let session = [(x.min(y) * NODES + x.max(y)) as u8; 32];
            nodes[x].ledgers.link_up(l, peer, session, now);
        }
    }
    let mut net = Net {
        next_circ: vec![0; NODES],
        nodes,
        now,
    };
    let originators: Vec<usize> = (0..NODES)
        .filter(|&i| net.nodes[i].kind != Kind::PureRelay)
        .collect();
    let (mut checked, mut agreed) = (0, 0);
    for c in 0..CIRCUITS {
        let origin = originators[rng.index(originators.len())];
        // A random walk through nodes that relay, then one more hop to the
        // destination.
        let hops = 2 + rng.index(3);
        let mut path = vec![origin];
        for _ in 0..hops {
            let here = *path.last().expect("a node");
            let choices: Vec<usize> = net.nodes[here]
                .links
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| net.nodes[*n].kind != Kind::FreeRider && !path.contains(n))
                .collect();
            if choices.is_empty() {
                break;
            }
            path.push(choices[rng.index(choices.len())]);
        }
        let here = *path.last().expect("a node");
        // Free riders only originate: they are no one's destination either
        // (a destination earns what its last relay sends it).
        let ends: Vec<usize> = net.nodes[here]
            .links
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| !path.contains(n) && net.nodes[*n].kind != Kind::FreeRider)
            .collect();
        if !ends.is_empty() {
            path.push(ends[rng.index(ends.len())]);
        }
        if path.len() < 2 {
            continue;
        }
        // Each hop's circuit id, chosen by the node that extends.
        let ids: Vec<u32> = (0..path.len() - 1)
            .map(|h| net.circ_id(path[h], path[h + 1]))
            .collect();
        let forward = 1 + rng.index(40);
        let back = rng.index(forward + 1);
        for _ in 0..forward {
            for h in 0..path.len() - 1 {
                net.cross(path[h], path[h + 1], ids[h]);
            }
        }
        for _ in 0..back {
            for h in (0..path.len() - 1).rev() {
                net.cross(path[h + 1], path[h], ids[h]);
            }
        }
        if c % 500 == 499 {
            let (k, a) = net.exchange();
            checked += k;
            agreed += a;
        }
    }
    let (k, a) = net.exchange();
    checked += k;
    agreed += a;
    assert!(checked > NODES, "only {checked} reports checked; {ctx}");
    assert_eq!(agreed, checked, "every report agrees; {ctx}");

    let mut honest_low = 0;
    let mut honest_agreements = 0;
    for x in 0..NODES {
        let mut low_here = 0;
        let me = net.nodes[x].id.public();
        let mut net_balance = 0i64;
        for &(y, _) in &net.nodes[x].links.clone() {
            let peer = net.nodes[y].id.public();
            let mine = net.nodes[x].ledgers.view(T0, &peer).expect("a ledger");
            let theirs = net.nodes[y].ledgers.view(T0, &me).expect("a ledger");
            assert_eq!(
                mine.record.balance, -theirs.record.balance,
                "the two sides of {x}–{y} mirror each other; {ctx}"
            );
            net_balance += mine.record.balance;
            match net.nodes[x].kind {
                Kind::FreeRider => {
                    // Everyone it sent through sees it past the limit.
                    if theirs.record.relayed_for_peer > 0 {
                        let s = net.nodes[y].ledgers.standing(&me);
                        assert!(
                            matches!(s, Standing::LowPriority | Standing::CutOff),
                            "free rider {x} is {s:?} at {y} (balance {}); {ctx}",
                            theirs.record.balance
                        );
                    }
                }
                Kind::Honest => {
                    honest_agreements += 1;
                    if matches!(
                        net.nodes[y].ledgers.standing(&me),
                        Standing::LowPriority | Standing::CutOff
                    ) {
                        honest_low += 1;
                        low_here += 1;
                    }
                }
                Kind::PureRelay => {}
            }
        }
        if net.nodes[x].kind == Kind::Honest {
            assert!(
                low_here < net.nodes[x].links.len(),
                "honest node {x} has lost priority at every neighbour, as a free rider does; {ctx}"
            );
        }
        if net.nodes[x].kind == Kind::PureRelay {
            assert!(
                net_balance >= 0,
                "pure relay {x} ends {net_balance} bytes in debt over its agreements; {ctx}"
            );
        }
    }
    eprintln!(
        "{checked} reports agreed; honest nodes past the debt limit at {honest_low} of \
         {honest_agreements} neighbours (they originate a little more than they serve: the \
         pure relays are destinations too); {ctx}"
    );
}
