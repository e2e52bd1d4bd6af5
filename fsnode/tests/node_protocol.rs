//! The node protocol against a real `spiderweb-fs-node` process (spec `fs-node.md` §2–§6).

mod common;

use common::{Node, Raw, b64, unb64};
use serde_json::json;

fn export(name: &str, dir: &std::path::Path, suffix: &str) -> String {
    format!("{name}={}{suffix}", dir.display())
}

#[tokio::test]
async fn hello_must_come_first_and_tokens_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &["--auth-token", "s3cret"]);

    let mut raw = Raw::connect(&node.url()).await;
    raw.send_text(r#"{"channel":"acheron","type":"acheron.t_fs_exports","tag":5}"#).await;
    let reply = raw.next().await.unwrap();
    assert_eq!(reply["error"]["message"], "acheron.t_fs_hello must be negotiated first");
    assert_eq!(reply["tag"], 5);
    assert!(raw.next().await.is_none(), "closed after the error");

    for (token, message) in [(None, "AuthMissing"), (Some("wrong"), "AuthFailed")] {
        let mut raw = Raw::connect(&node.url()).await;
        let reply = raw.req("hello", 1, None, None, spiderweb_proto::fs::hello_payload(token, false)).await;
        assert_eq!((reply["error"]["errno"].as_i64(), reply["error"]["message"].as_str()), (Some(22), Some(message)));
        assert!(raw.next().await.is_none(), "{message}: closed");
    }

    let mut raw = Raw::connect(&node.url()).await;
    let reply = raw.req("hello", 1, None, None, json!({"protocol": "unified-v2-fs", "proto": 1})).await;
    assert_eq!(reply["error"]["message"], "ProtocolMismatch");

    // A later hello is checked again; failing it closes the connection.
    let mut raw = Raw::hello(&node.url(), Some("s3cret")).await;
    let reply = raw.req("hello", 2, None, None, spiderweb_proto::fs::hello_payload(Some("bad"), false)).await;
    assert_eq!(reply["error"]["message"], "AuthFailed");
    assert!(raw.next().await.is_none());

    let mut raw = Raw::hello(&node.url(), Some("s3cret")).await;
    let hello = raw.ok("hello", None, None, spiderweb_proto::fs::hello_payload(Some("s3cret"), true)).await;
    assert_eq!(hello["protocol"], "unified-v2-fs");
    assert_eq!(hello["caps"]["max_read"], 1048576);
    assert_eq!(hello["node"]["name"], "spiderweb-fs-node");
}

