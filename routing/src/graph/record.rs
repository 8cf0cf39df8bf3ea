//! Node records: what a node signs about itself (`docs/protocol.md, "Node records"`).
//!
//! Encoding, version 1 (all integers big-endian):
//!
//! ```text
//! version   u8        = 1
//! key       [u8; 32]  the node's Ed25519 public key
//! seq       u64       sequence number; a higher one replaces a lower one
//! expiry    u64       unix seconds after which the record is void
//! features  u32       feature bits (none defined yet)
//! count     u16       number of edges, at most 256
//! edges     count × (peer [u8; 32], capacity class u8), peers strictly ascending
//! signature [u8; 64]  Ed25519, by `key`, over "umbra node record v1\0" ++ all the bytes above
//! ```
//!
//! The encoding is canonical: edges are sorted by peer key with no repeats and
//! no edge to the node itself, and nothing follows the signature. So decoding
//! and encoding again gives the same bytes, and two records are equal exactly
//! when their bytes are. There is no field for an IP address, and there never
//! will be: the graph is public, and a node's IP is known only to the nodes it
//! has an agreement with.

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::fmt;

use super::codec::Reader;
use crate::crypto::{self, Identity, KEY_LEN, SIGNATURE_LEN};

/// The record encoding's version byte.
pub const RECORD_VERSION: u8 = 1;
/// Most agreement edges a record may list.
pub const MAX_EDGES: usize = 256;
/// Bytes of one edge: the peer's key and its capacity class.
const EDGE_LEN: usize = KEY_LEN + 1;
/// Bytes before the edges: version, key, seq, expiry, features, count.
const HEADER_LEN: usize = 1 + KEY_LEN + 8 + 8 + 4 + 2;
/// Length of a record without edges.
pub const MIN_RECORD_LEN: usize = HEADER_LEN + SIGNATURE_LEN;
/// Length of a record with [`MAX_EDGES`] edges, the largest there is
/// (8,567 bytes).
pub const MAX_RECORD_LEN: usize = HEADER_LEN + MAX_EDGES * EDGE_LEN + SIGNATURE_LEN;
/// Domain separation: the identity key signs other things too (agreements,
/// handshakes), and a record signature must never be valid as one of those.
const SIGNING_CONTEXT: &[u8] = b"umbra node record v1\0";

/// One agreement edge as a record lists it. It counts in the graph only when
/// the peer's record lists this node too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Edge {
    /// The peer's public key.
    pub peer: [u8; KEY_LEN],
    /// The edge's capacity class, as the agreement's terms give it: higher
    /// means more capacity. Path selection decides what the classes weigh.
    pub capacity: u8,
}

/// Why bytes are not a node record, or fields cannot make one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than a record without edges.
    #[error("node record is {0} bytes, shorter than the minimum {MIN_RECORD_LEN}")]
    TooShort(usize),
    /// Longer than a record with the most edges.
    #[error("node record is {0} bytes, longer than the maximum {MAX_RECORD_LEN}")]
    TooLong(usize),
    /// A version this code does not know.
    #[error("node record version {0} is unknown (this node knows {RECORD_VERSION})")]
    UnknownVersion(u8),
    /// More edges than a record may list.
    #[error("node record lists {0} edges, more than the maximum {MAX_EDGES}")]
    TooManyEdges(usize),
    /// The length does not match the edge count.
    #[error("node record is {actual} bytes, but its edge count makes it {expected}")]
    LengthMismatch {
        /// The length the edge count implies.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// Edges out of order or listed twice.
    #[error("node record edges are not in strictly ascending order of peer key")]
    EdgesNotSorted,
    /// An edge from a node to itself.
    #[error("node record lists an edge to the node itself")]
    SelfEdge,
}

