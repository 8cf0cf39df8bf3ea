use super::*;
use proptest::prelude::*;

const DAY: u64 = 86_400;
/// A unix time in the middle of a 30-day period.
const T0: u64 = 1_800_000_000;

fn terms() -> LedgerTerms {
    LedgerTerms {
        amount: 1 << 30,
        period_secs: 30 * DAY,
        debt: 10 * CELL_BYTES,
        cutoff: 20 * CELL_BYTES,
        carry: 5 * CELL_BYTES,
        circuits_per_sec: 5,
    }
}

/// A circuit id that `creator` allocates on its link with `other`.
fn circ(creator: &[u8; 32], other: &[u8; 32], n: u32) -> u32 {
    if creator < other {
        CIRC_ID_HIGH_BIT | n
    } else {
        n
    }
}

const ME: [u8; 32] = [5; 32];
const UP: [u8; 32] = [1; 32];
const DOWN: [u8; 32] = [9; 32];

fn node(now: Instant) -> Ledgers {
    let mut l = Ledgers::new(ME);
    l.set_terms(&[(UP, terms()), (DOWN, terms())], now);
    l.link_up(1, UP, [1; 32], now);
    l.link_up(2, DOWN, [2; 32], now);
    l
}

#[test]
fn a_relay_nets_out_and_the_origin_owes() {
    let now = Instant::now();
    let mut r = node(now);
    // UP extended through us (its circuit on link 1), we extended to DOWN
    // (our circuit on link 2): 7 cells forward, 3 back.
    let on_up = circ(&UP, &ME, 4);
    let on_down = circ(&ME, &DOWN, 4);
    for _ in 0..7 {
        r.count(now, T0, 1, on_up, false);
        r.count(now, T0, 2, on_down, true);
    }
    for _ in 0..3 {
        r.count(now, T0, 2, on_down, false);
        r.count(now, T0, 1, on_up, true);
    }
    let up = r.view(T0, &UP).expect("ledger");
    let down = r.view(T0, &DOWN).expect("ledger");
    assert_eq!(up.record.balance, 10 * CELL_BYTES as i64, "UP owes us");
    assert_eq!(up.record.relayed_for_peer, 10 * CELL_BYTES);
    assert_eq!(
        down.record.balance,
        -(10 * CELL_BYTES as i64),
        "we owe DOWN"
    );
    assert_eq!(down.record.relayed_by_peer, 10 * CELL_BYTES);
    assert_eq!(up.record.balance + down.record.balance, 0, "nets out");
    // Link padding (circuit id 0) counts nowhere.
    r.count(now, T0, 1, 0, false);
    assert_eq!(r.view(T0, &UP).expect("ledger").record, up.record);
}

#[test]
fn standing_follows_the_balance_through_the_thresholds() {
    let now = Instant::now();
    let mut r = node(now);
    let on_up = circ(&UP, &ME, 1);
    assert_eq!(r.standing(&UP), Standing::Even);
    r.count(now, T0, 1, on_up, true);
    assert_eq!(r.standing(&UP), Standing::Even);
    for _ in 0..10 {
        r.count(now, T0, 1, on_up, false);
    }
    assert_eq!(r.standing(&UP), Standing::LowPriority);
    assert_eq!(r.weight(&UP), WEIGHT_DEBTOR);
    for _ in 0..10 {
        r.count(now, T0, 1, on_up, false);
    }
    assert_eq!(r.standing(&UP), Standing::CutOff);
    assert_eq!(r.admit(now, T0, &UP), Err(Reason::CutOff));
    // We owe DOWN: a creditor, served first.
    r.count(now, T0, 2, circ(&ME, &DOWN, 1), true);
    assert_eq!(r.standing(&DOWN), Standing::Creditor);
    assert_eq!(r.weight(&DOWN), WEIGHT_CREDITOR);
    assert_eq!(r.weight(&ME), WEIGHT_EVEN);
    assert!(r.admit(now, T0, &DOWN).is_ok());
    assert_eq!(r.view(T0, &UP).expect("ledger").refusals.cut_off, 1);
}

#[test]
fn circuits_are_admitted_at_the_terms_rate() {
    let now = Instant::now();
    let mut r = node(now);
    let admitted = (0..100).filter(|_| r.admit(now, T0, &UP).is_ok()).count();
    assert_eq!(admitted, 10, "a burst of twice the rate");
    assert_eq!(r.admit(now, T0, &UP), Err(Reason::TooManyCircuits));
    // Another neighbour is not affected.
    assert!(r.admit(now, T0, &DOWN).is_ok());
    let later = now + Duration::from_secs(1);
    let admitted = (0..100).filter(|_| r.admit(later, T0, &UP).is_ok()).count();
    assert_eq!(admitted, 5);
}

