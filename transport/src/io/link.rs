//! A live link as the daemon sees it: who is on the other end, and a
//! sender and receiver of frames (`docs/protocol.md, "Link framing"`).
//!
//! Each link has two tasks:
//! - the **writer** takes queued frames, coalesces everything queued at a
//!   wakeup into [`FrameEncoder`] flushes of a random size (so TLS record
//!   sizes do not cluster on the cell size; the encoder pads its first
//!   flushes and every short one, so a lone cell or keepalive never makes
//!   a constant record size either), sends a ping as the keepalive at
//!   jittered intervals (the first within [`FIRST_PING_MAX`]) and answers
//!   the peer's pings with pongs, and, when the daemon sets a rate with
//!   [`LinkSender::set_padding`], tops cell frames up to that rate with
//!   cell-sized padding frames ([`PaddingPacer`]); and, when it has been
//!   sending without hearing anything back, probes with a ping and ends the
//!   link if that goes unanswered too ([`Liveness`]);
//! - the **reader** decodes the peer's frames, drops keepalives and
//!   padding (counting the peer's cell-sized padding), hands the peer's
//!   pings to the writer and times its pongs ([`RttEstimator`]), and ends
//!   the link when the stream ends, breaks, goes silent for
//!   [`LinkSettings::dead_after`], or the writer found the peer
//!   unresponsive.
//!
//! Both count the bytes of the frame stream they write and read, every
//! frame with its header: cells, control, padding, keepalives, pings and
//! pongs, but not the HTTP/2 and TLS framing around them
//! ([`LinkSender::stats`]). The two ends of a link agree on these counts
//! byte for byte once nothing is in flight.
//!
//! Closing: a side whose senders are all dropped ends its stream (HTTP/2
//! `END_STREAM`); the peer's reader then reports [`LinkEnded::Closed`],
//! ends its own stream and closes the connection gracefully (hard after
//! [`LINK_CLOSE_GRACE`]). A dropped [`LinkReceiver`] alone does not close
//! the link: incoming frames are then discarded.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use rand_chacha::ChaCha12Rng;
use rand_core::{OsRng, RngCore, SeedableRng as _};
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::proto::frame::{
    CELL_LEN, FRAME_PAYLOAD_MAX_LEN, FRAME_WIRE_MAX_LEN, Frame, FrameDecoder, FrameEncoder,
    FrameError, FrameType, LINK_KEEPALIVE_MAX, LINK_KEEPALIVE_MIN, PingToken,
};
use crate::proto::liveness::{Liveness, Verdict};
use crate::proto::padding::PaddingPacer;
use crate::proto::rtt::RttEstimator;

/// The latest the first ping goes out after a link starts, so the link has a
/// round-trip time soon (later pings follow the keepalive interval). The
/// time is drawn uniformly up to this.
pub const FIRST_PING_MAX: Duration = Duration::from_secs(1);

/// Pongs the reader hands the writer before it drops the peer's further
/// pings unanswered (a peer pings once per keepalive interval).
const PONG_QUEUE: usize = 4;

/// Length of an encoded observed address: a 16-byte IPv6 address
/// (IPv4-mapped for IPv4) and a big-endian `u16` port.
pub const OBSERVED_ADDR_LEN: usize = crate::proto::addr::ADDR_LEN;

/// The most frames in one slot of a link's queues: a
/// [`LinkSender::send_batch`] to the writer (longer batches take several),
/// and what the reader decoded at once, to the [`LinkReceiver`].
pub const LINK_BATCH_MAX_FRAMES: usize = 32;

/// Frames a [`LinkSender`] queues before `send` waits, by default (in slots
/// of up to [`LINK_BATCH_MAX_FRAMES`], so two slots). Small,
/// with [`H2_SEND_BUFFER`] and the socket's unsent limit: what waits for a
/// slow link should wait in the daemon's fair queue, which orders it, not
/// in first-in-first-out buffers below it (docs/architecture.md, "Ledgers").
pub const LINK_SEND_QUEUE_FRAMES: usize = 64;

/// The most bytes HTTP/2 buffers for sending on a link's connection
/// (hyper's default is 400 KiB on the server side and 1 MiB on the client).
/// Local: the peer sees nothing of it.
pub(crate) const H2_SEND_BUFFER: usize = 64 * 1024;

/// Frames the reader decodes ahead of [`LinkReceiver::recv`], by default.
pub const LINK_RECEIVE_QUEUE_FRAMES: usize = 256;

