//! Flooding node records over links, OSPF-LSA style (`docs/protocol.md, "Flooding"`), as a
//! sans-IO state machine: [`GraphCore`].
//!
//! - A record that is news (a node not known, or a higher sequence number),
//!   validly signed and not expired replaces the old one and is flooded on
//!   every other link. Duplicates and older records are dropped after one
//!   hash lookup, before any decoding beyond the first 41 bytes and before
//!   the signature check. A peer that sends an older record than ours gets
//!   ours back.
//! - Floods wait [`FLOOD_BATCH_DELAY`] per link, so records share messages,
//!   and a record that the peer sends us meanwhile is taken off that link's
//!   queue instead of being sent back.
//! - **Link-up synchronisation** (OSPF's database exchange): each side sends
//!   a summary of `(key, seq)` for all its records, sorted by key, in chunks
//!   of [`SUMMARY_MAX_ENTRIES`]. Each side requests the records it lacks or
//!   holds older, and the other answers at once. A record is requested from
//!   one link only, even when several links come up together, so a node
//!   that starts with an empty graph receives each record once, not once per
//!   link. Records that a peer's summary showed it holds are not flooded
//!   back to it. A request whose link goes down is sent again on another
//!   link; one that is not answered in [`REQUEST_TIMEOUT`] is given up (the
//!   record still comes with its owner's next refresh).
//! - The node re-signs its own record every [`RECORD_REFRESH`] and when its
//!   edges change, and drops other records when they expire.
//!
//! The messages' wire format is in [`super::message`]; this module only
//! decides what to send and what to take.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;

use super::message::{
    GraphMessage, Lazy, MAX_MESSAGE_LEN, RECORDS_HEADER_LEN, REQUEST_MAX_KEYS, SUMMARY_ENTRY_LEN,
    SUMMARY_MAX_ENTRIES, Summary,
};
use super::record::{Ed25519Verifier, Edge, NodeRecord, RecordError, RecordVerifier};
use super::store::{DropReason, Graph, GraphMemory, heap};
use super::{
    FLOOD_BATCH_DELAY, LinkId, MAX_GRAPH_NODES, RECORD_LIFETIME, RECORD_REFRESH, REQUEST_TIMEOUT,
    Time,
};
use crate::crypto::{Identity, KEY_LEN};

/// What a [`GraphCore`] has counted, for metrics (`drops by reason`; the
/// `metrics` of `status`, `docs/protocol.md, "Control protocol"`). Every
/// message and record that is not taken is counted under exactly one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphCounters {
    /// Messages handed to the core.
    pub messages_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Messages the core gave out to send.
    pub messages_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Records received, whatever became of them.
    pub records_in: u64,
    /// Records sent.
    pub records_out: u64,
    /// Records taken into the graph.
    pub accepted: u64,
    /// Records dropped: the same sequence number was held already.
    pub duplicate: u64,
    /// Records dropped: a newer one was held (the peer gets ours back).
    pub stale: u64,
    /// Records dropped: expired on arrival.
    pub expired: u64,
    /// Records dropped: expiry too far in the future.
    pub too_far_ahead: u64,
    /// Records dropped: the signature is not the key's.
    pub bad_signature: u64,
    /// Records dropped, or summary entries not requested: the graph (or the
    /// table of outstanding requests) holds `MAX_GRAPH_NODES` already.
    pub graph_full: u64,
    /// Records dropped: malformed.
    pub malformed_record: u64,
    /// Messages dropped (or cut short): malformed.
    pub malformed_message: u64,
    /// Messages dropped: on a link the core does not know (never came up,
    /// or went down).
    pub unknown_link: u64,
    /// Keys this node requested after link-up summaries.
    pub keys_requested: u64,
    /// Records this node sent in answer to peers' requests.
    pub keys_served: u64,
    /// Requests given up after [`REQUEST_TIMEOUT`].
    pub requests_expired: u64,
    /// Validly signed records of this node's own key that it did not make
    /// in this run (from before a restart, or another daemon with the same
    /// key); each made the node re-sign with a higher sequence number.
    pub own_record_conflict: u64,
    /// Records removed from the graph because they expired.
    pub expired_removed: u64,
}

