//! NAT traversal (docs/architecture.md, "NAT traversal"): links with
//! partners that have no endpoint to dial (`[[peer]] endpoints = []`, or an
//! agreement made without one), and better links for partners that are
//! linked only through a relay.
//!
//! One task per such partner runs rounds. A round sends this node's
//! endpoints (`signal.rs` picks the route), waits for the partner's, then
//! does what [`traversal::plan`] says both sides agree on: dial the
//! partner's listener or port mapping, wait for the partner to dial ours,
//! punch through both NATs (`punch.rs`), or open a relayed link through a
//! partner both share (`relay.rs`). A step that fails moves the next round
//! on to the next way. While the link is relayed, rounds go on in the
//! background (every `[nat] retry_direct` at first, doubling up to
//! [`UPGRADE_WAIT_MAX`]), and a direct or punched link takes the relayed
//! one's place without dropping its circuits (`peers.rs`, moves).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use rand_core::OsRng;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use umbra_transport::proto::frame::jittered;
use umbra_transport::proto::nat::Mapping;
use umbra_transport::proto::traversal::{
    self, Endpoint, EndpointKind, RELAYS_MAX, Side, Step, Traversal, Tried,
};

use super::signal::Route;
use super::{Links, now_unix, short_key};

/// How long a round waits for the partner's endpoints.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(5);
/// How long a side that the partner can dial waits for it to.
const AWAIT_DIAL_WAIT: Duration = Duration::from_secs(10);
/// How long the side that does not lead a punch or relay waits for the
/// link the other side makes.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// At start, how long the first round waits for the NAT classification
/// (two outbound links) before it goes with what it has.
const CLASSIFY_WAIT: Duration = Duration::from_secs(10);
/// The first wait after a failed round; it doubles up to
/// [`RETRY_WAIT_MAX`].
const RETRY_WAIT_MIN: Duration = Duration::from_secs(2);
/// The longest wait between failed rounds.
const RETRY_WAIT_MAX: Duration = Duration::from_secs(60);
/// The longest wait between attempts to replace a relayed link.
pub(super) const UPGRADE_WAIT_MAX: Duration = Duration::from_secs(30 * 60);
/// How often a side waiting for the partner looks whether the plan still
/// stands (its own endpoints can change without a wake-up).
const REPLAN_CHECK: Duration = Duration::from_millis(500);
/// A direct dial to a partner's endpoint gives up after this long.
pub(super) const TRAVERSAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a wait for the partner's part of a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// The link came.
    Linked,
    /// The facts the plan rested on changed: plan again, nothing failed.
    Replan,
    /// Nothing came in time.
    TimedOut,
}

/// What this node knows of one partner's traversal.
#[derive(Debug, Default)]
pub(super) struct PeerTraversal {
    /// The partner's latest endpoints.
    theirs: Option<Theirs>,
    /// When this node last sent its endpoints to the partner.
    last_sent: Option<Instant>,
    /// As the punch initiator: the round trip being measured.
    pub(super) punch_reply: Option<(u64, oneshot::Sender<()>)>,
    /// As the punch responder: the nonce answered, which a sync must name.
    pub(super) punch_answered: Option<u64>,
    /// As the punch responder: the attempt in flight. A new sync ends it, so
    /// two attempts never hold the same ports.
    pub(super) punch_follow: Option<tokio::task::AbortHandle>,
    /// A traversal task runs for this partner.
    running: bool,
    /// The last step tried and how it went, for `umbra peers`.
    last: Option<(String, Option<String>)>,
}

/// A partner's endpoints, as its latest message said.
#[derive(Debug, Clone)]
pub(super) struct Theirs {
    seq: u32,
    mapping: Mapping,
    pub(super) endpoints: Vec<Endpoint>,
    relays: Vec<[u8; 32]>,
    at: Instant,
}

