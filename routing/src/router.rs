//! The router: one node's whole routing layer as one sans-IO state machine.
//!
//! [`RouterCore`] joins the [`GraphCore`] (which nodes and agreement edges
//! exist) and the [`CircuitCore`] (onion circuits) and adds what neither
//! knows: which node an IPv6 address belongs to, which circuit carries
//! packets to it, when to build one and over which path, and what to tell
//! the app when no path exists (ICMPv6 destination unreachable).
//!
//! The daemon drives it as it drives its parts: it passes link events, cells,
//! graph messages and packets read from the TUN, with the time; it takes back
//! cells and graph messages for links (`poll_cell`, `poll_graph`), packets
//! for the TUN (`poll_packet`) and the next wake-up (`poll_timeout`).
//!
//! # Which circuit carries a packet
//!
//! Packets belong to flows (addresses, protocol and ports; both directions
//! are one flow). A flow stays on the circuit it started on until that
//! circuit ends: a flow that arrived on a circuit another node built is
//! answered on it (so a reply does not wait for a build, and the node that
//! started the flow pays for it, docs/architecture.md, "Ledgers"). A flow
//! this node starts takes its current circuit to the node (built or
//! building: packets queue while it builds), else a new circuit along a
//! path from [`crate::path::choose`]; never one another node built. Circuits rotate: a
//! current circuit older than its random 10–20 minutes is replaced for new
//! flows, and closed once its last flow has been idle [`FLOW_IDLE`].
//!
//! # Circuits built ahead
//!
//! - **The pool.** With a balanced or strong setting the router keeps
//!   [`POOL_SIZE`] *prefixes* built: the home node and a random walk
//!   ([`path::choose_prefix`]), the part of a path that does not depend on
//!   the destination. A new destination takes one and extends it
//!   ([`path::complete`], [`CircuitCore::extend_prefix`]), so it waits only
//!   for the hops after the walk. A prefix is used for one destination only,
//!   and one unused for [`PREFIX_MAX_AGE`] is closed and replaced.
//! - **Successors.** A destination with traffic in the last [`FLOW_IDLE`]
//!   gets its next circuit built [`ROTATE_LEAD`] before its current one
//!   rotates; new flows move to it once it is built, so rotation never makes
//!   a flow wait.
//!
//! # Messages
//!
//! [`RouterCore::send_message`] sends an opaque payload to a node by its key,
//! inside the end-to-end session, over the circuit a new flow to that node
//! would take; [`RouterCore::poll_message`] gives back what arrived, with the
//! sender's key as the session authenticated it (`docs/protocol.md,
//! "Sessions"`). Relays see cells like any other. The daemon uses them for
//! what two nodes must tell each other and no third node may learn.
//!
//! When a build fails, the edge and node it could not pass are avoided for
//! [`AVOID_FOR`] and a new circuit is built at once if the destination had
//! traffic. With no path for the setting the app gets ICMPv6 unreachable,
//! and for [`RETRY_AFTER`] packets to that node are answered so at once.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::address;
use crate::cell::{CELL_LEN, Reason};
use crate::circuit::{
    CircuitConfig, CircuitCore, CircuitEvent, CircuitId, CircuitInfo, CircuitMetrics, SendError,
};
use crate::crypto::{self, CoreRng, Identity, KEY_LEN};
use crate::graph::{Edge, GraphCore, GraphCounters, LinkId, RecordError, Time};
use crate::icmp;
use crate::ledger::fair::Flow;
use crate::ledger::{
    self, Charge, Draft, LedgerEvent, LedgerRecord, LedgerTerms, LedgerView, Ledgers,
};
use crate::path::{self, Anonymity, PathError, PathRequest};

pub use crate::session::MAX_MESSAGE_LEN;

/// How long a node that a circuit could not pass is avoided in new paths.
pub const AVOID_FOR: Duration = Duration::from_secs(60);
/// After every path to a node failed, how long packets to it are answered
/// with ICMPv6 unreachable before a build is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Most ICMPv6 errors sent per second (RFC 4443 §2.4 f asks for a limit).
pub const ICMP_PER_SECOND: u32 = 100;
/// A circuit is replaced for new flows after a random time in this range.
pub const ROTATE_AFTER: (Duration, Duration) =
    (Duration::from_secs(10 * 60), Duration::from_secs(20 * 60));
/// A flow with no packet for this long is forgotten; a rotated-out circuit
/// with no live flow is closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);
/// How often idle flows and rotated-out circuits are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Built prefixes the pool keeps (balanced and strong).
pub const POOL_SIZE: usize = 2;
/// A pooled prefix unused this long is closed and replaced, so that no relay
/// holds one idle circuit for long.
pub const PREFIX_MAX_AGE: Duration = ROTATE_AFTER.0;
/// How long before its current circuit rotates a busy destination gets its
/// successor built.
pub const ROTATE_LEAD: Duration = Duration::from_secs(30);

/// A destination with its own anonymity setting (config `[[route]]`,
/// `docs/config.md`): a node's key, or its address (the node whose /128 it
/// is, or whose /64 holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTo {
    /// The node with this key.
    Key([u8; KEY_LEN]),
    /// The node this address belongs to.
    Address(Ipv6Addr),
}

/// Why no circuit carries packets to a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No node in the graph has the address.
    #[error("no node in the graph has the address {0}")]
    NoNode(Ipv6Addr),
    /// The address is this node's.
    #[error("{0} is this node")]
    IsSelf(Ipv6Addr),
    /// No path for the destination's setting ([`PathError::too_few_relays`]
    /// says whether the graph is only too small).
    #[error(transparent)]
    Path(#[from] PathError),
    /// A path was chosen but its circuit could not be started or built.
    #[error("{0}")]
    Build(String),
    /// The circuit closed while it was looked at.
    #[error("the circuit closed; try again")]
    Closed,
}

/// Why a message could not be queued ([`RouterCore::send_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The payload is longer than [`MAX_MESSAGE_LEN`].
    #[error("a message of {0} bytes is longer than {MAX_MESSAGE_LEN}")]
    TooLong(usize),
    /// The key is this node's.
    #[error("the message is to this node")]
    ToSelf,
    /// No node in the graph has the key.
    #[error("no node in the graph has the key {}", hex::encode(.0))]
    NoNode([u8; KEY_LEN]),
    /// No circuit carries packets to the node: no path for its setting, or
    /// the build could not start.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The circuit did not take it: its send queue is full (the window has
    /// been closed for long).
    #[error(transparent)]
    Send(#[from] SendError),
}

