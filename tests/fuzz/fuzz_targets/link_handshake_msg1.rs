//! Fuzz target: link authentication message 1 on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::link_handshake_msg1(data));
