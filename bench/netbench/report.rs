//! The table, the JSON and the SVG chart of one run.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};
use umbra_bench::stats::{median, percentile};
use umbra_bench::svg::{Chart, Group, Panel};

use crate::overlay::System;
use crate::tor::{TorResult, TorSample};
use crate::{Options, R, STREAMS, TopoResult};

/// Everything one run measured.
pub(crate) struct Report<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) results: &'a [(System, usize, TopoResult)],
    /// The private Tor network, unless skipped.
    pub(crate) tor: Option<&'a TorResult>,
    pub(crate) baseline: Value,
    /// Load averages before and after.
    pub(crate) load: [Option<[f64; 3]>; 2],
    pub(crate) elapsed_s: f64,
}

/// Whether a bigger number is better.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One line of the table.
struct Row {
    name: String,
    unit: &'static str,
    better: Better,
    umbra: Option<f64>,
    ygg: Option<f64>,
    /// Stock tor (KIST) over 3 relays, where Tor has this measure.
    tor: Option<f64>,
    /// Tor with `Schedulers Vanilla`.
    tor_vanilla: Option<f64>,
}

/// `a / b` when both are there and `b` is positive.
fn quotient(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Row {
    /// umbra / Yggdrasil.
    fn ratio(&self) -> Option<f64> {
        quotient(self.umbra, self.ygg)
    }
    /// umbra / stock Tor.
    fn ratio_tor(&self) -> Option<f64> {
        quotient(self.umbra, self.tor)
    }
}

/// A Tor measure, of one scheduler's sample.
type TorMeasure = fn(&TorSample) -> Option<f64>;

/// The measures both the chain and Tor have: (name, unit, better, the
/// overlays' value, Tor's value).
type Shared = (
    &'static str,
    &'static str,
    Better,
    fn(&TopoResult) -> Option<f64>,
    TorMeasure,
);

/// Time to first byte and circuit build through 3 relays.
const SHARED: [Shared; 4] = [
    (
        "time to first byte, warm, median",
        "ms",
        Better::Lower,
        |r| median(&r.ttfb_ms),
        |t| median(&t.ttfb_ms),
    ),
    (
        "time to first byte, warm, p90",
        "ms",
        Better::Lower,
        |r| percentile(&r.ttfb_ms, 90.0),
        |t| percentile(&t.ttfb_ms, 90.0),
    ),
    (
        "circuit build through 3 relays, median",
        "ms",
        Better::Lower,
        |r| median(&r.end_to_end_builds()),
        |t| median(&t.builds_ms),
    ),
    (
        "circuit build through 3 relays, p90",
        "ms",
        Better::Lower,
        |r| percentile(&r.end_to_end_builds(), 90.0),
        |t| percentile(&t.builds_ms, 90.0),
    ),
];

fn topo_name(n: usize) -> String {
    match n {
        2 => "direct".into(),
        n => format!("{n}-node chain"),
    }
}

/// A topology's name where space is short (chart labels).
fn short_topo(n: usize) -> &'static str {
    if n == 2 { "direct" } else { "chain" }
}

fn cmd_line(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gib": mem_kib.map(|k| (k as f64 / 1_048_576.0 * 10.0).round() / 10.0),
        "kernel": cmd_line(&["uname", "-r"]),
    })
}

