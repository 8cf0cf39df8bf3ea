//! Fuzz target: the agreement ask a link request carries, on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::link_ask(data));
