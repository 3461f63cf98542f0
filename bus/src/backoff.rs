//! Reconnect and retry delays, shared by every publisher, subscriber and the broker's dial-out
//! inputs: exponential backoff from [`backon`], with jitter, forever, reset after a success.
//!
//! The delay doubles from `min` towards `max`. With jitter (the default) backon adds up to
//! 100 % of the nominal delay; so that `max` stays the real ceiling, the nominal delay stops
//! doubling at `max / 2` (never below `min`) and every delay is clamped to `max`. Every
//! delay handed out therefore lies in `[min, max]`: the first in `[min, 2 min)`, those at
//! the ceiling in `[max / 2, max)`, so clients that lost the same server do not come back in
//! lockstep. [`Backoff::without_jitter`] gives the plain sequence `min, 2 min, … max, max`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays between attempts: [`next_delay`](Backoff::next_delay) after each failure,
/// [`reset`](Backoff::reset) after a success. Also an endless [`Iterator`] of delays.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    delays: ExponentialBackoff,
    /// The delay `next_delay` hands out next (drawn ahead, so it can be looked at).
    upcoming: Duration,
    /// Delays handed out since the last reset: failures in a row.
    failures: u32,
}

impl Backoff {
    /// `min` doubling to `max`, with jitter. `max` below `min` is taken as `min`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay((max / 2).max(min))
            .with_jitter()
            .without_max_times();
        Backoff::from_builder(builder, max)
    }

    /// The same bounds without jitter: exactly `min, 2 min, 4 min, … max, max, …`.
    pub fn without_jitter(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .without_max_times();
        Backoff::from_builder(builder, max)
    }

    fn from_builder(builder: ExponentialBuilder, max: Duration) -> Backoff {
        let mut delays = builder.build();
        let upcoming = Self::draw(&mut delays, max);
        Backoff {
            builder,
            max,
            delays,
            upcoming,
            failures: 0,
        }
    }

    fn draw(delays: &mut ExponentialBackoff, max: Duration) -> Duration {
        // Without max_times the iterator never ends; `max` is the answer if it did.
        let d = delays.next().unwrap_or(max).min(max);
        // backon multiplies in f32 (200.000003ms): round to whole microseconds, for tidy
        // log lines and exact tests.
        let us = d.as_nanos().saturating_add(500) / 1000;
        Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX)).min(max)
    }

    /// After a failure: how long to wait before the next attempt. Counts the failure.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.upcoming;
        self.upcoming = Self::draw(&mut self.delays, self.max);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// The delay [`next_delay`](Backoff::next_delay) will return, without taking it (for a
    /// log line, or an idle probe that waits as long as the next retry would).
    pub fn peek(&self) -> Duration {
        self.upcoming
    }

    /// After a success: the next delay is `min` (with jitter) again. Cheap when nothing
    /// failed since the last reset (subscribers call it for every message).
    pub fn reset(&mut self) {
        if self.failures == 0 {
            return;
        }
        self.delays = self.builder.build();
        self.upcoming = Self::draw(&mut self.delays, self.max);
        self.failures = 0;
    }

    /// Failures in a row: delays handed out since the last [`reset`](Backoff::reset).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Never `None`: the same as [`Backoff::next_delay`].
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn without_jitter_doubles_to_max_and_resets() {
        let mut b = Backoff::without_jitter(100 * MS, 5000 * MS);
        let got: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.failures(), 9);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.peek(), 100 * MS);
        assert_eq!(b.next_delay(), 100 * MS);
        assert_eq!(b.next_delay(), 200 * MS);
    }

    #[test]
    fn jittered_delays_stay_within_min_and_max() {
        let (min, max) = (100 * MS, 5000 * MS);
        for _ in 0..50 {
            let mut b = Backoff::new(min, max);
            let first = b.next_delay();
            assert!(first >= min && first < 2 * min, "{first:?}");
            for _ in 0..30 {
                let d = b.next_delay();
                assert!(d >= min && d <= max, "{d:?}");
            }
            // At the ceiling: in [max / 2, max].
            let d = b.next_delay();
            assert!(d >= max / 2 && d <= max, "{d:?}");
            b.reset();
            let d = b.next_delay();
            assert!(d >= min && d < 2 * min, "after reset: {d:?}");
        }
    }

    #[test]
    fn peek_is_what_next_returns() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        // A reset without a failure since changes nothing.
        let p = b.peek();
        b.reset();
        assert_eq!(b.peek(), p);
        for _ in 0..20 {
            let p = b.peek();
            assert_eq!(b.next(), Some(p));
        }
    }

    #[test]
    fn equal_or_inverted_bounds_give_a_constant_delay() {
        for mut b in [
            Backoff::new(300 * MS, 300 * MS),
            Backoff::new(300 * MS, 100 * MS),
            Backoff::without_jitter(300 * MS, 300 * MS),
        ] {
            for _ in 0..10 {
                assert_eq!(b.next_delay(), 300 * MS);
            }
        }
    }
}
