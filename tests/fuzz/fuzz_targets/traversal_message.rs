//! Fuzz target: NAT traversal messages and sealed envelopes on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::traversal_message(data));
