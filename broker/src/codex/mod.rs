//! Codex OAuth: the Codex CLI's login (`$CODEX_HOME/auth.json`) as a credential, kept fresh.
//!
//! A token is refreshed before use when `last_refresh` is older than
//! `codex.refresh_after_days` or its JWT `exp` has passed, and once after an upstream 401.
//!
//! Ordering constraints, because refresh tokens rotate and are single-use (using one twice
//! logs the user out):
//! 1. one refresh at a time in this process (an async mutex: 50 requests that all find the
//!    token stale cause one exchange; the other 49 re-read the file and use its result);
//! 2. after taking the mutex, and again after taking the cross-process file lock, re-read the
//!    file: another request or another process (the Codex CLI) may have refreshed already;
//! 3. hold the file lock from that re-read until the new tokens are on disk.
//!
//! Permanent failures (`refresh_token_expired`/`_reused`/`_invalidated`) tell the operator to
//! run `codex login`; others are retried with backoff, then reported as retryable.

pub mod auth_file;
mod refresh;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use spiderweb_proto::broker::CredentialSource;

use crate::credentials::Credential;
use auth_file::{AuthContents, AuthFile, AuthFileError, CodexTokens};
use refresh::RefreshFailure;

/// Default OAuth token endpoint of the Codex CLI.
pub const DEFAULT_TOKEN_URL: &str = "https://auth.openai.com/oauth/token";

/// Waits between refresh attempts after a retryable failure.
const RETRY_DELAYS: &[Duration] = &[Duration::from_millis(250), Duration::from_millis(1000)];

