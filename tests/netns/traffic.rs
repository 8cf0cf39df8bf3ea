//! Traffic over circuits between real daemons (docs/architecture.md,
//! "Tasks and data flow"): ping and iperf3
//! across a 5-node chain, failover in a diamond when a middle node dies, and
//! a forged source address that never reaches the destination's TUN.

use std::time::Duration;

use umbra_tests::netns::overlay::{Overlay, index_of, iperf3, iperf3_server};
use umbra_tests::netns::{Netns, require_root, wait_for};

#[test]
fn five_node_chain_carries_ping_and_tcp() {
    require_root();
    let o = Overlay::build("ch", 5, &[(0, 1), (1, 2), (2, 3), (3, 4)], |_, _| {
        String::new()
    });
    assert!(o.ping(0, 4, 5), "ping 0 → 4 failed; logs:\n{}", o.logs());
    // The circuit crosses the three middle nodes: each relays it.
    let origin = o.status(0);
    let circuits = origin["circuit_list"].as_array().expect("circuits");
    let circuit = circuits
        .iter()
        .find(|c| c["role"] == "origin" && c["pooled"] != true)
        .expect("an origin circuit");
    // Every hop runs the best relay crypto both ends have: version 2 (AES)
    // where this CPU has AES instructions, as the daemons share it.
    let best = if umbra_routing::circuit::relay_versions_here() & 0b10 != 0 {
        2
    } else {
        1
    };
    assert_eq!(
        circuit["relay_crypto"],
        serde_json::json!(vec![best; 4]),
        "{circuit}"
    );
    let path: Vec<&str> = circuit["path"]
        .as_array()
        .expect("path")
        .iter()
        .map(|h| h["key"].as_str().expect("key"))
        .collect();
    assert_eq!(path, [&o.keys[1], &o.keys[2], &o.keys[3], &o.keys[4]]);
    for relay in 1..4 {
        let s = o.status(relay);
        assert!(
            s["metrics"]["cells_relayed"].as_u64() > Some(0),
            "node {relay} relayed nothing: {s}"
        );
    }

    let mut server = iperf3_server(&o.ns[4], &o.addrs[4], &o.dir.path().join("iperf3.log"));
    let report = iperf3(&o.ns[0], &o.addrs[4], 3);
    let _ = server.proc.wait(Duration::from_secs(30));
    let end = &report["end"]["sum_received"];
    let bytes = end["bytes"].as_u64().unwrap_or(0);
    let bps = end["bits_per_second"].as_f64().unwrap_or(0.0);
    eprintln!(
        "iperf3 over 3 relays: {:.1} Mbit/s, {bytes} bytes",
        bps / 1e6
    );
    assert!(
        bytes > 1_000_000,
        "iperf3 moved {bytes} bytes: {report}\nlogs:\n{}",
        o.logs()
    );
    let dest = o.status(4);
    assert_eq!(dest["metrics"]["tag_failures"], 0, "{dest}");

    // An address no node has: the app hears "unreachable" at once.
    let out = o.ping_with(0, &["-c", "1", "-W", "3", "600:1234::1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Destination unreachable"),
        "no ICMPv6 unreachable: {text}"
    );
    assert_eq!(o.status(0)["metrics"]["icmp_unreachable_sent"], 1);
}