/// Keepalive intervals without a single received byte after which a link
/// is dead.
pub const LINK_DEAD_AFTER_KEEPALIVES: u32 = 3;

/// How long a link's connection may take to shut down cleanly once the
/// link is over, before it is closed hard.
pub const LINK_CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The writer drains queued frames into one flush until this many bytes
/// are pending, in bytes.
const COALESCE_MAX_LEN: usize = 64 * 1024;

/// The smallest write the writer hands to HTTP/2 when more is pending, in
/// bytes.
const WRITE_MIN_LEN: usize = 2 * 1024;

/// The largest write the writer hands to HTTP/2 (one TLS record's worth
/// of plaintext), in bytes.
const WRITE_MAX_LEN: usize = 16 * 1024;

/// Buffers between the writer and HTTP/2: with [`WRITE_MAX_LEN`], at most
/// 128 KiB waits here before the writer (and then `send`) waits.
pub(crate) const BODY_QUEUE_BUFFERS: usize = 8;

/// Which side dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The peer dialed this node's listener.
    Inbound,
    /// This node dialed the peer.
    Outbound,
}

/// Tunables of every link. [`LinkSettings::default`] is what a node uses;
/// tests shorten the keepalive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// Frames [`LinkSender::send`] queues before it waits, rounded up to
    /// whole slots of [`LINK_BATCH_MAX_FRAMES`] (a slot holds one
    /// [`LinkSender::send_batch`] or one frame).
    pub send_queue_frames: usize,
    /// Frames decoded ahead of [`LinkReceiver::recv`].
    pub receive_queue_frames: usize,
    /// The shortest interval between keepalives.
    pub keepalive_min: Duration,
    /// The longest interval between keepalives.
    pub keepalive_max: Duration,
}

impl Default for LinkSettings {
    fn default() -> LinkSettings {
        LinkSettings {
            send_queue_frames: LINK_SEND_QUEUE_FRAMES,
            receive_queue_frames: LINK_RECEIVE_QUEUE_FRAMES,
            keepalive_min: LINK_KEEPALIVE_MIN,
            keepalive_max: LINK_KEEPALIVE_MAX,
        }
    }
}

impl LinkSettings {
    /// How long a link may stay silent before it is dead:
    /// [`LINK_DEAD_AFTER_KEEPALIVES`] times the longest keepalive interval.
    pub fn dead_after(&self) -> Duration {
        self.keepalive_max.max(self.keepalive_min) * LINK_DEAD_AFTER_KEEPALIVES
    }

    /// A keepalive interval drawn uniformly from `[keepalive_min,
    /// keepalive_max]` at millisecond resolution.
    fn keepalive_interval(&self) -> Duration {
        crate::proto::frame::jittered(self.keepalive_min, self.keepalive_max, &mut OsRng)
    }

    /// When the first ping goes out: uniform up to [`FIRST_PING_MAX`], and
    /// never later than a keepalive would.
    fn first_ping(&self) -> Duration {
        let max = FIRST_PING_MAX.min(self.keepalive_interval());
        crate::proto::frame::jittered(Duration::ZERO, max, &mut OsRng)
    }
}

/// A live, authenticated link to a peer.
#[derive(Debug)]
pub struct Link {
    /// The peer's Ed25519 identity, proven by the handshake.
    pub peer: [u8; 32],
    /// This node's end of the TCP connection (on outbound links, the dial
    /// port unless the dial fell back to an ephemeral one).
    pub local: SocketAddr,
    /// The peer's address as this node sees the TCP connection.
    pub remote: SocketAddr,
    /// The address the listener saw this node's connection come from, which
    /// tells a node behind NAT its public address (`docs/protocol.md, "Link
    /// setup"`). `Some` on outbound links only.
    pub observed: Option<SocketAddr>,
    /// What the peer's handshake message carried for the daemon: message
    /// 1's payload (for example an invite secret) on inbound links, the
    /// authorizer's reply on outbound links.
    pub app_payload: Vec<u8>,
    /// The Noise handshake hash, the same on both ends and unique to this
    /// link: sign it to bind a statement to the link.
    pub handshake_hash: [u8; 32],
    /// Which side dialed.
    pub direction: Direction,
    /// Queues frames to the peer.
    pub sender: LinkSender,
    /// Yields the peer's frames.
    pub receiver: LinkReceiver,
}

