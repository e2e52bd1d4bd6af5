//! Workspace status and reconcile state (spec §6.9).
//!
//! A project's workspace is its mounts, each naming a node export. A mount's state follows its
//! node: `online` while the node's lease runs, `degraded` once it lapsed (until the next
//! control-plane call reaps the node), `missing` when no such node exists. Per path one mount
//! is selected: best state, then the latest lease expiry, then the first listed. Only `mother`
//! is shown the node secrets (`fs_auth_token`), which her mount client needs.
//!
//! Visibility: a user does not see a mount whose node advertises an invoke-capable service
//! covering that path unless the service's permissions admit users
//! (`spiderweb_policy::service_access`).

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use spiderweb_policy::session::{MOTHER_AGENT, SYSTEM_PROJECT};
use spiderweb_policy::{Action, Mode, Role, service_access};
use spiderweb_proto::codes::control as code;

use super::args::Args;
use super::nodes::NodeTable;
use super::{Caller, ControlPlane, OpError, OpResult, Project};
use crate::store::MountRecord;

pub fn workspace_root(project_id: &str) -> String {
    format!("/spiderweb/projects/{project_id}/workspace")
}

fn reconcile_fields(w: &mut serde_json::Map<String, Value>, queue_depth: usize) {
    w.insert("reconcile_state".into(), json!(if queue_depth == 0 { "idle" } else { "degraded" }));
    w.insert("last_reconcile_ms".into(), json!(0));
    w.insert("last_success_ms".into(), json!(0));
    w.insert("last_error".into(), Value::Null);
    w.insert("queue_depth".into(), json!(queue_depth));
}

/// Who is looking at a workspace.
#[derive(Clone, Copy, Debug)]
pub struct Viewer<'a> {
    pub role: Role,
    pub agent_id: &'a str,
    /// Whether the viewer's binding holds the project's token (service permissions may need it).
    pub has_project_token: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MountState {
    Missing,
    Degraded,
    Online,
}

impl MountState {
    fn as_str(self) -> &'static str {
        match self {
            MountState::Online => "online",
            MountState::Degraded => "degraded",
            MountState::Missing => "missing",
        }
    }
}

/// One mount with what its node says about it.
struct Resolved<'a> {
    mount: &'a MountRecord,
    state: MountState,
    lease_expires_at_ms: i64,
    json: Value,
}

fn resolve<'a>(mount: &'a MountRecord, nodes: &NodeTable, viewer: Viewer<'_>, now: i64) -> Resolved<'a> {
    let node = nodes.nodes.get(&mount.node_id);
    let state = match node {
        None => MountState::Missing,
        Some(n) if n.online(now) => MountState::Online,
        Some(_) => MountState::Degraded,
    };
    let secret = node.filter(|_| viewer.agent_id == MOTHER_AGENT).and_then(|n| n.secret.clone());
    Resolved {
        mount,
        state,
        lease_expires_at_ms: node.map_or(i64::MIN, |n| n.record.lease_expires_at_ms),
        json: json!({"mount_path": mount.mount_path, "node_id": mount.node_id, "export_name": mount.export_name,
                     "node_name": node.map(|n| &n.record.name), "fs_url": node.map(|n| &n.record.fs_url),
                     "fs_auth_token": secret, "online": state == MountState::Online, "state": state.as_str()}),
    }
}

/// Whether `viewer` may see `mount` (the invoke-capable service rule of §6.9).
fn visible(mount: &MountRecord, nodes: &NodeTable, viewer: Viewer<'_>) -> bool {
    if viewer.role.is_admin() {
        return true;
    }
    let Some(node) = nodes.nodes.get(&mount.node_id) else { return true };
    node.record.services.iter().all(|svc| {
        !(service_access::is_invoke_capable(svc) && service_access::covers_path(svc, &mount.mount_path))
            || service_access::permits(viewer.role, &svc["permissions"], viewer.has_project_token)
    })
}

/// Selected mounts and counts of one project.
struct Selection<'a> {
    desired: Vec<Resolved<'a>>,
    /// Indexes into `desired`, one per distinct path, in first-listed order.
    selected: Vec<usize>,
    drift: Vec<Value>,
}

impl Selection<'_> {
    fn count(&self, state: MountState) -> usize {
        self.selected.iter().filter(|i| self.desired[**i].state == state).count()
    }
}

fn select<'a>(project: &'a Project, nodes: &NodeTable, viewer: Viewer<'_>, now: i64) -> Selection<'a> {
    let desired: Vec<Resolved<'a>> = project
        .record
        .mounts
        .iter()
        .filter(|m| visible(m, nodes, viewer))
        .map(|m| resolve(m, nodes, viewer, now))
        .collect();
    let mut selected: Vec<usize> = Vec::new();
    let mut drift = Vec::new();
    for (first, m) in desired.iter().enumerate() {
        if selected.iter().any(|s| desired[*s].mount.mount_path == m.mount.mount_path) {
            continue;
        }
        let best = (first..desired.len())
            .filter(|i| desired[*i].mount.mount_path == m.mount.mount_path)
            // max_by_key keeps the last maximum; reversing the candidates keeps the first listed.
            .rev()
            .max_by_key(|i| (desired[*i].state, desired[*i].lease_expires_at_ms))
            .unwrap_or(first);
        let chosen = &desired[best];
        let item = |kind: &str, severity: &str, message: &str| {
            json!({"mount_path": m.mount.mount_path, "kind": kind, "severity": severity,
                   "selected_node_id": chosen.mount.node_id, "desired_node_id": m.mount.node_id, "message": message})
        };
        match chosen.state {
            MountState::Missing => drift.push(item("missing_node", "error", "selected node is missing")),
            MountState::Degraded => drift.push(item("node_offline", "error", "selected node lease is expired")),
            MountState::Online if best != first => {
                drift.push(item("failover_active", "warning", "using healthy failover node"))
            }
            MountState::Online => {}
        }
        selected.push(best);
    }
    Selection { desired, selected, drift }
}

