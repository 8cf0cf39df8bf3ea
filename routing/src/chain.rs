//! Circuit cores wired into a chain by link ids, with no I/O: the fixture
//! the cell-path micro-benchmarks (`bench/chain.rs`) and the allocation test
//! (`routing/tests/alloc.rs`) share. Not part of the crate's API. Node 0 is
//! the origin; the last node is the destination.

use std::collections::VecDeque;
use std::time::Instant;

use crate::Identity;
use crate::address::{DEFAULT_PREFIX, address_for_key};
use crate::cell::{CELL_LEN, DATA_START_FIELDS_LEN, MAX_DATA_PER_CELL_BYTES};
use crate::circuit::{CircuitConfig, CircuitCore, CircuitEvent, CircuitId, LinkId};
use crate::session::MAX_PACKET_LEN;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

/// The largest IPv6 packet that fits in one cell's DATA_START.
pub const ONE_CELL_PACKET_LEN: usize = MAX_DATA_PER_CELL_BYTES - DATA_START_FIELDS_LEN;

/// Cores `0 … n-1` with link `i + 1` between node `i` and node `i + 1`.
#[derive(Debug)]
pub struct Chain {
    /// The clock every call gets.
    pub now: Instant,
    /// The cores.
    pub nodes: Vec<CircuitCore>,
    /// Their public keys.
    pub keys: Vec<[u8; 32]>,
    queue: VecDeque<(usize, LinkId, [u8; CELL_LEN])>,
    packet: Vec<u8>,
}

impl Chain {
    /// `n` cores with fixed identities, linked in a line, with the
    /// relay-crypto versions this machine runs well.
    pub fn new(n: usize) -> Chain {
        Self::with_relay_crypto(n, crate::circuit::relay_versions_here())
    }

    /// `n` cores as [`Chain::new`], each offering only the relay-crypto
    /// versions in `versions` (the handshake's bitmask).
    pub fn with_relay_crypto(n: usize, versions: u8) -> Chain {
        let now = Instant::now();
        let ids: Vec<Identity> = (0..n)
            .map(|i| Identity::from_seed(&[i as u8 + 7; 32]))
            .collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(Identity::public).collect();
        let mut nodes: Vec<CircuitCore> = ids
            .into_iter()
            .zip(0u64..)
            .map(|(i, seed)| {
                let rng = Box::new(ChaCha20Rng::seed_from_u64(seed));
                let config = CircuitConfig {
                    relay_crypto_versions: versions,
                    ..CircuitConfig::default()
                };
                CircuitCore::new(i, DEFAULT_PREFIX, config, rng)
            })
            .collect();
        for i in 0..n - 1 {
            let l = Self::link(i);
            nodes[i].link_up(now, l, keys[i + 1]);
            nodes[i + 1].link_up(now, l, keys[i]);
        }
        Chain {
            now,
            nodes,
            keys,
            queue: VecDeque::with_capacity(1 << 14),
            packet: vec![0u8; MAX_PACKET_LEN],
        }
    }

    /// The link between node `i` and node `i + 1`.
    pub fn link(i: usize) -> LinkId {
        i as LinkId + 1
    }

    /// The node at the other end of `link` from `node`.
    fn across(node: usize, link: LinkId) -> usize {
        let left = (link - 1) as usize;
        if node == left { left + 1 } else { left }
    }

    /// Moves cells until no core has any to send; returns how many crossed
    /// a link.
    pub fn pump(&mut self) -> u64 {
        let mut moved = 0;
        let mut cell = [0u8; CELL_LEN];
        loop {
            for i in 0..self.nodes.len() {
                while let Some(l) = self.nodes[i].poll_transmit(&mut cell) {
                    self.queue.push_back((Self::across(i, l), l, cell));
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
    pub fn drain(&mut self, i: usize) -> usize {
        let mut n = 0;
        while self.nodes[i].poll_packet(&mut self.packet).is_some() {
            n += 1;
        }
        n
    }

    /// Builds a circuit from node 0 through every other node to the last,
    /// and returns (origin's circuit, destination's circuit).
    pub fn build(&mut self) -> (CircuitId, CircuitId) {
        let path: Vec<[u8; 32]> = self.keys[1..].to_vec();
        let forward = self.nodes[0]
            .build_circuit(self.now, &path)
            .expect("build a circuit");
        self.pump();
        let mut built = false;
        while let Some(ev) = self.nodes[0].poll_event() {
            built |= matches!(ev, CircuitEvent::Built { circuit, .. } if circuit == forward);
        }
        assert!(built, "the circuit was not built");
        let last = self.nodes.len() - 1;
        let mut backward = None;
        while let Some(ev) = self.nodes[last].poll_event() {
            if let CircuitEvent::Incoming { circuit, .. } = ev {
                backward = Some(circuit);
            }
        }
        (
            forward,
            backward.expect("an incoming circuit at the destination"),
        )
    }

    /// An IPv6 packet of `len` bytes from node `from` to node `to`, with no
    /// next header (59), so the end's source check passes.
    pub fn packet(&self, from: usize, to: usize, len: usize) -> Vec<u8> {
        let src = address_for_key(&self.keys[from], DEFAULT_PREFIX).octets();
        let dst = address_for_key(&self.keys[to], DEFAULT_PREFIX).octets();
        let mut p = vec![0x5au8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        p[6] = 59;
        p[8..24].copy_from_slice(&src);
        p[24..40].copy_from_slice(&dst);
        p
    }
}
