//! Provider keys from the broker's environment, read once at start.
//!
//! The variables are snapshotted into zeroizing strings when the broker starts, so a key set
//! later in the (immutable) environment block cannot change behaviour mid-run and the lookup
//! per request costs nothing. The broker starts no child process, so the keys are passed to
//! no one; `PR_SET_DUMPABLE=0` keeps `/proc/<pid>/environ` from other users of the same uid.

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};

/// Every variable any built-in provider reads, in no particular order.
pub const KNOWN_VARIABLES: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENAI_CODEX_API_KEY",
    "OPENAI_CODEX_SPARK_API_KEY",
    "KIMICODE_API_KEY",
    "KIMI_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
];

/// The non-empty provider key variables present at start.
#[derive(Default)]
pub struct EnvKeys(HashMap<&'static str, SecretString>);

impl EnvKeys {
    /// Snapshot of the process environment.
    pub fn from_process() -> Self {
        let mut keys = HashMap::new();
        for name in KNOWN_VARIABLES {
            if let Ok(value) = std::env::var(name)
                && !value.trim().is_empty()
            {
                keys.insert(*name, SecretString::from(value.trim().to_owned()));
            }
        }
        EnvKeys(keys)
    }

    /// The first of `chain` that is set, with its name.
    pub fn first(&self, chain: &[&'static str]) -> Option<(&'static str, SecretString)> {
        chain.iter().find_map(|name| {
            self.0
                .get(name)
                .map(|k| (*name, SecretString::from(k.expose_secret().to_owned())))
        })
    }
}
