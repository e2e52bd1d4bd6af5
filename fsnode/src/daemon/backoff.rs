//! Retry delays of the daemon: `min(base << attempt, max)`, the attempt capped at 20 (spec
//! §7.5), the same rule for the tunnel's reconnects and for failed control calls.
//!
//! It exists so that a gateway that is down or refusing is retried ever more slowly but never
//! in a tight loop: the smallest delay is `base`, which the command line keeps at ≥ 1 ms.

use std::time::Duration;

/// Highest shift applied to the base delay.
pub const MAX_ATTEMPT: u32 = 20;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max: max.max(base), attempt: 0 }
    }

    /// The delay before the next try; each call lengthens the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.base.saturating_mul(1u32 << self.attempt.min(MAX_ATTEMPT)).min(self.max);
        self.attempt = (self.attempt + 1).min(MAX_ATTEMPT);
        delay
    }

    /// Back to `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(5000), Duration::from_millis(60_000));
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [5000, 10_000, 20_000, 40_000, 60_000, 60_000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(5000));
    }

    #[test]
    fn attempt_is_capped_and_huge_values_saturate() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_secs(u64::MAX / 4));
        let last = (0..100).map(|_| b.next_delay()).last().unwrap();
        assert_eq!(last, Duration::from_millis(1 << MAX_ATTEMPT), "attempt capped at 20");
        let mut huge = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::from_secs(u64::MAX));
        huge.next_delay();
        huge.next_delay(); // base << 1 overflows: saturates instead of wrapping to a short delay
        assert!(huge.next_delay() >= Duration::from_secs(u64::MAX / 2));
    }

    #[test]
    fn max_below_base_means_base() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(10));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