impl GraphCounters {
    fn count(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Duplicate => &mut self.duplicate,
            DropReason::Stale => &mut self.stale,
            DropReason::Expired => &mut self.expired,
            DropReason::TooFarAhead => &mut self.too_far_ahead,
            DropReason::GraphFull => &mut self.graph_full,
            DropReason::BadSignature => &mut self.bad_signature,
        };
        *c += 1;
    }
}

#[derive(Debug)]
struct LinkState {
    peer: [u8; KEY_LEN],
    /// One bit per graph slot: the record in the slot is to be sent at the
    /// next flush. Queueing a record, and taking it off the queue when the
    /// peer shows it has it, cost O(1) on this path, which runs per record
    /// per link, and the queue takes one bit per node of the graph.
    pending: Vec<u64>,
    /// The slots whose bit was set since the last flush, in the order they
    /// were set (some may have been cleared since).
    queued: Vec<u32>,
    flush_at: Option<Time>,
    /// What the peer's summary showed it holds, for keys this node lacked
    /// then: a record arriving later is not flooded back to this peer.
    /// Only looked up, never iterated, so its order cannot leak out.
    offered: HashMap<[u8; KEY_LEN], u64>,
}

impl LinkState {
    fn queue(&mut self, now: Time, slot: u32) {
        let word = slot as usize / 64;
        if self.pending.len() <= word {
            self.pending.resize(word + 1, 0);
        }
        let bit = 1u64 << (slot % 64);
        if let Some(w) = self.pending.get_mut(word)
            && *w & bit == 0
        {
            *w |= bit;
            self.queued.push(slot);
        }
        self.flush_at.get_or_insert(now + FLOOD_BATCH_DELAY);
    }

    /// The peer holds the current record of `slot`: do not send it.
    fn has(&mut self, slot: u32) {
        if let Some(w) = self.pending.get_mut(slot as usize / 64) {
            *w &= !(1u64 << (slot % 64));
        }
    }

    /// The slots to send now, in the order they were queued; empties the
    /// queue.
    fn take_pending(&mut self) -> Vec<u32> {
        let queued = std::mem::take(&mut self.queued);
        let pending = &mut self.pending;
        queued
            .into_iter()
            .filter(|&slot| {
                let bit = 1u64 << (slot % 64);
                match pending.get_mut(slot as usize / 64) {
                    Some(w) if *w & bit != 0 => {
                        *w &= !bit;
                        true
                    }
                    _ => false,
                }
            })
            .collect()
    }
}

/// A record requested from a peer and not yet received.
#[derive(Debug, Clone, Copy)]
struct Request {
    seq: u64,
    link: LinkId,
    at: Time,
}

/// The graph state machine of one node (sans-IO): it holds the node's
/// [`Graph`], signs the node's own record, and floods records over links.
///
/// Drive it as quinn-proto is driven: give it `link_up`, `link_down`,
/// `handle_message` and `handle_timeout` with the current time, then send
/// what `poll_transmit` returns until it returns `None`, and call
/// `handle_timeout` at `poll_timeout`. Given the same inputs it produces
/// the same outputs: it iterates only ordered structures.
pub struct GraphCore {
    identity: Identity,
    key: [u8; KEY_LEN],
    edges: Vec<Edge>,
    features: u32,
    own: Arc<NodeRecord>,
    graph: Graph,
    next_refresh: Time,
    links: BTreeMap<LinkId, LinkState>,
    /// Outstanding requests, by key. Every entry names a link that is up.
    /// Looked up for every record received; iterated only to collect keys,
    /// which are then sorted, so its order cannot leak out.
    requested: HashMap<[u8; KEY_LEN], Request>,
    /// When the oldest outstanding request times out.
    request_deadline: Option<Time>,
    transmit: VecDeque<(LinkId, GraphMessage)>,
    verifier: Arc<dyn RecordVerifier>,
    counters: GraphCounters,
    /// Keys of other nodes' records accepted since [`Self::take_fresh`],
    /// at most [`FRESH_MAX`].
    fresh: Vec<[u8; KEY_LEN]>,
}

/// Fresh-record keys kept for [`GraphCore::take_fresh`]; past this, newer
/// ones are not noted (the router drains them after every message).
const FRESH_MAX: usize = 256;

