//! Checks of the network: each `[listen] https` address is free (or held
//! by the running umbra), the NAT type the running daemon's links show,
//! and each partner answers at its endpoint.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use umbra_transport::io::{self as tio, DialError};

use super::{Check, Context};
use crate::db::{AgreementState, Store};

/// How long a partner's TCP connect may take.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long its TLS handshake may take after that.
const PROBE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Each `[listen] https` address: held by the running daemon, or free to
/// bind.
pub(super) fn listen(ctx: &Context) -> Vec<Check> {
    let Some(config) = &ctx.config else {
        return vec![Check::skip("listen", "the config does not load")];
    };
    if config.listen.https.is_empty() {
        return vec![Check::skip(
            "listen",
            "[listen] https = []: this node only dials out",
        )];
    }
    let held: Vec<SocketAddr> = ctx
        .running
        .as_ref()
        .and_then(|r| r.status["listeners"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect();
    let daemon = if ctx.running.is_some() {
        Daemon::Answers
    } else if std::os::unix::net::UnixStream::connect(&ctx.socket)
        .is_err_and(|e| e.kind() == ErrorKind::PermissionDenied)
    {
        Daemon::Denied
    } else {
        Daemon::None
    };
    config
        .listen
        .https
        .iter()
        .map(|addr| listen_one(*addr, &held, daemon))
        .collect()
}

/// What doctor knows of a daemon on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    /// None answers.
    None,
    /// One answers (its listeners are known).
    Answers,
    /// The socket is there but this user may not use it.
    Denied,
}

fn listen_one(addr: SocketAddr, held: &[SocketAddr], daemon: Daemon) -> Check {
    let name = format!("listen {addr}");
    if held.contains(&addr) {
        return Check::ok(name, format!("{addr} is held by the running umbra"));
    }
    let port = addr.port();
    let find = format!("find it with `ss -ltnp 'sport = :{port}'` and stop it");
    match TcpListener::bind(addr) {
        Ok(_) if daemon == Daemon::Answers && port != 0 => Check::warn(
            name,
            format!(
                "{addr} is free, but the running umbra does not listen on it (it listens on {})",
                if held.is_empty() {
                    "nothing".to_string()
                } else {
                    held.iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            "restart the daemon (`systemctl restart umbra`): [listen] changes take effect only at start",
        ),
        Ok(_) => Check::ok(name, format!("{addr} is free")),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let also = match daemon {
                Daemon::Answers => " (the running umbra does not list it among its listeners)",
                Daemon::Denied => {
                    " (perhaps by the running umbra, whose control socket this user may not use: run doctor as its user or root to tell)"
                }
                Daemon::None => "",
            };
            Check::fail(
                name,
                format!("{addr} is in use by another process{also}"),
                format!("{find}, or set [listen] https to a free address"),
            )
        }
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => Check::fail(
            name,
            format!("no interface of this host has the address {}", addr.ip()),
            format!(
                "set [listen] https to an address this host has (`ip -br addr`), or to [::]:{port}"
            ),
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let listening = ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
                std::fs::read_to_string(f).is_ok_and(|t| listening_ports(&t).contains(&port))
            });
            if listening {
                Check::fail(
                    name,
                    format!(
                        "a socket already listens on port {port} (per /proc/net/tcp), and this user may not bind {addr} to be sure"
                    ),
                    format!("{find}, or set [listen] https to a free address"),
                )
            } else {
                Check::warn(
                    name,
                    format!(
                        "this user may not bind {addr} to test it ({e}); nothing listens on port {port} per /proc/net/tcp"
                    ),
                    "run `sudo umbra doctor` to test the bind itself",
                )
            }
        }
        Err(e) => Check::fail(
            name,
            format!("binding {addr} failed: {e}"),
            "set [listen] https to an address and port this host can listen on",
        ),
    }
}

