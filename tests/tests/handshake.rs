//! Handshake order on `/` (unified-v2 §4): control.version then control.connect, the acks'
//! exact shapes, version payload errors (+ close), acheron negotiated independently, WebSocket
//! control frames, and the rejection of unknown WebSocket paths.

use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::{Client, Gateway, Incoming, assert_control_error};
use tokio_tungstenite::tungstenite::Message;

const BOOTSTRAP_MSG: &str =
    "Bootstrap required: chat with Mother to define the first project vision and first non-system agent.";
const SETUP_MSG: &str =
    "Project setup required: ask Mother for the first project name, vision, and first non-system agent.";

async fn admin_conn(gw: &Gateway) -> Client {
    Client::connect(gw, &gw.admin_token()).await
}

#[tokio::test]
async fn version_ack_is_exact() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.send_json(&json!({"channel":"control","type":"control.version","id":"v1","payload":{"protocol":"unified-v2"}}))
        .await;
    let r = c.recv_json().await;
    assert_eq!(
        r,
        json!({"channel":"control","type":"control.version_ack","id":"v1","ok":true,
               "payload":{"protocol":"unified-v2","fsrpc_runtime":"acheron-1","fsrpc_node":"unified-v2-fs","fsrpc_node_proto":2}})
    );
}

#[tokio::test]
async fn connect_ack_for_admin_on_a_fresh_install() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.version().await;
    c.send_json(&json!({"channel":"control","type":"control.connect","id":"c1","payload":{}})).await;
    let r = c.recv_json().await;
    assert_eq!(r["type"], json!("control.connect_ack"), "{r}");
    assert_eq!(r["id"], json!("c1"), "{r}");
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(
        r["payload"],
        json!({
            "agent_id":"mother","project_id":"system","session":"main","protocol":"unified-v2","role":"admin",
            "bootstrap_only":true,"bootstrap_message":BOOTSTRAP_MSG,
            "project_setup_required":true,"project_setup_message":SETUP_MSG,
            "project_setup_project_id":"system","project_setup_project_vision":null,
            "requires_session_attach":false,"connect_gate":null
        }),
        "connect_ack payload"
    );
}

#[tokio::test]
async fn connect_ack_for_user_on_a_fresh_install_is_gated() {
    let gw = Gateway::start();
    let mut c = Client::connect(&gw, &gw.user_token()).await;
    let ack = c.handshake().await;
    assert_eq!(ack["role"], json!("user"), "{ack}");
    assert_eq!(ack["session"], json!("main"), "{ack}");
    assert_eq!(ack["protocol"], json!("unified-v2"), "{ack}");
    assert_eq!(ack["agent_id"], json!("mother"), "{ack}");
    assert_eq!(ack["project_id"], json!("system"), "{ack}");
    assert_eq!(ack["bootstrap_only"], json!(true), "{ack}");
    assert_eq!(ack["bootstrap_message"], Value::Null, "bootstrap_message is admin-only: {ack}");
    assert_eq!(ack["requires_session_attach"], json!(true), "{ack}");
    assert_eq!(
        ack["connect_gate"],
        json!({"code":"provisioning_required","message":"no non-system project/agent is available; an admin should use Mother to provision one"}),
        "{ack}"
    );
}

#[tokio::test]
async fn control_before_version_is_protocol_mismatch_and_close() {
    let gw = Gateway::start();
    for first in [
        json!({"channel":"control","type":"control.connect","id":"c0"}),
        json!({"channel":"control","type":"control.ping","id":"c0"}),
        json!({"channel":"control","type":"control.agent_list","id":"c0"}),
    ] {
        let mut c = admin_conn(&gw).await;
        c.send_json(&first).await;
        let r = c.recv_json().await;
        assert_eq!(
            r,
            json!({"channel":"control","type":"control.error","id":"c0","ok":false,
                   "error":{"code":"protocol_mismatch","message":"control.version must be negotiated first"}}),
            "first frame {first}"
        );
        c.expect_close().await;
    }
    let mut c = admin_conn(&gw).await;
    c.handshake().await;
}

