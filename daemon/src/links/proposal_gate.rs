//! What a node does with a proposal another node sends it (docs/protocol.md,
//! "Proposals", receiver rules), without I/O: the rate limits, the ids seen,
//! the order of the checks and what each outcome is counted as. The daemon
//! (`proposals.rs`) feeds it what arrived and the facts from its database,
//! and does what it decides.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use umbra_transport::proto::proposal::{Proposal, ProposalId, Refusal, terms_valid};

/// Proposals one node may send this node at once. An operator proposes by
/// hand, once or twice; three covers a retry after a typo.
pub(crate) const PER_NODE_BURST: u32 = 3;
/// After the burst, one more proposal from the same node every so long: at
/// most 6 an hour, 144 a day, far above anyone's need, while each one costs
/// this node a signature check and at most one row.
pub(crate) const PER_NODE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Proposals from all nodes together at once: keys cost nothing to make, so
/// a per-node limit alone does not bound the work.
pub(crate) const ALL_BURST: u32 = 30;
/// After that burst, one more proposal from anyone every so long (180 an
/// hour).
pub(crate) const ALL_EVERY: Duration = Duration::from_secs(20);
/// Nodes whose rate this node tracks; past this, the one heard from least
/// recently is forgotten (it starts with a full burst again).
pub(crate) const NODES_TRACKED_MAX: usize = 4096;
/// Proposal ids remembered, with the answer each got, to drop repeats.
pub(crate) const IDS_REMEMBERED_MAX: usize = 4096;
/// A repeat of a proposal is answered again (its answer may have been lost)
/// at most this often.
pub(crate) const ANSWER_AGAIN_EVERY: Duration = Duration::from_secs(2);
/// Incoming proposals that may wait for the operator at once; past this,
/// new ones are refused as busy (a node's newer proposal still replaces its
/// own).
pub(crate) const PENDING_INCOMING_MAX: usize = 32;
/// The longest a node keeps a proposal pending, from its arrival, whatever
/// its expiry says.
pub(crate) const HOLD_MAX: Duration = Duration::from_secs(30 * 86_400);

/// A token bucket: `burst` tokens, one more every `every`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The sender was told it is rate-limited since the bucket last had a
    /// token.
    told: bool,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            at: now,
            told: false,
        }
    }

    fn refill(&mut self, burst: u32, every: Duration, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / every.as_secs_f64();
        self.tokens = (self.tokens + gained).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.told = false;
        }
    }

    fn has_token(&self) -> bool {
        self.tokens >= 1.0
    }
}

/// What to do with a proposal before its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Go on with the checks.
    Go,
    /// This id was seen already: drop it; send `Some` answer again (the
    /// last one it got, which may have been lost).
    Repeat(Option<Vec<u8>>),
    /// Over a rate: drop it; `tell` says to answer it with a
    /// [`Refusal::RateLimited`] (the first time since the sender's bucket
    /// ran dry).
    Limited {
        /// Whether to answer.
        tell: bool,
    },
}

/// Why a proposal was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// It does not decode.
    Malformed,
    /// Its signatures do not verify, its signer is not the session's peer,
    /// or it is for another node; for an answer: the same, or no proposal
    /// of ours has its id.
    Forged,
    /// A repeat of a proposal or answer seen already.
    Duplicate,
}

/// What the daemon's database says when a proposal is judged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts {
    /// `[agreements] proposals`.
    pub(crate) enabled: bool,
    /// The wall clock (unix seconds).
    pub(crate) now_unix: u64,
    /// The proposer has an active agreement with this node, or is a
    /// `[[peer]]`.
    pub(crate) partner: bool,
    /// Incoming proposals pending now.
    pub(crate) pending_incoming: usize,
    /// The proposer has a pending proposal here, which this one replaces.
    pub(crate) replaces: bool,
}

/// The outcome of [`judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// Drop it, unanswered.
    Drop(Dropped),
    /// Answer it with this refusal.
    Refuse(Refusal),
    /// Keep it for the operator until `expiry_unix`.
    Keep {
        /// Its expiry, at most [`HOLD_MAX`] from now.
        expiry_unix: u64,
    },
}

