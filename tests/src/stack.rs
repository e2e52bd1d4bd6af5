//! The whole stack for end-to-end tests: a real broker, a real worker supervisor and a real
//! gateway, wired through their Unix sockets, with a provider the test controls.
//!
//! The broker holds the provider's key (from an environment variable, as an operator
//! would set it); the gateway never sees it. The worker supervisor runs as root here (the
//! tests do), so tools run under a tenant uid that owns the project's workspace.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_provider::{FakeProvider, Format};
use crate::{Gateway, bin_dir};

/// The provider as both sides configure it.
#[derive(Clone, Debug)]
pub struct ProviderSetup {
    /// The broker's provider id (also the gateway's `provider.broker_provider`).
    pub id: String,
    /// The broker's `providers.<id>` entry (`kind`, `base_url`, plugin `command` …).
    pub broker_entry: Value,
    /// The gateway's `provider.name` (its wire format).
    pub gateway_name: String,
    pub model: String,
    /// `(variable, key)` given to the broker's environment.
    pub key_env: Option<(String, String)>,
}

/// The key tests give the broker; a provider request without it is a bug.
pub const TEST_KEY: &str = "sk-test-0123456789";

impl ProviderSetup {
    /// A fake provider of `fake`'s format, as the built-in provider of that format.
    pub fn fake(fake: &FakeProvider) -> ProviderSetup {
        let (id, kind, gateway_name, var, model) = match fake.format() {
            Format::OpenAiChat => ("openai", "openai", "openai", "OPENAI_API_KEY", "gpt-4o-mini"),
            Format::OpenAiResponses => ("openai", "openai", "openai-responses", "OPENAI_API_KEY", "gpt-4.1-mini"),
            Format::Anthropic => ("anthropic", "anthropic", "anthropic", "ANTHROPIC_API_KEY", "claude-sonnet-4-5"),
            Format::Gemini => ("gemini", "gemini", "gemini", "GEMINI_API_KEY", "gemini-2.5-flash"),
            Format::AzureOpenAi => ("azure-openai", "azure-openai", "azure-openai", "AZURE_OPENAI_API_KEY", "gpt-4o"),
        };
        ProviderSetup {
            id: id.into(),
            broker_entry: json!({"kind": kind, "base_url": fake.base_url()}),
            gateway_name: gateway_name.into(),
            model: model.into(),
            key_env: Some((var.into(), TEST_KEY.into())),
        }
    }
}

/// The project every admin session is bound to at first, and so the tenant of its tools.
pub const SYSTEM_PROJECT: &str = "system";
/// The uid tools of [`SYSTEM_PROJECT`] run as.
pub const TENANT_UID: u32 = 345_678;

/// Tenants (projects) the worker supervisor knows: `system` and the first projects a test
/// creates (`proj-1` …), each with its own uid and workspace.
fn tenant_uids() -> Vec<(String, u32)> {
    let mut tenants = vec![(SYSTEM_PROJECT.to_owned(), TENANT_UID)];
    tenants.extend((1..=3).map(|n| (format!("proj-{n}"), TENANT_UID + n)));
    tenants
}

pub struct Stack {
    pub gateway: Gateway,
    broker: Child,
    worker: Child,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Starts broker, worker supervisor and gateway. `gateway_overlay` is merged into the
    /// gateway's config (e.g. `{"runtime": {"approval_mode": "untrusted"}}`).
    pub fn start(provider: &ProviderSetup, gateway_overlay: Value) -> Stack {
        Self::start_with_broker(provider, gateway_overlay, json!({}))
    }

    /// As [`Stack::start`], with `broker_overlay` merged into the broker's config (e.g. its
    /// `limits` for a load test).
    pub fn start_with_broker(provider: &ProviderSetup, gateway_overlay: Value, broker_overlay: Value) -> Stack {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the end-to-end runtime tests run the worker supervisor as root (tenant uids); run them as root"
        );
        let dir = tempfile::Builder::new().prefix("sw-stack-").tempdir().expect("temp dir");
        let broker_socket = dir.path().join("run/broker.sock");
        let worker_socket = dir.path().join("run/worker.sock");
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        let workspaces = dir.path().join("workspaces");
        let mut tenants = serde_json::Map::new();
        for (project, uid) in tenant_uids() {
            let workspace = workspaces.join(&project);
            std::fs::create_dir_all(&workspace).unwrap();
            std::os::unix::fs::chown(&workspace, Some(uid), Some(uid)).unwrap();
            tenants.insert(project, json!({"uid": uid, "gid": uid}));
        }

