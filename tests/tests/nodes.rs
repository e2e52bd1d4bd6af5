//! Paired filesystem nodes through the real gateway: pairing (invite and request/approve),
//! leases and reaping, the service catalog and its watch, mounts that name nodes, restart,
//! and the reverse tunnel with the relay in front of it (spec unified-v2 §6.5–6.9,
//! fs-node §7).
//!
//! The tunnel tests put a real standalone `spiderweb-fs-node` behind the tunnel: a small pump
//! in the test dials `/v2/node`, says the tunnel hello, and forwards frames verbatim between
//! the gateway and the node's `/v2/fs` — the node end of the protocol, exactly what the
//! daemon mode does, minus reconnects.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spiderweb_tests::{Client, Gateway, bin_dir, raw_upgrade, str_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

async fn admin(gw: &Gateway) -> Client {
    gw.admin().await
}

/// Pairs a node through an invite; returns the credential envelope `N`.
async fn join(c: &mut Client, payload: Value) -> Value {
    let invite = c.control_ok("node_invite_create", json!({})).await;
    let mut p = json!({"invite_token": invite["invite_token"]});
    spiderweb_tests::merge_json(&mut p, &payload);
    c.control_ok("node_join", p).await
}

fn is_hex_token(token: &str, prefix: &str) -> bool {
    token
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == 32 && rest.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
}

