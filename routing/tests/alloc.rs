//! The data path allocates nothing per cell (`docs/architecture.md, "Crates"`
//! and "Testing"): a built 3-hop
//! circuit moves 10,000 cells while a counting global allocator watches.
//!
//! Only allocations through Rust's global allocator are seen; aws-lc's C code
//! allocates through libc (its AEAD seal/open keep their state on the stack).

// A counting global allocator needs `unsafe impl GlobalAlloc`
// (`support/counting_alloc.rs`). This test binary is the only place in the
// crate that uses unsafe code.
#![allow(unsafe_code)]

use std::time::Instant;

use umbra_routing::chain::{Chain, ONE_CELL_PACKET_LEN};
use umbra_routing::circuit::{CircuitEvent, CircuitId};

mod support {
    pub(super) mod counting_alloc;
}
use support::counting_alloc::{self, CountingAllocator};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made on this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    counting_alloc::start();
    let r = f();
    (counting_alloc::stop(), r)
}

struct Setup {
    chain: Chain,
    forward: CircuitId,
    backward: CircuitId,
    big: Vec<u8>,
    small: Vec<u8>,
}

/// origin 0 → relay 1 → relay 2 → destination 3.
fn setup() -> Setup {
    let mut chain = Chain::new(4);
    let path = [chain.keys[1], chain.keys[2], chain.keys[3]];
    let forward = chain.nodes[0]
        .build_circuit(chain.now, &path)
        .expect("build");
    chain.pump();
    assert!(matches!(
        chain.nodes[0].poll_event(),
        Some(CircuitEvent::Built { .. })
    ));
    let Some(CircuitEvent::Incoming {
        circuit: backward, ..
    }) = chain.nodes[3].poll_event()
    else {
        panic!("no incoming circuit");
    };
    // A packet that fills exactly one cell, and a small reply.
    let big = chain.packet(0, 3, ONE_CELL_PACKET_LEN);
    let small = chain.packet(3, 0, 80);
    Setup {
        chain,
        forward,
        backward,
        big,
        small,
    }
}

/// One round: 50 one-cell packets forward, 5 small replies backward, pumped
/// and read at both ends. Returns cells that crossed links.
fn round(s: &mut Setup) -> u64 {
    let now = s.chain.now;
    for _ in 0..50 {
        s.chain.nodes[0]
            .send_packet(now, s.forward, &s.big)
            .expect("send");
    }
    for _ in 0..5 {
        s.chain.nodes[3]
            .send_packet(now, s.backward, &s.small)
            .expect("reply");
    }
    let moved = s.chain.pump();
    assert_eq!(s.chain.drain(3), 50);
    assert_eq!(s.chain.drain(0), 5);
    moved + s.chain.pump()
}

#[test]
fn steady_state_allocates_nothing_per_cell() {
    let mut s = setup();
    // Warm up: let every ring reach its working size.
    for _ in 0..60 {
        round(&mut s);
    }
    let before = s.chain.nodes[0].metrics().cells_out;
    let (allocs, moved) = allocations_in(|| (0..200).map(|_| round(&mut s)).sum::<u64>());
    let origin_cells = s.chain.nodes[0].metrics().cells_out - before;
    assert!(
        origin_cells >= 10_000,
        "only {origin_cells} cells from the origin"
    );
    assert_eq!(
        allocs, 0,
        "{allocs} allocations while {origin_cells} cells left the origin and {moved} crossed links"
    );
    for r in [1, 2] {
        let m = s.chain.nodes[r].metrics();
        assert_eq!(m.cells_in, m.cells_out, "relay {r} dropped");
    }
}

/// Cells per second through the in-test driver (every cell crossing a link
/// counts once). Run with
/// `cargo test -p umbra-routing --release --test alloc -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check; run in release"]
fn throughput() {
    let mut s = setup();
    for _ in 0..20 {
        round(&mut s);
    }
    let start = Instant::now();
    let mut moved = 0;
    for _ in 0..2000 {
        moved += round(&mut s);
    }
    let secs = start.elapsed().as_secs_f64();
    let relayed: u64 = [1, 2]
        .iter()
        .map(|&r| s.chain.nodes[r].metrics().cells_relayed)
        .sum();
    eprintln!(
        "{moved} link crossings in {secs:.3} s: {:.0} cells/s through the driver \
         (4 cores on one thread: origin seals 3 layers, 2 relays switch, destination opens); \
         {relayed} cells relayed",
        moved as f64 / secs
    );
}