#[tokio::test]
async fn token_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(common::NODE_BIN);
    cmd.args(["--port", "0", "--export", &export("w", dir.path(), "")])
        .env("SPIDERWEB_FS_NODE_AUTH_TOKEN", "envtok")
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let url = format!("ws://{}/v2/fs", line.trim().strip_prefix("listening on ").unwrap());
    let mut raw = Raw::connect(&url).await;
    let reply = raw.req("hello", 1, None, None, spiderweb_proto::fs::hello_payload(Some("nope"), false)).await;
    assert_eq!(reply["error"]["message"], "AuthFailed");
    Raw::hello(&url, Some("envtok")).await;
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn every_operation_on_a_read_write_export() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/hello.txt"), "hello world").unwrap();
    let node = Node::start(&[export("w", dir.path(), ":rw")], &[]);
    let mut raw = Raw::hello(&node.url(), None).await;

    let exports = raw.ok("exports", None, None, json!({})).await;
    let entry = &exports["exports"][0];
    assert_eq!((entry["name"].as_str(), entry["ro"].as_bool()), (Some("w"), Some(false)));
    assert_eq!(entry["source_id"], "linux:w");
    let root = entry["root"].as_u64().unwrap();
    assert_eq!(root >> 48, 1, "first export's ids carry 1 in the top 16 bits");

    let sub = raw.lookup(root, "sub").await;
    assert_eq!(sub["k"], 2);
    let sub_id = sub["id"].as_u64().unwrap();
    let file = raw.lookup(sub_id, "hello.txt").await;
    assert_eq!((file["k"].as_u64(), file["sz"].as_u64()), (Some(1), Some(11)));
    assert_eq!(raw.ok("getattr", file["id"].as_u64(), None, json!({})).await["attr"], file);
    assert_eq!(raw.errno("lookup", Some(sub_id), None, json!({"name": "missing"})).await.0, 2);

    // readdirp: `.`, `..`, then entries; paging by cookie.
    let page = raw.ok("readdirp", Some(sub_id), None, json!({"max": 2})).await;
    let names: Vec<_> = page["ents"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, [".", ".."]);
    assert_eq!((page["next"].as_u64(), page["eof"].as_bool()), (Some(2), Some(false)));
    assert_eq!(page["ents"][1]["attr"]["id"].as_u64(), Some(root));
    let page = raw.ok("readdirp", Some(sub_id), None, json!({"cookie": 2})).await;
    assert_eq!(page["ents"][0]["name"], "hello.txt");
    assert_eq!(page["eof"], true);
    assert!(page["dir_gen"].as_u64().unwrap() > 0);
    assert_eq!(
        raw.errno("readdirp", file["id"].as_u64(), None, json!({})).await,
        (20, "node is not a directory".into())
    );

    // create → write (events before the reply) → read → close.
    let created = raw.ok("create", Some(sub_id), None, json!({"name": "new.bin"})).await;
    let (new_id, h) = (created["attr"]["id"].as_u64().unwrap(), created["h"].as_u64().unwrap());
    let (events, reply) =
        raw.req_with_events("write", 11, None, Some(h), json!({"off": 0, "data_b64": b64(b"0123456789")})).await;
    assert_eq!(reply["payload"]["n"], 10);
    assert!(
        events.iter().any(|e| e["type"] == "acheron.e_fs_inval" && e["payload"]["node"] == new_id),
        "originator gets its events before the reply: {events:?}"
    );
    let read = raw.ok("read", None, Some(h), json!({"off": 2, "len": 4})).await;
    assert_eq!((unb64(&read["data_b64"]), read["eof"].as_bool()), (b"2345".to_vec(), Some(false)));
    let read = raw.ok("read", None, Some(h), json!({"off": 8, "len": 100})).await;
    assert_eq!((unb64(&read["data_b64"]), read["eof"].as_bool()), (b"89".to_vec(), Some(true)));
    raw.ok("close", None, Some(h), json!({})).await;
    assert_eq!(raw.errno("read", None, Some(h), json!({})).await, (9, "unknown handle".into()));
    assert_eq!(
        raw.errno("create", Some(sub_id), None, json!({"name": "new.bin", "flags": 2 | 0o200})).await.0,
        17,
        "exclusive create of an existing name"
    );

    // open modes.
    let opened = raw.ok("open", Some(new_id), None, json!({"flags": 0})).await;
    assert_eq!(opened["caps"], json!({"rd": true, "wr": false}));
    let ro_h = opened["h"].as_u64();
    assert_eq!(raw.errno("write", None, ro_h, json!({"data_b64": b64(b"x")})).await, (9, "handle not writable".into()));
    assert_eq!(raw.errno("open", Some(sub_id), None, json!({})).await.0, 21);

    // locks: a conflicting non-waiting lock is EAGAIN.
    let other = raw.ok("open", Some(new_id), None, json!({"flags": 0})).await["h"].as_u64();
    raw.ok("lock", None, ro_h, json!({"kind": "exclusive", "wait": false})).await;
    assert_eq!(
        raw.errno("lock", None, other, json!({"kind": "shared", "wait": false})).await,
        (11, "would block".into())
    );
    raw.ok("lock", None, ro_h, json!({"kind": "unlock"})).await;
    raw.ok("lock", None, other, json!({"kind": "shared", "wait": true})).await;
    assert_eq!(raw.errno("lock", None, other, json!({"kind": "sideways"})).await, (22, "invalid lock kind".into()));

    // truncate, rename (same export), statfs.
    raw.ok("truncate", Some(new_id), None, json!({"sz": 3})).await;
    assert_eq!(std::fs::read(dir.path().join("sub/new.bin")).unwrap(), b"012");
    raw.ok(
        "rename",
        None,
        None,
        json!({"old_parent": sub_id, "old_name": "new.bin", "new_parent": root, "new_name": "moved.bin"}),
    )
    .await;
    assert!(dir.path().join("moved.bin").exists());
    assert_eq!(raw.ok("getattr", Some(new_id), None, json!({})).await["attr"]["sz"], 3, "id follows the rename");
    let statfs = raw.ok("statfs", Some(root), None, json!({})).await;
    let vfs = nix::sys::statvfs::statvfs(dir.path()).unwrap();
    assert_eq!(statfs["blocks"].as_u64(), Some(vfs.blocks()), "real statvfs numbers, not zeros");
    assert!(statfs["bsize"].as_u64().unwrap() > 0 && statfs["namemax"].as_u64() == Some(255));

    // mkdir/rmdir/unlink/symlink.
    raw.ok("mkdir", Some(root), None, json!({"name": "d"})).await;
    let d = raw.lookup(root, "d").await["id"].as_u64();
    raw.ok("create", d, None, json!({"name": "f"})).await;
    assert_eq!(raw.errno("rmdir", Some(root), None, json!({"name": "d"})).await.0, 39);
    assert_eq!(raw.errno("unlink", Some(root), None, json!({"name": "d"})).await.0, 21);
    raw.ok("unlink", d, None, json!({"name": "f"})).await;
    raw.ok("rmdir", Some(root), None, json!({"name": "d"})).await;
    assert!(!dir.path().join("d").exists());
    raw.ok("symlink", Some(root), None, json!({"name": "ln", "target": "moved.bin"})).await;
    assert_eq!(std::fs::read_link(dir.path().join("ln")).unwrap().to_str(), Some("moved.bin"));
    assert_eq!(raw.lookup(root, "ln").await["k"], 3);

    // xattrs.
    let moved = Some(new_id);
    raw.ok("setxattr", moved, None, json!({"name": "user.k", "value_b64": b64(b"v1")})).await;
    assert_eq!(unb64(&raw.ok("getxattr", moved, None, json!({"name": "user.k"})).await["value_b64"]), b"v1");
    assert!(raw.ok("listxattr", moved, None, json!({})).await["names"].as_array().unwrap().contains(&json!("user.k")));
    raw.ok("removexattr", moved, None, json!({"name": "user.k"})).await;
    assert_eq!(raw.errno("getxattr", moved, None, json!({"name": "user.k"})).await.0, 61);
}

