//! Control plane (unified-v2 §4.3–§6, without node pairing/leases/catalog/watch): agents,
//! projects CRUD, access policy, project tokens, activation, workspace_status, sessions, the
//! connect gate for users, audit, metrics, correlation ids, admin-only refusals and every
//! error code reachable without nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::{
    Client, Gateway, assert_control_error, assert_keys, assert_metrics_object, int_at, provision_user_world, str_at,
};

const GATE_PROVISIONING: &str = "no non-system project/agent is available; an admin should use Mother to provision one";
const GATE_CONTEXT: &str = "project selection is required; call control.session_attach with project_id";

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {list}"))
        .iter()
        .find(|x| x[key] == json!(value))
        .unwrap_or_else(|| panic!("no entry with {key}={value} in {list}"))
}

async fn create_project(c: &mut Client, name: &str, extra: Value) -> String {
    let mut payload = json!({"name": name, "vision": format!("vision of {name}")});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            payload[k] = v;
        }
    }
    let p = c.control_ok("project_create", payload).await;
    str_at(&p, "project_id").to_string()
}

fn assert_project_shape(p: &Value) {
    assert_keys(
        p,
        &[
            "project_id",
            "name",
            "vision",
            "status",
            "kind",
            "is_delete_protected",
            "token_locked",
            "created_at_ms",
            "updated_at_ms",
            "access_policy",
            "mounts",
            "binds",
        ],
        "project P",
    );
    int_at(p, "created_at_ms");
    int_at(p, "updated_at_ms");
    assert!(p["mounts"].is_array() && p["binds"].is_array(), "{p}");
}

fn assert_workspace_shape(w: &Value, agent: &str, project: &str) {
    assert_keys(
        w,
        &[
            "agent_id",
            "project_id",
            "workspace_root",
            "mounts",
            "desired_mounts",
            "actual_mounts",
            "drift",
            "availability",
            "reconcile_state",
            "last_reconcile_ms",
            "last_success_ms",
            "last_error",
            "queue_depth",
        ],
        "workspace status W",
    );
    assert_eq!(w["agent_id"], json!(agent), "W.agent_id: {w}");
    assert_eq!(w["project_id"], json!(project), "W.project_id: {w}");
    assert_eq!(w["workspace_root"], json!(format!("/spiderweb/projects/{project}/workspace")), "{w}");
    assert_eq!(w["mounts"], json!([]), "no nodes → no mounts: {w}");
    assert_eq!(w["desired_mounts"], json!([]), "{w}");
    assert_eq!(w["actual_mounts"], json!([]), "{w}");
    assert_eq!(w["drift"], json!({"count": 0, "items": []}), "{w}");
    assert_eq!(w["availability"], json!({"mounts_total": 0, "online": 0, "degraded": 0, "missing": 0}), "{w}");
    let rs = w["reconcile_state"].as_str().unwrap_or_else(|| panic!("reconcile_state must be a string: {w}"));
    assert!(["idle", "pending", "running", "degraded"].contains(&rs), "reconcile_state {rs:?}");
    for k in ["last_reconcile_ms", "last_success_ms"] {
        assert!(w[k].is_null() || w[k].is_i64(), "{k} must be int or null: {w}");
    }
    assert!(w["last_error"].is_null() || w["last_error"].is_string(), "{w}");
    assert!(w["queue_depth"].is_i64(), "{w}");
}

fn assert_attach_state(s: &Value) {
    assert_keys(
        s,
        &["state", "runtime_ready", "mount_ready", "error_code", "error_message", "updated_at_ms"],
        "attach S",
    );
    assert_eq!(s["state"], json!("ready"), "attach state (no sandbox in the gateway → ready): {s}");
    assert_eq!(s["error_code"], Value::Null, "{s}");
    assert_eq!(s["error_message"], Value::Null, "{s}");
    assert!(s["runtime_ready"].is_boolean() && s["mount_ready"].is_boolean(), "{s}");
    int_at(s, "updated_at_ms");
}

/// Error reply of a control-plane op: code, message (Zig error name) and correlation id.
async fn cp_err(c: &mut Client, ty: &str, payload: Value, code: &str, message: &str) {
    let r = c.control(ty, payload.clone()).await;
    let err = assert_control_error(&r, &format!("{ty} {payload}"));
    assert_eq!(err["code"], json!(code), "{ty} {payload}: {r}");
    assert_eq!(err["message"], json!(message), "{ty} {payload}: {r}");
    assert_eq!(err["correlation_id"], r["id"], "{ty}: control-plane errors carry error.correlation_id = id: {r}");
}

// ----- agents -----------------------------------------------------------------------------

#[tokio::test]
async fn agent_list_and_get() {
    let gw = Gateway::with_helper_agent(json!({}));
    let mut c = gw.admin().await;
    let list = c.control_ok("agent_list", Value::Null).await;
    let agents = &list["agents"];
    let mother = find(agents, "id", "mother");
    assert_keys(
        mother,
        &["id", "name", "description", "is_default", "identity_loaded", "needs_hatching", "capabilities"],
        "agent A",
    );
    assert_eq!(mother["is_default"], json!(true), "{mother}");
    assert_eq!(mother["capabilities"], json!(["chat", "plan", "code", "research"]), "{mother}");
    assert!(mother["identity_loaded"].is_boolean() && mother["needs_hatching"].is_boolean(), "{mother}");

    let helper = find(agents, "id", "helper");
    assert_eq!(helper["name"], json!("Helper"), "{helper}");
    assert_eq!(helper["description"], json!("A helpful test agent"), "{helper}");
    assert_eq!(helper["is_default"], json!(false), "{helper}");
    assert_eq!(helper["capabilities"], json!(["code", "chat"]), "configured order is kept: {helper}");

    let got = c.control_ok("agent_get", json!({"agent_id": "helper"})).await;
    assert_eq!(&got["agent"], helper, "agent_get must return the list entry");

    cp_err(&mut c, "agent_get", json!({}), "missing_field", "MissingField").await;
    cp_err(&mut c, "agent_get", Value::Null, "missing_field", "MissingField").await;
    let r = c.control("agent_get", json!({"agent_id": 5})).await;
    assert_eq!(assert_control_error(&r, "agent_get 5")["code"], json!("invalid_payload"));
    let r = c.control("agent_get", json!({"agent_id": ""})).await;
    assert_eq!(assert_control_error(&r, "agent_get ''")["code"], json!("invalid_payload"));
    let r = c.control("agent_get", json!("helper")).await;
    assert_eq!(assert_control_error(&r, "agent_get non-object")["code"], json!("invalid_payload"));
    let r = c.control("agent_get", json!({"agent_id": "ghost"})).await;
    assert_eq!(assert_control_error(&r, "agent_get ghost")["code"], json!("agent_not_found"));

    // Role does not filter the list.
    let mut u = gw.user().await;
    let ulist = u.control_ok("agent_list", Value::Null).await;
    let ids: BTreeSet<String> = ulist["agents"].as_array().unwrap().iter().map(|a| a["id"].to_string()).collect();
    assert!(ids.contains("\"mother\"") && ids.contains("\"helper\""), "{ulist}");
}