/// Why a link ended, as [`LinkReceiver::recv`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkEnded {
    /// The peer ended its stream cleanly (it closed the link).
    #[error("the peer closed the link")]
    Closed,
    /// Nothing arrived for [`LinkSettings::dead_after`].
    #[error("no keepalive from the peer for {0:?}")]
    KeepaliveTimeout(Duration),
    /// The link was sending, heard nothing back, and its probe went
    /// unanswered for this long (`proto::liveness`).
    #[error("the peer stopped answering while the link was busy (no answer to a probe for {0:?})")]
    Unresponsive(Duration),
    /// The TCP, TLS or HTTP/2 stream broke.
    #[error("link transport failed: {0}")]
    Transport(String),
    /// The peer sent bytes that are not valid frames.
    #[error("peer broke the framing: {0}")]
    Protocol(FrameError),
}

/// Why [`LinkSender::send`] did not queue a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkSendError {
    /// The link has ended; its receiver says why.
    #[error("the link is closed")]
    Closed,
    /// The frame cannot be sent (a cell that is not 1200 bytes, or a payload
    /// over the maximum).
    #[error("frame cannot be sent: {0}")]
    Invalid(FrameError),
}

/// Queues frames to the peer. Clone it to send from several tasks; the link
/// closes its sending direction when every clone is dropped.
#[derive(Debug, Clone)]
pub struct LinkSender {
    tx: mpsc::Sender<Vec<Frame>>,
    /// The padding rate the writer follows, in bytes per second; 0 is off.
    padding_rate: Arc<watch::Sender<u32>>,
    shared: Arc<Shared>,
}

/// What the writer and reader of one link count and share.
#[derive(Debug, Default)]
struct Shared {
    /// Cell-sized padding frames sent and received.
    cover_sent: AtomicU64,
    cover_received: AtomicU64,
    /// All padding frames and their bytes, headers included.
    padding_frames_sent: AtomicU64,
    padding_bytes_sent: AtomicU64,
    padding_frames_received: AtomicU64,
    padding_bytes_received: AtomicU64,
    /// Frame-stream bytes written to and read from HTTP/2.
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    /// The outstanding ping and the round-trip times.
    rtt: Mutex<RttEstimator>,
    /// Whether the busy link still hears the peer.
    liveness: Mutex<Liveness>,
}

impl Shared {
    fn rtt(&self) -> std::sync::MutexGuard<'_, RttEstimator> {
        self.rtt.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A link's byte counts, padding and round-trip time, as
/// [`LinkSender::stats`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Bytes of frames written to the link: every frame with its 3-byte
    /// header (cells, control, graph, padding, keepalives, pings, pongs), not
    /// the HTTP/2 and TLS framing around them.
    pub bytes_out: u64,
    /// Bytes of frames read from the link, counted the same way.
    pub bytes_in: u64,
    /// Padding frames sent (the encoder's write padding and cell-sized link
    /// padding alike), and their bytes, headers included.
    pub padding_frames_out: u64,
    /// Bytes of [`LinkStats::padding_frames_out`].
    pub padding_bytes_out: u64,
    /// Padding frames received and discarded.
    pub padding_frames_in: u64,
    /// Bytes of [`LinkStats::padding_frames_in`].
    pub padding_bytes_in: u64,
    /// Of the padding frames sent, the cell-sized ones (link padding).
    pub cover_frames_out: u64,
    /// Of the padding frames received, the cell-sized ones.
    pub cover_frames_in: u64,
    /// The latest round-trip time of a ping, if one was answered.
    pub rtt: Option<Duration>,
    /// The smoothed round-trip time (RFC 6298's SRTT).
    pub srtt: Option<Duration>,
    /// Pings answered.
    pub pings_answered: u64,
}

/// Reads a link's [`LinkStats`] without holding the link open (unlike a
/// [`LinkSender`] clone). Cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkStatsHandle(Arc<Shared>);

impl LinkStatsHandle {
    /// The counts so far.
    pub fn get(&self) -> LinkStats {
        let s = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rtt = s.rtt();
        LinkStats {
            bytes_out: get(&s.bytes_out),
            bytes_in: get(&s.bytes_in),
            padding_frames_out: get(&s.padding_frames_sent),
            padding_bytes_out: get(&s.padding_bytes_sent),
            padding_frames_in: get(&s.padding_frames_received),
            padding_bytes_in: get(&s.padding_bytes_received),
            cover_frames_out: get(&s.cover_sent),
            cover_frames_in: get(&s.cover_received),
            rtt: rtt.latest(),
            srtt: rtt.smoothed(),
            pings_answered: rtt.samples(),
        }
    }
}

