//! Hole punching (docs/architecture.md, "NAT traversal"): two partners
//! behind NATs that map endpoint independently connect to each other's
//! dial port at once, so each NAT sees the other's SYN as the answer to its
//! own (TCP simultaneous open).
//!
//! The lower key leads, as libp2p's DCUtR does: it measures the round trip
//! of the route traversal messages take (`punch-connect`, answered at once),
//! sends `punch-sync`, and half a round trip later connects; the other side
//! connects when the sync arrives, [`PUNCH_FOLLOW_DELAY`] later. The leader's
//! first SYN is a primer with a small TTL: it opens the leader's own NAT and
//! dies before the other's, so a NAT that answers unsolicited SYNs with a
//! reset cannot kill the punch; the other's SYN then finds the way open, and
//! the leader's socket, still connecting, answers it. Three attempts, with
//! the primer's TTL 2, then 3 (two NATs in a row), then none. The leader is
//! the TLS client of the link over the connection, the other side serves it
//! as its listener would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};
use umbra_transport::io::{self as tio, Link, Punch, simultaneous_open};
use umbra_transport::proto::agreement::Ask;
use umbra_transport::proto::traversal::{EndpointKind, Traversal};

use super::peers::LinkKind;
use super::{Links, short_key};

/// Attempts one punch makes.
const PUNCH_ATTEMPTS: usize = 3;
/// The primer's TTL in each attempt: past one NAT, past two, and no primer.
const PRIMER_TTLS: [Option<u32>; PUNCH_ATTEMPTS] = [Some(2), Some(3), None];
/// How long the leader waits for the answer to `punch-connect`.
const PUNCH_REPLY_WAIT: Duration = Duration::from_secs(5);
/// How long one simultaneous open may take: past the first SYN
/// retransmission (1 s) and the second (3 s).
const PUNCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// How much later than the sync's arrival the other side connects, so the
/// leader's primer has opened its NAT before the other's SYN reaches it.
const PUNCH_FOLLOW_DELAY: Duration = Duration::from_millis(100);
/// How long the link handshake over a punched connection may take.
const PUNCH_LINK_WAIT: Duration = Duration::from_secs(20);

impl Links {
    /// Leads a punch toward `target`, `peer`'s observed endpoint, and adopts
    /// the link. `attempt` picks the route of the messages.
    pub(super) async fn punch_initiator(
        self: &Arc<Self>,
        peer: &[u8; 32],
        target: std::net::SocketAddr,
        attempt: usize,
    ) -> Result<()> {
        let Some(port) = self.dialer.dial_port() else {
            bail!("this node has no dial port to punch from");
        };
        let mut errors = Vec::new();
        for (i, primer) in PRIMER_TTLS.iter().enumerate() {
            let nonce = OsRng.next_u64();
            let (tx, rx) = oneshot::channel();
            self.with_traversal(peer, |t| t.punch_reply = Some((nonce, tx)));
            let sent = Instant::now();
            self.send_traversal(peer, &Traversal::PunchConnect { nonce }, attempt)
                .await?;
            let rtt = match tokio::time::timeout(PUNCH_REPLY_WAIT, rx).await {
                Ok(Ok(())) => sent.elapsed(),
                _ => {
                    errors.push(format!("attempt {}: no answer to punch-connect", i + 1));
                    continue;
                }
            };
            self.send_traversal(peer, &Traversal::PunchSync { nonce }, attempt)
                .await?;
            tokio::time::sleep(rtt / 2).await;
            let punch = Punch {
                local_port: port,
                remote: target,
                primer_ttl: *primer,
                timeout: PUNCH_CONNECT_TIMEOUT,
            };
            let tcp = match simultaneous_open(&punch).await {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!(
                        "attempt {} (round trip {rtt:?}, primer TTL {primer:?}): {e}",
                        i + 1
                    ));
                    continue;
                }
            };
            let local = tcp.local_addr()?;
            let remote = tcp.peer_addr()?;
            let terms = self.terms_for(peer);
            let payload =
                crate::agreement::link_ask(&self.identity, peer, Ask::Agreement, terms).encode();
            let target = tio::DialTarget {
                peer: *peer,
                endpoint: remote.to_string(),
                server_name: None,
            };
            let link = self
                .dialer
                .dial_stream(tcp, (local, remote), &target, &payload)
                .await?;
            tracing::info!(peer = %short_key(peer), attempt = i + 1, rtt = ?rtt, primer = ?primer, %remote, "hole punched");
            return self.finish_dial(peer, link, terms, LinkKind::Punched);
        }
        Err(anyhow!(errors.join("; ")))
    }

    /// Follows a punch `peer` leads: connects to its observed endpoint from
    /// the dial port, serves the connection as the listener does, and adopts
    /// the link.
    pub(super) async fn punch_responder(self: &Arc<Self>, peer: [u8; 32]) {
        let short = short_key(&peer);
        let target = self.theirs(&peer).and_then(|t| {
            t.endpoints
                .iter()
                .find(|e| e.kind == EndpointKind::Observed)
                .map(|e| e.addr)
        });
        let (Some(target), Some(port), Some(listener)) =
            (target, self.dialer.dial_port(), self.link_listener())
        else {
            tracing::info!(peer = %short, "hole punching: cannot follow (no endpoint of the peer's, no dial port, or no listener)");
            return;
        };
        tokio::time::sleep(PUNCH_FOLLOW_DELAY).await;
        let punch = Punch {
            local_port: port,
            remote: target,
            primer_ttl: None,
            timeout: PUNCH_CONNECT_TIMEOUT,
        };
        let tcp = match simultaneous_open(&punch).await {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(peer = %short, %target, "hole punching (following): {e}");
                return;
            }
        };
        let (tx, mut rx) = mpsc::channel::<Link>(1);
        tokio::spawn(tio::serve_connection(tcp, listener, tx));
        match tokio::time::timeout(PUNCH_LINK_WAIT, rx.recv()).await {
            Ok(Some(link)) if link.peer == peer => {
                tracing::info!(peer = %short, %target, "hole punched (following)");
                self.adopt(link, LinkKind::Punched);
            }
            Ok(Some(link)) => {
                tracing::warn!(expected = %short, got = %short_key(&link.peer), "a punched link's handshake named another node; dropped");
            }
            _ => {
                tracing::info!(peer = %short, "hole punching (following): the connection opened but no link came over it")
            }
        }
    }
}
