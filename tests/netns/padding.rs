//! Link padding with `anonymity = "strong"` (docs/protocol.md, "Link
//! control", and docs/protocol.md, "Link framing"): more relays, plus link
//! padding at a configured rate.
//!
//! Three pairs of real daemons, each linked by `[[peer]]` entries on both
//! sides and left idle (no TUN, so no traffic but the link's own), measured
//! together over the same window at their veth:
//! - **strong**: one node `anonymity = "strong"` with `[padding] rate =
//!   "64KiB/s"`, an agreement of `1TB/30d` (about 377 KiB/s on average):
//!   both directions carry about 64 KiB/s, the strong node's own padding
//!   one way and, the other way, the padding it asked its balanced peer for;
//! - **capped**: the same node config with the default terms `50GiB/30d`,
//!   which pay for only 20,712 B/s: both directions carry about that;
//! - **control**: two balanced nodes: the idle link carries almost nothing.
//!
//! Then the strong node turns balanced on SIGHUP, and both sides of its link
//! stop padding (it asks its peer for rate 0).
//!
//! Wire bytes include TCP/IP, TLS, HTTP/2 and framing overhead (about a
//! fifth on top of a 1203-byte padding frame), hence the bands.

use std::time::{Duration, Instant};

use serde_json::Value;
use umbra_tests::netns::{Daemon, Netns, netns, prepare, require_root, temp_dir, veth, wait_for};

const LINK_WAIT: Duration = Duration::from_secs(30);

/// How long each direction is measured.
const WINDOW: Duration = Duration::from_secs(3);

/// The strong node's `[padding] rate`, bytes/s.
const RATE: f64 = 64.0 * 1024.0;

/// What `50GiB/30d` pays for on average, bytes/s.
const DEFAULT_TERMS_RATE: f64 = 20_712.0;

/// A padded direction carries between these multiples of its rate on the
/// wire.
const BAND: (f64, f64) = (0.6, 1.6);

/// An unpadded idle link carries less than this each way, bytes/s.
const IDLE_MAX: f64 = 5.0 * 1024.0;

/// A padding frame is a cell frame: 1200 bytes and a 3-byte header.
const PADDING_FRAME_LEN: f64 = 1203.0;

/// Two linked daemons in their own namespaces.
struct Pair {
    name: &'static str,
    // Daemons before namespaces: they stop before their namespace goes.
    a: Daemon,
    b: Daemon,
    ka: String,
    kb: String,
    /// `a`'s end of the veth.
    iface_a: String,
    ns_a: Netns,
    _ns_b: Netns,
}

/// Starts a pair on `198.18.<subnet>.0/24`: `a` with `extra_a` in its
/// config, `b` balanced, both listing each other with `terms`.
fn pair(
    name: &'static str,
    dir: &tempfile::TempDir,
    subnet: u8,
    extra_a: &str,
    terms: &str,
) -> Pair {
    let (ns_a, ns_b) = (netns("pa"), netns("pb"));
    let (ip_a, ip_b) = veth(&ns_a, &ns_b, subnet);
    let iface_a = ns_a.iface_with_addr(&ip_a).expect("interface");
    let dir_a = dir.path().join(format!("{name}-a"));
    let dir_b = dir.path().join(format!("{name}-b"));
    // Keys first, so each config can name the other node.
    let key = |d: &std::path::Path| {
        prepare(d, "")
            .cli_json(&["init", "--json"])
            .expect("umbra cli")["public_key"]
            .as_str()
            .expect("public_key")
            .to_string()
    };
    let (ka, kb) = (key(&dir_a), key(&dir_b));
    let config = |me: &str, peer: &str, peer_ip: &str, extra: &str| {
        // `extra` first: it may hold top-level keys, which TOML wants
        // before any table.
        let peer = umbra_netlab::Peer::new(peer, format!("{peer_ip}:443"), Some(terms));
        format!(
            "{extra}[tun]\nenabled = false\n[listen]\nhttps = [\"{me}:443\"]\n{}",
            peer.toml()
        )
    };
    let mut a = prepare(&dir_a, &config(&ip_a, &kb, &ip_b, extra_a));
    let mut b = prepare(&dir_b, &config(&ip_b, &ka, &ip_a, ""));
    a.start(&ns_a).expect("umbra run starts");
    b.start(&ns_b).expect("umbra run starts");
    Pair {
        name,
        a,
        b,
        ka,
        kb,
        iface_a,
        ns_a,
        _ns_b: ns_b,
    }
}

