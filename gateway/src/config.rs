//! The configuration file and where the gateway keeps its state.
//!
//! The file is `--config`, else `$SPIDERWEB_CONFIG`, else `~/.config/spiderweb/config.json`
//! (spec `legacy-v1.md` §7): sections `server`, `provider`, `log`, `runtime` with the original's
//! keys and defaults, plus our transport limits under `server`. A missing file means defaults.
//!
//! Unknown keys are reported (a warning naming each key) so that a typo does not silently
//! keep a default; a value of the wrong type or out of range refuses start-up with a message
//! naming the key. Keys the original had that do nothing here are accepted and reported once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use spiderweb_service::config::ConfigError;
use spiderweb_service::config::{home_dir, read_json};

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    pub provider: ProviderConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    /// The gateway's own exports on `/v2/fs`.
    pub fs: FsConfig,
    /// Paired nodes: tunnels and the embedded local node.
    pub nodes: NodesConfig,
}

/// The `nodes` section (spec `fs-node.md` §7, `unified-v2.md` §8).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodesConfig {
    /// How long a request relayed through a node's tunnel waits for the reply (then
    /// `err_fs` 5 `NodeTunnelUnavailable`).
    pub tunnel_reply_timeout_ms: u64,
    /// Lease of the embedded node `spiderweb-local` (registered when `fs.exports` is set);
    /// renewed every half lease.
    pub local_lease_ttl_ms: u64,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig { tunnel_reply_timeout_ms: 45_000, local_lease_ttl_ms: 900_000 }
    }
}

impl NodesConfig {
    pub fn tunnel_reply_timeout(&self) -> Duration {
        Duration::from_millis(self.tunnel_reply_timeout_ms)
    }
}

/// The `fs` section: directories the gateway exports itself on `/v2/fs`, served by the same
/// code as `spiderweb-fs-node` (spec `fs-node.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsConfig {
    /// `name=/path[:ro|:rw]`, as `spiderweb-fs-node --export`.
    pub exports: Vec<String>,
    /// The token a node hello must carry (`$SPIDERWEB_FS_AUTH_TOKEN` also sets it); required
    /// when there are exports.
    pub auth_token: Option<String>,
    pub max_connections: usize,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig { exports: Vec::new(), auth_token: None, max_connections: 64 }
    }
}

impl FsConfig {
    /// The auth token: the config's, else the environment's.
    pub fn token(&self) -> Option<String> {
        self.auth_token.clone().or_else(|| std::env::var("SPIDERWEB_FS_AUTH_TOKEN").ok()).filter(|t| !t.is_empty())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub bind: IpAddr,
    pub port: u16,
    /// Largest WebSocket message accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Open WebSocket connections, all tokens together.
    pub max_connections: usize,
    /// Open WebSocket connections per bearer token.
    pub max_connections_per_token: usize,
    pub max_fids_per_connection: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Time allowed for the HTTP upgrade, and then for the first version message.
    pub handshake_timeout_ms: u64,
    /// Browser origins allowed besides loopback, e.g. `https://app.example`.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 18790,
            max_frame_bytes: 4 * 1024 * 1024,
            max_connections: 4096,
            max_connections_per_token: 512,
            max_fids_per_connection: 4096,
            idle_timeout_ms: 300_000,
            handshake_timeout_ms: 10_000,
            allowed_origins: Vec::new(),
        }
    }
}

impl ServerConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// The wire format (`openai`, `anthropic`, `gemini`, `openai-compatible`, … see
    /// `providers::ProviderKind::from_config_name`).
    pub name: String,
    pub model: String,
    /// Accepted for the original's configs; the broker's configuration decides where
    /// requests go (`providers.<id>.base_url` there).
    pub base_url: Option<String>,
    /// The broker's provider id to send requests to (default: `name`'s canonical name).
    pub broker_provider: Option<String>,
    /// Cap on one reply's tokens (default: the catalog's max output, at most 8192).
    pub max_output_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Azure OpenAI `api-version`.
    pub azure_api_version: Option<String>,
    /// The system prompt of every conversation.
    pub system_prompt: Option<String>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: "openai".into(),
            model: "gpt-4o-mini".into(),
            base_url: None,
            broker_provider: None,
            max_output_tokens: None,
            temperature: None,
            azure_api_version: None,
            system_prompt: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

