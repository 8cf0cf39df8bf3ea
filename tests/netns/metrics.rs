//! Prometheus metrics and `umbra peers` figures of real daemons
//! (docs/architecture.md, "Metrics"; docs/cli.md, "umbra peers"): three
//! nodes in a chain, a known number of pings across the circuit, and the
//! counters scraped with curl before and after.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use umbra_netlab::{Identity, Links, UmbraConfig};
use umbra_tests::netns::{Daemon, Netns, netns, prepare, require_root, temp_dir, wait_for};

/// How long links and the graph may take to come up.
const CONVERGE: Duration = Duration::from_secs(30);
/// Where every node serves its metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9101";
/// The most a round trip between two namespaces on one machine may take,
/// in ms: a generous bound for a loaded debug build. (This kernel has no
/// netem, so the test cannot add a known delay.)
const RTT_MAX_MS: f64 = 1000.0;
/// Pings across the circuit and their payload size.
const PINGS: u64 = 40;
const PING_SIZE: u64 = 1000;
/// A cell frame on a link: 1,200 bytes and the 3-byte frame header.
const CELL_FRAME: u64 = 1203;

struct Chain {
    daemons: Vec<Daemon>,
    keys: Vec<String>,
    addrs: Vec<String>,
    ns: Vec<Netns>,
    _dir: tempfile::TempDir,
}

impl Chain {
    /// Nodes 0 – 1 – 2 with `anonymity = "fast"` (so the circuit from 0 to
    /// 2 is 0 → 1 → 2) and metrics on.
    fn build() -> Chain {
        let n = 3;
        let edges = [(0, 1), (1, 2)];
        let ns: Vec<Netns> = (0..n).map(|i| netns(&format!("me{i}"))).collect();
        let dir = temp_dir("metrics");
        let links = Links::new(&ns, &edges, 60, umbra_netlab::numbered).expect("veth pairs");
        let node_dir = |i: usize| dir.path().join(format!("n{i}"));
        let mut daemons: Vec<Daemon> = (0..n).map(|i| prepare(&node_dir(i), "")).collect();
        let ids: Vec<Identity> = daemons.iter().map(|d| d.init().expect("init")).collect();
        let keys: Vec<String> = ids.iter().map(|id| id.key.clone()).collect();
        let addrs: Vec<String> = ids.iter().map(|id| id.address.clone()).collect();
        for (i, d) in daemons.iter_mut().enumerate() {
            let mut config = UmbraConfig::new(&node_dir(i));
            config.top = "anonymity = \"fast\"\n".into();
            config.listen = Some(links.listen_on(i, 443));
            config.extra = format!("\n[metrics]\nlisten = \"{METRICS}\"\n");
            config.peers = links.umbra_peers(i, &keys, 443, Some("1TB/30d"));
            d.rewrite(&config).expect("write the config");
            d.start(&ns[i]).expect("umbra run starts");
        }
        let c = Chain {
            daemons,
            keys,
            addrs,
            ns,
            _dir: dir,
        };
        let refs: Vec<&Daemon> = c.daemons.iter().collect();
        wait_for(CONVERGE, "the graph to converge", &refs, || {
            c.daemons
                .iter()
                .all(|d| d.graph() == Some((3, 2)))
                .then_some(())
        });
        c
    }

    fn logs(&self) -> String {
        let logs: Vec<String> = self.daemons.iter().map(Daemon::log_text).collect();
        logs.join("\n-----\n")
    }

    /// `curl` of `path` on node `i`'s metrics address: status and body.
    fn get(&self, i: usize, path: &str) -> (String, String) {
        let url = format!("http://{METRICS}{path}");
        let out = self.ns[i]
            .run(&["curl", "-sS", "-m", "10", "-w", "\n%{http_code}", &url])
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    /// Node `i`'s metrics, checked for format and labels.
    fn scrape(&self, i: usize) -> Scrape {
        let (code, body) = self.get(i, "/metrics");
        assert_eq!(code, "200", "node {i}: {body}\nlogs:\n{}", self.logs());
        Scrape::parse(&body)
    }

    /// Node `i`'s `umbra peers` row for node `j`.
    fn peer(&self, i: usize, j: usize) -> Value {
        let rows = self.daemons[i]
            .cli_json(&["peers", "--json"])
            .expect("umbra peers");
        rows.as_array()
            .and_then(|r| r.iter().find(|p| p["key"] == self.keys[j]))
            .cloned()
            .unwrap_or_else(|| panic!("node {i} has no row for node {j}: {rows}"))
    }
}

/// One scrape: every sample by its name and labels as written.
struct Scrape {
    samples: HashMap<String, f64>,
}

impl Scrape {
    /// Parses Prometheus text strictly: every line is a `# HELP`, `# TYPE`,
    /// `# UNIT` or `# EOF` comment or `name{labels} value`; no label value
    /// is an address or a key.
    fn parse(text: &str) -> Scrape {
        let mut samples = HashMap::new();
        assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
        for line in text.lines() {
            if let Some(c) = line.strip_prefix("# ") {
                let kind = c.split(' ').next().unwrap_or("");
                assert!(
                    ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                    "bad comment line {line:?}"
                );
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {line:?}"));
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    (name, labels)
                }
                None => (series, ""),
            };
            assert!(
                name.starts_with("umbra_")
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "bad metric name in {line:?}"
            );
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{line:?}"
                );
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                assert!(
                    !looks_like_address_or_key(v),
                    "label value {v:?} in {line:?}"
                );
            }
            samples.insert(series.to_string(), v);
        }
        Scrape { samples }
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {:?}", self.samples.keys()))
    }
}

