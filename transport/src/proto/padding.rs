//! Link padding at a constant rate, for `anonymity = "strong"`
//! (`docs/protocol.md, "Link framing"` and "Link control").
//!
//! [`PaddingPacer`] decides when a link sends a padding frame. It is a top-up: time is
//! cut into slots of [`PaddingPacer::interval`], one cell frame's worth of the target
//! rate each, and a slot in which no cell went out ends with one padding frame of the
//! same size. So the link's cell-sized frames run at `max(real, target)`: an idle link
//! sends only padding, a busy one none. Inside TLS a padding frame is a cell frame with
//! another type byte, and the receiver discards it.
//!
//! An idle period never piles up a burst: a padding decision that comes more than one
//! slot late starts a fresh slot instead of catching up.
//!
//! Like the rest of [`crate::proto`] it does no I/O and reads no clock: the driver
//! passes `now`, tells it about cells it wrote ([`PaddingPacer::on_cell`]), sleeps
//! until [`PaddingPacer::poll_timeout`] and then asks [`PaddingPacer::poll_padding`].

#![warn(clippy::indexing_slicing, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use crate::proto::frame::{CELL_LEN, FRAME_HEADER_LEN};

/// A cell frame on the wire, header included, in bytes: what one slot of the padding
/// rate pays for.
pub const CELL_FRAME_WIRE_LEN: usize = FRAME_HEADER_LEN + CELL_LEN;

/// The shortest slot: faster rates pad at one cell frame per millisecond (about
/// 1.15 MiB/s), because a driver's timers are not finer than that.
pub const PADDING_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// When a link sends padding frames to keep its cell frames at a target rate.
#[derive(Debug, Clone)]
pub struct PaddingPacer {
    interval: Duration,
    /// The end of the current slot.
    deadline: Instant,
    /// Whether a cell went out in the current slot.
    covered: bool,
}

impl PaddingPacer {
    /// A pacer for `bytes_per_sec` of cell frames, with its first slot starting at
    /// `now`; `None` for a rate of zero (no padding).
    pub fn new(bytes_per_sec: u32, now: Instant) -> Option<PaddingPacer> {
        let interval = slot_interval(bytes_per_sec)?;
        Some(PaddingPacer {
            interval,
            deadline: now + interval,
            covered: false,
        })
    }

    /// The slot length: [`CELL_FRAME_WIRE_LEN`] at the target rate, at least
    /// [`PADDING_INTERVAL_MIN`].
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A cell frame was written at `now`: the current slot needs no padding.
    pub fn on_cell(&mut self, _now: Instant) {
        // A cell written after the deadline but before the driver polled covers the
        // slot that just ended: it left no longer a gap than padding at the deadline.
        self.covered = true;
    }

    /// When the driver should call [`PaddingPacer::poll_padding`] next.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// Whether to send one padding frame now. Ends the current slot if `now` is at or
    /// past its end (and says `true` if no cell went out in it); before that, `false`.
    pub fn poll_padding(&mut self, now: Instant) -> bool {
        if now < self.deadline {
            return false;
        }
        let pad = !self.covered;
        self.covered = false;
        // Keep the beat if this decision is less than a slot late; otherwise start
        // afresh, so a stall is never paid back as a burst.
        let next = self.deadline + self.interval;
        self.deadline = if next > now {
            next
        } else {
            now + self.interval
        };
        pad
    }
}