#[tokio::test]
async fn read_only_export_refuses_every_mutation_with_erofs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("d")).unwrap();
    std::fs::write(dir.path().join("f"), "data").unwrap();
    let node = Node::start(&[export("r", dir.path(), ":ro")], &[]);
    let mut raw = Raw::hello(&node.url(), None).await;
    let root = raw.root("r").await;
    let f = raw.lookup(root, "f").await["id"].as_u64();
    let h = raw.ok("open", f, None, json!({"flags": 0})).await["h"].as_u64();
    assert_eq!(unb64(&raw.ok("read", None, h, json!({})).await["data_b64"]), b"data");

    let mutations = [
        ("open", f, None, json!({"flags": 1})),
        ("open", f, None, json!({"flags": 2})),
        ("write", None, h, json!({"data_b64": b64(b"x")})),
        ("create", Some(root), None, json!({"name": "n"})),
        ("mkdir", Some(root), None, json!({"name": "n"})),
        ("rmdir", Some(root), None, json!({"name": "d"})),
        ("unlink", Some(root), None, json!({"name": "f"})),
        ("rename", None, None, json!({"old_parent": root, "old_name": "f", "new_parent": root, "new_name": "g"})),
        ("truncate", f, None, json!({"sz": 0})),
        ("symlink", Some(root), None, json!({"name": "l", "target": "f"})),
        ("setxattr", f, None, json!({"name": "user.a", "value_b64": b64(b"1")})),
        ("removexattr", f, None, json!({"name": "user.a"})),
    ];
    for (op, node_arg, h_arg, payload) in mutations {
        assert_eq!(raw.errno(op, node_arg, h_arg, payload).await, (30, "export is read-only".into()), "{op}");
    }
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
    assert!(dir.path().join("d").exists() && !dir.path().join("n").exists());
}

