//! Links in the daemon: the listeners, the dialers with backoff, the
//! authorizer that decides from agreements, link padding for
//! `anonymity = "strong"`, and the table behind `umbra peers` (DESIGN.md
//! §4, §5, §9, §10).
//!
//! **Padding, paid from the agreement.** A strong node pads its side of
//! every link at `[padding] rate`, capped by that link's agreement (its
//! terms' average rate, [`Terms::average_bytes_per_sec`]), and asks the peer
//! with [`CONTROL_PADDING`] to pad toward it at the same rate. The peer pads
//! at the asked rate, capped the same way, whatever its own `anonymity`.
//! Until ledgers exist (DESIGN.md §10) this cap is how "padding paid from
//! unused agreement quota" is approximated: padding never goes above the
//! rate the agreement allows on average, but it is not yet counted against
//! what real traffic left unused in the period.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rand_core::OsRng;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use umbra_config::{Config, Terms};
use umbra_routing::graph::Edge;
use umbra_routing::path::Anonymity;
use umbra_routing::{Identity, address};
use umbra_transport::io::{
    self as tio, CertSource, CoverSite, DialTarget, Dialer, Direction, IncomingLinkInfo, Link,
    LinkListener, LinkSettings, ListenerConfig, TlsSettings,
};
use umbra_transport::proto::frame::{Frame, jittered};
use umbra_transport::proto::invite::Invite;

use crate::agreement::{self, Ask, LinkAsk};
use crate::db::{AgreementState, InviteRefusal, Origin, Store};
use crate::router::{Input, RouterTx};

/// First wait before redialing a peer.
const REDIAL_MIN: Duration = Duration::from_secs(1);
/// Longest wait between redials.
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// A link that lived this long resets the backoff.
const LINK_STABLE_AFTER: Duration = Duration::from_secs(30);
/// LinkControl message: the sender revoked the agreement.
const CONTROL_REVOKE: &[u8] = b"revoke";
/// LinkControl message: "pad toward me at this rate", followed by the rate
/// as a big-endian `u32`, bytes of cell frames per second; 0 stops. Any
/// other length after the tag is malformed: ignored, counted and logged.
const CONTROL_PADDING: &[u8] = b"padding";

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One row of `umbra peers`.
#[derive(Debug)]
struct PeerEntry {
    /// The live link's sender, if up.
    sender: Option<tio::LinkSender>,
    /// Bumped per link so a stale reader does not mark a newer link down.
    generation: u64,
    direction: Option<Direction>,
    remote: Option<SocketAddr>,
    observed: Option<SocketAddr>,
    up_since: Option<Instant>,
    /// Frame bytes received from this peer, counted by its link readers
    /// without taking the table's lock.
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    dialing: bool,
    /// The padding rate the peer asked for on the current link, bytes/s.
    padding_asked: u32,
    /// The padding rate this node asked the peer for on the current link.
    padding_requested: u32,
    /// Padding requests from the peer that did not parse.
    padding_malformed: u64,
}

/// Everything about links that the daemon's tasks share.
pub(crate) struct Links {
    identity: Identity,
    prefix: u8,
    store: Mutex<Store>,
    config: Mutex<Config>,
    peers: Mutex<HashMap<[u8; 32], PeerEntry>>,
    /// Woken when any link goes down, so dialers retry.
    changed: Notify,
    dialer: Dialer,
    listeners: Mutex<Vec<SocketAddr>>,
    generation: AtomicU64,
    router: RouterTx,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    pub(crate) fn new(
        identity: Identity,
        config: Config,
        store: Store,
        router: RouterTx,
    ) -> Result<Arc<Links>> {
        let dialer =
            Dialer::new(identity.clone(), LinkSettings::default()).context("TLS client setup")?;
        Ok(Arc::new(Links {
            prefix: config.address_prefix,
            identity,
            store: Mutex::new(store),
            config: Mutex::new(config),
            peers: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            dialer,
            listeners: Mutex::new(Vec::new()),
            generation: Default::default(),
            router,
        }))
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// New config on SIGHUP: new `[[peer]]` entries get dialers, and live
    /// links follow a changed `anonymity` or `[padding] rate`.
    pub(crate) fn set_config(self: &Arc<Self>, config: Config) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.spawn_dialers();
        self.refresh_padding();
    }

