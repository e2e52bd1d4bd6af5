//! The namespace tree a world-filesystem session sees (spec `acheron-worldfs.md` §6).
//!
//! A namespace is built for one binding (agent, project, role) and is a snapshot: node ids
//! are assigned in build order (root = 1) and stay valid until the next rebuild. Files are
//! either fixed bytes or *generated* from control-plane state; generated files are re-rendered
//! when read at offset 0, so a client reading a file from the start sees current state and a
//! client reading it in chunks sees one consistent version.
//!
//! Content that belongs to later parts of the system (chat jobs, services, nodes, pairing)
//! appears with its true empty state; writes to it are refused with a clear error.

use std::collections::HashSet;

use serde_json::{Value, json};
use spiderweb_policy::Role;
use spiderweb_policy::session::MOTHER_AGENT;

use crate::events::wait;
use crate::plane::ControlPlane;
use crate::runtime::Runtime;
use crate::runtime::transcript::{self, HISTORY_LIMIT};
use crate::store::ConversationKey;

pub const ROOT: u32 = 1;

/// What a generated file shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generated {
    View,
    WorkspaceStatus,
    Availability,
    Health,
    Alerts,
    ProjectMeta(ProjectMeta),
    /// A file of a chat job directory; the job is named by the directory.
    Job(JobFile),
    /// `/agents/self/chat/history.ndjson`: the bound session's transcript (our extension).
    History,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobFile {
    Status,
    Result,
    Log,
    /// `events.ndjson` (our extension): never cached, read straight from the job.
    Events,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectMeta {
    Topology,
    Nodes,
    Agents,
    Sources,
    Contracts,
    Paths,
    Summary,
    Mounts,
    DesiredMounts,
    ActualMounts,
    Drift,
    Reconcile,
}

/// What a write to a writable file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writable {
    ChatInput,
    ChatReply,
    EventWait,
    EventSignal,
    /// A control file of an agent-namespace service (`/agents/self/<service>/control/*.json`).
    ServiceControl(&'static str),
    /// The debug pairing surface (node pairing).
    PairingControl,
    /// `/agents/self/jobs/<job>/control/approve.json` (our extension): approval answers.
    JobApproval,
}

#[derive(Debug)]
pub enum Kind {
    Dir(Vec<u32>),
    File { content: Vec<u8>, generated: Option<Generated>, writable: Option<Writable> },
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub parent: u32,
    pub kind: Kind,
}

/// Who the namespace is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub role: Role,
    pub agent_id: String,
    pub project_id: String,
    pub session_key: String,
}

pub struct Namespace {
    nodes: Vec<Node>,
    pub binding: Binding,
    /// `/agents/self/events/next.json`, whose reads at offset 0 wait for an event.
    pub events_next: u32,
    /// `/agents/self/jobs`, whose children follow the runtime's jobs.
    jobs_dir: u32,
    jobs_shown: HashSet<String>,
}

const SERVICES: &[(&str, &[&str])] = &[
    ("memory", &["invoke", "create", "load", "versions", "mutate", "evict", "search"]),
    ("web_search", &["invoke", "search"]),
    ("search_code", &["invoke", "search"]),
    ("terminal", &["invoke", "create", "resume", "close", "write", "read", "resize", "exec"]),
    ("mounts", &["invoke", "list", "mount", "mkdir", "unmount", "bind", "unbind", "resolve"]),
    ("sub_brains", &["invoke", "list", "upsert", "delete"]),
    ("agents", &["invoke", "list", "create"]),
    ("projects", &["invoke", "list", "get", "up"]),
];

const PROJECT_META: &[(&str, Option<ProjectMeta>, Option<Generated>)] = &[
    ("topology.json", Some(ProjectMeta::Topology), None),
    ("nodes.json", Some(ProjectMeta::Nodes), None),
    ("agents.json", Some(ProjectMeta::Agents), None),
    ("sources.json", Some(ProjectMeta::Sources), None),
    ("contracts.json", Some(ProjectMeta::Contracts), None),
    ("paths.json", Some(ProjectMeta::Paths), None),
    ("summary.json", Some(ProjectMeta::Summary), None),
    ("alerts.json", None, Some(Generated::Alerts)),
    ("workspace_status.json", None, Some(Generated::WorkspaceStatus)),
    ("mounts.json", Some(ProjectMeta::Mounts), None),
    ("desired_mounts.json", Some(ProjectMeta::DesiredMounts), None),
    ("actual_mounts.json", Some(ProjectMeta::ActualMounts), None),
    ("drift.json", Some(ProjectMeta::Drift), None),
    ("reconcile.json", Some(ProjectMeta::Reconcile), None),
    ("availability.json", None, Some(Generated::Availability)),
    ("health.json", None, Some(Generated::Health)),
];

