//! spiderweb-worker: the tool-worker supervisor and the confined workers that run the tools.
//!
//! - [`confine`]: the confinement steps, applied by a worker to itself in a fixed order.
//! - [`entry`]: the confined worker process (`spiderweb-worker confined`).
//! - [`tools`]: the five tools.
//! - [`launch`]: starting a worker and driving it to a result (shared by `run` and `supervise`).
//! - [`forkserver`]: the per-tenant process that forks workers, so they skip an exec.
//! - [`supervise`]: the daemon on a Unix socket.
//! - [`plan`]: what a worker is told before it confines itself.
//! - [`ids`]: which uid/gid a call runs as.

pub mod confine;
pub mod entry;
pub mod forkserver;
pub mod ids;
pub mod launch;
pub mod plan;
pub mod supervise;
pub mod tools;
