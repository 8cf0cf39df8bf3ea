//! `umbra demo` (docs/cli.md): a small overlay of real daemons in network
//! namespaces on this machine, traffic across a balanced circuit, what each
//! relay saw, then a clean teardown.
//!
//! Every node is this same binary running `umbra run` in its own namespace
//! with its own `umbra0`; the namespaces are joined by veth pairs on
//! `198.18.0.0/15` (RFC 2544 benchmarking space, never routed) and the nodes
//! by `[[peer]]` agreements. Namespaces are named `umbrademo<pid>-<node>`.
//!
//! The lab (`umbra-netlab`) records everything before it is made and tears
//! it all down on success, on error, on a panic (its handles' `Drop`) and on
//! SIGINT/SIGTERM (its signal hook). This module holds the run and its
//! preflight; [`overlay`] the demo's topology and nodes, [`steps`] the
//! scenario, [`report`] what it prints.

#![allow(clippy::print_stdout)] // the demo's report is its output

mod overlay;
mod report;
mod steps;

use std::time::Instant;

use anyhow::{Result, bail};
use umbra_netlab::Lab;

use overlay::NODES;

/// Runs `umbra demo`.
pub(crate) fn run() -> Result<()> {
    preflight()?;
    let mut lab = Lab::new("umbrademo");
    let report = |_, done: &umbra_netlab::Cleanup| {
        eprintln!("\ninterrupted: cleaned up: {done}");
    };
    umbra_netlab::cleanup_on_signals(&[umbra_netlab::SIGINT, umbra_netlab::SIGTERM], report)?;
    let result = run_steps(&mut lab);
    eprintln!("cleaned up: {}", lab.cleanup());
    result
}

/// Runs every step and prints the report.
fn run_steps(lab: &mut Lab) -> Result<()> {
    let started = Instant::now();
    println!(
        "umbra demo: {} real umbra daemons in network namespaces on this machine",
        NODES.len()
    );
    steps::remove_stale(lab);
    lab.make_dir(overlay::work_dir(std::process::id()))?;
    let mut o = steps::namespaces(lab)?;
    steps::daemons(lab, &mut o)?;
    steps::links(&mut o)?;
    steps::graph(&mut o)?;
    let circuit = steps::circuit(&mut o)?;
    let (ping, iperf) = steps::traffic(lab, &o)?;
    report::print(&o, &circuit, &ping, &iperf)?;
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Root, `/dev/net/tun` and the tools, before anything is made.
fn preflight() -> Result<()> {
    if !umbra_netlab::is_root() {
        bail!(
            "umbra demo needs root: it makes network namespaces, veth pairs and a TUN \
             interface per node; run it as `sudo umbra demo`"
        );
    }
    if !umbra_netlab::has_tun() {
        bail!("umbra demo needs /dev/net/tun for the nodes' TUN interfaces: run `modprobe tun`");
    }
    umbra_netlab::require_tools(&[
        ("ip", "iproute2", "to make the namespaces and veth pairs"),
        ("ping", "iputils-ping", "to ping across the circuit"),
        (
            "iperf3",
            "iperf3",
            "to measure the throughput across the circuit",
        ),
    ])
    .map_err(|e| anyhow::anyhow!("umbra demo: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;
    use umbra_routing::Identity;
    use umbra_routing::graph::{Graph, Time};
    use umbra_routing::path::{Anonymity, MIN_RELAYS_BALANCED, PathRequest, choose};

    use super::overlay::{DESTINATION, EDGES, HOME, NODES, ORIGIN};

    /// The demo's overlay always offers a balanced path from the origin to
    /// the destination: home first, at least 3 relays, agreement edges only,
    /// no repeats; and the random walk really chooses between two paths.
    #[test]
    fn demo_overlay_always_has_a_balanced_path() {
        let ids: Vec<Identity> = (0..NODES.len())
            .map(|i| Identity::from_seed(&[i as u8 + 1; 32]))
            .collect();
        let keys: Vec<[u8; 32]> = ids.iter().map(Identity::public).collect();
        let now = Time::from_unix_secs(1_700_000_000);
        let g = Graph::from_topology(&ids, &EDGES, now).expect("graph");
        let live = |_: &[u8; 32]| true;
        let req = PathRequest {
            origin: keys[ORIGIN],
            destination: keys[DESTINATION],
            anonymity: Anonymity::Balanced,
            home: Some(keys[HOME]),
            live: &live,
            avoid: &|_, _| false,
        };
        let mut seen = BTreeSet::new();
        for seed in 0..2000 {
            let p =
                choose(&g, &req, &mut ChaCha8Rng::seed_from_u64(seed)).expect("a balanced path");
            assert_eq!(p[0], keys[HOME], "home first");
            assert_eq!(p.last(), Some(&keys[DESTINATION]));
            assert!(p.len() > MIN_RELAYS_BALANCED, "{} relays", p.len() - 1);
            let mut all = vec![keys[ORIGIN]];
            all.extend(&p);
            for w in all.windows(2) {
                assert!(g.edge(&w[0], &w[1]).is_some(), "not an agreement edge");
            }
            let distinct: BTreeSet<_> = all.iter().collect();
            assert_eq!(distinct.len(), all.len(), "a node repeats");
            seen.insert(p);
        }
        assert_eq!(
            seen.len(),
            2,
            "the walk chooses between b-c-e-g and b-d-f-g"
        );
    }
}
