//! The data path allocates nothing per cell (DESIGN.md §2): a built 3-hop
//! circuit moves 10,000 cells while a counting global allocator watches.
//!
//! Only allocations through Rust's global allocator are seen; aws-lc's C code
//! allocates through libc (its AEAD seal/open keep their state on the stack).

// A counting global allocator needs `unsafe impl GlobalAlloc`. This test
// binary is the only place in the crate that uses unsafe code.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use umbra_routing::Identity;
use umbra_routing::address::{DEFAULT_PREFIX, address_for_key};
use umbra_routing::cell::{CELL_LEN, DATA_START_FIELDS_LEN, MAX_DATA_PER_CELL_BYTES};
use umbra_routing::circuit::{CircuitConfig, CircuitCore, CircuitEvent, CircuitId, LinkId};
use umbra_routing::session::MAX_PACKET_LEN;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct CountingAllocator;

fn count() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is passed straight to the system allocator; counting
// touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made on this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.with(|n| n.get()), r)
}

/// A chain of cores wired by link ids, with preallocated queues.
struct Chain {
    now: Instant,
    nodes: Vec<CircuitCore>,
    keys: Vec<[u8; 32]>,
    /// link → (node a, node b)
    links: HashMap<LinkId, (usize, usize)>,
    queue: VecDeque<(usize, LinkId, [u8; CELL_LEN])>,
    packet: Vec<u8>,
}

impl Chain {
    fn new(n: usize) -> Chain {
        let now = Instant::now();
        let ids: Vec<Identity> = (0..n)
            .map(|i| Identity::from_seed(&[i as u8 + 7; 32]))
            .collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(|i| i.public()).collect();
        let mut nodes: Vec<CircuitCore> = ids
            .into_iter()
            .zip(0u64..)
            .map(|(i, seed)| {
                let rng = Box::new(ChaCha20Rng::seed_from_u64(seed));
                CircuitCore::new(i, DEFAULT_PREFIX, CircuitConfig::default(), rng)
            })
            .collect();
        let mut links = HashMap::new();
        for i in 0..n - 1 {
            let l = i as LinkId + 1;
            links.insert(l, (i, i + 1));
            nodes[i].link_up(now, l, keys[i + 1]);
            nodes[i + 1].link_up(now, l, keys[i]);
        }
        Chain {
            now,
            nodes,
            keys,
            links,
            queue: VecDeque::with_capacity(1 << 14),
            packet: vec![0u8; MAX_PACKET_LEN],
        }
    }

    /// Moves cells until quiet; returns how many crossed a link.
    fn pump(&mut self) -> u64 {
        let mut moved = 0;
        let mut cell = [0u8; CELL_LEN];
        loop {
            for i in 0..self.nodes.len() {
                while let Some(l) = self.nodes[i].poll_transmit(&mut cell) {
                    let (a, b) = self.links[&l];
                    self.queue.push_back((if a == i { b } else { a }, l, cell));
                }
            }
            if self.queue.is_empty() {
                return moved;
            }
            while let Some((to, l, c)) = self.queue.pop_front() {
                self.nodes[to].handle_cell(self.now, l, &c);
                moved += 1;
            }
        }
    }

    /// Takes every packet waiting at node `i`; returns how many.
    fn drain(&mut self, i: usize) -> usize {
        let mut n = 0;
        while self.nodes[i].poll_packet(&mut self.packet).is_some() {
            n += 1;
        }
        n
    }
}

fn ipv6(src: [u8; 16], dst: [u8; 16], len: usize) -> Vec<u8> {
    let mut p = vec![0x5au8; len];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = 59;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p
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
    let a0 = address_for_key(&chain.keys[0], DEFAULT_PREFIX).octets();
    let a3 = address_for_key(&chain.keys[3], DEFAULT_PREFIX).octets();
    // A packet that fills exactly one cell, and a small reply.
    let big = ipv6(a0, a3, MAX_DATA_PER_CELL_BYTES - DATA_START_FIELDS_LEN);
    let small = ipv6(a3, a0, 80);
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
