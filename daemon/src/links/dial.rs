//! Dialing: one task per peer to dial (`[[peer]]` entries and stored
//! active agreements with endpoints) that keeps a link up, redialing with
//! exponential backoff and jitter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand_core::OsRng;
use umbra_config::Terms;
use umbra_transport::io::{DialError, DialTarget};
use umbra_transport::proto::agreement::Ask;
use umbra_transport::proto::frame::jittered;

use super::peers::PeerEntry;
use super::{Links, now_unix, short_key};
use crate::agreement;
use crate::db::{AgreementState, Origin};

/// First wait before redialing a peer.
const REDIAL_MIN: Duration = Duration::from_secs(1);
/// Longest wait between redials.
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// A link that lived this long resets the backoff.
const LINK_STABLE_AFTER: Duration = Duration::from_secs(30);

impl Links {
    /// Starts a dialer for every peer we should dial that has none yet:
    /// `[[peer]]` entries and stored active agreements with endpoints.
    pub(crate) fn spawn_dialers(self: &Arc<Self>) {
        let mut targets: Vec<([u8; 32], Vec<String>)> = self
            .config()
            .peers
            .iter()
            .filter(|p| !p.endpoints.is_empty())
            .map(|p| (p.key.0, p.endpoints.clone()))
            .collect();
        match self.store().agreements() {
            Ok(list) => targets.extend(
                list.into_iter()
                    .filter(|a| a.state == AgreementState::Active && !a.endpoints.is_empty())
                    .map(|a| (a.peer_key, a.endpoints)),
            ),
            Err(e) => tracing::error!("reading agreements: {e:#}"),
        }
        for (peer, endpoints) in targets {
            {
                let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
                let entry = peers.entry(peer).or_insert_with(PeerEntry::new);
                if entry.dialing {
                    continue;
                }
                entry.dialing = true;
            }
            let me = Arc::clone(self);
            tokio::spawn(async move { me.dial_loop(peer, endpoints).await });
        }
    }

    /// Keeps a link to `peer` up: dials its endpoints in order, backs off
    /// exponentially with jitter, and waits while a link is up.
    async fn dial_loop(self: Arc<Self>, peer: [u8; 32], endpoints: Vec<String>) {
        let mut backoff = REDIAL_MIN;
        loop {
            if !self.should_dial(&peer) {
                let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = peers.get_mut(&peer) {
                    e.dialing = false;
                }
                return;
            }
            if self.is_up(&peer) {
                self.wait_while_up(&peer).await;
                continue;
            }
            let started = Instant::now();
            let terms = self.terms_for(&peer);
            match self
                .dial_with(&peer, &endpoints, Ask::Agreement, terms, Origin::Config)
                .await
            {
                Ok(()) => {
                    self.wait_while_up(&peer).await;
                    if started.elapsed() > LINK_STABLE_AFTER {
                        backoff = REDIAL_MIN;
                    }
                }
                Err(e) => tracing::debug!(peer = %short_key(&peer), "dial failed: {e:#}"),
            }
            // Jitter: a uniform draw from [backoff/2, backoff].
            tokio::time::sleep(jittered(backoff / 2, backoff, &mut OsRng)).await;
            backoff = (backoff * 2).min(REDIAL_MAX);
        }
    }

    /// Returns once `peer` has no live link (a link-down wakes it; the
    /// timeout only bounds a missed wake-up).
    async fn wait_while_up(&self, peer: &[u8; 32]) {
        loop {
            let changed = self.changed.notified();
            if !self.is_up(peer) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), changed).await;
        }
    }

    /// Whether `peer` is still someone we dial: in the config or an active
    /// agreement.
    fn should_dial(&self, peer: &[u8; 32]) -> bool {
        if self.config().peers.iter().any(|p| p.key.0 == *peer) {
            return true;
        }
        matches!(self.store().agreement_with(peer), Ok(Some(a)) if a.state == AgreementState::Active)
    }

    /// Dials `peer` at each endpoint in order until one links, and stores
    /// the agreement with the peer's signature.
    pub(super) async fn dial_with(
        self: &Arc<Self>,
        peer: &[u8; 32],
        endpoints: &[String],
        ask: Ask,
        terms: Terms,
        origin: Origin,
    ) -> Result<()> {
        let payload = agreement::link_ask(&self.identity, peer, ask, terms).encode();
        let mut last = None;
        for endpoint in endpoints {
            let target = DialTarget {
                peer: *peer,
                endpoint: endpoint.clone(),
                server_name: None,
            };
            match self.dialer.dial(&target, &payload).await {
                Ok(link) => {
                    if !agreement::verify(peer, &self.identity.public(), terms, &link.app_payload) {
                        self.metrics.outbound_handshake("failed");
                        bail!("{endpoint}: the peer's agreement signature does not verify");
                    }
                    self.metrics.outbound_handshake("ok");
                    let stored_origin = match self.store().agreement_with(peer) {
                        Ok(Some(a)) => a.origin,
                        _ => origin,
                    };
                    self.store().upsert_active(
                        peer,
                        terms,
                        endpoints,
                        stored_origin,
                        now_unix(),
                        Some(&link.app_payload),
                    )?;
                    self.adopt(link);
                    return Ok(());
                }
                Err(e) => {
                    let result = match &e {
                        DialError::Connect { .. }
                        | DialError::Timeout {
                            stage: "connect", ..
                        } => "connect_failed",
                        _ => "failed",
                    };
                    self.metrics.outbound_handshake(result);
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) => Err(e.into()),
            None => bail!("no endpoint to dial"),
        }
    }
}
