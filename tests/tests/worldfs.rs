//! The Acheron world filesystem on `/` (acheron-worldfs.md): attach/walk/open/read/write/stat/
//! clunk/flush, fid rules, directory reads, the seeded namespace (`/meta`, `/agents/self/chat`,
//! `/agents/self/jobs`, `/projects/<bound>`, `/nodes`), permissions and error codes.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use spiderweb_tests::{B64, Client, Gateway, ROOT_FID, assert_keys, int_at, provision_user_world};

const PROTOCOL_JSON: &str = r#"{"channel":"acheron","version":"acheron-1","layout":"world-v1","ops":["t_version","t_attach","t_walk","t_open","t_read","t_write","t_stat","t_clunk","t_flush"]}"#;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Every directory marked (d) in the spec's namespace tree carries these descriptor files.
const DESCRIPTORS: [&str; 3] = ["README.md", "SCHEMA.json", "CAPS.json"];

/// A listing of a (d) directory: the descriptor files must be there; returns the other entries.
fn without_descriptors(listing: &BTreeSet<String>, what: &str) -> BTreeSet<String> {
    assert_contains_all(
        listing,
        &DESCRIPTORS,
        &format!("{what} (a (d) directory has README.md, SCHEMA.json, CAPS.json)"),
    );
    listing.iter().filter(|e| !DESCRIPTORS.contains(&e.as_str())).cloned().collect()
}

fn assert_contains_all(have: &BTreeSet<String>, want: &[&str], what: &str) {
    let missing: Vec<&&str> = want.iter().filter(|w| !have.contains(**w)).collect();
    assert!(missing.is_empty(), "{what}: missing entries {missing:?}; have {have:?}");
}

async fn admin_fs(gw: &Gateway) -> Client {
    let mut c = gw.admin().await;
    let root = c.fs_attach().await;
    assert_eq!(root, json!({"qid": {"path": 1, "type": "dir"}}), "root qid");
    c
}

#[tokio::test]
async fn root_listing_and_meta_protocol_json() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let root = c.list_dir("/").await;
    assert_eq!(root, set(&["global", "debug", "agents", "nodes", "meta", "projects"]), "admin root listing");

    assert_eq!(
        c.walk_read("/meta/protocol.json").await,
        PROTOCOL_JSON,
        "/meta/protocol.json must be exactly the LIVE bytes"
    );
    let st = c.walk_stat("/meta/protocol.json").await;
    assert_eq!(int_at(&st, "size"), 160, "{st}");
    assert_eq!(st["name"], json!("protocol.json"), "{st}");
    assert_eq!(st["kind"], json!("file"), "{st}");
    assert_eq!(st["mode"], json!(33060), "read-only file mode 0o100444: {st}");
    assert_eq!(st["writable"], json!(false), "{st}");
    assert!(st["id"].is_u64(), "{st}");

    let meta = c.list_dir("/meta").await;
    assert_contains_all(
        &meta,
        &[
            "protocol.json",
            "view.json",
            "workspace_status.json",
            "workspace_availability.json",
            "workspace_health.json",
            "workspace_alerts.json",
        ],
        "/meta",
    );
}

#[tokio::test]
async fn meta_json_files() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let view = c.walk_read_json("/meta/view.json").await;
    assert_keys(
        &view,
        &["agent_id", "project_id", "show_debug", "nodes", "visible_agents", "project_links"],
        "/meta/view.json",
    );
    assert_eq!(view["agent_id"], json!("mother"), "{view}");
    assert_eq!(view["project_id"], json!("system"), "{view}");

    let ws = c.walk_read_json("/meta/workspace_status.json").await;
    assert_eq!(ws["agent_id"], json!("mother"), "{ws}");
    assert_eq!(ws["project_id"], json!("system"), "{ws}");
    assert_eq!(ws["mounts"], json!([]), "{ws}");
    assert_eq!(ws["drift"], json!({"count": 0, "items": []}), "{ws}");

    let av = c.walk_read_json("/meta/workspace_availability.json").await;
    assert_eq!(av, json!({"mounts_total": 0, "online": 0, "degraded": 0, "missing": 0}));
    let health = c.walk_read_json("/meta/workspace_health.json").await;
    assert_keys(
        &health,
        &["state", "availability", "drift_count", "reconcile_state", "queue_depth"],
        "/meta/workspace_health.json",
    );
    let alerts = c.walk_read_json("/meta/workspace_alerts.json").await;
    assert_eq!(alerts, json!([]), "no mounts → no alerts");
}

