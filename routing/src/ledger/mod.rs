//! Ledgers: what the two sides of each agreement relay for each other,
//! kept by both, checked against each other, and enforced
//! (docs/architecture.md, "Ledgers"; docs/protocol.md, "Ledger reports").
//!
//! # What counts
//!
//! Every cell that crosses a link belongs to a circuit, and the circuit id
//! tells which end of the link created that circuit on it (the high bit,
//! docs/protocol.md, "Cells"). A cell crossing the link, either way, on a
//! circuit that one side created is charged to that side and credited to
//! the other. So:
//! - an origin pays for every cell of its circuits on its first link;
//! - a relay is credited by the neighbour that extended through it and
//!   charged by the one it extended to, the same cells: relaying nets out;
//! - only traffic a node originates leaves it in debt.
//!
//! Counting at the link, not at the forwarding, makes every count one both
//! sides make from what they see themselves, so they can be compared
//! exactly. The one difference from counting forwarded cells only is that
//! the last hop's cells to the destination are credited to the destination
//! (which forwards nothing): serving traffic earns.
//!
//! Relayed-link bytes and padding are not cells; the driver charges them
//! with [`Ledgers::charge`].
//!
//! # Periods
//!
//! Periods are aligned to the Unix epoch (`unix seconds / period length`),
//! so both sides agree on them. A new period resets what was relayed this
//! period; the balance carries over, clamped to the terms' carry.
//!
//! # Checking
//!
//! Each side counts, per connection, the cells it sent and received on
//! circuits it created and on circuits the other side created. Every
//! [`REPORT_EVERY_BYTES`], at least every [`REPORT_EVERY`] while cells
//! cross, and [`REPORT_AFTER_IDLE`] after the last one, it sends a signed
//! [`report::Report`] on the link, in order with the cells. The receiver
//! checks that what the report says was sent equals what it received
//! (exactly: the link is in order) and that what the report says was
//! received is at most what it sent (the rest is in flight). A mismatch is
//! logged, counted and shown on both sides (the next report carries the
//! verdict); nothing resolves it, and a report never moves a balance.
//!
//! # Enforcement
//!
//! A neighbour's [`Standing`] comes from its balance against the terms'
//! thresholds. It weights the neighbour's cells in each link's
//! [`fair::FairQueue`], and past the cutoff its new circuits are refused
//! ([`Ledgers::admit`]), as are circuits over its creation rate.

pub mod bucket;
pub mod fair;
pub mod report;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::cell::{CELL_LEN, Reason};
use crate::crypto::{Identity, KEY_LEN};
use bucket::TokenBucket;
use report::{Counts, Report, ReportError, Verdict};

/// Bytes a cell counts for.
pub const CELL_BYTES: u64 = CELL_LEN as u64;
/// A report goes after this many bytes of cells crossed the link (both
/// ways) since the last one.
pub const REPORT_EVERY_BYTES: u64 = 4 << 20;
/// ... and at least this often while cells cross.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);
/// ... and this long after the last cell, so a transfer is checked soon
/// after it ends.
pub const REPORT_AFTER_IDLE: Duration = Duration::from_secs(2);
/// Reports a peer may send per second on one link; more are dropped.
const REPORTS_PER_SEC: u64 = 10;
/// The circuit-id bit set on circuits created by the end with the smaller
/// key (docs/protocol.md, "Cells").
const CIRC_ID_HIGH_BIT: u32 = 0x8000_0000;

/// Weight in the fair queue of a neighbour we owe.
pub const WEIGHT_CREDITOR: u32 = 16;
/// Weight of a neighbour within its debt limit, and of this node's own
/// cells.
pub const WEIGHT_EVEN: u32 = 8;
/// Weight of a neighbour past its debt limit.
pub const WEIGHT_DEBTOR: u32 = 1;

/// One side's terms toward the other, as numbers (the daemon's
/// `Terms` with its defaults applied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerTerms {
    /// Bytes per period, each way.
    pub amount: u64,
    /// The period, in seconds (above zero).
    pub period_secs: u64,
    /// Past this balance owed to us, the peer loses priority.
    pub debt: u64,
    /// Past this, its new circuits are refused.
    pub cutoff: u64,
    /// The most of a balance, either way, a new period starts with.
    pub carry: u64,
    /// New circuits it may open through us per second (bursts of twice
    /// that).
    pub circuits_per_sec: u32,
}

