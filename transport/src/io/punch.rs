//! TCP hole punching (`docs/architecture.md, "NAT"`): two nodes behind
//! NATs that map endpoint independently link by a TCP simultaneous open.
//! Each `connect()`s from its dial port to the external endpoint the other
//! showed its partners, at about the same moment; no listener is involved.
//! When the two SYNs meet, each socket, still in SYN-SENT, takes the other's
//! SYN as the start of a simultaneous open, and both `connect()` calls
//! succeed with the same connection.
//!
//! [`simultaneous_open`] does one attempt. Its steps, and why each is there:
//!
//! 1. **A socket bound to the dial port** with `SO_REUSEADDR` and
//!    `SO_REUSEPORT`, the options the dial port's other sockets use
//!    (`port.rs`), so the attempt coexists with the node's other links from
//!    that port. It binds the unspecified address of the remote's family:
//!    the NAT's mapping belongs to that local port, and the partner was told
//!    the external endpoint of it.
//! 2. **The primer** (optional). A NAT that answers an unsolicited SYN with a
//!    reset would kill the partner's SYN if it arrived before this side's
//!    own SYN had made the mapping; the reset also removes the partner's
//!    own fresh mapping. So the side that goes first sends its SYN with an
//!    IP TTL just large enough to pass its own NATs (the hops to its
//!    outermost NAT plus one): it makes the mapping there and dies at the
//!    first router beyond, never reaching the partner's NAT to be reset.
//! 3. **The TTL goes back at once**, right after the non-blocking `connect()`
//!    returned: the SYN left inside that call. The socket's later packets,
//!    above all its SYN-ACK to the partner's SYN, must travel the whole way.
//!    Restoring it only after the connection is made would kill that SYN-ACK
//!    just like the primer. One race is left: a partner SYN that arrives
//!    while `connect()` still runs (the kernel handles it as the call
//!    returns, before the TTL is back) is answered with the primer's TTL;
//!    that SYN-ACK dies, and its retransmission a second later connects.
//! 4. **Waiting while in SYN-SENT.** The partner's SYN comes through the
//!    mapping the primer made and reaches this socket, which answers; or,
//!    without a primer, the SYNs simply cross. The primer's death comes back
//!    as an ICMP time exceeded. The kernel reports it (`SO_ERROR` reads
//!    `EHOSTUNREACH`, with a wakeup) but keeps the socket in SYN-SENT and
//!    retransmits the SYN, with the normal TTL now, after its initial
//!    retransmission timeout (1 s). An ordinary async connect takes the
//!    error for the connect's failure and drops the socket, and with it the
//!    mapping. Here `EHOSTUNREACH` and `ENETUNREACH` are soft: read, logged,
//!    cleared, and the wait goes on. The socket is connected when it is
//!    writable and `getpeername()` succeeds (that alone also holds in
//!    SYN-RECEIVED, the state a simultaneous open passes through, before
//!    the handshake is done), whatever `SO_ERROR` held. A socket the kernel
//!    closed (one that aborts the connect on the ICMP error, or ran out of
//!    SYN retries) returns the error it held. The report arrives as a lone
//!    `EPOLLERR`, which tokio records as "write side closed" and never
//!    clears, so after each one the socket is registered with the runtime
//!    afresh; otherwise every later wait would return at once and the loop
//!    would spin.
//!
//!    The partner should connect within about a second of the primer: the
//!    retransmitted SYN travels the whole way, and reaching the partner's
//!    NAT before the partner's own SYN left, it is reset there.
//! 5. **A reset** (`ECONNREFUSED`) is [`PunchError::Refused`]: the partner's
//!    NAT or host answered before the partner's SYN made the way open. A
//!    4-tuple already in use (a link to the same endpoint from the dial port,
//!    or one still in TIME_WAIT) is [`PunchError::TupleInUse`]; the deadline
//!    is [`PunchError::TimedOut`].
//!
//! Measured in the lab (`tests/netns/punch.rs`): the figures are in
//! `docs/architecture.md, "NAT"`. Endpoint-dependent mapping on either side
//! defeats it: the partner dials an endpoint that is not the one this side's
//! SYN leaves from.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One hole-punching attempt: from `local_port` to the partner's external
/// endpoint `remote`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Punch {
    /// The local port to connect from (the node's dial port).
    pub local_port: u16,
    /// The partner's external endpoint (an IPv4-mapped IPv6 address is
    /// dialed as IPv4, so that the primer sets the TTL that applies).
    pub remote: SocketAddr,
    /// The IP TTL (IPv6 hop limit) of the first SYN, to make this side's
    /// NAT mappings without reaching the partner's NAT: the number of hops
    /// to the outermost NAT in front of this node plus one. `None` sends an
    /// ordinary SYN.
    pub primer_ttl: Option<u32>,
    /// How long to wait for the connection.
    pub timeout: Duration,
}