impl Pair {
    /// Bytes `(sent, received)` so far by `a`'s end of the veth.
    fn wire_bytes(&self) -> (u64, u64) {
        let out = self
            .ns_a
            .exec(&["ip", "-j", "-s", "link", "show", "dev", &self.iface_a])
            .expect("command in the namespace");
        let v: Value = serde_json::from_str(&out).expect("ip -j output");
        let stats = &v[0]["stats64"];
        let n = |dir: &str| stats[dir]["bytes"].as_u64().expect("byte counter");
        (n("tx"), n("rx"))
    }

    /// `a`'s and `b`'s rows for each other in `peers --json`.
    fn rows(&self) -> (Value, Value) {
        (row(&self.a, &self.kb), row(&self.b, &self.ka))
    }
}

/// `d`'s `peers --json` row for `key`.
fn row(d: &Daemon, key: &str) -> Value {
    let peers = d.cli_json(&["peers", "--json"]).expect("umbra cli");
    peers
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == key))
        .cloned()
        .unwrap_or_else(|| panic!("no row for {key} in {peers}"))
}

fn count(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {row}"))
}

/// What one pair carried over the window.
#[derive(Debug)]
struct Measured {
    /// Wire bytes per second, a to b and b to a.
    wire: (f64, f64),
    /// Padding frames per second sent by a and by b (`padding_out`).
    sent: (f64, f64),
    /// Padding frames per second received by a and by b (`padding_in`).
    received: (f64, f64),
    rows: (Value, Value),
}