impl Default for LedgerTerms {
    /// 50 GiB per 30 days with the default limits.
    fn default() -> Self {
        let amount = 50 << 30;
        LedgerTerms {
            amount,
            period_secs: 30 * 86_400,
            debt: amount / 10,
            cutoff: amount / 2,
            carry: amount,
            circuits_per_sec: 20,
        }
    }
}

/// Where a neighbour stands against its terms' thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// We owe it: its cells go first.
    Creditor,
    /// Even, or owing us less than the debt limit.
    Even,
    /// Owing us more than the debt limit: its cells go last.
    LowPriority,
    /// Owing us more than the cutoff: its new circuits are refused too.
    CutOff,
}

impl Standing {
    /// The neighbour's weight in the fair queue.
    pub fn weight(self) -> u32 {
        match self {
            Standing::Creditor => WEIGHT_CREDITOR,
            Standing::Even => WEIGHT_EVEN,
            Standing::LowPriority | Standing::CutOff => WEIGHT_DEBTOR,
        }
    }

    /// The state against the thresholds, as `umbra agreements` names it.
    pub fn name(self) -> &'static str {
        match self {
            Standing::Creditor | Standing::Even => "ok",
            Standing::LowPriority => "low_priority",
            Standing::CutOff => "cut_off",
        }
    }

    fn of(balance: i64, terms: &LedgerTerms) -> Standing {
        if balance < 0 {
            Standing::Creditor
        } else if balance > to_i64(terms.cutoff) {
            Standing::CutOff
        } else if balance > to_i64(terms.debt) {
            Standing::LowPriority
        } else {
            Standing::Even
        }
    }
}

fn to_i64(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

/// One agreement's ledger as it is stored: everything but the counts of
/// live connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerRecord {
    /// The period these counts are for (unix seconds / `period_secs`).
    pub period: u64,
    /// The period length they were counted with.
    pub period_secs: u64,
    /// Bytes this node relayed for the peer this period.
    pub relayed_for_peer: u64,
    /// Bytes the peer relayed for this node this period.
    pub relayed_by_peer: u64,
    /// Positive when the peer owes us, in bytes.
    pub balance: i64,
    /// Bytes relayed for the peer since the agreement began.
    pub total_for_peer: u64,
    /// Bytes the peer relayed for us since the agreement began.
    pub total_by_peer: u64,
    /// When the last report was checked (unix seconds; 0: never).
    pub last_check_unix: u64,
    /// Whether our last check of the peer's report agreed.
    pub agreed: Option<bool>,
    /// Whether the peer's last check of ours agreed, as its report said.
    pub peer_agreed: Option<bool>,
    /// Checks that did not agree, ever.
    pub mismatches: u64,
}

impl LedgerRecord {
    /// Starts period `period` (of `period_secs`): what was relayed resets,
    /// the balance is clamped to `carry` either way.
    fn roll(&mut self, period: u64, period_secs: u64, carry: u64) {
        if self.period == period && self.period_secs == period_secs {
            return;
        }
        let carry = to_i64(carry);
        self.balance = self.balance.clamp(-carry, carry);
        self.relayed_for_peer = 0;
        self.relayed_by_peer = 0;
        self.period = period;
        self.period_secs = period_secs;
    }

    fn credit(&mut self, bytes: u64) {
        self.relayed_for_peer = self.relayed_for_peer.saturating_add(bytes);
        self.total_for_peer = self.total_for_peer.saturating_add(bytes);
        self.balance = self.balance.saturating_add(to_i64(bytes));
    }

    fn debit(&mut self, bytes: u64) {
        self.relayed_by_peer = self.relayed_by_peer.saturating_add(bytes);
        self.total_by_peer = self.total_by_peer.saturating_add(bytes);
        self.balance = self.balance.saturating_sub(to_i64(bytes));
    }
}

/// Bytes the driver charges besides cells ([`Ledgers::charge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// This node carried bytes for the peer (relayed a stream it opened,
    /// padded at its request).
    ForPeer(u64),
    /// The peer carried bytes for this node.
    ByPeer(u64),
}

