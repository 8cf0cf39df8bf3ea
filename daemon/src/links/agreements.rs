//! Agreement operations of the control socket: `umbra invite`, `umbra
//! accept`, `umbra agreements` and `umbra agreements revoke`, and the
//! terms an agreement with a peer has.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use umbra_config::Terms;
use umbra_routing::address;
use umbra_transport::proto::agreement::Ask;
use umbra_transport::proto::control::LinkControl;
use umbra_transport::proto::invite::Invite;

use super::{Links, now_unix, short_key};
use crate::db::{Agreement, Origin};
use crate::events::Input;
use umbra_transport::proto::traversal::Traversal;

/// The longest an invite token works (`umbra invite --ttl`): a token is a
/// secret, and one that outlives a season is one nobody remembers handing out.
pub(crate) const INVITE_TTL_MAX: Duration = Duration::from_secs(90 * 86_400);
/// How long `umbra accept` of a token without endpoints waits for the link.
const ACCEPT_OVER_OVERLAY_WAIT: Duration = Duration::from_secs(60);
/// How often it tells the inviter again until the link is up.
const ACCEPT_RESEND: Duration = Duration::from_secs(5);

impl Links {
    /// The terms we would offer `peer` for an existing agreement.
    pub(super) fn terms_for(&self, peer: &[u8; 32]) -> Terms {
        if let Some(p) = self.config().peers.iter().find(|p| p.key.0 == *peer) {
            return p.terms;
        }
        match self.store().agreement_with(peer) {
            Ok(Some(a)) => a.terms,
            _ => Terms::default(),
        }
    }

