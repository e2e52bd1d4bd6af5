//! The admin and user bearer tokens (spec `unified-v2.md` §2.2).
//!
//! Tokens are created on first start and written to `<state dir>/auth_tokens.json` with mode
//! 0600 (the original's clients and scripts read them there). In memory the gateway keeps only
//! their SHA-256 digests and compares digests in constant time, so a token never sits in a
//! long-lived buffer and comparison time does not depend on how much of a guess was right.
//!
//! Never: accept a token from a URL, log a token, or return one except to an admin through
//! `auth_status` / `auth_rotate` (spec behaviour).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use spiderweb_policy::Role;
use subtle::ConstantTimeEq as _;

pub const FILE_NAME: &str = "auth_tokens.json";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid token file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot generate a random token: {0}")]
    Random(String),
}

/// The file's contents. Fields we do not use (the original's session histories) are kept
/// as they were when the file is rewritten.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    schema: u32,
    #[serde(default)]
    admin_token: String,
    #[serde(default)]
    user_token: String,
    #[serde(default)]
    updated_at_ms: i64,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

pub type Digest = [u8; 32];

pub fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

pub fn digest_hex(token: &str) -> String {
    crate::plane::hex(&digest(token))
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &Digest, b: &Digest) -> bool {
    a.ct_eq(b).into()
}

/// `<prefix>_` + base64url (no padding) of 24 random bytes.
pub fn generate(prefix: &str) -> Result<String, TokenError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!("{prefix}_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// The role tokens as the gateway holds them: digests plus the file they live in.
pub struct RoleTokens {
    path: PathBuf,
    file: TokenFile,
    admin: Digest,
    user: Digest,
}

/// What `load_or_create` did, for the start-up banner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Loaded,
    Created,
}

impl RoleTokens {
    /// Reads the token file in `state_dir`, creating tokens that are absent or empty.
    pub fn load_or_create(state_dir: &Path, now_ms: i64) -> Result<(RoleTokens, Origin), TokenError> {
        let path = state_dir.join(FILE_NAME);
        let mut file = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<TokenFile>(&text)
                .map_err(|e| TokenError::Corrupt { path: path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(source) => return Err(TokenError::Read { path, source }),
        };
        let mut origin = Origin::Loaded;
        if file.admin_token.is_empty() || file.user_token.is_empty() {
            file.admin_token = generate("sw-admin")?;
            file.user_token = generate("sw-user")?;
            file.updated_at_ms = now_ms;
            origin = Origin::Created;
        }
        file.schema = 3;
        let tokens = RoleTokens { admin: digest(&file.admin_token), user: digest(&file.user_token), path, file };
        if origin == Origin::Created {
            tokens.write()?;
        } else {
            tokens.tighten_mode()?;
        }
        Ok((tokens, origin))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The role a presented token grants, compared in constant time against both tokens.
    pub fn role_of(&self, presented: &str) -> Option<Role> {
        let d = digest(presented);
        // Both comparisons always run, so timing does not reveal which role matched.
        let admin = digests_equal(&d, &self.admin);
        let user = digests_equal(&d, &self.user);
        match (admin, user) {
            (true, _) => Some(Role::Admin),
            (false, true) => Some(Role::User),
            _ => None,
        }
    }

    pub fn digest_of(&self, role: Role) -> &Digest {
        match role {
            Role::Admin => &self.admin,
            Role::User => &self.user,
        }
    }

    /// The plaintext tokens, for `auth_status` (admins only) and the start-up banner.
    pub fn token(&self, role: Role) -> &str {
        match role {
            Role::Admin => &self.file.admin_token,
            Role::User => &self.file.user_token,
        }
    }

    /// Replaces one role's token and rewrites the file; on a write failure nothing changes.
    pub fn rotate(&mut self, role: Role, now_ms: i64) -> Result<String, TokenError> {
        let fresh = generate(match role {
            Role::Admin => "sw-admin",
            Role::User => "sw-user",
        })?;
        let previous = self.file.clone();
        match role {
            Role::Admin => self.file.admin_token = fresh.clone(),
            Role::User => self.file.user_token = fresh.clone(),
        }
        self.file.updated_at_ms = now_ms;
        if let Err(e) = self.write() {
            self.file = previous;
            return Err(e);
        }
        match role {
            Role::Admin => self.admin = digest(&fresh),
            Role::User => self.user = digest(&fresh),
        }
        Ok(fresh)
    }

    /// Atomic replace: write a 0600 temporary file, fsync, rename over the old one.
    fn write(&self) -> Result<(), TokenError> {
        let err = |source| TokenError::Write { path: self.path.clone(), source };
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.file).map_err(|e| err(std::io::Error::other(e)))?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).and_then(|_| f.write_all(b"\n")).and_then(|_| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(())
    }

    /// A token file readable by others is fixed rather than trusted as is.
    fn tighten_mode(&self) -> Result<(), TokenError> {
        let meta =
            std::fs::metadata(&self.path).map_err(|source| TokenError::Read { path: self.path.clone(), source })?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %self.path.display(), "token file was readable by others; setting mode 0600");
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| TokenError::Write { path: self.path.clone(), source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (first, origin) = RoleTokens::load_or_create(dir.path(), 1).unwrap();
        assert_eq!(origin, Origin::Created);
        assert!(first.token(Role::Admin).starts_with("sw-admin_"));
        assert_eq!(first.token(Role::User).len(), "sw-user_".len() + 32);
        let mode = std::fs::metadata(first.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, origin) = RoleTokens::load_or_create(dir.path(), 2).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(second.token(Role::Admin), first.token(Role::Admin));
    }

    #[test]
    fn roles_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (mut tokens, _) = RoleTokens::load_or_create(dir.path(), 1).unwrap();
        let admin = tokens.token(Role::Admin).to_owned();
        let user = tokens.token(Role::User).to_owned();
        assert_eq!(tokens.role_of(&admin), Some(Role::Admin));
        assert_eq!(tokens.role_of(&user), Some(Role::User));
        assert_eq!(tokens.role_of("sw-admin_guess"), None);
        let fresh = tokens.rotate(Role::User, 5).unwrap();
        assert_eq!(tokens.role_of(&user), None);
        assert_eq!(tokens.role_of(&fresh), Some(Role::User));
        let (reloaded, _) = RoleTokens::load_or_create(dir.path(), 6).unwrap();
        assert_eq!(reloaded.token(Role::User), fresh);
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            r#"{"schema":3,"admin_token":"sw-admin_a","user_token":"sw-user_b","user_session_history":[]}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (mut tokens, _) = RoleTokens::load_or_create(dir.path(), 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        tokens.rotate(Role::Admin, 2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("user_session_history"));
        assert!(text.contains("sw-user_b"));
    }
}
