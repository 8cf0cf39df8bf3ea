//! Recovery that follows the network (docs/architecture.md, "Faults"): a
//! relay killed where another path exists, a relay killed on the only path
//! and restarted, and a relay that silently stops forwarding. Each measures
//! the outage with timestamped pings (20 a second), prints it, and asserts
//! twice the goal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use umbra_netlab::{Netns, PingOptions};
use umbra_tests::netns::overlay::{Overlay, iperf3_server};
use umbra_tests::netns::require_root;

/// Seconds since the epoch, as ping's `-D` prints them.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Pings `addr` from `ns` every 50 ms for `secs` seconds; the replies'
/// unix times.
fn ping_for(ns: &Netns, addr: &str, secs: usize) -> Vec<f64> {
    let opts = PingOptions {
        wait_secs: 2,
        timestamps: true,
        ..PingOptions::new(secs * 20, 0.05)
    };
    umbra_netlab::ping(ns, addr, opts)
        .map(|s| s.replies.iter().filter_map(|r| r.at).collect())
        .unwrap_or_default()
}

/// How long after `from` (unix time) replies stopped, at most: the longest
/// time without a reply that overlaps `from`, or the wait for the first
/// reply after it.
fn outage_after(replies: &[f64], from: f64) -> f64 {
    let before = replies.iter().rev().find(|&&t| t <= from).copied();
    let after = replies.iter().find(|&&t| t > from).copied();
    match (before, after) {
        (_, None) => f64::INFINITY,
        (Some(b), Some(a)) => {
            // The longest gap from the last reply before through the next
            // few seconds, so a second stall soon after counts too.
            let mut longest = a - from.max(b);
            let mut prev = a;
            for &t in replies.iter().filter(|&&t| t > a && t < a + 5.0) {
                longest = longest.max(t - prev);
                prev = t;
            }
            longest
        }
        (None, Some(a)) => a - from,
    }
}

/// The node (index) the circuit from `from` to `to` leaves through.
fn first_hop(o: &Overlay, from: usize, to: usize) -> usize {
    let (hops, path) = o.path(from, to);
    *hops.first().unwrap_or_else(|| panic!("no hops in {path}"))
}

/// A diamond: 0 reaches 3 through 1 or 2, with `anonymity = "fast"` so the
/// origin may leave through either (balanced pins its home node).
fn diamond(tag: &str) -> Overlay {
    let o = Overlay::build(tag, 4, &[(0, 1), (0, 2), (1, 3), (2, 3)], |_, _| {
        "anonymity = \"fast\"".to_string()
    });
    assert!(o.ping(0, 3, 3), "ping 0 → 3 failed; logs:\n{}", o.logs());
    o
}

#[test]
fn a_killed_relay_with_a_detour_costs_under_two_seconds_and_no_reset() {
    require_root();
    let o = diamond("rk");
    let mut server = iperf3_server(&o.ns[3], &o.addrs[3], &o.dir.path().join("iperf3.log"));
    let iperf = {
        let ns = o.ns[0].name().to_string();
        let addr = o.addrs[3].clone();
        std::thread::spawn(move || {
            umbra_netlab::run(&[
                "ip", "netns", "exec", &ns, "iperf3", "-6", "-J", "-c", &addr, "-t", "10", "-b",
                "20M",
            ])
        })
    };
    let (ns, addr) = (&o.ns[0], o.addrs[3].as_str());
    let (middle, killed_at, replies) = std::thread::scope(|s| {
        let pings = s.spawn(|| ping_for(ns, addr, 10));
        std::thread::sleep(Duration::from_secs(3));
        let middle = first_hop(&o, 0, 3);
        assert!(middle == 1 || middle == 2, "first hop is node {middle}");
        let killed_at = unix_now();
        o.daemons[middle].signal("KILL").expect("SIGKILL the relay");
        (middle, killed_at, pings.join().expect("ping thread"))
    });
    let outage = outage_after(&replies, killed_at);
    eprintln!("relay {middle} killed with a detour: pings stopped for {outage:.2} s (goal 2 s)");
    let out = iperf.join().expect("iperf3 thread").expect("run iperf3");
    let _ = server.proc.wait(Duration::from_secs(15));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        report.get("error").is_none() && out.status.success(),
        "the TCP transfer broke: {}\nlogs:\n{}",
        report["error"],
        o.logs()
    );
    assert!(outage < 4.0, "outage {outage:.2} s; logs:\n{}", o.logs());
}

