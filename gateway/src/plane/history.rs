//! Per-role session history and remembered targets (spec `unified-v2.md` §2.2, §6.4).
//!
//! A successful attach to a non-system project is remembered per role: the last target
//! chooses a user's initial binding on the next connection, and the history feeds
//! `session_restore` / `session_history`. At most [`MAX_ENTRIES`] entries, none older than 24 h.

use serde_json::{Value, json};

use super::args::Args;
use super::{ControlPlane, OpError, OpResult, role_key};
use crate::store::{ConversationKey, RoleState, SessionHistoryEntry, Target};
use spiderweb_policy::Role;
use spiderweb_policy::session::{SYSTEM_PROJECT, valid_agent_id};

pub const MAX_ENTRIES: usize = 10;
const MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
const DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 100;

impl ControlPlane {
    /// Records an attach (or a heartbeat) of `session_key` to `agent`/`project`.
    pub fn remember(
        &self,
        role: Role,
        session_key: &str,
        agent_id: &str,
        project_id: &str,
        now: i64,
    ) -> Result<(), OpError> {
        if project_id == SYSTEM_PROJECT {
            return Ok(());
        }
        let mut state = self.lock();
        let key = role_key(role);
        let mut next = state.roles.get(&key).cloned().unwrap_or_default();
        let previous = next
            .history
            .iter()
            .position(|h| h.session_key == session_key && h.agent_id == agent_id && h.project_id == project_id)
            .map(|i| next.history.remove(i));
        next.history.insert(
            0,
            SessionHistoryEntry {
                session_key: session_key.into(),
                agent_id: agent_id.into(),
                project_id: project_id.into(),
                last_active_ms: now,
                message_count: previous.map_or(0, |p| p.message_count),
                summary: format!("{agent_id} @ {project_id}"),
            },
        );
        prune(&mut next, now);
        next.last_target = Some(Target { agent_id: agent_id.into(), project_id: project_id.into() });
        self.store.put_role_state(key, &next).map_err(OpError::storage)?;
        state.roles.insert(key, next);
        Ok(())
    }

    pub fn last_target(&self, role: Role) -> Option<Target> {
        self.lock().roles.get(&role_key(role)).and_then(|r| r.last_target.clone())
    }

    pub fn session_restore(&self, role: Role, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let agent = optional_agent(&args)?;
        let entries = self.history_entries(role, agent, 1);
        Ok(match entries.into_iter().next() {
            Some(h) => json!({"found": true, "session": entry_json(&h)}),
            None => json!({"found": false}),
        })
    }

    pub fn session_history(&self, role: Role, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let agent = optional_agent(&args)?;
        let limit = match args.raw("limit") {
            None | Some(Value::Null) => DEFAULT_LIMIT,
            Some(v) => v.as_u64().ok_or_else(|| {
                OpError::new(spiderweb_proto::codes::control::INVALID_PAYLOAD, "limit must be a non-negative integer")
            })?,
        };
        let limit = if limit == 0 { DEFAULT_LIMIT } else { limit.min(MAX_LIMIT) };
        let entries = self.history_entries(role, agent, limit as usize);
        Ok(json!({"sessions": entries.iter().map(entry_json).collect::<Vec<_>>()}))
    }

    /// The newest entries, with `message_count` read from the conversation's transcript.
    fn history_entries(&self, role: Role, agent: Option<&str>, limit: usize) -> Vec<SessionHistoryEntry> {
        let now = super::now_ms();
        let mut entries: Vec<SessionHistoryEntry> = {
            let state = self.lock();
            state
                .roles
                .get(&role_key(role))
                .map(|r| {
                    r.history
                        .iter()
                        .filter(|h| now - h.last_active_ms <= MAX_AGE_MS)
                        .filter(|h| agent.is_none_or(|a| h.agent_id == a))
                        .take(limit)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        for entry in &mut entries {
            let conversation = ConversationKey {
                agent_id: entry.agent_id.clone(),
                project_id: entry.project_id.clone(),
                session_key: entry.session_key.clone(),
            };
            match self.store.message_count(&conversation) {
                Ok(count) => entry.message_count = count,
                Err(e) => tracing::warn!(error = %e, "cannot count the messages of a session"),
            }
        }
        entries
    }
}

fn optional_agent<'a>(args: &Args<'a>) -> Result<Option<&'a str>, OpError> {
    match args.optional_str("agent_id")? {
        Some(a) if !valid_agent_id(a) => Err(OpError::invalid_payload()),
        other => Ok(other),
    }
}

fn prune(state: &mut RoleState, now: i64) {
    state.history.retain(|h| now - h.last_active_ms <= MAX_AGE_MS);
    state.history.truncate(MAX_ENTRIES);
}

pub fn entry_json(h: &SessionHistoryEntry) -> Value {
    json!({
        "session_key": h.session_key, "agent_id": h.agent_id, "project_id": h.project_id,
        "last_active_ms": h.last_active_ms, "message_count": h.message_count, "summary": h.summary,
    })
}