/// Who created the circuit a cell is on, seen from one end of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This end: the cell is its debt.
    Own,
    /// The other end: the cell is its credit.
    Other,
}

/// Tells, from a cell's circuit id, which end of a link created its
/// circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classifier {
    /// Our circuits on this link have the high bit set.
    own_high: bool,
}

impl Classifier {
    /// For the link between `me` and `peer`.
    pub fn new(me: &[u8; KEY_LEN], peer: &[u8; KEY_LEN]) -> Classifier {
        Classifier {
            own_high: me < peer,
        }
    }

    /// Who created circuit `circ_id`; `None` for id 0 (link padding).
    pub fn owner(&self, circ_id: u32) -> Option<Owner> {
        if circ_id & !CIRC_ID_HIGH_BIT == 0 {
            return None;
        }
        if (circ_id & CIRC_ID_HIGH_BIT != 0) == self.own_high {
            Some(Owner::Own)
        } else {
            Some(Owner::Other)
        }
    }

    /// Counts a cell on circuit `circ_id` into `counts`; its owner.
    pub fn count(&self, counts: &mut Counts, circ_id: u32) -> Option<Owner> {
        let owner = self.owner(circ_id)?;
        match owner {
            Owner::Own => counts.own = counts.own.saturating_add(1),
            Owner::Other => counts.other = counts.other.saturating_add(1),
        }
        Some(owner)
    }
}

/// The circuit id of a cell (its first four bytes, big-endian).
pub fn circ_id_of(cell: &[u8]) -> u32 {
    match cell.get(..4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// A report this node owes a link, to finish when it is written: what was
/// *sent* before it is known only then (cells wait in the fair queue), so
/// the driver fills it in ([`Draft::finish`]).
#[derive(Debug, Clone)]
pub struct Draft {
    /// The report, with `sent` still zero.
    pub report: Report,
    /// The peer it goes to.
    pub peer: [u8; KEY_LEN],
    /// The link's session.
    pub session: [u8; 32],
}

impl Draft {
    /// The report's bytes with `sent`, the cells written to the link before
    /// it, signed by `identity`.
    pub fn finish(mut self, sent: Counts, identity: &Identity) -> Vec<u8> {
        self.report.sent = sent;
        self.report.encode(identity, &self.peer, &self.session)
    }
}

/// What a check or a dropped report was, for the driver's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// A report from `peer` was checked against our counts.
    Checked {
        /// The peer.
        peer: [u8; KEY_LEN],
        /// Whether it agreed.
        agreed: bool,
        /// Its report.
        theirs: Report,
        /// Our counts when it arrived: cells we had sent (handed to the
        /// link) and received.
        ours: (Counts, Counts),
    },
    /// A report from `peer` was dropped.
    Dropped {
        /// The peer.
        peer: [u8; KEY_LEN],
        /// Why.
        why: ReportDrop,
    },
}

/// Why a report was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportDrop {
    /// Not a report.
    Malformed,
    /// Its signature did not verify (forged, or from another link).
    Forged,
    /// Its sequence number was not above the last one (replayed or out of
    /// order).
    Replayed,
    /// More than the link may send per second.
    TooOften,
}

/// Reports dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportDrops {
    /// Not reports.
    pub malformed: u64,
    /// Signatures that did not verify.
    pub forged: u64,
    /// Old sequence numbers.
    pub replayed: u64,
    /// Over the rate.
    pub too_often: u64,
}

/// Circuits refused by the ledgers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// The peer was past its cutoff.
    pub cut_off: u64,
    /// The peer was over its circuit-creation rate.
    pub too_many_circuits: u64,
}

/// One connection's counts.
#[derive(Debug)]
struct Conn {
    peer: [u8; KEY_LEN],
    session: [u8; 32],
    classifier: Classifier,
    /// Cells the core gave out for the link (the driver may still hold
    /// some).
    sent: Counts,
    recv: Counts,
    seq_out: u64,
    seq_in: u64,
    verdict: Verdict,
    bytes_since_report: u64,
    last_report: Instant,
    last_cell: Option<Instant>,
    reports_in: TokenBucket,
}

impl Conn {
    /// When a report is due, if cells crossed since the last one.
    fn report_due_at(&self) -> Option<Instant> {
        let last = self.last_cell?;
        if self.bytes_since_report >= REPORT_EVERY_BYTES {
            return Some(last);
        }
        Some((last + REPORT_AFTER_IDLE).min(self.last_report + REPORT_EVERY))
    }
}

