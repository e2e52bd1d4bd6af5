//! The broker's configuration file.
//!
//! `--config`, else `$SPIDERWEB_BROKER_CONFIG`, else `~/.config/spiderweb/broker.json`. A missing
//! file means defaults (one user on a laptop: only the broker's own uid may connect, the
//! built-in providers at their public URLs). As in the gateway's config, unknown keys are
//! warned by path and an invalid value refuses start-up with a message naming the key.
//!
//! This file never holds a key: keys live in the Secret Service, systemd credentials or the
//! environment. A `key`-like field would be an unknown key and is reported as such.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spiderweb_policy::broker_access::BrokerAccess;
use spiderweb_service::config::read_json;

use crate::providers::ProviderKind;

pub use spiderweb_service::config::ConfigError;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where to listen.
    pub socket: SocketConfig,
    /// Which uids may run which operation.
    pub access: BrokerAccess,
    /// Overrides of built-in providers and additional (e.g. local) providers, by id.
    pub providers: BTreeMap<String, ProviderOverride>,
    /// Sizes, counts and timeouts.
    pub limits: Limits,
    /// Codex OAuth.
    pub codex: CodexConfig,
    /// Logging.
    pub log: LogConfig,
}

/// The `socket` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SocketConfig {
    /// Socket path (default `$XDG_RUNTIME_DIR/spiderweb/broker.sock`); `--socket` wins.
    pub path: Option<PathBuf>,
    /// A gid that may connect (the gateway's group): the socket becomes 0660 and its directory
    /// 0710 with this group. Without it the socket is 0600 in a 0700 directory.
    pub group: Option<u32>,
}

/// One entry of `providers`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderOverride {
    /// Required for a new id; for a built-in id it defaults to the built-in kind.
    pub kind: Option<ProviderKind>,
    /// The base URL every request of this provider must stay below.
    pub base_url: Option<String>,
    /// Codex providers: the base for requests made with an API key rather than the Codex
    /// login (default `https://api.openai.com/v1`).
    pub api_key_base_url: Option<String>,
    /// Plugins: the absolute path of the binary (never run through a shell).
    pub command: Option<PathBuf>,
    /// Plugins: its arguments.
    pub args: Option<Vec<String>>,
    /// Plugins: how long one call may take (default 120000).
    pub timeout_ms: Option<u64>,
    /// Plugins: the environment variable through which the plugin gets its key (resolved as
    /// for any provider: Secret Service, `$CREDENTIALS_DIRECTORY/<id>-api-key`, then the
    /// broker's own variable of that name). Without it the plugin gets no key.
    pub key_env: Option<String>,
}

impl ProviderOverride {
    /// The plugin-only fields that are set, by name.
    pub fn plugin_fields(&self) -> Vec<&'static str> {
        [
            ("command", self.command.is_some()),
            ("args", self.args.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("key_env", self.key_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// The `limits` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest frame accepted from a client.
    pub max_frame_bytes: usize,
    /// Largest provider request body.
    pub max_request_body_bytes: usize,
    /// Open client connections.
    pub max_connections: usize,
    /// Provider requests in flight on one connection.
    pub max_requests_per_connection: usize,
    /// Upstream requests in flight, all connections together.
    pub max_concurrent_upstream: usize,
    /// How long a request waits for an upstream slot before `busy`.
    pub queue_timeout_ms: u64,
    /// TCP + TLS connect to a provider.
    pub connect_timeout_ms: u64,
    /// From sending the request to the response head.
    pub response_timeout_ms: u64,
    /// Longest silence between two body chunks of a streamed reply.
    pub idle_read_timeout_ms: u64,
    /// How long a credential looked up in a backend is reused before it is looked up again.
    pub credential_cache_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: spiderweb_proto::broker::DEFAULT_MAX_FRAME_BYTES,
            max_request_body_bytes: 8 * 1024 * 1024,
            max_connections: 256,
            max_requests_per_connection: 256,
            max_concurrent_upstream: 64,
            queue_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            response_timeout_ms: 120_000,
            idle_read_timeout_ms: 300_000,
            credential_cache_ms: 30_000,
        }
    }
}

impl Limits {
    /// See [`Limits::queue_timeout_ms`].
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms)
    }
    /// See [`Limits::connect_timeout_ms`].
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    /// See [`Limits::response_timeout_ms`].
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }
    /// See [`Limits::idle_read_timeout_ms`].
    pub fn idle_read_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_read_timeout_ms)
    }
    /// See [`Limits::credential_cache_ms`].
    pub fn credential_cache(&self) -> Duration {
        Duration::from_millis(self.credential_cache_ms)
    }
}

