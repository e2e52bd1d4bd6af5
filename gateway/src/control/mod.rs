//! The control channel on `/`: one function per `control.*` operation, per connection.
//!
//! [`handle`] enforces, in order, the rules every op shares: version negotiated first (spec
//! §4.1), admin-only ops (§6), the connect gate (§4.3), correlation ids and scope tokens for
//! mutations (§5); then it dispatches. The node ops authorised by the credential they carry
//! (`spiderweb_policy::role`, a deviation from §6) pass the role check and the gate for a
//! user too; their credential is checked by the op itself, the same way for every role, and
//! their refusals (and every pairing) are audited. Shared state lives in the [`ControlPlane`]; what belongs
//! to one socket (its session bindings and gate) lives in [`session::ConnSession`].

pub mod handshake;
pub mod session;
pub mod watch;

use serde_json::{Value, json};
use spiderweb_policy::scope::{self, Scope, ScopeTokens, TokenCheck};
use spiderweb_policy::{Role, role};
use spiderweb_proto::Envelope;
use spiderweb_proto::codes::control as code;
use spiderweb_proto::reply::{self, Correlation};

use crate::connection::Outbox;
use crate::events::topology::{TOPOLOGY_OPS, TopologyChange};
use crate::plane::{Caller, OpError, OpResult, audit::Entry};
use crate::server::Shared;
pub use session::ConnSession;

/// Ops whose errors carry `error.correlation_id` (spec §3.3).
fn is_control_plane_op(op: &str) -> bool {
    op.starts_with("agent_")
        || (op.starts_with("node_") && op != "node_service_watch" && op != "node_service_unwatch")
        || op.starts_with("project_")
        || matches!(op, "workspace_status" | "reconcile_status" | "audit_tail")
}

/// Handles one parsed control frame, pushing its reply (and any close) to `out`.
pub fn handle(shared: &Shared, conn: &mut ConnSession, env: &Envelope, out: &mut Outbox) {
    let op = env.op.as_str();
    let id = env.id.as_deref();
    if !conn.control_versioned && op != "version" {
        out.control_error(id, code::PROTOCOL_MISMATCH, "control.version must be negotiated first", Correlation::Omit);
        out.close_policy("control.version must be negotiated first");
        return;
    }
    let correlation = if is_control_plane_op(op) { Correlation::Include(env.correlation()) } else { Correlation::Omit };
    if is_control_plane_op(op) {
        reap_expired_nodes(shared);
    }
    let topology_before = TOPOLOGY_OPS.contains(&op).then(|| shared.plane.availability_snapshot());
    let result = checked(shared, conn, env, out);
    if let (Some(availability_before), Ok(_)) = (topology_before, &result) {
        shared.topology.publish(TopologyChange {
            reason: TOPOLOGY_OPS.iter().find(|t| **t == op).copied().unwrap_or("unknown"),
            ts_ms: crate::plane::now_ms(),
            availability_before,
            availability_after: shared.plane.availability_snapshot(),
        });
    }
    match result {
        Ok(Some(payload)) => {
            let kind = match op {
                "version" => "control.version_ack",
                "connect" => "control.connect_ack",
                "ping" => "control.pong",
                _ => {
                    return out.push_owned(
                        format!("control.{op}"),
                        reply::control_ok(&format!("control.{op}"), id, &payload),
                    );
                }
            };
            out.push(kind, reply::control_ok(kind, id, &payload));
        }
        Ok(None) => {}
        Err(e) => out.control_error(id, e.code, &e.message, correlation),
    }
}

/// Spec §6.6: every control-plane call first reaps nodes whose lease expired (with their
/// mounts); their tunnels close and subscribers see the topology change.
fn reap_expired_nodes(shared: &Shared) {
    if !shared.plane.has_expired_nodes() {
        return;
    }
    let availability_before = shared.plane.availability_snapshot();
    let reaped = shared.plane.reap_expired_nodes();
    if reaped.is_empty() {
        return;
    }
    for node_id in &reaped {
        shared.tunnels.disconnect(node_id);
    }
    shared.topology.publish(TopologyChange {
        reason: "node_lease_reaped",
        ts_ms: crate::plane::now_ms(),
        availability_before,
        availability_after: shared.plane.availability_snapshot(),
    });
}

