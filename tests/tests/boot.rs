//! The Debian package, installed into a Debian root and booted with a real systemd
//! (`systemd-nspawn --boot`): the operator's path from `dpkg -i` to a running stack.
//!
//! What it proves, one step each (see [`boot_the_package_and_use_every_daemon`]):
//! 1. after boot `spiderweb.target` is active with its sockets listening and no daemon
//!    running yet (socket activation, nothing started early);
//! 2. the gateway starts on the first connection to its metrics socket and answers a
//!    WebSocket `control.version` + `control.connect` with the token it created; its log
//!    lines reach journald with their priority;
//! 3. the broker starts on the first connection and sees the keys given with
//!    `LoadCredential=` and `LoadCredentialEncrypted=` (source `systemd-credential`), reports
//!    a provider without one as missing, and no key appears in any output or the journal;
//!    it then makes a provider request (to a local stand-in for the OpenAI API) carrying the
//!    encrypted credential's key, from inside its private root and system-call filter;
//! 4. the worker supervisor starts on the first connection and runs a tool in a confined
//!    worker as the tenant's uid, under its hardened unit;
//! 5. a chat through the gateway: the model (a local provider server the broker reaches)
//!    asks for a file of the project's workspace, a confined worker reads it, the model
//!    answers;
//! 6. an fs node instance starts on the first connection, reads its token credential and
//!    serves its export to the mount client;
//! 7. a paired node (`spiderweb-fs-node-paired@`, daemon mode) given an invite and only the
//!    **user** token as credentials pairs, keeps its lease fresh, advertises its catalog, and
//!    serves a file of its export through the gateway's relay while its unit stays active;
//!    a second instance without an invite file still starts and pairs by request (with the
//!    admin token, which request mode needs);
//! 8. a malformed config makes the unit fail with the key named in the journal;
//! 9. `dpkg --purge` stops everything and removes the binaries and generated configs.
//!
//! Needs root, `debootstrap`, `systemd-nspawn` (Debian's `systemd-container`), `cargo-deb`
//! (unless `SPIDERWEB_DEB` names a built package) and a reachable Debian mirror the first
//! time: the minimal root is cached in `/var/cache/spiderweb-boot-test/` and copied per run.
//! Anything missing fails the test saying what.

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use spiderweb_proto::broker::{BrokerReply, DEFAULT_MAX_FRAME_BYTES, read_reply};
use spiderweb_proto::frame::{read_frame, write_frame};
use spiderweb_proto::worker::{MAX_FRAME_BYTES, SupervisorReply, ToolOutcome, ToolRequest};
use spiderweb_tests::fake_provider::{FakeProvider, Format, Reply};
use spiderweb_tests::stack::{follow_job, of_type, send_prompt};
use spiderweb_tests::{Client, bin_dir};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

/// Where the pristine minimal Debian root is kept between runs.
const CACHE_DIR: &str = "/var/cache/spiderweb-boot-test";
const SUITE: &str = "bookworm";
/// Packages in the cached root besides minbase; the cache directory is named after them, so
/// changing this list builds a new one.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,ca-certificates";
/// The fake key handed to the broker; it must never show up anywhere.
const ANTHROPIC_KEY: &str = "sk-ant-boot-test-NEVER-PRINT-4f1c9e";
/// The key handed over encrypted (`LoadCredentialEncrypted=`); never shown either.
const OPENAI_KEY: &str = "sk-openai-boot-test-NEVER-PRINT-77ab02";
const FS_NODE_TOKEN: &str = "fs-node-boot-test-token";
/// The instance of `spiderweb-fs-node-paired@.service` the test pairs.
const PAIRED_UNIT: &str = "spiderweb-fs-node-paired@edge.service";
const TENANT_UID: u32 = 200_001;
/// How long systemd gets to reach `spiderweb.target`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Syscalls our services need that systemd-nspawn 252's own filter does not let through.
/// This widens the container, not the units: the units' filters still apply inside.
const NSPAWN_EXTRA_SYSCALLS: &str = "landlock_create_ruleset landlock_add_rule landlock_restrict_self seccomp";

