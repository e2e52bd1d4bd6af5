//! `spiderweb-fs-node --control-url` and `spiderweb-fs-mount --workspace-url` without a
//! gateway: flags are checked before anything starts, a bad state file is named, and a gateway
//! that cannot be reached is retried with backoff (not in a loop) until SIGTERM.
//! The pairing itself is tested against the real gateway in `tests/tests/node_daemon.rs`.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{MOUNT_BIN, NODE_BIN};

fn node(args: &[&str]) -> (bool, String) {
    let out = Command::new(NODE_BIN)
        .args(args)
        .env_remove("SPIDERWEB_AUTH_TOKEN")
        .env_remove("SPIDERWEB_FS_NODE_AUTH_TOKEN")
        .output()
        .expect("run spiderweb-fs-node");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A closed port on loopback: bound, then released.
fn dead_gateway() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("ws://127.0.0.1:{port}/")
}

#[test]
fn daemon_flags_are_checked_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let export = format!("w={}", dir.path().display());
    let state = dir.path().join("state/node.json");
    let state = state.to_str().unwrap();
    let url = dead_gateway();
    let base = ["--export", &export, "--control-url", &url, "--state-file", state];
    let cases: &[(&[&str], &str)] = &[
        (&["--pair-mode", "invite"], "--pair-mode invite needs --invite-token"),
        (&["--pair-mode", "request", "--invite-token", "x"], "--invite-token cannot be used with --pair-mode request"),
        (&["--refresh-interval-ms", "5000", "--lease-ttl-ms", "5000"], "must be shorter than --lease-ttl-ms"),
        (&["--label", "bad key=v"], "--label"),
        (&["--terminal-id", "a/b"], "--terminal-id"),
        (&["--fs-url", "http://h/v2/fs"], "--fs-url"),
        (&["--node-name", ""], "--node-name"),
        (&["--reconnect-backoff-ms", "0"], "--reconnect-backoff-ms"),
    ];
    for (extra, want) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (ok, stderr) = node(&args);
        assert!(!ok && stderr.contains(want), "{extra:?}: {stderr}");
    }
    let (ok, stderr) = node(&["--export", &export, "--control-url", "ws://h:1/?token=x"]);
    assert!(!ok && stderr.contains("control URL"), "{stderr}");
    let (ok, stderr) = node(&["--export", &export, "--invite-token", "x"]);
    assert!(!ok && stderr.contains("--control-url"), "daemon flags need --control-url: {stderr}");
    assert!(!dir.path().join("state").exists(), "nothing created by a refused start");
}

#[test]
fn a_malformed_state_file_is_named_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("node.json");
    std::fs::write(&state, "{\"node_id\": 5").unwrap();
    let export = format!("w={}", dir.path().display());
    let (ok, stderr) =
        node(&["--export", &export, "--control-url", &dead_gateway(), "--state-file", state.to_str().unwrap()]);
    assert!(!ok, "refused");
    assert!(stderr.contains(state.to_str().unwrap()) && stderr.contains("malformed"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "{\"node_id\": 5", "not overwritten");
}

#[test]
fn an_unreachable_gateway_is_retried_with_backoff_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let export = format!("w={}", dir.path().display());
    let state = dir.path().join("private/node.json");
    let mut child = Command::new(NODE_BIN)
        .args(["--export", &export, "--control-url", &dead_gateway(), "--state-file", state.to_str().unwrap()])
        .args(["--reconnect-backoff-ms", "200", "--reconnect-backoff-max-ms", "400"])
        .env("SPIDERWEB_LOG", "warn")
        .env_remove("SPIDERWEB_AUTH_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "keeps retrying instead of exiting");
    // Daemon mode is confined too: seccomp filter mode, no_new_privs (set by Landlock's
    // restrict_self), no capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let field =
        |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned();
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5) && status.success(), "clean stop: {status}");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let attempts = stderr.matches("join request failed; retrying").count();
    // 200, 400, 400 … ms apart: about 4-5 tries in 1.5 s; a loop would log thousands.
    assert!((2..=8).contains(&attempts), "{attempts} attempts in 1.5 s:\n{stderr}");
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");
    let dir_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state.parent().unwrap()).unwrap().permissions());
    assert_eq!(dir_mode & 0o777, 0o700, "the state directory is created private");
}

#[test]
fn workspace_flags_and_an_unreachable_gateway_fail_clearly() {
    let run = |args: &[&str]| {
        let out = Command::new(MOUNT_BIN).args(args).env_remove("SPIDERWEB_AUTH_TOKEN").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, stderr) = run(&["--workspace-url", "ws://127.0.0.1:1/", "--project-token", "t", "status"]);
    assert!(!ok && stderr.contains("--project-id"), "{stderr}");
    let (ok, stderr) = run(&["--project-id", "p", "status"]);
    assert!(!ok && stderr.contains("--workspace-url"), "{stderr}");
    let url = dead_gateway();
    let (ok, stderr) = run(&["--workspace-url", &url, "status"]);
    assert!(!ok && stderr.contains("cannot reach the gateway"), "{stderr}");
    let (ok, stderr) = run(&["--workspace-url", "http://127.0.0.1:1/", "status"]);
    assert!(!ok && stderr.contains("control URL"), "{stderr}");
}