/// The local ports in state LISTEN in a `/proc/net/tcp` or `tcp6` text.
pub(super) fn listening_ports(table: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// The NAT type the running daemon's outbound links show (its `status`'s
/// `nat`, docs/architecture.md, "NAT").
pub(super) fn nat(ctx: &Context) -> Check {
    match &ctx.running {
        Some(r) => nat_of(&r.status["nat"]),
        None => Check::skip(
            "NAT type",
            "no daemon answers: the NAT type is learned from its live links",
        ),
    }
}

fn nat_of(nat: &serde_json::Value) -> Check {
    const NAME: &str = "NAT type";
    let external: Vec<&str> = nat["external"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    let seen = if external.is_empty() {
        String::new()
    } else {
        format!(" (peers see {})", external.join(", "))
    };
    // A port the gateway forwards makes the node reachable whatever its NAT's kind
    // (docs/architecture.md, "Port mapping").
    if let Some(m) = nat["port_mapping"].as_object() {
        let field = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("-");
        let kind = nat["mapping"].as_str().unwrap_or("unknown");
        return Check::ok(
            NAME,
            format!(
                "{kind}; the gateway forwards {} to the link port ({}){seen}",
                field("external"),
                field("protocol")
            ),
        );
    }
    match nat["mapping"].as_str() {
        Some("public") => Check::ok(NAME, format!("public: no NAT in front of this node{seen}")),
        Some("endpoint-independent") => Check::ok(
            NAME,
            format!("endpoint-independent NAT: one external address for all peers{seen}"),
        ),
        Some("endpoint-dependent") => Check::warn(
            NAME,
            format!("endpoint-dependent NAT: each peer sees a different external port{seen}"),
            "partners behind NATs link with this node only through a relay (a partner both share; slower, and limited by that partner's [nat] relay_rate): turn on UPnP-IGD, NAT-PMP or PCP at the gateway ([nat] port_mapping) for direct links",
        ),
        _ => Check::skip(
            NAME,
            format!("unknown: it takes live outbound links to two partners to tell{seen}"),
        ),
    }
}

/// One node this node dials: a `[[peer]]` or a stored agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Partner {
    key: [u8; 32],
    endpoints: Vec<String>,
    /// Where it comes from, for the fix: `[[peer]]` or `agreement ID`.
    source: String,
}

/// Each partner: its link is up per the running daemon, or one of its
/// endpoints answers TCP and TLS with HTTP/2 as a listener does.
pub(super) fn partners(ctx: &Context) -> Vec<Check> {
    let Some(config) = &ctx.config else {
        return vec![Check::skip("partners", "the config does not load")];
    };
    let mut list: Vec<Partner> = config
        .peers
        .iter()
        .map(|p| Partner {
            key: p.key.0,
            endpoints: p.endpoints.clone(),
            source: "[[peer]]".into(),
        })
        .collect();
    let mut checks = Vec::new();
    let db = config.database_path();
    if db.exists() {
        match Store::open_read_only(&db).and_then(|s| s.agreements()) {
            Ok(agreements) => {
                for a in agreements {
                    if a.state != AgreementState::Active || a.endpoints.is_empty() {
                        continue;
                    }
                    let source = format!("agreement {}", a.id);
                    match list.iter_mut().find(|p| p.key == a.peer_key) {
                        // The daemon dials a [[peer]] without endpoints at
                        // its agreement's (`links/dial.rs`).
                        Some(p) if p.endpoints.is_empty() => {
                            p.endpoints = a.endpoints;
                            p.source = source;
                        }
                        Some(_) => {}
                        None => list.push(Partner {
                            key: a.peer_key,
                            endpoints: a.endpoints,
                            source,
                        }),
                    }
                }
            }
            Err(e) => checks.push(Check::warn(
                "agreements",
                format!("cannot read the stored agreements: {e:#}"),
                "run `umbra agreements` with the daemon running to see them",
            )),
        }
    }
    if list.is_empty() && checks.is_empty() {
        return vec![Check::skip(
            "partners",
            "no [[peer]] in the config and no stored agreement with an endpoint",
        )];
    }
    let up: Vec<String> = ctx
        .running
        .as_ref()
        .and_then(|r| r.peers.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|p| p["state"] == "up")
        .filter_map(|p| p["key"].as_str().map(str::to_string))
        .collect();
    let running = ctx.running.is_some();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            checks.push(Check::fail(
                "partners",
                format!("cannot start a runtime to dial them: {e}"),
                "run umbra doctor again",
            ));
            return checks;
        }
    };
    let results = rt.block_on(futures::future::join_all(
        list.iter()
            .map(|p| partner(p, up.contains(&hex::encode(p.key)), running)),
    ));
    checks.extend(results);
    checks
}

