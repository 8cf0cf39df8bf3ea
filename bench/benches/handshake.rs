//! Handshakes per second: the link's Noise IK (docs/protocol.md, "Link
//! setup") and a circuit's per-hop handshakes (Noise NK to relays, IK to the
//! destination, docs/protocol.md, "Circuits").
//!
//! `cargo bench -p umbra-bench --bench handshake`
//!
//! The per-hop handshake types are crate-private in `umbra-routing`, so the
//! hop cost is measured through whole circuit builds on in-memory cores:
//! a 1-hop build is one IK handshake, and every extra relay adds one NK
//! handshake plus an EXTEND/EXTENDED relay round; the difference between
//! `circuit_build` at 2 and 3 hops is one relay hop's cost.

use std::time::{SystemTime, UNIX_EPOCH};

use divan::Bencher;
use umbra_bench::chain::Chain;
use umbra_routing::Identity;
use umbra_transport::proto::handshake::{LinkInitiator, LinkResponder};

fn main() {
    divan::main();
}

/// The TLS exporter value a direct link binds its handshake to.
const PROLOGUE: &[u8] = b"tls exporter stand-in";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A whole link handshake, both sides on one thread: message 1 written and
/// read, message 2 written and read (two X25519 key pairs and four DH each
/// way, Ed25519-to-X25519 conversions, the replay cache).
#[divan::bench]
fn link_ik_both_sides(b: Bencher<'_, '_>) {
    let dialer = Identity::from_seed(&[1; 32]);
    let listener = Identity::from_seed(&[2; 32]);
    let listener_key = listener.public();
    let mut responder = LinkResponder::new(listener);
    let now = unix_now();
    b.bench_local(|| {
        let (init, msg1) =
            LinkInitiator::start(&dialer, &listener_key, PROLOGUE, now, &[]).expect("msg1");
        let incoming = responder
            .read_msg1(&msg1, PROLOGUE, now)
            .expect("read msg1");
        let (wire, _) = incoming.accept(&[]).expect("msg2");
        init.finish(&wire[2..]).expect("finish")
    });
}

/// The listener's share only (what bounds how many links a node can accept
/// per second): read message 1, write message 2. The dialer's message 1 is
/// made outside the timing.
#[divan::bench]
fn link_ik_listener_side(b: Bencher<'_, '_>) {
    let dialer = Identity::from_seed(&[1; 32]);
    let listener = Identity::from_seed(&[2; 32]);
    let listener_key = listener.public();
    let mut responder = LinkResponder::new(listener);
    let now = unix_now();
    b.with_inputs(|| {
        LinkInitiator::start(&dialer, &listener_key, PROLOGUE, now, &[])
            .expect("msg1")
            .1
    })
    .bench_local_values(|msg1| {
        let incoming = responder
            .read_msg1(&msg1, PROLOGUE, now)
            .expect("read msg1");
        incoming.accept(&[]).expect("msg2")
    });
}

/// A circuit built over `hops` hops on in-memory cores (every node's work on
/// this thread), then closed. `hops = 1` is one IK handshake; each extra
/// hop adds a relay's NK handshake and the EXTEND round through the relays
/// already built.
#[divan::bench(args = [1, 2, 3])]
fn circuit_build(b: Bencher<'_, '_>, hops: usize) {
    let mut c = Chain::new(hops + 1);
    b.bench_local(|| {
        let (forward, _) = c.build();
        let now = c.now;
        c.nodes[0].close_circuit(now, forward);
        c.pump();
        for n in &mut c.nodes {
            while n.poll_event().is_some() {}
        }
    });
}