/// How many nodes circuits can reach with the current settings
/// ([`RouterCore::reachability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachability {
    /// Other nodes in the graph.
    pub known: usize,
    /// Nodes a path was looked for (all of them, up to the limit asked).
    pub checked: usize,
    /// Of those, nodes a path was found to.
    pub reachable: usize,
    /// Of the rest, nodes that need more relays than the graph offers (more
    /// agreements would reach them).
    pub too_few_relays: usize,
}

/// The two clocks the router needs: monotonic for circuits, wall-clock for
/// graph records (see [`crate::graph`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Wall-clock time.
    pub wall: Time,
}

/// Packets the router did not carry, by reason (circuit-level drops are in
/// [`CircuitMetrics::drops`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterCounters {
    /// Packets from the TUN that were not IPv6, or not to an overlay address.
    pub not_overlay: u64,
    /// Packets to an address no node in the graph has.
    pub no_node: u64,
    /// Packets to a known node that no path reaches.
    pub no_path: u64,
    /// Packets to this node itself (the kernel should not route them here).
    pub to_self: u64,
    /// ICMPv6 errors written back to the TUN.
    pub icmp_sent: u64,
    /// ICMPv6 errors not sent because of the rate limit.
    pub icmp_limited: u64,
    /// Circuit builds started.
    pub builds: u64,
    /// Circuit builds that could not start (no link, too many circuits...).
    pub build_errors: u64,
    /// Circuits that started from a pooled prefix.
    pub pool_hits: u64,
    /// Circuits built from scratch although the setting has a pool (none
    /// was ready, or none could reach the destination).
    pub pool_misses: u64,
    /// Prefixes started for the pool.
    pub prefixes_built: u64,
}

/// What one destination node has.
#[derive(Debug, Default)]
struct Dest {
    /// This node's circuit to it for new flows, built or building, and when
    /// it rotates.
    current: Option<(CircuitId, Instant)>,
    /// The circuit built ahead to replace `current`, and when it rotates.
    next: Option<(CircuitId, Instant)>,
    /// Flows (by [`flow_hash`]) → their circuit and last packet.
    flows: HashMap<u64, (CircuitId, Instant)>,
    /// Until when packets to it get ICMPv6 unreachable without a new try.
    failed_until: Option<Instant>,
    /// Why the last path could not be chosen or built.
    error: Option<RouteError>,
    /// The last packet to it.
    last_used: Option<Instant>,
}

impl Dest {
    /// Moves new flows to the successor once the current circuit is due to
    /// rotate and the successor is built.
    fn rotate(&mut self, circuits: &CircuitCore, now: Instant) {
        if let (Some((_, at)), Some((next, _))) = (self.current, self.next)
            && now >= at
            && circuits.is_built(next)
        {
            self.current = self.next.take();
        }
    }
}

/// A circuit this node built.
#[derive(Debug)]
struct OriginCircuit {
    dest: [u8; KEY_LEN],
    /// Its hops, destination last (this node not included).
    path: Vec<[u8; KEY_LEN]>,
}

/// A prefix in the pool.
#[derive(Debug)]
struct Pooled {
    id: CircuitId,
    path: Vec<[u8; KEY_LEN]>,
    since: Instant,
}

/// One node's routing layer (sans-IO). See the module documentation.
pub struct RouterCore {
    key: [u8; KEY_LEN],
    prefix: u8,
    anonymity: Anonymity,
    home: Option<[u8; KEY_LEN]>,
    /// Destinations with their own setting.
    routes: Vec<(RouteTo, Anonymity)>,
    rng: CoreRng,
    graph: GraphCore,
    circuits: CircuitCore,
    /// Live links: link → peer.
    links: HashMap<u64, [u8; KEY_LEN]>,
    /// Live links that ride circuits to their own peer (a relayed link
    /// carried over a circuit). No circuit to that peer starts on one: its
    /// cells would carry the link that carries them.
    carried: std::collections::HashSet<u64>,
    dests: HashMap<[u8; KEY_LEN], Dest>,
    /// Origin circuits → their destination and path.
    origin_of: HashMap<CircuitId, OriginCircuit>,
    /// Circuits other nodes built to us, by their origin.
    incoming: HashMap<[u8; KEY_LEN], CircuitId>,
    /// Prefixes built or building for new destinations.
    pool: Vec<Pooled>,
    /// Prefixes the pool keeps ([`POOL_SIZE`]; 0 turns it off).
    pool_size: usize,
    /// No new prefix before this (after one failed).
    pool_retry_at: Instant,
    /// Nodes and edges that circuits could not pass lately, until when.
    avoid_nodes: HashMap<[u8; KEY_LEN], Instant>,
    avoid_edges: HashMap<([u8; KEY_LEN], [u8; KEY_LEN]), Instant>,
    /// Address bytes 1..8 (shared by a node's /128 and its /64) → key.
    index: HashMap<[u8; 7], [u8; KEY_LEN]>,
    /// The graph's node count when `index` was built.
    indexed_nodes: usize,
    next_sweep: Instant,
    icmp_out: VecDeque<Vec<u8>>,
    events: VecDeque<CircuitEvent>,
    /// Destinations whose reason for having no circuit changed, to log.
    failures: VecDeque<([u8; KEY_LEN], RouteError)>,
    icmp_budget: (Instant, u32),
    counters: RouterCounters,
    /// The agreements' ledgers and the counts of each link.
    ledgers: Ledgers,
    /// The time of the last input, for cells counted as they are polled.
    clock: Now,
    /// Nodes that refused this node's circuits for its ledger with them
    /// (cut off, too many circuits), the reason and when: `umbra path` says
    /// so.
    refusals: HashMap<[u8; KEY_LEN], (Reason, Instant)>,
}

impl std::fmt::Debug for RouterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterCore")
            .field("key", &hex::encode(self.key))
            .field("links", &self.links.len())
            .field("dests", &self.dests.len())
            .finish_non_exhaustive()
    }
}

