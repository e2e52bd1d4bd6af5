//! The provider catalogue: which upstreams exist, where they live and how they authenticate.
//!
//! The broker alone decides where a provider request goes. A client names a provider id and a
//! path; the URL is the configured base URL plus that path, and [`Provider::target_url`]
//! refuses anything that could leave the base (`..`, encoded dots or slashes, a scheme, a
//! second authority). The result is checked again after parsing, so the check never rests on
//! string shape alone.
//!
//! Credentials are added here, in the header the provider documents; client-sent headers pass
//! only through an allowlist that contains no credential header, so a client can never choose
//! or override the credential (nor learn it by reflecting it to a server it controls).

use std::collections::BTreeMap;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::ProviderOverride;
use crate::plugin::{self, PluginSpec};

/// How a provider is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI API: `Authorization: Bearer`.
    Openai,
    /// OpenAI Codex backend: `Authorization: Bearer` with an API key or the Codex OAuth
    /// access token (plus `ChatGPT-Account-Id`).
    OpenaiCodex,
    /// Anthropic Messages API (and Anthropic-compatible, e.g. Kimi Coding): `x-api-key` and
    /// `anthropic-version`.
    Anthropic,
    /// Google Gemini API: `x-goog-api-key`.
    Gemini,
    /// Azure OpenAI deployment: `api-key`.
    AzureOpenai,
    /// A local OpenAI-compatible server (Ollama, vLLM, llama.cpp): no credential.
    OpenaiCompatible,
    /// A local binary speaking JSON-RPC on stdin/stdout (`crate::plugin`): its credential, if
    /// it takes one, goes into the environment variable its config names.
    Plugin,
}

/// The `anthropic-version` sent when the client does not choose one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A configured provider.
#[derive(Clone, Debug)]
pub struct Provider {
    /// Its id, e.g. `kimi-coding`.
    pub id: String,
    /// How it authenticates.
    pub kind: ProviderKind,
    /// Every request stays below this URL. `None` for a built-in that needs configuring
    /// (Azure: the deployment URL is the operator's).
    pub base_url: Option<Url>,
    /// Environment variables of the broker holding its key, in precedence order.
    pub env_vars: Vec<String>,
    /// Codex only: where requests authenticated with an API key go. The ChatGPT backend
    /// (`base_url`) accepts only the Codex login; an API key is for the OpenAI API.
    pub api_key_base_url: Option<Url>,
    /// Plugins only: what to run.
    pub plugin: Option<PluginSpec>,
}

/// A request the catalogue refuses.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The path is not a plain path below the base URL.
    #[error("path not allowed: {0}")]
    Path(&'static str),
    /// The provider has no base URL configured.
    #[error("provider {0} has no base_url; set providers.{0}.base_url in the broker's config")]
    Unconfigured(String),
}

struct Builtin {
    id: &'static str,
    kind: ProviderKind,
    base_url: Option<&'static str>,
    env_vars: &'static [&'static str],
}

/// Where Codex requests authenticated with an API key go by default.
const OPENAI_API_BASE: &str = "https://api.openai.com/v1";

/// The seed's providers with their documented endpoints and the seed's env precedence.
const BUILTINS: &[Builtin] = &[
    Builtin {
        id: "openai",
        kind: ProviderKind::Openai,
        base_url: Some("https://api.openai.com/v1"),
        env_vars: &["OPENAI_API_KEY"],
    },
    Builtin {
        id: "openai-codex",
        kind: ProviderKind::OpenaiCodex,
        base_url: Some("https://chatgpt.com/backend-api/codex"),
        env_vars: &["OPENAI_CODEX_API_KEY", "OPENAI_API_KEY"],
    },
    Builtin {
        id: "openai-codex-spark",
        kind: ProviderKind::OpenaiCodex,
        base_url: Some("https://chatgpt.com/backend-api/codex"),
        env_vars: &["OPENAI_CODEX_SPARK_API_KEY", "OPENAI_CODEX_API_KEY", "OPENAI_API_KEY"],
    },
    Builtin {
        id: "kimi-coding",
        kind: ProviderKind::Anthropic,
        base_url: Some("https://api.kimi.com/coding/v1"),
        env_vars: &["KIMICODE_API_KEY", "KIMI_API_KEY", "ANTHROPIC_API_KEY"],
    },
    Builtin {
        id: "anthropic",
        kind: ProviderKind::Anthropic,
        base_url: Some("https://api.anthropic.com/v1"),
        env_vars: &["ANTHROPIC_API_KEY"],
    },
    Builtin {
        id: "azure-openai",
        kind: ProviderKind::AzureOpenai,
        base_url: None,
        env_vars: &["AZURE_OPENAI_API_KEY"],
    },
    Builtin {
        id: "gemini",
        kind: ProviderKind::Gemini,
        base_url: Some("https://generativelanguage.googleapis.com/v1beta"),
        env_vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
    },
];

