//! Agreements proposed over the overlay (docs/protocol.md, "Proposals"),
//! with real daemons: A, C and D each have an agreement with B only, so A
//! and C share nothing but a path through the graph (A – B – C).
//!
//! - A proposes to C by C's overlay address; C's operator rejects it: A sees
//!   `rejected`, and nothing is left but the record: no agreement, no link,
//!   no traversal message (so no endpoint) sent either way. The proposal as C
//!   received it, the rejection as A received it, and C's whole database
//!   before any accept hold no lab IP address, in binary or text form (the
//!   same search finds B's address in C's database, where C's `[[peer]]`
//!   entry put it, and an endpoint in a traversal message).
//! - A proposes again; C accepts; the two record the agreement (origin
//!   `proposal`, each with its own limits) and link directly.
//! - D takes no proposals (`[agreements] proposals = false`): C's proposal to
//!   it is refused, and C's command, list and log say why.
//! - D floods A with proposals: A keeps its burst of 3 (each replacing the
//!   last, so one row pending), tells D once that it is over its rate, and
//!   drops and counts the rest.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use umbra_netlab::{Daemon, Peer, Router};
use umbra_tests::netns::{netns, prepare, require_root, temp_dir, veth, wait_for};

/// How long links and graph updates may take.
const WAIT: Duration = Duration::from_secs(30);

/// A node's rows of `umbra agreements --json`.
fn rows(d: &Daemon) -> Vec<Value> {
    d.cli_json(&["agreements", "--json"])
        .expect("umbra agreements --json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The rows of `kind` (`agreement`, `proposal`) with `peer`.
fn with(d: &Daemon, kind: &str, peer: &str) -> Vec<Value> {
    rows(d)
        .into_iter()
        .filter(|r| r["kind"] == kind && r["peer_key"] == peer)
        .collect()
}

/// The bytes of a hex field.
fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex field")).expect("hex")
}

/// The node's database as it is on disk: the file and its write-ahead log
/// (recent changes are only there until a checkpoint).
fn database(d: &Daemon) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["umbra.db", "umbra.db-wal"] {
        if let Ok(b) = std::fs::read(d.state_dir.join(name)) {
            all.extend_from_slice(&b);
        }
    }
    assert!(all.len() > 4096, "the database of {:?}", d.state_dir);
    all
}

/// Where `ip` shows in `hay`, if it does: as text, as the 16 bytes of an
/// IPv4-mapped IPv6 address (how endpoints travel), and as its 4 bytes
/// (`raw`: only for short messages, where 4 random bytes matching is
/// unlikely; in a whole database only when a port follows).
fn find_ip(hay: &[u8], ip: Ipv4Addr, raw: bool) -> Option<&'static str> {
    let has = |needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let o = ip.octets();
    if has(ip.to_string().as_bytes()) {
        return Some("text");
    }
    if has(&ip.to_ipv6_mapped().octets()) {
        return Some("IPv4-mapped IPv6");
    }
    if raw && has(&o) {
        return Some("4 bytes");
    }
    if has(&[o[0], o[1], o[2], o[3], 0x01, 0xbb]) {
        return Some("4 bytes and port 443");
    }
    None
}

fn assert_no_ip(what: &str, hay: &[u8], ips: &[Ipv4Addr], raw: bool) {
    for ip in ips {
        assert_eq!(
            find_ip(hay, *ip, raw),
            None,
            "{what} ({} bytes) holds {ip}",
            hay.len()
        );
    }
}

