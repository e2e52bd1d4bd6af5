//! The Secret Service backend (GNOME Keyring, KWallet, KeePassXC) over D-Bus.
//!
//! Items carry the attributes `service=spiderweb` and `provider=<id>`, so that
//! `secret-tool lookup service spiderweb provider <id>` finds what `set-key` stored and an
//! operator can inspect or remove keys with the desktop's own tools.
//!
//! This module must never prompt: the broker is a daemon with no one to answer a prompt, so a
//! locked collection is reported as such (the operator unlocks it) instead of waiting forever.
//! Every D-Bus call is bounded by a timeout. Errors never contain the secret.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use secret_service::{EncryptionType, SecretService};
use tokio::sync::Mutex;

/// Bound on any one exchange with the Secret Service.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the Secret Service could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// No Secret Service on this session bus (or no session bus at all).
    #[error("no Secret Service is reachable: {0}")]
    Unavailable(String),
    /// The collection holding the item is locked.
    #[error("the keyring is locked; unlock it (e.g. log in to the desktop) and retry")]
    Locked,
    /// The service answered with an error.
    #[error("Secret Service error: {0}")]
    Backend(String),
    /// The service did not answer in time.
    #[error("the Secret Service did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
}

/// A lazily opened, reused Secret Service session.
#[derive(Default)]
pub struct Keyring {
    session: Mutex<Option<SecretService<'static>>>,
}

fn attributes(provider: &str) -> HashMap<&str, &str> {
    HashMap::from([("service", "spiderweb"), ("provider", provider)])
}

fn backend(e: secret_service::Error) -> KeyringError {
    match e {
        secret_service::Error::Locked => KeyringError::Locked,
        secret_service::Error::Unavailable => {
            KeyringError::Unavailable("no provider on the session bus".into())
        }
        other => KeyringError::Backend(other.to_string()),
    }
}

async fn bounded<T>(
    f: impl Future<Output = Result<T, secret_service::Error>>,
) -> Result<T, KeyringError> {
    tokio::time::timeout(CALL_TIMEOUT, f)
        .await
        .map_err(|_| KeyringError::Timeout)?
        .map_err(backend)
}

impl Keyring {
    /// The open session, opening it first if needed.
    async fn session(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<SecretService<'static>>>, KeyringError> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|a| a.is_empty()) {
                return Err(KeyringError::Unavailable(
                    "DBUS_SESSION_BUS_ADDRESS is not set".into(),
                ));
            }
            let ss = tokio::time::timeout(CALL_TIMEOUT, SecretService::connect(EncryptionType::Dh))
                .await
                .map_err(|_| KeyringError::Timeout)?
                .map_err(|e| KeyringError::Unavailable(e.to_string()))?;
            *guard = Some(ss);
        }
        Ok(guard)
    }

    /// A failed call drops the session so that the next call reconnects (the keyring daemon
    /// may have restarted).
    fn forget_on_failure<T>(
        guard: &mut Option<SecretService<'static>>,
        result: Result<T, KeyringError>,
    ) -> Result<T, KeyringError> {
        if matches!(
            result,
            Err(KeyringError::Backend(_) | KeyringError::Timeout)
        ) {
            *guard = None;
        }
        result
    }

    /// The stored key of `provider`, if any.
    pub async fn lookup(&self, provider: &str) -> Result<Option<SecretString>, KeyringError> {
        let mut guard = self.session().await?;
        let result = lookup_in(guard.as_ref().expect("opened"), provider).await;
        Self::forget_on_failure(&mut guard, result)
    }

    /// Stores (or replaces) the key of `provider` in the default collection.
    pub async fn store(&self, provider: &str, key: &SecretString) -> Result<(), KeyringError> {
        let mut guard = self.session().await?;
        let result = store_in(guard.as_ref().expect("opened"), provider, key).await;
        Self::forget_on_failure(&mut guard, result)
    }

    /// Deletes every item of `provider`. Returns whether one existed.
    pub async fn clear(&self, provider: &str) -> Result<bool, KeyringError> {
        let mut guard = self.session().await?;
        let result = clear_in(guard.as_ref().expect("opened"), provider).await;
        Self::forget_on_failure(&mut guard, result)
    }
}

async fn lookup_in(
    ss: &SecretService<'static>,
    provider: &str,
) -> Result<Option<SecretString>, KeyringError> {
    let found = bounded(ss.search_items(attributes(provider))).await?;
    let Some(item) = found.unlocked.first() else {
        return if found.locked.is_empty() {
            Ok(None)
        } else {
            Err(KeyringError::Locked)
        };
    };
    let bytes = zeroize::Zeroizing::new(bounded(item.get_secret()).await?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KeyringError::Backend("stored key is not UTF-8".into()))?;
    Ok(Some(SecretString::from(text.trim().to_owned())))
}

async fn store_in(
    ss: &SecretService<'static>,
    provider: &str,
    key: &SecretString,
) -> Result<(), KeyringError> {
    let collection = bounded(ss.get_default_collection()).await?;
    if bounded(collection.is_locked()).await? {
        return Err(KeyringError::Locked);
    }
    let label = format!("spiderweb API key for {provider}");
    bounded(collection.create_item(
        &label,
        attributes(provider),
        key.expose_secret().as_bytes(),
        true,
        "text/plain",
    ))
    .await?;
    Ok(())
}

async fn clear_in(ss: &SecretService<'static>, provider: &str) -> Result<bool, KeyringError> {
    let found = bounded(ss.search_items(attributes(provider))).await?;
    if found.unlocked.is_empty() && !found.locked.is_empty() {
        return Err(KeyringError::Locked);
    }
    for item in &found.unlocked {
        bounded(item.delete()).await?;
    }
    Ok(!found.unlocked.is_empty())
}
