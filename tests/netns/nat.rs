//! NAT classification with real daemons (docs/architecture.md, "NAT"): two
//! public nodes P and Q, and one node behind each kind of NAT router the
//! lab builds (endpoint-independent with drop and with reset filtering,
//! endpoint-dependent, carrier-grade: two endpoint-independent NATs in a
//! row) plus one with no NAT. Each accepts an invite from P and from Q, so
//! it dials both from its one dial port; its `umbra status --json` `nat`
//! and its `umbra doctor` NAT check must say what the router does, and the
//! routers must filter unsolicited connections as their kind says. And no
//! link ever leaves from the listen port, which would mark it on the wire.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use umbra_netlab::{NatKind, NatSite, Router};
use umbra_tests::netns::{
    Daemon, Netns, Veth, netns, require_root, start, temp_dir, umbra_bin, wait_for,
};

/// How long each node's two links may take.
const LINK_WAIT: Duration = Duration::from_secs(30);
/// The link port every node listens on.
const PORT: u16 = 443;

/// The one local port of `n`'s outbound links (its dial port): every link
/// that `n` dialed leaves from it, and it is not the listen port.
fn dial_port(n: &Daemon, name: &str) -> u16 {
    let peers = n.cli_json(&["peers", "--json"]).expect("umbra peers");
    let ports: Vec<u16> = peers
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["direction"] == "outbound")
        .filter_map(|r| r["local"].as_str()?.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    assert!(!ports.is_empty(), "{name}: no outbound link: {peers}");
    assert!(ports.iter().all(|&p| p == ports[0]), "{name}: {peers}");
    assert!(
        ports[0] != PORT && ports[0] >= 1024,
        "{name}: dialed from {}",
        ports[0]
    );
    ports[0]
}

fn node(ns: &Netns, dir: &Path, listen: Ipv4Addr) -> Daemon {
    start(
        ns,
        dir,
        &format!("[tun]\nenabled = false\n[listen]\nhttps = [\"{listen}:{PORT}\"]\n"),
    )
}

/// `umbra accept`s an invite of `from` at `node`: the node dials `from`
/// at once.
fn accept_invite(node: &Daemon, from: &Daemon) {
    let invite = from
        .cli_json(&["invite", "--terms", "1TB/30d", "--json"])
        .expect("umbra invite");
    let token = invite["token"].as_str().expect("token");
    node.cli_json(&["accept", token, "--json"])
        .expect("umbra accept");
}

/// `umbra doctor --json`'s NAT type check, run in `ns` for `node`.
fn doctor_nat(ns: &Netns, node: &Daemon) -> Value {
    let out = ns
        .command(umbra_bin())
        .arg("--config")
        .arg(&node.config)
        .args(["doctor", "--json"])
        .output()
        .expect("run umbra doctor");
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "umbra doctor --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == "NAT type").cloned())
        .unwrap_or_else(|| panic!("no NAT type check in {checks}"))
}

/// What became of a TCP connection from `from` to `ip:port` (curl, 1 s):
/// `refused`, `timed out`, or curl's exit status.
fn unsolicited(from: &Netns, ip: Ipv4Addr, port: u16) -> String {
    let out = from
        .run(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--connect-timeout",
            "1",
            &format!("http://{ip}:{port}/"),
        ])
        .expect("run curl");
    match out.status.code() {
        Some(7) => "refused".into(),
        Some(28) => "timed out".into(),
        other => format!("curl exited with {other:?}"),
    }
}

/// One node under test: where it sits, and what it must report.
struct Site {
    name: &'static str,
    /// Its router(s), when behind NAT.
    nat: Option<NatSite>,
    /// The namespace it runs in when it has no NAT.
    direct: Option<Netns>,
    ip: Ipv4Addr,
    /// The address P and Q see it at.
    outside_ip: Ipv4Addr,
    want: &'static str,
}

