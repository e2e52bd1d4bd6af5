//! Config file handling: unknown keys are warned about (the gateway still starts), invalid
//! values make it exit non-zero naming the key, and the file given with --config is the one used.

use serde_json::json;
use spiderweb_tests::Gateway;

#[tokio::test]
async fn unknown_keys_are_warned_about_by_path() {
    let mut gw = Gateway::start_with(json!({
        "server": {"bogus": 1},
        "runtime": {"not_a_runtime_key": true},
        "surprise_section": {}
    }));
    let stderr = gw.stderr_contents();
    for key in ["server.bogus", "runtime.not_a_runtime_key", "surprise_section"] {
        assert!(stderr.contains(key), "stderr must name the unknown key {key}:\n{stderr}");
    }
    gw.assert_serving("with unknown config keys").await;
}

fn assert_refuses(overlay: serde_json::Value, key: &str) {
    let mut gw = Gateway::new(overlay.clone());
    let (status, stderr) = gw.run_expect_exit();
    assert!(!status.success(), "config {overlay}: expected a non-zero exit, got {status:?}");
    assert!(stderr.contains(key), "config {overlay}: stderr must name {key}:\n{stderr}");
}

#[test]
fn invalid_values_make_the_gateway_exit_naming_the_key() {
    assert_refuses(json!({"server": {"port": "abc"}}), "server.port");
    assert_refuses(json!({"server": {"port": 70000}}), "server.port");
    assert_refuses(json!({"server": {"max_connections": 0}}), "server.max_connections");
    assert_refuses(json!({"server": {"max_connections_per_token": -3}}), "server.max_connections_per_token");
    assert_refuses(json!({"server": {"max_frame_bytes": "big"}}), "server.max_frame_bytes");
    assert_refuses(json!({"server": {"max_fids_per_connection": 0}}), "server.max_fids_per_connection");
    assert_refuses(json!({"server": {"idle_timeout_ms": "soon"}}), "server.idle_timeout_ms");
    assert_refuses(json!({"server": {"handshake_timeout_ms": -1}}), "server.handshake_timeout_ms");
    assert_refuses(json!({"server": {"allowed_origins": "https://app.example"}}), "server.allowed_origins");
    assert_refuses(json!({"server": {"allowed_origins": [5]}}), "server.allowed_origins");
    assert_refuses(json!({"runtime": {"outbound_queue_max": 0}}), "runtime.outbound_queue_max");
}

#[test]
fn a_config_file_that_is_not_json_is_refused() {
    let mut gw = Gateway::new(json!({}));
    gw.write_raw_config("{ this is not json");
    let (status, stderr) = gw.run_expect_exit();
    assert!(!status.success(), "{status:?}");
    assert!(
        stderr.contains(gw.config_path().to_str().unwrap()) || stderr.to_lowercase().contains("config"),
        "stderr should point at the config file:\n{stderr}"
    );
}

#[tokio::test]
async fn the_config_file_given_with_config_is_used() {
    // A limit only this file sets is in force.
    let gw = Gateway::start_with(json!({"server": {"max_connections_per_token": 1}}));
    let _a = gw.admin().await;
    match spiderweb_tests::Client::try_connect_with(
        &gw,
        "/",
        &[("Authorization", &format!("Bearer {}", gw.admin_token()))],
    )
    .await
    {
        Ok(_) => panic!("max_connections_per_token=1 from --config was not applied"),
        Err(e) => assert_eq!(e.into_http("second admin connection").status, 429),
    }
}