#[tokio::test]
async fn escapes_fail() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("walk")).unwrap();
    std::fs::write(dir.path().join("walk/inner"), "inner").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("dirlink")).unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);
    let mut raw = Raw::hello(&node.url(), None).await;
    let root = raw.root("w").await;

    for name in ["..", "../etc", ".", "a/b", "a\\b", ""] {
        assert_eq!(
            raw.errno("lookup", Some(root), None, json!({"name": name})).await,
            (22, "invalid child name".into()),
            "{name:?}"
        );
    }
    // A symlink to a file outside: the link itself is visible, its target is not readable.
    let link = raw.lookup(root, "link").await;
    assert_eq!(link["k"], 3);
    assert_eq!(raw.errno("open", link["id"].as_u64(), None, json!({})).await.0, 13);
    // A symlink to a directory outside cannot be walked into.
    let dirlink = raw.lookup(root, "dirlink").await["id"].as_u64();
    assert_ne!(raw.req("lookup", 3, dirlink, None, json!({"name": "secret"})).await["ok"], true);
    assert_ne!(raw.req("readdirp", 3, dirlink, None, json!({})).await["ok"], true);

    // A directory swapped for a symlink pointing outside while the client walks it.
    let walk = raw.lookup(root, "walk").await["id"].as_u64();
    std::fs::rename(dir.path().join("walk"), dir.path().join("walk.old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("walk")).unwrap();
    std::fs::write(outside.path().join("inner"), "outside!").unwrap();
    let reply = raw.req("lookup", 4, walk, None, json!({"name": "inner"})).await;
    assert_ne!(reply["ok"], true, "walked through a swapped-in symlink: {reply}");
    let reply = raw.req("create", 5, walk, None, json!({"name": "planted"})).await;
    assert_ne!(reply["ok"], true, "{reply}");
    assert!(!outside.path().join("planted").exists());

    // Forged ids: unknown export index, never handed out.
    assert_eq!(raw.errno("getattr", Some((9 << 48) | 5), None, json!({})).await.0, 2);
    assert_eq!(raw.errno("getattr", Some(5), None, json!({})).await.0, 2);
    assert_eq!(raw.errno("getattr", Some(root + 12345), None, json!({})).await.0, 2);
}

#[tokio::test]
async fn cross_export_rename_is_exdev() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(a.path().join("f"), "x").unwrap();
    let node = Node::start(&[export("a", a.path(), ""), export("b", b.path(), "")], &[]);
    let mut raw = Raw::hello(&node.url(), None).await;
    let (ra, rb) = (raw.root("a").await, raw.root("b").await);
    assert_eq!(rb >> 48, 2, "second export's ids carry 2 in the top 16 bits");
    let payload = json!({"old_parent": ra, "old_name": "f", "new_parent": rb, "new_name": "f"});
    assert_eq!(raw.errno("rename", None, None, payload).await, (18, "cross-export rename is not supported".into()));
    let payload = json!({"old_parent": ra, "old_name": "f", "new_parent": ra, "new_name": "../f"});
    assert_eq!(raw.errno("rename", None, None, payload).await, (22, "invalid rename child name".into()));
}

#[tokio::test]
async fn events_reach_other_connections_and_host_changes_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);
    let mut writer = Raw::hello(&node.url(), None).await;
    let mut watcher = Raw::hello(&node.url(), None).await;
    let root = writer.root("w").await;
    watcher.root("w").await;

    writer.ok("mkdir", Some(root), None, json!({"name": "made"})).await;
    let event = watcher.wait_event(|e| e["type"] == "acheron.e_fs_inval_dir").await;
    assert_eq!(event["payload"]["dir"].as_u64(), Some(root));

    // Only the host touches `made/` from here on: any event naming it comes from inotify.
    let made = watcher.lookup(root, "made").await["id"].as_u64();
    std::fs::write(dir.path().join("made/from-host.txt"), "host").unwrap();
    watcher.wait_event(|e| e["type"] == "acheron.e_fs_inval_dir" && e["payload"]["dir"].as_u64() == made).await;
    let attr = watcher.lookup(made.unwrap(), "from-host.txt").await;
    assert_eq!(attr["sz"], 4);
}

