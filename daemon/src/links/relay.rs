//! Relayed links (docs/architecture.md, "Relayed links"; docs/protocol.md,
//! "Relayed links"): a link between two partners that cannot reach each
//! other, carried as a byte stream through a partner both have a live link
//! to. The two ends run an ordinary link over the stream (TLS, HTTP/2 and
//! the link handshake end to end), so the relay forwards TLS records it
//! cannot read.
//!
//! This file has both roles:
//! - **an end**: [`Links::open_relay`] opens a stream through a relay and
//!   dials the link over it; [`Links::on_relay_in`] takes a stream a partner
//!   opened and serves it as the listener would;
//! - **the relay**: [`Links::on_relay_open`] joins a stream from one partner
//!   to another, within `[nat] relay_rate` and `relay_total`, counted and
//!   shown in `umbra status`.
//!
//! Back-pressure: a stream's bytes wait in a bounded queue
//! ([`RELAY_QUEUE_CHUNKS`]); when it is full, the reader of the link they
//! came on waits, which slows that whole link (relayed streams have no
//! window of their own).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use umbra_transport::io::{self as tio, Link, LinkSender};
use umbra_transport::proto::control::LinkControl;
use umbra_transport::proto::relay::{
    CloseReason, RELAY_CHUNK_MAX_LEN, StreamId, decode_relay, id_parity, nth_stream_id, relay_frame,
};

use umbra_routing::ledger::bucket::TokenBucket;

use super::peers::LinkKind;
use super::{Links, short_key};
use crate::events::LinkId;

/// Chunks of a relayed stream queued toward its next hop before the reader
/// of the link they came on waits.
pub(super) const RELAY_QUEUE_CHUNKS: usize = 16;

/// Bytes buffered inside an end's in-memory pipe between the link's TLS and
/// the relay frames.
const RELAY_PIPE_LEN: usize = 64 * 1024;

/// Relayed streams one partner may have open through this node at once.
pub(super) const RELAY_STREAMS_PER_PEER: usize = 8;

/// How long an end waits for the relay to open a stream, and for the link
/// over it to come up.
pub(super) const RELAY_OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The token bucket of a relayed link holds at most this long a burst at
/// its rate.
const RELAY_BURST: Duration = Duration::from_millis(250);

/// The two ends of a relayed link don't know each other's IP, so its
/// connection has no addresses; a link over one reports these.
pub(super) const NO_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// A relayed link as the relay counts it: the two partners, its bytes, and
/// its rate and total.
#[derive(Debug)]
struct RelayedPair {
    from: [u8; 32],
    to: [u8; 32],
    since: Instant,
    bytes: u64,
    bucket: TokenBucket,
    total_max: u64,
}

/// One half of a stream this node relays: the stream on one of its two
/// links, and where its bytes go next.
#[derive(Debug)]
struct Half {
    /// The sender of the link this half is on, to close it.
    link: LinkSender,
    /// The other half's link and id.
    other: (LinkId, StreamId),
    /// The queue of this half's bytes toward the other link.
    queue: mpsc::Sender<Bytes>,
    pair: Arc<Mutex<RelayedPair>>,
}

/// A stream this node is an end of.
#[derive(Debug)]
struct End {
    /// Bytes from the link toward the local pipe.
    to_pipe: mpsc::Sender<Bytes>,
    /// Told why the stream closed, if someone waits.
    closed: Option<oneshot::Sender<CloseReason>>,
}

/// What the relay side counts, for `umbra status`.
#[derive(Debug, Default)]
struct Counters {
    opened: u64,
    refused: HashMap<&'static str, u64>,
    bytes: u64,
    closed_total: u64,
    unknown_stream_frames: u64,
    malformed_frames: u64,
}

/// The relayed streams of this node, as relay and as an end.
#[derive(Debug, Default)]
pub(super) struct RelayTable {
    halves: HashMap<(LinkId, StreamId), Half>,
    ends: HashMap<(LinkId, StreamId), End>,
    /// Streams opened so far on each link by this side, for the next id.
    opened_on: HashMap<LinkId, u32>,
    counters: Counters,
}

