//! Bearer-token roles and the op-level role and connect-gate tables (spec §4.3, §6).
//!
//! These tables are the first gate a control op passes: whether the connection's role may run
//! the op at all, and whether the op may run while the connection still has to choose a
//! project. They look only at the role and the op name; whether the gate is actually set, and
//! everything an op does after it is admitted, belong to the gateway and the other modules.
//! This module must never widen what a `user` token may run.

use serde::{Deserialize, Serialize};

use crate::bare_op;

/// The role a bearer token grants for the lifetime of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full control-plane access; bypasses project access policies.
    Admin,
    /// Restricted access: no admin-only ops, no `mother` agent, no `system` project.
    User,
}

impl Role {
    /// The wire name (`"admin"` or `"user"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// Whether this is the admin role.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Admin)
    }
}

/// Ops the spec reserves to admin (§6). A `user` token is refused with `forbidden`, except for
/// the ops also in [`OPS_AUTHORISED_BY_THEIR_CREDENTIAL`].
const ADMIN_ONLY_OPS: [&str; 15] = [
    "metrics",
    "auth_status",
    "auth_rotate",
    "node_invite_create",
    "node_join_pending_list",
    "node_join_approve",
    "node_join_deny",
    "node_join",
    "node_lease_refresh",
    "node_service_upsert",
    "node_service_get",
    "node_list",
    "node_get",
    "node_delete",
    "audit_tail",
];

/// Ops authorised by the credential they carry rather than by the bearer token's role: the
/// invite token (`node_join`) or the node's id and secret (the other two). The secrets are
/// 128-bit random values compared as SHA-256 digests in constant time, so guessing one over
/// the control channel is hopeless without a rate limit (2^127 tries on average).
///
/// `node_delete` also checks the node secret but stays admin-only: removing a node and its
/// mounts is an operator's decision. `node_join_request` is open to every role already (spec),
/// and its approval stays with the operator.
const OPS_AUTHORISED_BY_THEIR_CREDENTIAL: [&str; 3] = ["node_join", "node_lease_refresh", "node_service_upsert"];

/// Ops that let a gated connection negotiate, look around and pick a binding (spec §4.3).
const OPS_ALLOWED_WHILE_GATED: [&str; 9] = [
    "version",
    "connect",
    "session_attach",
    "session_restore",
    "session_history",
    "agent_list",
    "agent_get",
    "project_list",
    "project_get",
];

/// Whether `op` is reserved to the admin role.
///
/// `op` is the control op name without the `control.` prefix (e.g. `"metrics"`); the
/// prefixed form is accepted as well.
pub fn is_admin_only(op: &str) -> bool {
    ADMIN_ONLY_OPS.contains(&bare_op(op))
}

/// Whether `op` is authorised by the credential in its payload, whatever the role (see
/// [`OPS_AUTHORISED_BY_THEIR_CREDENTIAL`]). The gateway must check that credential before the
/// op changes anything.
pub fn is_authorised_by_its_credential(op: &str) -> bool {
    OPS_AUTHORISED_BY_THEIR_CREDENTIAL.contains(&bare_op(op))
}

/// Whether `op` still runs while the connection's connect gate is set: the spec's list, and
/// the ops authorised by their credential (they never use the connection's binding, and a node
/// pairs with a gateway that has no project yet).
///
/// `op` is the control op name without the `control.` prefix; the prefixed form is accepted
/// as well.
pub fn allowed_while_gated(op: &str) -> bool {
    OPS_ALLOWED_WHILE_GATED.contains(&bare_op(op)) || is_authorised_by_its_credential(op)
}

