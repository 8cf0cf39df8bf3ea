//! The userspace TCP/IPv6 stack (docs/architecture.md, "Apps without the
//! TUN"): one tokio task around a smoltcp interface that holds this node's
//! overlay address. Packets come from the datapath ([`super::StackPort`])
//! and go back to it as [`Input::Packets`], so they cross circuits like the
//! TUN's.
//!
//! Each connection's bytes meet the app side (a SOCKS client, an exposed
//! service's socket: [`super::splice`]) through a pair of bounded channels
//! and one shared [`Notify`]: the stack reads from a socket only while its
//! channel to the app has room, so a slow app closes the TCP window rather
//! than growing memory.

use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::sync::{Notify, mpsc, oneshot};
use umbra_config::SOCKS_PORTS;

use super::StackPort;
use crate::events::{DatapathTx, Input};

/// Each connection's receive and send buffers: 256 KiB each way is about
/// what a 100 ms circuit needs at 20 Mbit/s, with window scaling.
const SOCKET_BUFFER: usize = 256 * 1024;
/// Connections the stack holds at once, SOCKS and exposed together (at
/// most 128 MiB of buffers).
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Listening sockets kept per exposed port: connections that arrive
/// together are each taken.
const LISTENERS_PER_PORT: usize = 4;
/// A connection attempt gives up after this.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Chunks each way between a connection and its app.
const CHUNKS: usize = 16;
/// The largest chunk handed to the app.
const CHUNK: usize = 64 * 1024;
/// Packets from the datapath waiting for the stack.
const PACKETS_QUEUED: usize = 1024;

/// One connection's app side: bytes from the overlay on `rx`, bytes to it
/// on `tx`; `wake` tells the stack either moved.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub(crate) rx: mpsc::Receiver<Bytes>,
    pub(crate) tx: mpsc::Sender<Bytes>,
    pub(crate) wake: Arc<Notify>,
}

/// Why a `CONNECT` failed, as SOCKS5 tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectError {
    /// The far side answered with a reset.
    Refused,
    /// Nothing answered within [`CONNECT_TIMEOUT`].
    Unreachable,
    /// [`MAX_CONNECTIONS`] are open, or no local port is free.
    Busy,
}

/// What the stack counted, for `umbra status`.
#[derive(Debug, Default)]
pub(crate) struct StackCounters {
    pub(crate) connected: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) busy: AtomicU64,
    /// Packets from the datapath the stack had no room for (TCP sends
    /// them again).
    pub(crate) dropped: AtomicU64,
    open: AtomicU64,
}

impl StackCounters {
    /// `status`'s figures for the stack.
    pub(crate) fn json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "open": get(&self.open),
            "connected": get(&self.connected),
            "accepted": get(&self.accepted),
            "refused": get(&self.refused),
            "busy": get(&self.busy),
            "dropped": get(&self.dropped),
        })
    }
}

/// A connection to open: address, port, and where to answer.
type ConnectRequest = (Ipv6Addr, u16, oneshot::Sender<Result<Pipe, ConnectError>>);

/// Asks the stack to open a connection.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    requests: mpsc::Sender<ConnectRequest>,
    wake: Arc<Notify>,
}

impl Connector {
    /// Opens a TCP connection from this node's address to `addr`, port
    /// `port`, over the overlay.
    pub(crate) async fn connect(&self, addr: Ipv6Addr, port: u16) -> Result<Pipe, ConnectError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((addr, port, tx))
            .await
            .map_err(|_| ConnectError::Busy)?;
        self.wake.notify_one();
        rx.await.map_err(|_| ConnectError::Busy)?
    }
}

