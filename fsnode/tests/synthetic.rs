//! Synthetic exports through the library API, as the gateway serves them: a toy tree next to a
//! directory export, spoken to with the real client over a real WebSocket.
//!
//! What an embedder relies on: its tree is listed after the directories with §4 node ids,
//! pages of `readdirp` follow cookies, a write reaches the tree with its tag and the tree's
//! extra reply fields come back (JSON and binary data frames alike), and
//! `NodeState::synthetic_changed` reaches subscribed clients for ids they were given.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Raw;
use serde_json::{Map, Value, json};
use spiderweb_fsnode::client::FsClient;
use spiderweb_fsnode::node::{
    NodeConfig, NodeState, SyntheticChange, SyntheticNode, SyntheticSpec, SyntheticTree, SyntheticWrite,
    serve_connection,
};
use spiderweb_policy::export::{Access, ExportSpec};
use spiderweb_proto::fs::{Errno, FsError};

const TOKEN: &str = "synthetic-secret";

/// `inbox` (writable: records writes), and `many/` with 300 files.
#[derive(Default)]
struct Toy {
    writes: Mutex<Vec<(String, u32)>>,
}

impl SyntheticTree for Toy {
    fn node(&self, path: &[&str]) -> Option<SyntheticNode> {
        let mtime_ns = 1_000_000_000;
        let file = |content: &str, writable| SyntheticNode::File { content: content.into(), writable, mtime_ns };
        match path {
            [] => Some(SyntheticNode::Dir { children: vec!["inbox".into(), "many".into()], mtime_ns }),
            ["inbox"] => Some(file("", true)),
            ["many"] => Some(SyntheticNode::Dir { children: (0..300).map(|n| format!("f{n:03}")).collect(), mtime_ns }),
            ["many", name] if name.starts_with('f') => Some(file(name, false)),
            _ => None,
        }
    }

    fn write(&self, path: &[&str], write: SyntheticWrite<'_>) -> Result<Map<String, Value>, FsError> {
        if path != ["inbox"] {
            return Err(FsError::of(Errno::Acces));
        }
        let text = String::from_utf8_lossy(write.data).into_owned();
        self.writes.lock().unwrap().push((text, write.tag));
        let mut extra = Map::new();
        extra.insert("seen_tag".into(), write.tag.into());
        Ok(extra)
    }
}

async fn serve(dir: &std::path::Path, tree: Arc<Toy>) -> (String, Arc<NodeState>) {
    let config = NodeConfig {
        exports: vec![ExportSpec::parse(&format!("work={}", dir.display())).unwrap()],
        auth_token: Some(TOKEN.into()),
        max_connections: 16,
        hello_timeout: Duration::from_secs(10),
        hide_sandbox_dir: true,
        events_to_subscribers_only: true,
    };
    let spec = SyntheticSpec { name: "toy".into(), access: Access::ReadWrite, desc: "a toy".into(), tree };
    let state = NodeState::with_synthetic_exports(config, vec![spec]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::clone(&state);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = Arc::clone(&served);
            tokio::spawn(async move {
                let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                serve_connection(ws, state).await;
            });
        }
    });
    (format!("ws://{addr}/v2/fs"), state)
}

#[tokio::test]
async fn an_embedders_tree_is_served_beside_the_directories() {
    let dir = tempfile::tempdir().unwrap();
    let tree = Arc::new(Toy::default());
    let (url, state) = serve(dir.path(), Arc::clone(&tree)).await;

    let mut raw = Raw::hello(&url, Some(TOKEN)).await;
    let root = raw.root("toy").await;
    assert_eq!(root, (2 << 48) | 1, "second export, pseudo-inode 1 for the root");
    let exports = raw.ok("exports", None, None, json!({})).await;
    assert_eq!(exports["exports"][1]["source_kind"], "namespace");
    assert_eq!(exports["exports"][1]["source_id"], "namespace:toy");

    // Pages follow cookies; ids are stable per path.
    let many = raw.lookup(root, "many").await["id"].as_u64().unwrap();
    let (mut names, mut cookie) = (Vec::new(), 0);
    loop {
        let page = raw.ok("readdirp", Some(many), None, json!({"cookie": cookie, "max": 128})).await;
        names.extend(page["ents"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()));
        cookie = page["next"].as_u64().unwrap();
        if page["eof"] == true {
            break;
        }
    }
    assert_eq!(names.len(), 302, "., .. and 300 entries");
    assert_eq!((names[0].as_str(), names[1].as_str(), names[2].as_str()), (".", "..", "f000"));
    let f5 = raw.lookup(many, "f005").await["id"].as_u64().unwrap();
    assert_eq!(raw.lookup(many, "f005").await["id"].as_u64().unwrap(), f5);
    assert_eq!(raw.errno("lookup", Some(many), None, json!({"name": "g"})).await.0, 2);

    // Writes reach the tree with their tag, over JSON and over binary data frames.
    for binary in [false, true] {
        let client = FsClient::connect_with(&url, Some(TOKEN), false, binary).await.unwrap();
        let inbox =
            client.call("lookup", Some(root), None, json!({"name": "inbox"})).await.unwrap()["attr"]["id"].as_u64();
        let h = client.call("open", inbox, None, json!({"flags": 1})).await.unwrap()["h"].as_u64().unwrap();
        assert_eq!(client.write(h, 0, b"hello").await.unwrap(), 5);
    }
    let writes = tree.writes.lock().unwrap().clone();
    assert_eq!(writes.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), ["hello", "hello"]);
    let inbox = raw.lookup(root, "inbox").await["id"].as_u64().unwrap();
    let h = raw.ok("open", Some(inbox), None, json!({"flags": 2})).await["h"].as_u64().unwrap();
    let reply = raw.req("write", 77, None, Some(h), json!({"data_b64": common::b64(b"x")})).await;
    assert_eq!(reply["payload"], json!({"n": 1, "seen_tag": 77}), "the tree's fields join n: {reply}");

    // Changes reach a dedicated event connection, for ids handed out only.
    let mut events = Raw::hello(&url, Some(TOKEN)).await;
    state.synthetic_changed(
        "toy",
        &[
            SyntheticChange::Content("never/handed/out".into()),
            SyntheticChange::Content("many/f005".into()),
            SyntheticChange::Listing(String::new()),
        ],
    );
    let event = events.wait_event(|e| e["type"] == "acheron.e_fs_inval").await;
    assert_eq!(event["payload"]["node"].as_u64(), Some(f5), "a path without an id is skipped: {event}");
    let event = events.wait_event(|e| e["type"] == "acheron.e_fs_inval_dir").await;
    assert_eq!(event["payload"]["dir"].as_u64(), Some(root));
}

#[test]
fn export_names_are_unique_across_directories_and_trees() {
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        exports: vec![ExportSpec::parse(&format!("toy={}", dir.path().display())).unwrap()],
        auth_token: None,
        max_connections: 1,
        hello_timeout: Duration::from_secs(1),
        hide_sandbox_dir: false,
        events_to_subscribers_only: false,
    };
    let spec = SyntheticSpec {
        name: "toy".into(),
        access: Access::ReadOnly,
        desc: String::new(),
        tree: Arc::new(Toy::default()),
    };
    let error = NodeState::with_synthetic_exports(config, vec![spec]).unwrap_err();
    assert!(error.to_string().contains("toy"), "{error}");
}
