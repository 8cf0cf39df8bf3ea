//! Authorizing: the listener's decision on an authenticated link request,
//! from the invite it uses, the `[[peer]]` entries or a stored agreement
//! (docs/protocol.md, "Agreements").

use umbra_transport::io::IncomingLinkInfo;
use umbra_transport::proto::agreement::{Ask, LinkAsk};

use super::{Links, now_unix, short_key};
use crate::agreement;
use crate::db::{AgreementState, InviteRefusal, Origin};

impl Links {
    /// Decides on an authenticated link request. `None` refuses, and the
    /// dialer sees the cover site.
    pub(super) fn authorize(&self, info: &IncomingLinkInfo<'_>) -> Option<Vec<u8>> {
        let peer = info.peer;
        let short = short_key(&peer);
        let Ok(ask) = LinkAsk::decode(info.app_payload) else {
            tracing::info!(peer = %short, "refused a link: malformed request payload");
            return None;
        };
        let asked = agreement::asked_terms(&ask);
        if !agreement::verify(&peer, &self.identity.public(), asked, &ask.signature) {
            tracing::info!(peer = %short, "refused a link: bad agreement signature");
            return None;
        }
        let now = now_unix();
        let store = self.store();
        let result = match ask.ask {
            Ask::Invite(secret) => match store.use_invite(&secret, &peer, now) {
                Ok(Ok(terms)) if terms.same_quota(&asked) => store
                    .upsert_active(&peer, terms, &[], Origin::Invite, now, Some(&ask.signature))
                    .map(|_| true),
                Ok(Ok(terms)) => {
                    tracing::info!(peer = %short, %terms, asked = %asked, "refused an invite: terms differ");
                    Ok(false)
                }
                Ok(Err(why)) => {
                    let why = match why {
                        InviteRefusal::Unknown => "unknown token",
                        InviteRefusal::Used => "token already used",
                        InviteRefusal::Expired => "token expired",
                    };
                    tracing::info!(peer = %short, "refused an invite: {why}");
                    Ok(false)
                }
                Err(e) => Err(e),
            },
            Ask::Agreement => {
                let config = self.config();
                if let Some(p) = config.peers.iter().find(|p| p.key.0 == peer) {
                    if p.terms.same_quota(&asked) {
                        store
                            .upsert_active(
                                &peer,
                                p.terms,
                                &p.endpoints,
                                Origin::Config,
                                now,
                                Some(&ask.signature),
                            )
                            .map(|_| true)
                    } else {
                        tracing::warn!(peer = %short, ours = %p.terms, theirs = %asked, "refused a link: [[peer]] terms differ");
                        Ok(false)
                    }
                } else {
                    match store.agreement_with(&peer) {
                        Ok(Some(a))
                            if a.state == AgreementState::Active && a.terms.same_quota(&asked) =>
                        {
                            Ok(true)
                        }
                        Ok(_) => {
                            tracing::info!(peer = %short, "refused a link: no agreement with this key");
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match result {
            Ok(true) => Some(agreement::sign(&self.identity, &peer, asked).to_vec()),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(peer = %short, "refused a link: state database: {e:#}");
                None
            }
        }
    }
}
