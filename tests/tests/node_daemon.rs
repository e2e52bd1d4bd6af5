//! A real `spiderweb-fs-node` in daemon mode (`--control-url`) against a real gateway, and a
//! real `spiderweb-fs-mount --workspace-url … mount` reaching it through the gateway's relay:
//! pairing by invite and by request (approved with the operator token, or denied), the lease
//! kept fresh, the state file reused across restarts (no second pairing), ordinary programs
//! through FUSE over the reverse tunnel, a killed node giving EIO (not a hang) and the mount
//! recovering when it comes back. Needs root, `/dev/fuse` and `fusermount3` (fuse3).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spiderweb_tests::{Gateway, bin_dir};

/// A daemon-mode node; its stdout lines arrive on `lines`. Killed on drop.
struct DaemonNode {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl DaemonNode {
    fn start(gw: &Gateway, export: &Path, state: &Path, extra: &[&str]) -> DaemonNode {
        let mut command = Self::command(gw, export, state);
        command.args(["--control-auth-token", &gw.admin_token()]).args(extra);
        Self::spawn(command)
    }

    /// A daemon-mode node with every setting but its tokens.
    fn command(gw: &Gateway, export: &Path, state: &Path) -> Command {
        let mut command = Command::new(bin_dir().join("spiderweb-fs-node"));
        command
            .arg("--export")
            .arg(format!("work={}", export.display()))
            .args(["--control-url", &format!("ws://{}/", gw.addr())])
            .arg("--state-file")
            .arg(state)
            .args(["--reconnect-backoff-ms", "100", "--reconnect-backoff-max-ms", "500"])
            .args(["--refresh-interval-ms", "1000", "--lease-ttl-ms", "60000"])
            .env("SPIDERWEB_LOG", "warn")
            .env_remove("SPIDERWEB_AUTH_TOKEN")
            .env_remove("CREDENTIALS_DIRECTORY");
        command
    }

    fn spawn(mut command: Command) -> DaemonNode {
        let mut child =
            command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start spiderweb-fs-node");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        DaemonNode { child, lines }
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    fn expect_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => panic!("node printed no {prefix:?} line within 20 s (exit: {:?})", self.child.try_wait()),
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonNode {
    fn drop(&mut self) {
        self.kill();
    }
}

struct FuseMount {
    child: Child,
    at: PathBuf,
}

fn is_mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(at.to_str().unwrap()))
}

impl FuseMount {
    fn start(gw: &Gateway, project: &str, at: &Path) -> FuseMount {
        assert!(Path::new("/dev/fuse").exists(), "this test needs /dev/fuse (load the fuse module)");
        assert!(
            Command::new("fusermount3").arg("-V").output().is_ok(),
            "this test needs fusermount3: apt-get install fuse3 (scripts/test does)"
        );
        std::fs::create_dir_all(at).unwrap();
        let mut child = Command::new(bin_dir().join("spiderweb-fs-mount"))
            .args(["--workspace-url", &format!("ws://{}/", gw.addr())])
            .args(["--auth-token", &gw.admin_token(), "--project-id", project])
            .args(["--workspace-sync-interval-ms", "500", "mount"])
            .arg(at)
            .env("SPIDERWEB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("mounted at"), "mount did not start: {line:?}");
        wait_until("the FUSE mount", Duration::from_secs(10), || is_mounted(at));
        FuseMount { child, at: at.to_owned() }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; it unmounts on SIGTERM.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if is_mounted(&self.at) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.at).status();
        }
    }
}

fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `script` with `sh -c` in `dir` under a 30 s limit: (success, stdout, stderr).
fn sh(dir: &Path, script: &str) -> (bool, String, String) {
    let out = Command::new("timeout").args(["30", "sh", "-c", script]).current_dir(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_state(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("state file")).expect("state file is JSON")
}

/// Under systemd (`spiderweb-fs-node-paired@.service`) the tokens arrive as credentials,
/// never on the command line or in the environment; the control token is the user token, as
/// the unit recommends.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_takes_its_control_and_invite_tokens_from_systemd_credentials() {
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let mut admin = gw.admin().await;
    let invite = admin.control_ok("node_invite_create", json!({})).await;
    std::fs::write(credentials.join("invite-token"), invite["invite_token"].as_str().unwrap()).unwrap();
    std::fs::write(credentials.join("control-token"), format!("{}\n", gw.user_token())).unwrap();
    let state = dir.path().join("node-state/node.json");
    let mut command = DaemonNode::command(&gw, &export, &state);
    command.env("CREDENTIALS_DIRECTORY", &credentials);
    let mut node = DaemonNode::spawn(command);
    let node_id = node.expect_line("paired as ").trim_start_matches("paired as ").to_owned();
    node.expect_line("tunnel up");
    let listed = admin.control_ok("node_get", json!({"node_id": node_id})).await;
    assert_eq!(listed["node"]["node_id"], json!(node_id), "the gateway knows the node: {listed}");
}