#[tokio::test]
async fn invite_pairing_refresh_catalog_errors_and_metrics() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let invite = c.control_ok("node_invite_create", json!({"expires_in_ms": 60000})).await;
    assert_eq!(invite["invite_id"], "invite-1");
    assert!(is_hex_token(str_at(&invite, "invite_token"), "inv-"), "{invite}");
    let n = c
        .control_ok(
            "node_join",
            json!({"invite_token": invite["invite_token"], "node_name": "laptop",
                                         "fs_url": "ws://10.0.0.5:18891/v2/fs"}),
        )
        .await;
    assert_eq!(n["node_id"], "node-1");
    assert_eq!(n["node_name"], "laptop");
    assert_eq!(n["platform"], json!({"os": "unknown", "arch": "unknown", "runtime_kind": "unknown"}));
    assert!(is_hex_token(str_at(&n, "node_secret"), "secret-") && is_hex_token(str_at(&n, "lease_token"), "lease-"));
    let secret = n["node_secret"].clone();

    c.control_err_code("node_join", json!({"invite_token": invite["invite_token"]}), "invite_redeemed").await;
    c.control_err_code("node_join", json!({"invite_token": "inv-nope"}), "invite_not_found").await;
    c.control_err_code("node_join", json!({}), "missing_field").await;
    let short = c.control_ok("node_invite_create", json!({"expires_in_ms": 1})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.control_err_code("node_join", json!({"invite_token": short["invite_token"]}), "invite_expired").await;
    c.control_err_code("node_invite_create", json!({"expires_in_ms": -5}), "invalid_payload").await;
    c.control_err_code(
        "node_join",
        json!({"invite_token": invite["invite_token"], "fs_url": "http://x/v2/fs"}),
        "invalid_payload",
    )
    .await;

    let list = c.control_ok("node_list", json!({})).await;
    assert_eq!(list["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(list["nodes"][0]["service_count"], 0);
    assert!(list["nodes"][0].get("node_secret").is_none(), "node_list never shows secrets: {list}");
    c.control_err_code("node_get", json!({"node_id": "node-9"}), "node_not_found").await;

    c.control_err_code(
        "node_lease_refresh",
        json!({"node_id": "node-1", "node_secret": "secret-wrong"}),
        "node_auth_failed",
    )
    .await;
    c.control_err_code("node_lease_refresh", json!({"node_id": "node-9", "node_secret": secret}), "node_not_found")
        .await;
    let refreshed = c
        .control_ok("node_lease_refresh", json!({"node_id": "node-1", "node_secret": secret,
                                                  "fs_url": "ws://127.0.0.1:1/v2/fs/node/node-1", "lease_ttl_ms": 600000}))
        .await;
    assert_ne!(refreshed["lease_token"], n["lease_token"], "a refresh hands out a new lease token");
    assert_eq!(refreshed["fs_url"], "ws://127.0.0.1:1/v2/fs/node/node-1");

    let fs = json!({"service_id": "fs", "kind": "fs", "state": "online", "endpoints": ["/nodes/node-1/fs"],
                    "capabilities": {"rw": true}});
    let up = c
        .control_ok(
            "node_service_upsert",
            json!({"node_id": "node-1", "node_secret": secret,
            "platform": {"os": "linux"}, "labels": {"site": "lab"}, "services": [fs]}),
        )
        .await;
    assert_eq!(up["platform"]["os"], "linux");
    assert_eq!(up["labels"], json!({"site": "lab"}));
    assert_eq!(up["services"][0]["version"], "1");
    assert_eq!(up["service_delta"]["changed"], true);
    assert_eq!(up["service_delta"]["added"][0]["service_id"], "fs");
    let again = c.control_ok("node_service_upsert", json!({"node_id": "node-1", "node_secret": secret})).await;
    assert_eq!(again["service_delta"]["changed"], false, "sections not given are kept: {again}");
    c.control_err_code("node_service_upsert",
        json!({"node_id": "node-1", "node_secret": secret, "services": [{"service_id": "x", "kind": "k", "state": "s", "endpoints": []}]}),
        "invalid_payload").await;
    let got = c.control_ok("node_service_get", json!({"node_id": "node-1"})).await;
    assert_eq!(got["services"][0]["service_id"], "fs");

    let mut user = gw.user().await;
    for op in ["node_list", "node_invite_create", "node_join_pending_list", "node_service_get"] {
        user.control_err_code(op, json!({"node_id": "node-1"}), "forbidden").await;
    }

    let m = c.control_ok("metrics", json!({})).await;
    assert_eq!(m["invites"]["created_total"], 2);
    assert_eq!(m["invites"]["redeemed_total"], 1);
    assert_eq!(m["nodes"]["joins_total"], 1);
    assert_eq!(m["nodes"]["lease_refresh_total"], 1);
    assert_eq!(m["nodes"]["online"], 1);
    let prom = gw.http_get("/metrics").await.text();
    for line in ["spiderweb_node_joins_total 1", "spiderweb_nodes_online 1", "spiderweb_invites_created_total 2"] {
        assert!(prom.contains(line), "/metrics lacks {line:?}:\n{prom}");
    }

    c.control_err_code("node_delete", json!({"node_id": "node-1", "node_secret": "bad"}), "node_auth_failed").await;
    let deleted = c.control_ok("node_delete", json!({"node_id": "node-1", "node_secret": secret})).await;
    assert_eq!(deleted, json!({"deleted": true, "node_id": "node-1"}));
    c.control_err_code("node_get", json!({"node_id": "node-1"}), "node_not_found").await;
}

/// A deliberate deviation from spec §6 (README "Deviations"): `node_join`,
/// `node_lease_refresh` and `node_service_upsert` are authorised by the credential they carry,
/// so a daemon node needs only the user token. This checks that the user token gets them —
/// past the connect gate of a gateway that has no project yet —, that a bad credential is
/// answered exactly as for admin, that every other admin-only op stays forbidden (`node_delete`
/// even with the right secret), and that pairing and refusals reach the audit log.
#[tokio::test]
async fn user_token_runs_the_node_ops_its_credential_authorises_and_nothing_more() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let mut user = spiderweb_tests::Client::connect(&gw, &gw.user_token()).await;
    let ack = user.handshake().await;
    assert_eq!(ack["role"], "user");
    assert_eq!(ack["requires_session_attach"], true, "a fresh gateway gates the user: {ack}");
    let gate_code = ack["connect_gate"]["code"].clone();

    let invite = c.control_ok("node_invite_create", json!({})).await;
    let n =
        user.control_ok("node_join", json!({"invite_token": invite["invite_token"], "node_name": "user-paired"})).await;
    assert_eq!(n["node_name"], "user-paired");
    let (id, secret) = (n["node_id"].clone(), n["node_secret"].clone());
    let refreshed = user.control_ok("node_lease_refresh", json!({"node_id": id, "node_secret": secret})).await;
    assert_eq!(refreshed["node_id"], id);
    let fs = json!({"service_id": "fs", "kind": "fs", "state": "online", "endpoints": ["/nodes/x/fs"]});
    let up =
        user.control_ok("node_service_upsert", json!({"node_id": id, "node_secret": secret, "services": [fs]})).await;
    assert_eq!(up["services"][0]["service_id"], "fs");
    let listed = c.control_ok("node_get", json!({"node_id": id})).await;
    assert_eq!(listed["node"]["service_count"], 1, "the user's upsert reached the catalog: {listed}");

    // Bad credentials: the same answer, word for word, whichever token asks.
    let bad_cases = [
        ("node_join", json!({"invite_token": invite["invite_token"]})),
        ("node_join", json!({"invite_token": "inv-0000"})),
        ("node_join", json!({})),
        ("node_lease_refresh", json!({"node_id": id, "node_secret": "secret-wrong"})),
        ("node_lease_refresh", json!({"node_id": id})),
        ("node_lease_refresh", json!({"node_id": "node-404", "node_secret": secret})),
        ("node_service_upsert", json!({"node_id": id, "node_secret": "secret-wrong", "services": []})),
        ("node_service_upsert", json!({"node_id": id, "node_secret": ""})),
    ];
    let expected_codes = [
        "invite_redeemed",
        "invite_not_found",
        "missing_field",
        "node_auth_failed",
        "missing_field",
        "node_not_found",
        "node_auth_failed",
        "invalid_payload",
    ];
    for ((op, payload), code) in bad_cases.iter().zip(expected_codes) {
        let as_user = user.control_err(op, payload.clone()).await;
        let as_admin = c.control_err(op, payload.clone()).await;
        assert_eq!(as_user["code"], code, "{op} {payload} as user: {as_user}");
        assert_eq!(
            (&as_user["code"], &as_user["message"]),
            (&as_admin["code"], &as_admin["message"]),
            "{op} {payload}: user and admin must get the same refusal"
        );
    }
    let after = c.control_ok("node_get", json!({"node_id": id})).await;
    assert_eq!(after["node"]["service_count"], 1, "refused upserts changed nothing: {after}");

    // Nothing else opens up: every other admin-only op is still forbidden to the user token.
    for op in [
        "metrics",
        "auth_status",
        "auth_rotate",
        "node_invite_create",
        "node_join_pending_list",
        "node_join_approve",
        "node_join_deny",
        "node_service_get",
        "node_list",
        "node_get",
        "node_delete",
        "audit_tail",
    ] {
        let payload = json!({"node_id": id, "node_secret": secret, "request_id": "pending-join-1", "role": "user"});
        user.control_err_code(op, payload, "forbidden").await;
    }
    c.control_ok("node_get", json!({"node_id": id})).await;
    // And the gate still holds for everything that is not the node's own business.
    user.control_err_code("workspace_status", json!({}), gate_code.as_str().unwrap()).await;

    let audit = c.control_ok("audit_tail", json!({"limit": 100})).await;
    let records = audit["audit"].as_array().unwrap();
    let of = |ty: &str, code: Option<&str>| {
        records.iter().filter(|r| r["control_type"] == ty && r["error_code"].as_str() == code).count()
    };
    assert_eq!(of("control.node_join", None), 1, "the pairing is audited: {audit}");
    assert_eq!(of("control.node_join", Some("invite_not_found")), 2, "{audit}");
    assert_eq!(of("control.node_lease_refresh", Some("node_auth_failed")), 2, "{audit}");
    assert_eq!(of("control.node_lease_refresh", None), 0, "a good refresh is not worth a record: {audit}");
    assert_eq!(of("control.node_delete", Some("forbidden")), 1, "{audit}");
}

#[tokio::test]
async fn join_requests_wait_for_an_operator() {
    let mut gw = Gateway::new(json!({"runtime": {"agents_dir": spiderweb_tests::TEST_AGENTS_DIR}}));
    gw.write_agent(spiderweb_tests::TEST_AGENTS_DIR, "helper", &json!({"name": "Helper", "description": "d"}));
    gw.env("SPIDERWEB_CONTROL_OPERATOR_TOKEN", "op-secret-1");
    gw.launch();
    let mut c = admin(&gw).await;
    let p = c.control_ok("project_create", json!({"name": "A", "vision": "v", "operator_token": "op-secret-1"})).await;
    c.control_ok("session_attach", json!({"session_key": "h", "agent_id": "helper", "project_id": p["project_id"]}))
        .await;
    // Any role may ask to join.
    let mut user = gw.user().await;
    let req = user
        .control_ok("node_join_request", json!({"node_name": "edge", "fs_url": "",
                                                 "platform": {"os": "linux", "arch": "x86_64", "runtime_kind": "native"}}))
        .await;
    assert_eq!(req["request_id"], "pending-join-1");
    assert_eq!(req["platform"]["runtime_kind"], "native");
    let other = user.control_ok("node_join_request", json!({})).await;
    assert_eq!(other["node_name"], other["request_id"], "the name defaults to the request id");

    let pending = c.control_ok("node_join_pending_list", json!({"operator_token": "op-secret-1"})).await;
    assert_eq!(pending["pending"].as_array().unwrap().len(), 2);
    c.control_err_code("node_join_approve", json!({"request_id": "pending-join-1"}), "missing_field").await;
    c.control_err_code(
        "node_join_approve",
        json!({"request_id": "pending-join-1", "operator_token": "wrong"}),
        "operator_auth_failed",
    )
    .await;
    c.control_err_code(
        "node_join_approve",
        json!({"request_id": "pending-join-7", "operator_token": "op-secret-1"}),
        "pending_join_not_found",
    )
    .await;
    let n = c
        .control_ok("node_join_approve", json!({"request_id": "pending-join-1", "operator_token": "op-secret-1"}))
        .await;
    assert_eq!(n["node_name"], "edge");
    assert_eq!(n["platform"]["os"], "linux");
    let denied = c
        .control_ok("node_join_deny", json!({"request_id": other["request_id"], "operator_token": "op-secret-1"}))
        .await;
    assert_eq!(denied, json!({"denied": true, "request_id": other["request_id"]}));
    let pending = c.control_ok("node_join_pending_list", json!({"operator_token": "op-secret-1"})).await;
    assert_eq!(pending["pending"], json!([]));
    let audit = c.control_ok("audit_tail", json!({"limit": 50})).await;
    let approvals: Vec<&Value> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["control_type"] == "control.node_join_approve")
        .collect();
    assert!(approvals.iter().all(|r| r["scope"] == "operator") && approvals.len() == 4, "{audit}");
}