/// Link padding on one link, as [`LinkSender::padding`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PaddingStats {
    /// The rate this side pads at, in bytes of cell frames per second; 0 is
    /// off.
    pub rate_out: u32,
    /// Padding frames sent, each the size of a cell frame
    /// ([`CELL_FRAME_WIRE_LEN`](crate::proto::padding::CELL_FRAME_WIRE_LEN)
    /// bytes).
    pub frames_out: u64,
    /// Cell-sized padding frames received from the peer and discarded.
    pub frames_in: u64,
}

impl LinkSender {
    /// Queues `frame`, waiting while the queue is full (back-pressure from
    /// the peer and TCP).
    pub async fn send(&self, frame: Frame) -> Result<(), LinkSendError> {
        check_sendable(&frame)?;
        self.tx
            .send(vec![frame])
            .await
            .map_err(|_| LinkSendError::Closed)
    }

    /// Queues `frames` in order, as [`LinkSender::send`] would one by one,
    /// but in one queue slot per [`LINK_BATCH_MAX_FRAMES`]: one hand-off
    /// and one wake-up of the writer for the lot. If any frame cannot be
    /// sent, none is queued.
    pub async fn send_batch(&self, mut frames: Vec<Frame>) -> Result<(), LinkSendError> {
        frames.iter().try_for_each(check_sendable)?;
        while frames.len() > LINK_BATCH_MAX_FRAMES {
            let rest = frames.split_off(LINK_BATCH_MAX_FRAMES);
            let first = std::mem::replace(&mut frames, rest);
            self.tx
                .send(first)
                .await
                .map_err(|_| LinkSendError::Closed)?;
        }
        if frames.is_empty() {
            return Ok(());
        }
        self.tx
            .send(frames)
            .await
            .map_err(|_| LinkSendError::Closed)
    }

    /// Queues `frame` if there is room now; `Ok(false)` if the queue is
    /// full.
    pub fn try_send(&self, frame: Frame) -> Result<bool, LinkSendError> {
        check_sendable(&frame)?;
        match self.tx.try_send(vec![frame]) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(LinkSendError::Closed),
        }
    }

    /// Whether the link's writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Pads this side of the link at `bytes_per_sec` of cell frames from now
    /// on (the link padding of `anonymity = "strong"`, `docs/protocol.md, "Link
    /// framing"`); 0 stops padding. Cells sent count toward the rate, so
    /// padding only fills what they leave ([`PaddingPacer`]). The rate takes
    /// effect at once, for every clone.
    pub fn set_padding(&self, bytes_per_sec: u32) {
        self.padding_rate.send_if_modified(|rate| {
            let changed = *rate != bytes_per_sec;
            *rate = bytes_per_sec;
            changed
        });
    }

    /// The padding rate and the padding frames sent and received so far.
    pub fn padding(&self) -> PaddingStats {
        PaddingStats {
            rate_out: *self.padding_rate.borrow(),
            frames_out: self.shared.cover_sent.load(Ordering::Relaxed),
            frames_in: self.shared.cover_received.load(Ordering::Relaxed),
        }
    }

    /// The link's byte counts, padding and round-trip time so far.
    pub fn stats(&self) -> LinkStats {
        self.stats_handle().get()
    }

    /// A handle that reads [`LinkSender::stats`] and does not keep the link
    /// open.
    pub fn stats_handle(&self) -> LinkStatsHandle {
        LinkStatsHandle(Arc::clone(&self.shared))
    }
}

fn check_sendable(frame: &Frame) -> Result<(), LinkSendError> {
    let len = frame.payload().len();
    match frame {
        Frame::Cell(_) if len != CELL_LEN => {
            Err(LinkSendError::Invalid(FrameError::BadCellLength(len)))
        }
        _ if len > FRAME_PAYLOAD_MAX_LEN => {
            Err(LinkSendError::Invalid(FrameError::PayloadTooLong(len)))
        }
        _ => Ok(()),
    }
}

/// Yields the peer's frames (cells, link control, graph records, ledger
/// counters; keepalives and padding are consumed by the link).
#[derive(Debug)]
pub struct LinkReceiver {
    /// The reader's batches: the frames of what it read at once, up to
    /// [`LINK_BATCH_MAX_FRAMES`] each.
    rx: mpsc::Receiver<Result<Vec<Frame>, LinkEnded>>,
    /// Frames of batches taken and not yet yielded.
    ready: std::collections::VecDeque<Frame>,
    ended: Option<LinkEnded>,
}

