//! Warm workers: after a call, the supervisor starts the next worker for the same plan
//! (tenant uid, workspace, profile) ahead of time, so the next call skips process start-up
//! and confinement.
//!
//! This stays one fresh worker per call: a warm worker has run nothing of any call, is confined exactly as
//! a cold one, and is used once. It only started earlier, so it sees the workspace's protected
//! paths as they were when it started (after the previous call). Idle workers are bounded
//! per plan and in total, and ended after a time-to-live. A worker warmed after a
//! `shell_exec` also has its login shell running (`ConfinementPlan::prestart_shell`, left out
//! of the pool key); a network-profile worker keeps its pasta while it waits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::launch::ReadyWorker;

/// Idle confined workers by plan.
pub struct WarmPool {
    idle: Mutex<HashMap<String, Vec<(Instant, ReadyWorker)>>>,
    per_plan: usize,
    total: usize,
    ttl: Duration,
}

impl WarmPool {
    /// A pool keeping at most `per_plan` idle workers per plan and `total` overall.
    pub fn new(per_plan: usize, total: usize, ttl: Duration) -> Self {
        WarmPool { idle: Mutex::new(HashMap::new()), per_plan, total, ttl }
    }

    /// An idle, live, unexpired worker for `plan_key`.
    pub fn take(&self, plan_key: &str) -> Option<ReadyWorker> {
        let mut idle = self.idle.lock().expect("pool lock");
        let workers = idle.get_mut(plan_key)?;
        while let Some((since, mut worker)) = workers.pop() {
            if since.elapsed() < self.ttl && worker.is_alive() {
                return Some(worker);
            }
        }
        None
    }

    /// Whether a worker for `plan_key` would be kept (checked before starting one).
    pub fn has_room(&self, plan_key: &str) -> bool {
        let idle = self.idle.lock().expect("pool lock");
        let total: usize = idle.values().map(Vec::len).sum();
        self.per_plan > 0 && total < self.total && idle.get(plan_key).is_none_or(|w| w.len() < self.per_plan)
    }

    /// Keeps a worker for `plan_key`, or drops (ends) it when the pool is full.
    pub fn put(&self, plan_key: String, worker: ReadyWorker) {
        let mut idle = self.idle.lock().expect("pool lock");
        let total: usize = idle.values().map(Vec::len).sum();
        let workers = idle.entry(plan_key).or_default();
        if workers.len() < self.per_plan && total < self.total {
            workers.push((Instant::now(), worker));
        }
    }

    /// Ends workers idle longer than the time-to-live.
    pub fn expire(&self) {
        let mut idle = self.idle.lock().expect("pool lock");
        for workers in idle.values_mut() {
            workers.retain(|(since, _)| since.elapsed() < self.ttl);
        }
        idle.retain(|_, workers| !workers.is_empty());
    }
}