#[tokio::test]
async fn mounts_follow_their_node_and_expired_leases_are_reaped() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let short =
        join(&mut c, json!({"lease_ttl_ms": 1500, "node_name": "short", "fs_url": "ws://127.0.0.1:9/v2/fs"})).await;
    let long = join(&mut c, json!({"node_name": "long"})).await;
    let p = c.control_ok("project_create", json!({"name": "P", "vision": "v"})).await;
    let pid = p["project_id"].clone();
    c.control_err_code(
        "project_mount_set",
        json!({"project_id": pid, "node_id": "node-9", "export_name": "work", "mount_path": "/src"}),
        "node_not_found",
    )
    .await;
    for node in [&short, &long] {
        c.control_ok(
            "project_mount_set",
            json!({"project_id": pid, "node_id": node["node_id"], "export_name": "work", "mount_path": "/src"}),
        )
        .await;
    }
    c.control_err_code(
        "project_mount_set",
        json!({"project_id": pid, "node_id": "node-1", "export_name": "work", "mount_path": "/src/sub"}),
        "mount_conflict",
    )
    .await;

    let w = c.control_ok("workspace_status", json!({"project_id": pid})).await;
    assert_eq!(w["desired_mounts"].as_array().unwrap().len(), 2);
    assert_eq!(w["availability"], json!({"mounts_total": 1, "online": 1, "degraded": 0, "missing": 0}));
    assert_eq!(w["mounts"][0]["node_id"], long["node_id"], "of two online mounts the later lease wins: {w}");
    for m in w["desired_mounts"].as_array().unwrap() {
        assert_eq!(m["state"], "online");
        assert!(m["node_name"].is_string() && m["fs_url"].is_string());
        // The admin connection is bound to mother, who is shown the node secrets.
        assert!(m["fs_auth_token"].as_str().is_some_and(|t| t.starts_with("secret-")), "{m}");
    }

    tokio::time::sleep(Duration::from_millis(1700)).await;
    let w = c.control_ok("workspace_status", json!({"project_id": pid})).await;
    let desired = w["desired_mounts"].as_array().unwrap();
    assert_eq!(desired.len(), 1, "the expired node's mount is reaped with it: {w}");
    assert_eq!(desired[0]["node_id"], long["node_id"]);
    c.control_err_code("node_get", json!({"node_id": short["node_id"]}), "node_not_found").await;
    let m = c.control_ok("metrics", json!({})).await;
    assert_eq!(m["nodes"]["reaped_total"], 1);
    assert_eq!(m["nodes"]["total"], 1);

    c.control_ok("node_delete", json!({"node_id": long["node_id"], "node_secret": long["node_secret"]})).await;
    let r = c.control_ok("reconcile_status", json!({"project_id": pid})).await;
    assert_eq!(r["projects"][0]["mounts"], 0, "a deleted node's mounts go too: {r}");
}

