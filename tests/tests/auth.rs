//! Authentication on `/`: the tokens file, the accepted `Authorization` forms, refusals
//! (wrong/missing token, token in the URL, foreign Origin), `auth_status`/`auth_rotate`.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::{Client, ConnectError, Gateway, assert_token_format, int_at, provision_user_world, str_at};

fn auth_failed_frame() -> Value {
    json!({"channel":"control","type":"control.error","ok":false,"error":{"code":"provider_auth_failed","message":"forbidden"}})
}

/// Upgrade must succeed (101), then exactly the forbidden frame, then close 1008.
async fn assert_refused_after_upgrade(gw: &Gateway, headers: &[(&str, &str)], what: &str) {
    let mut c = match Client::try_connect_with(gw, "/", headers).await {
        Ok(c) => c,
        Err(e) => panic!("{what}: the upgrade must still complete with 101 (ZSC ping expects it), got {e}"),
    };
    let f = c.recv_json().await;
    assert_eq!(f, auth_failed_frame(), "{what}: unexpected first frame");
    let code = c.expect_close().await;
    assert_eq!(code, Some(1008), "{what}: expected close code 1008");
}

#[tokio::test]
async fn tokens_file_has_mode_0600_and_the_documented_format() {
    let gw = Gateway::start();
    let path = gw.tokens_path();
    let md = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{} missing: {e}", path.display()));
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "{} must be mode 0600", path.display());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n  \""), "auth_tokens.json must be pretty-printed with 2-space indent: {text:?}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema"], json!(3), "schema must be 3: {v}");
    let admin = str_at(&v, "admin_token");
    let user = str_at(&v, "user_token");
    assert_token_format(admin, "sw-admin_");
    assert_token_format(user, "sw-user_");
    assert_ne!(admin[9..], user[8..], "admin and user tokens must be independent");
    int_at(&v, "updated_at_ms");
    // Null fields are omitted.
    for (k, val) in v.as_object().unwrap() {
        assert!(!val.is_null(), "null field {k} must be omitted from auth_tokens.json: {v}");
    }
}

#[tokio::test]
async fn two_gateways_get_different_tokens() {
    let a = Gateway::start();
    let b = Gateway::start();
    assert_ne!(a.admin_token(), b.admin_token());
    assert_ne!(a.user_token(), b.user_token());
}

#[tokio::test]
async fn bearer_lowercase_bearer_and_bare_token_are_accepted() {
    let gw = Gateway::start();
    let admin = gw.admin_token();
    let user = gw.user_token();
    let cases = [
        (format!("Bearer {admin}"), "admin"),
        (format!("bearer {admin}"), "admin"),
        (admin.clone(), "admin"),
        (format!("  Bearer {admin}\t"), "admin"),
        (format!("Bearer {user}"), "user"),
        (user.clone(), "user"),
    ];
    for (value, role) in cases {
        let mut c = Client::connect_with(&gw, "/", &[("Authorization", &value)]).await;
        let ack = c.handshake().await;
        assert_eq!(ack["role"], json!(role), "Authorization {value:?}: connect_ack {ack}");
    }
    // Header name is case-insensitive.
    for name in ["authorization", "AUTHORIZATION", "AuThOrIzAtIoN"] {
        let mut c = Client::connect_with(&gw, "/", &[(name, &format!("Bearer {admin}"))]).await;
        let ack = c.handshake().await;
        assert_eq!(ack["role"], json!("admin"), "header {name}: {ack}");
    }
}

#[tokio::test]
async fn missing_or_wrong_token_gets_forbidden_frame_and_close_1008() {
    let gw = Gateway::start();
    let admin = gw.admin_token();
    assert_refused_after_upgrade(&gw, &[], "no Authorization header").await;
    assert_refused_after_upgrade(
        &gw,
        &[("Authorization", "Bearer sw-admin_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")],
        "wrong token",
    )
    .await;
    assert_refused_after_upgrade(&gw, &[("Authorization", "Bearer ")], "empty bearer").await;
    assert_refused_after_upgrade(&gw, &[("Authorization", &format!("Basic {admin}"))], "Basic scheme").await;
    assert_refused_after_upgrade(&gw, &[("Authorization", &format!("Bearer {admin}x"))], "token with a suffix").await;
    assert_refused_after_upgrade(&gw, &[("Authorization", &admin[..admin.len() - 1])], "truncated token").await;
    // The server keeps serving.
    let mut c = gw.admin().await;
    c.ping().await;
}