fn require(ok: bool, what: &str) {
    assert!(ok, "the boot test cannot run: {what}");
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Debian mirror apt uses on this machine (debootstrap needs the same one).
fn debian_mirror() -> String {
    if let Ok(mirror) = std::env::var("SPIDERWEB_BOOT_MIRROR") {
        return mirror;
    }
    let mut sources = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        sources.extend(dir.flatten().map(|e| e.path()));
    }
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().map(str::trim) {
            let url = line.strip_prefix("URIs:").map(str::trim).or_else(|| {
                line.strip_prefix("deb ").and_then(|rest| rest.split_whitespace().find(|w| w.contains("://")))
            });
            if let Some(url) = url.and_then(|u| u.split_whitespace().next())
                && url.contains("debian")
                && !url.contains("security")
            {
                return url.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// The cached minimal root with systemd, built with debootstrap when missing. Built under a
/// lock into a scratch directory and renamed, so a failed or concurrent build never leaves a
/// half-made root behind.
fn base_root() -> PathBuf {
    let cache = Path::new(CACHE_DIR);
    let base = cache.join(format!("{SUITE}-minbase-{}", INCLUDE.replace(',', "-")));
    if base.join("usr/lib/systemd/systemd").exists() {
        return base;
    }
    require(
        Path::new("/usr/sbin/debootstrap").exists(),
        "/usr/sbin/debootstrap is missing (apt-get install debootstrap)",
    );
    std::fs::create_dir_all(cache).unwrap();
    let lock = std::fs::File::create(cache.join(".lock")).unwrap();
    // SAFETY: flock on a file we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) }, 0);
    if base.join("usr/lib/systemd/systemd").exists() {
        return base;
    }
    let scratch = cache.join(format!("{SUITE}-building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mirror = debian_mirror();
    eprintln!("boot test: building the cached Debian root with debootstrap from {mirror} (~2 min, once)");
    run(
        Command::new("/usr/sbin/debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&scratch)
            .arg(&mirror),
        "debootstrap",
    );
    std::fs::rename(&scratch, &base).unwrap();
    base
}

/// The package under test: `$SPIDERWEB_DEB`, or built from the binaries the tests use.
fn package(out_dir: &Path) -> PathBuf {
    if let Some(deb) = std::env::var_os("SPIDERWEB_DEB") {
        let deb = PathBuf::from(deb);
        require(deb.is_file(), &format!("SPIDERWEB_DEB={} does not exist", deb.display()));
        return deb;
    }
    let bins = bin_dir();
    let profile = match bins.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("cannot tell the build profile from {}", bins.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_cargo_deb = Command::new(&cargo).args(["deb", "--version"]).output().is_ok_and(|o| o.status.success());
    require(has_cargo_deb, "cargo-deb is missing (cargo install cargo-deb --locked; scripts/test does)");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    run(
        Command::new(&cargo)
            .args(["deb", "-p", "spiderweb-gateway", "--no-build", "--fast", "--profile", profile, "-o"])
            .arg(out_dir)
            .env("CARGO_TARGET_DIR", bins.parent().unwrap())
            .current_dir(workspace),
        "cargo deb",
    );
    std::fs::read_dir(out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("cargo deb produced no .deb")
}

/// Ports the booted system listens on (the container shares the host's network).
struct Ports {
    http: u16,
    metrics: u16,
    fs_node: u16,
    /// The local stand-in for the OpenAI API the broker is pointed at.
    upstream: u16,
    /// The base URL of the local provider server chats go to (provider `boot-llm`).
    llm_base_url: String,
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// What an operator does after `dpkg -i`, following README "Debian package": listeners on
/// free ports, a key as a credential, a tenant with a workspace, one fs node, the target
/// enabled.
fn configure(root: &Path, ports: &Ports) {
    let units = root.join("etc/systemd/system");
    let listen = |port: u16| format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n");
    write(&units.join("spiderweb-gateway.socket.d/port.conf"), &listen(ports.http), 0o644);
    write(&units.join("spiderweb-gateway-metrics.socket.d/port.conf"), &listen(ports.metrics), 0o644);
    write(&units.join("spiderweb-fs-node@boot.socket.d/port.conf"), &listen(ports.fs_node), 0o644);
    write(
        &units.join("spiderweb-broker.service.d/key.conf"),
        "[Service]\nLoadCredential=anthropic-api-key:/etc/spiderweb/credentials/anthropic-api-key\n\
         LoadCredentialEncrypted=openai-api-key:/etc/spiderweb/credentials/openai-api-key.cred\n",
        0o644,
    );
    write(&root.join("etc/spiderweb/credentials/anthropic-api-key"), &format!("{ANTHROPIC_KEY}\n"), 0o600);
    // Encrypted with the image's own host key, as an operator would on the server.
    let plain = root.join("etc/spiderweb/credentials/openai.txt");
    write(&plain, &format!("{OPENAI_KEY}\n"), 0o600);
    run(
        Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--pipe", "--directory"])
            .arg(root)
            .args(["systemd-creds", "encrypt", "--with-key=host", "--name=openai-api-key"])
            .args(["/etc/spiderweb/credentials/openai.txt", "/etc/spiderweb/credentials/openai-api-key.cred"]),
        "systemd-creds encrypt inside the root",
    );
    std::fs::remove_file(&plain).unwrap();
    let sealed = std::fs::read(root.join("etc/spiderweb/credentials/openai-api-key.cred")).unwrap();
    assert!(!String::from_utf8_lossy(&sealed).contains(OPENAI_KEY), "systemd-creds left the key readable");

    // The broker config the package wrote: root (this test) may also make provider requests,
    // and `openai` points at the local stand-in instead of api.openai.com.
    let broker_json = root.join("etc/spiderweb/broker.json");
    let mut broker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&broker_json).unwrap()).unwrap();
    broker["access"]["provider_requests"].as_array_mut().expect("postinst wrote provider_requests").push(0.into());
    broker["providers"] = serde_json::json!({
        "openai": {"base_url": format!("http://127.0.0.1:{}/v1", ports.upstream)},
        "boot-llm": {"kind": "openai-compatible", "base_url": ports.llm_base_url},
    });
    write(&broker_json, &serde_json::to_string_pretty(&broker).unwrap(), 0o644);

    // The gateway chats through the broker's `boot-llm`.
    let config_json = root.join("etc/spiderweb/config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_json).unwrap()).unwrap();
    config["provider"] =
        serde_json::json!({"name": "openai-compatible", "model": "boot-model", "broker_provider": "boot-llm"});
    write(&config_json, &serde_json::to_string_pretty(&config).unwrap(), 0o644);

    // The worker config the package wrote names the gateway's uid; root (this test, through
    // /proc/<pid>/root) is added, and one tenant.
    let worker_json = root.join("etc/spiderweb/worker.json");
    let mut worker: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&worker_json).unwrap()).unwrap();
    let gateway_uid = worker["allowed_uids"][0].as_u64().expect("postinst wrote the gateway's uid into worker.json");
    worker["allowed_uids"] = serde_json::json!([gateway_uid, 0]);
    // Tenant `system`: the project an admin's chats run in.
    worker["tenants"] = serde_json::json!({
        "boot": {"uid": TENANT_UID, "gid": TENANT_UID},
        "system": {"uid": TENANT_UID + 1, "gid": TENANT_UID + 1},
    });
    write(&worker_json, &serde_json::to_string_pretty(&worker).unwrap(), 0o644);
    for (project, uid, text) in [
        ("boot", TENANT_UID, "hello from the workspace\n"),
        ("system", TENANT_UID + 1, "notes of the system project\n"),
    ] {
        let workspace = root.join("srv/spiderweb/workspaces").join(project);
        write(&workspace.join("hello.txt"), text, 0o644);
        for path in [&workspace, &workspace.join("hello.txt")] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
        }
    }

    write(&root.join("srv/spiderweb/exports/boot/export.txt"), "hello from the export\n", 0o644);
    write(
        &root.join("etc/spiderweb/fs-node/boot.env"),
        "FS_NODE_ARGS=--export work=/srv/spiderweb/exports/boot:ro\n",
        0o644,
    );
    write(&root.join("etc/spiderweb/fs-node/boot.token"), &format!("{FS_NODE_TOKEN}\n"), 0o600);

    run(
        Command::new("systemctl").arg(format!("--root={}", root.display())).args([
            "enable",
            "spiderweb.target",
            "spiderweb-fs-node@boot.socket",
        ]),
        "systemctl enable",
    );
}

/// A booted container; powered off (or killed) when dropped.
struct Booted {
    nspawn: Child,
    /// Host pid of the container's PID 1.
    leader: u32,
    console: PathBuf,
    ports: Ports,
}

impl Booted {
    fn boot(root: &Path, console: PathBuf, ports: Ports) -> Booted {
        let mut nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--boot", "--console=read-only"])
            .arg(format!("--system-call-filter={NSPAWN_EXTRA_SYSCALLS}"))
            .arg("--directory")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&console).unwrap())
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&console).unwrap()))
            .spawn()
            .expect("systemd-nspawn (Debian's systemd-container) must be installed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            if let Some(pid) = container_leader(nspawn.id()) {
                break pid;
            }
            if let Some(status) = nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited ({status}) before the container booted:\n{}", tail(&console));
            }
            assert!(Instant::now() < deadline, "no container PID 1 after 30 s:\n{}", tail(&console));
            std::thread::sleep(Duration::from_millis(100));
        };
        Booted { nspawn, leader, console, ports }
    }

    /// Runs a command inside the container (all its namespaces, as root).
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.leader.to_string(), "--all", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("nsenter (util-linux) must be installed")
    }

    fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.exec(args).stdout).trim().to_owned()
    }

    fn state(&self, unit: &str) -> String {
        self.stdout(&["systemctl", "is-active", unit])
    }

    fn journal(&self, unit: Option<&str>) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-o", "cat"];
        if let Some(unit) = unit {
            args.extend(["-u", unit]);
        }
        self.stdout(&args)
    }

    /// Everything useful when a step fails.
    fn context(&self, unit: &str) -> String {
        format!(
            "--- systemctl status {unit} ---\n{}\n--- journal of {unit} ---\n{}\n--- console ---\n{}",
            self.stdout(&["systemctl", "status", "--no-pager", unit]),
            self.journal(Some(unit)),
            tail(&self.console)
        )
    }

    fn wait_state(&self, unit: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state(unit);
            if state == want {
                return;
            }
            assert!(Instant::now() < deadline, "{unit} is {state:?}, expected {want:?}\n{}", self.context(unit));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn assert_state(&self, unit: &str, want: &str, why: &str) {
        let state = self.state(unit);
        assert_eq!(state, want, "{unit}: {why}\n{}", self.context(unit));
    }

    /// A path inside the container, reachable from the host.
    fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.leader))
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.exec(&["systemctl", "poweroff"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.nspawn.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The host pid of the container's PID 1: a descendant of `nspawn` that is pid 1 in its own
/// PID namespace (`NSpid: <host pid> 1`).
fn container_leader(nspawn: u32) -> Option<u32> {
    let status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let field = |text: &str, name: &str| -> Vec<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().filter_map(|w| w.parse().ok()).collect())
            .unwrap_or_default()
    };
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some(text) = status(pid) else { continue };
        let nspid = field(&text, "NSpid:");
        if nspid.len() < 2 || nspid.last() != Some(&1) {
            continue;
        }
        // Walk up to nspawn (a few levels at most).
        let mut ancestor = pid;
        for _ in 0..8 {
            let Some(parent) = status(ancestor).and_then(|t| field(&t, "PPid:").first().copied()) else { break };
            if parent == nspawn {
                return Some(pid);
            }
            if parent <= 1 {
                break;
            }
            ancestor = parent;
        }
    }
    None
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// 1. The target is up; sockets listen; no daemon has started yet.
fn target_starts_with_only_the_sockets(c: &Booted) {
    c.wait_state("spiderweb.target", "active", BOOT_TIMEOUT);
    for socket in [
        "spiderweb-gateway.socket",
        "spiderweb-gateway-metrics.socket",
        "spiderweb-broker.socket",
        "spiderweb-worker.socket",
        "spiderweb-fs-node@boot.socket",
    ] {
        c.assert_state(socket, "active", "the target must bring up every socket");
    }
    for service in [
        "spiderweb-gateway.service",
        "spiderweb-broker.service",
        "spiderweb-worker.service",
        "spiderweb-fs-node@boot.service",
    ] {
        c.assert_state(service, "inactive", "nothing connected yet, so it must not run (socket activation)");
    }
}

