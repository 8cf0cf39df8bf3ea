//! Ledgers with real daemons (docs/architecture.md, "Ledgers"):
//! - a 5-node chain's ledgers agree on both sides of every link after a
//!   transfer, match the bytes iperf3 moved, net out at the relays and
//!   leave the origin owing;
//! - a relay R whose link onward is the bottleneck (a token bucket filter)
//!   serves a reciprocating neighbour G before a freeloader F, serves F at
//!   full speed when F is alone, and refuses F's new circuits past its
//!   cutoff while G's still build;
//! - a neighbour that floods R with circuits is cut at its terms' rate, and
//!   forged, replayed and malformed ledger reports are dropped and counted
//!   (the flooder is this test binary, speaking the link and circuit
//!   protocols in-process as a helper in its own namespace);
//! - ledgers survive a SIGTERM and a SIGKILL of either side, within the
//!   stated loss, and the two sides agree again afterwards.

use std::time::Duration;

use serde_json::Value;
use umbra_netlab::{IperfOptions, IperfServer, Links};
use umbra_tests::netns::hostile::Victim;
use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::{
    Netns, require_root, spawn_test_helper, succeeds_within, test_role, wait_for,
};

/// A ledger report is due this long after traffic stops (the routing
/// crate's `REPORT_AFTER_IDLE`), and a report goes at least every 4 MiB.
const REPORT_AFTER_IDLE: Duration = Duration::from_secs(2);
const REPORT_EVERY_BYTES: u64 = 4 << 20;
/// Bytes a cell counts for.
const CELL: u64 = 1200;

fn num(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("no {k} in {v}"))
}

/// iperf3 from `from` to `server` (an address with a one-shot server on
/// `port`), sending `bytes`; the bytes the receiver got.
fn send_bytes(from: &Netns, server: &str, port: u16, bytes: u64) -> u64 {
    let opts = IperfOptions {
        port,
        bytes: Some(bytes),
        connect_timeout_ms: 10_000,
        ..IperfOptions::new(0)
    };
    umbra_netlab::iperf3(from, server, opts)
        .expect("iperf3 (installed by .ci/run)")
        .bytes
}

/// iperf3 for `secs` seconds; (Mbit/s, bytes) at the receiver.
fn send_for(from: &Netns, server: &str, port: u16, secs: u32) -> (f64, u64) {
    let opts = IperfOptions {
        port,
        connect_timeout_ms: 10_000,
        ..IperfOptions::new(secs)
    };
    let r = umbra_netlab::iperf3(from, server, opts).expect("iperf3 (installed by .ci/run)");
    (r.mbps(), r.bytes)
}

fn server(o: &Overlay, i: usize, port: u16) -> IperfServer {
    let log = o.dir.path().join(format!("iperf3-{i}-{port}.log"));
    IperfServer::start_on(&o.ns[i], &o.addrs[i], port, &log, true).expect("iperf3 server")
}

/// Whether the two sides of link (i, j) agree now, checked after `since`
/// (unix seconds), and (with a `slack`) mirror each other's figures within
/// that many bytes.
fn link_agrees(o: &Overlay, i: usize, j: usize, since: u64, slack: Option<i64>) -> bool {
    let (a, b) = (o.ledger(i, j), o.ledger(j, i));
    let checked = |l: &Value| {
        l["agreed"] == true
            && l["peer_agreed"] == true
            && l["last_check_unix"].as_u64().unwrap_or(0) >= since
    };
    let mirrored = slack.is_none_or(|slack| {
        (num(&a, "balance") + num(&b, "balance")).abs() <= slack
            && (num(&a, "total_for_peer") - num(&b, "total_by_peer")).abs() <= slack
    });
    checked(&a) && checked(&b) && mirrored
}