#[tokio::test]
async fn bad_version_payloads_are_protocol_mismatch_and_close() {
    let gw = Gateway::start();
    let cases: Vec<(Option<Value>, &str)> = vec![
        (None, "MissingField"),
        (Some(json!({})), "MissingField"),
        (Some(json!("unified-v2")), "InvalidType"),
        (Some(json!({"protocol": 2})), "InvalidType"),
        (Some(json!({"protocol": "unified-v1"})), "ProtocolMismatch"),
        (Some(json!({"protocol": "UNIFIED-V2"})), "ProtocolMismatch"),
    ];
    for (payload, message) in cases {
        let mut c = admin_conn(&gw).await;
        let mut env = json!({"channel":"control","type":"control.version","id":"v"});
        if let Some(p) = &payload {
            env["payload"] = p.clone();
        }
        c.send_json(&env).await;
        let r = c.recv_json().await;
        let err = assert_control_error(&r, &format!("version payload {payload:?}"));
        assert_eq!(err["code"], json!("protocol_mismatch"), "payload {payload:?}: {r}");
        assert_eq!(err["message"], json!(message), "payload {payload:?}: {r}");
        assert_eq!(r["id"], json!("v"), "id must be echoed: {r}");
        c.expect_close().await;
    }
}

#[tokio::test]
async fn repeated_version_is_answered_and_connect_is_optional() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.version().await;
    // control.connect is not enforced: ops work right after version.
    c.ping().await;
    let agents = c.control_ok("agent_list", Value::Null).await;
    assert!(agents["agents"].is_array(), "{agents}");
    c.version().await;
    c.handshake().await;
    c.ping().await;
}

#[tokio::test]
async fn ids_are_echoed_and_absent_ids_stay_absent() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.version().await;
    c.send_json(&json!({"channel":"control","type":"control.ping","id":"weird id ✓ \"quoted\""})).await;
    let r = c.recv_json().await;
    assert_eq!(
        r,
        json!({"channel":"control","type":"control.pong","id":"weird id ✓ \"quoted\"","ok":true,"payload":{}})
    );
    c.send_json(&json!({"channel":"control","type":"control.ping"})).await;
    let r = c.recv_json().await;
    assert_eq!(
        r,
        json!({"channel":"control","type":"control.pong","ok":true,"payload":{}}),
        "no id in the request → none in the reply"
    );
}

#[tokio::test]
async fn acheron_is_negotiated_independently_of_control() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    // No control.version at all.
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_version","tag":1,"msize":1048576,"version":"acheron-1"}))
        .await;
    let r = c.recv_json().await;
    assert_eq!(
        r,
        json!({"channel":"acheron","type":"acheron.r_version","tag":1,"ok":true,"payload":{"msize":1048576,"version":"acheron-1"}})
    );
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_attach","tag":2,"fid":1})).await;
    let r = c.recv_json().await;
    assert_eq!(
        r,
        json!({"channel":"acheron","type":"acheron.r_attach","tag":2,"ok":true,"payload":{"qid":{"path":1,"type":"dir"}}})
    );
    // msize is echoed, default 1048576 when absent; a later t_version is allowed.
    let p = c.acheron_ok("t_version", json!({"msize": 8192, "version": "acheron-1"})).await;
    assert_eq!(p, json!({"msize": 8192, "version": "acheron-1"}));
    let p = c.acheron_ok("t_version", json!({"version": "acheron-1"})).await;
    assert_eq!(p, json!({"msize": 1048576, "version": "acheron-1"}));
    // Control negotiation still required separately for control ops.
    c.send_json(&json!({"channel":"control","type":"control.ping","id":"p"})).await;
    let r = c.recv_json().await;
    assert_eq!(r["error"]["code"], json!("protocol_mismatch"), "{r}");
}

