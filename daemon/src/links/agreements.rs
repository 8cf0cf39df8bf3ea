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

use super::{Links, now_unix};
use crate::db::{Agreement, Origin};
use crate::events::Input;

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

    /// `umbra invite`: stores a one-time secret and returns the token.
    pub(crate) fn invite(
        &self,
        terms: Terms,
        ttl: Duration,
        endpoints: Vec<String>,
    ) -> Result<(String, u64)> {
        let mut endpoints = endpoints;
        if endpoints.is_empty() {
            endpoints = self
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|a| !a.ip().is_unspecified())
                .map(|a| a.to_string())
                .collect();
        }
        if endpoints.is_empty() {
            bail!(
                "no endpoint to put in the token: this node listens only on a wildcard address; pass --endpoint HOST:PORT (the address the other node can dial)"
            );
        }
        let expiry = now_unix() + ttl.as_secs();
        let secret = Invite::random_secret();
        let invite = Invite::new(
            self.identity.public(),
            endpoints,
            terms.bytes_per_period,
            terms.period_secs,
            expiry,
            secret,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.store().add_invite(&secret, terms, expiry)?;
        Ok((invite.encode(), expiry))
    }

    /// `umbra accept`: dials the inviter with the token's secret; returns
    /// once the link is up.
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
        let terms = Terms {
            bytes_per_period: invite.bytes_per_period(),
            period_secs: invite.period_secs(),
        };
        self.dial_with(&peer, invite.endpoints(), Ask::Invite(*invite.secret()), terms, Origin::Invite)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "the inviter did not accept the token ({e:#}); it may be used already, expired or revoked: ask for a new one"
                )
            })?;
        self.spawn_dialers();
        Ok(json!({
            "peer_key": hex::encode(peer),
            "peer_address": address::address_for_key(&peer, self.prefix).to_string(),
            "terms": terms.to_string(),
        }))
    }

    /// `umbra agreements revoke ID`: marks it revoked, tells the peer, and
    /// closes the link.
    pub(crate) async fn revoke(&self, id: i64) -> Result<Value> {
        let Some(a) = self.store().revoke(id)? else {
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

    /// `umbra agreements`: every agreement, in the state database's order.
    pub(crate) fn agreements_json(&self) -> Result<Value> {
        let list = self.store().agreements()?;
        Ok(Value::Array(
            list.iter().map(|a| self.agreement_json(a)).collect(),
        ))
    }

    fn agreement_json(&self, a: &Agreement) -> Value {
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
            // Ledgers come with traffic accounting.
            "ledger": Value::Null,
        })
    }
}
