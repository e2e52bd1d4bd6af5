//! The files `spiderweb up` prepares: a private runtime directory with the three daemons'
//! configs and sockets, and the default project's workspace.
//!
//! Why it exists: each daemon keeps its own config and socket (DESIGN.md process table); `up`
//! only writes them. The user's own gateway and broker config files are the starting point,
//! so their settings apply; `up` overrides just what wires the stack together.
//!
//! What it must never do: write a credential (none passes through here), create the runtime
//! directory readable by others (0700, sockets inside), or leave it behind (it is removed on
//! drop). As root, tools never run as root: the worker gets a tenant uid range and the
//! default project's workspace is owned by that tenant's uid.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The default project (the worker's tenant id and the workspace directory name).
pub const DEFAULT_PROJECT: &str = "system";
/// First uid/gid given to tenants when `up` runs as root (far above ordinary accounts).
pub const TENANT_ID_BASE: u32 = 1_500_000_000;
/// How many tenant ids the worker may hand out.
pub const TENANT_ID_COUNT: u32 = 65_536;

const WELCOME_TEXT: &str = "# Welcome to spiderweb\n\n\
This is the workspace of the default project (`system`). Tools the agent runs (file reads,\n\
shell commands) see only this directory, in a confined worker: no network, no other files.\n\n\
Try: `spiderweb chat \"What is in my workspace?\"`\n";

/// Why preparing the stack failed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot create the runtime directory {path}: {source}")]
    RuntimeDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot prepare the workspace {path}: {source}")]
    Workspace { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON: {message}")]
    UserConfig { path: PathBuf, message: String },
}

/// The private directory of one `up`: configs, sockets, notification sockets.
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// `$XDG_RUNTIME_DIR/spiderweb-up-<pid>`, else the same under the temp dir; mode 0700.
    pub fn create() -> Result<RuntimeDir, StackError> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute() && dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!("spiderweb-up-{}", std::process::id()));
        let create = || std::fs::DirBuilder::new().mode(0o700).create(&path);
        if let Err(e) = create() {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(StackError::RuntimeDir { path, source: e });
            }
            // Left by an earlier `up` with our pid, which is therefore gone. remove_dir_all does
            // not follow a symlink planted there: it removes the link.
            std::fs::remove_dir_all(&path)
                .and_then(|()| create())
                .map_err(|source| StackError::RuntimeDir { path: path.clone(), source })?;
        }
        Ok(RuntimeDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `value` as `name` (0600) and returns its path.
    pub fn write_json(&self, name: &str, value: &Value) -> Result<PathBuf, StackError> {
        let path = self.join(name);
        let text = serde_json::to_string_pretty(value).expect("a JSON value serializes");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .map_err(|source| StackError::Write { path: path.clone(), source })?;
        Ok(path)
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("spiderweb up: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The environment the gateway and the worker supervisor get: only what running needs.
///
/// `up` inherits the user's shell environment, which may hold provider keys
/// (`OPENAI_API_KEY`, …). Only the broker may see those (DESIGN.md: no other process holds a
/// credential), so the other daemons get an allowlist instead of a deny list that a new
/// provider's variable would slip through.
pub fn daemon_env() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    const EXACT: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "SESSION_STORE_PATH",
    ];
    const PREFIXES: &[&str] = &["LC_", "XDG_", "SPIDERWEB_"];
    std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            EXACT.contains(&name.as_ref()) || PREFIXES.iter().any(|p| name.starts_with(p))
        })
        .collect()
}

/// A user's config file as JSON (`{}` when it does not exist).
pub fn read_user_config(path: &Path) -> Result<Value, StackError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| StackError::UserConfig { path: path.to_owned(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(StackError::UserConfig { path: path.to_owned(), message: e.to_string() }),
    }
}

/// Sets `value` at the dotted `path` of `config`, creating objects on the way.
pub fn set(config: &mut Value, path: &str, value: Value) {
    let mut node = config;
    for key in path.split('.') {
        if !node.is_object() {
            *node = json!({});
        }
        node = node.as_object_mut().expect("made an object above").entry(key).or_insert(Value::Null);
    }
    *node = value;
}

/// The worker supervisor's config: its socket, the workspace root, and as root the tenant
/// ids (tenants are project ids; only the default project exists at start).
pub fn worker_config(socket: &Path, workspace_root: &Path, as_root: bool) -> Value {
    let mut config = json!({"socket": socket, "workspace_roots": [workspace_root]});
    if as_root {
        config["uid_range"] = json!({"start": TENANT_ID_BASE, "count": TENANT_ID_COUNT});
        config["tenants"] = json!({DEFAULT_PROJECT: {"uid": TENANT_ID_BASE, "gid": TENANT_ID_BASE}});
    }
    config
}

/// Creates `<workspace_root>/system` with a `WELCOME.md` when absent; as root, both are given
/// to the default tenant's uid (the worker requires the workspace to belong to it).
pub fn prepare_workspace(workspace_root: &Path, as_root: bool) -> Result<PathBuf, StackError> {
    let workspace = workspace_root.join(DEFAULT_PROJECT);
    let fail = |source| StackError::Workspace { path: workspace.clone(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&workspace).map_err(fail)?;
    let welcome = workspace.join(super::demo::script::WELCOME_FILE);
    if !welcome.exists() {
        std::fs::write(&welcome, WELCOME_TEXT).map_err(fail)?;
    }
    if as_root {
        let owner = Some(TENANT_ID_BASE);
        std::os::unix::fs::lchown(&workspace, owner, owner).map_err(fail)?;
        std::os::unix::fs::lchown(&welcome, owner, owner).map_err(fail)?;
    }
    Ok(workspace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_the_path_and_keeps_siblings() {
        let mut config = json!({"server": {"bind": "127.0.0.1"}, "runtime": 3});
        set(&mut config, "server.port", json!(5));
        set(&mut config, "runtime.workspace_root", json!("/w"));
        assert_eq!(config, json!({"server": {"bind": "127.0.0.1", "port": 5}, "runtime": {"workspace_root": "/w"}}));
    }
}