/// A daemon node holds only the user token (README "Deviations": the node ops are authorised
/// by the invite and the node secret, not by the admin role): it pairs by invite, keeps its
/// lease fresh, advertises its catalog, and a relay client reads a file of its export through
/// the tunnel. Nothing of this needs the admin token but the invite's creation.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_with_only_a_user_token_pairs_refreshes_advertises_and_serves() {
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(export.join("report.txt"), "served with a user token\n").unwrap();
    let state = dir.path().join("node-state/node.json");
    let mut admin = gw.admin().await;
    let invite = admin.control_ok("node_invite_create", json!({})).await;
    let mut command = DaemonNode::command(&gw, &export, &state);
    command
        .args(["--control-auth-token", &gw.user_token(), "--node-name", "least-privilege", "--label", "owner=user"])
        .args(["--invite-token", invite["invite_token"].as_str().unwrap()]);
    let mut node = DaemonNode::spawn(command);
    let node_id = node.expect_line("paired as ").trim_start_matches("paired as ").to_owned();
    node.expect_line("tunnel up");

    let catalog = admin.control_ok("node_service_get", json!({"node_id": node_id})).await;
    assert_eq!(catalog["services"][0]["service_id"], "fs", "the catalog upsert went through: {catalog}");
    assert_eq!(catalog["labels"], json!({"owner": "user"}));
    let lease = |v: &Value| v["node"]["lease_expires_at_ms"].as_u64().unwrap();
    let first = lease(&admin.control_ok("node_get", json!({"node_id": node_id})).await);
    let mut later = first;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        later = lease(&admin.control_ok("node_get", json!({"node_id": node_id})).await);
        if later > first {
            break;
        }
    }
    assert!(later > first, "the lease is refreshed with the user token: {first} → {later}");

    // A relay client: the gateway's /v2/fs/node/<id>, authenticated by the node's secret.
    let secret = read_state(&state)["node_secret"].as_str().expect("node secret saved").to_owned();
    let out = Command::new(bin_dir().join("spiderweb-fs-mount"))
        .args(["--auth-token", &secret, "--endpoint"])
        .arg(format!("relay=ws://{}/v2/fs/node/{node_id}#work@/src", gw.addr()))
        .args(["cat", "/src/report.txt"])
        .env("SPIDERWEB_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout == b"served with a user token\n",
        "cat through the relay: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.child.try_wait().unwrap().is_none(), "the node keeps running");
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_pairing_serves_a_fuse_mount_through_the_tunnel_and_survives_node_restarts() {
    assert!(unsafe { libc::geteuid() } == 0, "FUSE mounts in this test need root");
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(export.join("docs")).unwrap();
    std::fs::write(export.join("docs/readme.txt"), "hello through the tunnel\n").unwrap();
    let extra = dir.path().join("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("note.txt"), "extra\n").unwrap();
    let extra_export = format!("extra={}", extra.display());
    let state = dir.path().join("node-state/node.json");

    let mut admin = gw.admin().await;
    let invite = admin.control_ok("node_invite_create", json!({})).await;
    let invite = invite["invite_token"].as_str().unwrap().to_owned();
    let flags = [
        "--invite-token",
        &invite,
        "--node-name",
        "laptop",
        "--terminal-id",
        "main",
        "--label",
        "site=lab",
        "--export",
        &extra_export,
    ];
    let mut node = DaemonNode::start(&gw, &export, &state, &flags);
    let node_id = node.expect_line("paired as ").trim_start_matches("paired as ").to_owned();
    node.expect_line("tunnel up");

    // The state file: credentials and lease, private.
    let saved = read_state(&state);
    assert_eq!(saved["node_id"], json!(node_id));
    assert!(saved["node_secret"].as_str().is_some_and(|s| s.starts_with("secret-")), "{saved}");
    assert!(saved["lease_token"].as_str().is_some_and(|s| s.starts_with("lease-")), "{saved}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the state file holds the node secret");

    // The gateway's view: the node, its relay URL, its services; the lease keeps moving.
    let got = admin.control_ok("node_get", json!({"node_id": node_id})).await["node"].clone();
    assert_eq!(got["node_name"], "laptop");
    assert_eq!(got["fs_url"], json!(format!("ws://{}/v2/fs/node/{node_id}", gw.addr())));
    let catalog = admin.control_ok("node_service_get", json!({"node_id": node_id})).await;
    let ids: Vec<&str> =
        catalog["services"].as_array().unwrap().iter().map(|s| s["service_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["fs", "terminal-main"], "{catalog}");
    assert_eq!(catalog["services"][0]["capabilities"], json!({"rw": true, "export_count": 2}));
    assert_eq!(catalog["labels"], json!({"site": "lab"}));
    let lease = |v: &Value| v["lease_expires_at_ms"].as_u64().unwrap();
    let first_lease = lease(&got);
    let mut refreshed = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refreshed = lease(&admin.control_ok("node_get", json!({"node_id": node_id})).await["node"]);
        if refreshed > first_lease {
            break;
        }
    }
    assert!(refreshed > first_lease, "lease refreshed every second: {first_lease} → {refreshed}");
    assert!(lease(&read_state(&state)) >= first_lease, "the state file follows the lease");

    // A project mounting the node's export, mounted with FUSE from the workspace.
    let project =
        admin.control_ok("project_create", json!({"name": "Tunnelled", "vision": "files over the tunnel"})).await;
    let project = project["project_id"].as_str().unwrap().to_owned();
    admin
        .control_ok(
            "project_mount_set",
            json!({"project_id": project, "node_id": node_id, "export_name": "work", "mount_path": "/src"}),
        )
        .await;
    let mnt = dir.path().join("mnt");
    let mount = FuseMount::start(&gw, &project, &mnt);
    let (ok, out, err) = sh(&mnt, "cat src/docs/readme.txt");
    assert!(ok && out == "hello through the tunnel\n", "cat: {out} {err}");
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let script = format!(
        "cp {} src/docs/big.bin && cp src/docs/big.bin src/docs/copy.bin && find src | sort",
        dir.path().join("big.bin").display()
    );
    let (ok, out, err) = sh(&mnt, &script);
    assert!(ok, "cp/find through the tunnel: {err}");
    assert_eq!(out, "src\nsrc/docs\nsrc/docs/big.bin\nsrc/docs/copy.bin\nsrc/docs/readme.txt\n");
    assert_eq!(std::fs::read(export.join("docs/copy.bin")).unwrap(), big, "bytes intact in 128 KiB tunnel chunks");

    // The workspace sync follows the project: a mount added appears, a mount removed goes.
    admin
        .control_ok(
            "project_mount_set",
            json!({"project_id": project, "node_id": node_id, "export_name": "extra", "mount_path": "/extra"}),
        )
        .await;
    let added = mnt.join("extra/note.txt");
    wait_until("a mount added to the project", Duration::from_secs(15), || {
        std::fs::read_to_string(&added).is_ok_and(|s| s == "extra\n")
    });
    admin.control_ok("project_mount_remove", json!({"project_id": project, "mount_path": "/extra"})).await;
    let top = || -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    };
    wait_until("a mount removed from the project", Duration::from_secs(15), || {
        top() == ["src"] && std::fs::read_to_string(&added).is_err()
    });

    // The node dies: the application gets an error, not a hang.
    node.kill();
    let started = Instant::now();
    let (ok, _, err) = sh(&mnt, "cat src/docs/copy.bin > /dev/null");
    assert!(!ok && err.contains("Input/output error"), "a dead node is EIO: {err}");
    assert!(started.elapsed() < Duration::from_secs(25), "answered, not hung: {:?}", started.elapsed());

    // Restarted from its state file: same node, no second pairing (the invite is spent anyway).
    let mut node = DaemonNode::start(&gw, &export, &state, &flags);
    assert_eq!(node.expect_line("paired as "), format!("paired as {node_id}"));
    node.expect_line("tunnel up");
    let nodes = admin.control_ok("node_list", json!({})).await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    wait_until("the mount recovers", Duration::from_secs(20), || {
        sh(&mnt, "cat src/docs/readme.txt").1 == "hello through the tunnel\n"
    });
    let (ok, _, err) = sh(&mnt, "echo after > src/after.txt && cat src/after.txt");
    assert!(ok, "writes after recovery: {err}");
    assert_eq!(std::fs::read_to_string(export.join("after.txt")).unwrap(), "after\n");
    drop(mount);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_pairing_waits_for_the_operator_token_and_a_denial_stops_the_node() {
    let mut gw = Gateway::new(spiderweb_tests::base_config());
    gw.env("SPIDERWEB_CONTROL_OPERATOR_TOKEN", "operator-secret");
    gw.launch();
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let state = dir.path().join("state/node.json");
    let mut admin = gw.admin().await;

    // Without the operator token the approval is refused (the gateway answers missing_field
    // before it looks at the request, so the node cannot tell "waiting" from "denied" yet): one
    // request, saved, retried.
    let mut node = DaemonNode::start(&gw, &export, &state, &["--node-name", "edge"]);
    let filed = node.expect_line("join request ");
    let request_id = read_state(&state)["request_id"].as_str().expect("request id saved").to_owned();
    assert!(filed.contains(&request_id), "{filed}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pending = admin.control_ok("node_join_pending_list", json!({"operator_token": "operator-secret"})).await;
    assert_eq!(pending["pending"].as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending["pending"][0]["node_name"], "edge");
    assert!(node.child.try_wait().unwrap().is_none(), "still waiting for approval");
    node.kill();

    // Restarted with the operator's token: approves the saved request, no second one.
    let mut node =
        DaemonNode::start(&gw, &export, &state, &["--node-name", "edge", "--operator-token", "operator-secret"]);
    let node_id = node.expect_line("paired as ").trim_start_matches("paired as ").to_owned();
    node.expect_line("tunnel up");
    let pending = admin.control_ok("node_join_pending_list", json!({"operator_token": "operator-secret"})).await;
    assert_eq!(pending["pending"], json!([]), "the saved request was approved, none filed again");
    let saved = read_state(&state);
    assert_eq!((saved["node_id"].as_str(), &saved["request_id"]), (Some(node_id.as_str()), &Value::Null));
    node.kill();

    // A request the operator denies: the node learns it at its next approval attempt that gets
    // past the operator check, stops, and forgets the dead request.
    let other_state = dir.path().join("state2/node.json");
    let mut other = DaemonNode::start(&gw, &export, &other_state, &["--node-name", "denied"]);
    other.expect_line("join request ");
    let request_id = read_state(&other_state)["request_id"].as_str().unwrap().to_owned();
    other.kill();
    admin.control_ok("node_join_deny", json!({"request_id": request_id, "operator_token": "operator-secret"})).await;
    let mut other = DaemonNode::start(
        &gw,
        &export,
        &other_state,
        &["--node-name", "denied", "--operator-token", "operator-secret"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = other.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "a denied node stops");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "denied: {status}");
    assert_eq!(read_state(&other_state)["request_id"], Value::Null, "the dead request is forgotten");
}

/// Pairing by request hands the secret only to whoever approves, so a node with a user token
/// (which may file the request but never approve it) stops at once saying to use an invite,
/// instead of waiting forever; its request stays saved for a restart with an admin token.
/// Where the user token may not even file it (its connect gate), the node says the same.
#[tokio::test(flavor = "multi_thread")]
async fn request_pairing_with_a_user_token_stops_and_says_to_use_an_invite() {
    let mut gw = Gateway::new(json!({"runtime": {"agents_dir": spiderweb_tests::TEST_AGENTS_DIR}}));
    gw.write_agent(spiderweb_tests::TEST_AGENTS_DIR, "helper", &json!({"name": "Helper", "description": "d"}));
    gw.launch();
    let mut admin = gw.admin().await;
    // A project with an agent, so the user's connection is not gated and may file the request.
    let p = admin.control_ok("project_create", json!({"name": "A", "vision": "v"})).await;
    admin
        .control_ok("session_attach", json!({"session_key": "h", "agent_id": "helper", "project_id": p["project_id"]}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    let state = dir.path().join("state/node.json");
    let mut command = DaemonNode::command(&gw, &export, &state);
    command.args(["--control-auth-token", &gw.user_token(), "--node-name", "edge"]).stderr(Stdio::piped());
    let child = command.stdout(Stdio::null()).spawn().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the node must stop: {stderr}");
    assert!(
        stderr.contains("pairing by request needs an admin control token") && stderr.contains("--invite-token"),
        "the error says what to do: {stderr}"
    );
    let request_id = read_state(&state)["request_id"].as_str().expect("the request stays saved").to_owned();
    let pending = admin.control_ok("node_join_pending_list", json!({})).await;
    assert_eq!(pending["pending"][0]["request_id"], json!(request_id), "{pending}");

    // On a gateway with no project yet the user token meets its connect gate at the request
    // itself: the same explanation, not the gate's "provision a project".
    let fresh = Gateway::start();
    let mut command = DaemonNode::command(&fresh, &export, &dir.path().join("state2/node.json"));
    command.args(["--control-auth-token", &fresh.user_token()]).stderr(Stdio::piped());
    let child = command.stdout(Stdio::null()).spawn().unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("pairing by request needs an admin control token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_on_one_mount_path_fail_over_through_the_relay() {
    assert!(unsafe { libc::geteuid() } == 0, "FUSE mounts in this test need root");
    let gw = Gateway::start();
    let dir = tempfile::tempdir().unwrap();
    let mut admin = gw.admin().await;
    let project = admin.control_ok("project_create", json!({"name": "Replicated", "vision": "two copies"})).await;
    let project = project["project_id"].as_str().unwrap().to_owned();
    let mut nodes = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let export = dir.path().join(name);
        std::fs::create_dir_all(&export).unwrap();
        std::fs::write(export.join("shared.txt"), "same on both\n").unwrap();
        let state = dir.path().join(format!("{name}-state/node.json"));
        let invite =
            admin.control_ok("node_invite_create", json!({})).await["invite_token"].as_str().unwrap().to_owned();
        let flags = ["--invite-token".to_owned(), invite, "--node-name".to_owned(), name.to_owned()];
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut node = DaemonNode::start(&gw, &export, &state, &args);
        let node_id = node.expect_line("paired as ").trim_start_matches("paired as ").to_owned();
        node.expect_line("tunnel up");
        admin
            .control_ok(
                "project_mount_set",
                json!({"project_id": project, "node_id": node_id, "export_name": "work", "mount_path": "/src"}),
            )
            .await;
        nodes.push((node, export, state, flags));
    }
    let mnt = dir.path().join("mnt");
    let _mount = FuseMount::start(&gw, &project, &mnt);
    let read = || sh(&mnt, "cat src/shared.txt");
    assert_eq!(read().1, "same on both\n");

    // Either node may be the one serving: take each down in turn; reads carry on.
    for down in 0..2 {
        nodes[down].0.kill();
        let (ok, out, err) = read();
        assert!(ok && out == "same on both\n", "with {} down: {out} {err}", ["replica-a", "replica-b"][down]);
        let (_, export, state, args) = &nodes[down];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut back = DaemonNode::start(&gw, export, state, &args);
        back.expect_line("tunnel up");
        nodes[down].0 = back;
        // The router sees it healthy again within its retry interval (1.5 s).
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
}
