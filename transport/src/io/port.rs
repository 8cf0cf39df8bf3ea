//! The link port (`docs/architecture.md, "NAT"`): listeners and outgoing
//! links share one local TCP port, so a NAT that maps endpoint
//! independently shows every peer the same external address for the node.
//!
//! Every socket on the shared port sets `SO_REUSEADDR` and `SO_REUSEPORT`:
//! Linux lets a socket bind a port another socket listens on only when both
//! set `SO_REUSEPORT` (and belong to the same user). Outgoing connections
//! from one local port to different peers are different 4-tuples; one that
//! would repeat a live 4-tuple (a link the peer dialed from its own link
//! port to ours) fails with `EADDRNOTAVAIL` or `EADDRINUSE`, and the dial
//! then uses an ephemeral port instead.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The listen backlog of a link listener.
const LISTEN_BACKLOG: u32 = 1024;

fn socket_for(addr: &SocketAddr) -> io::Result<TcpSocket> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    Ok(s)
}

/// Binds a link listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`,
/// so outgoing links can use its port.
///
/// `SO_REUSEPORT` alone would let a second daemon listen on the same
/// address and share the connections; so first the address is bound once
/// without it, which fails with `EADDRINUSE` if any other socket listens
/// there, as a plain bind would.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    // std's bind sets SO_REUSEADDR only, which conflicts with any listener.
    let probe = std::net::TcpListener::bind(addr)?;
    // A port of 0 asks for a free one: keep the one the probe was given.
    let addr = probe.local_addr()?;
    drop(probe);
    let socket = socket_for(&addr)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The link port for a connection to `remote`: the port of the first of
/// `listeners` of `remote`'s address family (a listener on `[::]` takes
/// IPv4 connections too), else of the first listener; `None` without one.
pub(crate) fn link_port_for(listeners: &[SocketAddr], remote: &SocketAddr) -> Option<u16> {
    let serves = |l: &&SocketAddr| {
        l.is_ipv4() == remote.is_ipv4() || (remote.is_ipv4() && l.ip().is_unspecified())
    };
    listeners
        .iter()
        .find(serves)
        .or(listeners.first())
        .map(SocketAddr::port)
}

/// Connects to `remote` from local port `link_port` (on the unspecified
/// address of `remote`'s family), or from an ephemeral port when
/// `link_port` is `None`, cannot be bound (in use by a socket without
/// `SO_REUSEPORT`, or a privileged port this process may no longer bind),
/// or its 4-tuple is taken. Returns the stream and whether it uses the link
/// port.
pub(crate) async fn connect_from(
    remote: SocketAddr,
    link_port: Option<u16>,
) -> io::Result<(TcpStream, bool)> {
    if let Some(port) = link_port {
        let unspecified = if remote.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let local = SocketAddr::new(unspecified, port);
        let socket = socket_for(&remote)?;
        match socket.bind(local) {
            Ok(()) => match socket.connect(remote).await {
                Ok(stream) => return Ok((stream, true)),
                Err(e) if is_collision(&e) => tracing::debug!(
                    %remote, port, error = %e,
                    "the link port cannot reach this peer (4-tuple in use); dialing from an ephemeral port"
                ),
                Err(e) => return Err(e),
            },
            Err(e) => tracing::debug!(
                %remote, port, error = %e,
                "cannot bind the link port; dialing from an ephemeral port"
            ),
        }
    }
    let s = socket_for(&remote)?;
    Ok((s.connect(remote).await?, false))
}

/// Whether a connect failed because the 4-tuple (or the local address) is
/// taken: the cases an ephemeral port fixes.
fn is_collision(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::AddrInUse | ErrorKind::AddrNotAvailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dials_share_the_listen_port_and_a_taken_tuple_falls_back() {
        let l1 = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let l2 = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = l1.local_addr().expect("addr").port();
        let to = l2.local_addr().expect("addr");
        // The first dial uses the link port; a second one to the same peer
        // would repeat its 4-tuple and takes an ephemeral port.
        let (a, shared_a) = connect_from(to, Some(port)).await.expect("connect");
        assert!(shared_a);
        assert_eq!(a.local_addr().expect("local").port(), port);
        let (b, shared_b) = connect_from(to, Some(port)).await.expect("connect");
        assert!(!shared_b);
        assert_ne!(b.local_addr().expect("local").port(), port);
        // A different peer from the same port is a different 4-tuple.
        let l3 = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let (c, shared_c) = connect_from(l3.local_addr().expect("addr"), Some(port))
            .await
            .expect("connect");
        assert!(shared_c);
        assert_eq!(c.local_addr().expect("local").port(), port);
        // The listener still accepts.
        let (_in, from) = l2.accept().await.expect("accept");
        assert_eq!(from.port(), port);
        drop((a, b, c));
        let _conn = TcpStream::connect(l1.local_addr().expect("addr"))
            .await
            .expect("the listener on the shared port still accepts");
        l1.accept().await.expect("accept");
    }

    #[test]
    fn the_link_port_follows_the_peer_s_family() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let v4 = a("198.18.1.2:443");
        let v6 = a("[2001:db8::1]:443");
        assert_eq!(link_port_for(&[], &v4), None);
        let both = [a("198.18.1.1:8443"), a("[2001:db8::2]:9443")];
        assert_eq!(link_port_for(&both, &v4), Some(8443));
        assert_eq!(link_port_for(&both, &v6), Some(9443));
        // Only one family: its port for both.
        assert_eq!(link_port_for(&both[..1], &v6), Some(8443));
        // `[::]` takes IPv4 too, so it serves a v4 peer before a later v4
        // listener.
        let dual = [a("[::]:443"), a("198.18.1.1:8443")];
        assert_eq!(link_port_for(&dual, &v4), Some(443));
    }

    #[tokio::test]
    async fn a_second_listener_on_a_held_address_is_refused() {
        let l1 = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let err = bind_listener(l1.local_addr().expect("addr")).expect_err("already held");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn an_ipv6_peer_is_dialed_from_the_link_port_of_an_ipv4_listener() {
        let Ok(v6) = bind_listener("[::1]:0".parse().expect("addr")) else {
            return; // no IPv6 loopback on this host
        };
        let l = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let port = l.local_addr().expect("addr").port();
        let (s, shared) = connect_from(v6.local_addr().expect("addr"), Some(port))
            .await
            .expect("connect");
        assert!(shared);
        let local = s.local_addr().expect("local");
        assert!(local.is_ipv6() && local.port() == port, "{local}");
    }

    #[tokio::test]
    async fn a_link_port_held_without_reuseport_falls_back() {
        // A plain listener (no SO_REUSEPORT) holds the port.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = plain.local_addr().expect("addr").port();
        let l = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let (s, shared) = connect_from(l.local_addr().expect("addr"), Some(port))
            .await
            .expect("connect");
        assert!(!shared);
        assert_ne!(s.local_addr().expect("local").port(), port);
    }

    #[tokio::test]
    async fn no_link_port_dials_from_an_ephemeral_port() {
        let l = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let (s, shared) = connect_from(l.local_addr().expect("addr"), None)
            .await
            .expect("connect");
        assert!(!shared);
        assert_ne!(
            s.local_addr().expect("local"),
            l.local_addr().expect("addr")
        );
    }
}
