//! Durable state across restarts of the real process with the same state dir: tokens,
//! projects (incl. active project tokens and access policies), agent bindings and remembered
//! targets, session history, audit; and after `kill -9`, everything whose reply was received.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use spiderweb_tests::{Client, Gateway, int_at, str_at};

fn project_ids(list: &Value) -> BTreeSet<String> {
    list["projects"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|p| p["project_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn graceful_restart_keeps_everything() {
    let mut gw = Gateway::with_helper_agent(json!({}));
    let admin_token = gw.admin_token();
    let user_token = gw.user_token();

    let mut admin = gw.admin().await;
    let r = admin
        .request(json!({"type": "control.project_create", "id": "mk-alpha", "correlation_id": "c-alpha",
                        "payload": {"name": "Alpha", "vision": "Persist me", "status": "active"}}))
        .await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let alpha = str_at(&r["payload"], "project_id").to_string();
    let beta_p = admin
        .control_ok(
            "project_create",
            json!({"name": "Beta", "vision": "Locked", "access_policy": {"actions": {"read": "admin"}}}),
        )
        .await;
    let beta = str_at(&beta_p, "project_id").to_string();
    let token = str_at(&admin.control_ok("project_token_rotate", json!({"project_id": alpha})).await, "project_token")
        .to_string();
    admin.control_ok("session_attach", json!({"session_key": "work", "agent_id": "helper", "project_id": alpha})).await;
    admin.control_err_code("project_delete", json!({"project_id": "system"}), "project_protected").await;

    let mut user = gw.user().await;
    user.control_ok(
        "session_attach",
        json!({"session_key": "u1", "agent_id": "helper", "project_id": alpha, "project_token": token}),
    )
    .await;

    let alpha_before = admin.control_ok("project_get", json!({"project_id": alpha})).await;
    let beta_before = admin.control_ok("project_get", json!({"project_id": beta})).await;
    let list_before = project_ids(&admin.control_ok("project_list", Value::Null).await);
    let audit_before = admin.control_ok("audit_tail", json!({"limit": 500})).await["audit"].as_array().unwrap().clone();
    assert!(!audit_before.is_empty());
    let history_before = admin.control_ok("session_history", json!({})).await;
    assert!(!history_before["sessions"].as_array().unwrap().is_empty(), "{history_before}");
    drop(admin);
    drop(user);

    gw.restart();

    assert_eq!(gw.admin_token(), admin_token, "tokens must survive a restart");
    assert_eq!(gw.user_token(), user_token);
    let mut admin = gw.admin().await;
    assert_eq!(project_ids(&admin.control_ok("project_list", Value::Null).await), list_before);
    let alpha_after = admin.control_ok("project_get", json!({"project_id": alpha})).await;
    for k in [
        "project_id",
        "name",
        "vision",
        "status",
        "kind",
        "created_at_ms",
        "token_locked",
        "access_policy",
        "mounts",
        "binds",
    ] {
        assert_eq!(
            alpha_after[k], alpha_before[k],
            "project field {k} changed across restart: {alpha_before} → {alpha_after}"
        );
    }
    assert_eq!(alpha_after["token_locked"], json!(true));
    let beta_after = admin.control_ok("project_get", json!({"project_id": beta})).await;
    assert_eq!(beta_after["access_policy"], beta_before["access_policy"]);

    // Audit: old records kept with their ids; new ids continue after them.
    let audit_after = admin.control_ok("audit_tail", json!({"limit": 500})).await["audit"].as_array().unwrap().clone();
    for rec in &audit_before {
        assert!(audit_after.contains(rec), "audit record lost across restart: {rec}");
    }
    assert!(
        audit_after
            .iter()
            .any(|r| r["correlation_id"] == json!("c-alpha") && r["control_type"] == json!("control.project_create")),
        "{audit_after:?}"
    );
    let max_old = audit_before.iter().map(|r| int_at(r, "id")).max().unwrap();
    admin.control_ok("project_create", json!({"name": "After", "vision": "restart"})).await;
    let newest = admin.control_ok("audit_tail", json!({"limit": 1})).await;
    assert!(int_at(&newest["audit"][0], "id") > max_old, "audit ids must keep increasing after a restart: {newest}");

    // Session history and restore.
    let history_after = admin.control_ok("session_history", json!({})).await;
    assert_eq!(history_after["sessions"][0]["agent_id"], json!("helper"), "{history_after}");
    assert_eq!(history_after["sessions"][0]["project_id"], json!(alpha), "{history_after}");
    let rs = admin.control_ok("session_restore", json!({})).await;
    assert_eq!(rs["found"], json!(true), "{rs}");

    // The user's remembered target: ungated, helper@alpha.
    let mut user = Client::connect(&gw, &user_token).await;
    let ack = user.handshake().await;
    assert_eq!(ack["connect_gate"], Value::Null, "{ack}");
    assert_eq!(ack["agent_id"], json!("helper"), "{ack}");
    assert_eq!(ack["project_id"], json!(alpha), "{ack}");
    // The project token is still active and still the same.
    user.control_err_code("project_update", json!({"project_id": alpha, "vision": "x"}), "missing_field").await;
    user.control_err_code(
        "project_update",
        json!({"project_id": alpha, "vision": "x", "project_token": "proj-00000000000000000000000000000000"}),
        "project_auth_failed",
    )
    .await;
    user.control_ok("project_update", json!({"project_id": alpha, "vision": "still mine", "project_token": token}))
        .await;
    // New projects never reuse ids.
    let p = admin.control_ok("project_create", json!({"name": "Fresh", "vision": "v"})).await;
    assert!(!list_before.contains(str_at(&p, "project_id")), "{p}");
}

#[tokio::test]
async fn kill_9_keeps_every_acknowledged_write() {
    let mut gw = Gateway::start();
    let admin_token = gw.admin_token();
    let mut c = gw.admin().await;
    let mut created = BTreeSet::new();
    for i in 0..20 {
        let p = c.control_ok("project_create", json!({"name": format!("P{i}"), "vision": "survive kill -9"})).await;
        created.insert(str_at(&p, "project_id").to_string());
    }
    let last = created.iter().next_back().unwrap().clone();
    let rotated = c.control_ok("project_token_rotate", json!({"project_id": last})).await;
    assert_eq!(rotated["rotated"], json!(true));
    let new_user = str_at(&c.control_ok("auth_rotate", json!({"role": "user"})).await, "token").to_string();
    // No graceful shutdown: the replies above are all the client knows.
    gw.kill9();
    drop(c);
    gw.launch();

    assert_eq!(gw.admin_token(), admin_token);
    assert_eq!(gw.user_token(), new_user, "an acknowledged auth_rotate must survive kill -9");
    let mut u = Client::connect(&gw, &new_user).await;
    assert_eq!(u.handshake().await["role"], json!("user"));

    let mut c = gw.admin().await;
    let ids = project_ids(&c.control_ok("project_list", Value::Null).await);
    for id in &created {
        assert!(ids.contains(id), "acknowledged project {id} lost after kill -9; have {ids:?}");
    }
    let p = c.control_ok("project_get", json!({"project_id": last})).await;
    assert_eq!(p["token_locked"], json!(true), "acknowledged token rotation lost: {p}");
    assert_eq!(p["vision"], json!("survive kill -9"));
    let r = c.control_ok("project_token_revoke", json!({"project_id": last})).await;
    assert_eq!(r["revoked"], json!(true));
    let p2 = c.control_ok("project_create", json!({"name": "after-crash", "vision": "v"})).await;
    assert!(!created.contains(str_at(&p2, "project_id")), "id reused after kill -9: {p2}");
}

#[tokio::test]
async fn repeated_kill_9_during_writes_never_corrupts_the_store() {
    let mut gw = Gateway::start();
    let mut acknowledged = BTreeSet::new();
    for round in 0..3 {
        let mut c = gw.admin().await;
        // Fire a burst without waiting, then kill while the gateway is busy with it.
        for i in 0..50 {
            c.send_json(&json!({"channel": "control", "type": "control.project_create", "id": format!("r{round}-{i}"),
                                "payload": {"name": format!("R{round}-{i}"), "vision": "burst"}}))
                .await;
        }
        // Collect what was acknowledged before the kill.
        for _ in 0..10 {
            let r = c.recv_json().await;
            if r["ok"] == json!(true) {
                acknowledged.insert(r["payload"]["project_id"].as_str().unwrap().to_string());
            }
        }
        gw.kill9();
        drop(c);
        gw.launch();
        let mut c = gw.admin().await;
        let ids = project_ids(&c.control_ok("project_list", Value::Null).await);
        for id in &acknowledged {
            assert!(ids.contains(id), "round {round}: acknowledged {id} lost");
        }
        c.ping().await;
    }
}
