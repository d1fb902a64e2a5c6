//! A bound on how fast one client stream can make the server write to the log.
//!
//! Some loops write log entries on a client's behalf without one request per entry: a group
//! consumer claims events (one entry per claim) for as long as its stream is open, and acks
//! sent on a consume stream become `Ack` entries. Whatever the client does, each such stream
//! writes at most [`Pace::RATE`] entries per second after a burst of [`Pace::BURST`]: beyond
//! that the loop waits. A misbehaving client (one that nacks every event the moment it
//! arrives, say) then spends its own stream's quota, not the cluster's disk. Work is not lost
//! by waiting: claims take up to 64 events each and acks that arrive meanwhile are written
//! together, so a fast, honest consumer batches more per entry instead.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `BURST` tokens, refilled at `RATE` per second; each log write takes one.
#[derive(Debug)]
pub struct Pace {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Pace {
    /// Log writes per second one stream may cause, in the long run.
    pub const RATE: u32 = 50;
    /// Log writes a stream may cause at once before [`Pace::RATE`] applies.
    pub const BURST: u32 = 20;

    pub fn new() -> Pace {
        Pace::with(Self::RATE, Self::BURST)
    }

    pub fn with(rate: u32, burst: u32) -> Pace {
        let burst = f64::from(burst.max(1));
        Pace {
            tokens: burst,
            last: Instant::now(),
            rate: f64::from(rate.max(1)),
            burst,
        }
    }

    /// How long the next write must wait (zero if a token is there now).
    fn refill(&mut self) -> Duration {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Waits until the stream may write one more entry, and takes it.
    pub async fn take(&mut self) {
        let wait = self.refill();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            self.refill();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

impl Default for Pace {
    fn default() -> Self {
        Pace::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With time paused, `take` completes instantly while tokens last and then advances the
    /// clock by exactly what the rate demands: N writes after the burst take (N / rate) s.
    #[tokio::test(start_paused = true)]
    async fn a_stream_writes_at_most_burst_then_rate() {
        let mut p = Pace::with(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            p.take().await;
        }
        assert_eq!(Instant::now(), t0, "the burst does not wait");
        for _ in 0..20 {
            p.take().await;
        }
        let spent = Instant::now() - t0;
        assert!(
            spent >= Duration::from_millis(1990) && spent <= Duration::from_millis(2100),
            "20 writes past the burst at 10/s took {spent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_stream_earns_back_at_most_the_burst() {
        let mut p = Pace::with(10, 5);
        for _ in 0..5 {
            p.take().await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let t0 = Instant::now();
        for _ in 0..6 {
            p.take().await;
        }
        let spent = Instant::now() - t0;
        assert!(
            spent >= Duration::from_millis(99) && spent <= Duration::from_millis(150),
            "the sixth write after a long idle time should wait one token: {spent:?}"
        );
    }
}
