//! The gateway's synthetic exports on `/v2/fs` (`system-meta`, `system-chat`, `system-jobs`,
//! spec `fs-node.md` §5.0), spoken to as a node client.
//!
//! What a user relies on: with `/v2/fs` served, the three exports are listed with the right
//! read-only flags; `system-meta/protocol.json` describes the protocol; a prompt written to
//! `system-chat/control/input` starts a job of `mother` (through the real broker, worker
//! supervisor and a local provider speaking OpenAI's wire format) whose directory in
//! `system-jobs` goes to `done` with the provider's answer in `result.txt`, and subscribed
//! clients are told; an empty prompt is refused; the gateway-owned trees refuse changes
//! (EROFS on the read-only export, EACCES elsewhere, ENOSYS for locks, EXDEV across exports).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use spiderweb_tests::fake_provider::{FakeProvider, Format, Reply};
use spiderweb_tests::stack::{ProviderSetup, Stack, send_prompt};
use spiderweb_tests::{Client, Gateway, bin_dir};

const TOKEN: &str = "fs-secret-5678";
const LIMIT: Duration = Duration::from_secs(60);
const ANSWER: &str = "The fake provider says: forty-two.";

/// A `/v2/fs` connection through the harness client: requests by tag, events kept aside.
struct Fs {
    ws: Client,
    next_tag: u32,
}

impl Fs {
    async fn connect(gw: &Gateway, subscribe: bool) -> Fs {
        let ws = Client::connect_with(gw, "/v2/fs", &[]).await;
        let mut fs = Fs { ws, next_tag: 0 };
        let hello =
            json!({"protocol": "unified-v2-fs", "proto": 2, "auth_token": TOKEN, "subscribe_invalidations": subscribe});
        let reply = fs.call("hello", None, None, hello).await;
        assert_eq!(reply["ok"], true, "hello: {reply}");
        fs
    }

