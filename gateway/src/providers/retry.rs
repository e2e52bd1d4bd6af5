//! When to try a failed provider request again, as a pure function.
//!
//! Why it exists: retries must be predictable and testable without clocks or randomness,
//! so the caller passes the attempt count, the error, whether the reply had started
//! streaming, and a jitter sample; the policy answers "wait this long" or "give up, and
//! why". It must never retry once a streamed reply has started (the user has seen part
//! of it, and tool calls may be half-assembled) nor a failure that cannot heal
//! (auth, bad request, quota, context length).
//!
//! Backoff is exponential with "equal jitter" (half fixed, half random) so parallel
//! sessions do not retry in lockstep; a provider's `Retry-After` replaces the computed
//! delay, since the provider knows best, unless it exceeds `max_retry_after`.

use std::time::Duration;

use super::error::ProviderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 means never retry).
    pub max_attempts: u32,
    /// Delay scale of the first retry.
    pub base_delay: Duration,
    /// Cap on the computed (not the provider-requested) delay.
    pub max_delay: Duration,
    /// Longest provider-requested wait still worth it; beyond, give up at once with
    /// the provider's message.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The error will not go away by itself.
    NotTransient,
    /// `max_attempts` reached.
    AttemptsExhausted,
    /// Part of the reply was already streamed.
    StreamStarted,
    /// The provider asked to wait longer than `max_retry_after`.
    RetryAfterTooLong(Duration),
}

impl RetryPolicy {
    /// Decides after attempt number `attempts_made` (1-based) failed with `error`.
    /// `stream_started` is [`super::StreamParser::stream_started`] for that attempt (false
    /// for connection failures before any reply). `jitter` is a sample in `[0, 1]`
    /// (see [`jitter_sample`]); values outside are clamped.
    pub fn decide(
        &self,
        attempts_made: u32,
        error: &ProviderError,
        stream_started: bool,
        jitter: f64,
    ) -> RetryDecision {
        if stream_started {
            return RetryDecision::GiveUp(GiveUpReason::StreamStarted);
        }
        if !error.kind.is_transient() {
            return RetryDecision::GiveUp(GiveUpReason::NotTransient);
        }
        if attempts_made >= self.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        if let Some(wait) = error.retry_after {
            return if wait > self.max_retry_after {
                RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong(wait))
            } else {
                RetryDecision::RetryAfter(wait)
            };
        }
        let doublings = attempts_made.saturating_sub(1).min(30);
        let ceiling = self
            .base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        RetryDecision::RetryAfter(ceiling / 2 + ceiling.mul_f64(jitter / 2.0))
    }
}

/// A uniform sample in `[0, 1]` from the OS random source (0.5 if it is unavailable,
/// which only costs the spread, not correctness).
pub fn jitter_sample() -> f64 {
    getrandom::u32().map_or(0.5, |n| f64::from(n) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorKind;

    fn error(kind: ErrorKind, retry_after: Option<Duration>) -> ProviderError {
        ProviderError {
            retry_after,
            ..ProviderError::new(kind, "test")
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_max_attempts() {
        let policy = RetryPolicy::default();
        let server = error(ErrorKind::Server, None);
        let ms = |d: RetryDecision| match d {
            RetryDecision::RetryAfter(d) => d.as_millis(),
            other => panic!("expected a retry, got {other:?}"),
        };
        assert_eq!(ms(policy.decide(1, &server, false, 0.0)), 250);
        assert_eq!(ms(policy.decide(1, &server, false, 1.0)), 500);
        assert_eq!(ms(policy.decide(2, &server, false, 1.0)), 1000);
        assert_eq!(ms(policy.decide(3, &server, false, 0.5)), 1500);
        assert_eq!(
            policy.decide(4, &server, false, 0.5),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
        let long = RetryPolicy {
            max_attempts: 100,
            ..policy
        };
        assert_eq!(ms(long.decide(60, &server, false, 1.0)), 30_000);
    }

    #[test]
    fn retry_after_is_honoured_and_bounded() {
        let policy = RetryPolicy::default();
        let limited = error(ErrorKind::RateLimited, Some(Duration::from_secs(7)));
        assert_eq!(
            policy.decide(1, &limited, false, 0.9),
            RetryDecision::RetryAfter(Duration::from_secs(7))
        );
        let far = error(ErrorKind::RateLimited, Some(Duration::from_secs(3600)));
        assert_eq!(
            policy.decide(1, &far, false, 0.9),
            RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong(Duration::from_secs(3600)))
        );
    }

    #[test]
    fn permanent_failures_and_started_streams_are_not_retried() {
        let policy = RetryPolicy::default();
        for kind in [
            ErrorKind::Auth,
            ErrorKind::BadRequest,
            ErrorKind::QuotaExceeded,
            ErrorKind::ContextLengthExceeded,
            ErrorKind::MalformedStream,
        ] {
            assert_eq!(
                policy.decide(1, &error(kind, None), false, 0.5),
                RetryDecision::GiveUp(GiveUpReason::NotTransient),
                "{kind:?}"
            );
        }
        for kind in [
            ErrorKind::Overloaded,
            ErrorKind::Connection,
            ErrorKind::Server,
        ] {
            assert!(matches!(
                policy.decide(1, &error(kind, None), false, 0.5),
                RetryDecision::RetryAfter(_)
            ));
            assert_eq!(
                policy.decide(1, &error(kind, None), true, 0.5),
                RetryDecision::GiveUp(GiveUpReason::StreamStarted)
            );
        }
        let never = RetryPolicy {
            max_attempts: 1,
            ..policy
        };
        assert_eq!(
            never.decide(1, &error(ErrorKind::Server, None), false, 0.5),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
    }

    #[test]
    fn jitter_samples_are_in_range() {
        for _ in 0..100 {
            let sample = jitter_sample();
            assert!((0.0..=1.0).contains(&sample));
        }
    }
}
