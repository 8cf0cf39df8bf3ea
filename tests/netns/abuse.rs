//! Abuse from the network is bounded (docs/threat-model.md, "What umbra
//! does not protect against"):
//! - a slowloris of 2,000 half-open TLS connections against a relay's port
//!   443 while traffic crosses the relay and a neighbour links to it again.
//!   The relay keeps forwarding, the neighbour's new link forms, its memory
//!   stays bounded, and its counters show what the listener turned away;
//! - a neighbour that sends on a circuit past its window and never reads
//!   (this test binary, speaking the link and circuit protocols as a helper
//!   in its own namespace). The relay closes that circuit and counts the
//!   drops, another neighbour's traffic over the same link keeps flowing,
//!   and memory stays bounded.
//!
//! The circuit flood (CREATEs as fast as a neighbour can send them) is in
//! `ledger.rs`, beside the terms that set its rate.

use std::time::Duration;

use umbra_tests::netns::hostile::Victim;
use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::{netns, require_root, veth, wait_for};

const SLOWLORIS: &str = env!("CARGO_BIN_EXE_slowloris");

/// Connections the attacker opens, and how long it holds them.
const CONNECTIONS: usize = 2000;
const HOLD_SECS: u64 = 25;

/// The relay's resident memory may grow by at most this much under the
/// attack (measured: see the test's output).
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

#[test]
fn a_slowloris_of_2000_half_open_connections_leaves_links_and_traffic_alone() {
    require_root();
    // 0 - 1 - 2; 1 is the victim, which every path from 0 to 2 crosses.
    let mut o = Overlay::build("ab", 3, &[(0, 1), (1, 2)], |_, _| {
        "anonymity = \"fast\"".to_string()
    });
    assert!(o.ping(0, 2, 3), "ping 0 → 2 failed; logs:\n{}", o.logs());
    // The attacker reaches the relay's link address on the edge to 0.
    let attacker = netns("abx");
    veth(&o.ns[1], &attacker, 200);
    attacker
        .exec(&["ip", "route", "add", "198.18.0.0/15", "via", "198.18.200.1"])
        .expect("route");
    let target = o.links.peers[0]
        .iter()
        .find(|(j, _)| *j == 1)
        .map(|(_, ip)| format!("{ip}:443"))
        .expect("node 1's address on the edge to 0");
    let pid = o.daemons[1].pid().expect("relay pid");
    let rss_before = umbra_netlab::rss_kib(pid).unwrap_or(0);

    let Overlay {
        daemons, ns, addrs, ..
    } = &mut o;
    let (report, during, pings) = std::thread::scope(|s| {
        let attack = s.spawn(|| {
            let hold = HOLD_SECS.to_string();
            let count = CONNECTIONS.to_string();
            attacker
                .run(&[
                    "prlimit",
                    "--nofile=8192",
                    SLOWLORIS,
                    &target,
                    &count,
                    &hold,
                ])
                .expect("run slowloris")
        });
        // Let the connections pile up, then send traffic across the relay,
        // then make node 2 link to it again.
        std::thread::sleep(Duration::from_secs(5));
        let opts = umbra_netlab::PingOptions {
            wait_secs: 2,
            ..umbra_netlab::PingOptions::new(60, 0.1)
        };
        let pings = umbra_netlab::ping(&ns[0], &addrs[2], opts).expect("run ping");
        let during = daemons[1]
            .cli_json(&["status", "--json"])
            .expect("umbra cli");
        daemons[2].signal("KILL").expect("SIGKILL node 2");
        let _ = daemons[2].wait(Duration::from_secs(5));
        daemons[2].start(&ns[2]).expect("node 2 starts again");
        let refs: Vec<&umbra_tests::netns::Daemon> = daemons.iter().collect();
        wait_for(
            Duration::from_secs(10),
            "node 2 to relink under the attack",
            &refs,
            || {
                let s = daemons[2].cli_json(&["status", "--json"]).ok()?;
                (s["links_up"] == 1).then_some(())
            },
        );
        let rss_during = umbra_netlab::rss_kib(pid).unwrap_or(0);
        let out = attack.join().expect("slowloris thread");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "slowloris said: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (report, (during, rss_during), pings)
    });
    let (during, rss_during) = during;
    let listener = &during["listener"];
    eprintln!(
        "slowloris: {report}; the relay's listener during it: {listener}; RSS {} → {} KiB; \
         pings across it {}/{}",
        rss_before,
        rss_during,
        pings.received(),
        pings.sent
    );
    // The attacker got its 64 slots and no more: the rest were closed.
    assert!(
        listener["unauthenticated"].as_u64() <= Some(64),
        "{listener}"
    );
    assert!(
        listener["refused_per_source"].as_u64() >= Some(1000),
        "{listener}"
    );
    assert!(report["held"].as_u64() <= Some(64), "{report}");
    // Traffic kept crossing the relay, and its memory stayed bounded.
    assert!(
        pings.received() * 10 >= pings.sent * 9,
        "pings: {}\nlogs:\n{}",
        pings.output,
        o.logs()
    );
    assert!(
        rss_during.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KIB,
        "RSS {rss_before} → {rss_during} KiB"
    );
    assert!(o.ping(0, 2, 3), "ping 0 → 2 after the attack failed");
}

