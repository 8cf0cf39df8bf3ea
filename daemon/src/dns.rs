//! The `.umbra` DNS responder (docs/architecture.md, "Names"): UDP and TCP
//! on `[dns] listen`, a loopback address, answered by
//! [`umbra_routing::dns::Zone`]. What is not a DNS query is dropped and
//! counted; everything outside `.umbra` is refused.
//!
//! TCP (RFC 7766) carries the answers too large for a client's UDP buffer,
//! which UDP sends truncated: each message has a 2-byte length in front,
//! framed here by hand, while the message itself is still read and written
//! by `hickory-proto` in the zone. A connection may send its queries one
//! after another without waiting (pipelining), and gets its replies in
//! order. It is bounded: at most [`MAX_TCP_CONNECTIONS`] at once (more are
//! closed as they come), [`TCP_IDLE`] to send the next whole query or take
//! a reply, and closed after a message that is not a DNS query, which is
//! counted as `dropped` like such a datagram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use umbra_config::Config;
use umbra_routing::dns::{Outcome, Transport, Zone};

// A petname may never look like a key's name: the config's rule and the
// names' encoding must agree on the length of a key label.
const _: () = assert!(umbra_config::NAME_KEY_LABEL_LEN == umbra_routing::name::KEY_LABEL_LEN);

/// The largest DNS message over UDP read (EDNS allows up to 4096 bytes).
const MAX_QUERY_LEN: usize = 4096;

/// The most TCP connections served at once. Programs on this host open one
/// for an answer too large for UDP and close it soon after, so a few would
/// do; this many leaves room for a resolver that keeps some open.
pub(crate) const MAX_TCP_CONNECTIONS: usize = 64;

/// How long a TCP connection may take to send its next query, whole, or to
/// take a reply, before it is closed. RFC 7766 leaves the figure to the
/// server and suggests seconds.
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the responder did, for `umbra status`.
#[derive(Debug, Default)]
pub(crate) struct DnsCounters {
    answered: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    malformed: AtomicU64,
    dropped: AtomicU64,
    tcp_connections: AtomicU64,
    tcp_turned_away: AtomicU64,
}

impl DnsCounters {
    /// `status`'s `dns`.
    pub(crate) fn json(&self, listen: SocketAddr) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "listen": listen.to_string(),
            "answered": get(&self.answered),
            "nxdomain": get(&self.nxdomain),
            "refused": get(&self.refused),
            "malformed": get(&self.malformed),
            "dropped": get(&self.dropped),
            "tcp_connections": get(&self.tcp_connections),
            "tcp_turned_away": get(&self.tcp_turned_away),
        })
    }

    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Answered => &self.answered,
            Outcome::NxDomain => &self.nxdomain,
            Outcome::Refused => &self.refused,
            Outcome::Malformed => &self.malformed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The zone the config describes.
pub(crate) fn zone(config: &Config) -> Zone {
    Zone {
        prefix: config.address_prefix,
        petnames: config
            .names
            .iter()
            .map(|(label, key)| (label.clone(), key.0))
            .collect(),
        srv: config.dns.srv.clone(),
        txt: config.dns.txt.clone(),
    }
}

/// The responder's sockets: UDP and TCP on the same address and port.
#[derive(Debug)]
pub(crate) struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

/// Binds the responder's sockets.
pub(crate) async fn bind(addr: SocketAddr) -> Result<Sockets> {
    let udp = UdpSocket::bind(addr)
        .await
        .with_context(|| format!("[dns] listen = \"{addr}\": cannot listen (UDP)"))?;
    // The port UDP got, should the config have asked for any (port 0).
    let bound = udp.local_addr().context("the DNS socket's address")?;
    let tcp = TcpListener::bind(bound)
        .await
        .with_context(|| format!("[dns] listen = \"{addr}\": cannot listen (TCP)"))?;
    Ok(Sockets { udp, tcp })
}

/// Answers queries on `sockets` until a UDP receive fails for good.
pub(crate) async fn serve(sockets: Sockets, zone: Zone, counters: Arc<DnsCounters>) -> Result<()> {
    let zone = Arc::new(zone);
    tokio::try_join!(
        serve_udp(sockets.udp, &zone, &counters),
        serve_tcp(sockets.tcp, &zone, &counters),
    )?;
    Ok(())
}