/// The workspace payload `W` of one project for `viewer`.
pub fn status_of(project: &Project, nodes: &NodeTable, viewer: Viewer<'_>) -> Value {
    let now = super::now_ms();
    let sel = select(project, nodes, viewer, now);
    let chosen: Vec<&Value> = sel.selected.iter().map(|i| &sel.desired[*i].json).collect();
    let desired: Vec<&Value> = sel.desired.iter().map(|r| &r.json).collect();
    let (online, degraded, missing) =
        (sel.count(MountState::Online), sel.count(MountState::Degraded), sel.count(MountState::Missing));
    let mut w = serde_json::Map::new();
    w.insert("agent_id".into(), json!(viewer.agent_id));
    w.insert("project_id".into(), json!(project.record.id));
    w.insert("workspace_root".into(), json!(workspace_root(&project.record.id)));
    w.insert("mounts".into(), json!(chosen));
    w.insert("desired_mounts".into(), json!(desired));
    w.insert("actual_mounts".into(), json!(chosen));
    w.insert("drift".into(), json!({"count": sel.drift.len(), "items": sel.drift}));
    w.insert(
        "availability".into(),
        json!({"mounts_total": chosen.len(), "online": online, "degraded": degraded, "missing": missing}),
    );
    reconcile_fields(&mut w, degraded + missing);
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
    reconcile_fields(&mut w, 0);
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
        let now = super::now_ms();
        let admin = Viewer { role: Role::Admin, agent_id: "", has_project_token: true };
        let (mut online, mut degraded, mut missing) = (0, 0, 0);
        for project in state.projects.values() {
            let sel = select(project, &state.nodes, admin, now);
            online += sel.count(MountState::Online);
            degraded += sel.count(MountState::Degraded);
            missing += sel.count(MountState::Missing);
        }
        json!({"nodes": {"online": state.nodes.online_count(now), "total": state.nodes.nodes.len()},
               "mounts": {"online": online, "degraded": degraded, "missing": missing, "total": total},
               "project_mount_digest": digest})
    }

    /// `W` for `project_id` (or the no-project form), without access checks.
    pub fn workspace_of(&self, project_id: Option<&str>, viewer: Viewer<'_>) -> Value {
        let state = self.lock();
        match project_id.and_then(|p| state.projects.get(p)) {
            Some(project) => status_of(project, &state.nodes, viewer),
            None => no_project(viewer.agent_id),
        }
    }

    /// `control.workspace_status` with the access rules of spec §6.9.
    pub fn workspace_status(&self, caller: Caller<'_>, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let Some(id) = args.optional_str("project_id")? else {
            let viewer = Viewer { role: caller.role, agent_id: caller.agent_id, has_project_token: false };
            return Ok(self.workspace_of(caller.project_id, viewer));
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
        let has_project_token = token.is_some_and(|t| project.token_matches(t));
        let viewer = Viewer { role: caller.role, agent_id: caller.agent_id, has_project_token };
        Ok(status_of(project, &state.nodes, viewer))
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
        let now = super::now_ms();
        let admin = Viewer { role: Role::Admin, agent_id: "", has_project_token: true };
        let mut failed_ops = Vec::new();
        let mut queue_depth = 0;
        let projects: Vec<Value> = state
            .projects
            .values()
            .filter(|p| only.is_none_or(|id| p.record.id == id))
            .map(|p| {
                let sel = select(p, &state.nodes, admin, now);
                let (online, degraded, missing) =
                    (sel.count(MountState::Online), sel.count(MountState::Degraded), sel.count(MountState::Missing));
                for i in &sel.selected {
                    let m = &sel.desired[*i];
                    let what = match m.state {
                        MountState::Missing => "missing",
                        MountState::Degraded => "offline",
                        MountState::Online => continue,
                    };
                    failed_ops.push(format!(
                        "project={} mount={} node={} {what}",
                        p.record.id, m.mount.mount_path, m.mount.node_id
                    ));
                }
                queue_depth += degraded + missing;
                json!({"project_id": p.record.id, "mounts": p.record.mounts.len(), "selected_mounts": sel.selected.len(),
                       "online_mounts": online, "degraded_mounts": degraded, "missing_mounts": missing,
                       "drift_count": sel.drift.len(), "queue_depth": degraded + missing})
            })
            .collect();
        let reconcile_state = if queue_depth == 0 { "idle" } else { "degraded" };
        Ok(json!({"reconcile_state": reconcile_state, "last_reconcile_ms": 0, "last_success_ms": 0, "last_error": null,
                  "queue_depth": queue_depth, "failed_ops_total": failed_ops.len(), "cycles_total": 0,
                  "failed_ops": failed_ops, "projects": projects}))
    }
}
