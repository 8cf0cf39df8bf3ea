//! What a packet capture of the link port shows (docs/threat-model.md,
//! "What a prober sees"; docs/protocol.md, "Link framing"): only
//! well-formed TLS records, and no cell-sized record length repeating.
//!
//! - Two real daemons link by config while `tcpdump` records the veth
//!   between them; keepalives (and cells, when the overlay carries pings)
//!   cross it.
//! - A link made by the transport crate itself, between helper processes
//!   in two namespaces, carries 400 lone cells each way, the worst case
//!   for record sizes: with padding only on the first writes, every one of
//!   them was a 1229-byte record.
//!
//! The capture is parsed here (pcap, IPv4, TCP reassembly by sequence
//! number, TLS record headers), so no `tshark` is needed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use umbra_tests::netns::{
    Tcpdump, init_keys, netns, peer, require_root, spawn_test_helper, start, succeeds_within,
    temp_dir, test_role, veth, wait_for,
};

const LINK_WAIT: Duration = Duration::from_secs(30);

/// The link port.
const LINK_PORT: u16 = 443;

/// The largest TLS ciphertext record body (RFC 8446 §5.2: 2^14 + 256).
const TLS_RECORD_MAX_LEN: usize = 16_384 + 256;

/// TLS record lengths that could carry one cell: a 1200-byte cell, its
/// frame header, an HTTP/2 DATA frame header and TLS 1.3's 17 bytes.
const CELL_SIZED: std::ops::Range<usize> = 1200..1300;

/// How often one cell-sized record length may occur in one direction
/// before it counts as repeating: this many times, or this percentage of
/// that direction's records if more. With padding drawn from 256
/// lengths, 400 lone cells put about 1.6 records on each length.
const REPEAT_MAX_COUNT: usize = 12;
const REPEAT_MAX_PERCENT: usize = 2;

/// Cells each side of the transport link sends.
const CELLS: usize = 400;

/// Pause between two cells, so each leaves in its own write.
const CELL_GAP: Duration = Duration::from_millis(10);

// ---- pcap and TCP ----