    /// The padding rate this node wants on every link: `[padding] rate`
    /// with `anonymity = "strong"`, else 0.
    fn padding_wanted(&self) -> u32 {
        let config = self.config();
        if config.anonymity == umbra_config::Anonymity::Strong {
            config.padding.rate.bytes_per_sec
        } else {
            0
        }
    }

    /// The most padding the agreement with `peer` pays for, in bytes/s each
    /// way: its terms' average rate.
    fn padding_cap(&self, peer: &[u8; 32]) -> u32 {
        let rate = self.terms_for(peer).average_bytes_per_sec();
        u32::try_from(rate).unwrap_or(u32::MAX)
    }

    /// What to pad at toward `peer`, and what to ask it for: this node's
    /// own rate and the rate the peer asked for, each capped by the
    /// agreement.
    fn padding_rates(&self, peer: &[u8; 32], asked: u32) -> (u32, u32) {
        padding_rates(self.padding_wanted(), asked, self.padding_cap(peer))
    }

    /// Applies the current config's padding to every live link (SIGHUP).
    fn refresh_padding(&self) {
        let live: Vec<([u8; 32], tio::LinkSender, u32, u32)> = {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .filter_map(|(k, e)| {
                    let s = e.sender.as_ref().filter(|s| !s.is_closed())?;
                    Some((*k, s.clone(), e.padding_asked, e.padding_requested))
                })
                .collect()
        };
        for (peer, sender, asked, requested) in live {
            let (out, request) = self.padding_rates(&peer, asked);
            sender.set_padding(out);
            if request != requested {
                match sender.try_send(padding_request(request)) {
                    Ok(true) => {
                        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(e) = peers.get_mut(&peer) {
                            e.padding_requested = request;
                        }
                    }
                    _ => {
                        tracing::warn!(peer = %short_key(&peer), "could not send the new padding request; it goes out when the link next comes up")
                    }
                }
            }
        }
    }

