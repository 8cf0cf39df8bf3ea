//! How traversal messages reach a partner (docs/architecture.md, "NAT
//! traversal"). A node's endpoints go only to its partners, by the first
//! of these that works:
//! 1. over the link to the partner itself, when one is up (a relayed link:
//!    TLS end to end, the relay reads nothing);
//! 2. inside the end-to-end session over a circuit, as a routing-core
//!    message: the relays of the circuit carry it and read nothing;
//! 3. sealed to the partner ([`traversal::seal`]) and passed on by a partner
//!    both have a live link to, which learns only that the two talk.
//!
//! Messages from nodes that are not partners are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use umbra_transport::proto::control::LinkControl;
use umbra_transport::proto::proposal::APP_PROPOSAL;
use umbra_transport::proto::relay::APP_CIRCUIT_STREAM;
use umbra_transport::proto::traversal::{self, APP_TRAVERSAL, Traversal};

use super::{Links, now_unix, short_key};
use crate::events::{Input, MessageRefused};

/// Which way a traversal message came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Over the link to the partner.
    Link,
    /// Inside the end-to-end session over a circuit.
    Circuit,
    /// Sealed, through this partner both share.
    Forwarded([u8; 32]),
}

impl Route {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Route::Link => "link",
            Route::Circuit => "circuit",
            Route::Forwarded(_) => "forwarded",
        }
    }
}

/// What the traversal signalling counts, for `umbra status`.
#[derive(Debug, Default)]
pub(crate) struct SignalCounters {
    sent: [AtomicU64; 3],
    received: [AtomicU64; 3],
    /// Messages from nodes that are not partners.
    not_partner: AtomicU64,
    /// Messages and envelopes that did not parse or open.
    malformed: AtomicU64,
    /// Envelopes passed on for partners.
    forwarded: AtomicU64,
    /// Envelopes for a node this node has no live link to.
    forward_no_link: AtomicU64,
}

impl SignalCounters {
    fn slot(route: Route) -> usize {
        match route {
            Route::Link => 0,
            Route::Circuit => 1,
            Route::Forwarded(_) => 2,
        }
    }

    pub(crate) fn bump_malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn json(&self) -> Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_route = |a: &[AtomicU64; 3]| {
            json!({
                "link": get(&a[0]),
                "circuit": get(&a[1]),
                "forwarded": get(&a[2]),
            })
        };
        json!({
            "sent": by_route(&self.sent),
            "received": by_route(&self.received),
            "dropped_not_partner": get(&self.not_partner),
            "malformed": get(&self.malformed),
            "envelopes_passed_on": get(&self.forwarded),
            "envelopes_no_link": get(&self.forward_no_link),
        })
    }
}

impl Links {
    pub(crate) fn traversal_counters(&self) -> &SignalCounters {
        &self.signal
    }

    /// Whether `peer` is a partner: a `[[peer]]` entry or an active
    /// agreement.
    pub(super) fn is_partner(&self, peer: &[u8; 32]) -> bool {
        self.should_dial(peer)
    }

    /// Sends `msg` to partner `peer` by the first route that takes it;
    /// `skip` asks for a route after that one (a retry after no answer).
    pub(super) async fn send_traversal(
        self: &Arc<Self>,
        peer: &[u8; 32],
        msg: &Traversal,
        attempt: usize,
    ) -> Result<Route> {
        if !self.is_partner(peer) {
            bail!("{} is not a partner", short_key(peer));
        }
        let body = msg.encode();
        if let Some((_, sender, _)) = self.live_link(peer) {
            let frame = LinkControl::Traversal {
                body: Bytes::from(body),
            }
            .frame();
            if sender.send(frame).await.is_ok() {
                return Ok(self.sent(Route::Link));
            }
            bail!("the link to {} closed", short_key(peer));
        }
        // Every other attempt goes through a shared partner first, so a
        // circuit that cannot deliver does not hold traversal up.
        if attempt.is_multiple_of(2) && self.send_over_circuit(peer, &body).await.is_ok() {
            return Ok(self.sent(Route::Circuit));
        }
        match self.send_forwarded(peer, &body, attempt).await {
            Ok(via) => Ok(self.sent(Route::Forwarded(via))),
            Err(e) if attempt % 2 == 1 => {
                self.send_over_circuit(peer, &body).await?;
                tracing::debug!(peer = %short_key(peer), "no shared partner to pass it on ({e:#}); sent over a circuit");
                Ok(self.sent(Route::Circuit))
            }
            Err(e) => Err(e),
        }
    }

