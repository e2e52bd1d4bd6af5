//! Session bindings of one connection (spec §4.3, §6.4) and the ops that change them.
//!
//! A connection holds named bindings `session_key → (agent, project, token)`; one is active
//! and decides what the world filesystem shows. The first binding, `main`, is chosen when the
//! socket is accepted. A user with nothing bound gets `mother`/`system` behind a *gate* that
//! only lets it look around and attach. Bindings are per socket; what survives the socket is
//! the per-role history kept by the control plane.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use spiderweb_policy::Role;
use spiderweb_policy::session::{self as rules, MOTHER_AGENT, SYSTEM_PROJECT};
use spiderweb_proto::codes::control as code;

use crate::plane::args::Args;
use crate::plane::{ControlPlane, OpError, OpResult, workspace};

/// Sessions one connection may hold; each is small, but input must not grow state unbounded.
pub const MAX_SESSIONS_PER_CONNECTION: usize = 64;
const STALE_AFTER_MS: i64 = 5 * 60 * 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub agent_id: String,
    pub project_id: String,
    pub project_token: Option<String>,
    pub last_activity_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    pub code: &'static str,
    pub message: &'static str,
}

pub struct ConnSession {
    pub role: Role,
    pub control_versioned: bool,
    pub acheron_versioned: bool,
    pub debug_subscribed: bool,
    pub gate: Option<Gate>,
    /// A `node_service_watch`/`unwatch` the connection loop has yet to apply.
    pub node_watch: Option<super::watch::WatchChange>,
    sessions: BTreeMap<String, Binding>,
    active: String,
}

impl ConnSession {
    /// The initial binding of a new connection (spec §4.3).
    pub fn new(plane: &ControlPlane, role: Role) -> ConnSession {
        let now = crate::plane::now_ms();
        let (agent, project, gate) = match role {
            Role::Admin => (MOTHER_AGENT.to_owned(), SYSTEM_PROJECT.to_owned(), None),
            Role::User => match initial_user_target(plane) {
                Some((a, p)) => (a, p, None),
                None => {
                    let gate = if plane.bootstrap_only() {
                        Gate {
                            code: code::PROVISIONING_REQUIRED,
                            message: "no non-system project/agent is available; an admin should use Mother to provision one",
                        }
                    } else {
                        Gate {
                            code: code::PROJECT_CONTEXT_REQUIRED,
                            message: "project selection is required; call control.session_attach with project_id",
                        }
                    };
                    (MOTHER_AGENT.to_owned(), SYSTEM_PROJECT.to_owned(), Some(gate))
                }
            },
        };
        let main = Binding { agent_id: agent, project_id: project, project_token: None, last_activity_ms: now };
        ConnSession {
            role,
            control_versioned: false,
            acheron_versioned: false,
            debug_subscribed: false,
            gate,
            node_watch: None,
            sessions: BTreeMap::from([("main".to_owned(), main)]),
            active: "main".into(),
        }
    }

    pub fn active_key(&self) -> &str {
        &self.active
    }

    pub fn binding(&self) -> &Binding {
        // The active key always names an existing session: `close` moves it back to `main`,
        // which can never be closed.
        &self.sessions[&self.active]
    }

    /// Who this connection is, for workspace views.
    pub fn viewer(&self) -> crate::plane::workspace::Viewer<'_> {
        let b = self.binding();
        crate::plane::workspace::Viewer {
            role: self.role,
            agent_id: &b.agent_id,
            has_project_token: b.project_token.is_some(),
        }
    }

    pub fn binding_for(&self, key: &str) -> Option<&Binding> {
        self.sessions.get(key)
    }

    /// Marks the active binding as used (world-filesystem traffic).
    pub fn touch(&mut self) {
        let now = crate::plane::now_ms();
        if let Some(b) = self.sessions.get_mut(&self.active) {
            b.last_activity_ms = now;
        }
    }

    /// A deleted project leaves bindings pointing at it without a project.
    pub fn forget_project(&mut self, project_id: &str) {
        for b in self.sessions.values_mut() {
            if b.project_id == project_id {
                b.project_id = SYSTEM_PROJECT.into();
                b.agent_id = MOTHER_AGENT.into();
                b.project_token = None;
            }
        }
    }
}

