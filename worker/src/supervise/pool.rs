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
//!
//! Workers being started count against the bounds from the moment a start is [reserved]
//! (`WarmPool::reserve`), not only once they are idle: under concurrent calls several calls
//! end at once, and each used to see an empty pool, start a worker, and have all but one
//! ended unused (40 % of all workers started with 8 callers, each a full confinement and a
//! login shell).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::launch::ReadyWorker;

/// What the pool holds: a started worker that may have died while it waited.
pub trait Standby: Send {
    /// Whether it can still take a call.
    fn is_alive(&mut self) -> bool;
}

impl Standby for ReadyWorker {
    fn is_alive(&mut self) -> bool {
        ReadyWorker::is_alive(self)
    }
}

/// Idle confined workers by plan.
pub struct WarmPool<W = ReadyWorker> {
    state: Mutex<State<W>>,
    per_plan: usize,
    total: usize,
    ttl: Duration,
}

struct State<W> {
    plans: HashMap<String, Plan<W>>,
}

struct Plan<W> {
    idle: Vec<(Instant, W)>,
    /// Reserved starts not yet filled (or given up).
    starting: usize,
}

impl<W> Default for Plan<W> {
    fn default() -> Self {
        Plan { idle: Vec::new(), starting: 0 }
    }
}

impl<W> State<W> {
    fn held(&self) -> usize {
        self.plans.values().map(|plan| plan.idle.len() + plan.starting).sum()
    }
}

/// The right to start one warm worker for a plan; it counts against the pool's bounds until
/// it is filled with [`Reservation::fill`] or dropped.
#[must_use = "dropping a reservation gives its place back"]
pub struct Reservation<W: Standby = ReadyWorker> {
    pool: Arc<WarmPool<W>>,
    plan_key: Option<String>,
}

impl<W: Standby> WarmPool<W> {
    /// A pool keeping at most `per_plan` idle or starting workers per plan and `total` overall.
    pub fn new(per_plan: usize, total: usize, ttl: Duration) -> Self {
        WarmPool { state: Mutex::new(State { plans: HashMap::new() }), per_plan, total, ttl }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // The state stays consistent even if a holder panicked: every change is one statement.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle, live, unexpired worker for `plan_key`.
    pub fn take(&self, plan_key: &str) -> Option<W> {
        let mut state = self.lock();
        let plan = state.plans.get_mut(plan_key)?;
        while let Some((since, mut worker)) = plan.idle.pop() {
            if since.elapsed() < self.ttl && worker.is_alive() {
                return Some(worker);
            }
        }
        None
    }

    /// A place for one more warm worker for `plan_key`, if the bounds leave one (counting
    /// workers still starting).
    pub fn reserve(self: &Arc<Self>, plan_key: &str) -> Option<Reservation<W>> {
        let mut state = self.lock();
        if self.per_plan == 0 || state.held() >= self.total {
            return None;
        }
        let plan = state.plans.entry(plan_key.to_owned()).or_default();
        if plan.idle.len() + plan.starting >= self.per_plan {
            return None;
        }
        plan.starting += 1;
        Some(Reservation { pool: self.clone(), plan_key: Some(plan_key.to_owned()) })
    }

    /// Ends workers idle longer than the time-to-live.
    pub fn expire(&self) {
        let mut state = self.lock();
        for plan in state.plans.values_mut() {
            plan.idle.retain(|(since, _)| since.elapsed() < self.ttl);
        }
        state.plans.retain(|_, plan| !plan.idle.is_empty() || plan.starting > 0);
    }

    /// Idle workers and reserved starts, over all plans.
    pub fn held(&self) -> usize {
        self.lock().held()
    }

    fn release(&self, plan_key: &str, worker: Option<W>) {
        let mut state = self.lock();
        let plan = state.plans.entry(plan_key.to_owned()).or_default();
        plan.starting = plan.starting.saturating_sub(1);
        if let Some(worker) = worker {
            plan.idle.push((Instant::now(), worker));
        }
        if plan.idle.is_empty() && plan.starting == 0 {
            state.plans.remove(plan_key);
        }
    }
}

impl<W: Standby> Reservation<W> {
    /// Keeps the started worker in the place reserved for it.
    pub fn fill(mut self, worker: W) {
        if let Some(plan_key) = self.plan_key.take() {
            self.pool.release(&plan_key, Some(worker));
        }
    }
}

impl<W: Standby> Drop for Reservation<W> {
    /// A start that failed (or was abandoned) gives its place back.
    fn drop(&mut self) {
        if let Some(plan_key) = self.plan_key.take() {
            self.pool.release(&plan_key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands for a started worker; `alive` false is one that died while it waited.
    struct Fake {
        id: u32,
        alive: bool,
    }

    impl Standby for Fake {
        fn is_alive(&mut self) -> bool {
            self.alive
        }
    }

    fn pool(per_plan: usize, total: usize) -> Arc<WarmPool<Fake>> {
        Arc::new(WarmPool::new(per_plan, total, Duration::from_secs(60)))
    }

    #[test]
    fn calls_ending_together_reserve_only_what_the_plan_keeps() {
        let pool = pool(2, 16);
        // Eight calls end at the same moment and each asks for a warm successor.
        let reserved: Vec<_> = (0..8).filter_map(|_| pool.reserve("a")).collect();
        assert_eq!(reserved.len(), 2, "starts in progress count against the plan's bound");
        assert!(pool.reserve("b").is_some(), "another plan has its own places");
        assert_eq!(pool.held(), 2, "the dropped reservation for b gave its place back");
    }

    #[test]
    fn the_total_bound_counts_starting_and_idle_workers_of_every_plan() {
        let pool = pool(2, 3);
        pool.reserve("a").unwrap().fill(Fake { id: 1, alive: true });
        let _starting_a = pool.reserve("a").unwrap();
        let _starting_b = pool.reserve("b").unwrap();
        assert!(pool.reserve("c").is_none(), "three held in all");
        assert!(pool.reserve("b").is_none(), "b has room of its own, but not the pool");
        assert_eq!(pool.take("a").map(|w| w.id), Some(1));
        assert!(pool.reserve("c").is_some(), "a taken worker frees its place");
    }

    #[test]
    fn a_worker_is_handed_out_once_and_a_dead_one_never() {
        let pool = pool(3, 16);
        pool.reserve("a").unwrap().fill(Fake { id: 1, alive: true });
        pool.reserve("a").unwrap().fill(Fake { id: 2, alive: false });
        assert_eq!(pool.take("a").map(|w| w.id), Some(1), "the dead worker is skipped and dropped");
        assert!(pool.take("a").is_none(), "each worker is taken once");
        assert!(pool.take("b").is_none(), "never another plan's worker");
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn a_failed_start_gives_its_place_back() {
        let pool = pool(1, 16);
        let reservation = pool.reserve("a").unwrap();
        assert!(pool.reserve("a").is_none());
        drop(reservation);
        assert!(pool.reserve("a").is_some());
    }

    #[test]
    fn a_pool_of_size_zero_keeps_nothing() {
        assert!(pool(0, 16).reserve("a").is_none());
    }
}
