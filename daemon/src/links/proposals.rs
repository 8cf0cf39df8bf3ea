//! Agreements proposed over the overlay (docs/protocol.md, "Proposals";
//! docs/architecture.md, "Proposals"): `umbra propose`, `umbra agreements
//! accept ID` and `reject ID` for a proposal, and the proposals and answers
//! that arrive as end-to-end messages.
//!
//! A proposal and its answers carry keys, terms, times and a note, never an
//! endpoint. Only an accept makes the two nodes partners; then NAT traversal
//! (`traverse.rs`) exchanges their endpoints, only with each other, and
//! links them, as after an invite without endpoints.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use umbra_config::Terms;
use umbra_routing::address;
use umbra_transport::proto::proposal::{
    APP_PROPOSAL, Answer, AnswerKind, Proposal, ProposalMessage, Refusal, Verdict, check_note,
};

use super::proposal_gate::{Admit, Dropped, Facts, Gate, HOLD_MAX, Judgement, judge};
use super::{Links, now_unix, short_key};
use crate::db::{
    AgreementState, Direction, NewProposal, Origin, ProposalRecord, ProposalState, Settlement,
};
use crate::events::{Input, MessageRefused};

/// How long a proposal lives unless `umbra propose --ttl` says otherwise.
pub(crate) const PROPOSAL_TTL_DEFAULT: Duration = Duration::from_secs(7 * 86_400);
/// The longest `--ttl`: what a receiving node holds a proposal at most.
pub(crate) const PROPOSAL_TTL_MAX: Duration = HOLD_MAX;
/// How long `umbra propose` waits for the receiving node to say it holds the
/// proposal, or why not, unless told otherwise.
pub(crate) const PROPOSE_WAIT: Duration = Duration::from_secs(20);
/// How often `umbra propose` sends the same proposal again while no answer
/// came (the receiver drops a repeat and answers it again).
const PROPOSE_RESEND: Duration = Duration::from_secs(5);
/// How long `umbra agreements accept ID` waits for the link.
const ACCEPT_LINK_WAIT: Duration = Duration::from_secs(60);
/// How often it sends the accept again until the link is up (the proposer
/// becomes a partner, and takes traversal messages, only once one arrives).
const ACCEPT_RESEND: Duration = Duration::from_secs(5);
/// A message whose circuit's send queue is full is tried again after this …
const SEND_RETRY: Duration = Duration::from_millis(20);
/// … at most this many times.
const SEND_TRIES: u32 = 50;

impl Links {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.proposals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `status`'s `proposals`: what this node sent, received, refused and
    /// dropped.
    pub(crate) fn proposals_json(&self) -> Value {
        let enabled = self.config().agreements.proposals;
        self.gate().json(enabled)
    }

    /// Sends proposal-protocol `bytes` to `peer` inside the end-to-end
    /// session, waiting out a full send queue.
    async fn send_proposal_message(&self, peer: &[u8; 32], bytes: &[u8]) -> Result<()> {
        let mut payload = Vec::with_capacity(1 + bytes.len());
        payload.push(APP_PROPOSAL);
        payload.extend_from_slice(bytes);
        for _ in 0..SEND_TRIES {
            match self.send_message(peer, payload.clone()).await {
                Ok(()) => return Ok(()),
                Err(MessageRefused::Full) => tokio::time::sleep(SEND_RETRY).await,
                Err(MessageRefused::Cannot(why)) => bail!("{why}"),
            }
        }
        bail!("the circuit's send queue stayed full")
    }

    /// Sends `answer` to `peer`, logging what went wrong.
    async fn send_answer(&self, peer: &[u8; 32], answer: &[u8]) {
        if let Err(e) = self.send_proposal_message(peer, answer).await {
            tracing::info!(peer = %short_key(peer), "could not answer a proposal: {e:#}");
        }
    }

