//! The Codex CLI's `auth.json`: reading it, and replacing it safely after a refresh.
//!
//! The file belongs to the Codex CLI, which may run (and refresh) at the same time as the
//! broker. So every read-modify-write happens under an exclusive `flock` on a sidecar lock
//! file (`.auth.json.lock`, the data file itself is replaced by rename and cannot carry the
//! lock), and the new content is written to a temporary file in the same directory, fsynced
//! and renamed over the old one: a reader sees the old or the new file, never half of one.
//! Fields we do not know are kept as they are; the file stays mode 0600.
//!
//! This module must never log a token or put one in an error.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};

/// Largest `auth.json` accepted.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why `auth.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// Reading, locking or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is not the Codex CLI's format.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong (no values quoted).
        what: &'static str,
    },
}

/// The tokens of one `auth.json`, as read.
pub struct CodexTokens {
    /// `tokens.access_token`.
    pub access_token: SecretString,
    /// `tokens.refresh_token`.
    pub refresh_token: SecretString,
    /// `tokens.account_id`.
    pub account_id: Option<String>,
    /// `last_refresh`, if present and parseable.
    pub last_refresh: Option<SystemTime>,
}

/// What `auth.json` offers.
pub enum AuthContents {
    /// An OAuth login.
    Tokens(CodexTokens),
    /// Only an API key (`OPENAI_API_KEY` field).
    ApiKey(SecretString),
    /// Neither.
    Empty,
}

/// New token values from the token endpoint; absent ones keep their old value.
pub struct TokenUpdate {
    /// New `id_token`.
    pub id_token: Option<SecretString>,
    /// New `access_token`.
    pub access_token: SecretString,
    /// New `refresh_token` (refresh tokens rotate).
    pub refresh_token: Option<SecretString>,
}

/// `auth.json` at a fixed path.
pub struct AuthFile {
    path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthFileError + '_ {
    move |source| AuthFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl AuthFile {
    /// The file at `path`.
    pub fn new(path: PathBuf) -> Self {
        AuthFile { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file; `None` if it does not exist.
    pub fn read(&self) -> Result<Option<AuthContents>, AuthFileError> {
        let Some(doc) = self.read_document()? else {
            return Ok(None);
        };
        Ok(Some(contents(&doc)))
    }

    fn read_document(&self) -> Result<Option<Map<String, Value>>, AuthFileError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&self.path)(e)),
        };
        if meta.len() > MAX_FILE_BYTES {
            return Err(AuthFileError::Format {
                path: self.path.clone(),
                what: "larger than 1 MiB",
            });
        }
        let text = zeroize::Zeroizing::new(std::fs::read(&self.path).map_err(io(&self.path))?);
        match serde_json::from_slice(&text) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            _ => Err(AuthFileError::Format {
                path: self.path.clone(),
                what: "not a JSON object",
            }),
        }
    }

    /// Takes the cross-process lock. Blocking: call from a blocking thread.
    pub fn lock(&self) -> Result<Flock<File>, AuthFileError> {
        let lock_path = self.path.with_file_name(".auth.json.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode_0600()
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io(&lock_path)(errno.into()))
    }

    /// Applies `update` and replaces the file atomically (mode 0600, unknown fields kept).
    /// The caller holds [`AuthFile::lock`].
    pub fn write_refreshed(
        &self,
        update: &TokenUpdate,
        now: SystemTime,
    ) -> Result<(), AuthFileError> {
        let mut doc = self.read_document()?.unwrap_or_default();
        let tokens = doc
            .entry("tokens")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(tokens) = tokens else {
            return Err(AuthFileError::Format {
                path: self.path.clone(),
                what: "tokens is not an object",
            });
        };
        tokens.insert(
            "access_token".into(),
            Value::String(update.access_token.expose_secret().to_owned()),
        );
        if let Some(id) = &update.id_token {
            tokens.insert(
                "id_token".into(),
                Value::String(id.expose_secret().to_owned()),
            );
        }
        if let Some(refresh) = &update.refresh_token {
            tokens.insert(
                "refresh_token".into(),
                Value::String(refresh.expose_secret().to_owned()),
            );
        }
        doc.insert(
            "last_refresh".into(),
            Value::String(humantime::format_rfc3339_micros(now).to_string()),
        );
        let text = zeroize::Zeroizing::new(
            serde_json::to_vec_pretty(&doc).expect("a JSON map serialises"),
        );
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // tempfile creates the file 0600 and with a random name; rename keeps that mode.
        let mut tmp = tempfile::Builder::new()
            .prefix(".auth.json.")
            .tempfile_in(dir)
            .map_err(io(dir))?;
        tmp.write_all(&text).map_err(io(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io(&self.path))?;
        tmp.persist(&self.path)
            .map_err(|e| io(&self.path)(e.error))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Ok(())
    }
}