/// The device between smoltcp and the datapath: packets in, packets out.
struct Device {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for Device {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxToken(p), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        // Checksums are written and checked, as the kernel does behind a
        // TUN (smoltcp's default).
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// What a connection is for.
enum Kind {
    /// A SOCKS `CONNECT`, answered once the handshake ends, or given up
    /// at the deadline.
    Outgoing(
        Option<oneshot::Sender<Result<Pipe, ConnectError>>>,
        std::time::Instant,
    ),
    /// Taken on an exposed port, forwarded to this local socket once the
    /// handshake ends (so a flood of SYNs opens nothing locally), or
    /// dropped at the deadline.
    Exposed(Option<SocketAddr>, std::time::Instant),
}

/// Where a connection's handshake stands.
enum Handshake {
    /// Still going.
    Waiting,
    /// Done: bytes may move.
    Done,
    /// Failed: the connection ends.
    Failed,
}

struct Conn {
    handle: SocketHandle,
    kind: Kind,
    /// To the app; `None` once the far side finished and the app was told.
    to_app: Option<mpsc::Sender<Bytes>>,
    from_app: mpsc::Receiver<Bytes>,
    /// The part of an app's chunk the socket had no room for yet.
    pending: Option<Bytes>,
    /// The app finished sending.
    app_done: bool,
    /// The app side, until it is handed over.
    pipe: Option<Pipe>,
}

impl Conn {
    fn new(handle: SocketHandle, kind: Kind, wake: &Arc<Notify>) -> Conn {
        let (to_app, rx) = mpsc::channel(CHUNKS);
        let (tx, from_app) = mpsc::channel(CHUNKS);
        Conn {
            handle,
            kind,
            to_app: Some(to_app),
            from_app,
            pending: None,
            app_done: false,
            pipe: Some(Pipe {
                rx,
                tx,
                wake: Arc::clone(wake),
            }),
        }
    }
}

/// The stack, ready to run.
pub(crate) struct Stack {
    iface: Interface,
    device: Device,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    /// Listening sockets: port, local socket to forward to, handle.
    listeners: Vec<(u16, SocketAddr, SocketHandle)>,
    next_port: u16,
    packets: mpsc::Receiver<Vec<u8>>,
    requests: mpsc::Receiver<ConnectRequest>,
    wake: Arc<Notify>,
    datapath: DatapathTx,
    counters: Arc<StackCounters>,
}

/// Builds the stack for `address` with `mtu`, listening on `exposed`
/// (overlay port → local socket). `all`: there is no TUN, so every packet
/// to this node is the stack's.
pub(crate) fn new(
    address: Ipv6Addr,
    prefix_len: u8,
    mtu: u32,
    exposed: &[(u16, SocketAddr)],
    all: bool,
    datapath: DatapathTx,
) -> (Stack, StackPort, Connector, Arc<StackCounters>) {
    let (packets_tx, packets) = mpsc::channel(PACKETS_QUEUED);
    let (requests_tx, requests) = mpsc::channel(16);
    let mut device = Device {
        rx: VecDeque::new(),
        tx: Vec::new(),
        mtu: mtu as usize,
    };
    let mut config = IfaceConfig::new(HardwareAddress::Ip);
    config.random_seed = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let mut iface = Interface::new(config, &mut device, SmolInstant::now());
    iface.update_ip_addrs(|a| {
        // The whole overlay is on-link: no gateway, no neighbour discovery.
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(address), prefix_len));
    });
    let wake = Arc::new(Notify::new());
    let counters = Arc::new(StackCounters::default());
    let mut stack = Stack {
        iface,
        device,
        sockets: SocketSet::new(Vec::new()),
        conns: Vec::new(),
        listeners: Vec::new(),
        next_port: *SOCKS_PORTS.start(),
        packets,
        requests,
        wake: Arc::clone(&wake),
        datapath,
        counters: Arc::clone(&counters),
    };
    for &(port, to) in exposed {
        for _ in 0..LISTENERS_PER_PORT {
            stack.listen(port, to);
        }
    }
    let port = StackPort {
        packets: packets_tx,
        all,
        exposed: exposed.iter().map(|(p, _)| *p).collect(),
        counters: Arc::clone(&counters),
    };
    let connector = Connector {
        requests: requests_tx,
        wake,
    };
    (stack, port, connector, counters)
}

