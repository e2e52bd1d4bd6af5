//! Fan-out of invalidation events to connections (§6).
//!
//! Each connection registers its outbound queue here. Events caused by a request go to the
//! requesting connection *before* its reply (the connection queues them itself, in order) and
//! are broadcast to every other connection; events seen by the host watcher go to all
//! connections. Broadcasts never wait: a connection whose bounded queue is full misses the
//! event (counted in [`EventHub::dropped`]) instead of stalling the sender (spec README
//! quirk 11: queue per connection, bounded, never block request/reply traffic).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use spiderweb_proto::fs::Event;
use tokio::sync::mpsc;

use super::connection::{Frame, Outbound};

/// A connection's queue and whether it currently wants broadcasts.
#[derive(Debug)]
struct Subscriber {
    queue: mpsc::Sender<Outbound>,
    wants: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
pub struct EventHub {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Subscriber>>,
    dropped: AtomicU64,
}

impl EventHub {
    /// Registers a connection's queue; returns its id. Broadcasts reach it while `wants` is
    /// set (always on a standalone node; see `NodeConfig::events_to_subscribers_only`).
    pub fn register(&self, queue: mpsc::Sender<Outbound>, wants: Arc<AtomicBool>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Subscriber { queue, wants });
        id
    }

    pub fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Sends `events` to every connection except `origin`.
    pub fn broadcast(&self, origin: Option<u64>, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let frames: Vec<String> = events.iter().map(Event::render).collect();
        for (id, subscriber) in self.lock().iter() {
            if Some(*id) == origin || !subscriber.wants.load(Ordering::Relaxed) {
                continue;
            }
            for frame in &frames {
                if subscriber.queue.try_send(Outbound::unbudgeted(Frame::Text(frame.clone()))).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Events not delivered because a connection's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}
