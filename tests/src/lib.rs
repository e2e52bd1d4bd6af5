//! Harness for the cross-process integration tests of spiderweb.
//!
//! Why it exists: every test starts the **real** `spiderweb` binary as a child process (own temp
//! state dir, own `HOME`, port 0) and talks to it over real sockets: raw HTTP/1.1 for the plain
//! endpoints and upgrade refusals, tokio-tungstenite for the WebSocket protocol. Nothing here
//! links against the gateway crate: the tests are black-box tests of the wire protocol.
//!
//! What it must never do: pass silently. Every helper that cannot do its job (binary missing, the
//! gateway does not announce its port, a reply does not arrive) panics with a message that says
//! what was expected, what arrived and the tail of the gateway's stderr.
//!
//! Modules: [`fake_provider`], local servers speaking each LLM provider's streaming wire
//! format, scripted per test.

pub mod fake_provider;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

pub mod stack;

pub use serde_json;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control as OpControl, Data as OpData, OpCode};

/// How long `recv_json`, `control`, `acheron` … wait for a frame before failing the test.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gateway may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `expect_close` waits for the close frame.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout for one plain HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The fid the fs helpers attach to the root.
pub const ROOT_FID: u32 = 1;
/// Standard base64 (with padding), as used by `data_b64`.
pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The first stdout line of the gateway, before the port number.
const LISTEN_PREFIX: &str = "spiderweb listening on ws://127.0.0.1:";

// ---------------------------------------------------------------------------------------------
// Locating the binary
// ---------------------------------------------------------------------------------------------

/// Directory holding the built binaries: `$SPIDERWEB_BIN_DIR`, else `target/<profile>` derived
/// from the running executable (test executables live in `target/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPIDERWEB_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot determine current_exe()");
    let mut dir = exe.parent().expect("executable has no parent directory").to_path_buf();
    while matches!(dir.file_name().and_then(|n| n.to_str()), Some("deps" | "examples")) {
        dir.pop();
    }
    dir
}

/// Path of the `spiderweb` binary. Panics with instructions when it is missing or older than the
/// gateway sources (a stale binary would make every result meaningless).
pub fn gateway_bin() -> PathBuf {
    let dir = bin_dir();
    let path = dir.join("spiderweb");
    let build = if dir.file_name().is_some_and(|n| n == "release") {
        "cargo build --release --workspace --bins"
    } else {
        "cargo build --workspace --bins"
    };
    if !path.is_file() {
        panic!("spiderweb binary not found at {}: run `{build}` first", path.display());
    }
    if std::env::var_os("SPIDERWEB_BIN_DIR").is_none() {
        check_not_stale(&path, build);
    }
    path
}