impl RouterCore {
    /// A router for `identity` whose node record lists `edges` (its
    /// agreements). `graph_cache` is a graph saved by [`Self::export_graph`],
    /// if any; a bad cache is ignored. Every random byte the router and its
    /// circuits need is drawn from `rng` (the circuit layer gets its own
    /// ChaCha20 stream seeded from it), so a seeded `rng` fixes a run.
    pub fn new(
        identity: Identity,
        prefix: u8,
        now: Now,
        edges: &[Edge],
        graph_cache: Option<&[u8]>,
        mut rng: CoreRng,
    ) -> Result<RouterCore, RecordError> {
        let key = identity.public();
        let mut graph = GraphCore::new(identity.clone(), now.wall, edges)?;
        if let Some(bytes) = graph_cache
            && let Ok(g) = crate::graph::Graph::import(bytes, now.wall)
        {
            graph = graph.with_graph(now.wall, g);
        }
        Ok(RouterCore {
            key,
            prefix,
            anonymity: Anonymity::default(),
            home: None,
            routes: Vec::new(),
            circuits: CircuitCore::new(
                identity,
                prefix,
                CircuitConfig::default(),
                crypto::fork_rng(&mut *rng),
            ),
            rng,
            graph,
            links: HashMap::new(),
            carried: std::collections::HashSet::new(),
            dests: HashMap::new(),
            origin_of: HashMap::new(),
            incoming: HashMap::new(),
            pool: Vec::new(),
            pool_size: POOL_SIZE,
            pool_retry_at: now.mono,
            avoid_nodes: HashMap::new(),
            avoid_edges: HashMap::new(),
            next_sweep: now.mono + SWEEP_EVERY,
            index: HashMap::new(),
            indexed_nodes: usize::MAX,
            icmp_out: VecDeque::new(),
            events: VecDeque::new(),
            failures: VecDeque::new(),
            icmp_budget: (now.mono, 0),
            counters: RouterCounters::default(),
            ledgers: Ledgers::new(key),
            refusals: HashMap::new(),
            clock: now,
        })
    }

    /// The anonymity setting and the home node (`docs/architecture.md, "Path
    /// selection"`). Circuits built before keep their paths.
    pub fn set_policy(&mut self, anonymity: Anonymity, home: Option<[u8; KEY_LEN]>) {
        self.anonymity = anonymity;
        self.home = home;
    }

    /// Destinations with a setting of their own (config `[[route]]`); the
    /// first that matches a destination wins. Circuits built before keep
    /// their paths.
    pub fn set_routes(&mut self, routes: Vec<(RouteTo, Anonymity)>) {
        self.routes = routes;
    }

    /// The node's setting, for destinations without a route of their own.
    pub fn anonymity(&self) -> Anonymity {
        self.anonymity
    }

    /// The setting for circuits to `dest`: its route's, else the node's.
    pub fn anonymity_for(&self, dest: &[u8; KEY_LEN]) -> Anonymity {
        self.routes
            .iter()
            .find(|(to, _)| match to {
                RouteTo::Key(k) => k == dest,
                RouteTo::Address(a) => address::address_belongs_to(a, dest, self.prefix),
            })
            .map_or(self.anonymity, |(_, a)| *a)
    }

    /// How many built prefixes the pool keeps (default [`POOL_SIZE`]; 0
    /// turns the pool off). The next sweep closes what is too many.
    pub fn set_pool_size(&mut self, size: usize) {
        self.pool_size = size;
    }

    /// The agreement edges changed: the node's record is re-signed and
    /// flooded if they differ.
    pub fn set_edges(&mut self, now: Now, edges: &[Edge]) -> Result<(), RecordError> {
        self.graph.set_local_edges(now.wall, edges).map(|_| ())
    }

    /// A link to `peer` is up. If `peer` is a destination with the fast
    /// setting that circuits reach over longer paths, new flows to it take
    /// the new link instead (the shortest path); flows on the old circuits
    /// stay on them.
    pub fn link_up(&mut self, now: Now, link: u64, peer: [u8; KEY_LEN]) {
        self.link_up_session(now, link, peer, [0; 32]);
    }

    /// [`Self::link_up`] with the link's session (its handshake hash),
    /// which binds the ledger reports on it to this connection.
    pub fn link_up_session(&mut self, now: Now, link: u64, peer: [u8; KEY_LEN], session: [u8; 32]) {
        self.clock = now;
        self.ledgers.link_up(link, peer, session, now.mono);
        self.links.insert(link, peer);
        self.circuits.link_up(now.mono, link, peer);
        self.graph.link_up(now.wall, LinkId(link), peer);
        self.stop_avoiding(&peer);
        self.prefer_link_to(peer);
        if Some(peer) == self.home {
            self.pool_retry_at = now.mono;
            self.fill_pool(now);
        }
    }

    /// A link to `peer` is up that rides circuits to `peer` itself (a
    /// relayed link carried over a circuit, when the two share no partner):
    /// it carries other circuits, never one to `peer`.
    pub fn carried_link_up(&mut self, now: Now, link: u64, peer: [u8; KEY_LEN], session: [u8; 32]) {
        self.ledgers.link_up(link, peer, session, now.mono);
        self.carried.insert(link);
        self.links.insert(link, peer);
        self.circuits.link_up(now.mono, link, peer);
        self.graph.link_up(now.wall, LinkId(link), peer);
    }

    /// Link `link`, carried over a circuit, moved to a connection of its own
    /// ([`Self::carried_link_up`]): circuits to its peer may use it now.
    pub fn link_uncarried(&mut self, link: u64) {
        if self.carried.remove(&link)
            && let Some(&peer) = self.links.get(&link)
        {
            self.prefer_link_to(peer);
        }
    }

    /// Whether `peer` has a live link that circuits to `dest` may start on.
    fn first_hop_live(
        links: &HashMap<u64, [u8; KEY_LEN]>,
        carried: &std::collections::HashSet<u64>,
        dest: &[u8; KEY_LEN],
        peer: &[u8; KEY_LEN],
    ) -> bool {
        links
            .iter()
            .any(|(l, p)| p == peer && !(p == dest && carried.contains(l)))
    }

    /// With the fast setting, new flows to `peer` take a new link to it
    /// rather than the longer circuits built before.
    fn prefer_link_to(&mut self, peer: [u8; KEY_LEN]) {
        if self.anonymity_for(&peer) == Anonymity::Fast {
            let origin_of = &self.origin_of;
            let longer = |c: Option<(CircuitId, Instant)>| {
                c.is_some_and(|(id, _)| origin_of.get(&id).is_some_and(|o| o.path.len() > 1))
            };
            if let Some(d) = self.dests.get_mut(&peer)
                && longer(d.current)
            {
                d.current = None;
                if longer(d.next) {
                    d.next = None;
                }
            }
            if let Some(&c) = self.incoming.get(&peer)
                && self
                    .circuits
                    .circuit(c)
                    .is_some_and(|i| i.prev != Some(peer))
            {
                self.incoming.remove(&peer);
            }
        }
    }

    /// Closes the circuit whose leg on `link` has id `circ_id` because its
    /// cells overran the queue toward that link (or it held the most when
    /// the node's queues were full): DESTROY both ways, and an origin
    /// builds anew. Returns whether it existed.
    pub fn close_overrun(&mut self, now: Now, link: u64, circ_id: u32) -> bool {
        let closed = self.circuits.close_leg(link, circ_id);
        self.drain_events(now);
        closed
    }