    /// Sends one request and returns its reply frame (`ok` true or false).
    async fn call(&mut self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> Value {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.send(op, tag, node, h, payload).await;
        self.ws.wait_for(&format!("the reply to t_fs_{op}"), LIMIT, |f| f["tag"] == tag).await
    }

    async fn send(&mut self, op: &str, tag: u32, node: Option<u64>, h: Option<u64>, payload: Value) {
        let mut frame =
            json!({"channel": "acheron", "type": format!("acheron.t_fs_{op}"), "tag": tag, "payload": payload});
        if let Some(node) = node {
            frame["node"] = node.into();
        }
        if let Some(h) = h {
            frame["h"] = h.into();
        }
        self.ws.send_json(&frame).await;
    }

    async fn ok(&mut self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> Value {
        let reply = self.call(op, node, h, payload.clone()).await;
        assert_eq!(reply["ok"], true, "t_fs_{op} node={node:?} h={h:?} {payload}: {reply}");
        reply["payload"].clone()
    }

    /// The errno of a request that must fail.
    async fn errno(&mut self, op: &str, node: Option<u64>, h: Option<u64>, payload: Value) -> i64 {
        let reply = self.call(op, node, h, payload.clone()).await;
        assert_eq!(reply["ok"], false, "t_fs_{op} node={node:?} h={h:?} {payload} should fail: {reply}");
        reply["error"]["errno"].as_i64().unwrap_or_else(|| panic!("no errno: {reply}"))
    }

    async fn exports(&mut self) -> Vec<Value> {
        self.ok("exports", None, None, json!({})).await["exports"].as_array().cloned().unwrap()
    }

    async fn root(&mut self, export: &str) -> u64 {
        let exports = self.exports().await;
        let entry = exports.iter().find(|e| e["name"] == export).unwrap_or_else(|| panic!("no {export}: {exports:?}"));
        entry["root"].as_u64().unwrap()
    }

    /// The attr of `path` (components below `root`), or the errno of the first failing lookup.
    async fn walk(&mut self, root: u64, path: &str) -> Result<Value, i64> {
        let mut attr = self.ok("getattr", Some(root), None, json!({})).await["attr"].clone();
        for name in path.split('/').filter(|n| !n.is_empty()) {
            let reply = self.call("lookup", attr["id"].as_u64(), None, json!({"name": name})).await;
            if reply["ok"] != true {
                return Err(reply["error"]["errno"].as_i64().unwrap_or(-1));
            }
            attr = reply["payload"]["attr"].clone();
        }
        Ok(attr)
    }

    async fn id(&mut self, root: u64, path: &str) -> u64 {
        let attr = self.walk(root, path).await.unwrap_or_else(|errno| panic!("{path}: errno {errno}"));
        attr["id"].as_u64().unwrap()
    }

    async fn open(&mut self, root: u64, path: &str, flags: u32) -> u64 {
        let id = self.id(root, path).await;
        self.ok("open", Some(id), None, json!({"flags": flags})).await["h"].as_u64().unwrap()
    }

    /// The whole content of `path`.
    async fn read(&mut self, root: u64, path: &str) -> String {
        let h = self.open(root, path, 0).await;
        let mut data = Vec::new();
        loop {
            let reply = self.ok("read", None, Some(h), json!({"off": data.len(), "len": 65536})).await;
            let chunk = base64::engine::general_purpose::STANDARD.decode(reply["data_b64"].as_str().unwrap()).unwrap();
            data.extend_from_slice(&chunk);
            if reply["eof"] == true {
                break;
            }
        }
        self.ok("close", None, Some(h), json!({})).await;
        String::from_utf8(data).unwrap()
    }

    async fn write(&mut self, h: u64, data: &str) -> Value {
        let payload = json!({"off": 0, "data_b64": base64::engine::general_purpose::STANDARD.encode(data)});
        self.call("write", None, Some(h), payload).await
    }

    /// The names of a directory's entries (without `.` and `..`).
    async fn list(&mut self, dir: u64) -> Vec<String> {
        let listing = self.ok("readdirp", Some(dir), None, json!({"max": 1024})).await;
        assert_eq!(listing["eof"], true, "{listing}");
        let names = listing["ents"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned());
        names.filter(|n| n != "." && n != "..").collect()
    }
}

fn fs_config(dir: &std::path::Path) -> Value {
    json!({"fs": {"exports": [format!("work={}", dir.display())], "auth_token": TOKEN}})
}

#[tokio::test]
async fn a_prompt_written_to_system_chat_runs_a_job_whose_files_appear_in_system_jobs() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![Reply::text(ANSWER).with_usage(40, 9)]);
    let work = tempfile::tempdir().unwrap();
    let stack = Stack::start(&ProviderSetup::fake(&fake), fs_config(work.path()));
    let gw = &stack.gateway;
    let mut fs = Fs::connect(gw, false).await;
    let mut events = Fs::connect(gw, true).await;

    // Listed after the configured export, with the spec's flags and source kind.
    let exports = fs.exports().await;
    let summary: Vec<(String, bool, String)> = exports
        .iter()
        .map(|e| {
            (e["name"].as_str().unwrap().into(), e["ro"].as_bool().unwrap(), e["source_kind"].as_str().unwrap().into())
        })
        .collect();
    let expected = [
        ("work", false, "linux"),
        ("system-meta", true, "namespace"),
        ("system-chat", false, "namespace"),
        ("system-jobs", false, "namespace"),
    ]
    .map(|(n, ro, k)| (n.to_owned(), ro, k.to_owned()));
    assert_eq!(summary, expected);
    for (index, export) in exports.iter().enumerate() {
        assert_eq!(export["root"].as_u64().unwrap() >> 48, index as u64 + 1, "§4 node ids: {export}");
    }

    // system-meta/protocol.json: the Acheron ops list.
    let meta = fs.root("system-meta").await;
    let protocol: Value = serde_json::from_str(&fs.read(meta, "protocol.json").await).unwrap();
    let ops = protocol["ops"].as_array().expect("an ops list");
    assert!(ops.contains(&json!("t_walk")) && ops.contains(&json!("t_write")), "{protocol}");
    assert_eq!(protocol["channel"], "acheron");

    // The chat's description files.
    let chat = fs.root("system-chat").await;
    assert_eq!(fs.list(chat).await, ["help.md", "schema.json", "meta.json", "examples", "control"]);
    let chat_meta: Value = serde_json::from_str(&fs.read(chat, "meta.json").await).unwrap();
    assert_eq!((chat_meta["agent_id"].as_str(), chat_meta["project_id"].as_str()), (Some("mother"), Some("system")));
    assert!(fs.read(chat, "help.md").await.contains("control/input"));
    assert!(!fs.read(chat, "examples/send.txt").await.is_empty());

