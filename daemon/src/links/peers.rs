//! The peer table behind `umbra peers`, and the reader of each link: one
//! live link per peer, adopted from a listener or a dialer, whose frames go
//! to the datapath as [`Input`]s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};
use umbra_routing::address;
use umbra_transport::io::{self as tio, Direction, Link};
use umbra_transport::proto::control::{LinkControl, LinkControlError};
use umbra_transport::proto::frame::Frame;
use umbra_transport::proto::nat;

use super::{Links, short_key};
use crate::events::{Input, LinkId};

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
    /// Takes a new link (from a listener or a dialer) into the table,
    /// keeping one link per peer, and runs its reader.
    pub(crate) fn adopt(self: &Arc<Self>, link: Link) {
        let peer = link.peer;
        let me = self.identity.public();
        // Both sides keep the link dialed by the lower key, so two nodes
        // dialing each other at once end with the same single link.
        let dialer_of = |d: Direction| if d == Direction::Outbound { me } else { peer };
        let link_id = self.last_link_id.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let entry = peers.entry(peer).or_insert_with(PeerEntry::new);
            if let (Some(old), Some(d)) = (&entry.sender, entry.direction)
                && !old.is_closed()
                && dialer_of(d) < dialer_of(link.direction)
            {
                tracing::debug!(peer = %short_key(&peer), "dropping a duplicate link");
                return;
            }
            entry.sender = Some(link.sender.clone());
            entry.link_id = link_id;
            entry.direction = Some(link.direction);
            entry.local = Some(link.local);
            entry.remote = Some(link.remote);
            entry.observed = link.observed;
            entry.up_since = Some(Instant::now());
            entry.padding_asked = 0;
            entry.padding_requested = 0;
            entry.stats = Some(link.sender.stats_handle());
        }
        self.metrics.link_up(link_id, link.sender.stats_handle());
        tracing::info!(
            peer = %short_key(&peer),
            local = %link.local,
            remote = %link.remote,
            direction = ?link.direction,
            observed = ?link.observed,
            "link up"
        );
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.start_padding(&link, link_id).await;
            let up = Input::LinkUp {
                link: link_id,
                peer,
                sender: link.sender.clone(),
            };
            if me.datapath.send(up).await.is_ok() {
                Arc::clone(&me).read_link(link, link_id).await;
                let _ = me.datapath.send(Input::LinkDown { link: link_id }).await;
            }
            me.metrics.link_down(link_id);
        });
    }

    /// Reads `link` until it ends: cells and graph messages go to the
    /// datapath, link control messages are handled here.
    async fn read_link(self: Arc<Self>, mut link: Link, link_id: LinkId) {
        let peer = link.peer;
        let reason = loop {
            match link.receiver.recv().await {
                Ok(frame) => {
                    let input = match frame {
                        Frame::Cell(cell) => Input::Cell {
                            link: link_id,
                            cell,
                        },
                        Frame::GraphRecord(bytes) => Input::Graph {
                            link: link_id,
                            bytes,
                        },
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
                            Err(LinkControlError::Unknown | LinkControlError::Malformed { .. }) => {
                                continue;
                            }
                            Ok(_) => continue,
                        },
                        _ => continue,
                    };
                    if self.datapath.send(input).await.is_err() {
                        break "the node is stopping".to_string();
                    }
                }
                Err(e) => break e.to_string(),
            }
        };
        let current = self.with_entry(&peer, link_id, |e| {
            e.sender = None;
            e.up_since = None;
        });
        if current.is_some() {
            tracing::info!(peer = %short_key(&peer), %reason, "link down");
            self.changed.notify_waiters();
        }
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
        for (key, e) in peers.iter().filter(|(_, e)| e.is_up()) {
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
                    "kind": "direct",
                    "direction": e.direction.map(|d| if d == Direction::Outbound { "outbound" } else { "inbound" }),
                    "endpoint": e.remote.map(|a| a.to_string()),
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
                })
            })
            .collect();
        rows.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
        Value::Array(rows)
    }
}
