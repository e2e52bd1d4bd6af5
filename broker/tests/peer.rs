//! `SO_PEERCRED` checks per operation, with a real client running as another uid (`nobody`),
//! the socket's permissions, and the broker's start-up refusals.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use common::*;
use serde_json::json;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, DEFAULT_MAX_FRAME_BYTES, ProviderRequest, read_reply};
use spiderweb_proto::frame::write_frame;

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the uid tests switch a client to `nobody` (65534) and need root; run the tests as root (CI does)"
    );
}

/// Forks a child that becomes `nobody`, sends `request` over the socket and reports the reply
/// (or the connection error) through a pipe.
fn as_nobody(socket: &std::path::Path, request: &BrokerRequest) -> String {
    let payload = serde_json::to_vec(request).unwrap();
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    // SAFETY: this test's process runs no other thread while forking (plain #[test], the broker
    // is a separate process), so the child may allocate; it only does socket I/O and exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let outcome = (|| -> Result<String, String> {
                nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(NOBODY)).map_err(|e| format!("setgid: {e}"))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(NOBODY)).map_err(|e| format!("setuid: {e}"))?;
                let mut stream =
                    std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
                let request: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                // A broker that refuses at connect may already have answered and closed, so a
                // failed write is not the outcome: its reply is still there to read.
                let _ = write_frame(&mut stream, &request, DEFAULT_MAX_FRAME_BYTES);
                match read_reply(&mut stream, DEFAULT_MAX_FRAME_BYTES) {
                    Ok(Some(Ok(reply))) => Ok(serde_json::to_string(&reply).unwrap()),
                    other => Err(format!("no reply: {other:?}")),
                }
            })();
            let text = outcome.unwrap_or_else(|e| format!("ERR {e}"));
            let mut file = std::fs::File::from(write_end);
            let _ = std::io::Write::write_all(&mut file, text.as_bytes());
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write_end);
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::fs::File::from(read_end), &mut text).unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
            text
        }
    }
}

fn provider_request_json(id: u64) -> BrokerRequest {
    BrokerRequest::ProviderRequest(ProviderRequest {
        id,
        provider: "openai".into(),
        method: "POST".into(),
        path: "/chat/completions".into(),
        headers: vec![],
        body: Default::default(),
    })
}

