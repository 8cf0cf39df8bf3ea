//! The bodies of the routing fuzz targets (`tests/fuzz/fuzz_targets/
//! {cell_parser,reassembly,ledger_report,dns_query}.rs`, cargo-fuzz). Each takes arbitrary bytes and
//! panics only if an invariant breaks. `routing/tests/fuzz_twins.rs` runs the
//! same bodies as property tests in the normal suite.

use umbra_routing::cell::{CELL_LEN, Cell, MSG_HEADER_LEN, RelayWriter, relay_messages};
use umbra_routing::session::{MAX_PACKET_LEN, Reassembler};

/// Cells and relay payloads: the input as a cell (zero-padded or cut to
/// 1200 bytes) and as a relay payload. What parses must write back to bytes
/// that parse the same.
pub(crate) fn cell_parser(data: &[u8]) {
    let mut buf = [0u8; CELL_LEN];
    let n = data.len().min(CELL_LEN);
    buf[..n].copy_from_slice(&data[..n]);
    if let Ok(cell) = Cell::parse(&buf) {
        let mut again = [0u8; CELL_LEN];
        assert!(cell.write(&mut again).is_ok(), "a parsed cell must write");
        assert_eq!(Cell::parse(&again).ok(), Some(cell));
    }
    for m in relay_messages(data) {
        let Ok(m) = m else { break };
        let mut out = vec![0u8; MSG_HEADER_LEN + m.data_len()];
        assert!(
            RelayWriter::new(&mut out).push(&m).is_ok(),
            "a parsed message must write"
        );
        assert_eq!(relay_messages(&out).next(), Some(Ok(m)));
    }
}

/// Bound on the reassembly buffer in the `reassembly` target.
const FUZZ_REASSEMBLY_BOUND_BYTES: usize = 8192;

/// Reassembly: the input is a list of operations `op u8 | total u16 | len u8
/// | data [len]` (start, continuation, discarded start, pop). The buffer never
/// exceeds its bound and every byte received is accounted for.
pub(crate) fn reassembly(data: &[u8]) {
    let mut r = Reassembler::new(FUZZ_REASSEMBLY_BOUND_BYTES);
    let mut out = vec![0u8; MAX_PACKET_LEN];
    let mut rest = data;
    while let [op, t0, t1, len, tail @ ..] = rest {
        let total = u16::from_be_bytes([*t0, *t1]);
        let (chunk, after) = tail.split_at((*len as usize).min(tail.len()));
        // Errors are the point: malformed sequences are dropped and counted.
        match op % 4 {
            0 => drop(r.push_start(total, chunk)),
            1 => drop(r.push_cont(chunk)),
            2 => drop(r.push_discarded_start(total, chunk)),
            _ => {
                let room = total as usize % 2048;
                if let Some(Ok(n)) = r.pop(&mut out[..room]) {
                    assert!(n <= room);
                }
            }
        }
        assert!(r.buffered_bytes() <= FUZZ_REASSEMBLY_BOUND_BYTES);
        assert!(r.released_bytes() <= r.received_bytes());
        rest = after;
    }
    while r.pop(&mut out).is_some() {}
    // Discarded bytes are released as they arrive; what is left is the
    // packet in progress.
    assert_eq!(
        r.released_bytes() + r.buffered_bytes() as u64,
        r.received_bytes()
    );
}

/// Ledger reports: whatever parses writes back (signed by another key) to
/// bytes that parse to the same report; checking a signature never panics.
pub(crate) fn ledger_report(data: &[u8]) {
    use umbra_routing::ledger::report::Report;
    let _ = Report::decode(data, &[1; 32], &[2; 32], &[3; 32]);
    if let Ok((report, _)) = Report::parse(data) {
        let id = umbra_routing::Identity::from_seed(&[9; 32]);
        let again = report.encode(&id, &[2; 32], &[3; 32]);
        assert_eq!(Report::parse(&again).map(|(r, _)| r), Ok(report));
    }
}

/// DNS queries to the `.umbra` responder: any bytes are answered or
/// dropped, over UDP or TCP, and an answer is itself a well-formed DNS
/// message with the query's id, within UDP's limit over UDP.
pub(crate) fn dns_query(data: &[u8]) {
    use hickory_proto::op::Message;
    use umbra_routing::dns::{EDNS_UDP_PAYLOAD, Transport, Zone};
    let zone = Zone {
        prefix: 0x06,
        petnames: [("chat".to_string(), [6u8; 32])].into(),
        srv: [("_xmpp-server._tcp".to_string(), 5269)].into(),
        txt: [("_xmppconnect".to_string(), vec!["x".repeat(255); 6])].into(),
    };
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Some((reply, _)) = zone.answer(data, transport) {
            let Ok(m) = Message::from_vec(&reply) else {
                panic!("the reply does not parse");
            };
            let id = data.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            assert_eq!(Some(m.id()), id);
            if transport == Transport::Udp {
                assert!(reply.len() <= usize::from(EDNS_UDP_PAYLOAD));
            }
        }
    }
}
