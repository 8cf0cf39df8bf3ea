//! A deterministic simulation of many sans-IO routing cores on one thread
//! (`docs/architecture.md, "Testing"`).
//!
//! - A discrete-event loop: a `BinaryHeap` of (virtual time, sequence
//!   number, event). Events at the same time run in the order they were
//!   scheduled, so a run depends only on its seed.
//! - Nodes are anything that implements [`SimNode`]: a sans-IO core with
//!   links, driven the quinn-proto way (`handle_*` with `now`, then
//!   `poll_transmit` until empty, then `poll_timeout`). The graph core
//!   ([`graph_node::GraphNode`]) is one; circuit cores with a packet app
//!   ([`circuit_node::CircuitNode`]) are another.
//! - Links have a latency, a bandwidth and a loss rate, can be cut
//!   (partitions) and healed, and nodes can fail and restart (churn).
//! - A seeded RNG ([`Rng`], ChaCha8). [`seed`] reads `UMBRA_SIM_SEED` so a failing
//!   run can be replayed; put [`Sim::context`] in assertion messages so the
//!   seed is printed.
//!
//! **Loss is modelled as TCP shows it.** umbra's links are TLS over TCP
//! (`docs/protocol.md, "Link setup"`), so a lost segment is retransmitted by the kernel: the
//! application sees delay, never a missing or reordered message. A lost
//! transmission here is delivered after one more retransmission timeout
//! (doubling per repeated loss), and everything sent after it on the same
//! link waits behind it (head-of-line blocking). Only a link going down
//! loses messages: those in flight on it are discarded, as a reset TCP
//! connection discards them, and the cores resynchronise on the next
//! `link_up`.

pub mod circuit_node;
pub mod graph_node;
pub mod router_node;
pub mod topology;

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Virtual time: how long since the simulation started.
pub type SimTime = Duration;

/// The environment variable that overrides a test's seed.
pub const SEED_ENV: &str = "UMBRA_SIM_SEED";

/// The seed to run with: `UMBRA_SIM_SEED` if it is set (decimal or `0x` hex),
/// else `default`. Prints it, so every run's output names its seed.
pub fn seed(default: u64) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            match parsed {
                Ok(v) => v,
                Err(e) => panic!("{SEED_ENV}={s:?} is not a u64 ({e})"),
            }
        }
        Err(_) => default,
    };
    eprintln!("sim seed {seed:#x} (override with {SEED_ENV})");
    seed
}

/// The simulation's seeded RNG: ChaCha8 (`rand_chacha`) behind a few
/// helpers. It is a `CryptoRng`, so it can feed the routing cores (which
/// draw handshake keys from their RNG), but its seed is a known `u64`: its
/// output is reproducible, never secret.
#[derive(Clone, Debug)]
pub struct Rng(ChaCha8Rng);

impl Rng {
    /// An RNG whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n` (`n > 0`), by widening multiplication.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// An index in `0..n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A duration uniformly in `lo..=hi`.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_nanos().min(u128::from(u64::MAX)) as u64;
        lo + Duration::from_nanos(self.below(span.saturating_add(1)))
    }

    /// 32 random bytes (a key seed).
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.0.fill_bytes(&mut out);
        out
    }

    /// An independent RNG, for a sub-task whose draws must not shift the
    /// parent's sequence.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    /// Shuffles `v` (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }
}

/// The same stream for code that takes a `rand_core` RNG (path selection,
/// the routing cores), so a seed fixes their choices and keys too.
impl RngCore for Rng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

impl rand_core::CryptoRng for Rng {}

/// A sans-IO core with links, as the simulation drives it. Links are named
/// by the simulation's link index, nodes by their index.
pub trait SimNode {
    /// How a node names its peers (for umbra cores: the public key).
    type Id: Clone;
    /// What travels on a link.
    type Message;