    // An empty prompt is refused and starts nothing.
    let jobs = fs.root("system-jobs").await;
    let input = fs.open(chat, "control/input", 2).await;
    let empty = fs.write(input, "  \n").await;
    assert_eq!(empty["error"]["errno"], 22, "an empty prompt is refused: {empty}");
    assert!(fs.list(jobs).await.is_empty(), "no job for an empty prompt");

    // A prompt: the reply names the job and its correlation id.
    fs.next_tag = 41;
    let written = fs.write(input, "What is the answer?\n").await;
    assert_eq!(written["ok"], true, "{written}");
    let reply = &written["payload"];
    assert_eq!(reply["n"], 20, "{reply}");
    assert_eq!(reply["correlation_id"], "fs-42", "correlation id from the write's tag: {reply}");
    let job = reply["job"].as_str().expect("the job id").to_owned();
    assert!(job.starts_with("job-"), "{reply}");
    fs.ok("close", None, Some(input), json!({})).await;

    // Subscribed clients learn that system-jobs changed.
    let event = events
        .ws
        .wait_for("an e_fs_inval_dir for the system-jobs root", LIMIT, |f| {
            f["type"] == "acheron.e_fs_inval_dir" && f["payload"]["dir"] == jobs
        })
        .await;
    assert!(event.get("tag").is_none(), "{event}");

    // The job's directory, until the job is done.
    assert_eq!(fs.list(jobs).await, [job.as_str()]);
    let job_dir = fs.id(jobs, &job).await;
    assert_eq!(fs.list(job_dir).await, ["status.json", "result.txt", "log.txt"]);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        let status: Value = serde_json::from_str(&fs.read(jobs, &format!("{job}/status.json")).await).unwrap();
        if status["state"] == "done" || status["state"] == "failed" {
            break status;
        }
        assert!(Instant::now() < deadline, "job {job} did not end: {status}\n{}", stack.broker_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["correlation_id"], "fs-42", "{status}");
    assert_eq!(fs.read(jobs, &format!("{job}/result.txt")).await, ANSWER);
    assert!(fs.read(jobs, &format!("{job}/log.txt")).await.contains(&job), "the log names the job");
    let result_attr = fs.walk(jobs, &format!("{job}/result.txt")).await.unwrap();
    assert_eq!(result_attr["sz"], ANSWER.len(), "the size is the content's: {result_attr}");

    // The prompt reached the provider, and the job is mother's in the world filesystem too.
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert!(requests[0].body.to_string().contains("What is the answer?"), "{}", requests[0].body);
    let mut admin = gw.admin().await;
    assert_eq!(admin.walk_read(&format!("/agents/self/jobs/{job}/result.txt")).await, ANSWER);

    // A job of another agent, in another project, is not the system chat's.
    fake.script(vec![Reply::text("the helper's answer")]);
    let mut elsewhere = gw.admin().await;
    let project = elsewhere.control_ok("project_create", json!({"name": "Alpha", "vision": "the alpha thing"})).await;
    let binding = json!({"session_key": "work", "agent_id": "helper", "project_id": project["project_id"]});
    elsewhere.control_ok("session_attach", binding).await;
    let other = send_prompt(&mut elsewhere, "hi").await;
    assert_ne!(other, job);
    assert_eq!(fs.list(jobs).await, [job.as_str()], "only mother's jobs in system");
    assert_eq!(fs.walk(jobs, &other).await.unwrap_err(), 2, "{other} is not there");
}

