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
}