/// All providers, built-in and configured, by id.
#[derive(Clone, Debug)]
pub struct Catalogue {
    providers: BTreeMap<String, Provider>,
}

impl Catalogue {
    /// The built-ins with the configuration's overrides and additions applied.
    pub fn build(overrides: &BTreeMap<String, ProviderOverride>) -> Result<Catalogue, String> {
        let mut providers = BTreeMap::new();
        for b in BUILTINS {
            let base_url = b.base_url.map(|u| parse_base_url(u).expect("built-in URLs are valid"));
            providers.insert(
                b.id.to_owned(),
                Provider {
                    id: b.id.into(),
                    kind: b.kind,
                    base_url,
                    env_vars: b.env_vars.iter().map(|v| (*v).to_owned()).collect(),
                    api_key_base_url: None,
                    plugin: None,
                },
            );
        }
        for (id, o) in overrides {
            if o.kind == Some(ProviderKind::Plugin) {
                if providers.contains_key(id) {
                    return Err(format!(
                        "providers.{id}.kind: the built-in provider {id} cannot be a plugin; give the plugin an id of its own"
                    ));
                }
                providers.insert(id.clone(), plugin_provider(id, o)?);
                continue;
            }
            if let Some(field) = o.plugin_fields().first() {
                return Err(format!("providers.{id}.{field}: only for providers of kind \"plugin\""));
            }
            let base_url = o
                .base_url
                .as_deref()
                .map(parse_base_url)
                .transpose()
                .map_err(|e| format!("providers.{id}.base_url: {e}"))?;
            let api_key_base_url = o
                .api_key_base_url
                .as_deref()
                .map(parse_base_url)
                .transpose()
                .map_err(|e| format!("providers.{id}.api_key_base_url: {e}"))?;
            match providers.get_mut(id) {
                Some(p) => {
                    if let Some(kind) = o.kind {
                        p.kind = kind;
                    }
                    if base_url.is_some() {
                        p.base_url = base_url;
                    }
                    if api_key_base_url.is_some() {
                        p.api_key_base_url = api_key_base_url;
                    }
                }
                None => {
                    let kind = o
                        .kind
                        .ok_or_else(|| format!("providers.{id}.kind: required for a provider that is not built in"))?;
                    let base_url = base_url.ok_or_else(|| {
                        format!("providers.{id}.base_url: required for a provider that is not built in")
                    })?;
                    providers.insert(
                        id.clone(),
                        Provider {
                            id: id.clone(),
                            kind,
                            base_url: Some(base_url),
                            env_vars: Vec::new(),
                            api_key_base_url,
                            plugin: None,
                        },
                    );
                }
            }
        }
        for p in providers.values_mut() {
            if p.kind == ProviderKind::OpenaiCodex && p.api_key_base_url.is_none() {
                p.api_key_base_url = Some(parse_base_url(OPENAI_API_BASE).expect("valid URL"));
            }
        }
        Ok(Catalogue { providers })
    }

    /// The provider of that id.
    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.providers.get(id)
    }

    /// All providers in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }
}

/// A `kind: "plugin"` entry: a command instead of a URL, and the broker's variable of the same
/// name as `key_env` as the environment source of its key.
fn plugin_provider(id: &str, o: &ProviderOverride) -> Result<Provider, String> {
    if o.base_url.is_some() || o.api_key_base_url.is_some() {
        return Err(format!("providers.{id}.base_url: a plugin has a command, not a URL"));
    }
    let command = o.command.clone().ok_or_else(|| format!("providers.{id}.command: required for a plugin"))?;
    if !command.is_absolute() {
        return Err(format!("providers.{id}.command: {} must be an absolute path", command.display()));
    }
    let args = o.args.clone().unwrap_or_default();
    if args.len() > MAX_PLUGIN_ARGS {
        return Err(format!("providers.{id}.args: more than {MAX_PLUGIN_ARGS} arguments"));
    }
    if args.iter().any(|a| a.contains('\0')) || command.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(format!("providers.{id}.args: a NUL byte cannot be passed to a program"));
    }
    let timeout = match o.timeout_ms {
        None => plugin::DEFAULT_TIMEOUT,
        Some(ms) if ms == 0 || u128::from(ms) > plugin::MAX_TIMEOUT.as_millis() => {
            return Err(format!(
                "providers.{id}.timeout_ms: must be between 1 and {}",
                plugin::MAX_TIMEOUT.as_millis()
            ));
        }
        Some(ms) => std::time::Duration::from_millis(ms),
    };
    if let Some(name) = &o.key_env {
        check_key_env(name).map_err(|e| format!("providers.{id}.key_env: {e}"))?;
    }
    Ok(Provider {
        id: id.to_owned(),
        kind: ProviderKind::Plugin,
        base_url: None,
        env_vars: o.key_env.iter().cloned().collect(),
        api_key_base_url: None,
        plugin: Some(PluginSpec { command, args, timeout, key_env: o.key_env.clone() }),
    })
}

