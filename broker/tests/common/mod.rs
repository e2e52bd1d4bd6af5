//! Test harness: the real `spiderweb-broker` binary, local provider / OAuth servers that speak
//! HTTP like the real ones, and a real gnome-keyring inside `dbus-run-session`.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use serde_json::{Value, json};
use spiderweb_client::broker::BrokerClient;
use spiderweb_proto::broker::{BrokerReply, BrokerRequest, ProviderRequest};
use tokio::sync::mpsc;

pub const BROKER: &str = env!("CARGO_BIN_EXE_spiderweb-broker");
pub const CONFIG_CLI: &str = env!("CARGO_BIN_EXE_spiderweb-config");

/// A request as the local server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What the local server answers.
pub enum Reply {
    Full { status: u16, headers: Vec<(&'static str, String)>, body: Bytes },
    Stream { status: u16, headers: Vec<(&'static str, String)>, chunks: mpsc::Receiver<Bytes> },
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.to_string().into(),
        }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A local HTTP server standing in for a provider or an OAuth token endpoint.
pub struct LocalServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl LocalServer {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> LocalServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let seen_in = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let seen = seen_in.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let method = req.method().to_string();
                            let path_and_query = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                                .collect();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let s = Seen { method, path_and_query, headers, body };
                            seen.lock().unwrap().push(s.clone());
                            Ok::<_, Infallible>(render(handler(&s)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LocalServer { addr, seen }
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("http://{}{prefix}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn render(reply: Reply) -> Response<BoxBody<Bytes, Infallible>> {
    let (status, headers, body) = match reply {
        Reply::Full { status, headers, body } => (status, headers, Full::new(body).boxed()),
        Reply::Stream { status, headers, chunks } => {
            let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            (status, headers, BodyExt::boxed(StreamBody::new(stream)))
        }
    };
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    builder.body(body).unwrap()
}

/// How to start a broker.
pub struct BrokerSpec {
    pub config: Value,
    pub env: Vec<(String, String)>,
    pub keyring: bool,
    /// Files to place in `$CREDENTIALS_DIRECTORY`.
    pub credentials: Vec<(String, String)>,
    /// Content of `$CODEX_HOME/auth.json`.
    pub codex_auth: Option<Value>,
    /// Make the temp dir traversable by other uids (for the uid tests).
    pub world_traversable: bool,
    /// `SPIDERWEB_BROKER_LOG`: tests log everything (so leaks would show), the benchmark little.
    pub log: &'static str,
}

impl Default for BrokerSpec {
    fn default() -> Self {
        BrokerSpec {
            config: json!({}),
            env: vec![],
            keyring: false,
            credentials: vec![],
            codex_auth: None,
            world_traversable: false,
            log: "debug",
        }
    }
}

/// A running broker; killed (with its D-Bus session, if any) when dropped.
pub struct Broker {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub stderr_path: PathBuf,
    pub bus_address: Option<String>,
}

pub fn require_tool(name: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    assert!(found, "this test needs `{name}` (Debian package {package}); scripts/test installs it");
}

impl Broker {
    pub fn start(spec: BrokerSpec) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        if spec.world_traversable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let socket = dir.path().join("run/spiderweb/broker.sock");
        if spec.world_traversable {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o755).create(dir.path().join("run")).unwrap();
        }
        let config_path = dir.path().join("broker.json");
        std::fs::write(&config_path, spec.config.to_string()).unwrap();
        let stderr_path = dir.path().join("broker.stderr");
        let codex_home = dir.path().join("codex");
        std::fs::create_dir_all(&codex_home).unwrap();
        if let Some(auth) = &spec.codex_auth {
            write_private(&codex_home.join("auth.json"), &serde_json::to_vec_pretty(auth).unwrap());
        }
        let mut cmd = if spec.keyring {
            require_tool("dbus-run-session", "dbus");
            require_tool("gnome-keyring-daemon", "gnome-keyring");
            require_tool("secret-tool", "libsecret-tools");
            let script = r#"set -e
printf '%s' "$TEST_KEYRING_PASSWORD" | gnome-keyring-daemon --unlock --components=secrets >/dev/null
printf '%s' "$DBUS_SESSION_BUS_ADDRESS" > "$TEST_BUS_FILE.tmp"
mv "$TEST_BUS_FILE.tmp" "$TEST_BUS_FILE"
exec "$@""#;
            let mut cmd = Command::new("dbus-run-session");
            cmd.args(["--", "bash", "-c", script, "broker-under-dbus", BROKER]);
            cmd
        } else {
            Command::new(BROKER)
        };
        cmd.arg("--config").arg(&config_path).arg("--socket").arg(&socket);
        let runtime_dir = dir.path().join("xdg-runtime");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_RUNTIME_DIR", &runtime_dir)
            .env("CODEX_HOME", &codex_home)
            .env("SPIDERWEB_BROKER_LOG", spec.log)
            .env("TEST_KEYRING_PASSWORD", "test-keyring-password")
            .env("TEST_BUS_FILE", dir.path().join("bus"));
        if !spec.credentials.is_empty() {
            let creds = dir.path().join("credentials");
            std::fs::create_dir_all(&creds).unwrap();
            for (name, value) in &spec.credentials {
                write_private(&creds.join(name), value.as_bytes());
            }
            cmd.env("CREDENTIALS_DIRECTORY", creds);
        }
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).process_group(0);
        let child = cmd.spawn().expect("start spiderweb-broker");
        let mut broker = Broker { child, dir, socket, stderr_path, bus_address: None };
        broker.wait_ready(spec.keyring);
        broker
    }

    fn wait_ready(&mut self, keyring: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("broker exited early ({status}): {}", self.stderr());
            }
            let bus_ready = !keyring || self.dir.path().join("bus").exists();
            if self.socket.exists() && bus_ready {
                break;
            }
            assert!(Instant::now() < deadline, "broker did not start in 20 s: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        if keyring {
            self.bus_address = Some(std::fs::read_to_string(self.dir.path().join("bus")).unwrap());
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn codex_auth_path(&self) -> PathBuf {
        self.dir.path().join("codex/auth.json")
    }

    /// A connection to the broker. The socket file appears at bind(), a moment before listen():
    /// a refused connection in that window is retried, for a bounded time.
    pub async fn client(&self) -> BrokerClient {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match BrokerClient::connect(&self.socket).await {
                Ok(client) => return client,
                Err(spiderweb_client::broker::ClientError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("connect to the broker: {e:?}\n{}", self.stderr()),
            }
        }
    }

    /// `secret-tool` on the broker's session bus.
    pub fn secret_tool(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let bus = self.bus_address.as_ref().expect("broker started with a keyring");
        let mut child = Command::new("secret-tool")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    }

    /// `spiderweb-config` against this broker, with a gateway config in the broker's dir.
    pub fn config_cli(&self) -> Command {
        let mut cmd = Command::new(CONFIG_CLI);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(self.dir.path().join("gateway.json"));
        cmd
    }

    /// Waits for the broker to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker still running after {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // The whole group: dbus-run-session, dbus-daemon, gnome-keyring-daemon and the broker.
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// A provider request with a JSON body.
pub fn provider_request(id: u64, provider: &str, path: &str, body: Value) -> BrokerRequest {
    BrokerRequest::ProviderRequest(ProviderRequest {
        id,
        provider: provider.into(),
        method: "POST".into(),
        path: path.into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.to_string()).into(),
    })
}

/// What a provider request produced, collected until its end or error.
#[derive(Debug, Default)]
pub struct Collected {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub error: Option<(spiderweb_proto::broker::ErrorCode, String)>,
    pub ended: bool,
    /// Every reply as JSON text, to search for leaked keys.
    pub wire: String,
}

impl Collected {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` and reads its replies until `End` or `Error`.
pub async fn call(client: &mut BrokerClient, request: BrokerRequest) -> Collected {
    let id = request.id();
    client.send(request).await.unwrap();
    collect(client, id).await
}

/// Reads replies of request `id` until `End` or `Error` (other ids are not expected).
pub async fn collect(client: &mut BrokerClient, id: u64) -> Collected {
    let mut c = Collected::default();
    loop {
        let reply =
            tokio::time::timeout(Duration::from_secs(20), client.next()).await.expect("reply within 20 s").unwrap();
        c.wire.push_str(&serde_json::to_string(&reply).unwrap());
        assert_eq!(reply.id().unwrap_or(id), id, "reply for another request: {reply:?}");
        match reply {
            BrokerReply::ResponseHead { status, headers, .. } => {
                c.status = Some(status);
                c.headers = headers;
            }
            BrokerReply::BodyChunk { data, .. } => c.body.extend_from_slice(&data.0),
            BrokerReply::End { .. } => {
                c.ended = true;
                return c;
            }
            BrokerReply::Error { code, message, .. } => {
                c.error = Some((code, message));
                return c;
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
}
