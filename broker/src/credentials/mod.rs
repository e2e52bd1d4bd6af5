//! Credential resolution: which key a provider request uses, and where it came from.
//!
//! Order (the seed's, extended): the Secret Service → systemd credentials
//! (`$CREDENTIALS_DIRECTORY/<provider>-api-key`) → environment variables in the provider's
//! precedence → for Codex providers, the Codex CLI's `auth.json` (OAuth tokens, else its
//! `OPENAI_API_KEY` field). The first source that has a key wins.
//!
//! Keys live only in `SecretString`s (zeroized on drop) and are cached for
//! `limits.credential_cache_ms` so that a busy gateway does not make a D-Bus round trip per
//! request; `set-key`, `clear-key` and an upstream 401 drop the cached entry. Nothing here
//! logs or formats a key: errors and status name the *source* only.

mod env;
mod keyring;
mod systemd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use spiderweb_proto::broker::CredentialSource;

use crate::codex::{CodexAuth, CodexError};
use crate::providers::Provider;

pub use env::EnvKeys;
pub use keyring::{Keyring, KeyringError};

/// What a provider request is authenticated with.
#[derive(Clone)]
pub enum Credential {
    /// A static API key.
    ApiKey {
        /// The key.
        key: Arc<SecretString>,
        /// Where it came from.
        source: CredentialSource,
    },
    /// The Codex CLI's OAuth access token.
    CodexOauth {
        /// `Authorization: Bearer` value.
        access_token: Arc<SecretString>,
        /// `ChatGPT-Account-Id`.
        account_id: Option<String>,
    },
}

impl Credential {
    /// The source, for status and error messages.
    pub fn source(&self) -> CredentialSource {
        match self {
            Credential::ApiKey { source, .. } => source.clone(),
            Credential::CodexOauth { .. } => CredentialSource::CodexOauth,
        }
    }
}

/// Why no credential could be produced.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No source has a key for this provider.
    #[error(
        "no credential for provider {provider}: store one with `spiderweb-config config set-key {provider}`, \
         or provide $CREDENTIALS_DIRECTORY/{provider}-api-key{env_hint}"
    )]
    Missing {
        /// Provider id.
        provider: String,
        /// `, or set one of …` listing the provider's environment variables.
        env_hint: String,
    },
    /// The Codex login failed to refresh.
    #[error(transparent)]
    Codex(#[from] CodexError),
}

struct Cached {
    credential: Credential,
    at: Instant,
}

/// Resolves credentials for providers.
pub struct Resolver {
    keyring: Keyring,
    credentials_dir: Option<PathBuf>,
    env: EnvKeys,
    codex: Arc<CodexAuth>,
    cache_for: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Resolver {
    /// A resolver over the given sources. `credentials_dir` is `$CREDENTIALS_DIRECTORY`.
    pub fn new(credentials_dir: Option<PathBuf>, env: EnvKeys, codex: Arc<CodexAuth>, cache_for: Duration) -> Self {
        Resolver {
            keyring: Keyring::default(),
            credentials_dir,
            env,
            codex,
            cache_for,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The Secret Service session, for set-key / clear-key.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The Codex OAuth state, for the refresh-after-401 path.
    pub fn codex(&self) -> &CodexAuth {
        &self.codex
    }

    /// Forgets the cached credential of `provider` (after set-key, clear-key or a 401).
    pub fn invalidate(&self, provider: &str) {
        self.cache.lock().expect("cache lock").remove(provider);
    }

    /// The credential a request to `provider` uses now. OAuth tokens are refreshed when stale.
    pub async fn resolve(&self, provider: &Provider) -> Result<Credential, ResolveError> {
        if let Some(c) = self.cache.lock().expect("cache lock").get(&provider.id)
            && c.at.elapsed() < self.cache_for
            && !matches!(c.credential, Credential::CodexOauth { .. })
        {
            return Ok(c.credential.clone());
        }
        let credential = match self.static_key(provider).await {
            Some((key, source)) => Credential::ApiKey { key: Arc::new(key), source },
            None if provider.uses_codex_oauth() => self.codex.credential().await?.ok_or_else(|| missing(provider))?,
            None => return Err(missing(provider)),
        };
        if !matches!(credential, Credential::CodexOauth { .. }) {
            self.cache
                .lock()
                .expect("cache lock")
                .insert(provider.id.clone(), Cached { credential: credential.clone(), at: Instant::now() });
        }
        Ok(credential)
    }

    /// Which source `resolve` would use, without refreshing anything.
    pub async fn source(&self, provider: &Provider) -> Option<CredentialSource> {
        if let Some((_, source)) = self.static_key(provider).await {
            return Some(source);
        }
        if provider.uses_codex_oauth() {
            return self.codex.source();
        }
        None
    }

    /// The first static key in resolution order (every source but Codex OAuth).
    async fn static_key(&self, provider: &Provider) -> Option<(SecretString, CredentialSource)> {
        match self.keyring.lookup(&provider.id).await {
            Ok(Some(key)) => return Some((key, CredentialSource::SecretService)),
            Ok(None) => {}
            // No Secret Service at all is normal on a server; a locked or failing one is not.
            Err(e @ KeyringError::Unavailable(_)) => {
                tracing::debug!(provider = %provider.id, "Secret Service skipped: {e}")
            }
            Err(e) => tracing::warn!(provider = %provider.id, "Secret Service skipped: {e}"),
        }
        if let Some(dir) = &self.credentials_dir {
            match systemd::read(dir, &provider.id) {
                Ok(Some(key)) => return Some((key, CredentialSource::SystemdCredential)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(provider = %provider.id, "systemd credential unreadable: {e}")
                }
            }
        }
        if let Some((variable, key)) = self.env.first(&provider.env_vars) {
            return Some((key, CredentialSource::Environment { variable: variable.into() }));
        }
        None
    }
}

fn missing(provider: &Provider) -> ResolveError {
    let env_hint = match provider.env_vars.as_slice() {
        [] => String::new(),
        vars => format!(", or set {}", vars.join(" / ")),
    };
    let env_hint =
        if provider.uses_codex_oauth() { format!("{env_hint}, or log in with `codex login`") } else { env_hint };
    ResolveError::Missing { provider: provider.id.clone(), env_hint }
}
