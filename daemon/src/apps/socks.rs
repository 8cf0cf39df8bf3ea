//! The SOCKS5 proxy (RFC 1928) on `[socks] listen` (docs/architecture.md,
//! "Apps without the TUN"): no authentication, `CONNECT` only, to a
//! `.umbra` name (resolved here, never by the system's resolver) or an
//! overlay address. Anything else is refused with the RFC's reply, so it
//! never proxies to the internet. The wire format is `socks5-proto`'s.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use socks5_proto::handshake::{Method, Request as HandshakeRequest, Response as HandshakeResponse};
use socks5_proto::{Address, Command, Error, ProtocolError, Reply, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use umbra_routing::address::is_node_address;
use umbra_routing::dns::{Zone, is_umbra_name};

use super::splice::splice;
use super::stack::{ConnectError, Connector};

/// Clients served at once; more wait in the kernel's accept queue.
const MAX_CLIENTS: usize = 256;
/// The greeting and the request must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy did, for `umbra status`.
#[derive(Debug, Default)]
pub(crate) struct SocksCounters {
    connected: AtomicU64,
    /// Destinations outside the overlay, and commands other than CONNECT.
    refused: AtomicU64,
    /// `.umbra` names that name no key.
    unknown_names: AtomicU64,
    /// Connections the far side refused or never answered.
    failed: AtomicU64,
    /// Greetings and requests that were not SOCKS5, or too slow.
    malformed: AtomicU64,
}

impl SocksCounters {
    /// `status`'s `socks`.
    pub(crate) fn json(&self, listen: SocketAddr) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "listen": listen.to_string(),
            "connected": get(&self.connected),
            "refused": get(&self.refused),
            "unknown_names": get(&self.unknown_names),
            "failed": get(&self.failed),
            "malformed": get(&self.malformed),
        })
    }
}

/// Binds the proxy's socket.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("[socks] listen = \"{addr}\": cannot listen"))
}

/// What the proxy needs to answer.
pub(crate) struct Proxy {
    pub(crate) zone: Zone,
    pub(crate) connector: Connector,
    pub(crate) counters: Arc<SocksCounters>,
}

/// Serves clients on `listener` until accepting fails for good.
pub(crate) async fn serve(listener: TcpListener, proxy: Proxy) -> Result<()> {
    let proxy = Arc::new(proxy);
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .context("the proxy's client slots closed")?;
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait, do not spin.
                tracing::warn!(error = %e, "SOCKS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let _permit = permit;
            client(stream, &proxy).await;
        });
    }
}

