//! `punch-probe`: one side of a TCP hole punch (`umbra_transport::io::
//! simultaneous_open`, docs/architecture.md, "NAT") for the namespace test
//! `tests/netns/punch.rs`, which runs it with `ip netns exec`. Test-only.
//!
//! ```text
//! punch-probe reflect <listen addr>
//! punch-probe observe <reflector addr> <local port>...
//! punch-probe punch --local-port P --remote ADDR --start-unix-ms T --timeout-ms M
//!                   [--primer-ttl N] [--hold-ms H]
//! ```
//!
//! - `reflect` answers every connection with the address it came from (one
//!   line) and closes it: how a host learns the external endpoint its NAT
//!   gives a local port.
//! - `observe` connects from each local port to the reflector and prints
//!   `{"observed": {"<port>": "<ip:port>", …}}`.
//! - `punch` waits until the wall clock reads `T` (so two probes in two
//!   namespaces start at chosen moments), runs `simultaneous_open`, and on
//!   success sends one line and reads the peer's; it keeps the connection
//!   `H` ms more, then prints one JSON line: `ok`, `local`, `peer`, `error`
//!   (its text) and `kind` (the `PunchError` variant), `elapsed_ms` (from
//!   the connect to the connection or the error), `began_unix_us` (when the
//!   connect began) and `line` (what the peer sent).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use umbra_transport::io::{Punch, PunchError, simultaneous_open};

/// How long the one-line exchange (and the reflector's answer) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `observe` waits for each connection to the reflector.
const OBSERVE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn usage() -> ! {
    fail(
        "usage: punch-probe reflect ADDR | observe REFLECTOR PORT... | punch --local-port P --remote ADDR --start-unix-ms T --timeout-ms M [--primer-ttl N] [--hold-ms H]",
    )
}

fn fail(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "punch-probe: {msg}");
    std::process::exit(2)
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> T {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("bad {what}: {s:?}")))
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("reflect") => reflect(parse("address", args.get(1).unwrap_or_else(|| usage()))).await,
        Some("observe") if args.len() >= 3 => {
            let reflector = parse("address", &args[1]);
            let ports: Vec<u16> = args[2..].iter().map(|p| parse("port", p)).collect();
            observe(reflector, &ports).await;
        }
        Some("punch") => punch(&args[1..]).await,
        _ => usage(),
    }
}

async fn reflect(listen: SocketAddr) {
    let l = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| fail(&format!("bind {listen}: {e}")));
    loop {
        let Ok((mut s, from)) = l.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = s.write_all(format!("{from}\n").as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// The address the reflector saw a connection from `local_port` come from.
async fn observed(reflector: SocketAddr, local_port: u16) -> Result<String, String> {
    let p = Punch {
        local_port,
        remote: reflector,
        primer_ttl: None,
        timeout: OBSERVE_CONNECT_TIMEOUT,
    };
    let s = simultaneous_open(&p).await.map_err(|e| e.to_string())?;
    let mut line = String::new();
    tokio::time::timeout(EXCHANGE_TIMEOUT, BufReader::new(s).read_line(&mut line))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(line.trim().to_string())
}

async fn observe(reflector: SocketAddr, ports: &[u16]) {
    let mut seen = BTreeMap::new();
    for &port in ports {
        let got = observed(reflector, port)
            .await
            .unwrap_or_else(|e| fail(&format!("observe from port {port}: {e}")));
        seen.insert(port.to_string(), got);
    }
    emit(&json!({ "observed": seen }));
}

fn kind(e: &PunchError) -> &'static str {
    match e {
        PunchError::Bind(_) => "Bind",
        PunchError::TupleInUse => "TupleInUse",
        PunchError::Refused => "Refused",
        PunchError::TimedOut => "TimedOut",
        PunchError::Io(_) => "Io",
    }
}

async fn punch(args: &[String]) {
    let mut flags = BTreeMap::new();
    for pair in args.chunks(2) {
        match pair {
            [k, v] if k.starts_with("--") => {
                flags.insert(k.trim_start_matches("--").to_string(), v.clone());
            }
            _ => usage(),
        }
    }
    let get = |k: &str| flags.get(k).map(String::as_str);
    let need = |k: &str| get(k).unwrap_or_else(|| usage());
    let p = Punch {
        local_port: parse("port", need("local-port")),
        remote: parse("address", need("remote")),
        primer_ttl: get("primer-ttl").map(|t| parse("TTL", t)),
        timeout: Duration::from_millis(parse("timeout", need("timeout-ms"))),
    };
    let start = Duration::from_millis(parse("start time", need("start-unix-ms")));
    let hold = Duration::from_millis(get("hold-ms").map_or(0, |h| parse("hold", h)));

    tokio::time::sleep(start.saturating_sub(unix_now())).await;
    let began_unix_us = unix_now().as_micros();
    let began = Instant::now();
    let result = simultaneous_open(&p).await;
    let elapsed_ms = began.elapsed().as_secs_f64() * 1e3;
    let mut report = json!({
        "ok": false,
        "local": Value::Null,
        "peer": Value::Null,
        "error": Value::Null,
        "kind": Value::Null,
        "elapsed_ms": elapsed_ms,
        "began_unix_us": began_unix_us as u64,
        "line": Value::Null,
    });
    match result {
        Err(e) => {
            report["error"] = e.to_string().into();
            report["kind"] = kind(&e).into();
        }
        Ok(s) => {
            let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
            report["local"] = local.clone().into();
            report["peer"] = s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default()
                .into();
            match exchange(s, &local, hold).await {
                Ok(line) => {
                    report["ok"] = true.into();
                    report["line"] = line.into();
                }
                Err(e) => report["error"] = format!("exchange: {e}").into(),
            }
        }
    }
    emit(&report);
}

/// Sends `hello from <local>` and reads the peer's line; keeps the
/// connection `hold` longer.
async fn exchange(s: TcpStream, local: &str, hold: Duration) -> Result<String, String> {
    let (r, mut w) = s.into_split();
    w.write_all(format!("hello from {local}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let n = tokio::time::timeout(EXCHANGE_TIMEOUT, BufReader::new(r).read_line(&mut line))
        .await
        .map_err(|_| "no line from the peer".to_string())?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the peer closed without a line".into());
    }
    tokio::time::sleep(hold).await;
    Ok(line.trim_end().to_string())
}