trait OpenOptionsExt600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsExt600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

fn contents(doc: &Map<String, Value>) -> AuthContents {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let tokens = doc.get("tokens").and_then(Value::as_object);
    let access = tokens.and_then(|t| text(t.get("access_token")));
    let refresh = tokens.and_then(|t| text(t.get("refresh_token")));
    if let (Some(access), Some(refresh)) = (access, refresh) {
        return AuthContents::Tokens(CodexTokens {
            access_token: SecretString::from(access),
            refresh_token: SecretString::from(refresh),
            account_id: tokens.and_then(|t| text(t.get("account_id"))),
            last_refresh: text(doc.get("last_refresh")).and_then(|s| parse_time(&s)),
        });
    }
    match text(doc.get("OPENAI_API_KEY")) {
        Some(key) => AuthContents::ApiKey(SecretString::from(key)),
        None => AuthContents::Empty,
    }
}

/// RFC 3339 as the Codex CLI writes it (`2025-08-06T20:41:36.232376Z`), also with `+00:00`.
fn parse_time(text: &str) -> Option<SystemTime> {
    let normalised = text
        .strip_suffix("+00:00")
        .map(|t| format!("{t}Z"))
        .unwrap_or_else(|| text.to_owned());
    humantime::parse_rfc3339_weak(&normalised).ok()
}

/// The `exp` claim of a JWT, without verifying it (the issuer verifies; we only want to
/// know whether sending it is pointless). `None` if the token is not a JWT with `exp`.
pub fn jwt_expiry(token: &str) -> Option<SystemTime> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn refresh_keeps_unknown_fields_and_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(
            &path,
            r#"{"OPENAI_API_KEY":null,"tokens":{"id_token":"i","access_token":"a","refresh_token":"r","account_id":"acc","extra":1},"last_refresh":"2025-01-01T00:00:00.5Z","future_field":{"x":[1]}}"#,
        )
        .unwrap();
        let file = AuthFile::new(path.clone());
        let _lock = file.lock().unwrap();
        let update = TokenUpdate {
            id_token: None,
            access_token: "a2".into(),
            refresh_token: Some("r2".into()),
        };
        file.write_refreshed(
            &update,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )
        .unwrap();
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["future_field"]["x"][0], 1);
        assert_eq!(doc["tokens"]["extra"], 1);
        assert_eq!(doc["tokens"]["id_token"], "i");
        assert_eq!(doc["tokens"]["refresh_token"], "r2");
        assert!(
            doc["last_refresh"]
                .as_str()
                .unwrap()
                .starts_with("2027-01-15T08:00:00")
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let Some(AuthContents::Tokens(t)) = file.read().unwrap() else {
            panic!()
        };
        assert_eq!(t.access_token.expose_secret(), "a2");
        assert_eq!(t.account_id.as_deref(), Some("acc"));
    }

    #[test]
    fn times_and_jwt_expiry_parse() {
        assert!(parse_time("2025-08-06T20:41:36.232376Z").is_some());
        assert!(parse_time("2025-08-06T20:41:36+00:00").is_some());
        assert!(parse_time("yesterday").is_none());
        use base64::Engine as _;
        let claims =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000}"#);
        let exp = jwt_expiry(&format!("h.{claims}.s")).unwrap();
        assert_eq!(
            exp,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert!(jwt_expiry("not-a-jwt").is_none());
    }
}
