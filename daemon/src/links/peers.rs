//! The peer table behind `umbra peers`, and the reader of each link: one
//! live link per peer, adopted from a listener, a dialer, a hole punch or a
//! relayed stream, whose frames go to the datapath as [`Input`]s.
//!
//! A better connection to a peer that already has a link (a direct or
//! punched one where the link is relayed) takes the link over without
//! dropping its circuits: the link keeps its [`LinkId`], the datapath writes
//! to the new connection after a `moved` marker on the old one, and the
//! reader reads the old connection up to the peer's marker before it
//! switches (docs/protocol.md, "Link moves").

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use umbra_routing::address;
use umbra_transport::io::{self as tio, Direction, Link};
use umbra_transport::proto::control::{LinkControl, LinkControlError};
use umbra_transport::proto::frame::Frame;
use umbra_transport::proto::nat;

use super::{Links, short_key};
use crate::events::{CELL_BATCH, Input, LinkId};

/// How long a reader waits, after the peer moved the link to a new
/// connection, for that connection to be adopted here too.
const MOVE_WAIT: Duration = Duration::from_secs(10);

/// How a link's connection reaches the peer (`umbra peers` `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// A TCP connection one side dialed.
    Direct,
    /// A TCP connection both sides opened at once through their NATs.
    Punched,
    /// A stream carried through a partner both sides have a link to.
    Relayed {
        /// The partner in the middle.
        via: [u8; 32],
    },
    /// A stream carried over a circuit (no partner is shared).
    Tunnelled,
}

impl LinkKind {
    /// `direct`, `punched` or `relayed`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LinkKind::Direct => "direct",
            LinkKind::Punched => "punched",
            LinkKind::Relayed { .. } | LinkKind::Tunnelled => "relayed",
        }
    }

    /// Better connections rank higher: a link moves to a higher one.
    fn rank(self) -> u8 {
        match self {
            LinkKind::Relayed { .. } | LinkKind::Tunnelled => 0,
            LinkKind::Direct | LinkKind::Punched => 1,
        }
    }

    /// The relay in the middle, for a link relayed by a partner.
    pub(crate) fn via(self) -> Option<[u8; 32]> {
        match self {
            LinkKind::Relayed { via } => Some(via),
            _ => None,
        }
    }

    /// Whether the link's connection runs through someone else (a partner,
    /// or a circuit), so it says nothing about this node's NAT and is
    /// replaced by a direct or punched one when one works.
    pub(crate) fn is_relayed(self) -> bool {
        self.rank() == 0
    }

    /// What carries a relayed link: `partner` or `circuit`.
    fn relay(self) -> Option<&'static str> {
        match self {
            LinkKind::Relayed { .. } => Some("partner"),
            LinkKind::Tunnelled => Some("circuit"),
            _ => None,
        }
    }
}

/// One row of `umbra peers`.
#[derive(Debug)]
pub(super) struct PeerEntry {
    /// The live link's sender, if up.
    pub(super) sender: Option<tio::LinkSender>,
    /// The live link's id, so a stale reader does not mark a newer link
    /// down.
    pub(super) link_id: LinkId,
    pub(super) direction: Option<Direction>,
    /// This node's end of the live link's connection.
    pub(super) local: Option<SocketAddr>,
    pub(super) remote: Option<SocketAddr>,
    pub(super) observed: Option<SocketAddr>,
    pub(super) up_since: Option<Instant>,
    /// The byte counts and round-trip time of the current link, or of the
    /// last one once it is down (docs/cli.md, "umbra peers").
    pub(super) stats: Option<tio::LinkStatsHandle>,
    pub(super) dialing: bool,
    /// The padding rate the peer asked for on the current link, bytes/s.
    pub(super) padding_asked: u32,
    /// The padding rate this node asked the peer for on the current link.
    pub(super) padding_requested: u32,
    /// Padding requests from the peer that did not parse.
    pub(super) padding_malformed: u64,
    /// How the live (or last) link's connection reaches the peer.
    pub(super) kind: LinkKind,
    /// The live link's handshake hash.
    pub(super) hash: Option<[u8; 32]>,
    /// Connections the link moved to on this side, waiting for the reader
    /// to reach the peer's `moved` marker on the old one.
    pub(super) successors: Vec<Link>,
    /// When the link last went down.
    pub(super) down_since: Option<Instant>,
}