#[tokio::test]
async fn agents_self_chat_and_jobs() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let agents = c.list_dir("/agents").await;
    assert_contains_all(&agents, &["self", "mother"], "/agents");
    assert_eq!(c.walk_read("/agents/mother/LINK.txt").await, "/agents/self\n");

    let chat = c.list_dir("/agents/self/chat").await;
    assert_contains_all(
        &chat,
        &["README.md", "SCHEMA.json", "CAPS.json", "meta.json", "control", "examples"],
        "/agents/self/chat",
    );
    assert_contains_all(&c.list_dir("/agents/self/chat/control").await, &["input", "reply"], "chat/control");
    assert_eq!(
        c.walk_read_json("/agents/self/chat/SCHEMA.json").await,
        json!({"name":"chat","input":"control/input","reply":"control/reply","jobs":"/agents/self/jobs","result":"result.txt"})
    );
    assert_eq!(
        c.walk_read_json("/agents/self/chat/meta.json").await,
        json!({"name":"chat","version":"1","agent_id":"mother","project_id":"system","cost_hint":"provider-dependent","latency_hint":"seconds"})
    );
    let st = c.walk_stat("/agents/self/chat/control/input").await;
    assert_eq!(st["mode"], json!(33188), "rw file mode 0o100644: {st}");
    assert_eq!(st["writable"], json!(true), "{st}");
    assert_eq!(st["kind"], json!("file"), "{st}");

    // jobs: no job directories on a fresh install (only the (d) descriptor files).
    let st = c.walk_stat("/agents/self/jobs").await;
    assert_eq!(st["kind"], json!("dir"), "{st}");
    assert_eq!(st["mode"], json!(16877), "dir mode 0o040755: {st}");
    assert_eq!(st["size"], json!(0), "{st}");
    assert_eq!(st["name"], json!("jobs"), "{st}");
    let jobs = c.list_dir("/agents/self/jobs").await;
    assert_eq!(without_descriptors(&jobs, "/agents/self/jobs"), set(&[]), "no jobs yet");
    // Reading a directory past its end is an empty EOF read.
    let fid = c.walk_ok("/agents/self/jobs").await;
    let r = c.acheron_ok("t_read", json!({"fid": fid, "offset": 4096, "count": 65536})).await;
    assert_eq!(r, json!({"data_b64": "", "n": 0, "eof": true}), "dir read beyond the end");
}

#[tokio::test]
async fn chat_reply_write() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let fid = c.walk_ok("/agents/self/chat/control/reply").await;
    let o = c.acheron_ok("t_open", json!({"fid": fid, "mode": "w"})).await;
    assert_eq!(o["iounit"], json!(65536), "{o}");
    assert_eq!(o["qid"]["type"], json!("file"), "{o}");
    // `data` (raw string) is accepted when `data_b64` is absent.
    let w = c.acheron_ok("t_write", json!({"fid": fid, "offset": 0, "data": "  all done  \n"})).await;
    assert_eq!(w["chat_reply"], json!({"delivered": true, "content": "all done"}), "{w}");
    assert!(w["n"].is_u64(), "{w}");
}

#[tokio::test]
async fn nodes_is_empty_and_projects_lists_the_bound_project() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let nodes = c.list_dir("/nodes").await;
    assert_eq!(without_descriptors(&nodes, "/nodes"), set(&[]), "no nodes configured");
    assert_eq!(c.walk_stat("/nodes").await["kind"], json!("dir"));
    let projects = c.list_dir("/projects").await;
    assert_eq!(without_descriptors(&projects, "/projects"), set(&["system"]), "admin session is bound to system");
    let sys = c.list_dir("/projects/system").await;
    assert_contains_all(&sys, &["fs", "nodes", "agents", "meta"], "/projects/system");
    assert_eq!(c.walk_read("/projects/system/agents/self").await, "/agents/self\n");
    let meta = c.list_dir("/projects/system/meta").await;
    assert_contains_all(
        &meta,
        &[
            "topology.json",
            "nodes.json",
            "agents.json",
            "sources.json",
            "contracts.json",
            "paths.json",
            "summary.json",
            "alerts.json",
            "workspace_status.json",
            "mounts.json",
            "desired_mounts.json",
            "actual_mounts.json",
            "drift.json",
            "reconcile.json",
            "availability.json",
            "health.json",
        ],
        "/projects/system/meta",
    );
    for f in &meta {
        if f.ends_with(".json") {
            let path = format!("/projects/system/meta/{f}");
            let _ = c.walk_read_json(&path).await; // every meta file is valid JSON
        }
    }
}