#[test]
fn a_restarted_relay_on_the_only_path_carries_traffic_within_five_seconds() {
    require_root();
    // 0 - 1 - 2 - 3 - 4: every path from 0 to 4 crosses 2.
    let mut o = Overlay::build("rr", 5, &[(0, 1), (1, 2), (2, 3), (3, 4)], |_, _| {
        String::new()
    });
    assert!(o.ping(0, 4, 3), "ping 0 → 4 failed; logs:\n{}", o.logs());
    let Overlay {
        daemons, ns, addrs, ..
    } = &mut o;
    let (ready_at, replies) = std::thread::scope(|s| {
        let (from, addr) = (&ns[0], addrs[4].as_str());
        let pings = s.spawn(move || ping_for(from, addr, 25));
        std::thread::sleep(Duration::from_secs(2));
        daemons[2].signal("KILL").expect("SIGKILL the relay");
        let _ = daemons[2].wait(Duration::from_secs(5));
        daemons[2].start(&ns[2]).expect("the relay starts again");
        (unix_now(), pings.join().expect("ping thread"))
    });
    let back = replies
        .iter()
        .find(|&&t| t > ready_at)
        .map_or(f64::INFINITY, |t| t - ready_at);
    eprintln!(
        "relay 2 killed and restarted on the only path: traffic back {back:.2} s after it answered \
         its control socket (goal 5 s)"
    );
    assert!(back < 10.0, "back after {back:.2} s; logs:\n{}", o.logs());
}

#[test]
fn a_relay_that_silently_stops_forwarding_is_routed_around_within_five_seconds() {
    require_root();
    let o = diamond("rb");
    blackhole_under_traffic(&o, None);
}

/// The same beside an unpaced bulk TCP transfer.
#[test]
fn a_relay_that_silently_stops_forwarding_under_a_bulk_transfer_is_routed_around() {
    require_root();
    let o = diamond("rbb");
    blackhole_under_traffic(&o, Some(&[]));
}

/// The origin's own link to its first hop goes down on its side (`ip link
/// set down`: no FIN, no reset reach the relay, and the origin's kernel
/// sends nothing more) under a transfer paced as the soak paces it (the
/// link busy, not saturated), as the soak does to links.
#[test]
fn a_link_cut_under_a_bulk_transfer_is_routed_around() {
    require_root();
    let o = diamond("rcb");
    let (first, outage) = outage_under_traffic(&o, Some(&["-b", "10M"]), |first| {
        let dev = umbra_netlab::numbered(0, first).0;
        o.ns[0]
            .exec(&["ip", "link", "set", &dev, "down"])
            .expect("cut the link");
    });
    eprintln!(
        "link 0-{first} cut at the origin under pings and a paced transfer: pings stopped for \
         {outage:.2} s (goal 5 s)"
    );
    assert!(outage < 10.0, "outage {outage:.2} s; logs:\n{}", o.logs());
}

/// Blackholes the relay the circuit from 0 to 3 leaves through (every packet
/// in and out of its namespace dropped: no FIN, no reset, the daemon itself
/// runs on) under pings, and an iperf3 transfer with `iperf` if given, and
/// checks the pings' outage.
fn blackhole_under_traffic(o: &Overlay, iperf: Option<&[&str]>) {
    let (middle, outage) = outage_under_traffic(o, iperf, |middle| {
        let out = o.ns[middle]
            .run(&[
                "nft",
                "add table inet blackhole; \
                 add chain inet blackhole in { type filter hook input priority -300; policy drop; }; \
                 add chain inet blackhole out { type filter hook output priority -300; policy drop; }",
            ])
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let load = if iperf.is_some() {
        " and a bulk transfer"
    } else {
        ""
    };
    eprintln!(
        "relay {middle} blackholed under pings{load}: pings stopped for {outage:.2} s (goal 5 s)"
    );
    assert!(
        o.daemons[middle].request(r#"{"cmd":"status"}"#).is_some(),
        "the blackholed relay itself kept running"
    );
    assert!(outage < 10.0, "outage {outage:.2} s; logs:\n{}", o.logs());
}

/// Pings 0 → 3 for 14 s, with an iperf3 transfer beside them (these extra
/// arguments) if `iperf` is given, applies `fault` to the circuit's first
/// hop after 3 s, and returns that hop and how long the pings stopped.
fn outage_under_traffic(
    o: &Overlay,
    iperf: Option<&[&str]>,
    fault: impl FnOnce(usize),
) -> (usize, f64) {
    let mut server =
        iperf.map(|_| iperf3_server(&o.ns[3], &o.addrs[3], &o.dir.path().join("iperf3.log")));
    let (ns, addr) = (&o.ns[0], o.addrs[3].as_str());
    let (first, fault_at, replies) = std::thread::scope(|s| {
        let pings = s.spawn(|| ping_for(ns, addr, 14));
        let transfer = iperf.map(|extra| {
            s.spawn(move || {
                // It may end with an error when the fault breaks its path for
                // long: only the pings are measured.
                let mut args = vec![
                    "iperf3",
                    "-6",
                    "-c",
                    addr,
                    "-t",
                    "13",
                    "--connect-timeout",
                    "3000",
                ];
                args.extend_from_slice(extra);
                let _ = ns.run(&args);
            })
        });
        std::thread::sleep(Duration::from_secs(3));
        let first = first_hop(o, 0, 3);
        let fault_at = unix_now();
        fault(first);
        if let Some(t) = transfer {
            let _ = t.join();
        }
        (first, fault_at, pings.join().expect("ping thread"))
    });
    if let Some(server) = server.as_mut() {
        let _ = server.proc.kill();
    }
    (first, outage_after(&replies, fault_at))
}
