//! The node served through the library API, as the gateway's `/v2/fs` does: an already
//! upgraded WebSocket handed to `serve_connection` with gateway settings (hidden sandbox
//! directory, broadcasts only to dedicated event connections, no host watcher).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Raw;
use serde_json::json;
use spiderweb_fsnode::node::{NodeConfig, NodeState, serve_connection};
use spiderweb_policy::export::ExportSpec;

async fn embedded_node(dir: &std::path::Path) -> String {
    let state = NodeState::new(NodeConfig {
        exports: vec![ExportSpec::parse(&format!("work={}", dir.display())).unwrap()],
        auth_token: Some("local-secret".into()),
        max_connections: 16,
        hello_timeout: Duration::from_secs(10),
        hide_sandbox_dir: true,
        events_to_subscribers_only: true,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                serve_connection(ws, state).await;
            });
        }
    });
    format!("ws://{addr}/v2/fs")
}

#[tokio::test]
async fn gateway_settings_through_the_library_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".spiderweb-sandbox")).unwrap();
    std::fs::write(dir.path().join("visible.txt"), "v").unwrap();
    let url = embedded_node(dir.path()).await;

    let mut worker = Raw::hello(&url, Some("local-secret")).await;
    let root = worker.root("work").await;
    assert_eq!(worker.errno("lookup", Some(root), None, json!({"name": ".spiderweb-sandbox"})).await.0, 2);
    let listing = worker.ok("readdirp", Some(root), None, json!({})).await;
    let names: Vec<_> = listing["ents"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, [".", "..", "visible.txt"]);

    // A dedicated event connection (subscribed, only hellos) gets broadcasts; a subscribed
    // connection that also sends requests does not.
    let mut events = Raw::hello(&url, Some("local-secret")).await;
    let mut busy = Raw::hello(&url, Some("local-secret")).await;
    busy.root("work").await;
    worker.ok("mkdir", Some(root), None, json!({"name": "made"})).await;
    let event = events.wait_event(|e| e["type"] == "acheron.e_fs_inval_dir").await;
    assert_eq!(event["payload"]["dir"].as_u64(), Some(root));
    let (seen, _) = busy.req_with_events("exports", 3, None, None, json!({})).await;
    assert!(seen.is_empty(), "a request connection got broadcasts: {seen:?}");

    // The originator still gets its own events before its reply.
    let (own, reply) = worker.req_with_events("rmdir", 4, Some(root), None, json!({"name": "made"})).await;
    assert_eq!(reply["ok"], true);
    assert!(own.iter().any(|e| e["type"] == "acheron.e_fs_inval_dir"), "{own:?}");
}