#[tokio::test]
async fn user_session_sees_its_project_and_no_debug() {
    let gw = Gateway::with_helper_agent(json!({}));
    let alpha = provision_user_world(&gw).await;
    let mut u = gw.user().await;
    u.fs_attach().await;
    let root = u.list_dir("/").await;
    assert!(!root.contains("debug"), "a non-admin session without debug policy has no /debug: {root:?}");
    assert_contains_all(&root, &["agents", "nodes", "meta", "projects", "global"], "user root");
    let projects = u.list_dir("/projects").await;
    assert_eq!(without_descriptors(&projects, "/projects"), set(&[alpha.as_str()]), "only the bound project");
    let agents = u.list_dir(&format!("/projects/{alpha}/agents")).await;
    assert!(agents.contains("self"), "{agents:?}");
    let ws = u.walk_read_json(&format!("/projects/{alpha}/meta/workspace_status.json")).await;
    assert_eq!(ws["project_id"], json!(alpha), "{ws}");
    let view = u.walk_read_json("/meta/view.json").await;
    assert_eq!(view["agent_id"], json!("helper"), "{view}");
    assert_eq!(view["project_id"], json!(alpha), "{view}");
    assert_eq!(u.walk_read_json("/agents/self/chat/meta.json").await["agent_id"], json!("helper"));
    let w = u.walk("/debug").await.expect_err("/debug must not exist for this user session");
    assert_eq!(w["code"], json!("enoent"), "{w}");
}

#[tokio::test]
async fn walk_semantics() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    // `..` at the root stays at the root; `.` is skipped; walked = segments sent.
    let r = c.acheron_ok("t_walk", json!({"fid": ROOT_FID, "newfid": 10, "path": ["..", "..", ".."]})).await;
    assert_eq!(r, json!({"qid": {"path": 1, "type": "dir"}, "walked": 3}));
    let r = c
        .acheron_ok(
            "t_walk",
            json!({"fid": ROOT_FID, "newfid": 11, "path": [".", "meta", "..", "..", "meta", "protocol.json"]}),
        )
        .await;
    assert_eq!(r["walked"], json!(6), "{r}");
    assert_eq!(r["qid"]["type"], json!("file"), "{r}");
    let st = c.acheron_ok("t_stat", json!({"fid": 11})).await;
    assert_eq!(st["name"], json!("protocol.json"));
    // Empty path clones the fid.
    let r = c.acheron_ok("t_walk", json!({"fid": ROOT_FID, "newfid": 12})).await;
    assert_eq!(r, json!({"qid": {"path": 1, "type": "dir"}, "walked": 0}));
    // Walk relative to a non-root fid.
    c.acheron_ok("t_walk", json!({"fid": ROOT_FID, "newfid": 13, "path": ["meta"]})).await;
    let r = c.acheron_ok("t_walk", json!({"fid": 13, "newfid": 14, "path": ["view.json"]})).await;
    assert_eq!(r["qid"]["type"], json!("file"));

    // A missing segment: enoent, newfid untouched.
    let e = c
        .acheron_err_code("t_walk", json!({"fid": ROOT_FID, "newfid": 13, "path": ["meta", "nope.json"]}), "enoent")
        .await;
    assert_eq!(e["message"], json!("walk segment not found"), "{e}");
    assert_eq!(
        c.acheron_ok("t_stat", json!({"fid": 13})).await["name"],
        json!("meta"),
        "newfid must be untouched after a failed walk"
    );
    let e = c.acheron_err_code("t_walk", json!({"fid": ROOT_FID, "newfid": 20, "path": ["missing"]}), "enoent").await;
    assert_eq!(e["message"], json!("walk segment not found"));
    c.acheron_err_code("t_stat", json!({"fid": 20}), "enoent").await;
    // Walking through a file fails.
    c.acheron_err_code(
        "t_walk",
        json!({"fid": ROOT_FID, "newfid": 21, "path": ["meta", "protocol.json", "x"]}),
        "enoent",
    )
    .await;

    // newfid may equal an existing fid (overwritten), even the source fid.
    c.acheron_ok("t_walk", json!({"fid": 13, "newfid": 13, "path": ["protocol.json"]})).await;
    assert_eq!(c.acheron_ok("t_stat", json!({"fid": 13})).await["name"], json!("protocol.json"));

    // Unknown fid.
    let e = c.acheron_err_code("t_walk", json!({"fid": 999, "newfid": 22, "path": []}), "enoent").await;
    assert_eq!(e["message"], json!("unknown fid"), "{e}");
    // Missing fid/newfid → invalid.
    c.acheron_err_code("t_walk", json!({"newfid": 23, "path": []}), "invalid").await;
    c.acheron_err_code("t_walk", json!({"fid": ROOT_FID, "path": []}), "invalid").await;
    let e = c.acheron_err_code("t_attach", json!({}), "invalid").await;
    assert_eq!(e["message"], json!("fid is required"), "{e}");
}