/// Panics when a source file of the crates that make up the gateway is newer than the binary.
fn check_not_stale(bin: &Path, build: &str) {
    let Ok(bin_mtime) = fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for krate in ["gateway", "proto", "policy"] {
        let dir = workspace.join(krate);
        // Sources only: a manifest edit that matters (a dependency) makes cargo relink anyway,
        // and one that does not (a dev-dependency) leaves the binary rightly untouched.
        let mut stack = vec![dir.join("src")];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(md) = e.metadata() else { continue };
                if md.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs")
                    && let Ok(t) = md.modified()
                    && newest.as_ref().is_none_or(|(n, _)| t > *n)
                {
                    newest = Some((t, p));
                }
            }
        }
    }
    if let Some((t, p)) = newest
        && t > bin_mtime + Duration::from_secs(1)
    {
        panic!(
            "spiderweb binary at {} is older than {}: run `{build}` first (or set \
                 SPIDERWEB_BIN_DIR to test a specific build)",
            bin.display(),
            p.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

/// The config every test gateway starts from; `Gateway::start_with` deep-merges on top of it.
pub fn base_config() -> Value {
    json!({
        "server": {},
        "provider": {"name": "openai", "model": "gpt-4o-mini"},
        "log": {"level": "info"},
        "runtime": {}
    })
}

/// Deep merge: objects merge key by key, anything else in `overlay` replaces `base`.
pub fn merge_json(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `"ping"` → `"control.ping"`; already-prefixed names are kept.
fn full_type(prefix: &str, ty: &str) -> String {
    if ty.contains('.') { ty.to_string() } else { format!("{prefix}{ty}") }
}

/// Panics unless `v` is an object containing every key in `keys`.
pub fn assert_keys(v: &Value, keys: &[&str], what: &str) {
    let obj = v.as_object().unwrap_or_else(|| panic!("{what}: expected a JSON object, got {v}"));
    let missing: Vec<&&str> = keys.iter().filter(|k| !obj.contains_key(**k)).collect();
    assert!(missing.is_empty(), "{what}: missing keys {missing:?} in {v}");
}

/// The integer at `v[key]`, panicking with context otherwise.
pub fn int_at(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or_else(|| panic!("expected integer field {key:?} in {v}"))
}

/// The string at `v[key]`, panicking with context otherwise.
pub fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("expected string field {key:?} in {v}"))
}

/// The integer at JSON pointer `ptr`, panicking with context otherwise.
pub fn int_at_ptr(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or_else(|| panic!("{ptr} must be an integer in {v}"))
}

/// Checks the §6.1 metrics object shape (valid JSON: quirk 1 is not reproduced).
pub fn assert_metrics_object(v: &Value) {
    for p in ["/invites/active", "/invites/created_total", "/invites/redeemed_total"] {
        int_at_ptr(v, p);
    }
    for k in ["online", "total", "joins_total", "lease_refresh_total", "ensured_total", "deletes_total", "reaped_total"]
    {
        int_at_ptr(v, &format!("/nodes/{k}"));
    }
    for k in [
        "total",
        "active_bindings",
        "creates_total",
        "updates_total",
        "deletes_total",
        "token_rotates_total",
        "token_revokes_total",
        "activations_total",
        "mounts_total",
        "mount_sets_total",
        "mount_removes_total",
    ] {
        int_at_ptr(v, &format!("/projects/{k}"));
    }
    for p in [
        "/node_service_watch/subscribers/current",
        "/node_service_watch/subscribers/peak",
        "/node_service_watch/replay/requests_total",
        "/node_service_watch/replay/attempted_total",
        "/node_service_watch/replay/sent_total",
        "/node_service_watch/replay/bytes_total",
        "/node_service_watch/fanout/events_total",
        "/node_service_watch/fanout/attempted_total",
        "/node_service_watch/fanout/sent_total",
        "/node_service_watch/fanout/dropped_total",
        "/node_service_watch/retained/events",
        "/node_service_watch/retained/capacity",
        "/node_service_watch/retained/window_ms",
    ] {
        int_at_ptr(v, p);
    }
    for p in ["/node_service_watch/retained/oldest_ms", "/node_service_watch/retained/newest_ms"] {
        let x = v.pointer(p).unwrap_or_else(|| panic!("metrics.json lacks {p}: {v}"));
        assert!(x.is_null() || x.is_i64() || x.is_u64(), "{p} must be int or null: {x}");
    }
}

/// Checks the base64url-without-padding token shape of spec unified-v2 §2.2.
pub fn assert_token_format(token: &str, prefix: &str) {
    let rest = token.strip_prefix(prefix).unwrap_or_else(|| panic!("token {token:?} does not start with {prefix:?}"));
    assert_eq!(rest.len(), 32, "token {token:?}: expected 32 base64url chars after {prefix:?}");
    assert!(
        rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "token {token:?}: suffix is not base64url"
    );
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(rest)
        .unwrap_or_else(|e| panic!("token {token:?}: suffix does not decode as base64url: {e}"));
    assert_eq!(raw.len(), 24, "token {token:?}: expected 24 random bytes");
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn read_stderr_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(b) => tail_lines(&String::from_utf8_lossy(&b), n),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &s[..end], s.len())
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------------

/// One `spiderweb` child process with its own temp directory (state dir, HOME, config, logs).
pub struct Gateway {
    root: tempfile::TempDir,
    state_dir: PathBuf,
    home_dir: PathBuf,
    config_path: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    config: Value,
    env: Vec<(String, String)>,
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    launches: u32,
}

/// Why a launch failed.
#[derive(Debug)]
pub struct LaunchFailure {
    /// Exit status when the process exited (None: still running / killed after timeout).
    pub status: Option<ExitStatus>,
    /// Everything the process wrote on stderr so far.
    pub stderr: String,
    /// Human summary.
    pub reason: String,
}

impl Gateway {
    /// Start a gateway with the base config.
    pub fn start() -> Gateway {
        Self::start_with(json!({}))
    }

    /// Start a gateway with `config` deep-merged over [`base_config`].
    pub fn start_with(config: Value) -> Gateway {
        let mut gw = Gateway::new(config);
        gw.launch();
        gw
    }

    /// Prepare (temp dirs, config file) without starting; call [`Gateway::launch`] afterwards.
    /// Use this to add env vars or to seed the state dir (e.g. agents) before the first start.
    pub fn new(config: Value) -> Gateway {
        let bin = gateway_bin();
        Self::new_with_bin(bin, config)
    }

    /// Like [`Gateway::new`] with an explicit binary path (the loadgen uses the release build).
    pub fn new_with_bin(bin: PathBuf, config: Value) -> Gateway {
        let root = tempfile::Builder::new().prefix("spiderweb-test-").tempdir().expect("create temp dir");
        let state_dir = root.path().join("state");
        let home_dir = root.path().join("home");
        fs::create_dir_all(&state_dir).expect("create state dir");
        fs::create_dir_all(&home_dir).expect("create home dir");
        let mut full = base_config();
        merge_json(&mut full, &config);
        let config_path = root.path().join("config.json");
        let stderr_path = root.path().join("gateway.stderr.log");
        let stdout_path = root.path().join("gateway.stdout.log");
        let gw = Gateway {
            state_dir,
            home_dir,
            config_path,
            stderr_path,
            stdout_path,
            config: full,
            env: Vec::new(),
            bin,
            child: None,
            port: 0,
            launches: 0,
            root,
        };
        gw.write_config();
        gw
    }

    fn write_config(&self) {
        fs::write(&self.config_path, serde_json::to_vec_pretty(&self.config).unwrap()).expect("write config");
    }

    /// Deep-merge `overlay` into the current config and rewrite the file (takes effect on the
    /// next launch).
    pub fn update_config(&mut self, overlay: Value) {
        merge_json(&mut self.config, &overlay);
        self.write_config();
    }

    /// The config as written to the file.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// Replace the config file content verbatim (for invalid-config tests).
    pub fn write_raw_config(&mut self, text: &str) {
        fs::write(&self.config_path, text).expect("write config");
    }

    /// Add an environment variable for the next launches.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Write `<dir>/<id>/agent.json` (dir relative to the state dir when relative).
    pub fn write_agent(&self, agents_dir: &str, id: &str, agent: &Value) {
        let base = if Path::new(agents_dir).is_absolute() {
            PathBuf::from(agents_dir)
        } else {
            self.state_dir.join(agents_dir)
        };
        let dir = base.join(id);
        fs::create_dir_all(&dir).expect("create agent dir");
        fs::write(dir.join("agent.json"), serde_json::to_vec_pretty(agent).unwrap()).expect("write agent.json");
    }

    fn command(&self, stderr: fs::File) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg("0")
            .arg("--state-dir")
            .arg(&self.state_dir);
        // Isolate from the developer's environment: no inherited SPIDERWEB_* variables, own HOME.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SPIDERWEB_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("HOME", &self.home_dir)
            .env("XDG_CONFIG_HOME", self.home_dir.join(".config"))
            .env("XDG_STATE_HOME", self.home_dir.join(".local/state"))
            .env("XDG_DATA_HOME", self.home_dir.join(".local/share"))
            .env_remove("SPIDERWEB_CONFIG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr));
        // The gateway dies with the test process, even on SIGKILL of the test (nextest timeouts).
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }

    /// Start the process and wait for its listening line; panics with stderr on failure.
    pub fn launch(&mut self) {
        if let Err(f) = self.try_launch() {
            panic!(
                "spiderweb failed to start: {}\nexit status: {:?}\n--- gateway stderr (tail) ---\n{}",
                f.reason,
                f.status,
                tail_lines(&f.stderr, 80)
            );
        }
    }

    /// Start the process and wait for its listening line.
    pub fn try_launch(&mut self) -> Result<(), LaunchFailure> {
        assert!(self.child.is_none(), "gateway already running");
        let stderr = OpenOptions::new().create(true).append(true).open(&self.stderr_path).expect("open stderr log");
        self.launches += 1;
        let _ = writeln!(&stderr, "===== harness: launch #{} =====", self.launches);
        let mut child = self.command(stderr).spawn().unwrap_or_else(|e| {
            panic!("cannot spawn {}: {e}", self.bin.display());
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<Option<String>>();
        let stdout_path = self.stdout_path.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = String::new();
            match reader.read_line(&mut first) {
                Ok(n) if n > 0 => {
                    let _ = tx.send(Some(first.trim_end_matches(['\r', '\n']).to_string()));
                }
                _ => {
                    let _ = tx.send(None);
                    return;
                }
            }
            // Keep draining so the banner never blocks the gateway on a full pipe.
            let mut log = OpenOptions::new().create(true).append(true).open(stdout_path).ok();
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(f) = log.as_mut() {
                            let _ = f.write_all(line.as_bytes());
                        }
                    }
                }
            }
        });
        let outcome = rx.recv_timeout(START_TIMEOUT);
        let fail = |child: &mut Child, reason: String, stderr_path: &Path| {
            let status = match child.try_wait() {
                Ok(Some(s)) => Some(s),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    None
                }
            };
            LaunchFailure { status, stderr: fs::read_to_string(stderr_path).unwrap_or_default(), reason }
        };
        match outcome {
            Ok(Some(line)) => {
                let port = line
                    .strip_prefix(LISTEN_PREFIX)
                    .and_then(|r| r.strip_suffix('/'))
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p != 0);
                match port {
                    Some(p) => {
                        self.port = p;
                        self.child = Some(child);
                        Ok(())
                    }
                    None => Err(fail(
                        &mut child,
                        format!("first stdout line must be exactly `{LISTEN_PREFIX}<port>/`, got {line:?}"),
                        &self.stderr_path,
                    )),
                }
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed: the process most likely exited.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fail(&mut child, "stdout closed before the listening line".into(), &self.stderr_path))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(fail(
                &mut child,
                format!("no listening line on stdout within {START_TIMEOUT:?}"),
                &self.stderr_path,
            )),
        }
    }

    /// Run the binary expecting it to refuse to start (invalid config): returns its exit status
    /// and stderr. Panics if it starts listening instead, or does not exit within 20 s.
    pub fn run_expect_exit(&mut self) -> (ExitStatus, String) {
        match self.try_launch() {
            Ok(()) => {
                let stderr = self.stderr_contents();
                panic!(
                    "expected spiderweb to refuse to start, but it is listening on port {}\n--- stderr ---\n{}",
                    self.port,
                    tail_lines(&stderr, 60)
                );
            }
            Err(f) => match f.status {
                Some(s) => (s, f.stderr),
                None => panic!(
                    "expected spiderweb to exit, but it neither exited nor listened: {}\n--- stderr ---\n{}",
                    f.reason,
                    tail_lines(&f.stderr, 60)
                ),
            },
        }
    }

    /// Graceful stop (SIGTERM, wait up to 15 s) then start again with the same state dir.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
    }

    /// SIGTERM and wait for exit (panics if it takes longer than 15 s). Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        let deadline = Instant::now() + Duration::from_secs(15);
        let child = self.child.as_mut().expect("gateway not running");
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "spiderweb did not exit within 15 s after SIGTERM\n--- stderr ---\n{}",
                    read_stderr_tail(&self.stderr_path, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM (does not wait).
    pub fn sigterm(&self) {
        let pid = self.pid();
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed: {}", std::io::Error::last_os_error());
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let child = self.child.as_mut().expect("gateway not running");
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill(SIGKILL) failed: {}", std::io::Error::last_os_error());
        let _ = child.wait();
        self.child = None;
    }

    /// Wait (asynchronously) until the process exits; None on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the child process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Panics (with stderr) unless the process is still running.
    pub fn assert_running(&mut self, context: &str) {
        if !self.is_running() {
            panic!("spiderweb is not running any more ({context})\n--- stderr ---\n{}", self.stderr_tail(80));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway not running").id()
    }
    pub fn port(&self) -> u16 {
        assert!(self.port != 0, "gateway has not been started");
        self.port
    }
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port())
    }
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    pub fn home_dir(&self) -> &Path {
        &self.home_dir
    }
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }
    pub fn stderr_contents(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
    pub fn stderr_tail(&self, n: usize) -> String {
        read_stderr_tail(&self.stderr_path, n)
    }

    /// `<state-dir>/auth_tokens.json`.
    pub fn tokens_path(&self) -> PathBuf {
        self.state_dir.join("auth_tokens.json")
    }
    /// Parsed `auth_tokens.json` (read fresh each call).
    pub fn tokens_file(&self) -> Value {
        let path = self.tokens_path();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e} (the gateway must write its tokens there)\n--- stderr ---\n{}",
                path.display(),
                self.stderr_tail(40)
            )
        });
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()))
    }
    pub fn admin_token(&self) -> String {
        str_at(&self.tokens_file(), "admin_token").to_string()
    }
    pub fn user_token(&self) -> String {
        str_at(&self.tokens_file(), "user_token").to_string()
    }

    /// Resident set size of the gateway in KiB (from /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.pid()).unwrap_or_else(|| panic!("cannot read VmRSS of pid {}", self.pid()))
    }

    /// Number of file descriptors the gateway holds.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// Plain `GET` (HTTP/1.1, `Connection: close`).
    pub async fn http_get(&self, path: &str) -> HttpResponse {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: spiderweb-tests\r\nConnection: close\r\n\r\n",
            self.port()
        );
        self.http_raw(req.as_bytes()).await
    }

    /// Send raw request bytes and read one response. Panics with stderr on I/O failure.
    pub async fn http_raw(&self, request: &[u8]) -> HttpResponse {
        match tokio::time::timeout(HTTP_TIMEOUT, http_exchange(self.addr(), request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!(
                "HTTP request {:?} failed: {e}\n--- gateway stderr ---\n{}",
                truncate(&String::from_utf8_lossy(request), 200),
                self.stderr_tail(40)
            ),
            Err(_) => panic!(
                "HTTP request {:?}: no complete response within {HTTP_TIMEOUT:?}\n--- gateway stderr ---\n{}",
                truncate(&String::from_utf8_lossy(request), 200),
                self.stderr_tail(40)
            ),
        }
    }

    /// `/metrics`, parsed. Panics unless 200.
    pub async fn metrics(&self) -> Metrics {
        let r = self.http_get("/metrics").await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.summary());
        Metrics::parse(&r.text())
    }

    /// WebSocket upgrade with the given extra headers; returns the refusal response, if any.
    pub async fn upgrade_raw(&self, path: &str, headers: &[(&str, &str)]) -> Result<Client, ConnectError> {
        Client::try_connect_with(self, path, headers).await
    }

    /// Connect with the admin token and do version + connect.
    pub async fn admin(&self) -> Client {
        let mut c = Client::connect(self, &self.admin_token()).await;
        c.handshake().await;
        c
    }

    /// Connect with the user token and do version + connect (the session may be gated).
    pub async fn user(&self) -> Client {
        let mut c = Client::connect(self, &self.user_token()).await;
        c.handshake().await;
        c
    }

    /// Panics unless a fresh admin connection can handshake and ping: "the server still serves".
    pub async fn assert_serving(&mut self, context: &str) {
        self.assert_running(context);
        let mut c = Client::connect(self, &self.admin_token()).await;
        c.handshake().await;
        c.ping().await;
        let r = self.http_get("/livez").await;
        assert_eq!(r.status, 200, "{context}: /livez after the event: {}", r.summary());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- spiderweb stderr (tail, {}) ---\n{}\n--- end of spiderweb stderr ---",
                self.stderr_path.display(),
                self.stderr_tail(120)
            );
        }
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok()))
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok().filter(|t| *t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn summary(&self) -> String {
        format!(
            "HTTP {} {} headers={:?} body={:?}",
            self.status,
            self.reason,
            self.headers,
            truncate(&self.text(), 400)
        )
    }
}

pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(request).await?;
    let mut resp = read_response_head(&mut s).await?;
    resp.body = read_body(&mut s, &resp).await?;
    Ok(resp)
}

/// Reads the status line and headers byte by byte, so nothing after the head is consumed.
async fn read_response_head(s: &mut TcpStream) -> std::io::Result<HttpResponse> {
    let mut buf = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed before a complete response head; got {:?}", String::from_utf8_lossy(&buf)),
            ));
        }
        buf.push(byte[0]);
        if buf.ends_with(b"\r\n\r\n") {
            break;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head larger than 64 KiB"));
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(std::io::Error::other(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(HttpResponse { status, reason, headers, body: Vec::new() })
}

async fn read_line_crlf(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if s.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
        if buf.ends_with(b"\r\n") {
            buf.truncate(buf.len() - 2);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
    }
}

async fn read_body(s: &mut TcpStream, head: &HttpResponse) -> std::io::Result<Vec<u8>> {
    if (100..200).contains(&head.status) || head.status == 204 || head.status == 304 {
        return Ok(Vec::new());
    }
    if let Some(cl) = head.header("content-length") {
        let n: usize = cl.parse().map_err(|_| std::io::Error::other(format!("bad content-length {cl:?}")))?;
        let mut body = vec![0u8; n];
        s.read_exact(&mut body).await?;
        return Ok(body);
    }
    if head.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line = read_line_crlf(s).await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // trailers
                loop {
                    if read_line_crlf(s).await?.is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            s.read_exact(&mut body[start..]).await?;
            read_line_crlf(s).await?;
        }
    }
    let mut body = Vec::new();
    s.read_to_end(&mut body).await?;
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parsed `/metrics` output.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
    /// `# TYPE` declarations: family → type.
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the exposition format; panics on a malformed line (that is a test failure).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    types.insert(n.to_string(), t.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name_labels, value) = match line.find('{') {
                Some(_) => {
                    let close = line.rfind('}').unwrap_or_else(|| panic!("malformed metrics line {line:?}"));
                    (&line[..close + 1], line[close + 1..].trim())
                }
                None => {
                    let mut it = line.splitn(2, ' ');
                    (it.next().unwrap(), it.next().unwrap_or_else(|| panic!("malformed metrics line {line:?}")).trim())
                }
            };
            let value_str = value.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}"));
            let value: f64 = match value_str {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?} in metrics line {line:?}")),
            };
            let (name, labels) = match name_labels.find('{') {
                None => (name_labels.to_string(), BTreeMap::new()),
                Some(open) => {
                    let name = name_labels[..open].to_string();
                    let inner = &name_labels[open + 1..name_labels.len() - 1];
                    (name, parse_labels(inner, line))
                }
            };
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "invalid metric name {name:?} in line {line:?}"
            );
            samples.push(Sample { name, labels, value });
        }
        Metrics { text: text.to_string(), samples, types }
    }

    /// Value of the sample `name` whose labels include all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
    }

    /// Value of an unlabelled (or single) sample; 0 when the family has no sample yet.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// All samples of a family.
    pub fn family(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_labels(inner: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        assert_eq!(chars.next(), Some('='), "malformed labels in {line:?}");
        assert_eq!(chars.next(), Some('"'), "malformed labels in {line:?}");
        let mut val = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(c) => val.push(c),
                    None => panic!("malformed labels in {line:?}"),
                },
                Some('"') => break,
                Some(c) => val.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        labels.insert(key.trim().to_string(), val);
    }
    labels
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// Why an upgrade did not produce a WebSocket.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect / I/O failure (e.g. connection refused).
    Io(std::io::Error),
    /// The server answered the upgrade with something other than 101.
    Http(HttpResponse),
    /// A 101 whose headers are not a valid WebSocket accept.
    BadUpgrade(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "I/O error: {e}"),
            ConnectError::Http(r) => write!(f, "upgrade refused: {}", r.summary()),
            ConnectError::BadUpgrade(m) => write!(f, "bad 101 response: {m}"),
        }
    }
}

