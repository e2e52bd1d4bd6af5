//! Upstream tags of one tunnel: u32 from 1, skipping 0 and tags still in flight
//! (spec `fs-node.md` §7.3), each with the waiter of its reply.
//!
//! Bounded: at most `capacity` requests wait at once; the caller answers EAGAIN beyond.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tokio::sync::oneshot;

pub type Waiter = oneshot::Sender<Map<String, Value>>;

pub struct Pending {
    next: u32,
    waiting: HashMap<u32, Waiter>,
    capacity: usize,
}

impl Pending {
    pub fn new(capacity: usize) -> Pending {
        Pending { next: 1, waiting: HashMap::new(), capacity }
    }

    /// A fresh tag for `waiter`, or `None` when `capacity` requests already wait.
    pub fn insert(&mut self, waiter: Waiter) -> Option<u32> {
        if self.waiting.len() >= self.capacity {
            return None;
        }
        loop {
            let tag = self.next;
            self.next = self.next.wrapping_add(1);
            if tag != 0 && !self.waiting.contains_key(&tag) {
                self.waiting.insert(tag, waiter);
                return Some(tag);
            }
        }
    }

    pub fn remove(&mut self, tag: u32) -> Option<Waiter> {
        self.waiting.remove(&tag)
    }

    /// Drops every waiter: each sees its channel closed.
    pub fn clear(&mut self) {
        self.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> Waiter {
        oneshot::channel().0
    }

    #[test]
    fn tags_start_at_one_skip_zero_and_in_flight() {
        let mut p = Pending::new(8);
        assert_eq!(p.insert(waiter()), Some(1));
        assert_eq!(p.insert(waiter()), Some(2));
        p.next = u32::MAX;
        assert_eq!(p.insert(waiter()), Some(u32::MAX));
        // Wraps past 0 and past 1 and 2, which are still in flight.
        assert_eq!(p.insert(waiter()), Some(3));
        p.remove(1);
        p.next = 1;
        assert_eq!(p.insert(waiter()), Some(1));
        assert_eq!(p.waiting.len(), 4);
    }

    #[test]
    fn capacity_is_enforced() {
        let mut p = Pending::new(2);
        assert!(p.insert(waiter()).is_some());
        assert!(p.insert(waiter()).is_some());
        assert_eq!(p.insert(waiter()), None);
        p.clear();
        assert!(p.insert(waiter()).is_some());
    }
}