    /// Binds every `[listen] https` address and serves it.
    pub(crate) async fn start_listeners(
        self: &Arc<Self>,
        links_tx: mpsc::Sender<Link>,
    ) -> Result<()> {
        let config = self.config();
        if config.listen.https.is_empty() {
            return Ok(());
        }
        let cert = match (&config.listen.cert, &config.listen.key) {
            _ if config.listen.acme => CertSource::Acme(tio::AcmeSettings {
                directory: config.listen.acme_directory.clone(),
                contact: config
                    .listen
                    .acme_email
                    .iter()
                    .map(|e| format!("mailto:{e}"))
                    .collect(),
                ca_roots: config.listen.acme_ca.clone(),
                state_dir: config.state_dir.clone(),
            }),
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertSource::SelfSigned {
                dir: config.state_dir.clone(),
            },
        };
        let tls = tio::server_tls_config(&TlsSettings {
            cert,
            server_name: config.listen.server_name.clone(),
            allow_tls12_for_cover: false,
        })
        .context("TLS setup")?;
        let cover = if let Some(root) = &config.cover.root {
            CoverSite::directory(root)?
        } else if let Some(up) = &config.cover.upstream {
            CoverSite::upstream(up)?
        } else {
            let name = if config.listen.server_name.is_empty() {
                tio::DEFAULT_SERVER_NAME.to_string()
            } else {
                config.listen.server_name.clone()
            };
            let modified = std::fs::metadata(config.identity_path())
                .and_then(|m| m.modified())
                .unwrap_or(UNIX_EPOCH);
            CoverSite::built_in(&name, modified)
        };
        let me = Arc::clone(self);
        let listener = Arc::new(LinkListener::new(ListenerConfig {
            identity: self.identity.clone(),
            tls,
            cover,
            authorizer: Arc::new(move |info: &IncomingLinkInfo<'_>| me.authorize(info)),
            link: LinkSettings::default(),
        }));
        for addr in &config.listen.https {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let local = tcp.local_addr()?;
            tracing::info!(%local, "link listener up");
            self.listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(local);
            tokio::spawn(tio::serve(tcp, Arc::clone(&listener), links_tx.clone()));
        }
        Ok(())
    }

    /// Decides on an authenticated link request. `None` refuses, and the
    /// dialer sees the cover site.
    fn authorize(&self, info: &IncomingLinkInfo<'_>) -> Option<Vec<u8>> {
        let peer = info.peer;
        let short = short_key(&peer);
        let Some(ask) = LinkAsk::decode(info.app_payload) else {
            tracing::info!(peer = %short, "refused a link: malformed request payload");
            return None;
        };
        if !agreement::verify(&peer, &self.identity.public(), ask.terms, &ask.signature) {
            tracing::info!(peer = %short, "refused a link: bad agreement signature");
            return None;
        }
        let now = now_unix();
        let store = self.store();
        let result = match ask.ask {
            Ask::Invite(secret) => match store.use_invite(&secret, &peer, now) {
                Ok(Ok(terms)) if terms == ask.terms => store
                    .upsert_active(&peer, terms, &[], Origin::Invite, now, Some(&ask.signature))
                    .map(|_| true),
                Ok(Ok(terms)) => {
                    tracing::info!(peer = %short, %terms, asked = %ask.terms, "refused an invite: terms differ");
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
                    if p.terms == ask.terms {
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
                        tracing::warn!(peer = %short, ours = %p.terms, theirs = %ask.terms, "refused a link: [[peer]] terms differ");
                        Ok(false)
                    }
                } else {
                    match store.agreement_with(&peer) {
                        Ok(Some(a))
                            if a.state == AgreementState::Active && a.terms == ask.terms =>
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
            Ok(true) => Some(agreement::sign(&self.identity, &peer, ask.terms).to_vec()),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(peer = %short, "refused a link: state database: {e:#}");
                None
            }
        }
    }

    /// Takes a new link (from a listener or a dialer) into the table,
    /// keeping one link per peer, and runs its reader.
    pub(crate) fn adopt(self: &Arc<Self>, link: Link) {
        let peer = link.peer;
        let me = self.identity.public();
        // Both sides keep the link dialed by the lower key, so two nodes
        // dialing each other at once end with the same single link.
        let dialer_of = |d: Direction| if d == Direction::Outbound { me } else { peer };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes_in = {
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            let entry = peers.entry(peer).or_insert_with(PeerEntry::new);
            if let (Some(old), Some(d)) = (&entry.sender, entry.direction)
                && !old.is_closed()
                && dialer_of(d) < dialer_of(link.direction)
            {
                tracing::debug!(peer = %short_key(&peer), "dropping a duplicate link");
                return;
            }
            entry.sender = Some(link.sender.clone());
            entry.generation = generation;
            entry.direction = Some(link.direction);
            entry.remote = Some(link.remote);
            entry.observed = link.observed;
            entry.up_since = Some(Instant::now());
            entry.padding_asked = 0;
            entry.padding_requested = 0;
            entry.bytes_in.clone()
        };
        tracing::info!(
            peer = %short_key(&peer),
            remote = %link.remote,
            direction = ?link.direction,
            observed = ?link.observed,
            "link up"
        );
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.start_padding(&link, generation).await;
            let up = Input::LinkUp {
                link: generation,
                peer,
                sender: link.sender.clone(),
            };
            if me.router.send(up).await.is_ok() {
                Arc::clone(&me).read_link(link, generation, bytes_in).await;
                let _ = me.router.send(Input::LinkDown { link: generation }).await;
            }
        });
    }

    /// On link up: pads this side at this node's own rate and, if that is
    /// not zero, asks the peer to pad toward it at the same rate.
    async fn start_padding(&self, link: &Link, generation: u64) {
        let (out, request) = self.padding_rates(&link.peer, 0);
        link.sender.set_padding(out);
        if request == 0 {
            return;
        }
        tracing::info!(peer = %short_key(&link.peer), rate = request, "padding the link, and asking the peer to pad back (bytes/s)");
        if link.sender.send(padding_request(request)).await.is_ok() {
            self.with_entry(&link.peer, generation, |e| e.padding_requested = request);
        }
    }

    /// The peer asked for padding toward it (`body` is what followed
    /// [`CONTROL_PADDING`]).
    fn on_padding_request(&self, link: &Link, generation: u64, body: &[u8]) {
        let peer = link.peer;
        let Some(rate) = parse_padding_request(body) else {
            let count = self
                .with_entry(&peer, generation, |e| {
                    e.padding_malformed += 1;
                    e.padding_malformed
                })
                .unwrap_or(1);
            // The first from this peer is worth a warning; the rest are counted.
            if count == 1 {
                tracing::warn!(peer = %short_key(&peer), len = body.len(), "ignoring a malformed padding request");
            } else {
                tracing::debug!(peer = %short_key(&peer), len = body.len(), count, "ignoring a malformed padding request");
            }
            return;
        };
        self.with_entry(&peer, generation, |e| e.padding_asked = rate);
        let (out, _) = self.padding_rates(&peer, rate);
        link.sender.set_padding(out);
        tracing::info!(peer = %short_key(&peer), asked = rate, rate = out, "the peer asked for padding (bytes/s)");
    }

    async fn read_link(self: Arc<Self>, mut link: Link, generation: u64, bytes_in: Arc<AtomicU64>) {
        let peer = link.peer;
        let reason = loop {
            match link.receiver.recv().await {
                Ok(frame) => {
                    bytes_in.fetch_add(frame.payload().len() as u64 + 3, Ordering::Relaxed);
                    if let Frame::LinkControl(body) = &frame
                        && &body[..] == CONTROL_REVOKE
                    {
                        match self.store().revoke_peer(&peer) {
                            Ok(_) => {
                                tracing::warn!(peer = %short_key(&peer), "the peer revoked our agreement")
                            }
                            Err(e) => tracing::error!("recording a revocation: {e:#}"),
                        }
                        let _ = self.router.send(Input::Edges(self.edges())).await;
                        break "the peer revoked the agreement".to_string();
                    }
                    if let Frame::LinkControl(body) = &frame
                        && let Some(rest) = body.strip_prefix(CONTROL_PADDING)
                    {
                        self.on_padding_request(&link, generation, rest);
                        continue;
                    }
                    let input = match frame {
                        Frame::Cell(cell) => Input::Cell {
                            link: generation,
                            cell,
                        },
                        Frame::GraphRecord(bytes) => Input::Graph {
                            link: generation,
                            bytes,
                        },
                        _ => continue,
                    };
                    if self.router.send(input).await.is_err() {
                        break "the node is stopping".to_string();
                    }
                }
                Err(e) => break e.to_string(),
            }
        };
        let current = self.with_entry(&peer, generation, |e| {
            e.sender = None;
            e.up_since = None;
        });
        if current.is_some() {
            tracing::info!(peer = %short_key(&peer), %reason, "link down");
            self.changed.notify_waiters();
        }
    }

    /// Runs `f` on the peer's entry if `generation` is still its link.
    fn with_entry<T>(
        &self,
        peer: &[u8; 32],
        generation: u64,
        f: impl FnOnce(&mut PeerEntry) -> T,
    ) -> Option<T> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .get_mut(peer)
            .filter(|e| e.generation == generation)
            .map(f)
    }

