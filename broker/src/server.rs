//! The listener: the broker's Unix socket and the accept loop.
//!
//! The socket is either handed over by systemd (`LISTEN_FDS`, socket activation) or created at
//! the configured path. A created socket lives in a directory of its own that the broker makes
//! private (0700, or 0710 with `socket.group` so the gateway's group can reach the socket,
//! which is then 0660); the file permissions are only the first fence — every operation is
//! still checked against the peer's uid.
//!
//! Ordering: permissions are set before the first `accept`; a stale socket file is removed
//! only if it is a socket (never another file someone placed there).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use spiderweb_policy::broker_access::BrokerAccess;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::credentials::Resolver;
use crate::egress::Egress;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A filesystem or socket call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The directory or file found at the socket path is not safe to use.
    #[error("{path}: {why}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// Why it is refused.
        why: String,
    },
}

/// State shared by all connections.
pub struct Shared {
    /// Who may do what.
    pub access: BrokerAccess,
    /// The broker's own uid (for `"self"` in allowlists).
    pub own_uid: u32,
    /// Sizes and timeouts.
    pub limits: Limits,
    /// Provider requests.
    pub egress: Egress,
    /// Credentials (status, key administration).
    pub resolver: Arc<Resolver>,
}

/// Where the listener came from.
pub enum Listener {
    /// Created by us; the file is removed at shutdown.
    Created {
        /// The socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
    },
    /// Handed over by systemd.
    Activated(UnixListener),
}

/// Creates the socket at `path` with the permissions described in the module doc.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ListenError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fn io<'a>(what: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> ListenError + 'a {
        move |source| ListenError::Io { what, path: p.to_path_buf(), source }
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(io("inspecting", dir))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(ListenError::Unsafe { path: dir.into(), why: "not a directory owned by the broker's uid".into() });
    }
    let dir_mode = if group.is_some() { 0o710 } else { 0o700 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).map_err(io("setting the mode of", dir))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io("setting the group of", dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io("removing the stale socket", path))?
        }
        Ok(_) => {
            return Err(ListenError::Unsafe {
                path: path.into(),
                why: "exists and is not a socket; refusing to replace it".into(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(io("binding", path))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("setting the mode of", path))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("setting the group of", path))?;
    }
    Ok(listener)
}

/// Tells a client over the connection limit why it is turned away, then closes.
async fn refuse_busy(stream: tokio::net::UnixStream, max: usize) {
    use futures_util::SinkExt;
    use spiderweb_proto::broker::{BrokerReply, DEFAULT_MAX_FRAME_BYTES, ErrorCode, ServerCodec};
    let mut framed = tokio_util::codec::FramedWrite::new(stream, ServerCodec::new(DEFAULT_MAX_FRAME_BYTES));
    let message = format!("the broker serves at most {max} connections (limits.max_connections); retry later");
    let reply = BrokerReply::Error { id: None, code: ErrorCode::Busy, message };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), framed.send(reply)).await;
}

/// Accepts connections until `shutdown` fires, then waits for open connections to end.
pub async fn run(listener: Listener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let (listener, path) = match listener {
        Listener::Created { listener, path } => (listener, Some(path)),
        Listener::Activated(listener) => (listener, None),
    };
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(max = shared.limits.max_connections, "connection refused: limits.max_connections reached");
            tracker.spawn(refuse_busy(stream, shared.limits.max_connections));
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            crate::connection::serve(stream, shared, shutdown).await;
            drop(slot);
        });
    }
    tracker.close();
    tracker.wait().await;
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}