    /// This node's name, given to its peers' `link_up`.
    fn id(&self) -> Self::Id;
    /// A link to `peer` came up.
    fn link_up(&mut self, now: SimTime, link: usize, peer: &Self::Id);
    /// A link went down.
    fn link_down(&mut self, now: SimTime, link: usize);
    /// A message arrived on `link`.
    fn handle_message(&mut self, now: SimTime, link: usize, msg: Self::Message);
    /// The next message to send, and its link.
    fn poll_transmit(&mut self, now: SimTime) -> Option<(usize, Self::Message)>;
    /// When the node next wants `handle_timeout`.
    fn poll_timeout(&self) -> Option<SimTime>;
    /// Time has reached `now`.
    fn handle_timeout(&mut self, now: SimTime);
    /// Bytes `msg` takes on the wire, for bandwidth and accounting.
    fn wire_len(msg: &Self::Message) -> usize;
}

/// How a link behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkParams {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Probability that one transmission of a message is lost (and so
    /// retransmitted after `rto`).
    pub loss: f64,
    /// TCP's retransmission timeout for the first retransmission; it doubles
    /// for each further loss of the same message.
    pub rto: Duration,
    /// Bytes per second each way, or `None` for no limit.
    pub bandwidth: Option<u64>,
}

impl Default for LinkParams {
    fn default() -> LinkParams {
        LinkParams {
            latency: Duration::from_millis(20),
            loss: 0.0,
            rto: Duration::from_millis(200),
            bandwidth: None,
        }
    }
}

/// What a node sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages sent.
    pub sent_msgs: u64,
    /// Bytes sent.
    pub sent_bytes: u64,
    /// Messages received.
    pub recv_msgs: u64,
    /// Bytes received.
    pub recv_bytes: u64,
}

/// Totals over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages discarded because their link went down (or never was up).
    pub lost_on_down_link: u64,
    /// Retransmissions caused by loss.
    pub retransmissions: u64,
    /// Time of the last delivery.
    pub last_delivery: SimTime,
    /// Most events queued at once (messages in flight and timers).
    pub peak_queue: usize,
}

struct Link {
    ends: [usize; 2],
    params: LinkParams,
    up: bool,
    /// Held down by a partition until healed.
    blocked: bool,
    /// Bumped each time the link goes up or down; messages of an older
    /// generation belong to a dead connection.
    generation: u64,
    busy_until: [SimTime; 2],
    last_arrival: [SimTime; 2],
}

struct Slot<N> {
    node: Option<N>,
    timer: Option<SimTime>,
    links: Vec<usize>,
    stats: NodeStats,
}

/// Something for the event loop to do at some time.
type Action<N> = Box<dyn FnOnce(&mut Sim<N>)>;

/// A message on its way to node `to` over `link`, sent while the link was
/// in `generation`.
struct Delivery<M> {
    link: usize,
    to: usize,
    generation: u64,
    len: usize,
    msg: M,
}

enum Event<N: SimNode> {
    Deliver(Delivery<N::Message>),
    Timer { node: usize },
    Action(Action<N>),
}

