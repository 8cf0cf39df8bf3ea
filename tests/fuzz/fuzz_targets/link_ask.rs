#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::link_ask(data));
