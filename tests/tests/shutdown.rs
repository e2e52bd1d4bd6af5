//! Graceful shutdown on SIGTERM: open WebSockets get close 1001, replies already owed are
//! delivered first, new connections are no longer served, and the process exits 0.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use spiderweb_tests::{B64, Client, ConnectError, Gateway, Incoming};

#[tokio::test]
async fn sigterm_with_no_clients_exits_zero() {
    let mut gw = Gateway::start();
    gw.sigterm();
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("spiderweb did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?}\n{}", gw.stderr_tail(40));
}

#[tokio::test]
async fn sigterm_closes_open_websockets_with_1001_and_exits_zero() {
    let mut gw = Gateway::start();
    let mut a = gw.admin().await;
    let mut b = gw.user().await;
    let mut c = Client::connect(&gw, &gw.admin_token()).await; // upgraded, not negotiated
    a.fs_attach().await;
    gw.sigterm();
    for (name, cl) in [("admin", &mut a), ("user", &mut b), ("un-negotiated", &mut c)] {
        let code = cl.expect_close().await;
        assert_eq!(code, Some(1001), "{name} connection: expected close 1001 (going away) on SIGTERM");
    }
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("spiderweb did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status:?}\n{}", gw.stderr_tail(40));
}

#[tokio::test]
async fn no_new_connections_are_served_after_sigterm() {
    let mut gw = Gateway::start();
    let mut a = gw.admin().await;
    gw.sigterm();
    assert_eq!(a.expect_close().await, Some(1001));
    // The server is shutting down (it has closed a), so a new client must not get a working session.
    let addr = gw.addr();
    let token = gw.admin_token();
    let attempt = Client::try_connect_with(&gw, "/", &[("Authorization", &format!("Bearer {token}"))]).await;
    match attempt {
        Err(ConnectError::Io(_)) => {}
        Err(ConnectError::Http(r)) => {
            assert!(r.status >= 500, "refusal during shutdown should be 5xx: {}", r.summary())
        }
        Err(ConnectError::BadUpgrade(m)) => panic!("bad upgrade during shutdown: {m}"),
        Ok(mut c) => {
            c.send_json(
                &json!({"channel":"control","type":"control.version","id":"v","payload":{"protocol":"unified-v2"}}),
            )
            .await;
            match c.next_incoming(Duration::from_secs(10)).await {
                Incoming::Close(_) | Incoming::Ended(_) => {}
                Incoming::Text(t) => panic!("a connection opened after SIGTERM was served: {t}"),
                other => panic!("a connection opened after SIGTERM neither closed nor was refused: {other:?}"),
            }
        }
    }
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("no exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    // And after exit the port is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "port still accepting after exit");
}

#[tokio::test]
async fn replies_already_owed_are_delivered_before_the_close() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    // Pipeline 500 pings; SIGTERM once the first pong is back (the server is mid-stream).
    for i in 0..500 {
        c.send_json(&json!({"channel":"control","type":"control.ping","id":format!("p{i}")})).await;
    }
    let first = c.recv_json().await;
    assert_eq!(first["id"], json!("p0"), "{first}");
    gw.sigterm();
    // Whatever arrives is a gap-free prefix of the requests, in order, then close 1001.
    let mut next = 1;
    loop {
        match c.next_incoming(Duration::from_secs(10)).await {
            Incoming::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t)
                    .unwrap_or_else(|e| panic!("truncated/corrupt frame during shutdown ({e}): {t:?}"));
                assert_eq!(v["type"], json!("control.pong"), "{v}");
                assert_eq!(
                    v["id"],
                    json!(format!("p{next}")),
                    "replies must stay in order without gaps during shutdown"
                );
                next += 1;
            }
            Incoming::Ping(_) | Incoming::Pong(_) => {}
            Incoming::Close(code) => {
                assert_eq!(code, Some(1001), "close code on SIGTERM");
                break;
            }
            other => panic!("after {next} pongs: expected more pongs or close 1001, got {other:?}"),
        }
    }
    println!("{next} of 500 pongs delivered before the close");
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("no exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// A request in progress when SIGTERM arrives (a blocking event wait) gets its reply before
/// the close frame.
#[tokio::test]
async fn in_flight_blocking_read_completes_before_the_close() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    c.fs_attach().await;
    let w = c
        .walk_write(
            "/agents/self/events/control/wait.json",
            br#"{"paths":["/agents/self/events/sources/time/after/1500.json"],"timeout_ms":5000}"#,
        )
        .await;
    assert_eq!(w["ok"], json!(true), "{w}");
    let fid = c.walk_ok("/agents/self/events/next.json").await;
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_read","tag":4242,"fid":fid,"offset":0})).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the read is now blocked in the server
    gw.sigterm();
    let r = c.wait_for("the in-flight t_read", Duration::from_secs(15), |v| v["tag"] == json!(4242)).await;
    assert_eq!(r["type"], json!("acheron.r_read"), "the in-flight read must complete, not fail: {r}");
    let ev: serde_json::Value =
        serde_json::from_slice(&B64.decode(r["payload"]["data_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ev["configured"], json!(true), "{ev}");
    assert_eq!(c.expect_close().await, Some(1001));
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("no exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn state_written_before_sigterm_is_there_after_restart() {
    let mut gw = Gateway::start();
    let mut c = gw.admin().await;
    let p = c.control_ok("project_create", json!({"name": "Before TERM", "vision": "v"})).await;
    let id = p["project_id"].as_str().unwrap().to_string();
    gw.sigterm();
    assert_eq!(c.expect_close().await, Some(1001));
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("no exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    gw.launch();
    let mut c = gw.admin().await;
    assert_eq!(c.control_ok("project_get", json!({"project_id": id})).await["name"], json!("Before TERM"));
}