impl PeerEntry {
    pub(super) fn new() -> PeerEntry {
        PeerEntry {
            sender: None,
            link_id: 0,
            direction: None,
            local: None,
            remote: None,
            observed: None,
            up_since: None,
            stats: None,
            dialing: false,
            padding_asked: 0,
            padding_requested: 0,
            padding_malformed: 0,
            kind: LinkKind::Direct,
            hash: None,
            successors: Vec::new(),
            down_since: None,
        }
    }

    /// Whether the link is up (and not closed under us).
    pub(super) fn is_up(&self) -> bool {
        self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// "up", "connecting" (a dialer is trying) or "down".
    pub(super) fn state(&self) -> &'static str {
        if self.is_up() {
            "up"
        } else if self.dialing {
            "connecting"
        } else {
            "down"
        }
    }
}

impl Links {
    /// Takes a new link into the table, keeping one link per peer, and runs
    /// its reader. A link better than the live one ([`LinkKind`]) takes the
    /// live one's place without a break; one as good is kept if the lower
    /// key dialed it (so two nodes dialing each other at once keep the same
    /// single link); anything else is dropped.
    pub(crate) fn adopt(self: &Arc<Self>, link: Link, kind: LinkKind) {
        let peer = link.peer;
        let me = self.identity.public();
        let dialer_of = |d: Direction| if d == Direction::Outbound { me } else { peer };
        let moved_from = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let entry = peers.entry(peer).or_insert_with(PeerEntry::new);
            let live = entry.sender.as_ref().is_some_and(|s| !s.is_closed());
            let moving = live && kind.rank() > entry.kind.rank();
            if live && !moving {
                let keep_old = kind.rank() < entry.kind.rank()
                    || entry
                        .direction
                        .is_some_and(|d| dialer_of(d) < dialer_of(link.direction));
                if keep_old {
                    tracing::debug!(peer = %short_key(&peer), kind = kind.as_str(), "dropping a duplicate link");
                    return;
                }
            }
            let link_id = if moving {
                entry.link_id
            } else {
                self.last_link_id.fetch_add(1, Ordering::Relaxed) + 1
            };
            let from = moving.then_some(entry.kind);
            entry.sender = Some(link.sender.clone());
            entry.link_id = link_id;
            entry.direction = Some(link.direction);
            entry.local = Some(link.local);
            entry.remote = Some(link.remote);
            entry.observed = link.observed;
            entry.stats = Some(link.sender.stats_handle());
            entry.kind = kind;
            entry.hash = Some(link.handshake_hash);
            entry.down_since = None;
            if !moving {
                entry.up_since = Some(Instant::now());
                entry.padding_asked = 0;
                entry.padding_requested = 0;
            }
            from.map(|from| (link_id, from))
        };
        let via = kind.via().map(|v| short_key(&v));
        if let Some((link_id, from)) = moved_from {
            self.move_link(link, link_id, kind, from);
            return;
        }
        let link_id = self.current_link_id(&peer).unwrap_or_default();
        self.metrics.link_up(link_id, link.sender.stats_handle());
        tracing::info!(
            peer = %short_key(&peer),
            kind = kind.as_str(),
            via = ?via,
            local = %link.local,
            remote = %link.remote,
            direction = ?link.direction,
            observed = ?link.observed,
            "link up"
        );
        self.changed.notify_waiters();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.start_padding(&link, link_id).await;
            let up = Input::LinkUp {
                link: link_id,
                peer,
                sender: link.sender.clone(),
                carried: kind == LinkKind::Tunnelled,
                session: link.handshake_hash,
            };
            if me.datapath.send(up).await.is_ok() {
                Arc::clone(&me).read_link(link, link_id).await;
                let _ = me.datapath.send(Input::LinkDown { link: link_id }).await;
            }
            me.metrics.link_down(link_id);
        });
    }

    /// The live link id of `peer`.
    fn current_link_id(&self, peer: &[u8; 32]) -> Option<LinkId> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(peer).map(|e| e.link_id)
    }

    /// Moves link `link_id` onto `link`'s connection: the datapath writes a
    /// `moved` marker on the old connection after everything it queued
    /// there and goes on on the new one; the link's reader switches when it
    /// reaches the peer's marker.
    fn move_link(self: &Arc<Self>, link: Link, link_id: LinkId, kind: LinkKind, from: LinkKind) {
        let peer = link.peer;
        tracing::info!(
            peer = %short_key(&peer),
            from = from.as_str(),
            to = kind.as_str(),
            via = ?kind.via().map(|v| short_key(&v)),
            remote = %link.remote,
            "link moved to a better connection; its circuits stay"
        );
        self.metrics.link_down(link_id);
        self.metrics.link_up(link_id, link.sender.stats_handle());
        let moved = Input::LinkMoved {
            link: link_id,
            sender: link.sender.clone(),
            hash: link.handshake_hash,
        };
        let padding = link.sender.clone();
        self.with_entry(&peer, link_id, |e| e.successors.push(link));
        self.changed.notify_waiters();
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let (out, _) = me.padding_rates(&peer, me.padding_asked(&peer));
            padding.set_padding(out);
            let _ = me.datapath.send(moved).await;
        });
    }

    /// The connection the peer moved link `link_id` to, named by its
    /// handshake hash, once it is adopted here (at most [`MOVE_WAIT`]).
    async fn successor(&self, peer: &[u8; 32], link_id: LinkId, hash: &[u8; 32]) -> Option<Link> {
        let deadline = tokio::time::Instant::now() + MOVE_WAIT;
        loop {
            let changed = self.changed.notified();
            let found = self.with_entry(peer, link_id, |e| {
                let i = e
                    .successors
                    .iter()
                    .position(|l| l.handshake_hash == *hash)?;
                Some(e.successors.swap_remove(i))
            });
            match found {
                Some(Some(link)) => return Some(link),
                None => return None,
                Some(None) => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Reads `link` until it ends: cells and graph messages go to the
    /// datapath, link control messages are handled here.
    async fn read_link(self: Arc<Self>, mut link: Link, link_id: LinkId) {
        let peer = link.peer;
        let mut ceiling = self.cell_ceiling(&peer);
        // Frames taken from the link and not yet handled, and cells not
        // yet handed on: cells go to the datapath in batches, each sent
        // before anything that came after it, and before the reader waits.
        let mut unread: VecDeque<Frame> = VecDeque::with_capacity(CELL_BATCH);
        let mut cells: Vec<Bytes> = Vec::with_capacity(CELL_BATCH);
        let reason = loop {
            let next = match unread.pop_front() {
                Some(frame) => Ok(frame),
                None => {
                    if !self.send_cells(link_id, &mut cells).await {
                        break "the node is stopping".to_string();
                    }
                    match link.receiver.recv_many(&mut unread, CELL_BATCH).await {
                        Ok(()) => continue,
                        Err(e) => Err(e),
                    }
                }
            };
            match next {
                Ok(frame) => {
                    // Anything but a cell goes after the cells before it.
                    if !matches!(frame, Frame::Cell(_))
                        && !self.send_cells(link_id, &mut cells).await
                    {
                        break "the node is stopping".to_string();
                    }
                    let input = match frame {
                        Frame::Cell(cell) => {
                            if let Some(c) = ceiling.as_mut() {
                                c.pace(&cell).await;
                            }
                            cells.push(cell);
                            // A paced neighbour's cells go one by one, so none
                            // waits in the batch while the pacer sleeps.
                            let full = cells.len() == CELL_BATCH || ceiling.is_some();
                            if full && !self.send_cells(link_id, &mut cells).await {
                                break "the node is stopping".to_string();
                            }
                            continue;
                        }
                        Frame::GraphRecord(bytes) => Input::Graph {
                            link: link_id,
                            bytes,
                        },
                        Frame::Ledger(bytes) => Input::Ledger {
                            link: link_id,
                            bytes,
                        },
                        Frame::Relay(payload) => {
                            self.on_relay_data(link_id, &payload).await;
                            continue;
                        }
                        Frame::LinkControl(body) => match LinkControl::decode(&body) {
                            Ok(LinkControl::Revoke) => {
                                match self.store().revoke_peer(&peer) {
                                    Ok(_) => {
                                        tracing::warn!(peer = %short_key(&peer), "the peer revoked our agreement")
                                    }
                                    Err(e) => tracing::error!("recording a revocation: {e:#}"),
                                }
                                let _ = self.datapath.send(Input::Edges(self.edges())).await;
                                break "the peer revoked the agreement".to_string();
                            }
                            Ok(LinkControl::Padding { bytes_per_sec }) => {
                                self.on_padding_request(&link, link_id, bytes_per_sec);
                                continue;
                            }
                            Err(LinkControlError::MalformedPadding { len }) => {
                                self.on_malformed_padding_request(&peer, link_id, len);
                                continue;
                            }
                            Ok(LinkControl::Moved { to }) => {
                                match self.successor(&peer, link_id, &to).await {
                                    Some(next) => {
                                        tracing::debug!(peer = %short_key(&peer), "reading the link's new connection");
                                        link = next;
                                        continue;
                                    }
                                    None => {
                                        break "the peer moved the link to a connection this node does not have".to_string();
                                    }
                                }
                            }
                            Ok(LinkControl::Traversal { body }) => {
                                self.on_traversal(&peer, &body, super::signal::Route::Link);
                                continue;
                            }
                            Ok(LinkControl::ForwardTo { to, envelope }) => {
                                self.forward_envelope(&peer, &to, envelope).await;
                                continue;
                            }
                            Ok(LinkControl::ForwardFrom { from, envelope }) => {
                                self.on_envelope(&peer, &from, &envelope);
                                continue;
                            }
                            Ok(LinkControl::RelayOpen { id, to }) => {
                                self.on_relay_open(&peer, link_id, id, to).await;
                                continue;
                            }
                            Ok(LinkControl::RelayIn { id, from }) => {
                                self.on_relay_in(&peer, link_id, id, from).await;
                                continue;
                            }
                            Ok(LinkControl::RelayClose { id, reason }) => {
                                self.on_relay_close(link_id, id, reason).await;
                                continue;
                            }
                            Err(
                                e
                                @ (LinkControlError::Unknown | LinkControlError::Malformed { .. }),
                            ) => {
                                tracing::debug!(peer = %short_key(&peer), error = %e, "ignoring a link control message");
                                self.traversal_counters().bump_malformed();
                                continue;
                            }
                        },
                        _ => continue,
                    };
                    if self.datapath.send(input).await.is_err() {
                        break "the node is stopping".to_string();
                    }
                }
                Err(e) => {
                    // A connection that ends while the link moves away from
                    // it leaves the rest to the new one (anything the peer
                    // still had in flight on it is lost).
                    let next = self.with_entry(&peer, link_id, |e| e.successors.pop());
                    if let Some(Some(next)) = next {
                        tracing::debug!(peer = %short_key(&peer), error = %e, "old connection ended during a move");
                        link = next;
                        continue;
                    }
                    break e.to_string();
                }
            }
        };
        self.on_link_down(link_id).await;
        let current = self.with_entry(&peer, link_id, |e| {
            e.sender = None;
            e.up_since = None;
            e.down_since = Some(Instant::now());
            e.successors.clear();
        });
        if current.is_some() {
            tracing::info!(peer = %short_key(&peer), %reason, "link down");
            self.changed.notify_waiters();
        }
    }

    /// Hands `cells` (from `link_id`, in order) to the datapath, if any;
    /// false once the datapath is gone.
    async fn send_cells(&self, link_id: LinkId, cells: &mut Vec<Bytes>) -> bool {
        if cells.is_empty() {
            return true;
        }
        let batch = std::mem::replace(cells, Vec::with_capacity(CELL_BATCH));
        self.datapath
            .send(Input::Cells {
                link: link_id,
                cells: batch,
            })
            .await
            .is_ok()
    }

    /// Runs `f` on the peer's entry if `link_id` is still its link.
    pub(super) fn with_entry<T>(
        &self,
        peer: &[u8; 32],
        link_id: LinkId,
        f: impl FnOnce(&mut PeerEntry) -> T,
    ) -> Option<T> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get_mut(peer).filter(|e| e.link_id == link_id).map(f)
    }

    /// Whether `peer` has a live link.
    pub(super) fn is_up(&self, peer: &[u8; 32]) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(peer).is_some_and(PeerEntry::is_up)
    }

    /// What the live outbound links say about the NAT in front of this
    /// node (docs/architecture.md, "NAT"), with the node's own addresses:
    /// its links' and listeners' local IPs.
    pub(crate) fn nat_class(&self) -> nat::NatClass {
        let mut locals: Vec<IpAddr> = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut reports = Vec::new();
        let direct = |e: &&PeerEntry| e.is_up() && !e.kind.is_relayed();
        for (key, e) in peers.iter().filter(|(_, e)| direct(e)) {
            if let Some(local) = e.local {
                locals.push(local.ip());
            }
            if let (Some(Direction::Outbound), Some(local), Some(observed)) =
                (e.direction, e.local, e.observed)
            {
                reports.push(nat::LinkReport {
                    peer: *key,
                    local,
                    observed,
                });
            }
        }
        nat::classify(&reports, &locals)
    }

    /// `umbra peers`: one row per peer we link or try to link with.
    pub(crate) fn peers_json(&self) -> Value {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<Value> = peers
            .iter()
            .map(|(key, e)| {
                let up = e.is_up();
                let state = e.state();
                let padding = e.sender.as_ref().filter(|_| up).map(|s| s.padding());
                let stats = e.stats.as_ref().map(tio::LinkStatsHandle::get);
                let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
                json!({
                    "key": hex::encode(key),
                    "address": address::address_for_key(key, self.prefix).to_string(),
                    "state": state,
                    "kind": e.kind.as_str(),
                    "via": e.kind.via().map(hex::encode),
                    "relay": e.kind.relay(),
                    "direction": e.direction.map(|d| if d == Direction::Outbound { "outbound" } else { "inbound" }),
                    "endpoint": e.remote.filter(|_| !e.kind.is_relayed()).map(|a| a.to_string()),
                    // This node's end: on outbound links the dial port,
                    // unless the dial fell back to an ephemeral one.
                    "local": e.local.map(|a| a.to_string()),
                    "observed": e.observed.map(|a| a.to_string()),
                    // From the link's pings: the latest round trip and the
                    // smoothed one, in ms to 0.1 ms; null until one is
                    // answered (and on links to peers that do not answer).
                    "rtt_ms": stats.and_then(|s| s.rtt).map(ms),
                    "srtt_ms": stats.and_then(|s| s.srtt).map(ms),
                    // Bytes of the link's frame stream, every frame with its
                    // header, padding and keepalives included.
                    "bytes_in": stats.map_or(0, |s| s.bytes_in),
                    "bytes_out": stats.map_or(0, |s| s.bytes_out),
                    "up_secs": e.up_since.map(|t| t.elapsed().as_secs()),
                    // Link padding (anonymity = "strong"): the rate this side
                    // pads at and the rate the peer asked for, in bytes/s, and
                    // padding frames (1203 bytes each) sent and received.
                    "padding_rate_out": padding.map(|p| p.rate_out),
                    "padding_rate_asked": up.then_some(e.padding_asked),
                    "padding_out": padding.map(|p| p.frames_out),
                    "padding_in": padding.map(|p| p.frames_in),
                    "padding_malformed": e.padding_malformed,
                    // NAT traversal with this peer (docs/cli.md, "umbra
                    // peers"): its endpoints as it last said, and the last
                    // step tried; null when it never ran.
                    "traversal": self.traversal_json(key),
                })
            })
            .collect();
        rows.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
        Value::Array(rows)
    }
}
