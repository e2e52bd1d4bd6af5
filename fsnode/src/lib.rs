//! spiderweb filesystem nodes and the mount client (spec `fs-node.md`).
//!
//! - [`node`]: serving exports over `unified-v2-fs` on an already-upgraded WebSocket; used by
//!   the `spiderweb-fs-node` binary and by the gateway's `/v2/fs`.
//! - [`client`]: one client connection to a node (tags, events, timeouts).
//! - [`control`]: one call on a gateway's control channel (daemon pairing, mount hydration).
//! - [`daemon`]: the node's daemon mode (`--control-url`): pairing, lease, reverse tunnel.
//! - [`listener`]: the standalone node's HTTP/WebSocket accept loop.
//! - [`router`]: the mount client's endpoint groups, failover and path operations.
//! - [`sandbox`]: the node's Landlock + seccomp self-confinement.

pub mod client;
pub mod control;
pub mod daemon;
pub mod fuse;
pub mod listener;
pub mod node;
pub mod router;
pub mod sandbox;