#[test]
fn a_uid_is_admitted_only_to_the_operations_its_class_allows() {
    require_root();
    let broker = Broker::start(BrokerSpec {
        world_traversable: true,
        config: json!({
            "socket": {"group": NOBODY},
            "access": {"provider_requests": ["self"], "credential_status": ["self", NOBODY], "key_admin": ["self"]}
        }),
        env: vec![("OPENAI_API_KEY".into(), "sk-peer-test-1".into())],
        ..Default::default()
    });
    let status = as_nobody(&broker.socket, &BrokerRequest::CredentialStatus { id: 3 });
    assert!(status.contains(r#""type":"credential_status","id":3"#), "nobody may read the status: {status}");
    assert!(!status.contains("sk-peer-test-1"));

    let refused = as_nobody(&broker.socket, &provider_request_json(4));
    assert!(
        refused.contains(r#""code":"forbidden""#) && refused.contains("uid 65534 may not use provider requests"),
        "{refused}"
    );

    let out = broker.config_cli().args(["config", "clear-key", "openai"]).uid(NOBODY).gid(NOBODY).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uid 65534 may not use key administration"), "{err}");
}

#[test]
fn a_uid_in_no_list_is_turned_away_at_connect() {
    require_root();
    let broker = Broker::start(BrokerSpec {
        world_traversable: true,
        config: json!({"socket": {"group": NOBODY}}),
        ..Default::default()
    });
    let refused = as_nobody(&broker.socket, &BrokerRequest::CredentialStatus { id: 1 });
    assert!(
        refused.contains(r#""code":"forbidden""#) && refused.contains("uid 65534 may not use this broker"),
        "{refused}"
    );
    assert!(broker.stderr().contains("peer_uid=65534"), "refusals are logged with the uid");
}

#[test]
fn the_socket_is_private_by_default_and_group_shared_when_configured() {
    let private = Broker::start(BrokerSpec::default());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&private.socket), 0o600);
    assert_eq!(mode(private.socket.parent().unwrap()), 0o700);

    require_root();
    let shared = Broker::start(BrokerSpec { config: json!({"socket": {"group": NOBODY}}), ..Default::default() });
    assert_eq!(mode(&shared.socket), 0o660);
    assert_eq!(mode(shared.socket.parent().unwrap()), 0o710);
    assert_eq!(std::fs::metadata(&shared.socket).unwrap().gid(), NOBODY);
}

#[test]
fn the_broker_is_non_dumpable() {
    require_root();
    // Run it as `nobody`: a dumpable process's /proc files belong to its own uid, a
    // non-dumpable one's to root, so ownership shows the prctl took effect.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let socket = home.join("run/broker.sock");
    let mut child = std::process::Command::new(BROKER)
        .arg("--config")
        .arg(home.join("none.json"))
        .arg("--socket")
        .arg(&socket)
        .env_clear()
        .env("HOME", &home)
        .uid(NOBODY)
        .gid(NOBODY)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(child.try_wait().unwrap().is_none(), "broker as nobody exited early");
        assert!(std::time::Instant::now() < deadline, "broker as nobody did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let owner = std::fs::metadata(format!("/proc/{}/mem", child.id())).unwrap().uid();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(owner, 0, "/proc/<pid>/mem of a non-dumpable process belongs to root");
}

#[test]
fn a_bad_config_stops_the_broker_naming_the_key_and_unknown_keys_are_warned() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.json");
    std::fs::write(&config, r#"{"limits":{"max_concurrent_upstream":0}}"#).unwrap();
    let out = std::process::Command::new(BROKER)
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s/broker.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_concurrent_upstream"), "{err}");

    let broker = Broker::start(BrokerSpec { config: json!({"limits": {"max_conections": 3}}), ..Default::default() });
    assert!(broker.stderr().contains("unknown config key limits.max_conections"), "{}", broker.stderr());
}

#[tokio::test]
async fn a_file_at_the_socket_path_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/broker.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    std::fs::write(&socket, "not a socket").unwrap();
    let out = std::process::Command::new(BROKER)
        .arg("--config")
        .arg(dir.path().join("none.json"))
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
}

#[tokio::test]
async fn sigterm_stops_the_broker_and_removes_its_socket() {
    let mut broker = Broker::start(BrokerSpec::default());
    let mut client = broker.client().await;
    assert!(matches!(
        client.call(BrokerRequest::CredentialStatus { id: 1 }).await.unwrap(),
        BrokerReply::CredentialStatus { .. }
    ));
    drop(client);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(broker.pid() as i32), nix::sys::signal::SIGTERM).unwrap();
    let status = broker.wait_exit(std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(!broker.socket.exists());
}

#[tokio::test]
async fn a_socket_passed_by_systemd_is_used_as_is() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    let unused = dir.path().join("unused/broker.sock");
    let mut cmd = std::process::Command::new("sh");
    // As systemd does: the socket on fd 3, LISTEN_FDS=1 and LISTEN_PID naming the service's pid
    // (`exec` keeps the shell's pid).
    cmd.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#, BROKER, "--config"])
        .arg(dir.path().join("none.json"))
        .arg("--socket")
        .arg(&unused)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut client = None;
    for _ in 0..500 {
        if let Ok(c) = spiderweb_client::broker::BrokerClient::connect(&path).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut client = client.expect("the broker answers on the activated socket");
    let reply = client.call(BrokerRequest::CredentialStatus { id: 9 }).await.unwrap();
    assert!(matches!(reply, BrokerReply::CredentialStatus { id: 9, .. }), "{reply:?}");
    assert!(!unused.exists(), "no socket of its own is created");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Under systemd (`Type=notify`) the broker says when it serves and when it stops; a test
/// datagram socket stands in for the service manager's.
#[test]
fn tells_the_service_manager_when_it_serves_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    manager.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut broker = Broker::start(BrokerSpec {
        env: vec![("NOTIFY_SOCKET".into(), notify_path.to_str().unwrap().into())],
        ..Default::default()
    });
    let mut buf = [0u8; 1024];
    let n = manager.recv(&mut buf).expect("READY=1 within 10 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(broker.pid() as i32), nix::sys::signal::SIGTERM).unwrap();
    let n = manager.recv(&mut buf).expect("STOPPING=1 within 10 s");
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(broker.wait_exit(std::time::Duration::from_secs(10)).success(), "{}", broker.stderr());
}
