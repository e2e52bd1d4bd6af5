//! The supervisor daemon: peer checks, streamed output, pipelined requests, refusals, and the
//! wall-clock tree kill, against the real `spiderweb-worker supervise`.

mod common;

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use spiderweb_proto::frame::{read_frame, write_frame};
use spiderweb_proto::worker::{MAX_FRAME_BYTES, SandboxProfile, SupervisorReply, ToolRequest};

struct Supervisor {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Supervisor {
    fn start(tenants: &[(&str, u32)], extra: Value) -> Supervisor {
        Supervisor::start_as(tenants, extra, None)
    }

    /// `run_as`: start the supervisor as this non-root uid holding only CAP_SETUID and
    /// CAP_SETGID (as a systemd unit with `AmbientCapabilities=` would), via `setpriv`.
    fn start_as(tenants: &[(&str, u32)], extra: Value, run_as: Option<u32>) -> Supervisor {
        require_root();
        let dir = tempfile::Builder::new().prefix("sw-sup-").tempdir().unwrap();
        if let Some(uid) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid)).unwrap();
        }
        let socket = dir.path().join("worker.sock");
        let tenants: serde_json::Map<String, Value> =
            tenants.iter().map(|(t, uid)| (t.to_string(), json!({"uid": uid, "gid": uid}))).collect();
        let mut config = json!({
            "socket": socket,
            "workspace_roots": [std::env::temp_dir()],
            "uid_range": {"start": 300000, "count": 100000},
            "tenants": tenants,
        });
        config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let config_path = dir.path().join("config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let mut command = match run_as {
            None => Command::new(WORKER),
            Some(uid) => {
                let mut setpriv = Command::new("setpriv");
                setpriv
                    .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"])
                    .args(["--inh-caps", "-all,+setuid,+setgid", "--ambient-caps", "+setuid,+setgid"])
                    .args(["--bounding-set", "-all,+setuid,+setgid", "--"])
                    .arg(WORKER);
                setpriv
            }
        };
        let child = command
            .args(["supervise", "--config"])
            .arg(&config_path)
            .env("SPIDERWEB_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "supervisor did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Supervisor { child, socket, _dir: dir }
    }

    fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request(id: &str, tenant: &str, ws: &Path, tool: &str, args: Value) -> ToolRequest {
    ToolRequest {
        request_id: id.into(),
        tenant: tenant.into(),
        session: "s1".into(),
        workspace: ws.display().to_string(),
        profile: Default::default(),
        tool: tool.into(),
        args,
    }
}

fn send(stream: &mut UnixStream, req: &ToolRequest) {
    write_frame(stream, req, MAX_FRAME_BYTES).unwrap();
}

fn recv(stream: &mut UnixStream) -> SupervisorReply {
    read_frame(stream, MAX_FRAME_BYTES).unwrap().expect("connection open").unwrap()
}

