//! Round-trip time of a link from its pings (`docs/protocol.md, "Link
//! framing"`): the writer sends a [`FrameType::Ping`](super::frame::FrameType::Ping)
//! with a fresh random token in place of a plain keepalive, the peer echoes
//! the token in a pong, and the time between the two is one sample.
//!
//! Sans-IO: the caller passes `now` and the RNG. One ping is outstanding at a
//! time; a newer ping replaces an unanswered one (which then counts as lost),
//! so a late or forged pong never yields a sample. The smoothed figure is
//! TCP's (RFC 6298): `srtt = 7/8 · srtt + 1/8 · sample`, starting at the
//! first sample.

use std::time::{Duration, Instant};

use rand_core::RngCore;

use super::frame::PingToken;

/// Tracks one link's outstanding ping and its round-trip times.
#[derive(Debug, Default, Clone)]
pub struct RttEstimator {
    outstanding: Option<(PingToken, Instant)>,
    latest: Option<Duration>,
    smoothed: Option<Duration>,
    samples: u64,
    lost: u64,
    unmatched: u64,
}

impl RttEstimator {
    /// No ping sent and no sample yet.
    pub fn new() -> RttEstimator {
        RttEstimator::default()
    }

    /// A token for a ping sent at `now`. An earlier ping still unanswered is
    /// given up and counted in [`RttEstimator::lost`].
    pub fn ping<R: RngCore + ?Sized>(&mut self, now: Instant, rng: &mut R) -> PingToken {
        let mut token = PingToken::default();
        rng.fill_bytes(&mut token);
        if self.outstanding.replace((token, now)).is_some() {
            self.lost += 1;
        }
        token
    }

    /// A pong with `token` arrived at `now`: the round-trip time if it
    /// answers the outstanding ping, else `None` (counted in
    /// [`RttEstimator::unmatched`]).
    pub fn on_pong(&mut self, token: &PingToken, now: Instant) -> Option<Duration> {
        match self.outstanding {
            Some((t, sent)) if t == *token => {
                self.outstanding = None;
                let rtt = now.saturating_duration_since(sent);
                self.latest = Some(rtt);
                self.smoothed = Some(match self.smoothed {
                    None => rtt,
                    Some(s) => (s * 7 + rtt) / 8,
                });
                self.samples += 1;
                Some(rtt)
            }
            _ => {
                self.unmatched += 1;
                None
            }
        }
    }

    /// The latest round-trip time, if any ping was answered.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// The smoothed round-trip time (RFC 6298's SRTT), if any ping was
    /// answered.
    pub fn smoothed(&self) -> Option<Duration> {
        self.smoothed
    }

    /// Pings answered.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Pings given up because a newer one was sent before their pong came.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Pongs that answered no outstanding ping (late, repeated or forged).
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_with_the_token_gives_a_sample_and_smooths() {
        let mut rng = rand_core::OsRng;
        let mut r = RttEstimator::new();
        let t0 = Instant::now();
        assert_eq!(r.latest(), None);
        let tok = r.ping(t0, &mut rng);
        assert_eq!(
            r.on_pong(&tok, t0 + Duration::from_millis(80)),
            Some(Duration::from_millis(80))
        );
        assert_eq!(r.smoothed(), Some(Duration::from_millis(80)));
        // The same pong again answers nothing.
        assert_eq!(r.on_pong(&tok, t0 + Duration::from_millis(90)), None);
        assert_eq!(r.unmatched(), 1);
        let t1 = t0 + Duration::from_secs(1);
        let tok = r.ping(t1, &mut rng);
        r.on_pong(&tok, t1 + Duration::from_millis(160));
        assert_eq!(r.latest(), Some(Duration::from_millis(160)));
        assert_eq!(r.smoothed(), Some(Duration::from_millis(90)));
        assert_eq!(r.samples(), 2);
    }

    #[test]
    fn a_wrong_or_superseded_token_gives_no_sample() {
        let mut rng = rand_core::OsRng;
        let mut r = RttEstimator::new();
        let t0 = Instant::now();
        let old = r.ping(t0, &mut rng);
        let new = r.ping(t0 + Duration::from_secs(20), &mut rng);
        assert_eq!(r.lost(), 1);
        assert_eq!(r.on_pong(&old, t0 + Duration::from_secs(21)), None);
        let mut forged = new;
        forged[0] ^= 1;
        assert_eq!(r.on_pong(&forged, t0 + Duration::from_secs(21)), None);
        assert_eq!(r.latest(), None);
        assert_eq!(
            r.on_pong(&new, t0 + Duration::from_secs(21)),
            Some(Duration::from_secs(1))
        );
    }
}