/// 2. The gateway starts on the first connection and serves the WebSocket control plane.
fn gateway_activates_and_serves_a_handshake(c: &Booted) {
    let livez = http_get(c.ports.metrics, "/livez");
    assert!(
        livez.starts_with("HTTP/1.1 200") && livez.ends_with("ok"),
        "/livez: {livez}\n{}",
        c.context("spiderweb-gateway.service")
    );
    c.assert_state("spiderweb-gateway.service", "active", "Type=notify: active means READY=1 was sent");
    let tokens_path = c.path("/var/lib/spiderweb/auth_tokens.json");
    let tokens: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&tokens_path).unwrap_or_else(|e| panic!("{}: {e}", tokens_path.display())),
    )
    .unwrap();
    let token = tokens["admin_token"].as_str().expect("admin_token").to_owned();
    let port = c.ports.http;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let replies = runtime.block_on(async move {
        let mut request = format!("ws://127.0.0.1:{port}/").into_client_request().unwrap();
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket upgrade");
        let mut replies = Vec::new();
        for (id, ty, payload) in [
            ("1", "control.version", serde_json::json!({"protocol": "unified-v2"})),
            ("2", "control.connect", serde_json::json!({})),
        ] {
            let frame = serde_json::json!({"channel": "control", "type": ty, "id": id, "payload": payload});
            ws.send(Message::text(frame.to_string())).await.unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => {
                            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                            if v["id"] == id {
                                return v;
                            }
                        }
                        Some(Ok(_)) => {}
                        other => panic!("{ty}: connection ended: {other:?}"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{ty}: no reply in 10 s"));
            replies.push(reply);
        }
        replies
    });
    assert_eq!(replies[0]["type"], "control.version_ack", "{}", replies[0]);
    assert_eq!(replies[1]["type"], "control.connect_ack", "{}", replies[1]);
    assert_eq!(replies[1]["ok"], true, "{}", replies[1]);

    // journald got each line's priority: the token warning is at warning, start-up info is not.
    let warnings =
        c.stdout(&["journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u", "spiderweb-gateway.service"]);
    assert!(warnings.contains("created new admin and user tokens"), "warning missing at -p warning:\n{warnings}");
    assert!(!warnings.contains("serving on the socket passed"), "an info line was logged as a warning:\n{warnings}");
}