#[test]
fn nodes_that_share_only_a_path_make_an_agreement_by_proposal() {
    require_root();
    let dir = temp_dir("propose");
    let inet = netns("inet");
    Router::forwarding(&inet).expect("forwarding");
    let names = ["a", "b", "c", "d"];
    let hosts: Vec<_> = names.iter().map(|n| netns(n)).collect();
    let mut ips = Vec::new();
    let mut lab_ips: Vec<Ipv4Addr> = Vec::new();
    for (i, ns) in hosts.iter().enumerate() {
        let (gw, ip) = veth(&inet, ns, 41 + i as u8);
        let gw: Ipv4Addr = gw.parse().expect("gateway");
        Router::route_via(ns, gw).expect("route");
        lab_ips.push(gw);
        lab_ips.push(ip.parse().expect("ip"));
        ips.push(ip);
    }
    let keys: Vec<String> = names
        .iter()
        .map(|n| prepare(&dir.path().join(n), "").init().expect("init").key)
        .collect();
    let (ka, kb, kc, kd) = (&keys[0], &keys[1], &keys[2], &keys[3]);
    let terms = Some("1TiB/30d");
    let to_b = Peer::new(kb, format!("{}:443", ips[1]), terms).toml();
    let top = |i: usize| {
        format!(
            "anonymity = \"fast\"\n[tun]\nenabled = false\n[listen]\nhttps = [\"{}:443\"]\n",
            ips[i]
        )
    };
    let configs = [
        format!("{}{to_b}", top(0)),
        format!(
            "{}{}{}{}",
            top(1),
            Peer::new(ka, format!("{}:443", ips[0]), terms).toml(),
            Peer::new(kc, format!("{}:443", ips[2]), terms).toml(),
            Peer::new(kd, format!("{}:443", ips[3]), terms).toml()
        ),
        format!("{}{to_b}", top(2)),
        format!("{}[agreements]\nproposals = false\n{to_b}", top(3)),
    ];
    let mut daemons = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut d = prepare(&dir.path().join(name), &configs[i]);
        d.start(&hosts[i]).expect("umbra run starts");
        daemons.push(d);
    }
    let logs: Vec<&Daemon> = daemons.iter().collect();
    let (a, b, c, d) = (&daemons[0], &daemons[1], &daemons[2], &daemons[3]);
    let address = |n: &Daemon| {
        n.status().expect("status")["address"]
            .as_str()
            .expect("address")
            .to_string()
    };
    let (a_addr, c_addr, d_addr) = (address(a), address(c), address(d));
    wait_for(WAIT, "A, C and D linked to B", &logs, || {
        (b.link_up_to(ka) && b.link_up_to(kc) && b.link_up_to(kd)).then_some(())
    });
    wait_for(WAIT, "every graph holds all four nodes", &logs, || {
        [a, c, d]
            .iter()
            .all(|n| n.graph().is_some_and(|(nodes, _)| nodes >= 4))
            .then_some(())
    });
    let (ip_a, ip_b) = (lab_ips[1], lab_ips[3]);

    // The search finds an address where one is: B's, in C's database (C's
    // [[peer]] entry), and one in an endpoint as traversal sends it.
    let c_db = database(c);
    assert_eq!(find_ip(&c_db, ip_b, false), Some("text"));
    let endpoints = umbra_transport::proto::traversal::Traversal::Endpoints {
        seq: 1,
        mapping: umbra_transport::proto::nat::Mapping::Public,
        reply: false,
        endpoints: vec![umbra_transport::proto::traversal::Endpoint {
            kind: umbra_transport::proto::traversal::EndpointKind::Listen,
            addr: format!("{ip_a}:443").parse().expect("endpoint"),
        }],
        relays: Vec::new(),
    }
    .encode();
    assert_eq!(
        find_ip(&endpoints, ip_a, true),
        Some("IPv4-mapped IPv6"),
        "an endpoint in a traversal message"
    );

    // A's proposals to C, by C's address, with limits that stay A's own.
    let propose_to_c = |note: &str| {
        a.cli_json(&[
            "propose",
            &c_addr,
            "--terms",
            "1TiB/30d, debt 100GiB",
            "--note",
            note,
            "--json",
        ])
        .expect("umbra propose")
    };

    // 1. A proposes to C; C sees it pending, and rejects it.
    let sent = propose_to_c("hello from A");
    assert_eq!(sent["state"], "pending", "{sent}");
    assert_eq!(sent["delivered"], true, "{sent}");
    assert_eq!(sent["direction"], "outgoing", "{sent}");
    assert_eq!(sent["peer_key"], kc.as_str());
    let held = with(c, "proposal", ka);
    assert_eq!(held.len(), 1, "{held:?}");
    let p = &held[0];
    assert_eq!(p["state"], "pending", "{p}");
    assert_eq!(p["direction"], "incoming");
    assert_eq!(p["peer_address"], a_addr.as_str());
    assert_eq!(p["terms"], "1TiB/30d", "the limits stay A's own: {p}");
    assert_eq!(p["note"], "hello from A");
    assert_eq!(p["proposal_id"], sent["proposal_id"]);
    let proposal = unhex(&p["message"]);
    assert_eq!(proposal, unhex(&sent["message"]), "received as sent");
    assert_no_ip("the proposal as C received it", &proposal, &lab_ips, true);
    let c_db = database(c);
    assert_no_ip(
        "C's database holding the proposal",
        &c_db,
        &[
            lab_ips[0], ip_a, lab_ips[4], lab_ips[5], lab_ips[6], lab_ips[7],
        ],
        false,
    );
    assert_eq!(
        find_ip(&c_db, ip_b, false),
        Some("text"),
        "the same search on the same file"
    );
    // A's ID and C's ID are each node's own; C answers by its own.
    let c_id = p["id"].as_i64().expect("id").to_string();
    let rejected = c
        .cli_json(&["agreements", "reject", &c_id, "--json"])
        .expect("umbra agreements reject");
    assert_eq!(rejected["state"], "rejected", "{rejected}");
    assert_eq!(rejected["told"], true, "{rejected}");
    let answer = wait_for(WAIT, "A sees the rejection", &logs, || {
        with(a, "proposal", kc)
            .into_iter()
            .find(|r| r["state"] == "rejected")
    });
    let reject = unhex(&answer["answer"]);
    assert_no_ip("the rejection as A received it", &reject, &lab_ips, true);
    assert_eq!(reject, unhex(&rejected["answer"]), "received as sent");
    // Nothing but the record: no agreement, no link, no endpoint sent.
    for (n, other) in [(a, kc), (c, ka)] {
        assert!(with(n, "agreement", other).is_empty(), "{:?}", rows(n));
        assert!(!n.link_up_to(other));
        let t = &n.status().expect("status")["traversal"];
        assert_eq!(
            t["sent"],
            json!({"link": 0, "circuit": 0, "forwarded": 0}),
            "{t}"
        );
    }
    assert_no_ip(
        "A's database after the rejection",
        &database(a),
        &[lab_ips[4], lab_ips[5], lab_ips[6], lab_ips[7]],
        false,
    );

    // 2. Again, and C accepts: both record the agreement, and they link.
    let sent = propose_to_c("again");
    assert_eq!(sent["delivered"], true, "{sent}");
    let c_id = with(c, "proposal", ka)
        .into_iter()
        .find(|r| r["state"] == "pending")
        .expect("the second proposal, pending")["id"]
        .to_string();
    let started = Instant::now();
    let made = c
        .cli_json(&["agreements", "accept", &c_id, "--json"])
        .expect("umbra agreements accept");
    let accept_took = started.elapsed();
    assert_eq!(made["kind"], "agreement", "{made}");
    assert_eq!(made["state"], "active", "{made}");
    assert_eq!(made["origin"], "proposal", "{made}");
    assert_eq!(made["peer_key"], ka.as_str());
    let row = wait_for(WAIT, "A and C linked", &logs, || {
        let peers = a.cli_json(&["peers", "--json"]).ok()?;
        c.link_up_to(ka).then_some(())?;
        peers
            .as_array()?
            .iter()
            .find(|r| r["key"] == kc.as_str() && r["state"] == "up")
            .cloned()
    });
    let linked_after = started.elapsed();
    assert_eq!(row["kind"], "direct", "{row}");
    for (n, other, want) in [(a, kc, "1TiB/30d, debt 100GiB"), (c, ka, "1TiB/30d")] {
        let ags = with(n, "agreement", other);
        assert_eq!(ags.len(), 1, "{ags:?}");
        assert_eq!(ags[0]["state"], "active");
        assert_eq!(ags[0]["origin"], "proposal");
        assert_eq!(ags[0]["terms"], want, "each side keeps its own limits");
        assert_eq!(ags[0]["signed_by_peer"], true);
        assert!(ags[0]["ledger"].is_null() || ags[0]["ledger"].is_object());
    }
    let mine = with(a, "proposal", kc);
    assert!(
        mine.iter()
            .any(|r| r["state"] == "accepted" && r["agreement_id"].is_i64()),
        "{mine:?}"
    );
    eprintln!("accept returned after {accept_took:?}; A saw the link up after {linked_after:?}");

    // 3. D takes no proposals: C's is refused, and C says why.
    let refused = c.cli(&["propose", &d_addr]).expect("umbra propose");
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("takes no proposals"), "{said}");
    let row = with(c, "proposal", kd);
    assert_eq!(row.len(), 1, "{row:?}");
    assert_eq!(row[0]["state"], "refused");
    assert_eq!(row[0]["reason"], "disabled");
    assert!(c.log_text().contains("the proposal was refused"));
    let dp = &d.status().expect("status")["proposals"];
    assert_eq!(dp["enabled"], false, "{dp}");
    assert_eq!(dp["refused"]["disabled"], 1, "{dp}");
    assert!(with(d, "proposal", kc).is_empty(), "D stores nothing");

    // 4. D floods A: 12 proposals, sent without waiting for answers.
    const FLOOD: u64 = 12;
    for _ in 0..FLOOD {
        d.query(&json!({"cmd": "propose", "to": a_addr, "wait_secs": 0}))
            .expect("propose");
    }
    let ap = wait_for(WAIT, "A has counted the flood", &logs, || {
        let p = a.status().ok()?["proposals"].clone();
        (p["dropped"]["rate_limited"].as_u64()? + p["held"].as_u64()? >= FLOOD).then_some(p)
    });
    eprintln!("A after {FLOOD} proposals from D: {ap}");
    assert_eq!(ap["held"], 3, "{ap}");
    assert_eq!(ap["dropped"]["rate_limited"], FLOOD - 3, "{ap}");
    assert_eq!(ap["refused"]["rate_limited"], 1, "told once: {ap}");
    let from_d = with(a, "proposal", kd);
    let pending = from_d.iter().filter(|r| r["state"] == "pending").count();
    assert_eq!(pending, 1, "{from_d:?}");
    assert!(from_d.len() <= 3, "rows from D: {from_d:?}");
    assert!(a.log_text().contains("over its rate"));
    // B relayed all of it and stored nothing.
    assert!(rows(b).iter().all(|r| r["kind"] == "agreement"));
}