#[tokio::test]
async fn open_read_write_stat_clunk_flush() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let meta = c.walk_ok("/meta").await;
    let o = c.acheron_ok("t_open", json!({"fid": meta})).await;
    assert_eq!(o["iounit"], json!(65536));
    assert_eq!(o["qid"]["type"], json!("dir"));
    let e = c.acheron_err_code("t_open", json!({"fid": meta, "mode": "w"}), "eisdir").await;
    assert_eq!(e["message"], json!("directories are read-only opens"), "{e}");
    c.acheron_err_code("t_open", json!({"fid": meta, "mode": "rw"}), "eisdir").await;
    c.acheron_err_code("t_write", json!({"fid": meta, "data": "x"}), "eisdir").await;
    let st = c.acheron_ok("t_stat", json!({"fid": meta})).await;
    assert_eq!(st["mode"], json!(16877));
    assert_eq!(st["kind"], json!("dir"));

    let proto = c.walk_ok("/meta/protocol.json").await;
    let e = c.acheron_err_code("t_open", json!({"fid": proto, "mode": "w"}), "eperm").await;
    assert_eq!(e["message"], json!("file is read-only"), "{e}");
    c.acheron_err_code("t_write", json!({"fid": proto, "offset": 0, "data": "hacked"}), "eperm").await;
    assert_eq!(c.walk_read("/meta/protocol.json").await, PROTOCOL_JSON, "a refused write must not change the file");

    // Reads work without t_open; slicing by offset/count; eof semantics.
    let r = c.acheron_ok("t_read", json!({"fid": proto, "offset": 2, "count": 7})).await;
    assert_eq!(B64.decode(r["data_b64"].as_str().unwrap()).unwrap(), b"channel");
    assert_eq!(r["n"], json!(7));
    assert_eq!(r["eof"], json!(false));
    let r = c.acheron_ok("t_read", json!({"fid": proto, "offset": 150, "count": 100})).await;
    assert_eq!(r["n"], json!(10));
    assert_eq!(r["eof"], json!(true), "{r}");
    let r = c.acheron_ok("t_read", json!({"fid": proto, "offset": 160, "count": 10})).await;
    assert_eq!(r, json!({"data_b64": "", "n": 0, "eof": true}));
    let r = c.acheron_ok("t_read", json!({"fid": proto, "offset": 100000})).await;
    assert_eq!(r, json!({"data_b64": "", "n": 0, "eof": true}), "reading beyond EOF");
    let r = c.acheron_ok("t_read", json!({"fid": proto})).await;
    assert_eq!(
        B64.decode(r["data_b64"].as_str().unwrap()).unwrap(),
        PROTOCOL_JSON.as_bytes(),
        "defaults offset 0, count 65536"
    );
    assert_eq!(r["eof"], json!(true));

    // Clunk: the fid is gone; clunking an unknown fid is not an error.
    assert_eq!(c.acheron_ok("t_clunk", json!({"fid": proto})).await, json!({}));
    let e = c.acheron_err_code("t_read", json!({"fid": proto}), "enoent").await;
    assert_eq!(e["message"], json!("unknown fid"));
    c.acheron_err_code("t_stat", json!({"fid": proto}), "enoent").await;
    c.acheron_err_code("t_open", json!({"fid": proto}), "enoent").await;
    c.acheron_err_code("t_write", json!({"fid": proto, "data": "x"}), "enoent").await;
    assert_eq!(c.acheron_ok("t_clunk", json!({"fid": 424242})).await, json!({}));
    c.acheron_err_code("t_clunk", json!({}), "invalid").await;
    assert_eq!(c.acheron_ok("t_flush", Value::Null).await, json!({}));
    c.acheron_err_code("t_stat", json!({}), "invalid").await;
}

