//! Projects: creation, updates, tokens, access policy, mounts and activation (spec §6.8).
//!
//! Every project has a mutation token from birth, stored only as a SHA-256 digest; it
//! becomes *active* when rotated (which is the only time its plaintext is returned). Access
//! is decided by `spiderweb_policy::project_access::evaluate` with what this module gathers:
//! the caller's role and agent, the project's policy, and whether a presented token matches.
//! The built-in `system` project cannot be deleted, edited or given a token.

use serde_json::{Value, json};
use spiderweb_policy::project_access::{self, AccessRequest};
use spiderweb_policy::session::{MOTHER_AGENT, SYSTEM_PROJECT, may_activate, valid_project_id};
use spiderweb_policy::{AccessPolicy, Action, Role};
use spiderweb_proto::codes::control as code;

use super::args::Args;
use super::{Caller, ControlPlane, Counters, OpError, OpResult, PlaneState, hex};
use crate::store::{MountRecord, ProjectKind, ProjectRecord, Store, StoreError};
use crate::tokens::{Digest, digest, digests_equal};

const MAX_PROJECTS: usize = 10_000;
/// Mounts one project may hold (failover entries included).
pub const MAX_MOUNTS_PER_PROJECT: usize = 256;

/// A project in memory: the stored record plus its parsed policy and token digest.
#[derive(Clone, Debug)]
pub struct Project {
    pub record: ProjectRecord,
    pub policy: AccessPolicy,
    token: Digest,
}

impl Project {
    pub fn from_record(record: ProjectRecord) -> Result<Project, String> {
        let policy = AccessPolicy::from_json(&record.access_policy)
            .map_err(|e| format!("project {}: access_policy: {}", record.id, e.0))?;
        let token = parse_digest(&record.token_hash).ok_or_else(|| format!("project {}: bad token hash", record.id))?;
        Ok(Project { record, policy, token })
    }

    pub fn is_system(&self) -> bool {
        self.record.kind == ProjectKind::SystemBuiltin
    }

    /// Whether `presented` is this project's *active* token (an inactive token never matches).
    pub fn token_matches(&self, presented: &str) -> bool {
        self.record.token_locked && digests_equal(&digest(presented), &self.token)
    }

    /// Spec §6.8 access evaluation for `action`. `actor` is `None` for the ops that ignore
    /// per-agent overrides.
    pub fn check(
        &self,
        role: Role,
        actor: Option<&str>,
        action: Action,
        presented: Option<&str>,
    ) -> Result<(), OpError> {
        let request = AccessRequest {
            role,
            agent: actor,
            action,
            token_active: self.record.token_locked,
            presented_token: presented.map(|t| self.token_matches(t)),
        };
        project_access::evaluate(&self.policy, &request).map_err(|d| OpError::new(d.code(), d.error_name()))
    }

    pub fn json(&self) -> Value {
        let r = &self.record;
        json!({
            "project_id": r.id, "name": r.name, "vision": r.vision, "status": r.status,
            "kind": match r.kind { ProjectKind::Normal => "normal", ProjectKind::SystemBuiltin => "system_builtin" },
            "is_delete_protected": r.is_delete_protected, "token_locked": r.token_locked,
            "created_at_ms": r.created_at_ms, "updated_at_ms": r.updated_at_ms,
            "access_policy": self.policy.to_json(),
            "mounts": r.mounts.iter().map(|m| json!({"mount_path": m.mount_path, "node_id": m.node_id, "export_name": m.export_name})).collect::<Vec<_>>(),
            "binds": r.binds.iter().map(|b| json!({"bind_path": b.bind_path, "target_path": b.target_path})).collect::<Vec<_>>(),
        })
    }
}

pub(super) fn parse_digest(hex_text: &str) -> Option<Digest> {
    if hex_text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A fresh project token, `proj-` + 32 lowercase hex (spec §6.8), and its digest.
fn fresh_token() -> Result<(String, String), OpError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| OpError::new(code::CONTROL_PLANE_ERROR, format!("no randomness: {e}")))?;
    let token = format!("proj-{}", hex(&bytes));
    let hash = hex(&digest(&token));
    Ok((token, hash))
}

