//! What the network benchmark reads about the daemons from `/proc`: CPU time
//! and resident memory.

use std::fs;
use std::process::Command;
use std::sync::OnceLock;

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`;
/// 100 on every Linux this runs on if `getconf` is missing).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User plus system CPU seconds that `stat` (the text of `/proc/<pid>/stat`)
/// reports, all threads included.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: the fields
    // we want follow its last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_cpu_seconds(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

// Resident memory (`VmRSS`) is the lab's, which the tests read too.
pub use umbra_netlab::{parse_rss_kib, rss_kib};

/// The `RssAnon` line of a `/proc/<pid>/status` text, in KiB: resident
/// memory that is the process's own (heap, stacks), not file pages such as
/// its executable's code, which the page cache shares and can drop.
pub fn parse_rss_anon_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Anonymous resident memory of process `pid`, in KiB.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    parse_rss_anon_kib(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The 1-minute load average.
pub fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Strips ANSI colour escapes (`ESC [ … m`) from a log line.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Unix time in seconds of an RFC 3339 UTC timestamp as `tracing` writes it
/// (`2026-11-21T07:25:38.123456Z`).
pub fn parse_utc_timestamp(ts: &str) -> Option<f64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|s| s.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: f64 = t.next()?.parse().ok()?;
    let min: f64 = t.next()?.parse().ok()?;
    let s: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_follows_the_last_parenthesis() {
        let stat = "1234 (umbra (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        let ticks = clock_ticks();
        assert_eq!(parse_cpu_seconds(stat), Some(300.0 / ticks));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tumbra\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nRssAnon:\t 1024 kB\n";
        assert_eq!(parse_rss_kib(status), Some(5120));
        assert_eq!(parse_rss_anon_kib(status), Some(1024));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn log_timestamps_are_unix_seconds() {
        assert_eq!(parse_utc_timestamp("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_utc_timestamp("2026-11-21T07:25:38.5Z").expect("parses");
        assert!((t - 1_795_245_938.5).abs() < 1e-6, "{t}");
        assert_eq!(parse_utc_timestamp("yesterday"), None);
    }

    #[test]
    fn ansi_colours_are_removed() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m built"),
            "2026  INFO built"
        );
    }
}
