//! Workspace status and reconcile state (spec §6.9).
//!
//! A project's workspace is its mounts, each naming a node export. Mount selection per path
//! prefers online over degraded over missing. Nodes are not part of this gateway yet, so
//! every mount's node is "missing"; the shapes are the full ones clients parse.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use spiderweb_policy::session::{MOTHER_AGENT, SYSTEM_PROJECT};
use spiderweb_policy::{Action, Mode, Role};
use spiderweb_proto::codes::control as code;

use super::args::Args;
use super::{Caller, ControlPlane, OpError, OpResult, Project};

pub fn workspace_root(project_id: &str) -> String {
    format!("/spiderweb/projects/{project_id}/workspace")
}

fn reconcile_fields(w: &mut serde_json::Map<String, Value>) {
    w.insert("reconcile_state".into(), json!("idle"));
    w.insert("last_reconcile_ms".into(), json!(0));
    w.insert("last_success_ms".into(), json!(0));
    w.insert("last_error".into(), Value::Null);
    w.insert("queue_depth".into(), json!(0));
}

/// The workspace payload `W` of one project for `agent_id`.
pub fn status_of(project: &Project, agent_id: &str) -> Value {
    let mounts: Vec<Value> = project
        .record
        .mounts
        .iter()
        .map(|m| {
            json!({"mount_path": m.mount_path, "node_id": m.node_id, "export_name": m.export_name,
                   "node_name": null, "fs_url": null, "fs_auth_token": null, "online": false, "state": "missing"})
        })
        .collect();
    let mut selected: Vec<Value> = Vec::new();
    let mut drift = Vec::new();
    for m in &mounts {
        if selected.iter().any(|s| s["mount_path"] == m["mount_path"]) {
            continue;
        }
        drift.push(json!({"mount_path": m["mount_path"], "kind": "missing_node", "severity": "error",
                          "selected_node_id": m["node_id"], "desired_node_id": m["node_id"],
                          "message": "selected node is missing"}));
        selected.push(m.clone());
    }
    let missing = selected.len();
    let mut w = serde_json::Map::new();
    w.insert("agent_id".into(), json!(agent_id));
    w.insert("project_id".into(), json!(project.record.id));
    w.insert("workspace_root".into(), json!(workspace_root(&project.record.id)));
    w.insert("mounts".into(), json!(selected));
    w.insert("desired_mounts".into(), json!(mounts));
    w.insert("actual_mounts".into(), json!(selected));
    w.insert("drift".into(), json!({"count": drift.len(), "items": drift}));
    w.insert("availability".into(), json!({"mounts_total": missing, "online": 0, "degraded": 0, "missing": missing}));
    reconcile_fields(&mut w);
    Value::Object(w)
}

/// The "no project" form of `W`.
pub fn no_project(agent_id: &str) -> Value {
    let mut w = serde_json::Map::new();
    w.insert("agent_id".into(), json!(agent_id));
    w.insert("project_id".into(), Value::Null);
    w.insert("workspace_root".into(), Value::Null);
    for key in ["mounts", "desired_mounts", "actual_mounts"] {
        w.insert(key.into(), json!([]));
    }
    w.insert("drift".into(), json!({"count": 0, "items": []}));
    w.insert("availability".into(), json!({"mounts_total": 0, "online": 0, "degraded": 0, "missing": 0}));
    reconcile_fields(&mut w);
    Value::Object(w)
}

impl ControlPlane {
    /// The gateway-wide availability snapshot that `workspace_availability` debug events
    /// compare (spec README quirk 6): node and mount counts, and a digest of every project's
    /// mount table so that a changed mapping shows even when the counts stay the same.
    pub fn availability_snapshot(&self) -> Value {
        let state = self.lock();
        let mut digest = Sha256::new();
        let mut total = 0usize;
        for (id, project) in &state.projects {
            for m in &project.record.mounts {
                total += 1;
                for field in [id, &m.mount_path, &m.node_id, &m.export_name] {
                    digest.update((field.len() as u64).to_be_bytes());
                    digest.update(field.as_bytes());
                }
            }
        }
        let digest = super::hex(&digest.finalize());
        // No node is paired with this gateway yet, so every mount is missing.
        json!({"nodes": {"online": 0, "total": 0},
               "mounts": {"online": 0, "degraded": 0, "missing": total, "total": total},
               "project_mount_digest": digest})
    }

    /// `W` for `project_id` (or the no-project form), without access checks.
    pub fn workspace_of(&self, project_id: Option<&str>, agent_id: &str) -> Value {
        let state = self.lock();
        match project_id.and_then(|p| state.projects.get(p)) {
            Some(project) => status_of(project, agent_id),
            None => no_project(agent_id),
        }
    }

    /// `control.workspace_status` with the access rules of spec §6.9.
    pub fn workspace_status(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let Some(id) = args.optional_str("project_id")? else {
            return Ok(self.workspace_of(caller.project_id, caller.agent_id));
        };
        let token = args.optional_str("project_token")?;
        let state = self.lock();
        let project = state.projects.get(id).ok_or_else(|| OpError::new(code::PROJECT_NOT_FOUND, "ProjectNotFound"))?;
        let mother = caller.agent_id == MOTHER_AGENT;
        if caller.role != Role::Admin {
            if id == SYSTEM_PROJECT && !mother {
                return Err(OpError::new(code::PROJECT_ASSIGNMENT_FORBIDDEN, "ProjectAssignmentForbidden"));
            }
            let auth_failed = || OpError::new(code::PROJECT_AUTH_FAILED, "ProjectAuthFailed");
            let active_here = caller.project_id == Some(id) || mother;
            match project.policy.effective_mode(Action::Read, Some(caller.agent_id), project.record.token_locked) {
                Mode::AdminOnly | Mode::Deny => {
                    return Err(OpError::new(code::PROJECT_POLICY_FORBIDDEN, "ProjectPolicyForbidden"));
                }
                Mode::Token => match token {
                    Some(_) => project
                        .check(caller.role, Some(caller.agent_id), Action::Read, token)
                        .map_err(|_| auth_failed())?,
                    None if active_here => {}
                    None => return Err(auth_failed()),
                },
                Mode::Open if !active_here => return Err(auth_failed()),
                Mode::Open => {}
            }
        }
        Ok(status_of(project, caller.agent_id))
    }

    pub fn reconcile_status(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let only = args.optional_str("project_id")?;
        let state = self.lock();
        if let Some(id) = only
            && !state.projects.contains_key(id)
        {
            return Err(OpError::new(code::PROJECT_NOT_FOUND, "ProjectNotFound"));
        }
        let projects: Vec<Value> = state
            .projects
            .values()
            .filter(|p| only.is_none_or(|id| p.record.id == id))
            .map(|p| {
                let w = status_of(p, "");
                let selected = w["mounts"].as_array().map_or(0, Vec::len);
                json!({"project_id": p.record.id, "mounts": p.record.mounts.len(), "selected_mounts": selected,
                       "online_mounts": 0, "degraded_mounts": 0, "missing_mounts": selected,
                       "drift_count": w["drift"]["count"], "queue_depth": 0})
            })
            .collect();
        Ok(json!({"reconcile_state": "idle", "last_reconcile_ms": 0, "last_success_ms": 0, "last_error": null,
                  "queue_depth": 0, "failed_ops_total": 0, "cycles_total": 0, "failed_ops": [], "projects": projects}))
    }
}