pub(super) fn install_system_project(state: &mut PlaneState, store: &dyn Store, now: i64) -> Result<(), StoreError> {
    if state.projects.contains_key(SYSTEM_PROJECT) {
        return Ok(());
    }
    let (_, token_hash) = fresh_token().map_err(|e| StoreError::Database(e.message))?;
    let record = ProjectRecord {
        id: SYSTEM_PROJECT.into(),
        name: "System".into(),
        vision: "Gateway administration: provision projects and agents".into(),
        status: "active".into(),
        kind: ProjectKind::SystemBuiltin,
        is_delete_protected: true,
        token_hash,
        token_locked: false,
        created_at_ms: now,
        updated_at_ms: now,
        access_policy: AccessPolicy::default().to_json(),
        mounts: vec![],
        binds: vec![],
    };
    store.upsert_project(&record, state.next_project_seq)?;
    let project = Project::from_record(record).map_err(StoreError::Corrupt)?;
    state.projects.insert(SYSTEM_PROJECT.into(), project);
    Ok(())
}

fn not_found() -> OpError {
    OpError::new(code::PROJECT_NOT_FOUND, "ProjectNotFound")
}
fn protected() -> OpError {
    OpError::new(code::PROJECT_PROTECTED, "ProjectProtected")
}
fn assignment_forbidden() -> OpError {
    OpError::new(code::PROJECT_ASSIGNMENT_FORBIDDEN, "ProjectAssignmentForbidden")
}

fn project_id_arg<'a>(args: &Args<'a>) -> Result<&'a str, OpError> {
    let id = args.required_str("project_id")?;
    if valid_project_id(id) { Ok(id) } else { Err(OpError::invalid_payload()) }
}

/// The fields `project_update` and `project_up` may change; `None` leaves a field alone.
struct Changes<'a> {
    name: Option<&'a str>,
    vision: Option<&'a str>,
    status: Option<&'a str>,
    policy: Option<AccessPolicy>,
}

impl Changes<'_> {
    fn applied_to(self, project: &Project) -> Project {
        let mut next = project.clone();
        if let Some(n) = self.name {
            next.record.name = n.into();
        }
        if let Some(v) = self.vision {
            next.record.vision = v.into();
        }
        if let Some(s) = self.status {
            next.record.status = s.into();
        }
        if let Some(p) = self.policy {
            next.record.access_policy = p.to_json();
            next.policy = p;
        }
        next.record.updated_at_ms = super::now_ms();
        next
    }
}

fn policy_arg(args: &Args<'_>) -> Result<Option<AccessPolicy>, OpError> {
    match args.raw("access_policy") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => AccessPolicy::from_json(v)
            .map(Some)
            .map_err(|e| OpError::new(code::INVALID_PAYLOAD, format!("InvalidPayload: {}", e.0))),
    }
}

/// `{node_id*, export_name*, mount_path*}` of a mount op, the path normalised.
fn mount_arg(args: &Args<'_>) -> Result<MountRecord, OpError> {
    let node_id = args.required_id("node_id", 128)?;
    let export_name = args.required_id("export_name", 128)?;
    let mount_path = args.required_str("mount_path")?;
    if mount_path.len() > 512 || mount_path.chars().any(char::is_control) {
        return Err(OpError::invalid_payload());
    }
    Ok(MountRecord {
        mount_path: normalize_mount_path(mount_path),
        node_id: node_id.into(),
        export_name: export_name.into(),
    })
}

/// Two paths overlap when one is `/` or a `/`-boundary prefix of the other (spec §6.8).
fn paths_overlap(a: &str, b: &str) -> bool {
    let under = |inner: &str, outer: &str| {
        outer == "/" || inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    under(a, b) || under(b, a)
}

/// Refuses `mount` when it overlaps another mount path or a bind (`mount_conflict`). The same
/// path on a different node is a failover group and allowed.
fn check_mount(mounts: &[MountRecord], binds: &[crate::store::BindRecord], mount: &MountRecord) -> Result<(), OpError> {
    let conflict = || OpError::new(code::MOUNT_CONFLICT, "MountConflict");
    if mounts.len() >= MAX_MOUNTS_PER_PROJECT {
        return Err(OpError::new(code::QUEUE_SATURATED, format!("mount limit ({MAX_MOUNTS_PER_PROJECT}) reached")));
    }
    for other in mounts {
        if other.mount_path == mount.mount_path {
            if other.node_id == mount.node_id {
                return Err(conflict());
            }
        } else if paths_overlap(&other.mount_path, &mount.mount_path) {
            return Err(conflict());
        }
    }
    if binds.iter().any(|b| paths_overlap(&b.bind_path, &mount.mount_path)) {
        return Err(conflict());
    }
    Ok(())
}

/// Normalised mount path (spec §6.8): trimmed of whitespace and slashes, `/`-prefixed.
pub fn normalize_mount_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_matches('/');
    format!("/{trimmed}")
}

