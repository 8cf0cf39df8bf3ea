//! The NAT matrix with real daemons (docs/architecture.md, "NAT
//! traversal"): pairs of nodes behind every kind of lab NAT, each pair with
//! an agreement that names no endpoint, and two public nodes P and Q that
//! every node has an agreement with. Every cell must link, with the kind the
//! NATs allow: `direct` when either side can be dialed (no NAT, or a port
//! mapping), `punched` when both NATs map endpoint independently (with
//! routers that drop or that reset unsolicited SYNs), `relayed` otherwise.
//! Across each cell's link go a ping and a TCP transfer, `umbra status` must
//! name each node's NAT, and no node that is not a partner may receive a
//! node's endpoints, nor may any graph record carry an address.
//!
//! All 20 cells run in one lab of 14 daemons (about 45 s with a debug build).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use umbra_netlab::{
    IperfOptions, IperfServer, MatrixOptions, NatKind, NatMatrix, PingOptions, Site, full_matrix,
    iperf3, ping,
};
use umbra_tests::netns::{netns, require_root, temp_dir, umbra_bin, wait_for};

/// How long every cell may take to link, from the daemons' start.
const LINK_WAIT: Duration = Duration::from_secs(120);

/// The row of `umbra peers --json` for `key`, if it is up.
fn peer_row(peers: &Value, key: &str) -> Option<Value> {
    peers
        .as_array()?
        .iter()
        .find(|r| r["key"] == key && r["state"] == "up")
        .cloned()
}

