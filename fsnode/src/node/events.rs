//! Fan-out of invalidation events to connections (§6).
//!
//! Each connection registers its outbound queue here. Events caused by a request go to the
//! requesting connection *before* its reply (the connection queues them itself, in order) and
//! are broadcast to every other connection; events seen by the host watcher go to all
//! connections. Broadcasts never wait: a connection whose bounded queue is full misses the
//! event (counted in [`EventHub::dropped`]) instead of stalling the sender (spec README
//! quirk 11: queue per connection, bounded, never block request/reply traffic).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use spiderweb_proto::fs::Event;
use tokio::sync::mpsc;

use super::connection::{Frame, Outbound};

#[derive(Debug, Default)]
pub struct EventHub {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, mpsc::Sender<Outbound>>>,
    dropped: AtomicU64,
}

impl EventHub {
    /// Registers a connection's queue; returns its id.
    pub fn register(&self, queue: mpsc::Sender<Outbound>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, queue);
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
        for (id, queue) in self.lock().iter() {
            if Some(*id) == origin {
                continue;
            }
            for frame in &frames {
                if queue.try_send(Outbound::unbudgeted(Frame::Text(frame.clone()))).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Events not delivered because a connection's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Outbound>>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }
}