/// Reads replies until `id`'s result, returning its output chunks and the result JSON.
fn collect(stream: &mut UnixStream, id: &str) -> (String, Value) {
    let mut output = String::new();
    loop {
        match recv(stream) {
            SupervisorReply::Output { request_id, data, .. } if request_id == id => output.push_str(&data),
            SupervisorReply::Result { request_id, outcome } if request_id == id => {
                return (output, serde_json::to_value(outcome).unwrap());
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

#[test]
fn streams_output_then_one_result_per_request_with_its_id() {
    let uid = test_uid("sup-stream");
    let sup = Supervisor::start(&[("alice", uid)], json!({}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let cmd = "for i in 1 2 3; do echo line$i; sleep 0.05; done; echo warn >&2";
    send(&mut conn, &request("r1", "alice", ws.path(), "shell_exec", json!({"command": cmd})));
    let mut chunks = 0;
    let mut streamed = String::new();
    let result = loop {
        match recv(&mut conn) {
            SupervisorReply::Output { request_id, data, .. } => {
                assert_eq!(request_id, "r1");
                chunks += 1;
                streamed.push_str(&data);
            }
            SupervisorReply::Result { request_id, outcome } => {
                assert_eq!(request_id, "r1");
                break serde_json::to_value(outcome).unwrap();
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(chunks >= 3, "output arrives as it is produced ({chunks} chunks)");
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["payload"]["stdout"], "line1\nline2\nline3\n");
    assert!(streamed.contains("line1\nline2\nline3\n") && streamed.contains("warn\n"), "{streamed}");
}

#[test]
fn pipelined_requests_run_concurrently_and_replies_keep_their_ids() {
    let uid = test_uid("sup-pipeline");
    let sup = Supervisor::start(&[("alice", uid)], json!({}));
    let ws = Workspace::new(uid);
    ws.write("f.txt", "content\n");
    let mut conn = sup.connect();
    send(&mut conn, &request("slow", "alice", ws.path(), "shell_exec", json!({"command": "sleep 1; echo slow"})));
    send(&mut conn, &request("fast", "alice", ws.path(), "file_read", json!({"path": "f.txt"})));
    let mut order = Vec::new();
    let mut results = std::collections::BTreeMap::new();
    while results.len() < 2 {
        if let SupervisorReply::Result { request_id, outcome } = recv(&mut conn) {
            order.push(request_id.clone());
            results.insert(request_id, serde_json::to_value(outcome).unwrap());
        }
    }
    assert_eq!(order, ["fast", "slow"], "the fast call is not queued behind the slow one");
    assert_eq!(results["fast"]["payload"]["content"], "content\n");
    assert_eq!(results["slow"]["payload"]["stdout"], "slow\n");
}

#[test]
fn malformed_frames_are_answered_and_the_connection_survives() {
    let uid = test_uid("sup-malformed");
    let sup = Supervisor::start(&[("alice", uid)], json!({}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    write_frame(&mut conn, &json!({"request_id": 5, "tool": []}), MAX_FRAME_BYTES).unwrap();
    match recv(&mut conn) {
        SupervisorReply::Malformed { message } => assert!(message.contains("unexpected message shape"), "{message}"),
        other => panic!("{other:?}"),
    }
    send(&mut conn, &request("ok", "alice", ws.path(), "file_list", json!({})));
    let (_, result) = collect(&mut conn, "ok");
    assert_eq!(result["status"], "ok", "{result}");
    // An oversize header closes only this connection.
    use std::io::Write;
    conn.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert!(read_frame::<SupervisorReply>(&mut conn, MAX_FRAME_BYTES).map(|f| f.is_none()).unwrap_or(true));
    let mut again = sup.connect();
    send(&mut again, &request("ok2", "alice", ws.path(), "file_list", json!({})));
    assert_eq!(collect(&mut again, "ok2").1["status"], "ok");
}

#[test]
fn requests_outside_the_configuration_are_rejected_before_a_worker_starts() {
    let uid = test_uid("sup-reject");
    let sup = Supervisor::start(&[("alice", uid), ("bob", uid + 1)], json!({}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let link = tempfile::Builder::new().prefix("sw-link-").tempdir().unwrap();
    std::os::unix::fs::symlink(ws.path(), link.path().join("ws")).unwrap();
    let cases = [
        ("unknown tenant", request("a", "mallory", ws.path(), "file_list", json!({}))),
        ("other tenant's workspace", request("b", "bob", ws.path(), "file_list", json!({}))),
        ("outside the roots", request("c", "alice", Path::new("/etc"), "file_list", json!({}))),
        ("a root itself", request("d", "alice", &std::env::temp_dir(), "file_list", json!({}))),
        ("not canonical", request("e", "alice", &link.path().join("ws"), "file_list", json!({}))),
        (
            "dot-dot",
            request("f", "alice", &ws.path().join("..").join(ws.path().file_name().unwrap()), "file_list", json!({})),
        ),
        ("empty request id", request("", "alice", ws.path(), "file_list", json!({}))),
    ];
    for (what, req) in cases {
        let id = req.request_id.clone();
        send(&mut conn, &req);
        let (_, result) = collect(&mut conn, &id);
        assert_eq!(result["code"], "rejected", "{what}: {result}");
    }
}

#[test]
fn a_new_projects_workspace_is_created_for_its_tenant_on_first_use() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = test_uid("sup-provision");
    let sup = Supervisor::start(&[("alice", uid)], json!({}));
    let fresh = std::env::temp_dir().join(format!("sw-fresh-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(fresh.clone());
    let mut conn = sup.connect();
    send(&mut conn, &request("new", "alice", &fresh, "shell_exec", json!({"command": "echo hi > made.txt; id -u"})));
    let (_, result) = collect(&mut conn, "new");
    assert_eq!(result["status"], "ok", "{result}");
    let meta = std::fs::metadata(&fresh).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, uid), "owned by the tenant");
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(result["payload"]["stdout"], format!("{uid}\n"));
    // Only direct children of a root are created: a deeper path is still refused.
    let deep = fresh.join("a/b");
    send(&mut conn, &request("deep", "alice", &deep, "file_list", json!({})));
    let (_, result) = collect(&mut conn, "deep");
    assert_eq!(result["code"], "rejected", "{result}");
    assert!(!deep.exists());
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn wall_clock_timeout_kills_the_whole_tree() {
    let uid = test_uid("sup-timeout");
    let limits = json!({"cpu_seconds": 10, "address_space_bytes": 1073741824u64, "open_files": 256,
        "file_size_bytes": 1048576, "processes": 64, "wall_clock_ms": 1500, "tmp_bytes": 1048576});
    // No warm worker: any process of the tenant left afterwards would be the call's.
    let config = json!({"warm_workers_per_plan": 0, "sandbox": {"limits": {"workspace-write": limits}}});
    let sup = Supervisor::start(&[("alice", uid)], config);
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let cmd = "sleep 1000 & (setsid sleep 1000 &); nohup sleep 1000 >/dev/null 2>&1 & echo started; sleep 1000";
    send(&mut conn, &request("t", "alice", ws.path(), "shell_exec", json!({"command": cmd, "timeout_ms": 60000})));
    let (streamed, result) = collect(&mut conn, "t");
    assert_eq!(streamed, "started\n");
    assert_eq!(result["code"], "timeout", "{result}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_of(uid).is_empty() {
        assert!(Instant::now() < deadline, "processes survived the timeout: {}", describe(&processes_of(uid)));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn only_allowed_peer_uids_are_served() {
    let uid = test_uid("sup-peer");
    // World-connectable socket, so only SO_PEERCRED stands between another user and the daemon.
    let sup = Supervisor::start(&[("alice", uid)], json!({"socket_mode": 0o666, "allowed_uids": [0]}));
    let ws = Workspace::new(uid);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(sup.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let req = serde_json::to_string(&request("x", "alice", ws.path(), "file_list", json!({}))).unwrap();
    // A client running as the tenant's uid (e.g. a confined tool that found the socket).
    let client = r#"
import socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = sys.argv[2].encode()
try:
    s.sendall(struct.pack(">I", len(body)) + body)
    s.settimeout(10)
    print("REPLY" if s.recv(4) else "CLOSED")
except (BrokenPipeError, ConnectionResetError):
    print("CLOSED")
"#;
    let out = Command::new("python3")
        .args(["-c", client])
        .arg(&sup.socket)
        .arg(&req)
        .uid(uid + 7)
        .gid(uid + 7)
        .output()
        .expect("python3 is needed for the peer-uid client");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "CLOSED", "{}", String::from_utf8_lossy(&out.stderr));
    // The allowed uid (root, this test) is served on the same socket.
    let mut conn = sup.connect();
    send(&mut conn, &request("y", "alice", ws.path(), "file_list", json!({})));
    assert_eq!(collect(&mut conn, "y").1["status"], "ok");
}

#[test]
fn a_root_supervisor_without_tenant_ids_refuses_to_start() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    std::fs::write(&config, json!({"socket": dir.path().join("s"), "workspace_roots": ["/tmp"]}).to_string()).unwrap();
    let out = Command::new(WORKER).args(["supervise", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uid_range"), "{}", String::from_utf8_lossy(&out.stderr));
    let err = UnixStream::connect(dir.path().join("s")).unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused));
}

#[test]
fn consecutive_calls_share_nothing_even_with_warm_workers() {
    let uid = test_uid("sup-warm");
    let sup = Supervisor::start(&[("alice", uid)], json!({"warm_workers_per_plan": 1}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let first = "echo leftover > /tmp/state; (sleep 1000 &); export LEAK=1; echo done";
    send(&mut conn, &request("1", "alice", ws.path(), "shell_exec", json!({"command": first})));
    assert_eq!(collect(&mut conn, "1").1["payload"]["stdout"], "done\n");
    // Let the supervisor start the warm worker the next call will use.
    std::thread::sleep(Duration::from_millis(300));
    let second = "cat /tmp/state 2>&1; ps -eo args | grep -c '[s]leep 1000'; echo LEAK=${LEAK:-unset}";
    for id in ["2", "3"] {
        send(&mut conn, &request(id, "alice", ws.path(), "shell_exec", json!({"command": second})));
        let (_, result) = collect(&mut conn, id);
        let stdout = result["payload"]["stdout"].as_str().unwrap();
        assert!(stdout.contains("No such file or directory"), "/tmp is private per call: {stdout}");
        assert!(stdout.contains("\n0\nLEAK=unset\n"), "no process or environment survives a call: {stdout}");
    }
}

#[test]
fn a_supervisor_with_only_setuid_setgid_capabilities_runs_tenants_under_their_uids() {
    let uid = test_uid("sup-caps");
    let supervisor_uid = uid + 1;
    let sup = Supervisor::start_as(&[("alice", uid)], json!({"allowed_uids": [0]}), Some(supervisor_uid));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let cmd =
        "cat /proc/self/uid_map; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; echo x > made.txt";
    send(&mut conn, &request("c", "alice", ws.path(), "shell_exec", json!({ "command": cmd })));
    let (_, result) = collect(&mut conn, "c");
    let stdout = result["payload"]["stdout"].as_str().unwrap_or_else(|| panic!("{result}"));
    let map: Vec<&str> = stdout.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", &uid.to_string(), "1"], "the tenant uid, not the supervisor's, backs the user namespace");
    for line in ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"] {
        assert!(stdout.contains(line), "missing {line:?}: {stdout}");
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(ws.join("made.txt")).unwrap().uid(), uid, "files belong to the tenant");
    // Another tenant's workspace is refused before a worker starts.
    let other = Workspace::new(uid + 2);
    send(&mut conn, &request("d", "alice", other.path(), "file_list", json!({})));
    assert_eq!(collect(&mut conn, "d").1["code"], "rejected");
}

#[test]
fn a_vanished_gateway_takes_its_running_calls_with_it() {
    let uid = test_uid("sup-vanish");
    let sup = Supervisor::start(&[("alice", uid)], json!({"warm_workers_per_plan": 0}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let cmd = "echo started; sleep 1000; echo never";
    send(&mut conn, &request("v", "alice", ws.path(), "shell_exec", json!({"command": cmd, "timeout_ms": 300000})));
    match recv(&mut conn) {
        SupervisorReply::Output { data, .. } => assert_eq!(data, "started\n"),
        other => panic!("{other:?}"),
    }
    assert!(!processes_of(uid).is_empty(), "the call is running");
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_of(uid).is_empty() {
        assert!(Instant::now() < deadline, "the call outlived its gateway: {}", describe(&processes_of(uid)));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_warm_workers_login_shell_runs_commands_as_a_cold_bash_lc_would() {
    let uid = test_uid("sup-prestart");
    let sup = Supervisor::start(&[("alice", uid)], json!({"warm_workers_per_plan": 1}));
    let ws = Workspace::new(uid);
    ws.write(".profile", "export FROM_PROFILE=yes\n");
    let mut conn = sup.connect();
    let mut call_warm = |id: &str, command: &str| {
        // After a shell call the next worker is warmed with its login shell already started.
        std::thread::sleep(Duration::from_millis(300));
        send(&mut conn, &request(id, "alice", ws.path(), "shell_exec", json!({ "command": command })));
        collect(&mut conn, id).1
    };
    call_warm("first", "true");
    let shown = call_warm("which", "tr '\\0' ' ' < /proc/$$/cmdline");
    assert!(
        shown["payload"]["stdout"].as_str().unwrap().contains("read -r -d"),
        "the call ran in the pre-started shell: {shown}"
    );
    for (i, command) in [
        "echo \"$0|$BASH_EXECUTION_STRING|$-|$(pwd)|$HOME|$FROM_PROFILE\"; shopt -q login_shell && echo login",
        "cat; echo stdin=$?; echo out; echo err >&2; exit 7",
        "printf 'a\\tb\\n\\n'; echo \"trailing \"",
        "kill -9 $$",
        "echo $LINENO\necho $LINENO",
        "  echo 'leading blanks kept';  ",
    ]
    .iter()
    .enumerate()
    {
        let cold = run_tool(&ws, "workspace-write", "shell_exec", json!({ "command": command }), &[]);
        let warm = call_warm(&format!("c{i}"), command);
        assert_eq!(warm, cold.json, "warm and cold `bash -lc` differ for {command:?}");
    }
    // A syntax error has the same exit status (the message says `eval` instead of `-c`).
    let cold = run_tool(&ws, "workspace-write", "shell_exec", json!({"command": "if then"}), &[]);
    let warm = call_warm("syntax", "if then");
    assert_eq!(warm["payload"]["exit_code"], cold.json["payload"]["exit_code"]);
    assert_eq!(warm["payload"]["exit_code"], 2);
    // NUL cannot reach a shell either way.
    let nul = call_warm("nul", "echo a\u{0}rm -rf .");
    assert_eq!(nul["code"], "invalid_params", "{nul}");
}

#[test]
fn a_warm_network_worker_keeps_its_pasta_only_while_it_waits() {
    let uid = test_uid("sup-net-warm");
    let sup = Supervisor::start(&[("alice", uid)], json!({"warm_workers_per_plan": 1, "warm_ttl_ms": 1000}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let interfaces = "grep -c ':' /proc/net/dev";
    let call = ToolRequest {
        profile: SandboxProfile::WorkspaceWriteNetwork,
        ..request("n1", "alice", ws.path(), "shell_exec", json!({ "command": interfaces }))
    };
    send(&mut conn, &call);
    let (_, result) = collect(&mut conn, "n1");
    let count: u32 = result["payload"]["stdout"].as_str().unwrap_or_default().trim().parse().unwrap_or(0);
    assert!(count >= 2, "loopback and pasta's interface in the worker's own namespace: {result}");
    // Orphans are re-parented to this process, so a pasta whose worker ended is still counted.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pastas_under(me) != 1 {
        assert!(Instant::now() < deadline, "the warm network worker has no pasta");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Past its time-to-live the warm worker is ended, and its pasta with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pastas_under(me) != 0 {
        assert!(Instant::now() < deadline, "pasta outlived its expired warm worker");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pasta processes descending from `root`.
fn pastas_under(root: u32) -> usize {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.split(|b| *b == 0).next().is_some_and(|argv0| argv0.ends_with(b"pasta"))
        })
        .filter(|pid| {
            let mut at = *pid;
            while let Some(parent) = parent_of(at) {
                if parent == root {
                    return true;
                }
                if parent <= 1 {
                    return false;
                }
                at = parent;
            }
            false
        })
        .count()
}

/// The parent pid of `pid`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(1)?.parse().ok()
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

/// Waits until `uid` has a process that is PID 1 of a worker (its parent, the relay, is a
/// child of a fork server), and returns that fork server's pid.
fn fork_server_of(uid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for pid in processes_of(uid) {
            let server = parent_of(pid as u32).and_then(parent_of);
            if let Some(server) = server.filter(|s| cmdline(*s).ends_with("spiderweb-worker fork-server ")) {
                return server;
            }
        }
        assert!(Instant::now() < deadline, "no worker of uid {uid} forked by a fork server");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_tenant_has_its_own_fork_server_and_none_outlives_the_supervisor() {
    let (alice, bob) = (test_uid("sup-fork-a"), test_uid("sup-fork-b"));
    let mut sup = Supervisor::start(&[("alice", alice), ("bob", bob)], json!({"warm_workers_per_plan": 1}));
    let supervisor = sup.child.id();
    let mut conn = sup.connect();
    let (ws_a, ws_b) = (Workspace::new(alice), Workspace::new(bob));
    for (id, tenant, ws) in [("a", "alice", &ws_a), ("b", "bob", &ws_b)] {
        send(&mut conn, &request(id, tenant, ws.path(), "shell_exec", json!({"command": "echo $PPID"})));
        let (_, result) = collect(&mut conn, id);
        assert_eq!(result["payload"]["stdout"], "1\n", "the shell's parent is the worker, PID 1 of its own namespace");
    }
    // Each call leaves a warm worker of its tenant waiting, forked by that tenant's server.
    let (server_a, server_b) = (fork_server_of(alice), fork_server_of(bob));
    assert_ne!(server_a, server_b, "workers of two tenants never come from one fork server (shared layout)");
    for server in [server_a, server_b] {
        assert_eq!(parent_of(server), Some(supervisor), "fork servers are the supervisor's children");
        assert_eq!(processes_of_uid_of(server), Some(0), "the fork server keeps the supervisor's uid, not a tenant's");
    }
    // SIGKILL: nothing of the supervisor gets to clean up; the kernel's parent-death signals do.
    sup.child.kill().unwrap();
    sup.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Exited processes count as gone: their new parent (this test process, once another test
    // has made it a subreaper) may not reap them before the test binary exits.
    let running = |pid: &i32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    };
    let left = || {
        let mut left = processes_of(alice);
        left.extend(processes_of(bob));
        left.extend([server_a as i32, server_b as i32]);
        left.into_iter().filter(running).collect::<Vec<_>>()
    };
    while !left().is_empty() {
        assert!(Instant::now() < deadline, "outlived the supervisor: {}", describe(&left()));
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn processes_of_uid_of(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

/// Every network namespace (`net:[inode]`) a host process is in or holds a descriptor of.
fn network_namespaces() -> Vec<String> {
    let mut held = Vec::new();
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        if process.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        held.extend(std::fs::read_link(process.path().join("ns/net")).ok());
        for fd in std::fs::read_dir(process.path().join("fd")).into_iter().flatten().flatten() {
            held.extend(std::fs::read_link(fd.path()).ok().filter(|l| l.to_string_lossy().starts_with("net:[")));
        }
    }
    held.into_iter().map(|link| link.display().to_string()).collect()
}

#[test]
fn every_call_has_a_network_namespace_of_its_own_that_ends_with_it() {
    let uid = test_uid("sup-netns");
    // No warm worker: the namespace of each call must be gone once its result is in.
    let sup = Supervisor::start(&[("alice", uid)], json!({"warm_workers_per_plan": 0}));
    let ws = Workspace::new(uid);
    let mut conn = sup.connect();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    for id in ["1", "2", "3"] {
        let cmd = "readlink /proc/self/ns/net; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '";
        send(&mut conn, &request(id, "alice", ws.path(), "shell_exec", json!({ "command": cmd })));
        let (_, result) = collect(&mut conn, id);
        let stdout = result["payload"]["stdout"].as_str().unwrap_or_else(|| panic!("{result}")).to_owned();
        let mut lines = stdout.lines();
        let namespace = lines.next().unwrap().to_owned();
        assert_ne!(namespace, host, "a worker never shares the host's network namespace");
        assert_eq!(lines.collect::<Vec<_>>(), ["lo"], "only loopback in the worker's namespace");
        // Gone before the next call starts: no process is in it or holds it, so no later
        // worker can be handed it (the kernel may recycle its inode number, not the namespace).
        let deadline = Instant::now() + Duration::from_secs(10);
        while network_namespaces().contains(&namespace) {
            assert!(Instant::now() < deadline, "call {id}'s network namespace outlived it");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
