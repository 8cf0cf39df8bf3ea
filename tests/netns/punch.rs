//! TCP hole punching (`umbra_transport::io::simultaneous_open`,
//! docs/architecture.md, "NAT") between hosts behind the lab's NAT routers.
//! Each host runs the `punch-probe` binary in its namespace: first it
//! learns the external endpoint of each local port it will punch from by
//! connecting from that port to a reflector on the "internet" side, then
//! two probes connect to each other's learned endpoint at chosen moments
//! (the skew: how long after the first the second starts).
//!
//! - endpoint-independent NATs that drop unsolicited SYNs: plain
//!   simultaneous connects meet;
//! - endpoint-independent NATs that reset unsolicited SYNs: the side that
//!   goes first needs the TTL-limited primer (without it both are refused).
//!   At skew 0 which side is first is chance, so that rate is only shown;
//!   a primer on both sides connects whatever the order, one SYN
//!   retransmission (1 s) later;
//! - carrier-grade NAT (two endpoint-independent NATs in a row): it works,
//!   with the primer's TTL one hop longer;
//! - endpoint-dependent NAT: the learned endpoint is not the one the peer
//!   sees, and both sides time out;
//! - a 4-tuple in use (the connection just made, still open) is reported as
//!   such.
//!
//! The primer cases run several times and print their success counts; the
//! groups of cases run in parallel, on different routers, so the binary
//! stays short.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use umbra_netlab::{NatKind, NatSite, Netns, Proc, Router, Veth};
use umbra_tests::netns::{netns, require_root, temp_dir};

/// The probe binary cargo built for this test.
const PROBE: &str = env!("CARGO_BIN_EXE_punch-probe");
/// The reflector's port on the "internet" side.
const REFLECTOR_PORT: u16 = 3478;
/// How far ahead of now an attempt's first probe is told to start, so both
/// probes are running (namespace entered, runtime up) by then.
const START_LEAD_MS: u64 = 300;
/// Each probe's `simultaneous_open` timeout.
const PUNCH_TIMEOUT_MS: u64 = 3000;
/// How often each primer case runs, unless `UMBRA_PUNCH_RUNS` says.
const PRIMER_RUNS: usize = 5;
/// Linux's initial retransmission timeout for a SYN.
const RTO_MS: f64 = 1000.0;
/// The local ports the probes punch from: each attempt takes fresh ones, so
/// no attempt meets another's mappings or TIME_WAIT.
static NEXT_PORT: AtomicU16 = AtomicU16::new(41000);

