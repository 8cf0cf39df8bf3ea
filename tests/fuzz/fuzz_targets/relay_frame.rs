//! Fuzz target: relay frame payloads on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| umbra_fuzz::relay_frame_payload(data));