#[tokio::test]
async fn agents_dir_may_be_absolute() {
    let mut gw = Gateway::new(json!({}));
    let abs = gw.root_dir().join("elsewhere-agents");
    let abs_s = abs.to_str().unwrap().to_string();
    gw.update_config(json!({"runtime": {"agents_dir": abs_s}}));
    gw.write_agent(
        &abs_s,
        "scout",
        &json!({"name": "Scout", "description": "looks around", "capabilities": ["research"]}),
    );
    gw.launch();
    let mut c = gw.admin().await;
    let a = c.control_ok("agent_get", json!({"agent_id": "scout"})).await;
    assert_eq!(a["agent"]["name"], json!("Scout"), "{a}");
    assert_eq!(a["agent"]["capabilities"], json!(["research"]), "{a}");
}

// ----- projects ---------------------------------------------------------------------------

#[tokio::test]
async fn project_crud() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let p = c.control_ok("project_create", json!({"name": "Alpha", "vision": "Build alpha"})).await;
    assert_project_shape(&p);
    let id = str_at(&p, "project_id").to_string();
    assert!(id.starts_with("proj-"), "project ids are proj-N: {p}");
    assert_eq!(p["name"], json!("Alpha"));
    assert_eq!(p["vision"], json!("Build alpha"));
    assert_eq!(p["status"], json!("active"), "default status: {p}");
    assert_eq!(p["kind"], json!("normal"));
    assert_eq!(p["is_delete_protected"], json!(false));
    assert_eq!(p["token_locked"], json!(false));
    assert_eq!(p["access_policy"], json!({"actions": {}, "agents": {}}));
    assert_eq!(p["mounts"], json!([]));
    assert_eq!(p["binds"], json!([]));
    assert!(p.get("project_token").is_none_or(Value::is_null), "inactive token must not be shown: {p}");

    let p2 = c.control_ok("project_create", json!({"name": "Beta", "vision": "b", "status": "paused"})).await;
    let id2 = str_at(&p2, "project_id").to_string();
    assert_ne!(id, id2);
    assert_eq!(p2["status"], json!("paused"));

    let list = c.control_ok("project_list", Value::Null).await;
    let sys = find(&list["projects"], "project_id", "system");
    assert_eq!(sys["name"], json!("System"), "{sys}");
    assert_eq!(sys["kind"], json!("system_builtin"), "{sys}");
    assert_eq!(sys["is_delete_protected"], json!(true), "{sys}");
    let a = find(&list["projects"], "project_id", &id);
    assert_eq!(
        a,
        &json!({"project_id": id, "name": "Alpha", "status": "active", "kind": "normal", "is_delete_protected": false, "mount_count": 0})
    );
    find(&list["projects"], "project_id", &id2);

    let got = c.control_ok("project_get", json!({"project_id": id})).await;
    assert_project_shape(&got);
    for k in ["project_id", "name", "vision", "status", "kind", "created_at_ms", "access_policy"] {
        assert_eq!(got[k], p[k], "project_get {k} differs from create: {got} vs {p}");
    }

    let up = c
        .control_ok("project_update", json!({"project_id": id, "name": "Alpha Prime", "vision": "Build it better"}))
        .await;
    assert_eq!(up["name"], json!("Alpha Prime"));
    assert_eq!(up["vision"], json!("Build it better"));
    assert!(int_at(&up, "updated_at_ms") >= int_at(&p, "updated_at_ms"));
    assert_eq!(c.control_ok("project_get", json!({"project_id": id})).await["name"], json!("Alpha Prime"));

    let d = c.control_ok("project_delete", json!({"project_id": id})).await;
    assert_eq!(d, json!({"deleted": true, "project_id": id}));
    cp_err(&mut c, "project_get", json!({"project_id": id}), "project_not_found", "ProjectNotFound").await;
    cp_err(&mut c, "project_delete", json!({"project_id": id}), "project_not_found", "ProjectNotFound").await;
    cp_err(&mut c, "project_update", json!({"project_id": id, "name": "x"}), "project_not_found", "ProjectNotFound")
        .await;
    let list = c.control_ok("project_list", Value::Null).await;
    assert!(
        !list["projects"].as_array().unwrap().iter().any(|x| x["project_id"] == json!(id)),
        "deleted project still listed"
    );
    // A new project never reuses the deleted id.
    let p3 = c.control_ok("project_create", json!({"name": "Gamma", "vision": "g"})).await;
    assert_ne!(p3["project_id"], json!(id));
}

#[tokio::test]
async fn project_payload_validation() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let long = "n".repeat(129);
    let ok_long = "n".repeat(128);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"vision": "v"}), "missing_field"),
        (json!({"name": "n"}), "missing_field"),
        (json!({"name": "", "vision": "v"}), "invalid_payload"),
        (json!({"name": 5, "vision": "v"}), "invalid_payload"),
        (json!({"name": "bad\u{1}name", "vision": "v"}), "invalid_payload"),
        (json!({"name": "line\nbreak", "vision": "v"}), "invalid_payload"),
        (json!({"name": long, "vision": "v"}), "invalid_payload"),
        (json!({"name": "n", "vision": "v".repeat(1025)}), "invalid_payload"),
        (json!({"name": "n", "vision": ""}), "invalid_payload"),
        (json!({"name": "n", "vision": "v", "status": "not ok!"}), "invalid_payload"),
        (json!({"name": "n", "vision": "v", "access_policy": {"read": "sometimes"}}), "invalid_payload"),
        (json!({"name": "n", "vision": "v", "access_policy": {"actions": {"admin": 3}}}), "invalid_payload"),
        (json!("not an object"), "invalid_payload"),
    ];
    for (payload, code) in cases {
        let r = c.control("project_create", payload.clone()).await;
        let err = assert_control_error(&r, &format!("project_create {payload}"));
        assert_eq!(err["code"], json!(code), "project_create {payload}: {r}");
    }
    let p = c.control_ok("project_create", json!({"name": ok_long, "vision": "v".repeat(1024)})).await;
    assert_eq!(p["name"].as_str().unwrap().len(), 128);
    // Identifiers in lookups.
    for bad in ["../etc", "a/b", "", "x y"] {
        let r = c.control("project_get", json!({"project_id": bad})).await;
        assert_eq!(assert_control_error(&r, bad)["code"], json!("invalid_payload"), "project_get {bad:?}: {r}");
    }
    cp_err(&mut c, "project_get", json!({}), "missing_field", "MissingField").await;
    // Nothing was created by the failures.
    let list = c.control_ok("project_list", Value::Null).await;
    assert_eq!(list["projects"].as_array().unwrap().len(), 2, "system + one valid project: {list}");
}

