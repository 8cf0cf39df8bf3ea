//! The dial port (`docs/architecture.md, "NAT"`): every outgoing link of a
//! running node leaves from one local TCP port, so a NAT that maps endpoint
//! independently shows every peer the same external address for the node
//! (what classification and, later, hole punching need).
//!
//! The port is drawn at random from the kernel's ephemeral range when the
//! dialer is made, not the listen port: a connection from port 443 to port
//! 443 is something ordinary HTTPS clients never make, and would mark every
//! umbra link to anyone watching the network. From a port in the ephemeral
//! range a link looks like any client's connection.
//!
//! Every dialing socket sets `SO_REUSEADDR` and `SO_REUSEPORT`, so one port
//! can make connections to many peers (different 4-tuples). A dial that
//! would repeat a live 4-tuple (a redial of the same peer while the old
//! connection lingers) fails with `EADDRNOTAVAIL` or `EADDRINUSE`, and
//! then uses an ordinary ephemeral port instead.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rand_core::{OsRng, RngCore};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Where Linux keeps its ephemeral port range.
const EPHEMERAL_RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Linux's default ephemeral range, if the file cannot be read.
const EPHEMERAL_RANGE: (u16, u16) = (32768, 60999);
/// Ports tried for a free dial port before dialing from ephemeral ports.
const DIAL_PORT_TRIES: usize = 16;

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

/// Binds a link listener on `addr` (a port of 0 takes a free one).
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// The kernel's ephemeral port range, from `text` as the proc file holds
/// it (`"32768\t60999\n"`); Linux's default when it does not parse.
fn parse_range(text: &str) -> (u16, u16) {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if 0 < lo && lo <= hi => (lo, hi),
        _ => EPHEMERAL_RANGE,
    }
}

/// The kernel's ephemeral port range (Linux's default when it cannot be
/// read).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string(EPHEMERAL_RANGE_FILE)
        .map(|t| parse_range(&t))
        .unwrap_or(EPHEMERAL_RANGE)
}

/// Draws this run's dial port: a random port of the ephemeral range that
/// no socket holds (it binds on both families' unspecified addresses).
/// `None` when none of a few tries is free: dials then use ordinary
/// ephemeral ports.
pub(crate) fn choose_dial_port() -> Option<u16> {
    let (lo, hi) = ephemeral_range();
    let span = u32::from(hi - lo) + 1;
    (0..DIAL_PORT_TRIES).find_map(|_| {
        let port = lo + (OsRng.next_u32() % span) as u16;
        let free = |ip: IpAddr| {
            socket_for(&SocketAddr::new(ip, port))
                .and_then(|s| s.bind(SocketAddr::new(ip, port)))
                .is_ok()
        };
        (free(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) && free(IpAddr::V6(Ipv6Addr::UNSPECIFIED)))
            .then_some(port)
    })
}

/// Connects to `remote` from local port `dial_port` (on the unspecified
/// address of `remote`'s family), or from an ephemeral port when
/// `dial_port` is `None`, cannot be bound (another socket holds it without
/// `SO_REUSEPORT`), or its 4-tuple is taken. Returns the stream and whether
/// it uses the dial port.
pub(crate) async fn connect_from(
    remote: SocketAddr,
    dial_port: Option<u16>,
) -> io::Result<(TcpStream, bool)> {
    if let Some(port) = dial_port {
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
                    "the dial port cannot reach this peer (4-tuple in use); dialing from an ephemeral port"
                ),
                Err(e) => return Err(e),
            },
            Err(e) => tracing::debug!(
                %remote, port, error = %e,
                "cannot bind the dial port; dialing from an ephemeral port"
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
    async fn dials_share_the_dial_port_and_a_taken_tuple_falls_back() {
        let port = choose_dial_port().expect("a free dial port");
        assert!(port >= 1024, "{port}");
        let l2 = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let to = l2.local_addr().expect("addr");
        // The first dial uses the dial port; a second one to the same peer
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
        let (_in, from) = l2.accept().await.expect("accept");
        assert_eq!(from.port(), port);
        drop((a, b, c));
    }

    #[test]
    fn the_ephemeral_range_is_read_as_the_kernel_writes_it() {
        assert_eq!(parse_range("32768\t60999\n"), (32768, 60999));
        assert_eq!(parse_range("1024 65535"), (1024, 65535));
        for bad in ["", "x y", "5", "60999 32768", "0 100", "1 70000"] {
            assert_eq!(parse_range(bad), EPHEMERAL_RANGE, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_second_listener_on_a_held_address_is_refused() {
        let l1 = bind_listener("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let err = bind_listener(l1.local_addr().expect("addr")).expect_err("already held");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn a_dial_port_held_without_reuseport_falls_back() {
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
    async fn no_dial_port_dials_from_an_ephemeral_port() {
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