fn socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
        tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
    );
    // Circuits add latency, not loss: no delayed ACKs, no Nagle, so
    // interactive protocols do not wait.
    s.set_ack_delay(None);
    s.set_nagle_enabled(false);
    // An idle connection is probed every 30 s and ends after 2 minutes
    // without a word from the far side (a crashed node, a lost path).
    s.set_keep_alive(Some(SmolDuration::from_secs(30)));
    s.set_timeout(Some(SmolDuration::from_secs(120)));
    s
}

impl Stack {
    fn listen(&mut self, port: u16, to: SocketAddr) {
        let mut s = socket();
        // A port in the config was checked: listen cannot fail on it.
        if s.listen(port).is_ok() {
            let handle = self.sockets.add(s);
            self.listeners.push((port, to, handle));
        }
    }

    /// Runs until the datapath goes away.
    pub(crate) async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let delay = self
                .iface
                .poll_delay(SmolInstant::now(), &self.sockets)
                .map_or(Duration::from_secs(3600), |d| {
                    Duration::from_micros(d.total_micros())
                });
            tokio::select! {
                p = self.packets.recv() => {
                    let Some(p) = p else { return Ok(()) };
                    self.device.rx.push_back(p);
                    while let Ok(p) = self.packets.try_recv() {
                        self.device.rx.push_back(p);
                        if self.device.rx.len() >= 64 {
                            break;
                        }
                    }
                }
                r = self.requests.recv() => {
                    if let Some((addr, port, reply)) = r {
                        self.connect(addr, port, reply);
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
            // Take what arrived, move bytes, and send what that produced;
            // again while moving bytes made room or data.
            for _ in 0..4 {
                self.iface
                    .poll(SmolInstant::now(), &mut self.device, &mut self.sockets);
                let moved = self.service();
                self.iface
                    .poll(SmolInstant::now(), &mut self.device, &mut self.sockets);
                let made = std::mem::take(&mut self.device.tx);
                if !made.is_empty() && self.datapath.send(Input::Packets(made)).await.is_err() {
                    return Ok(());
                }
                if !moved {
                    break;
                }
            }
        }
    }

    fn connect(
        &mut self,
        addr: Ipv6Addr,
        port: u16,
        reply: oneshot::Sender<Result<Pipe, ConnectError>>,
    ) {
        let Some(local) = self
            .free_port()
            .filter(|_| self.conns.len() < MAX_CONNECTIONS)
        else {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(ConnectError::Busy));
            return;
        };
        let mut s = socket();
        let cx = self.iface.context();
        if s.connect(cx, (IpAddress::Ipv6(addr), port), local).is_err() {
            let _ = reply.send(Err(ConnectError::Unreachable));
            return;
        }
        let handle = self.sockets.add(s);
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        self.conns.push(Conn::new(
            handle,
            Kind::Outgoing(Some(reply), deadline),
            &self.wake,
        ));
    }