#[tokio::test]
async fn system_project_is_protected() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let sys = c.control_ok("project_get", json!({"project_id": "system"})).await;
    assert_eq!(sys["kind"], json!("system_builtin"), "{sys}");
    assert_eq!(sys["is_delete_protected"], json!(true), "{sys}");
    cp_err(&mut c, "project_delete", json!({"project_id": "system"}), "project_protected", "ProjectProtected").await;
    cp_err(
        &mut c,
        "project_update",
        json!({"project_id": "system", "name": "Mine"}),
        "project_protected",
        "ProjectProtected",
    )
    .await;
    cp_err(&mut c, "project_token_rotate", json!({"project_id": "system"}), "project_protected", "ProjectProtected")
        .await;
    let sys2 = c.control_ok("project_get", json!({"project_id": "system"})).await;
    assert_eq!(sys2["name"], json!("System"));
}

#[tokio::test]
async fn project_token_rotate_and_revoke() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let id = create_project(&mut c, "Tok", json!({})).await;
    let r = c.control_ok("project_token_rotate", json!({"project_id": id})).await;
    assert_eq!(r["project_id"], json!(id));
    assert_eq!(r["rotated"], json!(true));
    int_at(&r, "updated_at_ms");
    let t1 = str_at(&r, "project_token").to_string();
    let hex = t1.strip_prefix("proj-").unwrap_or_else(|| panic!("project token must start with proj-: {t1}"));
    assert!(
        hex.len() == 32 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "proj-<32 lowercase hex>: {t1}"
    );
    assert_eq!(c.control_ok("project_get", json!({"project_id": id})).await["token_locked"], json!(true));

    let t2 =
        str_at(&c.control_ok("project_token_rotate", json!({"project_id": id})).await, "project_token").to_string();
    assert_ne!(t1, t2, "rotation must change the token");

    let rv = c.control_ok("project_token_revoke", json!({"project_id": id})).await;
    assert_eq!(rv["project_id"], json!(id));
    assert_eq!(rv["project_token"], Value::Null);
    assert_eq!(rv["revoked"], json!(true));
    int_at(&rv, "updated_at_ms");
    assert_eq!(c.control_ok("project_get", json!({"project_id": id})).await["token_locked"], json!(false));

    cp_err(&mut c, "project_token_rotate", json!({"project_id": "proj-999"}), "project_not_found", "ProjectNotFound")
        .await;
    cp_err(&mut c, "project_token_revoke", json!({"project_id": "proj-999"}), "project_not_found", "ProjectNotFound")
        .await;
    cp_err(&mut c, "project_token_rotate", json!({}), "missing_field", "MissingField").await;
}

#[tokio::test]
async fn access_policy_round_trip_and_enforcement_for_users() {
    let gw = Gateway::with_helper_agent(json!({}));
    let alpha = provision_user_world(&gw).await;
    let mut admin = gw.admin().await;
    let locked = create_project(&mut admin, "Locked", json!({"access_policy": {"actions": {"read": "admin"}}})).await;
    let denied = create_project(&mut admin, "Denied", json!({"access_policy": {"read": "deny"}})).await;
    let tokened = create_project(&mut admin, "Tokened", json!({"access_policy": {"actions": {"read": "token"}}})).await;
    let overridden = create_project(
        &mut admin,
        "Override",
        json!({"access_policy": {"actions": {"admin": "deny"}, "agents": {"helper": {"admin": "open"}}}}),
    )
    .await;
    let strict = create_project(&mut admin, "Strict", json!({"access_policy": {"actions": {"admin": "deny"}}})).await;
    // Aliases and the array form of agents are accepted.
    create_project(
        &mut admin,
        "Aliases",
        json!({"access_policy": {"read": "allow", "admin": "admin-only", "mount": "disabled", "invoke": "token-required",
                                 "watch": "token_or_admin", "agents": [{"agent_id": "helper", "read": "open"}]}}),
    )
    .await;

    // Output form: {actions:{set keys only}, agents:{…}}.
    let lp = admin.control_ok("project_get", json!({"project_id": locked})).await;
    assert_eq!(lp["access_policy"]["actions"], json!({"read": "admin"}), "{lp}");
    assert_eq!(lp["access_policy"]["agents"], json!({}), "{lp}");
    let dp = admin.control_ok("project_get", json!({"project_id": denied})).await;
    assert_eq!(dp["access_policy"]["actions"], json!({"read": "deny"}), "top-level action keys are read too: {dp}");
    let op = admin.control_ok("project_get", json!({"project_id": overridden})).await;
    assert!(op["access_policy"]["agents"]["helper"].is_object(), "{op}");

    let mut user = gw.user().await;
    cp_err(
        &mut user,
        "project_get",
        json!({"project_id": locked}),
        "project_policy_forbidden",
        "ProjectPolicyForbidden",
    )
    .await;
    cp_err(
        &mut user,
        "project_get",
        json!({"project_id": denied}),
        "project_policy_forbidden",
        "ProjectPolicyForbidden",
    )
    .await;
    cp_err(&mut user, "project_get", json!({"project_id": tokened}), "missing_field", "MissingField").await;
    cp_err(
        &mut user,
        "project_get",
        json!({"project_id": tokened, "project_token": "proj-00000000000000000000000000000000"}),
        "project_auth_failed",
        "ProjectAuthFailed",
    )
    .await;
    cp_err(
        &mut user,
        "project_get",
        json!({"project_id": "system"}),
        "project_assignment_forbidden",
        "ProjectAssignmentForbidden",
    )
    .await;
    user.control_ok("project_get", json!({"project_id": alpha})).await;
    // Admin is always allowed.
    admin.control_ok("project_get", json!({"project_id": locked})).await;
    admin.control_ok("project_get", json!({"project_id": denied})).await;

    let t = str_at(&admin.control_ok("project_token_rotate", json!({"project_id": tokened})).await, "project_token")
        .to_string();
    let got = user.control_ok("project_get", json!({"project_id": tokened, "project_token": t})).await;
    assert_eq!(got["project_id"], json!(tokened));

    // Per-agent override applies to project_update (actor = the bound agent, helper).
    user.control_ok("project_update", json!({"project_id": overridden, "vision": "changed by helper"})).await;
    cp_err(
        &mut user,
        "project_update",
        json!({"project_id": strict, "vision": "nope"}),
        "project_policy_forbidden",
        "ProjectPolicyForbidden",
    )
    .await;

    // Default mode becomes `token` once the project token is active.
    user.control_ok("project_update", json!({"project_id": alpha, "vision": "open while no token"})).await;
    let ta = str_at(&admin.control_ok("project_token_rotate", json!({"project_id": alpha})).await, "project_token")
        .to_string();
    cp_err(&mut user, "project_update", json!({"project_id": alpha, "vision": "x"}), "missing_field", "MissingField")
        .await;
    cp_err(
        &mut user,
        "project_update",
        json!({"project_id": alpha, "vision": "x", "project_token": "proj-ffffffffffffffffffffffffffffffff"}),
        "project_auth_failed",
        "ProjectAuthFailed",
    )
    .await;
    let up = user
        .control_ok("project_update", json!({"project_id": alpha, "vision": "with token", "project_token": ta}))
        .await;
    assert_eq!(up["vision"], json!("with token"));
    // Revoking makes it open again.
    admin.control_ok("project_token_revoke", json!({"project_id": alpha})).await;
    user.control_ok("project_update", json!({"project_id": alpha, "vision": "open again"})).await;
}

