//! `node_service_watch`: retained catalog events, replay, and live fan-out (spec §6.5).
//!
//! Every successful `node_service_upsert` becomes one event (its reply payload). The hub keeps
//! the newest `capacity` events for replay and broadcasts each to the watching connections;
//! each connection filters what it receives by its own subscription (node filter) and by
//! visibility (admins see all; users only nodes mounted in their bound project with `observe`
//! access), because visibility depends on the connection's binding, not on the event.
//!
//! Bounded: retained events (`SPIDERWEB_NODE_SERVICE_EVENT_HISTORY_MAX`, clamped 64–20000),
//! subscribers ([`MAX_SUBSCRIBERS`]), and each subscriber's backlog (the broadcast channel's
//! capacity). A subscriber that falls behind is dropped (the original drops one whose write
//! fails) and counted in `fanout.dropped_total`. Retained events live in memory only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Connections that may watch at once.
pub const MAX_SUBSCRIBERS: u64 = 1024;
/// Events a subscriber may fall behind before it is dropped.
const BACKLOG: usize = 1024;

/// One catalog change, rendered once for every subscriber.
#[derive(Debug)]
pub struct ServiceEvent {
    pub node_id: String,
    pub timestamp_ms: i64,
    /// The whole `control.node_service_event` frame.
    pub frame: String,
}

/// Role gates and replay cap, from the environment (spec §6.5).
#[derive(Clone, Copy, Debug)]
pub struct WatchSettings {
    pub allow_admin: bool,
    pub allow_user: bool,
    pub replay_max: u64,
    pub capacity: usize,
}

impl WatchSettings {
    pub fn from_env() -> WatchSettings {
        let flag = |name: &str, default: bool| match std::env::var(name).ok().as_deref().map(str::trim) {
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            _ => default,
        };
        let number = |name: &str, default: u64, lo: u64, hi: u64| {
            std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default).clamp(lo, hi)
        };
        WatchSettings {
            allow_admin: flag("SPIDERWEB_NODE_SERVICE_WATCH_ALLOW_ADMIN", true),
            allow_user: flag("SPIDERWEB_NODE_SERVICE_WATCH_ALLOW_USER", false),
            replay_max: number("SPIDERWEB_NODE_SERVICE_WATCH_REPLAY_MAX", 250, 1, 10_000),
            capacity: number("SPIDERWEB_NODE_SERVICE_EVENT_HISTORY_MAX", 1024, 64, 20_000) as usize,
        }
    }
}

/// Subscriber gauges and the replay/fan-out counters (also exported on `/metrics`).
#[derive(Default)]
pub struct WatchCounters {
    subscribers: AtomicU64,
    peak: AtomicU64,
    pub replay_requests: Counter,
    pub replay_attempted: Counter,
    pub replay_sent: Counter,
    pub replay_bytes: Counter,
    pub fanout_events: Counter,
    pub fanout_attempted: Counter,
    pub fanout_sent: Counter,
    pub fanout_dropped: Counter,
}

pub struct WatchHub {
    pub settings: WatchSettings,
    retained: Mutex<VecDeque<Arc<ServiceEvent>>>,
    sender: broadcast::Sender<Arc<ServiceEvent>>,
    pub counters: Arc<WatchCounters>,
}

/// A live subscription; dropping it frees the subscriber slot.
pub struct Subscription {
    pub node_filter: Option<String>,
    pub receiver: broadcast::Receiver<Arc<ServiceEvent>>,
    counters: Arc<WatchCounters>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.counters.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Subscription {
    /// Counts one event this subscriber considered (`visible`: it passed the filters and is sent).
    pub fn record_fanout(&self, visible: bool) {
        self.counters.fanout_attempted.inc();
        if visible {
            self.counters.fanout_sent.inc();
        }
    }

    /// The subscriber fell `missed` events behind and is being dropped.
    pub fn record_dropped(&self, missed: u64) {
        self.counters.fanout_dropped.inc_by(missed.max(1));
    }

    pub fn matches(&self, event: &ServiceEvent) -> bool {
        self.node_filter.as_deref().is_none_or(|n| n == event.node_id)
    }
}

impl WatchHub {
    pub fn new(settings: WatchSettings) -> WatchHub {
        WatchHub {
            settings,
            retained: Mutex::new(VecDeque::new()),
            sender: broadcast::Sender::new(BACKLOG),
            counters: Arc::default(),
        }
    }