#[tokio::test]
async fn gateway_owned_trees_refuse_changes_with_the_spec_errnos() {
    let work = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(fs_config(work.path()));
    let mut fs = Fs::connect(&gw, false).await;
    let hello = fs.ok("hello", None, None, json!({"protocol": "unified-v2-fs", "proto": 2, "auth_token": TOKEN})).await;
    assert_eq!(hello["caps"]["locks"], false, "namespace exports have no locks, so not all exports do: {hello}");

    let meta = fs.root("system-meta").await;
    let protocol = fs.id(meta, "protocol.json").await;
    assert_eq!(protocol >> 48, 2, "second export (after work), pseudo-inode below: {protocol:#x}");
    assert_eq!(fs.walk(meta, "missing.json").await.unwrap_err(), 2);
    assert_eq!(fs.walk(meta, "..").await.unwrap_err(), 22, "invalid child name");

    // Every mutation of the read-only export: EROFS.
    for flags in [1, 2] {
        assert_eq!(fs.errno("open", Some(protocol), None, json!({"flags": flags})).await, 30, "open flags {flags}");
    }
    let name = json!({"name": "x"});
    for (op, node, payload) in [
        ("create", meta, name.clone()),
        ("mkdir", meta, name.clone()),
        ("rmdir", meta, name.clone()),
        ("unlink", meta, json!({"name": "protocol.json"})),
        ("symlink", meta, json!({"name": "x", "target": "protocol.json"})),
        ("truncate", protocol, json!({"sz": 0})),
        ("setxattr", protocol, json!({"name": "user.x", "value_b64": "eA=="})),
        ("removexattr", protocol, json!({"name": "user.x"})),
    ] {
        assert_eq!(fs.errno(op, Some(node), None, payload).await, 30, "{op} on system-meta");
    }
    let rename = json!({"old_parent": meta, "old_name": "protocol.json", "new_parent": meta, "new_name": "p.json"});
    assert_eq!(fs.errno("rename", None, None, rename).await, 30, "rename in system-meta");
    let h = fs.ok("open", Some(protocol), None, json!({"flags": 0})).await["h"].as_u64().unwrap();
    let write = fs.write(h, "vandalised").await;
    assert_eq!(write["error"]["errno"], 30, "a write on system-meta: {write}");
    assert_eq!(fs.errno("lock", None, Some(h), json!({"kind": "shared", "wait": false})).await, 38, "lock");
    assert!(fs.read(meta, "protocol.json").await.contains("t_walk"), "unchanged");
    assert_eq!(fs.errno("getxattr", Some(protocol), None, json!({"name": "user.x"})).await, 61);
    assert_eq!(fs.ok("listxattr", Some(protocol), None, json!({})).await["names"], json!([]));
    let statfs = fs.ok("statfs", Some(meta), None, json!({})).await;
    assert_eq!(statfs["namemax"], 255, "{statfs}");

    // The writable exports: their shape and their fixed files are the gateway's (EACCES).
    let chat = fs.root("system-chat").await;
    let jobs = fs.root("system-jobs").await;
    for (op, node) in [("create", chat), ("mkdir", chat), ("create", jobs), ("mkdir", jobs)] {
        assert_eq!(fs.errno(op, Some(node), None, name.clone()).await, 13, "{op} in a namespace export");
    }
    assert_eq!(fs.errno("unlink", Some(chat), None, json!({"name": "help.md"})).await, 13);
    let schema = fs.id(chat, "schema.json").await;
    assert_eq!(fs.errno("open", Some(schema), None, json!({"flags": 2})).await, 13, "a fixed file");
    assert_eq!(fs.errno("truncate", Some(schema), None, json!({"sz": 0})).await, 13);
    assert_eq!(fs.errno("open", Some(chat), None, json!({"flags": 0})).await, 21, "a directory");
    assert_eq!(fs.errno("readdirp", Some(schema), None, json!({})).await, 20, "not a directory");
    let across = json!({"old_parent": chat, "old_name": "help.md", "new_parent": jobs, "new_name": "help.md"});
    assert_eq!(fs.errno("rename", None, None, across).await, 18, "across exports");

    // control/input: truncate (a shell's `>`) is accepted; locks are not; the handle's mode holds.
    let input = fs.id(chat, "control/input").await;
    fs.ok("truncate", Some(input), None, json!({"sz": 0})).await;
    let read_only = fs.ok("open", Some(input), None, json!({"flags": 0})).await["h"].as_u64().unwrap();
    assert_eq!(fs.write(read_only, "hi").await["error"]["errno"], 9, "handle not writable");
    assert_eq!(fs.errno("lock", None, Some(read_only), json!({"kind": "exclusive"})).await, 38);

    // control/reply keeps the last reply.
    let reply_h = fs.open(chat, "control/reply", 2).await;
    let stored = fs.write(reply_h, "  noted  ").await;
    assert_eq!(stored["payload"]["chat_reply"], json!({"delivered": true, "content": "noted"}), "{stored}");
    assert_eq!(fs.read(chat, "control/reply").await, "noted");

    // The configured export is unaffected beside them.
    std::fs::write(work.path().join("plain.txt"), "plain").unwrap();
    let work_root = fs.root("work").await;
    assert_eq!(fs.read(work_root, "plain.txt").await, "plain");
}