#[test]
fn a_new_period_resets_the_usage_and_carries_the_balance_up_to_the_cap() {
    let now = Instant::now();
    let mut r = node(now);
    let on_up = circ(&UP, &ME, 1);
    for _ in 0..8 {
        r.count(now, T0, 1, on_up, false);
    }
    let next = T0 + 30 * DAY;
    let v = r.view(next, &UP).expect("ledger");
    assert_eq!(v.record.relayed_for_peer, 0);
    assert_eq!(v.record.balance, 5 * CELL_BYTES as i64, "clamped to carry");
    assert_eq!(v.record.total_for_peer, 8 * CELL_BYTES, "totals stay");
    assert_eq!(v.record.period, next / (30 * DAY));
    assert_eq!(v.period_end_unix, (next / (30 * DAY) + 1) * 30 * DAY);
}

/// Two nodes' ledgers of one link, X and Y, with the cells each sent
/// delivered to the other in order.
struct Pair {
    x: Ledgers,
    y: Ledgers,
    xid: Identity,
    yid: Identity,
    now: Instant,
    /// Cells X handed out and the link wrote, in X's view (own, other).
    x_wire: Counts,
    y_wire: Counts,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        let (xid, yid) = (Identity::from_seed(&[1; 32]), Identity::from_seed(&[2; 32]));
        let mut x = Ledgers::new(xid.public());
        let mut y = Ledgers::new(yid.public());
        x.set_terms(&[(yid.public(), terms())], now);
        y.set_terms(&[(xid.public(), terms())], now);
        x.link_up(7, yid.public(), [3; 32], now);
        y.link_up(8, xid.public(), [3; 32], now);
        Pair {
            x,
            y,
            xid,
            yid,
            now,
            x_wire: Counts::default(),
            y_wire: Counts::default(),
        }
    }

    /// X sends a cell on a circuit `x_created` or not; Y receives it.
    fn x_sends(&mut self, x_created: bool, n: u32) {
        let (xk, yk) = (self.xid.public(), self.yid.public());
        let id = if x_created {
            circ(&xk, &yk, n)
        } else {
            circ(&yk, &xk, n)
        };
        self.x.count(self.now, T0, 7, id, true);
        Classifier::new(&xk, &yk).count(&mut self.x_wire, id);
        self.y.count(self.now, T0, 8, id, false);
    }

    fn y_sends(&mut self, y_created: bool, n: u32) {
        let (xk, yk) = (self.xid.public(), self.yid.public());
        let id = if y_created {
            circ(&yk, &xk, n)
        } else {
            circ(&xk, &yk, n)
        };
        self.y.count(self.now, T0, 8, id, true);
        Classifier::new(&yk, &xk).count(&mut self.y_wire, id);
        self.x.count(self.now, T0, 7, id, false);
    }

    /// X's due report, finished with what X's link wrote.
    fn x_report(&mut self) -> Vec<u8> {
        let (link, draft) = self.x.poll_report(self.now, T0).expect("a report is due");
        assert_eq!(link, 7);
        draft.finish(self.x_wire, &self.xid)
    }
}

#[test]
fn both_sides_agree_and_a_report_never_moves_a_balance() {
    let mut p = Pair::new();
    assert!(p.x.poll_report(p.now, T0).is_none(), "nothing crossed yet");
    for i in 0..50 {
        p.x_sends(i % 3 == 0, 1);
        p.y_sends(i % 2 == 0, 2);
    }
    p.now += REPORT_AFTER_IDLE;
    let report = p.x_report();
    let before = p.y.view(T0, &p.xid.public()).expect("ledger").record;
    p.y.handle_report(p.now, T0, 8, &report);
    let after = p.y.view(T0, &p.xid.public()).expect("ledger").record;
    assert_eq!(after.agreed, Some(true));
    assert_eq!(after.balance, before.balance);
    assert_eq!(after.mismatches, 0);
    // Each side's balance is the other's, negated.
    let xb =
        p.x.view(T0, &p.yid.public())
            .expect("ledger")
            .record
            .balance;
    assert_eq!(xb, -after.balance);
    match p.y.poll_event() {
        Some(LedgerEvent::Checked { agreed: true, .. }) => {}
        other => panic!("expected an agreed check, got {other:?}"),
    }
}

#[test]
fn a_lost_cell_is_a_mismatch_shown_on_both_sides() {
    let mut p = Pair::new();
    for _ in 0..10 {
        p.x_sends(true, 1);
    }
    // One cell X says it sent never reached Y.
    p.x_wire.own += 1;
    p.now += REPORT_AFTER_IDLE;
    let report = p.x_report();
    p.y.handle_report(p.now, T0, 8, &report);
    let y_view = p.y.view(T0, &p.xid.public()).expect("ledger").record;
    assert_eq!((y_view.agreed, y_view.mismatches), (Some(false), 1));
    // Y's next report tells X.
    p.y_sends(true, 2);
    p.now += REPORT_AFTER_IDLE;
    let (_, draft) = p.y.poll_report(p.now, T0).expect("due");
    let back = draft.finish(p.y_wire, &p.yid);
    p.x.handle_report(p.now, T0, 7, &back);
    let x_view = p.x.view(T0, &p.yid.public()).expect("ledger").record;
    assert_eq!(x_view.peer_agreed, Some(false), "X hears Y disagreed");
    assert_eq!(x_view.agreed, Some(true), "Y's own report to X is right");
}

