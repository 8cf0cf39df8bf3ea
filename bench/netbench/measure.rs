//! The measurements: ping, the first packet to a new destination, and iperf3
//! with the daemons' CPU time and memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use umbra_bench::procfs::{cpu_seconds, parse_utc_timestamp, rss_anon_kib, rss_kib, strip_ansi};
use umbra_bench::stats::{mean, median, percentile};

use umbra_netlab::{IperfOptions, IperfServer, Netns, PingOptions};

use crate::R;
use crate::overlay::{Overlay, System};

/// Round-trip times of one ping run.
#[derive(Debug, Clone)]
pub(crate) struct PingResult {
    /// Echo requests sent.
    pub(crate) sent: usize,
    /// Round-trip times of the replies, in ms.
    pub(crate) rtts_ms: Vec<f64>,
}

impl PingResult {
    pub(crate) fn avg(&self) -> Option<f64> {
        mean(&self.rtts_ms)
    }
    pub(crate) fn p99(&self) -> Option<f64> {
        percentile(&self.rtts_ms, 99.0)
    }
    pub(crate) fn json(&self) -> Value {
        json!({
            "sent": self.sent,
            "received": self.rtts_ms.len(),
            "avg_ms": self.avg(),
            "p50_ms": median(&self.rtts_ms),
            "p99_ms": self.p99(),
            "min_ms": self.rtts_ms.iter().copied().reduce(f64::min),
            "max_ms": self.rtts_ms.iter().copied().reduce(f64::max),
        })
    }
}

/// `count` pings from `ns` to `addr`, `interval` seconds apart.
pub(crate) fn ping(ns: &Netns, addr: &str, count: usize, interval: f64) -> R<PingResult> {
    let stats = umbra_netlab::ping(ns, addr, PingOptions::new(count, interval))?;
    if stats.received() == 0 {
        return Err(format!(
            "ping {addr} from {} got no reply: {}",
            ns.name(),
            stats.output
        ));
    }
    Ok(PingResult {
        sent: count,
        rtts_ms: stats.rtts_ms(),
    })
}

/// The first packet from one node to another that it has not talked to.
#[derive(Debug, Clone)]
pub(crate) struct FirstPacket {
    /// Sending node.
    pub(crate) from: usize,
    /// Destination node.
    pub(crate) to: usize,
    /// RTT of the first echo (the request waits for the route or circuit).
    pub(crate) rtt_ms: Option<f64>,
    /// umbra: from sending the first echo to the origin's "circuit built".
    pub(crate) build_ms: Option<f64>,
}

impl FirstPacket {
    pub(crate) fn json(&self) -> Value {
        json!({
            "from": self.from, "to": self.to, "hops": self.to.abs_diff(self.from),
            "first_rtt_ms": self.rtt_ms, "circuit_build_ms": self.build_ms,
        })
    }
}

/// Unix times of the "circuit built" lines in an umbra log.
fn circuit_built_times(log: &str) -> Vec<f64> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("circuit built"))
        .filter_map(|l| l.split_whitespace().next().and_then(parse_utc_timestamp))
        .collect()
}

/// For every pair `i < j`, in order, one ping from `i` to `j` on an overlay
/// where neither has talked to the other: the RTT of that first echo, and
/// for umbra the circuit build time (from the echo's send time, which is
/// the reply's `ping -D` timestamp minus its RTT, to the "circuit built" log
/// line at the origin).
pub(crate) fn first_packets(o: &Overlay) -> R<Vec<FirstPacket>> {
    let n = o.len();
    let mut out = Vec::new();
    for from in 0..n {
        for to in from + 1..n {
            let opts = PingOptions {
                wait_secs: 10,
                timestamps: true,
                ..PingOptions::new(1, 1.0)
            };
            let stats = umbra_netlab::ping(&o.ns[from], &o.addrs[to], opts)?;
            let reply = stats.replies.first().map(|r| (r.at, r.rtt_ms));
            let (rtt_ms, sent_at) = match reply {
                Some((Some(ts), rtt)) => (Some(rtt), Some(ts - rtt / 1000.0)),
                Some((None, rtt)) => (Some(rtt), None),
                None => (None, None),
            };
            let build_ms = match (o.system, sent_at, reply) {
                (System::Umbra, Some(sent), Some((Some(replied), _))) => {
                    circuit_built_times(&o.log(from))
                        .into_iter()
                        // Log and ping clocks round differently: 1 ms slack.
                        .find(|&t| t >= sent - 0.001 && t <= replied + 0.001)
                        .map(|t| ((t - sent) * 1000.0).max(0.0))
                }
                _ => None,
            };
            out.push(FirstPacket {
                from,
                to,
                rtt_ms,
                build_ms,
            });
        }
    }
    Ok(out)
}