/// A user's initial binding: the remembered target, else the first project with a non-mother agent.
fn initial_user_target(plane: &ControlPlane) -> Option<(String, String)> {
    if let Some(t) = plane.last_target(Role::User)
        && t.project_id != SYSTEM_PROJECT
        && plane.project_exists(&t.project_id)
    {
        if t.agent_id != MOTHER_AGENT && plane.agent_exists(&t.agent_id) {
            return Some((t.agent_id, t.project_id));
        }
        if let Some(a) = plane.agents_bound_to(&t.project_id).into_iter().find(|a| a != MOTHER_AGENT) {
            return Some((a, t.project_id));
        }
    }
    let state = plane.lock();
    state.projects.keys().filter(|p| *p != SYSTEM_PROJECT).find_map(|p| {
        state.bindings.iter().find(|(a, bp)| *bp == p && *a != MOTHER_AGENT).map(|(a, _)| (a.clone(), p.clone()))
    })
}

fn attach_state(now: i64) -> Value {
    json!({"state": "ready", "runtime_ready": true, "mount_ready": true, "error_code": null, "error_message": null, "updated_at_ms": now})
}

fn invalid(message: &str) -> OpError {
    OpError::new(code::INVALID_PAYLOAD, message)
}

pub fn attach(plane: &ControlPlane, conn: &mut ConnSession, payload: Option<&Value>) -> OpResult {
    let args = Args::of(payload)?;
    let key = args.required_str("session_key")?;
    let agent = args.required_str("agent_id")?;
    let project = match args.optional_str("project_id")? {
        Some(p) => p,
        None => return Err(OpError::new(code::MISSING_FIELD, "project_id is required")),
    };
    if !rules::valid_session_key(key) {
        return Err(invalid("invalid session_key"));
    }
    if !rules::valid_agent_id(agent) {
        return Err(invalid("invalid agent_id"));
    }
    if !rules::valid_project_id(project) {
        return Err(invalid("invalid project_id"));
    }
    let mut token = args.optional_str("project_token")?.map(str::to_owned);
    if token.is_none()
        && let Some(existing) = conn.sessions.get(key).filter(|b| b.agent_id == agent)
    {
        token = existing.project_token.clone();
    }
    if let Err(denial) = rules::check_attach(conn.role, agent, project) {
        plane.audit(crate::plane::audit::Entry {
            agent_id: &conn.binding().agent_id,
            control_type: "control.session_attach",
            scope: "none",
            correlation_id: None,
            error_code: Some(code::FORBIDDEN),
        });
        return Err(OpError::forbidden(denial.message()));
    }
    if !plane.agent_exists(agent) {
        return Err(OpError::new(code::AGENT_NOT_FOUND, "AgentNotFound"));
    }
    if !conn.sessions.contains_key(key) && conn.sessions.len() >= MAX_SESSIONS_PER_CONNECTION {
        return Err(invalid("too many sessions on this connection; close one first"));
    }
    plane.check_activation(conn.role, agent, project, token.as_deref())?;
    plane.bind_agent(agent, project)?;
    let now = crate::plane::now_ms();
    plane.remember(conn.role, key, agent, project, now)?;
    conn.sessions.insert(
        key.to_owned(),
        Binding { agent_id: agent.into(), project_id: project.into(), project_token: token, last_activity_ms: now },
    );
    conn.active = key.to_owned();
    conn.gate = None;
    Ok(attach_reply(plane, conn, key, now))
}

fn attach_reply(plane: &ControlPlane, conn: &ConnSession, key: &str, now: i64) -> Value {
    let b = &conn.sessions[key];
    json!({
        "session_key": key, "agent_id": b.agent_id, "project_id": b.project_id,
        "workspace": plane.workspace_of(Some(&b.project_id), conn.viewer()),
        "attach": attach_state(now),
    })
}