#[tokio::test]
async fn acheron_before_t_version_is_protocol_mismatch_and_close() {
    let gw = Gateway::start();
    for first in [
        json!({"channel":"acheron","type":"acheron.t_attach","tag":5,"fid":1}),
        json!({"channel":"acheron","type":"acheron.t_walk","tag":5,"fid":1,"newfid":2,"path":["meta"]}),
    ] {
        let mut c = admin_conn(&gw).await;
        c.handshake().await; // control.version does not negotiate acheron
        c.send_json(&first).await;
        let r = c.recv_json().await;
        assert_eq!(
            r,
            json!({"channel":"acheron","type":"acheron.error","tag":5,"ok":false,
                   "error":{"code":"protocol_mismatch","message":"acheron.t_version must be negotiated first"}}),
            "first acheron frame {first}"
        );
        c.expect_close().await;
    }
}

#[tokio::test]
async fn wrong_or_missing_acheron_version_is_protocol_mismatch_and_close() {
    let gw = Gateway::start();
    for fields in [json!({"version": "acheron-2"}), json!({}), json!({"version": ""})] {
        let mut c = admin_conn(&gw).await;
        let e = c.acheron_err("t_version", fields.clone()).await;
        assert_eq!(e, json!({"code":"protocol_mismatch","message":"unsupported fsrpc runtime version"}), "{fields}");
        c.expect_close().await;
    }
    // A later wrong t_version also closes.
    let mut c = admin_conn(&gw).await;
    c.fs_attach().await;
    let e = c.acheron_err("t_version", json!({"version": "9p2000"})).await;
    assert_eq!(e["code"], json!("protocol_mismatch"));
    c.expect_close().await;
}

#[tokio::test]
async fn websocket_ping_is_answered_with_the_same_payload() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.handshake().await;
    c.send_message(Message::Ping(b"are-you-there".to_vec().into())).await;
    loop {
        match c.next_incoming(Duration::from_secs(5)).await {
            Incoming::Pong(p) => {
                assert_eq!(p, b"are-you-there");
                break;
            }
            Incoming::Ping(_) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    c.ping().await;
}

#[tokio::test]
async fn client_close_is_answered_with_a_close() {
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.handshake().await;
    c.close(1000).await;
    let end = c.drain_until_end(Duration::from_secs(10)).await;
    let (_, how) = end.expect("server did not finish the close handshake within 10 s");
    assert!(how.starts_with("close frame"), "expected the server's close frame, got {how}");
}

#[tokio::test]
async fn unknown_websocket_path_gets_invalid_envelope_and_close_1008() {
    let gw = Gateway::start();
    let auth = format!("Bearer {}", gw.admin_token());
    for path in ["/nope", "/v3", "/api/ws", "/nope?x=1"] {
        let mut c = match Client::try_connect_with(&gw, path, &[("Authorization", &auth)]).await {
            Ok(c) => c,
            Err(e) => panic!("{path}: a valid upgrade must complete with 101, got {e}"),
        };
        let f = c.recv_json().await;
        assert_eq!(
            f,
            json!({"channel":"control","type":"control.error","ok":false,"error":{"code":"invalid_envelope","message":"invalid websocket path"}}),
            "{path}"
        );
        assert_eq!(c.expect_close().await, Some(1008), "{path}");
    }
    // Without a token too (path check comes before authentication).
    let mut c = Client::connect_with(&gw, "/nope", &[]).await;
    let f = c.recv_json().await;
    assert_eq!(f["error"]["code"], json!("invalid_envelope"), "{f}");
    assert_eq!(c.expect_close().await, Some(1008));
}

#[tokio::test]
async fn handshake_frames_are_only_answered_once() {
    // After the handshake nothing unsolicited arrives on an admin connection.
    let gw = Gateway::start();
    let mut c = admin_conn(&gw).await;
    c.handshake().await;
    let extra = c.try_recv_json(Duration::from_millis(500)).await;
    assert!(extra.is_none(), "unexpected unsolicited frame after the handshake: {extra:?}");
    let r = c.acheron("t_version", json!({"version":"acheron-1"})).await;
    assert_eq!(r["type"], json!("acheron.r_version"), "{r}");
    let extra = c.try_recv_json(Duration::from_millis(300)).await;
    assert!(extra.is_none(), "unexpected frame: {extra:?}");
}
