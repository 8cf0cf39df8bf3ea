//! The body of the control-request fuzz target
//! (`tests/fuzz/fuzz_targets/control_request.rs`, cargo-fuzz). It panics only
//! if an invariant breaks. `config/tests/fuzz_twins.rs` runs it as a property
//! test in the normal suite.

use umbra_config::control::parse_request;

/// Control-socket request lines: any bytes that are UTF-8 either fail with
/// a sentence or parse into a request that writes back to JSON that parses
/// into the same request.
pub(crate) fn control_request(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Err(msg) => assert!(!msg.is_empty(), "a refusal must say why"),
        Ok(req) => {
            let again = serde_json::to_string(&req).map_err(|e| e.to_string());
            assert_eq!(again.map(|line| parse_request(&line)), Ok(Ok(req)));
        }
    }
}
