//! `spiderweb up`: three real daemons as separate processes, a private runtime directory,
//! readiness, restarts after a crash, and a clean stop (no process and no directory left).

mod up_stack;

use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use spiderweb_tests::gateway_bin;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use up_stack::{UpStack, alive, signal_pid, wait_gone};

const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The gateway behind `url` answers `control.version` to the admin token from `state_dir`.
async fn assert_gateway_answers(url: &str, state_dir: &Path) {
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(state_dir.join("auth_tokens.json")).unwrap()).unwrap();
    let mut request = url.into_client_request().unwrap();
    let bearer = format!("Bearer {}", tokens["admin_token"].as_str().unwrap());
    request.headers_mut().insert("authorization", bearer.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("the gateway accepts the upgrade");
    let version =
        json!({"channel": "control", "type": "control.version", "id": "v1", "payload": {"protocol": "unified-v2"}});
    ws.send(Message::text(version.to_string())).await.unwrap();
    let reply =
        tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a reply in time").unwrap().unwrap();
    let reply: Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["type"], json!("control.version_ack"), "{reply}");
}

fn exe_name(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn assert_socket(path: &Path) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(meta.file_type().is_socket(), "{} is a socket", path.display());
}

/// `X` from "<name> is ready again (pid X)".
fn restarted_pid(stderr: &str, name: &str) -> Option<u32> {
    let marker = format!("{name} is ready again (pid ");
    let rest = &stderr[stderr.find(&marker)? + marker.len()..];
    rest.split(')').next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_three_daemons_in_a_private_runtime_dir_and_sigterm_stops_them_all() {
    let mut stack = UpStack::start(&["--demo"]);
    let [broker, worker, gateway] = stack.pids;
    assert!(
        broker != worker && worker != gateway && broker != gateway && broker != 0,
        "three processes: {:?}",
        stack.pids
    );
    assert_eq!(
        [exe_name(broker), exe_name(worker), exe_name(gateway)],
        ["spiderweb-broker", "spiderweb-worker", "spiderweb"],
        "each daemon is its own binary"
    );
    let mode = std::fs::metadata(&stack.runtime_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the runtime dir is private");
    assert!(stack.runtime_dir.starts_with(stack.home().parent().unwrap().join("run")), "under $XDG_RUNTIME_DIR");
    assert_socket(&stack.runtime_dir.join("broker.sock"));
    assert_socket(&stack.runtime_dir.join("worker.sock"));
    assert!(stack.banner_line("provider:").contains("demo provider"), "{:?}", stack.banner);
    assert!(stack.banner_line("tokens:").contains(&stack.state_dir().display().to_string()), "{:?}", stack.banner);
    assert!(stack.banner.last().unwrap().contains("spiderweb chat"), "it says what to run next: {:?}", stack.banner);
    assert!(
        stack.state_dir().join("workspaces/system/WELCOME.md").is_file(),
        "the default project's workspace is seeded"
    );
    assert_gateway_answers(&stack.url, &stack.state_dir()).await;
    let environ = |pid: u32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let holds_key =
        |pid: u32| environ(pid).windows(up_stack::FAKE_KEY.len()).any(|w| w == up_stack::FAKE_KEY.as_bytes());
    assert!(holds_key(broker), "the broker inherits the user's provider keys");
    assert!(!holds_key(gateway) && !holds_key(worker), "no other daemon ever holds a key");

    stack.signal(libc::SIGTERM);
    let status = stack.wait_exit(STOP_TIMEOUT);
    assert!(status.success(), "up exits 0 on SIGTERM: {status:?}\n{}", stack.stderr());
    assert_eq!(wait_gone(&stack.pids, Duration::from_secs(5)), Vec::<u32>::new(), "no daemon is left");
    assert!(!stack.runtime_dir.exists(), "the runtime dir is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_restarts_a_daemon_killed_with_sigkill_and_sigint_stops_the_restarted_one_too() {
    let mut stack = UpStack::start(&["--demo"]);
    let [_, worker, gateway] = stack.pids;
    signal_pid(worker, libc::SIGKILL);
    let stderr = stack.wait_stderr("the worker's restart", Duration::from_secs(30), |s| {
        restarted_pid(s, "spiderweb-worker").is_some()
    });
    assert!(
        stderr.contains(&format!("spiderweb-worker (pid {worker}) exited: signal 9 (SIGKILL); restarting")),
        "the crash is logged with its status:\n{stderr}"
    );
    let new_worker = restarted_pid(&stderr, "spiderweb-worker").unwrap();
    stack.track(new_worker);
    assert!(new_worker != worker && alive(new_worker), "a new worker supervisor runs");
    assert_eq!(exe_name(new_worker), "spiderweb-worker");
    assert_socket(&stack.runtime_dir.join("worker.sock"));
    std::os::unix::net::UnixStream::connect(stack.runtime_dir.join("worker.sock")).expect("the new supervisor serves");

    // The gateway comes back on the same address, so clients can reconnect.
    signal_pid(gateway, libc::SIGKILL);
    let stderr = stack
        .wait_stderr("the gateway's restart", Duration::from_secs(30), |s| restarted_pid(s, "spiderweb").is_some());
    let new_gateway = restarted_pid(&stderr, "spiderweb").unwrap();
    stack.track(new_gateway);
    assert_ne!(new_gateway, gateway);
    assert_gateway_answers(&stack.url, &stack.state_dir()).await;

    stack.signal(libc::SIGINT);
    let status = stack.wait_exit(STOP_TIMEOUT);
    assert!(status.success(), "up exits 0 on Ctrl-C: {status:?}\n{}", stack.stderr());
    let everyone = [stack.pids[0], new_worker, new_gateway];
    assert_eq!(wait_gone(&everyone, Duration::from_secs(5)), Vec::<u32>::new(), "no daemon is left");
    assert!(!stack.runtime_dir.exists(), "the runtime dir is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_uses_a_local_openai_compatible_server_when_one_answers_else_the_demo() {
    // Any server answering GET /v1/models will do; the demo provider is one.
    let local = spiderweb_gateway::cli::demo::DemoProvider::start().await.unwrap();
    let url = local.base_url();
    let stack = tokio::task::spawn_blocking(move || UpStack::start(&["--local-provider-url", &url])).await.unwrap();
    let line = stack.banner_line("provider:");
    assert!(line.contains("openai-compatible / spiderweb-demo") && line.contains(&local.base_url()), "{line}");
    let broker: Value =
        serde_json::from_str(&std::fs::read_to_string(stack.runtime_dir.join("broker.json")).unwrap()).unwrap();
    assert_eq!(broker["providers"]["local"], json!({"kind": "openai-compatible", "base_url": local.base_url()}));
    let gateway: Value =
        serde_json::from_str(&std::fs::read_to_string(stack.runtime_dir.join("gateway.json")).unwrap()).unwrap();
    assert_eq!(gateway["provider"]["broker_provider"], json!("local"), "{gateway}");
    drop(stack);

    let nothing = format!("http://127.0.0.1:{}/v1", up_stack::free_port());
    let probe = nothing.clone();
    let stack = tokio::task::spawn_blocking(move || UpStack::start(&["--local-provider-url", &probe])).await.unwrap();
    let line = stack.banner_line("provider:");
    assert!(line.contains("demo provider") && line.contains(&nothing), "it says why: {line}");
    let broker: Value =
        serde_json::from_str(&std::fs::read_to_string(stack.runtime_dir.join("broker.json")).unwrap()).unwrap();
    let demo_url = broker["providers"]["demo"]["base_url"].as_str().expect("the demo is registered with the broker");
    assert!(demo_url.starts_with("http://127.0.0.1:") && demo_url.ends_with("/v1"), "loopback only: {demo_url}");
}

/// Runs `spiderweb up` expecting it to fail; returns its stderr.
fn up_failure(bin: &Path, home: &Path, run: &Path, path_env: &str) -> String {
    let output = Command::new(bin)
        .args(["up", "--demo", "--port", &up_stack::free_port().to_string()])
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", run)
        .env("PATH", path_env)
        .env_remove("SPIDERWEB_CONFIG")
        .env_remove("SPIDERWEB_BROKER_CONFIG")
        .env_remove("XDG_STATE_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "up fails with exit code 1: {output:?}");
    assert!(output.stdout.is_empty(), "no banner: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn up_refuses_clearly_without_its_sibling_binaries_or_with_a_broken_daemon_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, run) = (tmp.path().join("home"), tmp.path().join("run"));
    std::fs::create_dir_all(home.join(".config/spiderweb")).unwrap();
    std::fs::create_dir(&run).unwrap();

    let lonely = tmp.path().join("lonely");
    std::fs::create_dir(&lonely).unwrap();
    std::fs::copy(gateway_bin(), lonely.join("spiderweb")).unwrap();
    let stderr = up_failure(&lonely.join("spiderweb"), &home, &run, "/nonexistent");
    assert!(stderr.contains("cannot find spiderweb-broker"), "{stderr}");

    // A daemon that exits before it is ready stops `up` (restarting would not help).
    std::fs::write(home.join(".config/spiderweb/broker.json"), r#"{"limits": {"max_connections": "lots"}}"#).unwrap();
    let stderr = up_failure(&gateway_bin(), &home, &run, "/usr/bin:/bin");
    assert!(stderr.contains("spiderweb-broker exited before it was ready (exit status 2)"), "{stderr}");
    assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0, "no runtime dir is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_gives_up_on_a_crash_loop_with_a_clear_message_and_cleans_up() {
    let mut stack = UpStack::start(&["--demo"]);
    let mut broker = stack.pids[0];
    // Each kill lands on a broker that is serving, as a real crash loop would.
    for restart in 1..=5 {
        signal_pid(broker, libc::SIGKILL);
        let stderr = stack.wait_stderr("the broker's restart", Duration::from_secs(30), |s| {
            s.matches("spiderweb-broker is ready again").count() == restart
        });
        broker = stderr
            .rsplit("spiderweb-broker is ready again (pid ")
            .next()
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap();
        stack.track(broker);
    }
    signal_pid(broker, libc::SIGKILL);
    let status = stack.wait_exit(STOP_TIMEOUT);
    let stderr = stack.stderr();
    assert_eq!(status.code(), Some(1), "a crash loop ends up with exit code 1:\n{stderr}");
    assert!(stderr.contains("spiderweb-broker keeps crashing (5 restarts within 60 s"), "{stderr}");
    let [_, worker, gateway] = stack.pids;
    assert_eq!(wait_gone(&[worker, gateway], Duration::from_secs(5)), Vec::<u32>::new(), "the others are stopped");
    assert!(!stack.runtime_dir.exists(), "the runtime dir is removed");
}
