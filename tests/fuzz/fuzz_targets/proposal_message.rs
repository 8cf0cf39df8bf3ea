//! Fuzz target: agreement proposals and answers on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::proposal_message(data));
