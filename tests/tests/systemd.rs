//! The gateway as a systemd service: socket activation (`LISTEN_FDS`), readiness, stopping
//! and watchdog notifications (`NOTIFY_SOCKET`), and journald priority prefixes.
//!
//! systemd itself is not PID 1 here, so the service manager's side is played by real
//! parts: `systemd-socket-activate` (systemd's own tool) passes the listening socket, and a
//! Unix datagram socket owned by the test receives the notifications exactly as systemd's
//! would.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spiderweb_tests::{Gateway, base_config, gateway_bin};

const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 GET with `Connection: close`; returns the whole response.
fn http_get(port: u16, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            // systemd-socket-activate may not be listening yet.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to the activated socket: {e}"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_on_the_socket_the_service_manager_passes() {
    assert!(
        std::path::Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing: install Debian's `systemd` package (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(SOCKET_ACTIVATE)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=http")
        .arg(gateway_bin())
        .args(["--bind", "127.0.0.1", "--port", "0", "--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--config"])
        .arg(dir.path().join("absent-config.json"))
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn systemd-socket-activate");
    // systemd-socket-activate starts the service on the first connection, like a .socket unit.
    let response = http_get(port, "/readyz");
    assert!(response.starts_with("HTTP/1.1 200"), "GET /readyz through the passed socket: {response}");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(
        first.trim_end(),
        format!("spiderweb listening on ws://127.0.0.1:{port}/"),
        "the passed socket wins over --port 0"
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("socket passed by the service manager"), "{stderr}");
}

#[test]
fn a_passed_socket_of_the_wrong_kind_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A datagram socket where the gateway expects a TCP listener.
    let mut child = Command::new(SOCKET_ACTIVATE)
        .arg("--datagram")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--fdname=http")
        .arg(gateway_bin())
        .args(["--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--config"])
        .arg(dir.path().join("absent-config.json"))
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn systemd-socket-activate");
    let waker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        // The first datagram starts the service; until systemd-socket-activate listens, they are lost.
        let _ = waker.send_to(b"wake", ("127.0.0.1", port));
        assert!(Instant::now() < deadline, "the gateway kept running on a datagram socket");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("\"http\"") && stderr.contains("listening TCP socket"), "{stderr}");
}

fn recv_until(sock: &UnixDatagram, wanted: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == wanted) {
                    return msg;
                }
                seen.push(msg);
            }
            Err(_) => break,
        }
    }
    panic!("no {wanted:?} notification within {within:?}; got {seen:?}");
}

#[tokio::test]
async fn notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let mut gw = Gateway::new(base_config());
    gw.env("NOTIFY_SOCKET", socket_path.to_str().unwrap());
    gw.env("WATCHDOG_USEC", "200000");
    gw.launch();
    let ready = recv_until(&sock, "READY=1", Duration::from_secs(5));
    assert!(ready.contains(&format!("STATUS=serving on ws://127.0.0.1:{}/", gw.port())), "{ready}");
    // Two keep-alives within a watchdog period's worth of time, at half the period each.
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    let mut c = gw.admin().await;
    c.ping().await;
    gw.sigterm();
    assert_eq!(c.expect_close().await, Some(1001));
    let stopping = recv_until(&sock, "STOPPING=1", Duration::from_secs(5));
    assert!(stopping.contains("STATUS="), "{stopping}");
    let status = gw.wait_exit(Duration::from_secs(15)).await.expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// Under journald (stderr is the stream `JOURNAL_STREAM` names) each line carries its
/// syslog priority, so `journalctl -p warning` finds the warnings.
#[tokio::test]
async fn journald_lines_carry_their_priority() {
    let mut config = base_config();
    config["server"]["no_such_key"] = serde_json::json!(1);
    let mut gw = Gateway::new(config);
    std::fs::write(gw.stderr_path(), b"").unwrap();
    let meta = std::fs::metadata(gw.stderr_path()).unwrap();
    gw.env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    gw.launch();
    let mut c = gw.admin().await;
    c.ping().await;
    let log = gw.stderr_contents();
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("=====")).collect();
    assert!(lines.iter().any(|l| l.starts_with("<4>") && l.contains("no_such_key")), "warning at priority 4: {log}");
    assert!(lines.iter().any(|l| l.starts_with("<6>")), "info at priority 6: {log}");
    assert!(lines.iter().all(|l| l.starts_with('<')), "every line is prefixed: {log}");
}