#[tokio::test]
async fn project_activate() {
    let gw = Gateway::with_helper_agent(json!({}));
    let alpha = provision_user_world(&gw).await;
    let mut admin = gw.admin().await;
    let beta = create_project(&mut admin, "Beta", json!({})).await;
    let r = admin.control_ok("project_activate", json!({"project_id": beta})).await;
    assert_eq!(
        r,
        json!({"agent_id": "mother", "project_id": beta, "workspace_root": format!("/spiderweb/projects/{beta}/workspace")})
    );
    cp_err(&mut admin, "project_activate", json!({"project_id": "proj-999"}), "project_not_found", "ProjectNotFound")
        .await;
    cp_err(&mut admin, "project_activate", json!({}), "missing_field", "MissingField").await;

    let mut user = gw.user().await;
    cp_err(
        &mut user,
        "project_activate",
        json!({"project_id": "system"}),
        "project_assignment_forbidden",
        "ProjectAssignmentForbidden",
    )
    .await;
    let r = user.control_ok("project_activate", json!({"project_id": beta})).await;
    assert_eq!(r["agent_id"], json!("helper"), "{r}");
    assert_eq!(r["project_id"], json!(beta), "{r}");
    // The agent's active project moved: workspace_status without project_id follows it.
    let w = user.control_ok("workspace_status", json!({})).await;
    assert_eq!(w["project_id"], json!(beta), "{w}");
    let _ = alpha;
}

#[tokio::test]
async fn project_up_creates_finds_and_activates() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let r = c.control_ok("project_up", json!({"name": "Upped", "vision": "from up"})).await;
    assert_keys(&r, &["project_id", "project_token", "created", "activated", "workspace"], "project_up");
    let id = str_at(&r, "project_id").to_string();
    assert_eq!(r["created"], json!(true), "{r}");
    assert_eq!(r["activated"], json!(true), "{r}");
    assert_eq!(r["project_token"], Value::Null, "{r}");
    assert_eq!(r["workspace"]["project_id"], json!(id), "{r}");

    let r2 = c.control_ok("project_up", json!({"name": "Upped", "activate": false})).await;
    assert_eq!(r2["project_id"], json!(id), "found by exact name: {r2}");
    assert_eq!(r2["created"], json!(false));
    assert_eq!(r2["activated"], json!(false));
    let r3 = c.control_ok("project_up", json!({"project_id": id})).await;
    assert_eq!(r3["created"], json!(false));

    cp_err(&mut c, "project_up", json!({"project_id": "proj-999"}), "project_not_found", "ProjectNotFound").await;
    let r = c.control("project_up", json!({"name": "No Vision Yet"})).await;
    assert_eq!(assert_control_error(&r, "project_up without vision")["code"], json!("missing_field"), "{r}");
}

// ----- workspace --------------------------------------------------------------------------

#[tokio::test]
async fn workspace_status_shape_and_access() {
    let gw = Gateway::with_helper_agent(json!({}));
    let alpha = provision_user_world(&gw).await;
    let mut admin = gw.admin().await;
    let beta = create_project(&mut admin, "Beta", json!({})).await;
    let locked = create_project(&mut admin, "Locked", json!({"access_policy": {"read": "admin"}})).await;

    let w = admin.control_ok("workspace_status", json!({"project_id": alpha})).await;
    assert_workspace_shape(&w, "mother", &alpha);
    let w = admin.control_ok("workspace_status", json!({})).await;
    assert_workspace_shape(&w, "mother", "system");
    let w = admin.control_ok("workspace_status", Value::Null).await;
    assert_workspace_shape(&w, "mother", "system");
    cp_err(&mut admin, "workspace_status", json!({"project_id": "proj-999"}), "project_not_found", "ProjectNotFound")
        .await;

    let mut user = gw.user().await;
    let w = user.control_ok("workspace_status", json!({})).await;
    assert_workspace_shape(&w, "helper", &alpha);
    let w = user.control_ok("workspace_status", json!({"project_id": alpha})).await;
    assert_workspace_shape(&w, "helper", &alpha);
    cp_err(
        &mut user,
        "workspace_status",
        json!({"project_id": "system"}),
        "project_assignment_forbidden",
        "ProjectAssignmentForbidden",
    )
    .await;
    cp_err(&mut user, "workspace_status", json!({"project_id": beta}), "project_auth_failed", "ProjectAuthFailed")
        .await;
    cp_err(
        &mut user,
        "workspace_status",
        json!({"project_id": locked}),
        "project_policy_forbidden",
        "ProjectPolicyForbidden",
    )
    .await;

    // Deleting the project unbinds the agent: the "no project" form.
    admin.control_ok("project_delete", json!({"project_id": alpha})).await;
    let w = user.control_ok("workspace_status", json!({})).await;
    assert_eq!(
        w.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>(),
        [
            "agent_id",
            "project_id",
            "workspace_root",
            "mounts",
            "desired_mounts",
            "actual_mounts",
            "drift",
            "availability",
            "reconcile_state",
            "last_reconcile_ms",
            "last_success_ms",
            "last_error",
            "queue_depth"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<BTreeSet<_>>(),
        "{w}"
    );
    assert_eq!(w["agent_id"], json!("helper"), "{w}");
    assert_eq!(w["project_id"], Value::Null, "{w}");
    assert_eq!(w["workspace_root"], Value::Null, "{w}");
    assert_eq!(w["mounts"], json!([]));
    assert_eq!(w["drift"], json!({"count": 0, "items": []}));
    assert_eq!(w["availability"], json!({"mounts_total": 0, "online": 0, "degraded": 0, "missing": 0}));
}

#[tokio::test]
async fn mount_ops_without_nodes() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let id = create_project(&mut c, "Mounts", json!({})).await;
    let l = c.control_ok("project_mount_list", json!({"project_id": id})).await;
    assert_eq!(l, json!({"project_id": id, "mounts": []}));
    cp_err(
        &mut c,
        "project_mount_set",
        json!({"project_id": id, "node_id": "node-1", "export_name": "work", "mount_path": "/src"}),
        "node_not_found",
        "NodeNotFound",
    )
    .await;
    cp_err(
        &mut c,
        "project_mount_remove",
        json!({"project_id": id, "mount_path": "/src"}),
        "mount_not_found",
        "MountNotFound",
    )
    .await;
    cp_err(
        &mut c,
        "project_mount_remove",
        json!({"project_id": id, "mount_path": "/src", "node_id": "node-1"}),
        "missing_field",
        "MissingField",
    )
    .await;
    cp_err(
        &mut c,
        "project_mount_set",
        json!({"project_id": id, "node_id": "node-1"}),
        "missing_field",
        "MissingField",
    )
    .await;
    cp_err(&mut c, "project_mount_list", json!({"project_id": "proj-999"}), "project_not_found", "ProjectNotFound")
        .await;
    let l = c.control_ok("project_mount_list", json!({"project_id": id})).await;
    assert_eq!(l["mounts"], json!([]));
}

