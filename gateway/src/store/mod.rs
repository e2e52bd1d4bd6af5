//! Durable state of the gateway behind one trait.
//!
//! Everything the gateway must remember across a restart (agents, projects, which agent is
//! bound to which project, per-role session history, the audit log, hashes of tokens) goes
//! through [`Store`]. The control plane keeps its working copy in memory and writes through
//! this trait *before* it answers the client, so an acknowledged mutation survives `kill -9`.
//!
//! Why a trait: one gateway uses SQLite ([`sqlite::SqliteStore`]); several gateways sharing
//! one user population will use PostgreSQL behind the same interface (DESIGN.md, "Scale").
//! The trait is synchronous because every call is a short local transaction; callers hold
//! no async locks across it.
//!
//! What this layer never does: interpret policy, validate ids, or hold a secret. Project and
//! role tokens are stored only as SHA-256 hashes.

pub mod nodes;
pub mod sqlite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An agent the gateway knows (the built-in `mother`, or one loaded from `agents_dir`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub description: String,
    pub is_default: bool,
    pub capabilities: Vec<String>,
    pub identity_loaded: bool,
    pub needs_hatching: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectKind {
    Normal,
    SystemBuiltin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub mount_path: String,
    pub node_id: String,
    pub export_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRecord {
    pub bind_path: String,
    pub target_path: String,
}

/// A project as stored. `access_policy` is the policy in its canonical output form
/// (`spiderweb_policy::AccessPolicy::to_json`), kept as JSON so this layer stays policy-free.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: String,
    pub name: String,
    pub vision: String,
    pub status: String,
    pub kind: ProjectKind,
    pub is_delete_protected: bool,
    /// Lowercase hex SHA-256 of the project's mutation token.
    pub token_hash: String,
    pub token_locked: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub access_policy: serde_json::Value,
    pub mounts: Vec<MountRecord>,
    pub binds: Vec<BindRecord>,
}

/// `{agent_id, project_id}`: the last non-system binding of a role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub agent_id: String,
    pub project_id: String,
}

/// One entry of a role's session history (spec unified-v2 §2.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHistoryEntry {
    pub session_key: String,
    pub agent_id: String,
    pub project_id: String,
    pub last_active_ms: i64,
    pub message_count: u64,
    pub summary: String,
}

/// What a role (admin or user) remembers across connections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    pub last_target: Option<Target>,
    /// Newest first; the control plane keeps it at most 10 entries and prunes entries older than 24 h.
    pub history: Vec<SessionHistoryEntry>,
}

/// One audit record (spec unified-v2 §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: u64,
    pub timestamp_ms: i64,
    pub agent_id: String,
    pub control_type: String,
    pub scope: String,
    pub correlation_id: Option<String>,
    pub result: String,
    pub error_code: Option<String>,
}

/// The role a stored value belongs to. Kept here (not in `policy`) because it is a storage key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleKey {
    Admin,
    User,
}

/// Everything loaded at start-up.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub agents: Vec<AgentRecord>,
    pub projects: Vec<ProjectRecord>,
    /// agent id → the project it is bound to (`project_activate`).
    pub bindings: BTreeMap<String, String>,
    pub admin: RoleState,
    pub user: RoleState,
    /// role → SHA-256 hex of its current bearer token.
    pub role_token_hashes: BTreeMap<RoleKey, String>,
    /// Next number for `proj-N` ids (starts at 1).
    pub next_project_seq: u64,
    /// Next audit record id (starts at 1).
    pub next_audit_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which conversation a message belongs to: the session key of a binding, within its agent
/// and project (the same key bound to another agent is another conversation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationKey {
    pub agent_id: String,
    pub project_id: String,
    pub session_key: String,
}

/// One transcript entry. `body` is the runtime's JSON (a provider message, a compaction
/// summary); this layer does not interpret it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// 1, 2, 3… within the conversation.
    pub seq: u64,
    /// `user`, `assistant`, `tool` or `summary`.
    pub role: String,
    pub body: serde_json::Value,
    pub job_id: Option<String>,
    pub created_at_ms: i64,
}

/// Tokens and cost of one model call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub conversation: ConversationKey,
    /// Whose daily budget it counts against (`admin` or `user`).
    pub user: String,
    pub job_id: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub created_at_ms: i64,
}