impl ConnectError {
    /// The refusal response; panics (with `context`) for other errors.
    pub fn into_http(self, context: &str) -> HttpResponse {
        match self {
            ConnectError::Http(r) => r,
            other => panic!("{context}: expected an HTTP refusal, got {other}"),
        }
    }
}

/// One frame (or event) from the server.
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Close frame with its status code (None: close frame without a code).
    Close(Option<u16>),
    /// Stream ended without a close frame (EOF or error text).
    Ended(String),
    Timeout,
}

static KEY_COUNTER: AtomicU64 = AtomicU64::new(1);

fn ws_key() -> String {
    let n = KEY_COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&t.to_le_bytes());
    bytes[8..].copy_from_slice(&(n ^ u64::from(std::process::id()) << 32).to_le_bytes());
    B64.encode(bytes)
}

/// Performs the HTTP upgrade by hand (so tests control every header byte) and validates the 101.
pub async fn raw_upgrade(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(TcpStream, HttpResponse), ConnectError> {
    let mut s = TcpStream::connect(addr).await.map_err(ConnectError::Io)?;
    s.set_nodelay(true).map_err(ConnectError::Io)?;
    let key = ws_key();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let fut = async {
        s.write_all(req.as_bytes()).await?;
        read_response_head(&mut s).await
    };
    let mut head = match tokio::time::timeout(HTTP_TIMEOUT, fut).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Err(_) => {
            return Err(ConnectError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "upgrade: no response head",
            )));
        }
    };
    if head.status != 101 {
        head.body = match tokio::time::timeout(HTTP_TIMEOUT, read_body(&mut s, &head)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => format!("<body read error: {e}>").into_bytes(),
            Err(_) => b"<body read timed out>".to_vec(),
        };
        return Err(ConnectError::Http(head));
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if head.header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(ConnectError::BadUpgrade(format!("Sec-WebSocket-Accept mismatch: {}", head.summary())));
    }
    if !head.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(ConnectError::BadUpgrade(format!("missing Upgrade: websocket: {}", head.summary())));
    }
    if !head.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) {
        return Err(ConnectError::BadUpgrade(format!("missing Connection: upgrade: {}", head.summary())));
    }
    Ok((s, head))
}