// ----- sessions ---------------------------------------------------------------------------

#[tokio::test]
async fn session_lifecycle() {
    let gw = Gateway::with_helper_agent(json!({}));
    let mut c = gw.admin().await;
    let p = create_project(&mut c, "Sess", json!({})).await;

    let l = c.control_ok("session_list", Value::Null).await;
    assert_eq!(
        l,
        json!({"active_session": "main", "sessions": [{"session_key": "main", "agent_id": "mother", "project_id": "system"}]})
    );

    let a = c.control_ok("session_attach", json!({"session_key": "s2", "agent_id": "helper", "project_id": p})).await;
    assert_eq!(a["session_key"], json!("s2"));
    assert_eq!(a["agent_id"], json!("helper"));
    assert_eq!(a["project_id"], json!(p));
    assert_attach_state(&a["attach"]);
    // Quirk 8: workspace = the workspace_status payload of the bound project.
    assert_workspace_shape(&a["workspace"], "helper", &p);

    let l = c.control_ok("session_list", Value::Null).await;
    assert_eq!(l["active_session"], json!("s2"));
    let keys: BTreeSet<String> =
        l["sessions"].as_array().unwrap().iter().map(|s| s["session_key"].to_string()).collect();
    assert_eq!(keys, ["\"main\"".to_string(), "\"s2\"".to_string()].into_iter().collect::<BTreeSet<_>>(), "{l}");
    assert_eq!(
        find(&l["sessions"], "session_key", "s2"),
        &json!({"session_key": "s2", "agent_id": "helper", "project_id": p})
    );

    let st = c.control_ok("session_status", json!({})).await;
    assert_keys(
        &st,
        &[
            "session_key",
            "agent_id",
            "project_id",
            "attach",
            "session_last_activity_ms",
            "session_stale",
            "agent_last_heartbeat_ms",
            "agent_stale",
            "recoverable",
        ],
        "session_status",
    );
    assert_eq!(st["session_key"], json!("s2"));
    assert_eq!(st["agent_id"], json!("helper"));
    assert_eq!(st["session_stale"], json!(false));
    assert_eq!(st["recoverable"], json!(true));
    assert_attach_state(&st["attach"]);
    let st_main = c.control_ok("session_status", json!({"session_key": "main", "heartbeat": true})).await;
    assert_eq!(st_main["agent_id"], json!("mother"));
    c.control_err_code("session_status", json!({"session_key": "nope"}), "not_found").await;
    c.control_err_code("session_status", json!({"heartbeat": "yes"}), "invalid_payload").await;
    c.control_err_code("session_status", json!("x"), "invalid_payload").await;

    let r = c.control("session_resume", json!({"session_key": "main"})).await;
    assert_eq!(r["type"], json!("control.session_resume"), "{r}");
    assert_eq!(r["payload"]["session_key"], json!("main"), "{r}");
    assert_eq!(r["payload"]["agent_id"], json!("mother"), "{r}");
    assert_eq!(r["payload"]["project_id"], json!("system"), "{r}");
    assert_attach_state(&r["payload"]["attach"]);
    assert_eq!(c.control_ok("session_list", Value::Null).await["active_session"], json!("main"));
    c.control_err_code("session_resume", json!({}), "missing_field").await;
    c.control_err_code("session_resume", json!({"session_key": "nope"}), "not_found").await;

    let e = c.control_err_code("session_close", json!({"session_key": "main"}), "forbidden").await;
    assert_eq!(e["message"], json!("main session cannot be closed"));
    c.control_err_code("session_close", json!({}), "missing_field").await;
    c.control_ok("session_resume", json!({"session_key": "s2"})).await;
    let cl = c.control_ok("session_close", json!({"session_key": "s2"})).await;
    assert_eq!(cl, json!({"session_key": "s2", "closed": true, "active_session": "main"}));
    c.control_err_code("session_close", json!({"session_key": "s2"}), "not_found").await;
    assert_eq!(c.control_ok("session_list", Value::Null).await["sessions"].as_array().unwrap().len(), 1);

    // History (non-system bindings only) and restore.
    let h = c.control_ok("session_history", json!({})).await;
    let entries = h["sessions"].as_array().unwrap_or_else(|| panic!("{h}"));
    assert!(!entries.is_empty(), "attach to a non-system project must be recorded: {h}");
    let e0 = &entries[0];
    assert_keys(
        e0,
        &["session_key", "agent_id", "project_id", "last_active_ms", "message_count", "summary"],
        "history entry",
    );
    assert_eq!(e0["agent_id"], json!("helper"));
    assert_eq!(e0["project_id"], json!(p));
    assert_eq!(e0["summary"], json!(format!("helper @ {p}")));
    assert!(entries.iter().all(|e| e["project_id"] != json!("system")), "system bindings are not recorded: {h}");
    c.control_ok("session_history", json!({"limit": 0})).await;
    c.control_ok("session_history", json!({"limit": 100})).await;
    c.control_err_code("session_history", json!({"limit": -1}), "invalid_payload").await;
    c.control_err_code("session_history", json!({"limit": "x"}), "invalid_payload").await;
    let hm = c.control_ok("session_history", json!({"agent_id": "mother"})).await;
    assert_eq!(hm["sessions"], json!([]), "{hm}");

    let rs = c.control_ok("session_restore", json!({})).await;
    assert_eq!(rs["found"], json!(true), "{rs}");
    assert_eq!(rs["session"]["agent_id"], json!("helper"), "{rs}");
    assert_eq!(rs["session"]["project_id"], json!(p), "{rs}");
    assert_eq!(c.control_ok("session_restore", json!({"agent_id": "nobody"})).await, json!({"found": false}));
    c.control_err_code("session_restore", json!({"agent_id": 5}), "invalid_payload").await;

    // Sessions are per connection.
    let mut other = gw.admin().await;
    let l = other.control_ok("session_list", Value::Null).await;
    assert_eq!(l["sessions"].as_array().unwrap().len(), 1, "{l}");
}