/// One agreement's live ledger.
#[derive(Debug)]
struct Ledger {
    terms: LedgerTerms,
    record: LedgerRecord,
    circuits: TokenBucket,
    refusals: Refusals,
}

impl Ledger {
    fn new(terms: LedgerTerms, record: LedgerRecord, now: Instant) -> Ledger {
        let rate = u64::from(terms.circuits_per_sec);
        Ledger {
            terms,
            record,
            circuits: TokenBucket::new(rate, 2 * rate, now),
            refusals: Refusals::default(),
        }
    }

    fn roll(&mut self, unix: u64) {
        let secs = self.terms.period_secs.max(1);
        self.record.roll(unix / secs, secs, self.terms.carry);
    }

    fn standing(&self) -> Standing {
        Standing::of(self.record.balance, &self.terms)
    }
}

/// What `umbra agreements` shows of one ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerView {
    /// The stored part.
    pub record: LedgerRecord,
    /// The terms it is kept with.
    pub terms: LedgerTerms,
    /// Where the peer stands.
    pub standing: Standing,
    /// Circuits refused.
    pub refusals: Refusals,
    /// The unix second the period ends.
    pub period_end_unix: u64,
}

/// Every ledger of one node, and the counts of its live links. Sans-IO:
/// the router calls it for each cell in and out; times are parameters.
#[derive(Debug)]
pub struct Ledgers {
    me: [u8; KEY_LEN],
    peers: HashMap<[u8; KEY_LEN], Ledger>,
    conns: HashMap<u64, Conn>,
    dirty: HashSet<[u8; KEY_LEN]>,
    events: VecDeque<LedgerEvent>,
    drops: ReportDrops,
}

impl Ledgers {
    /// No ledgers yet, for the node `me`.
    pub fn new(me: [u8; KEY_LEN]) -> Ledgers {
        Ledgers {
            me,
            peers: HashMap::new(),
            conns: HashMap::new(),
            dirty: HashSet::new(),
            events: VecDeque::new(),
            drops: ReportDrops::default(),
        }
    }

    /// The agreements and their terms now: a ledger for each (a new one
    /// starts even); the ledgers of agreements no longer listed are
    /// forgotten here (their stored record stays where the driver keeps
    /// it).
    pub fn set_terms(&mut self, terms: &[([u8; KEY_LEN], LedgerTerms)], now: Instant) {
        let listed: HashSet<[u8; KEY_LEN]> = terms.iter().map(|(k, _)| *k).collect();
        self.peers.retain(|k, _| listed.contains(k));
        for (peer, t) in terms {
            match self.peers.get_mut(peer) {
                Some(l) => {
                    if l.terms != *t {
                        let rate = u64::from(t.circuits_per_sec);
                        l.circuits.set(rate, 2 * rate, now);
                        l.terms = *t;
                    }
                }
                None => {
                    self.peers
                        .insert(*peer, Ledger::new(*t, LedgerRecord::default(), now));
                }
            }
        }
    }

    /// Restores `peer`'s stored record (at start, before traffic); it
    /// applies once `peer` has terms ([`Self::set_terms`]), before or after.
    pub fn restore(&mut self, peer: [u8; KEY_LEN], record: LedgerRecord, now: Instant) {
        match self.peers.get_mut(&peer) {
            Some(l) => l.record = record,
            None => {
                self.peers
                    .insert(peer, Ledger::new(LedgerTerms::default(), record, now));
            }
        }
    }

    /// A link to `peer` is up; `session` names its connection (the link
    /// handshake's hash), and its counts start at zero.
    pub fn link_up(&mut self, link: u64, peer: [u8; KEY_LEN], session: [u8; 32], now: Instant) {
        self.conns.insert(
            link,
            Conn {
                peer,
                session,
                classifier: Classifier::new(&self.me, &peer),
                sent: Counts::default(),
                recv: Counts::default(),
                seq_out: 0,
                seq_in: 0,
                verdict: Verdict::None,
                bytes_since_report: 0,
                last_report: now,
                last_cell: None,
                reports_in: TokenBucket::new(REPORTS_PER_SEC, 2 * REPORTS_PER_SEC, now),
            },
        );
    }