#[tokio::test]
async fn replies_echo_tags_and_types() {
    let gw = Gateway::start();
    let mut c = gw.admin().await;
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_version","tag":4294967295u64,"version":"acheron-1"}))
        .await;
    let r = c.recv_json().await;
    assert_eq!(r["tag"], json!(4294967295u64), "max u32 tag echoed: {r}");
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_attach","tag":0,"fid":0})).await;
    let r = c.recv_json().await;
    assert_eq!(
        r,
        json!({"channel":"acheron","type":"acheron.r_attach","tag":0,"ok":true,"payload":{"qid":{"path":1,"type":"dir"}}})
    );
    // No tag in the request → none in the reply.
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_flush"})).await;
    let r = c.recv_json().await;
    assert_eq!(r, json!({"channel":"acheron","type":"acheron.r_flush","ok":true,"payload":{}}));
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_stat","tag":9,"fid":0})).await;
    let r = c.recv_json().await;
    assert_eq!(r["type"], json!("acheron.r_stat"));
    assert_eq!(r["tag"], json!(9));
    assert_eq!(r["payload"]["kind"], json!("dir"));
}

#[tokio::test]
async fn fids_are_per_connection() {
    let gw = Gateway::start();
    let mut a = admin_fs(&gw).await;
    let fid = a.walk_ok("/meta").await;
    let mut b = gw.admin().await;
    b.fs_version().await;
    let e = b.acheron_err_code("t_stat", json!({"fid": fid}), "enoent").await;
    assert_eq!(e["message"], json!("unknown fid"));
    b.acheron_err_code("t_stat", json!({"fid": ROOT_FID}), "enoent").await;
    // a is unaffected
    assert_eq!(a.acheron_ok("t_stat", json!({"fid": fid})).await["name"], json!("meta"));
    drop(a);
    // A fid number reused on a new connection starts fresh.
    let mut c2 = admin_fs(&gw).await;
    c2.acheron_err_code("t_stat", json!({"fid": fid}), "enoent").await;
}

#[tokio::test]
async fn node_fs_ops_are_unsupported_on_the_main_socket() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    for ty in ["t_fs_hello", "t_fs_exports", "t_fs_lookup"] {
        let e = c.acheron_err_code(ty, json!({}), "unsupported").await;
        assert_eq!(e["message"], json!("unsupported acheron operation"), "{ty}: {e}");
    }
    c.walk_read("/meta/protocol.json").await;
}