impl ControlPlane {
    fn persist(&self, state: &mut PlaneState, project: Project) -> Result<Value, OpError> {
        self.store.upsert_project(&project.record, state.next_project_seq).map_err(OpError::storage)?;
        let out = project.json();
        state.projects.insert(project.record.id.clone(), project);
        Ok(out)
    }

    pub fn project_create(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let name = args.optional_display("name", 128)?.ok_or_else(OpError::missing_field)?;
        let vision = args.optional_display("vision", 1024)?.ok_or_else(OpError::missing_field)?;
        let status = args.optional_id("status", 64)?.unwrap_or("active");
        let policy = policy_arg(&args)?.unwrap_or_default();
        let mut state = self.lock();
        if state.projects.len() >= MAX_PROJECTS {
            return Err(OpError::new(code::QUEUE_SATURATED, format!("project limit ({MAX_PROJECTS}) reached")));
        }
        let created = self.new_project(&mut state, name, vision, status, policy)?;
        Counters::bump(&self.counters.project_creates);
        Ok(created)
    }

    fn new_project(
        &self,
        state: &mut PlaneState,
        name: &str,
        vision: &str,
        status: &str,
        policy: AccessPolicy,
    ) -> OpResult {
        let mut seq = state.next_project_seq;
        while state.projects.contains_key(&format!("proj-{seq}")) {
            seq += 1;
        }
        state.next_project_seq = seq + 1;
        let (_, token_hash) = fresh_token()?;
        let now = super::now_ms();
        let record = ProjectRecord {
            id: format!("proj-{seq}"),
            name: name.into(),
            vision: vision.into(),
            status: status.into(),
            kind: ProjectKind::Normal,
            is_delete_protected: false,
            token_hash,
            token_locked: false,
            created_at_ms: now,
            updated_at_ms: now,
            access_policy: policy.to_json(),
            mounts: vec![],
            binds: vec![],
        };
        let project = Project::from_record(record).map_err(|e| OpError::new(code::CONTROL_PLANE_ERROR, e))?;
        self.persist(state, project)
    }

    pub fn project_update(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let name = args.optional_display("name", 128)?;
        let vision = args.optional_display("vision", 1024)?;
        let status = args.optional_id("status", 64)?;
        let policy = policy_arg(&args)?;
        let mut state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() {
            if !caller.role.is_admin() {
                return Err(assignment_forbidden());
            }
            if name.is_some() || vision.is_some() || status.is_some() || policy.is_some() {
                return Err(protected());
            }
            return Ok(project.json());
        }
        project.check(caller.role, Some(caller.agent_id), Action::Admin, token)?;
        let next = Changes { name, vision, status, policy }.applied_to(project);
        let out = self.persist(&mut state, next)?;
        Counters::bump(&self.counters.project_updates);
        Ok(out)
    }

    pub fn project_delete(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let mut state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() {
            return Err(protected());
        }
        project.check(caller.role, Some(caller.agent_id), Action::Admin, token)?;
        self.store.delete_project(id).map_err(OpError::storage)?;
        state.projects.remove(id);
        state.bindings.retain(|_, p| p != id);
        Counters::bump(&self.counters.project_deletes);
        Ok(json!({"deleted": true, "project_id": id}))
    }

    pub fn project_list(&self) -> OpResult {
        let state = self.lock();
        let projects: Vec<Value> = state
            .projects
            .values()
            .map(|p| {
                let r = &p.record;
                json!({"project_id": r.id, "name": r.name, "status": r.status,
                       "kind": if p.is_system() { "system_builtin" } else { "normal" },
                       "is_delete_protected": r.is_delete_protected, "mount_count": r.mounts.len()})
            })
            .collect();
        Ok(json!({"projects": projects}))
    }

    pub fn project_get(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() && !caller.role.is_admin() {
            return Err(assignment_forbidden());
        }
        project.check(caller.role, None, Action::Read, token)?;
        Ok(project.json())
    }

    pub fn project_mount_list(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        project.check(caller.role, None, Action::Read, token)?;
        Ok(json!({"project_id": id, "mounts": project.json()["mounts"].clone()}))
    }