#[tokio::test]
async fn workspace_reports_missing_and_failover_nodes() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let a = join(&mut c, json!({"lease_ttl_ms": 60000})).await;
    let b = join(&mut c, json!({"lease_ttl_ms": 120000})).await;
    let p = c
        .control_ok(
            "project_up",
            json!({"name": "F", "vision": "v", "desired_mounts": [
        {"node_id": a["node_id"], "export_name": "w", "mount_path": "/data"},
        {"node_id": b["node_id"], "export_name": "w", "mount_path": "data/"}]}),
        )
        .await;
    let w = &p["workspace"];
    assert_eq!(w["mounts"][0]["node_id"], b["node_id"], "the longer lease wins the path: {w}");
    assert_eq!(w["drift"]["items"][0]["kind"], "failover_active");
    let r = c.control_ok("reconcile_status", json!({})).await;
    let proj = r["projects"].as_array().unwrap().iter().find(|x| x["project_id"] == p["project_id"]).unwrap().clone();
    assert_eq!((proj["online_mounts"].clone(), proj["selected_mounts"].clone()), (json!(1), json!(1)));
}

#[tokio::test]
async fn a_restart_keeps_paired_nodes_invites_and_mounts() {
    let mut gw = Gateway::start();
    let mut c = admin(&gw).await;
    let invite = c.control_ok("node_invite_create", json!({})).await;
    let n = c.control_ok("node_join", json!({"invite_token": invite["invite_token"], "node_name": "keeper"})).await;
    let p = c.control_ok("project_create", json!({"name": "K", "vision": "v"})).await;
    c.control_ok(
        "project_mount_set",
        json!({"project_id": p["project_id"], "node_id": n["node_id"], "export_name": "e", "mount_path": "/k"}),
    )
    .await;
    c.control_ok("node_join_request", json!({"node_name": "waiting"})).await;
    c.control_ok(
        "node_service_upsert",
        json!({"node_id": n["node_id"], "node_secret": n["node_secret"],
        "services": [{"service_id": "fs", "kind": "fs", "state": "online", "endpoints": ["/k"]}]}),
    )
    .await;
    drop(c);
    gw.restart();
    let mut c = admin(&gw).await;
    let ack = c.control_ok("node_service_watch", json!({})).await;
    assert_eq!(ack["replayed"], 1, "retained events survive a restart: {ack}");
    assert_eq!(c.take_pending()[0]["payload"]["services"][0]["service_id"], "fs");
    let got = c.control_ok("node_get", json!({"node_id": n["node_id"]})).await;
    assert_eq!(got["node"]["node_name"], "keeper");
    c.control_err_code("node_join", json!({"invite_token": invite["invite_token"]}), "invite_redeemed").await;
    assert_eq!(c.control_ok("node_join_pending_list", json!({})).await["pending"][0]["node_name"], "waiting");
    // The secret is not stored in plaintext, so mother sees it again once the node shows it.
    let w = c.control_ok("workspace_status", json!({"project_id": p["project_id"]})).await;
    assert_eq!(w["mounts"][0]["state"], "online");
    assert_eq!(w["mounts"][0]["fs_auth_token"], Value::Null);
    c.control_ok("node_lease_refresh", json!({"node_id": n["node_id"], "node_secret": n["node_secret"]})).await;
    let w = c.control_ok("workspace_status", json!({"project_id": p["project_id"]})).await;
    assert_eq!(w["mounts"][0]["fs_auth_token"], n["node_secret"]);
    let next = join(&mut c, json!({})).await;
    assert_eq!(next["node_id"], "node-2", "ids are never reissued after a restart");
    let secret = n["node_secret"].as_str().unwrap();
    for entry in std::fs::read_dir(gw.state_dir()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "node secret on disk in {:?}",
            entry.path()
        );
    }
}

#[tokio::test]
async fn service_watch_replays_then_pushes_with_visibility() {
    let mut gw = Gateway::new(json!({"runtime": {"agents_dir": spiderweb_tests::TEST_AGENTS_DIR}}));
    gw.write_agent(spiderweb_tests::TEST_AGENTS_DIR, "helper", &json!({"name": "Helper", "description": "d"}));
    gw.env("SPIDERWEB_NODE_SERVICE_WATCH_ALLOW_USER", "true");
    gw.launch();
    let project = spiderweb_tests::provision_user_world(&gw).await;
    let mut c = admin(&gw).await;
    let a = join(&mut c, json!({})).await;
    let b = join(&mut c, json!({})).await;
    c.control_ok(
        "project_mount_set",
        json!({"project_id": project, "node_id": a["node_id"], "export_name": "e", "mount_path": "/a"}),
    )
    .await;
    let upsert = |n: &Value, state: &str| {
        json!({"node_id": n["node_id"], "node_secret": n["node_secret"],
        "services": [{"service_id": "fs", "kind": "fs", "state": state, "endpoints": ["/x"]}]})
    };
    c.control_ok("node_service_upsert", upsert(&a, "s1")).await;
    c.control_ok("node_service_upsert", upsert(&b, "s2")).await;
    c.control_ok("node_service_upsert", upsert(&a, "s3")).await;

    let mut watcher = admin(&gw).await;
    let ack = watcher.control_ok("node_service_watch", json!({"replay_limit": 2})).await;
    assert_eq!(ack, json!({"enabled": true, "replay_limit": 2, "replayed": 2}));
    let replays = watcher.take_pending();
    let states: Vec<&Value> = replays.iter().map(|e| &e["payload"]["services"][0]["state"]).collect();
    assert_eq!(states, [&json!("s2"), &json!("s3")], "newest two, oldest first, before the ack: {replays:?}");
    assert!(replays.iter().all(|e| e["type"] == "control.node_service_event" && e.get("id").is_none()));

    let mut user = gw.user().await;
    let ack = user.control_ok("node_service_watch", json!({})).await;
    assert_eq!(ack["replayed"], 2, "a user sees only the node mounted in its project: {ack}");
    assert!(user.take_pending().iter().all(|e| e["payload"]["node_id"] == a["node_id"]));

    c.control_ok("node_service_upsert", upsert(&b, "s4")).await;
    c.control_ok("node_service_upsert", upsert(&a, "s5")).await;
    let live =
        watcher.wait_for("live event", Duration::from_secs(5), |v| v["payload"]["services"][0]["state"] == "s5").await;
    assert_eq!(live["payload"]["service_delta"]["updated"][0]["service_id"], "fs");
    let seen =
        user.wait_for("user's live event", Duration::from_secs(5), |v| v["type"] == "control.node_service_event").await;
    assert_eq!(seen["payload"]["services"][0]["state"], "s5", "node b's event is not visible to the user");
    assert_eq!(watcher.control_ok("node_service_unwatch", json!({})).await, json!({"enabled": false}));
    let m = c.control_ok("metrics", json!({})).await;
    assert_eq!(m["node_service_watch"]["subscribers"]["peak"], 2);
    assert_eq!(m["node_service_watch"]["fanout"]["events_total"], 5);
    assert_eq!(m["node_service_watch"]["retained"]["events"], 5);
    let prom = gw.http_get("/metrics").await.text();
    for line in [
        "spiderweb_node_service_watch_fanout_events_total 5",
        "spiderweb_node_service_watch_subscribers_peak 2",
        "spiderweb_node_service_watch_replay_requests_total 2",
        "spiderweb_node_service_watch_retained_capacity 1024",
    ] {
        assert!(prom.contains(line), "/metrics lacks {line:?}:\n{prom}");
    }
}