/// Most arguments a plugin command line may have.
const MAX_PLUGIN_ARGS: usize = 256;

/// A plugin's key variable: a plain name, and not one that would change how the plugin is
/// found or loaded (`PATH`, `LD_*`) or replace what it inherits.
fn check_key_env(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !plain {
        return Err(format!("{name:?} is not an environment variable name (letters, digits, _)"));
    }
    if matches!(name, "PATH" | "HOME" | "LANG") || name.starts_with("LD_") {
        return Err(format!("{name} cannot carry a key"));
    }
    Ok(())
}

impl Provider {
    /// Whether requests to it carry a credential: every HTTP provider but a local
    /// OpenAI-compatible server, and plugins that name a `key_env`.
    pub fn needs_credential(&self) -> bool {
        match self.kind {
            ProviderKind::OpenaiCompatible => false,
            ProviderKind::Plugin => self.plugin.as_ref().is_some_and(|p| p.key_env.is_some()),
            _ => true,
        }
    }

    /// Whether the Codex CLI's OAuth login is a credential source for it.
    pub fn uses_codex_oauth(&self) -> bool {
        self.kind == ProviderKind::OpenaiCodex
    }

    /// The upstream URL for `path` (which may carry a query), confined below the base URL —
    /// for a Codex provider reached with an API key (`with_api_key`), below `api_key_base_url`.
    pub fn target_url(&self, path_and_query: &str, with_api_key: bool) -> Result<Url, TargetError> {
        let api_key_base = self.api_key_base_url.as_ref().filter(|_| with_api_key);
        let base = api_key_base.or(self.base_url.as_ref()).ok_or_else(|| TargetError::Unconfigured(self.id.clone()))?;
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        check_path(path)?;
        if let Some(q) = query
            && (q.contains('#') || q.chars().any(|c| c.is_control() || c == ' '))
        {
            return Err(TargetError::Path("query contains a fragment, space or control character"));
        }
        let mut url = base.clone();
        let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url.set_query(query);
        // Defence in depth: whatever the string checks above missed, the parsed result must
        // still be on the same origin and below the base path.
        let base_path = base.path().trim_end_matches('/');
        let below = url.path() == base_path || url.path().starts_with(&format!("{base_path}/"));
        if url.origin() != base.origin() || !below || url.fragment().is_some() {
            return Err(TargetError::Path("resolves outside the provider's base URL"));
        }
        Ok(url)
    }
}

fn check_path(path: &str) -> Result<(), TargetError> {
    if !path.starts_with('/') {
        return Err(TargetError::Path("must start with /"));
    }
    if path.len() > 2048 {
        return Err(TargetError::Path("longer than 2048 bytes"));
    }
    if path.starts_with("//") {
        return Err(TargetError::Path("starts with // (a second authority)"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\' || c == ' ' || c == '#' || c == '@') {
        return Err(TargetError::Path("contains a backslash, space, #, @ or control character"));
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return Err(TargetError::Path("contains an encoded dot, slash, backslash or NUL"));
    }
    if path.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(TargetError::Path("contains a . or .. segment"));
    }
    Ok(())
}

/// Parses a configured base URL: http(s), a host, no credentials, no query or fragment.
pub fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{text:?}: must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: must not have a query or fragment"));
    }
    Ok(url)
}

/// Provider ids are what `secret-tool` attributes and file names are made of: keep them plain.
pub fn check_id(id: &str) -> Result<(), String> {
    let plain = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !id.starts_with('-');
    if plain { Ok(()) } else { Err("a provider id is 1-64 characters of a-z, 0-9, - and _".into()) }
}

/// Request headers a client may pass to the provider. Anything else (in particular
/// `authorization`, `x-api-key`, `api-key`, `x-goog-api-key`, `cookie`, `host`) is refused.
const REQUEST_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "idempotency-key",
    "x-request-id",
    "user-agent",
    "session_id",
    "originator",
    "x-stainless-retry-count",
];