/// Resident memory of each running daemon, in KiB: (all, anonymous only).
pub(crate) fn rss_all(o: &Overlay) -> (Vec<u64>, Vec<u64>) {
    let pids = o.pids();
    (
        pids.iter().map(|&p| rss_kib(p).unwrap_or(0)).collect(),
        pids.iter().map(|&p| rss_anon_kib(p).unwrap_or(0)).collect(),
    )
}

fn cpu_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p)).sum()
}

/// One iperf3 run.
#[derive(Debug, Clone)]
pub(crate) struct TcpRun {
    /// Received throughput, Mbit/s.
    pub(crate) mbps: f64,
    /// Bytes the receiver got.
    pub(crate) bytes: u64,
    /// CPU seconds all daemons used during the run.
    pub(crate) cpu_s: f64,
    /// Highest resident memory of each daemon during the run, KiB.
    pub(crate) rss_max_kib: Vec<u64>,
    /// Retransmits the sender saw.
    pub(crate) retransmits: u64,
}

impl TcpRun {
    /// CPU seconds per gigabyte (10⁹ bytes) moved.
    pub(crate) fn cpu_s_per_gb(&self) -> Option<f64> {
        umbra_bench::stats::cpu_s_per_gb(self.cpu_s, self.bytes)
    }
}

/// A persistent iperf3 server in `ns` bound to `addr`.
pub(crate) fn iperf3_server(ns: &Netns, addr: &str, log: &std::path::Path) -> R<IperfServer> {
    Ok(IperfServer::start(ns, addr, log, false)?)
}

/// One iperf3 TCP run of `secs` seconds with `streams` parallel streams from
/// `client` to `server_addr`, while the daemons `pids` are watched.
pub(crate) fn iperf3(
    client: &Netns,
    server_addr: &str,
    secs: u32,
    streams: u32,
    pids: &[u32],
) -> R<TcpRun> {
    let stop = AtomicBool::new(false);
    let cpu_before = cpu_all(pids);
    let (out, rss_max_kib) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max = vec![0u64; pids.len()];
            while !stop.load(Ordering::Relaxed) {
                for (m, &p) in max.iter_mut().zip(pids) {
                    *m = (*m).max(rss_kib(p).unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            max
        });
        let opts = IperfOptions {
            streams,
            ..IperfOptions::new(secs)
        };
        let out = umbra_netlab::iperf3(client, server_addr, opts);
        stop.store(true, Ordering::Relaxed);
        (out, sampler.join().unwrap_or_default())
    });
    let cpu_s = cpu_all(pids) - cpu_before;
    let r = out.map_err(|e| format!("iperf3 to {server_addr}: {e}"))?;
    Ok(TcpRun {
        mbps: r.mbps(),
        bytes: r.bytes,
        cpu_s,
        rss_max_kib,
        retransmits: r.retransmits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_lines_in_a_log() {
        let log = "2026-11-21T07:25:38.500000Z  INFO umbra::router: circuit built circuit=1 to=ab\n\
                   2026-11-21T07:25:39.000000Z  INFO umbra::router: routing core up\n";
        assert_eq!(circuit_built_times(log), vec![1_795_245_938.5]);
    }
}