#[test]
fn diamond_fails_over_when_a_middle_node_dies() {
    require_root();
    // 0 reaches 3 through 1 or 2.
    let o = Overlay::build("di", 4, &[(0, 1), (0, 2), (1, 3), (2, 3)], |_, _| {
        // "fast" has no pinned home node, so it may fail over to the other
        // first hop; balanced would wait for its home (see the grid test).
        "anonymity = \"fast\"".to_string()
    });
    assert!(o.ping(0, 3, 3), "ping 0 → 3 failed; logs:\n{}", o.logs());
    let mut server = iperf3_server(&o.ns[3], &o.addrs[3], &o.dir.path().join("iperf3.log"));
    let client = {
        let ns = o.ns[0].name().to_string();
        let addr = o.addrs[3].clone();
        std::thread::spawn(move || {
            let out = umbra_netlab::run(&[
                "ip", "netns", "exec", &ns, "iperf3", "-6", "-J", "-c", &addr, "-t", "16", "-i",
                "1",
            ])
            .expect("iperf3");
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    // Kill the middle node the circuit goes through.
    let origin = o.status(0);
    let first = origin["circuit_list"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["role"] == "origin" && c["built"] == true && c["pooled"] != true)
        })
        .and_then(|c| c["path"][0]["key"].as_str())
        .expect("a built origin circuit")
        .to_string();
    let middle = o.keys.iter().position(|k| *k == first).expect("known key");
    assert!(middle == 1 || middle == 2, "first hop is node {middle}");
    o.daemons[middle].signal("KILL").expect("signal the daemon");
    let report = client.join().expect("iperf3 thread");
    let _ = server.proc.wait(Duration::from_secs(30));
    let intervals: Vec<u64> = report["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["sum"]["bytes"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    eprintln!("bytes per second, node {middle} killed after 4 s: {intervals:?}");
    assert!(
        intervals.len() >= 14,
        "iperf3 did not run its 16 s: {report}\nlogs:\n{}",
        o.logs()
    );
    // The longest run of empty seconds after the kill is under 10 s, and the
    // transfer carries data again at the end.
    let mut gap = 0;
    let mut longest = 0;
    for &b in &intervals[4..] {
        gap = if b == 0 { gap + 1 } else { 0 };
        longest = longest.max(gap);
    }
    assert!(
        longest < 10,
        "no data for {longest} s after the kill: {intervals:?}"
    );
    assert!(
        intervals[intervals.len() - 3..].iter().all(|&b| b > 0),
        "the transfer did not resume: {intervals:?}\nlogs:\n{}",
        o.logs()
    );
    let other = 3 - middle;
    let s = o.status(other);
    assert!(s["metrics"]["cells_relayed"].as_u64() > Some(0), "{s}");
}

/// Packets the destination's TUN handed to its kernel.
fn tun_rx_packets(ns: &Netns) -> u64 {
    ns.exec(&["cat", "/sys/class/net/umbra0/statistics/rx_packets"])
        .expect("command in the namespace")
        .trim()
        .parse()
        .expect("rx_packets")
}

#[test]
fn forged_source_never_reaches_the_destination() {
    require_root();
    let o = Overlay::build("fs", 3, &[(0, 1), (1, 2)], |_, _| {
        "anonymity = \"fast\"".to_string()
    });
    assert!(o.ping(0, 2, 2), "ping 0 → 2 failed; logs:\n{}", o.logs());
    // Node 0 gives itself node 1's address and pings node 2 from it: the
    // packets enter the overlay at node 0 with a source that is not node 0's.
    let forged = &o.addrs[1];
    o.ns[0]
        .exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{forged}/128"),
            "dev",
            "lo",
            "nodad",
        ])
        .expect("command in the namespace");
    let before = tun_rx_packets(&o.ns[2]);
    let forged_ok = o
        .ping_with(
            0,
            &[
                "-q",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                forged,
                &o.addrs[2],
            ],
        )
        .status
        .success();
    assert!(!forged_ok, "pings with a forged source were answered");
    let s = o.status(2);
    assert_eq!(s["metrics"]["drops"]["forged_source"], 5, "{s}");
    assert_eq!(
        tun_rx_packets(&o.ns[2]),
        before,
        "a forged packet reached node 2's TUN"
    );
    // The same path still carries honest packets into the TUN.
    assert!(o.ping(0, 2, 2), "ping 0 → 2 failed after the forgery");
    assert!(tun_rx_packets(&o.ns[2]) >= before + 2);
}

/// A node's JSON form `{key, address}` → its index in the overlay.

#[test]
fn grid_paths_start_at_home_and_relays_see_only_neighbours() {
    require_root();
    // A 3×3 grid; node 0 (a corner) pins node 1 as its home.
    let mut edges = Vec::new();
    for r in 0..3 {
        for c in 0..3 {
            let i = r * 3 + c;
            if c < 2 {
                edges.push((i, i + 1));
            }
            if r < 2 {
                edges.push((i, i + 3));
            }
        }
    }
    let is_edge = |a: usize, b: usize| edges.contains(&(a.min(b), a.max(b)));
    let o = Overlay::build("gr", 9, &edges, |i, keys| {
        if i == 0 {
            format!("[home]\nkey = \"{}\"", keys[1])
        } else {
            String::new()
        }
    });
    let (hops, path) = o.path(0, 8);
    eprintln!("path 0 → 8: {hops:?}");
    assert_eq!(hops[0], 1, "the first hop is the home node: {path}");
    assert_eq!(hops.last(), Some(&8));
    assert!(hops.len() > 3, "at least 3 relays: {hops:?}");
    let mut all = vec![0];
    all.extend(&hops);
    for w in all.windows(2) {
        assert!(
            is_edge(w[0], w[1]),
            "{} → {} is not an agreement edge",
            w[0],
            w[1]
        );
    }
    let mut dedup = all.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "a node repeats: {all:?}");

    assert!(o.ping(0, 8, 3), "ping 0 → 8 failed; logs:\n{}", o.logs());
    // Each relay's own view names its two neighbours and nothing else.
    for (i, &relay) in hops[..hops.len() - 1].iter().enumerate() {
        let (prev, next) = (all[i], all[i + 2]);
        let s = o.status(relay);
        let views: Vec<&serde_json::Value> = s["circuit_list"]
            .as_array()
            .expect("circuits")
            .iter()
            // A relay circuit still extending (another node's prefix
            // being built, say) has no next hop yet.
            .filter(|c| c["role"] == "relay" && !c["prev"].is_null() && !c["next"].is_null())
            .collect();
        let view = views
            .iter()
            .find(|c| index_of(&o, &c["prev"]) == prev && index_of(&o, &c["next"]) == next)
            .unwrap_or_else(|| panic!("relay {relay} has no circuit {prev} → {next}: {s}"));
        assert!(view["path"].as_array().is_some_and(Vec::is_empty), "{view}");
        assert!(view["peer"].is_null(), "{view}");
    }
    // The pool: a built prefix from the home node waits, and a destination
    // never used before (node 6, 3 hops from the home, so in no 2-step
    // prefix) takes it.
    wait_for(
        Duration::from_secs(20),
        "a built prefix in the pool",
        &[&o.daemons[0]],
        || {
            let s = o.status(0);
            s["circuit_list"]
                .as_array()?
                .iter()
                .any(|c| {
                    c["pooled"] == true && c["built"] == true && index_of(&o, &c["path"][0]) == 1
                })
                .then_some(())
        },
    );
    let hits = |o: &Overlay| {
        o.status(0)["metrics"]["pool_hits"]
            .as_u64()
            .expect("pool_hits")
    };
    let before = hits(&o);
    assert!(o.ping(0, 6, 1), "ping 0 → 6 failed; logs:\n{}", o.logs());
    assert_eq!(
        hits(&o),
        before + 1,
        "the circuit to node 6 did not come from the pool"
    );

    // Stop the path's middle relay: traffic moves to a new path.
    let middle = hops[hops.len() / 2 - if hops.len() % 2 == 0 { 1 } else { 0 }];
    let middle = if middle == 1 { hops[2] } else { middle };
    o.daemons[middle].signal("TERM").expect("signal the daemon");
    // A relay shutting down may still pass a ping on the old circuit, so
    // wait for both: the path avoids it, and a ping crosses that path.
    wait_for(
        Duration::from_secs(20),
        "traffic on a new path",
        &[&o.daemons[0]],
        || {
            let p = o.daemons[0]
                .cli_json(&["path", &o.addrs[8], "--json"])
                .ok()?;
            let through = p["hops"]
                .as_array()?
                .iter()
                .any(|h| index_of(&o, h) == middle);
            (!through && o.ping(0, 8, 1)).then_some(())
        },
    );
    let (new_hops, _) = o.path(0, 8);
    eprintln!("after stopping {middle}: {new_hops:?}");
    assert_eq!(new_hops[0], 1);
    assert!(!new_hops.contains(&middle), "{new_hops:?}");
}