/// 3. The broker starts on the first connection and has the credential's key, never shown.
fn broker_activates_with_its_credential(c: &Booted) {
    c.assert_state("spiderweb-broker.service", "inactive", "nothing asked the broker anything yet");
    let out = c.exec(&["env", "SPIDERWEB_BROKER_SOCKET=/run/spiderweb/broker.sock", "spiderweb-config", "config"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "spiderweb-config config: {text}\n{}", c.context("spiderweb-broker.service"));
    let anthropic = text
        .lines()
        .find(|l| l.trim_start().starts_with("anthropic "))
        .unwrap_or_else(|| panic!("no anthropic line:\n{text}"));
    assert!(
        anthropic.contains("present (systemd-credential)"),
        "the credential did not reach the broker: {anthropic}\n{text}"
    );
    let openai = text.lines().find(|l| l.trim_start().starts_with("openai ")).unwrap();
    assert!(
        openai.contains("present (systemd-credential)"),
        "the encrypted credential did not reach the broker: {openai}"
    );
    let gemini = text.lines().find(|l| l.trim_start().starts_with("gemini ")).unwrap();
    assert!(gemini.contains("missing"), "a provider without a key must be reported missing: {gemini}");
    assert!(!text.contains(ANTHROPIC_KEY) && !text.contains(OPENAI_KEY), "a key was printed:\n{text}");
    c.assert_state("spiderweb-broker.service", "active", "the status request must have started it");
}

/// 3b. A provider request leaves the hardened broker with the encrypted credential's key.
fn broker_makes_a_provider_request(c: &Booted, upstream: std::net::TcpListener) {
    use std::io::{BufRead as _, Write as _};
    let answer = r#"{"id":"chatcmpl-boot","object":"chat.completion","choices":[]}"#;
    let server = std::thread::spawn(move || {
        let (stream, _) = upstream.accept().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push(line.trim().to_owned());
        }
        let length: usize = head
            .iter()
            .find_map(|h| h.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = reader.into_inner();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        (head, body)
    });
    let socket = c.path("/run/spiderweb/broker.sock");
    let mut stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    use base64::Engine as _;
    let request = serde_json::json!({
        "op": "provider_request", "id": 7, "provider": "openai", "method": "POST",
        "path": "/chat/completions", "headers": [["content-type", "application/json"]],
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    });
    write_frame(&mut stream, &request, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let mut status = None;
    let mut received = Vec::new();
    loop {
        match read_reply(&mut stream, DEFAULT_MAX_FRAME_BYTES) {
            Ok(Some(Ok(BrokerReply::ResponseHead { status: s, .. }))) => status = Some(s),
            Ok(Some(Ok(BrokerReply::BodyChunk { data, .. }))) => received.extend_from_slice(&data.0),
            Ok(Some(Ok(BrokerReply::End { .. }))) => break,
            other => panic!("broker: {other:?}\n{}", c.context("spiderweb-broker.service")),
        }
    }
    assert_eq!(status, Some(200));
    assert_eq!(String::from_utf8_lossy(&received), answer, "the upstream body must come back unchanged");
    let (head, sent) = server.join().unwrap();
    assert!(head[0].starts_with("POST /v1/chat/completions "), "upstream saw {head:?}");
    assert!(
        head.iter().any(|h| h.eq_ignore_ascii_case(&format!("authorization: Bearer {OPENAI_KEY}"))),
        "the broker must add the key from LoadCredentialEncrypted=: {:?}",
        head.iter().map(|h| h.split(':').next().unwrap()).collect::<Vec<_>>()
    );
    assert_eq!(sent, body.as_bytes());
}

/// 4. The worker supervisor starts on the first connection and runs a tool, confined, as
///    the tenant.
fn worker_activates_and_runs_a_tool(c: &Booted) {
    c.assert_state("spiderweb-worker.service", "inactive", "no tool call yet");
    let socket = c.path("/run/spiderweb/worker.sock");
    let mut stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = ToolRequest {
        request_id: "boot-1".into(),
        tenant: "boot".into(),
        session: "boot-session".into(),
        workspace: "/srv/spiderweb/workspaces/boot".into(),
        profile: Default::default(),
        tool: "shell_exec".into(),
        args: serde_json::json!({"command": "echo made > made.txt; cat hello.txt"}),
    };
    write_frame(&mut stream, &request, MAX_FRAME_BYTES).unwrap();
    let outcome = loop {
        match read_frame::<SupervisorReply>(&mut stream, MAX_FRAME_BYTES) {
            Ok(Some(Ok(SupervisorReply::Result { outcome, .. }))) => break outcome,
            Ok(Some(Ok(_))) => {}
            other => panic!("worker supervisor: {other:?}\n{}", c.context("spiderweb-worker.service")),
        }
    };
    let ToolOutcome::Ok { payload } = outcome else {
        panic!("the tool did not run: {outcome:?}\n{}", c.context("spiderweb-worker.service"));
    };
    assert!(payload["stdout"].as_str().unwrap_or_default().contains("hello from the workspace"), "{payload}");
    // Inside its user namespace the tool is "root"; on the host, what it made is the tenant's.
    let made = c.path("/srv/spiderweb/workspaces/boot/made.txt");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap());
    assert_eq!(owner, TENANT_UID, "the tool must run as the tenant's uid");
    c.assert_state("spiderweb-worker.service", "active", "the tool call must have started it");
}

/// 4b. A chat through the gateway: the model (a local provider server, reached by the broker)
///     reads a file of the project's workspace through a confined worker, then answers.
fn a_chat_runs_a_tool_and_answers(c: &Booted, llm: &FakeProvider, token: &str) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", c.ports.http).parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let events = runtime.block_on(async {
        let mut client = Client::connect_to(addr, token).await;
        let job = send_prompt(&mut client, "What do my notes say?").await;
        follow_job(&mut client, &job, &mut |e| panic!("no approval expected: {e}"), Duration::from_secs(60)).await
    });
    let last = events.last().unwrap_or_else(|| panic!("no events\n{}", c.context("spiderweb-gateway.service")));
    assert_eq!(last["type"], "done", "{events:#?}\n{}", c.context("spiderweb-gateway.service"));
    assert_eq!(last["result"], "Your notes are about the system project.");
    let results = of_type(&events, "tool_result");
    assert!(
        results[0]["content"].as_str().unwrap_or_default().contains("notes of the system project"),
        "the confined worker read the workspace: {results:?}"
    );
    assert_eq!(llm.requests().len(), 2, "two model calls went out through the broker");
}

