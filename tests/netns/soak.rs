//! A soak with churn (docs/architecture.md, "Faults"): 12 real daemons in a
//! ring with chords (each node linked to the next and to the third next),
//! 3 % packet loss on four links (nftables `numgen`, since this kernel has no
//! netem), an iperf3 flow and a ping flow running throughout between nodes
//! that are never touched, while random other nodes are SIGKILLed and
//! restarted, random links are cut and restored, and one node reloads its
//! config with SIGHUP every minute.
//!
//! It records flows that stalled for more than 10 s, agreements lost, each
//! node's RSS and open files over time, and panics in any log, and fails on
//! a stall, a lost agreement, a panic, or RSS or files that keep growing.
//!
//! CI runs the 3-minute version; the 20-minute one is ignored by default:
//! `cargo nextest run -p umbra-tests --test netns_soak --run-ignored only`.
//! `UMBRA_SOAK_SEED` replays a run's choices.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use umbra_netlab::{IperfServer, PingOptions};
use umbra_tests::netns::overlay::Overlay;
use umbra_tests::netns::require_root;

const NODES: usize = 12;
/// The iperf3 flow's ends and the ping flow's: never killed, cut or lossy.
const IPERF: (usize, usize) = (0, 6);
const PING: (usize, usize) = (4, 10);
/// The node that reloads its config every minute (a flow's end, so the
/// reload is seen to leave traffic alone).
const RELOADS: usize = 6;
/// A flow without progress this long has stalled.
const STALL: f64 = 10.0;