/// Why a [`simultaneous_open`] did not connect.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// The local port could not be bound (another socket holds it without
    /// `SO_REUSEPORT`).
    #[error("cannot bind the local port: {0}")]
    Bind(#[source] io::Error),
    /// The 4-tuple is in use: a connection from this port to the same remote
    /// endpoint is open or in TIME_WAIT (`EADDRNOTAVAIL`, `EADDRINUSE`).
    #[error("a connection from this port to this endpoint already exists")]
    TupleInUse,
    /// A reset came back: the partner's NAT (or host) refused the SYN.
    #[error("refused (a reset came back)")]
    Refused,
    /// No connection within the timeout.
    #[error("timed out")]
    TimedOut,
    /// Any other socket error.
    #[error("{0}")]
    Io(#[source] io::Error),
}

/// Connects from `p.local_port` to `p.remote` as one side of a TCP
/// simultaneous open, with the TTL-limited primer when `p.primer_ttl` is
/// set (see the module documentation for the steps). Returns the connected
/// stream; it works just as well when the remote end is listening.
pub async fn simultaneous_open(p: &Punch) -> Result<TcpStream, PunchError> {
    let deadline = Instant::now() + p.timeout;
    let remote = SocketAddr::new(p.remote.ip().to_canonical(), p.remote.port());
    let socket = bound_socket(remote, p.local_port)?;
    connect_primed(&socket, remote, p.primer_ttl)?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(PunchError::Io)?;
    wait_connected(stream, remote, deadline).await
}

/// Step 1: a non-blocking socket of `remote`'s family with the dial port's
/// options, bound to `local_port` on the unspecified address.
fn bound_socket(remote: SocketAddr, local_port: u16) -> Result<Socket, PunchError> {
    let socket = Socket::new(
        Domain::for_address(remote),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(PunchError::Io)?;
    socket.set_reuse_address(true).map_err(PunchError::Io)?;
    socket.set_reuse_port(true).map_err(PunchError::Io)?;
    socket.set_nonblocking(true).map_err(PunchError::Io)?;
    // A punch given up (timed out, or its task ended) must free the ports at
    // once for the next attempt: closing a socket that reached SYN-RECEIVED
    // would otherwise leave it in FIN-WAIT for minutes, holding the 4-tuple.
    // With a zero linger the close is a reset. Undone once connected.
    socket
        .set_linger(Some(Duration::ZERO))
        .map_err(PunchError::Io)?;
    let unspecified = if remote.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    socket
        .bind(&SockAddr::from(SocketAddr::new(unspecified, local_port)))
        .map_err(PunchError::Bind)?;
    Ok(socket)
}

/// Steps 2 and 3: starts the non-blocking connect, with the first SYN's
/// TTL set to `primer_ttl` and the socket's own TTL back as soon as the SYN
/// has left.
fn connect_primed(
    socket: &Socket,
    remote: SocketAddr,
    primer_ttl: Option<u32>,
) -> Result<(), PunchError> {
    let v4 = remote.is_ipv4();
    let ttl = |s: &Socket| if v4 { s.ttl_v4() } else { s.unicast_hops_v6() };
    let set_ttl = |s: &Socket, t| {
        if v4 {
            s.set_ttl_v4(t)
        } else {
            s.set_unicast_hops_v6(t)
        }
    };
    let normal = match primer_ttl {
        Some(primer) => {
            let normal = ttl(socket).map_err(PunchError::Io)?;
            set_ttl(socket, primer).map_err(PunchError::Io)?;
            Some(normal)
        }
        None => None,
    };
    let started = socket.connect(&SockAddr::from(remote));
    if let Some(normal) = normal {
        set_ttl(socket, normal).map_err(PunchError::Io)?;
    }
    match started {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(classify(e)),
    }
}

/// Step 4: waits until the socket is connected, the kernel gives up on
/// it, or `deadline`.
async fn wait_connected(
    mut stream: TcpStream,
    remote: SocketAddr,
    deadline: Instant,
) -> Result<TcpStream, PunchError> {
    // The last soft error: what to report if the kernel closes the socket.
    let mut soft: Option<io::Error> = None;
    loop {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let ready = match tokio::time::timeout_at(deadline, stream.ready(interest)).await {
            Err(_elapsed) => return Err(PunchError::TimedOut),
            Ok(ready) => ready.map_err(PunchError::Io)?,
        };
        match stream.take_error().map_err(PunchError::Io)? {
            Some(e) if is_soft(&e) => {
                tracing::debug!(%remote, error = %e, "soft error while punching; still waiting");
                soft = Some(e);
            }
            Some(e) => return Err(classify(e)),
            None => {}
        }
        // Established is writable (EPOLLOUT, not just tokio's "writable or
        // closed") and has a peer. A simultaneous open's SYN-RECEIVED
        // already has a peer, but is not writable yet.
        let connected = match stream.peer_addr() {
            Ok(_) => !(ready & Ready::WRITABLE).is_empty(),
            Err(e) if e.kind() == ErrorKind::NotConnected => false,
            Err(e) => return Err(PunchError::Io(e)),
        };
        if connected {
            socket2::SockRef::from(&stream)
                .set_linger(None)
                .map_err(PunchError::Io)?;
            super::socket::tune(&stream);
            // Only partners reach a punched connection: it is for a link.
            super::socket::tune_link(socket2::SockRef::from(&stream));
            // Without the stale mark of an error report (below).
            return if soft.is_none() {
                Ok(stream)
            } else {
                reregister(stream)
            };
        }
        // A hang-up while not connected: the kernel closed the socket.
        if ready.is_read_closed() {
            return Err(PunchError::Io(soft.unwrap_or_else(|| {
                io::Error::new(ErrorKind::NotConnected, "the kernel closed the socket")
            })));
        }
        // Still in SYN-SENT (or SYN-RECEIVED) after an error report, or
        // woken for nothing. The ICMP error came as
        // a lone EPOLLERR, which tokio records as "write closed" and never
        // clears, so waiting on this registration again would return at
        // once, forever. A fresh registration starts from what the socket
        // says now (epoll reports a change that came meanwhile when the
        // socket is added).
        stream = reregister(stream)?;
    }
}

/// `stream` registered with the runtime afresh, without readiness it
/// recorded before.
fn reregister(stream: TcpStream) -> Result<TcpStream, PunchError> {
    stream
        .into_std()
        .and_then(TcpStream::from_std)
        .map_err(PunchError::Io)
}

/// Errors that leave the socket in SYN-SENT: what an ICMP error about the
/// (primer) SYN turns into.
fn is_soft(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable
    )
}

fn classify(e: io::Error) -> PunchError {
    match e.kind() {
        ErrorKind::ConnectionRefused => PunchError::Refused,
        ErrorKind::AddrNotAvailable | ErrorKind::AddrInUse => PunchError::TupleInUse,
        _ => PunchError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    fn punch(local_port: u16, remote: SocketAddr, primer_ttl: Option<u32>) -> Punch {
        Punch {
            local_port,
            remote,
            primer_ttl,
            timeout: Duration::from_secs(5),
        }
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    /// Two sockets on loopback cannot open simultaneously: the first SYN is
    /// delivered inside its `connect()`, before the other socket has sent
    /// its own, and is reset. A socket connecting to its own address is the
    /// same exchange with no race: its SYN arrives while it is in SYN-SENT,
    /// it answers with a SYN-ACK, and it is connected with no listener.
    #[tokio::test]
    async fn a_socket_opens_simultaneously_with_itself_without_a_listener() {
        let port = free_port();
        let s = simultaneous_open(&punch(port, loopback(port), None))
            .await
            .expect("connected");
        assert_eq!(s.local_addr().expect("local"), loopback(port));
        assert_eq!(s.peer_addr().expect("peer"), loopback(port));
        let (r, mut w) = s.into_split();
        w.write_all(b"hello\n").await.expect("write");
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.expect("read");
        assert_eq!(line, "hello\n");
    }

    #[tokio::test]
    async fn the_primer_ttl_is_restored_before_the_connection_is_made() {
        let normal = Socket::new(Domain::IPV4, Type::STREAM, None)
            .and_then(|s| s.ttl_v4())
            .expect("a fresh socket's TTL");
        let port = free_port();
        // On loopback a TTL of 1 arrives: the exchange runs as without a
        // primer, and the connected socket has its normal TTL back.
        let s = simultaneous_open(&punch(port, loopback(port), Some(1)))
            .await
            .expect("connected");
        assert_eq!(s.ttl().expect("ttl"), normal);
    }

    #[tokio::test]
    async fn ipv6_primes_with_the_hop_limit_and_restores_it() {
        let Ok(normal) =
            Socket::new(Domain::IPV6, Type::STREAM, None).and_then(|s| s.unicast_hops_v6())
        else {
            return; // no IPv6 on this machine
        };
        let port = free_port();
        let me = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        let s = simultaneous_open(&punch(port, me, Some(1)))
            .await
            .expect("connected");
        assert_eq!(s.peer_addr().expect("peer"), me);
        let hops = socket2::SockRef::from(&s)
            .unicast_hops_v6()
            .expect("hop limit");
        assert_eq!(hops, normal);
    }

    #[tokio::test]
    async fn an_ipv4_mapped_remote_is_primed_as_ipv4() {
        let normal = Socket::new(Domain::IPV4, Type::STREAM, None)
            .and_then(|s| s.ttl_v4())
            .expect("a fresh socket's TTL");
        let port = free_port();
        let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()), port);
        let s = simultaneous_open(&punch(port, mapped, Some(1)))
            .await
            .expect("connected");
        assert_eq!(s.peer_addr().expect("peer"), loopback(port));
        assert_eq!(s.ttl().expect("ttl"), normal);
    }

    #[tokio::test]
    async fn it_connects_to_a_listener_like_an_ordinary_dial() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = free_port();
        let s = simultaneous_open(&punch(port, l.local_addr().expect("addr"), None))
            .await
            .expect("connected");
        let (_, from) = l.accept().await.expect("accept");
        assert_eq!(from, s.local_addr().expect("local"));
        assert_eq!(from.port(), port);
    }

    #[tokio::test]
    async fn nobody_there_is_refused() {
        let (port, closed) = (free_port(), free_port());
        let err = simultaneous_open(&punch(port, loopback(closed), Some(1)))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, PunchError::Refused), "{err:?}");
    }

    #[tokio::test]
    async fn a_busy_four_tuple_is_reported() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let to = l.local_addr().expect("addr");
        let port = free_port();
        let _first = simultaneous_open(&punch(port, to, None))
            .await
            .expect("connected");
        let err = simultaneous_open(&punch(port, to, None))
            .await
            .expect_err("the same 4-tuple");
        assert!(matches!(err, PunchError::TupleInUse), "{err:?}");
    }

    #[tokio::test]
    async fn a_port_held_without_reuseport_cannot_be_bound() {
        let plain = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = plain.local_addr().expect("addr").port();
        let err = simultaneous_open(&punch(port, loopback(free_port()), None))
            .await
            .expect_err("held");
        match err {
            PunchError::Bind(e) => assert_eq!(e.kind(), ErrorKind::AddrInUse),
            other => panic!("{other:?}"),
        }
    }

    /// A listener whose accept queue is full drops SYNs silently, like a
    /// NAT that drops unsolicited ones: the attempt times out.
    #[tokio::test]
    async fn silence_times_out() {
        let l = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        l.bind(&SockAddr::from(loopback(0))).expect("bind");
        l.listen(0).expect("listen");
        let to = l
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("addr");
        // The one connection a backlog of 0 takes fills the queue.
        let _queued = std::net::TcpStream::connect(to).expect("connect");
        let started = std::time::Instant::now();
        let p = Punch {
            timeout: Duration::from_millis(300),
            ..punch(free_port(), to, None)
        };
        let err = simultaneous_open(&p).await.expect_err("dropped");
        assert!(matches!(err, PunchError::TimedOut), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