    /// The link ended; its counts go (the ledger keeps what they added).
    pub fn link_down(&mut self, link: u64) {
        if let Some(c) = self.conns.remove(&link) {
            self.dirty.insert(c.peer);
        }
    }

    /// A cell on circuit `circ_id` crossed `link`: `out` if this node sent
    /// it. Charges its circuit's creator.
    pub fn count(&mut self, now: Instant, unix: u64, link: u64, circ_id: u32, out: bool) {
        let Some(c) = self.conns.get_mut(&link) else {
            return;
        };
        let counts = if out { &mut c.sent } else { &mut c.recv };
        let Some(owner) = c.classifier.count(counts, circ_id) else {
            return;
        };
        c.bytes_since_report = c.bytes_since_report.saturating_add(CELL_BYTES);
        c.last_cell = Some(now);
        if let Some(l) = self.peers.get_mut(&c.peer) {
            l.roll(unix);
            match owner {
                Owner::Own => l.record.debit(CELL_BYTES),
                Owner::Other => l.record.credit(CELL_BYTES),
            }
        }
    }

    /// Charges bytes that are not cells: relayed-link bytes, padding.
    pub fn charge(&mut self, unix: u64, peer: &[u8; KEY_LEN], charge: Charge) {
        let Some(l) = self.peers.get_mut(peer) else {
            return;
        };
        l.roll(unix);
        match charge {
            Charge::ForPeer(b) => l.record.credit(b),
            Charge::ByPeer(b) => l.record.debit(b),
        }
        self.dirty.insert(*peer);
    }

    /// Whether `peer` may open a new circuit through this node now: not
    /// past its cutoff, and within its creation rate. The refusal's reason
    /// goes back in the DESTROY.
    pub fn admit(&mut self, now: Instant, unix: u64, peer: &[u8; KEY_LEN]) -> Result<(), Reason> {
        let Some(l) = self.peers.get_mut(peer) else {
            return Ok(());
        };
        l.roll(unix);
        if l.standing() == Standing::CutOff {
            l.refusals.cut_off += 1;
            return Err(Reason::CutOff);
        }
        if !l.circuits.try_take(1, now) {
            l.refusals.too_many_circuits += 1;
            return Err(Reason::TooManyCircuits);
        }
        Ok(())
    }

    /// Where `peer` stands (even when it has no ledger).
    pub fn standing(&self, peer: &[u8; KEY_LEN]) -> Standing {
        self.peers
            .get(peer)
            .map_or(Standing::Even, Ledger::standing)
    }

    /// The fair-queue weight of cells paid for by `flow` (a neighbour, or
    /// this node).
    pub fn weight(&self, flow: &[u8; KEY_LEN]) -> u32 {
        if *flow == self.me {
            return WEIGHT_EVEN;
        }
        self.standing(flow).weight()
    }

    /// The next report due on any link, as a draft for the driver to
    /// finish when it writes it.
    pub fn poll_report(&mut self, now: Instant, unix: u64) -> Option<(u64, Draft)> {
        // The lowest due link first, so a run does not depend on the hash
        // map's order.
        let link = self
            .conns
            .iter()
            .filter(|(_, c)| c.report_due_at().is_some_and(|t| t <= now))
            .map(|(l, _)| *l)
            .min()?;
        let c = self.conns.get_mut(&link)?;
        c.seq_out += 1;
        c.bytes_since_report = 0;
        c.last_cell = None;
        c.last_report = now;
        let (mut for_peer, mut by_peer, mut balance, mut period) = (0, 0, 0, 0);
        if let Some(l) = self.peers.get_mut(&c.peer) {
            l.roll(unix);
            let r = &l.record;
            (for_peer, by_peer, balance, period) =
                (r.total_for_peer, r.total_by_peer, r.balance, r.period);
        }
        self.dirty.insert(c.peer);
        Some((
            link,
            Draft {
                report: Report {
                    seq: c.seq_out,
                    period,
                    sent: Counts::default(),
                    recv: c.recv,
                    for_peer,
                    by_peer,
                    balance,
                    verdict: c.verdict,
                },
                peer: c.peer,
                session: c.session,
            },
        ))
    }

