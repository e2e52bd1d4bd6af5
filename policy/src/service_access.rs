//! Whether a non-admin session may see a node service (spec acheron-worldfs §8.3,
//! unified-v2 §6.9 mount visibility).
//!
//! A node advertises services with a `permissions` object; a mount whose node offers an
//! invoke-capable service covering the mount path is hidden from a user unless that
//! service's permissions admit the session. The decision is a pure function of the
//! service's JSON and two facts the gateway gathers (the role, and whether the session's
//! binding holds the project's active token); the gateway never interprets `permissions`
//! itself.

use serde_json::Value;

use crate::Role;

/// Whether `service` (a stored catalog entry) can be invoked: `capabilities.invoke` true,
/// or a non-empty `ops.invoke` / `ops.paths.invoke`.
pub fn is_invoke_capable(service: &Value) -> bool {
    let non_empty = |v: Option<&Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    service.pointer("/capabilities/invoke").and_then(Value::as_bool) == Some(true)
        || non_empty(service.pointer("/ops/invoke"))
        || non_empty(service.pointer("/ops/paths/invoke"))
}

/// Whether `service` names `mount_path` among its `mounts[].mount_path` or `endpoints`.
pub fn covers_path(service: &Value, mount_path: &str) -> bool {
    let in_mounts =
        service["mounts"].as_array().is_some_and(|ms| ms.iter().any(|m| m["mount_path"].as_str() == Some(mount_path)));
    let in_endpoints =
        service["endpoints"].as_array().is_some_and(|es| es.iter().any(|e| e.as_str() == Some(mount_path)));
    in_mounts || in_endpoints
}

/// §8.3: admins always; `require_project_token` (or `project_token_required`) needs the
/// binding's project token; an `allow_roles` array must contain `user`, `*` or `all`;
/// `default` `deny`/`deny-by-default` denies; otherwise allowed.
pub fn permits(role: Role, permissions: &Value, has_project_token: bool) -> bool {
    if role.is_admin() {
        return true;
    }
    let requires_token = ["require_project_token", "project_token_required"]
        .iter()
        .any(|k| permissions.get(*k).and_then(Value::as_bool) == Some(true));
    if requires_token && !has_project_token {
        return false;
    }
    if let Some(roles) = permissions.get("allow_roles").and_then(Value::as_array) {
        return roles.iter().any(|r| matches!(r.as_str(), Some("user" | "*" | "all")));
    }
    !matches!(permissions.get("default").and_then(Value::as_str), Some("deny" | "deny-by-default"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn invoke_capability_comes_from_capabilities_or_ops() {
        assert!(is_invoke_capable(&json!({"capabilities": {"invoke": true}})));
        assert!(is_invoke_capable(&json!({"ops": {"invoke": "control/invoke.json"}})));
        assert!(is_invoke_capable(&json!({"ops": {"paths": {"invoke": "x"}}})));
        assert!(!is_invoke_capable(&json!({"capabilities": {"invoke": false}, "ops": {"invoke": ""}})));
        assert!(!is_invoke_capable(&json!({"capabilities": {"rw": true}})));
    }

    #[test]
    fn covered_paths_are_mounts_and_endpoints() {
        let svc = json!({"endpoints": ["/nodes/n/fs"], "mounts": [{"mount_id": "m", "mount_path": "/src"}]});
        assert!(covers_path(&svc, "/src"));
        assert!(covers_path(&svc, "/nodes/n/fs"));
        assert!(!covers_path(&svc, "/src/sub"));
    }

    #[test]
    fn permission_table() {
        let cases = [
            (Role::Admin, json!({"default": "deny"}), false, true),
            (Role::User, json!({}), false, true),
            (Role::User, json!({"default": "deny"}), false, false),
            (Role::User, json!({"default": "deny-by-default"}), true, false),
            (Role::User, json!({"allow_roles": ["admin"]}), false, false),
            (Role::User, json!({"allow_roles": ["admin", "user"], "default": "deny"}), false, true),
            (Role::User, json!({"allow_roles": ["*"]}), false, true),
            (Role::User, json!({"allow_roles": ["all"]}), false, true),
            (Role::User, json!({"require_project_token": true}), false, false),
            (Role::User, json!({"project_token_required": true}), true, true),
        ];
        for (role, perms, token, expected) in cases {
            assert_eq!(permits(role, &perms, token), expected, "{role:?} {perms} token={token}");
        }
    }
}