/// The shared checks, then the op. `Ok(None)` means the op already wrote its own frames.
fn checked(
    shared: &Shared,
    conn: &mut ConnSession,
    env: &Envelope,
    out: &mut Outbox,
) -> Result<Option<Value>, OpError> {
    let op = env.op.as_str();
    let plane = &shared.plane;
    if op == "version" {
        return handshake::version(conn, env, out).map(Some);
    }
    if !role::may_run(conn.role, op) {
        plane.audit(Entry {
            agent_id: &conn.binding().agent_id,
            control_type: &format!("control.{op}"),
            scope: "none",
            correlation_id: env.correlation(),
            error_code: Some(code::FORBIDDEN),
        });
        return Err(OpError::forbidden("operation requires admin token"));
    }
    if let Some(gate) = conn.gate
        && !role::allowed_while_gated(op)
    {
        return Err(OpError::new(gate.code, gate.message));
    }
    let scope = scope::mutation_scope(op);
    if scope != Scope::None {
        let result = scoped(shared, conn, env, scope, out);
        plane.audit(Entry {
            agent_id: &conn.binding().agent_id,
            control_type: &format!("control.{op}"),
            scope: scope.as_str(),
            correlation_id: env.correlation(),
            error_code: result.as_ref().err().map(|e| e.code),
        });
        return result.map(Some);
    }
    let result = dispatch(shared, conn, env, out);
    if role::is_authorised_by_its_credential(op) {
        audit_credential_op(shared, conn, env, &result);
    }
    result
}

/// Records a node op authorised by its credential when it pairs a node or is refused, so an
/// operator sees who paired and every failed invite or secret (a periodic lease refresh that
/// succeeds is not worth a record).
fn audit_credential_op(shared: &Shared, conn: &ConnSession, env: &Envelope, result: &Result<Option<Value>, OpError>) {
    let error_code = result.as_ref().err().map(|e| e.code);
    if error_code.is_none() && env.op != "node_join" {
        return;
    }
    shared.plane.audit(Entry {
        agent_id: &conn.binding().agent_id,
        control_type: &format!("control.{}", env.op),
        scope: Scope::None.as_str(),
        correlation_id: env.correlation(),
        error_code,
    });
}

fn scoped(shared: &Shared, conn: &mut ConnSession, env: &Envelope, scope: Scope, out: &mut Outbox) -> OpResult {
    if env.correlation().is_none() {
        return Err(OpError::new(code::CORRELATION_REQUIRED, "missing correlation_id on mutating control operation"));
    }
    let payload = match &env.payload {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => return Err(OpError::invalid_payload()),
    };
    let digests = &shared.plane.scope_tokens;
    let check = |configured: &Option<crate::tokens::Digest>, key: &str| -> TokenCheck {
        let Some(expected) = configured else { return TokenCheck::NotConfigured };
        match payload.and_then(|p| p.get(key)) {
            None => TokenCheck::Absent,
            Some(Value::String(s)) if !s.is_empty() => {
                if crate::tokens::digests_equal(&crate::tokens::digest(s), expected) {
                    TokenCheck::Match
                } else {
                    TokenCheck::Mismatch
                }
            }
            Some(_) => TokenCheck::Invalid,
        }
    };
    let tokens = ScopeTokens {
        operator: check(&digests.operator, "operator_token"),
        project: check(&digests.project, "project_scope_token"),
        node: check(&digests.node, "node_scope_token"),
    };
    scope::check_scope_tokens(scope, &tokens).map_err(|d| OpError::new(d.code(), d.error_name()))?;
    dispatch(shared, conn, env, out).map(|v| v.unwrap_or(Value::Null))
}

