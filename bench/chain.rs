//! Circuit cores wired into a chain by link ids, with no I/O: the fixture
//! the cell-path micro-benchmarks share. It lives in `umbra_routing::chain`,
//! where `routing/tests/alloc.rs` uses it too. Node 0 is the origin; the last
//! node is the destination.

pub use umbra_routing::chain::{Chain, ONE_CELL_PACKET_LEN};
