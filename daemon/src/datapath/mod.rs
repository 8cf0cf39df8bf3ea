//! The datapath: the tokio task around the sans-IO [`RouterCore`]
//! (docs/architecture.md, "Tasks and data flow"). It owns the core and the
//! TUN's read side, takes link events, cells and graph messages from the link
//! readers over one channel ([`crate::events`]), and writes cells and graph
//! messages back to the links and packets to the TUN.
//!
//! Cells to a link go through its fair queue and writer ([`out`]); the
//! ledgers are counted in the core, checked with the reports it drafts, and
//! stored by [`ledgers`].

mod ledgers;
pub(crate) use ledgers::record_json;
mod out;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use umbra_routing::cell::CELL_LEN;
use umbra_routing::circuit::SendError;
use umbra_routing::circuit::{CircuitEvent, CircuitId, CircuitRole};
use umbra_routing::graph::Time;
use umbra_routing::ledger::Classifier;
use umbra_routing::router::{MessageError, Now, RouteError, RouterCore};
use umbra_routing::session::MAX_PACKET_LEN;
use umbra_routing::{Identity, address};
use umbra_transport::proto::control::LinkControl;
use umbra_transport::proto::frame::Frame;
use umbra_tun::Tun;

use out::LinkOut;

use crate::apps::StackPort;
use crate::events::{Input, LinkId, MessageRefused};
use crate::links::{Links, Policy, short_key};
use crate::metrics::{CoreFigures, Metrics};

/// How often the graph is saved to the state database.
const GRAPH_SAVE_EVERY: Duration = Duration::from_secs(60);
/// Packets read from the TUN per batch.
const TUN_BATCH: usize = 32;
/// How long reads of the TUN may fail without one success before the
/// datapath gives up (the interface was deleted, say): a node that cannot
/// read its TUN carries nothing, so it exits to be restarted.
const TUN_FAILING_LIMIT: Duration = Duration::from_secs(2);
/// Inputs handled before the datapath writes what they produced: with
/// link readers' batches of cells ([`crate::events::CELL_BATCH`]), up to
/// 256 cells.
const INPUT_BATCH: usize = 8;
/// `umbra status` warns when circuits reach fewer nodes than this (and not
/// every node known).
const FEW_REACHABLE: usize = 5;
/// Nodes `umbra status` looks for a path to, at most.
const REACHABILITY_CHECKS: usize = 64;

fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall: Time::from(SystemTime::now()),
    }
}

/// Where packets delivered to this node go: the TUN, the userspace stack
/// (docs/architecture.md, "Apps without the TUN"), or both, split by
/// [`StackPort::takes`].
pub(crate) struct Outputs {
    pub(crate) tun: Option<Arc<Tun>>,
    pub(crate) stack: Option<StackPort>,
}

