//! Dialing: one task per peer to dial (`[[peer]]` entries and stored
//! active agreements with endpoints) that keeps a link up, redialing with
//! exponential backoff and jitter. Partners without an endpoint are linked
//! by NAT traversal instead (`traverse.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rand_core::OsRng;
use umbra_config::Terms;
use umbra_transport::io::{DialError, DialTarget, Link};
use umbra_transport::proto::agreement::Ask;
use umbra_transport::proto::frame::jittered;

use super::peers::{LinkKind, PeerEntry};
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
    /// Starts a dialer for every peer we should dial that has none yet
    /// (`[[peer]]` entries and stored active agreements with endpoints), and
    /// NAT traversal for every partner without an endpoint.
    pub(crate) fn spawn_dialers(self: &Arc<Self>) {
        let mut targets: Vec<([u8; 32], Vec<String>)> = self
            .config()
            .peers
            .iter()
            .map(|p| (p.key.0, p.endpoints.clone()))
            .collect();
        match self.store().agreements() {
            Ok(list) => {
                let extra: Vec<([u8; 32], Vec<String>)> = list
                    .into_iter()
                    .filter(|a| a.state == AgreementState::Active)
                    .filter(|a| !targets.iter().any(|(k, _)| *k == a.peer_key))
                    .map(|a| (a.peer_key, a.endpoints))
                    .collect();
                targets.extend(extra);
            }
            Err(e) => tracing::error!("reading agreements: {e:#}"),
        }
        for (peer, endpoints) in targets {
            if endpoints.is_empty() {
                self.spawn_traversal(peer);
                continue;
            }
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
    pub(super) async fn wait_while_up(&self, peer: &[u8; 32]) {
        loop {
            let changed = self.changed.notified();
            if !self.is_up(peer) {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), changed).await;
        }
    }

    /// Whether `peer` is still someone we link with: in the config or an
    /// active agreement.
    pub(super) fn should_dial(&self, peer: &[u8; 32]) -> bool {
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
                    self.metrics.outbound_handshake("ok");
                    return self.finish_dial_with(
                        peer,
                        link,
                        terms,
                        Some((endpoints, origin)),
                        LinkKind::Direct,
                    );
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

    /// Dials endpoints of `peer` that traversal found (its listener or port
    /// mapping), without storing them: they change with the peer's NAT.
    pub(super) async fn dial_found(
        self: &Arc<Self>,
        peer: &[u8; 32],
        endpoints: &[String],
    ) -> Result<()> {
        let terms = self.terms_for(peer);
        let payload = agreement::link_ask(&self.identity, peer, Ask::Agreement, terms).encode();
        let mut errors = Vec::new();
        for endpoint in endpoints {
            let target = DialTarget {
                peer: *peer,
                endpoint: endpoint.clone(),
                server_name: None,
            };
            let dial = self.dialer.dial(&target, &payload);
            match tokio::time::timeout(super::traverse::TRAVERSAL_CONNECT_TIMEOUT * 2, dial).await {
                Ok(Ok(link)) => {
                    self.metrics.outbound_handshake("ok");
                    return self.finish_dial(peer, link, terms, LinkKind::Direct);
                }
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!("{endpoint}: timed out")),
            }
        }
        bail!("{}", errors.join("; "))
    }

    /// A link `peer` accepted: checks the peer's agreement signature,
    /// stores it (the stored endpoints unchanged) and adopts the link as
    /// `kind`.
    pub(super) fn finish_dial(
        self: &Arc<Self>,
        peer: &[u8; 32],
        link: Link,
        terms: Terms,
        kind: LinkKind,
    ) -> Result<()> {
        self.finish_dial_with(peer, link, terms, None, kind)
    }

    /// [`Links::finish_dial`], storing `endpoints` and `origin` for a new
    /// agreement when given.
    fn finish_dial_with(
        self: &Arc<Self>,
        peer: &[u8; 32],
        link: Link,
        terms: Terms,
        stored: Option<(&[String], Origin)>,
        kind: LinkKind,
    ) -> Result<()> {
        if !agreement::verify(peer, &self.identity.public(), terms, &link.app_payload) {
            self.metrics.outbound_handshake("failed");
            bail!("the peer's agreement signature does not verify");
        }
        let existing = self.store().agreement_with(peer)?;
        let endpoints: Vec<String> = match (stored, &existing) {
            (Some((e, _)), _) => e.to_vec(),
            (None, Some(a)) => a.endpoints.clone(),
            (None, None) => Vec::new(),
        };
        let origin = match (&existing, stored) {
            (Some(a), _) => a.origin,
            (None, Some((_, o))) => o,
            (None, None) => Origin::Config,
        };
        self.store().upsert_active(
            peer,
            terms,
            &endpoints,
            origin,
            now_unix(),
            Some(&link.app_payload),
        )?;
        self.adopt(link, kind);
        Ok(())
    }
}