/// 5. The fs node instance starts on the first connection and serves with its token.
fn fs_node_activates_and_serves(c: &Booted) {
    c.assert_state("spiderweb-fs-node@boot.service", "inactive", "no mount client yet");
    let cat = |token: &str| {
        Command::new(bin_dir().join("spiderweb-fs-mount"))
            .args(["--auth-token", token, "--endpoint"])
            .arg(format!("a=ws://127.0.0.1:{}/v2/fs#work@/src", c.ports.fs_node))
            .args(["cat", "/src/export.txt"])
            .output()
            .unwrap()
    };
    let out = cat(FS_NODE_TOKEN);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("hello from the export"),
        "fs-mount cat: {text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.context("spiderweb-fs-node@boot.service")
    );
    c.wait_state("spiderweb-fs-node@boot.service", "active", Duration::from_secs(10));
    let wrong = cat("not-the-token");
    assert!(!wrong.status.success(), "a wrong token was accepted");
}

/// 5b. A paired node in daemon mode with only the user token: pairs by invite, refreshes its
///     lease, upserts its catalog and serves its export through the relay; the unit stays up.
fn paired_node_serves_through_the_relay_with_a_user_token(c: &Booted) {
    let tokens_path = c.path("/var/lib/spiderweb/auth_tokens.json");
    let tokens: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tokens_path).unwrap()).unwrap();
    let user_token = tokens["user_token"].as_str().expect("user_token").to_owned();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", c.ports.http).parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut admin = runtime.block_on(async {
        let mut admin = Client::connect_to(addr, &admin_token(c)).await;
        admin.handshake().await;
        admin
    });
    let admin_call =
        |admin: &mut Client, op: &str, payload: serde_json::Value| runtime.block_on(admin.control_ok(op, payload));
    let invite = admin_call(&mut admin, "node_invite_create", serde_json::json!({}));
    let invite = invite["invite_token"].as_str().unwrap().to_owned();

    write(&c.path("/srv/spiderweb/exports/edge/report.txt"), "served by the paired node\n", 0o644);
    write(
        &c.path("/etc/spiderweb/fs-node/edge.env"),
        &format!(
            "FS_NODE_ARGS=--control-url ws://127.0.0.1:{}/ --node-name boot-edge \
             --export work=/srv/spiderweb/exports/edge:ro --refresh-interval-ms 1000\n",
            c.ports.http
        ),
        0o644,
    );
    write(&c.path("/etc/spiderweb/fs-node/edge.control-token"), &format!("{user_token}\n"), 0o600);
    write(&c.path("/etc/spiderweb/fs-node/edge.invite-token"), &format!("{invite}\n"), 0o600);
    let started = c.exec(&["systemctl", "start", "--no-block", PAIRED_UNIT]);
    assert!(started.status.success(), "systemctl start: {}", String::from_utf8_lossy(&started.stderr));
    c.wait_state(PAIRED_UNIT, "active", Duration::from_secs(30));

    // Paired: the gateway lists it, with the catalog the node upserted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let node = loop {
        let nodes = admin_call(&mut admin, "node_list", serde_json::json!({}));
        let found = nodes["nodes"].as_array().unwrap().iter().find(|n| n["node_name"] == "boot-edge").cloned();
        match found {
            Some(node) if node["service_count"] == 1 => break node,
            _ => {
                assert!(Instant::now() < deadline, "the paired node is not listed: {nodes}\n{}", c.context(PAIRED_UNIT))
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let node_id = node["node_id"].as_str().unwrap().to_owned();
    let catalog = admin_call(&mut admin, "node_service_get", serde_json::json!({"node_id": node_id}));
    assert_eq!(catalog["services"][0]["service_id"], "fs", "{catalog}");
    let lease = |admin: &mut Client| {
        admin_call(admin, "node_get", serde_json::json!({"node_id": node_id}))["node"]["lease_expires_at_ms"]
            .as_u64()
            .unwrap()
    };
    let first = lease(&mut admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease(&mut admin) <= first {
        assert!(Instant::now() < deadline, "the lease was not refreshed\n{}", c.context(PAIRED_UNIT));
        std::thread::sleep(Duration::from_millis(200));
    }

    // A relay client reads the export with the node's secret (from the unit's state file).
    let state = c.path("/var/lib/spiderweb-fs-node/edge/state.json");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["node_id"], serde_json::json!(node_id));
    let secret = saved["node_secret"].as_str().expect("node_secret saved").to_owned();
    let cat = || {
        Command::new(bin_dir().join("spiderweb-fs-mount"))
            .args(["--auth-token", &secret, "--endpoint"])
            .arg(format!("relay=ws://127.0.0.1:{}/v2/fs/node/{node_id}#work@/src", c.ports.http))
            .args(["cat", "/src/report.txt"])
            .env("SPIDERWEB_LOG", "warn")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = cat();
        if out.status.success() && out.stdout == b"served by the paired node\n" {
            break;
        }
        // The tunnel may still be coming up right after pairing.
        assert!(
            Instant::now() < deadline,
            "cat through the relay: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.context(PAIRED_UNIT)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    c.assert_state(PAIRED_UNIT, "active", "a paired node keeps running");

    // Without an invite file the unit still starts (its SetCredential= fallback) and pairs by
    // request, which needs the admin token: the node approves its own request.
    write(
        &c.path("/etc/spiderweb/fs-node/lonely.env"),
        &format!(
            "FS_NODE_ARGS=--control-url ws://127.0.0.1:{}/ --node-name boot-lonely \
             --export work=/srv/spiderweb/exports/edge:ro\n",
            c.ports.http
        ),
        0o644,
    );
    write(&c.path("/etc/spiderweb/fs-node/lonely.control-token"), &format!("{}\n", admin_token(c)), 0o600);
    let lonely = "spiderweb-fs-node-paired@lonely.service";
    assert!(c.exec(&["systemctl", "start", "--no-block", lonely]).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = admin_call(&mut admin, "node_list", serde_json::json!({}));
        if nodes["nodes"].as_array().unwrap().iter().any(|n| n["node_name"] == "boot-lonely") {
            break;
        }
        assert!(Instant::now() < deadline, "no invite file: the node did not pair by request\n{}", c.context(lonely));
        std::thread::sleep(Duration::from_millis(200));
    }
    c.assert_state(lonely, "active", "a node paired by request keeps running");

    let journal = c.journal(Some(PAIRED_UNIT));
    assert!(
        !journal.contains(&user_token) && !journal.contains(&invite) && !journal.contains(&secret),
        "a token reached the journal:\n{journal}"
    );
}

/// 6. A malformed config: the unit fails and the journal names the key.
fn malformed_config_fails_naming_the_key(c: &Booted) {
    let config = c.path("/etc/spiderweb/config.json");
    std::fs::write(&config, r#"{"log": {"level": 5}}"#).unwrap();
    let _ = c.exec(&["systemctl", "restart", "spiderweb-gateway.service"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let journal = c.journal(Some("spiderweb-gateway.service"));
        if journal.contains("log.level") {
            break;
        }
        assert!(Instant::now() < deadline, "no message naming log.level:\n{}", c.context("spiderweb-gateway.service"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(c.state("spiderweb-gateway.service"), "active", "a gateway with a malformed config must not run");
}

/// 7. `dpkg --purge` stops every unit and removes what the package installed or generated.
fn purge_stops_everything(c: &Booted) {
    let out = c.exec(&["dpkg", "--purge", "spiderweb"]);
    assert!(
        out.status.success(),
        "dpkg --purge: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for unit in [
        "spiderweb.target",
        "spiderweb-gateway.socket",
        "spiderweb-broker.service",
        "spiderweb-worker.service",
        "spiderweb-fs-node@boot.service",
        PAIRED_UNIT,
        "spiderweb-fs-node-paired@lonely.service",
    ] {
        let state = c.state(unit);
        assert!(state == "inactive" || state == "failed", "{unit} is still {state:?} after purge");
    }
    for gone in [
        "/usr/bin/spiderweb-broker",
        "/etc/spiderweb/broker.json",
        "/etc/spiderweb/worker.json",
        "/etc/spiderweb/config.json",
    ] {
        assert!(!c.path(gone).exists(), "{gone} survived dpkg --purge");
    }
}

fn admin_token(c: &Booted) -> String {
    let tokens_path = c.path("/var/lib/spiderweb/auth_tokens.json");
    let tokens: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tokens_path).unwrap()).unwrap();
    tokens["admin_token"].as_str().expect("admin_token").to_owned()
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.trim().to_owned()
}

#[test]
fn boot_the_package_and_use_every_daemon() {
    // SAFETY: geteuid has no preconditions.
    require(unsafe { libc::geteuid() } == 0, "it must run as root (debootstrap, systemd-nspawn)");
    require(
        Path::new("/usr/bin/systemd-nspawn").exists(),
        "systemd-nspawn is missing (apt-get install systemd-container)",
    );
    let base = base_root();
    // /var/tmp, not /tmp: a few hundred MB, and nspawn mounts its own /tmp over the image's.
    let scratch = tempfile::Builder::new().prefix("spiderweb-boot-").tempdir_in("/var/tmp").unwrap();
    let deb = package(scratch.path());
    let root = scratch.path().join("root");
    run(Command::new("cp").args(["-a", "--reflink=auto"]).arg(&base).arg(&root), "copy the cached root");
    std::fs::copy(&deb, root.join("var/tmp/spiderweb.deb")).unwrap();
    run(
        Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--pipe", "--directory"])
            .arg(&root)
            .args(["dpkg", "-i", "/var/tmp/spiderweb.deb"]),
        "dpkg -i inside the root",
    );
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let llm = FakeProvider::start(Format::OpenAiChat);
    llm.script(vec![
        Reply::tool_calls([("file_read", r#"{"path":"hello.txt"}"#)]),
        Reply::text("Your notes are about the system project."),
    ]);
    let ports = Ports {
        http: free_port(),
        metrics: free_port(),
        fs_node: free_port(),
        upstream: upstream.local_addr().unwrap().port(),
        llm_base_url: llm.base_url(),
    };
    configure(&root, &ports);

    let booted = Booted::boot(&root, scratch.path().join("console.log"), ports);
    target_starts_with_only_the_sockets(&booted);
    broker_activates_with_its_credential(&booted);
    broker_makes_a_provider_request(&booted, upstream);
    gateway_activates_and_serves_a_handshake(&booted);
    worker_activates_and_runs_a_tool(&booted);
    a_chat_runs_a_tool_and_answers(&booted, &llm, &admin_token(&booted));
    fs_node_activates_and_serves(&booted);
    paired_node_serves_through_the_relay_with_a_user_token(&booted);
    malformed_config_fails_naming_the_key(&booted);
    let journal = booted.journal(None);
    assert!(!journal.contains(ANTHROPIC_KEY) && !journal.contains(OPENAI_KEY), "a key appeared in the journal");
    purge_stops_everything(&booted);
    drop(booted);
}