    /// Answers `peer` by the route its message came on, which is known to
    /// work, before any other: a circuit that brought a message may have no
    /// twin the other way yet, and a shared partner that passed one on has
    /// live links to both.
    pub(super) async fn answer_traversal(
        self: &Arc<Self>,
        peer: &[u8; 32],
        msg: &Traversal,
        came: Route,
    ) -> Result<Route> {
        let body = msg.encode();
        let same = match came {
            Route::Link => return self.send_traversal(peer, msg, 0).await,
            Route::Circuit => self.send_over_circuit(peer, &body).await,
            Route::Forwarded(via) => self.forward_through(peer, &body, &via).await,
        };
        match same {
            Ok(()) => Ok(self.sent(came)),
            Err(e) => {
                tracing::debug!(peer = %short_key(peer), route = came.as_str(), "cannot answer the way it came ({e:#}); trying the others");
                self.send_traversal(peer, msg, 1).await
            }
        }
    }

    fn sent(&self, route: Route) -> Route {
        self.signal.sent[SignalCounters::slot(route)].fetch_add(1, Ordering::Relaxed);
        route
    }

    /// Route 2: a routing-core message inside the end-to-end session.
    async fn send_over_circuit(&self, peer: &[u8; 32], body: &[u8]) -> Result<()> {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(APP_TRAVERSAL);
        payload.extend_from_slice(body);
        match self.send_message(peer, payload).await {
            Ok(()) => Ok(()),
            Err(e) => bail!("no circuit to {}: {e}", short_key(peer)),
        }
    }

    /// Hands `payload` to the routing core for `peer`, inside the end-to-end
    /// session.
    pub(super) async fn send_message(
        &self,
        peer: &[u8; 32],
        payload: Vec<u8>,
    ) -> Result<(), MessageRefused> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let input = Input::Message {
            to: *peer,
            payload,
            reply: tx,
        };
        let stopped = || MessageRefused::Cannot("the datapath has stopped".into());
        self.datapath.send(input).await.map_err(|_| stopped())?;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Route 3: sealed to `peer` and passed on by a partner of both with a
    /// live link. The `attempt`th such partner is tried (they take turns).
    /// Returns that partner.
    async fn send_forwarded(
        &self,
        peer: &[u8; 32],
        body: &[u8],
        attempt: usize,
    ) -> Result<[u8; 32]> {
        let shared = self.shared_partners(peer).await;
        if shared.is_empty() {
            bail!(
                "no partner of ours with a live link is a partner of {}",
                short_key(peer)
            );
        }
        let via = shared[attempt / 2 % shared.len()];
        self.forward_through(peer, body, &via).await?;
        Ok(via)
    }

    /// Seals `body` for `peer` and asks `via` to pass it on.
    async fn forward_through(&self, peer: &[u8; 32], body: &[u8], via: &[u8; 32]) -> Result<()> {
        let envelope = traversal::seal(&self.identity, peer, now_unix(), body)
            .map_err(|e| anyhow::anyhow!("sealing: {e}"))?;
        let Some((_, sender, _)) = self.live_link(via).filter(|(_, _, k)| !k.is_relayed()) else {
            bail!("no live direct link to {}", short_key(via));
        };
        let frame = LinkControl::ForwardTo {
            to: *peer,
            envelope: Bytes::from(envelope),
        }
        .frame();
        if sender.send(frame).await.is_err() {
            bail!("the link to {} closed", short_key(via));
        }
        tracing::debug!(peer = %short_key(peer), via = %short_key(via), "traversal message passed through a shared partner");
        Ok(())
    }

