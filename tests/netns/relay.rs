//! Relaying is bounded and refuses clearly (docs/architecture.md, "Relayed
//! links"):
//! - a partner of the relay that asks for a stream to a node it has no
//!   agreement with is refused by that node, to a node the relay has no link
//!   to by the relay, and past its number of streams by the relay; each time
//!   the asker gets the reason and the refusing node counts it;
//! - a relayed link between two real daemons runs at the relay's
//!   `[nat] relay_rate`, and is closed at its `relay_total`, which the relay
//!   counts and the ends log.
//!
//! The asker of the first test is this test binary itself, run as a helper
//! in its own namespace, speaking the link protocol in-process: it has the
//! relay as a partner, so the relay must answer it, whatever it asks.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use umbra_netlab::{
    IperfOptions, IperfServer, MatrixOptions, NatKind, NatMatrix, Peer, Router, Site, iperf3,
};
use umbra_tests::netns::{
    netns, prepare, require_root, spawn_test_helper, succeeds_within, temp_dir, test_role,
    umbra_bin, veth, wait_for,
};

/// The asker's identity seed: the test process and its helper make the same
/// key from it.
const ASKER_SEED: [u8; 32] = [0x5a; 32];

fn asker_key() -> String {
    hex::encode(umbra_routing::crypto::Identity::from_seed(&ASKER_SEED).public())
}

#[test]
fn a_relay_refuses_with_a_reason_and_counts() {
    if let Some(role) = test_role() {
        helper::run(&role);
        return;
    }
    require_root();
    let dir = temp_dir("relay-refuse");
    let (inet, np, nx, ny, na) = (
        netns("inet"),
        netns("p"),
        netns("x"),
        netns("y"),
        netns("a"),
    );
    Router::forwarding(&inet).expect("forwarding");
    let mut ips = Vec::new();
    for (ns, subnet) in [(&np, 1), (&nx, 2), (&na, 3), (&ny, 4)] {
        let (gw, ip) = veth(&inet, ns, subnet);
        Router::route_via(ns, gw.parse::<Ipv4Addr>().expect("ip")).expect("route");
        ips.push(ip);
    }
    let (p_dir, x_dir, y_dir) = (
        dir.path().join("p"),
        dir.path().join("x"),
        dir.path().join("y"),
    );
    let p_key = prepare(&p_dir, "").init().expect("init").key;
    let x_key = prepare(&x_dir, "").init().expect("init").key;
    let y_key = prepare(&y_dir, "").init().expect("init").key;
    let asker = asker_key();
    let terms = Some("1TB/30d");
    // P: partner of X, Y and the asker. X: partner of P only. Y: partner of
    // P and of the asker.
    let listen = |ip: &str| format!("[tun]\nenabled = false\n[listen]\nhttps = [\"{ip}:443\"]\n");
    let to_p = Peer::new(&p_key, format!("{}:443", ips[0]), terms).toml();
    let p_conf = format!(
        "{}{}{}{}",
        listen(&ips[0]),
        Peer::unreachable(&x_key, terms).toml(),
        Peer::unreachable(&y_key, terms).toml(),
        Peer::unreachable(&asker, terms).toml()
    );
    let x_conf = format!("{}{to_p}", listen(&ips[1]));
    let y_conf = format!(
        "{}{to_p}{}",
        listen(&ips[3]),
        Peer::unreachable(&asker, terms).toml()
    );
    let mut p = prepare(&p_dir, &p_conf);
    p.start(&np).expect("P starts");
    let mut x = prepare(&x_dir, &x_conf);
    x.start(&nx).expect("X starts");
    let mut y = prepare(&y_dir, &y_conf);
    y.start(&ny).expect("Y starts");
    wait_for(
        Duration::from_secs(20),
        "X and Y linked to P",
        &[&p, &x, &y],
        || (p.link_up_to(&x_key) && p.link_up_to(&y_key)).then_some(()),
    );
    let log = dir.path().join("asker.log");
    let test = "a_relay_refuses_with_a_reason_and_counts";
    let endpoint = format!("{}:443", ips[0]);
    let env = [
        ("UMBRA_RELAY_P", endpoint.as_str()),
        ("UMBRA_RELAY_P_KEY", p_key.as_str()),
        ("UMBRA_RELAY_X_KEY", x_key.as_str()),
        ("UMBRA_RELAY_Y_KEY", y_key.as_str()),
    ];
    let mut helper = spawn_test_helper(&na, test, "asker", &env, &log);
    let ok = succeeds_within(&mut helper, Duration::from_secs(60));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ok,
        "the asker failed:\n{said}\nP:\n{}\nX:\n{}\nY:\n{}",
        p.log_text(),
        x.log_text(),
        y.log_text()
    );
    eprintln!("{said}");
    let relay = |d: &umbra_netlab::Daemon| d.status().expect("status")["relay"].clone();
    let (rp, rx) = (relay(&p), relay(&x));
    assert_eq!(rx["refused"]["not_partner"], 1, "X: {rx}");
    assert_eq!(rp["refused"]["no_link"], 1, "P: {rp}");
    assert_eq!(rp["refused"]["too_many_streams"], 1, "P: {rp}");
    assert!(rp["opened"].as_u64() >= Some(9), "P: {rp}");
}

