//! The gateway's synthetic exports on `/v2/fs`: `system-meta`, `system-chat`, `system-jobs`
//! (spec `fs-node.md` §5.0, `unified-v2.md` §8).
//!
//! Why: the embedded node serves, besides the configured directories, the system chat as
//! files, so that a mounted client (`spiderweb-fs-mount`, FUSE) can talk to `mother` with
//! `echo … > control/input` and read the job's files. The node protocol is
//! `spiderweb_fsnode`'s; each module here is one tree behind its `SyntheticTree` trait:
//! [`meta`] (read-only `protocol.json`), [`chat`] (the chat files; a write to
//! `control/input` submits a job through [`crate::runtime::Runtime::submit`], as a world
//! filesystem chat write does) and [`jobs`] (one directory per chat job, rendered by the
//! world filesystem's own job renderer). [`watch_jobs`] pushes invalidations when jobs change.
//!
//! Who may use them: whoever passes the `/v2/fs` hello, i.e. holds `fs.auth_token` — the same
//! token as the configured exports, which already grants writing the gateway's rw exports, so
//! it is an operator credential. Jobs submitted here run as the admin identity (budget user
//! `admin`) for agent `mother` in project `system`, in its `main` session, like the admin's
//! own chat; they are not tied to the fs connection (the job goes on when the writer hangs up)
//! and stop only with the gateway.
//!
//! Must never: block a node connection (a submit only queues the job), keep unbounded state
//! (the jobs tree shows what the runtime keeps in memory, at most 4,096 jobs; the chat reply
//! is capped), or show jobs of other agents or projects.

pub mod chat;
pub mod jobs;
pub mod meta;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use spiderweb_fsnode::node::{NodeState, SyntheticChange, SyntheticSpec};
use spiderweb_policy::export::Access;
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// Export names (and so the paths the `system` project mounts them at, see `plane::nodes::local`).
pub const META: &str = "system-meta";
pub const CHAT: &str = "system-chat";
pub const JOBS: &str = "system-jobs";
pub const NAMES: [&str; 3] = [META, CHAT, JOBS];

/// The agent, project and session whose chat these exports are.
pub const AGENT: &str = spiderweb_policy::session::MOTHER_AGENT;
pub const PROJECT: &str = spiderweb_policy::session::SYSTEM_PROJECT;
pub const SESSION_KEY: &str = "main";

/// The three exports, for [`NodeState::with_synthetic_exports`]. `shutdown` ends the jobs
/// they submit.
pub fn specs(runtime: &Arc<Runtime>, shutdown: &CancellationToken) -> Vec<SyntheticSpec> {
    let started_ns = now_ns();
    vec![
        SyntheticSpec {
            name: META.into(),
            access: Access::ReadOnly,
            desc: "gateway protocol description".into(),
            tree: Arc::new(meta::MetaTree::new(started_ns)),
        },
        SyntheticSpec {
            name: CHAT.into(),
            access: Access::ReadWrite,
            desc: format!("chat with {AGENT} in project {PROJECT}"),
            tree: Arc::new(chat::ChatTree::new(Arc::clone(runtime), shutdown.child_token(), started_ns)),
        },
        SyntheticSpec {
            name: JOBS.into(),
            access: Access::ReadWrite,
            desc: format!("chat jobs of {AGENT} in project {PROJECT}"),
            tree: Arc::new(jobs::JobsTree::new(Arc::clone(runtime), started_ns)),
        },
    ]
}

/// Scans of the jobs at most this often: a burst of job changes (many chats at once) costs
/// one scan, not one per change.
const SCAN_EVERY: Duration = Duration::from_millis(50);

/// Sends invalidations for `system-jobs` whenever the runtime's jobs change, until
/// `shutdown`: the root's listing when jobs appear or go, and the files of every job whose
/// state moved. Work per scan is bounded by the jobs the runtime keeps (4,096).
pub async fn watch_jobs(node: Arc<NodeState>, runtime: Arc<Runtime>, shutdown: CancellationToken) {
    let mut changes = runtime.job_changes();
    let mut seen: HashMap<String, i64> = HashMap::new();
    loop {
        let now = jobs::stamps(&runtime);
        let events = job_changes(&seen, &now);
        if !events.is_empty() {
            node.synthetic_changed(JOBS, &events);
        }
        seen = now;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        tokio::time::sleep(SCAN_EVERY).await;
    }
}

/// What changed between two snapshots of `job id → last update`.
fn job_changes(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> Vec<SyntheticChange> {
    let mut events = Vec::new();
    let listing_changed = before.len() != after.len() || after.keys().any(|id| !before.contains_key(id));
    if listing_changed {
        events.push(SyntheticChange::Listing(String::new()));
    }
    for (id, updated) in after {
        if before.get(id).is_some_and(|old| old != updated) {
            events.push(SyntheticChange::Listing(id.clone()));
            for file in jobs::FILES {
                events.push(SyntheticChange::Content(format!("{id}/{}", file.0)));
            }
        }
    }
    events
}

fn now_ns() -> i64 {
    crate::plane::now_ms().saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_changes_name_the_listing_and_the_files_of_moved_jobs() {
        let snapshot = |pairs: &[(&str, i64)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        let empty = HashMap::new();
        let one = snapshot(&[("job-1", 10)]);
        assert_eq!(job_changes(&empty, &one), [SyntheticChange::Listing(String::new())], "a new job: the listing");
        assert!(job_changes(&one, &one).is_empty(), "nothing moved, nothing sent");
        let moved = job_changes(&one, &snapshot(&[("job-1", 11)]));
        assert!(moved.contains(&SyntheticChange::Content("job-1/status.json".into())), "{moved:?}");
        assert!(moved.contains(&SyntheticChange::Content("job-1/result.txt".into())), "{moved:?}");
        assert!(moved.contains(&SyntheticChange::Content("job-1/log.txt".into())), "{moved:?}");
        assert!(!moved.contains(&SyntheticChange::Listing(String::new())), "same jobs: the root listing stands");
        assert_eq!(job_changes(&one, &empty), [SyntheticChange::Listing(String::new())], "a forgotten job");
    }
}