#[tokio::test]
async fn session_attach_rules() {
    let gw = Gateway::with_helper_agent(json!({}));
    let alpha = provision_user_world(&gw).await;
    let mut admin = gw.admin().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"session_key": "k", "agent_id": "helper"}), "missing_field"),
        (json!({"agent_id": "helper", "project_id": alpha}), "missing_field"),
        (json!({"session_key": "k", "project_id": alpha}), "missing_field"),
        (json!({"session_key": "bad key", "agent_id": "helper", "project_id": alpha}), "invalid_payload"),
        (json!({"session_key": "k".repeat(129), "agent_id": "helper", "project_id": alpha}), "invalid_payload"),
        (json!({"session_key": "k", "agent_id": ".", "project_id": alpha}), "invalid_payload"),
        (json!({"session_key": "k", "agent_id": "a/b", "project_id": alpha}), "invalid_payload"),
        (json!({"session_key": "k", "agent_id": "helper", "project_id": ".."}), "invalid_payload"),
        (json!({"session_key": "k", "agent_id": "helper", "project_id": 7}), "invalid_payload"),
        (json!("k"), "invalid_payload"),
        (json!({"session_key": "k", "agent_id": "ghost", "project_id": alpha}), "agent_not_found"),
        (json!({"session_key": "k", "agent_id": "helper", "project_id": "proj-999"}), "project_not_found"),
    ];
    for (payload, code) in cases {
        admin.control_err_code("session_attach", payload, code).await;
    }
    let e = admin
        .control_err_code(
            "session_attach",
            json!({"session_key": "k", "agent_id": "mother", "project_id": alpha}),
            "forbidden",
        )
        .await;
    assert_eq!(e["message"], json!("mother can only attach to system project"));
    // Session keys allow `.`, `:`, `-`, `_`.
    admin
        .control_ok("session_attach", json!({"session_key": "a.b:c-d_e", "agent_id": "mother", "project_id": "system"}))
        .await;
    // None of the failures created a session.
    let l = admin.control_ok("session_list", Value::Null).await;
    let keys: BTreeSet<_> =
        l["sessions"].as_array().unwrap().iter().map(|s| s["session_key"].as_str().unwrap().to_string()).collect();
    assert_eq!(keys, ["main".to_string(), "a.b:c-d_e".to_string()].into_iter().collect());

    let mut user = gw.user().await;
    let e = user
        .control_err_code(
            "session_attach",
            json!({"session_key": "u", "agent_id": "mother", "project_id": "system"}),
            "forbidden",
        )
        .await;
    assert_eq!(e["message"], json!("user role cannot attach to mother agent"));
    let e = user
        .control_err_code(
            "session_attach",
            json!({"session_key": "u", "agent_id": "helper", "project_id": "system"}),
            "forbidden",
        )
        .await;
    assert_eq!(e["message"], json!("user role cannot attach to system project"));
    let a =
        user.control_ok("session_attach", json!({"session_key": "u", "agent_id": "helper", "project_id": alpha})).await;
    assert_eq!(a["project_id"], json!(alpha));
}

// ----- connect gate -----------------------------------------------------------------------

async fn assert_gated(user: &mut Client, code: &str, message: &str) {
    for ty in ["ping", "session_list", "session_status", "workspace_status", "project_mount_list"] {
        let r = user.control(ty, json!({})).await;
        let err = assert_control_error(&r, &format!("{ty} while gated"));
        assert_eq!(err["code"], json!(code), "{ty} while gated: {r}");
        assert_eq!(err["message"], json!(message), "{ty} while gated: {r}");
    }
    let r = user.request(json!({"channel": "control", "type": "control.project_create", "id": "pc", "payload": {"name": "x", "vision": "y"}})).await;
    assert_eq!(assert_control_error(&r, "project_create while gated")["code"], json!(code));
    // Every acheron message, even t_version, gets the gate error (tag echoed).
    let r = user.acheron("t_version", json!({"version": "acheron-1"})).await;
    let err = spiderweb_tests::assert_acheron_error(&r, "t_version while gated");
    assert_eq!(err, json!({"code": code, "message": message}), "{r}");
    // Allowed while gated.
    user.version().await;
    user.control_ok("agent_list", Value::Null).await;
    user.control_ok("agent_get", json!({"agent_id": "mother"})).await;
    user.control_ok("project_list", Value::Null).await;
    user.control_ok("session_history", json!({})).await;
    user.control_ok("session_restore", json!({})).await;
    let r = user.control("connect", json!({})).await;
    assert_eq!(r["type"], json!("control.connect_ack"), "{r}");
}

#[tokio::test]
async fn connect_gate_provisioning_required_on_a_fresh_install() {
    let gw = Gateway::start();
    let mut user = gw.user().await;
    assert_gated(&mut user, "provisioning_required", GATE_PROVISIONING).await;
    // project_get is allowed while gated but system stays forbidden for users.
    user.control_err_code("project_get", json!({"project_id": "system"}), "project_assignment_forbidden").await;
}

#[tokio::test]
async fn connect_gate_project_context_required_then_cleared_by_attach() {
    let gw = Gateway::with_helper_agent(json!({}));
    let mut admin = gw.admin().await;
    let p = create_project(&mut admin, "Ctx", json!({})).await;
    // Not bootstrap any more: a non-system project and agent exist.
    let mut admin2 = Client::connect(&gw, &gw.admin_token()).await;
    let ack = admin2.handshake().await;
    assert_eq!(ack["bootstrap_only"], json!(false), "{ack}");
    assert_eq!(ack["bootstrap_message"], Value::Null, "{ack}");

    let mut user = Client::connect(&gw, &gw.user_token()).await;
    let ack = user.handshake().await;
    assert_eq!(ack["requires_session_attach"], json!(true), "{ack}");
    assert_eq!(ack["connect_gate"], json!({"code": "project_context_required", "message": GATE_CONTEXT}), "{ack}");
    assert_gated(&mut user, "project_context_required", GATE_CONTEXT).await;

    let a =
        user.control_ok("session_attach", json!({"session_key": "work", "agent_id": "helper", "project_id": p})).await;
    assert_eq!(a["session_key"], json!("work"));
    user.ping().await;
    user.control_ok("workspace_status", json!({})).await;
    user.fs_attach().await;

    // The remembered target makes the next user connection ungated on helper@p.
    let mut user2 = Client::connect(&gw, &gw.user_token()).await;
    let ack = user2.handshake().await;
    assert_eq!(ack["agent_id"], json!("helper"), "{ack}");
    assert_eq!(ack["project_id"], json!(p), "{ack}");
    assert_eq!(ack["role"], json!("user"), "{ack}");
    assert_eq!(ack["connect_gate"], Value::Null, "{ack}");
    assert_eq!(ack["requires_session_attach"], json!(false), "{ack}");
    user2.ping().await;
}