#[tokio::test]
async fn users_cannot_watch_unless_enabled() {
    let gw = Gateway::with_helper_agent(json!({}));
    spiderweb_tests::provision_user_world(&gw).await;
    let mut user = gw.user().await;
    let err = user.control_err_code("node_service_watch", json!({}), "forbidden").await;
    assert_eq!(err["message"], "node service watch is disabled for user role");
    let mut c = admin(&gw).await;
    c.control_err_code("node_service_watch", json!({"replay_limit": "x"}), "invalid_payload").await;
}

// ---------------------------------------------------------------------------------------------
// Tunnel and relay
// ---------------------------------------------------------------------------------------------

type Ws = WebSocketStream<tokio::net::TcpStream>;

async fn ws(addr: std::net::SocketAddr, path: &str) -> Ws {
    let (stream, head) = raw_upgrade(addr, path, &[]).await.unwrap_or_else(|e| panic!("upgrade {path}: {e}"));
    let _ = head;
    WebSocketStream::from_raw_socket(stream, Role::Client, None).await
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a frame within 5 s") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Whether the server closes `ws` within 5 s.
async fn closes(ws: &mut Ws) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn tunnel_hello(node_id: &Value, secret: &Value) -> Value {
    json!({"channel": "acheron", "type": "acheron.t_fs_hello", "tag": 1,
           "payload": {"protocol": "unified-v2-fs", "proto": 2, "node_id": node_id, "node_secret": secret}})
}

fn fs_hello(tag: u32, token: Option<&Value>, subscribe: bool) -> Value {
    let mut p = json!({"protocol": "unified-v2-fs", "proto": 2, "subscribe_invalidations": subscribe});
    if let Some(t) = token {
        p["auth_token"] = t.clone();
    }
    json!({"channel": "acheron", "type": "acheron.t_fs_hello", "tag": tag, "payload": p})
}

/// A standalone `spiderweb-fs-node` on a free port.
struct FsNode {
    child: Child,
    addr: std::net::SocketAddr,
}

impl FsNode {
    fn start(dir: &std::path::Path, token: &str) -> FsNode {
        let mut child = Command::new(bin_dir().join("spiderweb-fs-node"))
            .args(["--bind", "127.0.0.1", "--port", "0", "--auth-token", token])
            .arg("--export")
            .arg(format!("work={}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spiderweb-fs-node must be built (cargo build --workspace --bins)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("fs node said {line:?}"));
        FsNode { child, addr: addr.parse().unwrap() }
    }
}

impl Drop for FsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node end of a tunnel: dials `/v2/node`, says hello, then pumps frames between the
/// gateway and a real fs node until either side closes. Returns the pump task.
async fn tunnel_to(gw: &Gateway, n: &Value, node: &FsNode) -> tokio::task::JoinHandle<()> {
    let mut tunnel = ws(gw.addr(), "/v2/node").await;
    send(&mut tunnel, tunnel_hello(&n["node_id"], &n["node_secret"])).await;
    let ack = recv(&mut tunnel).await;
    assert_eq!(ack["type"], "acheron.r_fs_hello", "{ack}");
    assert_eq!(ack["payload"]["node_id"], n["node_id"]);
    let upstream = ws(node.addr, "/v2/fs").await;
    tokio::spawn(async move {
        let (mut gw_tx, mut gw_rx) = tunnel.split();
        let (mut node_tx, mut node_rx) = upstream.split();
        loop {
            tokio::select! {
                m = gw_rx.next() => match m {
                    Some(Ok(Message::Text(t))) => { if node_tx.send(Message::Text(t)).await.is_err() { return } }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => return,
                },
                m = node_rx.next() => match m {
                    Some(Ok(Message::Text(t))) => { if gw_tx.send(Message::Text(t)).await.is_err() { return } }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => return,
                },
            }
        }
    })
}

#[tokio::test]
async fn the_relay_reaches_a_real_node_through_its_tunnel() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let n = join(&mut c, json!({})).await;
    let secret = n["node_secret"].clone();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    let node = FsNode::start(dir.path(), secret.as_str().unwrap());
    let relay_path = format!("/v2/fs/node/{}", n["node_id"].as_str().unwrap());

    // Before the node dials in, a correct client is told the tunnel is missing.
    let mut early = ws(gw.addr(), &relay_path).await;
    send(&mut early, fs_hello(1, Some(&secret), false)).await;
    let e = recv(&mut early).await;
    assert_eq!(
        (e["error"]["errno"].clone(), e["error"]["message"].clone()),
        (json!(5), json!("node tunnel is unavailable"))
    );
    assert!(closes(&mut early).await);

    let _pump = tunnel_to(&gw, &n, &node).await;

    // Refusals, each followed by a close.
    for (path, token, errno, message) in [
        (relay_path.as_str(), None, 13, "missing auth_token in fs hello payload"),
        (relay_path.as_str(), Some(json!("secret-wrong")), 13, "NodeAuthFailed"),
        ("/v2/fs/node/node-77", Some(secret.clone()), 2, "NodeNotFound"),
    ] {
        let mut bad = ws(gw.addr(), path).await;
        send(&mut bad, fs_hello(3, token.as_ref(), false)).await;
        let e = recv(&mut bad).await;
        assert_eq!(e["type"], "acheron.err_fs");
        assert_eq!(
            (e["tag"].clone(), e["error"]["errno"].clone(), e["error"]["message"].clone()),
            (json!(3), json!(errno), json!(message))
        );
        assert!(closes(&mut bad).await, "{path} {token:?} must close");
    }
    let mut control_first = ws(gw.addr(), &relay_path).await;
    send(&mut control_first, json!({"channel": "control", "type": "control.version", "id": "v"})).await;
    assert_eq!(
        recv(&mut control_first).await["error"]["message"],
        "wrong websocket endpoint: use / for control protocol"
    );

    // Two clients, both numbering their requests 1..=20, all in flight at once.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = ws(gw.addr(), &relay_path).await;
        send(&mut client, fs_hello(100, Some(&secret), false)).await;
        let hello = recv(&mut client).await;
        assert_eq!(hello["type"], "acheron.r_fs_hello", "the node's own hello reply comes back: {hello}");
        assert_eq!(hello["tag"], 100);
        send(&mut client, json!({"channel": "acheron", "type": "acheron.t_fs_exports", "tag": 101})).await;
        let exports = recv(&mut client).await;
        assert_eq!(exports["payload"]["exports"][0]["name"], "work");
        clients.push((client, exports["payload"]["exports"][0]["root"].as_u64().unwrap()));
    }
    for (client, root) in clients.iter_mut() {
        for i in 1..=20u32 {
            send(
                client,
                json!({"channel": "acheron", "type": "acheron.t_fs_lookup", "tag": i, "node": *root,
                                "payload": {"name": format!("f{}.txt", i - 1)}}),
            )
            .await;
        }
    }
    for (client, _) in clients.iter_mut() {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 1..=20 {
            let r = recv(client).await;
            assert_eq!(r["type"], "acheron.r_fs_lookup", "{r}");
            seen.insert(r["tag"].as_u64().unwrap(), r["payload"]["attr"]["sz"].as_u64().unwrap());
        }
        let expected: std::collections::BTreeMap<u64, u64> =
            (1..=20u64).map(|t| (t, format!("file {}", t - 1).len() as u64)).collect();
        assert_eq!(seen, expected, "each reply carries the client's own tag and the right file");
    }
    // Requests of one connection reach the node in the order sent: a pipelined write and
    // read of one handle see each other.
    let (client, root) = &mut clients[0];
    let root = *root;
    send(
        client,
        json!({"channel": "acheron", "type": "acheron.t_fs_create", "tag": 300, "node": root,
                        "payload": {"name": "ordered.txt", "flags": 2}}),
    )
    .await;
    let h = recv(client).await["payload"]["h"].clone();
    for i in 0..10u32 {
        let data = format!("round {i:02}");
        send(
            client,
            json!({"channel": "acheron", "type": "acheron.t_fs_write", "tag": 400 + 2 * i, "h": h,
                            "payload": {"off": 0, "data_b64": spiderweb_tests::B64.encode(&data)}}),
        )
        .await;
        send(
            client,
            json!({"channel": "acheron", "type": "acheron.t_fs_read", "tag": 401 + 2 * i, "h": h,
                            "payload": {"off": 0, "len": 8}}),
        )
        .await;
    }
    let mut reads = std::collections::BTreeMap::new();
    let mut writes = 0;
    while reads.len() + writes < 20 {
        let r = recv(client).await;
        writes += usize::from(r["type"] == "acheron.r_fs_write");
        if r["type"] == "acheron.r_fs_read" {
            let bytes = spiderweb_tests::B64.decode(r["payload"]["data_b64"].as_str().unwrap()).unwrap();
            reads.insert(r["tag"].as_u64().unwrap(), String::from_utf8(bytes).unwrap());
        }
    }
    for (i, (tag, text)) in reads.iter().enumerate() {
        assert_eq!((*tag, text.as_str()), (401 + 2 * i as u64, format!("round {i:02}").as_str()));
    }
    send(client, json!({"channel": "acheron", "type": "acheron.t_fs_getattr", "node": 1})).await;
    assert_eq!(recv(client).await["error"]["message"], "missing request tag");
    send(client, json!({"channel": "acheron", "type": "acheron.t_version", "tag": 5, "version": "acheron-1"})).await;
    assert_eq!(recv(client).await["error"]["message"], "UnsupportedType");
}

#[tokio::test]
async fn events_reach_subscribed_relay_clients() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let n = join(&mut c, json!({})).await;
    let secret = n["node_secret"].clone();
    let dir = tempfile::tempdir().unwrap();
    let node = FsNode::start(dir.path(), secret.as_str().unwrap());
    let _pump = tunnel_to(&gw, &n, &node).await;
    let path = format!("/v2/fs/node/{}", n["node_id"].as_str().unwrap());
    let mut listener = ws(gw.addr(), &path).await;
    send(&mut listener, fs_hello(1, Some(&secret), true)).await;
    assert_eq!(recv(&mut listener).await["type"], "acheron.r_fs_hello");
    let mut writer = ws(gw.addr(), &path).await;
    send(&mut writer, fs_hello(1, Some(&secret), false)).await;
    recv(&mut writer).await;
    send(&mut writer, json!({"channel": "acheron", "type": "acheron.t_fs_exports", "tag": 2})).await;
    let root = recv(&mut writer).await["payload"]["exports"][0]["root"].as_u64().unwrap();
    send(&mut writer, json!({"channel": "acheron", "type": "acheron.t_fs_mkdir", "tag": 3, "node": root, "payload": {"name": "made"}})).await;
    let event = recv(&mut listener).await;
    assert_eq!(event["type"], "acheron.e_fs_inval_dir", "{event}");
    assert!(event.get("tag").is_none());
    assert!(dir.path().join("made").is_dir());
}

