//! Fuzz target: the link frame decoder on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::link_frame(data));