/// Sums of usage records.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct UsageTotals {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// A chat job as stored: created `queued`, rewritten at each state change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `job-<seq>`.
    pub id: String,
    pub seq: u64,
    pub conversation: ConversationKey,
    pub correlation_id: Option<String>,
    /// `queued`, `running`, `waiting_approval`, `done` or `failed`.
    pub state: String,
    pub error: Option<String>,
    pub result: Option<String>,
    pub log: String,
    /// The job's event stream (`events.ndjson`), kept once the job ends.
    pub events: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Durable storage of the control plane. Every method is one transaction.
pub trait Store: Send + Sync {
    /// Loads everything (creating the schema on first use).
    fn load(&self) -> StoreResult<Snapshot>;
    fn upsert_agent(&self, agent: &AgentRecord) -> StoreResult<()>;
    /// Inserts or replaces a project and records `next_project_seq` in the same transaction.
    fn upsert_project(&self, project: &ProjectRecord, next_project_seq: u64) -> StoreResult<()>;
    /// Paired nodes, invites and pending joins, with their id counters.
    fn load_nodes(&self) -> StoreResult<nodes::NodeSnapshot>;
    /// Writes node-related changes (and the projects whose mounts changed with them) in one
    /// transaction, raising the id counters to `batch.seqs`.
    fn write_nodes(&self, batch: &nodes::NodeBatch) -> StoreResult<()>;
    /// Deletes a project and every agent binding to it.
    fn delete_project(&self, project_id: &str) -> StoreResult<()>;
    /// Binds an agent to a project, or unbinds it (`None`).
    fn set_binding(&self, agent_id: &str, project_id: Option<&str>) -> StoreResult<()>;
    fn put_role_state(&self, role: RoleKey, state: &RoleState) -> StoreResult<()>;
    fn put_role_token_hash(&self, role: RoleKey, sha256_hex: &str) -> StoreResult<()>;
    /// Appends one record; keeps at most `retain` newest records.
    fn append_audit(&self, record: &AuditRecord, retain: usize) -> StoreResult<()>;
    /// Newest first, at most `limit`, optionally only one agent's records.
    fn audit_tail(&self, limit: usize, agent_id: Option<&str>) -> StoreResult<Vec<AuditRecord>>;

    /// Appends a message and returns its `seq` (one more than the conversation's last).
    fn append_message(
        &self,
        conversation: &ConversationKey,
        role: &str,
        body: &serde_json::Value,
        job_id: Option<&str>,
        created_at_ms: i64,
    ) -> StoreResult<u64>;
    /// The newest message with this role (the runtime finds its latest compaction summary).
    fn latest_message_with_role(
        &self,
        conversation: &ConversationKey,
        role: &str,
    ) -> StoreResult<Option<StoredMessage>>;
    /// Messages with `seq >= from_seq`, oldest first, at most `limit`.
    fn conversation_from(
        &self,
        conversation: &ConversationKey,
        from_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// The newest `limit` messages, oldest first.
    fn conversation_tail(&self, conversation: &ConversationKey, limit: usize) -> StoreResult<Vec<StoredMessage>>;
    fn message_count(&self, conversation: &ConversationKey) -> StoreResult<u64>;
    fn record_usage(&self, usage: &UsageRecord) -> StoreResult<()>;
    fn usage_of_conversation(&self, conversation: &ConversationKey) -> StoreResult<UsageTotals>;
    /// Usage of `user` since `since_ms` (the start of the day, for daily budgets).
    fn usage_of_user_since(&self, user: &str, since_ms: i64) -> StoreResult<UsageTotals>;
    /// Inserts or replaces a job, raising the job counter to `seq + 1`.
    fn put_job(&self, job: &JobRecord) -> StoreResult<()>;
    /// Starts a turn in one transaction: the job record and its prompt (a `user` message).
    /// Returns the message's seq.
    fn start_turn(&self, job: &JobRecord, prompt: &serde_json::Value, created_at_ms: i64) -> StoreResult<u64>;
    /// Raises the job counter to `next` (job numbers below it are never issued again), so
    /// that job ids can be handed out before their records are written.
    fn reserve_job_seqs(&self, next: u64) -> StoreResult<()>;
    /// Jobs created at or after `since_ms`, oldest first, and the next job number.
    fn load_jobs(&self, since_ms: i64) -> StoreResult<(Vec<JobRecord>, u64)>;
}
