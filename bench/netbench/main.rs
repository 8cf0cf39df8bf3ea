//! `netbench`: the side-by-side network benchmark of umbra, Yggdrasil
//! 0.4.7 and Tor (docs/architecture.md, "Performance"). See bench/README.md.
//!
//! It needs root (network namespaces), iperf3, ping, ss, curl, nginx and
//! Debian's `yggdrasil` and `tor`. It prints one table to stdout, and writes
//! JSON and an SVG chart.

// The table is this program's output.
#![allow(clippy::print_stdout)]

mod http;
mod measure;
mod nat;
mod overlay;
mod profile;
mod report;
mod tor;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use umbra_bench::stats::{median, percentile};
use umbra_netlab::{Lab, Veth};

use crate::measure::{FirstPacket, PingResult, TcpRun};
use crate::overlay::{Binaries, Overlay, System};
use crate::tor::TorResult;

/// Errors are one line of text naming what failed.
pub(crate) type R<T> = Result<T, String>;

/// The benchmark's lab: namespaces `ubn<pid>-<tag>`.
pub(crate) fn lab() -> &'static Lab {
    static LAB: std::sync::OnceLock<Lab> = std::sync::OnceLock::new();
    LAB.get_or_init(|| Lab::new("ubn"))
}

/// The command line (`netbench --help`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "netbench",
    about = "The side-by-side network benchmark of umbra, Yggdrasil and Tor.",
    long_about = "Builds the same network-namespace topologies (2 nodes direct; a 5-node chain) \
                  for umbra and for Yggdrasil, and measures iperf3 TCP throughput (1 and 4 \
                  streams), ping RTT, daemon CPU seconds per GB, resident memory, the first \
                  packet to a new destination, and on the chain the time to first byte of an \
                  HTTP fetch. Then a private Tor network (3 authority relays, 1 exit) measured \
                  through its SOCKS port over 3 hops: throughput, time to first byte, circuit \
                  build, CPU per GB, with stock tor (KIST) and with Schedulers Vanilla. Needs root."
)]
struct Args {
    /// 2 nodes only, 2 s iperf3, 20 pings, 1 run, no Tor (for CI)
    #[arg(long)]
    quick: bool,
    /// iperf3 seconds per run (default 10)
    #[arg(long, value_name = "N")]
    secs: Option<u32>,
    /// iperf3 runs per case; the median counts (default 3)
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// pings for RTT (default 200, 10 ms apart)
    #[arg(long, value_name = "N")]
    pings: Option<usize>,
    /// fresh starts of the chain to sample circuit builds (default 3)
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// the umbra binary (default: target/release/umbra beside netbench)
    #[arg(long, value_name = "PATH")]
    umbra: Option<PathBuf>,
    /// the yggdrasil binary (default: yggdrasil on PATH)
    #[arg(long, value_name = "PATH")]
    yggdrasil: Option<PathBuf>,
    /// where JSON and SVG go (default bench/results; with --quick,
    /// target/netbench)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// run one system only (no ratios)
    #[arg(long, value_enum, value_name = "SYSTEM")]
    only: Option<Only>,
    /// skip the Tor network (about 3 minutes of the full run)
    #[arg(long, conflicts_with = "only")]
    no_tor: bool,
    /// keep the daemons' logs and configs
    #[arg(long)]
    keep: bool,
    /// instead of measuring, record each daemon with `perf record` during
    /// one iperf3 run; reports go to <out>/profile
    #[arg(long)]
    profile: bool,
    /// instead, measure the NAT matrix (umbra only): time to link for every
    /// pair of NAT kinds, and TCP across a direct, a punched and a relayed
    /// link; writes <out>/nat-latest.json
    #[arg(long)]
    nat: bool,
}

/// `--only`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Only {
    Umbra,
    Yggdrasil,
    /// The private Tor network alone.
    Tor,
}