    /// A SOCKS port no connection uses.
    fn free_port(&mut self) -> Option<u16> {
        let span = usize::from(SOCKS_PORTS.end() - SOCKS_PORTS.start()) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *SOCKS_PORTS.end() {
                *SOCKS_PORTS.start()
            } else {
                port + 1
            };
            let used = self.conns.iter().any(|c| {
                self.sockets
                    .get::<tcp::Socket<'_>>(c.handle)
                    .local_endpoint()
                    .is_some_and(|e| e.port == port)
            });
            if !used {
                return Some(port);
            }
        }
        None
    }

    /// Moves bytes between sockets and apps, takes new connections on the
    /// listeners and ends finished ones. Returns whether any byte moved.
    fn service(&mut self) -> bool {
        let mut moved = false;
        // Listeners that took a connection become connections.
        let mut i = 0;
        while i < self.listeners.len() {
            let (port, to, handle) = self.listeners[i];
            let state = self.sockets.get::<tcp::Socket<'_>>(handle).state();
            if state == State::Listen {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            if self.conns.len() >= MAX_CONNECTIONS {
                self.counters.busy.fetch_add(1, Ordering::Relaxed);
                self.sockets.get_mut::<tcp::Socket<'_>>(handle).abort();
                self.sockets.remove(handle);
            } else {
                let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
                let kind = Kind::Exposed(Some(to), deadline);
                self.conns.push(Conn::new(handle, kind, &self.wake));
            }
            self.listen(port, to);
        }
        let mut done = Vec::new();
        let now = std::time::Instant::now();
        for (n, c) in self.conns.iter_mut().enumerate() {
            let s = self.sockets.get_mut::<tcp::Socket<'_>>(c.handle);
            match handshake(s, c, now, &self.counters) {
                Handshake::Waiting => continue,
                Handshake::Failed => {
                    done.push(n);
                    continue;
                }
                Handshake::Done => {}
            }
            moved |= pump(s, c);
            let state = s.state();
            if state == State::Closed || (state == State::TimeWait && c.to_app.is_none()) {
                done.push(n);
            }
        }
        for n in done.into_iter().rev() {
            let c = self.conns.swap_remove(n);
            self.sockets.remove(c.handle);
        }
        self.counters
            .open
            .store(self.conns.len() as u64, Ordering::Relaxed);
        moved
    }
}

/// Follows the handshake of `c`'s socket `s`: once it is done, hands the
/// app side over (the SOCKS client's answer, or a connection to the exposed
/// service); past the deadline, or at a reset, gives up.
fn handshake(
    s: &mut tcp::Socket<'static>,
    c: &mut Conn,
    now: std::time::Instant,
    counters: &StackCounters,
) -> Handshake {
    let (opening, deadline) = match &c.kind {
        Kind::Outgoing(reply, deadline) => (reply.is_some(), *deadline),
        Kind::Exposed(to, deadline) => (to.is_some(), *deadline),
    };
    if !opening {
        return Handshake::Done;
    }
    let failed = match s.state() {
        State::SynSent | State::SynReceived if now >= deadline => {
            s.abort();
            Some(ConnectError::Unreachable)
        }
        State::SynSent | State::SynReceived => return Handshake::Waiting,
        // A reset, or the socket's own timeout.
        State::Closed => Some(ConnectError::Refused),
        _ => None,
    };
    match (&mut c.kind, failed) {
        (Kind::Outgoing(reply, _), Some(why)) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = reply.take() {
                let _ = r.send(Err(why));
            }
            Handshake::Failed
        }
        (Kind::Exposed(..), Some(_)) => Handshake::Failed,
        (Kind::Outgoing(reply, _), None) => {
            if let (Some(r), Some(pipe)) = (reply.take(), c.pipe.take()) {
                counters.connected.fetch_add(1, Ordering::Relaxed);
                if r.send(Ok(pipe)).is_err() {
                    // The SOCKS client left meanwhile.
                    s.abort();
                }
            }
            Handshake::Done
        }
        (Kind::Exposed(to, _), None) => {
            if let (Some(to), Some(pipe)) = (to.take(), c.pipe.take()) {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(super::splice::forward(to, pipe));
            }
            Handshake::Done
        }
    }
}

