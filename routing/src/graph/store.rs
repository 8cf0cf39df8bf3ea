//! The graph: the newest valid record of every node, and the edges that count.

use std::cell::OnceCell;
use std::fmt;
use std::mem::size_of;
use std::sync::Arc;

use super::codec::Reader;
use super::index::KeyIndex;
use super::record::{Ed25519Verifier, NodeRecord, RecordError, RecordVerifier};
use super::{MAX_CLOCK_SKEW, MAX_GRAPH_NODES, RECORD_LIFETIME, Time};
use crate::crypto::KEY_LEN;

/// Version byte of [`Graph::export`]'s format.
const EXPORT_VERSION: u8 = 1;

/// What a heap allocation costs beyond the bytes asked for (glibc malloc's
/// header and rounding), counted in [`GraphMemory`] so the estimate is not
/// flattering.
pub(crate) const ALLOC_OVERHEAD: usize = 16;

/// Estimated heap bytes of a vector-like buffer of `cap` elements of `elem`
/// bytes.
pub(crate) fn heap(cap: usize, elem: usize) -> usize {
    if cap == 0 {
        0
    } else {
        cap * elem + ALLOC_OVERHEAD
    }
}

/// Why a record was not taken into the graph. The flood path counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// The graph holds this very sequence number already.
    #[error("duplicate: the graph has this sequence number already")]
    Duplicate,
    /// The graph holds a newer sequence number.
    #[error("stale: the graph has a newer sequence number")]
    Stale,
    /// The record's expiry has passed.
    #[error("expired")]
    Expired,
    /// The expiry lies further ahead than a freshly signed record's can.
    #[error("expiry too far in the future")]
    TooFarAhead,
    /// The graph holds [`MAX_GRAPH_NODES`] nodes already.
    #[error("graph full")]
    GraphFull,
    /// The signature is not the key's.
    #[error("bad signature")]
    BadSignature,
}

/// Where an accepted record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A node the graph did not hold, now at this slot.
    New(u32),
    /// A newer record of a node the graph held, at this slot.
    Replaced(u32),
}

impl Inserted {
    /// The record's slot.
    pub fn slot(self) -> u32 {
        match self {
            Inserted::New(s) | Inserted::Replaced(s) => s,
        }
    }
}

/// Why a persisted graph cache could not be read at all. Single bad or
/// expired records inside it are skipped, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The cache is empty or cut short.
    #[error("graph cache is truncated")]
    Truncated,
    /// The cache was written by a format this code does not know.
    #[error("graph cache version {0} is unknown (this node knows {EXPORT_VERSION})")]
    UnknownVersion(u8),
    /// Bytes follow the last record.
    #[error("graph cache has {0} bytes after its last record")]
    TrailingBytes(usize),
}

/// Counted edges in compressed-sparse-row form, over slots: the neighbours
/// of slot `i` are `targets[offsets[i]..offsets[i + 1]]`, in ascending order
/// of key.
#[derive(Clone, Debug, Default)]
struct Adjacency {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Adjacency {
    fn of(&self, slot: u32) -> &[u32] {
        let i = slot as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => self.targets.get(a as usize..b as usize).unwrap_or_default(),
            _ => &[],
        }
    }
}

/// Estimated memory of a graph, in bytes: the capacities of its vectors and
/// tables times their element sizes, plus [`ALLOC_OVERHEAD`] per heap
/// allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphMemory {
    /// The key → slot hash index.
    pub index: usize,
    /// The slot vector (one `Arc` pointer per slot) and the free list.
    pub slots: usize,
    /// The counted-edge adjacency, if it has been built.
    pub adjacency: usize,
    /// The records themselves: the `Arc` allocation with the parsed header,
    /// and the encoded bytes. In the simulation, nodes share these.
    pub records: usize,
    /// A [`GraphCore`](super::GraphCore)'s flooding state: link queues,
    /// summaries being answered, outstanding requests, messages not yet
    /// polled. Zero for a bare graph.
    pub flood: usize,
}

impl GraphMemory {
    /// Everything, as a daemon that owns its records pays it.
    pub fn total(&self) -> usize {
        self.index + self.slots + self.adjacency + self.records + self.flood
    }

    /// Everything but the records: what each node of the simulation pays
    /// on its own, since nodes share record bodies there.
    pub fn unshared(&self) -> usize {
        self.index + self.slots + self.adjacency + self.flood
    }
}

