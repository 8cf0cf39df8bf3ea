//! Relayed links over a circuit (docs/architecture.md, "Relayed links"): the
//! relay of last resort, for two partners that cannot reach each other and
//! share no partner with live links to both. The link (TLS, HTTP/2 and the
//! link handshake, end to end) runs over a byte stream whose pieces travel
//! as end-to-end routing-core messages (`proto::relay::CircuitStream`), so
//! the circuit's relays carry cells they cannot read, as for any traffic.
//!
//! Chunks carry a sequence number and are put back in order (a message
//! sent after a circuit changed may overtake one on the old circuit). A
//! chunk lost with a circuit is never resent: the stream stalls and the link
//! over it ends at its keepalive timeout, and traversal starts again.
//! Back-pressure: when the circuit's send queue is full the sender waits
//! ([`TUNNEL_FULL_WAIT`]) and tries again; a receiver holds at most
//! [`TUNNEL_REORDER_CHUNKS`] chunks that came early.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};
use umbra_transport::io::{self as tio, Link};
use umbra_transport::proto::relay::{
    CIRCUIT_STREAM_CHUNK_MAX_LEN, CircuitStream, CloseReason, StreamId, id_parity, nth_stream_id,
};

use super::peers::LinkKind;
use super::relay::{NO_ADDR, RELAY_OPEN_TIMEOUT};
use super::{Links, short_key};
use crate::events::MessageRefused;

/// How long a sender waits before it tries again when the circuit's send
/// queue is full.
const TUNNEL_FULL_WAIT: Duration = Duration::from_millis(20);

/// Chunks that came early a receiver holds before it gives the stream up.
const TUNNEL_REORDER_CHUNKS: usize = 64;

/// Chunks queued toward a tunnel's local pipe (8 MiB). The circuit's
/// window holds about 140 chunks in flight, so only a link that stopped
/// reading fills it; the tunnel is then given up.
const TUNNEL_QUEUE_CHUNKS: usize = 1024;

/// Bytes buffered inside a tunnel's in-memory pipe.
const TUNNEL_PIPE_LEN: usize = 64 * 1024;

/// One end of a tunnel: where its chunks go, in order.
#[derive(Debug)]
struct TunnelEnd {
    to_pipe: mpsc::Sender<Bytes>,
    next_seq: u64,
    early: BTreeMap<u64, Bytes>,
    closed: Option<oneshot::Sender<CloseReason>>,
}

/// This node's tunnels, by partner and stream id.
#[derive(Debug, Default)]
pub(super) struct Tunnels {
    ends: HashMap<([u8; 32], StreamId), TunnelEnd>,
    opened: HashMap<[u8; 32], u32>,
}

impl Links {
    fn tunnels(&self) -> std::sync::MutexGuard<'_, Tunnels> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a relayed link to `peer` over a circuit, as the TLS client, and
    /// adopts it.
    pub(super) async fn open_tunnel(self: &Arc<Self>, peer: &[u8; 32]) -> Result<()> {
        let id = {
            let mut t = self.tunnels();
            let n = t.opened.entry(*peer).or_insert(0);
            let id = nth_stream_id(id_parity(&self.identity.public(), peer), *n);
            *n = n.wrapping_add(1);
            id
        };
        let (pipe, closed) = self.attach_tunnel(*peer, id);
        if let Err(e) = self
            .send_message(peer, CircuitStream::Open { id }.encode())
            .await
        {
            self.tunnels().ends.remove(&(*peer, id));
            bail!("no circuit to carry the link: {e}");
        }
        self.dial_over(peer, pipe, closed, LinkKind::Tunnelled, "over a circuit")
            .await
    }