/// `spiderweb-fs-mount mount` of the three synthetic exports at `/meta`, `/chat`, `/jobs`;
/// unmounted (SIGTERM) when dropped.
struct Mount {
    child: Child,
    at: PathBuf,
    _dir: tempfile::TempDir,
}

fn is_mounted(at: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == at.to_str())
}

impl Mount {
    fn start(gw: &Gateway) -> Mount {
        assert!(Path::new("/dev/fuse").exists(), "this test needs /dev/fuse (load the fuse module)");
        let fusermount = Command::new("fusermount3").arg("-V").output().is_ok();
        assert!(fusermount, "this test needs fusermount3: apt-get install fuse3 (scripts/test does)");
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("mnt");
        std::fs::create_dir(&at).unwrap();
        let mut command = Command::new(bin_dir().join("spiderweb-fs-mount"));
        command.args(["--auth-token", TOKEN]);
        for name in ["meta", "chat", "jobs"] {
            command.args(["--endpoint", &format!("{name}=ws://{}/v2/fs#system-{name}@/{name}", gw.addr())]);
        }
        let mut child = command
            .arg("mount")
            .arg(&at)
            .env("SPIDERWEB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run spiderweb-fs-mount");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("mounted at"), "the mount did not start: {line:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_mounted(&at) {
            assert!(Instant::now() < deadline, "not mounted after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount { child, at, _dir: dir }
    }

    /// Runs `script` with `sh -c` in the mount; (success, stdout, stderr).
    fn sh(&self, script: &str) -> (bool, String, String) {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(&self.at).output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn sh_ok(&self, script: &str) -> String {
        let (ok, out, err) = self.sh(script);
        assert!(ok, "`{script}` failed: {err}");
        out
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child process (the mount unmounts on SIGTERM).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if is_mounted(&self.at) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.at).status();
        }
    }
}

#[test]
fn the_system_chat_works_through_a_fuse_mount_with_ordinary_programs() {
    let fake = FakeProvider::start(Format::OpenAiChat);
    fake.script(vec![Reply::text(ANSWER)]);
    let work = tempfile::tempdir().unwrap();
    let stack = Stack::start(&ProviderSetup::fake(&fake), fs_config(work.path()));
    let mount = Mount::start(&stack.gateway);

    let protocol: Value = serde_json::from_str(&mount.sh_ok("cat meta/protocol.json")).unwrap();
    assert!(protocol["ops"].as_array().is_some_and(|ops| ops.contains(&json!("t_read"))), "{protocol}");
    assert!(mount.sh_ok("cat chat/help.md").contains("control/input"));
    let (ok, _, err) = mount.sh("echo vandalised > meta/protocol.json");
    assert!(!ok && err.contains("Read-only file system"), "system-meta is read-only: {err}");
    let (ok, _, err) = mount.sh("touch jobs/made-up");
    assert!(!ok && err.contains("Permission denied"), "system-jobs has only the gateway's entries: {err}");
    assert_eq!(mount.sh_ok("ls jobs"), "", "no job yet");

    mount.sh_ok("echo 'What is the answer?' > chat/control/input");
    let deadline = Instant::now() + LIMIT;
    let job = loop {
        let listing = mount.sh_ok("ls jobs");
        if let Some(job) = listing.lines().next() {
            break job.to_owned();
        }
        assert!(Instant::now() < deadline, "no job appeared under jobs/");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(job.starts_with("job-"), "{job}");
    assert_eq!(mount.sh_ok(&format!("ls jobs/{job}")), "log.txt\nresult.txt\nstatus.json\n");
    loop {
        let status: Value = serde_json::from_str(&mount.sh_ok(&format!("cat jobs/{job}/status.json"))).unwrap();
        if status["state"] == "done" {
            break;
        }
        assert_ne!(status["state"], "failed", "{status}\n{}", stack.broker_log());
        assert!(Instant::now() < deadline, "job {job} did not end: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mount.sh_ok(&format!("cat jobs/{job}/result.txt")), ANSWER, "the answer, as cat sees it");
}
