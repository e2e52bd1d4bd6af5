//! Default locations shared by the broker and `spiderweb-config`, so both agree on them.

use std::path::PathBuf;

pub use spiderweb_service::config::home_dir;

/// `$SPIDERWEB_BROKER_SOCKET`, else `$XDG_RUNTIME_DIR/spiderweb/broker.sock`, else
/// `/run/user/<uid>/spiderweb/broker.sock`.
pub fn default_socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SPIDERWEB_BROKER_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", nix::unistd::getuid())));
    runtime.join("spiderweb/broker.sock")
}
