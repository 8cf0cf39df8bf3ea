//! iperf3 from one namespace to a server in another, parsed into
//! [`IperfResult`].

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, Netns, Proc, Result};

/// The port iperf3 servers listen on.
pub const IPERF_PORT: u16 = 5201;

/// An iperf3 server in a namespace; killed on drop.
#[derive(Debug)]
pub struct IperfServer {
    /// The server process.
    pub proc: Proc,
}

impl IperfServer {
    /// Starts `iperf3 -s` in `ns`, bound to `addr`, its output into `log`;
    /// with `once`, it serves one test and exits. Returns once it listens.
    pub fn start(ns: &Netns, addr: &str, log: &Path, once: bool) -> Result<IperfServer> {
        IperfServer::start_on(ns, addr, IPERF_PORT, log, once)
    }

    /// [`IperfServer::start`] on `port`.
    pub fn start_on(
        ns: &Netns,
        addr: &str,
        port: u16,
        log: &Path,
        once: bool,
    ) -> Result<IperfServer> {
        let mut c = ns.command("iperf3");
        c.arg("-s");
        if once {
            c.arg("-1");
        }
        c.args(["-B", addr, "-p", &port.to_string()]);
        let mut proc = Proc::spawn(c, log)?;
        let limit = Duration::from_secs(5);
        let deadline = Instant::now() + limit;
        while !ns.listens_tcp(port) {
            if let Some(status) = proc.try_wait() {
                return Err(Error::Exited {
                    what: "the iperf3 server".into(),
                    status,
                    log: proc.log_text(),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("iperf3 to listen on {addr}:{port}"),
                    limit,
                    detail: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(IperfServer { proc })
    }
}

/// How to run the iperf3 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IperfOptions {
    /// Seconds to send (`-t`).
    pub secs: u32,
    /// Parallel streams (`-P`).
    pub streams: u32,
    /// Seconds between interval reports (`-i`), if not iperf3's default.
    pub interval_secs: Option<u32>,
    /// How long to try to connect, ms.
    pub connect_timeout_ms: u32,
    /// The server's port.
    pub port: u16,
    /// Bytes to send (`-n`) instead of `secs`, if set.
    pub bytes: Option<u64>,
}

impl IperfOptions {
    /// `secs` seconds, one stream, 5 s to connect.
    pub fn new(secs: u32) -> IperfOptions {
        IperfOptions {
            secs,
            streams: 1,
            interval_secs: None,
            connect_timeout_ms: 5000,
            port: IPERF_PORT,
            bytes: None,
        }
    }
}

/// What one iperf3 TCP run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    /// Throughput at the receiver, bit/s.
    pub bits_per_second: f64,
    /// Bytes the receiver got.
    pub bytes: u64,
    /// Retransmits the sender saw.
    pub retransmits: u64,
    /// iperf3's whole JSON report.
    pub report: Value,
}

impl IperfResult {
    /// Throughput at the receiver, Mbit/s.
    pub fn mbps(&self) -> f64 {
        self.bits_per_second / 1e6
    }

    /// Reads iperf3's `-J` report; an error if it is no JSON or says one.
    pub fn parse(stdout: &[u8], stderr: &[u8]) -> Result<IperfResult> {
        let report: Value = serde_json::from_slice(stdout).map_err(|e| {
            Error::Output(format!(
                "iperf3 printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(stdout).trim(),
                String::from_utf8_lossy(stderr).trim()
            ))
        })?;
        if let Some(err) = report["error"].as_str() {
            return Err(Error::Output(format!("iperf3 failed: {err}")));
        }
        let end = &report["end"];
        Ok(IperfResult {
            bits_per_second: end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            report,
        })
    }
}

/// Runs an iperf3 TCP client in `client` against `server_addr` (IPv4 or
/// IPv6).
pub fn iperf3(client: &Netns, server_addr: &str, opts: IperfOptions) -> Result<IperfResult> {
    let family = if server_addr.contains(':') {
        "-6"
    } else {
        "-4"
    };
    let (secs, streams, timeout) = (
        opts.secs.to_string(),
        opts.streams.to_string(),
        opts.connect_timeout_ms.to_string(),
    );
    let port = opts.port.to_string();
    let bytes = opts.bytes.map(|b| b.to_string());
    let mut args = vec!["iperf3", family, "-J", "-c", server_addr, "-p", &port];
    match &bytes {
        Some(n) => args.extend(["-n", n]),
        None => args.extend(["-t", &secs]),
    }
    if opts.streams != 1 {
        args.extend(["-P", &streams]);
    }
    let interval = opts.interval_secs.map(|i| i.to_string());
    if let Some(i) = &interval {
        args.extend(["-i", i]);
    }
    args.extend(["--connect-timeout", &timeout]);
    let out = client.run(&args)?;
    IperfResult::parse(&out.stdout, &out.stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_and_an_error() {
        let ok = br#"{"end":{"sum_received":{"bits_per_second":8e8,"bytes":300000000},"sum_sent":{"retransmits":7}}}"#;
        let r = IperfResult::parse(ok, b"").expect("parses");
        assert_eq!(r.mbps(), 800.0);
        assert_eq!((r.bytes, r.retransmits), (300_000_000, 7));
        let err = br#"{"error":"unable to connect to server"}"#;
        assert!(IperfResult::parse(err, b"").is_err());
        assert!(IperfResult::parse(b"garbage", b"").is_err());
    }
}