impl Report<'_> {
    fn get(&self, system: System, n: usize) -> Option<&TopoResult> {
        self.results
            .iter()
            .find(|(s, m, _)| *s == system && *m == n)
            .map(|(_, _, r)| r)
    }

    fn topologies(&self) -> Vec<usize> {
        let mut t: Vec<usize> = self.results.iter().map(|(_, n, _)| *n).collect();
        t.dedup();
        t
    }

    /// Added RTT per extra hop: (chain RTT − direct RTT) / extra hops.
    fn rtt_per_hop(&self, system: System) -> Option<f64> {
        let direct = self.get(system, 2)?.ping.avg()?;
        let (n, chain) = self
            .results
            .iter()
            .find(|(s, n, _)| *s == system && *n > 2)
            .map(|(_, n, r)| (*n, r))?;
        Some((chain.ping.avg()? - direct) / (n - 2) as f64)
    }

    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let pick = |n: usize, f: &dyn Fn(&TopoResult) -> Option<f64>| {
            (
                self.get(System::Umbra, n).and_then(f),
                self.get(System::Yggdrasil, n).and_then(f),
            )
        };
        let chain = self.chain();
        let tor = |f: TorMeasure| {
            (
                self.tor.and_then(|t| f(&t.kist)),
                self.tor.and_then(|t| f(&t.vanilla)),
            )
        };
        let none: (Option<f64>, Option<f64>) = (None, None);
        for n in self.topologies() {
            let t = topo_name(n);
            // Tor's figures sit beside the chain's (3 relays between the
            // ends in both).
            let on_chain = |f: TorMeasure| if Some(n) == chain { tor(f) } else { none };
            let mut push = |name: String, unit, better, (umbra, ygg), (tor, tor_vanilla)| {
                rows.push(Row {
                    name,
                    unit,
                    better,
                    umbra,
                    ygg,
                    tor,
                    tor_vanilla,
                })
            };
            for (s, streams) in STREAMS.iter().enumerate() {
                push(
                    format!("{t}: TCP, {streams} stream(s)"),
                    "Mbit/s",
                    Better::Higher,
                    pick(n, &|r| r.mbps(s)),
                    if s == 0 {
                        on_chain(TorSample::mbps)
                    } else {
                        none
                    },
                );
            }
            push(
                format!("{t}: RTT avg"),
                "ms",
                Better::Lower,
                pick(n, &|r| r.ping.avg()),
                none,
            );
            push(
                format!("{t}: RTT p99"),
                "ms",
                Better::Lower,
                pick(n, &|r| r.ping.p99()),
                none,
            );
            for (s, streams) in STREAMS.iter().enumerate() {
                push(
                    format!("{t}: CPU per GB, {streams} stream(s)"),
                    "s/GB",
                    Better::Lower,
                    pick(n, &|r| r.cpu_per_gb(s)),
                    if s == 0 {
                        on_chain(TorSample::cpu_per_gb)
                    } else {
                        none
                    },
                );
            }
            push(
                format!("{t}: memory per node, idle"),
                "MiB",
                Better::Lower,
                pick(n, &|r| r.rss_idle_mib()),
                none,
            );
            push(
                format!("{t}: memory per node, idle, anonymous"),
                "MiB",
                Better::Lower,
                pick(n, &|r| r.rss_idle_anon_mib()),
                none,
            );
            push(
                format!("{t}: memory, busiest node, load"),
                "MiB",
                Better::Lower,
                pick(n, &|r| r.rss_load_max_mib()),
                none,
            );
            push(
                format!("{t}: first packet to new dest, median"),
                "ms",
                Better::Lower,
                pick(n, &|r| median(&r.first_rtts())),
                none,
            );
            push(
                format!("{t}: circuit build, median"),
                "ms",
                Better::Lower,
                pick(n, &|r| median(&r.builds())),
                none,
            );
            push(
                format!("{t}: circuit build, p90"),
                "ms",
                Better::Lower,
                pick(n, &|r| percentile(&r.builds(), 90.0)),
                none,
            );
            if Some(n) == chain {
                for (name, unit, better, f, tf) in SHARED {
                    push(format!("{t}: {name}"), unit, better, pick(n, &f), tor(tf));
                }
            }
        }
        if chain.is_none() && self.tor.is_some() {
            // Tor alone (`--only tor`).
            let t = "Tor, 3 relays";
            let mut push = |name: String, unit, better, (tor, tor_vanilla)| {
                rows.push(Row {
                    name,
                    unit,
                    better,
                    umbra: None,
                    ygg: None,
                    tor,
                    tor_vanilla,
                })
            };
            push(
                format!("{t}: TCP, 1 stream(s)"),
                "Mbit/s",
                Better::Higher,
                tor(TorSample::mbps),
            );
            push(
                format!("{t}: CPU per GB, 1 stream(s)"),
                "s/GB",
                Better::Lower,
                tor(TorSample::cpu_per_gb),
            );
            for (name, unit, better, _, tf) in SHARED {
                push(format!("{t}: {name}"), unit, better, tor(tf));
            }
        }
        if self.topologies().len() > 1 {
            rows.push(Row {
                name: "added RTT per hop".into(),
                unit: "ms",
                better: Better::Lower,
                umbra: self.rtt_per_hop(System::Umbra),
                ygg: self.rtt_per_hop(System::Yggdrasil),
                tor: None,
                tor_vanilla: None,
            });
        }
        rows
    }

    /// The chain's node count, if the run had one.
    fn chain(&self) -> Option<usize> {
        self.topologies().into_iter().find(|&n| n > 2)
    }

    /// The targets (ratios to Yggdrasil the benchmark is held to): (what,
    /// ratio or value, target met).
    fn targets(&self) -> Vec<(String, Option<f64>, Option<bool>)> {
        // The data path's targets (docs/architecture.md, "Performance").
        let ratio = |n: usize, f: &dyn Fn(&TopoResult) -> Option<f64>| {
            let u = f(self.get(System::Umbra, n)?)?;
            let y = f(self.get(System::Yggdrasil, n)?)?;
            Some(u / y)
        };
        let mut t = Vec::new();
        for (s, streams) in STREAMS.iter().enumerate() {
            let r = ratio(2, &|x| x.mbps(s));
            t.push((
                format!("direct throughput ({streams} stream(s)) >= 2x"),
                r,
                r.map(|r| r >= 2.0),
            ));
        }
        if let Some(n) = self.chain() {
            for (s, streams) in STREAMS.iter().enumerate() {
                let r = ratio(n, &|x| x.mbps(s));
                t.push((
                    format!("chain throughput ({streams} stream(s)) >= 1.5x"),
                    r,
                    r.map(|r| r >= 1.5),
                ));
            }
            let cpu = ratio(n, &|x| x.cpu_per_gb(0));
            t.push((
                "chain CPU per GB (1 stream) <= 0.6x".into(),
                cpu,
                cpu.map(|r| r <= 0.6),
            ));
            let hop = self
                .rtt_per_hop(System::Umbra)
                .zip(self.rtt_per_hop(System::Yggdrasil));
            t.push((
                "added RTT per hop <= 0.8x".into(),
                hop.map(|(u, y)| u / y),
                hop.map(|(u, y)| u <= 0.8 * y),
            ));
        }
        let mem = self
            .get(System::Umbra, 2)
            .and_then(TopoResult::rss_idle_mib)
            .zip(
                self.get(System::Yggdrasil, 2)
                    .and_then(TopoResult::rss_idle_mib),
            );
        t.push((
            "idle memory per node <= 1.0x".into(),
            mem.map(|(u, y)| u / y),
            mem.map(|(u, y)| u <= y),
        ));
        if let Some(tor) = self.tor {
            let chain = self.chain().and_then(|n| self.get(System::Umbra, n));
            let thr = quotient(chain.and_then(|r| r.mbps(0)), tor.kist.mbps());
            t.push((
                "chain throughput >= 20x stock Tor's (3 relays)".into(),
                thr,
                thr.map(|r| r >= 20.0),
            ));
            let ttfb = quotient(
                chain.and_then(|r| median(&r.ttfb_ms)),
                median(&tor.kist.ttfb_ms),
            );
            t.push((
                "time to first byte <= 0.2x stock Tor's".into(),
                ttfb,
                ttfb.map(|r| r <= 0.2),
            ));
        }
        t
    }

    fn subtitle(&self) -> String {
        let m = machine();
        format!(
            "{} | {} × {} | load {} | {}",
            cmd_line(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            m["cores"],
            m["cpu"].as_str().unwrap_or("?"),
            self.load[0]
                .map(|l| format!("{:.2}", l[0]))
                .unwrap_or_else(|| "?".into()),
            if self.opts.quick {
                "--quick"
            } else {
                "full run"
            },
        )
    }

    /// The table for people.
    pub(crate) fn table(&self) -> String {
        let fmt = |v: Option<f64>| match v {
            Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
            Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
            Some(v) => format!("{v:.3}"),
            None => "-".into(),
        };
        let times = |v: Option<f64>| match v {
            Some(x) if x >= 10.0 => format!("{x:.1}x"),
            Some(x) => format!("{x:.2}x"),
            None => "-".into(),
        };
        let mut s = String::new();
        let _ = writeln!(s, "\n{} — {}", self.title(), self.subtitle());
        let _ = writeln!(
            s,
            "{:<56} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
            "measure", "unit", "umbra", "yggdrasil", "u/y", "tor", "tor-van", "u/tor"
        );
        for r in self.rows() {
            let arrow = match r.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let _ = writeln!(
                s,
                "{:<56} {:>6} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
                format!("{} {arrow}", r.name),
                r.unit,
                fmt(r.umbra),
                fmt(r.ygg),
                times(r.ratio()),
                fmt(r.tor),
                fmt(r.tor_vanilla),
                times(r.ratio_tor()),
            );
        }
        if let Some(t) = self.tor {
            let _ = writeln!(
                s,
                "tor: stock = KIST scheduler, tor-van = Schedulers Vanilla; bootstrap {:.0} s, \
                 first fetch {:.0} s, the Tor part {:.0} s",
                t.bootstrap_s, t.ready_s, t.elapsed_s
            );
        }
        if let Some(line) = self
            .chain()
            .and_then(|n| self.get(System::Umbra, n))
            .and_then(|r| r.socks.as_ref().map(|k| (r, k)))
            .map(|(r, k)| {
                format!(
                    "umbra chain, SOCKS5 (userspace TCP) against the TUN: HTTP bulk {} against {} \
                     Mbit/s ({}), time to first byte median {} against {} ms",
                    fmt(Some(k.bulk_socks_mbps)),
                    fmt(Some(k.bulk_tun_mbps)),
                    times(quotient(Some(k.bulk_socks_mbps), Some(k.bulk_tun_mbps))),
                    fmt(median(&k.ttfb_ms)),
                    fmt(median(&r.ttfb_ms)),
                )
            })
        {
            let _ = writeln!(s, "{line}");
        }
        if let Some(v) = self.baseline["tcp_1_mbps"].as_f64() {
            let _ = writeln!(
                s,
                "plain veth: TCP 1 stream {v:.0} Mbit/s, RTT avg {} ms",
                fmt(self.baseline["ping"]["avg_ms"].as_f64())
            );
        }
        let _ = writeln!(s, "\ntargets:");
        for (what, ratio, met) in self.targets() {
            let _ = writeln!(
                s,
                "  {:<48} {:>7}  {}",
                what,
                times(ratio),
                match met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "not measured",
                }
            );
        }
        s
    }

    /// The heading, naming the systems the run measured.
    fn title(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        if self.results.iter().any(|(s, _, _)| *s == System::Umbra) {
            names.push("umbra");
        }
        if self.results.iter().any(|(s, _, _)| *s == System::Yggdrasil) {
            names.push("Yggdrasil 0.4.7");
        }
        let tor = self
            .tor
            .map(|_| crate::tor::tor_version().unwrap_or_else(|| "Tor".into()));
        if let Some(t) = &tor {
            names.push(t);
        }
        names.join(" vs ")
    }

    fn json(&self) -> Value {
        let mut systems = serde_json::Map::new();
        for (system, n, r) in self.results {
            let entry = systems.entry(system.key()).or_insert_with(|| json!({}));
            entry[topo_name(*n)] = r.json();
        }
        if let Some(t) = self.tor {
            systems.insert("tor".into(), t.json());
        }
        json!({
            "date": cmd_line(&["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            "machine": machine(),
            "load_average_before": self.load[0],
            "load_average_after": self.load[1],
            "elapsed_s": self.elapsed_s,
            "options": {
                "quick": self.opts.quick, "iperf3_secs": self.opts.secs,
                "runs": self.opts.runs, "pings": self.opts.pings,
                "rounds": self.opts.rounds,
            },
            "versions": {
                "umbra_commit": cmd_line(&["git", "-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short", "HEAD"]),
                "umbra_binary": self.opts.bins.umbra.display().to_string(),
                "umbra_release_build": self.opts.bins.umbra.to_string_lossy().contains("/release/"),
                "yggdrasil": cmd_line(&["dpkg-query", "-W", "-f", "${Version}", "yggdrasil"]),
                "tor": self.tor.and_then(|_| cmd_line(&["dpkg-query", "-W", "-f", "${Version}", "tor"])),
            },
            "baseline_veth": self.baseline,
            "results": systems,
            "rows": self.rows().iter().map(|r| json!({
                "measure": r.name, "unit": r.unit,
                "better": if r.better == Better::Higher { "higher" } else { "lower" },
                "umbra": r.umbra, "yggdrasil": r.ygg, "ratio": r.ratio(),
                "tor": r.tor, "tor_vanilla": r.tor_vanilla, "ratio_tor": r.ratio_tor(),
            })).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|(what, ratio, met)| json!({
                "target": what, "ratio": ratio, "met": met,
            })).collect::<Vec<_>>(),
        })
    }

    fn chart(&self) -> Chart {
        let topos = self.topologies();
        let chain = self.chain();
        let tor_values = |f: Option<TorMeasure>| {
            let f = f.and_then(|f| self.tor.map(|t| (f(&t.kist), f(&t.vanilla))));
            let (k, v) = f.unwrap_or((None, None));
            [k, v]
        };
        // umbra, Yggdrasil, then Tor where `tf` gives it a value.
        let group = |label: String,
                     f: &dyn Fn(&TopoResult) -> Option<f64>,
                     n: Option<usize>,
                     tf: Option<TorMeasure>| Group {
            label,
            values: [System::Umbra, System::Yggdrasil]
                .iter()
                .map(|&s| n.and_then(|n| self.get(s, n)).and_then(f))
                .chain(tor_values(tf))
                .collect(),
        };
        let per_topo = |f: &dyn Fn(&TopoResult, usize) -> Option<f64>,
                        with_streams: bool,
                        tf: Option<TorMeasure>| {
            let mut g = Vec::new();
            for &n in &topos {
                // Tor sits beside the chain's single stream.
                let t = |s: usize| tf.filter(|_| Some(n) == chain && s == 0);
                if with_streams {
                    for (s, streams) in STREAMS.iter().enumerate() {
                        g.push(group(
                            format!("{} -P {streams}", short_topo(n)),
                            &|r| f(r, s),
                            Some(n),
                            t(s),
                        ));
                    }
                } else {
                    g.push(group(topo_name(n), &|r| f(r, 0), Some(n), t(0)));
                }
            }
            if chain.is_none() && tf.is_some() && self.tor.is_some() {
                g.push(group("Tor, 3 relays".into(), &|_| None, None, tf));
            }
            g
        };
        let shared = |from: usize| {
            SHARED[from..from + 2]
                .iter()
                .map(|(name, _, _, f, tf)| {
                    let label = name.rsplit(", ").next().unwrap_or(name).to_string();
                    group(label, f, chain, Some(*tf))
                })
                .collect::<Vec<_>>()
        };
        let mut series = vec!["umbra".to_string(), "Yggdrasil 0.4.7".to_string()];
        if self.tor.is_some() {
            series.extend(["Tor (KIST)".to_string(), "Tor (Vanilla)".to_string()]);
        }
        Chart {
            title: format!("{} in network namespaces", self.title()),
            subtitle: self.subtitle(),
            series,
            panels: vec![
                Panel {
                    title: "TCP throughput, median (higher is better)".into(),
                    unit: "Mbit/s".into(),
                    groups: per_topo(&|r, s| r.mbps(s), true, Some(TorSample::mbps)),
                },
                Panel {
                    title: "ping RTT avg (lower is better)".into(),
                    unit: "ms".into(),
                    groups: per_topo(&|r, _| r.ping.avg(), false, None),
                },
                Panel {
                    title: "daemon CPU per GB moved (lower is better)".into(),
                    unit: "CPU s/GB".into(),
                    groups: per_topo(&|r, s| r.cpu_per_gb(s), true, Some(TorSample::cpu_per_gb)),
                },
                Panel {
                    title: "memory per node, idle (lower is better)".into(),
                    unit: "MiB".into(),
                    groups: per_topo(&|r, _| r.rss_idle_mib(), false, None),
                },
                Panel {
                    title: "time to first byte, 3 relays, warm (lower is better)".into(),
                    unit: "ms".into(),
                    groups: shared(0),
                },
                Panel {
                    title: "circuit build through 3 relays (lower is better)".into(),
                    unit: "ms".into(),
                    groups: shared(2),
                },
            ],
        }
    }

    /// Writes `<date>.json`, `latest.json` and `latest.svg` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> R<()> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let stamp = cmd_line(&["date", "-u", "+%Y-%m-%dT%H%MZ"]).unwrap_or_else(|| "run".into());
        let text = serde_json::to_string_pretty(&self.json()).map_err(|e| e.to_string())? + "\n";
        for name in [format!("{stamp}.json"), "latest.json".into()] {
            let p = dir.join(name);
            std::fs::write(&p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let p = dir.join("latest.svg");
        std::fs::write(&p, self.chart().render()).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!(
            "netbench: wrote {} ({stamp}.json, latest.json, latest.svg)",
            dir.display()
        );
        Ok(())
    }
}