    /// When the next report falls due, if one will without more cells.
    pub fn next_report_at(&self) -> Option<Instant> {
        self.conns.values().filter_map(Conn::report_due_at).min()
    }

    /// A report arrived on `link`: checked against this node's counts, or
    /// dropped and counted. It never moves a balance.
    pub fn handle_report(&mut self, now: Instant, unix: u64, link: u64, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&link) else {
            self.drops.malformed += 1;
            return;
        };
        let peer = c.peer;
        let checked = check(c, &self.me, now, bytes);
        let (theirs, agreed, ours) = match checked {
            Ok(x) => x,
            Err(why) => {
                let d = &mut self.drops;
                match why {
                    ReportDrop::Malformed => d.malformed += 1,
                    ReportDrop::Forged => d.forged += 1,
                    ReportDrop::Replayed => d.replayed += 1,
                    ReportDrop::TooOften => d.too_often += 1,
                }
                self.events.push_back(LedgerEvent::Dropped { peer, why });
                return;
            }
        };
        if let Some(l) = self.peers.get_mut(&peer) {
            let r = &mut l.record;
            r.last_check_unix = unix;
            r.agreed = Some(agreed);
            r.peer_agreed = theirs.verdict.agreed();
            if !agreed {
                r.mismatches = r.mismatches.saturating_add(1);
            }
        }
        self.dirty.insert(peer);
        self.events.push_back(LedgerEvent::Checked {
            peer,
            agreed,
            theirs,
            ours,
        });
    }

    /// The records changed since the last call, to store.
    pub fn take_dirty(&mut self) -> Vec<([u8; KEY_LEN], LedgerRecord)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|k| self.peers.get(&k).map(|l| (k, l.record)))
            .collect()
    }

    /// Every ledger's record now (to store at shutdown).
    pub fn records(&self) -> Vec<([u8; KEY_LEN], LedgerRecord)> {
        self.peers.iter().map(|(k, l)| (*k, l.record)).collect()
    }

    /// What `umbra agreements` shows of `peer`'s ledger, in period `unix`.
    pub fn view(&mut self, unix: u64, peer: &[u8; KEY_LEN]) -> Option<LedgerView> {
        let l = self.peers.get_mut(peer)?;
        l.roll(unix);
        let secs = l.terms.period_secs.max(1);
        Some(LedgerView {
            record: l.record,
            terms: l.terms,
            standing: l.standing(),
            refusals: l.refusals,
            period_end_unix: (l.record.period.saturating_add(1)).saturating_mul(secs),
        })
    }

    /// The next check or dropped report, for the log.
    pub fn poll_event(&mut self) -> Option<LedgerEvent> {
        self.events.pop_front()
    }

    /// Reports dropped, by reason.
    pub fn drops(&self) -> ReportDrops {
        self.drops
    }
}

/// Checks a report from `c`'s peer against `c`'s counts: the report, whether
/// it agreed, and our counts (sent, received); or why it is dropped.
fn check(
    c: &mut Conn,
    me: &[u8; KEY_LEN],
    now: Instant,
    bytes: &[u8],
) -> Result<(Report, bool, (Counts, Counts)), ReportDrop> {
    if !c.reports_in.try_take(1, now) {
        return Err(ReportDrop::TooOften);
    }
    let theirs = match Report::decode(bytes, &c.peer, me, &c.session) {
        Ok(r) => r,
        Err(ReportError::Signature) => return Err(ReportDrop::Forged),
        Err(_) => return Err(ReportDrop::Malformed),
    };
    if theirs.seq <= c.seq_in {
        return Err(ReportDrop::Replayed);
    }
    c.seq_in = theirs.seq;
    // The sender's own circuits are our "other". What it sent before the
    // report arrived before it (the link is in order); what it received
    // is at most what we sent (the rest is in flight).
    let exact = theirs.sent.own == c.recv.other && theirs.sent.other == c.recv.own;
    let in_flight = theirs.recv.own <= c.sent.other && theirs.recv.other <= c.sent.own;
    let agreed = exact && in_flight;
    c.verdict = if agreed {
        Verdict::Agreed
    } else {
        Verdict::Disagreed
    };
    Ok((theirs, agreed, (c.sent, c.recv)))
}

#[cfg(test)]
mod tests;
