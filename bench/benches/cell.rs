//! The cell path (docs/protocol.md, "Cells", and docs/protocol.md, "Relay
//! crypto"): one hop's seal and open, relay switching, cutting a 64 KiB
//! packet into cells and joining it again, and a steady 3-relay circuit.
//! Divan's allocation profiler is the global allocator, so every line also
//! shows allocations per iteration (the data path should make none:
//! docs/architecture.md, "Testing").
//!
//! `cargo bench -p umbra-bench --bench cell`

use divan::counter::{BytesCount, ItemsCount};
use divan::{AllocProfiler, Bencher};
use umbra_bench::chain::{Chain, ONE_CELL_PACKET_LEN};
use umbra_routing::cell::{CELL_LEN, RELAY_PAYLOAD_LEN, RelayMsg, RelayWriter, relay_messages};
use umbra_routing::circuit::relay_version_bit;
use umbra_routing::session::{MAX_PACKET_LEN, Reassembler, SessionTx};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

/// One cell over a one-hop circuit: the origin seals the destination's layer
/// (version 1: ChaCha20-Poly1305; 2: AES-256-GCM) and the destination opens
/// it and hands the packet out; the destination's SENDME every 100 cells
/// goes back. This is one hop's seal plus open, with the cell framing around
/// them.
#[divan::bench(args = [1, 2])]
fn one_hop_seal_open(b: Bencher<'_, '_>, relay_crypto: u8) {
    let mut c = Chain::with_relay_crypto(2, relay_version_bit(relay_crypto));
    let (forward, _) = c.build();
    let packet = c.packet(0, 1, ONE_CELL_PACKET_LEN);
    let mut cell = [0u8; CELL_LEN];
    let mut out = vec![0u8; MAX_PACKET_LEN];
    let now = c.now;
    b.counter(BytesCount::new(packet.len())).bench_local(|| {
        c.nodes[0].send_packet(now, forward, &packet).expect("send");
        let link = c.nodes[0].poll_transmit(&mut cell).expect("a cell");
        c.nodes[1].handle_cell(now, link, &cell);
        let got = c.nodes[1].poll_packet(&mut out).expect("the packet");
        // SENDMEs back to the origin.
        while let Some(l) = c.nodes[1].poll_transmit(&mut cell) {
            c.nodes[0].handle_cell(now, l, &cell);
        }
        got
    });
}

/// A relay switching one data cell: parse, look up (link, circuit id), strip
/// its layer (version 1: ChaCha20; 2: AES-256-CTR), queue it for the next
/// link, and write it out. The same captured cell is fed again and again;
/// relays keep no per-cell MAC, so it is switched each time like a fresh one.
#[divan::bench(args = [1, 2])]
fn relay_switch(b: Bencher<'_, '_>, relay_crypto: u8) {
    let mut c = Chain::with_relay_crypto(3, relay_version_bit(relay_crypto));
    let (forward, _) = c.build();
    let packet = c.packet(0, 2, ONE_CELL_PACKET_LEN);
    let now = c.now;
    c.nodes[0].send_packet(now, forward, &packet).expect("send");
    let mut cell = [0u8; CELL_LEN];
    let link_in = c.nodes[0].poll_transmit(&mut cell).expect("a cell");
    let mut out = [0u8; CELL_LEN];
    b.counter(BytesCount::new(CELL_LEN)).bench_local(|| {
        c.nodes[1].handle_cell(now, link_in, &cell);
        c.nodes[1].poll_transmit(&mut out).expect("switched")
    });
}

/// Cuts a 65,535-byte packet (the TUN's largest) into relay payloads and
/// joins it again: the session layer's work on each side, without crypto.
#[divan::bench]
fn split_reassemble_64k(b: Bencher<'_, '_>) {
    let packet = vec![0xa5u8; MAX_PACKET_LEN];
    let mut tx = SessionTx::new(2 * MAX_PACKET_LEN);
    let mut rx = Reassembler::new(2 * MAX_PACKET_LEN);
    let mut payload = [0u8; RELAY_PAYLOAD_LEN];
    let mut out = vec![0u8; MAX_PACKET_LEN];
    b.counter(BytesCount::new(MAX_PACKET_LEN)).bench_local(|| {
        tx.push(&packet).expect("queue");
        let mut cells = 0u32;
        while !tx.is_empty() {
            let mut w = RelayWriter::new(&mut payload);
            tx.write_data(&mut w);
            w.finish();
            cells += 1;
            for msg in relay_messages(&payload) {
                match msg.expect("well formed") {
                    RelayMsg::DataStart {
                        total_len, data, ..
                    } => rx.push_start(total_len, data),
                    RelayMsg::DataCont { data } => rx.push_cont(data),
                    other => panic!("unexpected {other:?}"),
                }
                .expect("in order");
            }
        }
        let len = rx.pop(&mut out).expect("a packet").expect("fits");
        assert_eq!(len, MAX_PACKET_LEN);
        cells
    });
}

/// Cells that crossed links in one [`steady_round`].
fn round(
    c: &mut Chain,
    forward: umbra_routing::circuit::CircuitId,
    backward: umbra_routing::circuit::CircuitId,
    big: &[u8],
    small: &[u8],
) -> u64 {
    let now = c.now;
    for _ in 0..50 {
        c.nodes[0].send_packet(now, forward, big).expect("send");
    }
    for _ in 0..5 {
        c.nodes[3].send_packet(now, backward, small).expect("reply");
    }
    let moved = c.pump();
    assert_eq!(c.drain(3), 50);
    assert_eq!(c.drain(0), 5);
    moved + c.pump()
}

/// The steady state of a circuit over 2 relays (origin, 2 relays,
/// destination on one thread): 50 one-cell packets out and 5 replies back
/// per iteration, 220 link crossings. Allocations per iteration here are
/// allocations per 220 cells; the target is 0.
#[divan::bench]
fn steady_round_3hop(b: Bencher<'_, '_>) {
    let mut c = Chain::new(4);
    let (forward, backward) = c.build();
    let big = c.packet(0, 3, ONE_CELL_PACKET_LEN);
    let small = c.packet(3, 0, 80);
    // Warm up: every ring reaches its working size.
    let mut per_round = 0;
    for _ in 0..60 {
        per_round = round(&mut c, forward, backward, &big, &small);
    }
    b.counter(ItemsCount::new(per_round))
        .bench_local(|| round(&mut c, forward, backward, &big, &small));
}