/// Judges a proposal `from` sent this node `me`, in the order
/// docs/protocol.md gives: the sender and the signatures, then the node's
/// rules.
pub(crate) fn judge(p: &Proposal, me: &[u8; 32], from: &[u8; 32], facts: &Facts) -> Judgement {
    if p.proposer != *from || p.target != *me || !p.verify() {
        return Judgement::Drop(Dropped::Forged);
    }
    if !facts.enabled {
        return Judgement::Refuse(Refusal::Disabled);
    }
    if p.expiry_unix <= facts.now_unix || p.expiry_unix <= p.created_unix {
        return Judgement::Refuse(Refusal::Expired);
    }
    if !terms_valid(p.bytes_per_period, p.period_secs) {
        return Judgement::Refuse(Refusal::BadTerms);
    }
    if facts.partner {
        return Judgement::Refuse(Refusal::AlreadyPartner);
    }
    if facts.pending_incoming >= PENDING_INCOMING_MAX && !facts.replaces {
        return Judgement::Refuse(Refusal::Busy);
    }
    Judgement::Keep {
        expiry_unix: p
            .expiry_unix
            .min(facts.now_unix.saturating_add(HOLD_MAX.as_secs())),
    }
}

/// An id seen, and its last answer.
#[derive(Debug)]
struct Seen {
    answer: Option<Vec<u8>>,
    answered_at: Option<Instant>,
}

/// The receiver's memory: rate buckets per node and for all, the ids seen,
/// and the counts `umbra status` shows. In memory only: a restart starts
/// afresh (the database still refuses a stored proposal's id twice).
#[derive(Debug)]
pub(crate) struct Gate {
    nodes: HashMap<[u8; 32], Bucket>,
    all: Option<Bucket>,
    seen: HashMap<ProposalId, Seen>,
    seen_order: VecDeque<ProposalId>,
    counts: Counts,
}