/// Moves bytes between the socket `s` and its app `c`: to the app while
/// its channel has room, to the socket while its buffer has; a FIN when the
/// app finished, an end of stream to the app when the far side did, a
/// reset when the app went away. Returns whether any byte moved.
fn pump(s: &mut tcp::Socket<'static>, c: &mut Conn) -> bool {
    let mut moved = false;
    if c.to_app.as_ref().is_some_and(mpsc::Sender::is_closed) {
        // The app went away (or its service never answered).
        s.abort();
        c.to_app = None;
        return moved;
    }
    if let Some(to_app) = &c.to_app {
        while s.can_recv() {
            let permit = match to_app.try_reserve() {
                Ok(p) => p,
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    s.abort();
                    return moved;
                }
            };
            // Copied once, straight out of the socket's ring.
            let Ok(chunk) = s.recv(|data| {
                let n = data.len().min(CHUNK);
                (n, Bytes::copy_from_slice(&data[..n]))
            }) else {
                break;
            };
            permit.send(chunk);
            moved = true;
        }
        let far_side_done = matches!(
            s.state(),
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait | State::Closed
        );
        if far_side_done && s.recv_queue() == 0 {
            c.to_app = None;
        }
    }
    while s.may_send() {
        let chunk = match c.pending.take() {
            Some(b) => b,
            None => match c.from_app.try_recv() {
                Ok(b) => b,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    c.app_done = true;
                    break;
                }
            },
        };
        let k = s.send_slice(&chunk).unwrap_or(0);
        moved |= k > 0;
        if k < chunk.len() {
            c.pending = Some(chunk.slice(k..));
            break;
        }
    }
    if c.app_done && c.pending.is_none() && s.may_send() {
        s.close();
    }
    moved
}

#[cfg(test)]
mod tests {
    use smoltcp::wire::TcpPacket;
    use tokio::net::TcpListener;

    use super::*;

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    /// An IPv6 TCP segment with no payload and a right checksum.
    fn segment(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ports: (u16, u16),
        seq: u32,
        ack: u32,
        flags: u8,
    ) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&20u16.to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p[40..42].copy_from_slice(&ports.0.to_be_bytes());
        p[42..44].copy_from_slice(&ports.1.to_be_bytes());
        p[44..48].copy_from_slice(&seq.to_be_bytes());
        p[48..52].copy_from_slice(&ack.to_be_bytes());
        p[52] = 5 << 4;
        p[53] = flags;
        p[54..56].copy_from_slice(&u16::MAX.to_be_bytes());
        TcpPacket::new_unchecked(&mut p[40..])
            .fill_checksum(&IpAddress::Ipv6(src), &IpAddress::Ipv6(dst));
        p
    }

    /// A SYN to an exposed port is answered, but the local service is
    /// dialled only when the handshake completes: SYNs alone open nothing.
    #[tokio::test]
    async fn an_exposed_port_dials_its_service_only_after_the_handshake() {
        let service = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let to = service.local_addr().expect("addr");
        let (datapath, mut out) = crate::events::channel();
        let (me, peer): (Ipv6Addr, Ipv6Addr) =
            ("600::1".parse().expect("ip"), "600::2".parse().expect("ip"));
        let (stack, port, _connector, counters) = new(me, 7, 1500, &[(80, to)], true, datapath);
        tokio::spawn(stack.run());
        let next = |out: &mut mpsc::Receiver<Input>| match out.try_recv() {
            Ok(Input::Packets(mut p)) => p.pop(),
            _ => None,
        };
        port.give(&segment(peer, me, (40000, 80), 1000, 0, SYN));
        let mut synack = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Some(p) = next(&mut out) {
                synack = Some(p);
                break;
            }
        }
        let synack = synack.expect("an answer to the SYN");
        assert_eq!(synack[53] & (SYN | ACK), SYN | ACK, "{synack:?}");
        assert_eq!(&synack[48..52], &1001u32.to_be_bytes());
        let their_seq = u32::from_be_bytes([synack[44], synack[45], synack[46], synack[47]]);
        let early = tokio::time::timeout(Duration::from_millis(300), service.accept()).await;
        assert!(early.is_err(), "the service was dialled on a SYN alone");
        assert_eq!(counters.accepted.load(Ordering::Relaxed), 0);
        port.give(&segment(
            peer,
            me,
            (40000, 80),
            1001,
            their_seq.wrapping_add(1),
            ACK,
        ));
        tokio::time::timeout(Duration::from_secs(5), service.accept())
            .await
            .expect("the service dialled once the handshake completed")
            .expect("accept");
        assert_eq!(counters.accepted.load(Ordering::Relaxed), 1);
    }
}