    /// A link went down: its circuits are torn down (and rebuilt elsewhere
    /// on the next packet).
    pub fn link_down(&mut self, now: Now, link: u64) {
        self.ledgers.link_down(link);
        self.links.remove(&link);
        self.carried.remove(&link);
        self.circuits.link_down(now.mono, link);
        self.graph.link_down(now.wall, LinkId(link));
        self.drain_events(now);
    }

    /// A cell arrived on `link`.
    ///
    /// The cell is counted in the ledger of the link's agreement; a CREATE
    /// from a neighbour past its cutoff or over its circuit rate is refused
    /// with the reason ([`Ledgers::admit`]).
    pub fn handle_cell(&mut self, now: Now, link: u64, cell: &[u8; CELL_LEN]) {
        self.clock = now;
        let (circ_id, command) = crate::cell::read_header(cell);
        self.ledgers
            .count(now.mono, now.wall.unix_secs(), link, circ_id, false);
        if command == crate::cell::Command::Create.to_u8()
            && let Some(&peer) = self.links.get(&link)
            && self.circuits.create_is_fresh(link, &peer, circ_id)
            && let Err(reason) = self.ledgers.admit(now.mono, now.wall.unix_secs(), &peer)
        {
            self.circuits.refuse_create(link, circ_id, reason);
            return;
        }
        self.circuits.handle_cell(now.mono, link, cell);
        self.drain_events(now);
    }

    /// A ledger report arrived on `link` (docs/protocol.md, "Ledger
    /// reports"): checked, or dropped and counted.
    pub fn handle_ledger(&mut self, now: Now, link: u64, bytes: &[u8]) {
        self.ledgers
            .handle_report(now.mono, now.wall.unix_secs(), link, bytes);
    }

    /// The agreements and their terms: one ledger each.
    pub fn set_ledger_terms(&mut self, now: Now, terms: &[([u8; KEY_LEN], LedgerTerms)]) {
        self.ledgers.set_terms(terms, now.mono);
    }

    /// Restores a stored ledger (at start).
    pub fn restore_ledger(&mut self, now: Now, peer: [u8; KEY_LEN], record: LedgerRecord) {
        self.ledgers.restore(peer, record, now.mono);
    }

    /// Charges bytes that are not cells to `peer`'s ledger.
    pub fn charge_ledger(&mut self, now: Now, peer: &[u8; KEY_LEN], charge: Charge) {
        self.ledgers.charge(now.wall.unix_secs(), peer, charge);
    }

    /// The next ledger report due, for the driver to finish and write.
    pub fn poll_report(&mut self, now: Now) -> Option<(u64, Draft)> {
        self.ledgers.poll_report(now.mono, now.wall.unix_secs())
    }

    /// The next ledger check or dropped report, for the log.
    pub fn poll_ledger_event(&mut self) -> Option<LedgerEvent> {
        self.ledgers.poll_event()
    }

    /// The peer of live link `link`.
    pub fn link_peer(&self, link: u64) -> Option<[u8; KEY_LEN]> {
        self.links.get(&link).copied()
    }

    /// The ledgers, for what they count and store.
    pub fn ledgers(&self) -> &Ledgers {
        &self.ledgers
    }

    /// The ledger records changed since the last call, to store.
    pub fn take_dirty_ledgers(&mut self) -> Vec<([u8; KEY_LEN], LedgerRecord)> {
        self.ledgers.take_dirty()
    }

    /// `peer`'s ledger as `umbra agreements` shows it.
    pub fn ledger_view(&mut self, now: Now, peer: &[u8; KEY_LEN]) -> Option<LedgerView> {
        self.ledgers.view(now.wall.unix_secs(), peer)
    }

    /// Nodes that refused this node's circuits for its ledger with them in
    /// the last [`AVOID_FOR`], with the reason.
    pub fn refusals(&self, now: Now) -> Vec<([u8; KEY_LEN], Reason)> {
        let mut v: Vec<_> = self
            .refusals
            .iter()
            .filter(|(_, (_, at))| now.mono.saturating_duration_since(*at) < AVOID_FOR)
            .map(|(k, (r, _))| (*k, *r))
            .collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v
    }

    /// A graph message arrived on `link`. A newer record from a node that
    /// builds were avoiding lifts the avoidance: it is alive again.
    pub fn handle_graph(&mut self, now: Now, link: u64, bytes: &[u8]) {
        self.graph.handle_message(now.wall, LinkId(link), bytes);
        for key in self.graph.take_fresh() {
            self.stop_avoiding(&key);
        }
    }

    /// New paths may use `node`, and the edges to and from it, again.
    fn stop_avoiding(&mut self, node: &[u8; KEY_LEN]) {
        if self.avoid_nodes.remove(node).is_some() | remove_edges_of(&mut self.avoid_edges, node) {
            // Destinations that found no path may find one now.
            for d in self.dests.values_mut() {
                d.failed_until = None;
            }
        }
    }

    /// An IPv6 packet from the TUN, to send into the overlay. Packets that
    /// cannot go get an ICMPv6 error (see [`Self::poll_packet`]) or are
    /// counted.
    pub fn send_packet(&mut self, now: Now, packet: &[u8]) {
        self.clock = now;
        let Some((_, dst)) = icmp::ipv6_addresses(packet) else {
            self.counters.not_overlay += 1;
            return;
        };
        let Some(dest) = self.lookup(&dst) else {
            if dst.octets()[0] & 0xfe == self.prefix & 0xfe {
                self.counters.no_node += 1;
                self.unreachable(now, packet, icmp::CODE_NO_ROUTE);
            } else {
                self.counters.not_overlay += 1;
            }
            return;
        };
        if dest == self.key {
            self.counters.to_self += 1;
            return;
        }
        let flow = flow_hash(packet);
        let Some(circuit) = self.circuit_for_flow(now, &dest, flow) else {
            self.counters.no_path += 1;
            self.unreachable(now, packet, icmp::CODE_ADDRESS_UNREACHABLE);
            return;
        };
        if let Err(SendError::UnknownCircuit) = self.circuits.send_packet(now.mono, circuit, packet)
        {
            // Closed under us; forget it so the next packet rebuilds.
            self.forget_circuit(circuit);
        }
        // Other errors (queue full) are counted by the circuit core.
    }