#[test]
fn strong_pads_both_ways_at_the_configured_rate_capped_by_the_agreement() {
    require_root();
    let dir = temp_dir("padding");
    let strong_cfg = "anonymity = \"strong\"\n[padding]\nrate = \"64KiB/s\"\n";
    let pairs = [
        pair("strong", &dir, 70, strong_cfg, "1TB/30d"),
        pair("capped", &dir, 71, strong_cfg, "50GiB/30d"),
        pair("control", &dir, 72, "", "1TB/30d"),
    ];
    let logs: Vec<&Daemon> = pairs.iter().flat_map(|p| [&p.a, &p.b]).collect();
    wait_for(LINK_WAIT, "all three links up", &logs, || {
        pairs
            .iter()
            .all(|p| p.a.link_up_to(&p.kb) && p.b.link_up_to(&p.ka))
            .then_some(())
    });
    // Both directions of the padded links pad before the window opens
    // (the balanced side starts when the strong side's request arrives).
    wait_for(LINK_WAIT, "padding both ways", &logs, || {
        pairs[..2]
            .iter()
            .all(|p| {
                let (ra, rb) = p.rows();
                ra["padding_out"].as_u64() > Some(0) && rb["padding_out"].as_u64() > Some(0)
            })
            .then_some(())
    });
    // Let the link-up burst (graph records, the first padded writes) pass.
    std::thread::sleep(Duration::from_secs(2));

    let start: Vec<_> = pairs
        .iter()
        .map(|p| (Instant::now(), p.wire_bytes(), p.rows()))
        .collect();
    std::thread::sleep(WINDOW);
    let measured: Vec<Measured> = pairs
        .iter()
        .zip(&start)
        .map(|(p, (t0, w0, r0))| {
            let w1 = p.wire_bytes();
            let secs = t0.elapsed().as_secs_f64();
            let r1 = p.rows();
            let per_sec = |field: &str| {
                (
                    (count(&r1.0, field) - count(&r0.0, field)) as f64 / secs,
                    (count(&r1.1, field) - count(&r0.1, field)) as f64 / secs,
                )
            };
            Measured {
                wire: ((w1.0 - w0.0) as f64 / secs, (w1.1 - w0.1) as f64 / secs),
                sent: per_sec("padding_out"),
                received: per_sec("padding_in"),
                rows: r1,
            }
        })
        .collect();

    let report: String = pairs
        .iter()
        .zip(&measured)
        .map(|(p, m)| {
            format!(
                "{:8} wire a->b {:7.0} B/s, b->a {:7.0} B/s; padding frames/s sent a {:5.1} b {:5.1}, \
                 received a {:5.1} b {:5.1}; rates a {} b {}\n",
                p.name,
                m.wire.0,
                m.wire.1,
                m.sent.0,
                m.sent.1,
                m.received.0,
                m.received.1,
                m.rows.0["padding_rate_out"],
                m.rows.1["padding_rate_out"],
            )
        })
        .collect();
    eprintln!("measured over {WINDOW:?}:\n{report}");
    let fail = |why: String| -> ! {
        let logs: Vec<String> = logs.iter().map(|d| d.log_text()).collect();
        panic!(
            "{why}\nmeasured over {WINDOW:?}:\n{report}\nlogs:\n{}",
            logs.join("\n-----\n")
        )
    };

    for (p, m, rate) in [
        (&pairs[0], &measured[0], RATE),
        (&pairs[1], &measured[1], DEFAULT_TERMS_RATE),
    ] {
        let (lo, hi) = (BAND.0 * rate, BAND.1 * rate);
        for (dir, bytes) in [("a->b", m.wire.0), ("b->a", m.wire.1)] {
            if !(lo..=hi).contains(&bytes) {
                fail(format!(
                    "{}: {dir} carried {bytes:.0} B/s on the wire, outside {lo:.0}..{hi:.0} \
                     around the padding rate {rate:.0} B/s",
                    p.name
                ));
            }
        }
        // Both sides pad at the agreed rate: the strong side by its config,
        // the balanced side because it was asked.
        let want = rate as u64;
        let (ra, rb) = &m.rows;
        if ra["padding_rate_out"] != want
            || rb["padding_rate_out"] != want
            || rb["padding_rate_asked"] != want
        {
            fail(format!(
                "{}: padding rates are not {want} B/s both ways: a {ra}, b {rb}",
                p.name
            ));
        }
        // The counters rise with the wire: padding frames at the rate, and
        // what one side sends, the other receives.
        let frames = rate / PADDING_FRAME_LEN;
        for (who, sent, received) in [("a", m.sent.0, m.received.1), ("b", m.sent.1, m.received.0)]
        {
            if !(0.7 * frames..=1.2 * frames).contains(&sent)
                || !(0.7 * frames..=1.2 * frames).contains(&received)
            {
                fail(format!(
                    "{}: {who} sent {sent:.1} padding frames/s and its peer received \
                     {received:.1}, expected about {frames:.1}",
                    p.name
                ));
            }
        }
    }

    // The capped pair is held to its agreement, well below the 64 KiB/s the
    // strong node asked for.
    let capped = &measured[1];
    if capped.wire.0.max(capped.wire.1) > 0.6 * RATE {
        fail("capped: padding went above what the agreement pays for".to_string());
    }

    let control = &measured[2];
    for (dir, bytes) in [("a->b", control.wire.0), ("b->a", control.wire.1)] {
        if bytes >= IDLE_MAX {
            fail(format!(
                "control: the idle balanced link carried {bytes:.0} B/s {dir}, not under {IDLE_MAX:.0}"
            ));
        }
    }
    let (ra, rb) = &control.rows;
    for r in [ra, rb] {
        if r["padding_out"] != 0 || r["padding_in"] != 0 || r["padding_rate_out"] != 0 {
            fail(format!("control: a balanced link padded: {r}"));
        }
    }

    // The strong node turns balanced on SIGHUP: it stops padding and asks
    // its peer (rate 0) to stop too.
    let strong = &pairs[0];
    let text = std::fs::read_to_string(&strong.a.config).expect("read config");
    let text = text.replace("anonymity = \"strong\"", "anonymity = \"balanced\"");
    std::fs::write(&strong.a.config, text).expect("write config");
    strong.a.signal("HUP").expect("signal the daemon");
    wait_for(
        LINK_WAIT,
        "both sides to stop padding after SIGHUP",
        &[&strong.a, &strong.b],
        || {
            let (ra, rb) = strong.rows();
            (ra["padding_rate_out"] == 0
                && rb["padding_rate_out"] == 0
                && rb["padding_rate_asked"] == 0)
                .then_some((ra, rb))
        },
    );
    let (ra0, rb0) = strong.rows();
    std::thread::sleep(Duration::from_secs(1));
    let (ra1, rb1) = strong.rows();
    assert_eq!(
        (ra1["padding_out"].clone(), rb1["padding_out"].clone()),
        (ra0["padding_out"].clone(), rb0["padding_out"].clone()),
        "padding went on after both sides stopped: a {ra1}, b {rb1}"
    );
}
