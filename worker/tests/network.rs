//! The `workspace-write+network` profile: outbound TCP to a non-loopback address works, the
//! host's loopback and the host's own addresses do not, DNS behaves as on the host, and a
//! missing pasta is a refusal, never the host's network namespace.
//!
//! The non-loopback target is a TCP server in a network namespace this test makes, joined to
//! the host by a veth pair with addresses of its own (the machine has no internet). It needs
//! root, `ip` (iproute2), `nsenter`/`unshare` (util-linux), `python3` and pasta (`passt`).

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NETWORK: &str = "workspace-write+network";
const GREETING: &str = "hello-from-the-target";

/// A network namespace with a TCP server at `address:port`, reachable from the host through
/// a veth pair. Removed (with the pair) when dropped.
struct Target {
    holder: Child,
    server: Child,
    host_link: String,
    address: Ipv4Addr,
    port: u16,
}

fn must(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("cannot set up the test's target ({what}): {e}"));
    assert!(
        out.status.success(),
        "cannot set up the test's target ({what}): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Target {
    fn start() -> Target {
        require_root();
        // One /30 per test process, so parallel runs do not collide.
        let n = std::process::id() % 16_000;
        let (a, b) = (10u8, 201u8);
        let base = (n * 4) as u16;
        let host_ip = Ipv4Addr::new(a, b, (base >> 8) as u8, (base & 0xff) as u8 + 1);
        let address = Ipv4Addr::new(a, b, (base >> 8) as u8, (base & 0xff) as u8 + 2);
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("cannot set up the test's target: `unshare` (util-linux) is required");
        let pid = holder.id().to_string();
        // Wait until `unshare` has exec'd sleep in its new namespace.
        let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns == host_ns) {
            assert!(Instant::now() < deadline, "cannot set up the test's target: unshare --net did not take effect");
            std::thread::sleep(Duration::from_millis(5));
        }
        let host_link = format!("swt{}", std::process::id());
        let mut target = Target { holder, server: Command::new("true").spawn().unwrap(), host_link, address, port: 0 };
        let link = target.host_link.clone();
        must(
            Command::new("ip").args(["link", "add", &link, "type", "veth", "peer", "name", "eth9", "netns", &pid]),
            "ip link add veth (iproute2 is required)",
        );
        must(Command::new("ip").args(["addr", "add", &format!("{host_ip}/30"), "dev", &link]), "ip addr add");
        must(Command::new("ip").args(["link", "set", &link, "up"]), "ip link set up");
        let inside = |args: &[&str]| {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid, "-n", "--"]).args(args);
            c
        };
        must(&mut inside(&["ip", "addr", "add", &format!("{address}/30"), "dev", "eth9"]), "address in the target");
        must(&mut inside(&["ip", "link", "set", "eth9", "up"]), "link up in the target");
        must(&mut inside(&["ip", "link", "set", "lo", "up"]), "loopback up in the target");
        let server = format!(
            "import socket\ns = socket.socket()\ns.bind(('{address}', 0))\ns.listen(8)\nprint(s.getsockname()[1], flush=True)\n\
             while True:\n    c, _ = s.accept()\n    c.sendall(b'{GREETING}\\n')\n    c.close()\n"
        );
        let mut server =
            inside(&["python3", "-c", &server]).stdout(Stdio::piped()).spawn().expect("python3 is required");
        let mut port = String::new();
        let mut stdout = server.stdout.take().unwrap();
        let mut byte = [0u8];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            port.push(byte[0] as char);
        }
        target.server = server;
        target.port =
            port.trim().parse().unwrap_or_else(|_| panic!("cannot set up the test's target: no port ({port:?})"));
        // The target must answer from the host before the sandbox's answer means anything.
        let mut from_host = String::new();
        std::net::TcpStream::connect((target.address, target.port))
            .and_then(|mut s| s.read_to_string(&mut from_host))
            .unwrap_or_else(|e| panic!("cannot set up the test's target: not reachable from the host: {e}"));
        assert!(from_host.contains(GREETING), "cannot set up the test's target: {from_host:?}");
        target
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).output();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The host's first global IPv4 address (not loopback), if any.
fn host_address() -> Option<Ipv4Addr> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
}