    /// Adds a mount of a node's export (the node must exist). The same path on another node
    /// makes a failover group; an exact duplicate changes nothing.
    pub fn project_mount_set(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let mount = mount_arg(&args)?;
        let mut state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() && !caller.role.is_admin() {
            return Err(protected());
        }
        project.check(caller.role, None, Action::Mount, token)?;
        if !state.nodes.nodes.contains_key(&mount.node_id) {
            return Err(OpError::new(code::NODE_NOT_FOUND, "NodeNotFound"));
        }
        if project.record.mounts.contains(&mount) {
            return Ok(project.json());
        }
        check_mount(&project.record.mounts, &project.record.binds, &mount)?;
        let mut next = project.clone();
        next.record.mounts.push(mount);
        next.record.updated_at_ms = super::now_ms();
        let out = self.persist(&mut state, next)?;
        Counters::bump(&self.counters.mount_sets);
        Ok(out)
    }

    pub fn project_mount_remove(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let mount_path = normalize_mount_path(args.required_str("mount_path")?);
        let node = args.optional_str("node_id")?;
        let export = args.optional_str("export_name")?;
        if node.is_some() != export.is_some() {
            return Err(OpError::missing_field());
        }
        let mut state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() && !caller.role.is_admin() {
            return Err(protected());
        }
        project.check(caller.role, None, Action::Mount, token)?;
        let mut next = project.clone();
        let before = next.record.mounts.len();
        next.record.mounts.retain(|m| {
            !(m.mount_path == mount_path
                && node.is_none_or(|n| m.node_id == n)
                && export.is_none_or(|e| m.export_name == e))
        });
        if next.record.mounts.len() == before {
            return Err(OpError::new(code::MOUNT_NOT_FOUND, "MountNotFound"));
        }
        next.record.updated_at_ms = super::now_ms();
        let out = self.persist(&mut state, next)?;
        Counters::bump(&self.counters.mount_removes);
        Ok(out)
    }

    pub fn project_token_rotate(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let mut state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() {
            return Err(protected());
        }
        project.check(caller.role, Some(caller.agent_id), Action::Admin, token)?;
        let (fresh, hash) = fresh_token()?;
        let mut next = project.clone();
        next.token = digest(&fresh);
        next.record.token_hash = hash;
        next.record.token_locked = true;
        next.record.updated_at_ms = super::now_ms();
        let updated = next.record.updated_at_ms;
        self.persist(&mut state, next)?;
        Counters::bump(&self.counters.project_token_rotates);
        Ok(json!({"project_id": id, "project_token": fresh, "rotated": true, "updated_at_ms": updated}))
    }

    pub fn project_token_revoke(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let id = project_id_arg(&args)?;
        let token = args.optional_str("project_token")?;
        let mut state = self.lock();
        let project = state.projects.get(id).ok_or_else(not_found)?;
        if project.is_system() {
            return Err(protected());
        }
        project.check(caller.role, Some(caller.agent_id), Action::Admin, token)?;
        let mut next = project.clone();
        next.record.token_locked = false;
        next.record.updated_at_ms = super::now_ms();
        let updated = next.record.updated_at_ms;
        self.persist(&mut state, next)?;
        Counters::bump(&self.counters.project_token_revokes);
        Ok(json!({"project_id": id, "project_token": null, "revoked": true, "updated_at_ms": updated}))
    }

    /// Checks whether `caller` may bind its agent to `project_id` (spec §6.8 project_activate).
    pub fn check_activation(
        &self,
        role: Role,
        agent_id: &str,
        project_id: &str,
        token: Option<&str>,
    ) -> Result<(), OpError> {
        let state = self.lock();
        let project = state.projects.get(project_id).ok_or_else(not_found)?;
        if !may_activate(role, agent_id, project_id) {
            return Err(assignment_forbidden());
        }
        if !project.is_system() {
            project.check(role, Some(agent_id), Action::Read, token)?;
        }
        Ok(())
    }

    /// Binds `agent_id` to `project_id` durably (after [`Self::check_activation`]).
    pub fn bind_agent(&self, agent_id: &str, project_id: &str) -> Result<(), OpError> {
        let mut state = self.lock();
        if state.bindings.get(agent_id).map(String::as_str) == Some(project_id) {
            return Ok(());
        }
        self.store.set_binding(agent_id, Some(project_id)).map_err(OpError::storage)?;
        state.bindings.insert(agent_id.into(), project_id.into());
        Counters::bump(&self.counters.project_activations);
        Ok(())
    }

