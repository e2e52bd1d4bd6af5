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
//! The pool is sized from the load: a plan keeps as many warm workers as it has calls running
//! at once (counted by [`WarmPool::call`]), at least one and at most `per_plan`. One caller
//! at a time keeps one; 8 concurrent callers keep up to 8, so each of them finds its worker
//! confined already: a cold start spends most of its time asleep (detaching the old root
//! waits for an RCU grace period; creating a network namespace can wait for the kernel's
//! teardown of others), which with a fixed number of callers bounds throughput no matter how
//! idle the CPUs are. Workers being started count against the bounds from the moment a start
//! is reserved ([`WarmPool::reserve`]), not only once they are idle: otherwise several calls
//! ending at once each see room, start a worker, and all but one are ended unused (40 % of
//! all workers started with 8 callers, each a full confinement and a login shell).

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
    /// Calls of this plan running now.
    running: usize,
}

impl<W> Default for Plan<W> {
    fn default() -> Self {
        Plan { idle: Vec::new(), starting: 0, running: 0 }
    }
}

impl<W> Plan<W> {
    fn unused(&self) -> bool {
        self.idle.is_empty() && self.starting == 0 && self.running == 0
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

/// One running call of a plan, counted while it lives (the load the pool is sized from).
#[must_use = "the call counts as running while this lives"]
pub struct RunningCall<W: Standby = ReadyWorker> {
    pool: Arc<WarmPool<W>>,
    plan_key: String,
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

    /// Counts a call of `plan_key` as running until the returned guard is dropped.
    pub fn call(self: &Arc<Self>, plan_key: &str) -> RunningCall<W> {
        self.lock().plans.entry(plan_key.to_owned()).or_default().running += 1;
        RunningCall { pool: self.clone(), plan_key: plan_key.to_owned() }
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

    /// A place for one more warm worker for `plan_key`, if the plan's load and the bounds
    /// leave one (counting workers still starting).
    pub fn reserve(self: &Arc<Self>, plan_key: &str) -> Option<Reservation<W>> {
        let mut state = self.lock();
        if self.per_plan == 0 || state.held() >= self.total {
            return None;
        }
        let plan = state.plans.entry(plan_key.to_owned()).or_default();
        let wanted = plan.running.clamp(1, self.per_plan);
        if plan.idle.len() + plan.starting >= wanted {
            if plan.unused() {
                state.plans.remove(plan_key);
            }
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
        state.plans.retain(|_, plan| !plan.unused());
    }

    /// Idle workers and reserved starts, over all plans.
    pub fn held(&self) -> usize {
        self.lock().held()
    }

    fn release(&self, plan_key: &str, worker: Option<W>) {
        self.update(plan_key, |plan| {
            plan.starting = plan.starting.saturating_sub(1);
            if let Some(worker) = worker {
                plan.idle.push((Instant::now(), worker));
            }
        });
    }

    fn update(&self, plan_key: &str, change: impl FnOnce(&mut Plan<W>)) {
        let mut state = self.lock();
        let plan = state.plans.entry(plan_key.to_owned()).or_default();
        change(plan);
        if plan.unused() {
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

impl<W: Standby> Drop for RunningCall<W> {
    fn drop(&mut self) {
        self.pool.update(&self.plan_key, |plan| plan.running = plan.running.saturating_sub(1));
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
    fn calls_ending_together_reserve_only_what_the_load_asks_for() {
        let pool = pool(8, 16);
        let calls: Vec<_> = (0..3).map(|_| pool.call("a")).collect();
        // The three calls end at the same moment and each asks for a warm successor, twice.
        let reserved: Vec<_> = (0..6).filter_map(|_| pool.reserve("a")).collect();
        assert_eq!(reserved.len(), 3, "one per running call; starts in progress count");
        drop(calls);
        assert!(pool.reserve("a").is_none(), "with no call running, one is kept (three already are)");
        assert!(pool.reserve("b").is_some(), "another plan has its own places, at least one");
        assert_eq!(pool.held(), 3, "the dropped reservation for b gave its place back");
    }

    #[test]
    fn the_load_is_capped_by_the_per_plan_bound() {
        let pool = pool(2, 16);
        let _calls: Vec<_> = (0..8).map(|_| pool.call("a")).collect();
        let reserved: Vec<_> = (0..8).filter_map(|_| pool.reserve("a")).collect();
        assert_eq!(reserved.len(), 2);
    }

    #[test]
    fn the_total_bound_counts_starting_and_idle_workers_of_every_plan() {
        let pool = pool(2, 3);
        let _calls = [pool.call("a"), pool.call("a"), pool.call("b"), pool.call("b")];
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
        let _calls = [pool.call("a"), pool.call("a")];
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