    fn is_up(&self, peer: &[u8; 32]) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .get(peer)
            .and_then(|e| e.sender.as_ref())
            .is_some_and(|s| !s.is_closed())
    }

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

    /// The terms we would offer `peer` for an existing agreement.
    fn terms_for(&self, peer: &[u8; 32]) -> Terms {
        if let Some(p) = self.config().peers.iter().find(|p| p.key.0 == *peer) {
            return p.terms;
        }
        match self.store().agreement_with(peer) {
            Ok(Some(a)) => a.terms,
            _ => Terms::default(),
        }
    }

    /// Dials `peer` at each endpoint in order until one links, and stores
    /// the agreement with the peer's signature.
    async fn dial_with(
        self: &Arc<Self>,
        peer: &[u8; 32],
        endpoints: &[String],
        ask: Ask,
        terms: Terms,
        origin: Origin,
    ) -> Result<()> {
        let payload = LinkAsk {
            ask,
            terms,
            signature: agreement::sign(&self.identity, peer, terms),
        }
        .encode();
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
                        bail!("{endpoint}: the peer's agreement signature does not verify");
                    }
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
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(e.into()),
            None => bail!("no endpoint to dial"),
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
            let _ = s
                .send(Frame::LinkControl(CONTROL_REVOKE.to_vec().into()))
                .await;
        }
        self.changed.notify_waiters();
        let _ = self.router.send(Input::Edges(self.edges())).await;
        let in_config = self.config().peers.iter().any(|p| p.key.0 == a.peer_key);
        let mut v = self.agreement_json(&a);
        if in_config {
            v["note"] = json!(
                "this peer is also a [[peer]] in the config; remove it there too, or it links again"
            );
        }
        Ok(v)
    }

    pub(crate) fn agreements_json(&self) -> Result<Value> {
        let list = self.store().agreements()?;
        Ok(Value::Array(
            list.iter().map(|a| self.agreement_json(a)).collect(),
        ))
    }

    fn agreement_json(&self, a: &crate::db::Agreement) -> Value {
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
            // Ledgers come with traffic accounting (DESIGN.md §10).
            "ledger": Value::Null,
        })
    }

    /// `umbra peers`: one row per peer we link or try to link with.
    pub(crate) fn peers_json(&self) -> Value {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<Value> = peers
            .iter()
            .map(|(key, e)| {
                let up = e.sender.as_ref().is_some_and(|s| !s.is_closed());
                let state = if up { "up" } else if e.dialing { "connecting" } else { "down" };
                let padding = e.sender.as_ref().filter(|_| up).map(|s| s.padding());
                json!({
                    "key": hex::encode(key),
                    "address": address::address_for_key(key, self.prefix).to_string(),
                    "state": state,
                    "kind": "direct",
                    "direction": e.direction.map(|d| if d == Direction::Outbound { "outbound" } else { "inbound" }),
                    "endpoint": e.remote.map(|a| a.to_string()),
                    "observed": e.observed.map(|a| a.to_string()),
                    "rtt_ms": Value::Null,
                    "bytes_in": e.bytes_in.load(Ordering::Relaxed),
                    "bytes_out": e.bytes_out,
                    "up_secs": e.up_since.map(|t| t.elapsed().as_secs()),
                    // Link padding (anonymity = "strong"): the rate this side
                    // pads at and the rate the peer asked for, in bytes/s, and
                    // padding frames (1203 bytes each) sent and received.
                    "padding_rate_out": padding.map(|p| p.rate_out),
                    "padding_rate_asked": up.then_some(e.padding_asked),
                    "padding_out": padding.map(|p| p.frames_out),
                    "padding_in": padding.map(|p| p.frames_in),
                    "padding_malformed": e.padding_malformed,
                })
            })
            .collect();
        rows.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
        Value::Array(rows)
    }

    /// This node's agreement edges for its graph record: `[[peer]]` entries
    /// and stored active agreements. An edge counts in the graph only once
    /// the peer lists this node too.
    pub(crate) fn edges(&self) -> Vec<Edge> {
        let mut edges: Vec<Edge> = self
            .config()
            .peers
            .iter()
            .map(|p| edge(p.key.0, p.terms))
            .collect();
        match self.store().agreements() {
            Ok(list) => edges.extend(
                list.iter()
                    .filter(|a| a.state == AgreementState::Active)
                    .map(|a| edge(a.peer_key, a.terms)),
            ),
            Err(e) => tracing::error!("reading agreements: {e:#}"),
        }
        edges.sort_unstable_by_key(|e| e.peer);
        edges.dedup_by_key(|e| e.peer);
        edges.truncate(umbra_routing::graph::MAX_EDGES);
        edges
    }

    /// The anonymity setting and the home node: `[home] key`, or else the
    /// first agreement made (DESIGN.md §9).
    pub(crate) fn policy(&self) -> (Anonymity, Option<[u8; 32]>) {
        let config = self.config();
        let anonymity = match config.anonymity {
            umbra_config::Anonymity::Fast => Anonymity::Fast,
            umbra_config::Anonymity::Balanced => Anonymity::Balanced,
            umbra_config::Anonymity::Strong => Anonymity::Strong,
        };
        let home = config.home.key.map(|k| k.0).or_else(|| {
            let list = self.store().agreements().ok()?;
            list.iter()
                .filter(|a| a.state == AgreementState::Active)
                .min_by_key(|a| (a.created_unix, a.id))
                .map(|a| a.peer_key)
        });
        (anonymity, home)
    }

    /// The saved graph, if any.
    pub(crate) fn load_graph(&self) -> Option<Vec<u8>> {
        self.store().load_graph().unwrap_or_else(|e| {
            tracing::warn!("reading the graph cache: {e:#}");
            None
        })
    }

    /// Saves the graph.
    pub(crate) fn save_graph(&self, records: &[u8]) {
        if let Err(e) = self.store().save_graph(records, now_unix()) {
            tracing::warn!("saving the graph cache: {e:#}");
        }
    }

    /// `(up, total)` for `umbra status`.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let up = peers
            .values()
            .filter(|e| e.sender.as_ref().is_some_and(|s| !s.is_closed()))
            .count();
        (up, peers.len())
    }

    pub(crate) fn listeners(&self) -> Vec<String> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|a| a.to_string())
            .collect()
    }
}

