//! Port mapping at a real NAT gateway (docs/architecture.md, "Port mapping"): node A
//! behind a miniupnpd router, a public host P and a STUN server on the "internet".
//! With `[nat] port_mapping` on, A gets the link port forwarded over PCP or UPnP-IGD,
//! `umbra status --json` shows it, P reaches A's cover site through it, and SIGTERM
//! removes it; with it off, the gateway is never asked.
//!
//! ```text
//! P 198.18.22.2 ─┐                    ┌─ S 198.18.23.2 + .3 (stund)
//!                inet (198.18.2x.1) ──┘
//!                 │ 198.18.21.0/24
//!           R wan 198.18.21.2, miniupnpd, lan 100.64.21.1
//!                 │
//!           A 100.64.21.2 (umbra, listens on :443)
//! ```
//!
//! miniupnpd turns NAT-PMP and PCP on and off together, and the daemon asks PCP
//! first; the NAT-PMP case drops PCP's requests at the router.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use umbra_netlab::{StunServer, UpnpGateway, UpnpOptions, Veth, internet_ip, nat_ip};
use umbra_tests::netns::{Daemon, Netns, netns, prepare, require_root, temp_dir, wait_for};

/// The gateway's outside address: what a mapping must show.
const EXTERNAL: &str = "198.18.21.2";
/// A's address behind the gateway.
const NODE: &str = "100.64.21.2";

/// The namespaces and the gateway; dropped (and cleaned up) at the end of a test.
struct Bed {
    a: Netns,
    p: Netns,
    router: Netns,
    gateway: UpnpGateway,
    _stun: StunServer,
    _s: Netns,
    _inet: Netns,
}

fn bed(dir: &std::path::Path, options: UpnpOptions) -> Bed {
    require_root();
    for bin in ["miniupnpd", "stund", "nft", "curl"] {
        assert!(
            umbra_netlab::has_tool(bin),
            "this test needs `{bin}` (apt-get install miniupnpd-nftables stun-server nftables curl)"
        );
    }
    let inet = netns("inet");
    let router = netns("gw");
    let a = netns("a");
    let p = netns("p");
    let s = netns("stun");
    let veth = |x: (&Netns, &str, Ipv4Addr), y: (&Netns, &str, Ipv4Addr)| {
        Veth::new(x, y, 24).unwrap_or_else(|e| panic!("veth: {e}"));
    };
    veth(
        (&inet, "i-gw", internet_ip(21, 1)),
        (&router, "wan", internet_ip(21, 2)),
    );
    veth(
        (&inet, "i-p", internet_ip(22, 1)),
        (&p, "eth0", internet_ip(22, 2)),
    );
    veth(
        (&inet, "i-s", internet_ip(23, 1)),
        (&s, "eth0", internet_ip(23, 2)),
    );
    veth((&router, "lan", nat_ip(21, 1)), (&a, "eth0", nat_ip(21, 2)));
    inet.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        .expect("forwarding");
    for (ns, via) in [
        (&router, internet_ip(21, 1)),
        (&p, internet_ip(22, 1)),
        (&s, internet_ip(23, 1)),
        (&a, nat_ip(21, 1)),
    ] {
        umbra_netlab::Router::route_via(ns, via).expect("default route");
    }
    let stun = StunServer::start(
        &s,
        internet_ip(23, 2),
        internet_ip(23, 3),
        &dir.join("stund.log"),
    )
    .expect("stund starts");
    let gateway = UpnpGateway::start(&router, "wan", "lan", &stun, dir, options)
        .expect("miniupnpd starts and enables forwarding");
    Bed {
        a,
        p,
        router,
        gateway,
        _stun: stun,
        _s: s,
        _inet: inet,
    }
}

/// A's daemon: a listener on `NODE:443`, no TUN, and `nat` as the `[nat]` table.
fn node(bed: &Bed, dir: &std::path::Path, nat: &str) -> Daemon {
    let mut d = prepare(
        &dir.join("a"),
        &format!("[tun]\nenabled = false\n{nat}\n[listen]\nhttps = [\"{NODE}:443\"]\n"),
    );
    d.start(&bed.a).expect("umbra run starts");
    d
}