    /// Queues a message for the node `to`: `payload` (0 to
    /// [`MAX_MESSAGE_LEN`] bytes) goes inside the end-to-end session, so no
    /// relay can read it, and `to` gets it from [`Self::poll_message`] with
    /// this node's key. It takes the circuit a new flow to `to` would take:
    /// this node's current circuit, else the one `to` built to us, else a new
    /// one with [`Self::anonymity_for`] `to` (it waits while that builds, as a
    /// packet does, and shares the window with packets).
    ///
    /// Errs at once when it cannot go: the payload is too long, `to` is this
    /// node or not in the graph, no path for the setting (or none within
    /// [`RETRY_AFTER`] of a failure), or the circuit's queue is full. Once
    /// queued, a message the circuit loses is counted in
    /// [`CircuitMetrics::messages`] and not sent again: it closed, or its
    /// build failed and no other could start (a build started at once takes
    /// over what waited).
    pub fn send_message(
        &mut self,
        now: Now,
        to: &[u8; KEY_LEN],
        payload: &[u8],
    ) -> Result<(), MessageError> {
        self.clock = now;
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLong(payload.len()));
        }
        if *to == self.key {
            return Err(MessageError::ToSelf);
        }
        if self.graph.graph().get(to).is_none() {
            return Err(MessageError::NoNode(*to));
        }
        // A circuit found closed under us is forgotten and the next one
        // tried, once.
        for _ in 0..2 {
            let circuit = self.current_circuit(now, to, true)?;
            self.dests.entry(*to).or_default().last_used = Some(now.mono);
            match self.circuits.send_message(now.mono, circuit, payload) {
                Err(SendError::UnknownCircuit) => {
                    self.forget_circuit(circuit);
                }
                r => return Ok(r?),
            }
        }
        Err(RouteError::Closed.into())
    }

    /// The next message received: the sender's key (the session's peer,
    /// authenticated by the circuit's handshake) and the payload. Up to
    /// [`crate::circuit::MAX_INBOX_MESSAGES`] wait; take them every turn.
    pub fn poll_message(&mut self) -> Option<([u8; KEY_LEN], Vec<u8>)> {
        self.circuits.poll_message()
    }

    /// Whether `c`, a circuit a flow to `dest` used, is still open: one this
    /// node built, or the one `dest` built to us.
    fn is_open(&self, dest: &[u8; KEY_LEN], c: CircuitId) -> bool {
        self.origin_of.contains_key(&c) || self.incoming.get(dest) == Some(&c)
    }

    /// The circuit for a packet of `flow` to `dest`.
    fn circuit_for_flow(&mut self, now: Now, dest: &[u8; KEY_LEN], flow: u64) -> Option<CircuitId> {
        let existing = self
            .dests
            .get(dest)
            .and_then(|d| d.flows.get(&flow))
            .map(|&(c, _)| c)
            .filter(|&c| self.is_open(dest, c));
        let circuit = match existing {
            Some(c) => c,
            None => self.current_circuit(now, dest, false).ok()?,
        };
        let d = self.dests.entry(*dest).or_default();
        d.flows.insert(flow, (circuit, now.mono));
        d.last_used = Some(now.mono);
        Some(circuit)
    }

    /// The circuit new flows to `dest` take: the current one, unless it is
    /// due to rotate; else, if `reuse_incoming` (messages, which answer),
    /// the one `dest` built to us; else a new one. New packet flows never
    /// take a circuit another node built: each node pays for the traffic it
    /// starts (docs/architecture.md, "Ledgers").
    fn current_circuit(
        &mut self,
        now: Now,
        dest: &[u8; KEY_LEN],
        reuse_incoming: bool,
    ) -> Result<CircuitId, RouteError> {
        if let Some(d) = self.dests.get_mut(dest) {
            d.rotate(&self.circuits, now.mono);
            if let Some((c, rotate_at)) = d.current
                && (now.mono < rotate_at || d.next.is_some())
            {
                // Due to rotate, the old circuit serves until the successor
                // is built.
                return Ok(c);
            }
        }
        if reuse_incoming
            && self.dests.get(dest).is_none_or(|d| d.current.is_none())
            && let Some(&c) = self.incoming.get(dest)
        {
            return Ok(c);
        }
        self.build(now, dest)
    }

    /// Builds a new current circuit to `dest`.
    fn build(&mut self, now: Now, dest: &[u8; KEY_LEN]) -> Result<CircuitId, RouteError> {
        let (id, rotate_at) = self.new_circuit(now, dest)?;
        self.dests.entry(*dest).or_default().current = Some((id, rotate_at));
        Ok(id)
    }

    /// Starts a circuit to `dest`, from a pooled prefix if one fits, and
    /// draws when it rotates. A failure is remembered for [`RETRY_AFTER`].
    fn new_circuit(
        &mut self,
        now: Now,
        dest: &[u8; KEY_LEN],
    ) -> Result<(CircuitId, Instant), RouteError> {
        if let Some(d) = self.dests.get(dest)
            && d.failed_until.is_some_and(|t| t > now.mono)
            && let Some(e) = &d.error
        {
            return Err(e.clone());
        }
        let started = match self.start_from_pool(now, dest) {
            Some(started) => Ok(started),
            None => {
                if self.pool_size > 0 && self.anonymity_for(dest) != Anonymity::Fast {
                    self.counters.pool_misses += 1;
                }
                self.start_from_scratch(now, dest)
            }
        };
        let result = match started {
            Ok((id, path)) => {
                self.counters.builds += 1;
                self.origin_of
                    .insert(id, OriginCircuit { dest: *dest, path });
                let span = (ROTATE_AFTER.1 - ROTATE_AFTER.0).as_millis().max(1) as u64;
                let rotate = ROTATE_AFTER.0 + Duration::from_millis(self.rng.next_u64() % span);
                self.dests.entry(*dest).or_default().error = None;
                return Ok((id, now.mono + rotate));
            }
            Err(e) => e,
        };
        self.set_error(now, *dest, result.clone());
        Err(result)
    }

    /// Remembers why `dest` has no circuit for [`RETRY_AFTER`], and queues
    /// the reason for [`Self::poll_failure`] when it is new.
    fn set_error(&mut self, now: Now, dest: [u8; KEY_LEN], error: RouteError) {
        let d = self.dests.entry(dest).or_default();
        d.failed_until = Some(now.mono + RETRY_AFTER);
        if d.error.as_ref() != Some(&error) {
            d.error = Some(error.clone());
            self.failures.push_back((dest, error));
        }
    }

    /// Extends the oldest built prefix that can reach `dest` with enough
    /// relays. Returns the circuit and its whole path.
    fn start_from_pool(
        &mut self,
        now: Now,
        dest: &[u8; KEY_LEN],
    ) -> Option<(CircuitId, Vec<[u8; KEY_LEN]>)> {
        let anonymity = self.anonymity_for(dest);
        if anonymity == Anonymity::Fast {
            return None;
        }
        let (i, rest) = {
            let avoid = avoider(&self.avoid_nodes, &self.avoid_edges, now.mono);
            let req = PathRequest {
                origin: self.key,
                destination: *dest,
                anonymity,
                home: self.home,
                live: &|_| true,
                avoid: &avoid,
            };
            self.pool.iter().enumerate().find_map(|(i, p)| {
                // A prefix through a node now avoided waits for a later
                // destination or its age limit.
                let usable = self.circuits.is_built(p.id)
                    && Some(p.path[0]) == self.home
                    && !p.path.windows(2).any(|w| avoid(&w[0], &w[1]));
                usable
                    .then(|| path::complete(self.graph.graph(), &req, &p.path, &mut *self.rng))
                    .flatten()
                    .map(|rest| (i, rest))
            })?
        };
        let p = self.pool.remove(i);
        if self.circuits.extend_prefix(now.mono, p.id, &rest).is_err() {
            self.circuits.close_circuit(now.mono, p.id);
            return None;
        }
        self.counters.pool_hits += 1;
        let mut path = p.path;
        path.extend_from_slice(&rest);
        self.fill_pool(now);
        Some((p.id, path))
    }

    /// Chooses a whole path to `dest` and starts building it.
    fn start_from_scratch(
        &mut self,
        now: Now,
        dest: &[u8; KEY_LEN],
    ) -> Result<(CircuitId, Vec<[u8; KEY_LEN]>), RouteError> {
        let anonymity = self.anonymity_for(dest);
        let (links, carried) = (&self.links, &self.carried);
        let req = PathRequest {
            origin: self.key,
            destination: *dest,
            anonymity,
            home: self.home,
            live: &|k| Self::first_hop_live(links, carried, dest, k),
            avoid: &avoider(&self.avoid_nodes, &self.avoid_edges, now.mono),
        };
        let path = path::choose(self.graph.graph(), &req, &mut *self.rng)?;
        match self.circuits.build_circuit(now.mono, &path) {
            Ok(id) => Ok((id, path)),
            Err(e) => {
                self.counters.build_errors += 1;
                Err(RouteError::Build(e.to_string()))
            }
        }
    }

    /// Starts prefixes until the pool holds [`Self::set_pool_size`] of them
    /// (balanced and strong only). After a failure, waits [`RETRY_AFTER`].
    fn fill_pool(&mut self, now: Now) {
        if self.anonymity == Anonymity::Fast || now.mono < self.pool_retry_at {
            return;
        }
        while self.pool.len() < self.pool_size {
            let links = &self.links;
            let prefix = path::choose_prefix(
                self.graph.graph(),
                self.key,
                self.home,
                &|k| links.values().any(|p| p == k),
                &avoider(&self.avoid_nodes, &self.avoid_edges, now.mono),
                &mut *self.rng,
            );
            let started = prefix
                .ok()
                .and_then(|p| Some((self.circuits.build_prefix(now.mono, &p).ok()?, p)));
            let Some((id, path)) = started else {
                self.pool_retry_at = now.mono + RETRY_AFTER;
                return;
            };
            self.counters.prefixes_built += 1;
            self.pool.push(Pooled {
                id,
                path,
                since: now.mono,
            });
        }
    }

    fn forget_circuit(&mut self, id: CircuitId) -> Option<[u8; KEY_LEN]> {
        self.incoming.retain(|_, c| *c != id);
        self.pool.retain(|p| p.id != id);
        let Some(o) = self.origin_of.remove(&id) else {
            // A circuit another node built: the reply flows it carried
            // forget it, so their next packet in rides the circuit that node
            // builds next (not a build of our own, which would lose the
            // answer that started it if that build failed).
            for d in self.dests.values_mut() {
                d.flows.retain(|_, (c, _)| *c != id);
            }
            return None;
        };
        let d = self.dests.get_mut(&o.dest)?;
        if d.current.is_some_and(|(c, _)| c == id) {
            d.current = d.next.take();
        }
        if d.next.is_some_and(|(c, _)| c == id) {
            d.next = None;
        }
        d.flows.retain(|_, (c, _)| *c != id);
        Some(o.dest)
    }

    /// A circuit to `dest` ended: if it was in use lately, build another now.
    fn rebuild_if_used(&mut self, now: Now, dest: [u8; KEY_LEN]) {
        let used = self
            .dests
            .get(&dest)
            .and_then(|d| d.last_used)
            .is_some_and(|t| now.mono.saturating_duration_since(t) < FLOW_IDLE);
        if used && self.dests.get(&dest).is_some_and(|d| d.current.is_none()) {
            let _ = self.build(now, &dest);
        }
    }

    /// Forgets idle flows and closes rotated-out circuits that no flow uses.
    fn sweep(&mut self, now: Now) {
        let t = now.mono;
        self.avoid_nodes.retain(|_, until| *until > t);
        self.avoid_edges.retain(|_, until| *until > t);
        let mut close = Vec::new();
        for d in self.dests.values_mut() {
            d.flows
                .retain(|_, (_, last)| now.mono.saturating_duration_since(*last) < FLOW_IDLE);
            d.rotate(&self.circuits, now.mono);
        }
        for (&id, o) in &self.origin_of {
            let Some(d) = self.dests.get(&o.dest) else {
                continue;
            };
            let kept = [d.current, d.next].iter().flatten().any(|(c, _)| *c == id);
            if !kept && !d.flows.values().any(|(c, _)| *c == id) {
                close.push(id);
            }
        }
        // Pooled prefixes that are too old, too many, or no longer fit the
        // policy.
        let pool_size = if self.anonymity == Anonymity::Fast {
            0
        } else {
            self.pool_size
        };
        close.extend(
            self.pool
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    now.mono.saturating_duration_since(p.since) >= PREFIX_MAX_AGE
                        || *i >= pool_size
                        || Some(p.path[0]) != self.home
                })
                .map(|(_, p)| p.id),
        );
        close.sort_unstable();
        for id in close {
            self.circuits.close_circuit(now.mono, id);
            self.forget_circuit(id);
        }
        self.build_successors(now);
        self.fill_pool(now);
        self.next_sweep = now.mono + SWEEP_EVERY;
    }

    /// Builds the next circuit of each busy destination whose current one
    /// rotates within [`ROTATE_LEAD`].
    fn build_successors(&mut self, now: Now) {
        let mut due: Vec<[u8; KEY_LEN]> = self
            .dests
            .iter()
            .filter(|(_, d)| {
                d.next.is_none()
                    && d.current.is_some_and(|(_, at)| {
                        at.saturating_duration_since(now.mono) <= ROTATE_LEAD
                    })
                    && d.last_used
                        .is_some_and(|t| now.mono.saturating_duration_since(t) < FLOW_IDLE)
            })
            .map(|(k, _)| *k)
            .collect();
        due.sort_unstable();
        for dest in due {
            if let Ok(next) = self.new_circuit(now, &dest) {
                self.dests.entry(dest).or_default().next = Some(next);
            }
        }
    }

    /// Takes the circuit core's events into the router's tables; they are
    /// kept for [`Self::poll_event`] so the daemon can log them.
    fn drain_events(&mut self, now: Now) {
        while let Some(ev) = self.circuits.poll_event() {
            match &ev {
                CircuitEvent::PrefixBuilt { .. } => {}
                CircuitEvent::Built { circuit, .. } => {
                    if let Some(d) = self
                        .origin_of
                        .get(circuit)
                        .and_then(|o| self.dests.get_mut(&o.dest))
                    {
                        d.failed_until = None;
                    }
                }
                CircuitEvent::Incoming { circuit, origin } => {
                    self.incoming.insert(*origin, *circuit);
                }
                CircuitEvent::Closed { circuit, .. } | CircuitEvent::TagFailure { circuit, .. } => {
                    if let Some(dest) = self.forget_circuit(*circuit) {
                        self.rebuild_if_used(now, dest);
                    }
                }
                CircuitEvent::Unreachable {
                    circuit,
                    destination,
                    failed_hop,
                    reason,
                } => {
                    let pooled = self.pool.iter().find(|p| p.id == *circuit);
                    let hops = match (pooled, self.origin_of.get(circuit)) {
                        (Some(p), _) => Some(p.path.clone()),
                        (None, Some(o)) => Some(o.path.clone()),
                        (None, None) => None,
                    };
                    let pooled = pooled.is_some();
                    let hops_for_refusal = hops.clone();
                    self.forget_circuit(*circuit);
                    // Avoid the edge and node the build could not pass, when
                    // the origin knows which (not after a DESTROY from inside).
                    let until = now.mono + AVOID_FOR;
                    if let Some(hops) = hops
                        && let Some(hop) = *failed_hop
                        && let Some(&node) = hops.get(hop)
                    {
                        let prev = if hop == 0 { self.key } else { hops[hop - 1] };
                        self.avoid_edges.insert((prev, node), until);
                        let is_destination = !pooled && node == *destination;
                        if !is_destination && hops.first() != Some(&node) {
                            self.avoid_nodes.insert(node, until);
                        }
                    }
                    if pooled {
                        self.events.push_back(ev);
                        continue;
                    }
                    if matches!(reason, Reason::CutOff | Reason::TooManyCircuits)
                        && let Some(hops) = &hops_for_refusal
                        && let Some(&node) = failed_hop.and_then(|h| hops.get(h))
                    {
                        self.refusals.insert(node, (*reason, now.mono));
                    }
                    let error = RouteError::Build(match failed_hop {
                        Some(hop) => {
                            format!("hop {hop} of the path could not be reached ({reason})")
                        }
                        None => format!("the path broke while the circuit was built ({reason})"),
                    });
                    let d = self.dests.entry(*destination).or_default();
                    d.error = Some(error);
                    self.rebuild_if_used(now, *destination);
                    // What waited on the failed build goes on the next one.
                    if let Some((next, _)) = self.dests.get(destination).and_then(|d| d.current) {
                        self.circuits.requeue_unsent(*circuit, next);
                    }
                }
            }
            self.events.push_back(ev);
        }
        self.circuits.drop_unsent();
    }

    /// The node that `addr` (a /128 or an address in a /64) belongs to, if
    /// the graph has it.
    pub fn node_for_address(&mut self, addr: &Ipv6Addr) -> Option<[u8; KEY_LEN]> {
        self.lookup(addr)
    }

    /// The node that `addr` (a /128 or an address in a /64) belongs to, if
    /// the graph has it.
    fn lookup(&mut self, addr: &Ipv6Addr) -> Option<[u8; KEY_LEN]> {
        let o = addr.octets();
        if o[0] & 0xfe != self.prefix & 0xfe {
            return None;
        }
        let slot: [u8; 7] = o[1..8].try_into().ok()?;
        if !self.index.contains_key(&slot) && self.indexed_nodes != self.graph.graph().node_count()
        {
            self.rebuild_index();
        }
        let key = *self.index.get(&slot)?;
        address::address_belongs_to(addr, &key, self.prefix).then_some(key)
    }

    fn rebuild_index(&mut self) {
        let graph = self.graph.graph();
        self.index.clear();
        for rec in graph.records() {
            let a = address::address_for_key(rec.key(), self.prefix).octets();
            if let Ok(slot) = a[1..8].try_into() {
                self.index.entry(slot).or_insert(*rec.key());
            }
        }
        self.indexed_nodes = graph.node_count();
    }

    /// Queues an ICMPv6 destination unreachable about `packet` for the TUN,
    /// within the rate limit.
    fn unreachable(&mut self, now: Now, packet: &[u8], code: u8) {
        let (since, sent) = &mut self.icmp_budget;
        if now.mono.saturating_duration_since(*since) >= Duration::from_secs(1) {
            *since = now.mono;
            *sent = 0;
        }
        if *sent >= ICMP_PER_SECOND {
            self.counters.icmp_limited += 1;
            return;
        }
        let from = address::address_for_key(&self.key, self.prefix);
        let mut out = Vec::new();
        if icmp::destination_unreachable(packet, from, code, &mut out) {
            *sent += 1;
            self.counters.icmp_sent += 1;
            self.icmp_out.push_back(out);
        }
    }

    /// The next cell to send: written into `out`, with its link.
    pub fn poll_cell(&mut self, out: &mut [u8; CELL_LEN]) -> Option<u64> {
        self.poll_cell_paid(out).map(|(link, _, _)| link)
    }

    /// [`Self::poll_cell`], with the cell's flow (who pays for it) and that
    /// flow's weight in the link's fair queue, from its ledger
    /// (docs/architecture.md, "Ledgers").
    /// Cells are counted at the time of the last input.
    pub fn poll_cell_paid(&mut self, out: &mut [u8; CELL_LEN]) -> Option<(u64, Flow, u32)> {
        let (link, payer) = self.circuits.poll_transmit_paid(out)?;
        let circ_id = ledger::circ_id_of(out);
        let now = self.clock;
        self.ledgers
            .count(now.mono, now.wall.unix_secs(), link, circ_id, true);
        Some((link, payer, self.ledgers.weight(&payer)))
    }

    /// The next graph message to send, with its link.
    pub fn poll_graph(&mut self) -> Option<(u64, Vec<u8>)> {
        self.graph.poll_transmit().map(|(l, m)| (l.0, m))
    }

    /// The next packet for the TUN, copied into `out` (give it
    /// [`crate::session::MAX_PACKET_LEN`] bytes): a packet from a circuit, or
    /// an ICMPv6 error. Returns its length.
    pub fn poll_packet(&mut self, out: &mut [u8]) -> Option<usize> {
        if let Some(p) = self.icmp_out.pop_front() {
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            return Some(n);
        }
        let d = self.circuits.poll_packet(out)?;
        // A flow that arrived on a circuit another node built is a reply's
        // flow: its answers go back the same way (and the other node, which
        // started it, pays for both ways).
        if !self.origin_of.contains_key(&d.circuit) {
            let flow = flow_hash(&out[..d.len]);
            let at = self.clock.mono;
            self.dests
                .entry(d.peer)
                .or_default()
                .flows
                .entry(flow)
                .or_insert((d.circuit, at));
        }
        Some(d.len)
    }

    /// The next event worth logging.
    pub fn poll_event(&mut self) -> Option<CircuitEvent> {
        self.events.pop_front()
    }

    /// The next destination whose reason for having no circuit is new
    /// (first failure, or a different one), worth one log line; repeats of
    /// the same reason are not queued again.
    pub fn poll_failure(&mut self) -> Option<([u8; KEY_LEN], RouteError)> {
        self.failures.pop_front()
    }

    /// Looks for a path, with each destination's setting, to up to `limit`
    /// other nodes of the graph (in key order), without building anything:
    /// `umbra status` warns when few nodes are reachable. Each path costs
    /// a few graph searches, so `limit` keeps a big graph cheap.
    pub fn reachability(&mut self, limit: usize) -> Reachability {
        let graph = self.graph.graph();
        let mut keys: Vec<[u8; KEY_LEN]> = graph
            .records()
            .map(|r| *r.key())
            .filter(|k| *k != self.key)
            .collect();
        keys.sort_unstable();
        let mut r = Reachability {
            known: keys.len(),
            checked: 0,
            reachable: 0,
            too_few_relays: 0,
        };
        let (links, carried) = (&self.links, &self.carried);
        for dest in keys.into_iter().take(limit) {
            let req = PathRequest {
                origin: self.key,
                destination: dest,
                anonymity: self.anonymity_for(&dest),
                home: self.home,
                live: &|k| Self::first_hop_live(links, carried, &dest, k),
                avoid: &|_, _| false,
            };
            r.checked += 1;
            match path::choose(graph, &req, &mut *self.rng) {
                Ok(_) => r.reachable += 1,
                Err(e) if e.too_few_relays() => r.too_few_relays += 1,
                Err(_) => {}
            }
        }
        r
    }

    /// When [`Self::handle_timeout`] should next run, in each clock.
    pub fn poll_timeout(&self) -> (Option<Instant>, Option<Time>) {
        let mut mono = match self.circuits.poll_timeout() {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        };
        if let Some(t) = self.ledgers.next_report_at() {
            mono = mono.min(t);
        }
        (Some(mono), self.graph.poll_timeout())
    }

    /// Runs what is due.
    pub fn handle_timeout(&mut self, now: Now) {
        self.clock = now;
        if now.mono >= self.next_sweep {
            self.sweep(now);
        }
        self.circuits.handle_timeout(now.mono);
        self.graph.handle_timeout(now.wall);
        self.drain_events(now);
    }

    /// The circuit that carries new flows to `addr` now, building one if
    /// there is none (for `umbra path`). Returns the destination and the
    /// origin circuit's hops, or why there is none.
    pub fn path_to(
        &mut self,
        now: Now,
        addr: &Ipv6Addr,
    ) -> Result<([u8; KEY_LEN], CircuitInfo), RouteError> {
        let dest = self.lookup(addr).ok_or(RouteError::NoNode(*addr))?;
        if dest == self.key {
            return Err(RouteError::IsSelf(*addr));
        }
        let current = self
            .dests
            .get(&dest)
            .and_then(|d| d.current)
            .map(|(c, _)| c);
        let id = match current {
            Some(c) => c,
            None => {
                if let Some(d) = self.dests.get_mut(&dest) {
                    d.failed_until = None;
                }
                self.build(now, &dest)?
            }
        };
        let info = self.circuits.circuit(id).ok_or(RouteError::Closed)?;
        Ok((dest, info))
    }

    /// The address prefix (`docs/protocol.md, "Identity and addresses"`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The graph, for saving: see [`crate::graph::Graph::export`].
    pub fn export_graph(&self) -> Vec<u8> {
        self.graph.export()
    }

    /// The graph core (for status).
    pub fn graph(&self) -> &GraphCore {
        &self.graph
    }

    /// The graph's counters.
    pub fn graph_counters(&self) -> &GraphCounters {
        self.graph.counters()
    }

    /// The circuit layer's counters.
    pub fn circuit_metrics(&self) -> &CircuitMetrics {
        self.circuits.metrics()
    }

    /// The router's own counters.
    pub fn counters(&self) -> &RouterCounters {
        &self.counters
    }

    /// Every open circuit this node takes part in.
    pub fn circuits(&self) -> impl Iterator<Item = CircuitInfo> + '_ {
        self.circuits.circuits()
    }
}