impl Links {
    fn traversal(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], PeerTraversal>> {
        self.traversal.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn with_traversal<T>(
        &self,
        peer: &[u8; 32],
        f: impl FnOnce(&mut PeerTraversal) -> T,
    ) -> T {
        f(self.traversal().entry(*peer).or_default())
    }

    /// The relays `peer` named in its latest endpoints.
    pub(super) fn relays_of(&self, peer: &[u8; 32]) -> Vec<[u8; 32]> {
        self.traversal()
            .get(peer)
            .and_then(|t| t.theirs.as_ref())
            .map(|t| t.relays.clone())
            .unwrap_or_default()
    }

    /// `peer`'s latest endpoints.
    pub(super) fn theirs(&self, peer: &[u8; 32]) -> Option<Theirs> {
        self.traversal().get(peer).and_then(|t| t.theirs.clone())
    }

    /// Starts the traversal task for `peer` unless one runs.
    pub(super) fn spawn_traversal(self: &Arc<Self>, peer: [u8; 32]) {
        let start = self.with_traversal(&peer, |t| !std::mem::replace(&mut t.running, true));
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.traverse_loop(peer).await });
        }
    }

    /// This node's endpoints as its partners should see them: its listeners
    /// where nothing translates their address (a listener bound to an
    /// address no NAT's inside uses, unless the links show a NAT; a wildcard
    /// listener at the addresses partners saw, once the links show none),
    /// its port mapping, and where its dial port appears outside an
    /// endpoint-independent NAT (or one not yet classified).
    pub(super) fn our_endpoints(&self) -> (Mapping, Vec<Endpoint>) {
        let class = self.nat_class();
        let translated = matches!(
            class.mapping,
            Mapping::EndpointIndependent | Mapping::EndpointDependent
        );
        let inside = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(v4) => crate::portmap::behind_nat(v4),
            std::net::IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_unique_local(),
        };
        let mut endpoints = Vec::new();
        let listeners = self
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for l in listeners {
            if !l.ip().is_unspecified() {
                if !translated && !inside(l.ip()) {
                    endpoints.push(Endpoint {
                        kind: EndpointKind::Listen,
                        addr: l,
                    });
                }
            } else if class.mapping == Mapping::Public {
                for e in class.external.iter().filter(|e| e.is_ipv4() == l.is_ipv4()) {
                    endpoints.push(Endpoint {
                        kind: EndpointKind::Listen,
                        addr: SocketAddr::new(e.ip(), l.port()),
                    });
                }
            }
        }
        if let Some(mapped) = self.mapped_endpoint() {
            endpoints.push(Endpoint {
                kind: EndpointKind::Mapped,
                addr: mapped,
            });
        }
        if matches!(
            class.mapping,
            Mapping::EndpointIndependent | Mapping::Unknown
        ) {
            for e in &class.external {
                endpoints.push(Endpoint {
                    kind: EndpointKind::Observed,
                    addr: *e,
                });
            }
        }
        (class.mapping, traversal::normalize_endpoints(endpoints))
    }

    /// The message with this node's endpoints for `peer`.
    fn endpoints_message(&self, peer: &[u8; 32], reply: bool) -> Traversal {
        let (mapping, endpoints) = self.our_endpoints();
        let relays: Vec<[u8; 32]> = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let mut r: Vec<[u8; 32]> = peers
                .iter()
                .filter(|(k, e)| *k != peer && e.is_up() && !e.kind.is_relayed())
                .map(|(k, _)| *k)
                .collect();
            r.sort_unstable();
            r.truncate(RELAYS_MAX);
            r
        };
        Traversal::Endpoints {
            seq: u32::try_from(now_unix()).unwrap_or(u32::MAX),
            mapping,
            reply,
            endpoints,
            relays,
        }
    }

    /// Handles a traversal message from partner `from`.
    pub(super) async fn handle_traversal(
        self: Arc<Self>,
        from: [u8; 32],
        msg: Traversal,
        route: Route,
    ) {
        match msg {
            Traversal::Endpoints {
                seq,
                mapping,
                reply,
                endpoints,
                relays,
            } => {
                let fresh = self.with_traversal(&from, |t| {
                    if t.theirs.as_ref().is_some_and(|old| old.seq > seq) {
                        return false;
                    }
                    t.theirs = Some(Theirs {
                        seq,
                        mapping,
                        endpoints,
                        relays,
                        at: Instant::now(),
                    });
                    true
                });
                if !fresh {
                    return;
                }
                self.changed.notify_waiters();
                if reply {
                    let msg = self.endpoints_message(&from, false);
                    match self.answer_traversal(&from, &msg, route).await {
                        Ok(r) => {
                            self.with_traversal(&from, |t| t.last_sent = Some(Instant::now()));
                            tracing::debug!(peer = %short_key(&from), route = r.as_str(), "answered with our endpoints");
                        }
                        Err(e) => {
                            tracing::info!(peer = %short_key(&from), "could not answer with our endpoints: {e:#}")
                        }
                    }
                }
                // A partner looking for us that we are not looking for
                // (it has no link either): look for it too.
                if self.live_link(&from).is_none() && route != Route::Link {
                    self.spawn_traversal(from);
                }
            }
            Traversal::PunchConnect { nonce } => {
                self.with_traversal(&from, |t| t.punch_answered = Some(nonce));
                let reply = Traversal::PunchConnectReply { nonce };
                if let Err(e) = self.answer_traversal(&from, &reply, route).await {
                    tracing::info!(peer = %short_key(&from), "hole punching: could not answer: {e:#}");
                }
            }
            Traversal::PunchConnectReply { nonce } => {
                let waiter = self.with_traversal(&from, |t| match t.punch_reply.take() {
                    Some((n, tx)) if n == nonce => Some(tx),
                    other => {
                        t.punch_reply = other;
                        None
                    }
                });
                if let Some(tx) = waiter {
                    let _ = tx.send(());
                }
            }
            Traversal::PunchSync { nonce } => {
                let expected =
                    self.with_traversal(&from, |t| t.punch_answered.take() == Some(nonce));
                if expected {
                    let me = Arc::clone(&self);
                    let task = tokio::spawn(async move { me.punch_responder(from).await });
                    let old =
                        self.with_traversal(&from, |t| t.punch_follow.replace(task.abort_handle()));
                    if let Some(old) = old {
                        old.abort();
                    }
                } else {
                    tracing::debug!(peer = %short_key(&from), "hole punching: a sync for a punch not agreed; ignored");
                }
            }
            Traversal::InviteAccepted { secret, endpoints } => {
                self.on_invite_accepted(from, secret, endpoints).await;
            }
        }
    }

    /// Keeps a link to `peer` by traversal while it stays a partner.
    async fn traverse_loop(self: Arc<Self>, peer: [u8; 32]) {
        let short = short_key(&peer);
        self.wait_for_classification().await;
        let mut tried = Tried::default();
        let mut attempt = 0usize;
        let mut retry = RETRY_WAIT_MIN;
        let mut upgrade = self.config().nat.retry_direct;
        loop {
            if !self.should_dial(&peer) {
                self.with_traversal(&peer, |t| t.running = false);
                return;
            }
            match self.live_link(&peer) {
                Some((_, _, kind)) if !kind.is_relayed() => {
                    self.wait_while_up(&peer).await;
                    tried = Tried::default();
                    upgrade = self.config().nat.retry_direct;
                    continue;
                }
                Some(_) => {
                    // Relayed: try for better in the background.
                    self.wait_while_relayed(&peer, jittered(upgrade / 2, upgrade, &mut OsRng))
                        .await;
                    upgrade = (upgrade * 2).min(UPGRADE_WAIT_MAX);
                    if self
                        .live_link(&peer)
                        .is_some_and(|(_, _, k)| !k.is_relayed())
                    {
                        continue;
                    }
                    tried = Tried::default();
                }
                None => {}
            }
            let relayed = self.live_link(&peer).is_some();
            match self.traverse_round(&peer, &mut tried, attempt).await {
                Ok(step) => {
                    tracing::debug!(peer = %short, step, "traversal step done");
                    retry = RETRY_WAIT_MIN;
                }
                Err(e) => {
                    self.with_traversal(&peer, |t| {
                        if let Some(last) = &mut t.last {
                            last.1 = Some(format!("{e:#}"));
                        }
                    });
                    if relayed {
                        tracing::info!(peer = %short, "still relayed: {e:#}");
                    } else {
                        tracing::info!(peer = %short, "traversal: {e:#}");
                    }
                    if tried.dial_failed && tried.await_failed && tried.punch_failed {
                        tried = Tried::default();
                    }
                }
            }
            attempt += 1;
            if self.live_link(&peer).is_none() {
                tokio::time::sleep(jittered(retry / 2, retry, &mut OsRng)).await;
                retry = (retry * 2).min(RETRY_WAIT_MAX);
            }
        }
    }

    /// Waits until the NAT classification says something, or
    /// [`CLASSIFY_WAIT`].
    async fn wait_for_classification(&self) {
        let deadline = tokio::time::Instant::now() + CLASSIFY_WAIT;
        while self.nat_class().mapping == Mapping::Unknown && tokio::time::Instant::now() < deadline
        {
            let changed = self.changed.notified();
            let _ = tokio::time::timeout(Duration::from_millis(500), changed).await;
        }
    }

    /// Waits `wait`, or less if the link to `peer` stops being relayed.
    async fn wait_while_relayed(&self, peer: &[u8; 32], wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            match self.live_link(peer) {
                Some((_, _, k)) if k.is_relayed() => {}
                _ => return,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return;
            }
        }
    }

    /// Waits up to `wait` for a link to `peer` (a direct or punched one
    /// when the link is relayed now). Gives up early, for a new round, when
    /// the plan rests on stale facts: the peer's endpoints or NAT class are
    /// no longer those `planned` with, or this node's own endpoints are no
    /// longer those `sent` (a port mapping came, the NAT class changed).
    /// Only a change of content counts, not a repeat of the same message,
    /// so two sides waiting on each other never start rounds in turn.
    async fn wait_for_link(
        &self,
        peer: &[u8; 32],
        relayed_now: bool,
        wait: Duration,
        (planned, sent): (&Theirs, &[Endpoint]),
    ) -> Waited {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            match self.live_link(peer) {
                Some((_, _, k)) if !k.is_relayed() || !relayed_now => return Waited::Linked,
                _ => {}
            }
            let changed_theirs = self
                .theirs(peer)
                .is_some_and(|t| t.mapping != planned.mapping || t.endpoints != planned.endpoints);
            if changed_theirs || self.our_endpoints().1 != sent {
                return Waited::Replan;
            }
            let tick = tokio::time::Instant::now() + REPLAN_CHECK;
            if tokio::time::timeout_at(deadline.min(tick), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return Waited::TimedOut;
            }
        }
    }

    /// One round: endpoints both ways, then the step the plan names.
    /// Returns the step's name.
    async fn traverse_round(
        self: &Arc<Self>,
        peer: &[u8; 32],
        tried: &mut Tried,
        attempt: usize,
    ) -> Result<&'static str> {
        let relayed_now = self.live_link(peer).is_some();
        let sent_at = Instant::now();
        let msg = self.endpoints_message(peer, true);
        let sent: Vec<Endpoint> = match &msg {
            Traversal::Endpoints { endpoints, .. } => endpoints.clone(),
            _ => Vec::new(),
        };
        let route = self
            .send_traversal(peer, &msg, attempt)
            .await
            .map_err(|e| anyhow!("cannot send our endpoints: {e:#}"))?;
        self.with_traversal(peer, |t| t.last_sent = Some(sent_at));
        let theirs = self
            .wait_for_endpoints(peer, sent_at)
            .await
            .ok_or_else(|| anyhow!("no answer to our endpoints (sent over {})", route.as_str()))?;
        let (mapping, mine) = self.our_endpoints();
        let me_key = self.identity.public();
        let facts = (&theirs, sent.as_slice());
        let step = traversal::plan(
            &Side {
                key: &me_key,
                mapping,
                endpoints: &mine,
            },
            &Side {
                key: peer,
                mapping: theirs.mapping,
                endpoints: &theirs.endpoints,
            },
            *tried,
        );
        let name = match &step {
            Step::Dial(_) => "dial",
            Step::AwaitDial => "await dial",
            Step::Punch { .. } => "punch",
            Step::Relay { .. } => "relay",
        };
        self.with_traversal(peer, |t| t.last = Some((name.to_string(), None)));
        tracing::debug!(peer = %short_key(peer), ?step, "traversal plan");
        match step {
            Step::Dial(addrs) => {
                let endpoints: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                self.dial_found(peer, &endpoints).await.map_err(|e| {
                    tried.dial_failed = true;
                    anyhow!(
                        "dialing the endpoints it gave ({}): {e:#}",
                        endpoints.join(", ")
                    )
                })?;
            }
            Step::AwaitDial => match self
                .wait_for_link(peer, relayed_now, AWAIT_DIAL_WAIT, facts)
                .await
            {
                Waited::Linked => {}
                Waited::Replan => return Ok("replan"),
                Waited::TimedOut => {
                    tried.await_failed = true;
                    bail!("it did not dial our endpoints within {AWAIT_DIAL_WAIT:?}");
                }
            },
            Step::Punch {
                initiator: true,
                target,
            } => {
                self.punch_initiator(peer, target, attempt)
                    .await
                    .map_err(|e| {
                        tried.punch_failed = true;
                        anyhow!("hole punching to {target}: {e:#}")
                    })?;
            }
            Step::Punch {
                initiator: false, ..
            } => match self
                .wait_for_link(peer, relayed_now, FOLLOW_WAIT, facts)
                .await
            {
                Waited::Linked => {}
                Waited::Replan => return Ok("replan"),
                Waited::TimedOut => {
                    tried.punch_failed = true;
                    bail!(
                        "no punched link: the partner leads the punch, and none came within {FOLLOW_WAIT:?}"
                    );
                }
            },
            Step::Relay { .. } if relayed_now => return Ok("stay relayed"),
            Step::Relay { initiator } => {
                if !initiator {
                    match self.wait_for_link(peer, false, FOLLOW_WAIT, facts).await {
                        Waited::Linked => return Ok(name),
                        Waited::Replan => return Ok("replan"),
                        // The partner did not open one: open it from here.
                        Waited::TimedOut => {}
                    }
                }
                self.relay_through_shared(peer).await?;
            }
        }
        Ok(name)
    }

    /// Waits for endpoints from `peer` newer than `since`.
    async fn wait_for_endpoints(&self, peer: &[u8; 32], since: Instant) -> Option<Theirs> {
        let deadline = tokio::time::Instant::now() + ENDPOINTS_WAIT;
        loop {
            let changed = self.changed.notified();
            if let Some(t) = self.theirs(peer).filter(|t| t.at >= since) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Opens a relayed link to `peer` through the first shared partner that
    /// takes it, or over a circuit when no partner is shared.
    async fn relay_through_shared(self: &Arc<Self>, peer: &[u8; 32]) -> Result<()> {
        let shared = self.shared_partners(peer).await;
        if shared.is_empty() {
            tracing::info!(peer = %short_key(peer), "no partner with live links to both: relaying the link over a circuit");
            return tokio::time::timeout(super::relay::RELAY_OPEN_TIMEOUT, self.open_tunnel(peer))
                .await
                .unwrap_or_else(|_| bail!("a link over a circuit: timed out"));
        }
        let mut errors = Vec::new();
        for via in shared {
            match tokio::time::timeout(
                super::relay::RELAY_OPEN_TIMEOUT,
                self.open_relay(peer, &via),
            )
            .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(_) => errors.push(format!("relay {}: timed out", short_key(&via))),
            }
        }
        bail!("no relay took the link: {}", errors.join("; "))
    }

    /// `umbra peers`' traversal fields for `peer`.
    pub(super) fn traversal_json(&self, peer: &[u8; 32]) -> Value {
        let t = self.traversal();
        let Some(t) = t.get(peer) else {
            return Value::Null;
        };
        json!({
            "endpoints": t.theirs.as_ref().map(|th| th.endpoints.iter().map(|e| json!({"kind": e.kind.as_str(), "addr": e.addr.to_string()})).collect::<Vec<_>>()),
            "mapping": t.theirs.as_ref().map(|th| th.mapping.as_str()),
            "last_step": t.last.as_ref().map(|l| l.0.clone()),
            "last_error": t.last.as_ref().and_then(|l| l.1.clone()),
        })
    }
}

impl Links {
    /// Keeps `endpoints` as `peer`'s latest (from an invite acceptance).
    pub(super) fn remember_endpoints(&self, peer: &[u8; 32], endpoints: Vec<Endpoint>) {
        self.with_traversal(peer, |t| {
            t.theirs = Some(Theirs {
                seq: 0,
                mapping: Mapping::Unknown,
                endpoints,
                relays: Vec::new(),
                at: Instant::now(),
            });
        });
    }
}
