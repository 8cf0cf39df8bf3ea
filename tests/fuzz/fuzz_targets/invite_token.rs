//! Fuzz target: invite token decoding on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::invite_token(data));
