//! Events an agent session can wait for (spec `acheron-worldfs.md` §9).
//!
//! An [`EventHub`] keeps one [`ScopeEvents`] per agent-and-project scope: the signals written
//! to `/agents/self/events/control/signal.json` by any connection bound to that scope, and a
//! change counter that wakes every waiter of the scope. Waiting itself — which events a
//! configuration selects, and the blocking read of `next.json` — is in [`wait`].
//!
//! [`topology`] is the other kind of event: workspace topology changes pushed to
//! connections that subscribed to debug events.
//!
//! Nothing here is persisted: signals are a rendezvous between live sessions, and a restart
//! ends every wait. Each scope retains at most [`MAX_RETAINED_SIGNALS`] signals of at most
//! [`MAX_SIGNAL_BYTES`] each, so a client cannot grow the gateway's memory through signals.

pub mod topology;
pub mod wait;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

/// Signals a scope keeps for waiters that have not read them yet (spec §9.3).
pub const MAX_RETAINED_SIGNALS: usize = 512;
/// Upper bound on one `signal.json` write; signals are notifications, not a data channel.
pub const MAX_SIGNAL_BYTES: usize = 16 * 1024;

/// Who raised a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalType {
    Agent,
    Hook,
    User,
}

impl SignalType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Agent => "agent",
            SignalType::Hook => "hook",
            SignalType::User => "user",
        }
    }

    pub fn from_name(name: &str) -> Option<SignalType> {
        match name {
            "agent" => Some(SignalType::Agent),
            "hook" => Some(SignalType::Hook),
            "user" => Some(SignalType::User),
            _ => None,
        }
    }
}

/// One write to `signal.json`, as waiters receive it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Signal {
    pub seq: u64,
    pub event_type: SignalType,
    pub parameter: Option<String>,
    pub payload: Value,
    #[serde(skip)]
    pub at_ms: i64,
}

/// The agent and project whose sessions share signals.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    pub agent_id: String,
    pub project_id: String,
}

#[derive(Default)]
pub struct EventHub {
    scopes: Mutex<HashMap<ScopeKey, Arc<ScopeEvents>>>,
}

impl EventHub {
    /// The events of one scope, created on first use.
    pub fn scope(&self, key: ScopeKey) -> Arc<ScopeEvents> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        scopes.entry(key).or_insert_with(|| Arc::new(ScopeEvents::new())).clone()
    }
}

pub struct ScopeEvents {
    signals: Mutex<SignalLog>,
    /// Bumped on every new event; waiters hold a receiver so that no wake-up is lost between
    /// checking for an event and going to sleep.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct SignalLog {
    retained: VecDeque<Signal>,
    last_seq: u64,
}

impl ScopeEvents {
    fn new() -> ScopeEvents {
        ScopeEvents { signals: Mutex::new(SignalLog::default()), changed: watch::Sender::new(0) }
    }

    fn log(&self) -> MutexGuard<'_, SignalLog> {
        self.signals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a signal, drops the oldest beyond the retention bound, and wakes waiters.
    pub fn raise(&self, event_type: SignalType, parameter: Option<String>, payload: Value, at_ms: i64) -> u64 {
        let seq = {
            let mut log = self.log();
            log.last_seq += 1;
            let seq = log.last_seq;
            log.retained.push_back(Signal { seq, event_type, parameter, payload, at_ms });
            while log.retained.len() > MAX_RETAINED_SIGNALS {
                log.retained.pop_front();
            }
            seq
        };
        self.changed.send_modify(|n| *n += 1);
        seq
    }

    /// The sequence number of the newest signal (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.log().last_seq
    }

    /// The oldest retained signal newer than `after` that `wanted` accepts.
    pub fn first_after(&self, after: u64, wanted: impl Fn(&Signal) -> bool) -> Option<Signal> {
        self.log().retained.iter().find(|s| s.seq > after && wanted(s)).cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_bounded_and_keeps_the_newest() {
        let scope = ScopeEvents::new();
        for i in 0..(MAX_RETAINED_SIGNALS as u64 + 10) {
            scope.raise(SignalType::User, None, Value::from(i), 0);
        }
        assert_eq!(scope.last_seq(), MAX_RETAINED_SIGNALS as u64 + 10);
        let oldest = scope.first_after(0, |_| true).unwrap();
        assert_eq!(oldest.seq, 11, "the ten oldest were dropped");
    }

    #[test]
    fn scopes_are_shared_by_key_and_separate_otherwise() {
        let hub = EventHub::default();
        let key = |a: &str| ScopeKey { agent_id: a.into(), project_id: "p".into() };
        hub.scope(key("a")).raise(SignalType::Hook, None, Value::Null, 0);
        assert_eq!(hub.scope(key("a")).last_seq(), 1);
        assert_eq!(hub.scope(key("b")).last_seq(), 0);
    }
}
