//! `system-jobs`: one directory per chat job of `mother` in project `system`, with
//! `status.json`, `result.txt` and `log.txt` rendered by the world filesystem's job renderer
//! (same content and shapes as `/agents/self/jobs/<job>/`, spec acheron-worldfs §7).
//!
//! Unlike the world filesystem, reading `result.txt` never waits for the job to end: a node
//! connection serves its requests in order and must not stall. It is empty until the job is
//! done; `status.json` says when, and the gateway sends invalidations when a job moves
//! ([`super::watch_jobs`]) so that a mount shows the new content. Nothing here is writable.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use spiderweb_fsnode::node::{SyntheticNode, SyntheticTree, SyntheticWrite};
use spiderweb_proto::fs::{Errno, FsError};

use super::{AGENT, PROJECT};
use crate::runtime::Runtime;
use crate::runtime::job::Job;
use crate::worldfs::namespace::{JobFile, render_job};

/// The files of a job directory, in listing order.
pub const FILES: [(&str, JobFile); 3] =
    [("status.json", JobFile::Status), ("result.txt", JobFile::Result), ("log.txt", JobFile::Log)];

pub struct JobsTree {
    runtime: Arc<Runtime>,
    started_ns: i64,
}

impl JobsTree {
    pub fn new(runtime: Arc<Runtime>, started_ns: i64) -> JobsTree {
        JobsTree { runtime, started_ns }
    }

    /// Job `id`, if it is one of the system chat's.
    fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.runtime.job(id).filter(|job| is_system_chat(job))
    }
}

fn is_system_chat(job: &Job) -> bool {
    job.conversation.agent_id == AGENT && job.conversation.project_id == PROJECT
}

fn ms_to_ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

/// `job id → last update (ms)` of the system chat's jobs, oldest first.
pub fn stamps(runtime: &Runtime) -> HashMap<String, i64> {
    runtime
        .job_ids_of(AGENT)
        .into_iter()
        .filter_map(|id| runtime.job(&id))
        .filter(|job| is_system_chat(job))
        .map(|job| (job.id.clone(), job.updated_at_ms()))
        .collect()
}

impl SyntheticTree for JobsTree {
    fn node(&self, path: &[&str]) -> Option<SyntheticNode> {
        match path {
            [] => {
                let jobs: Vec<Arc<Job>> = self.runtime.job_ids_of(AGENT).iter().filter_map(|id| self.job(id)).collect();
                let newest = jobs.iter().map(|job| ms_to_ns(job.created_at_ms)).max().unwrap_or(0);
                let children = jobs.iter().map(|job| job.id.clone()).collect();
                Some(SyntheticNode::Dir { children, mtime_ns: newest.max(self.started_ns) })
            }
            [id] => {
                let job = self.job(id)?;
                let children = FILES.iter().map(|(name, _)| (*name).to_owned()).collect();
                Some(SyntheticNode::Dir { children, mtime_ns: ms_to_ns(job.updated_at_ms()) })
            }
            [id, name] => {
                let job = self.job(id)?;
                let (_, file) = FILES.iter().find(|(n, _)| n == name)?;
                let content = render_job(*file, Some(id), &self.runtime);
                Some(SyntheticNode::File { content, writable: false, mtime_ns: ms_to_ns(job.updated_at_ms()) })
            }
            _ => None,
        }
    }

    fn exists(&self, path: &[&str]) -> bool {
        match path {
            [] => true,
            [id] => self.job(id).is_some(),
            [id, name] => self.job(id).is_some() && FILES.iter().any(|(n, _)| n == name),
            _ => false,
        }
    }

    fn write(&self, _: &[&str], _: SyntheticWrite<'_>) -> Result<Map<String, Value>, FsError> {
        Err(FsError::new(Errno::Acces, "access denied"))
    }
}