fn edges() -> Vec<(usize, usize)> {
    let mut e: Vec<(usize, usize)> = (0..NODES)
        .flat_map(|i| [(i, (i + 1) % NODES), (i, (i + 3) % NODES)])
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect();
    e.sort_unstable();
    e.dedup();
    e
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// xorshift64*: the soak's choices, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// Resident memory (KiB) and open files of `pid`.
fn rss_and_fds(pid: u32) -> (u64, usize) {
    let rss = umbra_netlab::rss_kib(pid).unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// The longest time in `[start, end]` without a progress mark, and when it
/// began.
fn longest_gap(marks: &[f64], start: f64, end: f64) -> (f64, f64) {
    let mut prev = start;
    let mut longest = (0.0, start);
    for &t in marks.iter().filter(|&&t| t >= start && t <= end) {
        if t - prev > longest.0 {
            longest = (t - prev, prev);
        }
        prev = t;
    }
    if end - prev > longest.0 {
        longest = (end - prev, prev);
    }
    longest
}

fn agreements(o: &Overlay, i: usize) -> usize {
    o.daemons[i]
        .cli_json(&["agreements", "--json"])
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

fn panics(log: &str) -> usize {
    log.matches("panicked").count()
}

fn soak(length: Duration) {
    require_root();
    let seed = std::env::var("UMBRA_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| unix_now() as u64 | 1);
    eprintln!(
        "soak: {} s, seed {seed} (UMBRA_SOAK_SEED replays it)",
        length.as_secs()
    );
    let mut rng = Rng(seed);
    let edges = edges();
    let mut o = Overlay::build("sk", NODES, &edges, |_, _| {
        "anonymity = \"fast\"".to_string()
    });
    let agreements_before: Vec<usize> = (0..NODES).map(|i| agreements(&o, i)).collect();
    let touchable: Vec<usize> = (0..NODES)
        .filter(|i| ![IPERF.0, IPERF.1, PING.0, PING.1].contains(i))
        .collect();
    // 3 % loss into both ends of four links between touchable nodes.
    let lossy: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|(a, b)| touchable.contains(a) && touchable.contains(b))
        .take(4)
        .collect();
    for &(a, b) in &lossy {
        for (x, y) in [(a, b), (b, a)] {
            let dev = umbra_netlab::numbered(x, y).0;
            let rules = format!(
                "add table inet loss; add chain inet loss in {{ type filter hook input priority 0; }}; \
                 add rule inet loss in iifname \"{dev}\" numgen random mod 100 < 3 drop"
            );
            let out = o.ns[x].run(&["nft", &rules]).expect("nft");
            assert!(
                out.status.success(),
                "nft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let mut server = IperfServer::start(
        &o.ns[IPERF.1],
        &o.addrs[IPERF.1],
        &o.dir.path().join("iperf3.log"),
        false,
    )
    .expect("iperf3 server");
    let start = unix_now();
    let deadline = Instant::now() + length;
    let mut panics_seen = 0;
    let mut samples: BTreeMap<usize, Vec<(u64, usize)>> = BTreeMap::new();
    let mut events = Vec::new();

    let Overlay {
        daemons, ns, addrs, ..
    } = &mut o;
    let ((iperf_marks, iperf_failures), ping_marks) = std::thread::scope(|s| {
        let (ins, iaddr) = (&ns[IPERF.0], addrs[IPERF.1].clone());
        let iperf = s.spawn(move || {
            let mut marks = Vec::new();
            let mut failures = Vec::new();
            while Instant::now() + Duration::from_secs(5) < deadline {
                let secs = deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .clamp(1, 30)
                    .to_string();
                let began = unix_now();
                let out = ins
                    .run(&[
                        "iperf3",
                        "-6",
                        "-J",
                        "-c",
                        &iaddr,
                        "-t",
                        &secs,
                        "-i",
                        "1",
                        "-b",
                        "10M",
                        "--connect-timeout",
                        "3000",
                    ])
                    .expect("run iperf3");
                let report: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                for i in report["intervals"].as_array().into_iter().flatten() {
                    if i["sum"]["bytes"].as_u64() > Some(0) {
                        marks.push(began + i["sum"]["end"].as_f64().unwrap_or(0.0));
                    }
                }
                if !out.status.success() {
                    failures.push(format!(
                        "{:.0} s: iperf3 failed: {}",
                        began - start,
                        report["error"].as_str().unwrap_or("(no report)")
                    ));
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            (marks, failures)
        });
        let (pns, paddr) = (&ns[PING.0], addrs[PING.1].clone());
        let count = (length.as_secs() * 5) as usize;
        let ping = s.spawn(move || {
            let opts = PingOptions {
                wait_secs: 2,
                timestamps: true,
                ..PingOptions::new(count, 0.2)
            };
            umbra_netlab::ping(pns, &paddr, opts)
                .map(|p| p.replies.iter().filter_map(|r| r.at).collect::<Vec<f64>>())
                .unwrap_or_default()
        });

        let mut down: Option<(usize, Instant)> = None;
        let mut cut: Option<((usize, usize), Instant)> = None;
        let mut tick = 0u64;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            tick += 1;
            let now = Instant::now();
            if let Some((i, back_at)) = down
                && now >= back_at
            {
                daemons[i].start(&ns[i]).expect("restart a node");
                events.push(format!("{:.0} s: node {i} restarted", unix_now() - start));
                down = None;
            } else if down.is_none() && tick % 20 == 7 && now + Duration::from_secs(20) < deadline {
                let i = touchable[rng.below(touchable.len())];
                panics_seen += panics(&daemons[i].log_text());
                daemons[i].signal("KILL").expect("SIGKILL a node");
                let _ = daemons[i].wait(Duration::from_secs(5));
                let secs = 5 + rng.below(10) as u64;
                events.push(format!(
                    "{:.0} s: node {i} killed for {secs} s",
                    unix_now() - start
                ));
                down = Some((i, now + Duration::from_secs(secs)));
            }
            if let Some(((a, b), back_at)) = cut
                && now >= back_at
            {
                let dev = umbra_netlab::numbered(a, b).0;
                ns[a]
                    .exec(&["ip", "link", "set", &dev, "up"])
                    .expect("restore a link");
                events.push(format!(
                    "{:.0} s: link {a}-{b} restored",
                    unix_now() - start
                ));
                cut = None;
            } else if cut.is_none() && tick % 25 == 12 && now + Duration::from_secs(25) < deadline {
                let (a, b) = edges[rng.below(edges.len())];
                let dev = umbra_netlab::numbered(a, b).0;
                ns[a]
                    .exec(&["ip", "link", "set", &dev, "down"])
                    .expect("cut a link");
                let secs = 10 + rng.below(10) as u64;
                events.push(format!(
                    "{:.0} s: link {a}-{b} cut for {secs} s",
                    unix_now() - start
                ));
                cut = Some(((a, b), now + Duration::from_secs(secs)));
            }
            if tick % 60 == 30 {
                daemons[RELOADS].signal("HUP").expect("SIGHUP");
            }
            if tick.is_multiple_of(10) {
                for (i, d) in daemons.iter().enumerate() {
                    if down.is_none_or(|(k, _)| k != i)
                        && let Some(pid) = d.pid()
                    {
                        samples.entry(i).or_default().push(rss_and_fds(pid));
                    }
                }
            }
        }
        if let Some((i, _)) = down {
            daemons[i].start(&ns[i]).expect("restart a node");
        }
        if let Some(((a, b), _)) = cut {
            let dev = umbra_netlab::numbered(a, b).0;
            ns[a]
                .exec(&["ip", "link", "set", &dev, "up"])
                .expect("restore a link");
        }
        (
            iperf.join().expect("iperf3 thread"),
            ping.join().expect("ping thread"),
        )
    });
    let _ = server.proc.kill();
    let end = start + length.as_secs_f64() - 5.0;
    let (iperf_stall, iperf_stall_at) = longest_gap(&iperf_marks, start + 5.0, end);
    let (ping_stall, ping_stall_at) = longest_gap(&ping_marks, start + 5.0, end);
    events.extend(iperf_failures);
    // Agreements are stored: every node still has each of its own once its
    // restarted daemon answers.
    std::thread::sleep(Duration::from_secs(2));
    let agreements_after: Vec<usize> = (0..NODES).map(|i| agreements(&o, i)).collect();
    panics_seen += o
        .daemons
        .iter()
        .map(|d| panics(&d.log_text()))
        .sum::<usize>();
    // Growth: the last third of each node's samples against the first third.
    let mut growth = Vec::new();
    for (i, s) in &samples {
        let third = (s.len() / 3).max(1);
        let avg = |xs: &[(u64, usize)], f: fn(&(u64, usize)) -> f64| {
            xs.iter().map(f).sum::<f64>() / xs.len().max(1) as f64
        };
        let (first, last) = (&s[..third], &s[s.len() - third..]);
        let rss = (avg(first, |x| x.0 as f64), avg(last, |x| x.0 as f64));
        let fds = (avg(first, |x| x.1 as f64), avg(last, |x| x.1 as f64));
        growth.push((*i, rss, fds));
    }
    events.sort_by_key(|e| e.split(' ').next().and_then(|n| n.parse::<u64>().ok()));
    eprintln!("soak events:\n  {}", events.join("\n  "));
    eprintln!(
        "soak: longest stall iperf3 {iperf_stall:.1} s from {:.0} s, ping {ping_stall:.1} s from \
         {:.0} s ({} and {} progress marks); agreements before {agreements_before:?}, after \
         {agreements_after:?}; panics {panics_seen}",
        iperf_stall_at - start,
        ping_stall_at - start,
        iperf_marks.len(),
        ping_marks.len()
    );
    for (i, rss, fds) in &growth {
        eprintln!(
            "soak: node {i}: RSS {:.0} → {:.0} KiB, files {:.0} → {:.0} (first third → last third \
             of {} samples)",
            rss.0,
            rss.1,
            fds.0,
            fds.1,
            samples[i].len()
        );
    }
    // The flows' ends are never restarted: their logs are whole.
    let warnings = |i: usize| -> String {
        o.daemons[i]
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        iperf_stall <= STALL && ping_stall <= STALL,
        "a flow stalled: iperf3 {iperf_stall:.1} s, ping {ping_stall:.1} s; events:\n{}\n\
         warnings of node {} (iperf3 client):\n{}\nwarnings of node {} (server):\n{}",
        events.join("\n"),
        IPERF.0,
        warnings(IPERF.0),
        IPERF.1,
        warnings(IPERF.1)
    );
    assert_eq!(agreements_after, agreements_before, "agreements lost");
    assert_eq!(panics_seen, 0, "panics in the logs:\n{}", o.logs());
    for (i, rss, fds) in growth {
        // Flat, within what a restart and the flows' buffers move: a leak
        // grows with time, and 20 minutes shows it.
        assert!(
            rss.1 < rss.0 * 1.5 + 8192.0,
            "node {i}: RSS grew {:.0} → {:.0} KiB",
            rss.0,
            rss.1
        );
        assert!(
            fds.1 < fds.0 * 1.5 + 16.0,
            "node {i}: files grew {:.0} → {:.0}",
            fds.0,
            fds.1
        );
    }
}

#[test]
fn soak_with_churn_for_3_minutes() {
    soak(Duration::from_secs(180));
}

#[test]
#[ignore = "20 minutes: run it with --run-ignored only"]
fn soak_with_churn_for_20_minutes() {
    soak(Duration::from_secs(1200));
}
