//! Fuzz target: the `.umbra` DNS responder on arbitrary bytes.

#![no_main]

// The body is shared with the in-suite twin, routing/tests/fuzz_twins.rs.
#[allow(dead_code)]
#[path = "../../../routing/tests/fuzz_bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::dns_query(data));