/// A flow's hash: the addresses, the next header and, for TCP and UDP, the
/// ports, the same in both directions.
pub fn flow_hash(packet: &[u8]) -> u64 {
    let Some((src, dst)) = icmp::ipv6_addresses(packet) else {
        return 0;
    };
    let next = packet[6];
    let ports = match (next, packet.get(40..44)) {
        (6 | 17, Some(p)) => [
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ],
        _ => [0, 0],
    };
    let (a, b) = ((src.octets(), ports[0]), (dst.octets(), ports[1]));
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // FNV-1a: flows are local to this node, so no keyed hash is needed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in
        lo.0.iter()
            .chain(&lo.1.to_be_bytes())
            .chain(&hi.0)
            .chain(&hi.1.to_be_bytes())
            .chain(&[next])
    {
        h = (h ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Removes every avoided edge that starts or ends at `node`; whether there
/// was one.
fn remove_edges_of(
    edges: &mut HashMap<([u8; KEY_LEN], [u8; KEY_LEN]), Instant>,
    node: &[u8; KEY_LEN],
) -> bool {
    let before = edges.len();
    edges.retain(|(a, b), _| a != node && b != node);
    edges.len() != before
}

/// Path selection's "avoid for now" test over the router's tables: the node
/// `b`, or the edge `a → b`, while its time has not run out at `now`.
fn avoider<'a>(
    nodes: &'a HashMap<[u8; KEY_LEN], Instant>,
    edges: &'a HashMap<([u8; KEY_LEN], [u8; KEY_LEN]), Instant>,
    now: Instant,
) -> impl Fn(&[u8; KEY_LEN], &[u8; KEY_LEN]) -> bool + 'a {
    let live = move |until: Option<&Instant>| until.is_some_and(|t| *t > now);
    move |a, b| live(nodes.get(b)) || live(edges.get(&(*a, *b)))
}