/// `nat.port_mapping` from `umbra status --json`.
fn mapping(d: &Daemon) -> Value {
    d.cli_json(&["status", "--json"]).expect("umbra status")["nat"]["port_mapping"].clone()
}

/// `curl -k https://<to>/` from P: the HTTP status code, or `None` if no connection.
fn curl_from_p(bed: &Bed, to: &str) -> Option<u16> {
    let out = bed
        .p
        .run(&[
            "curl",
            "-sk",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{to}/"),
        ])
        .expect("run curl");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

/// Waits for a mapping by `protocol` to the gateway's outside address and checks it
/// works from P; returns it.
fn mapped(bed: &Bed, d: &Daemon, protocol: &str) -> Value {
    let started = std::time::Instant::now();
    let m = wait_for(
        Duration::from_secs(30),
        "a port mapping in status",
        &[d],
        || Some(mapping(d)).filter(|m| !m.is_null()),
    );
    eprintln!(
        "mapped over {protocol} {} ms after the daemon was ready",
        started.elapsed().as_millis()
    );
    assert_eq!(m["protocol"], protocol, "{m}");
    assert_eq!(m["external"], format!("{EXTERNAL}:443"), "same port: {m}");
    let out = d.cli(&["status"]).expect("umbra status");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!("port mapped at {EXTERNAL}:443 by {protocol}")),
        "{shown}"
    );
    let rules = bed.gateway.redirects(&bed.router).expect("nft");
    assert!(
        rules.iter().any(|r| r.contains(&format!("{NODE}:443"))),
        "the gateway forwards to A: {rules:?}"
    );
    assert_eq!(
        curl_from_p(bed, &format!("{EXTERNAL}:443")),
        Some(200),
        "P reaches A's cover site through the mapping; A's log:\n{}",
        d.log_text()
    );
    m
}

/// SIGTERM: the daemon removes the mapping before it exits.
fn stop_removes(bed: &Bed, mut d: Daemon) {
    let started = std::time::Instant::now();
    d.stop().expect("the daemon exits");
    eprintln!(
        "SIGTERM to exit, mapping removed: {} ms",
        started.elapsed().as_millis()
    );
    let log = d.log_text();
    assert!(log.contains("port mapping removed"), "{log}");
    let rules = bed.gateway.redirects(&bed.router).expect("nft");
    assert!(rules.is_empty(), "left at the gateway: {rules:?}");
    assert_eq!(curl_from_p(bed, &format!("{EXTERNAL}:443")), None);
}

#[test]
fn pcp_mapping_is_renewed_reaches_the_node_and_goes_at_sigterm() {
    let dir = temp_dir("portmap-pcp");
    let bed = bed(
        dir.path(),
        UpnpOptions {
            upnp: false,
            natpmp: true,
            max_lifetime: 20,
            ..UpnpOptions::default()
        },
    );
    // Before anything asks, the gateway forwards nothing.
    assert_eq!(curl_from_p(&bed, &format!("{EXTERNAL}:443")), None);
    let d = node(&bed, dir.path(), ""); // [nat] port_mapping is on by default
    let m = mapped(&bed, &d, "pcp");
    assert_eq!(m["lifetime_secs"], 20, "the gateway's cap: {m}");
    assert!(m["renews_in_secs"].as_u64().is_some_and(|s| s <= 10), "{m}");
    // Renewed at half the lifetime, so it outlives its first lifetime.
    wait_for(Duration::from_secs(20), "a renewal", &[&d], || {
        d.log_text().contains("port mapping renewed").then_some(())
    });
    std::thread::sleep(Duration::from_secs(12));
    assert!(!mapping(&d).is_null());
    assert_eq!(curl_from_p(&bed, &format!("{EXTERNAL}:443")), Some(200));
    stop_removes(&bed, d);
}

#[test]
fn upnp_mapping_reaches_the_node_and_goes_at_sigterm() {
    let dir = temp_dir("portmap-upnp");
    let bed = bed(
        dir.path(),
        UpnpOptions {
            upnp: true,
            natpmp: false,
            ..UpnpOptions::default()
        },
    );
    let d = node(&bed, dir.path(), "[nat]\nport_mapping = true\n");
    let m = mapped(&bed, &d, "upnp");
    assert_eq!(m["lifetime_secs"], 3600, "{m}");
    stop_removes(&bed, d);
}