impl std::fmt::Debug for GraphCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCore")
            .field("key", &hex::encode(self.key))
            .field("own", &self.own)
            .field("graph", &self.graph)
            .field("links", &self.links.len())
            .field("requested", &self.requested.len())
            .finish_non_exhaustive()
    }
}

impl GraphCore {
    /// A core for `identity` whose record lists `edges`. It signs its first
    /// record at once, with sequence number `now` in unix seconds, so a
    /// restarted node outnumbers its records from before the restart
    /// without storing a counter (unless its clock went back; then the
    /// flood brings the old record back and the core re-signs above it).
    pub fn new(identity: Identity, now: Time, edges: &[Edge]) -> Result<GraphCore, RecordError> {
        let mut edges = edges.to_vec();
        edges.sort_unstable();
        let expiry = now.saturating_add(RECORD_LIFETIME).unix_secs();
        let own = Arc::new(NodeRecord::sign(
            &identity,
            now.unix_secs(),
            expiry,
            0,
            &edges,
        )?);
        let mut graph = Graph::new();
        graph.put(own.clone());
        Ok(GraphCore {
            key: identity.public(),
            identity,
            edges,
            features: 0,
            own,
            graph,
            next_refresh: now.saturating_add(RECORD_REFRESH),
            links: BTreeMap::new(),
            requested: HashMap::new(),
            request_deadline: None,
            transmit: VecDeque::new(),
            verifier: Arc::new(Ed25519Verifier),
            counters: GraphCounters::default(),
            fresh: Vec::new(),
        })
    }

    /// Uses `verifier` for signatures instead of the real Ed25519 check
    /// (the simulation's memoizing cache).
    pub fn with_verifier(mut self, verifier: Arc<dyn RecordVerifier>) -> GraphCore {
        self.verifier = verifier;
        self
    }

    /// Starts from `graph`, the cache the daemon stored (see
    /// [`Graph::import`]). If the cache holds a record of this node newer
    /// than the current one, the core re-signs above it.
    pub fn with_graph(mut self, now: Time, graph: Graph) -> GraphCore {
        let cached_own = graph.get(&self.key).map(|r| r.seq());
        self.graph = graph;
        match cached_own {
            Some(seq) if seq >= self.own.seq() => self.resign(now, seq.saturating_add(1)),
            _ => {
                self.graph.put(self.own.clone());
            }
        }
        self
    }

    /// This node's public key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The graph as this node sees it, its own record included.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// This node's current record.
    pub fn own_record(&self) -> &Arc<NodeRecord> {
        &self.own
    }

    /// What the core has counted.
    pub fn counters(&self) -> &GraphCounters {
        &self.counters
    }

    /// Number of links up.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The peer at the far end of `link`, if it is up.
    pub fn link_peer(&self, link: LinkId) -> Option<&[u8; KEY_LEN]> {
        self.links.get(&link).map(|l| &l.peer)
    }

    /// Estimated memory: the graph's ([`Graph::memory`]) plus the flooding
    /// state's. Hash maps count their buckets (key, value and one control
    /// byte each) at their capacity; queued messages count their item
    /// vectors, not the shared records they point to.
    pub fn memory(&self) -> GraphMemory {
        let mut m = self.graph.memory();
        let map = |cap: usize, entry: usize| heap(cap, entry + 1);
        let mut flood = heap(self.links.len(), size_of::<(LinkId, LinkState)>());
        for l in self.links.values() {
            flood += heap(l.pending.capacity(), size_of::<u64>())
                + heap(l.queued.capacity(), size_of::<u32>())
                + map(l.offered.capacity(), size_of::<([u8; KEY_LEN], u64)>());
        }
        flood += map(
            self.requested.capacity(),
            size_of::<([u8; KEY_LEN], Request)>(),
        );
        flood += heap(
            self.transmit.capacity(),
            size_of::<(LinkId, GraphMessage)>(),
        );
        for (_, msg) in &self.transmit {
            flood += match msg {
                GraphMessage::Records(r) => heap(r.capacity(), size_of::<Arc<NodeRecord>>()),
                GraphMessage::Summary(s) => heap(s.entries.capacity(), SUMMARY_ENTRY_LEN),
                GraphMessage::Request(k) => heap(k.capacity(), KEY_LEN),
            };
        }
        m.flood = flood;
        m
    }