    /// Partners of this node with a live direct link that the graph shows
    /// as partners of `peer` too (or that `peer` named as its relays).
    pub(super) async fn shared_partners(&self, peer: &[u8; 32]) -> Vec<[u8; 32]> {
        let mut theirs = self.neighbours_of(peer).await;
        theirs.extend(self.relays_of(peer));
        let mut shared: Vec<[u8; 32]> = theirs
            .into_iter()
            .filter(|k| {
                k != peer
                    && self
                        .live_link(k)
                        .is_some_and(|(_, _, kind)| !kind.is_relayed())
            })
            .collect();
        shared.sort_unstable();
        shared.dedup();
        shared
    }

    /// `peer`'s agreement edges in the graph (both ends signed).
    async fn neighbours_of(&self, peer: &[u8; 32]) -> Vec<[u8; 32]> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .datapath
            .send(Input::Neighbours(*peer, tx))
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// A partner asked this node to pass an envelope to `to`.
    pub(super) async fn forward_envelope(&self, from: &[u8; 32], to: &[u8; 32], envelope: Bytes) {
        match self.live_link(to).filter(|(_, _, k)| !k.is_relayed()) {
            Some((_, sender, _)) if to != from => {
                let frame = LinkControl::ForwardFrom {
                    from: *from,
                    envelope,
                }
                .frame();
                if sender.send(frame).await.is_ok() {
                    self.signal.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                self.signal.forward_no_link.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(from = %short_key(from), to = %short_key(to), "cannot pass on an envelope: no live link to that node");
            }
        }
    }

    /// An envelope `from` sealed reached this node through `via`.
    pub(super) fn on_envelope(self: &Arc<Self>, via: &[u8; 32], from: &[u8; 32], envelope: &[u8]) {
        let opened = {
            let mut opener = self.envelopes.lock().unwrap_or_else(|p| p.into_inner());
            traversal::open(&mut opener, envelope, now_unix())
        };
        match opened {
            Ok((sealer, body)) if sealer == *from => {
                self.on_traversal(from, &body, Route::Forwarded(*via))
            }
            Ok((sealer, _)) => {
                self.signal.bump_malformed();
                tracing::debug!(via = %short_key(via), claimed = %short_key(from), sealer = %short_key(&sealer), "dropped an envelope sealed by another node than named");
            }
            Err(e) => {
                self.signal.bump_malformed();
                tracing::debug!(via = %short_key(via), from = %short_key(from), error = %e, "dropped an envelope that does not open");
            }
        }
    }

    /// A routing-core message arrived: the first byte says for what.
    pub(crate) fn on_message(self: &Arc<Self>, from: &[u8; 32], payload: &[u8]) {
        match payload.split_first() {
            Some((&APP_TRAVERSAL, body)) => self.on_traversal(from, body, Route::Circuit),
            Some((&APP_CIRCUIT_STREAM, _)) => self.on_circuit_stream(from, payload),
            Some((&APP_PROPOSAL, body)) => self.on_proposal_message(from, body),
            _ => {
                self.signal.bump_malformed();
                tracing::debug!(from = %short_key(from), "dropped a message of an unknown kind");
            }
        }
    }

    /// A traversal message from `from` arrived by `route`.
    pub(super) fn on_traversal(self: &Arc<Self>, from: &[u8; 32], body: &[u8], route: Route) {
        let msg = match Traversal::decode(body) {
            Ok(m) => m,
            Err(e) => {
                self.signal.bump_malformed();
                tracing::debug!(from = %short_key(from), error = %e, "dropped a malformed traversal message");
                return;
            }
        };
        // Only partners talk traversal; a node accepting our invite is one
        // once its secret checks out.
        let accepting = matches!(msg, Traversal::InviteAccepted { .. });
        if !accepting && !self.is_partner(from) {
            self.signal.not_partner.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = %short_key(from), route = route.as_str(), "dropped a traversal message from a node that is not a partner");
            return;
        }
        self.signal.received[SignalCounters::slot(route)].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(from = %short_key(from), route = route.as_str(), kind = msg.name(), "traversal message");
        let me = Arc::clone(self);
        let from = *from;
        tokio::spawn(async move { me.handle_traversal(from, msg, route).await });
    }
}