impl PeerEntry {
    fn new() -> PeerEntry {
        PeerEntry {
            sender: None,
            generation: 0,
            direction: None,
            remote: None,
            observed: None,
            up_since: None,
            bytes_in: Arc::default(),
            bytes_out: 0,
            dialing: false,
            padding_asked: 0,
            padding_requested: 0,
            padding_malformed: 0,
        }
    }
}

/// An agreement edge; its capacity class is log2 of the terms' bytes per
/// second (so 50GiB/30d, about 20 KiB/s, is class 14).
fn edge(peer: [u8; 32], terms: Terms) -> Edge {
    let per_sec = terms.bytes_per_period / terms.period_secs.max(1);
    Edge {
        peer,
        capacity: (u64::BITS - per_sec.leading_zeros()).saturating_sub(1) as u8,
    }
}

/// `(pad at, ask the peer for)` on one link, in bytes/s: this node's own
/// rate (`wanted`, 0 unless strong) and the rate the peer `asked` for, each
/// capped by what the agreement pays for (`cap`). Both sides pad at the
/// higher of the two, so a strong node's link is padded both ways.
fn padding_rates(wanted: u32, asked: u32, cap: u32) -> (u32, u32) {
    let own = wanted.min(cap);
    (own.max(asked.min(cap)), own)
}