/// What [`Gate`] and the daemon count.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// Proposals this node sent (resends included).
    pub(crate) sent: u64,
    /// Proposals that arrived and decoded.
    pub(crate) received: u64,
    /// Proposals kept for the operator.
    pub(crate) held: u64,
    /// Refusals sent, by reason.
    pub(crate) refused: HashMap<&'static str, u64>,
    /// Answers to our proposals, by verdict.
    pub(crate) answers: HashMap<&'static str, u64>,
    /// Messages dropped unanswered, by why.
    pub(crate) malformed: u64,
    pub(crate) forged: u64,
    pub(crate) duplicate: u64,
    pub(crate) rate_limited: u64,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate {
            nodes: HashMap::new(),
            all: None,
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            counts: Counts::default(),
        }
    }

    /// The counts.
    pub(crate) fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }

    /// Counts a drop.
    pub(crate) fn dropped(&mut self, why: Dropped) {
        let c = &mut self.counts;
        match why {
            Dropped::Malformed => c.malformed += 1,
            Dropped::Forged => c.forged += 1,
            Dropped::Duplicate => c.duplicate += 1,
        }
    }

    /// Decides whether proposal `id` from `from` goes on to the checks:
    /// repeats are dropped (and may be answered again), then the sender's
    /// rate and everyone's. A proposal that goes on is remembered.
    pub(crate) fn admit(&mut self, from: &[u8; 32], id: &ProposalId, now: Instant) -> Admit {
        if let Some(seen) = self.seen.get_mut(id) {
            self.counts.duplicate += 1;
            let again = seen
                .answered_at
                .is_none_or(|t| now.saturating_duration_since(t) >= ANSWER_AGAIN_EVERY);
            if again && seen.answer.is_some() {
                seen.answered_at = Some(now);
                return Admit::Repeat(seen.answer.clone());
            }
            return Admit::Repeat(None);
        }
        if !self.nodes.contains_key(from) && self.nodes.len() >= NODES_TRACKED_MAX {
            let oldest = self.nodes.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.nodes.remove(&k);
            }
        }
        let node = self
            .nodes
            .entry(*from)
            .or_insert_with(|| Bucket::full(PER_NODE_BURST, now));
        node.refill(PER_NODE_BURST, PER_NODE_EVERY, now);
        let all = self.all.get_or_insert_with(|| Bucket::full(ALL_BURST, now));
        all.refill(ALL_BURST, ALL_EVERY, now);
        if !node.has_token() || !all.has_token() {
            self.counts.rate_limited += 1;
            // Tell a node once per dry spell of its own bucket; when all
            // nodes together are over, tell no one (that is a flood).
            let tell = !node.has_token() && !std::mem::replace(&mut node.told, true);
            return Admit::Limited { tell };
        }
        node.tokens -= 1.0;
        all.tokens -= 1.0;
        self.remember(*id);
        Admit::Go
    }

    fn remember(&mut self, id: ProposalId) {
        if self.seen_order.len() >= IDS_REMEMBERED_MAX
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(
            id,
            Seen {
                answer: None,
                answered_at: None,
            },
        );
        self.seen_order.push_back(id);
    }

    /// Notes the answer proposal `id` got, to send again if it repeats.
    pub(crate) fn answered(&mut self, id: &ProposalId, answer: Vec<u8>, now: Instant) {
        if !self.seen.contains_key(id) {
            self.remember(*id);
        }
        if let Some(seen) = self.seen.get_mut(id) {
            seen.answer = Some(answer);
            seen.answered_at = Some(now);
        }
    }

    /// The counts as `umbra status --json` shows them, under `proposals`.
    pub(crate) fn json(&self, enabled: bool) -> Value {
        let c = &self.counts;
        let by = |m: &HashMap<&'static str, u64>, names: &[&'static str]| {
            let mut o = serde_json::Map::new();
            for n in names {
                o.insert((*n).to_string(), json!(m.get(n).copied().unwrap_or(0)));
            }
            Value::Object(o)
        };
        json!({
            "enabled": enabled,
            "sent": c.sent,
            "received": c.received,
            "held": c.held,
            "refused": by(&c.refused, &["disabled", "bad_terms", "expired", "already_partner", "rate_limited", "busy"]),
            "answers": by(&c.answers, &["received", "accepted", "rejected", "refused"]),
            "dropped": {
                "malformed": c.malformed,
                "forged": c.forged,
                "duplicate": c.duplicate,
                "rate_limited": c.rate_limited,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umbra_routing::Identity;

    fn facts(now_unix: u64) -> Facts {
        Facts {
            enabled: true,
            now_unix,
            partner: false,
            pending_incoming: 0,
            replaces: false,
        }
    }

    fn proposal(a: &Identity, c: &Identity, terms: (u64, u64), expiry: u64) -> Proposal {
        Proposal::sign(
            a,
            &c.public(),
            Proposal::random_id(),
            terms,
            1000,
            expiry,
            "",
        )
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    const TERMS: (u64, u64) = (1 << 40, 30 * 86_400);

    /// The `i`th sender's key and proposal id.
    fn nth(i: u32) -> ([u8; 32], [u8; 16]) {
        let (mut key, mut id) = ([0u8; 32], [0u8; 16]);
        key[..4].copy_from_slice(&i.to_be_bytes());
        id[..4].copy_from_slice(&i.to_be_bytes());
        (key, id)
    }

    #[test]
    fn the_checks_come_in_order() {
        let (a, c, x) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let (me, from) = (c.public(), a.public());
        let p = proposal(&a, &c, TERMS, 5000);
        assert_eq!(
            judge(&p, &me, &from, &facts(2000)),
            Judgement::Keep { expiry_unix: 5000 }
        );
        // Sent by another node than signed it, or meant for another node.
        assert_eq!(
            judge(&p, &me, &x.public(), &facts(2000)),
            Judgement::Drop(Dropped::Forged)
        );
        assert_eq!(
            judge(&p, &x.public(), &from, &facts(2000)),
            Judgement::Drop(Dropped::Forged)
        );
        let mut bad = p.clone();
        bad.bytes_per_period *= 2;
        assert_eq!(
            judge(&bad, &me, &from, &facts(2000)),
            Judgement::Drop(Dropped::Forged)
        );
        // Forged beats disabled: a forgery gets no answer at all.
        let off = Facts {
            enabled: false,
            ..facts(2000)
        };
        assert_eq!(
            judge(&bad, &me, &from, &off),
            Judgement::Drop(Dropped::Forged)
        );
        assert_eq!(
            judge(&p, &me, &from, &off),
            Judgement::Refuse(Refusal::Disabled)
        );
        assert_eq!(
            judge(&p, &me, &from, &facts(5000)),
            Judgement::Refuse(Refusal::Expired)
        );
        let zero = proposal(&a, &c, (0, 30), 5000);
        assert_eq!(
            judge(&zero, &me, &from, &facts(2000)),
            Judgement::Refuse(Refusal::BadTerms)
        );
        let zero = proposal(&a, &c, (30, 0), 5000);
        assert_eq!(
            judge(&zero, &me, &from, &facts(2000)),
            Judgement::Refuse(Refusal::BadTerms)
        );
        let partner = Facts {
            partner: true,
            ..facts(2000)
        };
        assert_eq!(
            judge(&p, &me, &from, &partner),
            Judgement::Refuse(Refusal::AlreadyPartner)
        );
        let full = Facts {
            pending_incoming: PENDING_INCOMING_MAX,
            ..facts(2000)
        };
        assert_eq!(
            judge(&p, &me, &from, &full),
            Judgement::Refuse(Refusal::Busy)
        );
        let replacing = Facts {
            replaces: true,
            ..full
        };
        assert!(matches!(
            judge(&p, &me, &from, &replacing),
            Judgement::Keep { .. }
        ));
        // An expiry years ahead is held at most HOLD_MAX.
        let far = proposal(&a, &c, TERMS, u64::MAX);
        assert_eq!(
            judge(&far, &me, &from, &facts(2000)),
            Judgement::Keep {
                expiry_unix: 2000 + HOLD_MAX.as_secs()
            }
        );
    }

    #[test]
    fn one_node_gets_its_burst_then_one_per_period() {
        let mut g = Gate::new();
        let t0 = Instant::now();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let mut id = 0u8;
        let mut next = || {
            id += 1;
            [id; 16]
        };
        for _ in 0..PER_NODE_BURST {
            assert_eq!(g.admit(&a, &next(), t0), Admit::Go);
        }
        // The next is limited, and told once; the rest are dropped quietly.
        assert_eq!(g.admit(&a, &next(), t0), Admit::Limited { tell: true });
        for _ in 0..10 {
            assert_eq!(g.admit(&a, &next(), t0), Admit::Limited { tell: false });
        }
        assert_eq!(g.counts.rate_limited, 11);
        // Another node is not held up by it.
        assert_eq!(g.admit(&b, &next(), t0), Admit::Go);
        // One period later, one more; then limited again, and told again.
        let t1 = t0 + PER_NODE_EVERY;
        assert_eq!(g.admit(&a, &next(), t1), Admit::Go);
        assert_eq!(g.admit(&a, &next(), t1), Admit::Limited { tell: true });
    }

    #[test]
    fn many_nodes_together_are_held_to_the_shared_rate() {
        let mut g = Gate::new();
        let t0 = Instant::now();
        let mut admitted = 0;
        for i in 0..100u32 {
            let (key, id) = nth(i);
            match g.admit(&key, &id, t0) {
                Admit::Go => admitted += 1,
                // A node over no limit of its own is not told.
                Admit::Limited { tell } => assert!(!tell),
                Admit::Repeat(_) => unreachable!(),
            }
        }
        assert_eq!(admitted, ALL_BURST);
        // An hour later the shared bucket has refilled (to its burst).
        let t1 = t0 + Duration::from_secs(3600);
        let mut later = 0;
        for i in 100..200u32 {
            let (key, id) = nth(i);
            if g.admit(&key, &id, t1) == Admit::Go {
                later += 1;
            }
        }
        assert_eq!(later, ALL_BURST);
    }

    #[test]
    fn repeats_are_dropped_and_answered_again_at_most_every_two_seconds() {
        let mut g = Gate::new();
        let t0 = Instant::now();
        let (a, id) = ([1u8; 32], [9u8; 16]);
        assert_eq!(g.admit(&a, &id, t0), Admit::Go);
        // No answer yet: nothing to send again.
        assert_eq!(g.admit(&a, &id, t0), Admit::Repeat(None));
        g.answered(&id, vec![1, 2, 3], t0);
        assert_eq!(g.admit(&a, &id, t0), Admit::Repeat(None));
        let t1 = t0 + ANSWER_AGAIN_EVERY;
        assert_eq!(g.admit(&a, &id, t1), Admit::Repeat(Some(vec![1, 2, 3])));
        assert_eq!(g.admit(&a, &id, t1), Admit::Repeat(None));
        assert_eq!(g.counts.duplicate, 4);
        // Repeats use no tokens: the burst is still there minus one.
        for i in 0..PER_NODE_BURST - 1 {
            assert_eq!(g.admit(&a, &[i as u8; 16], t1), Admit::Go);
        }
    }

    #[test]
    fn memory_is_bounded() {
        let mut g = Gate::new();
        let mut now = Instant::now();
        for i in 0..(NODES_TRACKED_MAX as u32 + 500) {
            let (key, id) = nth(i);
            now += ALL_EVERY;
            let _ = g.admit(&key, &id, now);
        }
        assert!(g.nodes.len() <= NODES_TRACKED_MAX);
        assert!(g.seen.len() <= IDS_REMEMBERED_MAX);
        assert_eq!(g.seen.len(), g.seen_order.len());
    }
}
