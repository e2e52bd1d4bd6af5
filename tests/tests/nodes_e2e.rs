//! End to end with the real daemon-mode node: `spiderweb-fs-node --control-url` pairs with the
//! gateway by invite, refreshes its lease, advertises its `fs` service and dials the tunnel;
//! `spiderweb-fs-mount --workspace-url` hydrates the project's mounts from `workspace_status`
//! and reads and writes the node's files through the gateway's relay. Then the node is killed
//! (the relay answers errno 5 instead of hanging) and started again from its state file (the
//! same node id, the mount works again without re-pairing).

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use spiderweb_tests::{Gateway, bin_dir, eventually};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(gw: &Gateway, dir: &std::path::Path, state: &std::path::Path, invite: &str) -> Daemon {
    let child = Command::new(bin_dir().join("spiderweb-fs-node"))
        .arg("--control-url")
        .arg(gw.ws_url())
        .args(["--control-auth-token", &gw.admin_token(), "--invite-token", invite, "--node-name", "laptop"])
        .args(["--refresh-interval-ms", "500", "--reconnect-backoff-ms", "100", "--reconnect-backoff-max-ms", "500"])
        .arg("--export")
        .arg(format!("work={}", dir.display()))
        .arg("--state-file")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spiderweb-fs-node must be built (cargo build --workspace --bins)");
    Daemon(child)
}

fn mount_cli(gw: &Gateway, project: &str, args: &[&str]) -> Output {
    Command::new(bin_dir().join("spiderweb-fs-mount"))
        .arg("--workspace-url")
        .arg(gw.ws_url())
        .args(["--project-id", project, "--auth-token", &gw.admin_token()])
        .args(args)
        .env("SPIDERWEB_LOG", "error")
        .output()
        .expect("run spiderweb-fs-mount")
}

/// The node's list entry once it has a tunnel URL and an `fs` service.
async fn wait_until_serving(gw: &Gateway) -> Value {
    let mut c = gw.admin().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = c.control_ok("node_list", json!({})).await;
        let node = list["nodes"][0].clone();
        if node["fs_url"].as_str().is_some_and(|u| u.contains("/v2/fs/node/")) && node["service_count"] == 1 {
            return node;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not pair, refresh its lease and upsert its service: {list}\n{}",
            gw.stderr_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_daemon_node_pairs_tunnels_and_serves_a_hydrated_mount() {
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello through the tunnel\n").unwrap();
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("node-state.json");
    let mut c = gw.admin().await;
    let invite = c.control_ok("node_invite_create", json!({})).await;
    let daemon = start_daemon(&gw, dir.path(), &state_file, invite["invite_token"].as_str().unwrap());
    let node = wait_until_serving(&gw).await;
    let node_id = node["node_id"].as_str().unwrap().to_owned();
    assert_eq!(node["node_name"], "laptop");
    let catalog = c.control_ok("node_service_get", json!({"node_id": node_id})).await;
    assert_eq!(catalog["services"][0]["service_id"], "fs");

    let p = c.control_ok("project_create", json!({"name": "E2E", "vision": "files from a node"})).await;
    let project = p["project_id"].as_str().unwrap().to_owned();
    c.control_ok(
        "project_mount_set",
        json!({"project_id": project, "node_id": node_id, "export_name": "work", "mount_path": "/src"}),
    )
    .await;

    let out = mount_cli(&gw, &project, &["cat", "/src/hello.txt"]);
    assert!(out.status.success(), "cat through the relay: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello through the tunnel\n");
    let out = mount_cli(&gw, &project, &["write", "/src/new.txt", "written via the gateway"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.path().join("new.txt")).unwrap(), "written via the gateway");

    // A dead node: the relay says so instead of hanging.
    drop(daemon);
    let out = mount_cli(&gw, &project, &["cat", "/src/hello.txt"]);
    assert!(!out.status.success(), "a read from a dead node must fail");

    // Started again from its state file: same node, no new pairing, the mount works again.
    let invite_again = c.control_ok("node_invite_create", json!({})).await;
    let _daemon = start_daemon(&gw, dir.path(), &state_file, invite_again["invite_token"].as_str().unwrap());
    let ok = eventually(Duration::from_secs(15), || {
        let gw = &gw;
        let project = project.clone();
        async move { mount_cli(gw, &project, &["cat", "/src/hello.txt"]).status.success() }
    })
    .await;
    assert!(ok, "the restarted node serves again: {}", gw.stderr_tail(30));
    let list = c.control_ok("node_list", json!({})).await;
    assert_eq!(list["nodes"].as_array().unwrap().len(), 1, "no second pairing: {list}");
    assert_eq!(list["nodes"][0]["node_id"], node_id.as_str());
}