/// The asker: links with P as its partner, then asks for streams.
mod helper {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use umbra_routing::crypto::Identity;
    use umbra_transport::io::{DialTarget, Dialer, Link, LinkSettings};
    use umbra_transport::proto::agreement::{Ask, LinkAsk, statement};
    use umbra_transport::proto::control::LinkControl;
    use umbra_transport::proto::frame::Frame;
    use umbra_transport::proto::relay::CloseReason;

    use super::ASKER_SEED;

    fn env(name: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
    }

    fn key(name: &str) -> [u8; 32] {
        hex::decode(env(name))
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    pub(super) fn run(role: &str) {
        assert_eq!(role, "asker");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(ask());
    }

    /// The reply to a stream `id` asked for: a close with its reason, or
    /// `None` if the stream started (no close within a second).
    async fn reply(link: &mut Link, id: u32) -> Option<CloseReason> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let frame = tokio::time::timeout_at(deadline, link.receiver.recv()).await;
            let Ok(Ok(frame)) = frame else { return None };
            if let Frame::LinkControl(body) = frame
                && let Ok(LinkControl::RelayClose { id: got, reason }) = LinkControl::decode(&body)
                && got == id
            {
                return Some(reason);
            }
        }
    }

    async fn ask() {
        let me = Identity::from_seed(&ASKER_SEED);
        let (p, x, y) = (
            key("UMBRA_RELAY_P_KEY"),
            key("UMBRA_RELAY_X_KEY"),
            key("UMBRA_RELAY_Y_KEY"),
        );
        let (bytes, secs) = (1_000_000_000_000u64, 30 * 86_400); // 1TB/30d
        let signature = me.sign(&statement(&me.public(), &p, bytes, secs));
        let ask = LinkAsk {
            ask: Ask::Agreement,
            bytes_per_period: bytes,
            period_secs: secs,
            signature,
        };
        let dialer = Dialer::new(me, LinkSettings::default()).expect("dialer");
        let target = DialTarget {
            peer: p,
            endpoint: env("UMBRA_RELAY_P"),
            server_name: None,
        };
        let mut link = dialer
            .dial(&target, &ask.encode())
            .await
            .expect("P takes the link");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        eprintln!("asker linked with P at {now}");
        let open = |id: u32, to: [u8; 32]| LinkControl::RelayOpen { id, to }.frame();
        // X has no agreement with us: X refuses, P passes the reason on.
        link.sender.send(open(0, x)).await.expect("send");
        let why = reply(&mut link, 0).await;
        eprintln!("to X: {why:?}");
        assert_eq!(why, Some(CloseReason::NotPartner));
        // A node P has no link to: P refuses.
        link.sender.send(open(2, [7; 32])).await.expect("send");
        let why = reply(&mut link, 2).await;
        eprintln!("to an unknown node: {why:?}");
        assert_eq!(why, Some(CloseReason::NoLink));
        // Y is our partner too: its streams stay open (it waits for our
        // TLS), and one more than P carries for one partner is refused.
        for i in 0..9u32 {
            link.sender.send(open(10 + 2 * i, y)).await.expect("send");
        }
        let mut reasons = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while reasons.is_empty() {
            let frame = tokio::time::timeout_at(deadline, link.receiver.recv()).await;
            let Ok(Ok(frame)) = frame else { break };
            if let Frame::LinkControl(body) = frame
                && let Ok(LinkControl::RelayClose { reason, .. }) = LinkControl::decode(&body)
            {
                reasons.push(reason);
            }
        }
        eprintln!("nine at once: {reasons:?}");
        assert_eq!(
            reasons,
            vec![CloseReason::TooManyStreams],
            "the ninth stream"
        );
    }
}