impl Links {
    fn relay(&self) -> std::sync::MutexGuard<'_, RelayTable> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live link to `peer`: its id and sender.
    pub(super) fn live_link(&self, peer: &[u8; 32]) -> Option<(LinkId, LinkSender, LinkKind)> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let e = peers.get(peer)?;
        let s = e.sender.as_ref().filter(|s| !s.is_closed())?;
        Some((e.link_id, s.clone(), e.kind))
    }

    /// A fresh stream id on `link` to `peer`.
    fn next_stream_id(&self, link: LinkId, peer: &[u8; 32]) -> StreamId {
        let parity = id_parity(&self.identity.public(), peer);
        let mut relay = self.relay();
        let n = relay.opened_on.entry(link).or_insert(0);
        let id = nth_stream_id(parity, *n);
        *n = n.wrapping_add(1);
        id
    }

    /// Opens a relayed link to `peer` through `via`, as the TLS client, and
    /// adopts it. Fails with the relay's reason if it refuses.
    pub(super) async fn open_relay(
        self: &Arc<Self>,
        peer: &[u8; 32],
        via: &[u8; 32],
    ) -> Result<()> {
        let Some((link_id, sender, kind)) = self.live_link(via) else {
            bail!("no live link to the relay {}", short_key(via));
        };
        if kind.is_relayed() {
            bail!("the link to {} is itself relayed", short_key(via));
        }
        let id = self.next_stream_id(link_id, via);
        let (pipe, closed) = self.attach_stream(link_id, id, sender.clone(), Some(*via));
        if sender
            .send(LinkControl::RelayOpen { id, to: *peer }.frame())
            .await
            .is_err()
        {
            bail!("the link to the relay {} closed", short_key(via));
        }
        self.dial_over(
            peer,
            pipe,
            closed,
            LinkKind::Relayed { via: *via },
            &format!("relay {}", short_key(via)),
        )
        .await
    }

    /// Runs the link with `peer` over `pipe`, a relayed stream (through a
    /// partner, or over a circuit), as its TLS client, and adopts it as
    /// `kind`. `closed` says why the stream ended, if it ends first; `what`
    /// names the way for errors.
    pub(super) async fn dial_over(
        self: &Arc<Self>,
        peer: &[u8; 32],
        pipe: tokio::io::DuplexStream,
        mut closed: oneshot::Receiver<CloseReason>,
        kind: LinkKind,
        what: &str,
    ) -> Result<()> {
        // The stream has no address: the request names none.
        let target = tio::DialTarget {
            peer: *peer,
            endpoint: NO_ADDR.to_string(),
            server_name: None,
        };
        let terms = self.terms_for(peer);
        let payload = crate::agreement::link_ask(
            &self.identity,
            peer,
            umbra_transport::proto::agreement::Ask::Agreement,
            terms,
        )
        .encode();
        let dial = self
            .dialer
            .dial_stream(pipe, (NO_ADDR, NO_ADDR), &target, &payload);
        tokio::pin!(dial);
        let link = tokio::select! {
            r = &mut dial => r.map_err(|e| anyhow::anyhow!("{what}: {e}"))?,
            reason = &mut closed => {
                bail!("{what}: {}", reason.unwrap_or(CloseReason::Closed));
            }
        };
        self.finish_dial(peer, link, terms, kind)
    }

    /// Joins stream `id` on `link_id` to a local pipe: bytes in Relay frames
    /// from the link go into it, bytes written to it go out as Relay frames.
    /// Returns the pipe's other end and a receiver told why the stream
    /// closed. `opened_via`: this node opened the stream through that relay,
    /// so its bytes, both ways, are charged to this node's ledger with it.
    fn attach_stream(
        self: &Arc<Self>,
        link_id: LinkId,
        id: StreamId,
        sender: LinkSender,
        opened_via: Option<[u8; 32]>,
    ) -> (tokio::io::DuplexStream, oneshot::Receiver<CloseReason>) {
        let (app, pipe) = tokio::io::duplex(RELAY_PIPE_LEN);
        let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
        let (to_pipe, mut from_link) = mpsc::channel::<Bytes>(RELAY_QUEUE_CHUNKS);
        let (closed_tx, closed_rx) = oneshot::channel();
        self.relay().ends.insert(
            (link_id, id),
            End {
                to_pipe,
                closed: Some(closed_tx),
            },
        );
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(chunk) = from_link.recv().await {
                if let Some(via) = &opened_via {
                    me.charges().relayed_by(via, chunk.len());
                }
                if pipe_write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = pipe_write.shutdown().await;
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut buf = vec![0u8; RELAY_CHUNK_MAX_LEN];
            loop {
                match pipe_read.read(&mut buf).await {
                    Ok(n) if n > 0 => {
                        if let Some(via) = &opened_via {
                            me.charges().relayed_by(via, n);
                        }
                        let Some(frame) = relay_frame(id, buf.get(..n).unwrap_or_default()) else {
                            break;
                        };
                        if sender.send(frame).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            // The local end is done: the stream closes.
            if me.relay().ends.remove(&(link_id, id)).is_some() {
                let close = LinkControl::RelayClose {
                    id,
                    reason: CloseReason::Closed,
                };
                let _ = sender.send(close.frame()).await;
            }
        });
        (app, closed_rx)
    }

    /// A partner opened a relayed stream to this node through `relay`: if
    /// `from` is a partner, serve it as the listener serves a connection
    /// (the opener is the TLS client) and adopt the link.
    pub(super) async fn on_relay_in(
        self: &Arc<Self>,
        relay: &[u8; 32],
        link_id: LinkId,
        id: StreamId,
        from: [u8; 32],
    ) {
        let Some((_, sender, _)) = self.live_link(relay) else {
            return;
        };
        let refuse = |reason: CloseReason| LinkControl::RelayClose { id, reason }.frame();
        if !self.is_partner(&from) {
            tracing::info!(from = %short_key(&from), via = %short_key(relay), "refused a relayed link: no agreement with that node");
            self.relay_refused(CloseReason::NotPartner);
            let _ = sender.send(refuse(CloseReason::NotPartner)).await;
            return;
        }
        if self.relay().ends.contains_key(&(link_id, id)) {
            let _ = sender.send(refuse(CloseReason::IdInUse)).await;
            return;
        }
        let Some(listener) = self.link_listener() else {
            let _ = sender.send(refuse(CloseReason::Closed)).await;
            return;
        };
        let (pipe, _closed) = self.attach_stream(link_id, id, sender, None);
        let (tx, mut rx) = mpsc::channel::<Link>(1);
        tokio::spawn(tio::serve_stream(pipe, (NO_ADDR, NO_ADDR), listener, tx));
        let me = Arc::clone(self);
        let via = *relay;
        tokio::spawn(async move {
            if let Ok(Some(link)) = tokio::time::timeout(RELAY_OPEN_TIMEOUT, rx.recv()).await {
                if link.peer == from {
                    me.adopt(link, LinkKind::Relayed { via });
                } else {
                    tracing::warn!(claimed = %short_key(&from), proven = %short_key(&link.peer), "a relayed link's handshake named another node; dropped");
                }
            }
        });
    }

    /// A partner asks this node to relay stream `id` to `to`.
    pub(super) async fn on_relay_open(
        self: &Arc<Self>,
        from: &[u8; 32],
        link_id: LinkId,
        id: StreamId,
        to: [u8; 32],
    ) {
        let Some((_, back, _)) = self.live_link(from) else {
            return;
        };
        let config = self.config();
        let refusal = if !config.nat.relay {
            Some(CloseReason::Disabled)
        } else if self.relay().halves.contains_key(&(link_id, id)) {
            Some(CloseReason::IdInUse)
        } else if self.streams_from(from) >= RELAY_STREAMS_PER_PEER {
            Some(CloseReason::TooManyStreams)
        } else {
            None
        };
        let target = self
            .live_link(&to)
            .filter(|(_, _, k)| !k.is_relayed() && to != *from);
        let refusal = refusal.or(target.is_none().then_some(CloseReason::NoLink));
        let (Some((to_link, onward, _)), None) = (target, refusal) else {
            let reason = refusal.unwrap_or(CloseReason::NoLink);
            tracing::info!(from = %short_key(from), to = %short_key(&to), %reason, "refused to relay");
            self.relay_refused(reason);
            let _ = back
                .send(LinkControl::RelayClose { id, reason }.frame())
                .await;
            return;
        };
        let to_id = self.next_stream_id(to_link, &to);
        let now = Instant::now();
        let pair = Arc::new(Mutex::new(RelayedPair {
            from: *from,
            to,
            since: now,
            bytes: 0,
            bucket: relay_bucket(config.nat.relay_rate.bytes_per_sec.into(), now),
            total_max: config.nat.relay_total,
        }));
        let a = self.spawn_half(
            Arc::clone(&pair),
            (link_id, id),
            back.clone(),
            (to_link, to_id),
            onward.clone(),
        );
        let b = self.spawn_half(
            Arc::clone(&pair),
            (to_link, to_id),
            onward.clone(),
            (link_id, id),
            back,
        );
        {
            let mut relay = self.relay();
            relay.halves.insert((link_id, id), a);
            relay.halves.insert((to_link, to_id), b);
            relay.counters.opened += 1;
        }
        tracing::info!(from = %short_key(from), to = %short_key(&to), "relaying a link");
        let _ = onward
            .send(
                LinkControl::RelayIn {
                    id: to_id,
                    from: *from,
                }
                .frame(),
            )
            .await;
    }

    /// Starts the task that moves one direction of a relayed stream: bytes
    /// of half `me_half` (on the link `link` sends on) go out as stream
    /// `other` on `onward`, within the pair's rate and total.
    fn spawn_half(
        self: &Arc<Self>,
        pair: Arc<Mutex<RelayedPair>>,
        me_half: (LinkId, StreamId),
        link: LinkSender,
        other: (LinkId, StreamId),
        onward: LinkSender,
    ) -> Half {
        let (queue, mut rx) = mpsc::channel::<Bytes>(RELAY_QUEUE_CHUNKS);
        let links = Arc::clone(self);
        let task_pair = Arc::clone(&pair);
        tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                let (wait, over) = {
                    let mut p = task_pair.lock().unwrap_or_else(|p| p.into_inner());
                    p.bytes += chunk.len() as u64;
                    let over = p.total_max > 0 && p.bytes > p.total_max;
                    (p.bucket.take(chunk.len() as u64, Instant::now()), over)
                };
                if over {
                    let (from, to) = {
                        let p = task_pair.lock().unwrap_or_else(|p| p.into_inner());
                        (p.from, p.to)
                    };
                    tracing::warn!(from = %short_key(&from), to = %short_key(&to), "closed a relayed link: it reached [nat] relay_total");
                    links.relay_refused(CloseReason::TotalExceeded);
                    links
                        .close_relayed(me_half, CloseReason::TotalExceeded, true)
                        .await;
                    break;
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                links.relay().counters.bytes += chunk.len() as u64;
                // The node that opened the stream pays for it, both ways
                // (docs/architecture.md, "Ledgers").
                let opener = task_pair.lock().unwrap_or_else(|p| p.into_inner()).from;
                links.charges().relayed_for(&opener, chunk.len());
                let Some(frame) = relay_frame(other.1, &chunk) else {
                    continue;
                };
                if onward.send(frame).await.is_err() {
                    break;
                }
            }
        });
        Half {
            link,
            other,
            queue,
            pair,
        }
    }

    /// Relayed streams `from` has open through this node.
    fn streams_from(&self, from: &[u8; 32]) -> usize {
        let relay = self.relay();
        relay
            .halves
            .values()
            .filter(|h| h.pair.lock().map(|p| p.from == *from).unwrap_or(false))
            .count()
            / 2
    }

    fn relay_refused(&self, reason: CloseReason) {
        *self
            .relay()
            .counters
            .refused
            .entry(reason.as_str())
            .or_insert(0) += 1;
    }

    /// Ends relayed stream `half` and its other half: the other half's link
    /// is told, and `half`'s own too if `tell_both` (when this node, not the
    /// node on that link, ends it).
    async fn close_relayed(&self, half: (LinkId, StreamId), reason: CloseReason, tell_both: bool) {
        let (h, other) = {
            let mut relay = self.relay();
            let Some(h) = relay.halves.remove(&half) else {
                return;
            };
            let other = relay.halves.remove(&h.other);
            relay.counters.closed_total += 1;
            (h, other)
        };
        if let Some(o) = other {
            let close = LinkControl::RelayClose {
                id: h.other.1,
                reason,
            };
            let _ = o.link.send(close.frame()).await;
        }
        if tell_both {
            let close = LinkControl::RelayClose { id: half.1, reason };
            let _ = h.link.send(close.frame()).await;
        }
    }

    /// Bytes of relayed stream `id` arrived on `link_id`: to the next hop if
    /// this node relays it, to the local pipe if it is an end.
    pub(super) async fn on_relay_data(&self, link_id: LinkId, payload: &Bytes) {
        let Ok((id, chunk)) = decode_relay(payload) else {
            self.relay().counters.malformed_frames += 1;
            return;
        };
        let queue = {
            let relay = self.relay();
            relay
                .halves
                .get(&(link_id, id))
                .map(|h| h.queue.clone())
                .or_else(|| relay.ends.get(&(link_id, id)).map(|e| e.to_pipe.clone()))
        };
        match queue {
            Some(q) => {
                let _ = q.send(chunk).await;
            }
            None => self.relay().counters.unknown_stream_frames += 1,
        }
    }

    /// Relayed stream `id` on `link_id` closed (or was refused) by the node
    /// at the other end of that link.
    pub(super) async fn on_relay_close(&self, link_id: LinkId, id: StreamId, reason: CloseReason) {
        let end = self.relay().ends.remove(&(link_id, id));
        if let Some(mut end) = end {
            if reason != CloseReason::Closed {
                tracing::info!(stream = id, %reason, "a relayed stream ended");
            }
            if let Some(tx) = end.closed.take() {
                let _ = tx.send(reason);
            }
            return;
        }
        self.close_relayed((link_id, id), reason, false).await;
    }

    /// Link `link_id` went down: every relayed stream on it ends.
    pub(super) async fn on_link_down(&self, link_id: LinkId) {
        type Streams = Vec<(LinkId, StreamId)>;
        let (halves, ends): (Streams, Streams) = {
            let relay = self.relay();
            let on_link = |k: &&(LinkId, StreamId)| k.0 == link_id;
            (
                relay.halves.keys().filter(on_link).copied().collect(),
                relay.ends.keys().filter(on_link).copied().collect(),
            )
        };
        for h in halves {
            self.close_relayed(h, CloseReason::Closed, false).await;
        }
        let mut relay = self.relay();
        for e in ends {
            if let Some(mut end) = relay.ends.remove(&e)
                && let Some(tx) = end.closed.take()
            {
                let _ = tx.send(CloseReason::Closed);
            }
        }
        relay.opened_on.remove(&link_id);
    }

    /// `umbra status`'s `relay`: what this node relays for its partners,
    /// its limits, and what it refused.
    pub(crate) fn relay_json(&self) -> Value {
        let config = self.config();
        let relay = self.relay();
        let mut pairs: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for h in relay.halves.values() {
            if !seen.insert(Arc::as_ptr(&h.pair) as usize) {
                continue;
            }
            let p = h.pair.lock().unwrap_or_else(|p| p.into_inner());
            pairs.push(json!({
                "from": hex::encode(p.from),
                "to": hex::encode(p.to),
                "bytes": p.bytes,
                "up_secs": p.since.elapsed().as_secs(),
            }));
        }
        pairs.sort_by(|a, b| a["from"].as_str().cmp(&b["from"].as_str()));
        let c = &relay.counters;
        json!({
            "enabled": config.nat.relay,
            "rate_bytes_per_sec": config.nat.relay_rate.bytes_per_sec,
            "total_bytes": config.nat.relay_total,
            "links": pairs,
            "opened": c.opened,
            "closed": c.closed_total,
            "bytes": c.bytes,
            "refused": c.refused,
            "unknown_stream_frames": c.unknown_stream_frames,
            "malformed_frames": c.malformed_frames,
        })
    }
}

/// A relayed link's token bucket: its rate, with a burst of
/// [`RELAY_BURST`] (at least one chunk).
fn relay_bucket(rate: u64, now: Instant) -> TokenBucket {
    let burst = ((rate as f64 * RELAY_BURST.as_secs_f64()) as u64).max(RELAY_CHUNK_MAX_LEN as u64);
    TokenBucket::new(rate, burst, now)
}
