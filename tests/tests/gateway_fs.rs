//! The gateway's own exports on `/v2/fs`, reached with the real `spiderweb-fs-mount` client.
//!
//! What a user relies on: `fs.exports` in the gateway's config serve the node protocol on the
//! gateway's port, with the same policy as a standalone node (token in the hello, read-only
//! exports refuse mutations), and a gateway without exports says so.

use std::process::Command;

use serde_json::json;
use spiderweb_tests::{Gateway, bin_dir};

const TOKEN: &str = "fs-secret-1234";

fn mount_cli(gw: &Gateway, token: &str, args: &[&str]) -> (bool, String, String) {
    let endpoint_rw = format!("local=ws://{}/v2/fs#work@/work", gw.addr());
    let endpoint_ro = format!("docs=ws://{}/v2/fs#docs@/docs", gw.addr());
    let out = Command::new(bin_dir().join("spiderweb-fs-mount"))
        .args(["--auth-token", token, "--endpoint", &endpoint_rw, "--endpoint", &endpoint_ro])
        .args(args)
        .env("SPIDERWEB_LOG", "error")
        .output()
        .expect("run spiderweb-fs-mount");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn exports_are_served_on_v2_fs_with_their_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (work, docs) = (dir.path().join("work"), dir.path().join("docs"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(work.join("hello.txt"), "hello from the gateway\n").unwrap();
    std::fs::write(docs.join("manual.txt"), "read me\n").unwrap();
    let exports = [format!("work={}", work.display()), format!("docs={}:ro", docs.display())];
    let gw = Gateway::start_with(json!({"fs": {"exports": exports, "auth_token": TOKEN}}));

    let (ok, out, err) = mount_cli(&gw, TOKEN, &["cat", "/work/hello.txt"]);
    assert!(ok, "{err}");
    assert_eq!(out, "hello from the gateway\n");
    let (ok, _, err) = mount_cli(&gw, TOKEN, &["write", "/work/new.txt", "written through the gateway"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(work.join("new.txt")).unwrap(), "written through the gateway");
    let (ok, out, err) = mount_cli(&gw, TOKEN, &["cat", "/docs/manual.txt"]);
    assert!(ok && out == "read me\n", "{err}");
    let (ok, _, err) = mount_cli(&gw, TOKEN, &["write", "/docs/manual.txt", "vandalised"]);
    assert!(!ok, "a read-only export refuses writes");
    assert!(err.contains("EROFS") || err.contains("Read-only") || err.contains("30"), "{err}");
    assert_eq!(std::fs::read_to_string(docs.join("manual.txt")).unwrap(), "read me\n");

    let (ok, _, err) = mount_cli(&gw, "wrong-token", &["cat", "/work/hello.txt"]);
    assert!(!ok, "a wrong token is refused");
    assert!(!err.is_empty());
}

#[test]
fn exports_without_a_token_refuse_to_start_naming_the_key() {
    let mut gw = Gateway::new(json!({"fs": {"exports": ["work=/tmp"]}}));
    let (status, stderr) = gw.run_expect_exit();
    assert!(!status.success());
    assert!(stderr.contains("fs.auth_token"), "{stderr}");
}
