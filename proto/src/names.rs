//! The closed sets of message type names (spec `unified-v2.md` §3.4, `acheron-worldfs.md` §3,
//! `fs-node.md` §2).
//!
//! A name outside these sets is `UnsupportedType` at parse time, so the rest of the server only
//! ever sees names listed here. Legacy names (`session.send`, `acheron.fs_t_*`, …) are unknown.

/// `control.` + each of these.
pub const CONTROL_OPS: &[&str] = &[
    "version",
    "version_ack",
    "connect",
    "connect_ack",
    "ping",
    "pong",
    "metrics",
    "error",
    "session_attach",
    "session_status",
    "session_resume",
    "session_list",
    "session_close",
    "session_restore",
    "session_history",
    "debug_subscribe",
    "debug_unsubscribe",
    "auth_status",
    "auth_rotate",
    "node_invite_create",
    "node_join",
    "node_join_request",
    "node_join_pending_list",
    "node_join_approve",
    "node_join_deny",
    "node_lease_refresh",
    "node_service_upsert",
    "node_service_get",
    "node_service_watch",
    "node_service_unwatch",
    "node_service_event",
    "agent_list",
    "agent_get",
    "node_list",
    "node_get",
    "node_delete",
    "project_create",
    "project_update",
    "project_delete",
    "project_list",
    "project_get",
    "project_activate",
    "project_up",
    "project_mount_set",
    "project_mount_remove",
    "project_mount_list",
    "project_token_rotate",
    "project_token_revoke",
    "workspace_status",
    "reconcile_status",
    "audit_tail",
];

/// Operations of the world filesystem on `/` (requests; replies are `r_<op>`).
pub const ACHERON_RUNTIME_OPS: &[&str] =
    &["version", "attach", "walk", "open", "read", "write", "stat", "clunk", "flush"];

/// Operations of the node filesystem protocol (`t_fs_<op>` / `r_fs_<op>`).
pub const ACHERON_FS_OPS: &[&str] = &[
    "hello",
    "exports",
    "lookup",
    "getattr",
    "readdirp",
    "open",
    "read",
    "write",
    "close",
    "create",
    "mkdir",
    "rmdir",
    "unlink",
    "rename",
    "truncate",
    "statfs",
    "lock",
    "symlink",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
];

/// Whether `name` (without the `control.` prefix) is a known control type.
pub fn is_control_name(name: &str) -> bool {
    CONTROL_OPS.contains(&name)
}

/// Whether `name` (without the `acheron.` prefix) is a known acheron type.
pub fn is_acheron_name(name: &str) -> bool {
    if matches!(name, "error" | "err_fs" | "e_fs_inval" | "e_fs_inval_dir") {
        return true;
    }
    let Some((dir, op)) = name.split_once('_') else {
        return false;
    };
    if dir != "t" && dir != "r" {
        return false;
    }
    match op.strip_prefix("fs_") {
        Some(fs_op) => ACHERON_FS_OPS.contains(&fs_op),
        None => ACHERON_RUNTIME_OPS.contains(&op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acheron_names() {
        for ok in ["t_version", "r_walk", "t_fs_hello", "r_fs_removexattr", "error", "err_fs", "e_fs_inval"] {
            assert!(is_acheron_name(ok), "{ok}");
        }
        for bad in ["t_bogus", "fs_t_hello", "x_walk", "t_fs_walk", "", "t_", "e_fs_other"] {
            assert!(!is_acheron_name(bad), "{bad}");
        }
    }

    #[test]
    fn control_names() {
        assert!(is_control_name("ping"));
        assert!(!is_control_name("session.send"));
    }
}