/// Whether `role` may run `op` at all: false only for the user role and an admin-only op
/// that is not authorised by its own credential.
pub fn may_run(role: Role, op: &str) -> bool {
    role.is_admin() || !is_admin_only(op) || is_authorised_by_its_credential(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every control type name of spec §3.4 with (admin_only, allowed_while_gated), as the
    /// spec has them; the credential-authorised ops are the one deviation.
    const ALL_CONTROL_OPS: [(&str, bool, bool); 51] = [
        ("version", false, true),
        ("version_ack", false, false),
        ("connect", false, true),
        ("connect_ack", false, false),
        ("ping", false, false),
        ("pong", false, false),
        ("metrics", true, false),
        ("error", false, false),
        ("session_attach", false, true),
        ("session_status", false, false),
        ("session_resume", false, false),
        ("session_list", false, false),
        ("session_close", false, false),
        ("session_restore", false, true),
        ("session_history", false, true),
        ("debug_subscribe", false, false),
        ("debug_unsubscribe", false, false),
        ("auth_status", true, false),
        ("auth_rotate", true, false),
        ("node_invite_create", true, false),
        ("node_join", true, false),
        ("node_join_request", false, false),
        ("node_join_pending_list", true, false),
        ("node_join_approve", true, false),
        ("node_join_deny", true, false),
        ("node_lease_refresh", true, false),
        ("node_service_upsert", true, false),
        ("node_service_get", true, false),
        ("node_service_watch", false, false),
        ("node_service_unwatch", false, false),
        ("node_service_event", false, false),
        ("agent_list", false, true),
        ("agent_get", false, true),
        ("node_list", true, false),
        ("node_get", true, false),
        ("node_delete", true, false),
        ("project_create", false, false),
        ("project_update", false, false),
        ("project_delete", false, false),
        ("project_list", false, true),
        ("project_get", false, true),
        ("project_activate", false, false),
        ("project_up", false, false),
        ("project_mount_set", false, false),
        ("project_mount_remove", false, false),
        ("project_mount_list", false, false),
        ("project_token_rotate", false, false),
        ("project_token_revoke", false, false),
        ("workspace_status", false, false),
        ("reconcile_status", false, false),
        ("audit_tail", true, false),
    ];

    #[test]
    fn role_names_and_admin_flag() {
        for (role, name, admin) in [(Role::Admin, "admin", true), (Role::User, "user", false)] {
            assert_eq!(role.as_str(), name);
            assert_eq!(role.is_admin(), admin);
        }
    }

    #[test]
    fn role_serde_uses_wire_names() {
        for role in [Role::Admin, Role::User] {
            let json = serde_json::to_value(role).unwrap();
            assert_eq!(json, serde_json::json!(role.as_str()));
            assert_eq!(serde_json::from_value::<Role>(json).unwrap(), role);
        }
        for bad in ["Admin", "ADMIN", "root", ""] {
            assert!(serde_json::from_value::<Role>(serde_json::json!(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn op_tables_match_spec_for_every_control_op() {
        for (op, admin_only, gated_ok) in ALL_CONTROL_OPS {
            let own_credential = is_authorised_by_its_credential(op);
            assert_eq!(is_admin_only(op), admin_only, "is_admin_only({op})");
            assert_eq!(allowed_while_gated(op), gated_ok || own_credential, "allowed_while_gated({op})");
            assert!(may_run(Role::Admin, op), "admin may run {op}");
            assert_eq!(may_run(Role::User, op), !admin_only || own_credential, "user may run {op}");
        }
    }

    #[test]
    fn only_the_three_node_credential_ops_are_opened_to_user() {
        let opened: Vec<&str> = ALL_CONTROL_OPS
            .iter()
            .map(|(op, ..)| *op)
            .filter(|op| is_admin_only(op) && may_run(Role::User, op))
            .collect();
        assert_eq!(opened, ["node_join", "node_lease_refresh", "node_service_upsert"]);
        for op in ["node_delete", "node_invite_create", "node_join_approve", "node_list", "metrics", "auth_rotate"] {
            assert!(!may_run(Role::User, op), "user must not run {op}");
        }
    }

    #[test]
    fn tables_name_only_known_ops() {
        let known = |op: &str| ALL_CONTROL_OPS.iter().any(|(name, _, _)| *name == op);
        for op in ADMIN_ONLY_OPS.iter().chain(&OPS_ALLOWED_WHILE_GATED).chain(&OPS_AUTHORISED_BY_THEIR_CREDENTIAL) {
            assert!(known(op), "{op} is not a spec §3.4 op");
        }
    }

    #[test]
    fn prefixed_names_get_the_same_answer() {
        for (op, admin_only, _) in ALL_CONTROL_OPS {
            let prefixed = format!("control.{op}");
            assert_eq!(is_admin_only(&prefixed), admin_only, "{prefixed}");
            assert_eq!(allowed_while_gated(&prefixed), allowed_while_gated(op), "{prefixed}");
            assert_eq!(may_run(Role::User, &prefixed), may_run(Role::User, op), "{prefixed}");
        }
    }

    #[test]
    fn unknown_or_malformed_names_are_neither_admin_only_nor_gate_exempt() {
        for op in ["", "METRICS", " metrics", "metrics ", "acheron.t_version", "control.", "nope"] {
            assert!(!is_admin_only(op), "{op:?}");
            assert!(!allowed_while_gated(op), "{op:?}");
            assert!(may_run(Role::User, op), "{op:?}");
        }
    }
}