/// A signed node record (see the module documentation for the encoding).
///
/// It can only be made by [`NodeRecord::sign`] or [`NodeRecord::decode`], so
/// it is always well formed; whether its signature is valid is a separate
/// question ([`NodeRecord::verify_signature`]). It holds its encoded bytes and
/// reads its edges from them, so a record costs little more than its
/// encoding. Records are immutable and shared (`Arc<NodeRecord>`) between the
/// graph, the flooding queues and, in the simulation, many nodes.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeRecord {
    bytes: Box<[u8]>,
    key: [u8; KEY_LEN],
    seq: u64,
    expiry: u64,
    features: u32,
}

impl fmt::Debug for NodeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeRecord")
            .field("key", &hex::encode(self.key))
            .field("seq", &self.seq)
            .field("expiry", &self.expiry)
            .field("features", &self.features)
            .field("edges", &self.edge_count())
            .finish()
    }
}

impl NodeRecord {
    /// Signs a record for `identity`. Edges may come in any order; they are
    /// sorted. `expiry` is in unix seconds.
    pub fn sign(
        identity: &Identity,
        seq: u64,
        expiry: u64,
        features: u32,
        edges: &[Edge],
    ) -> Result<NodeRecord, RecordError> {
        let key = identity.public();
        let mut edges = edges.to_vec();
        edges.sort_unstable();
        check_edges(&key, &edges)?;
        let count =
            u16::try_from(edges.len()).map_err(|_| RecordError::TooManyEdges(edges.len()))?;

        let mut bytes = Vec::with_capacity(HEADER_LEN + edges.len() * EDGE_LEN + SIGNATURE_LEN);
        bytes.push(RECORD_VERSION);
        bytes.extend_from_slice(&key);
        bytes.extend_from_slice(&seq.to_be_bytes());
        bytes.extend_from_slice(&expiry.to_be_bytes());
        bytes.extend_from_slice(&features.to_be_bytes());
        bytes.extend_from_slice(&count.to_be_bytes());
        for e in &edges {
            bytes.extend_from_slice(&e.peer);
            bytes.push(e.capacity);
        }
        let signature = identity.sign(&signed_message(&bytes));
        bytes.extend_from_slice(&signature);
        Ok(NodeRecord {
            bytes: bytes.into_boxed_slice(),
            key,
            seq,
            expiry,
            features,
        })
    }