/// One TCP segment from the capture.
#[derive(Debug)]
struct Segment {
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    seq: u32,
    syn: bool,
    payload: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The IPv4/TCP segments in a pcap file (Ethernet, Linux cooked v1 or v2
/// link types; either byte order; micro- or nanosecond timestamps).
fn pcap_segments(file: &[u8]) -> Result<Vec<Segment>, String> {
    let magic = file.get(..4).ok_or("pcap file is empty")?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let word = |at: usize| -> Option<u32> {
        let b: [u8; 4] = file.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let link_type = word(20).ok_or("pcap header cut short")?;
    let mut at = 24;
    let mut out = Vec::new();
    while at < file.len() {
        let incl = word(at + 8).ok_or("pcap record header cut short")? as usize;
        let frame = file
            .get(at + 16..at + 16 + incl)
            .ok_or("pcap record cut short")?;
        at += 16 + incl;
        // (ethertype offset, IP header offset)
        let (ethertype_at, ip_at) = match link_type {
            1 => (12, 14),
            113 => (14, 16),
            276 => (0, 20),
            other => return Err(format!("pcap link type {other} not handled")),
        };
        if u16_at(frame, ethertype_at) != Some(0x0800) {
            continue;
        }
        let ip = &frame[ip_at.min(frame.len())..];
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        // The IP total length, not the frame length: Ethernet pads short
        // frames.
        let total = usize::from(u16_at(ip, 2).unwrap_or(0)).min(ip.len());
        let tcp = ip.get(ihl..total).ok_or("IPv4 header longer than packet")?;
        let data_off = usize::from(tcp.get(12).ok_or("TCP header cut short")? >> 4) * 4;
        let src_ip: [u8; 4] = ip[12..16].try_into().map_err(|_| "ip")?;
        let dst_ip: [u8; 4] = ip[16..20].try_into().map_err(|_| "ip")?;
        out.push(Segment {
            src: (src_ip, u16_at(tcp, 0).ok_or("tcp")?),
            dst: (dst_ip, u16_at(tcp, 2).ok_or("tcp")?),
            seq: u32_at(tcp, 4).ok_or("tcp")?,
            syn: tcp.get(13).is_some_and(|f| f & 0x02 != 0),
            payload: tcp.get(data_off..).unwrap_or_default().to_vec(),
        });
    }
    Ok(out)
}

/// One direction of one TCP connection, reassembled.
#[derive(Debug)]
struct Stream {
    from_client: bool,
    bytes: Vec<u8>,
    /// Where a segment was missing (then `bytes` stops there).
    gap_at: Option<usize>,
}

/// Reassembles, by sequence number, every connection to `port` whose SYN
/// was captured. Each connection gives its client and server directions.
fn tcp_streams(segments: &[Segment], port: u16) -> Vec<(String, Stream)> {
    type Key = (([u8; 4], u16), ([u8; 4], u16));
    let mut isn: BTreeMap<Key, u32> = BTreeMap::new();
    for s in segments.iter().filter(|s| s.syn) {
        isn.entry((s.src, s.dst)).or_insert(s.seq);
    }
    let mut pieces: BTreeMap<Key, Vec<(usize, &[u8])>> = BTreeMap::new();
    for s in segments.iter().filter(|s| !s.payload.is_empty()) {
        let key = (s.src, s.dst);
        if let Some(&first) = isn.get(&key) {
            // Data starts one after the SYN's sequence number.
            let offset = s.seq.wrapping_sub(first).wrapping_sub(1) as usize;
            pieces.entry(key).or_default().push((offset, &s.payload));
        }
    }
    let mut out = Vec::new();
    for (key, mut parts) in pieces {
        parts.sort_by_key(|&(o, _)| o);
        let mut bytes = Vec::new();
        let mut gap_at = None;
        for (offset, data) in parts {
            if offset > bytes.len() {
                gap_at = Some(bytes.len());
                break;
            }
            // Retransmissions and overlaps: keep only what is new.
            let new_from = bytes.len() - offset;
            if new_from < data.len() {
                bytes.extend_from_slice(&data[new_from..]);
            }
        }
        let ((sip, sport), (dip, dport)) = key;
        let name = format!(
            "{}:{sport} -> {}:{dport}",
            std::net::Ipv4Addr::from(sip),
            std::net::Ipv4Addr::from(dip)
        );
        out.push((
            name,
            Stream {
                from_client: dport == port,
                bytes,
                gap_at,
            },
        ));
    }
    out
}

// ---- TLS records ----

/// The `(content type, length)` of every TLS record in `stream`, or what is
/// wrong with it. A record cut off at the very end (the capture stopped) is
/// left out.
fn tls_records(stream: &Stream) -> Result<Vec<(u8, usize)>, String> {
    let b = &stream.bytes;
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let Some(head) = b.get(at..at + 5) else {
            return Ok(out);
        };
        let (ty, version) = (head[0], u16::from_be_bytes([head[1], head[2]]));
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if !(0x14..=0x17).contains(&ty) {
            return Err(format!("byte {at}: content type {ty:#04x} is not TLS"));
        }
        // The first ClientHello may carry the legacy version 0x0301
        // (RFC 8446 §5.1); everything else says 0x0303.
        let legacy_ok = stream.from_client && at == 0 && version == 0x0301;
        if version != 0x0303 && !legacy_ok {
            return Err(format!("byte {at}: record version {version:#06x}"));
        }
        if len == 0 || len > TLS_RECORD_MAX_LEN {
            return Err(format!("byte {at}: record length {len}"));
        }
        if at + 5 + len > b.len() {
            return Ok(out);
        }
        out.push((ty, len));
        at += 5 + len;
    }
    Ok(out)
}

/// Checks a capture: every connection to the link port that carried data
/// is TLS records only, and no cell-sized record length repeats in one
/// direction. Returns a printable summary and the number of application
/// data records seen.
fn check_capture(pcap: &[u8]) -> (String, usize) {
    let segments = pcap_segments(pcap).unwrap_or_else(|e| panic!("capture: {e}"));
    let streams = tcp_streams(&segments, LINK_PORT);
    assert!(
        !streams.is_empty(),
        "no TCP data to port {LINK_PORT} in {} captured segments",
        segments.len()
    );
    let mut summary = String::new();
    let mut problems = Vec::new();
    let mut app_records = 0;
    for (name, stream) in &streams {
        if let Some(gap) = stream.gap_at {
            // Checked up to the gap; say so.
            summary.push_str(&format!("{name}: segment missing at byte {gap}\n"));
        }
        let records = match tls_records(stream) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{name}: not TLS: {e}"));
                continue;
            }
        };
        let lens: Vec<usize> = records
            .iter()
            .filter(|(ty, _)| *ty == 0x17)
            .map(|&(_, l)| l)
            .collect();
        app_records += lens.len();
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for &l in &lens {
            *counts.entry(l).or_default() += 1;
        }
        let limit = REPEAT_MAX_COUNT.max(lens.len() * REPEAT_MAX_PERCENT / 100);
        let mut top: Vec<(usize, usize)> = counts.iter().map(|(&l, &n)| (l, n)).collect();
        top.sort_by_key(|&(l, n)| (std::cmp::Reverse(n), l));
        top.truncate(5);
        let cell_sized = lens.iter().filter(|l| CELL_SIZED.contains(l)).count();
        summary.push_str(&format!(
            "{name}: {} bytes, {} records, {} application data, {cell_sized} of them \
             {}..{} bytes; most common lengths (length × count) {top:?}\n",
            stream.bytes.len(),
            records.len(),
            lens.len(),
            CELL_SIZED.start,
            CELL_SIZED.end,
        ));
        for (&len, &n) in counts.range(CELL_SIZED) {
            if n > limit {
                problems.push(format!(
                    "{name}: record length {len} repeats {n} times (limit {limit})"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the capture shows what it must not:\n{}\n\n{summary}",
        problems.join("\n")
    );
    (summary, app_records)
}

// ---- the tests ----

#[test]
fn a_link_between_two_daemons_shows_only_tls_records() {
    require_root();
    let (na, nb) = (netns("pa"), netns("pb"));
    let (ip_a, ip_b) = veth(&na, &nb, 50);
    let dir = temp_dir("capture");
    let keys = init_keys(dir.path(), &["a", "b"]);
    let mut capture = Tcpdump::start(
        &na,
        &na.iface_with_addr(&ip_a).expect("interface"),
        &format!("tcp port {LINK_PORT}"),
        &dir.path().join("link.pcap"),
    );
    let a = start(
        &na,
        &dir.path().join("a"),
        &format!(
            "[listen]\nhttps = [\"{ip_a}:443\"]\n{}",
            peer(&keys[1], &ip_b)
        ),
    );
    let b = start(
        &nb,
        &dir.path().join("b"),
        &format!(
            "[listen]\nhttps = [\"{ip_b}:443\"]\n{}",
            peer(&keys[0], &ip_a)
        ),
    );
    wait_for(LINK_WAIT, "the a-b link", &[&a, &b], || {
        (a.link_up_to(&keys[1]) && b.link_up_to(&keys[0])).then_some(())
    });
    let linked = Instant::now();

    // Cells, if the overlay carries packets yet: pings both ways.
    let addr_b = b.cli_json(&["status", "--json"]).expect("umbra cli")["address"]
        .as_str()
        .expect("address")
        .to_string();
    let pinged = na
        .command(std::path::Path::new("ping"))
        .args(["-6", "-c", "1", "-W", "3", &addr_b])
        .output()
        .is_ok_and(|o| o.status.success());
    if pinged {
        let out = na
            .exec(&["ping", "-6", "-q", "-c", "300", "-i", "0.02", &addr_b])
            .expect("command in the namespace");
        eprintln!("overlay ping: {out}");
    } else {
        eprintln!("the overlay does not carry ping yet: keepalives only");
    }
    // At least one keepalive each way after the link's first writes
    // (keepalives come every 15–25 s).
    let keepalive_max = Duration::from_secs(26);
    if let Some(rest) = keepalive_max.checked_sub(linked.elapsed()) {
        std::thread::sleep(rest);
    }
    let pcap = capture.stop();
    eprintln!("tcpdump: {}", capture.said());
    let (summary, app_records) = check_capture(&pcap);
    eprintln!("{summary}");
    assert!(
        app_records >= 4,
        "too little link traffic captured ({app_records} application data records):\n{summary}"
    );
}

#[test]
fn lone_cells_over_a_link_show_no_repeating_record_length() {
    if let Some(role) = test_role() {
        helper::run(&role);
        return;
    }
    require_root();
    let (nl, nd) = (netns("ql"), netns("qd"));
    let (ip_l, _) = veth(&nl, &nd, 51);
    let dir = temp_dir("cells");
    let key_file = dir.path().join("listener.key");
    let endpoint = format!("{ip_l}:{LINK_PORT}");
    let env = [
        ("UMBRA_CAPTURE_ENDPOINT", endpoint.as_str()),
        (
            "UMBRA_CAPTURE_KEY_FILE",
            key_file.to_str().expect("utf-8 path"),
        ),
    ];
    let mut capture = Tcpdump::start(
        &nl,
        &nl.iface_with_addr(&ip_l).expect("interface"),
        &format!("tcp port {LINK_PORT}"),
        &dir.path().join("cells.pcap"),
    );
    let test = "lone_cells_over_a_link_show_no_repeating_record_length";
    let (log_l, log_d) = (dir.path().join("listen.log"), dir.path().join("dial.log"));
    let mut listen = spawn_test_helper(&nl, test, "listen", &env, &log_l);
    let mut dial = spawn_test_helper(&nd, test, "dial", &env, &log_d);
    let logs = || {
        format!(
            "listener:\n{}\ndialer:\n{}",
            std::fs::read_to_string(&log_l).unwrap_or_default(),
            std::fs::read_to_string(&log_d).unwrap_or_default()
        )
    };
    let ok_d = succeeds_within(&mut dial, Duration::from_secs(60));
    let ok_l = succeeds_within(&mut listen, Duration::from_secs(10));
    assert!(ok_d && ok_l, "a helper failed:\n{}", logs());
    let pcap = capture.stop();
    eprintln!("tcpdump: {}", capture.said());
    let (summary, app_records) = check_capture(&pcap);
    eprintln!("{summary}");
    assert!(
        app_records >= 2 * CELLS,
        "expected at least {} application data records, saw {app_records}:\n{summary}",
        2 * CELLS
    );
}

/// The two ends of the transport link, each run in its own namespace by
/// [`spawn_test_helper`].
mod helper {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use umbra_routing::crypto::Identity;
    use umbra_transport::io::{
        CertSource, CoverSite, DialTarget, Dialer, Link, LinkListener, LinkSettings,
        ListenerConfig, TlsSettings, serve, server_tls_config,
    };
    use umbra_transport::proto::frame::{CELL_LEN, Frame};

    use super::{CELL_GAP, CELLS};

    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }

    /// Short keepalives, so keepalive-only writes show up in the capture
    /// too.
    fn settings() -> LinkSettings {
        LinkSettings {
            keepalive_min: Duration::from_millis(100),
            keepalive_max: Duration::from_millis(300),
            ..LinkSettings::default()
        }
    }

    pub(super) fn run(role: &str) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            match role {
                "listen" => listen().await,
                "dial" => dial().await,
                other => panic!("unknown helper role {other}"),
            }
        });
    }