/// Runs the datapath until its input channel closes; an error is one the
/// node cannot route past (a routing core that will not start, a TUN that
/// keeps failing).
pub(crate) async fn run(
    identity: Identity,
    prefix: u8,
    links: Arc<Links>,
    outputs: Outputs,
    mut rx: mpsc::Receiver<Input>,
) -> anyhow::Result<()> {
    let Outputs { tun, stack } = outputs;
    let cache = links.load_graph();
    let edges = links.edges();
    let rng = Box::new(rand_core::OsRng);
    let mut core = match RouterCore::new(
        identity.clone(),
        prefix,
        now(),
        &edges,
        cache.as_deref(),
        rng,
    ) {
        Ok(c) => c,
        Err(e) => anyhow::bail!("starting the routing core: {e}"),
    };
    for (peer, record) in links.load_ledgers() {
        core.restore_ledger(now(), peer, record);
    }
    let policy = apply_policy(&mut core, &links);
    let saver = ledgers::Saver::spawn(Arc::clone(&links));
    tracing::info!(
        anonymity = ?policy.anonymity,
        routes = policy.routes.len(),
        home = ?policy.home.map(|h| short_key(&h)),
        nodes = core.graph().graph().node_count(),
        edges = edges.len(),
        "routing core up"
    );
    let mut outs = Outs {
        links: HashMap::new(),
        identity,
        queued: Arc::new(AtomicUsize::new(0)),
        dropped: QueueDrops::default(),
    };
    let (mut bufs, mut sizes) = match &tun {
        Some(t) => t.batch_buffers(TUN_BATCH),
        None => (Vec::new(), Vec::new()),
    };
    let mut packet = vec![0u8; MAX_PACKET_LEN];
    // Cells are written straight into one shared buffer and split off as
    // frames, so a batch of cells costs one allocation, not one each.
    let mut cells = BytesMut::new();
    let mut next_save = Instant::now() + GRAPH_SAVE_EVERY;
    let metrics = Arc::clone(links.metrics());
    // Pooled prefixes built: their extension to a destination is not
    // timed as a build of its own (docs/architecture.md, "Metrics").
    let mut prefixes: HashSet<CircuitId> = HashSet::new();
    // When the TUN's reads began failing without a success since.
    let mut tun_failing: Option<Instant> = None;
    loop {
        let wake = next_wake(&core, next_save);
        tokio::select! {
            input = rx.recv() => {
                let Some(mut input) = input else { break };
                // One clock reading for the batch.
                let now = now();
                for i in 0..INPUT_BATCH {
                    if let Input::Flush(reply) = input {
                        // Everything counted so far is stored before the
                        // answer: shutdown loses nothing.
                        saver.flush(core.ledgers().records()).await;
                        links.save_graph(&core.export_graph());
                        let _ = reply.send(());
                    } else {
                        handle(&mut core, &mut outs, &links, now, input);
                    }
                    if i + 1 == INPUT_BATCH {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(next) => input = next,
                        Err(_) => break,
                    }
                }
            }
            read = recv_tun(tun.as_deref(), &mut bufs, &mut sizes) => match read {
                Ok(n) => {
                    tun_failing = None;
                    let now = now();
                    for (buf, &len) in bufs.iter().zip(&sizes).take(n) {
                        core.send_packet(now, &buf[..len]);
                    }
                }
                Err(e) => {
                    let since = *tun_failing.get_or_insert_with(Instant::now);
                    if since.elapsed() >= TUN_FAILING_LIMIT {
                        anyhow::bail!(
                            "reading the TUN has failed for {} s: {e}",
                            TUN_FAILING_LIMIT.as_secs()
                        );
                    }
                    tracing::error!("reading the TUN: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = tokio::time::sleep_until(wake.into()) => {
                core.handle_timeout(now());
                if Instant::now() >= next_save {
                    // SQLite off the cell path: the save runs on the
                    // blocking pool while cells go on.
                    let (records, links) = (core.export_graph(), Arc::clone(&links));
                    tokio::task::spawn_blocking(move || links.save_graph(&records));
                    next_save = Instant::now() + GRAPH_SAVE_EVERY;
                }
            }
        }
        // Write out what the input produced: packets first, since taking them
        // releases SENDMEs, which are cells.
        while let Some(n) = core.poll_packet(&mut packet) {
            let p = &packet[..n];
            if let Some(s) = stack.as_ref().filter(|s| s.takes(p)) {
                s.give(p);
            } else if let Some(t) = &tun
                && let Err(e) = t.send_batch(&[p]).await
            {
                tracing::warn!("writing to the TUN: {e}");
            }
        }
        // Circuits that overran their queue this turn, with the cells they
        // were refused.
        let mut overruns: Vec<((LinkId, u32), u64)> = Vec::new();
        while let Some((link, flow, weight)) = poll_cell(&mut core, &mut cells) {
            let cell = cells.split().freeze();
            // A link that just went down has no queue; the core learns of it
            // from its reader's LinkDown and tears its circuits down.
            if let Some(o) = outs.links.get(&link)
                && let out::Queued::Overrun(circ) = o.cell(flow, weight, cell)
            {
                match overruns.iter_mut().find(|(k, _)| *k == (link, circ)) {
                    Some((_, n)) => *n += 1,
                    None => overruns.push(((link, circ), 1)),
                }
            }
        }
        for (leg, refused) in overruns {
            outs.close_overrun(
                &mut core,
                &metrics,
                leg,
                refused,
                QueueDrop::CircuitQueueFull,
            );
        }
        outs.shed(&mut core, &metrics);
        while let Some((link, msg)) = core.poll_graph() {
            if let Some(o) = outs.links.get(&link) {
                o.control(Frame::GraphRecord(msg.into()));
            }
        }
        let now_ = now();
        while let Some((link, draft)) = core.poll_report(now_) {
            if let Some(o) = outs.links.get(&link) {
                o.report(draft);
            }
        }
        while let Some(ev) = core.poll_ledger_event() {
            ledgers::log_event(&ev);
        }
        let dirty = core.take_dirty_ledgers();
        if !dirty.is_empty() {
            saver.save(dirty)?;
        }
        while let Some(ev) = core.poll_event() {
            time_build(&core, &metrics, &mut prefixes, &ev);
            log_event(&ev);
        }
        while let Some((from, payload)) = core.poll_message() {
            links.on_message(&from, &payload);
        }
        while let Some((dest, error)) = core.poll_failure() {
            let anonymity = core.anonymity_for(&dest);
            tracing::warn!(to = %short_key(&dest), ?anonymity, "no circuit: {}", advice(&dest, &error));
        }
    }
    saver.flush(core.ledgers().records()).await;
    links.save_graph(&core.export_graph());
    Ok(())
}

/// Why the link queues drop cells (and close the circuit they belong to).
#[derive(Debug, Clone, Copy)]
enum QueueDrop {
    /// The circuit had [`out::MAX_QUEUED_PER_CIRCUIT`] cells waiting.
    CircuitQueueFull,
    /// The node's queues held more than [`out::MAX_QUEUED_CELLS`], and the
    /// circuit held the most.
    QueuesFull,
}

impl QueueDrop {
    /// The `reason` label of `umbra_dropped_total`, and the key in `umbra
    /// status`'s `drops`.
    fn label(self) -> &'static str {
        match self {
            QueueDrop::CircuitQueueFull => "circuit_queue_full",
            QueueDrop::QueuesFull => "queues_full",
        }
    }
}

/// The queues of the live links, and what their writers sign reports with.
struct Outs {
    links: HashMap<LinkId, LinkOut>,
    identity: Identity,
    /// Cells waiting on every link.
    queued: Arc<AtomicUsize>,
    /// Cells the queues dropped, for `umbra status`.
    dropped: QueueDrops,
}

/// Cells dropped from the link queues, by reason (the same figures as
/// `umbra_dropped_total`'s `circuit_queue_full` and `queues_full`).
#[derive(Default)]
struct QueueDrops {
    circuit_queue_full: u64,
    queues_full: u64,
}

impl Outs {
    fn up(&mut self, link: LinkId, peer: &[u8; 32], sender: umbra_transport::io::LinkSender) {
        let out = self.new_out(peer, sender, None);
        if let Some(old) = self.links.insert(link, out) {
            old.finish(None);
        }
    }

    fn new_out(
        &self,
        peer: &[u8; 32],
        sender: umbra_transport::io::LinkSender,
        after: Option<tokio::task::JoinHandle<umbra_routing::ledger::report::Counts>>,
    ) -> LinkOut {
        let classifier = Classifier::new(&self.identity.public(), peer);
        LinkOut::new(
            sender,
            self.identity.clone(),
            classifier,
            after,
            Arc::clone(&self.queued),
        )
    }

    /// Closes circuit `circ` of `link`, whose cells overran its queue or
    /// held the most when all queues were full, and drops its waiting
    /// cells; they and `refused` (cells it was refused before) are counted
    /// as `reason`.
    fn close_overrun(
        &mut self,
        core: &mut RouterCore,
        metrics: &Metrics,
        (link, circ): (LinkId, u32),
        refused: u64,
        reason: QueueDrop,
    ) {
        core.close_overrun(now(), link, circ);
        let dropped = self.links.get(&link).map_or(0, |o| o.drop_circuit(circ));
        let n = dropped as u64 + refused;
        metrics.count_drop(reason.label(), n);
        *match reason {
            QueueDrop::CircuitQueueFull => &mut self.dropped.circuit_queue_full,
            QueueDrop::QueuesFull => &mut self.dropped.queues_full,
        } += n;
        tracing::warn!(
            link,
            circ,
            dropped,
            "closed a circuit whose cells overran their queue ({})",
            reason.label()
        );
    }

    /// While the node's queues hold more than [`out::MAX_QUEUED_CELLS`],
    /// closes the circuit holding the most, as Tor's out-of-memory handler
    /// does.
    fn shed(&mut self, core: &mut RouterCore, metrics: &Metrics) {
        while self.queued.load(Ordering::Relaxed) > out::MAX_QUEUED_CELLS {
            let largest = self
                .links
                .iter()
                .filter_map(|(&l, o)| o.largest().map(|(c, n)| (n, l, c)))
                .max();
            let Some((_, link, circ)) = largest else {
                return;
            };
            self.close_overrun(core, metrics, (link, circ), 0, QueueDrop::QueuesFull);
        }
    }
}

async fn recv_tun(
    tun: Option<&Tun>,
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) -> Result<usize, umbra_tun::TunError> {
    match tun {
        Some(t) => t.recv_batch(bufs, sizes).await,
        None => std::future::pending().await,
    }
}

/// Cells are allocated for in blocks of this many.
const CELL_BLOCK: usize = 64;

/// Has the core write its next cell into `buf` (which holds nothing else),
/// reserving room for [`CELL_BLOCK`] cells at a time; its link, flow and
/// weight.
fn poll_cell(core: &mut RouterCore, buf: &mut BytesMut) -> Option<(LinkId, [u8; 32], u32)> {
    if buf.capacity() < CELL_LEN {
        buf.reserve(CELL_LEN * CELL_BLOCK);
    }
    buf.resize(CELL_LEN, 0);
    let cell: &mut [u8; CELL_LEN] = (&mut buf[..]).try_into().ok()?;
    let paid = core.poll_cell_paid(cell);
    if paid.is_none() {
        buf.clear();
    }
    paid
}

/// The earliest of the core's timers and the next graph save.
fn next_wake(core: &RouterCore, next_save: Instant) -> Instant {
    let (mono, wall) = core.poll_timeout();
    let now_mono = Instant::now();
    let now_wall = Time::from(SystemTime::now());
    let wall = wall.map(|t| now_mono + t.saturating_duration_since(now_wall));
    [mono, wall, Some(next_save)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_save)
}

/// Observes a circuit's build time when `ev` says it is built: from when
/// the core created it to now. A pooled prefix counts as a build of kind
/// "prefix"; extending it to a destination later is not timed again.
fn time_build(
    core: &RouterCore,
    metrics: &Metrics,
    prefixes: &mut HashSet<CircuitId>,
    ev: &CircuitEvent,
) {
    let (id, kind) = match ev {
        CircuitEvent::Built { circuit, .. } => {
            if prefixes.remove(circuit) {
                return;
            }
            (*circuit, "full")
        }
        CircuitEvent::PrefixBuilt { circuit } => {
            prefixes.insert(*circuit);
            (*circuit, "prefix")
        }
        CircuitEvent::Closed { circuit, .. } | CircuitEvent::Unreachable { circuit, .. } => {
            prefixes.remove(circuit);
            return;
        }
        _ => return,
    };
    if let Some(c) = core.circuits().find(|c| c.id == id) {
        metrics.circuit_built(kind, c.created.elapsed());
    }
}

fn handle(core: &mut RouterCore, outs: &mut Outs, links: &Links, now: Now, input: Input) {
    match input {
        Input::Cells { link, cells } => {
            for cell in cells {
                match <&[u8; CELL_LEN]>::try_from(&cell[..]) {
                    Ok(c) => core.handle_cell(now, link, c),
                    // The link layer checks cell lengths; this cannot happen.
                    Err(_) => {
                        tracing::debug!(link, len = cell.len(), "dropped a cell of the wrong size")
                    }
                }
            }
        }
        Input::Graph { link, bytes } => core.handle_graph(now, link, &bytes),
        Input::Packets(packets) => {
            for p in packets {
                core.send_packet(now, &p);
            }
        }
        Input::Ledger { link, bytes } => core.handle_ledger(now, link, &bytes),
        Input::Charges(charges) => {
            for (peer, charge) in charges {
                core.charge_ledger(now, &peer, charge);
            }
        }
        Input::Ledgers(reply) => {
            let _ = reply.send(ledgers::views(core, now));
        }
        Input::LinkUp {
            link,
            peer,
            sender,
            carried,
            session,
        } => {
            outs.up(link, &peer, sender);
            if let Err(e) = core.set_edges(now, &links.edges()) {
                tracing::warn!("re-signing the node record: {e}");
            }
            apply_policy(core, links);
            if carried {
                core.carried_link_up(now, link, peer, session);
            } else {
                core.link_up_session(now, link, peer, session);
            }
        }
        Input::LinkMoved { link, sender, hash } => {
            // The old connection gets the marker after everything queued
            // for it; the new one's writer starts once it is written.
            let Some(peer) = core.link_peer(link) else {
                return;
            };
            let after = outs
                .links
                .remove(&link)
                .map(|old| old.finish(Some(LinkControl::Moved { to: hash }.frame())));
            let out = outs.new_out(&peer, sender, after);
            outs.links.insert(link, out);
            // A move is always to a connection of the link's own.
            core.link_uncarried(link);
        }
        Input::LinkDown { link } => {
            if let Some(old) = outs.links.remove(&link) {
                old.finish(None);
            }
            core.link_down(now, link);
        }
        Input::Edges(edges) => {
            if let Err(e) = core.set_edges(now, &edges) {
                tracing::warn!("re-signing the node record: {e}");
            }
            apply_policy(core, links);
        }
        Input::Path(addr, reply) => {
            let _ = reply.send(path_json(core, now, &addr));
        }
        Input::Status(reply) => {
            let _ = reply.send(status(core, &outs.dropped));
        }
        // Handled in the loop: it waits for the ledger saver.
        Input::Flush(reply) => {
            let _ = reply.send(());
        }
        Input::Metrics(reply) => {
            let _ = reply.send(CoreFigures::of(core, &links.agreement_ids()));
        }
        Input::Message { to, payload, reply } => {
            let sent = core.send_message(now, &to, &payload).map_err(|e| match e {
                MessageError::Send(SendError::QueueFull) => MessageRefused::Full,
                e => MessageRefused::Cannot(e.to_string()),
            });
            let _ = reply.send(sent);
        }
        Input::Neighbours(key, reply) => {
            let _ = reply.send(core.graph().graph().neighbours(&key));
        }
        Input::NodeFor(addr, reply) => {
            let _ = reply.send(core.node_for_address(&addr));
        }
        Input::Knows(key, reply) => {
            let _ = reply.send(core.graph().graph().get(&key).is_some());
        }
    }
}

/// The routing core takes the links' path policy (the setting, the home
/// node and the per-destination routes) and the agreements' terms for
/// their ledgers.
fn apply_policy(core: &mut RouterCore, links: &Links) -> Policy {
    let policy = links.policy();
    core.set_policy(policy.anonymity, policy.home);
    core.set_routes(policy.routes.clone());
    core.set_ledger_terms(now(), &links.ledger_terms());
    policy
}

/// Why there is no circuit to `dest`, and, when the graph is only too small
/// for the setting, what the operator can do about it.
fn advice(dest: &[u8; 32], error: &RouteError) -> String {
    match error {
        RouteError::Path(e) if e.too_few_relays() => format!(
            "{error}. To reach it, make agreements with more operators (each one adds relays \
             to the graph), or give this destination its own setting in the config: \
             [[route]] to = \"{}\" anonymity = \"fast\" (docs/config.md, \"[[route]]\", \
             says what that gives away)",
            hex::encode(dest)
        ),
        _ => error.to_string(),
    }
}

fn log_event(ev: &CircuitEvent) {
    match ev {
        CircuitEvent::Built {
            circuit,
            destination,
        } => tracing::info!(%circuit, to = %short_key(destination), "circuit built"),
        CircuitEvent::PrefixBuilt { circuit } => {
            tracing::debug!(%circuit, "pooled prefix built")
        }
        CircuitEvent::Incoming { circuit, origin } => {
            tracing::debug!(%circuit, from = %short_key(origin), "incoming circuit")
        }
        CircuitEvent::Closed {
            circuit,
            peer,
            reason,
        } => tracing::info!(%circuit, peer = %short_key(peer), %reason, "circuit closed"),
        CircuitEvent::Unreachable {
            circuit,
            destination,
            failed_hop,
            reason,
        } => {
            tracing::warn!(%circuit, to = %short_key(destination), ?failed_hop, %reason, "circuit build failed")
        }
        CircuitEvent::TagFailure { circuit, role } => {
            tracing::warn!(%circuit, ?role, "end-to-end tag failure: a cell was changed on the way; circuit destroyed")
        }
    }
}

/// `umbra path ADDRESS --json`: the circuit new flows to ADDRESS take, and
/// what each hop on it can see (docs/cli.md).
fn path_json(core: &mut RouterCore, now: Now, addr: &std::net::Ipv6Addr) -> Result<Value, String> {
    // Nodes that refused our circuits for our ledger with them: why a path
    // is missing or a build fails (docs/architecture.md, "Ledgers").
    let refusals: Vec<(String, String)> = core
        .refusals(now)
        .into_iter()
        .map(|(k, r)| (hex::encode(k), r.to_string()))
        .collect();
    let refused_text = refusals
        .iter()
        .map(|(k, r)| format!("{} refused our circuits: {r}", &k[..8]))
        .collect::<Vec<_>>()
        .join("; ");
    let (dest, info) = core.path_to(now, addr).map_err(|e| {
        let text = match &e {
            RouteError::Path(_) => match core.node_for_address(addr) {
                Some(dest) => advice(&dest, &e),
                None => e.to_string(),
            },
            _ => e.to_string(),
        };
        if refused_text.is_empty() {
            text
        } else {
            // A refusal is the reason, whatever path selection says after.
            format!("{refused_text}. Without that hop: {text}")
        }
    })?;
    let prefix = core.prefix();
    let me = core.graph().key().to_owned();
    let node = |k: &[u8; 32]| json!({"key": hex::encode(k), "address": address::address_for_key(k, prefix).to_string()});
    let mut hops = Vec::new();
    for (i, k) in info.path.iter().enumerate() {
        let prev = if i == 0 { me } else { info.path[i - 1] };
        let next = info.path.get(i + 1);
        let role = if i + 1 == info.path.len() {
            "destination: knows the origin (the session is end to end) and the previous hop"
        } else if i == 0 {
            "home node: knows the origin's IP and key, not the destination"
        } else if i + 2 == info.path.len() {
            "last relay: knows the destination, not the origin"
        } else {
            "middle relay: knows only its two neighbours"
        };
        let mut hop = node(k);
        hop["sees"] = json!([node(&prev), next.map(node)]);
        hop["role"] = json!(role);
        hops.push(hop);
    }
    Ok(json!({
        "destination": node(&dest),
        "circuit": info.id.to_string(),
        "built": info.built,
        "hops_built": info.hops_built,
        "age_secs": info.created.elapsed().as_secs(),
        "hops": hops,
        "refused_by": refusals
            .iter()
            .map(|(k, r)| json!({"key": k, "reason": r}))
            .collect::<Vec<_>>(),
    }))
}

/// What `umbra status` warns about: too few nodes reachable with the
/// current settings (docs/cli.md, "umbra status").
fn warnings(core: &mut RouterCore) -> (Value, Vec<String>) {
    let r = core.reachability(REACHABILITY_CHECKS);
    let setting = format!("{:?}", core.anonymity()).to_lowercase();
    let mut warnings = Vec::new();
    if r.known == 0 {
        warnings.push(
            "no other node is known yet: make an agreement (umbra invite on one node, umbra \
             accept on the other) or add a [[peer]]"
                .to_string(),
        );
    } else if r.reachable < FEW_REACHABLE && r.reachable < r.checked {
        let mut w = format!(
            "circuits reach only {} of the {} other nodes known with anonymity = \"{setting}\"",
            r.reachable, r.known
        );
        if r.too_few_relays > 0 {
            w.push_str(&format!(
                "; {} need more relays than the graph has: make agreements with more operators, \
                 or give a destination its own setting with [[route]] to = \"<key>\" \
                 anonymity = \"fast\" (umbra path <address> says what each one lacks)",
                r.too_few_relays
            ));
        }
        warnings.push(w);
    }
    let json = json!({
        "anonymity": setting,
        "known": r.known,
        "checked": r.checked,
        "reachable": r.reachable,
        "too_few_relays": r.too_few_relays,
    });
    (json, warnings)
}

/// The datapath's part of `umbra status --json`.
fn status(core: &mut RouterCore, queues: &QueueDrops) -> Value {
    let (reachability, warnings) = warnings(core);
    let prefix_of = |k: &[u8; 32]| json!({"key": hex::encode(k), "address": address::address_for_key(k, core.prefix()).to_string()});
    let circuits: Vec<Value> = core
        .circuits()
        .map(|c| {
            json!({
                "id": c.id.to_string(),
                "role": match c.role {
                    CircuitRole::Origin => "origin",
                    CircuitRole::Relay => "relay",
                    CircuitRole::Destination => "destination",
                },
                "built": c.built,
                "pooled": c.prefix,
                "path": c.path.iter().map(prefix_of).collect::<Vec<_>>(),
                "prev": c.prev.as_ref().map(prefix_of),
                "next": c.next.as_ref().map(prefix_of),
                "peer": c.peer.as_ref().map(prefix_of),
                "age_secs": c.created.elapsed().as_secs(),
                "cells_in": c.cells_in,
                "cells_out": c.cells_out,
                "relay_crypto": c.relay_crypto_versions,
            })
        })
        .collect();
    let m = core.circuit_metrics();
    let d = &m.drops;
    let r = core.counters();
    let g = core.graph_counters();
    let rd = core.ledgers().drops();
    let ledgers = json!({
        "reports_dropped": {
            "malformed": rd.malformed,
            "forged": rd.forged,
            "replayed": rd.replayed,
            "too_often": rd.too_often,
        },
    });
    let drops = json!({
        "forged_source": d.forged_source,
        "replayed": d.replayed,
        "not_ipv6": d.not_ipv6,
        "malformed": d.malformed,
        "send_queue_full": d.send_queue_full,
        "lost_on_close": d.lost_on_close,
        "buffer_too_small": d.buffer_too_small,
        "unknown_circuit_cells": m.unknown_circuit_cells,
        "not_overlay": r.not_overlay,
        "no_node": r.no_node,
        "no_path": r.no_path,
        "to_self": r.to_self,
        "icmp_rate_limited": r.icmp_limited,
        QueueDrop::CircuitQueueFull.label(): queues.circuit_queue_full,
        QueueDrop::QueuesFull.label(): queues.queues_full,
    });
    json!({
        "circuits": circuits,
        "ledgers": ledgers,
        "reachability": reachability,
        "warnings": warnings,
        "graph": {
            "nodes": core.graph().graph().node_count(),
            "edges": core.graph().graph().edge_count(),
        },
        "metrics": {
            "cells_in": m.cells_in,
            "cells_out": m.cells_out,
            "cells_relayed": m.cells_relayed,
            "packets_sent": m.packets_sent,
            "packet_bytes_sent": m.packet_bytes_sent,
            "packets_delivered": m.packets_delivered,
            "packet_bytes_delivered": m.packet_bytes_delivered,
            "circuits_built": m.circuits_built,
            "circuits_accepted": m.circuits_accepted,
            "circuits_refused": m.circuits_refused,
            "circuits_closed": m.circuits_closed,
            "build_failures": m.build_failures,
            "tag_failures": m.tag_failures,
            "handshake_failures": m.handshake_failures,
            "protocol_errors": m.protocol_errors,
            "graph_messages_in": g.messages_in,
            "graph_messages_out": g.messages_out,
            "icmp_unreachable_sent": r.icmp_sent,
            "circuit_builds": r.builds,
            "pool_hits": r.pool_hits,
            "pool_misses": r.pool_misses,
            "prefixes_built": r.prefixes_built,
            "drops": drops,
        },
    })
}