/// The `codex` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct CodexConfig {
    /// Directory of `auth.json` (default `$CODEX_HOME`, else `~/.codex`).
    pub home: Option<PathBuf>,
    /// OAuth token endpoint (default `$CODEX_REFRESH_TOKEN_URL_OVERRIDE`, else OpenAI's).
    pub token_url: Option<String>,
    /// OAuth client id of the Codex CLI.
    pub client_id: String,
    /// A token older than this is refreshed before use.
    pub refresh_after_days: u64,
}

impl Default for CodexConfig {
    fn default() -> Self {
        CodexConfig {
            home: None,
            token_url: None,
            client_id: "app_EMoamEEZ73f0CkXaXp7hrann".into(),
            refresh_after_days: 8,
        }
    }
}

/// The `log` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `trace` … `error`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

/// A loaded configuration and what the operator should be told about it.
#[derive(Debug)]
pub struct Loaded {
    /// The values.
    pub config: Config,
    /// One line per unknown key.
    pub warnings: Vec<String>,
}

/// The config file to read: the flag, else `$SPIDERWEB_BROKER_CONFIG`, else `~/.config/spiderweb/broker.json`.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("SPIDERWEB_BROKER_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    crate::paths::home_dir().join(".config/spiderweb/broker.json")
}

/// Reads and validates the file at `path` (defaults when it does not exist).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let Some(file) = read_json::<Config>(path)? else {
        return Ok(Loaded { config: Config::default(), warnings: vec![] });
    };
    validate(&file.value).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })?;
    let warnings = file.unknown_keys.iter().map(|key| format!("unknown config key {key} (ignored)")).collect();
    Ok(Loaded { config: file.value, warnings })
}