async fn serve_udp(socket: UdpSocket, zone: &Zone, counters: &DnsCounters) -> Result<()> {
    let mut buf = vec![0u8; MAX_QUERY_LEN];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await.context("receiving DNS")?;
        let Some((reply, outcome)) = buf.get(..n).and_then(|q| zone.answer(q, Transport::Udp))
        else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, len = n, "dropped a packet that is not a DNS query");
            continue;
        };
        counters.count(outcome);
        if let Err(e) = socket.send_to(&reply, from).await {
            tracing::debug!(%from, error = %e, "could not send a DNS answer");
        }
    }
}

/// Accepts TCP connections, at most [`MAX_TCP_CONNECTIONS`] served at once.
/// Never ends: a failed accept (out of file descriptors) is waited out.
async fn serve_tcp(
    listener: TcpListener,
    zone: &Arc<Zone>,
    counters: &Arc<DnsCounters>,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Owned here, so the connections end with the responder.
    let mut connections = JoinSet::new();
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "could not accept a DNS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            counters.tcp_turned_away.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "too many DNS connections; closed a new one");
            continue;
        };
        counters.tcp_connections.fetch_add(1, Ordering::Relaxed);
        let zone = Arc::clone(zone);
        let counters = Arc::clone(counters);
        connections.spawn(async move {
            serve_connection(stream, &zone, &counters, TCP_IDLE).await;
            drop(slot);
        });
    }
}