    /// The graph cache for the state database ([`Graph::export`]).
    pub fn export(&self) -> Vec<u8> {
        self.graph.export()
    }

    /// Sets the agreement edges this node's record lists. If they changed,
    /// the node re-signs its record and floods it. Returns whether they
    /// changed.
    pub fn set_local_edges(&mut self, now: Time, edges: &[Edge]) -> Result<bool, RecordError> {
        let mut edges = edges.to_vec();
        edges.sort_unstable();
        if edges == self.edges {
            return Ok(false);
        }
        let rec = self.sign_own(now, 0, &edges, self.features)?;
        self.edges = edges;
        self.install_own(now, rec);
        Ok(true)
    }

    /// Sets the feature bits; re-signs and floods if they changed.
    pub fn set_features(&mut self, now: Time, features: u32) {
        if features == self.features {
            return;
        }
        if let Ok(rec) = self.sign_own(now, 0, &self.edges, features) {
            self.features = features;
            self.install_own(now, rec);
        }
    }

    /// The keys of other nodes whose newer records were accepted since the
    /// last call: each is a sign of life from that node.
    pub fn take_fresh(&mut self) -> Vec<[u8; KEY_LEN]> {
        std::mem::take(&mut self.fresh)
    }

    /// A link to `peer` came up. The core sends it a summary of its records.
    /// If the link was up already, its state starts over.
    pub fn link_up(&mut self, now: Time, link: LinkId, peer: [u8; KEY_LEN]) {
        if self.links.contains_key(&link) {
            self.link_down(now, link);
        }
        self.links.insert(
            link,
            LinkState {
                peer,
                pending: Vec::new(),
                queued: Vec::new(),
                flush_at: None,
                offered: HashMap::new(),
            },
        );
        let mut entries: Vec<([u8; KEY_LEN], u64)> =
            self.graph.records().map(|r| (*r.key(), r.seq())).collect();
        entries.sort_unstable();
        let chunks = entries.chunks(SUMMARY_MAX_ENTRIES).count().max(1);
        let mut it = entries.chunks(SUMMARY_MAX_ENTRIES);
        for i in 0..chunks {
            let chunk = it.next().unwrap_or_default();
            let summary = Summary {
                first: i == 0,
                last: i + 1 == chunks,
                entries: chunk.to_vec(),
            };
            self.transmit
                .push_back((link, GraphMessage::Summary(summary)));
        }
    }

    /// A link went down: nothing more is sent on it, and what was requested
    /// on it is requested on another link.
    pub fn link_down(&mut self, now: Time, link: LinkId) {
        self.links.remove(&link);
        self.transmit.retain(|(l, _)| *l != link);
        let mut orphans: Vec<[u8; KEY_LEN]> = self
            .requested
            .iter()
            .filter(|(_, r)| r.link == link)
            .map(|(k, _)| *k)
            .collect();
        orphans.sort_unstable();
        let Some(&other) = self.links.keys().next() else {
            for key in &orphans {
                self.requested.remove(key);
            }
            return;
        };
        for key in &orphans {
            if let Some(r) = self.requested.get_mut(key) {
                r.link = other;
                r.at = now;
            }
        }
        self.send_requests(now, other, orphans);
    }

    fn send_requests(&mut self, now: Time, link: LinkId, keys: Vec<[u8; KEY_LEN]>) {
        if keys.is_empty() {
            return;
        }
        self.counters.keys_requested += keys.len() as u64;
        self.request_deadline.get_or_insert(now + REQUEST_TIMEOUT);
        for chunk in keys.chunks(REQUEST_MAX_KEYS) {
            self.transmit
                .push_back((link, GraphMessage::Request(chunk.to_vec())));
        }
    }