/// A JWT this close to its `exp` is treated as expired (clock skew, request latency).
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Why no Codex credential could be produced.
#[derive(Debug, thiserror::Error)]
pub enum CodexError {
    /// The login is gone; only a new login helps.
    #[error("the Codex login is no longer valid ({code}); log in again with `codex login`")]
    Reauth {
        /// The token endpoint's error code.
        code: String,
    },
    /// Refreshing failed for a reason that may pass.
    #[error("refreshing the Codex login failed: {0}; retry later")]
    RefreshFailed(String),
    /// `auth.json` is unreadable or malformed.
    #[error("Codex auth file: {0}")]
    File(#[from] AuthFileError),
}

/// Where `auth.json` is and how to refresh it.
pub struct CodexSettings {
    /// The `auth.json` path.
    pub auth_path: PathBuf,
    /// The token endpoint.
    pub token_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// Refresh when `last_refresh` is older than this.
    pub stale_after: Duration,
    /// Bound on one token exchange.
    pub exchange_timeout: Duration,
}

impl CodexSettings {
    /// `auth.json` under `home`, else `$CODEX_HOME`, else `~/.codex`.
    pub fn auth_path(home: Option<PathBuf>) -> PathBuf {
        home.or_else(|| {
            std::env::var_os("CODEX_HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| crate::paths::home_dir().join(".codex"))
        .join("auth.json")
    }

    /// The configured URL, else `$CODEX_REFRESH_TOKEN_URL_OVERRIDE`, else OpenAI's.
    pub fn token_url(configured: Option<String>) -> String {
        configured
            .or_else(|| {
                std::env::var("CODEX_REFRESH_TOKEN_URL_OVERRIDE")
                    .ok()
                    .filter(|u| !u.is_empty())
            })
            .unwrap_or_else(|| DEFAULT_TOKEN_URL.into())
    }
}

/// The Codex login and its single-flight refresh.
pub struct CodexAuth {
    file: AuthFile,
    settings: CodexSettings,
    http: reqwest::Client,
    refresh_lock: tokio::sync::Mutex<()>,
}

impl CodexAuth {
    /// A login read from `settings.auth_path`, refreshed through `http`.
    pub fn new(settings: CodexSettings, http: reqwest::Client) -> Self {
        CodexAuth {
            file: AuthFile::new(settings.auth_path.clone()),
            settings,
            http,
            refresh_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Which source `auth.json` offers, without refreshing.
    pub fn source(&self) -> Option<CredentialSource> {
        match self.file.read() {
            Ok(Some(AuthContents::Tokens(_))) => Some(CredentialSource::CodexOauth),
            Ok(Some(AuthContents::ApiKey(_))) => Some(CredentialSource::CodexAuthFileKey),
            _ => None,
        }
    }

    /// The credential `auth.json` provides, refreshed first if stale. `None` if it has none.
    pub async fn credential(&self) -> Result<Option<Credential>, CodexError> {
        match self.file.read()? {
            None | Some(AuthContents::Empty) => Ok(None),
            Some(AuthContents::ApiKey(key)) => Ok(Some(Credential::ApiKey {
                key: Arc::new(key),
                source: CredentialSource::CodexAuthFileKey,
            })),
            Some(AuthContents::Tokens(t)) if self.is_fresh(&t) => Ok(Some(oauth(t))),
            Some(AuthContents::Tokens(_)) => self.refresh(None).await.map(Some),
        }
    }

    /// After the upstream refused `rejected` with 401: a token other than `rejected` (one that
    /// someone else refreshed meanwhile, or a newly refreshed one).
    pub async fn refresh_after_unauthorized(
        &self,
        rejected: &SecretString,
    ) -> Result<Credential, CodexError> {
        self.refresh(Some(rejected)).await
    }

    fn is_fresh(&self, t: &CodexTokens) -> bool {
        let now = SystemTime::now();
        let recent = t.last_refresh.is_some_and(|at| {
            now.duration_since(at).unwrap_or_default() < self.settings.stale_after
        });
        let unexpired = auth_file::jwt_expiry(t.access_token.expose_secret())
            .is_none_or(|exp| exp > now + EXPIRY_MARGIN);
        recent && unexpired
    }

    /// Fresh tokens that are not the rejected ones, if the file holds such.
    fn usable_on_disk(
        &self,
        rejected: Option<&SecretString>,
    ) -> Result<Option<Credential>, CodexError> {
        match self.file.read()? {
            Some(AuthContents::Tokens(t))
                if self.is_fresh(&t)
                    && rejected
                        .is_none_or(|r| r.expose_secret() != t.access_token.expose_secret()) =>
            {
                Ok(Some(oauth(t)))
            }
            _ => Ok(None),
        }
    }

    async fn refresh(&self, rejected: Option<&SecretString>) -> Result<Credential, CodexError> {
        let _single_flight = self.refresh_lock.lock().await;
        if let Some(c) = self.usable_on_disk(rejected)? {
            return Ok(c);
        }
        let file = AuthFile::new(self.file.path().to_path_buf());
        let _file_lock = tokio::task::spawn_blocking(move || file.lock())
            .await
            .map_err(|e| CodexError::RefreshFailed(format!("lock task failed: {e}")))??;
        if let Some(c) = self.usable_on_disk(rejected)? {
            return Ok(c);
        }
        let Some(AuthContents::Tokens(tokens)) = self.file.read()? else {
            return Err(CodexError::Reauth {
                code: "no tokens in auth.json".into(),
            });
        };
        let mut attempt = 0;
        let update = loop {
            let result = refresh::exchange(
                &self.http,
                &self.settings.token_url,
                &self.settings.client_id,
                &tokens.refresh_token,
                self.settings.exchange_timeout,
            )
            .await;
            match result {
                Ok(update) => break update,
                Err(RefreshFailure::Permanent(code)) => {
                    tracing::warn!(%code, "Codex refresh token refused permanently; `codex login` needed");
                    return Err(CodexError::Reauth { code });
                }
                Err(RefreshFailure::Retryable(why)) => match RETRY_DELAYS.get(attempt) {
                    Some(delay) => {
                        tracing::info!(attempt, "Codex refresh failed ({why}); retrying");
                        tokio::time::sleep(*delay).await;
                        attempt += 1;
                    }
                    None => return Err(CodexError::RefreshFailed(why)),
                },
            }
        };
        self.file.write_refreshed(&update, SystemTime::now())?;
        tracing::info!(path = %self.file.path().display(), "Codex login refreshed");
        Ok(Credential::CodexOauth {
            access_token: Arc::new(update.access_token),
            account_id: tokens.account_id,
        })
    }
}

fn oauth(t: CodexTokens) -> Credential {
    Credential::CodexOauth {
        access_token: Arc::new(t.access_token),
        account_id: t.account_id,
    }
}
