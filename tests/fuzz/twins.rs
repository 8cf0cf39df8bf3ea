//! The fuzz targets of `tests/fuzz` whose bodies live there (not in a
//! crate's own tests) run here as property tests over arbitrary bytes, so
//! the normal suite builds them and checks their invariants without
//! cargo-fuzz (docs/architecture.md, "Testing"). The other targets' twins are
//! `routing/tests/fuzz_twins.rs` and `transport/tests/proto_fuzz_targets.rs`.

use proptest::prelude::*;

#[path = "bodies/node_record.rs"]
mod node_record;

/// A record's fixed header: version, key, sequence number, expiry,
/// features, edge count.
const RECORD_HEADER_LEN: usize = 1 + 32 + 8 + 8 + 4 + 2;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn node_record_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        node_record::node_record(&data);
    }

    #[test]
    fn node_record_on_record_shaped_bytes(
        key in any::<[u8; 32]>(),
        seq in any::<u64>(),
        expiry in 1_750_000_000u64..1_750_100_000,
        peers in proptest::collection::btree_set(any::<[u8; 32]>(), 0..6),
        signature in any::<[u8; 64]>(),
        cut in any::<u16>(),
        as_message in any::<bool>(),
    ) {
        // Valid structure (sorted edges, right length) with a random
        // signature, so the deeper paths run: as a record, as a records
        // message, and cut short.
        let mut rec = vec![umbra_routing::graph::RECORD_VERSION];
        rec.extend_from_slice(&key);
        rec.extend_from_slice(&seq.to_be_bytes());
        rec.extend_from_slice(&expiry.to_be_bytes());
        rec.extend_from_slice(&0u32.to_be_bytes());
        rec.extend_from_slice(&(peers.len() as u16).to_be_bytes());
        for p in &peers {
            rec.extend_from_slice(p);
            rec.push(1);
        }
        rec.extend_from_slice(&signature);
        prop_assert_eq!(rec.len(), RECORD_HEADER_LEN + 33 * peers.len() + 64);
        let data = if as_message {
            let mut m = vec![1u8, 1, 0, 1];
            m.extend_from_slice(&(rec.len() as u16).to_be_bytes());
            m.extend_from_slice(&rec);
            m
        } else {
            rec
        };
        node_record::node_record(&data);
        let cut = usize::from(cut) % (data.len() + 1);
        node_record::node_record(&data[..cut]);
    }
}