/// What the run does.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) secs: u32,
    pub(crate) runs: usize,
    pub(crate) pings: usize,
    pub(crate) rounds: usize,
    pub(crate) bins: Binaries,
    pub(crate) out: PathBuf,
    pub(crate) systems: Vec<System>,
    /// Whether the Tor network is measured.
    pub(crate) tor: bool,
    pub(crate) keep: bool,
    pub(crate) profile: bool,
    pub(crate) nat: bool,
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn parse_args() -> R<Options> {
    let Args {
        quick,
        secs,
        runs,
        pings,
        rounds,
        umbra,
        yggdrasil: ygg,
        out,
        only,
        no_tor,
        keep,
        profile,
        nat,
    } = clap::Parser::parse();
    let systems = match only {
        Some(Only::Umbra) => vec![System::Umbra],
        Some(Only::Yggdrasil) => vec![System::Yggdrasil],
        Some(Only::Tor) => vec![],
        None => vec![System::Umbra, System::Yggdrasil],
    };
    let tor = match only {
        Some(Only::Tor) if quick || profile || nat => {
            return Err("Tor is not part of --quick, --profile or --nat".into());
        }
        Some(Only::Tor) => true,
        Some(_) => false,
        None => !(no_tor || quick || profile || nat),
    };
    let umbra = match umbra {
        Some(p) => p,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("umbra")))
            .ok_or("cannot locate the umbra binary; pass --umbra PATH")?,
    };
    let yggdrasil = ygg.unwrap_or_else(|| PathBuf::from("yggdrasil"));
    let out = out.unwrap_or_else(|| {
        if quick {
            workspace_dir().join("target/netbench")
        } else {
            workspace_dir().join("bench/results")
        }
    });
    Ok(Options {
        quick,
        secs: secs.unwrap_or(if quick { 2 } else { 10 }),
        runs: runs.unwrap_or(if quick { 1 } else { 3 }),
        pings: pings.unwrap_or(if quick { 20 } else { 200 }),
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        bins: Binaries { umbra, yggdrasil },
        out,
        systems,
        tor,
        keep,
        profile,
        nat,
    })
}