#[tokio::test]
async fn tunnel_hello_errors_timeouts_replacement_and_loss() {
    let gw = Gateway::start_with(json!({"nodes": {"tunnel_reply_timeout_ms": 400}}));
    let mut c = admin(&gw).await;
    let n = join(&mut c, json!({})).await;
    for (hello, errno, message) in [
        (tunnel_hello(&json!("bad id!"), &n["node_secret"]), 22, "InvalidPayload"),
        (tunnel_hello(&json!("node-42"), &n["node_secret"]), 2, "NodeNotFound"),
        (tunnel_hello(&n["node_id"], &json!("secret-bad")), 13, "NodeAuthFailed"),
        (
            json!({"channel": "acheron", "type": "acheron.t_fs_hello", "tag": 1, "payload": {"protocol": "unified-v2-fs", "proto": 3}}),
            22,
            "ProtocolMismatch",
        ),
        (
            json!({"channel": "acheron", "type": "acheron.t_fs_exports", "tag": 1}),
            22,
            "acheron.t_fs_hello must be negotiated first",
        ),
    ] {
        let mut t = ws(gw.addr(), "/v2/node").await;
        send(&mut t, hello.clone()).await;
        let e = recv(&mut t).await;
        assert_eq!(
            (e["error"]["errno"].clone(), e["error"]["message"].clone()),
            (json!(errno), json!(message)),
            "{hello}"
        );
        assert!(closes(&mut t).await);
    }

    // A tunnel that never answers: the client gets errno 5 after the reply deadline.
    let mut silent = ws(gw.addr(), "/v2/node").await;
    send(&mut silent, tunnel_hello(&n["node_id"], &n["node_secret"])).await;
    recv(&mut silent).await;
    let path = format!("/v2/fs/node/{}", n["node_id"].as_str().unwrap());
    let mut client = ws(gw.addr(), &path).await;
    send(&mut client, fs_hello(9, Some(&n["node_secret"]), false)).await;
    let forwarded = recv(&mut silent).await;
    assert_eq!(forwarded["type"], "acheron.t_fs_hello");
    assert_eq!(forwarded["tag"], 1, "upstream tags start at 1");
    assert_eq!(forwarded["payload"]["auth_token"], n["node_secret"]);
    let e = recv(&mut client).await;
    assert_eq!(
        (e["tag"].clone(), e["error"]["errno"].clone(), e["error"]["message"].clone()),
        (json!(9), json!(5), json!("NodeTunnelUnavailable"))
    );
    assert!(closes(&mut client).await, "a hello that failed closes");

    // A newer tunnel replaces the older one, which is closed.
    let mut newer = ws(gw.addr(), "/v2/node").await;
    send(&mut newer, tunnel_hello(&n["node_id"], &n["node_secret"])).await;
    recv(&mut newer).await;
    assert!(closes(&mut silent).await, "the replaced tunnel is closed");
    let mut client = ws(gw.addr(), &path).await;
    send(&mut client, fs_hello(7, Some(&n["node_secret"]), false)).await;
    let hello = recv(&mut newer).await;
    let upstream_tag = hello["tag"].clone();
    let mut reply = json!({"channel": "acheron", "type": "acheron.r_fs_hello", "ok": true, "payload": {"protocol": "unified-v2-fs", "proto": 2}});
    reply["tag"] = upstream_tag;
    send(&mut newer, reply).await;
    assert_eq!(recv(&mut client).await["tag"], 7, "the reply comes back with the client's tag");
    // A later tunnel hello must name the same node.
    send(
        &mut newer,
        json!({"channel": "acheron", "type": "acheron.t_fs_hello", "tag": 2,
        "payload": {"protocol": "unified-v2-fs", "proto": 2, "node_id": n["node_id"]}}),
    )
    .await;
    assert_eq!(recv(&mut newer).await["type"], "acheron.r_fs_hello");

    // Losing the tunnel fails what is pending at once.
    send(&mut client, json!({"channel": "acheron", "type": "acheron.t_fs_exports", "tag": 8})).await;
    let pending = recv(&mut newer).await;
    assert_eq!(pending["type"], "acheron.t_fs_exports");
    drop(newer);
    let e = recv(&mut client).await;
    assert_eq!((e["tag"].clone(), e["error"]["errno"].clone()), (json!(8), json!(5)));
}