/// The harness's client settings. The read buffer is small because tungstenite zero-fills
/// up to `read_buffer_size` (128 KiB by default) before every socket read: with hundreds of
/// connections, that memset was the load generator's largest cost, taken from the cores the
/// gateway under test runs on.
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(256 << 20))
        .max_frame_size(Some(256 << 20))
        .read_buffer_size(16 << 10)
}

/// A WebSocket client speaking the unified-v2 envelope.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    pending: VecDeque<Value>,
    next_id: u64,
    next_tag: u32,
    next_fid: u32,
    fs_versioned: bool,
    fs_attached: bool,
    stderr_path: PathBuf,
    /// The 101 response of the upgrade.
    pub upgrade_response: HttpResponse,
    last_sent: String,
}

impl Client {
    /// Connect to `/` with `Authorization: Bearer <token>` (no handshake).
    pub async fn connect(gw: &Gateway, token: &str) -> Client {
        Self::connect_with(gw, "/", &[("Authorization", &format!("Bearer {token}"))]).await
    }

    /// Connect to a gateway this harness did not start (e.g. one in a booted container) at
    /// `addr` with a bearer token, and do version + connect.
    pub async fn connect_to(addr: SocketAddr, token: &str) -> Client {
        let auth = format!("Bearer {token}");
        let (stream, head) = raw_upgrade(addr, "/", &[("Authorization", &auth)])
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade at {addr} failed: {e}"));
        let mut client = Client::over(stream, head, PathBuf::from("(the gateway's log is in its journal)")).await;
        client.handshake().await;
        client
    }

    /// Upgrade on `path` with extra headers; panics unless the server answers 101.
    pub async fn connect_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Client {
        match Self::try_connect_with(gw, path, headers).await {
            Ok(c) => c,
            Err(e) => panic!(
                "WebSocket upgrade on {path} with {headers:?} failed: {e}\n--- gateway stderr ---\n{}",
                gw.stderr_tail(40)
            ),
        }
    }

    /// Upgrade on `path` with extra headers.
    pub async fn try_connect_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Result<Client, ConnectError> {
        let (stream, head) = raw_upgrade(gw.addr(), path, headers).await?;
        Ok(Client::over(stream, head, gw.stderr_path.clone()).await)
    }

    /// A client on an upgraded stream; `stderr_path` is where failures point for context.
    async fn over(stream: TcpStream, upgrade_response: HttpResponse, stderr_path: PathBuf) -> Client {
        let ws = WebSocketStream::from_raw_socket(stream, Role::Client, Some(client_ws_config())).await;
        Client {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
            next_tag: 0,
            next_fid: 1000,
            fs_versioned: false,
            fs_attached: false,
            stderr_path,
            upgrade_response,
            last_sent: String::new(),
        }
    }

    fn ctx(&self) -> String {
        format!(
            "last frame sent: {}\n--- gateway stderr (tail) ---\n{}",
            truncate(&self.last_sent, 300),
            read_stderr_tail(&self.stderr_path, 40)
        )
    }

    // ----- sending -----------------------------------------------------------------------

    pub async fn send_message(&mut self, m: Message) {
        if let Err(e) = self.try_send_message(m).await {
            panic!("sending a WebSocket frame failed: {e}\n{}", self.ctx());
        }
    }

    pub async fn try_send_message(&mut self, m: Message) -> Result<(), tungstenite::Error> {
        self.last_sent = match &m {
            Message::Text(t) => truncate(t.as_str(), 300),
            other => format!("{:?}", truncate(&format!("{other:?}"), 200)),
        };
        self.ws.send(m).await
    }

