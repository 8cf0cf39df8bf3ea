//! `netbench --nat`: the NAT matrix measured (docs/architecture.md, "NAT
//! traversal"). The same lab as the matrix test (`umbra_netlab::NatMatrix`):
//! every pair of NAT kinds, each pair with an agreement naming no endpoint,
//! and P and Q that everyone links to. For each cell: the link kind and the
//! time from the daemons' start to the link being up on both sides (median
//! over `--rounds` fresh labs). Then TCP throughput across a direct, a
//! punched and a relayed link (iperf3, `--secs` × `--runs`, median), with
//! relaying unbounded (`[nat] relay_rate = "2GiB/s"`) so the figure is what
//! relaying costs, not the default cap of 8 MiB/s.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use umbra_bench::stats::median;
use umbra_netlab::{MatrixOptions, NatKind, NatMatrix, Site, full_matrix};

use crate::{Options, R, lab};

/// How long a cell may take to link.
const LINK_LIMIT: Duration = Duration::from_secs(120);

/// The row of `umbra peers --json` for `key`, if it is up.
fn up_kind(peers: &Value, key: &str) -> Option<String> {
    peers
        .as_array()?
        .iter()
        .find(|r| r["key"] == key && r["state"] == "up")
        .and_then(|r| r["kind"].as_str().map(str::to_string))
}

fn matrix(opts: &Options, cells: &[(Site, Site)], dir: &Path, tag: usize) -> R<NatMatrix> {
    let options = MatrixOptions {
        umbra: opts.bins.umbra.clone(),
        top: "anonymity = \"fast\"".into(),
        extra: "\n[nat]\nrelay_rate = \"2GiB/s\"\n".into(),
        log_filter: "info".into(),
        pair_agreements: true,
    };
    let mut n = 0;
    let dir = dir.join(format!("round{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    NatMatrix::build(cells, &dir, &options, |t| {
        n += 1;
        lab().netns(&format!("m{tag}{t}{n}"))
    })
    .map_err(|e| e.to_string())
}

