//! `control.version` and `control.connect` (spec §4).
//!
//! Version negotiation is the only op allowed first; a bad version payload closes the
//! connection. `connect` reports the binding chosen when the socket was accepted and, for a
//! user with nothing to work on yet, the gate that limits what it may call.

use serde_json::{Value, json};
use spiderweb_policy::Role;
use spiderweb_policy::session::{MOTHER_AGENT, SYSTEM_PROJECT};
use spiderweb_proto::Envelope;
use spiderweb_proto::codes::control as code;

use super::ConnSession;
use crate::connection::Outbox;
use crate::plane::{ControlPlane, OpError};

pub const PROTOCOL: &str = "unified-v2";

pub fn version(conn: &mut ConnSession, env: &Envelope, out: &mut Outbox) -> Result<Value, OpError> {
    let problem = match &env.payload {
        None => Some("MissingField"),
        Some(Value::Object(map)) => match map.get("protocol") {
            None => Some("MissingField"),
            Some(Value::String(p)) if p == PROTOCOL => None,
            Some(Value::String(_)) => Some("ProtocolMismatch"),
            Some(_) => Some("InvalidType"),
        },
        Some(_) => Some("InvalidType"),
    };
    if let Some(name) = problem {
        out.close_policy("protocol version mismatch");
        return Err(OpError::new(code::PROTOCOL_MISMATCH, name));
    }
    conn.control_versioned = true;
    Ok(
        json!({"protocol": PROTOCOL, "fsrpc_runtime": "acheron-1", "fsrpc_node": "unified-v2-fs", "fsrpc_node_proto": 2}),
    )
}

pub fn connect_ack(plane: &ControlPlane, conn: &ConnSession) -> Value {
    let binding = conn.binding();
    let bootstrap = plane.bootstrap_only();
    let admin = conn.role == Role::Admin;
    let (setup_required, setup_message, vision) =
        setup_state(plane, &binding.agent_id, &binding.project_id, admin, bootstrap);
    json!({
        "agent_id": binding.agent_id,
        "project_id": binding.project_id,
        "session": conn.active_key(),
        "protocol": PROTOCOL,
        "role": conn.role.as_str(),
        "bootstrap_only": bootstrap,
        "bootstrap_message": (admin && bootstrap).then_some(
            "Bootstrap required: chat with Mother to define the first project vision and first non-system agent."),
        "project_setup_required": setup_required,
        "project_setup_message": setup_message,
        "project_setup_project_id": binding.project_id,
        "project_setup_project_vision": vision,
        "requires_session_attach": conn.gate.is_some(),
        "connect_gate": conn.gate.map(|g| json!({"code": g.code, "message": g.message})),
    })
}

fn setup_state(
    plane: &ControlPlane,
    agent: &str,
    project_id: &str,
    admin: bool,
    bootstrap: bool,
) -> (bool, Option<String>, Option<String>) {
    if project_id == SYSTEM_PROJECT {
        if admin && bootstrap {
            let msg =
                "Project setup required: ask Mother for the first project name, vision, and first non-system agent.";
            return (true, Some(msg.into()), None);
        }
        return (false, None, None);
    }
    let state = plane.lock();
    let Some(project) = state.projects.get(project_id) else { return (false, None, None) };
    let vision = project.record.vision.clone();
    let has_agent = state.bindings.iter().any(|(a, p)| p == project_id && a != MOTHER_AGENT) || agent != MOTHER_AGENT;
    let reason = if !has_agent {
        Some("attach a non-system agent, then ask Mother to confirm setup details.")
    } else if project.record.mounts.is_empty() {
        Some("no workspace mounts are configured yet.")
    } else if vision.is_empty() {
        Some("project vision is missing.")
    } else {
        None
    };
    match reason {
        Some(r) => (true, Some(format!("Project setup required for {project_id}: {r}")), Some(vision)),
        None => (false, None, Some(vision)),
    }
}
