//! Links in the daemon: everything about links that the daemon's tasks
//! share, behind one handle, [`Links`]. Each job has its file:
//! - `listen`: the listeners;
//! - `authorize`: the listener's decision on a link request, from agreements;
//! - `peers`: the peer table behind `umbra peers`, and each link's reader;
//! - `dial`: the dialers, with backoff;
//! - `agreements`: invite, accept, list and revoke agreements;
//! - `edges`: the edges, policy and graph cache the datapath asks for;
//! - `padding`: link padding for `anonymity = "strong"`;
//! - `ledger`: the ledgers' terms and records, the cell ceiling per
//!   neighbour, and what is charged besides cells;
//! - `traverse`: NAT traversal for partners without an endpoint, and better
//!   links for relayed ones;
//! - `signal`: the routes traversal messages take to a partner;
//! - `punch`: hole punching;
//! - `relay`: relayed links, as an end and as the relay;
//! - `tunnel`: relayed links over a circuit, when no partner is shared;
//! - `proposals`: agreements proposed over the overlay, both ways, and
//!   `proposal_gate` the receiver's rules and rates, without I/O.

mod agreements;
mod authorize;
mod dial;
mod edges;
mod ledger;
mod listen;
mod padding;
mod peers;
mod proposal_gate;
mod proposals;
mod punch;
mod relay;
mod signal;
mod traverse;
mod tunnel;

pub(crate) use agreements::INVITE_TTL_MAX;
pub(crate) use edges::Policy;
pub(crate) use peers::LinkKind;
pub(crate) use proposals::{PROPOSAL_TTL_DEFAULT, PROPOSAL_TTL_MAX, PROPOSE_WAIT};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::sync::Notify;
use umbra_config::Config;
use umbra_routing::Identity;
use umbra_transport::io::{Dialer, LinkListener, LinkSettings};
use umbra_transport::proto::handshake::LinkResponder;

use crate::db::Store;
use crate::events::DatapathTx;
use crate::metrics::{LinkStates, Metrics};
use crate::portmap::PortMapStatus;
use peers::PeerEntry;

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
    /// The last link id given out; each adopted link takes the next.
    last_link_id: AtomicU64,
    datapath: DatapathTx,
    metrics: Arc<Metrics>,
    /// The listener's TLS, cover and authorizer, also for connections that
    /// do not come from a listening socket (punched and relayed links).
    listener: Mutex<Option<Arc<LinkListener>>>,
    /// The port mapping at the gateway, once port mapping runs.
    port_mapping: Mutex<Option<PortMapStatus>>,
    /// Relayed streams, as an end and as the relay.
    relay: Mutex<relay::RelayTable>,
    /// Relayed links over circuits.
    tunnels: Mutex<tunnel::Tunnels>,
    /// NAT traversal state per partner.
    traversal: Mutex<HashMap<[u8; 32], traverse::PeerTraversal>>,
    /// What traversal signalling counts.
    signal: signal::SignalCounters,
    /// Opens envelopes sealed to this node, with their own replay cache.
    envelopes: Mutex<LinkResponder>,
    /// Relayed-link bytes and padding to charge to ledgers.
    charges: Mutex<ledger::PendingCharges>,
    /// Padding each agreement's quota pays for now, bytes/s (until the
    /// first ledger figures: the terms' average rate).
    padding_caps: Mutex<HashMap<[u8; 32], u32>>,
    /// Proposals: the receiver's rates and ids seen, and the counts.
    proposals: Mutex<proposal_gate::Gate>,
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
        datapath: DatapathTx,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Links>> {
        let dialer =
            Dialer::new(identity.clone(), LinkSettings::default()).context("TLS client setup")?;
        Ok(Arc::new(Links {
            prefix: config.address_prefix,
            identity: identity.clone(),
            store: Mutex::new(store),
            config: Mutex::new(config),
            peers: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            dialer,
            listeners: Mutex::new(Vec::new()),
            last_link_id: AtomicU64::new(0),
            datapath,
            metrics,
            listener: Mutex::new(None),
            port_mapping: Mutex::new(None),
            relay: Mutex::new(relay::RelayTable::default()),
            tunnels: Mutex::new(tunnel::Tunnels::default()),
            traversal: Mutex::new(HashMap::new()),
            signal: signal::SignalCounters::default(),
            envelopes: Mutex::new(LinkResponder::new(identity.clone())),
            charges: Mutex::new(ledger::PendingCharges::default()),
            padding_caps: Mutex::new(HashMap::new()),
            proposals: Mutex::new(proposal_gate::Gate::new()),
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

    /// New config on SIGHUP: new `[[peer]]` entries get dialers, live
    /// links follow a changed `anonymity` or `[padding] rate`, and the
    /// datapath takes the new edges and path policy (`anonymity`, `[home]`,
    /// `[[route]]`) for circuits built from now on.
    pub(crate) fn set_config(self: &Arc<Self>, config: Config) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.spawn_dialers();
        self.refresh_padding();
        let (datapath, edges) = (self.datapath.clone(), self.edges());
        tokio::spawn(async move {
            let _ = datapath.send(crate::events::Input::Edges(edges)).await;
        });
    }

    /// `(up, total)` for `umbra status`.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let up = peers.values().filter(|e| e.is_up()).count();
        (up, peers.len())
    }

    /// The metrics the links count into.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Peers by link state and kind, for `umbra_links`: up, connecting (a
    /// dialer is trying) and down; direct, punched and relayed. Every
    /// combination is present, zeros included.
    pub(crate) fn link_states(&self) -> LinkStates {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: LinkStates = Vec::new();
        for state in ["up", "connecting", "down"] {
            for kind in ["direct", "punched", "relayed"] {
                let n = peers
                    .values()
                    .filter(|e| e.state() == state && e.kind.as_str() == kind)
                    .count();
                states.push(((state, kind), n as u64));
            }
        }
        states
    }

    /// The listener, for punched and relayed connections.
    fn link_listener(&self) -> Option<Arc<LinkListener>> {
        self.listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Port mapping runs; its status tells partners the mapped endpoint.
    pub(crate) fn set_port_mapping(&self, status: PortMapStatus) {
        *self.port_mapping.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// The endpoint the gateway forwards to the listener, if one is held.
    fn mapped_endpoint(&self) -> Option<SocketAddr> {
        self.port_mapping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(PortMapStatus::external)
    }

    /// `status`'s `listener`: connections accepted, those that are not
    /// links now, and what the limits on them and the TLS handshake
    /// turned away (docs/threat-model.md).
    pub(crate) fn listener_json(&self) -> serde_json::Value {
        match self.link_listener() {
            None => serde_json::Value::Null,
            Some(l) => {
                let s = l.stats();
                serde_json::json!({
                    "connections": s.connections,
                    "unauthenticated": s.unauthenticated,
                    "refused_per_source": s.refused_per_source,
                    "accept_paused": s.accept_paused,
                    "tls_failures": s.tls_failures,
                    "links_accepted": s.links_accepted,
                })
            }
        }
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

/// The wall clock in unix seconds, as the state database keeps time.
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first 8 hex digits of a key, for logs.
pub(crate) fn short_key(k: &[u8; 32]) -> String {
    hex::encode(&k[..4])
}
