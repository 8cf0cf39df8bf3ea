//! A token bucket, in whatever unit its caller counts (bytes, cells,
//! circuits). Time is a parameter, so it is sans-IO.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 means no limit: every take succeeds.
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst as f64,
            at: now,
        }
    }

    /// The rate, in tokens a second (0: no limit).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// A new rate and burst; what is saved up stays, up to the new burst.
    pub fn set(&mut self, rate: u64, burst: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.burst = burst;
        self.tokens = self.tokens.min(burst as f64);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst as f64);
    }

    /// Takes `n` tokens whatever the bucket holds (it may go below zero) and
    /// returns how long to wait before what they pay for may go: pacing.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    /// Takes `n` tokens if the bucket holds them: admission. Whether it did.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_lets_a_burst_through_then_keeps_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 250_000, t0);
        assert_eq!(b.take(250_000, t0), Duration::ZERO);
        let wait = b.take(100_000, t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 0.001, "{wait:?}");
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(0, t1), Duration::ZERO);
        let mut free = TokenBucket::new(0, 0, t0);
        assert_eq!(free.take(10_000_000, t0), Duration::ZERO);
    }

    #[test]
    fn admission_refuses_past_the_burst_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20, 40, t0);
        let taken = (0..100).filter(|_| b.try_take(1, t0)).count();
        assert_eq!(taken, 40);
        // A second later, 20 more.
        let t1 = t0 + Duration::from_secs(1);
        let taken = (0..100).filter(|_| b.try_take(1, t1)).count();
        assert_eq!(taken, 20);
        // A refused take costs nothing.
        assert!(!b.try_take(1, t1));
        assert!(b.try_take(1, t1 + Duration::from_millis(50)));
    }

    #[test]
    fn a_new_rate_keeps_what_is_saved_up_to_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 100, t0);
        b.set(5, 10, t0);
        assert_eq!((0..100).filter(|_| b.try_take(1, t0)).count(), 10);
        assert_eq!(b.rate(), 5);
    }
}