#[tokio::test]
async fn the_gateway_registers_its_own_exports_as_node_spiderweb_local() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(
        json!({"fs": {"exports": [format!("work={}", dir.path().display())], "auth_token": "local-fs-token"}}),
    );
    let mut c = admin(&gw).await;
    let node = c.control_ok("node_get", json!({"node_id": "spiderweb-local"})).await;
    assert_eq!(node["node"]["fs_url"], format!("ws://{}/v2/fs", gw.addr()));
    let w = c.control_ok("workspace_status", json!({"project_id": "system"})).await;
    let paths: Vec<&str> = w["mounts"].as_array().unwrap().iter().map(|m| m["mount_path"].as_str().unwrap()).collect();
    // The configured export, and the synthetic exports where the original mounts them (§8).
    let expected = [
        "/meta",
        "/projects/system/meta",
        "/agents/self/chat",
        "/projects/system/agents/self/chat",
        "/agents/self/jobs",
        "/projects/system/agents/self/jobs",
        "/nodes/local/fs",
        "/projects/system/nodes/local/fs",
        "/projects/system/fs/local::fs",
    ];
    assert_eq!(paths, expected);
    assert!(
        w["mounts"].as_array().unwrap().iter().all(|m| m["online"] == true && m["fs_auth_token"] == "local-fs-token")
    );
    assert_eq!(c.control_ok("metrics", json!({})).await["nodes"]["ensured_total"], 1);
}

