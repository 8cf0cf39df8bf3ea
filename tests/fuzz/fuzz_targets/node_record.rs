//! Fuzz target: node record decoding and the graph core on arbitrary bytes.

#![no_main]

// The body is shared with the in-suite twin, tests/fuzz/twins.rs.
#[path = "../bodies/node_record.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::node_record(data));
