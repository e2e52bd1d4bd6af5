//! Agents: the built-in `mother` and the ones an operator defines in `agents_dir`.
//!
//! Each `<agents_dir>/<id>/agent.json` (`name`, `description`, `is_default`, `capabilities`)
//! is read at start-up; a broken file is reported and skipped, never fatal, so one bad agent
//! cannot keep the gateway down. Capabilities are limited to the four the spec knows.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};
use spiderweb_policy::session::{MOTHER_AGENT, valid_agent_id};
use spiderweb_proto::codes::control as code;

use super::args::Args;
use super::{OpError, OpResult, PlaneState};
use crate::store::{AgentRecord, Store, StoreError};

const KNOWN_CAPABILITIES: [&str; 4] = ["chat", "code", "plan", "research"];
/// An agents directory with more entries than this is read only this far.
const MAX_AGENTS_SCANNED: usize = 1024;
const MAX_AGENT_FILE_BYTES: u64 = 64 * 1024;

fn mother() -> AgentRecord {
    AgentRecord {
        id: MOTHER_AGENT.into(),
        name: "Mother".into(),
        description: "System agent: provisions projects and agents".into(),
        is_default: true,
        capabilities: ["chat", "plan", "code", "research"].map(String::from).to_vec(),
        identity_loaded: true,
        needs_hatching: false,
    }
}

#[derive(Deserialize)]
struct AgentFile {
    name: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    is_default: bool,
    #[serde(default)]
    capabilities: Vec<String>,
}

pub(super) fn install_builtin_and_scan(
    state: &mut PlaneState,
    store: &dyn Store,
    dir: &Path,
) -> Result<(), StoreError> {
    let mut found = vec![mother()];
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten().take(MAX_AGENTS_SCANNED) {
                let id = entry.file_name().to_string_lossy().into_owned();
                if id == MOTHER_AGENT || !entry.path().join("agent.json").exists() {
                    continue;
                }
                match read_agent(&entry.path().join("agent.json"), &id) {
                    Ok(agent) => found.push(agent),
                    Err(why) => tracing::warn!(agent = %id, "skipping agent definition: {why}"),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), "cannot read agents directory: {e}"),
    }
    for agent in found {
        if state.agents.get(&agent.id) != Some(&agent) {
            store.upsert_agent(&agent)?;
            state.agents.insert(agent.id.clone(), agent);
        }
    }
    Ok(())
}

fn read_agent(path: &Path, id: &str) -> Result<AgentRecord, String> {
    if !valid_agent_id(id) {
        return Err("directory name is not a valid agent id ([A-Za-z0-9_-]{1,64})".into());
    }
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_AGENT_FILE_BYTES {
        return Err(format!("agent.json is larger than {MAX_AGENT_FILE_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file: AgentFile = serde_json::from_str(&text).map_err(|e| format!("agent.json: {e}"))?;
    let capabilities: Vec<String> =
        file.capabilities.into_iter().filter(|c| KNOWN_CAPABILITIES.contains(&c.as_str())).collect();
    Ok(AgentRecord {
        id: id.into(),
        name: file.name.filter(|n| !n.is_empty()).unwrap_or_else(|| id.into()),
        description: file.description,
        is_default: file.is_default,
        capabilities: if capabilities.is_empty() { vec!["chat".into()] } else { capabilities },
        identity_loaded: true,
        needs_hatching: false,
    })
}

pub fn agent_json(a: &AgentRecord) -> Value {
    json!({
        "id": a.id, "name": a.name, "description": a.description, "is_default": a.is_default,
        "identity_loaded": a.identity_loaded, "needs_hatching": a.needs_hatching,
        "capabilities": a.capabilities,
    })
}

pub fn list(state: &PlaneState) -> OpResult {
    Ok(json!({"agents": state.agents.values().map(agent_json).collect::<Vec<_>>()}))
}

pub fn get(state: &PlaneState, payload: Option<&Value>) -> OpResult {
    let args = Args::of(payload)?;
    let id = args.required_str("agent_id")?;
    if !valid_agent_id(id) {
        return Err(OpError::invalid_payload());
    }
    let agent = state.agents.get(id).ok_or_else(|| OpError::new(code::AGENT_NOT_FOUND, "AgentNotFound"))?;
    Ok(json!({"agent": agent_json(agent)}))
}