impl Namespace {
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.get(id.checked_sub(1)? as usize)
    }

    pub fn node_mut(&mut self, id: u32) -> Option<&mut Node> {
        self.nodes.get_mut(id.checked_sub(1)? as usize)
    }

    /// Replaces a file's cached content (what later reads at offset > 0 see).
    pub fn set_content(&mut self, id: u32, bytes: Vec<u8>) {
        if let Some(Node { kind: Kind::File { content, .. }, .. }) = self.node_mut(id) {
            *content = bytes;
        }
    }

    pub fn child(&self, dir: u32, name: &str) -> Option<u32> {
        match &self.node(dir)?.kind {
            Kind::Dir(children) => children.iter().copied().find(|c| self.node(*c).is_some_and(|n| n.name == name)),
            Kind::File { .. } => None,
        }
    }

    /// A directory's content: its children's names joined with newlines (spec §5).
    pub fn listing(&self, dir: u32) -> Vec<u8> {
        match self.node(dir).map(|n| &n.kind) {
            Some(Kind::Dir(children)) => children
                .iter()
                .filter_map(|c| self.node(*c).map(|n| n.name.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
                .into_bytes(),
            _ => Vec::new(),
        }
    }

    /// Re-renders a generated file from current state.
    pub fn refresh(&mut self, id: u32, plane: &ControlPlane, runtime: &Runtime) {
        let binding = self.binding.clone();
        let job = self.job_of(id).map(str::to_owned);
        if let Some(Node { kind: Kind::File { content, generated: Some(g), .. }, .. }) = self.node_mut(id) {
            *content = match *g {
                Generated::Job(file) => render_job(file, job.as_deref(), runtime),
                Generated::History => render_history(&binding, runtime),
                g => render(g, &binding, plane),
            };
        }
    }

    /// What a generated file is, if it is one.
    pub fn generated(&self, id: u32) -> Option<Generated> {
        match self.node(id)?.kind {
            Kind::File { generated, .. } => generated,
            Kind::Dir(_) => None,
        }
    }

    /// The job a node of a job directory belongs to (`jobs/<job>/…`).
    pub fn job_of(&self, id: u32) -> Option<&str> {
        let mut at = id;
        loop {
            let node = self.node(at)?;
            if node.parent == self.jobs_dir && at != self.jobs_dir {
                return Some(node.name.as_str());
            }
            if at == ROOT || node.parent == at {
                return None;
            }
            at = node.parent;
        }
    }

    /// Adds a directory for every job of the bound agent not shown yet (spec §7: job
    /// directories appear when jobs are created, and again after a restart). Done when the
    /// `jobs` directory is listed; a walk adds just the job it names ([`Namespace::show_job`]),
    /// so a namespace holds only the jobs its client looked at or listed.
    pub fn sync_jobs(&mut self, runtime: &Runtime) {
        for id in runtime.job_ids_of(&self.binding.agent_id) {
            self.add_job_dir(&id);
        }
    }

    /// The directory of job `id` if it is one of the bound agent's, adding it when needed.
    pub fn show_job(&mut self, runtime: &Runtime, id: &str) -> Option<u32> {
        if let Some(dir) = self.child(self.jobs_dir, id) {
            return Some(dir);
        }
        let job = runtime.job(id)?;
        if job.conversation.agent_id != self.binding.agent_id {
            return None;
        }
        self.add_job_dir(id)
    }

    pub fn jobs_dir(&self) -> u32 {
        self.jobs_dir
    }

    fn add_job_dir(&mut self, id: &str) -> Option<u32> {
        if self.jobs_shown.contains(id) {
            return None;
        }
        let mut b = Builder { nodes: std::mem::take(&mut self.nodes), binding: self.binding.clone(), events_next: 0 };
        let dir = b.dir(self.jobs_dir, id);
        for (name, file) in [
            ("status.json", JobFile::Status),
            ("result.txt", JobFile::Result),
            ("log.txt", JobFile::Log),
            ("events.ndjson", JobFile::Events),
        ] {
            b.add(dir, name, Kind::File { content: Vec::new(), generated: Some(Generated::Job(file)), writable: None });
        }
        let control = b.dir(dir, "control");
        b.writable(control, "approve.json", "", Writable::JobApproval);
        self.nodes = b.nodes;
        self.jobs_shown.insert(id.to_owned());
        Some(dir)
    }

    pub fn build(binding: Binding, plane: &ControlPlane) -> Namespace {
        let mut b = Builder { nodes: Vec::new(), binding: binding.clone(), events_next: 0 };
        b.nodes.push(Node { name: String::new(), parent: ROOT, kind: Kind::Dir(Vec::new()) });
        let show_debug = binding.role == Role::Admin || binding.agent_id == MOTHER_AGENT;

        let agents = b.dir(ROOT, "agents");
        b.describe(agents, "agents", "Agents visible to this session. `self` is the bound agent.");
        let me = b.dir(agents, "self");
        let jobs_dir = build_self(&mut b, me);
        let peers = {
            let mut bound = plane.agents_bound_to(&binding.project_id);
            bound.retain(|a| *a != binding.agent_id);
            bound
        };
        for agent in std::iter::once(binding.agent_id.clone()).chain(peers.iter().cloned()) {
            if agent == "self" || b.child_exists(agents, &agent) {
                continue;
            }
            let dir = b.dir(agents, &agent);
            b.file(dir, "README.md", format!("# {agent}\n\nAgent `{agent}`.\n"));
            let link =
                if agent == binding.agent_id { "/agents/self\n".to_owned() } else { format!("/agents/{agent}\n") };
            b.file(dir, "LINK.txt", link);
        }

        let nodes = b.dir(ROOT, "nodes");
        b.describe(nodes, "nodes", "Filesystem nodes paired with this gateway, one directory each. None is paired.");

        let projects = b.dir(ROOT, "projects");
        b.describe(projects, "projects", "The project bound to this session.");
        let project = b.dir(projects, &binding.project_id);
        let fs = b.dir(project, "fs");
        b.describe(fs, "fs", "One file per workspace mount, naming the node export that serves it.");
        let pnodes = b.dir(project, "nodes");
        b.describe(pnodes, "nodes", "Nodes that serve this project's mounts.");
        let pagents = b.dir(project, "agents");
        b.describe(pagents, "agents", "Agents bound to this project.");
        b.file(pagents, "self", "/agents/self\n");
        for agent in std::iter::once(&binding.agent_id).chain(peers.iter()) {
            if !b.child_exists(pagents, agent) {
                b.file(pagents, agent, format!("/agents/{agent}\n"));
            }
        }
        let pmeta = b.dir(project, "meta");
        b.describe(pmeta, "meta", "Project topology, mounts and health as JSON, current when read from offset 0.");
        for (name, meta, generated) in PROJECT_META {
            let g = meta.map(Generated::ProjectMeta).or(*generated).unwrap_or(Generated::Alerts);
            b.generated(pmeta, name, g, plane);
        }

        let global = b.dir(ROOT, "global");
        b.describe(global, "global", "Read-only material shared by every session.");
        let library = b.dir(global, "library");
        b.describe(library, "library", "Reference topics for agents. None is installed.");
        b.dir(library, "topics");

        let meta = b.dir(ROOT, "meta");
        b.describe(meta, "meta", "Protocol and workspace state of this session.");
        b.file(meta, "protocol.json", protocol_json().to_string());
        b.generated(meta, "view.json", Generated::View, plane);
        b.generated(meta, "workspace_status.json", Generated::WorkspaceStatus, plane);
        b.generated(meta, "workspace_availability.json", Generated::Availability, plane);
        b.generated(meta, "workspace_health.json", Generated::Health, plane);
        b.generated(meta, "workspace_alerts.json", Generated::Alerts, plane);

        if show_debug {
            let debug = b.dir(ROOT, "debug");
            b.describe(debug, "debug", "Debug stream and node pairing (admins and mother).");
            b.file(debug, "stream.log", "");
            let pairing = b.dir(debug, "pairing");
            b.file(pairing, "pending.json", json!({"pending": []}).to_string());
            b.file(pairing, "last_result.json", "null");
            b.file(pairing, "last_error.json", "null");
            let control = b.dir(pairing, "control");
            for name in ["approve.json", "deny.json", "refresh"] {
                b.writable(control, name, "", Writable::PairingControl);
            }
            let invites = b.dir(pairing, "invites");
            b.file(invites, "active.json", json!({"invites": []}).to_string());
            b.file(invites, "last_result.json", "null");
            b.file(invites, "last_error.json", "null");
            let icontrol = b.dir(invites, "control");
            for name in ["create.json", "refresh"] {
                b.writable(icontrol, name, "", Writable::PairingControl);
            }
        }
        Namespace { nodes: b.nodes, binding, events_next: b.events_next, jobs_dir, jobs_shown: HashSet::new() }
    }
}

/// `/meta/protocol.json` (spec §6, LIVE): the Acheron ops list.
pub fn protocol_json() -> Value {
    json!({"channel": "acheron", "version": "acheron-1", "layout": "world-v1",
    "ops": ["t_version","t_attach","t_walk","t_open","t_read","t_write","t_stat","t_clunk","t_flush"]})
}

/// `chat/SCHEMA.json` (spec §6).
pub fn chat_schema_json() -> Value {
    json!({"name":"chat","input":"control/input","reply":"control/reply","jobs":"/agents/self/jobs","result":"result.txt"})
}

/// `chat/meta.json` (spec §6) of `agent` in `project`.
pub fn chat_meta_json(agent: &str, project: &str) -> Value {
    json!({"name":"chat","version":"1","agent_id":agent,"project_id":project,
    "cost_hint":"provider-dependent","latency_hint":"seconds"})
}

/// `chat/examples/send.txt`.
pub const CHAT_EXAMPLE: &str = "Summarise the open issues of this project.\n";

/// Builds `/agents/self`; returns the `jobs` directory.
fn build_self(b: &mut Builder, me: u32) -> u32 {
    let agent = b.binding.agent_id.clone();
    let project = b.binding.project_id.clone();
    let chat = b.dir(me, "chat");
    b.file(chat, "README.md", "# chat\n\nWrite a prompt to `control/input` to start a job; read `/agents/self/jobs/<job>/result.txt` for the answer.\n");
    b.file(chat, "SCHEMA.json", chat_schema_json().to_string());
    b.file(chat, "CAPS.json", json!({"read": true, "write": true, "jobs": true}).to_string());
    b.file(chat, "meta.json", chat_meta_json(&agent, &project).to_string());
    let control = b.dir(chat, "control");
    b.writable(control, "input", "", Writable::ChatInput);
    b.writable(control, "reply", "", Writable::ChatReply);
    let examples = b.dir(chat, "examples");
    b.file(examples, "send.txt", CHAT_EXAMPLE);

    b.add(
        chat,
        "history.ndjson",
        Kind::File { content: Vec::new(), generated: Some(Generated::History), writable: None },
    );
    let jobs = b.dir(me, "jobs");
    b.describe(
        jobs,
        "jobs",
        "One directory per chat job: status.json, result.txt (blocks until the job ends), log.txt, events.ndjson (live events), control/approve.json (approval answers).",
    );

    let events = b.dir(me, "events");
    b.file(
        events,
        "README.md",
        "# events\n\nConfigure `control/wait.json`, then read `next.json` for the next matching event.\n",
    );
    b.file(
        events,
        "SCHEMA.json",
        json!({"name":"events","wait":"control/wait.json","signal":"control/signal.json","next":"next.json"})
            .to_string(),
    );
    b.file(events, "CAPS.json", json!({"read": true, "write": true}).to_string());
    b.events_next = b.file(events, "next.json", wait::not_configured().to_string());
    let econtrol = b.dir(events, "control");
    b.file(econtrol, "README.md", "# events/control\n\n`wait.json`: `{\"paths\":[…],\"timeout_ms\":N}`; `signal.json`: `{\"event_type\":\"user\"|\"agent\"|\"hook\",…}`.\n");
    b.writable(econtrol, "wait.json", "", Writable::EventWait);
    b.writable(econtrol, "signal.json", "", Writable::EventSignal);
    let sources = b.dir(events, "sources");
    b.file(sources, "README.md", "# events/sources\n\nSelectors for `wait.json` paths.\n");
    for s in ["agent", "hook", "user", "time"] {
        b.file(sources, &format!("{s}.json"), json!({"source": s}).to_string());
    }

    let services = b.dir(me, "services");
    let index: Vec<Value> = SERVICES
        .iter()
        .map(|(id, _)| {
            json!({"node_id":"self","service_id":id,"service_path":format!("/agents/self/{id}"),
            "invoke_path":format!("/agents/self/{id}/control/invoke.json"),"has_invoke":true,"scope":"agent_namespace"})
        })
        .chain(std::iter::once(json!({"node_id":"global","service_id":"library","service_path":"/global/library",
            "invoke_path":null,"has_invoke":false,"scope":"global_namespace"})))
        .collect();
    b.file(services, "SERVICES.json", Value::Array(index).to_string());

    let thoughts = b.dir(me, "thoughts");
    b.file(thoughts, "latest.txt", "");
    b.file(thoughts, "history.ndjson", "");
    b.file(
        thoughts,
        "status.json",
        json!({"count":0,"updated_at_ms":0,"latest_source":null,"latest_round":null}).to_string(),
    );

    for (service, ops) in SERVICES {
        let dir = b.dir(me, service);
        b.file(
            dir,
            "README.md",
            format!("# {service}\n\nAgent-namespace service. Write a JSON object to `control/<op>.json`.\n"),
        );
        b.file(dir, "SCHEMA.json", json!({"service_id": service, "operations": ops}).to_string());
        b.file(dir, "CAPS.json", json!({"invoke": true}).to_string());
        let paths: serde_json::Map<String, Value> =
            ops.iter().map(|op| (op.to_string(), json!(format!("control/{op}.json")))).collect();
        b.file(dir, "OPS.json", json!({"model":"local_bridge","invoke":"control/invoke.json","transport":"acheron-local","paths":paths,"operations":ops}).to_string());
        b.file(dir, "RUNTIME.json", json!({"service_id": service, "transport": "acheron-local"}).to_string());
        b.file(
            dir,
            "PERMISSIONS.json",
            json!({"default":"allow-by-default","allow_roles":["admin","user"],"scope":"agent"}).to_string(),
        );
        b.file(
            dir,
            "STATUS.json",
            json!({"service_id": service, "state": "namespace", "has_invoke": true}).to_string(),
        );
        b.file(dir, "status.json", json!({"state":"idle","tool":null,"updated_at_ms":0,"error":null}).to_string());
        b.file(dir, "result.json", json!({"ok":false,"result":null,"error":null}).to_string());
        let control = b.dir(dir, "control");
        for op in *ops {
            b.writable(control, &format!("{op}.json"), "", Writable::ServiceControl(service));
        }
    }
    jobs
}

struct Builder {
    nodes: Vec<Node>,
    binding: Binding,
    events_next: u32,
}

impl Builder {
    fn add(&mut self, parent: u32, name: &str, kind: Kind) -> u32 {
        self.nodes.push(Node { name: name.into(), parent, kind });
        let id = self.nodes.len() as u32;
        if let Some(Node { kind: Kind::Dir(children), .. }) = self.nodes.get_mut(parent as usize - 1) {
            children.push(id);
        }
        id
    }
    fn dir(&mut self, parent: u32, name: &str) -> u32 {
        self.add(parent, name, Kind::Dir(Vec::new()))
    }
    fn file(&mut self, parent: u32, name: &str, content: impl Into<String>) -> u32 {
        self.add(parent, name, Kind::File { content: content.into().into_bytes(), generated: None, writable: None })
    }
    fn writable(&mut self, parent: u32, name: &str, content: &str, w: Writable) -> u32 {
        self.add(parent, name, Kind::File { content: content.as_bytes().to_vec(), generated: None, writable: Some(w) })
    }
    fn generated(&mut self, parent: u32, name: &str, g: Generated, plane: &ControlPlane) -> u32 {
        let content = render(g, &self.binding, plane);
        self.add(parent, name, Kind::File { content, generated: Some(g), writable: None })
    }
    fn child_exists(&self, dir: u32, name: &str) -> bool {
        match &self.nodes[dir as usize - 1].kind {
            Kind::Dir(children) => children.iter().any(|c| self.nodes[*c as usize - 1].name == name),
            Kind::File { .. } => false,
        }
    }
    /// The descriptor files every directory marked (d) in the spec carries.
    fn describe(&mut self, dir: u32, name: &str, text: &str) {
        self.file(dir, "README.md", format!("# {name}\n\n{text}\n"));
        self.file(dir, "SCHEMA.json", json!({"name": name, "kind": "directory"}).to_string());
        self.file(dir, "CAPS.json", json!({"read": true, "write": false}).to_string());
    }
}

/// A file of a job directory, rendered from the job's current state (an expired job shows
/// as failed).
pub fn render_job(file: JobFile, job_id: Option<&str>, runtime: &Runtime) -> Vec<u8> {
    let Some(job) = job_id.and_then(|id| runtime.job(id)) else {
        return match file {
            JobFile::Status => {
                json!({"state": "failed", "correlation_id": null, "error": "job expired", "updated_at_ms": 0})
                    .to_string()
                    .into_bytes()
            }
            _ => Vec::new(),
        };
    };
    match file {
        JobFile::Status => job.status_json().to_string().into_bytes(),
        JobFile::Result => job.result_text().into_bytes(),
        JobFile::Log => job.log_text().into_bytes(),
        JobFile::Events => job.events_text().into_bytes(),
    }
}

fn render_history(b: &Binding, runtime: &Runtime) -> Vec<u8> {
    let conversation = ConversationKey {
        agent_id: b.agent_id.clone(),
        project_id: b.project_id.clone(),
        session_key: b.session_key.clone(),
    };
    match runtime.store().conversation_tail(&conversation, HISTORY_LIMIT) {
        Ok(messages) => {
            messages.iter().map(|m| format!("{}\n", transcript::history_line(m))).collect::<String>().into_bytes()
        }
        Err(e) => format!("{}\n", json!({"error": format!("cannot read the transcript: {e}")})).into_bytes(),
    }
}

fn render(g: Generated, b: &Binding, plane: &ControlPlane) -> Vec<u8> {
    let viewer = crate::plane::workspace::Viewer { role: b.role, agent_id: &b.agent_id, has_project_token: false };
    let w = plane.workspace_of(Some(&b.project_id), viewer);
    let alerts = || -> Value {
        let items = w["drift"]["items"].as_array().cloned().unwrap_or_default();
        Value::Array(items.into_iter().map(|d| json!({"severity": d["severity"], "kind": d["kind"], "mount_path": d["mount_path"], "message": d["message"]})).collect())
    };
    let bound = || plane.agents_bound_to(&b.project_id);
    let value = match g {
        Generated::View => json!({
            "agent_id": b.agent_id, "project_id": b.project_id,
            "show_debug": b.role == Role::Admin || b.agent_id == MOTHER_AGENT,
            "nodes": [], "visible_agents": bound(),
            "project_links": [format!("/projects/{}", b.project_id)],
        }),
        Generated::WorkspaceStatus => w.clone(),
        Generated::Availability => w["availability"].clone(),
        Generated::Health => {
            let missing = w["availability"]["missing"].as_u64().unwrap_or(0);
            let state = if missing > 0 { "degraded" } else { "healthy" };
            json!({"state": state, "availability": w["availability"], "drift_count": w["drift"]["count"],
                   "reconcile_state": w["reconcile_state"], "queue_depth": w["queue_depth"]})
        }
        Generated::Alerts => alerts(),
        // Rendered by `Namespace::refresh`, which has the runtime.
        Generated::Job(_) | Generated::History => Value::Null,
        Generated::ProjectMeta(m) => match m {
            ProjectMeta::Topology => {
                json!({"project_id": b.project_id, "nodes": [], "mounts": w["desired_mounts"], "agents": bound()})
            }
            ProjectMeta::Nodes => json!({"nodes": []}),
            ProjectMeta::Agents => json!({"agents": bound()}),
            ProjectMeta::Sources => json!({"sources": []}),
            ProjectMeta::Contracts => json!({"contracts": []}),
            ProjectMeta::Paths => {
                json!({"workspace_root": w["workspace_root"], "fs": format!("/projects/{}/fs", b.project_id),
                "nodes": format!("/projects/{}/nodes", b.project_id), "agents": format!("/projects/{}/agents", b.project_id),
                "meta": format!("/projects/{}/meta", b.project_id)})
            }
            ProjectMeta::Summary => {
                let state = plane.lock();
                let p = state.projects.get(&b.project_id);
                json!({"project_id": b.project_id, "name": p.map(|p| p.record.name.clone()),
                       "vision": p.map(|p| p.record.vision.clone()), "status": p.map(|p| p.record.status.clone()),
                       "mount_count": p.map_or(0, |p| p.record.mounts.len()),
                       "agent_count": state.bindings.values().filter(|v| **v == b.project_id).count()})
            }
            ProjectMeta::Mounts => w["mounts"].clone(),
            ProjectMeta::DesiredMounts => w["desired_mounts"].clone(),
            ProjectMeta::ActualMounts => w["actual_mounts"].clone(),
            ProjectMeta::Drift => w["drift"].clone(),
            ProjectMeta::Reconcile => {
                json!({"reconcile_state": w["reconcile_state"], "last_reconcile_ms": w["last_reconcile_ms"],
                "last_success_ms": w["last_success_ms"], "last_error": w["last_error"], "queue_depth": w["queue_depth"]})
            }
        },
    };
    value.to_string().into_bytes()
}