    fn retained(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<ServiceEvent>>> {
        self.retained.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Retains `event` and sends it to every subscriber.
    pub fn publish(&self, node_id: &str, timestamp_ms: i64, payload: &Value) {
        let frame = spiderweb_proto::reply::control_push("control.node_service_event", payload);
        let event = Arc::new(ServiceEvent { node_id: node_id.to_owned(), timestamp_ms, frame });
        {
            let mut retained = self.retained();
            if retained.len() >= self.settings.capacity {
                retained.pop_front();
            }
            retained.push_back(event.clone());
        }
        self.counters.fanout_events.inc();
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    /// A new subscription, or `None` when [`MAX_SUBSCRIBERS`] are watching. Subscribing
    /// before replaying means no event falls between the replay and the live feed (one may
    /// arrive twice, which clients tolerate: events are idempotent catalog snapshots).
    pub fn subscribe(&self, node_filter: Option<String>) -> Option<Subscription> {
        let now = self.counters.subscribers.fetch_add(1, Ordering::AcqRel) + 1;
        if now > MAX_SUBSCRIBERS {
            self.counters.subscribers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.counters.peak.fetch_max(now, Ordering::AcqRel);
        Some(Subscription { node_filter, receiver: self.sender.subscribe(), counters: self.counters.clone() })
    }

    /// The newest `limit` retained events passing `visible`, oldest first.
    pub fn replay(&self, limit: u64, visible: impl Fn(&ServiceEvent) -> bool) -> Vec<Arc<ServiceEvent>> {
        self.counters.replay_requests.inc();
        let retained = self.retained();
        let mut picked: Vec<Arc<ServiceEvent>> = Vec::new();
        for event in retained.iter().rev() {
            if picked.len() as u64 >= limit {
                break;
            }
            self.counters.replay_attempted.inc();
            if visible(event) {
                picked.push(event.clone());
            }
        }
        picked.reverse();
        self.counters.replay_sent.inc_by(picked.len() as u64);
        let bytes: usize = picked.iter().map(|e| e.frame.len()).sum();
        self.counters.replay_bytes.inc_by(bytes as u64);
        picked
    }

    pub fn retained_len(&self) -> usize {
        self.retained().len()
    }

    pub fn subscribers(&self) -> u64 {
        self.counters.subscribers.load(Ordering::Acquire)
    }

    pub fn subscribers_peak(&self) -> u64 {
        self.counters.peak.load(Ordering::Acquire)
    }

    /// Newest minus oldest retained event time.
    pub fn retained_window_ms(&self) -> i64 {
        let retained = self.retained();
        match (retained.front(), retained.back()) {
            (Some(o), Some(n)) => n.timestamp_ms - o.timestamp_ms,
            _ => 0,
        }
    }

    /// The `node_service_watch` object of `control.metrics`.
    pub fn metrics_json(&self) -> Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let k = |counter: &Counter| counter.get();
        let retained = self.retained();
        let oldest = retained.front().map(|e| e.timestamp_ms);
        let newest = retained.back().map(|e| e.timestamp_ms);
        json!({
            "subscribers": {"current": n(&c.subscribers), "peak": n(&c.peak)},
            "replay": {"requests_total": k(&c.replay_requests), "attempted_total": k(&c.replay_attempted),
                       "sent_total": k(&c.replay_sent), "bytes_total": k(&c.replay_bytes)},
            "fanout": {"events_total": k(&c.fanout_events), "attempted_total": k(&c.fanout_attempted),
                       "sent_total": k(&c.fanout_sent), "dropped_total": k(&c.fanout_dropped)},
            "retained": {"events": retained.len(), "capacity": self.settings.capacity,
                         "oldest_ms": oldest, "newest_ms": newest,
                         "window_ms": match (oldest, newest) { (Some(o), Some(n)) => n - o, _ => 0 }},
        })
    }
}