#[tokio::test]
async fn bad_frames_get_errno_replies_or_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);

    // Frames that keep the connection: unsupported types, bad argument types, missing args.
    let mut raw = Raw::hello(&node.url(), None).await;
    let root = raw.root("w").await;
    raw.send_text(r#"{"channel":"acheron","type":"acheron.t_version","tag":3}"#).await;
    assert_eq!(raw.next().await.unwrap()["error"]["message"], "UnsupportedType");
    raw.send_text(r#"{"channel":"control","type":"control.ping","id":"x"}"#).await;
    assert_eq!(raw.next().await.unwrap()["error"]["message"], "UnsupportedType");
    assert_eq!(raw.errno("lookup", Some(root), None, json!({})).await, (22, "LOOKUP requires a.name".into()));
    assert_eq!(raw.errno("lookup", None, None, json!({"name": "f"})).await, (22, "LOOKUP requires node".into()));
    assert_eq!(raw.errno("readdirp", Some(root), None, json!({"max": -1})).await, (22, "max must be u32".into()));
    assert_eq!(raw.errno("lookup", Some(root), None, json!("str")).await, (22, "InvalidPayload".into()));
    let f = raw.lookup(root, "f").await["id"].as_u64();
    let h = raw.ok("open", f, None, json!({"flags": 2})).await["h"].as_u64();
    assert_eq!(raw.errno("write", None, h, json!({"data_b64": "!!"})).await, (22, "invalid base64 payload".into()));
    let big = b64(&vec![7u8; (1 << 20) + 1]);
    assert_eq!(raw.errno("write", None, h, json!({"data_b64": big})).await, (22, "WRITE exceeds max_write".into()));
    raw.send_text(r#"{"channel":"acheron","type":"acheron.t_fs_getattr","node":1}"#).await;
    assert_eq!(raw.next().await.unwrap()["tag"], 0, "missing tag is tag 0");
    raw.ok("getattr", f, None, json!({})).await;

    // Frames that close: garbage, bad field types, binary frames. The node keeps serving.
    for bad in ["not json", r#"{"channel":"acheron","type":"acheron.t_fs_getattr","tag":"x"}"#, r#"[1,2]"#] {
        let mut raw = Raw::hello(&node.url(), None).await;
        raw.send_text(bad).await;
        let reply = raw.next().await.unwrap();
        assert_eq!(
            (reply["type"].as_str(), reply["error"]["errno"].as_i64()),
            (Some("acheron.err_fs"), Some(22)),
            "{bad}"
        );
        assert!(raw.next().await.is_none(), "{bad}: closed");
    }
    let mut raw = Raw::hello(&node.url(), None).await;
    raw.send_binary(vec![1, 2, 3]).await;
    assert_eq!(raw.next().await.unwrap()["error"]["errno"], 22);
    assert!(raw.next().await.is_none());
    let mut raw = Raw::hello(&node.url(), None).await;
    raw.root("w").await;

    // Wrong path: err_fs + close. Plain HTTP: a 4xx, not a dropped socket.
    let mut wrong = Raw::connect(&format!("ws://{}/elsewhere", node.addr)).await;
    assert_eq!(wrong.next().await.unwrap()["error"]["message"], "invalid FS endpoint path");
    let response = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/v2/fs", node.addr))
        .output();
    if let Ok(out) = response {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "426");
    }
}

#[tokio::test]
async fn open_handles_per_connection_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);
    let mut raw = Raw::hello(&node.url(), None).await;
    let root = raw.root("w").await;
    let f = raw.lookup(root, "f").await["id"].as_u64();
    let mut handles = Vec::new();
    let limit = loop {
        let reply = raw.req("open", 9, f, None, json!({})).await;
        if reply["ok"] != true {
            assert_eq!(reply["error"]["errno"], 28, "{reply}");
            break handles.len();
        }
        handles.push(reply["payload"]["h"].as_u64());
        assert!(handles.len() <= 4096, "no limit reached");
    };
    assert_eq!(limit, 1024);
    raw.ok("close", None, handles[0], json!({})).await;
    raw.ok("open", f, None, json!({})).await;
    // Another connection has its own quota.
    let mut other = Raw::hello(&node.url(), None).await;
    other.ok("open", f, None, json!({})).await;
}

#[test]
fn node_confines_itself_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(status.contains(&format!("{set}:\t0000000000000000")), "{set} not empty: {status}");
    }
    // Every thread, not just the main one (threads created before confinement would escape).
    for task in std::fs::read_dir(format!("/proc/{}/task", node.child.id())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(status.contains("Seccomp:\t2"), "thread without seccomp: {status}");
    }
}