/// A queued event: its time, its place in scheduling order, and where the
/// event itself waits. The heap moves only these 24 bytes around.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Scheduled {
    at: SimTime,
    seq: u64,
    slot: usize,
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so the `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The simulation: nodes, links, the event queue, a virtual clock and an RNG.
pub struct Sim<N: SimNode> {
    now: SimTime,
    seed: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    /// The queued events, where `Scheduled::slot` points.
    events: Vec<Option<Event<N>>>,
    free_events: Vec<usize>,
    slots: Vec<Slot<N>>,
    links: Vec<Link>,
    rng: Rng,
    stats: SimStats,
}

impl<N: SimNode> fmt::Debug for Sim<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("seed", &format_args!("{:#x}", self.seed))
            .field("nodes", &self.slots.len())
            .field("links", &self.links.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl<N: SimNode + 'static> Sim<N> {
    /// An empty simulation at time zero.
    pub fn new(seed: u64) -> Sim<N> {
        Sim {
            now: Duration::ZERO,
            seed,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            free_events: Vec::new(),
            slots: Vec::new(),
            links: Vec::new(),
            rng: Rng::new(seed),
            stats: SimStats::default(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// For assertion messages: the seed and how to replay it.
    pub fn context(&self) -> String {
        format!(
            "seed {:#x} at {:?}; replay with {SEED_ENV}={:#x}",
            self.seed, self.now, self.seed
        )
    }

    /// The simulation's RNG (link loss draws from it too).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Run totals.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Adds a node; returns its index.
    pub fn add_node(&mut self, node: N) -> usize {
        self.slots.push(Slot {
            node: Some(node),
            timer: None,
            links: Vec::new(),
            stats: NodeStats::default(),
        });
        let i = self.slots.len() - 1;
        self.pump(i);
        i
    }

    /// Number of nodes, failed ones included.
    pub fn node_count(&self) -> usize {
        self.slots.len()
    }

    /// Node `i`, unless it has failed.
    pub fn node(&self, i: usize) -> Option<&N> {
        self.slots.get(i)?.node.as_ref()
    }

    /// Node `i`, mutably. Call [`Sim::pump`] after changing it from outside,
    /// so what it wants to send is sent.
    pub fn node_mut(&mut self, i: usize) -> Option<&mut N> {
        self.slots.get_mut(i)?.node.as_mut()
    }

    /// Calls `f` on node `i` at the current time, then sends what it wants
    /// to send and reschedules its timer.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut N, SimTime) -> R) -> Option<R> {
        let now = self.now;
        let r = f(self.slots.get_mut(i)?.node.as_mut()?, now);
        self.pump(i);
        Some(r)
    }

    /// The nodes that have not failed, with their indices.
    pub fn nodes(&self) -> impl Iterator<Item = (usize, &N)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.node.as_ref()?)))
    }

    /// What node `i` sent and received.
    pub fn node_stats(&self, i: usize) -> NodeStats {
        self.slots.get(i).map(|s| s.stats).unwrap_or_default()
    }

    /// Adds a link between `a` and `b`, down; bring it up with
    /// [`Sim::set_link_up`] or [`Sim::link_up_at`]. Returns its index.
    pub fn add_link(&mut self, a: usize, b: usize, params: LinkParams) -> usize {
        let i = self.links.len();
        self.links.push(Link {
            ends: [a, b],
            params,
            up: false,
            blocked: false,
            generation: 0,
            busy_until: [Duration::ZERO; 2],
            last_arrival: [Duration::ZERO; 2],
        });
        for n in [a, b] {
            if let Some(s) = self.slots.get_mut(n) {
                s.links.push(i);
            }
        }
        i
    }

    /// Number of links.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// The two ends of `link`.
    pub fn link_ends(&self, link: usize) -> Option<(usize, usize)> {
        self.links.get(link).map(|l| (l.ends[0], l.ends[1]))
    }

    /// Whether `link` is up.
    pub fn link_is_up(&self, link: usize) -> bool {
        self.links.get(link).is_some_and(|l| l.up)
    }

    /// The links of node `i`.
    pub fn links_of(&self, i: usize) -> &[usize] {
        self.slots
            .get(i)
            .map(|s| s.links.as_slice())
            .unwrap_or_default()
    }

    /// Runs `action` at time `at` (or now, if that has passed).
    pub fn schedule(&mut self, at: SimTime, action: impl FnOnce(&mut Sim<N>) + 'static) {
        self.push(at.max(self.now), Event::Action(Box::new(action)));
    }

    /// Brings `link` up at time `at`.
    pub fn link_up_at(&mut self, at: SimTime, link: usize) {
        self.schedule(at, move |sim| sim.set_link_up(link));
    }

    /// Brings `link` up now, if both ends are alive and no partition holds
    /// it down; both ends get `link_up`.
    pub fn set_link_up(&mut self, link: usize) {
        let now = self.now;
        let Some(l) = self.links.get(link) else {
            return;
        };
        let [a, b] = l.ends;
        if l.up || l.blocked {
            return;
        }
        let (Some(ida), Some(idb)) = (self.node(a).map(N::id), self.node(b).map(N::id)) else {
            return;
        };
        if let Some(l) = self.links.get_mut(link) {
            l.up = true;
            l.generation += 1;
            l.busy_until = [now; 2];
            l.last_arrival = [now; 2];
        }
        for (n, peer) in [(a, idb), (b, ida)] {
            if let Some(node) = self.slots.get_mut(n).and_then(|s| s.node.as_mut()) {
                node.link_up(now, link, &peer);
            }
        }
        self.pump(a);
        self.pump(b);
    }

    /// Takes `link` down now: messages in flight on it are lost and both
    /// ends get `link_down`.
    pub fn set_link_down(&mut self, link: usize) {
        let now = self.now;
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if !l.up {
            return;
        }
        l.up = false;
        l.generation += 1;
        let ends = l.ends;
        for n in ends {
            if let Some(node) = self.slots.get_mut(n).and_then(|s| s.node.as_mut()) {
                node.link_down(now, link);
            }
        }
        for n in ends {
            self.pump(n);
        }
    }

    /// Cuts every link between a node for which `side` is true and one for
    /// which it is false, and holds them down until [`Sim::heal`]. Returns
    /// the links cut.
    pub fn partition(&mut self, side: impl Fn(usize) -> bool) -> Vec<usize> {
        let cut: Vec<usize> = (0..self.links.len())
            .filter(|&i| {
                let [a, b] = self.links[i].ends;
                side(a) != side(b)
            })
            .collect();
        for &i in &cut {
            self.set_link_down(i);
            self.links[i].blocked = true;
        }
        cut
    }

    /// Releases `links` from a partition and brings them up.
    pub fn heal(&mut self, links: &[usize]) {
        for &i in links {
            if let Some(l) = self.links.get_mut(i) {
                l.blocked = false;
            }
            self.set_link_up(i);
        }
    }

    /// Node `i` fails now: its state is gone, and its links go down (its
    /// peers see `link_down`).
    pub fn fail_node(&mut self, i: usize) {
        let links = self.links_of(i).to_vec();
        for l in links {
            self.set_link_down(l);
        }
        if let Some(s) = self.slots.get_mut(i) {
            s.node = None;
            s.timer = None;
        }
    }

    /// Node `i` comes back as `node` (a fresh core, or one built from a
    /// cache) and its links come up, except those a partition holds down or
    /// whose other end has failed.
    pub fn restart_node(&mut self, i: usize, node: N) {
        if let Some(s) = self.slots.get_mut(i) {
            s.node = Some(node);
            s.timer = None;
        }
        self.pump(i);
        let links = self.links_of(i).to_vec();
        for l in links {
            self.set_link_up(l);
        }
    }

    fn push(&mut self, at: SimTime, event: Event<N>) {
        self.seq += 1;
        let slot = match self.free_events.pop() {
            Some(slot) => {
                self.events[slot] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                self.events.len() - 1
            }
        };
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            slot,
        });
        self.stats.peak_queue = self.stats.peak_queue.max(self.queue.len());
    }

    /// Sends everything node `i` wants to send and reschedules its timer.
    pub fn pump(&mut self, i: usize) {
        let now = self.now;
        loop {
            let Some(node) = self.slots.get_mut(i).and_then(|s| s.node.as_mut()) else {
                return;
            };
            let Some((link, msg)) = node.poll_transmit(now) else {
                break;
            };
            self.send(i, link, msg);
        }
        self.schedule_timer(i, false);
    }

    fn schedule_timer(&mut self, i: usize, just_fired: bool) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let Some(node) = slot.node.as_ref() else {
            return;
        };
        let Some(mut t) = node.poll_timeout() else {
            return;
        };
        if just_fired && t <= now {
            // A core that asks again for the moment it was just woken at
            // would spin the loop; wake it a microsecond later.
            t = now + Duration::from_micros(1);
        }
        let t = t.max(now);
        if slot.timer.is_some_and(|s| s <= t && s >= now) {
            return;
        }
        slot.timer = Some(t);
        self.push(t, Event::Timer { node: i });
    }

    fn send(&mut self, from: usize, link: usize, msg: N::Message) {
        let now = self.now;
        let len = N::wire_len(&msg);
        let Some(l) = self.links.get_mut(link) else {
            self.stats.lost_on_down_link += 1;
            return;
        };
        let dir = if l.ends[0] == from { 0 } else { 1 };
        if !l.up || l.ends[dir] != from {
            self.stats.lost_on_down_link += 1;
            return;
        }
        let to = l.ends[1 - dir];
        let start = now.max(l.busy_until[dir]);
        let tx = match l.params.bandwidth {
            Some(bw) if bw > 0 => {
                Duration::from_nanos((len as u64).saturating_mul(1_000_000_000) / bw)
            }
            _ => Duration::ZERO,
        };
        l.busy_until[dir] = start + tx;
        let mut arrival = start + tx + l.params.latency;
        let mut rto = l.params.rto;
        while self.rng.chance(l.params.loss) {
            arrival += rto;
            rto = (rto * 2).min(Duration::from_secs(60));
            self.stats.retransmissions += 1;
        }
        // TCP delivers in order: nothing overtakes a retransmitted segment.
        let arrival = arrival.max(l.last_arrival[dir]);
        l.last_arrival[dir] = arrival;
        let generation = l.generation;
        if let Some(s) = self.slots.get_mut(from) {
            s.stats.sent_msgs += 1;
            s.stats.sent_bytes += len as u64;
        }
        let delivery = Delivery {
            link,
            to,
            generation,
            len,
            msg,
        };
        self.push(arrival, Event::Deliver(delivery));
    }

    /// Processes the next event, if there is one at or before `limit`.
    /// Returns whether it did.
    pub fn step(&mut self, limit: SimTime) -> bool {
        if self.queue.peek().is_none_or(|e| e.at > limit) {
            return false;
        }
        let Some(Scheduled { at, slot, .. }) = self.queue.pop() else {
            return false;
        };
        let Some(event) = self.events.get_mut(slot).and_then(Option::take) else {
            return true;
        };
        self.free_events.push(slot);
        self.now = self.now.max(at);
        self.stats.events += 1;
        let now = self.now;
        match event {
            Event::Deliver(delivery) => self.deliver(now, delivery),
            Event::Timer { node: i } => {
                let Some(slot) = self.slots.get_mut(i) else {
                    return true;
                };
                if slot.timer != Some(at) {
                    return true;
                }
                slot.timer = None;
                if let Some(node) = slot.node.as_mut() {
                    node.handle_timeout(now);
                }
                loop {
                    let Some(node) = self.slots.get_mut(i).and_then(|s| s.node.as_mut()) else {
                        return true;
                    };
                    let Some((link, msg)) = node.poll_transmit(now) else {
                        break;
                    };
                    self.send(i, link, msg);
                }
                self.schedule_timer(i, true);
            }
            Event::Action(action) => action(self),
        }
        true
    }

    /// Hands a message to its node, unless its link went down (or came back
    /// as a new generation) or the node is gone since it was sent.
    fn deliver(&mut self, now: SimTime, d: Delivery<N::Message>) {
        let live = self
            .links
            .get(d.link)
            .is_some_and(|l| l.up && l.generation == d.generation);
        let Some(slot) = self.slots.get_mut(d.to).filter(|_| live) else {
            self.stats.lost_on_down_link += 1;
            return;
        };
        let Some(node) = slot.node.as_mut() else {
            self.stats.lost_on_down_link += 1;
            return;
        };
        slot.stats.recv_msgs += 1;
        slot.stats.recv_bytes += d.len as u64;
        self.stats.delivered += 1;
        self.stats.last_delivery = now;
        node.handle_message(now, d.link, d.msg);
        self.pump(d.to);
    }

    /// Runs every event up to and including `until`, then sets the clock to
    /// `until`.
    pub fn run_until(&mut self, until: SimTime) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs until no message is in flight and no event other than timers
    /// later than `quiet` from now is queued, or until `limit`. Returns
    /// whether it became quiet. Use it to run "until converged" without
    /// stepping through far-off refresh timers.
    pub fn run_until_quiet(&mut self, quiet: Duration, limit: SimTime) -> bool {
        loop {
            let busy = self.queue.iter().any(|e| {
                let timer = matches!(self.events.get(e.slot), Some(Some(Event::Timer { .. })));
                !timer || e.at <= self.now + quiet
            });
            if !busy {
                return true;
            }
            if self.queue.peek().is_none_or(|next| next.at > limit) {
                self.now = self.now.max(limit);
                return false;
            }
            // Run a batch before checking again: the check walks the queue.
            let mut budget = 10_000 + self.queue.len();
            while budget > 0 && self.step(limit) {
                budget -= 1;
            }
        }
    }
}

/// The process's peak and current resident memory, in bytes, from
/// `/proc/self/status` (Linux), for reports.
pub fn memory_usage() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