fn dispatch(
    shared: &Shared,
    conn: &mut ConnSession,
    env: &Envelope,
    out: &mut Outbox,
) -> Result<Option<Value>, OpError> {
    let plane = &shared.plane;
    let payload = env.payload.as_ref();
    let binding = conn.binding().clone();
    let caller = Caller { role: conn.role, agent_id: &binding.agent_id, project_id: Some(&binding.project_id) };
    let value = match env.op.as_str() {
        "connect" => handshake::connect_ack(plane, conn),
        "ping" => json!({}),
        "metrics" => plane.metrics_json(),
        "auth_status" => {
            shared.plane.audit(Entry {
                agent_id: &binding.agent_id,
                control_type: "control.auth_status",
                scope: "none",
                correlation_id: env.correlation(),
                error_code: None,
            });
            auth_status(shared)
        }
        "auth_rotate" => auth_rotate(shared, conn, env)?,
        "debug_subscribe" | "debug_unsubscribe" => {
            let enabled = env.op == "debug_subscribe";
            conn.debug_subscribed = enabled;
            let kind = format!("control.{}", env.op);
            out.push_owned(kind.clone(), reply::control_ok(&kind, env.id.as_deref(), &json!({"enabled": enabled})));
            let legacy = json!({"type": "debug.event", "request": env.id.as_deref().unwrap_or("unknown"),
                                "category": "control.subscription", "payload": {"enabled": enabled},
                                "timestamp": crate::plane::now_ms()});
            out.push("debug.event", legacy.to_string());
            return Ok(None);
        }
        "agent_list" => crate::plane::agents::list(&plane.lock())?,
        "agent_get" => crate::plane::agents::get(&plane.lock(), payload)?,
        "session_attach" => session::attach(plane, conn, payload)?,
        "session_status" => session::status(conn, payload)?,
        "session_resume" => session::resume(plane, conn, payload)?,
        "session_list" => session::list(conn),
        "session_close" => session::close(conn, payload)?,
        "session_restore" => plane.session_restore(conn.role, payload)?,
        "session_history" => plane.session_history(conn.role, payload)?,
        "project_create" => plane.project_create(payload)?,
        "project_update" => plane.project_update(caller, payload)?,
        "project_delete" => {
            let v = plane.project_delete(caller, payload)?;
            conn.forget_project(v["project_id"].as_str().unwrap_or_default());
            v
        }
        "project_list" => plane.project_list()?,
        "project_get" => plane.project_get(caller, payload)?,
        "project_mount_set" => plane.project_mount_set(caller, payload)?,
        "project_mount_remove" => plane.project_mount_remove(caller, payload)?,
        "project_mount_list" => plane.project_mount_list(caller, payload)?,
        "project_token_rotate" => plane.project_token_rotate(caller, payload)?,
        "project_token_revoke" => plane.project_token_revoke(caller, payload)?,
        "project_activate" => session::activate(plane, conn, payload)?,
        "project_up" => session::project_up(plane, conn, payload)?,
        "workspace_status" => plane.workspace_status(caller, payload)?,
        "reconcile_status" => plane.reconcile_status(payload)?,
        "audit_tail" => plane.audit_tail(payload)?,
        "node_invite_create" => plane.node_invite_create(payload)?,
        "node_join" => plane.node_join(payload)?,
        "node_join_request" => plane.node_join_request(payload)?,
        "node_join_pending_list" => plane.node_join_pending_list()?,
        "node_join_approve" => plane.node_join_approve(payload)?,
        "node_join_deny" => plane.node_join_deny(payload)?,
        "node_lease_refresh" => plane.node_lease_refresh(payload)?,
        "node_list" => plane.node_list()?,
        "node_get" => plane.node_get(payload)?,
        "node_delete" => {
            let v = plane.node_delete(payload)?;
            shared.tunnels.disconnect(v["node_id"].as_str().unwrap_or_default());
            v
        }
        "node_service_upsert" => plane.node_service_upsert(payload)?,
        "node_service_get" => plane.node_service_get(payload)?,
        "node_service_watch" => watch::watch(plane, conn, payload, out)?,
        "node_service_unwatch" => watch::unwatch(conn),
        _ => return Err(OpError::new(code::UNSUPPORTED, "unsupported control operation")),
    };
    Ok(Some(value))
}

fn auth_status(shared: &Shared) -> Value {
    let tokens = shared.plane.tokens();
    let target =
        |role| shared.plane.last_target(role).map(|t| json!({"agent_id": t.agent_id, "project_id": t.project_id}));
    json!({
        "admin_token": tokens.token(Role::Admin),
        "user_token": tokens.token(Role::User),
        "path": tokens.path().display().to_string(),
        "admin_last_target": target(Role::Admin),
        "user_last_target": target(Role::User),
    })
}

fn auth_rotate(shared: &Shared, conn: &ConnSession, env: &Envelope) -> OpResult {
    let args = crate::plane::args::Args::of(env.payload.as_ref())?;
    let role = match args.raw("role") {
        None | Some(Value::Null) => return Err(OpError::new(code::MISSING_FIELD, "role is required")),
        Some(Value::String(r)) if r == "admin" => Role::Admin,
        Some(Value::String(r)) if r == "user" => Role::User,
        Some(_) => return Err(OpError::invalid_payload()),
    };
    let result = shared.plane.tokens().rotate(role, crate::plane::now_ms());
    shared.plane.audit(Entry {
        agent_id: &conn.binding().agent_id,
        control_type: "control.auth_rotate",
        scope: "none",
        correlation_id: env.correlation(),
        error_code: result.as_ref().err().map(|_| code::STORAGE_ERROR),
    });
    let token = result.map_err(|e| {
        tracing::error!(error = %e, "auth_rotate could not persist the new token; the old one stays valid");
        OpError::new(code::STORAGE_ERROR, "StorageError")
    })?;
    let digest = crate::plane::hex(&crate::tokens::digest(&token));
    if let Err(e) = shared.plane.store.put_role_token_hash(crate::plane::role_key(role), &digest) {
        tracing::error!(error = %e, "could not record the rotated token's digest");
    }
    tracing::info!(role = role.as_str(), "role token rotated");
    Ok(json!({"role": role.as_str(), "token": token}))
}