/// Checks and converts the client's headers. The error names the first refused header.
pub fn request_headers(pairs: &[(String, String)]) -> Result<HeaderMap, String> {
    if pairs.len() > 64 {
        return Err("more than 64 headers".into());
    }
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        let lower = name.to_ascii_lowercase();
        if !REQUEST_HEADERS.contains(&lower.as_str()) {
            return Err(format!("header {lower:?} is not allowed (credentials are added by the broker)"));
        }
        let name = HeaderName::from_bytes(lower.as_bytes()).map_err(|_| format!("header name {lower:?} is invalid"))?;
        let value = HeaderValue::from_str(value).map_err(|_| format!("header {lower:?} has an invalid value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// Whether an upstream response header is forwarded to the client: content description,
/// request ids and rate-limit hints. Never cookies or anything that could echo a credential.
pub fn forward_response_header(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "retry-after" | "request-id" | "x-request-id" | "openai-processing-ms" | "openai-model"
    ) || name.starts_with("x-ratelimit-")
        || name.starts_with("anthropic-ratelimit-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai_at(base: &str) -> Provider {
        Provider {
            id: "t".into(),
            kind: ProviderKind::Openai,
            base_url: Some(parse_base_url(base).unwrap()),
            env_vars: Vec::new(),
            api_key_base_url: None,
            plugin: None,
        }
    }

    #[test]
    fn paths_join_below_the_base() {
        let p = openai_at("https://api.example.com/v1");
        assert_eq!(
            p.target_url("/chat/completions", false).unwrap().as_str(),
            "https://api.example.com/v1/chat/completions"
        );
        let g = openai_at("https://g.example.com/v1beta/");
        assert_eq!(
            g.target_url("/models/gemini-2.0:streamGenerateContent?alt=sse", false).unwrap().as_str(),
            "https://g.example.com/v1beta/models/gemini-2.0:streamGenerateContent?alt=sse"
        );
    }

    #[test]
    fn escapes_are_refused() {
        let p = openai_at("https://api.example.com/v1");
        for bad in [
            "chat",
            "/../admin",
            "/a/../../x",
            "/%2e%2e/x",
            "/%2E./x",
            "/a%2fb",
            "//evil.example/x",
            "/x\\..\\y",
            "/@evil.example",
            "/x#frag",
            "/ok?x=1#f",
            "/a\r\nHost: evil",
            "/.",
        ] {
            assert!(p.target_url(bad, false).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn unconfigured_builtin_says_which_key_to_set() {
        let c = Catalogue::build(&BTreeMap::new()).unwrap();
        let err = c.get("azure-openai").unwrap().target_url("/chat/completions", false).unwrap_err().to_string();
        assert!(err.contains("providers.azure-openai.base_url"), "{err}");
    }

    #[test]
    fn env_precedence_is_the_seeds() {
        let c = Catalogue::build(&BTreeMap::new()).unwrap();
        let chain = |id: &str| c.get(id).unwrap().env_vars.to_vec();
        assert_eq!(
            chain("openai-codex-spark"),
            ["OPENAI_CODEX_SPARK_API_KEY", "OPENAI_CODEX_API_KEY", "OPENAI_API_KEY"]
        );
        assert_eq!(chain("openai-codex"), ["OPENAI_CODEX_API_KEY", "OPENAI_API_KEY"]);
        assert_eq!(chain("openai"), ["OPENAI_API_KEY"]);
        assert_eq!(chain("kimi-coding"), ["KIMICODE_API_KEY", "KIMI_API_KEY", "ANTHROPIC_API_KEY"]);
        assert_eq!(chain("anthropic"), ["ANTHROPIC_API_KEY"]);
        assert_eq!(chain("azure-openai"), ["AZURE_OPENAI_API_KEY"]);
        assert_eq!(chain("gemini"), ["GEMINI_API_KEY", "GOOGLE_API_KEY"]);
    }

    #[test]
    fn credential_headers_from_clients_are_refused() {
        for name in ["Authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "host", "ChatGPT-Account-Id"]
        {
            let err = request_headers(&[(name.into(), "v".into())]).unwrap_err();
            assert!(err.contains(&name.to_ascii_lowercase()), "{err}");
        }
        let ok = request_headers(&[("Content-Type".into(), "application/json".into())]).unwrap();
        assert_eq!(ok["content-type"], "application/json");
    }

    #[test]
    fn set_cookie_is_never_forwarded() {
        assert!(!forward_response_header("set-cookie"));
        assert!(forward_response_header("retry-after"));
        assert!(forward_response_header("anthropic-ratelimit-requests-remaining"));
    }
}