    /// The node `to` names: an overlay address (or one in a node's /64) or
    /// a 64-hex key, known to the graph.
    async fn resolve_node(&self, to: &str) -> Result<[u8; 32]> {
        let stopped = || anyhow::anyhow!("the daemon is stopping: its datapath has ended");
        if let Ok(addr) = to.parse::<Ipv6Addr>() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.datapath
                .send(Input::NodeFor(addr, tx))
                .await
                .map_err(|_| stopped())?;
            return rx.await.map_err(|_| stopped())?.with_context(|| {
                format!(
                    "no node in the graph has the address {addr}; the graph holds the nodes \
                     this node's partners reach (`umbra status` says how many): check the \
                     address, or wait until this node is linked"
                )
            });
        }
        let key: [u8; 32] = hex::decode(to)
            .ok()
            .and_then(|k| k.try_into().ok())
            .with_context(|| {
                format!("{to} is neither an overlay address nor a public key (64 hex characters)")
            })?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.datapath
            .send(Input::Knows(key, tx))
            .await
            .map_err(|_| stopped())?;
        if !rx.await.map_err(|_| stopped())? {
            bail!(
                "no node in the graph has the key {to}; the graph holds the nodes this node's \
                 partners reach: wait until this node is linked, or check the key"
            );
        }
        Ok(key)
    }

    fn address_of(&self, key: &[u8; 32]) -> String {
        address::address_for_key(key, self.prefix).to_string()
    }

    /// `umbra propose TO`: signs a proposal of `terms` (amount and period;
    /// the limits stay this side's own) to the node `to` names, stores it
    /// and sends it over the overlay; waits up to `wait` for the receiving
    /// node to say it holds it (or why not), sending it again meanwhile.
    pub(crate) async fn propose(
        self: &Arc<Self>,
        to: &str,
        terms: Terms,
        note: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Value> {
        check_note(note).map_err(|e| anyhow::anyhow!("--note: {e}"))?;
        if ttl.is_zero() || ttl > PROPOSAL_TTL_MAX {
            bail!(
                "--ttl must be from 1s to {} days",
                PROPOSAL_TTL_MAX.as_secs() / 86_400
            );
        }
        let peer = self.resolve_node(to).await?;
        let addr = self.address_of(&peer);
        if peer == self.identity.public() {
            bail!("{to} is this node; propose to another node's address");
        }
        if self.config().peers.iter().any(|p| p.key.0 == peer) {
            bail!(
                "{addr} is a [[peer]] in this node's config already: the agreement is made there"
            );
        }
        let now = now_unix();
        let rec = {
            let store = self.store();
            store.expire_proposals(now)?;
            if let Some(a) = store.agreement_with(&peer)?
                && a.state == AgreementState::Active
            {
                bail!(
                    "this node has an agreement with {addr} already (ID {}); see `umbra agreements`",
                    a.id
                );
            }
            if let Some(p) = store.pending_proposal_with(&peer)?
                && p.direction == Direction::Incoming
            {
                bail!(
                    "{addr} proposed an agreement to this node already: `umbra agreements accept {}` takes it",
                    p.id
                );
            }
            let proposal = Proposal::sign(
                &self.identity,
                &peer,
                Proposal::random_id(),
                (terms.bytes_per_period, terms.period_secs),
                now,
                now.saturating_add(ttl.as_secs()),
                note,
            )
            .map_err(|e| anyhow::anyhow!("--note: {e}"))?;
            let bytes = proposal.encode();
            store.add_proposal(
                &NewProposal {
                    proposal_id: proposal.id,
                    direction: Direction::Outgoing,
                    peer_key: peer,
                    terms,
                    note,
                    created_unix: proposal.created_unix,
                    expiry_unix: proposal.expiry_unix,
                    message: &bytes,
                },
                now,
            )?
        };
        if let Err(e) = self.send_proposal_message(&peer, &rec.message).await {
            let _ = self.store().delete_outgoing_proposal(rec.id);
            bail!("cannot reach {addr} over the overlay: {e:#}");
        }
        self.gate().counts().sent += 1;
        tracing::info!(peer = %short_key(&peer), id = rec.id, %terms, "sent a proposal");
        let deadline = tokio::time::Instant::now() + wait;
        let mut resend = tokio::time::Instant::now() + PROPOSE_RESEND;
        loop {
            let changed = self.changed.notified();
            let cur = self.store().proposal(rec.id)?;
            let answered = cur
                .as_ref()
                .is_none_or(|p| p.delivered_unix.is_some() || p.state != ProposalState::Pending);
            let now = tokio::time::Instant::now();
            if answered || now >= deadline {
                break;
            }
            if now >= resend {
                if self
                    .send_proposal_message(&peer, &rec.message)
                    .await
                    .is_ok()
                {
                    self.gate().counts().sent += 1;
                }
                resend = now + PROPOSE_RESEND;
            }
            let _ = tokio::time::timeout_at(deadline.min(resend), changed).await;
        }
        let cur = self
            .store()
            .proposal(rec.id)?
            .context("the proposal just sent is missing")?;
        Ok(self.proposal_json(&cur))
    }

    /// The incoming pending proposal `id`, for `verb` (accept, reject), or
    /// an error that says what `id` is instead.
    fn incoming_pending(&self, id: i64, verb: &str) -> Result<(ProposalRecord, Proposal)> {
        let store = self.store();
        store.expire_proposals(now_unix())?;
        let Some(rec) = store.proposal(id)? else {
            if store.agreements()?.iter().any(|a| a.id == id) {
                bail!(
                    "{id} is an agreement, not a proposal: only proposals are accepted or rejected \
                     (`umbra agreements revoke {id}` ends an agreement)"
                );
            }
            bail!("no proposal with id {id}; see `umbra agreements`");
        };
        if rec.direction == Direction::Outgoing {
            bail!(
                "proposal {id} is this node's own, to {}: its operator can {verb} it there",
                self.address_of(&rec.peer_key)
            );
        }
        if rec.state != ProposalState::Pending {
            bail!(
                "proposal {id} is {}, not pending; see `umbra agreements`",
                rec.state.as_str()
            );
        }
        let Ok(ProposalMessage::Proposal(p)) = ProposalMessage::decode(&rec.message) else {
            bail!("proposal {id} in the database does not decode");
        };
        Ok((rec, p))
    }

    /// The terms this node keeps for an agreement from `p`: its amount and
    /// period, with the limits of the proposer's `[[peer]]` entry if it has
    /// one, else the defaults.
    fn terms_for_proposal(&self, p: &Proposal) -> Terms {
        let limits = self
            .config()
            .peers
            .iter()
            .find(|c| c.key.0 == p.proposer)
            .map_or(Terms::default(), |c| c.terms);
        Terms {
            bytes_per_period: p.bytes_per_period,
            period_secs: p.period_secs,
            ..limits
        }
    }

    /// `umbra agreements accept ID` for a proposal: takes the agreement,
    /// answers the proposer, and waits for the link traversal makes. Without
    /// a link in [`ACCEPT_LINK_WAIT`], a fresh agreement is dropped again and
    /// the proposal is pending once more.
    pub(crate) async fn accept_proposal(self: &Arc<Self>, id: i64) -> Result<Value> {
        let (rec, proposal) = self.incoming_pending(id, "accept")?;
        let peer = rec.peer_key;
        let short = short_key(&peer);
        let terms = self.terms_for_proposal(&proposal);
        let now = now_unix();
        let answer = Answer::sign(&self.identity, &proposal, AnswerKind::Accept).encode();
        let (agreement, fresh) = {
            let store = self.store();
            let fresh = !matches!(store.agreement_with(&peer)?, Some(a) if a.state == AgreementState::Active);
            let agreement = store.upsert_active(
                &peer,
                terms,
                &[],
                Origin::Proposal,
                now,
                Some(&proposal.agreement_signature),
            )?;
            let settled = store.settle_proposal(
                id,
                Settlement {
                    state: ProposalState::Accepted,
                    reason: None,
                    answer: Some(&answer),
                    agreement_id: Some(agreement.id),
                },
                now,
            )?;
            if !settled {
                bail!("proposal {id} was settled meanwhile; see `umbra agreements`");
            }
            (agreement, fresh)
        };
        self.gate()
            .answered(&proposal.id, answer.clone(), Instant::now());
        let _ = self.datapath.send(Input::Edges(self.edges())).await;
        tracing::info!(peer = %short, proposal = id, agreement = agreement.id, %terms, "accepted a proposal; linking");
        let deadline = tokio::time::Instant::now() + ACCEPT_LINK_WAIT;
        let mut last_error = String::from("no link yet");
        let mut sent = 0u32;
        loop {
            if self.live_link(&peer).is_some() {
                let mut v = self.agreement_json(&agreement);
                v["kind"] = json!("agreement");
                v["proposal"] = json!(id);
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            match self.send_proposal_message(&peer, &answer).await {
                Ok(()) => sent += 1,
                Err(e) => last_error = format!("{e:#}"),
            }
            self.spawn_traversal(peer);
            let wait = (tokio::time::Instant::now() + ACCEPT_RESEND).min(deadline);
            while tokio::time::Instant::now() < wait && self.live_link(&peer).is_none() {
                let changed = self.changed.notified();
                let _ = tokio::time::timeout_at(wait, changed).await;
            }
        }
        if fresh {
            {
                let store = self.store();
                let _ = store.revoke_peer(&peer);
                let _ = store.reopen_proposal(id, now_unix());
            }
            let ack = Answer::sign(&self.identity, &proposal, AnswerKind::Received).encode();
            self.gate().answered(&proposal.id, ack, Instant::now());
            let _ = self.datapath.send(Input::Edges(self.edges())).await;
        }
        bail!(
            "no link to {} came within {ACCEPT_LINK_WAIT:?} (the accept went out {sent} times; \
             last: {last_error}). The proposer's node may be offline or unreachable; the \
             agreement is dropped again and proposal {id} is pending once more, so \
             `umbra agreements accept {id}` can try again until it expires",
            self.address_of(&peer)
        )
    }

    /// `umbra agreements reject ID` for a proposal: records the rejection and
    /// tells the proposer. Nothing else is left behind: no agreement, no
    /// link, no endpoint sent.
    pub(crate) async fn reject_proposal(self: &Arc<Self>, id: i64) -> Result<Value> {
        let (rec, proposal) = self.incoming_pending(id, "reject")?;
        let answer = Answer::sign(&self.identity, &proposal, AnswerKind::Reject).encode();
        let settled = self.store().settle_proposal(
            id,
            Settlement {
                state: ProposalState::Rejected,
                reason: None,
                answer: Some(&answer),
                agreement_id: None,
            },
            now_unix(),
        )?;
        if !settled {
            bail!("proposal {id} was settled meanwhile; see `umbra agreements`");
        }
        self.gate()
            .answered(&proposal.id, answer.clone(), Instant::now());
        let told = self.send_proposal_message(&rec.peer_key, &answer).await;
        tracing::info!(peer = %short_key(&rec.peer_key), proposal = id, told = told.is_ok(), "rejected a proposal");
        let rec = self
            .store()
            .proposal(id)?
            .context("the proposal just rejected is missing")?;
        let mut v = self.proposal_json(&rec);
        v["told"] = json!(told.is_ok());
        if let Err(e) = told {
            v["note_to_operator"] = json!(format!(
                "the rejection could not be sent now ({e:#}); it is sent again if the proposer asks again"
            ));
        }
        Ok(v)
    }

    /// A proposal-protocol message arrived from `from` (the session's
    /// authenticated peer).
    pub(super) fn on_proposal_message(self: &Arc<Self>, from: &[u8; 32], body: &[u8]) {
        let msg = match ProposalMessage::decode(body) {
            Ok(m) => m,
            Err(e) => {
                self.gate().dropped(Dropped::Malformed);
                tracing::debug!(from = %short_key(from), error = %e, "dropped a malformed proposal message");
                return;
            }
        };
        match msg {
            ProposalMessage::Proposal(p) => {
                let me = Arc::clone(self);
                let from = *from;
                tokio::spawn(async move { me.on_proposal(from, p).await });
            }
            // Settled before the next message from the same node is looked
            // at: an accept makes the answerer a partner, and its first
            // traversal message may come right behind it.
            ProposalMessage::Answer(a) => self.on_answer(*from, a),
        }
    }

    /// A proposal from `from`: the receiver rules of docs/protocol.md,
    /// "Proposals".
    async fn on_proposal(self: Arc<Self>, from: [u8; 32], p: Proposal) {
        let short = short_key(&from);
        let admit = self.gate().admit(&from, &p.id, Instant::now());
        match admit {
            Admit::Go => {}
            Admit::Repeat(answer) => {
                tracing::debug!(from = %short, "dropped a repeated proposal");
                if let Some(a) = answer {
                    self.send_answer(&from, &a).await;
                }
                return;
            }
            Admit::Limited { tell } => {
                if tell {
                    tracing::info!(from = %short, "proposals from this node are over its rate; dropping them until it slows down");
                    *self
                        .gate()
                        .counts()
                        .refused
                        .entry(Refusal::RateLimited.as_str())
                        .or_default() += 1;
                    let a = Answer::refuse(&self.identity, p.id, &from, Refusal::RateLimited);
                    self.send_answer(&from, &a.encode()).await;
                } else {
                    tracing::debug!(from = %short, "dropped a proposal over the rate");
                }
                return;
            }
        }
        let now = now_unix();
        // Ids from before a restart are in the database.
        let known = self.store().proposal_by_pid(&p.id);
        match known {
            Ok(None) => {}
            Ok(Some(rec)) => {
                self.gate().dropped(Dropped::Duplicate);
                if rec.direction == Direction::Incoming && rec.peer_key == from {
                    let again = match rec.answer {
                        Some(a) => a,
                        None => Answer::sign(&self.identity, &p, AnswerKind::Received).encode(),
                    };
                    self.send_answer(&from, &again).await;
                }
                return;
            }
            Err(e) => {
                tracing::error!(from = %short, "reading proposals: {e:#}");
                return;
            }
        }
        let facts = {
            let store = self.store();
            let _ = store.expire_proposals(now);
            let replaces = matches!(store.pending_proposal_with(&from), Ok(Some(r)) if r.direction == Direction::Incoming);
            Facts {
                enabled: self.config().agreements.proposals,
                now_unix: now,
                partner: false,
                pending_incoming: store.pending_incoming().unwrap_or(usize::MAX),
                replaces,
            }
        };
        let facts = Facts {
            partner: self.is_partner(&from),
            ..facts
        };
        self.gate().counts().received += 1;
        match judge(&p, &self.identity.public(), &from, &facts) {
            Judgement::Drop(why) => {
                self.gate().dropped(why);
                tracing::debug!(from = %short, ?why, "dropped a proposal");
            }
            Judgement::Refuse(why) => {
                *self
                    .gate()
                    .counts()
                    .refused
                    .entry(why.as_str())
                    .or_default() += 1;
                tracing::info!(from = %short, reason = why.as_str(), "refused a proposal: {}", why.explain());
                let a = Answer::sign(&self.identity, &p, AnswerKind::Refuse(why)).encode();
                self.gate().answered(&p.id, a.clone(), Instant::now());
                self.send_answer(&from, &a).await;
            }
            Judgement::Keep { expiry_unix } => {
                let message = p.encode();
                let stored = self.store().add_proposal(
                    &NewProposal {
                        proposal_id: p.id,
                        direction: Direction::Incoming,
                        peer_key: from,
                        terms: Terms::quota(p.bytes_per_period, p.period_secs),
                        note: &p.note,
                        created_unix: p.created_unix,
                        expiry_unix,
                        message: &message,
                    },
                    now,
                );
                let rec = match stored {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(from = %short, "storing a proposal: {e:#}");
                        return;
                    }
                };
                self.gate().counts().held += 1;
                tracing::info!(
                    from = %short,
                    id = rec.id,
                    terms = %rec.terms,
                    note = %p.note,
                    "a proposal waits for the operator: `umbra agreements accept {}` or `reject {}`",
                    rec.id,
                    rec.id
                );
                let ack = Answer::sign(&self.identity, &p, AnswerKind::Received).encode();
                self.gate().answered(&p.id, ack.clone(), Instant::now());
                self.send_answer(&from, &ack).await;
            }
        }
    }

    /// An answer from `from` to a proposal of ours. It runs on the datapath
    /// task, in the order messages arrive; it writes the database only for
    /// the first answer that settles one of our own proposals.
    fn on_answer(self: &Arc<Self>, from: [u8; 32], a: Answer) {
        let short = short_key(&from);
        let forged = |why: &str| {
            self.gate().dropped(Dropped::Forged);
            tracing::debug!(from = %short, "dropped a proposal answer: {why}");
        };
        if a.answerer != from || a.proposer != self.identity.public() {
            return forged("not from the node it names, or not to this node");
        }
        let rec = match self.store().proposal_by_pid(&a.id) {
            Ok(Some(r)) if r.direction == Direction::Outgoing && r.peer_key == from => r,
            Ok(_) => return forged("no proposal of ours to that node has its id"),
            Err(e) => {
                tracing::error!(from = %short, "reading proposals: {e:#}");
                return;
            }
        };
        let Ok(ProposalMessage::Proposal(proposal)) = ProposalMessage::decode(&rec.message) else {
            tracing::error!(id = rec.id, "our proposal in the database does not decode");
            return;
        };
        if !a.verify_for(&proposal) {
            return forged("the signature does not verify");
        }
        let now = now_unix();
        let duplicate = || {
            self.gate().dropped(Dropped::Duplicate);
            tracing::debug!(from = %short, id = rec.id, "dropped a repeated proposal answer");
        };
        match a.verdict {
            Verdict::Received => {
                if rec.delivered_unix.is_some() || rec.state != ProposalState::Pending {
                    return duplicate();
                }
                let _ = self.store().proposal_delivered(rec.id, now);
                tracing::info!(peer = %short, id = rec.id, "the proposal reached its node; it waits for that operator");
            }
            Verdict::Accepted {
                agreement_signature,
            } => {
                if rec.state == ProposalState::Accepted {
                    duplicate();
                    // The accepting side sends it until the two link.
                    self.spawn_traversal(from);
                    return;
                }
                if matches!(rec.state, ProposalState::Rejected | ProposalState::Refused) {
                    return duplicate();
                }
                let made = {
                    let store = self.store();
                    store
                        .upsert_active(
                            &from,
                            rec.terms,
                            &[],
                            Origin::Proposal,
                            now,
                            Some(&agreement_signature),
                        )
                        .and_then(|ag| {
                            store.settle_proposal(
                                rec.id,
                                Settlement {
                                    state: ProposalState::Accepted,
                                    reason: None,
                                    answer: Some(&a.encode()),
                                    agreement_id: Some(ag.id),
                                },
                                now,
                            )?;
                            Ok(ag)
                        })
                };
                match made {
                    Ok(ag) => {
                        tracing::info!(peer = %short, id = rec.id, agreement = ag.id, terms = %rec.terms, "the proposal was accepted; linking");
                        let (datapath, edges) = (self.datapath.clone(), self.edges());
                        tokio::spawn(async move { datapath.send(Input::Edges(edges)).await });
                        self.spawn_traversal(from);
                    }
                    Err(e) => {
                        tracing::error!(peer = %short, "recording an accepted proposal: {e:#}");
                        return;
                    }
                }
            }
            Verdict::Rejected | Verdict::Refused(_) => {
                if rec.state != ProposalState::Pending {
                    return duplicate();
                }
                let (state, reason) = match a.verdict {
                    Verdict::Refused(why) => (ProposalState::Refused, Some(why)),
                    _ => (ProposalState::Rejected, None),
                };
                let _ = self.store().settle_proposal(
                    rec.id,
                    Settlement {
                        state,
                        reason: reason.map(Refusal::as_str),
                        answer: Some(&a.encode()),
                        agreement_id: None,
                    },
                    now,
                );
                match reason {
                    Some(why) => {
                        tracing::warn!(peer = %short, id = rec.id, reason = why.as_str(), "the proposal was refused: {}", why.explain())
                    }
                    None => {
                        tracing::info!(peer = %short, id = rec.id, "the proposal was rejected by that node's operator")
                    }
                }
            }
        }
        *self
            .gate()
            .counts()
            .answers
            .entry(a.verdict.as_str())
            .or_default() += 1;
        self.changed.notify_waiters();
    }

    /// One proposal in `umbra agreements --json` (docs/cli.md).
    pub(crate) fn proposal_json(&self, p: &ProposalRecord) -> Value {
        let reason = p.reason.as_deref();
        let explain = reason.map(|r| refusal_named(r).explain());
        json!({
            "id": p.id,
            "kind": "proposal",
            "peer_key": hex::encode(p.peer_key),
            "peer_address": self.address_of(&p.peer_key),
            "state": p.state.as_str(),
            "terms": p.terms.to_string(),
            "origin": "proposal",
            "direction": p.direction.as_str(),
            "note": p.note,
            "created_unix": p.created_unix,
            "expiry_unix": p.expiry_unix,
            "updated_unix": p.updated_unix,
            "delivered": match p.direction {
                Direction::Outgoing => json!(p.delivered_unix.is_some() || p.state != ProposalState::Pending),
                Direction::Incoming => Value::Null,
            },
            "reason": reason,
            "reason_text": explain,
            "agreement_id": p.agreement_id,
            "proposal_id": hex::encode(p.proposal_id),
            "message": hex::encode(&p.message),
            "answer": p.answer.as_ref().map(hex::encode),
            "ledger": Value::Null,
        })
    }

    /// Every proposal, for `umbra agreements`.
    pub(crate) fn proposal_list(&self) -> Result<Vec<Value>> {
        let list = {
            let store = self.store();
            store.expire_proposals(now_unix())?;
            store.proposals()?
        };
        Ok(list.iter().map(|p| self.proposal_json(p)).collect())
    }

    /// Whether `id` names a proposal (for `umbra agreements revoke`'s error).
    pub(crate) fn is_proposal(&self, id: i64) -> bool {
        matches!(self.store().proposal(id), Ok(Some(_)))
    }
}

/// The refusal a stored reason names.
fn refusal_named(name: &str) -> Refusal {
    [
        Refusal::Disabled,
        Refusal::BadTerms,
        Refusal::Expired,
        Refusal::AlreadyPartner,
        Refusal::RateLimited,
        Refusal::Busy,
    ]
    .into_iter()
    .find(|r| r.as_str() == name)
    .unwrap_or(Refusal::Other(0))
}