#[tokio::test]
async fn user_is_bound_to_the_first_project_with_a_non_mother_agent() {
    let gw = Gateway::with_helper_agent(json!({}));
    let alpha = provision_user_world(&gw).await;
    let mut user = Client::connect(&gw, &gw.user_token()).await;
    let ack = user.handshake().await;
    assert_eq!(ack["agent_id"], json!("helper"), "{ack}");
    assert_eq!(ack["project_id"], json!(alpha), "{ack}");
    assert_eq!(ack["session"], json!("main"), "{ack}");
    assert_eq!(ack["connect_gate"], Value::Null, "{ack}");
    assert_eq!(ack["bootstrap_only"], json!(false), "{ack}");
    // Admin is never gated and always starts on mother@system.
    let mut admin = Client::connect(&gw, &gw.admin_token()).await;
    let ack = admin.handshake().await;
    assert_eq!((ack["agent_id"].clone(), ack["project_id"].clone()), (json!("mother"), json!("system")), "{ack}");
    assert_eq!(ack["connect_gate"], Value::Null);
}

// ----- audit, metrics, correlation, admin-only --------------------------------------------

#[tokio::test]
async fn audit_tail_records_scoped_ops_and_denials() {
    let gw = Gateway::with_helper_agent(json!({}));
    provision_user_world(&gw).await;
    let mut admin = gw.admin().await;
    let r = admin
        .request(json!({"type": "control.project_create", "id": "pc-1", "correlation_id": "corr-1", "payload": {"name": "Audited", "vision": "v"}}))
        .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    admin.control_err_code("project_delete", json!({"project_id": "system"}), "project_protected").await;
    for _ in 0..3 {
        admin.ping().await;
    }
    let mut user = gw.user().await;
    user.control_err_code("audit_tail", json!({}), "forbidden").await;

    let a = admin.control_ok("audit_tail", json!({})).await;
    let recs = a["audit"].as_array().unwrap_or_else(|| panic!("{a}"));
    assert!(recs.len() >= 3, "{a}");
    for rec in recs {
        assert_keys(
            rec,
            &["id", "timestamp_ms", "agent_id", "control_type", "scope", "correlation_id", "result", "error_code"],
            "audit record",
        );
    }
    let ids: Vec<i64> = recs.iter().map(|r| int_at(r, "id")).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "audit must be newest first with increasing ids: {ids:?}");
    assert!(!recs.iter().any(|r| r["control_type"] == json!("control.ping")), "pings are not audited: {a}");

    let denial = recs
        .iter()
        .find(|r| r["control_type"] == json!("control.audit_tail"))
        .unwrap_or_else(|| panic!("the user's refused audit_tail must be audited: {a}"));
    assert_eq!(denial["scope"], json!("none"), "{denial}");
    assert_eq!(denial["result"], json!("error"), "{denial}");
    assert_eq!(denial["error_code"], json!("forbidden"), "{denial}");
    assert_eq!(denial["agent_id"], json!("helper"), "{denial}");

    let del =
        recs.iter().find(|r| r["control_type"] == json!("control.project_delete")).expect("project_delete audited");
    assert_eq!(del["scope"], json!("project"));
    assert_eq!(del["result"], json!("error"));
    assert_eq!(del["error_code"], json!("project_protected"));
    assert_eq!(del["agent_id"], json!("mother"));

    let cr = recs
        .iter()
        .find(|r| r["control_type"] == json!("control.project_create") && r["correlation_id"] == json!("corr-1"))
        .unwrap_or_else(|| panic!("project_create with correlation_id corr-1 must be audited with it: {a}"));
    assert_eq!(cr["result"], json!("ok"));
    assert_eq!(cr["error_code"], Value::Null);
    assert_eq!(cr["scope"], json!("project"));
    // Newest first: the denial happened after the create.
    let pos = |t: &str| recs.iter().position(|r| r["control_type"] == json!(t)).unwrap();
    assert!(pos("control.audit_tail") < pos("control.project_delete"));

    let one = admin.control_ok("audit_tail", json!({"limit": 1})).await;
    assert_eq!(one["audit"].as_array().unwrap().len(), 1, "{one}");
    let helper_only = admin.control_ok("audit_tail", json!({"agent_id": "helper"})).await;
    let hs = helper_only["audit"].as_array().unwrap();
    assert!(!hs.is_empty() && hs.iter().all(|r| r["agent_id"] == json!("helper")), "{helper_only}");

    // auth_* calls are audited too.
    admin.control_ok("auth_status", Value::Null).await;
    let a = admin.control_ok("audit_tail", json!({"limit": 5})).await;
    assert!(a["audit"].as_array().unwrap().iter().any(|r| r["control_type"] == json!("control.auth_status")), "{a}");
}

#[tokio::test]
async fn control_metrics_is_valid_json_for_admin_and_forbidden_for_users() {
    let gw = Gateway::with_helper_agent(json!({}));
    provision_user_world(&gw).await;
    let mut admin = gw.admin().await;
    let m = admin.control_ok("metrics", Value::Null).await;
    assert_metrics_object(&m);
    assert!(int_at(&m["projects"], "creates_total") >= 1, "{m}");
    let mut user = gw.user().await;
    let e = user.control_err_code("metrics", Value::Null, "forbidden").await;
    assert_eq!(e["message"], json!("operation requires admin token"));
}

#[tokio::test]
async fn mutations_require_a_correlation_id() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    let id = create_project(&mut c, "Corr", json!({})).await;
    let ops: Vec<(&str, Value)> = vec![
        ("project_create", json!({"name": "x", "vision": "y"})),
        ("project_update", json!({"project_id": id, "name": "z"})),
        ("project_delete", json!({"project_id": id})),
        ("project_mount_set", json!({"project_id": id, "node_id": "n", "export_name": "e", "mount_path": "/m"})),
        ("project_mount_remove", json!({"project_id": id, "mount_path": "/m"})),
        ("project_token_rotate", json!({"project_id": id})),
        ("project_token_revoke", json!({"project_id": id})),
        ("project_activate", json!({"project_id": id})),
        ("project_up", json!({"name": "u", "vision": "v"})),
    ];
    for (op, payload) in ops {
        c.send_json(&json!({"channel": "control", "type": format!("control.{op}"), "payload": payload})).await;
        let r = c.recv_json().await;
        assert_eq!(
            r,
            json!({"channel": "control", "type": "control.error", "ok": false,
                   "error": {"code": "correlation_required", "message": "missing correlation_id on mutating control operation", "correlation_id": null}}),
            "{op} without id/correlation_id"
        );
    }
    // The refused mutations did nothing.
    let p = c.control_ok("project_get", json!({"project_id": id})).await;
    assert_eq!(p["name"], json!("Corr"));
    assert_eq!(p["token_locked"], json!(false));
    // correlation_id alone is enough; the reply has no id.
    c.send_json(&json!({"channel": "control", "type": "control.project_create", "correlation_id": "only-corr", "payload": {"name": "C2", "vision": "v"}}))
        .await;
    let r = c.recv_json().await;
    assert_eq!(r["type"], json!("control.project_create"), "{r}");
    assert_eq!(r["ok"], json!(true), "{r}");
    assert!(r.get("id").is_none(), "no id in the request → none in the reply: {r}");
    // Errors of control-plane ops carry the effective correlation id.
    c.send_json(&json!({"channel": "control", "type": "control.project_get", "id": "g1", "correlation_id": "c-9", "payload": {"project_id": "proj-999"}}))
        .await;
    let r = c.recv_json().await;
    assert_eq!(r["id"], json!("g1"));
    assert_eq!(r["error"]["correlation_id"], json!("c-9"), "{r}");
    // Reads need no correlation.
    c.send_json(&json!({"channel": "control", "type": "control.project_list"})).await;
    let r = c.recv_json().await;
    assert_eq!(r["ok"], json!(true), "{r}");
}

