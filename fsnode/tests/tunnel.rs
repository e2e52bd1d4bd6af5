//! The node service over a *client-side* WebSocket, as the daemon's reverse tunnel uses it
//! (`serve_tunnel`): the test plays the gateway's end of `/v2/node`. What the relay relies on:
//! the tunnel serves without a hello of its own, one relayed client's bad frame or failed
//! hello is answered without closing the tunnel, hellos are checked against the node secret,
//! binary frames are never negotiated and I/O is capped at 128 KiB so replies fit the
//! gateway's 256 KiB frames, and invalidation events come before the reply.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use spiderweb_fsnode::node::{NodeConfig, NodeState, serve_tunnel};
use spiderweb_policy::export::ExportSpec;
use spiderweb_proto::fs as wire;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

struct GatewayEnd(WebSocketStream<TcpStream>);

impl GatewayEnd {
    async fn send(&mut self, text: &str) {
        self.0.send(Message::text(text.to_owned())).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("frame in time")
                .expect("the tunnel stays open")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).unwrap();
            }
            assert!(!matches!(message, Message::Binary(_)), "no binary frames on the tunnel");
        }
    }

    async fn request(&mut self, op: &str, tag: u32, node: Option<u64>, h: Option<u64>, payload: Value) -> Value {
        self.send(&wire::render_request(op, tag, node, h, &payload)).await;
        loop {
            let frame = self.next().await;
            if frame.get("tag").is_some() {
                assert_eq!(frame["tag"], tag, "{frame}");
                return frame;
            }
        }
    }
}

/// A node whose tunnel the returned end is the gateway side of.
async fn tunnel(dir: &std::path::Path) -> GatewayEnd {
    let state = NodeState::new(NodeConfig {
        exports: vec![ExportSpec::parse(&format!("work={}", dir.display())).unwrap()],
        auth_token: None,
        max_connections: 4,
        hello_timeout: Duration::from_millis(200),
        hide_sandbox_dir: false,
        events_to_subscribers_only: false,
    })
    .unwrap();
    assert!(state.require_auth_token("secret-1"), "daemon mode sets the node secret once paired");
    assert!(!state.require_auth_token("another"), "and never swaps it");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v2/node", listener.local_addr().unwrap());
    let accept = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(stream).await.unwrap()
    });
    let (client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    tokio::spawn(serve_tunnel(client, state));
    GatewayEnd(accept.await.unwrap())
}

#[tokio::test]
async fn a_client_side_websocket_serves_relayed_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.bin"), vec![7u8; 300 * 1024]).unwrap();
    let mut gw = tunnel(dir.path()).await;

    // Served at once: the tunnel was authenticated by its own hello, and it has no hello
    // deadline (a direct connection would be closed after 200 ms here).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let exports = gw.request("exports", 1, None, None, json!({})).await;
    let root = exports["payload"]["exports"][0]["root"].as_u64().expect("exports without a hello");

    // A relayed client's garbage and failed hellos are answered; the tunnel stays.
    gw.send("{not json").await;
    assert_eq!(gw.next().await["type"], "acheron.err_fs");
    let no_token = gw.request("hello", 2, None, None, wire::hello_payload(None, true)).await;
    assert_eq!(no_token["error"]["message"], "AuthMissing", "{no_token}");
    let wrong = gw.request("hello", 3, None, None, wire::hello_payload(Some("nope"), true)).await;
    assert_eq!(wrong["error"]["message"], "AuthFailed", "{wrong}");

    // The relayed hello with the node secret: no binary frames, 128 KiB I/O.
    let mut hello = wire::hello_payload(Some("secret-1"), true);
    hello["binary_data"] = true.into();
    let reply = gw.request("hello", 4, None, None, hello).await;
    let caps = &reply["payload"]["caps"];
    assert!(!caps["binary_data"].as_bool().unwrap_or(false), "binary frames refused: {reply}");
    assert_eq!(caps["max_read"], 128 * 1024, "{reply}");
    assert_eq!(caps["max_write"], 128 * 1024);

    let attr = gw.request("lookup", 5, Some(root), None, json!({"name": "big.bin"})).await;
    let id = attr["payload"]["attr"]["id"].as_u64().unwrap();
    let opened = gw.request("open", 6, Some(id), None, json!({"flags": 2})).await;
    let h = opened["payload"]["h"].as_u64().unwrap();
    let read = gw.request("read", 7, None, Some(h), json!({"off": 0, "len": 1 << 20})).await;
    let data = base64::engine::general_purpose::STANDARD.decode(read["payload"]["data_b64"].as_str().unwrap()).unwrap();
    assert_eq!(data.len(), 128 * 1024, "reads clamped to the tunnel's max_read");
    assert_eq!(read["payload"]["eof"], false, "clamped, not at the end");
    let too_big = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 128 * 1024 + 1]);
    let refused = gw.request("write", 8, None, Some(h), json!({"off": 0, "data_b64": too_big})).await;
    assert_eq!(refused["error"]["message"], "WRITE exceeds max_write", "{refused}");

    // Events the request caused come before its reply.
    gw.send(&wire::render_request("mkdir", 9, Some(root), None, &json!({"name": "made"}))).await;
    let first = gw.next().await;
    assert_eq!(first["type"], "acheron.e_fs_inval_dir", "{first}");
    loop {
        let frame = gw.next().await;
        if frame.get("tag").is_some() {
            assert_eq!((frame["tag"].as_u64(), frame["ok"].as_bool()), (Some(9), Some(true)), "{frame}");
            break;
        }
    }
}

#[tokio::test]
async fn a_waiting_lock_does_not_hold_back_other_relayed_requests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let mut gw = tunnel(dir.path()).await;
    let exports = gw.request("exports", 1, None, None, json!({})).await;
    let root = exports["payload"]["exports"][0]["root"].as_u64().unwrap();
    let attr = gw.request("lookup", 2, Some(root), None, json!({"name": "f"})).await;
    let id = attr["payload"]["attr"]["id"].as_u64().unwrap();
    let open = |tag| wire::render_request("open", tag, Some(id), None, &json!({"flags": 2}));
    gw.send(&open(3)).await;
    let h1 = gw.next().await["payload"]["h"].as_u64().unwrap();
    gw.send(&open(4)).await;
    let h2 = gw.next().await["payload"]["h"].as_u64().unwrap();
    let held = gw.request("lock", 5, None, Some(h1), json!({"kind": "exclusive"})).await;
    assert_eq!(held["ok"], true, "{held}");

    // Client B waits for the lock; client A's getattr is answered meanwhile.
    gw.send(&wire::render_request("lock", 6, None, Some(h2), &json!({"kind": "exclusive", "wait": true}))).await;
    let other = gw.request("getattr", 7, Some(root), None, json!({})).await;
    assert_eq!(other["ok"], true, "answered while the lock waits: {other}");
    gw.send(&wire::render_request("lock", 8, None, Some(h1), &json!({"kind": "unlock"}))).await;
    let mut tags = Vec::new();
    while tags.len() < 2 {
        let frame = gw.next().await;
        if let Some(tag) = frame.get("tag").and_then(Value::as_u64) {
            assert_eq!(frame["ok"], true, "{frame}");
            tags.push(tag);
        }
    }
    tags.sort();
    assert_eq!(tags, [6, 8], "the waiting lock is granted once released");
}