/// A short Python client printing CONNECTED or the error, so one shell call probes many targets.
fn connect_script(targets: &[(String, u16)]) -> String {
    targets
        .iter()
        .map(|(host, port)| {
            format!(
                "python3 -c \"import socket\ntry:\n    s = socket.create_connection(('{host}', {port}), timeout=3); print('CONNECTED {host}', s.recv(64).decode().strip())\nexcept Exception as e:\n    print('FAILED {host}', e)\"",
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn the_network_profile_reaches_other_hosts_but_not_the_hosts_loopback() {
    let target = Target::start();
    let ws = Workspace::new(test_uid("network-profile"));
    // Host services a tool must not reach: one on loopback, one on every address.
    let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    let wildcard = TcpListener::bind("0.0.0.0:0").unwrap();
    let loopback6 = TcpListener::bind("[::1]:0").expect("IPv6 loopback on the host");
    for l in [&loopback, &wildcard, &loopback6] {
        l.set_nonblocking(true).unwrap();
    }
    let mut targets = vec![
        (target.address.to_string(), target.port),
        ("127.0.0.1".to_owned(), loopback.local_addr().unwrap().port()),
        ("127.0.0.1".to_owned(), wildcard.local_addr().unwrap().port()),
        ("::1".to_owned(), loopback6.local_addr().unwrap().port()),
    ];
    let host = host_address();
    if let Some(host) = host {
        targets.push((host.to_string(), wildcard.local_addr().unwrap().port()));
    }
    let out = shell(&ws, NETWORK, &connect_script(&targets));
    let text = out.shell_text();
    assert!(
        text.contains(&format!("CONNECTED {} {GREETING}", target.address)),
        "outbound TCP to a non-loopback address must work in the network profile: {text}"
    );
    assert!(!text.contains("CONNECTED 127.0.0.1"), "the host's loopback was reachable: {text}");
    assert!(!text.contains("CONNECTED ::1"), "the host's IPv6 loopback was reachable: {text}");
    if let Some(host) = host {
        assert!(!text.contains(&format!("CONNECTED {host}")), "the host's own address was reachable: {text}");
    }
    for l in [&loopback, &wildcard, &loopback6] {
        assert!(l.accept().is_err(), "a host listener accepted a connection from the sandbox: {text}");
    }
    // The profiles without network reach nothing, not even the target.
    let out = shell(&ws, "workspace-write", &connect_script(&targets[..1]));
    assert!(out.shell_text().contains("FAILED"), "workspace-write reached the network: {}", out.shell_text());
}

#[test]
fn dns_in_the_network_profile_answers_as_on_the_host() {
    let ws = Workspace::new(test_uid("network-dns"));
    let host = Command::new("getent").args(["hosts", "deb.debian.org"]).output().expect("getent (libc-bin)");
    let out = shell(&ws, NETWORK, "getent hosts deb.debian.org && echo RESOLVED");
    let resolved = out.shell_text().contains("RESOLVED");
    assert_eq!(
        resolved,
        host.status.success(),
        "the host {} deb.debian.org, the sandbox {}: {}",
        if host.status.success() { "resolves" } else { "does not resolve" },
        if resolved { "does" } else { "does not" },
        out.shell_text()
    );
    let out = shell(&ws, "workspace-write", "getent hosts deb.debian.org && echo RESOLVED");
    assert!(!out.shell_text().contains("RESOLVED"), "DNS without the network profile: {}", out.shell_text());
}

#[test]
fn without_pasta_the_network_profile_refuses_instead_of_sharing_the_host_network() {
    let ws = Workspace::new(test_uid("network-no-pasta"));
    let empty = tempfile::tempdir().unwrap();
    let out = run_tool_with(&ws, NETWORK, "shell_exec", serde_json::json!({"command": "echo RAN"}), &[], |cmd| {
        cmd.env("PATH", empty.path());
    });
    out.failed("sandbox_unavailable");
    let message = out.json["message"].as_str().unwrap();
    assert!(message.contains("pasta") && message.contains("passt"), "the refusal names the package: {message}");
    // The profiles without network do not need it.
    let out =
        run_tool_with(&ws, "workspace-write", "shell_exec", serde_json::json!({"command": "echo RAN"}), &[], |cmd| {
            cmd.env("PATH", empty.path());
        });
    assert!(out.shell_text().contains("RAN"), "{}", out.json);
}

#[test]
fn pasta_does_not_outlive_its_worker() {
    let ws = Workspace::new(test_uid("network-lifetime"));
    // A pasta that outlived its relay would be re-parented to this process.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    for _ in 0..3 {
        let out = shell(&ws, NETWORK, "echo ok");
        assert!(out.shell_text().contains("ok"), "{}", out.json);
    }
    let me = std::process::id().to_string();
    // Other tests of this binary run their own helpers (children of this process as well);
    // only pasta and worker processes (running, or exited and unreaped) count.
    let ours = |pid: &i32| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        ["pasta", "passt", "spiderweb-worke"].contains(&comm.trim_end())
    };
    let orphans: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised command) is the parent pid.
            stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(1)) == Some(me.as_str())
        })
        .filter(ours)
        .collect();
    assert!(orphans.is_empty(), "processes outlived their workers: {}", describe(&orphans));
}