/// One partner's check.
async fn partner(p: &Partner, link_up: bool, running: bool) -> Check {
    let key = hex::encode(p.key);
    let short = &key[..16];
    let name = format!("partner {short}");
    let endpoints = p.endpoints.join(", ");
    if link_up {
        return Check::ok(
            name,
            format!("{short} at {endpoints}: the link is up (per the running daemon)"),
        );
    }
    if p.endpoints.is_empty() {
        return Check::skip(
            name,
            format!("{short} ({}) has no endpoint: it dials this node", p.source),
        );
    }
    let mut errors = Vec::new();
    for endpoint in &p.endpoints {
        let started = Instant::now();
        match tio::probe(
            endpoint,
            None,
            PROBE_CONNECT_TIMEOUT,
            PROBE_HANDSHAKE_TIMEOUT,
        )
        .await
        {
            Ok(remote) => {
                let ms = started.elapsed().as_millis();
                let detail = format!(
                    "{short} at {endpoint} ({remote}) answers TCP and TLS with HTTP/2 in {ms} ms, as an umbra listener does"
                );
                return if running {
                    Check::warn(
                        name,
                        format!("{detail}, but the running daemon has no link to it"),
                        "read the daemon's log for why the link fails (`journalctl -u umbra`); the partner must list this node's key too",
                    )
                } else {
                    Check::ok(name, detail)
                };
            }
            Err(e) => errors.push(e),
        }
    }
    let detail = format!(
        "{short} ({}): {}",
        p.source,
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    );
    Check::fail(name, detail, partner_fix(errors.first(), p))
}

/// What to do about the first endpoint's failure.
fn partner_fix(e: Option<&DialError>, p: &Partner) -> String {
    let where_set = if p.source == "[[peer]]" {
        "its [[peer]] endpoints in the config".to_string()
    } else {
        format!("the endpoint in {} (from its invite)", p.source)
    };
    match e {
        Some(DialError::Connect { source, .. })
            if source.kind() == ErrorKind::ConnectionRefused =>
        {
            format!(
                "nothing listens there: check that the partner's node is running (`umbra status` on it) and listens on that port, or correct {where_set}"
            )
        }
        Some(DialError::Timeout {
            stage: "connect", ..
        }) => format!(
            "no answer: check the firewalls on the way let TCP to that port through and that the host is up, or correct {where_set}"
        ),
        Some(DialError::Timeout { .. }) => format!(
            "it takes TCP but does not finish a TLS handshake: something that is not an umbra listener holds that port, or the partner's host is overloaded; check {where_set}"
        ),
        Some(DialError::Tls { .. } | DialError::NotHttp2 { .. }) => {
            format!("something that is not an umbra listener answers there: check {where_set}")
        }
        _ => format!(
            "check the partner's host is reachable from here (name, route, firewall), or correct {where_set}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_types() {
        use super::super::Status;
        let of = |m: &str| {
            nat_of(
                &serde_json::json!({"mapping": m, "external": ["198.18.11.2:443"], "port_mapping": null}),
            )
        };
        assert_eq!(of("public").status, Status::Ok);
        assert_eq!(of("endpoint-independent").status, Status::Ok);
        let edm = of("endpoint-dependent");
        assert_eq!(edm.status, Status::Warn);
        assert!(
            edm.fix
                .as_deref()
                .is_some_and(|f| f.contains("only through a relay"))
        );
        assert!(edm.detail.contains("198.18.11.2:443"), "{edm:?}");
        assert_eq!(of("unknown").status, Status::Skip);
        let mapped = nat_of(
            &serde_json::json!({"mapping": "endpoint-dependent", "external": [],
            "port_mapping": {"protocol": "upnp", "external": "198.18.21.2:443"}}),
        );
        assert_eq!(mapped.status, Status::Ok);
        assert!(
            mapped.detail.contains("forwards 198.18.21.2:443"),
            "{mapped:?}"
        );
        // A daemon too old to report it.
        assert_eq!(nat_of(&serde_json::Value::Null).status, Status::Skip);
    }

    #[test]
    fn listening_ports_of_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0212A8C6:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n\
   2: 0212A8C6:D2F0 0112A8C6:01BB 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n\
   3: garbage\n";
        assert_eq!(listening_ports(table), [631, 443]);
        let tcp6 = "  sl  local_address                         remote_address                        st\n\
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(listening_ports(tcp6), [443]);
        assert!(listening_ports("").is_empty());
    }

    #[test]
    fn a_free_port_and_a_taken_one() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let c = listen_one(addr, &[], Daemon::None);
        assert_eq!(c.status, super::super::Status::Fail, "{c:?}");
        assert!(
            c.fix
                .as_deref()
                .is_some_and(|f| f.contains(&format!("sport = :{}", addr.port())))
        );
        assert_eq!(
            listen_one(addr, &[addr], Daemon::Answers).status,
            super::super::Status::Ok
        );
        drop(taken);
        assert_eq!(
            listen_one(addr, &[], Daemon::None).status,
            super::super::Status::Ok
        );
        // Free, but a running daemon does not listen there: restart it.
        let other: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let c = listen_one(addr, &[other], Daemon::Answers);
        assert_eq!(c.status, super::super::Status::Warn, "{c:?}");
        assert!(c.detail.contains("127.0.0.1:1"), "{c:?}");
        assert!(c.fix.is_some_and(|f| f.contains("restart")));
    }
}