/// An IPv4 or IPv6 address, or a long run of hex digits (a key).
fn looks_like_address_or_key(v: &str) -> bool {
    let host = v.rsplit_once(':').map_or(v, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    v.parse::<std::net::IpAddr>().is_ok()
        || host.parse::<std::net::IpAddr>().is_ok()
        || v.parse::<std::net::SocketAddr>().is_ok()
        || (v.len() >= 16 && v.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn label_check_sees_addresses_and_keys() {
    for v in [
        "198.18.0.1",
        "198.18.0.1:443",
        "602:959::1",
        "[602::1]:443",
        &"ab".repeat(32),
    ] {
        assert!(looks_like_address_or_key(v), "{v}");
    }
    for v in [
        "in",
        "out",
        "up",
        "direct",
        "forged_source",
        "refused_bad_token",
    ] {
        assert!(!looks_like_address_or_key(v), "{v}");
    }
}

#[test]
fn metrics_and_peer_figures_follow_a_known_transfer() {
    require_root();
    let c = Chain::build();
    let (code, _) = c.get(0, "/other");
    assert_eq!(code, "404");

    // The first pings build the circuit; the counted ones run on it.
    let warm = c.ns[0]
        .run(&["ping", "-6", "-n", "-c", "3", "-W", "5", &c.addrs[2]])
        .expect("ping");
    assert!(
        warm.status.success(),
        "warm-up ping failed; logs:\n{}",
        c.logs()
    );
    std::thread::sleep(Duration::from_millis(500));

    let before: Vec<Scrape> = (0..3).map(|i| c.scrape(i)).collect();
    let out_before = c.peer(0, 1)["bytes_out"].as_u64().expect("bytes_out");
    let in_before = c.peer(1, 0)["bytes_in"].as_u64().expect("bytes_in");

    let size = PING_SIZE.to_string();
    let count = PINGS.to_string();
    let ping = c.ns[0]
        .run(&[
            "ping",
            "-6",
            "-n",
            "-c",
            &count,
            "-i",
            "0.05",
            "-s",
            &size,
            "-W",
            "5",
            &c.addrs[2],
        ])
        .expect("ping");
    let said = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "{said}\nlogs:\n{}", c.logs());
    std::thread::sleep(Duration::from_millis(500));
    let after: Vec<Scrape> = (0..3).map(|i| c.scrape(i)).collect();
    let delta = |i: usize, s: &str| after[i].get(s) - before[i].get(s);

    // Each request is one IPv6 packet of 48 + PING_SIZE bytes: at least one
    // cell out of node 0 and into node 2, and one reply cell back.
    let packet = (48 + PING_SIZE) as f64;
    let pings = PINGS as f64;
    let cells_out_0 = delta(0, "umbra_cells_total{direction=\"out\"}");
    let cells_in_2 = delta(2, "umbra_cells_total{direction=\"in\"}");
    let relayed_in_1 = delta(1, "umbra_cells_total{direction=\"in\"}");
    let bytes_out_0 = delta(0, "umbra_link_bytes_total{direction=\"out\"}");
    let bytes_in_2 = delta(2, "umbra_link_bytes_total{direction=\"in\"}");
    eprintln!(
        "{PINGS} pings of {PING_SIZE} bytes: node 0 sent {cells_out_0} cells, {bytes_out_0} link \
         bytes; node 1 got {relayed_in_1} cells; node 2 got {cells_in_2} cells, {bytes_in_2} bytes"
    );
    for (what, v) in [
        ("cells out of 0", cells_out_0),
        ("cells into 2", cells_in_2),
    ] {
        assert!(v >= pings, "{what}: {v} < {pings}");
        // A SENDME per 100 cells and the odd graph message, not more.
        assert!(
            v <= 2.0 * pings + 20.0,
            "{what}: {v} is far more than {pings}"
        );
    }
    // Node 1 gets the requests from 0 and the replies from 2.
    assert!(
        relayed_in_1 >= 2.0 * pings,
        "node 1 got {relayed_in_1} cells"
    );
    for (what, v) in [
        ("bytes out of 0", bytes_out_0),
        ("bytes into 2", bytes_in_2),
    ] {
        assert!(
            v >= pings * packet && v >= pings * CELL_FRAME as f64,
            "{what}: {v}"
        );
        assert!(
            v <= cells_out_0 * CELL_FRAME as f64 * 1.5 + 64.0 * 1024.0,
            "{what}: {v} is far more than {cells_out_0} cells"
        );
    }
    let circuits = after[0].get("umbra_circuits{role=\"origin\"}");
    assert!(circuits >= 1.0, "no origin circuit at node 0");
    assert!(after[1].get("umbra_circuits{role=\"relay\"}") >= 1.0);
    assert_eq!(
        after[0].get("umbra_links{state=\"up\",kind=\"direct\"}"),
        1.0
    );
    assert_eq!(
        after[1].get("umbra_links{state=\"up\",kind=\"direct\"}"),
        2.0
    );
    assert!(after[0].get("umbra_circuit_build_seconds_count{kind=\"full\"}") >= 1.0);
    let handshakes = after[0]
        .get("umbra_link_handshakes_total{direction=\"outbound\",result=\"ok\"}")
        + after[0].get("umbra_link_handshakes_total{direction=\"inbound\",result=\"ok\"}");
    assert!(handshakes >= 1.0, "node 0 counted no link handshake");
    assert!(
        after[0].get("umbra_link_padding_frames_total{direction=\"out\",kind=\"write\"}") > 0.0
    );
    assert_eq!(
        after[2].get("umbra_dropped_total{reason=\"forged_source\"}"),
        0.0
    );

    // `umbra peers`: node 0's bytes out to node 1 grew by the transfer, and
    // node 1's bytes in from node 0 match them once the link is idle.
    let grew = c.peer(0, 1)["bytes_out"].as_u64().expect("bytes_out") - out_before;
    assert!(grew as f64 >= pings * packet, "bytes_out grew by {grew}");
    let got = c.peer(1, 0)["bytes_in"].as_u64().expect("bytes_in") - in_before;
    assert!(got as f64 >= pings * packet, "bytes_in grew by {got}");
    let (sent, received) = wait_for(
        Duration::from_secs(5),
        "the link's two ends to agree",
        &[],
        || {
            let sent = c.peer(0, 1)["bytes_out"].as_u64()?;
            let received = c.peer(1, 0)["bytes_in"].as_u64()?;
            (sent.abs_diff(received) * 100 <= sent * 2).then_some((sent, received))
        },
    );
    eprintln!("link 0 → 1: {sent} bytes sent, {received} received");

    // Round trips from the link pings (the first goes out within a second
    // of link up): every link end has one, above zero, below the bound.
    for (i, j) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
        let row = c.peer(i, j);
        let rtt = row["rtt_ms"].as_f64();
        let srtt = row["srtt_ms"].as_f64();
        eprintln!("node {i} → {j}: rtt_ms {rtt:?}, srtt_ms {srtt:?}");
        for v in [rtt, srtt] {
            let v = v.unwrap_or_else(|| panic!("node {i} has no round trip to {j}: {row}"));
            assert!(v > 0.0 && v < RTT_MAX_MS, "node {i} → {j}: {v} ms");
        }
    }
}

#[test]
fn a_metrics_address_in_use_stops_the_daemon_at_start() {
    require_root();
    let ns = netns("mb");
    let dir = temp_dir("metrics-bind");
    let port = 9102;
    let extra = format!(
        "[tun]\nenabled = false\n\n[listen]\nhttps = []\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let mut first = prepare(&dir.path().join("a"), &extra);
    first.start(&ns).expect("the first daemon starts");
    let mut second = prepare(&dir.path().join("b"), &extra);
    second.spawn(&ns).expect("spawn");
    let status = second
        .wait(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the second daemon kept running: {}", second.log_text()));
    assert!(!status.success());
    let log = second.log_text();
    assert!(
        log.contains(&format!(
            "[metrics] listen = \"127.0.0.1:{port}\": cannot listen"
        )),
        "{log}"
    );
    first.check_running().expect("the first daemon still runs");
}