/// The `runtime` section (spec `legacy-v1.md` §7). Keys used by the agent runtime are kept
/// here with their defaults so that a config written for the original validates today.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    pub inbound_queue_max: usize,
    pub brain_tick_queue_max: usize,
    /// Frames waiting to be written to one client; a client that lets it fill is disconnected.
    pub outbound_queue_max: usize,
    pub control_queue_max: usize,
    pub connection_worker_threads: usize,
    pub connection_queue_max: usize,
    pub runtime_worker_threads: usize,
    pub runtime_request_queue_max: usize,
    pub chat_operation_timeout_ms: u64,
    pub control_operation_timeout_ms: u64,
    pub run_checkpoint_interval_steps: u64,
    pub run_auto_resume_on_boot: bool,
    pub tool_retry_max_attempts: u32,
    pub tool_lease_timeout_ms: u64,
    pub max_inflight_tool_calls_per_run: u32,
    pub max_run_steps: u64,
    pub default_agent_id: String,
    pub spider_web_root: String,
    /// The state directory (tokens, database). Relative paths are relative to the working directory.
    pub ltm_directory: Option<PathBuf>,
    pub ltm_filename: String,
    pub assets_dir: String,
    /// Agent definitions, `<agents_dir>/<id>/agent.json`; relative to the state directory.
    pub agents_dir: PathBuf,
    pub sandbox_enabled: bool,
    pub sandbox_mounts_root: Option<String>,
    pub sandbox_runtime_root: Option<String>,
    pub sandbox_rootfs_base_ref: Option<String>,
    pub sandbox_rootfs_store_root: Option<String>,
    pub sandbox_overlay_root: Option<String>,
    pub sandbox_snapshot_root: Option<String>,
    pub sandbox_launcher: Option<String>,
    pub sandbox_fs_mount_bin: Option<String>,
    pub sandbox_agent_runtime_bin: Option<String>,
    /// The broker's socket (default `$XDG_RUNTIME_DIR/spiderweb/broker.sock`, else
    /// `/run/spiderweb/broker.sock`); `--broker-socket` wins.
    pub broker_socket: Option<PathBuf>,
    /// The worker supervisor's socket (same directory, `worker.sock`); `--worker-socket` wins.
    pub worker_socket: Option<PathBuf>,
    /// Workspaces live in `<workspace_root>/<project_id>` (default `<state dir>/workspaces`).
    pub workspace_root: Option<PathBuf>,
    /// When a tool call needs a human's approval: `never`, `on-request`, `untrusted`.
    pub approval_mode: spiderweb_policy::approval::ApprovalMode,
    /// The sandbox profile tools run under.
    pub sandbox_profile: spiderweb_proto::worker::SandboxProfile,
    /// Budgets; a turn that would exceed one stops with `budget_exceeded`.
    pub budget: BudgetConfig,
    /// Also write each conversation as JSONL (the Codex server's transcript format) in
    /// this directory; `$SESSION_STORE_PATH` sets it too.
    pub session_store_path: Option<PathBuf>,
}

/// Spending limits (`runtime.budget`). Unset means unlimited.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    pub session_max_tokens: Option<u64>,
    pub session_max_usd: Option<f64>,
    /// Per role token (admin or user) per UTC day.
    pub user_daily_max_tokens: Option<u64>,
    pub user_daily_max_usd: Option<f64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            inbound_queue_max: 512,
            brain_tick_queue_max: 256,
            outbound_queue_max: 512,
            control_queue_max: 128,
            connection_worker_threads: 16,
            connection_queue_max: 128,
            // The original ran each turn on a thread and defaulted to 2; here a turn is a task
            // that mostly waits, so the default admits more at once.
            runtime_worker_threads: 16,
            runtime_request_queue_max: 128,
            chat_operation_timeout_ms: 300_000,
            control_operation_timeout_ms: 5_000,
            run_checkpoint_interval_steps: 1,
            run_auto_resume_on_boot: true,
            tool_retry_max_attempts: 3,
            tool_lease_timeout_ms: 30_000,
            max_inflight_tool_calls_per_run: 1,
            max_run_steps: 1024,
            default_agent_id: "mother".into(),
            spider_web_root: "/".into(),
            ltm_directory: None,
            ltm_filename: "spiderweb.db".into(),
            assets_dir: "templates".into(),
            agents_dir: PathBuf::from("agents"),
            sandbox_enabled: true,
            sandbox_mounts_root: None,
            sandbox_runtime_root: None,
            sandbox_rootfs_base_ref: None,
            sandbox_rootfs_store_root: None,
            sandbox_overlay_root: None,
            sandbox_snapshot_root: None,
            sandbox_launcher: None,
            sandbox_fs_mount_bin: None,
            sandbox_agent_runtime_bin: None,
            broker_socket: None,
            worker_socket: None,
            workspace_root: None,
            approval_mode: Default::default(),
            sandbox_profile: Default::default(),
            budget: BudgetConfig::default(),
            session_store_path: None,
        }
    }
}