/// The slot length for a rate, or `None` for zero.
fn slot_interval(bytes_per_sec: u32) -> Option<Duration> {
    if bytes_per_sec == 0 {
        return None;
    }
    // CELL_FRAME_WIRE_LEN is a small constant; nanosecond precision is plenty.
    let nanos = (CELL_FRAME_WIRE_LEN as u64 * 1_000_000_000) / u64::from(bytes_per_sec);
    Some(Duration::from_nanos(nanos).max(PADDING_INTERVAL_MIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RATE: u32 = 64 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_is_off_and_the_slot_is_one_cell_frame_at_the_rate() {
        let t0 = Instant::now();
        assert!(PaddingPacer::new(0, t0).is_none());
        let p = PaddingPacer::new(RATE, t0).expect("pacer");
        // 1203 bytes at 65536 B/s: 18.356 ms.
        assert_eq!(p.interval(), Duration::from_nanos(18_356_323));
        assert_eq!(p.poll_timeout(), t0 + p.interval());
        let fast = PaddingPacer::new(u32::MAX, t0).expect("pacer");
        assert_eq!(fast.interval(), PADDING_INTERVAL_MIN);
        let slow = PaddingPacer::new(1, t0).expect("pacer");
        assert_eq!(slow.interval(), Duration::from_secs(1203));
    }

    #[test]
    fn an_idle_link_pads_once_per_slot() {
        let t0 = Instant::now();
        let mut p = PaddingPacer::new(1203, t0).expect("pacer"); // one slot a second
        assert_eq!(p.interval(), Duration::from_secs(1));
        assert!(!p.poll_padding(t0 + ms(999)), "too early");
        assert!(p.poll_padding(t0 + ms(1000)));
        assert!(!p.poll_padding(t0 + ms(1000)), "one per slot");
        assert_eq!(p.poll_timeout(), t0 + ms(2000));
        assert!(p.poll_padding(t0 + ms(2000)));
    }

    #[test]
    fn a_cell_in_the_slot_replaces_the_padding() {
        let t0 = Instant::now();
        let mut p = PaddingPacer::new(1203, t0).expect("pacer");
        p.on_cell(t0 + ms(300));
        p.on_cell(t0 + ms(400));
        assert!(!p.poll_padding(t0 + ms(1000)));
        // The next slot is empty again.
        assert!(p.poll_padding(t0 + ms(2000)));
    }

    #[test]
    fn a_late_poll_keeps_the_beat_but_a_stall_does_not_burst() {
        let t0 = Instant::now();
        let mut p = PaddingPacer::new(1203, t0).expect("pacer");
        // 300 ms late: the next slot still ends on the beat.
        assert!(p.poll_padding(t0 + ms(1300)));
        assert_eq!(p.poll_timeout(), t0 + ms(2000));
        // Five slots late (the process was stopped): one frame, then a fresh slot.
        assert!(p.poll_padding(t0 + ms(7000)));
        assert_eq!(p.poll_timeout(), t0 + ms(8000));
        assert!(!p.poll_padding(t0 + ms(7000)));
    }

    /// What a driver does: a sorted list of real cell times, and wake-ups at the
    /// pacer's timeout plus some lateness. Returns the padding times.
    fn drive(rate: u32, cells: &[Duration], lateness: &[Duration], end: Duration) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut p = PaddingPacer::new(rate, t0).expect("pacer");
        let mut pads = Vec::new();
        let mut cells = cells.iter().peekable();
        let mut late = lateness.iter().cycle();
        let mut last_wake = t0;
        loop {
            // The clock never runs backwards, whatever the lateness.
            let wake = (p.poll_timeout() + late.next().copied().unwrap_or_default()).max(last_wake);
            last_wake = wake;
            // Cells written before the wake-up reach the pacer first.
            while let Some(&&c) = cells.peek()
                && t0 + c <= wake
            {
                p.on_cell(t0 + c);
                cells.next();
            }
            if wake > t0 + end {
                return pads;
            }
            if p.poll_padding(wake) {
                pads.push(wake - t0);
            }
        }
    }

    proptest! {
        /// With timely wake-ups every slot has a cell-sized frame: over any run the
        /// cells and padding together reach the target, and padding never exceeds it.
        #[test]
        fn cells_and_padding_reach_the_target_and_padding_never_exceeds_it(
            rate in 1_000u32..=2_000_000,
            mut cells in prop::collection::vec(0u64..3_000_000, 0..400),
            end_us in 100_000u64..3_000_000,
        ) {
            cells.sort_unstable();
            let cells: Vec<Duration> = cells.into_iter().map(Duration::from_micros).collect();
            let end = Duration::from_micros(end_us);
            let pads = drive(rate, &cells, &[Duration::ZERO], end);
            let interval = PaddingPacer::new(rate, Instant::now()).expect("pacer").interval();
            let slots = (end.as_nanos() / interval.as_nanos()) as usize;
            prop_assert!(pads.len() <= slots, "{} padding frames in {} slots", pads.len(), slots);
            // Each slot [k·i, (k+1)·i) holds a real cell or ends with padding.
            for k in 0..slots as u32 {
                let (from, to) = (interval * k, interval * (k + 1));
                let real = cells.iter().any(|&c| c > from && c <= to)
                    || (k == 0 && cells.first() == Some(&Duration::ZERO));
                let padded = pads.contains(&to);
                prop_assert!(real || padded, "slot {} ({:?}..{:?}) has no cell-sized frame", k, from, to);
                prop_assert!(!(real && padded), "slot {} has a cell and padding", k);
            }
            let in_window = cells.iter().filter(|&&c| c <= interval * slots as u32).count();
            prop_assert!(in_window + pads.len() >= slots);
        }

        /// Late wake-ups (a loaded runtime) never make padding exceed the target, and
        /// never bunch more than two padding frames into one slot's time.
        #[test]
        fn late_wakeups_never_burst(
            rate in 1_000u32..=2_000_000,
            mut cells in prop::collection::vec(0u64..3_000_000, 0..200),
            lateness in prop::collection::vec(0u64..50_000, 1..20),
            end_us in 100_000u64..3_000_000,
        ) {
            cells.sort_unstable();
            let cells: Vec<Duration> = cells.into_iter().map(Duration::from_micros).collect();
            let lateness: Vec<Duration> = lateness.into_iter().map(Duration::from_micros).collect();
            let end = Duration::from_micros(end_us);
            let pads = drive(rate, &cells, &lateness, end);
            let interval = PaddingPacer::new(rate, Instant::now()).expect("pacer").interval();
            let slots = (end.as_nanos() / interval.as_nanos()) as usize;
            prop_assert!(pads.len() <= slots, "{} padding frames in {} slots", pads.len(), slots);
            for w in pads.windows(3) {
                prop_assert!(w[2] - w[0] >= interval, "three padding frames within {:?}: {:?}", interval, w);
            }
        }
    }
}
