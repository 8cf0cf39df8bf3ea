//! Abuse from the network is bounded (docs/threat-model.md, "What umbra
//! does not protect against"): a slowloris of 2,000 half-open TLS
//! connections against a relay's port 443 while traffic crosses the relay
//! and a neighbour links to it again. The relay keeps forwarding, the
//! neighbour's new link forms, its memory stays bounded, and its counters
//! show what the listener turned away.

use std::time::Duration;

use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::{netns, require_root, veth, wait_for};

const SLOWLORIS: &str = env!("CARGO_BIN_EXE_slowloris");

/// Connections the attacker opens, and how long it holds them.
const CONNECTIONS: usize = 2000;
const HOLD_SECS: u64 = 25;

/// The relay's resident memory may grow by at most this much under the
/// attack (measured: see the test's output).
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

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
    let rss_before = rss_kib(pid);

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
        let rss_during = rss_kib(pid);
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
