//! Configured limits (small values so the tests are quick): max frame size, global and
//! per-token connection limits, fids per connection, the bounded outbound queue (slow reader),
//! idle and handshake timeouts. Each limit affects only the offending connection.

use std::time::{Duration, Instant};

use serde_json::json;
use spiderweb_tests::{Client, ConnectError, Gateway, Incoming, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn max_frame_bytes() {
    let mut gw = Gateway::start_with(json!({"server": {"max_frame_bytes": 65536}}));
    let mut bystander = gw.admin().await;
    let mut c = gw.admin().await;
    c.send_json(&json!({"channel":"control","type":"control.ping","id":"i".repeat(60_000)})).await;
    let r = c.recv_json().await;
    assert_eq!(r["type"], json!("control.pong"), "a 60 KB frame is below the 64 KiB limit");
    c.send_json(&json!({"channel":"control","type":"control.ping","id":"i".repeat(70_000)})).await;
    assert_eq!(c.expect_close().await, Some(1009), "a 70 KB frame exceeds max_frame_bytes=65536");
    bystander.ping().await;
    gw.assert_serving("after an oversize frame").await;
}

async fn expect_refused(gw: &Gateway, token: &str, status: u16, what: &str) {
    match Client::try_connect_with(gw, "/", &[("Authorization", &format!("Bearer {token}"))]).await {
        Ok(_) => panic!("{what}: expected HTTP {status}, got 101"),
        Err(ConnectError::Http(r)) => assert_eq!(r.status, status, "{what}: {}", r.summary()),
        Err(e) => panic!("{what}: expected HTTP {status}, got {e}"),
    }
}

async fn close_and_drain(mut c: Client) {
    c.close(1000).await;
    let _ = c.drain_until_end(Duration::from_secs(5)).await;
}

/// Retries an upgrade until it succeeds (the server may release the slot asynchronously).
async fn connect_eventually(gw: &Gateway, token: &str, what: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::try_connect_with(gw, "/", &[("Authorization", &format!("Bearer {token}"))]).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: still refused 10 s after a slot was freed: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn global_connection_limit_is_503() {
    let gw = Gateway::start_with(json!({"server": {"max_connections": 3}}));
    let admin = gw.admin_token();
    let user = gw.user_token();
    let mut a = Client::connect(&gw, &admin).await;
    let mut b = Client::connect(&gw, &user).await;
    let mut c = Client::connect(&gw, &admin).await;
    for cl in [&mut a, &mut b, &mut c] {
        cl.version().await;
    }
    expect_refused(&gw, &admin, 503, "4th connection (admin)").await;
    expect_refused(&gw, &user, 503, "4th connection (user)").await;
    // The open ones keep working.
    a.ping().await;
    close_and_drain(a).await;
    let mut d = connect_eventually(&gw, &admin, "after closing one of three").await;
    d.handshake().await;
    d.ping().await;
    expect_refused(&gw, &admin, 503, "limit reached again").await;
    c.ping().await;
}

#[tokio::test]
async fn per_token_connection_limit_is_429() {
    let gw = Gateway::start_with(json!({"server": {"max_connections_per_token": 2}}));
    let admin = gw.admin_token();
    let user = gw.user_token();
    let mut a1 = gw.admin().await;
    let a2 = gw.admin().await;
    expect_refused(&gw, &admin, 429, "3rd admin connection").await;
    // Other tokens have their own budget.
    let mut u1 = Client::connect(&gw, &user).await;
    u1.version().await;
    let mut u2 = Client::connect(&gw, &user).await;
    u2.version().await;
    expect_refused(&gw, &user, 429, "3rd user connection").await;
    a1.ping().await;
    close_and_drain(a2).await;
    let mut a3 = connect_eventually(&gw, &admin, "admin after closing one").await;
    a3.handshake().await;
    a3.ping().await;
    expect_refused(&gw, &admin, 429, "admin limit reached again").await;
}

#[tokio::test]
async fn max_fids_per_connection() {
    let gw = Gateway::start_with(json!({"server": {"max_fids_per_connection": 8}}));
    let mut c = gw.admin().await;
    c.fs_version().await;
    for fid in 1..=8u32 {
        c.acheron_ok("t_attach", json!({"fid": fid})).await;
    }
    c.acheron_err_code("t_attach", json!({"fid": 9}), "fid_limit").await;
    c.acheron_err_code("t_walk", json!({"fid": 1, "newfid": 100, "path": ["meta"]}), "fid_limit").await;
    // Overwriting existing fids is fine.
    c.acheron_ok("t_attach", json!({"fid": 1})).await;
    c.acheron_ok("t_walk", json!({"fid": 1, "newfid": 2, "path": ["meta"]})).await;
    assert_eq!(c.acheron_ok("t_stat", json!({"fid": 2})).await["name"], json!("meta"));
    // The refused fids do not exist.
    c.acheron_err_code("t_stat", json!({"fid": 9}), "enoent").await;
    c.acheron_err_code("t_stat", json!({"fid": 100}), "enoent").await;
    // After a clunk there is room again.
    c.acheron_ok("t_clunk", json!({"fid": 8})).await;
    c.acheron_ok("t_walk", json!({"fid": 1, "newfid": 100, "path": ["meta", "protocol.json"]})).await;
    c.acheron_err_code("t_attach", json!({"fid": 101}), "fid_limit").await;
    // The limit is per connection.
    let mut other = gw.admin().await;
    other.fs_version().await;
    for fid in 1..=8u32 {
        other.acheron_ok("t_attach", json!({"fid": fid})).await;
    }
    c.ping().await;
}

#[tokio::test]
async fn slow_reader_is_disconnected_and_others_keep_working() {
    let mut gw = Gateway::start_with(json!({"runtime": {"outbound_queue_max": 16}}));
    let mut bystander = gw.admin().await;
    let mut flood = gw.admin().await;
    let before = gw.metrics().await.value_or_zero("spiderweb_slow_consumer_disconnects_total", &[]);

    // 200k pings whose pongs (~260 bytes each, ~50 MB) are never read.
    let frame = json!({"channel":"control","type":"control.ping","id":"p".repeat(200)}).to_string();
    let mut sent = 0u64;
    let mut how = String::from("all 200000 frames sent");
    for i in 0..200_000u32 {
        match tokio::time::timeout(Duration::from_secs(10), flood.feed_text(&frame)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => {
                how = format!("send failed after {sent} frames: {e}");
                break;
            }
            Err(_) => {
                how = format!("sending blocked for 10 s after {sent} frames");
                break;
            }
        }
        if i % 256 == 255 {
            match tokio::time::timeout(Duration::from_secs(10), flood.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    how = format!("flush failed after {sent} frames: {e}");
                    break;
                }
                Err(_) => {
                    how = format!("flush blocked for 10 s after {sent} frames");
                    break;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), flood.flush()).await;

    let gw_ref = &gw;
    let counted = eventually(Duration::from_secs(30), || async move {
        gw_ref.metrics().await.value_or_zero("spiderweb_slow_consumer_disconnects_total", &[]) >= before + 1.0
    })
    .await;
    assert!(
        counted,
        "spiderweb_slow_consumer_disconnects_total did not increase within 30 s; flood: {how}\n{}",
        gw.metrics().await.text.lines().filter(|l| l.contains("slow_consumer")).collect::<Vec<_>>().join("\n")
    );
    bystander.ping().await;

    // The flooding socket is gone (close/EOF/reset), having received far fewer replies.
    let end = flood.drain_until_end(Duration::from_secs(30)).await;
    let (received, ended) =
        end.unwrap_or_else(|| panic!("the slow reader's connection is still open 30 s later; flood: {how}"));
    assert!(
        received < sent,
        "the slow reader got {received} replies for {sent} requests before the end ({ended}): it was buffered, not disconnected"
    );
    println!("flood: {how}; received {received} replies before: {ended}");
    gw.assert_serving("after disconnecting a slow reader").await;
}

/// The outbound bound is for clients that do not read: a client that pipelines a burst far
/// larger than the queue but reads its replies gets every one of them.
#[tokio::test]
async fn pipelining_client_that_reads_is_not_disconnected() {
    let gw = Gateway::start_with(json!({"runtime": {"outbound_queue_max": 16}}));
    let mut c = gw.admin().await;
    for round in 0..5 {
        for i in 0..2_000 {
            c.feed_text(&format!(r#"{{"channel":"control","type":"control.ping","id":"b{round}-{i}"}}"#))
                .await
                .unwrap_or_else(|e| panic!("round {round}: send {i} failed: {e}"));
        }
        c.flush().await.unwrap_or_else(|e| panic!("round {round}: flush failed: {e}"));
        for i in 0..2_000 {
            let r = c.recv_json().await;
            assert_eq!(r["id"], json!(format!("b{round}-{i}")), "round {round}: replies in order, none lost: {r}");
            assert_eq!(r["type"], json!("control.pong"), "{r}");
        }
    }
    let m = gw.metrics().await;
    assert_eq!(
        m.value_or_zero("spiderweb_slow_consumer_disconnects_total", &[]),
        0.0,
        "a reading client was counted as a slow consumer"
    );
}

#[tokio::test]
async fn slow_reader_of_acheron_reads_is_disconnected() {
    let mut gw = Gateway::start_with(json!({"runtime": {"outbound_queue_max": 8}}));
    let mut flood = gw.admin().await;
    flood.fs_attach().await;
    let fid = flood.walk_ok("/meta/protocol.json").await;
    // ~330 bytes per t_read reply; 100k unread replies are ~33 MB.
    let frame =
        json!({"channel":"acheron","type":"acheron.t_read","tag":1,"fid":fid,"offset":0,"count":65536}).to_string();
    let mut sent = 0u64;
    for i in 0..100_000u32 {
        match tokio::time::timeout(Duration::from_secs(10), flood.feed_text(&frame)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
        if i % 256 == 255 && !matches!(tokio::time::timeout(Duration::from_secs(10), flood.flush()).await, Ok(Ok(()))) {
            break;
        }
    }
    let end = flood.drain_until_end(Duration::from_secs(30)).await;
    let (received, ended) = end.expect("the slow reader's connection is still open 30 s later");
    assert!(
        received < sent,
        "got {received} replies for {sent} requests ({ended}): the server buffered instead of disconnecting"
    );
    let m = gw.metrics().await;
    assert!(m.value_or_zero("spiderweb_slow_consumer_disconnects_total", &[]) >= 1.0, "{}", m.text);
    gw.assert_serving("after the t_read flood").await;
}

#[tokio::test]
async fn idle_timeout_closes_with_1001_but_active_connections_stay() {
    let gw = Gateway::start_with(json!({"server": {"idle_timeout_ms": 1500}}));
    let mut idle = gw.admin().await;
    let mut active = gw.admin().await;
    let start = Instant::now();
    let mut idle_closed: Option<Option<u16>> = None;
    // Keep the active one busy, keep reading the idle one (so WebSocket pings get answered).
    while start.elapsed() < Duration::from_secs(15) {
        active.ping().await;
        if idle_closed.is_none() {
            match idle.next_incoming(Duration::from_millis(200)).await {
                Incoming::Close(code) => idle_closed = Some(code),
                Incoming::Ping(_) | Incoming::Pong(_) | Incoming::Timeout => {}
                Incoming::Text(t) => panic!("unexpected frame on the idle connection: {t}"),
                Incoming::Binary(b) => panic!("unexpected binary frame on the idle connection ({} bytes)", b.len()),
                Incoming::Ended(e) => {
                    panic!("the idle connection ended without a close frame: {e}")
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if start.elapsed() > Duration::from_millis(4500) {
                break;
            }
        }
    }
    assert_eq!(idle_closed, Some(Some(1001)), "an idle connection must be closed with 1001 after idle_timeout_ms=1500");
    // The active connection outlived three idle periods.
    assert!(start.elapsed() >= Duration::from_millis(4500));
    active.ping().await;
}

#[tokio::test]
async fn handshake_timeout_after_upgrade_closes_with_1008() {
    let gw = Gateway::start_with(json!({"server": {"handshake_timeout_ms": 700}}));
    let mut silent = Client::connect(&gw, &gw.admin_token()).await;
    let mut versioned = Client::connect(&gw, &gw.admin_token()).await;
    versioned.version().await;
    let mut fs_only = Client::connect(&gw, &gw.admin_token()).await;
    fs_only.fs_version().await;
    assert_eq!(silent.expect_close().await, Some(1008), "no version after the upgrade within handshake_timeout_ms");
    // Negotiated connections are not affected by the handshake timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    versioned.ping().await;
    fs_only.fs_attach().await;
}

async fn assert_tcp_closed_by_server(mut s: TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. a 408 response before the close
            }
        }
    })
    .await;
    assert!(res.is_ok(), "{what}: the server did not close the connection within 10 s (handshake_timeout_ms=700)");
}

#[tokio::test]
async fn handshake_timeout_applies_to_the_http_upgrade() {
    let mut gw = Gateway::start_with(json!({"server": {"handshake_timeout_ms": 700}}));
    // Connect and say nothing.
    let s = TcpStream::connect(gw.addr()).await.unwrap();
    assert_tcp_closed_by_server(s, "silent TCP connection").await;
    // A partial request head.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    assert_tcp_closed_by_server(s, "partial request head").await;
    // A slow-loris trickle of headers.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let trickle = async {
        for i in 0..50 {
            if s.write_all(format!("X-Trickle-{i}: a\r\n").as_bytes()).await.is_err() {
                return true;
            }
            let mut b = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    };
    assert!(trickle.await, "a header trickle (one line per 200 ms for 10 s) was never cut off");
    gw.assert_serving("after handshake timeouts").await;
}

#[tokio::test]
async fn limits_do_not_apply_to_plain_http_health_checks() {
    // A health probe must keep working while WebSockets are open (well below the limits).
    let gw = Gateway::start_with(json!({"server": {"max_connections_per_token": 1}}));
    let _a = gw.admin().await;
    expect_refused(&gw, &gw.admin_token(), 429, "second admin connection with max_connections_per_token=1").await;
    for path in ["/livez", "/readyz", "/metrics"] {
        for _ in 0..5 {
            let r = gw.http_get(path).await;
            assert_eq!(r.status, 200, "{path} while the token is at its limit: {}", r.summary());
        }
    }
}