    /// Bytes of a graph message arrived on `link`. Malformed input is dropped
    /// and counted; it never panics. Records are read lazily: a duplicate or
    /// an older record costs reading its first 41 bytes and one lookup.
    pub fn handle_message(&mut self, now: Time, link: LinkId, bytes: &[u8]) {
        self.counters.messages_in += 1;
        self.counters.bytes_in += bytes.len() as u64;
        if !self.links.contains_key(&link) {
            self.counters.unknown_link += 1;
            return;
        }
        match Lazy::decode(bytes) {
            Ok(Lazy::Records(mut bodies)) => {
                while let Some(body) = bodies.next_body() {
                    let Ok(body) = body else {
                        self.counters.malformed_message += 1;
                        return;
                    };
                    self.counters.records_in += 1;
                    match NodeRecord::peek(body) {
                        Ok((key, seq)) => self.on_record(now, link, key, seq, || {
                            NodeRecord::decode(body).map(Arc::new)
                        }),
                        Err(_) => self.counters.malformed_record += 1,
                    }
                }
                if bodies.finish().is_err() {
                    self.counters.malformed_message += 1;
                }
            }
            Ok(Lazy::Summary(s)) => self.on_summary(now, link, s),
            Ok(Lazy::Request(keys)) => self.on_request(now, link, &keys),
            Err(_) => self.counters.malformed_message += 1,
        }
    }

    /// A decoded message arrived on `link`: the simulation's path, which
    /// shares record bodies between nodes instead of copying bytes. Every
    /// check of [`GraphCore::handle_message`] but decoding still applies
    /// (signatures go through the verifier).
    pub fn handle(&mut self, now: Time, link: LinkId, msg: GraphMessage) {
        self.counters.messages_in += 1;
        if !self.links.contains_key(&link) {
            self.counters.bytes_in += msg.encoded_len() as u64;
            self.counters.unknown_link += 1;
            return;
        }
        if let GraphMessage::Records(_) = msg {
            // Counted per record below, where each record is read anyway.
            self.counters.bytes_in += RECORDS_HEADER_LEN as u64;
        } else {
            self.counters.bytes_in += msg.encoded_len() as u64;
        }
        match msg {
            GraphMessage::Records(recs) => {
                for rec in recs {
                    self.counters.records_in += 1;
                    self.counters.bytes_in += 2 + rec.encoded_len() as u64;
                    let (key, seq) = (*rec.key(), rec.seq());
                    self.on_record(now, link, key, seq, || Ok(rec));
                }
            }
            GraphMessage::Summary(s) if s.is_well_formed() => self.on_summary(now, link, s),
            GraphMessage::Summary(_) => self.counters.malformed_message += 1,
            GraphMessage::Request(keys) => self.on_request(now, link, &keys),
        }
    }

    fn on_record(
        &mut self,
        now: Time,
        link: LinkId,
        key: [u8; KEY_LEN],
        seq: u64,
        record: impl FnOnce() -> Result<Arc<NodeRecord>, RecordError>,
    ) {
        if key == self.key {
            self.on_own_record(now, link, seq, record);
        } else {
            self.on_other_record(now, link, key, seq, record);
        }
        // The request for this key is settled if the record came from the
        // link it was asked on (links keep order, so that is the answer, or
        // the answer follows), or if what we hold now is recent enough.
        if self.requested.is_empty() {
            return;
        }
        if let Some(r) = self.requested.get(&key) {
            let held = self.graph.lookup(&key).map(|(_, s)| s);
            if r.link == link || held.is_some_and(|h| h >= r.seq) {
                self.requested.remove(&key);
                if self.requested.is_empty() {
                    // Give the memory of a large synchronisation back.
                    self.requested = HashMap::new();
                    self.request_deadline = None;
                }
            }
        }
    }

    fn on_other_record(
        &mut self,
        now: Time,
        link: LinkId,
        key: [u8; KEY_LEN],
        seq: u64,
        record: impl FnOnce() -> Result<Arc<NodeRecord>, RecordError>,
    ) {
        match self.graph.lookup(&key) {
            Some((slot, have)) if have == seq => {
                self.counters.duplicate += 1;
                self.peer_has(link, slot);
            }
            Some((slot, have)) if have > seq => {
                self.counters.stale += 1;
                self.queue(now, link, slot);
            }
            _ => {
                let Ok(rec) = record() else {
                    self.counters.malformed_record += 1;
                    return;
                };
                match self.graph.insert(rec, now, self.verifier.as_ref()) {
                    Ok(inserted) => {
                        self.counters.accepted += 1;
                        if self.fresh.len() < FRESH_MAX {
                            self.fresh.push(key);
                        }
                        self.flood(now, inserted.slot(), Some(link));
                    }
                    Err(reason) => self.counters.count(reason),
                }
            }
        }
    }