    /// Decodes a record. Total: any bytes give a record or an error, never a
    /// panic. The signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, RecordError> {
        let (key, seq) = Self::peek(bytes)?;
        let mut r = Reader::new(bytes);
        // `peek` checked the length covers the header.
        let header = r
            .take(HEADER_LEN)
            .ok_or(RecordError::TooShort(bytes.len()))?;
        let mut h = Reader::new(header);
        let _version_key_seq = h.take(1 + KEY_LEN + 8);
        let expiry = h.u64().ok_or(RecordError::TooShort(bytes.len()))?;
        let features = h.u32().ok_or(RecordError::TooShort(bytes.len()))?;
        let count = usize::from(h.u16().ok_or(RecordError::TooShort(bytes.len()))?);
        if count > MAX_EDGES {
            return Err(RecordError::TooManyEdges(count));
        }
        let expected = HEADER_LEN + count * EDGE_LEN + SIGNATURE_LEN;
        if bytes.len() != expected {
            return Err(RecordError::LengthMismatch {
                expected,
                actual: bytes.len(),
            });
        }
        let edge_bytes = r
            .take(count * EDGE_LEN)
            .ok_or(RecordError::LengthMismatch {
                expected,
                actual: bytes.len(),
            })?;
        let mut prev: Option<&[u8]> = None;
        for chunk in edge_bytes.chunks_exact(EDGE_LEN) {
            let peer = chunk.get(..KEY_LEN).unwrap_or_default();
            if peer == key.as_slice() {
                return Err(RecordError::SelfEdge);
            }
            if prev.is_some_and(|p| p >= peer) {
                return Err(RecordError::EdgesNotSorted);
            }
            prev = Some(peer);
        }
        Ok(NodeRecord {
            bytes: bytes.into(),
            key,
            seq,
            expiry,
            features,
        })
    }

    /// The key and sequence number of encoded record bytes, read without
    /// decoding the rest: the flood path drops duplicates and older records
    /// with this before it decodes or verifies anything. Checks only the
    /// version and that the length lies within the limits.
    pub fn peek(bytes: &[u8]) -> Result<([u8; KEY_LEN], u64), RecordError> {
        if bytes.len() < MIN_RECORD_LEN {
            return Err(RecordError::TooShort(bytes.len()));
        }
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLong(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let short = RecordError::TooShort(bytes.len());
        let version = r.u8().ok_or(short)?;
        if version != RECORD_VERSION {
            return Err(RecordError::UnknownVersion(version));
        }
        let key = r.array::<KEY_LEN>().ok_or(short)?;
        let seq = r.u64().ok_or(short)?;
        Ok((key, seq))
    }

    /// The encoded, signed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// The node's public key.
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The expiry, in unix seconds. The record is void from this second on.
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// The feature bits.
    pub fn features(&self) -> u32 {
        self.features
    }

    /// Number of edges listed.
    pub fn edge_count(&self) -> usize {
        self.edge_bytes().len() / EDGE_LEN
    }

    /// The listed edges, in ascending order of peer key.
    pub fn edges(&self) -> impl ExactSizeIterator<Item = Edge> + '_ {
        self.edge_bytes().chunks_exact(EDGE_LEN).map(|chunk| {
            match chunk.split_first_chunk::<KEY_LEN>() {
                Some((peer, [capacity])) => Edge {
                    peer: *peer,
                    capacity: *capacity,
                },
                // Unreachable: chunks are EDGE_LEN long.
                _ => Edge {
                    peer: [0; KEY_LEN],
                    capacity: 0,
                },
            }
        })
    }

    /// The capacity class of the edge this record lists to `peer`, if it
    /// lists one (a binary search over the sorted edges).
    pub fn lists(&self, peer: &[u8; KEY_LEN]) -> Option<u8> {
        let edges = self.edge_bytes();
        let (mut lo, mut hi) = (0, edges.len() / EDGE_LEN);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = mid * EDGE_LEN;
            let candidate = edges.get(at..at + KEY_LEN)?;
            match candidate.cmp(peer.as_slice()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return edges.get(at + KEY_LEN).copied(),
            }
        }
        None
    }

    /// The signature.
    pub fn signature(&self) -> [u8; SIGNATURE_LEN] {
        self.bytes
            .last_chunk::<SIGNATURE_LEN>()
            .copied()
            .unwrap_or([0; SIGNATURE_LEN])
    }

    /// Whether the signature is the key's signature of the record. This is
    /// the real Ed25519 check (about 50 µs); the flood path calls it through
    /// a [`RecordVerifier`].
    pub fn verify_signature(&self) -> bool {
        let signed = self
            .bytes
            .get(..self.bytes.len().saturating_sub(SIGNATURE_LEN));
        match signed {
            Some(signed) => crypto::verify(&self.key, &signed_message(signed), &self.signature()),
            None => false,
        }
    }

    fn edge_bytes(&self) -> &[u8] {
        let end = self.bytes.len().saturating_sub(SIGNATURE_LEN);
        self.bytes.get(HEADER_LEN..end).unwrap_or_default()
    }
}

/// Edges in strictly ascending order, without an edge to `key`, at most
/// [`MAX_EDGES`].
fn check_edges(key: &[u8; KEY_LEN], edges: &[Edge]) -> Result<(), RecordError> {
    if edges.len() > MAX_EDGES {
        return Err(RecordError::TooManyEdges(edges.len()));
    }
    if edges.iter().any(|e| &e.peer == key) {
        return Err(RecordError::SelfEdge);
    }
    if edges
        .windows(2)
        .any(|w| matches!(w, [a, b] if a.peer >= b.peer))
    {
        return Err(RecordError::EdgesNotSorted);
    }
    Ok(())
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    msg.extend_from_slice(SIGNING_CONTEXT);
    msg.extend_from_slice(body);
    msg
}