fn preflight(o: &Options) -> R<()> {
    if !umbra_netlab::is_root() {
        return Err("netbench builds network namespaces and needs root (sudo -E)".into());
    }
    if o.systems.contains(&System::Umbra) && !o.bins.umbra.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p umbra` first, or pass --umbra PATH",
            o.bins.umbra.display()
        ));
    }
    let perf: &[(&str, &str)] = if o.profile {
        &[("perf", "apt-get install -y linux-perf")]
    } else {
        &[]
    };
    let tools: &[(&str, &str)] = &[
        ("iperf3", "apt-get install -y iperf3"),
        ("ping", "apt-get install -y iputils-ping"),
        ("ss", "apt-get install -y iproute2"),
    ];
    for (tool, fix) in tools.iter().chain(perf) {
        if !umbra_netlab::has_tool(tool) {
            return Err(format!("{tool} is not installed: {fix}"));
        }
    }
    if o.nat {
        for (tool, fix) in [
            ("nft", "apt-get install -y nftables"),
            ("miniupnpd", "apt-get install -y miniupnpd-nftables"),
            ("stund", "apt-get install -y stun-server"),
        ] {
            if !umbra_netlab::has_tool(tool) {
                return Err(format!("{tool} is not installed: {fix}"));
            }
        }
        return Ok(());
    }
    if o.systems.contains(&System::Yggdrasil)
        && umbra_netlab::run(&[&o.bins.yggdrasil.to_string_lossy(), "-version"]).is_err()
    {
        return Err(format!(
            "{} is not installed: apt-get install -y yggdrasil (or --only umbra)",
            o.bins.yggdrasil.display()
        ));
    }
    // The time to first byte (on the chain, so not with --quick) and every
    // Tor measure fetch from nginx with curl.
    let mut http: Vec<(&str, &str)> = Vec::new();
    if o.tor || (!o.quick && !o.systems.is_empty()) {
        http.extend([
            ("curl", "apt-get install -y curl"),
            ("nginx", "apt-get install -y nginx-light"),
        ]);
    }
    if o.tor {
        http.extend([
            ("tor", "apt-get install -y tor (or --no-tor)"),
            ("tor-gencert", "apt-get install -y tor (or --no-tor)"),
        ]);
    }
    for (tool, fix) in http {
        if !umbra_netlab::has_tool(tool) {
            return Err(format!("{tool} is not installed: {fix}"));
        }
    }
    Ok(())
}

/// Measurements of one system on one topology.
#[derive(Debug, Clone)]
pub(crate) struct TopoResult {
    pub(crate) nodes: usize,
    pub(crate) first: Vec<FirstPacket>,
    pub(crate) ping: PingResult,
    pub(crate) rss_idle_kib: Vec<u64>,
    /// The anonymous part (heap, stacks) of `rss_idle_kib`.
    pub(crate) rss_idle_anon_kib: Vec<u64>,
    /// Runs with 1 stream, then with 4.
    pub(crate) tcp: [Vec<TcpRun>; 2],
    /// Time to first byte of a small HTTP fetch from the last node, warm,
    /// ms (the chain only).
    pub(crate) ttfb_ms: Vec<f64>,
    /// The same fetches through umbra's SOCKS5 proxy against the TUN
    /// (umbra's chain only).
    pub(crate) socks: Option<SocksResult>,
}

/// HTTP over umbra's chain through the SOCKS5 proxy and its userspace TCP
/// stack, against the TUN and the kernel's TCP, in one run.
#[derive(Debug, Clone)]
pub(crate) struct SocksResult {
    pub(crate) ttfb_ms: Vec<f64>,
    pub(crate) bulk_tun_mbps: f64,
    pub(crate) bulk_socks_mbps: f64,
}

impl SocksResult {
    fn json(&self, tun_ttfb: &[f64]) -> Value {
        json!({
            "time_to_first_byte": {
                "median_ms": median(&self.ttfb_ms),
                "p90_ms": percentile(&self.ttfb_ms, 90.0),
                "samples_ms": self.ttfb_ms,
                "added_median_ms": median(&self.ttfb_ms).zip(median(tun_ttfb)).map(|(s, t)| s - t),
            },
            "http_bulk_mbps": {"tun": self.bulk_tun_mbps, "socks": self.bulk_socks_mbps},
        })
    }
}

/// iperf3 stream counts measured.
pub(crate) const STREAMS: [u32; 2] = [1, 4];

impl TopoResult {
    pub(crate) fn mbps(&self, s: usize) -> Option<f64> {
        median(&self.tcp[s].iter().map(|r| r.mbps).collect::<Vec<_>>())
    }
    pub(crate) fn cpu_per_gb(&self, s: usize) -> Option<f64> {
        median(
            &self.tcp[s]
                .iter()
                .filter_map(TcpRun::cpu_s_per_gb)
                .collect::<Vec<_>>(),
        )
    }
    pub(crate) fn rss_idle_mib(&self) -> Option<f64> {
        mean_mib(&self.rss_idle_kib)
    }
    pub(crate) fn rss_idle_anon_mib(&self) -> Option<f64> {
        mean_mib(&self.rss_idle_anon_kib)
    }
    /// The highest resident memory any node reached under load, MiB.
    pub(crate) fn rss_load_max_mib(&self) -> Option<f64> {
        self.tcp
            .iter()
            .flatten()
            .flat_map(|r| r.rss_max_kib.iter())
            .max()
            .map(|&k| k as f64 / 1024.0)
    }
    pub(crate) fn first_rtts(&self) -> Vec<f64> {
        self.first.iter().filter_map(|f| f.rtt_ms).collect()
    }
    pub(crate) fn builds(&self) -> Vec<f64> {
        self.first.iter().filter_map(|f| f.build_ms).collect()
    }
    /// Circuit builds of the pairs at the chain's two ends (every other
    /// node in between): the umbra counterpart of a 3-relay Tor circuit.
    pub(crate) fn end_to_end_builds(&self) -> Vec<f64> {
        self.first
            .iter()
            .filter(|f| f.to.abs_diff(f.from) + 1 == self.nodes)
            .filter_map(|f| f.build_ms)
            .collect()
    }

    fn json(&self) -> Value {
        let tcp = |s: usize| {
            json!({
                "streams": STREAMS[s],
                "median_mbps": self.mbps(s),
                "median_cpu_s_per_gb": self.cpu_per_gb(s),
                "runs": self.tcp[s].iter().map(|r| json!({
                    "mbps": r.mbps, "bytes": r.bytes, "cpu_s": r.cpu_s,
                    "cpu_s_per_gb": r.cpu_s_per_gb(), "retransmits": r.retransmits,
                    "rss_max_kib": r.rss_max_kib,
                })).collect::<Vec<_>>(),
            })
        };
        let firsts = self.first_rtts();
        let builds = self.builds();
        json!({
            "nodes": self.nodes,
            "ping": self.ping.json(),
            "rss_idle_kib": self.rss_idle_kib,
            "rss_idle_mean_mib": self.rss_idle_mib(),
            "rss_idle_anon_kib": self.rss_idle_anon_kib,
            "rss_idle_anon_mean_mib": self.rss_idle_anon_mib(),
            "rss_load_max_mib": self.rss_load_max_mib(),
            "tcp_1": tcp(0),
            "tcp_4": tcp(1),
            "time_to_first_byte": {
                "median_ms": median(&self.ttfb_ms),
                "p90_ms": percentile(&self.ttfb_ms, 90.0),
                "samples_ms": self.ttfb_ms,
            },
            "socks": self.socks.as_ref().map(|s| s.json(&self.ttfb_ms)),
            "first_packet": {
                "samples": self.first.iter().map(FirstPacket::json).collect::<Vec<_>>(),
                "first_rtt_median_ms": median(&firsts),
                "first_rtt_p90_ms": percentile(&firsts, 90.0),
                "circuit_build_median_ms": median(&builds),
                "circuit_build_p90_ms": percentile(&builds, 90.0),
            },
        })
    }
}

fn mean_mib(kib: &[u64]) -> Option<f64> {
    umbra_bench::stats::mean(&kib.iter().map(|&k| k as f64 / 1024.0).collect::<Vec<_>>())
}

/// Runs every measurement on one system and topology.
fn measure(opts: &Options, system: System, n: usize, dir: &Path) -> R<TopoResult> {
    let t = Instant::now();
    eprintln!("netbench: {} with {n} nodes: starting", system.key());
    let mut o = Overlay::build(system, n, &opts.bins, dir)?;
    eprintln!(
        "netbench:   converged in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The first packet to each new destination, on fresh daemons; more
    // rounds restart them for more samples.
    let mut first = measure::first_packets(&o)?;
    for _ in 1..opts.rounds.max(1) {
        o.restart()?;
        first.extend(measure::first_packets(&o)?);
    }
    let last = n - 1;
    // Settle, then idle memory.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (rss_idle_kib, rss_idle_anon_kib) = measure::rss_all(&o);
    // Warm the path, then the RTT series.
    measure::ping(&o.ns[0], &o.addrs[last], 3, 0.05)
        .map_err(|e| format!("{e}\nlogs:\n{}", o.logs()))?;
    let ping = measure::ping(&o.ns[0], &o.addrs[last], opts.pings, 0.01)?;
    eprintln!(
        "netbench:   ping avg {:.3} ms p99 {:.3} ms",
        ping.avg().unwrap_or(f64::NAN),
        ping.p99().unwrap_or(f64::NAN)
    );
    let _server = measure::iperf3_server(
        &o.ns[last],
        &o.addrs[last],
        &dir.join(format!("iperf3-{}-{n}.log", system.key())),
    )?;
    let pids = o.pids();
    let mut tcp: [Vec<TcpRun>; 2] = [Vec::new(), Vec::new()];
    for (s, &streams) in STREAMS.iter().enumerate() {
        for run in 0..opts.runs {
            let r = measure::iperf3(&o.ns[0], &o.addrs[last], opts.secs, streams, &pids)
                .map_err(|e| format!("{e}\nlogs:\n{}", o.logs()))?;
            eprintln!(
                "netbench:   iperf3 -P {streams} run {}: {:.0} Mbit/s, {:.2} CPU s/GB",
                run + 1,
                r.mbps,
                r.cpu_s_per_gb().unwrap_or(f64::NAN)
            );
            tcp[s].push(r);
        }
    }
    let (ttfb_ms, socks) = if n > 2 {
        let web = http::HttpServer::start(
            &o.ns[last],
            &o.addrs[last],
            &dir.join(format!("http-{}-{n}", system.key())),
        )?;
        let t = http::ttfb_series(&o.ns[0], &web, http::Via::Direct, 20, 0.1)?;
        eprintln!(
            "netbench:   time to first byte median {:.2} ms p90 {:.2} ms",
            median(&t).unwrap_or(f64::NAN),
            percentile(&t, 90.0).unwrap_or(f64::NAN)
        );
        let socks = match system {
            System::Umbra => Some(socks_against_tun(opts, &o, &web)?),
            System::Yggdrasil => None,
        };
        (t, socks)
    } else {
        (Vec::new(), None)
    };
    Ok(TopoResult {
        nodes: n,
        first,
        ping,
        rss_idle_kib,
        rss_idle_anon_kib,
        tcp,
        ttfb_ms,
        socks,
    })
}

/// umbra's chain from node 0 through its SOCKS5 proxy against its TUN: the
/// time to first byte, and an HTTP bulk fetch each way of `opts.secs`.
fn socks_against_tun(opts: &Options, o: &Overlay, web: &http::HttpServer) -> R<SocksResult> {
    let via = http::Via::Socks(overlay::UMBRA_SOCKS);
    let ttfb_ms = http::ttfb_series(&o.ns[0], web, via, 20, 0.1)?;
    let bulk_tun_mbps = http::bulk(&o.ns[0], web, http::Via::Direct, opts.secs)?.mbps;
    let bulk_socks_mbps = http::bulk(&o.ns[0], web, via, opts.secs)?.mbps;
    eprintln!(
        "netbench:   SOCKS5: time to first byte median {:.2} ms; HTTP bulk {bulk_socks_mbps:.0} \
         Mbit/s against {bulk_tun_mbps:.0} over the TUN",
        median(&ttfb_ms).unwrap_or(f64::NAN)
    );
    Ok(SocksResult {
        ttfb_ms,
        bulk_tun_mbps,
        bulk_socks_mbps,
    })
}

/// Plain veth between two namespaces: the ceiling both overlays run under.
fn baseline(opts: &Options) -> R<Value> {
    let a = lab().netns("b0")?;
    let b = lab().netns("b1")?;
    let (_, ip_b) = Veth::internet(&a, &b, 9)?.ips();
    let dir = std::env::temp_dir();
    let _server = measure::iperf3_server(&b, &ip_b, &dir.join("netbench-veth-iperf3.log"))?;
    let ping = measure::ping(&a, &ip_b, opts.pings, 0.01)?;
    let tcp = measure::iperf3(&a, &ip_b, opts.secs, 1, &[])?;
    eprintln!(
        "netbench: plain veth: {:.0} Mbit/s, ping avg {:.3} ms",
        tcp.mbps,
        ping.avg().unwrap_or(f64::NAN)
    );
    Ok(json!({"tcp_1_mbps": tcp.mbps, "ping": ping.json()}))
}

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("netbench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = preflight(&opts) {
        eprintln!("netbench: {e}");
        std::process::exit(2);
    }
    let on_signal = |sig, _: &umbra_netlab::Cleanup| {
        eprintln!("netbench: signal {sig}, removed the namespaces");
    };
    let signals = [
        umbra_netlab::SIGINT,
        umbra_netlab::SIGTERM,
        umbra_netlab::SIGHUP,
    ];
    if let Err(e) = umbra_netlab::cleanup_on_signals(&signals, on_signal) {
        eprintln!("netbench: {e}");
        std::process::exit(1);
    }
    umbra_netlab::cleanup_on_panic();
    lab().sweep_stale(|_| None);
    let code = match run(&opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("netbench: {e}");
            1
        }
    };
    lab().cleanup();
    std::process::exit(code);
}

fn run(opts: &Options) -> R<()> {
    let started = Instant::now();
    let load_before = umbra_bench::procfs::load_average();
    let work = std::env::temp_dir().join(format!("umbra-netbench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let topologies: &[usize] = if opts.quick { &[2] } else { &[2, 5] };
    if opts.profile {
        return profile::run(opts, topologies, &work);
    }
    if opts.nat {
        return nat::run(opts, &work);
    }
    let mut results: Vec<(System, usize, TopoResult)> = Vec::new();
    let mut tor: Option<TorResult> = None;
    let outcome = (|| -> R<Value> {
        let base = baseline(opts)?;
        for &n in topologies {
            for &system in &opts.systems {
                results.push((system, n, measure(opts, system, n, &work)?));
            }
        }
        if opts.tor {
            tor = Some(tor::measure(opts, &work)?);
        }
        Ok(base)
    })();
    let baseline = match outcome {
        Ok(b) => b,
        Err(e) => {
            eprintln!("netbench: logs and configs kept in {}", work.display());
            return Err(e);
        }
    };
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    let load_after = umbra_bench::procfs::load_average();
    let report = report::Report {
        opts,
        results: &results,
        tor: tor.as_ref(),
        baseline,
        load: [load_before, load_after],
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    print!("{}", report.table());
    report.write(&opts.out)?;
    Ok(())
}