/// One client: the handshake, the connection, then bytes both ways.
async fn client(mut stream: TcpStream, proxy: &Proxy) {
    let counters = &proxy.counters;
    let asked = handshake(&mut stream, &proxy.zone, counters);
    let target = match tokio::time::timeout(HANDSHAKE_TIMEOUT, asked).await {
        Ok(Ok(target)) => target,
        Ok(Err(Some(reply))) => {
            let _ = Response::new(reply, Address::unspecified())
                .write_to(&mut stream)
                .await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Err(None)) | Err(_) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let reply = match proxy.connector.connect(target.0, target.1).await {
        Ok(pipe) => {
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let ok = Response::new(Reply::Succeeded, Address::unspecified());
            if ok.write_to(&mut stream).await.is_ok() {
                splice(stream, pipe).await;
            }
            return;
        }
        Err(ConnectError::Refused) => Reply::ConnectionRefused,
        Err(ConnectError::Unreachable) => Reply::HostUnreachable,
        Err(ConnectError::Busy) => Reply::GeneralFailure,
    };
    counters.failed.fetch_add(1, Ordering::Relaxed);
    let _ = Response::new(reply, Address::unspecified())
        .write_to(&mut stream)
        .await;
    let _ = stream.shutdown().await;
}

/// Reads the greeting and the request. The destination, or the reply to
/// refuse it with, or `None` for bytes that are not SOCKS5 (the
/// connection just closes).
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    zone: &Zone,
    counters: &SocksCounters,
) -> Result<(Ipv6Addr, u16), Option<Reply>> {
    let hello = HandshakeRequest::read_from(stream)
        .await
        .map_err(|_| None)?;
    if !hello.methods.contains(&Method::NONE) {
        let _ = HandshakeResponse::new(Method::UNACCEPTABLE)
            .write_to(stream)
            .await;
        return Err(None);
    }
    HandshakeResponse::new(Method::NONE)
        .write_to(stream)
        .await
        .map_err(|_| None)?;
    let req = match Request::read_from(stream).await {
        Ok(req) => req,
        Err(Error::Protocol(ProtocolError::InvalidCommand { .. })) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Some(Reply::CommandNotSupported));
        }
        Err(Error::Protocol(ProtocolError::InvalidAddressTypeInRequest { .. })) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            return Err(Some(Reply::AddressTypeNotSupported));
        }
        Err(_) => return Err(None),
    };
    if req.command != Command::Connect {
        counters.refused.fetch_add(1, Ordering::Relaxed);
        return Err(Some(Reply::CommandNotSupported));
    }
    let prefix = zone.prefix;
    let target = match &req.address {
        Address::SocketAddress(SocketAddr::V6(a)) => {
            is_node_address(a.ip(), prefix).then_some((*a.ip(), a.port()))
        }
        Address::SocketAddress(_) => None,
        Address::DomainAddress(name, port) => {
            let host = String::from_utf8_lossy(name);
            if is_umbra_name(&host) {
                match zone.address_of(&host) {
                    Some(a) => Some((a, *port)),
                    None => {
                        counters.unknown_names.fetch_add(1, Ordering::Relaxed);
                        return Err(Some(Reply::HostUnreachable));
                    }
                }
            } else {
                None
            }
        }
    };
    match target {
        Some((_, 0)) => {
            counters.malformed.fetch_add(1, Ordering::Relaxed);
            Err(Some(Reply::GeneralFailure))
        }
        Some(t) => Ok(t),
        None => {
            // Outside the overlay: never proxied.
            counters.refused.fetch_add(1, Ordering::Relaxed);
            Err(Some(Reply::ConnectionNotAllowed))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;
    use umbra_routing::address::{DEFAULT_PREFIX, address_for_key};
    use umbra_routing::name::name_for_key;

    use super::*;

    const KEY: [u8; 32] = [7; 32];

    /// Runs the handshake on `bytes` from a client; what it decided, and
    /// what it wrote back.
    type Asked = Result<(Ipv6Addr, u16), Option<Reply>>;

    fn ask(bytes: &[u8]) -> (Asked, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(4096);
            client.write_all(bytes).await.expect("write");
            client.shutdown().await.expect("shutdown");
            let zone = Zone {
                prefix: DEFAULT_PREFIX,
                ..Zone::default()
            };
            let r = handshake(&mut server, &zone, &SocksCounters::default()).await;
            drop(server);
            let mut back = Vec::new();
            let _ = client.read_to_end(&mut back).await;
            (r, back)
        })
    }

    fn connect(addr: &[u8]) -> Vec<u8> {
        let mut v = vec![5, 1, 0, 5, 1, 0];
        v.extend_from_slice(addr);
        v
    }

    #[test]
    fn a_umbra_name_or_an_overlay_address_is_a_destination() {
        let name = name_for_key(&KEY);
        let mut req = vec![3, name.len() as u8];
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(&5269u16.to_be_bytes());
        let want = address_for_key(&KEY, DEFAULT_PREFIX);
        let (r, back) = ask(&connect(&req));
        assert_eq!(r, Ok((want, 5269)));
        assert_eq!(back, [5, 0], "the greeting's answer: no authentication");
        let mut req = vec![4];
        req.extend_from_slice(&want.octets());
        req.extend_from_slice(&80u16.to_be_bytes());
        assert_eq!(ask(&connect(&req)).0, Ok((want, 80)));
    }

    #[test]
    fn the_rest_gets_the_rfcs_replies() {
        // IPv4, a domain outside .umbra, an IPv6 address outside the overlay.
        for req in [
            &[1, 127, 0, 0, 1, 0, 80][..],
            &[
                3, 11, b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c', b'o', b'm', 0, 80,
            ],
            &[
                4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80,
            ],
        ] {
            assert_eq!(ask(&connect(req)).0, Err(Some(Reply::ConnectionNotAllowed)));
        }
        let mut bad = vec![3, 12];
        bad.extend_from_slice(b"nobody.umbra");
        bad.extend_from_slice(&[0, 80]);
        assert_eq!(ask(&connect(&bad)).0, Err(Some(Reply::HostUnreachable)));
        // BIND and UDP ASSOCIATE.
        for cmd in [2, 3] {
            let r = ask(&[5, 1, 0, 5, cmd, 0, 1, 127, 0, 0, 1, 0, 80]).0;
            assert_eq!(r, Err(Some(Reply::CommandNotSupported)));
        }
        // An unknown address type.
        let r = ask(&[5, 1, 0, 5, 1, 0, 9, 0, 80]).0;
        assert_eq!(r, Err(Some(Reply::AddressTypeNotSupported)));
        // Only username/password offered: refused in the greeting.
        let (r, back) = ask(&[5, 1, 2]);
        assert_eq!((r, back), (Err(None), vec![5, 0xff]));
        // Not SOCKS5.
        assert_eq!(ask(b"GET / HTTP/1.1\r\n\r\n").0, Err(None));
        assert_eq!(ask(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).0, Err(None));
    }

    proptest! {
        #[test]
        fn any_bytes_end_in_a_destination_or_a_refusal(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ask(&bytes);
        }
    }
}