/// Answers the queries of one TCP connection (or any stream) in order, until
/// it closes, idles `idle`, or sends what is not a DNS query.
async fn serve_connection<S>(mut stream: S, zone: &Zone, counters: &DnsCounters, idle: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // One deadline for the whole message, its length and its bytes.
        let Ok(Ok(query)) = timeout(idle, read_message(&mut stream)).await else {
            return;
        };
        let Some((reply, outcome)) = zone.answer(&query, Transport::Tcp) else {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                len = query.len(),
                "dropped a TCP message that is not a DNS query, and its connection"
            );
            return;
        };
        counters.count(outcome);
        // The zone keeps a TCP reply within the prefix's 65,535 bytes.
        let Some(framed) = frame(&reply) else {
            return;
        };
        if !matches!(timeout(idle, stream.write_all(&framed)).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// `message` with its 2-byte length in front; `None` if it is longer than
/// the length can say.
fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// One length-prefixed message from `stream`.
async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A one-question query for `name` (dotted, no trailing dot) of type
    /// `qtype`, written by hand: the daemon has no DNS library of its own.
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(u8::try_from(label.len()).unwrap_or(63));
            q.extend(label.as_bytes());
        }
        q.push(0);
        q.extend(qtype.to_be_bytes());
        q.extend([0, 1]);
        q
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        frame(message).unwrap_or_default()
    }

    /// Reads one framed reply: its id and response code.
    async fn reply(stream: &mut tokio::io::DuplexStream) -> Option<(u16, u8)> {
        let m = read_message(stream).await.ok()?;
        Some((
            u16::from_be_bytes([*m.first()?, *m.get(1)?]),
            m.get(3)? & 0x0f,
        ))
    }

    fn zone() -> Zone {
        Zone {
            prefix: 0x06,
            petnames: [("chat".to_string(), [6; 32])].into(),
            ..Zone::default()
        }
    }

    const AAAA: u16 = 28;

    #[tokio::test]
    async fn pipelined_queries_are_answered_in_order() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let counters = Arc::new(DnsCounters::default());
        let c = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            serve_connection(server, &zone(), &c, Duration::from_secs(5)).await;
        });
        let mut all = Vec::new();
        all.extend(framed(&query(1, "chat.umbra", AAAA)));
        all.extend(framed(&query(2, "nobody.umbra", AAAA)));
        all.extend(framed(&query(3, "example.com", AAAA)));
        client.write_all(&all).await.expect("write");
        assert_eq!(reply(&mut client).await, Some((1, 0)));
        assert_eq!(reply(&mut client).await, Some((2, 3)), "NXDOMAIN");
        assert_eq!(reply(&mut client).await, Some((3, 5)), "REFUSED");
        drop(client);
        task.await
            .expect("the connection ends when the client goes");
        let s = counters.json("127.0.0.1:53".parse().expect("addr"));
        assert_eq!(
            (&s["answered"], &s["nxdomain"], &s["refused"]),
            (&json!(1), &json!(1), &json!(1))
        );
    }

    #[tokio::test]
    async fn a_message_that_is_not_dns_is_counted_and_closes_the_connection() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let counters = Arc::new(DnsCounters::default());
        let c = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            serve_connection(server, &zone(), &c, Duration::from_secs(5)).await;
        });
        let mut all = framed(b"\x00\x01garbage");
        all.extend(framed(&query(4, "chat.umbra", AAAA)));
        client.write_all(&all).await.expect("write");
        // No reply to either: the connection closed at the garbage.
        assert_eq!(reply(&mut client).await, None);
        task.await.expect("closed");
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(counters.answered.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_idle_or_half_sent_connection_is_closed() {
        for first in [Vec::new(), vec![0, 40, 1, 2]] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let counters = DnsCounters::default();
            client.write_all(&first).await.expect("write");
            let t = Instant::now();
            serve_connection(server, &zone(), &counters, Duration::from_millis(200)).await;
            let took = t.elapsed();
            assert!(took >= Duration::from_millis(200), "{took:?}");
            assert!(took < Duration::from_secs(3), "{took:?}");
            assert_eq!(reply(&mut client).await, None);
        }
    }

    #[tokio::test]
    async fn a_query_trickled_in_is_closed_at_the_deadline() {
        // A byte every 50 ms never idles 200 ms, but the whole message must
        // come within 200 ms.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let trickle = tokio::spawn(async move {
            client.write_all(&[0, 200]).await.ok();
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if client.write_all(&[0]).await.is_err() {
                    break;
                }
            }
        });
        let counters = DnsCounters::default();
        let t = Instant::now();
        serve_connection(server, &zone(), &counters, Duration::from_millis(200)).await;
        let took = t.elapsed();
        assert!(took < Duration::from_millis(1500), "{took:?}");
        trickle.abort();
    }

    #[tokio::test]
    async fn udp_and_tcp_share_the_address_and_tcp_connections_are_capped() {
        let sockets = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = sockets.udp.local_addr().expect("udp address");
        assert_eq!(sockets.tcp.local_addr().expect("tcp address"), addr);
        let counters = Arc::new(DnsCounters::default());
        let server = tokio::spawn(serve(sockets, zone(), Arc::clone(&counters)));
        // UDP.
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        udp.send_to(&query(9, "chat.umbra", AAAA), addr)
            .await
            .expect("send");
        let mut buf = [0u8; 512];
        let n = timeout(Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .expect("a UDP answer in time")
            .expect("recv");
        assert!(n > 12 && buf[..2] == [0, 9]);
        // TCP, up to the cap; the one past it is closed unanswered.
        let mut held = Vec::new();
        for _ in 0..MAX_TCP_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        extra
            .write_all(&framed(&query(10, "chat.umbra", AAAA)))
            .await
            .ok();
        let mut byte = [0u8; 1];
        let got = timeout(Duration::from_secs(5), extra.read(&mut byte))
            .await
            .expect("closed in time");
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
        assert_eq!(counters.tcp_turned_away.load(Ordering::Relaxed), 1);
        // A held connection is served.
        let first = held.first_mut().expect("a connection");
        first
            .write_all(&framed(&query(11, "chat.umbra", AAAA)))
            .await
            .expect("write");
        let mut len = [0u8; 2];
        timeout(Duration::from_secs(5), first.read_exact(&mut len))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(u16::from_be_bytes(len) > 12);
        // Closing them frees the slots.
        drop(held);
        let mut again = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(&framed(&query(12, "chat.umbra", AAAA)))
                .await
                .ok();
            if let Ok(Ok(_)) = timeout(Duration::from_secs(2), s.read_exact(&mut len)).await {
                again = Some(());
                break;
            }
        }
        assert!(again.is_some(), "no slot came free");
        server.abort();
    }
}
