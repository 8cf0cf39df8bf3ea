//! The control-request fuzz target's body as property tests, so it builds
//! and passes in the normal suite without cargo-fuzz
//! (`docs/architecture.md, "Testing"`).

mod fuzz_bodies;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn control_request(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzz_bodies::control_request(&data);
    }

    #[test]
    fn control_request_shaped(
        cmd in proptest::sample::select(vec![
            "status", "peers", "invite", "accept", "path", "agreements", "revoke",
            "propose", "accept_proposal", "reject_proposal",
        ]),
        fields in proptest::collection::vec((
            proptest::sample::select(vec![
                "ttl_secs", "wait_secs", "id", "terms", "note", "to", "token", "address",
                "endpoints",
            ]),
            proptest::sample::select(vec![
                "-1", "0", "7", "1e300", "18446744073709551615", "\"x\"", "null", "[]",
                "[\"198.18.0.1:443\"]", "true", "\"602::1\"",
            ]),
        ), 0..4),
    ) {
        // Known commands with fields of every type, so the parsing paths
        // past the command run.
        let mut line = format!("{{\"cmd\":\"{cmd}\"");
        for (k, v) in fields {
            line.push_str(&format!(",\"{k}\":{v}"));
        }
        line.push('}');
        fuzz_bodies::control_request(line.as_bytes());
    }
}