#[test]
fn natpmp_mapping_when_the_gateway_ignores_pcp() {
    let dir = temp_dir("portmap-natpmp");
    let bed = bed(
        dir.path(),
        UpnpOptions {
            upnp: false,
            ..UpnpOptions::default()
        },
    );
    // PCP and NAT-PMP share the port; PCP's first byte (its version) is 2.
    bed.router
        .exec(&[
            "nft", "insert", "rule", "inet", "filter", "input", "iifname", "lan", "udp", "dport",
            "5351", "@th,64,8", "2", "drop",
        ])
        .expect("drop PCP");
    let d = node(&bed, dir.path(), "");
    mapped(&bed, &d, "nat-pmp");
    let said = bed.gateway.proc.log_text();
    assert!(!said.contains("PCP request received"), "{said}");
    stop_removes(&bed, d);
}

#[test]
fn port_mapping_false_asks_the_gateway_nothing() {
    let dir = temp_dir("portmap-off");
    let bed = bed(dir.path(), UpnpOptions::default());
    let d = node(&bed, dir.path(), "[nat]\nport_mapping = false\n");
    // With mapping on, PCP maps within a second or two: give it far longer.
    std::thread::sleep(Duration::from_secs(8));
    assert!(mapping(&d).is_null());
    let rules = bed.gateway.redirects(&bed.router).expect("nft");
    assert!(rules.is_empty(), "{rules:?}");
    assert_eq!(curl_from_p(&bed, &format!("{EXTERNAL}:443")), None);
    let said = bed.gateway.proc.log_text();
    assert!(
        [
            "PCP request received",
            "NAT-PMP request received",
            "M-SEARCH from"
        ]
        .iter()
        .all(|asked| !said.contains(asked)),
        "the gateway was asked:\n{said}"
    );
    assert!(
        d.log_text().contains("port mapping off"),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_node_with_a_public_address_asks_no_gateway() {
    let dir = temp_dir("portmap-public");
    let bed = bed(dir.path(), UpnpOptions::default());
    // P's own address is on the "internet": no NAT stands in the way.
    let p_ip = internet_ip(22, 2);
    let mut d = prepare(
        &dir.path().join("p"),
        &format!("[tun]\nenabled = false\n[listen]\nhttps = [\"{p_ip}:443\"]\n"),
    );
    d.start(&bed.p).expect("umbra run starts");
    wait_for(
        Duration::from_secs(10),
        "the public-address note",
        &[&d],
        || {
            d.log_text()
                .contains("no port mapping: the link address is not a private")
                .then_some(())
        },
    );
    assert!(mapping(&d).is_null());
    // And a node behind the gateway, as a control, does get one.
    let a = node(&bed, dir.path(), "");
    mapped(&bed, &a, "pcp");
}

#[test]
fn a_gateway_that_maps_nothing_is_one_warning_then_a_wait() {
    let dir = temp_dir("portmap-none");
    let mut bed = bed(dir.path(), UpnpOptions::default());
    // The router still routes and masquerades, but nothing answers PCP, NAT-PMP or SSDP.
    bed.gateway.proc.kill();
    let d = node(&bed, dir.path(), "");
    let warning = wait_for(
        Duration::from_secs(20),
        "the failure warning",
        &[&d],
        || {
            d.log_text()
                .lines()
                .find(|l| l.contains("port mapping failed"))
                .map(str::to_string)
        },
    );
    eprintln!("{warning}");
    for why in [
        "gateway 100.64.21.1",
        "PCP: nothing listens on the gateway's port 5351",
        "NAT-PMP: nothing listens on the gateway's port 5351",
        "UPnP: no gateway answered the search",
        "trying again in 1 min",
    ] {
        assert!(warning.contains(why), "{why:?} in {warning}");
    }
    // The next attempt waits a minute: no second warning, and still no mapping.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        d.log_text().matches("port mapping failed").count(),
        1,
        "{}",
        d.log_text()
    );
    assert!(mapping(&d).is_null());
}