impl LinkReceiver {
    /// The next frame, or why the link ended (then the same reason on every
    /// later call).
    pub async fn recv(&mut self) -> Result<Frame, LinkEnded> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(frame);
            }
            if let Some(e) = &self.ended {
                return Err(e.clone());
            }
            let end = match self.rx.recv().await {
                Some(Ok(batch)) => {
                    self.ready.extend(batch);
                    continue;
                }
                Some(Err(e)) => e,
                // The reader stopped without a reason only if its task was
                // cancelled (runtime shutdown).
                None => LinkEnded::Transport("link task stopped".to_string()),
            };
            self.ended = Some(end);
        }
    }

    /// Waits for the next frame like [`Self::recv`], then takes every frame
    /// already decoded as well, up to `limit` in all, onto the end of
    /// `frames`: one wakeup for a batch. Frames that came before the link
    /// ended are yielded first; the reason comes on the call after.
    pub async fn recv_many(
        &mut self,
        frames: &mut std::collections::VecDeque<Frame>,
        limit: usize,
    ) -> Result<(), LinkEnded> {
        frames.push_back(self.recv().await?);
        while frames.len() < limit {
            if let Some(frame) = self.ready.pop_front() {
                frames.push_back(frame);
                continue;
            }
            if self.ended.is_some() {
                break;
            }
            match self.rx.try_recv() {
                Ok(Ok(batch)) => self.ready.extend(batch),
                Ok(Err(e)) => self.ended = Some(e),
                Err(_) => break,
            }
        }
        Ok(())
    }
}

/// Encodes the address a connection was observed from (`proto::addr`).
/// The listener puts it at the start of message 2's payload so the dialer
/// learns its public address (`docs/protocol.md, "Link setup"`).
pub fn encode_observed_addr(addr: SocketAddr) -> [u8; OBSERVED_ADDR_LEN] {
    crate::proto::addr::encode_addr(addr)
}

/// Decodes [`encode_observed_addr`]'s output from the first
/// [`OBSERVED_ADDR_LEN`] bytes of `buf`; IPv4-mapped addresses come back as
/// IPv4. `None` if `buf` is shorter.
pub fn decode_observed_addr(buf: &[u8]) -> Option<SocketAddr> {
    crate::proto::addr::decode_addr(buf)
}

/// What ends the connection under a link once the link is over: it should
/// shut down gracefully and hard after [`LINK_CLOSE_GRACE`].
pub(crate) type CloseConnection = Box<dyn FnOnce() + Send>;

/// Everything needed to start a link's tasks.
pub(crate) struct LinkStart {
    pub(crate) peer: [u8; 32],
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) observed: Option<SocketAddr>,
    pub(crate) app_payload: Vec<u8>,
    pub(crate) handshake_hash: [u8; 32],
    pub(crate) direction: Direction,
    /// The peer's stream.
    pub(crate) incoming: Incoming,
    /// Bytes of the peer's stream already read (after message 2).
    pub(crate) already_read: Bytes,
    /// This side's stream.
    pub(crate) outgoing: mpsc::Sender<Bytes>,
    pub(crate) close_connection: CloseConnection,
}

/// Spawns the writer and reader of a link and returns it.
pub(crate) fn start_link(start: LinkStart, settings: &LinkSettings) -> Link {
    let slots = settings.send_queue_frames.div_ceil(LINK_BATCH_MAX_FRAMES);
    let (frame_tx, frame_rx) = mpsc::channel(slots.max(1));
    let (recv_tx, recv_rx) = mpsc::channel(
        settings
            .receive_queue_frames
            .div_ceil(LINK_BATCH_MAX_FRAMES)
            .max(1),
    );
    let stop_writer = Arc::new(Notify::new());
    let unresponsive = Arc::new(Notify::new());
    let (rate_tx, rate_rx) = watch::channel(0);
    let (pong_tx, pong_rx) = mpsc::channel(PONG_QUEUE);
    let shared = Arc::new(Shared::default());
    tokio::spawn(writer(
        Inputs {
            frames: frame_rx,
            pongs: pong_rx,
            stop: stop_writer.clone(),
            padding_rate: rate_rx,
            unresponsive: unresponsive.clone(),
        },
        start.outgoing,
        settings.clone(),
        shared.clone(),
    ));
    tokio::spawn(reader(
        start.incoming,
        start.already_read,
        Feed {
            out: recv_tx,
            pongs: pong_tx,
            shared: shared.clone(),
        },
        settings.dead_after(),
        Stops {
            writer: stop_writer,
            unresponsive,
        },
        start.close_connection,
    ));
    Link {
        peer: start.peer,
        local: start.local,
        remote: start.remote,
        observed: start.observed,
        app_payload: start.app_payload,
        handshake_hash: start.handshake_hash,
        direction: start.direction,
        sender: LinkSender {
            tx: frame_tx,
            padding_rate: Arc::new(rate_tx),
            shared,
        },
        receiver: LinkReceiver {
            rx: recv_rx,
            ready: std::collections::VecDeque::new(),
            ended: None,
        },
    }
}

