//! `system-chat`: the system chat as files (`help.md`, `schema.json`, `meta.json`,
//! `examples/send.txt`, writable `control/input` and `control/reply`).
//!
//! A write to `control/input` whose trimmed text is not empty submits a chat job for `mother`
//! through [`Runtime::submit`] (the path a world-filesystem chat write takes) and answers
//! `{"n":<bytes>,"job":"job-N","correlation_id":"fs-<tag>"}`; an empty one is refused with
//! EINVAL (answering `n` = 0 would make a writer through FUSE retry forever). Every write is
//! one whole prompt, whatever its offset. A submit the runtime refuses (queue full, prompt too
//! large, storage) is EIO `chat submit failed: <why>`. A write to `control/reply` stores the
//! trimmed text (capped) and answers `chat_reply` as the world filesystem does; reading it
//! gives the last reply. `control/input` reads as empty: prompts are not kept here.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use spiderweb_fsnode::node::{SyntheticNode, SyntheticTree, SyntheticWrite};
use spiderweb_proto::fs::{Errno, FsError};
use tokio_util::sync::CancellationToken;

use super::{AGENT, JOBS, PROJECT, SESSION_KEY};
use crate::runtime::{Origin, Runtime};
use crate::store::ConversationKey;
use crate::worldfs::namespace::{CHAT_EXAMPLE, chat_meta_json, chat_schema_json};
use crate::worldfs::{MAX_REPLY_BYTES, chat_prompt};

pub struct ChatTree {
    runtime: Arc<Runtime>,
    /// Given to the jobs as their "connection": they outlive the fs connection that wrote
    /// the prompt and end with the gateway.
    jobs_live: CancellationToken,
    started_ns: i64,
    /// The last `control/reply` text and when it was written.
    reply: Mutex<(Vec<u8>, i64)>,
}

impl ChatTree {
    pub fn new(runtime: Arc<Runtime>, jobs_live: CancellationToken, started_ns: i64) -> ChatTree {
        ChatTree { runtime, jobs_live, started_ns, reply: Mutex::new((Vec::new(), started_ns)) }
    }

    fn help() -> String {
        format!(
            "# system-chat\n\nChat with `{AGENT}` in project `{PROJECT}`.\n\n\
             Write a prompt to `control/input` (e.g. `echo 'hello' > control/input`): the write's reply names\n\
             the job, whose directory appears in the `{JOBS}` export with `status.json` (queued, running,\n\
             done, failed), `result.txt` (the answer once done) and `log.txt`.\n"
        )
    }

    fn submit(&self, data: &[u8], tag: u32) -> Result<Map<String, Value>, FsError> {
        let prompt = chat_prompt(data).ok_or_else(|| FsError::new(Errno::Inval, "empty chat input"))?;
        let correlation_id = format!("fs-{tag}");
        let origin = Origin {
            conversation: ConversationKey {
                agent_id: AGENT.into(),
                project_id: PROJECT.into(),
                session_key: SESSION_KEY.into(),
            },
            user: spiderweb_policy::Role::Admin.as_str().into(),
            correlation_id: Some(correlation_id.clone()),
            connection: self.jobs_live.clone(),
        };
        let job = self.runtime.submit(prompt, origin).map_err(|e| {
            tracing::warn!(error = %e, "a chat write on /v2/fs was refused");
            FsError::new(Errno::Io, format!("chat submit failed: {e}"))
        })?;
        Ok(object(json!({"job": job.id, "correlation_id": correlation_id})))
    }

    fn store_reply(&self, data: &[u8]) -> Result<Map<String, Value>, FsError> {
        let text = String::from_utf8_lossy(data).trim().to_owned();
        if text.len() > MAX_REPLY_BYTES {
            return Err(FsError::new(Errno::Inval, format!("chat reply is larger than {MAX_REPLY_BYTES} bytes")));
        }
        *self.reply.lock().unwrap_or_else(|p| p.into_inner()) = (text.clone().into_bytes(), super::now_ns());
        Ok(object(json!({"chat_reply": {"delivered": true, "content": text}})))
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl SyntheticTree for ChatTree {
    fn node(&self, path: &[&str]) -> Option<SyntheticNode> {
        let mtime_ns = self.started_ns;
        let dir =
            |names: &[&str]| SyntheticNode::Dir { children: names.iter().map(|n| (*n).into()).collect(), mtime_ns };
        let file = |content: String| SyntheticNode::File { content: content.into_bytes(), writable: false, mtime_ns };
        Some(match path {
            [] => dir(&["help.md", "schema.json", "meta.json", "examples", "control"]),
            ["help.md"] => file(Self::help()),
            ["schema.json"] => file(chat_schema_json().to_string()),
            ["meta.json"] => file(chat_meta_json(AGENT, PROJECT).to_string()),
            ["examples"] => dir(&["send.txt"]),
            ["examples", "send.txt"] => file(CHAT_EXAMPLE.into()),
            ["control"] => dir(&["input", "reply"]),
            ["control", "input"] => SyntheticNode::File { content: Vec::new(), writable: true, mtime_ns },
            ["control", "reply"] => {
                let (content, mtime_ns) = self.reply.lock().unwrap_or_else(|p| p.into_inner()).clone();
                SyntheticNode::File { content, writable: true, mtime_ns }
            }
            _ => return None,
        })
    }

    fn write(&self, path: &[&str], write: SyntheticWrite<'_>) -> Result<Map<String, Value>, FsError> {
        match path {
            ["control", "input"] => self.submit(write.data, write.tag),
            ["control", "reply"] => self.store_reply(write.data),
            _ => Err(FsError::new(Errno::Acces, "access denied")),
        }
    }
}