    /// A record with this node's own key arrived.
    fn on_own_record(
        &mut self,
        now: Time,
        link: LinkId,
        seq: u64,
        record: impl FnOnce() -> Result<Arc<NodeRecord>, RecordError>,
    ) {
        let own_slot = self.graph.slot_of(&self.key);
        if seq < self.own.seq() {
            self.counters.stale += 1;
            if let Some(slot) = own_slot {
                self.queue(now, link, slot);
            }
            return;
        }
        let Ok(rec) = record() else {
            self.counters.malformed_record += 1;
            return;
        };
        if rec.as_bytes() == self.own.as_bytes() {
            self.counters.duplicate += 1;
            if let Some(slot) = own_slot {
                self.peer_has(link, slot);
            }
            return;
        }
        // Only a valid signature may make us re-sign: otherwise anyone could
        // push our sequence number to the end of its range.
        if !self.verifier.verify(&rec) {
            self.counters.bad_signature += 1;
            return;
        }
        self.counters.own_record_conflict += 1;
        self.resign(now, seq.saturating_add(1));
    }

    /// A chunk of the peer's summary: request what we lack, from this link
    /// unless it is requested elsewhere already.
    fn on_summary(&mut self, now: Time, link: LinkId, s: Summary) {
        let Some(l) = self.links.get_mut(&link) else {
            self.counters.unknown_link += 1;
            return;
        };
        if s.first {
            l.offered.clear();
        }
        let mut want = Vec::new();
        for (key, seq) in s.entries {
            match self.graph.lookup(&key) {
                Some((slot, have)) if have >= seq => {
                    if have == seq {
                        // The peer has it: do not flood it there.
                        l.has(slot);
                    }
                    // If the peer's is older, it requests ours.
                    continue;
                }
                _ => {}
            }
            // Both maps are bounded like the graph, so a peer that sends
            // summaries of keys that do not exist cannot grow them further.
            if l.offered.len() < MAX_GRAPH_NODES {
                l.offered.insert(key, seq);
            }
            if self.requested.get(&key).is_some_and(|r| r.seq >= seq) {
                continue;
            }
            if self.requested.len() >= MAX_GRAPH_NODES {
                self.counters.graph_full += 1;
                continue;
            }
            self.requested.insert(key, Request { seq, link, at: now });
            want.push(key);
        }
        self.send_requests(now, link, want);
    }

    /// The peer asks for records: queue them and send at once.
    fn on_request(&mut self, now: Time, link: LinkId, keys: &[[u8; KEY_LEN]]) {
        let Some(l) = self.links.get_mut(&link) else {
            self.counters.unknown_link += 1;
            return;
        };
        for key in keys {
            if let Some(slot) = self.graph.slot_of(key) {
                l.queue(now, slot);
                self.counters.keys_served += 1;
            }
        }
        self.flush(link);
    }

    /// Queues `slot` on every link but `from` and the links whose peers'
    /// summaries showed they hold it; takes it off those links' queues.
    fn flood(&mut self, now: Time, slot: u32, from: Option<LinkId>) {
        let Some(rec) = self.graph.record_at(slot) else {
            return;
        };
        let (key, seq) = (*rec.key(), rec.seq());
        for (id, l) in &mut self.links {
            let offered = if l.offered.is_empty() {
                None
            } else {
                let o = l.offered.remove(&key);
                if l.offered.is_empty() {
                    // Give the memory of a large summary back.
                    l.offered = HashMap::new();
                }
                o
            };
            if Some(*id) == from || offered.is_some_and(|s| s >= seq) {
                l.has(slot);
            } else {
                l.queue(now, slot);
            }
        }
    }

    fn queue(&mut self, now: Time, link: LinkId, slot: u32) {
        if let Some(l) = self.links.get_mut(&link) {
            l.queue(now, slot);
        }
    }

    fn peer_has(&mut self, link: LinkId, slot: u32) {
        if let Some(l) = self.links.get_mut(&link) {
            l.has(slot);
        }
    }