#[tokio::test]
async fn session_key_targets_another_binding_and_rebuilds_the_namespace() {
    let gw = Gateway::with_helper_agent(json!({}));
    let mut admin = gw.admin().await;
    let p = admin.control_ok("project_create", json!({"name": "Bound", "vision": "v"})).await;
    let pid = p["project_id"].as_str().unwrap().to_string();
    admin.control_ok("session_attach", json!({"session_key": "h", "agent_id": "helper", "project_id": pid})).await;
    admin.control_ok("session_resume", json!({"session_key": "main"})).await;
    admin.fs_attach().await;
    assert_eq!(admin.walk_read_json("/meta/view.json").await["agent_id"], json!("mother"));

    let e =
        admin.acheron_err_code("t_stat", json!({"fid": ROOT_FID, "session_key": "nope"}), "session_not_found").await;
    assert_eq!(e["message"], json!("unknown session_key"), "{e}");

    // Switching the binding drops all fids.
    admin.acheron_err_code("t_stat", json!({"fid": ROOT_FID, "session_key": "h"}), "enoent").await;
    admin.acheron_ok("t_attach", json!({"fid": 50, "session_key": "h"})).await;
    admin
        .acheron_ok("t_walk", json!({"fid": 50, "newfid": 51, "path": ["meta", "view.json"], "session_key": "h"}))
        .await;
    let r = admin.acheron_ok("t_read", json!({"fid": 51, "session_key": "h"})).await;
    let view: Value = serde_json::from_slice(&B64.decode(r["data_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(view["agent_id"], json!("helper"), "{view}");
    assert_eq!(view["project_id"], json!(pid), "{view}");
    admin
        .acheron_ok("t_walk", json!({"fid": 50, "newfid": 52, "path": ["projects", pid.as_str()], "session_key": "h"}))
        .await;
}

#[tokio::test]
async fn directory_reads_slice_like_files() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let full = c.walk_read("/").await;
    let fid = c.walk_ok("/").await;
    let mut assembled = Vec::new();
    loop {
        let r = c.acheron_ok("t_read", json!({"fid": fid, "offset": assembled.len(), "count": 5})).await;
        let d = B64.decode(r["data_b64"].as_str().unwrap()).unwrap();
        assert!(d.len() <= 5, "n must be ≤ count: {r}");
        assembled.extend_from_slice(&d);
        if r["eof"] == json!(true) {
            break;
        }
        assert!(!d.is_empty(), "no progress without eof: {r}");
    }
    assert_eq!(String::from_utf8(assembled).unwrap(), full, "5-byte slices reassemble the listing");
    for name in full.split('\n') {
        assert!(
            !name.is_empty() && name != "." && name != ".." && !name.contains('/'),
            "bad entry {name:?} in {full:?}"
        );
    }
}

/// Event waits (acheron-worldfs §9): unconfigured read, a time source, a signal, and a timeout.
#[tokio::test]
async fn events_wait_on_time_source_signal_and_timeout() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let r = c.walk_read_json("/agents/self/events/next.json").await;
    assert_eq!(r, json!({"configured": false, "waiting": false, "error": "wait_not_configured"}));

    let w = c
        .walk_write(
            "/agents/self/events/control/wait.json",
            br#"{"paths":["/agents/self/events/sources/time/after/200.json"],"timeout_ms":10000}"#,
        )
        .await;
    assert_eq!(w["ok"], json!(true), "{w}");
    let fid = c.walk_ok("/agents/self/events/next.json").await;
    let r = c.acheron_within("t_read", json!({"fid": fid, "offset": 0}), Duration::from_secs(15)).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    let ev: Value = serde_json::from_slice(&B64.decode(r["payload"]["data_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ev["configured"], json!(true), "{ev}");
    assert_eq!(ev["waiting"], json!(false), "{ev}");
    assert_eq!(ev["event_id"], json!(1), "{ev}");
    assert_eq!(ev["event_path"], json!("/agents/self/events/sources/time"), "{ev}");
    assert_eq!(ev["time"]["fired"], json!(true), "{ev}");
    assert!(int_at(&ev["time"], "now_ms") >= int_at(&ev["time"], "target_ms"), "{ev}");
    c.clunk(fid).await;

    // A user signal.
    c.walk_write(
        "/agents/self/events/control/wait.json",
        br#"{"paths":["/agents/self/events/sources/user.json"],"timeout_ms":10000}"#,
    )
    .await;
    let s = c
        .walk_write(
            "/agents/self/events/control/signal.json",
            br#"{"event_type":"user","parameter":"go","payload":{"x":1}}"#,
        )
        .await;
    assert_eq!(s["ok"], json!(true), "{s}");
    let fid = c.walk_ok("/agents/self/events/next.json").await;
    let r = c.acheron_within("t_read", json!({"fid": fid, "offset": 0}), Duration::from_secs(15)).await;
    let ev: Value = serde_json::from_slice(&B64.decode(r["payload"]["data_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ev["signal"]["event_type"], json!("user"), "{ev}");
    assert_eq!(ev["signal"]["parameter"], json!("go"), "{ev}");
    assert_eq!(ev["signal"]["payload"], json!({"x": 1}), "{ev}");
    c.clunk(fid).await;

    // Timeout.
    c.walk_write(
        "/agents/self/events/control/wait.json",
        br#"{"paths":["/agents/self/events/sources/hook.json"],"timeout_ms":300}"#,
    )
    .await;
    let fid = c.walk_ok("/agents/self/events/next.json").await;
    let r = c.acheron_within("t_read", json!({"fid": fid, "offset": 0}), Duration::from_secs(15)).await;
    let ev: Value = serde_json::from_slice(&B64.decode(r["payload"]["data_b64"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(ev["timeout"], json!(true), "{ev}");
    assert_eq!(ev["waiting"], json!(true), "{ev}");

    // Bad wait payload.
    let w = c.walk_write("/agents/self/events/control/wait.json", br#"{"paths":[]}"#).await;
    let e = spiderweb_tests::assert_acheron_error(&w, "empty paths");
    assert_eq!(e["code"], json!("invalid"), "{w}");
}

/// A signal written by another connection of the same agent and project wakes a waiting
/// read; the delivered event stays in `next.json` for reads at later offsets.
#[tokio::test]
async fn a_signal_from_another_connection_wakes_the_waiter() {
    let gw = Gateway::start();
    let mut waiter = admin_fs(&gw).await;
    let mut hook = admin_fs(&gw).await;
    let w = waiter
        .walk_write(
            "/agents/self/events/control/wait.json",
            br#"{"paths":["/agents/self/events/sources/hook/deploy.json"],"timeout_ms":10000}"#,
        )
        .await;
    assert_eq!(w["ok"], json!(true), "{w}");
    let fid = waiter.walk_ok("/agents/self/events/next.json").await;
    waiter
        .send_json(&json!({"channel":"acheron","type":"acheron.t_read","tag":9001,"fid":fid,"offset":0,"count":16}))
        .await;
    // A signal with another parameter does not match; the matching one does.
    for (parameter, n) in [("build", 1), ("deploy", 2)] {
        let s = hook
            .walk_write(
                "/agents/self/events/control/signal.json",
                format!(r#"{{"event_type":"hook","parameter":"{parameter}","payload":{{"n":{n}}}}}"#).as_bytes(),
            )
            .await;
        assert_eq!(s["ok"], json!(true), "{s}");
    }
    let r = waiter.wait_for("the waiting read (tag 9001)", Duration::from_secs(10), |v| v["tag"] == json!(9001)).await;
    assert_eq!(r["type"], json!("acheron.r_read"), "{r}");
    assert_eq!(r["payload"]["n"], json!(16), "count is honoured: {r}");
    assert_eq!(r["payload"]["eof"], json!(false), "{r}");
    let mut content = B64.decode(r["payload"]["data_b64"].as_str().unwrap()).unwrap();
    let rest = waiter.acheron_ok("t_read", json!({"fid": fid, "offset": 16, "count": 65536})).await;
    content.extend(B64.decode(rest["data_b64"].as_str().unwrap()).unwrap());
    let ev: Value = serde_json::from_slice(&content).unwrap();
    assert_eq!(ev["event_id"], json!(1), "{ev}");
    assert_eq!(ev["signal"]["parameter"], json!("deploy"), "{ev}");
    assert_eq!(ev["signal"]["payload"], json!({"n": 2}), "{ev}");
    assert_eq!(ev["event_path"], json!("/agents/self/events/sources/hook/deploy.json"), "{ev}");
}

/// A wait configuration that names no event source is refused, not left to time out.
#[tokio::test]
async fn wait_paths_that_name_no_source_are_refused() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    let w = c.walk_write("/agents/self/events/control/wait.json", br#"{"paths":["/etc/passwd"]}"#).await;
    let e = spiderweb_tests::assert_acheron_error(&w, "a path outside the event sources");
    assert_eq!(e["code"], json!("invalid"), "{w}");
    assert!(e["message"].as_str().unwrap().contains("/etc/passwd"), "{w}");
    let s = c.walk_write("/agents/self/events/control/signal.json", br#"{"event_type":"root"}"#).await;
    let e = spiderweb_tests::assert_acheron_error(&s, "an unknown signal type");
    assert_eq!(e["code"], json!("invalid"), "{s}");
}

/// A blocking read holds back only itself (quirk 12): a ping on the same socket is answered
/// while `next.json` waits.
#[tokio::test]
async fn blocking_read_does_not_hold_back_other_requests() {
    let gw = Gateway::start();
    let mut c = admin_fs(&gw).await;
    c.walk_write(
        "/agents/self/events/control/wait.json",
        br#"{"paths":["/agents/self/events/sources/hook.json"],"timeout_ms":3000}"#,
    )
    .await;
    let fid = c.walk_ok("/agents/self/events/next.json").await;
    c.send_json(&json!({"channel":"acheron","type":"acheron.t_read","tag":777,"fid":fid,"offset":0})).await;
    // While the read blocks, other requests are answered.
    let st = c.acheron_ok("t_stat", json!({"fid": ROOT_FID})).await;
    assert_eq!(st["kind"], json!("dir"));
    let r = c.control("ping", Value::Null).await;
    assert_eq!(r["type"], json!("control.pong"), "{r}");
    let r = c.wait_for("the blocked read (tag 777)", Duration::from_secs(15), |v| v["tag"] == json!(777)).await;
    assert_eq!(r["type"], json!("acheron.r_read"), "{r}");
}
