//! Flooding node records over links, OSPF-LSA style (DESIGN.md §6), as a
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
//! Wire format of a graph message (the payload of a graph-record frame):
//!
//! ```text
//! version u8 = 1 | kind u8 | body
//! kind 1, records: count u16 | count × (len u16 | node record)
//! kind 2, summary: flags u8 (1 = first chunk, 2 = last chunk) | count u16 |
//!                  count × (key [u8; 32] | seq u64), keys strictly ascending
//! kind 3, request: count u16 | count × key [u8; 32]
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::mem::size_of;
use std::sync::Arc;

use super::codec::Reader;
use super::record::{Ed25519Verifier, Edge, NodeRecord, RecordError, RecordVerifier};
use super::store::{DropReason, Graph, GraphMemory, heap};
use super::{
    FLOOD_BATCH_DELAY, LinkId, MAX_GRAPH_NODES, RECORD_LIFETIME, RECORD_REFRESH, REQUEST_TIMEOUT,
    Time,
};
use crate::crypto::{Identity, KEY_LEN};

/// Largest graph message, encoded. It fits one transport frame (`len u16`)
/// with room for the frame header and padding. Larger messages are dropped.
pub const MAX_MESSAGE_LEN: usize = 64_000;
const MESSAGE_VERSION: u8 = 1;
const KIND_RECORDS: u8 = 1;
const KIND_SUMMARY: u8 = 2;
const KIND_REQUEST: u8 = 3;
const RECORDS_HEADER_LEN: usize = 4;
const SUMMARY_HEADER_LEN: usize = 5;
const SUMMARY_ENTRY_LEN: usize = KEY_LEN + 8;
const REQUEST_HEADER_LEN: usize = 4;
/// Most `(key, seq)` entries in one summary chunk (1,599).
pub const SUMMARY_MAX_ENTRIES: usize = (MAX_MESSAGE_LEN - SUMMARY_HEADER_LEN) / SUMMARY_ENTRY_LEN;
/// Most keys in one request (1,999).
pub const REQUEST_MAX_KEYS: usize = (MAX_MESSAGE_LEN - REQUEST_HEADER_LEN) / KEY_LEN;
const FLAG_FIRST: u8 = 1;
const FLAG_LAST: u8 = 2;

/// Why bytes are not a graph message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Cut short.
    #[error("graph message is truncated")]
    Truncated,
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("graph message is {0} bytes, longer than the maximum {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// A version this code does not know.
    #[error("graph message version {0} is unknown (this node knows {MESSAGE_VERSION})")]
    UnknownVersion(u8),
    /// A kind this code does not know.
    #[error("graph message kind {0} is unknown")]
    UnknownKind(u8),
    /// Bytes follow the last item.
    #[error("graph message has {0} bytes after its last item")]
    TrailingBytes(usize),
    /// A record inside is malformed.
    #[error("graph message record {index}: {error}")]
    Record {
        /// Position of the record in the message.
        index: usize,
        /// What is wrong with it.
        error: RecordError,
    },
    /// Summary flags with unknown bits.
    #[error("graph summary has unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// Summary keys not strictly ascending.
    #[error("graph summary keys are not strictly ascending")]
    BadSummary,
}

/// One chunk of a link-up summary: the `(key, seq)` of every record the
/// sender holds in a range of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The first chunk of a summary.
    pub first: bool,
    /// The last chunk of a summary.
    pub last: bool,
    /// `(key, seq)`, keys strictly ascending.
    pub entries: Vec<([u8; KEY_LEN], u64)>,
}

impl Summary {
    fn is_well_formed(&self) -> bool {
        self.entries
            .windows(2)
            .all(|w| matches!(w, [a, b] if a.0 < b.0))
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Summary, MessageError> {
        let flags = r.u8().ok_or(MessageError::Truncated)?;
        if flags & !(FLAG_FIRST | FLAG_LAST) != 0 {
            return Err(MessageError::UnknownFlags(flags));
        }
        let count = usize::from(r.u16().ok_or(MessageError::Truncated)?);
        if r.remaining() < count * SUMMARY_ENTRY_LEN {
            return Err(MessageError::Truncated);
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let key = r.array::<KEY_LEN>().ok_or(MessageError::Truncated)?;
            let seq = r.u64().ok_or(MessageError::Truncated)?;
            entries.push((key, seq));
        }
        let s = Summary {
            first: flags & FLAG_FIRST != 0,
            last: flags & FLAG_LAST != 0,
            entries,
        };
        if !s.is_well_formed() {
            return Err(MessageError::BadSummary);
        }
        Ok(s)
    }
}

fn decode_request_body(r: &mut Reader<'_>) -> Result<Vec<[u8; KEY_LEN]>, MessageError> {
    let count = usize::from(r.u16().ok_or(MessageError::Truncated)?);
    if r.remaining() < count * KEY_LEN {
        return Err(MessageError::Truncated);
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(r.array::<KEY_LEN>().ok_or(MessageError::Truncated)?);
    }
    Ok(keys)
}

/// A graph message, decoded. Records are shared (`Arc`), so a message can
/// be handed to many nodes of a simulation without copying them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphMessage {
    /// Node records, flooded or answering a request.
    Records(Vec<Arc<NodeRecord>>),
    /// A chunk of a link-up summary.
    Summary(Summary),
    /// Keys whose records the sender wants.
    Request(Vec<[u8; KEY_LEN]>),
}