/// Every node's view of all node records (`docs/protocol.md, "Node records"`).
///
/// Nodes live in slots numbered by `u32`, so the adjacency and breadth-first
/// search run over small integers. A slot number stays the node's until its
/// record expires; then it may be reused. **An edge counts only when both
/// ends list it**; the counted edges are computed from the records when
/// first asked for after a change, and kept until the next change.
#[derive(Clone, Default)]
pub struct Graph {
    slots: Vec<Option<Arc<NodeRecord>>>,
    free: Vec<u32>,
    index: KeyIndex,
    len: usize,
    /// The earliest expiry of any record (unix seconds), or `None` if the
    /// graph is empty. Lets `remove_expired` return at once until then.
    next_expiry: Option<u64>,
    adjacency: OnceCell<Adjacency>,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.len)
            .field("next_expiry", &self.next_expiry)
            .finish_non_exhaustive()
    }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The graph of nodes `identities` (numbered by their place) with the
    /// agreements `topology` (pairs of numbers), every record signed here at
    /// `now` with sequence number 1: the graph every node of such a network
    /// converges to. For simulations and tests, which have every identity.
    /// Fails on a record that cannot be made (too many edges for one node).
    pub fn from_topology(
        identities: &[crate::Identity],
        topology: &[(usize, usize)],
        now: Time,
    ) -> Result<Graph, RecordError> {
        let keys: Vec<[u8; KEY_LEN]> = identities.iter().map(crate::Identity::public).collect();
        let expiry = now.saturating_add(RECORD_LIFETIME).unix_secs();
        let mut g = Graph::new();
        for (i, id) in identities.iter().enumerate() {
            let edges: Vec<super::Edge> = topology
                .iter()
                .filter_map(|&(a, b)| match (a == i, b == i) {
                    (true, _) => Some(b),
                    (_, true) => Some(a),
                    _ => None,
                })
                .map(|j| super::Edge {
                    peer: keys[j],
                    capacity: 1,
                })
                .collect();
            let rec = NodeRecord::sign(id, 1, expiry, 0, &edges)?;
            // A fresh record signed by its own key always goes in.
            let _ = g.insert(Arc::new(rec), now, &Ed25519Verifier);
        }
        Ok(g)
    }

    /// Number of nodes (records) held.
    pub fn node_count(&self) -> usize {
        self.len
    }

    /// Number of counted edges: pairs of nodes whose records list each other.
    pub fn edge_count(&self) -> usize {
        self.adjacency().targets.len() / 2
    }

    /// The record of `key`.
    pub fn get(&self, key: &[u8; KEY_LEN]) -> Option<&Arc<NodeRecord>> {
        self.record_at(self.slot_of(key)?)
    }

    /// The slot and sequence number of `key`'s record.
    pub fn lookup(&self, key: &[u8; KEY_LEN]) -> Option<(u32, u64)> {
        let slot = self.slot_of(key)?;
        Some((slot, self.record_at(slot)?.seq()))
    }

    /// The slot of `key`'s record.
    pub fn slot_of(&self, key: &[u8; KEY_LEN]) -> Option<u32> {
        self.index.get(key, &self.slots)
    }

    /// The record in `slot`.
    pub fn record_at(&self, slot: u32) -> Option<&Arc<NodeRecord>> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// Every record, in slot order.
    pub fn records(&self) -> impl Iterator<Item = &Arc<NodeRecord>> + '_ {
        self.slots.iter().flatten()
    }

    /// Every (slot, record), in slot order.
    pub fn slots(&self) -> impl Iterator<Item = (u32, &Arc<NodeRecord>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((u32::try_from(i).ok()?, r.as_ref()?)))
    }

    /// Number of slots, used or not: slot numbers are below this.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Takes `record` into the graph if it is news: a node the graph does
    /// not hold, or a higher sequence number than the one it holds.
    ///
    /// The cheap checks come first: a duplicate or an older record is
    /// dropped after one hash lookup, and an expired one after a comparison,
    /// all before the signature is verified.
    pub fn insert(
        &mut self,
        record: Arc<NodeRecord>,
        now: Time,
        verifier: &dyn RecordVerifier,
    ) -> Result<Inserted, DropReason> {
        let existing = self.lookup(record.key());
        if let Some((_, seq)) = existing {
            if seq == record.seq() {
                return Err(DropReason::Duplicate);
            }
            if seq > record.seq() {
                return Err(DropReason::Stale);
            }
        }
        check_expiry(&record, now)?;
        if existing.is_none() && self.len >= MAX_GRAPH_NODES {
            return Err(DropReason::GraphFull);
        }
        if !verifier.verify(&record) {
            return Err(DropReason::BadSignature);
        }
        Ok(self.put(record))
    }

    /// Stores `record` without any check, replacing the node's record if
    /// there is one. For the node's own record, which it just signed.
    pub(crate) fn put(&mut self, record: Arc<NodeRecord>) -> Inserted {
        self.adjacency.take();
        let expiry = record.expiry();
        self.next_expiry = Some(self.next_expiry.map_or(expiry, |e| e.min(expiry)));
        if let Some(slot) = self.slot_of(record.key()) {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                *s = Some(record);
            }
            return Inserted::Replaced(slot);
        }
        let key = *record.key();
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = Some(record);
                }
                slot
            }
            None => {
                // At most MAX_GRAPH_NODES plus own records: far below u32::MAX.
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Some(record));
                slot
            }
        };
        self.index.insert(&key, slot);
        self.len += 1;
        Inserted::New(slot)
    }

    /// Removes every record whose expiry has passed; returns how many. Costs
    /// one comparison until the earliest expiry, then one pass.
    pub fn remove_expired(&mut self, now: Time) -> usize {
        let now_secs = now.unix_secs();
        match self.next_expiry {
            Some(e) if e <= now_secs => {}
            _ => return 0,
        }
        let expired: Vec<[u8; KEY_LEN]> = self
            .records()
            .filter(|r| r.expiry() <= now_secs)
            .map(|r| *r.key())
            .collect();
        for key in &expired {
            self.remove(key);
        }
        self.next_expiry = self.records().map(|r| r.expiry()).min();
        expired.len()
    }

    /// Removes `key`'s record; returns it.
    pub fn remove(&mut self, key: &[u8; KEY_LEN]) -> Option<Arc<NodeRecord>> {
        let slot = self.index.remove(key, &self.slots)?;
        self.adjacency.take();
        self.len -= 1;
        self.free.push(slot);
        self.slots.get_mut(slot as usize)?.take()
    }

    /// When the next record expires, if any.
    pub fn next_expiry(&self) -> Option<Time> {
        self.next_expiry.map(Time::from_unix_secs)
    }

    fn adjacency(&self) -> &Adjacency {
        self.adjacency.get_or_init(|| self.build_adjacency())
    }

    fn build_adjacency(&self) -> Adjacency {
        let mut offsets = Vec::with_capacity(self.slots.len() + 1);
        let mut targets = Vec::new();
        offsets.push(0);
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(rec) = slot {
                for edge in rec.edges() {
                    let Some(j) = self.slot_of(&edge.peer) else {
                        continue;
                    };
                    let back = self.record_at(j).and_then(|peer| peer.lists(rec.key()));
                    if back.is_some() && j as usize != i {
                        targets.push(j);
                    }
                }
            }
            offsets.push(u32::try_from(targets.len()).unwrap_or(u32::MAX));
        }
        targets.shrink_to_fit();
        Adjacency { offsets, targets }
    }

    /// The slots of the nodes that `slot` has counted edges with, in
    /// ascending order of key.
    pub fn neighbour_slots(&self, slot: u32) -> &[u32] {
        self.adjacency().of(slot)
    }

    /// The nodes that `key` has counted edges with, in ascending order of key.
    pub fn neighbours(&self, key: &[u8; KEY_LEN]) -> Vec<[u8; KEY_LEN]> {
        let Some(slot) = self.slot_of(key) else {
            return Vec::new();
        };
        self.neighbour_slots(slot)
            .iter()
            .filter_map(|&j| Some(*self.record_at(j)?.key()))
            .collect()
    }

    /// The capacity class of the counted edge between `a` and `b`: the
    /// smaller of the two classes the ends list. `None` unless both list it.
    pub fn edge(&self, a: &[u8; KEY_LEN], b: &[u8; KEY_LEN]) -> Option<u8> {
        let ca = self.get(a)?.lists(b)?;
        let cb = self.get(b)?.lists(a)?;
        Some(ca.min(cb))
    }

    /// Every counted edge once, as (smaller key, larger key), sorted.
    pub fn counted_edges(&self) -> Vec<([u8; KEY_LEN], [u8; KEY_LEN])> {
        let mut out = Vec::with_capacity(self.edge_count());
        for (i, rec) in self.slots() {
            for &j in self.neighbour_slots(i) {
                if let Some(peer) = self.record_at(j)
                    && rec.key() < peer.key()
                {
                    out.push((*rec.key(), *peer.key()));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// A shortest path from `from` to `to` over counted edges, both ends
    /// included, or `None` if there is none. Breadth-first over slot
    /// numbers; among equally short paths it picks the same one every time.
    pub fn shortest_path(
        &self,
        from: &[u8; KEY_LEN],
        to: &[u8; KEY_LEN],
    ) -> Option<Vec<[u8; KEY_LEN]>> {
        let (a, b) = (self.slot_of(from)?, self.slot_of(to)?);
        let slots = self.shortest_path_slots(a, b)?;
        slots
            .into_iter()
            .map(|s| self.record_at(s).map(|r| *r.key()))
            .collect()
    }

    /// A shortest path from `from` to `to` over counted edges whose every
    /// step `(a, b)` `usable` allows, both ends included. The router uses it
    /// to start only on live links and to step around nodes that just failed.
    pub fn shortest_path_where(
        &self,
        from: &[u8; KEY_LEN],
        to: &[u8; KEY_LEN],
        mut usable: impl FnMut(&[u8; KEY_LEN], &[u8; KEY_LEN]) -> bool,
    ) -> Option<Vec<[u8; KEY_LEN]>> {
        let (a, b) = (self.slot_of(from)?, self.slot_of(to)?);
        let key = |s: u32| self.record_at(s).map(|r| *r.key());
        let slots = self.bfs(a, b, |u, v| match (key(u), key(v)) {
            (Some(ku), Some(kv)) => usable(&ku, &kv),
            _ => false,
        })?;
        slots.into_iter().map(key).collect()
    }

    /// [`Graph::shortest_path`] over slot numbers.
    pub fn shortest_path_slots(&self, from: u32, to: u32) -> Option<Vec<u32>> {
        self.bfs(from, to, |_, _| true)
    }

    fn bfs(
        &self,
        from: u32,
        to: u32,
        mut usable: impl FnMut(u32, u32) -> bool,
    ) -> Option<Vec<u32>> {
        const UNSEEN: u32 = u32::MAX;
        self.record_at(from)?;
        self.record_at(to)?;
        if from == to {
            return Some(vec![from]);
        }
        let adj = self.adjacency();
        let mut prev = vec![UNSEEN; self.slots.len()];
        let mut queue = Vec::with_capacity(self.len);
        *prev.get_mut(from as usize)? = from;
        queue.push(from);
        let mut head = 0;
        while let Some(&u) = queue.get(head) {
            head += 1;
            for &v in adj.of(u) {
                let p = prev.get_mut(v as usize)?;
                if *p != UNSEEN || !usable(u, v) {
                    continue;
                }
                *p = u;
                if v == to {
                    let mut path = vec![to];
                    let mut at = to;
                    while at != from {
                        at = *prev.get(at as usize)?;
                        path.push(at);
                    }
                    path.reverse();
                    return Some(path);
                }
                queue.push(v);
            }
        }
        None
    }

    /// The graph cache for the state database: every record's signed bytes.
    ///
    /// ```text
    /// version u8 = 1 | count u32 | count × (len u16 | record bytes)
    /// ```
    pub fn export(&self) -> Vec<u8> {
        let body: usize = self.records().map(|r| 2 + r.encoded_len()).sum();
        let mut out = Vec::with_capacity(5 + body);
        out.push(EXPORT_VERSION);
        out.extend_from_slice(&u32::try_from(self.len).unwrap_or(u32::MAX).to_be_bytes());
        for rec in self.records() {
            // Records are at most MAX_RECORD_LEN (8,567) bytes.
            let len = u16::try_from(rec.encoded_len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(rec.as_bytes());
        }
        out
    }

    /// Reads a graph cache written by [`Graph::export`]. Every record is
    /// decoded and its signature verified again (the file may have been
    /// altered), and expired ones are dropped.
    pub fn import(bytes: &[u8], now: Time) -> Result<Graph, ImportError> {
        Graph::import_with(bytes, now, &Ed25519Verifier).map(|(graph, _)| graph)
    }

    /// [`Graph::import`] with a chosen verifier; also returns how many
    /// records were dropped (malformed, badly signed, expired or superseded).
    pub fn import_with(
        bytes: &[u8],
        now: Time,
        verifier: &dyn RecordVerifier,
    ) -> Result<(Graph, usize), ImportError> {
        let mut r = Reader::new(bytes);
        let version = r.u8().ok_or(ImportError::Truncated)?;
        if version != EXPORT_VERSION {
            return Err(ImportError::UnknownVersion(version));
        }
        let count = r.u32().ok_or(ImportError::Truncated)?;
        let mut graph = Graph::new();
        let mut dropped = 0;
        for _ in 0..count {
            let len = r.u16().ok_or(ImportError::Truncated)?;
            let rec_bytes = r.take(usize::from(len)).ok_or(ImportError::Truncated)?;
            let inserted = NodeRecord::decode(rec_bytes)
                .map_err(|_: RecordError| ())
                .and_then(|rec| graph.insert(Arc::new(rec), now, verifier).map_err(|_| ()));
            if inserted.is_err() {
                dropped += 1;
            }
        }
        if r.remaining() != 0 {
            return Err(ImportError::TrailingBytes(r.remaining()));
        }
        Ok((graph, dropped))
    }

    /// Estimated memory held (see [`GraphMemory`]).
    pub fn memory(&self) -> GraphMemory {
        let alloc = heap;
        let index = self.index.heap_bytes() + ALLOC_OVERHEAD;
        let slots = alloc(self.slots.capacity(), size_of::<Option<Arc<NodeRecord>>>())
            + alloc(self.free.capacity(), size_of::<u32>());
        let adjacency = self.adjacency.get().map_or(0, |a| {
            alloc(a.offsets.capacity(), size_of::<u32>())
                + alloc(a.targets.capacity(), size_of::<u32>())
        });
        // An Arc allocation holds two reference counts and the NodeRecord;
        // the NodeRecord points to its encoded bytes.
        let records = self
            .records()
            .map(|r| {
                2 * size_of::<usize>()
                    + size_of::<NodeRecord>()
                    + r.encoded_len()
                    + 2 * ALLOC_OVERHEAD
            })
            .sum();
        GraphMemory {
            index,
            slots,
            adjacency,
            records,
            flood: 0,
        }
    }
}

/// Whether `record`'s expiry is acceptable at `now`: not passed, and not
/// further ahead than a record signed now by a clock [`MAX_CLOCK_SKEW`] fast.
pub(crate) fn check_expiry(record: &NodeRecord, now: Time) -> Result<(), DropReason> {
    let now_secs = now.unix_secs();
    if record.expiry() <= now_secs {
        return Err(DropReason::Expired);
    }
    let limit = now
        .saturating_add(RECORD_LIFETIME)
        .saturating_add(MAX_CLOCK_SKEW);
    if record.expiry() > limit.unix_secs() {
        return Err(DropReason::TooFarAhead);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::graph::Edge;
    use proptest::prelude::*;

    const NOW: Time = Time::from_unix_secs(1_700_000_000);

    fn ids(n: usize) -> Vec<Identity> {
        (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
                Identity::from_seed(&seed)
            })
            .collect()
    }

    fn rec(id: &Identity, seq: u64, peers: &[&Identity]) -> Arc<NodeRecord> {
        let edges: Vec<Edge> = peers
            .iter()
            .map(|p| Edge {
                peer: p.public(),
                capacity: 1,
            })
            .collect();
        let expiry = (NOW + RECORD_LIFETIME).unix_secs();
        Arc::new(NodeRecord::sign(id, seq, expiry, 0, &edges).expect("sign"))
    }

    /// A graph of records listing `edges` (as index pairs) on both sides.
    fn graph_of(ids: &[Identity], edges: &[(usize, usize)]) -> Graph {
        let mut g = Graph::new();
        for (i, id) in ids.iter().enumerate() {
            let peers: Vec<&Identity> = edges
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(&ids[b])
                    } else if b == i {
                        Some(&ids[a])
                    } else {
                        None
                    }
                })
                .collect();
            g.insert(rec(id, 1, &peers), NOW, &Ed25519Verifier)
                .expect("insert");
        }
        g
    }

    #[test]
    fn only_two_sided_edges_count() {
        let ids = ids(3);
        let mut g = Graph::new();
        // 0 lists 1 and 2; 1 lists 0; 2 lists nobody.
        g.insert(rec(&ids[0], 1, &[&ids[1], &ids[2]]), NOW, &Ed25519Verifier)
            .expect("0");
        g.insert(rec(&ids[1], 1, &[&ids[0]]), NOW, &Ed25519Verifier)
            .expect("1");
        g.insert(rec(&ids[2], 1, &[]), NOW, &Ed25519Verifier)
            .expect("2");
        assert_eq!(g.node_count(), 3);
        assert_eq!(g.edge_count(), 1);
        assert_eq!(g.neighbours(&ids[0].public()), vec![ids[1].public()]);
        assert!(g.neighbours(&ids[2].public()).is_empty());
        assert_eq!(g.edge(&ids[0].public(), &ids[2].public()), None);
        assert_eq!(g.edge(&ids[0].public(), &ids[1].public()), Some(1));
        assert_eq!(g.shortest_path(&ids[0].public(), &ids[2].public()), None);
        // Once 2 lists 0 as well, the edge counts.
        g.insert(rec(&ids[2], 2, &[&ids[0]]), NOW, &Ed25519Verifier)
            .expect("2 again");
        assert_eq!(g.edge_count(), 2);
        assert_eq!(
            g.shortest_path(&ids[1].public(), &ids[2].public()),
            Some(vec![ids[1].public(), ids[0].public(), ids[2].public()])
        );
    }

    #[test]
    fn newer_replaces_older_and_duplicates_are_dropped() {
        let ids = ids(2);
        let mut g = Graph::new();
        let slot = g
            .insert(rec(&ids[0], 5, &[]), NOW, &Ed25519Verifier)
            .expect("first");
        assert_eq!(slot, Inserted::New(0));
        assert_eq!(
            g.insert(rec(&ids[0], 5, &[]), NOW, &Ed25519Verifier),
            Err(DropReason::Duplicate)
        );
        assert_eq!(
            g.insert(rec(&ids[0], 4, &[]), NOW, &Ed25519Verifier),
            Err(DropReason::Stale)
        );
        assert_eq!(
            g.insert(rec(&ids[0], 6, &[&ids[1]]), NOW, &Ed25519Verifier),
            Ok(Inserted::Replaced(0))
        );
        assert_eq!(g.lookup(&ids[0].public()), Some((0, 6)));
        assert_eq!(g.node_count(), 1);
    }

    /// A verifier that says no, and panics if asked about a record that the
    /// cheap checks should have dropped first.
    struct Refuse;
    impl RecordVerifier for Refuse {
        fn verify(&self, _: &NodeRecord) -> bool {
            false
        }
    }

    #[test]
    fn bad_signatures_and_bad_expiries_are_dropped() {
        let ids = ids(1);
        let mut g = Graph::new();
        assert_eq!(
            g.insert(rec(&ids[0], 1, &[]), NOW, &Refuse),
            Err(DropReason::BadSignature)
        );
        let past = Arc::new(NodeRecord::sign(&ids[0], 1, NOW.unix_secs(), 0, &[]).expect("sign"));
        assert_eq!(
            g.insert(past, NOW, &Ed25519Verifier),
            Err(DropReason::Expired)
        );
        let far = NOW + RECORD_LIFETIME + MAX_CLOCK_SKEW + std::time::Duration::from_secs(1);
        let far = Arc::new(NodeRecord::sign(&ids[0], 1, far.unix_secs(), 0, &[]).expect("sign"));
        assert_eq!(
            g.insert(far, NOW, &Ed25519Verifier),
            Err(DropReason::TooFarAhead)
        );
        assert_eq!(g.node_count(), 0);
    }

    #[test]
    fn expired_records_disappear() {
        let ids = ids(3);
        let mut g = graph_of(&ids, &[(0, 1), (1, 2)]);
        let late = NOW + std::time::Duration::from_secs(3600);
        // Node 2 re-signs later, so it outlives the others.
        let expiry = (late + RECORD_LIFETIME).unix_secs();
        let edges = [Edge {
            peer: ids[1].public(),
            capacity: 1,
        }];
        let r2 = NodeRecord::sign(&ids[2], 2, expiry, 0, &edges).expect("sign");
        g.insert(Arc::new(r2), late, &Ed25519Verifier)
            .expect("re-signed");
        assert_eq!(g.edge_count(), 2);
        assert_eq!(
            g.remove_expired(NOW + RECORD_LIFETIME - std::time::Duration::from_secs(1)),
            0
        );
        assert_eq!(g.next_expiry(), Some(NOW + RECORD_LIFETIME));
        assert_eq!(g.remove_expired(NOW + RECORD_LIFETIME), 2);
        assert_eq!(g.node_count(), 1);
        assert!(g.get(&ids[0].public()).is_none());
        assert_eq!(g.edge_count(), 0);
        assert_eq!(g.next_expiry(), Some(late + RECORD_LIFETIME));
        // Freed slots are reused.
        let r0 = NodeRecord::sign(&ids[0], 9, expiry, 0, &[]).expect("sign");
        let again = g.insert(Arc::new(r0), NOW + RECORD_LIFETIME, &Ed25519Verifier);
        assert!(matches!(again, Ok(Inserted::New(s)) if s < 2));
    }

    #[test]
    fn export_import_round_trip() {
        let ids = ids(5);
        let g = graph_of(&ids, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]);
        let bytes = g.export();
        let back = Graph::import(&bytes, NOW).expect("import");
        assert_eq!(back.node_count(), 5);
        assert_eq!(back.counted_edges(), g.counted_edges());
        // After expiry, nothing comes back.
        let later = Graph::import(&bytes, NOW + RECORD_LIFETIME).expect("import");
        assert_eq!(later.node_count(), 0);
        // A flipped bit in a record drops that record only.
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let (partial, dropped) = Graph::import_with(&bad, NOW, &Ed25519Verifier).expect("import");
        assert_eq!((partial.node_count(), dropped), (4, 1));
        assert_eq!(
            Graph::import(&bytes[..bytes.len() - 1], NOW).err(),
            Some(ImportError::Truncated)
        );
        assert_eq!(
            Graph::import(&[9], NOW).err(),
            Some(ImportError::UnknownVersion(9))
        );
        let mut trailing = bytes;
        trailing.push(0);
        assert_eq!(
            Graph::import(&trailing, NOW).err(),
            Some(ImportError::TrailingBytes(1))
        );
    }

    /// Breadth-first search from scratch over all records, for comparison.
    fn naive_distance(g: &Graph, from: &[u8; 32], to: &[u8; 32]) -> Option<usize> {
        let mut dist = std::collections::HashMap::from([(*from, 0usize)]);
        let mut frontier = vec![*from];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for k in frontier {
                let d = dist[&k];
                if &k == to {
                    return Some(d);
                }
                for e in g.get(&k).expect("node").edges() {
                    let two_sided = g.get(&e.peer).is_some_and(|p| p.lists(&k).is_some());
                    if two_sided && !dist.contains_key(&e.peer) {
                        dist.insert(e.peer, d + 1);
                        next.push(e.peer);
                    }
                }
            }
            frontier = next;
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn shortest_paths_are_shortest(
            edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30),
            one_sided in proptest::collection::vec((0usize..12, 0usize..12), 0..6),
        ) {
            let ids = ids(12);
            let mut listed: Vec<Vec<&Identity>> = vec![Vec::new(); 12];
            for &(a, b) in &edges {
                if a != b && !listed[a].iter().any(|p| p.public() == ids[b].public()) {
                    listed[a].push(&ids[b]);
                    listed[b].push(&ids[a]);
                }
            }
            for &(a, b) in &one_sided {
                if a != b && !listed[a].iter().any(|p| p.public() == ids[b].public()) {
                    listed[a].push(&ids[b]);
                }
            }
            let mut g = Graph::new();
            for (i, id) in ids.iter().enumerate() {
                g.insert(rec(id, 1, &listed[i]), NOW, &Ed25519Verifier).expect("insert");
            }
            for a in 0..12 {
                for b in 0..12 {
                    let (ka, kb) = (ids[a].public(), ids[b].public());
                    let path = g.shortest_path(&ka, &kb);
                    prop_assert_eq!(path.as_ref().map(|p| p.len() - 1), naive_distance(&g, &ka, &kb));
                    if let Some(p) = path {
                        prop_assert_eq!(p.first(), Some(&ka));
                        prop_assert_eq!(p.last(), Some(&kb));
                        for w in p.windows(2) {
                            prop_assert!(g.edge(&w[0], &w[1]).is_some());
                        }
                    }
                }
            }
        }
    }
}
