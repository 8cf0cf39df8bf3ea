//! Fuzz target: a control-socket request line, on arbitrary bytes.

#![no_main]

// The body is shared with the in-suite twin, config/tests/fuzz_twins.rs.
#[allow(dead_code)]
#[path = "../../../config/tests/fuzz_bodies/mod.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::control_request(data));
