//! The routing score of a failover candidate (spec §9.3), as a pure function.
//!
//! Highest wins: +1000 healthy / −2000 unhealthy; −10000 if the op needs write and the export
//! is read-only; +20 for a native watcher; −200 per consecutive failure; a bonus fading over
//! 30 s after the last success and a larger penalty fading over 30 s after the last failure.

use std::time::Duration;

/// What the score depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Health {
    pub healthy: bool,
    pub export_ro: bool,
    pub native_watch: bool,
    pub consecutive_failures: u32,
    pub since_success: Option<Duration>,
    pub since_failure: Option<Duration>,
}

const WINDOW_MS: i64 = 30_000;

pub fn score(h: &Health, needs_write: bool) -> i64 {
    let mut s: i64 = if h.healthy { 1000 } else { -2000 };
    if needs_write && h.export_ro {
        s -= 10_000;
    }
    if h.native_watch {
        s += 20;
    }
    s -= 200 * i64::from(h.consecutive_failures);
    if let Some(ms) = h.since_success.map(|d| d.as_millis() as i64).filter(|ms| *ms < WINDOW_MS) {
        s += (WINDOW_MS - ms) / 100;
    }
    if let Some(ms) = h.since_failure.map(|d| d.as_millis() as i64).filter(|ms| *ms < WINDOW_MS) {
        s -= (WINDOW_MS - ms) / 50;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_table() {
        let healthy = Health { healthy: true, ..Health::default() };
        let cases = [
            (healthy, false, 1000),
            (Health { healthy: false, ..healthy }, false, -2000),
            (Health { export_ro: true, ..healthy }, true, -9000),
            (Health { export_ro: true, ..healthy }, false, 1000),
            (Health { native_watch: true, ..healthy }, false, 1020),
            (Health { consecutive_failures: 2, ..healthy }, false, 600),
            (Health { since_success: Some(Duration::ZERO), ..healthy }, false, 1300),
            (Health { since_success: Some(Duration::from_secs(29)), ..healthy }, false, 1010),
            (Health { since_success: Some(Duration::from_secs(31)), ..healthy }, false, 1000),
            (Health { since_failure: Some(Duration::ZERO), ..healthy }, false, 400),
            (Health { since_failure: Some(Duration::from_secs(40)), ..healthy }, false, 1000),
        ];
        for (health, write, want) in cases {
            assert_eq!(score(&health, write), want, "{health:?} write={write}");
        }
    }
}