        let broker_config = dir.path().join("broker.json");
        let providers = json!({ &provider.id: provider.broker_entry });
        let mut broker_json = json!({"providers": providers});
        crate::merge_json(&mut broker_json, &broker_overlay);
        std::fs::write(&broker_config, broker_json.to_string()).unwrap();
        let mut broker = Command::new(bin_dir().join("spiderweb-broker"));
        broker
            .arg("--config")
            .arg(&broker_config)
            .arg("--socket")
            .arg(&broker_socket)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("SPIDERWEB_BROKER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("broker.stderr.log")).unwrap());
        if let Some((var, key)) = &provider.key_env {
            broker.env(var, key);
        }
        let broker = broker.spawn().expect("start spiderweb-broker");

        let worker_config = dir.path().join("worker.json");
        std::fs::write(
            &worker_config,
            json!({
                "socket": worker_socket,
                "workspace_roots": [workspaces],
                "uid_range": {"start": 300000, "count": 100000},
                "tenants": tenants,
            })
            .to_string(),
        )
        .unwrap();
        let worker = Command::new(bin_dir().join("spiderweb-worker"))
            .args(["supervise", "--config"])
            .arg(&worker_config)
            .env("SPIDERWEB_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("worker.stderr.log")).unwrap())
            .spawn()
            .expect("start spiderweb-worker supervise");
        let mut stack_dirs = StackDirs { broker, worker, dir };
        stack_dirs.wait_for(&broker_socket, "spiderweb-broker", "broker.stderr.log");
        stack_dirs.wait_for(&worker_socket, "spiderweb-worker supervise", "worker.stderr.log");

        let mut config = json!({
            "provider": {"name": provider.gateway_name, "model": provider.model, "broker_provider": provider.id},
            "runtime": {"broker_socket": broker_socket, "worker_socket": worker_socket, "workspace_root": workspaces},
        });
        crate::merge_json(&mut config, &gateway_overlay);
        // Agent `helper` exists so that tests can bind an agent to projects other than `system`.
        let gateway = Gateway::with_helper_agent(config);
        let StackDirs { broker, worker, dir } = stack_dirs;
        Stack { gateway, broker, worker, dir }
    }

    /// The system project's workspace (owned by [`TENANT_UID`]).
    pub fn workspace(&self) -> PathBuf {
        self.dir.path().join("workspaces").join(SYSTEM_PROJECT)
    }

    /// Writes a file into the workspace, owned by the tenant.
    pub fn seed_file(&self, name: &str, content: &str) {
        let path = self.workspace().join(name);
        std::fs::write(&path, content).unwrap();
        std::os::unix::fs::chown(&path, Some(TENANT_UID), Some(TENANT_UID)).unwrap();
    }

    pub fn broker_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.stderr.log")).unwrap_or_default()
    }

    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("worker.stderr.log")).unwrap_or_default()
    }

    pub fn broker_pid(&self) -> u32 {
        self.broker.id()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [&mut self.broker, &mut self.worker] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The children while the stack is being assembled, so that a failed start kills them.
struct StackDirs {
    broker: Child,
    worker: Child,
    dir: tempfile::TempDir,
}

impl StackDirs {
    fn wait_for(&mut self, socket: &Path, what: &str, log: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            let exited = [&mut self.broker, &mut self.worker].into_iter().any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                let text = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                let _ = self.broker.kill();
                let _ = self.worker.kill();
                panic!("{what} did not start listening on {}:\n{text}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// What a client does with an approval request: a decision word, or `None` to leave it.
pub type Approver<'a> = &'a mut dyn FnMut(&Value) -> Option<&'static str>;

/// Writes `prompt` to the chat input and returns the job id.
pub async fn send_prompt(client: &mut crate::Client, prompt: &str) -> String {
    let input = client.walk_ok(CHAT_INPUT).await;
    let job = send_prompt_via(client, input, prompt).await;
    client.clunk(input).await;
    job
}

/// The chat input file (spec acheron-worldfs §7).
pub const CHAT_INPUT: &str = "/agents/self/chat/control/input";

/// [`send_prompt`] through an input fid the client keeps open, as a chat client does.
pub async fn send_prompt_via(client: &mut crate::Client, input: u32, prompt: &str) -> String {
    let reply = client.write_fid(input, prompt.as_bytes()).await;
    assert_eq!(reply["ok"], json!(true), "chat write failed: {reply}");
    let job = reply["payload"]["job"].as_str().unwrap_or_else(|| panic!("chat write reply has no job: {reply}"));
    assert_eq!(
        reply["payload"]["result_path"],
        json!(format!("/agents/self/jobs/{job}/result.txt")),
        "chat write reply: {reply}"
    );
    job.to_owned()
}

/// Follows `events.ndjson` of `job` to its end, answering approval requests with `approve`;
/// returns every event line. Fails the test if the job does not end within `limit`.
pub async fn follow_job(client: &mut crate::Client, job: &str, approve: Approver<'_>, limit: Duration) -> Vec<Value> {
    use base64::Engine as _;
    let deadline = Instant::now() + limit;
    let fid = client.walk_ok(&format!("/agents/self/jobs/{job}/events.ndjson")).await;
    let mut text = Vec::new();
    let mut events = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "job {job} did not end in {limit:?}; events so far: {events:#?}");
        let reply =
            client.acheron_within("t_read", json!({"fid": fid, "offset": text.len(), "count": 65536}), limit).await;
        assert_eq!(reply["ok"], json!(true), "reading events of {job}: {reply}");
        let data = crate::B64.decode(reply["payload"]["data_b64"].as_str().unwrap_or_default()).unwrap();
        if data.is_empty() {
            let status = client.walk_read_json(&format!("/agents/self/jobs/{job}/status.json")).await;
            if matches!(status["state"].as_str(), Some("done" | "failed")) {
                break;
            }
            continue;
        }
        assert_eq!(data.last(), Some(&b'\n'), "events reads return whole lines: {:?}", String::from_utf8_lossy(&data));
        text.extend_from_slice(&data);
        for line in String::from_utf8(data).unwrap().lines() {
            let event: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("event line is not JSON ({e}): {line}"));
            if event["type"] == "approval_request"
                && let Some(decision) = approve(&event)
            {
                let answer = json!({"approval_id": event["approval_id"], "decision": decision});
                let path = format!("/agents/self/jobs/{job}/control/approve.json");
                let r = client.walk_write(&path, answer.to_string().as_bytes()).await;
                assert_eq!(r["ok"], json!(true), "approval answer refused: {r}");
                assert_eq!(r["payload"]["approval"]["accepted"], json!(true), "{r}");
            }
            events.push(event);
        }
    }
    client.clunk(fid).await;
    events
}

/// The events of one type.
pub fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// The concatenated `text` deltas.
pub fn streamed_text(events: &[Value]) -> String {
    of_type(events, "text").iter().filter_map(|e| e["text"].as_str()).collect()
}