impl Site {
    fn ns(&self) -> &Netns {
        match (&self.nat, &self.direct) {
            (Some(s), _) => &s.host,
            (None, Some(ns)) => ns,
            (None, None) => unreachable!("a site has a namespace"),
        }
    }
}

#[test]
fn each_nat_kind_is_classified_from_the_links() {
    require_root();
    umbra_netlab::require_tools(&[("nft", "nftables", "to build NAT routers")])
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let dir = temp_dir("nat");
    // The "internet": P on 198.18.1.0/24, Q on 198.18.2.0/24, a router
    // between them and every site.
    let inet = netns("inet");
    Router::forwarding(&inet).expect("forwarding");
    let (np, nq) = (netns("p"), netns("q"));
    let mut public = Vec::new();
    for (ns, subnet) in [(&np, 1), (&nq, 2)] {
        let v = Veth::internet(&inet, ns, subnet).expect("veth");
        Router::route_via(ns, v.a.ip).expect("route");
        public.push(v.b.ip);
    }
    let mut sites: Vec<Site> = NatKind::ALL
        .iter()
        .zip(11u8..)
        .map(|(&kind, subnet)| {
            let s = NatSite::build(kind, &inet, subnet, |tag| Ok(netns(tag)))
                .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
            Site {
                name: kind.name(),
                ip: s.host_ip,
                outside_ip: s.wan_ip,
                want: if kind == NatKind::Edm {
                    "endpoint-dependent"
                } else {
                    "endpoint-independent"
                },
                nat: Some(s),
                direct: None,
            }
        })
        .collect();
    let nx = netns("pub");
    let v = Veth::internet(&inet, &nx, 20).expect("veth");
    Router::route_via(&nx, v.a.ip).expect("route");
    sites.push(Site {
        name: "public",
        nat: None,
        direct: Some(nx),
        ip: v.b.ip,
        outside_ip: v.b.ip,
        want: "public",
    });

    let p = node(&np, &dir.path().join("p"), public[0]);
    let q = node(&nq, &dir.path().join("q"), public[1]);
    let nodes: Vec<Daemon> = sites
        .iter()
        .map(|s| node(s.ns(), &dir.path().join(s.name), s.ip))
        .collect();
    for n in &nodes {
        accept_invite(n, &p);
        accept_invite(n, &q);
    }
    let (kp, kq) = (p.key().expect("key"), q.key().expect("key"));

    for (site, n) in sites.iter().zip(&nodes) {
        let status = wait_for(
            LINK_WAIT,
            &format!("{}: both links up and a NAT class", site.name),
            &[n, &p, &q],
            || {
                let s = n.status().ok()?;
                (n.link_up_to(&kp) && n.link_up_to(&kq) && s["nat"]["mapping"] != "unknown")
                    .then_some(s)
            },
        );
        let nat = &status["nat"];
        let conntrack = site
            .nat
            .as_ref()
            .map(NatSite::conntrack)
            .unwrap_or_default();
        assert_eq!(
            nat["mapping"],
            site.want,
            "{}: {nat}\n{conntrack}\n{}",
            site.name,
            n.log_tail(40)
        );
        assert_eq!(nat["port_mapping"], Value::Null, "{}: {nat}", site.name);
        let external: Vec<&str> = nat["external"]
            .as_array()
            .expect("external")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let prefix = format!("{}:", site.outside_ip);
        assert!(
            !external.is_empty() && external.iter().all(|e| e.starts_with(&prefix)),
            "{}: every external endpoint on {}: {nat}",
            site.name,
            site.outside_ip
        );
        if site.want == "endpoint-dependent" {
            // Two peers, two external ports, neither the link port kept.
            assert_eq!(external.len(), 2, "{}: {nat}", site.name);
        } else {
            // One stable endpoint: the outside address and the dial port
            // (free on these routers, so masquerade keeps it).
            assert_eq!(
                external,
                [format!("{}:{}", site.outside_ip, dial_port(n, site.name))],
                "{}: {nat}",
                site.name
            );
        }
        // P sees the node where the status says it is.
        let seen = p
            .cli_json(&["peers", "--json"])
            .expect("umbra peers")
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|r| r["key"] == n.key().unwrap_or_default().as_str())
                    .cloned()
            })
            .expect("P lists the node");
        assert!(
            external.contains(&seen["endpoint"].as_str().unwrap_or("")),
            "{}: P sees {} but the node reports {external:?}",
            site.name,
            seen["endpoint"]
        );
        // The node dialed both from its one dial port.
        dial_port(n, site.name);
        // The text status has its nat line.
        let text = n.cli(&["status"]).expect("umbra status");
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with("nat:") && l.contains(site.want)),
            "{}: {text}",
            site.name
        );
    }

    // Doctor reads the running daemon's class: ok where links to the node
    // can be made one day, a warning with the fix behind endpoint-dependent
    // mapping.
    for (site, n) in sites.iter().zip(&nodes) {
        let check = doctor_nat(site.ns(), n);
        let want = if site.want == "endpoint-dependent" {
            "warn"
        } else {
            "ok"
        };
        assert_eq!(check["status"], want, "{}: {check}", site.name);
        assert!(
            check["detail"]
                .as_str()
                .is_some_and(|d| d.contains(site.want)),
            "{}: {check}",
            site.name
        );
        if want == "warn" {
            assert!(
                check["fix"]
                    .as_str()
                    .is_some_and(|f| f.contains("only through a relay")),
                "{check}"
            );
        }
    }
    // The routers filter as their kind says: an unsolicited connection from
    // P to a port nothing mapped times out through a dropping router and
    // is refused at once through a resetting one; the node with no NAT
    // refuses it itself.
    std::thread::scope(|scope| {
        let probes: Vec<_> = sites
            .iter()
            .map(|site| {
                let np = &np;
                scope.spawn(move || (site, unsolicited(np, site.outside_ip, 40099)))
            })
            .collect();
        for probe in probes {
            let (site, got) = probe.join().expect("probe thread");
            let want = match site.nat.as_ref().map(|s| s.kind) {
                Some(NatKind::EimReset) | None => "refused",
                Some(_) => "timed out",
            };
            assert_eq!(got, want, "{}: an unsolicited SYN from P", site.name);
        }
    });
    eprintln!(
        "NAT classes of {} sites in {:.1} s",
        sites.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn links_both_ways_leave_from_the_dial_ports_not_the_listen_port() {
    require_root();
    let (nx, ny) = (netns("tx"), netns("ty"));
    let v = Veth::internet(&nx, &ny, 30).expect("veth");
    let dir = temp_dir("nat-dial");
    let x = node(&nx, &dir.path().join("x"), v.a.ip);
    let y = node(&ny, &dir.path().join("y"), v.b.ip);
    let kx = x.key().expect("key");
    // y dials x: x sees y come from y's dial port, not from 443.
    accept_invite(&y, &x);
    let py = dial_port(&y, "y");
    let peers = x.cli_json(&["peers", "--json"]).expect("umbra peers");
    assert_eq!(
        peers[0]["endpoint"],
        format!("{}:{py}", v.b.ip).as_str(),
        "{peers}"
    );
    // x dials y too (a second agreement): whichever link the two keep, no
    // end of it is a connection from port 443.
    accept_invite(&x, &y);
    assert!(y.link_up_to(&kx), "{}", y.log_tail(20));
    for (name, n) in [("x", &x), ("y", &y)] {
        let peers = n.cli_json(&["peers", "--json"]).expect("umbra peers");
        for row in peers.as_array().expect("a list") {
            let from = if row["direction"] == "outbound" {
                &row["local"]
            } else {
                &row["endpoint"]
            };
            let port = from
                .as_str()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port());
            assert!(
                port.is_some_and(|p| p != PORT),
                "{name}: a link from port {port:?}: {row}"
            );
        }
    }
}
