//! The routing fuzz targets' bodies as property tests, so they build and
//! pass in the normal suite without cargo-fuzz (`docs/architecture.md, "Testing"`).

mod fuzz_bodies;

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn cell_parser(data in proptest::collection::vec(any::<u8>(), 0..1400)) {
        fuzz_bodies::cell_parser(&data);
    }

    #[test]
    fn cell_parser_valid_commands(cmd in 0u8..5, rest in proptest::collection::vec(any::<u8>(), 0..1200)) {
        // Most random cells fail at the command byte; steer half the input
        // to the known commands.
        let mut data = vec![0, 0, 0, 1, cmd];
        data.extend(rest);
        fuzz_bodies::cell_parser(&data);
    }

    #[test]
    fn reassembly(data in proptest::collection::vec(any::<u8>(), 0..4000)) {
        fuzz_bodies::reassembly(&data);
    }

    #[test]
    fn dns_query(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz_bodies::dns_query(&data);
    }

    #[test]
    fn dns_query_shaped(id in any::<u16>(), qtype in any::<u16>(), name in "([a-z2-7]{1,60}\\.){0,3}umbra") {
        // A well-formed one-question query, so the answering paths run.
        let mut data = id.to_be_bytes().to_vec();
        data.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            data.push(label.len() as u8);
            data.extend(label.as_bytes());
        }
        data.push(0);
        data.extend(qtype.to_be_bytes());
        data.extend([0, 1]);
        fuzz_bodies::dns_query(&data);
    }

    #[test]
    fn ledger_report(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzz_bodies::ledger_report(&data);
    }

    #[test]
    fn ledger_report_shaped(version in 0u8..3, verdict in 0u8..4, rest in proptest::collection::vec(any::<u8>(), 137..=137)) {
        // Report-sized input with a likely version and verdict, so the
        // deeper paths run.
        let mut data = vec![version];
        data.extend(rest);
        data[73] = verdict;
        fuzz_bodies::ledger_report(&data);
    }
}
