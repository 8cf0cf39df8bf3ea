//! `--profile`: where the daemons' CPU time goes under iperf3 load. For each
//! system and topology it records every daemon with `perf record` (software
//! clock, DWARF call graphs) during one iperf3 run, and writes
//! `perf report` text next to the data.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::overlay::{Overlay, System};
use crate::{Options, R, measure};
use umbra_netlab::Proc;

/// Samples per second per daemon: enough for percentages, little overhead.
const PERF_HZ: &str = "499";

/// Profiles every system in `opts` on each topology in `topologies`.
pub(crate) fn run(opts: &Options, topologies: &[usize], work: &Path) -> R<()> {
    let out = opts.out.join("profile");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for &n in topologies {
        for &system in &opts.systems {
            profile_one(opts, system, n, work, &out)?;
        }
    }
    eprintln!("netbench: profiles in {}", out.display());
    Ok(())
}

fn profile_one(opts: &Options, system: System, n: usize, work: &Path, out: &Path) -> R<()> {
    eprintln!("netbench: profiling {} with {n} nodes", system.key());
    let o = Overlay::build(system, n, &opts.bins, work)?;
    let last = n - 1;
    measure::ping(&o.ns[0], &o.addrs[last], 3, 0.05)?;
    let _server = measure::iperf3_server(
        &o.ns[last],
        &o.addrs[last],
        &work.join(format!("iperf3-profile-{}-{n}.log", system.key())),
    )?;
    let name = |i: usize| format!("{}-{n}-node{i}", system.key());
    let load = std::thread::scope(|s| {
        let client =
            s.spawn(|| measure::iperf3(&o.ns[0], &o.addrs[last], opts.secs + 2, 1, &o.pids()));
        // Let the transfer ramp up, then record every daemon.
        std::thread::sleep(Duration::from_secs(1));
        let mut perfs = Vec::new();
        for (i, pid) in o.pids().into_iter().enumerate() {
            let mut c = Command::new("perf");
            c.args(["record", "-e", "cpu-clock", "-F", PERF_HZ, "--call-graph"])
                .arg("dwarf,8192")
                .arg("-p")
                .arg(pid.to_string())
                .arg("-o")
                .arg(out.join(format!("{}.data", name(i))))
                .args(["--", "sleep", &opts.secs.to_string()]);
            perfs.push(
                Proc::spawn(c, &out.join(format!("{}.record.log", name(i)))).map_err(String::from),
            );
        }
        for p in perfs.iter_mut().flatten() {
            // Still running past its limit: killed as it drops.
            p.wait(Duration::from_secs(u64::from(opts.secs) + 60));
        }
        (client.join(), perfs)
    });
    let (client, perfs) = load;
    for p in perfs {
        p?;
    }
    let tcp = client.map_err(|_| "iperf3 thread panicked".to_string())??;
    eprintln!("netbench:   under perf: {:.0} Mbit/s", tcp.mbps);
    for i in 0..n {
        let data = out.join(format!("{}.data", name(i)));
        let report = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "--percent-limit",
                "0.5",
            ])
            .args(["--sort", "dso,symbol", "-g", "none", "-i"])
            .arg(&data)
            .output()
            .map_err(|e| format!("perf report: {e}"))?;
        let txt = out.join(format!("{}.txt", name(i)));
        std::fs::write(&txt, &report.stdout).map_err(|e| format!("{}: {e}", txt.display()))?;
        let children = Command::new("perf")
            .args(["report", "--stdio", "--children", "--percent-limit", "2"])
            .args(["--sort", "symbol", "-g", "none", "-i"])
            .arg(&data)
            .output()
            .map_err(|e| format!("perf report: {e}"))?;
        let txt = out.join(format!("{}.children.txt", name(i)));
        std::fs::write(&txt, &children.stdout).map_err(|e| format!("{}: {e}", txt.display()))?;
    }
    Ok(())
}
