//! Workspace topology changes, pushed to connections that called `control.debug_subscribe`.
//!
//! The original's own mount client subscribes and waits for these pushes (spec README quirk
//! 6). After every op that can change a workspace's topology the control channel publishes a
//! [`TopologyChange`] on one broadcast channel; each subscribed connection renders it as
//! legacy `debug.event` frames with request `workspace-topology`:
//! - `control.workspace_topology` — something changed (`reason` = the op);
//! - `control.workspace_topology_delta` — the workspace status of the connection's binding;
//! - `control.workspace_availability` — only when the availability snapshot changed.
//!
//! A subscriber that falls behind the channel's capacity gets one `workspace_topology`
//! event with reason `resync` instead of the ones it missed: it should re-read the status.

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// Ops after which topology events are published (spec §6.9).
pub const TOPOLOGY_OPS: &[&str] = &[
    "node_join_request",
    "node_join_approve",
    "node_join_deny",
    "node_join",
    "node_delete",
    "project_create",
    "project_update",
    "project_delete",
    "project_mount_set",
    "project_mount_remove",
    "project_activate",
    "project_up",
];

/// Changes a slow subscriber may fall behind before it is told to resync.
const CAPACITY: usize = 256;
const REQUEST: &str = "workspace-topology";

#[derive(Clone, Debug)]
pub struct TopologyChange {
    pub reason: &'static str,
    pub ts_ms: i64,
    pub availability_before: Value,
    pub availability_after: Value,
}

pub struct TopologyFeed {
    sender: broadcast::Sender<TopologyChange>,
}

impl Default for TopologyFeed {
    fn default() -> Self {
        TopologyFeed { sender: broadcast::Sender::new(CAPACITY) }
    }
}

impl TopologyFeed {
    pub fn publish(&self, change: TopologyChange) {
        // No subscriber is not an error: nobody asked.
        let _ = self.sender.send(change);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<TopologyChange> {
        self.sender.subscribe()
    }
}

/// The frames one change becomes for a subscriber bound to `agent_id`, whose workspace
/// status is now `status`.
pub fn frames(change: &TopologyChange, agent_id: &str, status: Value) -> Vec<String> {
    let TopologyChange { reason, ts_ms, .. } = change;
    let mut frames = vec![
        debug_event(
            "control.workspace_topology",
            json!({"event": "workspace_topology_changed", "reason": reason, "ts_ms": ts_ms}),
            *ts_ms,
        ),
        debug_event(
            "control.workspace_topology_delta",
            json!({"event": "workspace_topology_delta", "reason": reason, "agent_id": agent_id,
                   "status": status, "ts_ms": ts_ms}),
            *ts_ms,
        ),
    ];
    if change.availability_before != change.availability_after {
        frames.push(debug_event(
            "control.workspace_availability",
            json!({"event": "workspace_availability_changed", "reason": reason,
                   "before": change.availability_before, "after": change.availability_after, "ts_ms": ts_ms}),
            *ts_ms,
        ));
    }
    frames
}

/// What a subscriber that missed changes receives instead of them.
pub fn resync_frame(ts_ms: i64) -> String {
    debug_event(
        "control.workspace_topology",
        json!({"event": "workspace_topology_changed", "reason": "resync", "ts_ms": ts_ms}),
        ts_ms,
    )
}

fn debug_event(category: &str, payload: Value, ts_ms: i64) -> String {
    json!({"type": "debug.event", "request": REQUEST, "category": category, "payload": payload, "timestamp": ts_ms})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(before: Value, after: Value) -> TopologyChange {
        TopologyChange {
            reason: "project_mount_set",
            ts_ms: 42,
            availability_before: before,
            availability_after: after,
        }
    }

    fn parsed(frames: Vec<String>) -> Vec<Value> {
        frames.iter().map(|f| serde_json::from_str(f).unwrap()).collect()
    }

    #[test]
    fn availability_is_reported_only_when_it_changed() {
        let same = parsed(frames(&change(json!({"m": 1}), json!({"m": 1})), "a", json!({})));
        let categories: Vec<&Value> = same.iter().map(|f| &f["category"]).collect();
        assert_eq!(categories, [&json!("control.workspace_topology"), &json!("control.workspace_topology_delta")]);

        let moved = parsed(frames(&change(json!({"m": 1}), json!({"m": 2})), "a", json!({"project_id": "p"})));
        assert_eq!(moved.len(), 3);
        assert_eq!(moved[1]["payload"]["status"], json!({"project_id": "p"}));
        let availability = &moved[2];
        assert_eq!(availability["category"], json!("control.workspace_availability"));
        assert_eq!(availability["request"], json!("workspace-topology"));
        assert_eq!(
            availability["payload"],
            json!({"event": "workspace_availability_changed", "reason": "project_mount_set",
                   "before": {"m": 1}, "after": {"m": 2}, "ts_ms": 42})
        );
        assert_eq!(availability["timestamp"], json!(42));
    }
}