    /// Send that may legitimately fail (the server is closing on us) but must not hang: gives up
    /// after `timeout` (a server that neither reads nor closes would otherwise block forever).
    pub async fn send_message_within(&mut self, m: Message, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.try_send_message(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("send did not complete within {timeout:?}")),
        }
    }

    /// Queue without flushing (for floods); call [`Client::flush`].
    pub async fn feed_text(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.last_sent = format!("(fed, unflushed) {}", truncate(text, 300));
        self.ws.feed(Message::text(text.to_string())).await
    }

    pub async fn flush(&mut self) -> Result<(), tungstenite::Error> {
        self.ws.flush().await
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_message(Message::text(v.to_string())).await
    }

    pub async fn send_raw_text(&mut self, s: &str) {
        self.send_message(Message::text(s.to_string())).await
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.send_message(Message::binary(b)).await
    }

    /// Send a raw frame (fragments, invalid UTF-8, reserved opcodes). It is masked by tungstenite.
    pub async fn send_frame(&mut self, f: Frame) {
        self.send_message(Message::Frame(f)).await
    }

    /// Send a close frame with the given code.
    pub async fn close(&mut self, code: u16) {
        let frame = tungstenite::protocol::CloseFrame { code: code.into(), reason: "bye".into() };
        let _ = self.ws.send(Message::Close(Some(frame))).await;
    }

    // ----- receiving ---------------------------------------------------------------------

    /// Next event from the socket (pings/pongs included), waiting at most `timeout`.
    pub async fn next_incoming(&mut self, timeout: Duration) -> Incoming {
        match tokio::time::timeout(timeout, self.ws.next()).await {
            Err(_) => Incoming::Timeout,
            Ok(None) => Incoming::Ended("end of stream".into()),
            Ok(Some(Err(e))) => Incoming::Ended(e.to_string()),
            Ok(Some(Ok(m))) => match m {
                Message::Text(t) => Incoming::Text(t.as_str().to_string()),
                Message::Binary(b) => Incoming::Binary(b.to_vec()),
                Message::Ping(p) => Incoming::Ping(p.to_vec()),
                Message::Pong(p) => Incoming::Pong(p.to_vec()),
                Message::Close(c) => Incoming::Close(c.map(|f| u16::from(f.code))),
                Message::Frame(_) => Incoming::Ended("unexpected raw frame".into()),
            },
        }
    }

    /// Next JSON text frame (buffered frames first); skips WebSocket pings/pongs. Panics on
    /// timeout ([`RECV_TIMEOUT`]), close, binary or non-JSON.
    pub async fn recv_json(&mut self) -> Value {
        self.recv_json_within(RECV_TIMEOUT).await
    }

    pub async fn recv_json_within(&mut self, timeout: Duration) -> Value {
        if let Some(v) = self.pending.pop_front() {
            return v;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left).await {
                Incoming::Text(t) => return self.parse_text(&t),
                Incoming::Ping(_) | Incoming::Pong(_) => continue,
                Incoming::Binary(b) => {
                    panic!("expected a JSON text frame, got a binary frame of {} bytes\n{}", b.len(), self.ctx())
                }
                Incoming::Close(code) => panic!(
                    "expected a JSON frame, but the server closed the connection (code {code:?})\n{}",
                    self.ctx()
                ),
                Incoming::Ended(e) => panic!("expected a JSON frame, but the connection ended ({e})\n{}", self.ctx()),
                Incoming::Timeout => panic!("no frame from the server within {timeout:?}\n{}", self.ctx()),
            }
        }
    }

    /// Like `recv_json` but returns None on timeout (still panics on close/garbage).
    pub async fn try_recv_json(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left).await {
                Incoming::Text(t) => return Some(self.parse_text(&t)),
                Incoming::Ping(_) | Incoming::Pong(_) => continue,
                Incoming::Timeout => return None,
                other => panic!("expected a JSON frame or silence, got {other:?}\n{}", self.ctx()),
            }
        }
    }

    fn parse_text(&self, t: &str) -> Value {
        serde_json::from_str(t).unwrap_or_else(|e| {
            panic!("server sent a text frame that is not JSON ({e}): {:?}\n{}", truncate(t, 500), self.ctx())
        })
    }

    /// Waits for the server's close frame (skipping any text frames) and returns its code.
    /// Panics if the connection ends without a close frame or nothing happens for 10 s.
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.expect_close_within(CLOSE_TIMEOUT).await
    }

    pub async fn expect_close_within(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left).await {
                Incoming::Close(code) => return code,
                Incoming::Text(t) => seen.push(truncate(&t, 200)),
                Incoming::Binary(b) => seen.push(format!("<binary {} bytes>", b.len())),
                Incoming::Ping(_) | Incoming::Pong(_) => {}
                Incoming::Ended(e) => panic!(
                    "expected a close frame, but the connection ended without one ({e}); frames seen: {seen:?}\n{}",
                    self.ctx()
                ),
                Incoming::Timeout => panic!(
                    "expected a close frame within {timeout:?}, none came; frames seen: {seen:?}\n{}",
                    self.ctx()
                ),
            }
        }
    }

    /// Waits for the next frame and asserts it is a close with `code`.
    pub async fn expect_close_code(&mut self, code: u16) {
        let got = self.expect_close().await;
        assert_eq!(got, Some(code), "expected close code {code}, got {got:?}\n{}", self.ctx());
    }

    /// Reads until the connection is gone (close, EOF, reset). Returns the number of text frames
    /// read and how it ended; None when it did not end within `timeout`.
    pub async fn drain_until_end(&mut self, timeout: Duration) -> Option<(u64, String)> {
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_incoming(left).await {
                Incoming::Text(_) | Incoming::Binary(_) => n += 1,
                Incoming::Ping(_) | Incoming::Pong(_) => {}
                Incoming::Close(c) => {
                    // Drain the TCP end as well (tungstenite answers the close).
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.next()).await;
                    return Some((n, format!("close frame {c:?}")));
                }
                Incoming::Ended(e) => return Some((n, e)),
                Incoming::Timeout => return None,
            }
        }
    }

    /// Waits for a frame matching `pred`, buffering others. Panics on timeout.
    pub async fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos).unwrap();
        }
        let deadline = Instant::now() + timeout;
        let mut stashed = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next_incoming(left).await;
            match ev {
                Incoming::Text(t) => {
                    let v = self.parse_text(&t);
                    if pred(&v) {
                        return v;
                    }
                    stashed += 1;
                    self.pending.push_back(v);
                }
                Incoming::Ping(_) | Incoming::Pong(_) => {}
                other => {
                    let frames: Vec<String> = self.pending.iter().map(|v| truncate(&v.to_string(), 300)).collect();
                    panic!(
                        "waiting for {what}: got {other:?} instead ({stashed} unrelated frames buffered: {frames:?})\n{}",
                        self.ctx()
                    );
                }
            }
        }
    }

    /// Frames received but not yet consumed.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    // ----- control channel ---------------------------------------------------------------

    pub fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("r{}", self.next_id)
    }

    /// Send a control request (payload omitted when `Value::Null`) with a fresh id; returns the
    /// whole reply envelope with that id.
    pub async fn control(&mut self, ty: &str, payload: Value) -> Value {
        let id = self.next_id();
        let mut env = json!({"channel": "control", "type": full_type("control.", ty), "id": id});
        if !payload.is_null() {
            env["payload"] = payload;
        }
        self.request(env).await
    }

    /// Send an envelope (channel defaults to control, an `id` is added when the envelope has
    /// neither `id` nor `tag`) and wait for the reply carrying the same `id`/`tag`.
    pub async fn request(&mut self, mut env: Value) -> Value {
        self.request_within(&mut env, RECV_TIMEOUT).await
    }

    pub async fn request_within(&mut self, env: &mut Value, timeout: Duration) -> Value {
        let obj = env.as_object_mut().expect("envelope must be an object");
        obj.entry("channel").or_insert_with(|| json!("control"));
        if !obj.contains_key("id") && !obj.contains_key("tag") {
            self.next_id += 1;
            obj.insert("id".into(), json!(format!("r{}", self.next_id)));
        }
        let id = obj.get("id").cloned();
        let tag = obj.get("tag").cloned();
        let ty = obj.get("type").cloned().unwrap_or(Value::Null);
        self.send_json(env).await;
        let what = format!("reply to {ty} (id {id:?}, tag {tag:?})");
        self.wait_for(&what, timeout, |v| match (&id, &tag) {
            (Some(id), _) => v.get("id") == Some(id),
            (None, Some(tag)) => v.get("tag") == Some(tag),
            _ => false,
        })
        .await
    }

    /// `control` and assert success; returns the payload.
    pub async fn control_ok(&mut self, ty: &str, payload: Value) -> Value {
        let reply = self.control(ty, payload.clone()).await;
        self.assert_ok(&reply, &format!("{ty} {payload}"))
    }

    /// `control` and assert a `control.error`; returns the `error` object.
    pub async fn control_err(&mut self, ty: &str, payload: Value) -> Value {
        let reply = self.control(ty, payload.clone()).await;
        assert_control_error(&reply, &format!("{ty} {payload}"))
    }

    /// `control_err` and check the code; returns the error object.
    pub async fn control_err_code(&mut self, ty: &str, payload: Value, code: &str) -> Value {
        let err = self.control_err(ty, payload.clone()).await;
        assert_eq!(err["code"], json!(code), "{ty} {payload}: expected error code {code}, got {err}");
        err
    }

    fn assert_ok(&self, reply: &Value, what: &str) -> Value {
        if reply.get("ok") != Some(&json!(true)) {
            panic!("{what}: expected ok:true, got {reply}\n{}", self.ctx());
        }
        reply.get("payload").cloned().unwrap_or_else(|| panic!("{what}: success reply without payload: {reply}"))
    }

    /// `control.version` (unified-v2) and assert the ack.
    pub async fn version(&mut self) -> Value {
        let r = self.control("version", json!({"protocol": "unified-v2"})).await;
        assert_eq!(r["type"], json!("control.version_ack"), "control.version reply: {r}");
        self.assert_ok(&r, "control.version")
    }

    /// version + connect; returns the `connect_ack` payload.
    pub async fn handshake(&mut self) -> Value {
        self.version().await;
        let r = self.control("connect", json!({})).await;
        assert_eq!(r["type"], json!("control.connect_ack"), "control.connect reply: {r}\n{}", self.ctx());
        self.assert_ok(&r, "control.connect")
    }

    /// `control.ping` → assert `control.pong`.
    pub async fn ping(&mut self) {
        let r = self.control("ping", Value::Null).await;
        assert_eq!(r["type"], json!("control.pong"), "ping reply: {r}");
        assert_eq!(r["ok"], json!(true), "ping reply: {r}");
    }

    // ----- acheron channel ---------------------------------------------------------------

    /// Sends `request` as it is and returns the next text frame unparsed: the cheapest round
    /// trip, for load generators whose own CPU shares the machine with the gateway. Nothing
    /// may be pending (no earlier reply buffered), and the caller matches the reply itself.
    pub async fn round_trip_raw(&mut self, request: String, timeout: Duration) -> Result<String, String> {
        assert!(self.pending.is_empty(), "round_trip_raw with buffered replies");
        self.ws.send(Message::text(request)).await.map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return Err(format!("no reply within {timeout:?}")),
                Ok(None) => return Err("the connection ended".into()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(Message::Text(text)))) => return Ok(text.as_str().to_owned()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(other))) => return Err(format!("unexpected frame {other:?}")),
            }
        }
    }

    pub fn next_tag(&mut self) -> u32 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Send an acheron request with a fresh tag plus `fields` (top-level); returns the reply
    /// envelope carrying that tag.
    pub async fn acheron(&mut self, ty: &str, fields: Value) -> Value {
        self.acheron_within(ty, fields, RECV_TIMEOUT).await
    }

    pub async fn acheron_within(&mut self, ty: &str, fields: Value, timeout: Duration) -> Value {
        let tag = self.next_tag();
        let mut env = json!({"channel": "acheron", "type": full_type("acheron.", ty), "tag": tag});
        if let Value::Object(f) = fields {
            let obj = env.as_object_mut().unwrap();
            for (k, v) in f {
                obj.insert(k, v);
            }
        } else {
            assert!(fields.is_null(), "acheron fields must be an object or null");
        }
        self.request_within(&mut env, timeout).await
    }

    pub async fn acheron_ok(&mut self, ty: &str, fields: Value) -> Value {
        let r = self.acheron(ty, fields.clone()).await;
        let expected = full_type("acheron.", ty).replacen("acheron.t_", "acheron.r_", 1);
        assert_eq!(r["type"], json!(expected), "{ty} {fields}: unexpected reply {r}\n{}", self.ctx());
        self.assert_ok(&r, &format!("{ty} {fields}"))
    }

    /// Acheron request expecting `acheron.error`; returns the error object.
    pub async fn acheron_err(&mut self, ty: &str, fields: Value) -> Value {
        let r = self.acheron(ty, fields.clone()).await;
        assert_acheron_error(&r, &format!("{ty} {fields}"))
    }

    pub async fn acheron_err_code(&mut self, ty: &str, fields: Value, code: &str) -> Value {
        let e = self.acheron_err(ty, fields.clone()).await;
        assert_eq!(e["code"], json!(code), "{ty} {fields}: expected acheron error {code}, got {e}");
        e
    }

    /// `t_version` acheron-1.
    pub async fn fs_version(&mut self) -> Value {
        let p = self.acheron_ok("t_version", json!({"msize": 1048576, "version": "acheron-1"})).await;
        self.fs_versioned = true;
        p
    }

    /// `t_version` (once) and `t_attach` of [`ROOT_FID`].
    pub async fn fs_attach(&mut self) -> Value {
        if !self.fs_versioned {
            self.fs_version().await;
        }
        let p = self.acheron_ok("t_attach", json!({"fid": ROOT_FID})).await;
        self.fs_attached = true;
        p
    }

    async fn ensure_fs(&mut self) {
        if !self.fs_attached {
            self.fs_attach().await;
        }
    }

    pub fn alloc_fid(&mut self) -> u32 {
        self.next_fid += 1;
        self.next_fid
    }

    /// Walk from the root to `path` into a new fid; returns the fid or the error object.
    pub async fn walk(&mut self, path: &str) -> Result<u32, Value> {
        self.ensure_fs().await;
        let fid = self.alloc_fid();
        let r = self.acheron("t_walk", json!({"fid": ROOT_FID, "newfid": fid, "path": split_path(path)})).await;
        if r["ok"] == json!(true) {
            assert_eq!(r["type"], json!("acheron.r_walk"), "walk {path}: {r}");
            Ok(fid)
        } else {
            Err(assert_acheron_error(&r, &format!("walk {path}")))
        }
    }

    pub async fn walk_ok(&mut self, path: &str) -> u32 {
        match self.walk(path).await {
            Ok(f) => f,
            Err(e) => panic!("walk to {path:?} failed: {e}\n{}", self.ctx()),
        }
    }

    /// Read a fid from offset 0 to EOF.
    pub async fn read_fid(&mut self, fid: u32, what: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let p = self.acheron_ok("t_read", json!({"fid": fid, "offset": out.len(), "count": 65536})).await;
            let data = B64
                .decode(str_at(&p, "data_b64"))
                .unwrap_or_else(|e| panic!("read {what}: data_b64 is not base64: {e}: {p}"));
            assert_eq!(int_at(&p, "n") as usize, data.len(), "read {what}: n must equal the decoded length: {p}");
            out.extend_from_slice(&data);
            let eof = p["eof"].as_bool().unwrap_or_else(|| panic!("read {what}: eof must be a bool: {p}"));
            if eof || data.is_empty() {
                return out;
            }
        }
        panic!("read {what}: no EOF after 100000 reads");
    }

    pub async fn clunk(&mut self, fid: u32) {
        self.acheron_ok("t_clunk", json!({"fid": fid})).await;
    }

    pub async fn walk_read_bytes(&mut self, path: &str) -> Vec<u8> {
        let fid = self.walk_ok(path).await;
        let data = self.read_fid(fid, path).await;
        self.clunk(fid).await;
        data
    }

    /// Walk to `path`, read it fully, clunk.
    pub async fn walk_read(&mut self, path: &str) -> String {
        let b = self.walk_read_bytes(path).await;
        String::from_utf8(b).unwrap_or_else(|e| panic!("{path} is not UTF-8: {e}"))
    }

    pub async fn walk_read_json(&mut self, path: &str) -> Value {
        let s = self.walk_read(path).await;
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{path} is not valid JSON ({e}): {s:?}"))
    }

    /// Directory entries of `path` (newline-joined names).
    pub async fn list_dir(&mut self, path: &str) -> BTreeSet<String> {
        let s = self.walk_read(path).await;
        assert!(!s.ends_with('\n'), "directory read of {path} must not end with a newline: {s:?}");
        s.split('\n').filter(|l| !l.is_empty()).map(str::to_string).collect()
    }

    pub async fn walk_stat(&mut self, path: &str) -> Value {
        let fid = self.walk_ok(path).await;
        let p = self.acheron_ok("t_stat", json!({"fid": fid})).await;
        self.clunk(fid).await;
        p
    }

    /// Walk to `path` and `t_write` `data` (as `data_b64`) at offset 0; returns the reply envelope.
    pub async fn walk_write(&mut self, path: &str, data: &[u8]) -> Value {
        let fid = self.walk_ok(path).await;
        let r = self.write_fid(fid, data).await;
        self.clunk(fid).await;
        r
    }

    /// `t_write` `data` at offset 0 to an open fid; returns the reply envelope.
    pub async fn write_fid(&mut self, fid: u32, data: &[u8]) -> Value {
        self.acheron("t_write", json!({"fid": fid, "offset": 0, "data_b64": B64.encode(data)})).await
    }
}