/// Times every cell of a fresh matrix to link: (cell name, kind, seconds).
fn time_to_link(opts: &Options, dir: &Path, round: usize) -> R<Vec<(String, String, f64)>> {
    let mut m = matrix(opts, &full_matrix(), dir, round)?;
    let started = Instant::now();
    m.start().map_err(|e| e.to_string())?;
    let mut got: BTreeMap<usize, (String, f64)> = BTreeMap::new();
    while got.len() < m.cells.len() {
        if started.elapsed() > LINK_LIMIT {
            return Err(format!(
                "{} of {} cells linked within {LINK_LIMIT:?}",
                got.len(),
                m.cells.len()
            ));
        }
        for (i, c) in m.cells.iter().enumerate() {
            if got.contains_key(&i) {
                continue;
            }
            let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
            let kind = |x: &umbra_netlab::MatrixNode, y: &umbra_netlab::MatrixNode| {
                x.daemon
                    .cli_json(&["peers", "--json"])
                    .ok()
                    .and_then(|p| up_kind(&p, &y.key))
            };
            if let (Some(ka), Some(kb)) = (kind(a, b), kind(b, a))
                && ka == kb
            {
                got.insert(i, (ka, started.elapsed().as_secs_f64()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(m.cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (kind, secs) = got.get(&i).cloned().unwrap_or_default();
            (
                format!("{} × {}", m.nodes[c.a].name, m.nodes[c.b].name),
                kind,
                secs,
            )
        })
        .collect())
}

/// iperf3 across one cell of each link kind.
fn throughput(opts: &Options, dir: &Path) -> R<Vec<(String, String, Vec<f64>)>> {
    let (eim, edm) = (Site::Nat(NatKind::Eim), Site::Nat(NatKind::Edm));
    let cells = [(Site::Public, edm), (eim, eim), (edm, edm)];
    let mut m = matrix(opts, &cells, dir, 99)?;
    m.start().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + LINK_LIMIT;
    let mut out = Vec::new();
    for c in m.cells.clone() {
        let (a, b) = (&m.nodes[c.a], &m.nodes[c.b]);
        loop {
            let peers = a
                .daemon
                .cli_json(&["peers", "--json"])
                .map_err(|e| e.to_string())?;
            if up_kind(&peers, &b.key).as_deref() == Some(c.expect) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{} × {}: no {} link", a.name, b.name, c.expect));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Warm the path (the first packet builds the one-hop circuit).
        let _ = crate::measure::ping(a.host(), &b.address, 3, 0.05);
        let _server = crate::measure::iperf3_server(
            b.host(),
            &b.address,
            &dir.join(format!("iperf3-{}.log", c.expect)),
        )?;
        let mut runs = Vec::new();
        for _ in 0..opts.runs {
            let r = crate::measure::iperf3(a.host(), &b.address, opts.secs, 1, &[])?;
            eprintln!(
                "netbench:   {} ({} × {}): {:.0} Mbit/s",
                c.expect, a.name, b.name, r.mbps
            );
            runs.push(r.mbps);
        }
        out.push((
            format!("{} × {}", a.name, b.name),
            c.expect.to_string(),
            runs,
        ));
    }
    Ok(out)
}

/// Runs the NAT measurements, prints the tables, writes
/// `<out>/nat-<stamp>.json` and `<out>/nat-latest.json`.
pub(crate) fn run(opts: &Options, work: &Path) -> R<()> {
    let started = Instant::now();
    let mut rounds = Vec::new();
    for round in 0..opts.rounds.max(1) {
        eprintln!("netbench: NAT matrix, round {}", round + 1);
        rounds.push(time_to_link(opts, work, round)?);
        lab().cleanup();
    }
    eprintln!("netbench: throughput by link kind");
    let tcp = throughput(opts, work)?;
    lab().cleanup();

    let first = rounds.first().cloned().unwrap_or_default();
    let mut table = String::new();
    table.push_str("\nNAT matrix: time from start to link (median of rounds)\n");
    table.push_str(&format!("{:<26} {:<9} {:>9}\n", "cell", "kind", "seconds"));
    let mut cells = Vec::new();
    for (i, (name, kind, _)) in first.iter().enumerate() {
        let secs: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.get(i).map(|c| c.2))
            .collect();
        let kinds: Vec<&str> = rounds
            .iter()
            .filter_map(|r| r.get(i).map(|c| c.1.as_str()))
            .collect();
        let med = median(&secs);
        table.push_str(&format!(
            "{name:<26} {kind:<9} {:>9}\n",
            med.map_or("-".into(), |s| format!("{s:.1}"))
        ));
        cells.push(json!({"cell": name, "kinds": kinds, "seconds": secs, "median_s": med}));
    }
    table.push_str("\nTCP across one link of each kind (1 stream, median Mbit/s)\n");
    let mut kinds = Vec::new();
    for (name, kind, runs) in &tcp {
        let med = median(runs);
        table.push_str(&format!(
            "{kind:<9} {name:<26} {:>9}\n",
            med.map_or("-".into(), |m| format!("{m:.0}"))
        ));
        kinds.push(json!({"kind": kind, "cell": name, "mbps": runs, "median_mbps": med}));
    }
    print!("{table}");
    let report = json!({
        "rounds": opts.rounds.max(1),
        "iperf3_secs": opts.secs,
        "iperf3_runs": opts.runs,
        "load_average": umbra_bench::procfs::load_average(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "cells": cells,
        "tcp_by_kind": kinds,
    });
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    let stamp = umbra_netlab::run(&["date", "-u", "+%Y-%m-%dT%H%MZ"])
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "run".into());
    for name in [format!("nat-{stamp}.json"), "nat-latest.json".into()] {
        let p = opts.out.join(name);
        std::fs::write(&p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    eprintln!(
        "netbench: wrote {}",
        opts.out.join("nat-latest.json").display()
    );
    Ok(())
}