/// Keys of the original that configure its bwrap sandbox; our tools run in `spiderweb-worker`.
const NO_EFFECT_KEYS: &[&str] = &[
    "runtime.sandbox_mounts_root",
    "runtime.sandbox_runtime_root",
    "runtime.sandbox_rootfs_base_ref",
    "runtime.sandbox_rootfs_store_root",
    "runtime.sandbox_overlay_root",
    "runtime.sandbox_snapshot_root",
    "runtime.sandbox_launcher",
    "runtime.sandbox_fs_mount_bin",
    "runtime.sandbox_agent_runtime_bin",
    "runtime.connection_worker_threads",
    "runtime.brain_tick_queue_max",
];

/// A loaded configuration and what the operator should be told about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    pub file_exists: bool,
    /// One line per unknown or ignored key.
    pub warnings: Vec<String>,
}

/// The config file to read: the flag, else `$SPIDERWEB_CONFIG`, else `~/.config/spiderweb/config.json`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("SPIDERWEB_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    home_dir().join(".config/spiderweb/config.json")
}

/// Reads and validates the file at `path` (defaults when it does not exist).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
    let Some(file) = read_json::<Config>(path)? else {
        return Ok(Loaded {
            config: Config::default(),
            path: path.to_path_buf(),
            file_exists: false,
            warnings: vec![],
        });
    };
    let config = file.value;
    let mut warnings: Vec<String> =
        file.unknown_keys.iter().map(|key| format!("unknown config key {key} (ignored)")).collect();
    let seen: serde_json::Value = serde_json::from_str(&file.text).map_err(|e| invalid(e.to_string()))?;
    for key in NO_EFFECT_KEYS {
        let (section, name) = key.split_once('.').unwrap_or(("", key));
        if seen.get(section).and_then(|s| s.get(name)).is_some() {
            warnings.push(format!("config key {key} has no effect in spiderweb (tools run in spiderweb-worker)"));
        }
    }
    if config.runtime.default_agent_id != "mother" {
        warnings.push("config key runtime.default_agent_id is ignored: the default agent is always mother".into());
    }
    validate(&config).map_err(invalid)?;
    Ok(Loaded { config, path: path.to_path_buf(), file_exists: true, warnings })
}