/// How often each primer case runs: `UMBRA_PUNCH_RUNS`, or
/// [`PRIMER_RUNS`].
fn runs() -> usize {
    std::env::var("UMBRA_PUNCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(PRIMER_RUNS)
}

fn fresh_port() -> u16 {
    NEXT_PORT.fetch_add(1, Ordering::Relaxed)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// One host behind NAT, with the external endpoints it learned.
struct Host {
    name: &'static str,
    site: NatSite,
}

impl Host {
    fn ns(&self) -> &Netns {
        &self.site.host
    }

    /// The external endpoints the reflector saw `ports` come from.
    fn observe(&self, reflector: SocketAddr, ports: &[u16]) -> HashMap<u16, SocketAddr> {
        let out = self
            .ns()
            .command(PROBE)
            .arg("observe")
            .arg(reflector.to_string())
            .args(ports.iter().map(u16::to_string))
            .output()
            .expect("run punch-probe observe");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: observe printed no JSON ({e}): {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let seen: HashMap<u16, SocketAddr> = ports
            .iter()
            .map(|p| {
                let a = v["observed"][p.to_string()]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("{}: port {p} not observed: {v}", self.name));
                (*p, a)
            })
            .collect();
        for (port, ext) in &seen {
            assert_eq!(ext.ip(), self.site.wan_ip, "{}: {v}", self.name);
            if self.site.kind != NatKind::Edm {
                // These routers keep a free source port.
                assert_eq!(ext.port(), *port, "{}: {v}", self.name);
            }
        }
        seen
    }
}

/// One probe's report.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    kind: Option<String>,
    elapsed_ms: f64,
    began_unix_us: u64,
    line: Option<String>,
    local: Option<String>,
    raw: String,
}

impl Outcome {
    fn parse(name: &str, out: &std::process::Output) -> Outcome {
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{name}: the probe printed no JSON ({e}): {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let s = |k: &str| v[k].as_str().map(str::to_string);
        Outcome {
            ok: v["ok"] == true,
            kind: s("kind"),
            elapsed_ms: v["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
            began_unix_us: v["began_unix_us"].as_u64().unwrap_or(0),
            line: s("line"),
            local: s("local"),
            raw: text,
        }
    }

    fn show(&self) -> String {
        match (&self.kind, self.ok) {
            (_, true) => format!("ok in {:.1} ms", self.elapsed_ms),
            (Some(k), _) => format!("{k} after {:.1} ms", self.elapsed_ms),
            (None, false) => format!("failed: {}", self.raw),
        }
    }
}

/// One side of an attempt.
struct Side<'a> {
    host: &'a Host,
    port: u16,
    remote: SocketAddr,
    primer_ttl: Option<u32>,
    /// Milliseconds after the attempt's start time.
    delay_ms: u64,
    hold_ms: u64,
}

impl Side<'_> {
    fn command(&self, start_ms: u64) -> Command {
        let mut c = self.host.ns().command(PROBE);
        c.args(["punch", "--local-port", &self.port.to_string()])
            .args(["--remote", &self.remote.to_string()])
            .args(["--start-unix-ms", &(start_ms + self.delay_ms).to_string()])
            .args(["--timeout-ms", &PUNCH_TIMEOUT_MS.to_string()])
            .args(["--hold-ms", &self.hold_ms.to_string()]);
        if let Some(t) = self.primer_ttl {
            c.args(["--primer-ttl", &t.to_string()]);
        }
        c
    }
}

/// Runs the probes of `sides` at once (each after its delay) and returns
/// their outcomes in order.
fn run(sides: &[Side<'_>]) -> Vec<Outcome> {
    let start = unix_ms() + START_LEAD_MS;
    std::thread::scope(|scope| {
        let running: Vec<_> = sides
            .iter()
            .map(|side| {
                let mut c = side.command(start);
                scope.spawn(move || (side.host.name, c.output().expect("run punch-probe")))
            })
            .collect();
        running
            .into_iter()
            .map(|t| {
                let (name, out) = t.join().expect("probe thread");
                Outcome::parse(name, &out)
            })
            .collect()
    })
}

/// What one punch between `a` and `b` gave.
struct Attempt {
    a: Outcome,
    b: Outcome,
}

impl Attempt {
    fn ok(&self) -> bool {
        self.a.ok && self.b.ok
    }

    /// The second start's lateness against the first, as the probes saw it.
    fn real_skew_ms(&self) -> f64 {
        (self.b.began_unix_us as f64 - self.a.began_unix_us as f64) / 1e3
    }

    /// How long after the earlier of the two starts the later side
    /// connected.
    fn connected_after_first_start_ms(&self) -> f64 {
        let done = |o: &Outcome| o.began_unix_us as f64 / 1e3 + o.elapsed_ms;
        let first = self.a.began_unix_us.min(self.b.began_unix_us) as f64 / 1e3;
        done(&self.a).max(done(&self.b)) - first
    }

    fn show(&self) -> String {
        format!(
            "A {}, B {} (skew seen {:.1} ms)",
            self.a.show(),
            self.b.show(),
            self.real_skew_ms()
        )
    }

    /// Both connected and each read the other's line.
    fn assert_exchanged(&self, what: &str) {
        assert!(
            self.ok(),
            "{what}: {}\nA: {}\nB: {}",
            self.show(),
            self.a.raw,
            self.b.raw
        );
        for (me, peer) in [(&self.a, &self.b), (&self.b, &self.a)] {
            let want = format!("hello from {}", peer.local.as_deref().unwrap_or("?"));
            assert_eq!(
                me.line.as_deref(),
                Some(want.as_str()),
                "{what}: {}",
                me.raw
            );
        }
    }
}

/// A punch from fresh ports between `a` (starting first, with
/// `primer_ttl`) and `b` (`skew_ms` later, with `b_primer`), each dialing
/// the other's learned endpoint.
fn punch(
    reflector: SocketAddr,
    (a, primer_ttl): (&Host, Option<u32>),
    (b, b_primer): (&Host, Option<u32>),
    skew_ms: u64,
) -> Attempt {
    let (pa, pb) = (fresh_port(), fresh_port());
    let ea = a.observe(reflector, &[pa])[&pa];
    let eb = b.observe(reflector, &[pb])[&pb];
    let side = |host, port, remote, primer_ttl, delay_ms| Side {
        host,
        port,
        remote,
        primer_ttl,
        delay_ms,
        hold_ms: 0,
    };
    let mut out = run(&[
        side(a, pa, eb, primer_ttl, 0),
        side(b, pb, ea, b_primer, skew_ms),
    ])
    .into_iter();
    let (Some(a), Some(b)) = (out.next(), out.next()) else {
        unreachable!("two sides, two outcomes")
    };
    Attempt { a, b }
}

/// Runs `punch` `runs` times; prints and returns the attempts.
fn repeat(
    what: &str,
    reflector: SocketAddr,
    a: (&Host, Option<u32>),
    b: (&Host, Option<u32>),
    skew_ms: u64,
    runs: usize,
) -> Vec<Attempt> {
    let attempts: Vec<Attempt> = (0..runs).map(|_| punch(reflector, a, b, skew_ms)).collect();
    let ok = attempts.iter().filter(|t| t.ok()).count();
    eprintln!("{what}, skew {skew_ms} ms: {ok}/{runs} connected");
    for t in &attempts {
        eprintln!("    {}", t.show());
    }
    attempts
}

fn site(kind: NatKind, name: &'static str, inet: &Netns, subnet: u8) -> Host {
    Host {
        name,
        site: NatSite::build(kind, inet, subnet, |tag| Ok(netns(tag)))
            .unwrap_or_else(|e| panic!("{name}: {e}")),
    }
}

#[test]
fn hole_punching_through_each_kind_of_nat() {
    require_root();
    umbra_netlab::require_tools(&[("nft", "nftables", "to build NAT routers")])
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let dir = temp_dir("punch");
    // The "internet" (forwarding, so its routers answer a primer's death
    // with ICMP time exceeded) and the reflector on 198.18.1.0/24.
    let inet = netns("inet");
    Router::forwarding(&inet).expect("forwarding");
    let refl = netns("refl");
    let v = Veth::internet(&inet, &refl, 1).expect("veth");
    Router::route_via(&refl, v.a.ip).expect("route");
    let reflector = SocketAddr::new(v.b.ip.into(), REFLECTOR_PORT);
    let mut reflecting = Proc::spawn(
        {
            let mut c = refl.command(PROBE);
            c.args(["reflect", &reflector.to_string()]);
            c
        },
        &dir.path().join("reflector.log"),
    )
    .expect("start the reflector");
    umbra_netlab::poll(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "the reflector listens",
        |_| Ok(refl.listens_tcp(REFLECTOR_PORT).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e}: {}", reflecting.log_text()));

    let eim1 = site(NatKind::Eim, "eim-1", &inet, 11);
    let eim2 = site(NatKind::Eim, "eim-2", &inet, 12);
    let reset1 = site(NatKind::EimReset, "eim-reset-1", &inet, 13);
    let reset2 = site(NatKind::EimReset, "eim-reset-2", &inet, 14);
    let cgnat = site(NatKind::Cgnat, "cgnat", &inet, 15);
    let edm = site(NatKind::Edm, "edm", &inet, 16);
    let eim3 = site(NatKind::Eim, "eim-3", &inet, 17);
    eprintln!("lab built in {:.1} s", started.elapsed().as_secs_f64());

    std::thread::scope(|scope| {
        // Dropping routers: the SYNs meet, whoever goes first. Then a
        // third probe repeats the first one's 4-tuple while that
        // connection is still open.
        scope.spawn(|| {
            for skew in [0, 500] {
                for t in repeat(
                    "eim × eim, no primer",
                    reflector,
                    (&eim1, None),
                    (&eim2, None),
                    skew,
                    2,
                ) {
                    t.assert_exchanged(&format!("eim × eim, skew {skew} ms"));
                }
            }
            let (pa, pb) = (fresh_port(), fresh_port());
            let ea = eim1.observe(reflector, &[pa])[&pa];
            let eb = eim2.observe(reflector, &[pb])[&pb];
            let side = |host, port, remote, delay_ms, hold_ms| Side {
                host,
                port,
                remote,
                primer_ttl: None,
                delay_ms,
                hold_ms,
            };
            let out = run(&[
                side(&eim1, pa, eb, 0, 1500),
                side(&eim2, pb, ea, 0, 1500),
                side(&eim1, pa, eb, 700, 0),
            ]);
            eprintln!(
                "eim × eim, the same 4-tuple again while open: {}",
                out[2].show()
            );
            assert!(out[0].ok && out[1].ok, "{out:?}");
            assert_eq!(out[2].kind.as_deref(), Some("TupleInUse"), "{out:?}");
        });

        // Resetting routers: the primer (TTL 2: through the host's router,
        // dying at the internet's) on the side that goes first. B's SYN
        // then finds A in SYN-SENT, so A connects when B starts, well
        // before its own SYN's first retransmission (1 s).
        scope.spawn(|| {
            let what = "eim-reset × eim-reset, primer TTL 2 on A";
            for skew in [200, 500] {
                for t in repeat(
                    what,
                    reflector,
                    (&reset1, Some(2)),
                    (&reset2, None),
                    skew,
                    runs(),
                ) {
                    t.assert_exchanged(&format!("{what}, skew {skew} ms"));
                    assert!(t.a.elapsed_ms < RTO_MS, "{what}: {}", t.show());
                }
            }
            // At skew 0 which side really goes first is chance (the probes'
            // starts differ by a millisecond or so either way). When B's SYN
            // beats A's primer through A's router it is reset there (and
            // B's mapping with it), and A's retransmitted SYN is reset at
            // B's router: both are refused. The rate is shown, not
            // asserted; each attempt connects (at once, or a second later
            // when B's SYN came while A's connect() still ran and A's
            // SYN-ACK left with the primer's TTL) or fails. How it fails is
            // the same race again (both refused, or one side's SYN lost
            // while the other's retransmission times out), so only a
            // connection that forms is checked.
            let tries = repeat(
                &format!("{what} (rate not asserted)"),
                reflector,
                (&reset1, Some(2)),
                (&reset2, None),
                0,
                runs(),
            );
            for t in tries.iter().filter(|t| t.ok()) {
                t.assert_exchanged(&format!("{what}, skew 0 ms"));
            }
            // A primer on both sides takes the order out of it: neither SYN
            // reaches the other's router, and the first retransmission (1 s
            // after the earlier start) passes the other's fresh mapping.
            let what = "eim-reset × eim-reset, primer TTL 2 on both";
            for t in repeat(
                what,
                reflector,
                (&reset1, Some(2)),
                (&reset2, Some(2)),
                0,
                runs(),
            ) {
                t.assert_exchanged(&format!("{what}, skew 0 ms"));
                assert!(
                    t.connected_after_first_start_ms() >= RTO_MS,
                    "{what}: {}",
                    t.show()
                );
            }
            // Without it, the first SYN is reset at the far router (which
            // also drops its own side's mapping) and the second at the near
            // one.
            for t in repeat(
                "eim-reset × eim-reset, no primer",
                reflector,
                (&reset1, None),
                (&reset2, None),
                200,
                2,
            ) {
                for o in [&t.a, &t.b] {
                    assert_eq!(o.kind.as_deref(), Some("Refused"), "{}", t.show());
                }
            }
        });

        // Carrier-grade NAT: two NATs, so the primer needs TTL 3; against a
        // dropping router it needs none.
        scope.spawn(|| {
            for t in repeat(
                "cgnat × eim, no primer",
                reflector,
                (&cgnat, None),
                (&eim3, None),
                0,
                2,
            ) {
                t.assert_exchanged("cgnat × eim");
            }
            let what = "cgnat × eim-reset, primer TTL 3 on cgnat";
            for t in repeat(
                what,
                reflector,
                (&cgnat, Some(3)),
                (&reset2, None),
                200,
                runs(),
            ) {
                t.assert_exchanged(what);
                assert!(t.a.elapsed_ms < RTO_MS, "{what}: {}", t.show());
            }
        });

        // Endpoint-dependent mapping: the endpoint the reflector saw is not
        // the one the peer is dialed from, and both wait in vain.
        scope.spawn(|| {
            for t in repeat("edm × eim", reflector, (&edm, None), (&eim3, None), 0, 1) {
                for o in [&t.a, &t.b] {
                    assert_eq!(o.kind.as_deref(), Some("TimedOut"), "{}", t.show());
                    assert!(
                        o.elapsed_ms >= PUNCH_TIMEOUT_MS as f64 - 1.0
                            && o.elapsed_ms < PUNCH_TIMEOUT_MS as f64 + 500.0,
                        "{}",
                        t.show()
                    );
                }
            }
        });
    });
    reflecting.kill();
    eprintln!("hole punching: {:.1} s", started.elapsed().as_secs_f64());
}