/// Split `/a/b/c` into `["a","b","c"]`.
pub fn split_path(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Panics unless `reply` is a `control.error` envelope; returns its `error`.
pub fn assert_control_error(reply: &Value, what: &str) -> Value {
    assert_eq!(reply["channel"], json!("control"), "{what}: expected a control-channel error, got {reply}");
    assert_eq!(reply["type"], json!("control.error"), "{what}: expected control.error, got {reply}");
    assert_eq!(reply["ok"], json!(false), "{what}: control.error must have ok:false: {reply}");
    let err = reply.get("error").cloned().unwrap_or_else(|| panic!("{what}: control.error without error: {reply}"));
    assert!(
        err["code"].is_string() && err["message"].is_string(),
        "{what}: error needs string code and message: {reply}"
    );
    err
}

/// Panics unless `reply` is an `acheron.error` envelope; returns its `error`.
pub fn assert_acheron_error(reply: &Value, what: &str) -> Value {
    assert_eq!(reply["channel"], json!("acheron"), "{what}: expected an acheron-channel error, got {reply}");
    assert_eq!(reply["type"], json!("acheron.error"), "{what}: expected acheron.error, got {reply}");
    assert_eq!(reply["ok"], json!(false), "{what}: acheron.error must have ok:false: {reply}");
    let err = reply.get("error").cloned().unwrap_or_else(|| panic!("{what}: acheron.error without error: {reply}"));
    assert!(
        err["code"].is_string() && err["message"].is_string(),
        "{what}: error needs string code and message: {reply}"
    );
    err
}

// ---------------------------------------------------------------------------------------------
// Shared fixtures
// ---------------------------------------------------------------------------------------------

/// Agents directory (relative to the state dir) used by [`Gateway::with_helper_agent`].
pub const TEST_AGENTS_DIR: &str = "test-agents";

impl Gateway {
    /// A gateway whose `runtime.agents_dir` (relative: `test-agents`) holds agent `helper`.
    pub fn with_helper_agent(config: Value) -> Gateway {
        let mut cfg = json!({"runtime": {"agents_dir": TEST_AGENTS_DIR}});
        merge_json(&mut cfg, &config);
        let mut gw = Gateway::new(cfg);
        gw.write_agent(
            TEST_AGENTS_DIR,
            "helper",
            &json!({"name": "Helper", "description": "A helpful test agent", "is_default": false, "capabilities": ["code", "chat"]}),
        );
        gw.launch();
        gw
    }
}

/// Creates project "Alpha" as admin and binds agent `helper` to it (session `helper-main` of a
/// short-lived admin connection), so that user connections get `helper@<project>` and no gate.
/// Returns the project id.
pub async fn provision_user_world(gw: &Gateway) -> String {
    let mut admin = gw.admin().await;
    let p = admin.control_ok("project_create", json!({"name": "Alpha", "vision": "Build the alpha thing"})).await;
    let project_id = str_at(&p, "project_id").to_string();
    admin
        .control_ok(
            "session_attach",
            json!({"session_key": "helper-main", "agent_id": "helper", "project_id": project_id}),
        )
        .await;
    project_id
}

/// Poll `cond` every 50 ms until it returns true or `timeout` elapses; returns the final result.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `{"a":{"b":…}}` style object from a dotted path, for compact configs.
pub fn obj(pairs: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}