/// Waits up to `limit` until node `i`'s ledger with `j` satisfies `pred`;
/// fails with both sides' ledgers if it does not.
fn wait_ledger(o: &Overlay, i: usize, j: usize, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let l = o.ledger(i, j);
        if pred(&l) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: node {i}'s ledger with {j}: {l}; theirs: {}",
            o.ledger(j, i)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[test]
fn a_chains_ledgers_agree_on_both_sides_and_match_what_iperf3_moved() {
    require_root();
    let o = Overlay::build("lc", 5, &Links::chain(5), |_, _| String::new());
    assert!(o.ping(0, 4, 3), "ping 0 → 4 failed; logs:\n{}", o.logs());
    let ledgers = |o: &Overlay| -> Vec<(Value, Value)> {
        (0..4)
            .map(|i| (o.ledger(i, i + 1), o.ledger(i + 1, i)))
            .collect()
    };
    let before = ledgers(&o);
    let _s = server(&o, 4, 5201);
    let sent = 24 << 20;
    let got = send_bytes(&o.ns[0], &o.addrs[4], 5201, sent);
    assert!(got > sent * 9 / 10, "iperf3 moved {got} of {sent} bytes");
    let done = unix_now();
    // Within one exchange period every link's two sides have checked each
    // other's report and agree.
    let refs: Vec<&umbra_netlab::Daemon> = o.daemons.iter().collect();
    wait_for(
        REPORT_AFTER_IDLE + Duration::from_secs(10),
        "every link's ledgers to agree after the transfer",
        &refs,
        || {
            (0..4)
                .all(|i| link_agrees(&o, i, i + 1, done, Some(10 * CELL as i64)))
                .then_some(())
        },
    );
    let after = ledgers(&o);
    let delta = |i: usize, side: usize, k: &str| {
        let pick = |v: &(Value, Value)| if side == 0 { v.0.clone() } else { v.1.clone() };
        num(&pick(&after[i]), k) - num(&pick(&before[i]), k)
    };
    // The origin owes its first hop what it sent, within the cells'
    // overhead (headers, the packets' own headers, the ACKs back).
    let owed = -delta(0, 0, "balance");
    let ratio = owed as f64 / got as f64;
    eprintln!("iperf3 moved {got} bytes; the origin owes {owed} bytes ({ratio:.3}×)");
    assert!(
        (1.0..1.25).contains(&ratio),
        "the origin's debt is {ratio:.3}× what iperf3 moved"
    );
    // Every relay nets out: credited by the node before it, charged by the
    // one after it, the same cells.
    for relay in 1..4 {
        let net = delta(relay - 1, 1, "balance") + delta(relay, 0, "balance");
        eprintln!("relay {relay} nets {net} bytes");
        assert!(
            net.unsigned_abs() < owed.unsigned_abs() / 100,
            "relay {relay} nets {net} bytes of {owed}"
        );
    }
    // The destination earns what the last relay sent it.
    let earned = delta(3, 1, "balance");
    assert!(
        (earned - owed).abs() < owed / 100,
        "the destination earned {earned}, the origin owes {owed}"
    );
    for (i, (a, b)) in after.iter().enumerate() {
        assert_eq!(a["state"], "ok", "{i}: {a}");
        assert_eq!(b["state"], "ok", "{i}: {b}");
        assert_eq!(a["mismatches"], 0, "{i}: {a}");
    }
}

/// F (0) and G (1) are R's (2) upstream neighbours; D (3) is where both
/// send, through R. R's terms for F put it past its debt limit early.
const F: usize = 0;
const G: usize = 1;
const R: usize = 2;
const D: usize = 3;

#[test]
fn a_freeloader_loses_priority_and_a_reciprocating_neighbour_keeps_its_speed() {
    require_root();
    let terms = |i: usize, j: usize| {
        if (i, j) == (R, F) {
            "1TB/30d, debt 8MiB, cutoff 64MiB".to_string()
        } else {
            "1TB/30d".to_string()
        }
    };
    let o = Overlay::build_with(
        "lf",
        4,
        &[(F, R), (G, R), (R, D)],
        |_, _| "anonymity = \"fast\"".to_string(),
        terms,
    );
    for from in [F, G] {
        assert!(o.ping(from, D, 3), "ping {from} → D failed:\n{}", o.logs());
    }
    // F takes: 16 MB to R itself, before R's link onward is limited.
    let _s = server(&o, R, 5201);
    send_bytes(&o.ns[F], &o.addrs[R], 5201, 16 << 20);
    // G gives as much as it takes: 16 MB each way with R.
    let _s = server(&o, R, 5202);
    send_bytes(&o.ns[G], &o.addrs[R], 5202, 16 << 20);
    let _s = server(&o, G, 5203);
    send_bytes(&o.ns[R], &o.addrs[G], 5203, 16 << 20);
    let refs: Vec<&umbra_netlab::Daemon> = o.daemons.iter().collect();
    wait_ledger(&o, R, F, "R to see F past its debt limit", |f| {
        f["state"] == "low_priority"
    });
    wait_ledger(&o, R, G, "R to see G even", |g| {
        g["state"] == "ok" && num(g, "balance").unsigned_abs() < 2 << 20
    });
    // R's forwarding onward is now the bottleneck.
    o.limit(R, D, 40);
    let _s = server(&o, D, 5204);
    let (alone_g, _) = send_for(&o.ns[G], &o.addrs[D], 5204, 5);
    eprintln!("G alone through R: {alone_g:.1} Mbit/s");
    // Both at once.
    let (_sf, _sg) = (server(&o, D, 5205), server(&o, D, 5206));
    let d_addr = &o.addrs[D];
    let ((f_mbps, f_bytes), (g_mbps, g_bytes)) = std::thread::scope(|s| {
        let f = s.spawn(|| send_for(&o.ns[F], d_addr, 5205, 10));
        let g = s.spawn(|| send_for(&o.ns[G], d_addr, 5206, 10));
        (f.join().expect("F's iperf3"), g.join().expect("G's iperf3"))
    });
    let share = g_bytes as f64 / (f_bytes + g_bytes).max(1) as f64;
    eprintln!(
        "at once: G {g_mbps:.1} Mbit/s, F {f_mbps:.1} Mbit/s; G's share {:.0} %",
        share * 100.0
    );
    assert!(
        share >= 0.70,
        "G got {:.0} % of R's capacity (F {f_mbps:.1}, G {g_mbps:.1} Mbit/s); R's ledgers: F {} G {}",
        share * 100.0,
        o.ledger(R, F),
        o.ledger(R, G)
    );
    // F alone: an idle relay serves it at full speed.
    let _s = server(&o, D, 5207);
    let (alone_f, _) = send_for(&o.ns[F], &o.addrs[D], 5207, 5);
    eprintln!("F alone through R: {alone_f:.1} Mbit/s (G alone {alone_g:.1})");
    assert!(
        alone_f >= 0.8 * alone_g,
        "F alone got {alone_f:.1} Mbit/s, G alone {alone_g:.1}"
    );
    // F takes more, past its cutoff: its new circuits are refused, with the
    // reason in its log and in `umbra path`; G's still build.
    let _s = server(&o, R, 5208);
    send_bytes(&o.ns[F], &o.addrs[R], 5208, 40 << 20);
    wait_ledger(&o, R, F, "R to cut F off", |f| f["state"] == "cut_off");
    let refused = wait_for(
        Duration::from_secs(20),
        "F's path to G to be refused",
        &refs,
        || {
            let out = o.daemons[F]
                .cli(&["path", &o.addrs[G]])
                .expect("umbra path");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.contains("cut off").then_some(text)
        },
    );
    eprintln!("umbra path on F: {refused}");
    assert!(
        o.daemons[F].log_text().contains("cut off"),
        "F's log does not say why:\n{}",
        o.daemons[F].log_text()
    );
    assert!(o.status(R)["metrics"]["circuits_refused"].as_u64() >= Some(1));
    assert!(
        o.ping(G, F, 2),
        "G's new circuit through R to F did not build"
    );
    assert!(o.ping(G, D, 2), "G lost its way through R");
}

/// The flooder's identity seed: the test and its helper make the same key.
const FLOODER_SEED: [u8; 32] = [0x6c; 32];
/// CREATEs the flooder sends.
const FLOOD: usize = 1000;
/// R's circuit rate for the flooder.
const FLOOD_RATE: u64 = 5;

#[test]
fn a_circuit_flood_is_cut_at_its_rate_and_bad_reports_are_dropped() {
    if let Some(role) = test_role() {
        helper::run(&role);
        return;
    }
    require_root();
    let v = Victim::start(
        "lf",
        &FLOODER_SEED,
        &format!("1TB/30d, circuits {FLOOD_RATE}/s"),
    );
    let Victim { r, ng, nh, .. } = &v;
    let log = v.dir.path().join("flooder.log");
    let env = [
        ("UMBRA_LEDGER_R", v.endpoint.as_str()),
        ("UMBRA_LEDGER_R_KEY", v.r_key.as_str()),
    ];
    let test = "a_circuit_flood_is_cut_at_its_rate_and_bad_reports_are_dropped";
    let mut helper = spawn_test_helper(nh, test, "flooder", &env, &log);
    // While the flood runs, G's circuits through R still build.
    let pid = r.pid().expect("R's pid");
    let rss_before = umbra_netlab::rss_kib(pid).unwrap_or(0);
    let g_ping =
        umbra_netlab::ping(ng, &v.r_addr, umbra_netlab::PingOptions::new(20, 0.1)).expect("ping");
    let ok = succeeds_within(&mut helper, Duration::from_secs(60));
    let rss_after = umbra_netlab::rss_kib(pid).unwrap_or(0);
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{said}");
    assert!(ok, "the flooder failed:\n{said}\nR:\n{}", r.log_text());
    eprintln!(
        "R under the circuit flood: G's pings {}/{}, RSS {rss_before} → {rss_after} KiB",
        g_ping.received(),
        g_ping.sent
    );
    assert!(
        g_ping.received() * 10 >= g_ping.sent * 9,
        "G could not reach R during the flood: {}",
        g_ping.output
    );
    // Refused CREATEs cost R nothing it keeps.
    assert!(
        rss_after.saturating_sub(rss_before) < 32 * 1024,
        "RSS {rss_before} → {rss_after} KiB"
    );
    let status = r.status().expect("status");
    let refused = status["metrics"]["circuits_refused"].as_u64().unwrap_or(0);
    assert!(
        refused >= (FLOOD as u64) / 2,
        "R refused {refused} of {FLOOD} circuits"
    );
    let dropped = &status["ledgers"]["reports_dropped"];
    assert_eq!(dropped["forged"], 1, "{status}");
    assert_eq!(dropped["replayed"], 1, "{status}");
    assert_eq!(dropped["malformed"], 1, "{status}");
    assert!(r.answers(), "R must still run");
}

/// The flooder: links with R as its partner, sends CREATEs as fast as it
/// can and counts the answers, then sends bad ledger reports.
mod helper {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use umbra_routing::cell::Reason;
    use umbra_routing::circuit::CircuitEvent;
    use umbra_routing::crypto::Identity;
    use umbra_routing::ledger::report::{Counts, Report};
    use umbra_tests::netns::hostile::{self, Hostile};
    use umbra_transport::proto::frame::Frame;

    use super::{FLOOD, FLOOD_RATE, FLOODER_SEED};

    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }

    pub(super) fn run(role: &str) {
        assert_eq!(role, "flooder");
        hostile::block_on(flood());
    }

    async fn flood() {
        let r = hostile::key_from_env("UMBRA_LEDGER_R_KEY");
        let mut h = Hostile::link(&FLOODER_SEED, r, &env("UMBRA_LEDGER_R")).await;
        let session = h.link.handshake_hash;
        let start = Instant::now();
        let mut cells = 0u64;
        for _ in 0..FLOOD {
            h.core.build_circuit(Instant::now(), &[r]).expect("build");
            cells += h.flush().await.1;
        }
        let sent_in = start.elapsed();
        // Count the answers.
        let (mut built, mut too_many, mut other) = (0usize, 0usize, 0usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while built + too_many + other < FLOOD {
            if h.read_until(deadline).await.is_none() {
                break;
            }
            while let Some(ev) = h.core.poll_event() {
                match ev {
                    CircuitEvent::Built { .. } => built += 1,
                    CircuitEvent::Unreachable {
                        reason: Reason::TooManyCircuits,
                        ..
                    } => too_many += 1,
                    CircuitEvent::Unreachable { reason, .. } => {
                        eprintln!("refused: {reason}");
                        other += 1
                    }
                    _ => {}
                }
            }
        }
        let allowed = (2 * FLOOD_RATE) as f64 + FLOOD_RATE as f64 * start.elapsed().as_secs_f64();
        eprintln!(
            "{FLOOD} CREATEs in {sent_in:?}: {built} built, {too_many} refused as too many, {other} otherwise (the rate allows {allowed:.1})"
        );
        assert_eq!(built + too_many, FLOOD, "every CREATE answered");
        assert!(
            built as f64 <= allowed + 1.0,
            "{built} built, {allowed:.1} allowed"
        );
        assert!(built >= 2 * FLOOD_RATE as usize, "the burst goes through");
        // Bad ledger reports: a forged one, a good one twice, and bytes
        // that are no report.
        let good = Report {
            seq: 1,
            sent: Counts {
                own: cells,
                other: 0,
            },
            ..Report::default()
        };
        let send = |b: Vec<u8>| Frame::Ledger(b.into());
        let mallory = Identity::from_seed(&[0x13; 32]);
        let forged = good.encode(&mallory, &r, &session);
        let sender = &h.link.sender;
        sender.send(send(forged)).await.expect("send");
        let real = good.encode(&h.me, &r, &session);
        sender.send(send(real.clone())).await.expect("send");
        sender.send(send(real)).await.expect("send");
        sender
            .send(send(b"no report".to_vec()))
            .await
            .expect("send");
        // Let R read them before the link closes.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        eprintln!("flooder done at {now}");
    }
}

#[test]
fn ledgers_survive_sigterm_and_sigkill_and_agree_again() {
    require_root();
    let mut o = Overlay::build("lp", 2, &[(0, 1)], |_, _| {
        "anonymity = \"fast\"".to_string()
    });
    let transfer = |o: &Overlay, port: u16| {
        let _s = server(o, 1, port);
        send_bytes(&o.ns[0], &o.addrs[1], port, 8 << 20);
        let done = unix_now();
        let refs: Vec<&umbra_netlab::Daemon> = o.daemons.iter().collect();
        wait_for(
            REPORT_AFTER_IDLE + Duration::from_secs(10),
            "the two ledgers to agree",
            &refs,
            || link_agrees(o, 0, 1, done, None).then_some(()),
        );
    };
    let mut port = 5201;
    for signal in ["TERM", "KILL"] {
        for side in [0, 1] {
            transfer(&o, port);
            port += 1;
            let other = 1 - side;
            let before = (o.ledger(side, other), o.ledger(other, side));
            o.daemons[side].signal(signal).expect("signal");
            o.daemons[side].wait(Duration::from_secs(15));
            o.daemons[side].start(&o.ns[side]).expect("restart");
            let after = o.ledger(side, other);
            let lost = num(&before.0, "total_for_peer") - num(&after, "total_for_peer")
                + num(&before.0, "total_by_peer")
                - num(&after, "total_by_peer");
            eprintln!("SIG{signal} of node {side}: {lost} bytes lost");
            if signal == "TERM" {
                assert_eq!(lost, 0, "a clean stop keeps everything: {before:?} {after}");
            } else {
                assert!(
                    (0..=REPORT_EVERY_BYTES as i64).contains(&lost),
                    "SIGKILL lost {lost} bytes: {before:?} {after}"
                );
            }
            assert_eq!(
                o.ledger(other, side)["total_by_peer"],
                before.1["total_by_peer"],
                "the other side was not touched"
            );
            // The link comes back (the next transfer checks that the two
            // sides agree again).
            let refs: Vec<&umbra_netlab::Daemon> = o.daemons.iter().collect();
            wait_for(Duration::from_secs(30), "the overlay back", &refs, || {
                o.ping(0, 1, 1).then_some(())
            });
        }
    }
    transfer(&o, port);
    eprintln!(
        "after the restarts: {} | {}",
        o.ledger(0, 1),
        o.ledger(1, 0)
    );
}