#[test]
fn a_relayed_link_keeps_to_the_relays_rate_and_total() {
    require_root();
    umbra_netlab::require_tools(&[
        ("nft", "nftables", "to build NAT routers"),
        ("iperf3", "iperf3", "for the transfers"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let edm = Site::Nat(NatKind::Edm);
    let dir = temp_dir("relay-limits");
    let options = MatrixOptions {
        umbra: umbra_bin(),
        top: "anonymity = \"fast\"".into(),
        // P and Q relay at most 1 MiB/s and 5 MiB per relayed link.
        extra: "\n[nat]\nrelay_rate = \"1MiB/s\"\nrelay_total = \"5MiB\"\n".into(),
        log_filter: "info,umbra=debug".into(),
        pair_agreements: true,
    };
    let mut m = NatMatrix::build(&[(edm, edm)], dir.path(), &options, |tag| Ok(netns(tag)))
        .unwrap_or_else(|e| panic!("building the lab: {e}"));
    m.start()
        .unwrap_or_else(|e| panic!("starting the daemons: {e}"));
    let c = m.cells[0];
    let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
    let logs: Vec<&umbra_netlab::Daemon> = m.nodes.iter().map(|n| &n.daemon).collect();
    let via = wait_for(Duration::from_secs(60), "a relayed link", &logs, || {
        let peers = a.daemon.cli_json(&["peers", "--json"]).ok()?;
        let row = peers
            .as_array()?
            .iter()
            .find(|r| r["key"] == b.key.as_str())?
            .clone();
        (row["state"] == "up" && row["kind"] == "relayed")
            .then(|| row["via"].as_str().map(str::to_string))?
    });
    let relay = m
        .nodes
        .iter()
        .find(|n| n.key == via)
        .expect("the relay is P or Q");
    // 2 s of iperf3 at the relay's rate: about 1 MiB/s, not more.
    let server = IperfServer::start(b.host(), &b.address, &dir.path().join("iperf1.log"), true)
        .expect("iperf3 server");
    let r = iperf3(a.host(), &b.address, IperfOptions::new(2)).expect("iperf3");
    drop(server);
    let mib_per_s = r.bytes as f64 / 2.0 / f64::from(1 << 20);
    eprintln!(
        "relayed at a 1 MiB/s limit: {mib_per_s:.2} MiB/s ({:.1} Mbit/s)",
        r.mbps()
    );
    assert!(
        (0.3..=1.5).contains(&mib_per_s),
        "relayed throughput {mib_per_s:.2} MiB/s is not near the 1 MiB/s limit"
    );
    // More than the total: the relay closes the relayed link, counts it, and
    // the ends say why.
    let started = Instant::now();
    let server = IperfServer::start(b.host(), &b.address, &dir.path().join("iperf2.log"), true)
        .expect("iperf3 server");
    let _ = iperf3(a.host(), &b.address, IperfOptions::new(5));
    drop(server);
    let status = relay.daemon.status().expect("status");
    eprintln!("relay after {:?}: {}", started.elapsed(), status["relay"]);
    assert!(
        status["relay"]["refused"]["total_exceeded"].as_u64() >= Some(1),
        "{}",
        status["relay"]
    );
    wait_for(
        Duration::from_secs(10),
        "an end logs the total",
        &logs,
        || {
            [a, b]
                .iter()
                .any(|n| n.daemon.log_text().contains("byte total"))
                .then_some(())
        },
    );
}