/// Range checks that types alone cannot express. Each message starts with the key.
fn validate(c: &Config) -> Result<(), String> {
    let positive: &[(&str, u64)] = &[
        ("server.max_frame_bytes", c.server.max_frame_bytes as u64),
        ("server.max_connections", c.server.max_connections as u64),
        ("server.max_connections_per_token", c.server.max_connections_per_token as u64),
        ("server.max_fids_per_connection", c.server.max_fids_per_connection as u64),
        ("server.idle_timeout_ms", c.server.idle_timeout_ms),
        ("server.handshake_timeout_ms", c.server.handshake_timeout_ms),
        ("runtime.outbound_queue_max", c.runtime.outbound_queue_max as u64),
        ("runtime.runtime_worker_threads", c.runtime.runtime_worker_threads as u64),
        ("runtime.runtime_request_queue_max", c.runtime.runtime_request_queue_max as u64),
        ("runtime.chat_operation_timeout_ms", c.runtime.chat_operation_timeout_ms),
        ("runtime.max_run_steps", c.runtime.max_run_steps),
        ("runtime.max_inflight_tool_calls_per_run", u64::from(c.runtime.max_inflight_tool_calls_per_run)),
        ("runtime.tool_retry_max_attempts", u64::from(c.runtime.tool_retry_max_attempts)),
        ("runtime.tool_lease_timeout_ms", c.runtime.tool_lease_timeout_ms),
    ];
    for (key, value) in positive {
        if *value == 0 {
            return Err(format!("{key}: must be greater than 0"));
        }
    }
    // Frames above 64 MiB would let one client pin that much memory per connection.
    if c.server.max_frame_bytes > 64 * 1024 * 1024 {
        return Err("server.max_frame_bytes: must be at most 67108864 (64 MiB)".into());
    }
    for origin in &c.server.allowed_origins {
        if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
            return Err(format!("server.allowed_origins: {origin:?} is not an origin (scheme://host[:port], no path)"));
        }
    }
    if c.log.level.parse::<tracing::Level>().is_err() {
        return Err(format!("log.level: {:?} is not one of trace, debug, info, warn, error", c.log.level));
    }
    if crate::providers::ProviderKind::from_config_name(&c.provider.name).is_none() {
        return Err(format!(
            "provider.name: {:?} is not a provider this gateway speaks (openai, openai-responses, openai-codex, \
             anthropic, kimi-coding, gemini, azure-openai, openai-compatible, plugin)",
            c.provider.name
        ));
    }
    if c.provider.model.trim().is_empty() {
        return Err("provider.model: must name a model".into());
    }
    if let Err(e) = spiderweb_policy::export::ExportSpec::parse_all(&c.fs.exports) {
        return Err(format!("fs.exports: {e}"));
    }
    if !c.fs.exports.is_empty() && c.fs.token().is_none() {
        return Err("fs.auth_token: required when fs.exports is set (or set SPIDERWEB_FS_AUTH_TOKEN): \
                    anyone who reaches the gateway's port could otherwise use the exports"
            .into());
    }
    if !(1..=3_600_000).contains(&c.nodes.tunnel_reply_timeout_ms) {
        return Err("nodes.tunnel_reply_timeout_ms: must be 1 to 3600000".into());
    }
    if !(2_000..=30 * 24 * 3_600_000).contains(&c.nodes.local_lease_ttl_ms) {
        return Err("nodes.local_lease_ttl_ms: must be 2000 to 2592000000 (30 days)".into());
    }
    if c.fs.max_connections == 0 {
        return Err("fs.max_connections: must be greater than 0".into());
    }
    let budget = &c.runtime.budget;
    for (key, value) in [("session_max_usd", budget.session_max_usd), ("user_daily_max_usd", budget.user_daily_max_usd)]
    {
        if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(format!("runtime.budget.{key}: must be a non-negative number"));
        }
    }
    if c.runtime.ltm_filename.is_empty() || c.runtime.ltm_filename.contains('/') {
        return Err("runtime.ltm_filename: must be a plain file name".into());
    }
    Ok(())
}

/// The state directory: `--state-dir`, else `runtime.ltm_directory`, else `$STATE_DIRECTORY`
/// (systemd `StateDirectory=`), else `$XDG_STATE_HOME/spiderweb`, else `~/.local/state/spiderweb`.
pub fn state_dir(flag: Option<&Path>, config: &Config) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = &config.runtime.ltm_directory {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("STATE_DIRECTORY").filter(|p| !p.is_empty()) {
        // systemd may pass several colon-separated directories; the first is ours.
        let first = p.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return PathBuf::from(first);
    }
    if let Some(p) = std::env::var_os("XDG_STATE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("spiderweb");
    }
    home_dir().join(".local/state/spiderweb")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn missing_file_gives_defaults() {
        let loaded = load(Path::new("/nonexistent/spiderweb.json")).unwrap();
        assert!(!loaded.file_exists);
        assert_eq!(loaded.config.server.port, 18790);
        assert_eq!(loaded.config.server.bind.to_string(), "127.0.0.1");
    }

    #[test]
    fn unknown_keys_are_reported_by_path() {
        let loaded = load_text(r#"{"server":{"port":9000,"bogus":1},"extra":{}}"#).unwrap();
        assert_eq!(loaded.config.server.port, 9000);
        let all = loaded.warnings.join("\n");
        assert!(all.contains("server.bogus"), "{all}");
        assert!(all.contains("extra"), "{all}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, key) in [
            (r#"{"server":{"port":"abc"}}"#, "server.port"),
            (r#"{"server":{"port":70000}}"#, "server.port"),
            (r#"{"server":{"bind":"not an ip"}}"#, "server.bind"),
            (r#"{"server":{"max_connections":0}}"#, "server.max_connections"),
            (r#"{"runtime":{"outbound_queue_max":-1}}"#, "runtime.outbound_queue_max"),
            (r#"{"log":{"level":"loud"}}"#, "log.level"),
            (r#"{"server":{"allowed_origins":["evil.example"]}}"#, "server.allowed_origins"),
        ] {
            let err = load_text(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn sandbox_keys_of_the_original_are_accepted_and_reported() {
        let loaded = load_text(r#"{"runtime":{"sandbox_launcher":"bwrap"}}"#).unwrap();
        assert!(loaded.warnings.iter().any(|w| w.contains("runtime.sandbox_launcher")));
    }
}