/// A [`CONTROL_PADDING`] message asking for `bytes_per_sec`.
fn padding_request(bytes_per_sec: u32) -> Frame {
    let mut body = CONTROL_PADDING.to_vec();
    body.extend_from_slice(&bytes_per_sec.to_be_bytes());
    Frame::LinkControl(body.into())
}

/// The rate in a [`CONTROL_PADDING`] message, given what followed the tag;
/// `None` if it is not exactly a `u32`.
fn parse_padding_request(rest: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(rest).ok().map(u32::from_be_bytes)
}

/// The first 8 hex digits of a key, for logs.
pub(crate) fn short_key(k: &[u8; 32]) -> String {
    hex::encode(&k[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_requests_round_trip_and_bad_lengths_are_refused() {
        for rate in [0, 1, 32 * 1024, u32::MAX] {
            let Frame::LinkControl(body) = padding_request(rate) else {
                panic!("not a LinkControl frame");
            };
            let rest = body.strip_prefix(CONTROL_PADDING).expect("tag");
            assert_eq!(parse_padding_request(rest), Some(rate));
        }
        for bad in [&b""[..], b"\x00", b"\x00\x00\x80", b"\x00\x00\x80\x00\x00"] {
            assert_eq!(parse_padding_request(bad), None, "{bad:?}");
        }
        // The revoke message is not a padding request.
        assert!(CONTROL_REVOKE.strip_prefix(CONTROL_PADDING).is_none());
    }

    #[test]
    fn padding_is_the_higher_wish_capped_by_the_agreement() {
        const K64: u32 = 64 * 1024;
        let cap = |terms: &str| {
            let t: Terms = terms.parse().expect("terms");
            u32::try_from(t.average_bytes_per_sec()).unwrap_or(u32::MAX)
        };
        let (big, small) = (cap("1TB/30d"), cap("50GiB/30d"));
        assert_eq!((big, small), (385_802, 20_712));
        // A strong node with room in the agreement pads and asks at its rate.
        assert_eq!(padding_rates(K64, 0, big), (K64, K64));
        // The default terms pay for about 20 KiB/s: both are capped there.
        assert_eq!(padding_rates(K64, 0, small), (small, small));
        // A balanced node pads only as asked, capped by the agreement.
        assert_eq!(padding_rates(0, K64, big), (K64, 0));
        assert_eq!(padding_rates(0, u32::MAX, small), (small, 0));
        // Two strong nodes pad at the higher rate; 0 asks for nothing.
        assert_eq!(padding_rates(K64, 2 * K64, big), (2 * K64, K64));
        assert_eq!(padding_rates(0, 0, big), (0, 0));
    }
}