    /// `project_up`: find by id or exact name, else create; then optionally activate.
    /// Returns the project id, whether it was created, and the token to report.
    pub fn project_up(
        &self,
        caller: Caller<'_>,
        payload: Option<&Value>,
    ) -> Result<(String, bool, Option<String>), OpError> {
        let args = Args::of(payload)?;
        let by_id = match args.optional_str("project_id")? {
            Some(id) if !valid_project_id(id) => return Err(OpError::invalid_payload()),
            other => other,
        };
        let name = match args.optional_display("name", 128)? {
            Some(n) => Some(n),
            None => args.optional_display("project_name", 128)?,
        };
        let vision = args.optional_display("vision", 1024)?;
        let status = args.optional_id("status", 64)?;
        let token = args.optional_str("project_token")?;
        let policy = policy_arg(&args)?;
        let desired = match args.raw("desired_mounts") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.len() <= MAX_MOUNTS_PER_PROJECT => {
                Some(items.iter().map(|item| mount_arg(&Args::of(Some(item))?)).collect::<Result<Vec<_>, OpError>>()?)
            }
            Some(_) => return Err(OpError::invalid_payload()),
        };
        let mut state = self.lock();
        if let Some(desired) = &desired {
            let mut accepted: Vec<MountRecord> = Vec::new();
            for mount in desired {
                if !state.nodes.nodes.contains_key(&mount.node_id) {
                    return Err(OpError::new(code::NODE_NOT_FOUND, "NodeNotFound"));
                }
                if !accepted.contains(mount) {
                    check_mount(&accepted, &[], mount)?;
                    accepted.push(mount.clone());
                }
            }
        }
        let existing = match by_id {
            Some(id) => Some(state.projects.get(id).ok_or_else(not_found)?.record.id.clone()),
            None => {
                let name = name.ok_or_else(OpError::missing_field)?;
                state.projects.values().find(|p| p.record.name == name).map(|p| p.record.id.clone())
            }
        };
        let (id, created) = match existing {
            Some(id) => {
                let project = &state.projects[&id];
                if project.is_system() && (vision.is_some() || status.is_some() || policy.is_some()) {
                    return Err(protected());
                }
                if vision.is_some() || status.is_some() || policy.is_some() {
                    project.check(caller.role, Some(caller.agent_id), Action::Admin, token)?;
                    let next = Changes { name: None, vision, status, policy }.applied_to(project);
                    self.persist(&mut state, next)?;
                    Counters::bump(&self.counters.project_updates);
                }
                (id, false)
            }
            None => {
                let name = name.ok_or_else(OpError::missing_field)?;
                let vision = vision.ok_or_else(OpError::missing_field)?;
                let created =
                    self.new_project(&mut state, name, vision, status.unwrap_or("active"), policy.unwrap_or_default())?;
                Counters::bump(&self.counters.project_creates);
                (created["project_id"].as_str().unwrap_or_default().to_owned(), true)
            }
        };
        if let Some(desired) = desired {
            let project = &state.projects[&id];
            if project.is_system() && !caller.role.is_admin() {
                return Err(protected());
            }
            project.check(caller.role, None, Action::Mount, token)?;
            let mut next = project.clone();
            next.record.mounts.clear();
            for mount in desired {
                if !next.record.mounts.contains(&mount) {
                    check_mount(&next.record.mounts, &next.record.binds, &mount)?;
                    next.record.mounts.push(mount);
                }
            }
            if next.record.mounts != project.record.mounts {
                next.record.updated_at_ms = super::now_ms();
                self.persist(&mut state, next)?;
                Counters::bump(&self.counters.mount_sets);
            }
        }
        let active_token = token.filter(|t| state.projects[&id].token_matches(t)).map(str::to_owned);
        Ok((id, created, active_token))
    }

    /// Agents bound to `project_id`, sorted (for views and the initial user binding).
    pub fn agents_bound_to(&self, project_id: &str) -> Vec<String> {
        let state = self.lock();
        state.bindings.iter().filter(|(_, p)| *p == project_id).map(|(a, _)| a.clone()).collect()
    }

    pub fn project_exists(&self, project_id: &str) -> bool {
        self.lock().projects.contains_key(project_id)
    }

    pub fn agent_exists(&self, agent_id: &str) -> bool {
        self.lock().agents.contains_key(agent_id)
    }

    /// True while no non-system project or no non-system agent exists (spec §4.2).
    pub fn bootstrap_only(&self) -> bool {
        let state = self.lock();
        !state.projects.values().any(|p| !p.is_system()) || !state.agents.keys().any(|a| a != MOTHER_AGENT)
    }
}
