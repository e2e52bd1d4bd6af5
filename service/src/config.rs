//! JSON configuration files, read the same way by every daemon.
//!
//! Operators expect one behaviour from all spiderweb config files: a key the daemon does not
//! know is reported by its full path (a typo must not be silently ignored), and a value of
//! the wrong type stops the daemon with a message that starts with the key. Range checks
//! that types cannot express stay with each daemon, which words them the same way.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A value is wrong; the message starts with its key.
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A parsed file, with what the daemon may still need to tell the operator.
#[derive(Debug)]
pub struct JsonFile<T> {
    pub value: T,
    /// Full paths (`server.bogus`) of keys the type does not know; they were ignored.
    pub unknown_keys: Vec<String>,
    /// The file's text, for daemons that also look for keys they accept but ignore.
    pub text: String,
}

/// Reads `path` as `T`. `Ok(None)` when the file does not exist, so each daemon decides
/// whether that means defaults or an error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<JsonFile<T>>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
    };
    let mut unknown_keys = Vec::new();
    let mut json = serde_json::Deserializer::from_str(&text);
    let mut record = |key: serde_ignored::Path<'_>| unknown_keys.push(key.to_string());
    let ignored = serde_ignored::Deserializer::new(&mut json, &mut record);
    let value: T = serde_path_to_error::deserialize(ignored).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid { path: path.to_path_buf(), message: format!("{key}: {}", e.into_inner()) }
    })?;
    Ok(Some(JsonFile { value, unknown_keys, text }))
}

/// `$HOME`, else the current directory (a service without a home still gets a usable path).
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        nested: Nested,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    struct Nested {
        #[serde(default)]
        level: String,
    }

    fn read(text: &str) -> Result<Option<JsonFile<Sample>>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, text).unwrap();
        read_json(&path)
    }

    #[test]
    fn unknown_keys_are_reported_by_path_and_wrong_values_by_key() {
        let file = read(r#"{"port": 1, "nested": {"level": "x", "typo": 2}, "extra": true}"#).unwrap().unwrap();
        assert_eq!((file.value.port, file.value.nested.level.as_str()), (1, "x"));
        assert_eq!(file.unknown_keys, ["nested.typo", "extra"]);
        let err = read(r#"{"nested": {"level": 5}}"#).unwrap_err().to_string();
        assert!(err.contains("nested.level: invalid type"), "{err}");
    }

    #[test]
    fn a_missing_file_is_none_and_an_unreadable_one_an_error() {
        assert!(read_json::<Sample>(Path::new("/nonexistent/c.json")).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_json::<Sample>(dir.path()), Err(ConfigError::Read { .. })));
    }
}