#[test]
fn bad_exports_refuse_to_start() {
    for (flag, message) in [
        ("w=/nonexistent/really", "cannot open directory"),
        ("=/tmp", "export name is empty"),
        ("w=", "export path is empty"),
    ] {
        let out =
            std::process::Command::new(common::NODE_BIN).args(["--port", "0", "--export", flag]).output().unwrap();
        assert!(!out.status.success(), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new(common::NODE_BIN)
        .args(["--port", "0", "--export", "a=/tmp", "--export", "a=/var"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate export name"));
}

#[tokio::test]
async fn binary_data_frames_are_negotiated() {
    use spiderweb_proto::fs::binary;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "0123456789").unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);

    // Not asked for: the original's shape, no `binary_data` in caps, JSON reads.
    let mut plain = Raw::hello(&node.url(), None).await;
    let caps = plain.ok("hello", None, None, spiderweb_proto::fs::hello_payload(None, false)).await["caps"].clone();
    assert!(caps.get("binary_data").is_none(), "{caps}");

    let mut raw = Raw::connect(&node.url()).await;
    let mut hello = spiderweb_proto::fs::hello_payload(None, false);
    hello["binary_data"] = true.into();
    let reply = raw.req("hello", 1, None, None, hello).await;
    assert_eq!(reply["payload"]["caps"]["binary_data"], true);
    let root = raw.root("w").await;
    let f = raw.lookup(root, "f").await["id"].as_u64();
    let h = raw.ok("open", f, None, json!({"flags": 2})).await["h"].as_u64().unwrap();

    raw.send_text(&spiderweb_proto::fs::render_request("read", 42, None, Some(h), &json!({"off": 2, "len": 4}))).await;
    let frame = raw.next_any().await.unwrap().expect_err("a binary read reply");
    assert_eq!(binary::parse_read_reply(&frame), Some((42, false, &b"2345"[..])));

    raw.send_binary(binary::write_request(43, h, 8, b"XYZ")).await;
    let reply = loop {
        match raw.next_any().await.unwrap() {
            Ok(frame) if frame.get("tag").is_some() => break frame,
            _ => continue,
        }
    };
    assert_eq!((reply["tag"].as_u64(), reply["payload"]["n"].as_u64()), (Some(43), Some(3)));
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"01234567XYZ");

    // Errors stay JSON; a malformed binary frame closes the connection.
    let err = raw.errno("read", None, Some(999), json!({})).await;
    assert_eq!(err.0, 9);
    raw.send_binary(vec![2, 0]).await;
    // Host-change events of the write above may still arrive first.
    let error = raw.wait_frame(|f| f.get("error").is_some()).await;
    assert_eq!(error["error"]["message"], "InvalidEnvelope");
    while let Some(frame) = raw.next().await {
        assert!(frame.get("tag").is_none(), "only events may follow: {frame}");
    }
}

#[tokio::test]
async fn connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &["--max-connections", "1"]);
    let mut first = Raw::hello(&node.url(), None).await;
    let refused = tokio_tungstenite::connect_async(node.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("second connection admitted: {:?}", other.map(|_| ())),
    }
    first.root("w").await;
    drop(first);
    // The slot is released when the first connection ends.
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(node.url()).await {
            admitted = Some(ws);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(admitted.is_some(), "slot not released");
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &["--hello-timeout-ms", "300", "--max-connections", "1"]);
    let mut silent = Raw::connect(&node.url()).await;
    let frame = silent.next().await.expect("an error before the close");
    assert_eq!(frame["error"]["errno"], 110);
    assert!(silent.next().await.is_none());
    // Its slot is free again.
    let mut raw = Raw::hello(&node.url(), None).await;
    raw.root("w").await;
    // A negotiated connection may stay idle longer than the hello timeout.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    raw.root("w").await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_client_that_does_not_read_replies_cannot_fill_node_memory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![7u8; 1 << 20]).unwrap();
    let node = Node::start(&[export("w", dir.path(), "")], &[]);
    let mut raw = Raw::connect(&node.url()).await;
    let mut hello = spiderweb_proto::fs::hello_payload(None, false);
    hello["binary_data"] = true.into();
    raw.req("hello", 1, None, None, hello).await;
    let root = raw.root("w").await;
    let f = raw.lookup(root, "f").await["id"].as_u64();
    let h = raw.ok("open", f, None, json!({})).await["h"].as_u64();
    let before = rss_kib(node.child.id());
    // 128 reads of 1 MiB without reading a single reply.
    for tag in 0..128u32 {
        let request = spiderweb_proto::fs::render_request("read", 100 + tag, None, h, &json!({"len": 1 << 20}));
        raw.send_text(&request).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let grown = rss_kib(node.child.id()).saturating_sub(before);
    assert!(grown < 48 * 1024, "node grew by {grown} KiB for replies nobody reads");
    // Every reply still arrives, in order, once the client reads.
    for tag in 0..128u32 {
        let frame = raw.next_any().await.unwrap().expect_err("binary read reply");
        let (got_tag, _, data) = spiderweb_proto::fs::binary::parse_read_reply(&frame).unwrap();
        assert_eq!((got_tag, data.len()), (100 + tag, 1 << 20));
    }
}
