//! `spiderweb-fs-mount` one-shot commands, status and failover against real nodes.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};

use common::{MOUNT_BIN, Node};
use serde_json::Value;

fn mount_cmd(endpoints: &[String], args: &[&str]) -> Output {
    let mut cmd = Command::new(MOUNT_BIN);
    for e in endpoints {
        cmd.args(["--endpoint", e]);
    }
    cmd.args(args).env_remove("SPIDERWEB_AUTH_TOKEN").output().expect("run spiderweb-fs-mount")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn commands_work_through_the_router() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "alpha").unwrap();
    let node = Node::start(&[format!("w={}", dir.path().display())], &["--auth-token", "tok"]);
    let eps = [format!("n={}#w@/src", node.url()), "--auth-token".into(), "tok".into()];
    let (ep, token) = (&eps[..1], ["--auth-token", "tok"]);
    let run = |args: &[&str]| {
        let mut all = token.to_vec();
        all.extend_from_slice(args);
        mount_cmd(ep, &all)
    };

    let attr: Value = serde_json::from_str(&stdout(&run(&["getattr", "/src/a.txt"]))).unwrap();
    assert_eq!((attr["k"].as_u64(), attr["sz"].as_u64()), (Some(1), Some(5)));
    let listing: Value = serde_json::from_str(&stdout(&run(&["readdir", "/src"]))).unwrap();
    let names: Vec<_> = listing["ents"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, [".", "..", "a.txt"]);
    assert_eq!(stdout(&run(&["cat", "/src/a.txt"])), "alpha");
    assert_eq!(stdout(&run(&["write", "/src/b.txt", "bravo"])), "ok\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("b.txt")).unwrap(), "bravo");
    assert_eq!(stdout(&run(&["write", "/src/b.txt", "b"])), "ok\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("b.txt")).unwrap(), "b", "write truncates");
    stdout(&run(&["mkdir", "/src/d"]));
    stdout(&run(&["rename", "/src/b.txt", "/src/d/c.txt"]));
    assert_eq!(stdout(&run(&["cat", "/src/d/c.txt"])), "b");
    stdout(&run(&["truncate", "/src/a.txt", "2"]));
    assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).unwrap(), "al");
    stdout(&run(&["unlink", "/src/d/c.txt"]));
    stdout(&run(&["rmdir", "/src/d"]));
    assert!(!dir.path().join("d").exists());

    let missing = run(&["getattr", "/src/nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("errno 2"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let escape = run(&["cat", "/src/../etc/passwd"]);
    assert!(!escape.status.success());
    let no_token = mount_cmd(ep, &["getattr", "/src/a.txt"]);
    assert!(!no_token.status.success(), "the node requires the token");
    let _ = eps;
}

#[test]
fn read_only_exports_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "alpha").unwrap();
    let node = Node::start(&[format!("r={}:ro", dir.path().display())], &[]);
    let ep = [format!("n={}#r@/ro", node.url())];
    for args in [
        &["write", "/ro/a.txt", "x"][..],
        &["mkdir", "/ro/d"],
        &["unlink", "/ro/a.txt"],
        &["truncate", "/ro/a.txt", "0"],
    ] {
        let out = mount_cmd(&ep, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("errno 30"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(dir.path().join("a.txt")).unwrap(), "alpha");
}

#[test]
fn status_reports_health_per_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[format!("w={}", dir.path().display())], &[]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("ws://{}/v2/fs", dead.local_addr().unwrap());
    drop(dead);
    let eps = [format!("up={}#w@/m", node.url()), format!("down={dead_url}@/m")];
    let status: Value = serde_json::from_str(&stdout(&mount_cmd(&eps, &["status"]))).unwrap();
    assert_eq!(status["metrics"]["failover_events_total"], 0);
    let up = &status["endpoints"][0];
    assert_eq!(
        (up["name"].as_str(), up["healthy"].as_bool(), up["export_ro"].as_bool()),
        (Some("up"), Some(true), Some(false))
    );
    assert_eq!(
        (up["source_kind"].as_str(), up["mount_path"].as_str(), up["export"].as_str()),
        (Some("linux"), Some("/m"), Some("w"))
    );
    assert!(up["root"].as_u64().unwrap() >> 48 == 1);
    let down = &status["endpoints"][1];
    assert_eq!((down["healthy"].as_bool(), down["consecutive_failures"].as_u64()), (Some(false), Some(1)));
    assert_eq!((down["export"].as_str(), down["root"].as_u64()), (Some(""), None));
    assert!(down["last_failure_ms"].as_u64().unwrap() > 0);

    let unprobed: Value = serde_json::from_str(&stdout(&mount_cmd(&eps, &["status", "--no-probe"]))).unwrap();
    assert_eq!(unprobed["endpoints"][0]["has_client"], false);

    // The dead endpoint sorts first by name but a read still succeeds through the live one.
    let eps = [format!("down={dead_url}@/m"), format!("up={}#w@/m", node.url())];
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let out = mount_cmd(&eps, &["cat", "/m/f"]);
    assert_eq!(stdout(&out), "x");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failover_events_total=1"));
}

#[test]
fn bad_endpoint_syntax_is_refused() {
    let out = mount_cmd(&["a=http://h:1/".into()], &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with ws://"));
}

#[test]
fn read_fails_over_when_a_node_dies_mid_read() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big"), &content).unwrap();
    let export = [format!("w={}:ro", dir.path().display())];
    let mut first = Node::start(&export, &[]);
    let second = Node::start(&export, &[]);
    let mut cat = Command::new(MOUNT_BIN)
        .args(["--endpoint", &format!("a={}#w@/m", first.url()), "--endpoint", &format!("b={}#w@/m", second.url())])
        .args(["cat", "/m/big"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = cat.stdout.take().unwrap();
    // The pipe is small: `cat` blocks writing until we read, so it is mid-file when `a` dies.
    let mut got = vec![0u8; 1 << 20];
    stdout.read_exact(&mut got).unwrap();
    first.kill();
    stdout.read_to_end(&mut got).unwrap();
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(got.len(), content.len());
    assert!(got == content, "content differs after failover");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failover_events_total=1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