    fn sign_own(
        &self,
        now: Time,
        min_seq: u64,
        edges: &[Edge],
        features: u32,
    ) -> Result<NodeRecord, RecordError> {
        let seq = self
            .own
            .seq()
            .saturating_add(1)
            .max(now.unix_secs())
            .max(min_seq);
        let expiry = now.saturating_add(RECORD_LIFETIME).unix_secs();
        NodeRecord::sign(&self.identity, seq, expiry, features, edges)
    }

    fn install_own(&mut self, now: Time, rec: NodeRecord) {
        let rec = Arc::new(rec);
        self.own = rec.clone();
        let slot = self.graph.put(rec).slot();
        self.flood(now, slot, None);
        self.next_refresh = now.saturating_add(RECORD_REFRESH);
    }

    /// Re-signs the own record, with a sequence number of at least `min_seq`.
    fn resign(&mut self, now: Time, min_seq: u64) {
        // The edges and features were checked when they were set.
        if let Ok(rec) = self.sign_own(now, min_seq, &self.edges, self.features) {
            self.install_own(now, rec);
        }
    }

    /// When the core next wants [`GraphCore::handle_timeout`]: the next
    /// flush, request timeout, expiry or refresh.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.next_refresh;
        if let Some(e) = self.graph.next_expiry() {
            t = t.min(e);
        }
        if let Some(r) = self.request_deadline {
            t = t.min(r);
        }
        for f in self.links.values().filter_map(|l| l.flush_at) {
            t = t.min(f);
        }
        Some(t)
    }

    /// Does what is due at `now`: re-signs the own record, removes expired
    /// records, gives up old requests, and flushes link queues.
    pub fn handle_timeout(&mut self, now: Time) {
        if now >= self.next_refresh {
            self.resign(now, 0);
        }
        let removed = self.graph.remove_expired(now);
        self.counters.expired_removed += removed as u64;
        if self.graph.slot_of(&self.key).is_none() {
            // Only if `handle_timeout` was not called for a whole lifetime.
            self.resign(now, 0);
        }
        if self.request_deadline.is_some_and(|t| t <= now) {
            let before = self.requested.len();
            self.requested.retain(|_, r| r.at + REQUEST_TIMEOUT > now);
            self.counters.requests_expired += (before - self.requested.len()) as u64;
            self.request_deadline = self
                .requested
                .values()
                .map(|r| r.at + REQUEST_TIMEOUT)
                .min();
        }
        let due: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.flush_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for link in due {
            self.flush(link);
        }
    }

    fn flush(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.flush_at = None;
        let pending = l.take_pending();
        let mut batch: Vec<Arc<NodeRecord>> = Vec::new();
        let mut len = RECORDS_HEADER_LEN;
        for slot in pending {
            let Some(rec) = self.graph.record_at(slot) else {
                continue;
            };
            let item = 2 + rec.encoded_len();
            if !batch.is_empty() && len + item > MAX_MESSAGE_LEN {
                let mut full = std::mem::take(&mut batch);
                full.shrink_to_fit();
                self.transmit.push_back((link, GraphMessage::Records(full)));
                len = RECORDS_HEADER_LEN;
            }
            batch.push(rec.clone());
            len += item;
        }
        if !batch.is_empty() {
            batch.shrink_to_fit();
            self.transmit
                .push_back((link, GraphMessage::Records(batch)));
        }
    }

    /// The next message to send, decoded: the simulation's path. Its
    /// encoding is [`GraphMessage::encode`].
    pub fn poll_message(&mut self) -> Option<(LinkId, GraphMessage)> {
        let (link, msg) = self.transmit.pop_front()?;
        self.counters.messages_out += 1;
        self.counters.bytes_out += msg.encoded_len() as u64;
        if let GraphMessage::Records(recs) = &msg {
            self.counters.records_out += recs.len() as u64;
        }
        Some((link, msg))
    }

    /// The next message to send, encoded, with the link to send it on.
    pub fn poll_transmit(&mut self) -> Option<(LinkId, Vec<u8>)> {
        self.poll_message().map(|(link, msg)| (link, msg.encode()))
    }
}

#[cfg(test)]
mod tests;
