//! Test harness: real `spiderweb-fs-node` processes on loopback and a raw WebSocket client.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_spiderweb-fs-node");
pub const MOUNT_BIN: &str = env!("CARGO_BIN_EXE_spiderweb-fs-mount");

/// A running node; killed on drop.
pub struct Node {
    pub child: Child,
    pub addr: String,
}

impl Node {
    pub fn start(exports: &[String], extra: &[&str]) -> Node {
        Self::start_on("0", exports, extra)
    }

    pub fn start_on(port: &str, exports: &[String], extra: &[&str]) -> Node {
        let mut cmd = Command::new(NODE_BIN);
        cmd.args(["--port", port]);
        for e in exports {
            cmd.args(["--export", e]);
        }
        cmd.args(extra)
            .env_remove("SPIDERWEB_FS_NODE_AUTH_TOKEN")
            .env("SPIDERWEB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn spiderweb-fs-node");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read node stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("node did not start: {line:?}"))
            .to_owned();
        Node { child, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v2/fs", self.addr)
    }

    pub fn port(&self) -> String {
        self.addr.rsplit(':').next().unwrap().to_owned()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw WebSocket client speaking JSON frames.
pub struct Raw {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        Raw { ws }
    }

    /// Connects and negotiates with an optional token.
    pub async fn hello(url: &str, token: Option<&str>) -> Raw {
        let mut raw = Raw::connect(url).await;
        let reply = raw.req("hello", 1, None, None, spiderweb_proto::fs::hello_payload(token, true)).await;
        assert_eq!(reply["type"], "acheron.r_fs_hello", "{reply}");
        raw
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.unwrap();
    }

    /// The next text frame, or `None` once the server closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).unwrap());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, text parsed as JSON or binary as is.
    pub async fn next_any(&mut self) -> Option<Result<Value, Vec<u8>>> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.expect("frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(Ok(serde_json::from_str(t.as_str()).unwrap()));
                }
                Some(Ok(Message::Binary(b))) => return Some(Err(b.to_vec())),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends a request and returns its reply, skipping (and collecting nothing of) events.
    pub async fn req(&mut self, op: &str, tag: u32, node: Option<u64>, h: Option<u64>, payload: Value) -> Value {
        self.send_text(&spiderweb_proto::fs::render_request(op, tag, node, h, &payload)).await;
        loop {
            let frame = self.next().await.expect("reply before close");
            if frame.get("tag").is_some() {
                assert_eq!(frame["tag"], tag, "{frame}");
                return frame;
            }
        }
    }

    /// Sends a request and returns the events received before its reply, and the reply.
    pub async fn req_with_events(
        &mut self,
        op: &str,
        tag: u32,
        node: Option<u64>,
        h: Option<u64>,
        payload: Value,
    ) -> (Vec<Value>, Value) {
        self.send_text(&spiderweb_proto::fs::render_request(op, tag, node, h, &payload)).await;
        let mut events = Vec::new();
        loop {
            let frame = self.next().await.expect("reply before close");
            if frame.get("tag").is_some() {
                return (events, frame);
            }
            events.push(frame);
        }
    }

    /// Waits until any frame matching `pred` arrives (others are skipped).
    pub async fn wait_frame(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.next().await.expect("frame before close");
            if pred(&frame) {
                return frame;
            }
        }
    }

    /// Waits until an event matching `pred` arrives (other frames are skipped).
    pub async fn wait_event(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.next().await.expect("event before close");
            if frame.get("tag").is_none() && pred(&frame) {
                return frame;
            }
        }
    }

    pub async fn ok(&mut self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> Value {
        let reply = self.req(op, 7, node, h, payload).await;
        assert_eq!(reply["ok"], true, "{op}: {reply}");
        reply["payload"].clone()
    }

    pub async fn errno(&mut self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> (i64, String) {
        let reply = self.req(op, 8, node, h, payload).await;
        assert_eq!(reply["type"], "acheron.err_fs", "{op}: {reply}");
        (reply["error"]["errno"].as_i64().unwrap(), reply["error"]["message"].as_str().unwrap().to_owned())
    }

    /// The root id of export `name`.
    pub async fn root(&mut self, name: &str) -> u64 {
        let exports = self.ok("exports", None, None, json!({})).await;
        exports["exports"].as_array().unwrap().iter().find(|e| e["name"] == name).expect("export")["root"]
            .as_u64()
            .unwrap()
    }

    pub async fn lookup(&mut self, parent: u64, name: &str) -> Value {
        self.ok("lookup", Some(parent), None, json!({"name": name})).await["attr"].clone()
    }
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub fn unb64(text: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.as_str().unwrap()).unwrap()
}