/// Range checks that types alone cannot express. Each message starts with the key.
fn validate(c: &Config) -> Result<(), String> {
    let l = &c.limits;
    let positive: &[(&str, u64)] = &[
        ("limits.max_frame_bytes", l.max_frame_bytes as u64),
        ("limits.max_request_body_bytes", l.max_request_body_bytes as u64),
        ("limits.max_connections", l.max_connections as u64),
        ("limits.max_requests_per_connection", l.max_requests_per_connection as u64),
        ("limits.max_concurrent_upstream", l.max_concurrent_upstream as u64),
        ("limits.queue_timeout_ms", l.queue_timeout_ms),
        ("limits.connect_timeout_ms", l.connect_timeout_ms),
        ("limits.response_timeout_ms", l.response_timeout_ms),
        ("limits.idle_read_timeout_ms", l.idle_read_timeout_ms),
        ("codex.refresh_after_days", c.codex.refresh_after_days),
    ];
    for (key, value) in positive {
        if *value == 0 {
            return Err(format!("{key}: must be greater than 0"));
        }
    }
    if l.max_frame_bytes > 64 * 1024 * 1024 {
        return Err("limits.max_frame_bytes: must be at most 67108864 (64 MiB)".into());
    }
    // A body must fit in one frame once base64 grows it by a third (plus 16 KiB of headers).
    if l.max_request_body_bytes.div_ceil(3) * 4 + 16 * 1024 > l.max_frame_bytes {
        return Err(format!(
            "limits.max_request_body_bytes: {} does not fit in limits.max_frame_bytes {} once base64-encoded",
            l.max_request_body_bytes, l.max_frame_bytes
        ));
    }
    if c.log.level.parse::<tracing::Level>().is_err() {
        return Err(format!("log.level: {:?} is not one of trace, debug, info, warn, error", c.log.level));
    }
    if let Some(url) = &c.codex.token_url {
        crate::providers::parse_base_url(url).map_err(|e| format!("codex.token_url: {e}"))?;
    }
    for (id, p) in &c.providers {
        crate::providers::check_id(id).map_err(|e| format!("providers.{id}: {e}"))?;
        if let Some(url) = &p.base_url {
            crate::providers::parse_base_url(url).map_err(|e| format!("providers.{id}.base_url: {e}"))?;
        }
    }
    crate::providers::Catalogue::build(&c.providers)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.json");
        std::fs::write(&path, text).unwrap();
        load(&path)
    }

    #[test]
    fn missing_file_gives_defaults_that_admit_only_self() {
        let loaded = load(Path::new("/nonexistent/broker.json")).unwrap();
        assert_eq!(loaded.config.access, BrokerAccess::default());
        assert_eq!(loaded.config.limits.max_concurrent_upstream, 64);
    }

    #[test]
    fn unknown_keys_are_warned_by_path() {
        let loaded = load_text(r#"{"limits":{"max_connections":5,"bogus":1},"api_key":"x"}"#).unwrap();
        assert_eq!(loaded.config.limits.max_connections, 5);
        let all = loaded.warnings.join("\n");
        assert!(all.contains("limits.bogus") && all.contains("api_key"), "{all}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, key) in [
            (r#"{"limits":{"max_connections":0}}"#, "limits.max_connections"),
            (r#"{"limits":{"queue_timeout_ms":"soon"}}"#, "limits.queue_timeout_ms"),
            (r#"{"limits":{"max_request_body_bytes":60000000}}"#, "limits.max_request_body_bytes"),
            (r#"{"log":{"level":"loud"}}"#, "log.level"),
            (r#"{"access":{"key_admin":["root"]}}"#, "access.key_admin"),
            (r#"{"providers":{"local":{"base_url":"http://127.0.0.1:1/v1"}}}"#, "providers.local"),
            (r#"{"providers":{"openai":{"base_url":"ftp://x"}}}"#, "providers.openai.base_url"),
            (r#"{"providers":{"openai":{"base_url":"https://u:p@x/v1"}}}"#, "providers.openai.base_url"),
            (r#"{"providers":{"Bad Id":{"kind":"openai","base_url":"https://x"}}}"#, "providers.Bad Id"),
            (r#"{"codex":{"token_url":"not a url"}}"#, "codex.token_url"),
            (r#"{"providers":{"p":{"kind":"plugin"}}}"#, "providers.p.command"),
            (r#"{"providers":{"p":{"kind":"plugin","command":"bin/p"}}}"#, "providers.p.command"),
            (r#"{"providers":{"p":{"kind":"plugin","command":"/bin/p","timeout_ms":0}}}"#, "providers.p.timeout_ms"),
            (
                r#"{"providers":{"p":{"kind":"plugin","command":"/bin/p","key_env":"LD_PRELOAD"}}}"#,
                "providers.p.key_env",
            ),
            (r#"{"providers":{"p":{"kind":"plugin","command":"/bin/p","key_env":"A-B"}}}"#, "providers.p.key_env"),
            (r#"{"providers":{"p":{"kind":"plugin","command":"/p","base_url":"http://x"}}}"#, "providers.p.base_url"),
            (r#"{"providers":{"openai":{"kind":"plugin","command":"/bin/p"}}}"#, "providers.openai.kind"),
            (r#"{"providers":{"openai":{"command":"/bin/p"}}}"#, "providers.openai.command"),
        ] {
            let err = load_text(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
