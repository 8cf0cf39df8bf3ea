//! The table, the JSON and the SVG chart of one run.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};
use umbra_bench::stats::{median, percentile};
use umbra_bench::svg::{Chart, Group, Panel};

use crate::overlay::System;
use crate::{Options, R, STREAMS, TopoResult};

/// Everything one run measured.
pub(crate) struct Report<'a> {
    pub(crate) opts: &'a Options,
    pub(crate) results: &'a [(System, usize, TopoResult)],
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
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (self.umbra, self.ygg) {
            (Some(u), Some(y)) if y > 0.0 => Some(u / y),
            _ => None,
        }
    }
}

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
        for n in self.topologies() {
            let t = topo_name(n);
            let mut push = |name: String, unit, better, (umbra, ygg)| {
                rows.push(Row {
                    name,
                    unit,
                    better,
                    umbra,
                    ygg,
                })
            };
            for (s, streams) in STREAMS.iter().enumerate() {
                push(
                    format!("{t}: TCP, {streams} stream(s)"),
                    "Mbit/s",
                    Better::Higher,
                    pick(n, &|r| r.mbps(s)),
                );
            }
            push(
                format!("{t}: RTT avg"),
                "ms",
                Better::Lower,
                pick(n, &|r| r.ping.avg()),
            );
            push(
                format!("{t}: RTT p99"),
                "ms",
                Better::Lower,
                pick(n, &|r| r.ping.p99()),
            );
            for (s, streams) in STREAMS.iter().enumerate() {
                push(
                    format!("{t}: CPU per GB, {streams} stream(s)"),
                    "s/GB",
                    Better::Lower,
                    pick(n, &|r| r.cpu_per_gb(s)),
                );
            }
            push(
                format!("{t}: memory per node, idle"),
                "MiB",
                Better::Lower,
                pick(n, &|r| r.rss_idle_mib()),
            );
            push(
                format!("{t}: memory per node, idle, anonymous"),
                "MiB",
                Better::Lower,
                pick(n, &|r| r.rss_idle_anon_mib()),
            );
            push(
                format!("{t}: memory, busiest node, load"),
                "MiB",
                Better::Lower,
                pick(n, &|r| r.rss_load_max_mib()),
            );
            push(
                format!("{t}: first packet to new dest, median"),
                "ms",
                Better::Lower,
                pick(n, &|r| median(&r.first_rtts())),
            );
            push(
                format!("{t}: circuit build, median"),
                "ms",
                Better::Lower,
                pick(n, &|r| median(&r.builds())),
            );
            push(
                format!("{t}: circuit build, p90"),
                "ms",
                Better::Lower,
                pick(n, &|r| percentile(&r.builds(), 90.0)),
            );
        }
        if self.topologies().len() > 1 {
            rows.push(Row {
                name: "added RTT per hop".into(),
                unit: "ms",
                better: Better::Lower,
                umbra: self.rtt_per_hop(System::Umbra),
                ygg: self.rtt_per_hop(System::Yggdrasil),
            });
        }
        rows
    }

    /// The targets (ratios to Yggdrasil the benchmark is held to): (what,
    /// ratio or value, target met).
    fn targets(&self) -> Vec<(String, Option<f64>, Option<bool>)> {
        let ratio = |n: usize, s: usize| {
            let u = self.get(System::Umbra, n)?.mbps(s)?;
            let y = self.get(System::Yggdrasil, n)?.mbps(s)?;
            Some(u / y)
        };
        let mut t = Vec::new();
        for (s, streams) in STREAMS.iter().enumerate() {
            let r = ratio(2, s);
            t.push((
                format!("direct throughput ({streams} stream(s)) >= 1.5x"),
                r,
                r.map(|r| r >= 1.5),
            ));
        }
        if let Some(n) = self.topologies().into_iter().find(|&n| n > 2) {
            for (s, streams) in STREAMS.iter().enumerate() {
                let r = ratio(n, s);
                t.push((
                    format!("chain throughput ({streams} stream(s)) >= 1.0x"),
                    r,
                    r.map(|r| r >= 1.0),
                ));
            }
            let hop = self
                .rtt_per_hop(System::Umbra)
                .zip(self.rtt_per_hop(System::Yggdrasil));
            t.push((
                "added RTT per hop <= Yggdrasil's".into(),
                hop.map(|(u, y)| u / y),
                hop.map(|(u, y)| u <= y),
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
            "idle memory per node <= Yggdrasil's".into(),
            mem.map(|(u, y)| u / y),
            mem.map(|(u, y)| u <= y),
        ));
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
        let mut s = String::new();
        let _ = writeln!(s, "\numbra vs Yggdrasil 0.4.7 — {}", self.subtitle());
        let _ = writeln!(
            s,
            "{:<50} {:>7} {:>10} {:>10} {:>7}",
            "measure", "unit", "umbra", "yggdrasil", "ratio"
        );
        for r in self.rows() {
            let arrow = match r.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let _ = writeln!(
                s,
                "{:<50} {:>7} {:>10} {:>10} {:>7}",
                format!("{} {arrow}", r.name),
                r.unit,
                fmt(r.umbra),
                fmt(r.ygg),
                r.ratio().map(|x| format!("{x:.2}x")).unwrap_or("-".into())
            );
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
                ratio.map(|r| format!("{r:.2}x")).unwrap_or("-".into()),
                match met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "not measured",
                }
            );
        }
        s
    }

    fn json(&self) -> Value {
        let mut systems = serde_json::Map::new();
        for (system, n, r) in self.results {
            let entry = systems.entry(system.key()).or_insert_with(|| json!({}));
            entry[topo_name(*n)] = r.json();
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
            },
            "baseline_veth": self.baseline,
            "results": systems,
            "rows": self.rows().iter().map(|r| json!({
                "measure": r.name, "unit": r.unit,
                "better": if r.better == Better::Higher { "higher" } else { "lower" },
                "umbra": r.umbra, "yggdrasil": r.ygg, "ratio": r.ratio(),
            })).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|(what, ratio, met)| json!({
                "target": what, "ratio": ratio, "met": met,
            })).collect::<Vec<_>>(),
        })
    }

    fn chart(&self) -> Chart {
        let topos = self.topologies();
        let group = |label: String, f: &dyn Fn(&TopoResult) -> Option<f64>, n: usize| Group {
            label,
            values: [System::Umbra, System::Yggdrasil]
                .iter()
                .map(|&s| self.get(s, n).and_then(f))
                .collect(),
        };
        let per_topo = |f: &dyn Fn(&TopoResult, usize) -> Option<f64>, with_streams: bool| {
            let mut g = Vec::new();
            for &n in &topos {
                if with_streams {
                    for (s, streams) in STREAMS.iter().enumerate() {
                        g.push(group(
                            format!("{} -P {streams}", short_topo(n)),
                            &|r| f(r, s),
                            n,
                        ));
                    }
                } else {
                    g.push(group(topo_name(n), &|r| f(r, 0), n));
                }
            }
            g
        };
        Chart {
            title: "umbra vs Yggdrasil 0.4.7 in network namespaces".into(),
            subtitle: self.subtitle(),
            series: vec!["umbra".into(), "Yggdrasil 0.4.7".into()],
            panels: vec![
                Panel {
                    title: "iperf3 TCP throughput, median (higher is better)".into(),
                    unit: "Mbit/s".into(),
                    groups: per_topo(&|r, s| r.mbps(s), true),
                },
                Panel {
                    title: "ping RTT avg (lower is better)".into(),
                    unit: "ms".into(),
                    groups: per_topo(&|r, _| r.ping.avg(), false),
                },
                Panel {
                    title: "daemon CPU per GB moved (lower is better)".into(),
                    unit: "CPU s/GB".into(),
                    groups: per_topo(&|r, s| r.cpu_per_gb(s), true),
                },
                Panel {
                    title: "memory per node, idle (lower is better)".into(),
                    unit: "MiB".into(),
                    groups: per_topo(&|r, _| r.rss_idle_mib(), false),
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
