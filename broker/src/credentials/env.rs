//! Provider keys from the broker's environment, read once at start.
//!
//! The variables are snapshotted into zeroizing strings when the broker starts, so a key set
//! later in the (immutable) environment block cannot change behaviour mid-run and the lookup
//! per request costs nothing. The only children the broker starts are plugin providers, whose
//! environment is cleared and given back only their own key (`crate::plugin`);
//! `PR_SET_DUMPABLE=0` keeps `/proc/<pid>/environ` from other users of the same uid.

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
pub struct EnvKeys(HashMap<String, SecretString>);

impl EnvKeys {
    /// Snapshot of the process environment: the built-in providers' variables and `extra`
    /// (the `key_env` of configured plugins).
    pub fn from_process<'a>(extra: impl IntoIterator<Item = &'a str>) -> Self {
        let mut keys = HashMap::new();
        for name in KNOWN_VARIABLES.iter().copied().chain(extra) {
            if let Ok(value) = std::env::var(name)
                && !value.trim().is_empty()
            {
                keys.insert(name.to_owned(), SecretString::from(value.trim().to_owned()));
            }
        }
        EnvKeys(keys)
    }

    /// The first of `chain` that is set, with its name.
    pub fn first<'a>(&self, chain: &'a [String]) -> Option<(&'a str, SecretString)> {
        chain.iter().find_map(|name| {
            self.0.get(name).map(|k| (name.as_str(), SecretString::from(k.expose_secret().to_owned())))
        })
    }
}
