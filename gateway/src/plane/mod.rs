//! The control plane: agents, projects, nodes, bindings, session history, audit.
//!
//! One [`ControlPlane`] per gateway, shared by all connections. It owns the authoritative
//! in-memory state behind a mutex and writes every change through the [`Store`] before the
//! caller replies, so an acknowledged mutation is durable. Operations are synchronous and
//! short; nothing here awaits while holding the lock.
//!
//! What is per *connection* (session bindings, the connect gate, fids) lives in `control/`
//! and `worldfs/`; this module answers questions about shared state and never sees a socket.
//! Access decisions are made by `spiderweb-policy`; this module only gathers their inputs.

pub mod agents;
pub mod args;
pub mod audit;
pub mod history;
pub mod nodes;
pub mod projects;
pub mod workspace;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use spiderweb_policy::Role;
use spiderweb_proto::codes::control as code;

use crate::store::{AgentRecord, RoleKey, RoleState, Store, StoreError};
use crate::tokens::RoleTokens;

pub use projects::Project;

/// A refused operation: the wire `code` and `message` of a `control.error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    pub code: &'static str,
    pub message: String,
}

impl OpError {
    pub fn new(code: &'static str, message: impl Into<String>) -> OpError {
        OpError { code, message: message.into() }
    }
    pub fn missing_field() -> OpError {
        OpError::new(code::MISSING_FIELD, "MissingField")
    }
    pub fn invalid_payload() -> OpError {
        OpError::new(code::INVALID_PAYLOAD, "InvalidPayload")
    }
    pub fn forbidden(message: impl Into<String>) -> OpError {
        OpError::new(code::FORBIDDEN, message)
    }
    pub fn storage(e: StoreError) -> OpError {
        tracing::error!(error = %e, "state store write failed");
        OpError::new(code::CONTROL_PLANE_ERROR, "StorageError")
    }
}

pub type OpResult = Result<Value, OpError>;

/// Who is asking: the connection's role and its active binding.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    pub role: Role,
    pub agent_id: &'a str,
    pub project_id: Option<&'a str>,
}

/// Counters reported by `control.metrics` (spec §6.1). Process-lifetime, like the original's.
#[derive(Default)]
pub struct Counters {
    pub project_creates: AtomicU64,
    pub project_updates: AtomicU64,
    pub project_deletes: AtomicU64,
    pub project_token_rotates: AtomicU64,
    pub project_token_revokes: AtomicU64,
    pub project_activations: AtomicU64,
    pub mount_sets: AtomicU64,
    pub mount_removes: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The shared state. Fields are only touched with the plane's lock held.
pub struct PlaneState {
    pub agents: BTreeMap<String, AgentRecord>,
    pub projects: BTreeMap<String, Project>,
    /// agent id → project it is bound to.
    pub bindings: BTreeMap<String, String>,
    pub roles: BTreeMap<RoleKey, RoleState>,
    pub next_project_seq: u64,
    pub next_audit_id: u64,
    /// Paired nodes, invites and join requests (under the same lock as the mounts naming them).
    pub nodes: nodes::NodeTable,
}

pub struct ControlPlane {
    state: Mutex<PlaneState>,
    pub store: Arc<dyn Store>,
    pub tokens: Mutex<RoleTokens>,
    pub counters: Counters,
    pub node_counters: nodes::NodeCounters,
    /// Retained `node_service_event`s and their subscribers.
    pub watch: nodes::watch::WatchHub,
    /// Optional scope tokens from the environment (spec §5), as digests.
    pub scope_tokens: ScopeTokenDigests,
    pub state_dir: PathBuf,
}

/// `SPIDERWEB_CONTROL_{OPERATOR,PROJECT_SCOPE,NODE_SCOPE}_TOKEN`, kept only as digests.
#[derive(Default)]
pub struct ScopeTokenDigests {
    pub operator: Option<crate::tokens::Digest>,
    pub project: Option<crate::tokens::Digest>,
    pub node: Option<crate::tokens::Digest>,
}

impl ScopeTokenDigests {
    pub fn from_env() -> ScopeTokenDigests {
        let read = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| crate::tokens::digest(&v));
        ScopeTokenDigests {
            operator: read("SPIDERWEB_CONTROL_OPERATOR_TOKEN"),
            project: read("SPIDERWEB_CONTROL_PROJECT_SCOPE_TOKEN"),
            node: read("SPIDERWEB_CONTROL_NODE_SCOPE_TOKEN"),
        }
    }
}

impl ControlPlane {
    /// Loads the stored state, adds the built-in agent and project if missing, and merges the
    /// agents found in `agents_dir`.
    pub fn open(
        store: Arc<dyn Store>,
        tokens: RoleTokens,
        scope_tokens: ScopeTokenDigests,
        state_dir: PathBuf,
        agents_dir: &std::path::Path,
        now_ms: i64,
    ) -> Result<ControlPlane, StoreError> {
        let snapshot = store.load()?;
        let mut state = PlaneState {
            agents: snapshot.agents.into_iter().map(|a| (a.id.clone(), a)).collect(),
            projects: BTreeMap::new(),
            bindings: snapshot.bindings,
            roles: BTreeMap::from([(RoleKey::Admin, snapshot.admin), (RoleKey::User, snapshot.user)]),
            next_project_seq: snapshot.next_project_seq.max(1),
            next_audit_id: snapshot.next_audit_id.max(1),
            nodes: nodes::load(store.as_ref())?,
        };
        for record in snapshot.projects {
            let project = Project::from_record(record).map_err(StoreError::Corrupt)?;
            state.projects.insert(project.record.id.clone(), project);
        }
        for role in [Role::Admin, Role::User] {
            store.put_role_token_hash(role_key(role), &hex(tokens.digest_of(role)))?;
        }
        agents::install_builtin_and_scan(&mut state, store.as_ref(), agents_dir)?;
        projects::install_system_project(&mut state, store.as_ref(), now_ms)?;
        Ok(ControlPlane {
            state: Mutex::new(state),
            store,
            tokens: Mutex::new(tokens),
            counters: Counters::default(),
            node_counters: nodes::NodeCounters::default(),
            watch: nodes::watch::WatchHub::new(nodes::watch::WatchSettings::from_env()),
            scope_tokens,
            state_dir,
        })
    }

    /// The state lock. A panic while holding it cannot leave a half-written store row (writes
    /// happen before the in-memory change), so a poisoned lock is recovered, not propagated.
    pub fn lock(&self) -> MutexGuard<'_, PlaneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn tokens(&self) -> MutexGuard<'_, RoleTokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `control.metrics` payload (spec §6.1).
    pub fn metrics_json(&self) -> Value {
        let (invites, nodes) = self.node_metrics_json();
        let state = self.lock();
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mounts: usize = state.projects.values().map(|p| p.record.mounts.len()).sum();
        json!({
            "invites": invites,
            "nodes": nodes,
            "projects": {
                "total": state.projects.len(),
                "active_bindings": state.bindings.len(),
                "creates_total": n(&c.project_creates),
                "updates_total": n(&c.project_updates),
                "deletes_total": n(&c.project_deletes),
                "token_rotates_total": n(&c.project_token_rotates),
                "token_revokes_total": n(&c.project_token_revokes),
                "activations_total": n(&c.project_activations),
                "mounts_total": mounts,
                "mount_sets_total": n(&c.mount_sets),
                "mount_removes_total": n(&c.mount_removes),
            },
            "node_service_watch": self.watch.metrics_json(),
        })
    }
}

pub fn role_key(role: Role) -> RoleKey {
    match role {
        Role::Admin => RoleKey::Admin,
        Role::User => RoleKey::User,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
