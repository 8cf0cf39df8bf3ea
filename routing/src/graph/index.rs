//! The key → slot index of a [`Graph`](super::Graph): an open-addressing hash
//! table that stores only a slot number and 32 bits of the key's hash.
//!
//! Why not `HashMap<[u8; 32], u32>`: it stores every 32-byte key a second
//! time (the record already holds it) and costs about 60 bytes per node,
//! this costs about 13. That matters in the simulation, where 10,000 nodes
//! each hold a 10,000-node graph.
//!
//! The hash is a multiply–xorshift over the key's four 64-bit words, keyed
//! with a per-table random secret, about five times cheaper than SipHash
//! (this lookup runs for every record a node receives). Keys are Ed25519
//! public keys: nobody chooses their bytes, only grinds for them, and
//! without the secret nobody can tell which keys share a bucket. Nothing
//! iterates this table, so its random layout never changes what a node
//! sends.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use super::record::NodeRecord;

/// Marks an empty bucket.
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Slot of the record in the graph, or [`EMPTY`].
    slot: u32,
    /// The low 32 bits of the key's hash: the home bucket, and a cheap
    /// filter before comparing keys.
    tag: u32,
}

const VACANT: Bucket = Bucket {
    slot: EMPTY,
    tag: 0,
};

/// Records by slot, as the graph stores them; the index reads keys from them.
pub(crate) type Slots = [Option<Arc<NodeRecord>>];

#[derive(Clone, Debug)]
pub(crate) struct KeyIndex {
    buckets: Vec<Bucket>,
    len: usize,
    /// The hash's secret.
    secret: u64,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            buckets: Vec::new(),
            len: 0,
            // std's per-process random keys, stirred per table.
            secret: RandomState::new().hash_one(0u8) | 1,
        }
    }
}

fn key_at(slots: &Slots, slot: u32) -> Option<&[u8; 32]> {
    let rec = slots.get(usize::try_from(slot).ok()?)?.as_ref()?;
    Some(rec.key())
}

impl KeyIndex {
    fn tag(&self, key: &[u8; 32]) -> u32 {
        const M: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut h = self.secret;
        for word in key.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(M);
            h ^= h >> 29;
        }
        h = (h ^ self.secret.rotate_left(32)).wrapping_mul(M);
        // Truncation intended: the high bits are the best mixed.
        (h >> 32) as u32
    }

    /// The slot of `key`, if the index holds it.
    pub(crate) fn get(&self, key: &[u8; 32], slots: &Slots) -> Option<u32> {
        self.find(key, slots).map(|(_, slot)| slot)
    }

    /// Bucket position and slot of `key`.
    fn find(&self, key: &[u8; 32], slots: &Slots) -> Option<(usize, u32)> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let tag = self.tag(key);
        let mut i = tag as usize & mask;
        // The load factor stays below 1, so an empty bucket ends every probe.
        loop {
            let b = self.buckets[i];
            if b.slot == EMPTY {
                return None;
            }
            if b.tag == tag && key_at(slots, b.slot) == Some(key) {
                return Some((i, b.slot));
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `key` at `slot`. The key must not be in the index yet.
    pub(crate) fn insert(&mut self, key: &[u8; 32], slot: u32) {
        if (self.len + 1) * 4 > self.buckets.len() * 3 {
            self.grow();
        }
        let tag = self.tag(key);
        self.place(Bucket { slot, tag });
        self.len += 1;
    }

    fn place(&mut self, bucket: Bucket) {
        let mask = self.buckets.len() - 1;
        let mut i = bucket.tag as usize & mask;
        while self.buckets[i].slot != EMPTY {
            i = (i + 1) & mask;
        }
        self.buckets[i] = bucket;
    }

    fn grow(&mut self) {
        let cap = (self.buckets.len() * 2).max(16);
        let old = std::mem::replace(&mut self.buckets, vec![VACANT; cap]);
        for b in old.into_iter().filter(|b| b.slot != EMPTY) {
            self.place(b);
        }
    }

    /// Removes `key`; returns its slot. Backward-shift deletion, so no
    /// tombstones pile up under churn.
    pub(crate) fn remove(&mut self, key: &[u8; 32], slots: &Slots) -> Option<u32> {
        let (mut hole, slot) = self.find(key, slots)?;
        let mask = self.buckets.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let b = self.buckets[j];
            if b.slot == EMPTY {
                break;
            }
            let home = b.tag as usize & mask;
            // `b` may move into the hole if the hole lies on its probe path,
            // i.e. between its home bucket and where it sits now.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = VACANT;
        self.len -= 1;
        Some(slot)
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn record(n: u16) -> Arc<NodeRecord> {
        let mut seed = [0u8; 32];
        seed[..2].copy_from_slice(&n.to_be_bytes());
        Arc::new(NodeRecord::sign(&Identity::from_seed(&seed), 1, 1, 0, &[]).expect("sign"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The index agrees with a `HashMap` under any sequence of inserts and
        /// removes.
        #[test]
        fn agrees_with_a_hash_map(ops in proptest::collection::vec((any::<bool>(), 0u16..64), 0..300)) {
            let records: Vec<Arc<NodeRecord>> = (0..64).map(record).collect();
            let mut slots: Vec<Option<Arc<NodeRecord>>> = Vec::new();
            let mut free: Vec<u32> = Vec::new();
            let mut index = KeyIndex::default();
            let mut model: HashMap<[u8; 32], u32> = HashMap::new();
            for (add, n) in ops {
                let rec = &records[usize::from(n)];
                let key = *rec.key();
                if add && !model.contains_key(&key) {
                    let slot = match free.pop() {
                        Some(s) => s,
                        None => { slots.push(None); (slots.len() - 1) as u32 }
                    };
                    slots[slot as usize] = Some(rec.clone());
                    index.insert(&key, slot);
                    model.insert(key, slot);
                } else if !add {
                    let got = index.remove(&key, &slots);
                    prop_assert_eq!(got, model.remove(&key));
                    if let Some(s) = got {
                        slots[s as usize] = None;
                        free.push(s);
                    }
                }
                for r in &records {
                    prop_assert_eq!(index.get(r.key(), &slots), model.get(r.key()).copied());
                }
            }
        }
    }
}