#[tokio::test]
async fn users_do_not_see_mounts_of_services_they_may_not_invoke() {
    let gw = Gateway::with_helper_agent(json!({}));
    let project = spiderweb_tests::provision_user_world(&gw).await;
    let mut c = admin(&gw).await;
    let n = join(&mut c, json!({})).await;
    for path in ["/open", "/admin-only", "/files"] {
        c.control_ok(
            "project_mount_set",
            json!({"project_id": project, "node_id": n["node_id"], "export_name": "e", "mount_path": path}),
        )
        .await;
    }
    let invoke = |id: &str, path: &str, permissions: Value| {
        json!({"service_id": id, "kind": "tool", "state": "online",
        "endpoints": [path], "capabilities": {"invoke": true}, "permissions": permissions})
    };
    c.control_ok(
        "node_service_upsert",
        json!({"node_id": n["node_id"], "node_secret": n["node_secret"], "services": [
        invoke("o", "/open", json!({"allow_roles": ["admin", "user"]})),
        invoke("a", "/admin-only", json!({"allow_roles": ["admin"]})),
        {"service_id": "fs", "kind": "fs", "state": "online", "endpoints": ["/files"]}]}),
    )
    .await;

    let paths = |w: &Value| -> Vec<String> {
        w["desired_mounts"].as_array().unwrap().iter().map(|m| m["mount_path"].as_str().unwrap().to_owned()).collect()
    };
    let mut user = gw.user().await;
    let w = user.control_ok("workspace_status", json!({})).await;
    assert_eq!(paths(&w), ["/open", "/files"], "{w}");
    assert!(w["mounts"].as_array().unwrap().iter().all(|m| m["fs_auth_token"].is_null()), "only mother gets secrets");
    let w = c.control_ok("workspace_status", json!({"project_id": project})).await;
    assert_eq!(paths(&w), ["/open", "/admin-only", "/files"]);
}

#[tokio::test]
async fn node_mutations_are_topology_events() {
    let gw = Gateway::start();
    let mut watcher = admin(&gw).await;
    watcher.control_ok("debug_subscribe", json!({})).await;
    let mut c = admin(&gw).await;
    let n = join(&mut c, json!({})).await;
    let event = watcher
        .wait_for("topology event", Duration::from_secs(5), |v| {
            v["category"] == "control.workspace_topology" && v["payload"]["reason"] == "node_join"
        })
        .await;
    assert_eq!(event["request"], "workspace-topology");
    let availability = watcher
        .wait_for("availability event", Duration::from_secs(5), |v| v["category"] == "control.workspace_availability")
        .await;
    assert_eq!(availability["payload"]["after"]["nodes"], json!({"online": 1, "total": 1}));
    c.control_ok("node_delete", json!({"node_id": n["node_id"], "node_secret": n["node_secret"]})).await;
    watcher.wait_for("delete event", Duration::from_secs(5), |v| v["payload"]["reason"] == "node_delete").await;
}

#[tokio::test]
async fn relay_frames_are_capped_at_256_kib() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    let n = join(&mut c, json!({})).await;
    let mut client = ws(gw.addr(), &format!("/v2/fs/node/{}", n["node_id"].as_str().unwrap())).await;
    let big = json!({"channel": "acheron", "type": "acheron.t_fs_hello", "tag": 1,
                     "payload": {"protocol": "unified-v2-fs", "proto": 2, "pad": "x".repeat(300 * 1024)}});
    let _ = client.send(Message::text(big.to_string())).await;
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the relay closes a connection that sends an oversized frame");
    assert_eq!(code, Some(1009), "close 1009 (message too big)");
    gw.admin().await.ping().await;
}

#[tokio::test]
async fn join_requests_are_bounded() {
    let gw = Gateway::start();
    let mut c = admin(&gw).await;
    for _ in 0..256 {
        c.control_ok("node_join_request", json!({})).await;
    }
    let err = c.control_err_code("node_join_request", json!({}), "queue_saturated").await;
    assert_eq!(err["message"], "pending join limit (256) reached");
    // Handling one frees a slot.
    c.control_ok("node_join_deny", json!({"request_id": "pending-join-1"})).await;
    c.control_ok("node_join_request", json!({})).await;
}

#[tokio::test]
async fn node_scope_tokens_and_correlation_guard_node_mutations() {
    let mut gw = Gateway::new(json!({}));
    gw.env("SPIDERWEB_CONTROL_NODE_SCOPE_TOKEN", "node-scope-1");
    gw.launch();
    let mut c = admin(&gw).await;
    c.control_err_code("node_invite_create", json!({}), "missing_field").await;
    c.control_err_code("node_invite_create", json!({"node_scope_token": "wrong"}), "operator_auth_failed").await;
    let invite = c.control_ok("node_invite_create", json!({"node_scope_token": "node-scope-1"})).await;
    let n = c.control_ok("node_join", json!({"invite_token": invite["invite_token"]})).await;
    c.control_err_code(
        "node_delete",
        json!({"node_id": n["node_id"], "node_secret": n["node_secret"]}),
        "missing_field",
    )
    .await;
    // A mutation without id or correlation_id cannot be audited, so it is refused.
    c.send_json(&json!({"channel": "control", "type": "control.node_invite_create",
                        "payload": {"node_scope_token": "node-scope-1"}}))
        .await;
    let reply = c.recv_json().await;
    assert_eq!(reply["error"]["code"], "correlation_required", "{reply}");
    c.control_ok(
        "node_delete",
        json!({"node_id": n["node_id"], "node_secret": n["node_secret"], "node_scope_token": "node-scope-1"}),
    )
    .await;
}