#[tokio::test]
async fn admin_only_ops_are_forbidden_for_users() {
    let gw = Gateway::with_helper_agent(json!({}));
    provision_user_world(&gw).await;
    let mut user = gw.user().await;
    for (op, payload) in [
        ("metrics", Value::Null),
        ("auth_status", Value::Null),
        ("auth_rotate", json!({"role": "user"})),
        ("audit_tail", json!({})),
    ] {
        let r = user.control(op, payload).await;
        let err = assert_control_error(&r, op);
        assert_eq!(err["code"], json!("forbidden"), "{op}: {r}");
        assert_eq!(err["message"], json!("operation requires admin token"), "{op}: {r}");
        if op == "audit_tail" {
            assert_eq!(err["correlation_id"], r["id"], "control-plane op error carries correlation_id: {r}");
        }
    }
    // The user token still works and was not rotated.
    let mut u2 = gw.user().await;
    u2.ping().await;
}

#[tokio::test]
async fn handlerless_control_names_are_unsupported() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    for ty in ["version_ack", "connect_ack", "pong", "error", "node_service_event"] {
        let e = c.control_err_code(ty, json!({}), "unsupported").await;
        assert_eq!(e["message"], json!("unsupported control operation"), "{ty}: {e}");
    }
    c.ping().await;
}

#[tokio::test]
async fn operator_token_scope_check() {
    let mut gw = Gateway::new(json!({}));
    gw.env("SPIDERWEB_CONTROL_OPERATOR_TOKEN", "op-secret-1");
    gw.launch();
    let mut c = gw.admin().await;
    cp_err(&mut c, "project_create", json!({"name": "a", "vision": "b"}), "missing_field", "MissingField").await;
    cp_err(
        &mut c,
        "project_create",
        json!({"name": "a", "vision": "b", "operator_token": "wrong"}),
        "operator_auth_failed",
        "OperatorAuthFailed",
    )
    .await;
    cp_err(
        &mut c,
        "project_create",
        json!({"name": "a", "vision": "b", "operator_token": ""}),
        "invalid_payload",
        "InvalidPayload",
    )
    .await;
    let p = c.control_ok("project_create", json!({"name": "a", "vision": "b", "operator_token": "op-secret-1"})).await;
    assert!(p["project_id"].is_string());
    // Reads are not scoped.
    c.control_ok("project_list", Value::Null).await;
}

#[tokio::test]
async fn project_scope_token_check() {
    let mut gw = Gateway::new(json!({}));
    gw.env("SPIDERWEB_CONTROL_PROJECT_SCOPE_TOKEN", "ps-secret");
    gw.launch();
    let mut c = gw.admin().await;
    cp_err(&mut c, "project_create", json!({"name": "a", "vision": "b"}), "missing_field", "MissingField").await;
    cp_err(
        &mut c,
        "project_create",
        json!({"name": "a", "vision": "b", "project_scope_token": "nope"}),
        "operator_auth_failed",
        "OperatorAuthFailed",
    )
    .await;
    c.control_ok("project_create", json!({"name": "a", "vision": "b", "project_scope_token": "ps-secret"})).await;
    c.control_ok("project_list", Value::Null).await;
}

/// `debug_subscribe` answers in both forms the original's clients wait for, then pushes
/// workspace-topology events after topology mutations made by any connection, until
/// `debug_unsubscribe` (spec README quirk 6).
#[tokio::test]
async fn debug_subscribers_get_topology_pushes_until_they_unsubscribe() {
    let gw = Gateway::start();
    let mut watcher = gw.admin().await;
    let mut actor = gw.admin().await;
    watcher.send_json(&json!({"channel":"control","type":"control.debug_subscribe","id":"sub-1"})).await;
    let ack = watcher
        .wait_for("the subscribe reply", Duration::from_secs(5), |v| v["type"] == json!("control.debug_subscribe"))
        .await;
    assert_eq!(ack["payload"], json!({"enabled": true}), "{ack}");
    let legacy = watcher
        .wait_for("the legacy subscription event", Duration::from_secs(5), |v| v["request"] == json!("sub-1"))
        .await;
    assert_eq!(legacy["category"], json!("control.subscription"), "{legacy}");
    assert_eq!(legacy["payload"], json!({"enabled": true}), "{legacy}");

    let id = create_project(&mut actor, "Pushed", json!({})).await;
    let changed = watcher
        .wait_for("workspace_topology", Duration::from_secs(5), |v| {
            v["category"] == json!("control.workspace_topology")
        })
        .await;
    assert_eq!(changed["type"], json!("debug.event"), "{changed}");
    assert_eq!(changed["request"], json!("workspace-topology"), "{changed}");
    assert_eq!(changed["payload"]["event"], json!("workspace_topology_changed"), "{changed}");
    assert_eq!(changed["payload"]["reason"], json!("project_create"), "{changed}");
    let delta = watcher
        .wait_for("workspace_topology_delta", Duration::from_secs(5), |v| {
            v["category"] == json!("control.workspace_topology_delta")
        })
        .await;
    assert_eq!(delta["payload"]["agent_id"], json!("mother"), "{delta}");
    assert_eq!(delta["payload"]["status"]["project_id"], json!("system"), "the watcher's own binding: {delta}");
    assert!(delta["payload"]["status"]["availability"].is_object(), "{delta}");

    // Reads do not count as topology changes; unsubscribing stops the pushes.
    actor.control_ok("project_list", json!({})).await;
    watcher.send_json(&json!({"channel":"control","type":"control.debug_unsubscribe","id":"sub-2"})).await;
    let off = watcher
        .wait_for("the unsubscribe reply", Duration::from_secs(5), |v| v["type"] == json!("control.debug_unsubscribe"))
        .await;
    assert_eq!(off["payload"], json!({"enabled": false}), "{off}");
    watcher.wait_for("the legacy unsubscribe event", Duration::from_secs(5), |v| v["request"] == json!("sub-2")).await;
    actor.control_ok("project_update", json!({"project_id": id, "name": "Renamed"})).await;
    watcher.ping().await;
    let stray = watcher.try_recv_json(Duration::from_millis(300)).await;
    assert!(stray.is_none(), "no push after unsubscribing: {stray:?}");
}
