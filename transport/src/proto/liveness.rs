//! Whether a busy link still hears its peer (`docs/protocol.md, "Link
//! framing"`). Keepalives find a dead link only after three silent
//! intervals (45 to 75 s). A peer that silently stops (its network drops
//! everything, no FIN, no reset) is found sooner from the data itself: a
//! link that has been sending for [`PROBE_AFTER`] without hearing a byte
//! back sends a ping, and if still nothing arrives within
//! [`Liveness::probe_wait`] the link is dead. A healthy busy link always
//! answers: the ping's pong, or the SENDMEs and cells that flow back anyway.
//!
//! Sans-IO: the caller says when it sent data and when it heard anything,
//! and asks [`Liveness::poll`] at [`Liveness::next_check`].

use std::time::{Duration, Instant};

/// Sending this long without hearing anything back prompts a probe.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// The shortest wait for an answer to a probe. Longer with a long round
/// trip ([`Liveness::probe_wait`]), since the ping waits behind what is
/// already queued on the link.
pub const PROBE_WAIT_MIN: Duration = Duration::from_secs(2);

/// The longest wait for an answer to a probe.
pub const PROBE_WAIT_MAX: Duration = Duration::from_secs(10);

/// What the link should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    Fine,
    /// Send a ping: data went out and nothing came back.
    Probe,
    /// Nothing came back after the probe either: the link is dead.
    Dead,
}

/// One link's "sending but not hearing" state.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    /// When data first went out after the last thing heard.
    sending_since: Option<Instant>,
    /// When the probe went out, if one is unanswered.
    probed_at: Option<Instant>,
}

impl Liveness {
    /// A link that has neither sent nor heard.
    pub fn new() -> Liveness {
        Liveness::default()
    }

    /// Data (not padding, keepalives or pings) went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.sending_since.get_or_insert(now);
    }

    /// Bytes of any kind arrived: the peer is alive.
    pub fn heard(&mut self) {
        self.sending_since = None;
        self.probed_at = None;
    }

    /// How long an answer to a probe may take: four smoothed round trips,
    /// within [`PROBE_WAIT_MIN`] and [`PROBE_WAIT_MAX`].
    pub fn probe_wait(srtt: Option<Duration>) -> Duration {
        srtt.map_or(PROBE_WAIT_MIN, |r| r * 4)
            .clamp(PROBE_WAIT_MIN, PROBE_WAIT_MAX)
    }

    /// When [`Liveness::poll`] next has something to say, if ever without
    /// more sending.
    pub fn next_check(&self, srtt: Option<Duration>) -> Option<Instant> {
        match (self.probed_at, self.sending_since) {
            (Some(p), _) => Some(p + Self::probe_wait(srtt)),
            (None, Some(s)) => Some(s + PROBE_AFTER),
            (None, None) => None,
        }
    }

    /// What to do at `now`. [`Verdict::Probe`] is given once per silence;
    /// the caller sends the ping.
    pub fn poll(&mut self, now: Instant, srtt: Option<Duration>) -> Verdict {
        match (self.probed_at, self.sending_since) {
            (Some(p), _) if now >= p + Self::probe_wait(srtt) => Verdict::Dead,
            (None, Some(s)) if now >= s + PROBE_AFTER => {
                self.probed_at = Some(now);
                Verdict::Probe
            }
            _ => Verdict::Fine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_link_is_never_probed() {
        let t = Instant::now();
        let mut l = Liveness::new();
        assert_eq!(l.next_check(None), None);
        assert_eq!(l.poll(t + ms(100_000), None), Verdict::Fine);
    }

    #[test]
    fn sending_without_hearing_probes_then_declares_dead() {
        let t = Instant::now();
        let mut l = Liveness::new();
        l.sent(t);
        l.sent(t + ms(500));
        assert_eq!(l.next_check(None), Some(t + PROBE_AFTER));
        assert_eq!(l.poll(t + ms(999), None), Verdict::Fine);
        assert_eq!(l.poll(t + ms(1000), None), Verdict::Probe);
        // Once per silence.
        assert_eq!(l.poll(t + ms(1500), None), Verdict::Fine);
        assert_eq!(l.next_check(None), Some(t + ms(3000)));
        assert_eq!(l.poll(t + ms(2999), None), Verdict::Fine);
        assert_eq!(l.poll(t + ms(3000), None), Verdict::Dead);
    }

    #[test]
    fn hearing_anything_clears_the_probe() {
        let t = Instant::now();
        let mut l = Liveness::new();
        l.sent(t);
        assert_eq!(l.poll(t + ms(1000), None), Verdict::Probe);
        l.heard();
        assert_eq!(l.poll(t + ms(5000), None), Verdict::Fine);
        assert_eq!(l.next_check(None), None);
        // A new silence starts at the next send.
        l.sent(t + ms(6000));
        assert_eq!(l.poll(t + ms(6999), None), Verdict::Fine);
        assert_eq!(l.poll(t + ms(7000), None), Verdict::Probe);
    }

    #[test]
    fn the_wait_follows_the_round_trip_within_bounds() {
        assert_eq!(Liveness::probe_wait(None), PROBE_WAIT_MIN);
        assert_eq!(Liveness::probe_wait(Some(ms(10))), PROBE_WAIT_MIN);
        assert_eq!(Liveness::probe_wait(Some(ms(1000))), ms(4000));
        assert_eq!(Liveness::probe_wait(Some(ms(60_000))), PROBE_WAIT_MAX);
        let t = Instant::now();
        let mut l = Liveness::new();
        l.sent(t);
        assert_eq!(l.poll(t + ms(1000), Some(ms(1000))), Verdict::Probe);
        assert_eq!(l.poll(t + ms(4999), Some(ms(1000))), Verdict::Fine);
        assert_eq!(l.poll(t + ms(5000), Some(ms(1000))), Verdict::Dead);
    }
}