/// A network too small for the default setting says so, in `umbra path`,
/// `umbra status` and the log, and names the fix; a `[[route]]` with
/// `anonymity = "fast"`, loaded by SIGHUP, then carries traffic to that one
/// destination while the rest stays balanced.
#[test]
fn a_small_network_explains_itself_and_a_fast_route_reaches_a_partner() {
    require_root();
    let mut o = Overlay::build("sm", 3, &[(0, 1), (1, 2)], |_, _| String::new());
    let status = o.status(0);
    let r = &status["reachability"];
    assert_eq!(
        (
            &r["anonymity"],
            &r["known"],
            &r["reachable"],
            &r["too_few_relays"]
        ),
        (&json("balanced"), &json(2), &json(0), &json(2)),
        "{status}"
    );
    let warning = status["warnings"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        warning.contains("reach only 0 of the 2 other nodes"),
        "{warning}"
    );
    let text = o.daemons[0].cli(&["status"]).expect("umbra status");
    assert!(
        String::from_utf8_lossy(&text.stderr).contains("warning: circuits reach only 0"),
        "{text:?}"
    );

    // `umbra path` to the far end: how many relays, how many needed, what to do.
    let path = o.daemons[0]
        .cli(&["path", &o.addrs[2]])
        .expect("umbra path");
    let said = String::from_utf8_lossy(&path.stderr).to_string();
    assert!(!path.status.success());
    for part in [
        "needs 3 relays between the ends",
        "the longest path through the home node has 1",
        "make agreements with more operators",
        &format!("[[route]] to = \"{}\" anonymity = \"fast\"", o.keys[2]),
    ] {
        assert!(said.contains(part), "{said:?} lacks {part:?}");
    }
    assert!(
        !o.ping(0, 2, 2),
        "balanced must not carry traffic over 1 relay"
    );
    let log = o.daemons[0].log_text();
    assert!(
        log.contains("no circuit:") && log.contains("needs 3 relays"),
        "the log says nothing: {}",
        o.daemons[0].log_tail(30)
    );

    // A fast route to node 2 only, by SIGHUP.
    o.configs[0].extra.push_str(&format!(
        "[[route]]\nto = \"{}\"\nanonymity = \"fast\"\n",
        o.keys[2]
    ));
    o.daemons[0]
        .rewrite(&o.configs[0])
        .expect("rewrite the config");
    o.daemons[0].signal("HUP").expect("SIGHUP");
    let reached = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        o.ping(0, 2, 1)
    });
    assert!(reached, "the fast route carries no traffic\n{}", o.logs());
    let (hops, _) = o.path(0, 2);
    assert_eq!(hops, [1, 2]);
    // The home node itself stays balanced, so still unreachable.
    assert!(!o.ping(0, 1, 1));
    let status = o.status(0);
    assert_eq!(status["reachability"]["reachable"], 1, "{status}");
}

fn json(v: impl Into<serde_json::Value>) -> serde_json::Value {
    v.into()
}