#[tokio::test]
async fn token_in_the_url_is_refused_with_400() {
    let gw = Gateway::start();
    let admin = gw.admin_token();
    let auth = format!("Bearer {admin}");
    for query in [
        format!("/?token={admin}"),
        format!("/?access_token={admin}"),
        format!("/?auth_token={admin}"),
        format!("/?x=1&token={admin}"),
    ] {
        // Refused even when a valid header is present too: the URL leaked the secret.
        for headers in [vec![], vec![("Authorization", auth.as_str())]] {
            let r = match Client::try_connect_with(&gw, &query, &headers).await {
                Ok(_) => panic!("{query} with {headers:?}: upgrade must be refused, got 101"),
                Err(e) => e.into_http(&query),
            };
            assert_eq!(r.status, 400, "{query}: {}", r.summary());
            assert!(
                r.text().contains("Authorization"),
                "{query}: body must say tokens go in the Authorization header: {}",
                r.summary()
            );
        }
    }
    // A harmless query string is fine (quirk 7).
    let mut c = Client::connect_with(&gw, "/?client=test", &[("Authorization", &auth)]).await;
    c.handshake().await;
    c.ping().await;
}

#[tokio::test]
async fn foreign_origin_is_refused_loopback_origins_allowed() {
    let gw = Gateway::start();
    let auth = format!("Bearer {}", gw.admin_token());
    for origin in [
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example:8080",
        "http://evil.example/?http://localhost",
        "null",
    ] {
        match Client::try_connect_with(&gw, "/", &[("Authorization", &auth), ("Origin", origin)]).await {
            Ok(_) => panic!("Origin {origin}: upgrade must be refused with 403, got 101"),
            Err(ConnectError::Http(r)) => {
                assert_eq!(r.status, 403, "Origin {origin}: {}", r.summary())
            }
            Err(e) => panic!("Origin {origin}: expected 403, got {e}"),
        }
    }
    for origin in [
        "http://127.0.0.1",
        "http://127.0.0.1:5173",
        "https://127.0.0.1:8443",
        "http://localhost",
        "http://localhost:3000",
        "https://localhost",
        "http://[::1]:8080",
    ] {
        let mut c = Client::connect_with(&gw, "/", &[("Authorization", &auth), ("Origin", origin)]).await;
        c.handshake().await;
        c.ping().await;
    }
}

#[tokio::test]
async fn allowlisted_origin_is_accepted() {
    let gw = Gateway::start_with(json!({"server": {"allowed_origins": ["https://app.example"]}}));
    let auth = format!("Bearer {}", gw.admin_token());
    let mut c = Client::connect_with(&gw, "/", &[("Authorization", &auth), ("Origin", "https://app.example")]).await;
    c.handshake().await;
    c.ping().await;
    for origin in ["https://app.example.evil", "http://app.example", "https://evil.example", "https://sub.app.example"]
    {
        match Client::try_connect_with(&gw, "/", &[("Authorization", &auth), ("Origin", origin)]).await {
            Ok(_) => panic!("Origin {origin}: not in allowed_origins, must be refused"),
            Err(e) => assert_eq!(e.into_http(origin).status, 403, "Origin {origin}"),
        }
    }
    // Loopback stays allowed with an allowlist.
    let mut c = Client::connect_with(&gw, "/", &[("Authorization", &auth), ("Origin", "http://localhost:3000")]).await;
    c.handshake().await;
}

#[tokio::test]
async fn auth_status_is_admin_only_and_reports_the_tokens() {
    let gw = Gateway::with_helper_agent(json!({}));
    let mut admin = gw.admin().await;
    let st = admin.control_ok("auth_status", Value::Null).await;
    assert_eq!(st["admin_token"], json!(gw.admin_token()), "{st}");
    assert_eq!(st["user_token"], json!(gw.user_token()), "{st}");
    for k in ["path", "admin_last_target", "user_last_target"] {
        assert!(st.get(k).is_some(), "auth_status lacks {k}: {st}");
    }
    if let Some(p) = st["path"].as_str() {
        assert_eq!(
            std::path::Path::new(p).canonicalize().ok(),
            gw.tokens_path().canonicalize().ok(),
            "auth_status path: {st}"
        );
    }

    provision_user_world(&gw).await;
    let mut user = gw.user().await;
    let e = user.control_err_code("auth_status", Value::Null, "forbidden").await;
    assert_eq!(e["message"], json!("operation requires admin token"), "{e}");
    let e = user.control_err_code("auth_rotate", json!({"role": "user"}), "forbidden").await;
    assert_eq!(e["message"], json!("operation requires admin token"), "{e}");
    // Nothing was rotated by the refused call.
    assert_eq!(admin.control_ok("auth_status", Value::Null).await["user_token"], st["user_token"]);
}