#[test]
fn every_cell_links_with_the_kind_its_nats_allow() {
    require_root();
    umbra_netlab::require_tools(&[
        ("nft", "nftables", "to build NAT routers"),
        ("miniupnpd", "miniupnpd-nftables", "for the mapped sites"),
        ("stund", "stun-server", "for the mapped sites' gateways"),
        ("iperf3", "iperf3", "for the transfers"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let cells = full_matrix();
    let dir = temp_dir("nat-matrix");
    let options = MatrixOptions {
        umbra: umbra_bin(),
        top: "anonymity = \"fast\"".into(),
        extra: String::new(),
        log_filter: "info,umbra=debug".into(),
        pair_agreements: true,
    };
    let built = Instant::now();
    let mut m = NatMatrix::build(&cells, dir.path(), &options, |tag| Ok(netns(tag)))
        .unwrap_or_else(|e| panic!("building the matrix: {e}"));
    eprintln!(
        "matrix of {} cells built in {:?}",
        cells.len(),
        built.elapsed()
    );
    let started = Instant::now();
    m.start()
        .unwrap_or_else(|e| panic!("starting the daemons: {e}"));
    let logs: Vec<&umbra_netlab::Daemon> = m.nodes.iter().map(|n| &n.daemon).collect();

    // Every cell links, with the kind its NATs allow, on both sides.
    let mut time_to_link = BTreeMap::new();
    let mut pending: Vec<usize> = (0..m.cells.len()).collect();
    wait_for(LINK_WAIT, "every cell of the matrix linked", &logs, || {
        pending.retain(|&i| {
            let c = m.cells[i];
            let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
            let up = |x: &umbra_netlab::MatrixNode, y: &umbra_netlab::MatrixNode| {
                x.daemon
                    .cli_json(&["peers", "--json"])
                    .ok()
                    .and_then(|p| peer_row(&p, &y.key))
            };
            match (up(a, b), up(b, a)) {
                (Some(ra), Some(rb)) if ra["kind"] == rb["kind"] => {
                    time_to_link.insert(i, (started.elapsed(), ra, rb));
                    false
                }
                _ => true,
            }
        });
        pending.is_empty().then_some(())
    });
    let mut wrong = Vec::new();
    eprintln!("cell                      kind      expected  time to link");
    for (i, (took, ra, rb)) in &time_to_link {
        let c = m.cells[*i];
        let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
        let kind = ra["kind"].as_str().unwrap_or("?");
        eprintln!(
            "{:<25} {kind:<9} {:<9} {:.1} s",
            format!("{} × {}", a.name, b.name),
            c.expect,
            took.as_secs_f64()
        );
        if kind != c.expect {
            let said = |n: &umbra_netlab::MatrixNode| {
                n.daemon
                    .log_text()
                    .lines()
                    .filter(|l| {
                        ["travers", "punch", "relay", "link up", "link moved"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            wrong.push(format!(
                "{} × {}: {kind}, not {}\n{}:\n{}\n{}:\n{}",
                a.name,
                b.name,
                c.expect,
                a.name,
                said(a),
                b.name,
                said(b)
            ));
        }
        if kind == "relayed" {
            // Through a partner of both: P, Q, or a node both have a cell with.
            let via = ra["via"].as_str().unwrap_or_default();
            let partners = |x: usize| -> Vec<usize> {
                let mut p: Vec<usize> = m
                    .cells
                    .iter()
                    .filter_map(|c| (c.a == x).then_some(c.b).or((c.b == x).then_some(c.a)))
                    .collect();
                p.extend([0, 1]);
                p
            };
            let (pa, pb) = (partners(c.a), partners(c.b));
            let mutual = pa.iter().any(|i| pb.contains(i) && m.nodes[*i].key == via);
            if !mutual || ra["via"] != rb["via"] {
                wrong.push(format!(
                    "{} × {}: relayed via {via}, not a partner of both, or not the same on both sides ({rb})",
                    a.name, b.name
                ));
            }
            if !ra["endpoint"].is_null() {
                wrong.push(format!(
                    "{} × {}: a relayed link shows an endpoint: {ra}",
                    a.name, b.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong link kinds:\n{}", wrong.join("\n"));

    // Each node names its NAT.
    for n in &m.nodes[2..] {
        let status = n.daemon.status().expect("status");
        assert_eq!(
            status["nat"]["mapping"],
            n.site.mapping(),
            "{}: {}",
            n.name,
            status["nat"]
        );
        if n.site == Site::Mapped {
            assert!(
                !status["nat"]["port_mapping"].is_null(),
                "{}: {}",
                n.name,
                status["nat"]
            );
        }
    }

    // A ping and a TCP transfer cross each cell's link: the fast path to a
    // partner with a live link is that link alone.
    for c in &m.cells {
        let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
        let path = a
            .daemon
            .cli_json(&["path", &b.address, "--json"])
            .unwrap_or_else(|e| panic!("{} path to {}: {e}", a.name, b.name));
        let hops = path["hops"].as_array().map(Vec::len).unwrap_or(0);
        assert_eq!(hops, 1, "{} → {}: {path}", a.name, b.name);
        let p = ping(a.host(), &b.address, PingOptions::new(3, 0.2)).expect("ping");
        assert!(p.received() >= 2, "{} → {}: {}", a.name, b.name, p.output);
        let server = IperfServer::start(
            b.host(),
            &b.address,
            &dir.path().join(format!("iperf-{}-{}.log", a.name, b.name)),
            true,
        )
        .expect("iperf3 server");
        let r = iperf3(a.host(), &b.address, IperfOptions::new(1))
            .unwrap_or_else(|e| panic!("{} → {}: iperf3: {e}", a.name, b.name));
        drop(server);
        assert!(
            r.bytes > 100_000,
            "{} → {}: {} bytes",
            a.name,
            b.name,
            r.bytes
        );
        eprintln!(
            "{} → {} ({}): ping {:.2} ms, TCP {:.0} Mbit/s",
            a.name,
            b.name,
            c.expect,
            p.replies.first().map_or(0.0, |r| r.rtt_ms),
            r.mbps()
        );
    }

    // No node learned another's endpoints unless they are partners: every
    // traversal message a node took (its debug log names each, with the
    // sender) came from a partner, and none was sent to it by a node that is
    // not one. P and Q are everyone's partners; the nodes of different cells
    // share no agreement, so they are the test.
    let mut checked = 0;
    for (i, n) in m.nodes.iter().enumerate() {
        let mut partners: Vec<&str> = m
            .cells
            .iter()
            .filter_map(|c| (c.a == i).then_some(c.b).or((c.b == i).then_some(c.a)))
            .map(|j| &m.nodes[j].key[..8])
            .collect();
        if i < 2 {
            partners.extend(m.nodes[2..].iter().map(|x| &x.key[..8]));
        } else {
            partners.extend([&m.nodes[0].key[..8], &m.nodes[1].key[..8]]);
        }
        let log = n.daemon.log_text();
        for line in log
            .lines()
            .filter(|l| l.contains("traversal message from="))
        {
            let from = line
                .split("from=")
                .nth(1)
                .and_then(|r| r.get(..8))
                .unwrap_or_default();
            assert!(
                partners.contains(&from),
                "{} took a traversal message from {from}, not a partner: {line}",
                n.name
            );
            checked += 1;
        }
        let status = n.daemon.status().expect("status");
        assert_eq!(
            status["traversal"]["dropped_not_partner"], 0,
            "{}: {}",
            n.name, status["traversal"]
        );
    }
    assert!(
        checked > 20,
        "too few traversal messages logged ({checked}) to check"
    );
    // No graph record carries an IP: every node's graph, exported at
    // shutdown, holds none of the lab's addresses.
    let ips: Vec<[u8; 4]> = m
        .nodes
        .iter()
        .map(|n| n.ip.octets())
        .chain(
            m.nodes
                .iter()
                .filter_map(|n| n.nat.as_ref().map(|s| s.wan_ip.octets())),
        )
        .collect();
    for n in &mut m.nodes {
        n.daemon.stop();
        let db = std::fs::read(n.daemon.state_dir.join("umbra.db")).unwrap_or_default();
        let graph = graph_cache(&db);
        for ip in &ips {
            assert!(
                !graph.windows(4).any(|w| w == ip),
                "{}'s graph cache holds the address {ip:?}",
                n.name
            );
        }
    }
    eprintln!("whole test: {:?}", built.elapsed());
}

/// The bytes of the graph cache in a state database file: the whole file is
/// searched, which is stricter (agreements hold partners' endpoints, which
/// the matrix never configures between pairs).
fn graph_cache(db: &[u8]) -> Vec<u8> {
    db.to_vec()
}

/// Blocks (or unblocks) every packet from `from` at the router namespace
/// `router`, ahead of connection tracking, as a firewall in the way would.
fn block(router: &umbra_netlab::Netns, from: std::net::Ipv4Addr, on: bool) {
    let rules = format!(
        "table ip umbra_block {{\n  chain pre {{ type filter hook prerouting priority -300; policy accept;\n    ip saddr {from} drop\n  }}\n}}\n"
    );
    let out = if on {
        router.run(&["nft", &rules])
    } else {
        router.run(&["nft", "delete", "table", "ip", "umbra_block"])
    };
    assert!(
        out.is_ok_and(|o| o.status.success()),
        "nft in {}",
        router.name()
    );
}

#[test]
fn a_relayed_link_moves_to_a_punched_one_under_a_transfer() {
    require_root();
    umbra_netlab::require_tools(&[
        ("nft", "nftables", "to build NAT routers"),
        ("iperf3", "iperf3", "for the transfer"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let eim = Site::Nat(NatKind::Eim);
    let dir = temp_dir("nat-upgrade");
    let options = MatrixOptions {
        umbra: umbra_bin(),
        top: "anonymity = \"fast\"".into(),
        extra: "\n[nat]\nretry_direct = \"2s\"\n".into(),
        log_filter: "info,umbra=debug".into(),
        pair_agreements: true,
    };
    let mut m = NatMatrix::build(&[(eim, eim)], dir.path(), &options, |tag| Ok(netns(tag)))
        .unwrap_or_else(|e| panic!("building the lab: {e}"));
    let c = m.cells[0];
    // Nothing from one NAT reaches the other: no punch can work.
    let wan = |i: usize| {
        m.nodes[i]
            .nat
            .as_ref()
            .map(|s| s.wan_ip)
            .expect("behind a NAT")
    };
    let (wan_a, wan_b) = (wan(c.a), wan(c.b));
    fn router_of(m: &NatMatrix, i: usize) -> &umbra_netlab::Netns {
        &m.nodes[i].nat.as_ref().expect("NAT").routers[0].netns
    }
    block(router_of(&m, c.b), wan_a, true);
    m.start()
        .unwrap_or_else(|e| panic!("starting the daemons: {e}"));
    let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
    let logs = [&a.daemon, &b.daemon];
    let kind = |x: &umbra_netlab::MatrixNode, y: &umbra_netlab::MatrixNode| {
        x.daemon
            .cli_json(&["peers", "--json"])
            .ok()
            .and_then(|p| peer_row(&p, &y.key))
            .and_then(|r| r["kind"].as_str().map(str::to_string))
    };
    wait_for(
        Duration::from_secs(90),
        "a relayed link while punching is blocked",
        &logs,
        || {
            (kind(a, b).as_deref() == Some("relayed") && kind(b, a).as_deref() == Some("relayed"))
                .then_some(())
        },
    );
    let circuit = |x: &umbra_netlab::MatrixNode, to: &str| {
        x.daemon
            .cli_json(&["path", to, "--json"])
            .ok()
            .and_then(|p| p["circuit"].as_str().map(str::to_string))
    };
    let before = circuit(a, &b.address).expect("a circuit to b");
    let mut server = IperfServer::start(b.host(), &b.address, &dir.path().join("iperf3.log"), true)
        .expect("iperf3 server");
    let client = {
        let ns = a.host().name().to_string();
        let addr = b.address.clone();
        std::thread::spawn(move || {
            let out = umbra_netlab::run(&[
                "ip", "netns", "exec", &ns, "iperf3", "-6", "-J", "-c", &addr, "-t", "20", "-i",
                "1",
            ])
            .expect("iperf3");
            serde_json::from_slice::<Value>(&out.stdout).unwrap_or_default()
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    block(router_of(&m, c.b), wan_a, false);
    let unblocked = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the link moved to a punched connection",
        &logs,
        || {
            (kind(a, b).as_deref() == Some("punched") && kind(b, a).as_deref() == Some("punched"))
                .then_some(())
        },
    );
    let moved_after = unblocked.elapsed();
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
    eprintln!(
        "moved to punched {:.1} s after the block went; bytes per second: {intervals:?}",
        moved_after.as_secs_f64()
    );
    assert!(
        report["error"].is_null(),
        "iperf3 failed: {}",
        report["error"]
    );
    assert!(
        intervals.len() >= 19,
        "iperf3 did not run its 20 s: {report}"
    );
    assert!(
        intervals.iter().all(|&b| b > 0),
        "a second without data: {intervals:?}\nlogs:\n{}\n----\n{}",
        a.daemon.log_text(),
        b.daemon.log_text()
    );
    // The circuit over the link is the same one: the move dropped nothing.
    assert_eq!(
        circuit(a, &b.address),
        Some(before),
        "the circuit was rebuilt"
    );
    let _ = wan_b;
}

#[test]
fn an_invite_without_endpoints_links_over_the_overlay() {
    require_root();
    umbra_netlab::require_tools(&[("nft", "nftables", "to build NAT routers")])
        .unwrap_or_else(|e| panic!("{e}"));
    let (eim, edm) = (Site::Nat(NatKind::Eim), Site::Nat(NatKind::Edm));
    let dir = temp_dir("nat-invite");
    let options = MatrixOptions {
        umbra: umbra_bin(),
        top: "anonymity = \"fast\"".into(),
        extra: String::new(),
        log_filter: "info,umbra=debug".into(),
        pair_agreements: false,
    };
    // Nodes behind an eim and an edm NAT, and a public one; each has
    // agreements with P and Q only.
    let mut m = NatMatrix::build(
        &[(eim, edm), (eim, Site::Public)],
        dir.path(),
        &options,
        |tag| Ok(netns(tag)),
    )
    .unwrap_or_else(|e| panic!("building the lab: {e}"));
    m.start()
        .unwrap_or_else(|e| panic!("starting the daemons: {e}"));
    let find = |name: &str| m.nodes.iter().position(|n| n.name == name).expect(name);
    let (a, b, pub1) = (find("eim1"), find("edm1"), find("public1"));
    let logs: Vec<&umbra_netlab::Daemon> = m.nodes.iter().map(|n| &n.daemon).collect();
    // Everyone is linked to P and Q (both graphs reach the others).
    wait_for(
        Duration::from_secs(60),
        "every node linked to P and Q",
        &logs,
        || {
            m.nodes[2..]
                .iter()
                .all(|n| {
                    n.daemon.link_up_to(&m.nodes[0].key) && n.daemon.link_up_to(&m.nodes[1].key)
                })
                .then_some(())
        },
    );
    for (inviter, acceptor, want) in [(a, b, "relayed"), (a, pub1, "direct")] {
        let (i, j) = (&m.nodes[inviter], &m.nodes[acceptor]);
        let invite = i
            .daemon
            .cli_json(&["invite", "--terms", "1TB/30d", "--json"])
            .expect("umbra invite");
        assert_eq!(
            invite["endpoints"],
            serde_json::json!([]),
            "{}: {invite}",
            i.name
        );
        assert!(
            invite["note"]
                .as_str()
                .is_some_and(|n| n.contains("overlay")),
            "{invite}"
        );
        let token = invite["token"].as_str().expect("token");
        let accepted = j.daemon.cli_json(&["accept", token, "--json"]);
        assert!(
            accepted.is_ok(),
            "{} accepting {}'s token: {accepted:?}\nlogs:\n{}\n----\n{}",
            j.name,
            i.name,
            i.daemon.log_text(),
            j.daemon.log_text()
        );
        let row = wait_for(
            Duration::from_secs(30),
            "the inviter sees the link",
            &logs,
            || {
                i.daemon
                    .cli_json(&["peers", "--json"])
                    .ok()
                    .and_then(|p| peer_row(&p, &j.key))
            },
        );
        assert_eq!(row["kind"], want, "{} × {}: {row}", i.name, j.name);
        // Both sides hold the agreement.
        for (x, y) in [(i, j), (j, i)] {
            let list = x
                .daemon
                .cli_json(&["agreements", "--json"])
                .expect("agreements");
            assert!(
                list.as_array().is_some_and(|l| l
                    .iter()
                    .any(|ag| ag["peer_key"] == y.key.as_str() && ag["state"] == "active")),
                "{}: {list}",
                x.name
            );
        }
    }
}

#[test]
fn with_no_shared_partner_the_link_is_relayed_over_a_circuit() {
    require_root();
    umbra_netlab::require_tools(&[
        ("nft", "nftables", "to build NAT routers"),
        ("iperf3", "iperf3", "for the transfer"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    // X – P1 – P2 – Y: X and Y are behind endpoint-dependent NATs and have
    // an agreement naming no endpoint, and no partner in common.
    let dir = temp_dir("nat-tunnel");
    let inet = netns("inet");
    umbra_netlab::Router::forwarding(&inet).expect("forwarding");
    let (n1, n2) = (netns("p1"), netns("p2"));
    let mut ips = Vec::new();
    for (ns, subnet) in [(&n1, 1u8), (&n2, 2)] {
        let v = umbra_netlab::Veth::internet(&inet, ns, subnet).expect("veth");
        umbra_netlab::Router::route_via(ns, v.a.ip).expect("route");
        ips.push(v.b.ip);
    }
    let sites: Vec<umbra_netlab::NatSite> = [11u8, 12]
        .iter()
        .map(|&s| {
            umbra_netlab::NatSite::build(NatKind::Edm, &inet, s, |t| Ok(netns(&format!("{t}{s}"))))
                .expect("NAT site")
        })
        .collect();
    let names = ["p1", "p2", "x", "y"];
    let keys = umbra_tests::netns::init_keys(dir.path(), &names);
    let terms = Some("1TB/30d");
    let at = |i: usize| Some(format!("{}:443", ips[i]));
    let peer = |k: usize, ep: Option<String>| match ep {
        Some(ep) => umbra_netlab::Peer::new(&keys[k], ep, terms).toml(),
        None => umbra_netlab::Peer::unreachable(&keys[k], terms).toml(),
    };
    let listen = |ip: std::net::Ipv4Addr| {
        format!("anonymity = \"fast\"\n[listen]\nhttps = [\"{ip}:443\"]\n")
    };
    let configs = [
        format!("{}{}{}", listen(ips[0]), peer(1, at(1)), peer(2, None)),
        format!("{}{}{}", listen(ips[1]), peer(0, at(0)), peer(3, None)),
        format!(
            "{}{}{}",
            listen(sites[0].host_ip),
            peer(0, at(0)),
            peer(3, None)
        ),
        format!(
            "{}{}{}",
            listen(sites[1].host_ip),
            peer(1, at(1)),
            peer(2, None)
        ),
    ];
    let hosts = [&n1, &n2, &sites[0].host, &sites[1].host];
    let mut daemons = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut d = umbra_tests::netns::prepare(&dir.path().join(name), &configs[i]);
        d.start(hosts[i]).expect("umbra run starts");
        daemons.push(d);
    }
    let logs: Vec<&umbra_netlab::Daemon> = daemons.iter().collect();
    let (x, y) = (&daemons[2], &daemons[3]);
    let row = wait_for(Duration::from_secs(90), "X and Y linked", &logs, || {
        let r = peer_row(&x.cli_json(&["peers", "--json"]).ok()?, &keys[3])?;
        peer_row(&y.cli_json(&["peers", "--json"]).ok()?, &keys[2])?;
        Some(r)
    });
    assert_eq!(row["kind"], "relayed", "{row}");
    assert_eq!(row["relay"], "circuit", "{row}");
    assert!(row["via"].is_null(), "{row}");
    // The link carries others' circuits; X's own traffic to Y takes a circuit
    // that does not start on it (it would carry itself), and works.
    let y_addr = y.status().expect("status")["address"]
        .as_str()
        .expect("address")
        .to_string();
    let p = ping(&sites[0].host, &y_addr, PingOptions::new(10, 0.3)).expect("ping");
    assert!(
        p.received() >= 5,
        "{}\nX:\n{}\nY:\n{}",
        p.output,
        x.log_text(),
        y.log_text()
    );
    let server = IperfServer::start(
        &sites[1].host,
        &y_addr,
        &dir.path().join("iperf3.log"),
        true,
    )
    .expect("iperf3 server");
    let r = iperf3(&sites[0].host, &y_addr, IperfOptions::new(2)).expect("iperf3");
    drop(server);
    eprintln!(
        "over a circuit: ping {:.2} ms, TCP {:.1} Mbit/s",
        p.replies.first().map_or(0.0, |r| r.rtt_ms),
        r.mbps()
    );
    assert!(r.bytes > 100_000, "{} bytes", r.bytes);
}