    /// `umbra invite`: stores a one-time secret and returns the token, and
    /// the endpoints it names. Without `--endpoint` the token names where
    /// others can dial this node (its listeners when nothing translates its
    /// address, its port mapping), or none at all: the accepting node then
    /// answers over the overlay (docs/architecture.md, "NAT traversal").
    pub(crate) fn invite(
        &self,
        terms: Terms,
        ttl: Duration,
        endpoints: Vec<String>,
    ) -> Result<(String, u64, Vec<String>)> {
        if ttl.is_zero() || ttl > INVITE_TTL_MAX {
            bail!(
                "--ttl must be from 1s to {} days",
                INVITE_TTL_MAX.as_secs() / 86_400
            );
        }
        let mut endpoints = endpoints;
        if endpoints.is_empty() {
            endpoints = self
                .our_endpoints()
                .1
                .iter()
                .filter(|e| e.kind.is_dialable())
                .map(|e| e.addr.to_string())
                .collect();
            endpoints.truncate(umbra_transport::proto::invite::INVITE_MAX_ENDPOINTS);
        }
        let expiry = now_unix().saturating_add(ttl.as_secs());
        let secret = Invite::random_secret();
        let invite = Invite::new(
            self.identity.public(),
            endpoints.clone(),
            terms.bytes_per_period,
            terms.period_secs,
            expiry,
            secret,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.store().add_invite(&secret, terms, expiry)?;
        Ok((invite.encode(), expiry, endpoints))
    }

    /// `umbra accept`: dials the inviter with the token's secret (or, for a
    /// token without endpoints, answers it over the overlay); returns once
    /// the link is up.
    pub(crate) async fn accept(self: &Arc<Self>, token: &str) -> Result<Value> {
        let invite =
            Invite::decode(token).map_err(|e| anyhow::anyhow!("the token is not valid: {e}"))?;
        let peer = *invite.inviter();
        if peer == self.identity.public() {
            bail!("this token was made by this node; run `umbra accept` on the other node");
        }
        if invite.is_expired(now_unix()) {
            bail!("the token expired; ask the inviter for a new one (`umbra invite`)");
        }
        let terms = Terms::quota(invite.bytes_per_period(), invite.period_secs());
        if invite.endpoints().is_empty() {
            self.accept_over_overlay(&peer, *invite.secret(), terms)
                .await?;
        } else {
            self.dial_with(&peer, invite.endpoints(), Ask::Invite(*invite.secret()), terms, Origin::Invite)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "the inviter did not accept the token ({e:#}); it may be used already, expired or revoked: ask for a new one"
                    )
                })?;
        }
        self.spawn_dialers();
        Ok(json!({
            "peer_key": hex::encode(peer),
            "peer_address": address::address_for_key(&peer, self.prefix).to_string(),
            "terms": terms.to_string(),
        }))
    }

    /// Accepts a token without endpoints: takes the agreement on this side,
    /// tells the inviter over the overlay (the secret proves the token, and
    /// this node's endpoints go along), and waits for the link NAT
    /// traversal makes. Without a link in [`ACCEPT_OVER_OVERLAY_WAIT`] the
    /// agreement is dropped again.
    async fn accept_over_overlay(
        self: &Arc<Self>,
        peer: &[u8; 32],
        secret: [u8; 16],
        terms: Terms,
    ) -> Result<()> {
        let fresh = self.store().agreement_with(peer)?.is_none();
        self.store()
            .upsert_active(peer, terms, &[], Origin::Invite, now_unix(), None)?;
        let _ = self.datapath.send(Input::Edges(self.edges())).await;
        let deadline = tokio::time::Instant::now() + ACCEPT_OVER_OVERLAY_WAIT;
        let mut attempt = 0;
        let mut last_error = String::from("no answer yet");
        while tokio::time::Instant::now() < deadline {
            if self.live_link(peer).is_some() {
                return Ok(());
            }
            let (_, endpoints) = self.our_endpoints();
            let msg = Traversal::InviteAccepted { secret, endpoints };
            match self.send_traversal(peer, &msg, attempt).await {
                Ok(route) => {
                    tracing::info!(peer = %short_key(peer), route = route.as_str(), "told the inviter over the overlay that its token is accepted");
                    self.spawn_traversal(*peer);
                }
                Err(e) => last_error = format!("{e:#}"),
            }
            attempt += 1;
            let wait = tokio::time::Instant::now() + ACCEPT_RESEND;
            while tokio::time::Instant::now() < wait.min(deadline) {
                if self.live_link(peer).is_some() {
                    return Ok(());
                }
                let changed = self.changed.notified();
                let _ = tokio::time::timeout_at(wait.min(deadline), changed).await;
            }
        }
        if fresh {
            let _ = self.store().revoke_peer(peer);
            let _ = self.datapath.send(Input::Edges(self.edges())).await;
        }
        bail!(
            "the token names no endpoint, so the inviter must be reached through the overlay, \
             and no link came up within {ACCEPT_OVER_OVERLAY_WAIT:?} (last: {last_error}). This node \
             needs a link of its own (a partner whose graph reaches the inviter) or a partner in \
             common with the inviter; or ask the inviter for a token with --endpoint"
        )
    }

    /// An invite of ours that named no endpoint was accepted by `from` over
    /// the overlay: the secret must be one of ours, unused; then `from` is a
    /// partner and traversal links it.
    pub(super) async fn on_invite_accepted(
        self: &Arc<Self>,
        from: [u8; 32],
        secret: [u8; 16],
        endpoints: Vec<umbra_transport::proto::traversal::Endpoint>,
    ) {
        let short = short_key(&from);
        let used = self.store().use_invite(&secret, &from, now_unix());
        match used {
            Ok(Ok(terms)) => {
                if let Err(e) =
                    self.store()
                        .upsert_active(&from, terms, &[], Origin::Invite, now_unix(), None)
                {
                    tracing::error!(peer = %short, "recording an agreement: {e:#}");
                    return;
                }
                tracing::info!(peer = %short, %terms, "our invite was accepted over the overlay");
                self.remember_endpoints(&from, endpoints);
                let _ = self.datapath.send(Input::Edges(self.edges())).await;
                self.spawn_traversal(from);
            }
            Ok(Err(crate::db::InviteRefusal::Used)) if self.is_partner(&from) => {
                tracing::debug!(peer = %short, "the invite acceptance came again");
            }
            Ok(Err(why)) => {
                tracing::info!(peer = %short, ?why, "refused an invite acceptance over the overlay");
            }
            Err(e) => tracing::error!(peer = %short, "checking an invite: {e:#}"),
        }
    }

    /// `umbra agreements revoke ID`: marks it revoked, tells the peer, and
    /// closes the link.
    pub(crate) async fn revoke(&self, id: i64) -> Result<Value> {
        let Some(a) = self.store().revoke(id)? else {
            if self.is_proposal(id) {
                bail!(
                    "{id} is a proposal, not an agreement: `umbra agreements reject {id}` answers one made to this node"
                );
            }
            bail!("no agreement with id {id}; see `umbra agreements`");
        };
        let sender = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.get_mut(&a.peer_key).and_then(|e| e.sender.take())
        };
        if let Some(s) = sender {
            let _ = s.send(LinkControl::Revoke.frame()).await;
        }
        self.changed.notify_waiters();
        let _ = self.datapath.send(Input::Edges(self.edges())).await;
        let in_config = self.config().peers.iter().any(|p| p.key.0 == a.peer_key);
        let mut v = self.agreement_json(&a);
        if in_config {
            v["note"] = json!(
                "this peer is also a [[peer]] in the config; remove it there too, or it links again"
            );
        }
        Ok(v)
    }

    /// `umbra agreements`: every agreement, each with its ledger, and every
    /// proposal, by id (the two share one id space; docs/cli.md, "umbra
    /// agreements").
    pub(crate) async fn agreements_json(&self) -> Result<Value> {
        let list = self.store().agreements()?;
        let ledgers = self.ledger_views().await;
        let stored = self.load_ledgers();
        let mut all: Vec<Value> = list
            .iter()
            .map(|a| {
                let mut v = self.agreement_json(a);
                v["kind"] = json!("agreement");
                let key = hex::encode(a.peer_key);
                v["ledger"] = match &ledgers["peers"][&key] {
                    Value::Null => stored
                        .iter()
                        .find(|(k, _)| *k == a.peer_key)
                        .map_or(Value::Null, |(_, r)| crate::datapath::record_json(r)),
                    live => live.clone(),
                };
                v
            })
            .chain(self.proposal_list()?)
            .collect();
        all.sort_by_key(|v| v["id"].as_i64());
        Ok(Value::Array(all))
    }

    pub(super) fn agreement_json(&self, a: &Agreement) -> Value {
        json!({
            "id": a.id,
            "peer_key": hex::encode(a.peer_key),
            "peer_address": address::address_for_key(&a.peer_key, self.prefix).to_string(),
            "state": a.state.as_str(),
            "terms": a.terms.to_string(),
            "origin": a.origin.as_str(),
            "endpoints": a.endpoints,
            "created_unix": a.created_unix,
            "revision": a.revision,
            "signed_by_peer": a.peer_signature.is_some(),
            "ledger": Value::Null,
        })
    }
}