    /// Accepts one link and echoes every cell, until the dialer closes.
    async fn listen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = server_tls_config(&TlsSettings {
            cert: CertSource::SelfSigned {
                dir: dir.path().to_path_buf(),
            },
            server_name: String::new(),
        })
        .expect("TLS config");
        let identity = Identity::generate();
        let listener = Arc::new(LinkListener::new(ListenerConfig {
            identity: identity.clone(),
            tls,
            cover: CoverSite::built_in("notes.example.org", SystemTime::now()),
            authorizer: Arc::new(|_| Some(Vec::new())),
            link: settings(),
            admission: umbra_transport::io::AdmissionLimits::default(),
        }));
        let tcp = tokio::net::TcpListener::bind(env("UMBRA_CAPTURE_ENDPOINT"))
            .await
            .expect("bind");
        let (tx, mut links) = tokio::sync::mpsc::channel(1);
        tokio::spawn(serve(tcp, listener, tx));
        let key_file = env("UMBRA_CAPTURE_KEY_FILE");
        std::fs::write(format!("{key_file}.tmp"), hex::encode(identity.public())).expect("key");
        std::fs::rename(format!("{key_file}.tmp"), &key_file).expect("key");
        let mut link = links.recv().await.expect("a link");
        let mut echoed = 0;
        while let Ok(frame) = link.receiver.recv().await {
            if let Frame::Cell(c) = frame {
                link.sender.send(Frame::Cell(c)).await.expect("echo");
                echoed += 1;
            }
        }
        eprintln!("listener echoed {echoed} cells");
        assert_eq!(echoed, CELLS);
    }

    /// Sends one cell at a time and waits for each echo.
    async fn dial() {
        let key_file = env("UMBRA_CAPTURE_KEY_FILE");
        let mut key = None;
        for _ in 0..200 {
            if let Ok(k) = std::fs::read_to_string(&key_file) {
                key = Some(k);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let key = hex::decode(key.expect("the listener's key file")).expect("hex");
        let dialer = Dialer::new(Identity::generate(), settings()).expect("dialer");
        let target = DialTarget {
            peer: key.try_into().expect("32-byte key"),
            endpoint: env("UMBRA_CAPTURE_ENDPOINT"),
            server_name: None,
        };
        let mut link = dialer.dial(&target, b"").await.expect("dial");
        for i in 0..CELLS {
            let cell = Bytes::from(vec![i as u8; CELL_LEN]);
            link.sender
                .send(Frame::Cell(cell.clone()))
                .await
                .expect("send");
            let back = tokio::time::timeout(Duration::from_secs(10), link.receiver.recv())
                .await
                .expect("echo in time")
                .expect("link up");
            assert_eq!(back, Frame::Cell(cell));
            tokio::time::sleep(CELL_GAP).await;
        }
        eprintln!("dialer got {CELLS} echoes");
        // Closing: drop the sender, then wait for the listener to end.
        let Link {
            sender,
            mut receiver,
            ..
        } = link;
        drop(sender);
        let _ = tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await;
    }
}