/// Checks record signatures for the flood path and for imports.
///
/// The default, [`Ed25519Verifier`], is the real check. The simulation
/// injects one that memoizes the result per distinct record bytes, so each
/// distinct record is verified once in a run instead of once per node; that
/// is honest because identical bytes verify identically.
pub trait RecordVerifier: Send + Sync {
    /// Whether `record` carries a valid signature by its key.
    fn verify(&self, record: &NodeRecord) -> bool;
}

/// The real Ed25519 check.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ed25519Verifier;

impl RecordVerifier for Ed25519Verifier {
    fn verify(&self, record: &NodeRecord) -> bool {
        record.verify_signature()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> Identity {
        Identity::from_seed(&[n; 32])
    }

    fn edge(n: u8, capacity: u8) -> Edge {
        Edge {
            peer: id(n).public(),
            capacity,
        }
    }

    #[test]
    fn sign_decode_verify() {
        let rec = NodeRecord::sign(&id(1), 7, 1000, 3, &[edge(3, 2), edge(2, 1)]).expect("sign");
        assert_eq!(rec.encoded_len(), HEADER_LEN + 2 * EDGE_LEN + SIGNATURE_LEN);
        let back = NodeRecord::decode(rec.as_bytes()).expect("decode");
        assert_eq!(back, rec);
        assert!(back.verify_signature());
        assert_eq!(back.seq(), 7);
        assert_eq!(back.expiry(), 1000);
        assert_eq!(back.features(), 3);
        assert_eq!(back.edge_count(), 2);
        assert_eq!(back.lists(&id(2).public()), Some(1));
        assert_eq!(back.lists(&id(3).public()), Some(2));
        assert_eq!(back.lists(&id(4).public()), None);
        let mut sorted = vec![edge(3, 2), edge(2, 1)];
        sorted.sort();
        assert_eq!(back.edges().collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn bad_edges_are_refused() {
        assert_eq!(
            NodeRecord::sign(&id(1), 1, 1, 0, &[edge(1, 0)]).err(),
            Some(RecordError::SelfEdge)
        );
        assert_eq!(
            NodeRecord::sign(&id(1), 1, 1, 0, &[edge(2, 0), edge(2, 1)]).err(),
            Some(RecordError::EdgesNotSorted)
        );
        let many: Vec<Edge> = (0..=MAX_EDGES as u16)
            .map(|i| {
                let mut peer = [0xAA; 32];
                peer[..2].copy_from_slice(&i.to_be_bytes());
                Edge { peer, capacity: 0 }
            })
            .collect();
        assert_eq!(
            NodeRecord::sign(&id(1), 1, 1, 0, &many).err(),
            Some(RecordError::TooManyEdges(MAX_EDGES + 1))
        );
        let max = NodeRecord::sign(&id(1), 1, 1, 0, &many[..MAX_EDGES]).expect("256 edges");
        assert_eq!(max.encoded_len(), MAX_RECORD_LEN);
        assert_eq!(NodeRecord::decode(max.as_bytes()).as_ref(), Ok(&max));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let rec = NodeRecord::sign(&id(1), 7, 1000, 0, &[edge(2, 1)]).expect("sign");
        for i in 0..rec.encoded_len() {
            let mut bytes = rec.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            if let Ok(bad) = NodeRecord::decode(&bytes) {
                assert!(
                    !bad.verify_signature(),
                    "flipping byte {i} kept the signature valid"
                );
            }
        }
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let rec = NodeRecord::sign(&id(1), 7, 1000, 0, &[edge(2, 1), edge(3, 1)]).expect("sign");
        let b = rec.as_bytes();
        // Swap the two edges.
        let mut swapped = b.to_vec();
        swapped[HEADER_LEN..HEADER_LEN + 2 * EDGE_LEN].copy_from_slice(
            &[
                &b[HEADER_LEN + EDGE_LEN..HEADER_LEN + 2 * EDGE_LEN],
                &b[HEADER_LEN..HEADER_LEN + EDGE_LEN],
            ]
            .concat(),
        );
        assert_eq!(
            NodeRecord::decode(&swapped),
            Err(RecordError::EdgesNotSorted)
        );
        let mut trailing = b.to_vec();
        trailing.push(0);
        assert!(matches!(
            NodeRecord::decode(&trailing),
            Err(RecordError::LengthMismatch { .. })
        ));
        let mut version = b.to_vec();
        version[0] = 2;
        assert_eq!(
            NodeRecord::decode(&version),
            Err(RecordError::UnknownVersion(2))
        );
        assert_eq!(NodeRecord::decode(&b[..10]), Err(RecordError::TooShort(10)));
        assert_eq!(
            NodeRecord::decode(&vec![1; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLong(MAX_RECORD_LEN + 1))
        );
        let mut count = b.to_vec();
        count[HEADER_LEN - 2..HEADER_LEN].copy_from_slice(&300u16.to_be_bytes());
        assert_eq!(
            NodeRecord::decode(&count),
            Err(RecordError::TooManyEdges(300))
        );
    }

    #[test]
    fn the_verifier_is_the_real_check() {
        let rec = NodeRecord::sign(&id(1), 7, 1000, 0, &[]).expect("sign");
        assert!(Ed25519Verifier.verify(&rec));
        let mut bytes = rec.as_bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let bad = NodeRecord::decode(&bytes).expect("still well formed");
        assert!(!Ed25519Verifier.verify(&bad));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(
            seed in any::<[u8; 32]>(),
            seq in any::<u64>(),
            expiry in any::<u64>(),
            features in any::<u32>(),
            peers in proptest::collection::btree_map(any::<[u8; 32]>(), any::<u8>(), 0..40),
        ) {
            let identity = Identity::from_seed(&seed);
            let edges: Vec<Edge> = peers
                .into_iter()
                .filter(|(peer, _)| *peer != identity.public())
                .map(|(peer, capacity)| Edge { peer, capacity })
                .collect();
            let rec = NodeRecord::sign(&identity, seq, expiry, features, &edges).expect("sign");
            let back = NodeRecord::decode(rec.as_bytes()).expect("decode");
            prop_assert_eq!(&back, &rec);
            prop_assert_eq!(back.key(), &identity.public());
            prop_assert_eq!(back.seq(), seq);
            prop_assert_eq!(back.expiry(), expiry);
            prop_assert_eq!(back.features(), features);
            prop_assert_eq!(back.edges().collect::<Vec<_>>(), edges.clone());
            for e in &edges {
                prop_assert_eq!(back.lists(&e.peer), Some(e.capacity));
            }
            prop_assert!(back.verify_signature());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Ok(rec) = NodeRecord::decode(&bytes) {
                // Canonical: what decodes re-encodes to the same bytes.
                prop_assert_eq!(rec.as_bytes(), &bytes[..]);
                let _ = rec.verify_signature();
                let _ = rec.edges().count();
            }
            let _ = NodeRecord::peek(&bytes);
        }

        #[test]
        fn header_shaped_bytes_never_panic(
            count in 0u16..300,
            tail in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            // Bytes that pass the version and count checks reach the deeper paths.
            let mut bytes = vec![RECORD_VERSION];
            bytes.extend_from_slice(&[7; 32 + 8 + 8 + 4]);
            bytes.extend_from_slice(&count.to_be_bytes());
            bytes.extend_from_slice(&tail);
            if let Ok(rec) = NodeRecord::decode(&bytes) {
                prop_assert_eq!(rec.as_bytes(), &bytes[..]);
                prop_assert_eq!(rec.edge_count(), usize::from(count));
            }
        }
    }
}