pub fn status(conn: &mut ConnSession, payload: Option<&Value>) -> OpResult {
    let args = Args::of(payload)?;
    let key = args.optional_str("session_key")?.unwrap_or(&conn.active).to_owned();
    let heartbeat = args.optional_bool("heartbeat")?.unwrap_or(false);
    let now = crate::plane::now_ms();
    let binding = conn.sessions.get_mut(&key).ok_or_else(|| OpError::new(code::NOT_FOUND, "session_key not found"))?;
    if heartbeat {
        binding.last_activity_ms = now;
    }
    let stale = now - binding.last_activity_ms > STALE_AFTER_MS;
    Ok(json!({
        "session_key": key, "agent_id": binding.agent_id, "project_id": binding.project_id,
        "attach": attach_state(now),
        "session_last_activity_ms": binding.last_activity_ms, "session_stale": stale,
        "agent_last_heartbeat_ms": binding.last_activity_ms, "agent_stale": stale,
        "recoverable": true,
    }))
}

pub fn resume(plane: &ControlPlane, conn: &mut ConnSession, payload: Option<&Value>) -> OpResult {
    let args = Args::of(payload)?;
    let key = args.required_str("session_key")?;
    if !conn.sessions.contains_key(key) {
        return Err(OpError::new(code::NOT_FOUND, "session_key not found"));
    }
    conn.active = key.to_owned();
    let now = crate::plane::now_ms();
    conn.touch();
    Ok(attach_reply(plane, conn, key, now))
}

pub fn list(conn: &ConnSession) -> Value {
    let sessions: Vec<Value> = conn
        .sessions
        .iter()
        .map(|(k, b)| json!({"session_key": k, "agent_id": b.agent_id, "project_id": b.project_id}))
        .collect();
    json!({"active_session": conn.active, "sessions": sessions})
}

pub fn close(conn: &mut ConnSession, payload: Option<&Value>) -> OpResult {
    let args = Args::of(payload)?;
    let key = args.required_str("session_key")?;
    if key == "main" {
        return Err(OpError::forbidden("main session cannot be closed"));
    }
    if conn.sessions.remove(key).is_none() {
        return Err(OpError::new(code::NOT_FOUND, "session_key not found"));
    }
    if conn.active == key {
        conn.active = "main".into();
    }
    Ok(json!({"session_key": key, "closed": true, "active_session": conn.active}))
}

/// `project_activate`: binds the connection's current agent to a project.
pub fn activate(plane: &ControlPlane, conn: &mut ConnSession, payload: Option<&Value>) -> OpResult {
    let args = Args::of(payload)?;
    let project = args.required_str("project_id")?;
    if !rules::valid_project_id(project) {
        return Err(OpError::invalid_payload());
    }
    let token = args.optional_str("project_token")?;
    let agent = conn.binding().agent_id.clone();
    plane.check_activation(conn.role, &agent, project, token)?;
    plane.bind_agent(&agent, project)?;
    rebind_active(conn, project, token);
    Ok(json!({"agent_id": agent, "project_id": project, "workspace_root": workspace::workspace_root(project)}))
}

fn rebind_active(conn: &mut ConnSession, project: &str, token: Option<&str>) {
    let active = conn.active.clone();
    if let Some(b) = conn.sessions.get_mut(&active) {
        b.project_id = project.into();
        b.project_token = token.map(str::to_owned);
    }
}

pub fn project_up(plane: &ControlPlane, conn: &mut ConnSession, payload: Option<&Value>) -> OpResult {
    let binding = conn.binding().clone();
    let caller =
        crate::plane::Caller { role: conn.role, agent_id: &binding.agent_id, project_id: Some(&binding.project_id) };
    let (project_id, created, token) = plane.project_up(caller, payload)?;
    let activate = Args::of(payload)?.optional_bool("activate")?.unwrap_or(true);
    let mut activated = false;
    if activate {
        plane.check_activation(conn.role, &binding.agent_id, &project_id, token.as_deref())?;
        plane.bind_agent(&binding.agent_id, &project_id)?;
        rebind_active(conn, &project_id, token.as_deref());
        activated = true;
    }
    Ok(json!({
        "project_id": project_id, "project_token": token, "created": created, "activated": activated,
        "workspace": plane.workspace_of(Some(&project_id), conn.viewer()),
    }))
}