impl GraphMessage {
    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            GraphMessage::Records(recs) => {
                RECORDS_HEADER_LEN + recs.iter().map(|r| 2 + r.encoded_len()).sum::<usize>()
            }
            GraphMessage::Summary(s) => SUMMARY_HEADER_LEN + s.entries.len() * SUMMARY_ENTRY_LEN,
            GraphMessage::Request(keys) => REQUEST_HEADER_LEN + keys.len() * KEY_LEN,
        }
    }

    /// The encoding (see the module documentation). Messages that
    /// [`GraphCore`] makes always fit [`MAX_MESSAGE_LEN`]; a longer list
    /// built by hand is cut at 65,535 items.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(MESSAGE_VERSION);
        match self {
            GraphMessage::Records(recs) => {
                let count = u16::try_from(recs.len()).unwrap_or(u16::MAX);
                out.push(KIND_RECORDS);
                out.extend_from_slice(&count.to_be_bytes());
                for rec in recs.iter().take(usize::from(count)) {
                    let len = u16::try_from(rec.encoded_len()).unwrap_or(u16::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(rec.as_bytes());
                }
            }
            GraphMessage::Summary(s) => {
                let count = u16::try_from(s.entries.len()).unwrap_or(u16::MAX);
                let mut flags = 0;
                if s.first {
                    flags |= FLAG_FIRST;
                }
                if s.last {
                    flags |= FLAG_LAST;
                }
                out.push(KIND_SUMMARY);
                out.push(flags);
                out.extend_from_slice(&count.to_be_bytes());
                for (key, seq) in s.entries.iter().take(usize::from(count)) {
                    out.extend_from_slice(key);
                    out.extend_from_slice(&seq.to_be_bytes());
                }
            }
            GraphMessage::Request(keys) => {
                let count = u16::try_from(keys.len()).unwrap_or(u16::MAX);
                out.push(KIND_REQUEST);
                out.extend_from_slice(&count.to_be_bytes());
                for key in keys.iter().take(usize::from(count)) {
                    out.extend_from_slice(key);
                }
            }
        }
        out
    }

    /// Decodes a message, records included (signatures are not checked).
    /// Total: never panics. The flood path does not use this; it reads
    /// records lazily so that duplicates cost no decoding.
    pub fn decode(bytes: &[u8]) -> Result<GraphMessage, MessageError> {
        let (kind, mut r) = envelope(bytes)?;
        let msg = match kind {
            KIND_RECORDS => {
                let count = usize::from(r.u16().ok_or(MessageError::Truncated)?);
                let mut recs = Vec::with_capacity(count.min(MAX_MESSAGE_LEN / 64));
                for index in 0..count {
                    let len = r.u16().ok_or(MessageError::Truncated)?;
                    let body = r.take(usize::from(len)).ok_or(MessageError::Truncated)?;
                    let rec = NodeRecord::decode(body)
                        .map_err(|error| MessageError::Record { index, error })?;
                    recs.push(Arc::new(rec));
                }
                GraphMessage::Records(recs)
            }
            KIND_SUMMARY => GraphMessage::Summary(Summary::decode_body(&mut r)?),
            KIND_REQUEST => GraphMessage::Request(decode_request_body(&mut r)?),
            other => return Err(MessageError::UnknownKind(other)),
        };
        if r.remaining() != 0 {
            return Err(MessageError::TrailingBytes(r.remaining()));
        }
        Ok(msg)
    }
}

/// Checks length and version; returns the kind and a reader at the body.
fn envelope(bytes: &[u8]) -> Result<(u8, Reader<'_>), MessageError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(MessageError::TooLong(bytes.len()));
    }
    let mut r = Reader::new(bytes);
    let version = r.u8().ok_or(MessageError::Truncated)?;
    if version != MESSAGE_VERSION {
        return Err(MessageError::UnknownVersion(version));
    }
    let kind = r.u8().ok_or(MessageError::Truncated)?;
    Ok((kind, r))
}

/// What a [`GraphCore`] has counted, for metrics (`drops by reason`,
/// DESIGN.md §11). Every message and record that is not taken is counted
/// under exactly one reason.
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
}

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
        let Ok((kind, mut r)) = envelope(bytes) else {
            self.counters.malformed_message += 1;
            return;
        };
        match kind {
            KIND_RECORDS => {
                let Some(count) = r.u16() else {
                    self.counters.malformed_message += 1;
                    return;
                };
                for _ in 0..count {
                    let body = r.u16().and_then(|len| r.take(usize::from(len)));
                    let Some(body) = body else {
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
                if r.remaining() != 0 {
                    self.counters.malformed_message += 1;
                }
            }
            KIND_SUMMARY => match Summary::decode_body(&mut r) {
                Ok(s) if r.remaining() == 0 => self.on_summary(now, link, s),
                _ => self.counters.malformed_message += 1,
            },
            KIND_REQUEST => match decode_request_body(&mut r) {
                Ok(keys) if r.remaining() == 0 => self.on_request(now, link, &keys),
                _ => self.counters.malformed_message += 1,
            },
            _ => self.counters.malformed_message += 1,
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
mod tests {
    use super::super::REQUEST_TIMEOUT;
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
}