#[tokio::test]
async fn auth_rotate_validates_its_payload() {
    let gw = Gateway::start();
    let mut admin = gw.admin().await;
    admin.control_err_code("auth_rotate", json!({}), "missing_field").await;
    admin.control_err_code("auth_rotate", Value::Null, "missing_field").await;
    admin.control_err_code("auth_rotate", json!({"role": "root"}), "invalid_payload").await;
    admin.control_err_code("auth_rotate", json!({"role": 1}), "invalid_payload").await;
    admin.control_err_code("auth_rotate", json!("user"), "invalid_payload").await;
    // Tokens unchanged by the failures.
    let st = admin.control_ok("auth_status", Value::Null).await;
    assert_eq!(st["user_token"], json!(gw.user_token()));
}

async fn rotate_and_check(gw: &mut Gateway, role: &str) {
    let (old, prefix) = if role == "user" { (gw.user_token(), "sw-user_") } else { (gw.admin_token(), "sw-admin_") };
    let mut admin = gw.admin().await;
    let r = admin.control_ok("auth_rotate", json!({"role": role})).await;
    assert_eq!(r["role"], json!(role), "{r}");
    let new = str_at(&r, "token").to_string();
    assert_token_format(&new, prefix);
    assert_ne!(new, old, "auth_rotate must produce a new token");

    // File rewritten, still 0600.
    let file = gw.tokens_file();
    assert_eq!(file[format!("{role}_token")], json!(new), "auth_tokens.json not updated: {file}");
    let mode = std::fs::metadata(gw.tokens_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "auth_tokens.json mode after rotation");

    // The old token is refused for new connections; the new one works.
    assert_refused_after_upgrade(gw, &[("Authorization", &format!("Bearer {old}"))], "old token after rotation").await;
    let mut c = Client::connect(gw, &new).await;
    let ack = c.handshake().await;
    assert_eq!(ack["role"], json!(role));

    // Rotation persists across a restart.
    drop(c);
    drop(admin);
    gw.restart();
    assert_eq!(gw.tokens_file()[format!("{role}_token")], json!(new));
    assert_refused_after_upgrade(gw, &[("Authorization", &format!("Bearer {old}"))], "old token after restart").await;
    let mut c = Client::connect(gw, &new).await;
    assert_eq!(c.handshake().await["role"], json!(role));
}

#[tokio::test]
async fn auth_rotate_user_token() {
    let mut gw = Gateway::start();
    rotate_and_check(&mut gw, "user").await;
}

#[tokio::test]
async fn auth_rotate_admin_token() {
    let mut gw = Gateway::start();
    let untouched_user = gw.user_token();
    rotate_and_check(&mut gw, "admin").await;
    assert_eq!(gw.user_token(), untouched_user, "rotating admin must not change the user token");
}

#[tokio::test]
async fn auth_refusals_do_not_leak_tokens_in_logs_urls_or_frames() {
    let gw = Gateway::start();
    let admin = gw.admin_token();
    // A refused URL token must not be echoed back in the 400 body.
    let r = Client::try_connect_with(&gw, &format!("/?token={admin}"), &[]).await;
    let r = match r {
        Ok(_) => panic!("token in URL must be refused"),
        Err(e) => e.into_http("token in URL"),
    };
    assert!(!r.text().contains(&admin), "400 body echoes the token: {}", r.summary());
    // A wrong token is not echoed in the error frame either.
    let bogus = "sw-admin_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let mut c = Client::connect_with(&gw, "/", &[("Authorization", &format!("Bearer {bogus}"))]).await;
    let f = c.recv_json().await;
    assert!(!f.to_string().contains(bogus), "{f}");
    let _ = c.expect_close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!gw.stderr_contents().contains(bogus), "the gateway logged a presented (wrong) token");
}