/// What the writer waits on besides the clock.
struct Inputs {
    /// Frames from the [`LinkSender`]s, a batch per slot.
    frames: mpsc::Receiver<Vec<Frame>>,
    /// Tokens of the peer's pings, to answer.
    pongs: mpsc::Receiver<PingToken>,
    /// The reader says the link is over.
    stop: Arc<Notify>,
    /// The padding rate [`LinkSender::set_padding`] sets.
    padding_rate: watch::Receiver<u32>,
    /// Told when the peer stopped answering (the reader ends the link).
    unresponsive: Arc<Notify>,
}

/// How the reader and writer stop each other.
struct Stops {
    /// The reader tells the writer the link is over.
    writer: Arc<Notify>,
    /// The writer tells the reader the peer stopped answering.
    unresponsive: Arc<Notify>,
}

/// Coalesces queued frames into writes, sends a ping as the keepalive at
/// jittered intervals, answers the peer's pings, and pads at the rate
/// [`LinkSender::set_padding`] set. Ends (closing this direction cleanly)
/// when every [`LinkSender`] is gone, when the reader says the link is
/// over, or when HTTP/2 drops the stream.
async fn writer(
    mut inputs: Inputs,
    out: mpsc::Sender<Bytes>,
    settings: LinkSettings,
    shared: Arc<Shared>,
) {
    // Flush sizes, padding and ping tokens draw from a ChaCha stream seeded
    // once from the OS, not from a getrandom call each (several per flush).
    let mut rng = ChaCha12Rng::from_rng(OsRng).unwrap_or_else(|_| ChaCha12Rng::from_entropy());
    let mut enc = FrameEncoder::new(&mut rng);
    let mut next_keepalive = Instant::now() + settings.first_ping();
    let mut pacer: Option<PaddingPacer> = None;
    let mut rate_open = true;
    let mut pongs_open = true;
    let mut pad = [0u8; CELL_LEN];
    loop {
        let pad_at = pacer
            .as_ref()
            .map_or(next_keepalive, |p| Instant::from_std(p.poll_timeout()));
        let check_at = {
            let srtt = shared.rtt().smoothed();
            shared.liveness().next_check(srtt).map(Instant::from_std)
        };
        tokio::select! {
            biased;
            () = out.closed() => return,
            () = inputs.stop.notified() => return,
            token = inputs.pongs.recv(), if pongs_open => match token {
                Some(token) => queue(&mut enc, &Frame::Pong(token), None),
                None => pongs_open = false,
            },
            batch = inputs.frames.recv() => {
                let Some(mut batch) = batch else { return };
                shared.liveness().sent(Instant::now().into_std());
                // This batch, and those already queued behind it, up to
                // one coalesced flush.
                loop {
                    for frame in &batch {
                        queue(&mut enc, frame, pacer.as_mut());
                    }
                    if enc.pending_len() >= COALESCE_MAX_LEN {
                        break;
                    }
                    match inputs.frames.try_recv() {
                        Ok(next) => batch = next,
                        Err(_) => break,
                    }
                }
            }
            changed = inputs.padding_rate.changed(), if rate_open => {
                if changed.is_ok() {
                    let rate = *inputs.padding_rate.borrow_and_update();
                    pacer = PaddingPacer::new(rate, Instant::now().into_std());
                } else {
                    rate_open = false;
                }
            }
            () = tokio::time::sleep_until(pad_at), if pacer.is_some() => {
                if let Some(p) = pacer.as_mut()
                    && p.poll_padding(Instant::now().into_std())
                {
                    // A cell frame in all but its type byte. The payload is
                    // random like the encoder's own padding, though TLS
                    // hides it anyway.
                    rng.fill_bytes(&mut pad);
                    if enc.queue(FrameType::Padding, &pad).is_ok() {
                        shared.cover_sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            () = tokio::time::sleep_until(check_at.unwrap_or(next_keepalive)), if check_at.is_some() => {
                let now = Instant::now().into_std();
                let srtt = shared.rtt().smoothed();
                match shared.liveness().poll(now, srtt) {
                    Verdict::Fine => {}
                    Verdict::Probe => {
                        let token = shared.rtt().ping(now, &mut rng);
                        queue(&mut enc, &Frame::Ping(token), None);
                    }
                    Verdict::Dead => {
                        inputs.unresponsive.notify_one();
                        return;
                    }
                }
            }
            () = tokio::time::sleep_until(next_keepalive) => {
                // The keepalive asks for an echo: a peer that does not know
                // pings skips it, and its bytes keep the link alive all the
                // same (docs/protocol.md, "Link framing").
                let token = shared.rtt().ping(Instant::now().into_std(), &mut rng);
                queue(&mut enc, &Frame::Ping(token), None);
                next_keepalive = Instant::now() + settings.keepalive_interval();
            }
        }
        loop {
            let span = u64::try_from(WRITE_MAX_LEN - WRITE_MIN_LEN).unwrap_or(0) + 1;
            let max_len = WRITE_MIN_LEN + usize::try_from(rng.next_u64() % span).unwrap_or(0);
            let Some(buf) = enc.flush(max_len, &mut rng) else {
                break;
            };
            let len = buf.len() as u64;
            if out.send(buf).await.is_err() {
                return;
            }
            shared.bytes_out.fetch_add(len, Ordering::Relaxed);
        }
        shared
            .padding_frames_sent
            .store(enc.padding_frames(), Ordering::Relaxed);
        shared
            .padding_bytes_sent
            .store(enc.padding_bytes(), Ordering::Relaxed);
    }
}

/// Queues one frame; [`LinkSender`] already checked it, so this cannot
/// fail. A cell fills the padding pacer's current slot.
fn queue(enc: &mut FrameEncoder, frame: &Frame, pacer: Option<&mut PaddingPacer>) {
    if let Err(e) = enc.queue(frame.frame_type(), frame.payload()) {
        tracing::warn!(error = %e, "dropping a frame the link sender should have refused");
        return;
    }
    if let (Frame::Cell(_), Some(p)) = (frame, pacer) {
        p.on_cell(Instant::now().into_std());
    }
}

/// Where the reader's decoded frames go.
struct Feed {
    /// Frames for the daemon, in batches of up to [`LINK_BATCH_MAX_FRAMES`].
    out: mpsc::Sender<Result<Vec<Frame>, LinkEnded>>,
    /// Tokens of the peer's pings, for the writer to echo.
    pongs: mpsc::Sender<PingToken>,
    shared: Arc<Shared>,
}

/// Decodes the peer's stream into `feed` until it ends, then stops the
/// writer and closes the connection. If the daemon drops its
/// [`LinkReceiver`], frames are read and discarded until the peer ends.
async fn reader(
    mut incoming: Incoming,
    already_read: Bytes,
    feed: Feed,
    dead_after: Duration,
    stops: Stops,
    close_connection: CloseConnection,
) {
    let mut dec = FrameDecoder::new();
    let end: Result<std::convert::Infallible, LinkEnded> = async {
        feed.push(&mut dec, &already_read).await?;
        let mut deadline = Instant::now() + dead_after;
        loop {
            let frame = tokio::select! {
                frame = incoming.frame() => frame,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(LinkEnded::KeepaliveTimeout(dead_after));
                }
                () = stops.unresponsive.notified() => {
                    let srtt = feed.shared.rtt().smoothed();
                    return Err(LinkEnded::Unresponsive(Liveness::probe_wait(srtt)));
                }
            };
            match frame {
                None => return Err(LinkEnded::Closed),
                Some(Err(e)) => return Err(LinkEnded::Transport(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        feed.push(&mut dec, &data).await?;
                        deadline = Instant::now() + dead_after;
                    }
                }
            }
        }
    }
    .await;
    let Err(reason) = end;
    tracing::debug!(%reason, "link ended");
    let _ = feed.out.send(Err(reason)).await;
    stops.writer.notify_one();
    close_connection();
}

impl Feed {
    /// Hands a batch of frames to the daemon, waiting while its queue is
    /// full. A dropped receiver discards; the link lives on for sending.
    async fn hand_on(&self, batch: Vec<Frame>) {
        let _ = self.out.send(Ok(batch)).await;
    }

    /// Pushes received bytes through the decoder and hands whole frames on
    /// (dropping them if nobody receives any more). Padding never reaches
    /// the daemon: the decoder skips it, and counts it. Keepalives, pings
    /// and pongs stay here. `Ok(())` means "keep reading"; an `Err` ends the
    /// link.
    async fn push(&self, dec: &mut FrameDecoder, data: &[u8]) -> Result<(), LinkEnded> {
        let shared = &self.shared;
        shared
            .bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        shared.liveness().heard();
        // What one read decoded goes to the daemon as one batch (or
        // several of LINK_BATCH_MAX_FRAMES): one hand-off for the lot.
        let mut batch = Vec::with_capacity(LINK_BATCH_MAX_FRAMES);
        // Frames decoded before a framing error still go on, ahead of it.
        let mut broken = None;
        // Chunks this size always fit the decoder once it is drained.
        'read: for chunk in data.chunks(FRAME_WIRE_MAX_LEN) {
            if let Err(e) = dec.push(chunk) {
                broken = Some(e);
                break;
            }
            loop {
                let frame = match dec.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(e);
                        break 'read;
                    }
                };
                match frame {
                    Frame::Keepalive => {}
                    // A peer that pings faster than the writer answers
                    // gets no answer to some: it only loses samples.
                    Frame::Ping(token) => {
                        let _ = self.pongs.try_send(token);
                    }
                    Frame::Pong(token) => {
                        shared.rtt().on_pong(&token, Instant::now().into_std());
                    }
                    frame => {
                        batch.push(frame);
                        if batch.len() == LINK_BATCH_MAX_FRAMES {
                            let full = std::mem::replace(
                                &mut batch,
                                Vec::with_capacity(LINK_BATCH_MAX_FRAMES),
                            );
                            self.hand_on(full).await;
                        }
                    }
                }
            }
        }
        if !batch.is_empty() {
            self.hand_on(batch).await;
        }
        shared
            .cover_received
            .store(dec.cover_frames(), Ordering::Relaxed);
        shared
            .padding_frames_received
            .store(dec.padding_frames(), Ordering::Relaxed);
        shared
            .padding_bytes_received
            .store(dec.padding_bytes(), Ordering::Relaxed);
        broken.map_or(Ok(()), |e| Err(LinkEnded::Protocol(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_addresses_round_trip() {
        for a in [
            "198.18.0.7:443",
            "[2001:db8::1]:8443",
            "[::ffff:198.18.0.9]:1",
        ] {
            let addr: SocketAddr = a.parse().expect("addr");
            let enc = encode_observed_addr(addr);
            let dec = decode_observed_addr(&enc).expect("decodes");
            let want = match addr {
                SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                    Some(v4) => SocketAddr::new(std::net::IpAddr::V4(v4), v6.port()),
                    None => addr,
                },
                v4 => v4,
            };
            assert_eq!(dec, want);
        }
        assert_eq!(decode_observed_addr(&[0; OBSERVED_ADDR_LEN - 1]), None);
    }

    /// One read with a cell and then bytes that break the framing: the
    /// cell goes on to the daemon, then the link ends with the error.
    #[tokio::test]
    async fn frames_before_a_framing_error_are_handed_on() {
        let (out, mut frames) = mpsc::channel(8);
        let (pongs, _pongs) = mpsc::channel(PONG_QUEUE);
        let feed = Feed {
            out,
            pongs,
            shared: Arc::new(Shared::default()),
        };
        let mut enc = FrameEncoder::with_padded_flushes(0);
        enc.queue(FrameType::Cell, &[5u8; CELL_LEN])
            .expect("a cell");
        let mut read = enc
            .flush(WRITE_MAX_LEN, &mut OsRng)
            .expect("bytes")
            .to_vec();
        // A frame of length 0 is a framing error.
        read.extend_from_slice(&[0, 0, 1]);
        let ended = feed.push(&mut FrameDecoder::new(), &read).await;
        assert_eq!(ended, Err(LinkEnded::Protocol(FrameError::EmptyFrame)));
        let batch = frames.try_recv().expect("a batch").expect("frames");
        assert_eq!(batch, vec![Frame::Cell(Bytes::from(vec![5u8; CELL_LEN]))]);
    }

    #[test]
    fn keepalive_intervals_stay_in_range() {
        let s = LinkSettings::default();
        for _ in 0..1000 {
            let i = s.keepalive_interval();
            assert!(i >= LINK_KEEPALIVE_MIN && i <= LINK_KEEPALIVE_MAX, "{i:?}");
        }
        assert_eq!(s.dead_after(), LINK_KEEPALIVE_MAX * 3);
    }
}