    /// Joins tunnel `id` with `peer` to a local pipe: its chunks go into the
    /// pipe in order, bytes written to the pipe go out as chunks.
    fn attach_tunnel(
        self: &Arc<Self>,
        peer: [u8; 32],
        id: StreamId,
    ) -> (tokio::io::DuplexStream, oneshot::Receiver<CloseReason>) {
        let (app, pipe) = tokio::io::duplex(TUNNEL_PIPE_LEN);
        let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
        let (to_pipe, mut chunks) = mpsc::channel::<Bytes>(TUNNEL_QUEUE_CHUNKS);
        let (closed_tx, closed_rx) = oneshot::channel();
        self.tunnels().ends.insert(
            (peer, id),
            TunnelEnd {
                to_pipe,
                next_seq: 0,
                early: BTreeMap::new(),
                closed: Some(closed_tx),
            },
        );
        tokio::spawn(async move {
            while let Some(chunk) = chunks.recv().await {
                if pipe_write.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = pipe_write.shutdown().await;
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CIRCUIT_STREAM_CHUNK_MAX_LEN];
            let mut seq = 0u64;
            let mut reason = CloseReason::Closed;
            'read: loop {
                let n = match pipe_read.read(&mut buf).await {
                    Ok(n) if n > 0 => n,
                    _ => break,
                };
                let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                let msg = CircuitStream::Data { id, seq, data }.encode();
                loop {
                    match me.send_message(&peer, msg.clone()).await {
                        Ok(()) => break,
                        Err(MessageRefused::Full) => tokio::time::sleep(TUNNEL_FULL_WAIT).await,
                        Err(MessageRefused::Cannot(why)) => {
                            tracing::info!(peer = %short_key(&peer), "a link over a circuit lost its circuit: {why}");
                            reason = CloseReason::NoLink;
                            break 'read;
                        }
                    }
                }
                seq += 1;
            }
            if me.tunnels().ends.remove(&(peer, id)).is_some() {
                let _ = me
                    .send_message(&peer, CircuitStream::Close { id, reason }.encode())
                    .await;
            }
        });
        (app, closed_rx)
    }

    /// A circuit-stream message from `from`.
    pub(super) fn on_circuit_stream(self: &Arc<Self>, from: &[u8; 32], payload: &[u8]) {
        let msg = match CircuitStream::decode(payload) {
            Ok(m) => m,
            Err(e) => {
                self.traversal_counters().bump_malformed();
                tracing::debug!(from = %short_key(from), error = %e, "dropped a malformed circuit-stream message");
                return;
            }
        };
        match msg {
            CircuitStream::Open { id } => self.on_tunnel_open(*from, id),
            CircuitStream::Data { id, seq, data } => self.on_tunnel_data(from, id, seq, data),
            CircuitStream::Close { id, reason } => {
                let end = self.tunnels().ends.remove(&(*from, id));
                if let Some(mut end) = end
                    && let Some(tx) = end.closed.take()
                {
                    let _ = tx.send(reason);
                }
            }
        }
    }

    /// A partner opened a tunnel to this node: serve it as the listener
    /// serves a connection, and adopt the link.
    fn on_tunnel_open(self: &Arc<Self>, from: [u8; 32], id: StreamId) {
        let refuse = |me: &Arc<Self>, reason: CloseReason| {
            let me = Arc::clone(me);
            tokio::spawn(async move {
                let _ = me
                    .send_message(&from, CircuitStream::Close { id, reason }.encode())
                    .await;
            });
        };
        if !self.is_partner(&from) {
            tracing::info!(from = %short_key(&from), "refused a link over a circuit: no agreement with that node");
            refuse(self, CloseReason::NotPartner);
            return;
        }
        if self.tunnels().ends.contains_key(&(from, id)) {
            refuse(self, CloseReason::IdInUse);
            return;
        }
        let Some(listener) = self.link_listener() else {
            refuse(self, CloseReason::Closed);
            return;
        };
        let (pipe, _closed) = self.attach_tunnel(from, id);
        let (tx, mut rx) = mpsc::channel::<Link>(1);
        tokio::spawn(tio::serve_stream(pipe, (NO_ADDR, NO_ADDR), listener, tx));
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok(Some(link)) = tokio::time::timeout(RELAY_OPEN_TIMEOUT, rx.recv()).await {
                if link.peer == from {
                    me.adopt(link, LinkKind::Tunnelled);
                } else {
                    tracing::warn!(claimed = %short_key(&from), proven = %short_key(&link.peer), "a link over a circuit named another node; dropped");
                }
            }
        });
    }

    /// A chunk of tunnel `id`: into the pipe in order, or held until its
    /// turn.
    fn on_tunnel_data(&self, from: &[u8; 32], id: StreamId, seq: u64, data: Bytes) {
        let give_up = {
            let mut t = self.tunnels();
            let Some(end) = t.ends.get_mut(&(*from, id)) else {
                return;
            };
            if seq >= end.next_seq {
                end.early.insert(seq, data);
            }
            let mut stuck = false;
            while let Some(chunk) = end.early.remove(&end.next_seq) {
                end.next_seq += 1;
                stuck |= end.to_pipe.try_send(chunk).is_err();
            }
            stuck || end.early.len() > TUNNEL_REORDER_CHUNKS
        };
        if give_up {
            tracing::info!(peer = %short_key(from), "a link over a circuit fell too far behind; closed");
            self.tunnels().ends.remove(&(*from, id));
        }
    }
}