/// The window flooder's identity seed: the test and its helper make the
/// same key.
const WINDOW_FLOODER_SEED: [u8; 32] = [0x5f; 32];
/// Circuits the window flooder floods, one after the other, and the cells
/// it sends on each past its window.
const ROUNDS: u64 = 5;
const PAST_WINDOW_CELLS: u64 = 20_000;
/// The victim's link onward to the circuit's destination, Mbit/s: slower
/// than the flood, so cells wait at the victim.
const ONWARD_MBIT: u32 = 5;

/// A neighbour F builds a circuit through the victim R to G, then sends
/// as fast as it can and never reads: a full window of real cells, then
/// cells past it (R cannot tell them from real ones: it only strips its
/// layer). R's link onward to G is slower than the flood, so the cells
/// wait at R. R closes the circuit once 2,000 wait, drops what is queued
/// and counts it, and drops what F sends after as cells of an unknown
/// circuit. Meanwhile G's traffic with R keeps flowing over that same slow
/// link, and R's memory stays bounded.
#[test]
fn a_neighbour_that_ignores_its_window_and_never_reads_loses_its_circuit() {
    if let Some(role) = umbra_tests::netns::test_role() {
        window_flooder::run(&role);
        return;
    }
    require_root();
    let v = Victim::start("aw", &WINDOW_FLOODER_SEED, "1TB/30d");
    let Victim { r, nr, ng, nh, .. } = &v;
    nr.limit_egress(&v.onward.a.iface, ONWARD_MBIT)
        .expect("limit R's link to G");

    let pid = r.pid().expect("R's pid");
    let rss_before = umbra_netlab::rss_kib(pid).unwrap_or(0);
    let log = v.dir.path().join("window-flooder.log");
    let env = [
        ("UMBRA_ABUSE_R", v.endpoint.as_str()),
        ("UMBRA_ABUSE_R_KEY", v.r_key.as_str()),
        ("UMBRA_ABUSE_G_KEY", v.g_key.as_str()),
    ];
    let test = "a_neighbour_that_ignores_its_window_and_never_reads_loses_its_circuit";
    let mut helper = umbra_tests::netns::spawn_test_helper(nh, test, "window-flooder", &env, &log);
    // Sample R's memory while G pings R over the link the flood fills.
    let sampling = std::sync::atomic::AtomicBool::new(true);
    let (pings, rss_peak) = std::thread::scope(|s| {
        let peak = s.spawn(|| {
            let mut peak = rss_before;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(umbra_netlab::rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let opts = umbra_netlab::PingOptions {
            wait_secs: 2,
            ..umbra_netlab::PingOptions::new(60, 0.1)
        };
        let pings = umbra_netlab::ping(ng, &v.r_addr, opts).expect("run ping");
        let ok = umbra_tests::netns::succeeds_within(&mut helper, Duration::from_secs(60));
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("{said}");
        assert!(
            ok,
            "the window flooder failed:\n{said}\nR:\n{}",
            r.log_text()
        );
        (pings, peak.join().expect("sampler"))
    });
    let status = r.status().expect("status");
    let drops = &status["metrics"]["drops"];
    eprintln!(
        "R under the window flood: RSS {rss_before} → peak {rss_peak} KiB; G's pings to R {}/{}; \
         drops {drops}",
        pings.received(),
        pings.sent
    );
    // Each circuit is closed with its 2,000 waiting cells (some may have
    // left for G meanwhile).
    assert!(
        drops["circuit_queue_full"].as_u64() >= Some(ROUNDS * 1000),
        "R did not close the flooded circuits: {status}\nR:\n{}",
        r.log_text()
    );
    assert!(
        pings.received() * 10 >= pings.sent * 9,
        "G's pings to R: {}\nR:\n{}",
        pings.output,
        r.log_text()
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KIB,
        "RSS {rss_before} → {rss_peak} KiB"
    );
    assert!(r.answers(), "R must still run");
    assert!(
        umbra_netlab::ping(ng, &v.r_addr, umbra_netlab::PingOptions::new(3, 0.2))
            .expect("ping")
            .success,
        "G lost R after the flood"
    );
}

/// The window flooder: links with R, builds a circuit through R to G,
/// then sends and never reads.
mod window_flooder {
    use std::time::{Duration, Instant};

    use umbra_routing::cell::CELL_LEN;
    use umbra_routing::circuit::{CIRCUIT_WINDOW_CELLS, CircuitEvent};
    use umbra_tests::netns::hostile::{self, Hostile};

    use super::{PAST_WINDOW_CELLS, ROUNDS, WINDOW_FLOODER_SEED};

    pub(super) fn run(role: &str) {
        assert_eq!(role, "window-flooder");
        hostile::block_on(flood());
    }

    /// Builds a circuit through `r` to `g` (reading only until it is
    /// built), then floods it without reading: a full window of real cells,
    /// then [`PAST_WINDOW_CELLS`] past it. Returns the cells sent.
    async fn flood_one_circuit(h: &mut Hostile, r: [u8; 32], g: [u8; 32]) -> u64 {
        let circuit = h
            .core
            .build_circuit(Instant::now(), &[r, g])
            .expect("build");
        h.flush().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        'built: loop {
            assert!(h.read_until(deadline).await.is_some(), "no circuit to G");
            h.flush().await;
            while let Some(ev) = h.core.poll_event() {
                if matches!(ev, CircuitEvent::Built { circuit: c, .. } if c == circuit) {
                    break 'built;
                }
            }
        }
        let packet = [0x60u8; 1000];
        let mut template = None;
        let mut sent = 0u64;
        while sent < u64::from(CIRCUIT_WINDOW_CELLS) {
            if h.core
                .send_packet(Instant::now(), circuit, &packet)
                .is_err()
            {
                break; // the window is shut and the queue full
            }
            let (last, n) = h.flush().await;
            template = last.or(template);
            sent += n;
        }
        // Then cells past the window: the last real one with its body
        // changed, which R forwards as it would any other.
        let mut cell: [u8; CELL_LEN] = template.expect("a data cell went");
        for i in 0..PAST_WINDOW_CELLS {
            cell[CELL_LEN - 8..].copy_from_slice(&i.to_be_bytes());
            h.send_cell(&cell).await;
            sent += 1;
        }
        sent
    }

    async fn flood() {
        let (r, g) = (
            hostile::key_from_env("UMBRA_ABUSE_R_KEY"),
            hostile::key_from_env("UMBRA_ABUSE_G_KEY"),
        );
        let endpoint = std::env::var("UMBRA_ABUSE_R").expect("UMBRA_ABUSE_R");
        let mut h = Hostile::link(&WINDOW_FLOODER_SEED, r, &endpoint).await;
        let start = Instant::now();
        let mut sent = 0u64;
        for _ in 0..ROUNDS {
            sent += flood_one_circuit(&mut h, r, g).await;
        }
        eprintln!(
            "window flooder: {sent} cells in {:?} on {ROUNDS} circuits through R to G, \
             none read but the CREATEDs",
            start.elapsed()
        );
        // Hold the link, unread, while R deals with it.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
