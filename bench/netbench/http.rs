//! The web server the time-to-first-byte and bulk measurements fetch from
//! (one nginx in a namespace, two files), and curl's timings of a fetch,
//! directly or through a SOCKS5 proxy (Tor's client).

use std::path::Path;
use std::time::Duration;

use umbra_netlab::{Netns, NginxConfig, Proc};

use crate::R;

/// The port nginx listens on.
pub(crate) const HTTP_PORT: u16 = 8080;
/// The small file: time to first byte.
pub(crate) const SMALL: &str = "small";
/// Its size in bytes.
const SMALL_BYTES: usize = 1024;
/// The bulk file: a sparse file larger than any run can fetch, so a bulk
/// run always ends at its time limit.
pub(crate) const BULK: &str = "bulk";
/// Its size in bytes (16 GiB, sparse: no disk is used).
const BULK_BYTES: u64 = 16 << 30;

/// An nginx serving [`SMALL`] and [`BULK`] on one address; stopped on drop.
#[derive(Debug)]
pub(crate) struct HttpServer {
    /// `http://<addr>:8080/`, with brackets around an IPv6 address.
    base: String,
    _nginx: Proc,
}

impl HttpServer {
    /// Writes the two files and nginx's config under `dir` and starts nginx
    /// in `ns` on `addr` (IPv4 or IPv6, which `ns` must hold); returns once
    /// it listens.
    pub(crate) fn start(ns: &Netns, addr: &str, dir: &Path) -> R<HttpServer> {
        let www = dir.join("www");
        std::fs::create_dir_all(&www).map_err(|e| format!("{}: {e}", www.display()))?;
        let small = www.join(SMALL);
        std::fs::write(&small, vec![b'u'; SMALL_BYTES])
            .map_err(|e| format!("{}: {e}", small.display()))?;
        let bulk = www.join(BULK);
        std::fs::File::create(&bulk)
            .and_then(|f| f.set_len(BULK_BYTES))
            .map_err(|e| format!("{}: {e}", bulk.display()))?;
        let host = if addr.contains(':') {
            format!("[{addr}]")
        } else {
            addr.to_string()
        };
        let listen = format!("{host}:{HTTP_PORT}");
        let nginx = NginxConfig::new(dir)
            .http(&listen, &www)
            .start(ns, HTTP_PORT)?;
        Ok(HttpServer {
            base: format!("http://{listen}/"),
            _nginx: nginx,
        })
    }

    /// The URL of `file`.
    pub(crate) fn url(&self, file: &str) -> String {
        format!("{}{file}", self.base)
    }
}

/// How curl reaches the server.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via<'a> {
    /// Straight to its address (over an overlay's TUN).
    Direct,
    /// Through a SOCKS5 proxy at `host:port` that resolves names itself.
    Socks(&'a str),
}

/// What curl reports of one fetch.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    /// HTTP status, 0 if none came.
    code: u16,
    /// Body bytes received.
    bytes: u64,
    /// Seconds from the start to the first byte of the response.
    first_byte_s: f64,
    /// Seconds from the start to the end.
    total_s: f64,
}

/// Parses curl's `-w '%{http_code} %{size_download} %{time_starttransfer}
/// %{time_total}'`.
fn parse_fetch(out: &str) -> Option<Fetch> {
    let mut f = out.split_whitespace();
    Some(Fetch {
        code: f.next()?.parse().ok()?,
        bytes: f.next()?.parse().ok()?,
        first_byte_s: f.next()?.parse().ok()?,
        total_s: f.next()?.parse().ok()?,
    })
}

/// One fetch of `url` from `ns`, cut at `max_secs`.
fn fetch(ns: &Netns, url: &str, via: Via<'_>, max_secs: f64) -> R<Fetch> {
    let max = format!("{max_secs}");
    let mut args = vec![
        "curl",
        "--silent",
        "--show-error",
        "--output",
        "/dev/null",
        "--max-time",
        &max,
        "--write-out",
        "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
    ];
    if let Via::Socks(proxy) = via {
        args.extend(["--socks5-hostname", proxy]);
    }
    args.push(url);
    let out = ns.run(&args)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_fetch(&text).ok_or_else(|| {
        format!(
            "curl {url} in {} printed {text:?}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// Whether one fetch of the small file from `ns` succeeds within
/// `max_secs` (a readiness probe).
pub(crate) fn fetches(ns: &Netns, server: &HttpServer, via: Via<'_>, max_secs: f64) -> bool {
    fetch(ns, &server.url(SMALL), via, max_secs).is_ok_and(|f| f.code == 200)
}

/// Time to first byte of the small file from `ns`, in ms: one warm-up
/// fetch, then `count` fetches `interval` seconds apart.
pub(crate) fn ttfb_series(
    ns: &Netns,
    server: &HttpServer,
    via: Via<'_>,
    count: usize,
    interval: f64,
) -> R<Vec<f64>> {
    let url = server.url(SMALL);
    let mut out = Vec::with_capacity(count);
    for i in 0..=count {
        let f = fetch(ns, &url, via, 10.0)?;
        if f.code != 200 || f.bytes != SMALL_BYTES as u64 {
            return Err(format!(
                "fetching {url} from {}: HTTP {} with {} bytes",
                ns.name(),
                f.code,
                f.bytes
            ));
        }
        if i > 0 {
            out.push(f.first_byte_s * 1000.0);
        }
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
    Ok(out)
}

/// One bulk transfer's result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bulk {
    /// Bytes received.
    pub(crate) bytes: u64,
    /// Rate from the first byte to the end, Mbit/s.
    pub(crate) mbps: f64,
}

/// Fetches the bulk file from `ns` for `secs` seconds.
pub(crate) fn bulk(ns: &Netns, server: &HttpServer, via: Via<'_>, secs: u32) -> R<Bulk> {
    let url = server.url(BULK);
    let f = fetch(ns, &url, via, f64::from(secs))?;
    let window = f.total_s - f.first_byte_s;
    if f.code != 200 || f.bytes == 0 || window <= 0.0 {
        return Err(format!(
            "fetching {url} from {} for {secs} s: HTTP {}, {} bytes",
            ns.name(),
            f.code,
            f.bytes
        ));
    }
    Ok(Bulk {
        bytes: f.bytes,
        mbps: f.bytes as f64 * 8.0 / window / 1e6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_write_out_is_parsed() {
        let f = parse_fetch("200 1024 0.012636 0.013001").expect("parses");
        assert_eq!((f.code, f.bytes), (200, 1024));
        assert!((f.first_byte_s - 0.012636).abs() < 1e-9);
        assert!((f.total_s - 0.013001).abs() < 1e-9);
        assert!(parse_fetch("000 0").is_none());
    }
}