#[test]
fn forged_replayed_malformed_and_flooded_reports_are_dropped_and_counted() {
    let mut p = Pair::new();
    p.x_sends(true, 1);
    p.now += REPORT_AFTER_IDLE;
    let report = p.x_report();
    p.y.handle_report(p.now, T0, 8, &report);
    let good = p.y.view(T0, &p.xid.public()).expect("ledger").record;
    // The same report again: replayed.
    p.y.handle_report(p.now, T0, 8, &report);
    // Signed by someone else: forged.
    let mallory = Identity::from_seed(&[66; 32]);
    let forged = Report {
        seq: 99,
        ..Report::default()
    }
    .encode(&mallory, &p.yid.public(), &[3; 32]);
    p.y.handle_report(p.now, T0, 8, &forged);
    // Signed by X for another link: forged too.
    let other_link = Report {
        seq: 100,
        ..Report::default()
    }
    .encode(&p.xid, &p.yid.public(), &[4; 32]);
    p.y.handle_report(p.now, T0, 8, &other_link);
    p.y.handle_report(p.now, T0, 8, b"short");
    let d = p.y.drops();
    assert_eq!((d.replayed, d.forged, d.malformed), (1, 2, 1));
    assert_eq!(
        p.y.view(T0, &p.xid.public()).expect("ledger").record,
        good,
        "nothing dropped moved anything"
    );
    // A flood: past the rate, dropped before any signature check.
    for _ in 0..100 {
        p.y.handle_report(p.now, T0, 8, &report);
    }
    assert!(p.y.drops().too_often > 70, "{:?}", p.y.drops());
}

#[test]
fn reports_fall_due_by_bytes_by_idle_time_and_at_least_every_minute() {
    let mut p = Pair::new();
    let cells = REPORT_EVERY_BYTES.div_ceil(CELL_BYTES);
    for _ in 0..cells - 1 {
        p.x_sends(true, 1);
    }
    assert!(p.x.poll_report(p.now, T0).is_none());
    p.x_sends(true, 1);
    assert!(p.x.poll_report(p.now, T0).is_some(), "by bytes");
    // Idle after a cell.
    p.x_sends(true, 1);
    assert_eq!(p.x.next_report_at(), Some(p.now + REPORT_AFTER_IDLE));
    // A steady trickle: due after a minute at the latest.
    let start = p.now;
    loop {
        p.now += Duration::from_secs(1);
        p.x_sends(true, 1);
        if p.x.poll_report(p.now, T0).is_some() {
            break;
        }
    }
    assert_eq!(p.now - start, REPORT_EVERY);
    assert_eq!(p.x.next_report_at(), None, "nothing crossed since");
}

#[test]
fn records_restore_and_saturate_without_overflow() {
    let now = Instant::now();
    let mut r = Ledgers::new(ME);
    let stored = LedgerRecord {
        period: T0 / (30 * DAY),
        period_secs: 30 * DAY,
        relayed_for_peer: 3,
        balance: -12,
        total_for_peer: 3,
        total_by_peer: 15,
        ..LedgerRecord::default()
    };
    r.restore(UP, stored, now);
    r.set_terms(&[(UP, terms())], now);
    assert_eq!(r.view(T0, &UP).expect("ledger").record, stored);
    for _ in 0..3 {
        r.charge(T0, &UP, Charge::ForPeer(u64::MAX));
    }
    let v = r.view(T0, &UP).expect("ledger").record;
    assert_eq!((v.total_for_peer, v.balance), (u64::MAX, i64::MAX));
    for _ in 0..3 {
        r.charge(T0, &UP, Charge::ByPeer(u64::MAX));
    }
    let v = r.view(T0, &UP).expect("ledger").record;
    assert_eq!((v.total_by_peer, v.balance), (u64::MAX, i64::MIN));
    assert_eq!(r.take_dirty().len(), 1);
    assert!(r.take_dirty().is_empty());
}

proptest! {
    /// Within a period, a ledger's balance is what it relayed for the peer
    /// less what the peer relayed for it, and both sides' views mirror each
    /// other exactly, whatever crosses the link.
    #[test]
    fn balances_mirror_and_add_up(ops in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..400)) {
        let mut p = Pair::new();
        for (from_x, own) in ops {
            if from_x { p.x_sends(own, 1) } else { p.y_sends(own, 1) }
        }
        let x = p.x.view(T0, &p.yid.public()).expect("ledger").record;
        let y = p.y.view(T0, &p.xid.public()).expect("ledger").record;
        prop_assert_eq!(x.balance, -y.balance);
        prop_assert_eq!(x.relayed_for_peer, y.relayed_by_peer);
        prop_assert_eq!(x.balance, x.total_for_peer as i64 - x.total_by_peer as i64);
        p.now += REPORT_AFTER_IDLE;
        if let Some((_, draft)) = p.x.poll_report(p.now, T0) {
            let bytes = draft.finish(p.x_wire, &p.xid);
            p.y.handle_report(p.now, T0, 8, &bytes);
            prop_assert_eq!(p.y.view(T0, &p.xid.public()).expect("ledger").record.agreed, Some(true));
        }
    }
}
