//! `slowloris`: holds many half-open TLS connections to one address, for
//! the namespace test `tests/netns/abuse.rs`, which runs it with `ip netns
//! exec`. Test-only.
//!
//! ```text
//! slowloris ADDR COUNT HOLD_SECS
//! ```
//!
//! Opens `COUNT` connections to `ADDR` at once (each connect may take 3 s),
//! sends each the first 3 bytes of a TLS record header and nothing more,
//! holds them `HOLD_SECS`, then prints one JSON line: `connected`,
//! `connect_failed`, `closed_by_server` (read an end, a reset or bytes
//! before the hold was over) and `held` (still open and silent at the end).

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one connect may take (a listener that stopped accepting leaves
/// it in the kernel's backlog, or lets the SYN go unanswered).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The start of a TLS handshake record: type and version, no length yet.
const PARTIAL_RECORD: [u8; 3] = [0x16, 0x03, 0x01];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    ConnectFailed,
    ClosedByServer,
    Held,
}

async fn one(addr: SocketAddr, hold: Duration) -> Fate {
    let Ok(Ok(mut s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
    else {
        return Fate::ConnectFailed;
    };
    if s.write_all(&PARTIAL_RECORD).await.is_err() {
        return Fate::ClosedByServer;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(hold, s.read(&mut buf)).await {
        // Silent for the whole hold: what a slowloris wants.
        Err(_) => Fate::Held,
        // An end, a reset, or an answer: the server let go.
        Ok(_) => Fate::ClosedByServer,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, count, hold] = args.as_slice() else {
        eprintln!("usage: slowloris ADDR COUNT HOLD_SECS");
        std::process::exit(2);
    };
    let (Ok(addr), Ok(count), Ok(hold)) = (
        addr.parse::<SocketAddr>(),
        count.parse::<usize>(),
        hold.parse::<u64>(),
    ) else {
        eprintln!("slowloris: bad ADDR, COUNT or HOLD_SECS");
        std::process::exit(2);
    };
    let hold = Duration::from_secs(hold);
    let tasks: Vec<_> = (0..count).map(|_| tokio::spawn(one(addr, hold))).collect();
    let mut fates = Vec::with_capacity(count);
    for t in tasks {
        fates.push(t.await.unwrap_or(Fate::ConnectFailed));
    }
    let n = |f: Fate| fates.iter().filter(|&&x| x == f).count();
    let out = json!({
        "connected": count - n(Fate::ConnectFailed),
        "connect_failed": n(Fate::ConnectFailed),
        "closed_by_server": n(Fate::ClosedByServer),
        "held": n(Fate::Held),
    });
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{out}");
}
