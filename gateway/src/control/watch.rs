//! `node_service_watch` / `node_service_unwatch` of one connection (spec unified-v2 §6.5).
//!
//! The shared part (retained events, subscriber slots, counters) is
//! [`crate::plane::nodes::watch::WatchHub`]; this module applies the role gates, replays what
//! the caller may see *before* the ack (as the original does), and hands the new subscription
//! to the connection loop, which filters each live event by the same visibility rule.

use serde_json::{Value, json};
use spiderweb_policy::Role;
use spiderweb_policy::session::SYSTEM_PROJECT;
use spiderweb_proto::codes::control as code;

use super::ConnSession;
use crate::connection::Outbox;
use crate::plane::args::Args;
use crate::plane::{ControlPlane, OpError, OpResult};

/// What the connection loop must do with its subscription after a request.
pub enum WatchChange {
    Subscribe(crate::plane::nodes::watch::Subscription),
    Unsubscribe,
}

/// Whether the connection may see catalog events of `node_id`: admins all; users only nodes
/// mounted in their bound project, with `observe` access to it.
pub fn event_visible(plane: &ControlPlane, conn: &ConnSession, node_id: &str) -> bool {
    if conn.role == Role::Admin {
        return true;
    }
    let b = conn.binding();
    plane.may_observe_node(&b.project_id, &b.agent_id, b.project_token.as_deref(), node_id)
}

pub fn watch(plane: &ControlPlane, conn: &mut ConnSession, payload: Option<&Value>, out: &mut Outbox) -> OpResult {
    let settings = plane.watch.settings;
    let allowed = if conn.role == Role::Admin { settings.allow_admin } else { settings.allow_user };
    if !allowed {
        return Err(OpError::forbidden(format!("node service watch is disabled for {} role", conn.role.as_str())));
    }
    let args = Args::of(payload)?;
    let node_id = args.optional_id("node_id", 128)?;
    let replay_limit = args.optional_u64("replay_limit")?.unwrap_or(25);
    if conn.role != Role::Admin {
        let b = conn.binding();
        if conn.gate.is_some() || b.project_id == SYSTEM_PROJECT {
            return Err(OpError::forbidden("watch requires a project-scoped session binding"));
        }
        if !plane.may_observe(&b.project_id, &b.agent_id, b.project_token.as_deref()) {
            return Err(OpError::forbidden("observe access denied for active project"));
        }
    }
    // Re-watch replaces: the old subscription's slot is freed before a new one is taken.
    conn.node_watch = Some(WatchChange::Unsubscribe);
    let subscription = plane.watch.subscribe(node_id.map(str::to_owned)).ok_or_else(|| {
        OpError::new(
            code::QUEUE_SATURATED,
            format!("too many node service watchers ({})", crate::plane::nodes::watch::MAX_SUBSCRIBERS),
        )
    })?;
    let limit = replay_limit.min(settings.replay_max);
    let replayed = plane.watch.replay(limit, |e| subscription.matches(e) && event_visible(plane, conn, &e.node_id));
    for event in &replayed {
        out.push("control.node_service_event", event.frame.clone());
    }
    conn.node_watch = Some(WatchChange::Subscribe(subscription));
    let mut ack = json!({"enabled": true});
    if let Some(node_id) = node_id {
        ack["node_id"] = json!(node_id);
    }
    ack["replay_limit"] = json!(limit);
    ack["replayed"] = json!(replayed.len());
    Ok(ack)
}

pub fn unwatch(conn: &mut ConnSession) -> Value {
    conn.node_watch = Some(WatchChange::Unsubscribe);
    json!({"enabled": false})
}
