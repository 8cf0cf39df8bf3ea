//! [`ping`]: `ping` from a namespace, with its replies parsed into
//! [`PingStats`].

use crate::{Netns, Result};

/// How to ping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingOptions {
    /// Echo requests to send.
    pub count: usize,
    /// Seconds between them.
    pub interval: f64,
    /// Seconds to wait for each reply (`-W`).
    pub wait_secs: u32,
    /// Whether each reply line carries its unix time (`-D`).
    pub timestamps: bool,
}

impl PingOptions {
    /// `count` pings `interval` seconds apart, 2 s wait, no timestamps.
    pub fn new(count: usize, interval: f64) -> PingOptions {
        PingOptions {
            count,
            interval,
            wait_secs: 2,
            timestamps: false,
        }
    }
}

/// One echo reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingReply {
    /// The unix time ping received it (with [`PingOptions::timestamps`]).
    pub at: Option<f64>,
    /// Its round-trip time, ms.
    pub rtt_ms: f64,
}

/// What one `ping` run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: usize,
    /// The replies, in order.
    pub replies: Vec<PingReply>,
    /// `min/avg/max/mdev`, as ping printed it.
    pub summary: Option<String>,
    /// Whether ping exited 0 (some reply came).
    pub success: bool,
    /// What ping printed, stdout then stderr.
    pub output: String,
}

impl PingStats {
    /// Replies received.
    pub fn received(&self) -> usize {
        self.replies.len()
    }

    /// The round-trip times, ms.
    pub fn rtts_ms(&self) -> Vec<f64> {
        self.replies.iter().map(|r| r.rtt_ms).collect()
    }

    /// Parses ping's output.
    pub fn parse(sent: usize, output: &str, success: bool) -> PingStats {
        let replies = output.lines().filter_map(parse_reply).collect();
        let summary = output
            .lines()
            .find_map(|l| l.split(" = ").nth(1).filter(|_| l.starts_with("rtt")))
            .map(|s| s.trim_end_matches(" ms").to_string());
        PingStats {
            sent,
            replies,
            summary,
            success,
            output: output.to_string(),
        }
    }
}

/// One reply line (`[1795245938.123456] 64 bytes from …: … time=0.456 ms`).
fn parse_reply(line: &str) -> Option<PingReply> {
    let rtt_ms: f64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("time="))?
        .parse()
        .ok()?;
    let at = line
        .strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .and_then(|(t, _)| t.parse().ok());
    Some(PingReply { at, rtt_ms })
}

/// Pings `addr` (IPv4 or IPv6) from `ns`. No reply is not an error: see
/// [`PingStats::received`].
pub fn ping(ns: &Netns, addr: &str, opts: PingOptions) -> Result<PingStats> {
    let family = if addr.contains(':') { "-6" } else { "-4" };
    let (count, interval, wait) = (
        opts.count.to_string(),
        opts.interval.to_string(),
        opts.wait_secs.to_string(),
    );
    let mut args = vec!["ping", family, "-n"];
    if opts.timestamps {
        args.push("-D");
    }
    args.extend(["-c", &count, "-i", &interval, "-W", &wait, addr]);
    let out = ns.run(&args)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PingStats::parse(opts.count, &text, out.status.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_with_and_without_timestamps() {
        let l = "[1795245938.123456] 64 bytes from 600::1: icmp_seq=1 ttl=64 time=0.456 ms";
        assert_eq!(
            parse_reply(l),
            Some(PingReply {
                at: Some(1_795_245_938.123456),
                rtt_ms: 0.456
            })
        );
        let l = "64 bytes from 198.18.10.2: icmp_seq=3 ttl=64 time=12.5 ms";
        assert_eq!(
            parse_reply(l),
            Some(PingReply {
                at: None,
                rtt_ms: 12.5
            })
        );
        assert_eq!(parse_reply("PING 600::1 56 data bytes"), None);
    }

    #[test]
    fn a_whole_run() {
        let out = "PING 600::1 56 data bytes\n\
                   64 bytes from 600::1: icmp_seq=1 ttl=64 time=1.50 ms\n\
                   64 bytes from 600::1: icmp_seq=2 ttl=64 time=0.50 ms\n\n\
                   --- 600::1 ping statistics ---\n\
                   2 packets transmitted, 2 received, 0% packet loss, time 201ms\n\
                   rtt min/avg/max/mdev = 0.500/1.000/1.500/0.500 ms\n";
        let s = PingStats::parse(2, out, true);
        assert_eq!(s.received(), 2);
        assert_eq!(s.rtts_ms(), vec![1.5, 0.5]);
        assert_eq!(s.summary.as_deref(), Some("0.500/1.000/1.500/0.500"));
    }
}
