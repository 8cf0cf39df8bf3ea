//! What the demo prints on stdout once its traffic has crossed the
//! circuit: the nodes, the path, each node's own view of the circuit, and
//! the measurements.

use anyhow::Result;
use umbra_netlab::{IperfResult, PingStats};

use super::overlay::{DESTINATION, EDGES, HOME, NODES, ORIGIN, Overlay};
use super::steps::{Circuit, IPERF_SECS, PING_COUNT};

/// Prints the report.
pub(super) fn print(o: &Overlay, c: &Circuit, ping: &PingStats, iperf: &IperfResult) -> Result<()> {
    println!();
    println!("nodes (one namespace and one umbra daemon each):");
    for (i, n) in o.nodes.iter().enumerate() {
        let role = match i {
            ORIGIN => format!("origin, home node {}", NODES[HOME]),
            DESTINATION => "destination".to_string(),
            _ => String::new(),
        };
        let links: Vec<&str> = EDGES
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(NODES[b]),
                (_, true) => Some(NODES[a]),
                _ => None,
            })
            .collect();
        println!(
            "  {}  {:<20}  {:<40}  agreements with {}{}",
            n.name,
            o.netns[i].name(),
            n.address,
            links.join(", "),
            if role.is_empty() {
                String::new()
            } else {
                format!("  ({role})")
            }
        );
    }

    println!();
    println!(
        "path from {} to {} (`umbra path {}` on {}), circuit {}:",
        NODES[ORIGIN],
        NODES[DESTINATION],
        o.nodes[DESTINATION].address,
        NODES[ORIGIN],
        c.path["circuit"].as_str().unwrap_or("?")
    );
    for (i, hop) in c.path["hops"].as_array().into_iter().flatten().enumerate() {
        let sees: Vec<String> = hop["sees"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                if s.is_null() {
                    "-".to_string()
                } else {
                    o.index_of(&s["key"])
                        .map_or("?".into(), |j| NODES[j].to_string())
                }
            })
            .collect();
        println!(
            "  {}. {}  sees {} → {}  {}",
            i + 1,
            NODES[c.hops[i]],
            sees.first().map_or("-", String::as_str),
            sees.get(1).map_or("-", String::as_str),
            hop["role"].as_str().unwrap_or_default()
        );
    }

    println!();
    println!(
        "what each node's own control socket says about this circuit (`umbra status --json`):"
    );
    println!(
        "  {:<4}  {:<12}  {:<4}  {:<4}  {:<18}  {:>8}  {:>9}",
        "NODE", "ROLE", "PREV", "NEXT", "KNOWS THE PATH?", "CELLS IN", "CELLS OUT"
    );
    let mut relay_knows_more = Vec::new();
    for (pos, &i) in c.route.iter().enumerate() {
        let prev = pos.checked_sub(1).map(|p| c.route[p]);
        let next = c.route.get(pos + 1).copied();
        let want_role = match pos {
            0 => "origin",
            _ if next.is_none() => "destination",
            _ => "relay",
        };
        let status = o.nodes[i].status()?;
        let view = status["circuit_list"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["role"] == want_role
                    && c["pooled"] != true
                    && o.neighbour_is(&c["prev"], prev)
                    && o.neighbour_is(&c["next"], next)
            });
        let Some(view) = view else {
            println!(
                "  {:<4}  no {want_role} circuit from {} to {} in its status",
                o.nodes[i].name,
                prev.map_or("-", |p| NODES[p]),
                next.map_or("-", |n| NODES[n])
            );
            continue;
        };
        let path_len = view["path"].as_array().map_or(0, Vec::len);
        let knows = match want_role {
            "origin" => format!("yes, all {path_len} hops"),
            "destination" => format!(
                "no; session peer {}",
                if view["peer"].is_null() {
                    "-".to_string()
                } else {
                    o.index_of(&view["peer"]["key"])
                        .map_or("?".into(), |j| NODES[j].into())
                }
            ),
            _ if path_len == 0 && view["peer"].is_null() => "no".to_string(),
            _ => {
                relay_knows_more.push(o.nodes[i].name);
                format!("yes ({path_len} hops)")
            }
        };
        let role = if pos == 1 {
            "relay (home)".to_string()
        } else {
            want_role.to_string()
        };
        println!(
            "  {:<4}  {:<12}  {:<4}  {:<4}  {:<18}  {:>8}  {:>9}",
            o.nodes[i].name,
            role,
            prev.map_or("-", |p| NODES[p]),
            next.map_or("-", |n| NODES[n]),
            knows,
            view["cells_in"].to_string(),
            view["cells_out"].to_string()
        );
    }
    if relay_knows_more.is_empty() {
        println!(
            "  Each relay's view names only the node before it and the node after it: no relay holds \
             the path, and none but the destination knows the session's other end."
        );
    } else {
        println!(
            "  warning: relay(s) {} hold more than their two neighbours",
            relay_knows_more.join(", ")
        );
    }

    println!();
    println!(
        "ping -6 -c {PING_COUNT} from {} to {}: {}/{PING_COUNT} answered, round trips {} ms",
        NODES[ORIGIN],
        NODES[DESTINATION],
        ping.received(),
        ping.rtts_ms()
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(summary) = &ping.summary {
        println!("  rtt min/avg/max/mdev = {summary} ms");
    }
    println!(
        "iperf3 TCP from {} to {}, {IPERF_SECS} s over {} relays: {:.1} Mbit/s ({:.1} MB received, {} retransmits)",
        NODES[ORIGIN],
        NODES[DESTINATION],
        c.hops.len().saturating_sub(1),
        iperf.bits_per_second / 1e6,
        iperf.bytes as f64 / 1e6,
        iperf.retransmits
    );
    println!();
    Ok(())
}
