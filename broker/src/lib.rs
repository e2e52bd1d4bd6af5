//! spiderweb's credential broker: the only process that holds provider keys.
//!
//! The gateway never sees a key: it sends `{provider, method, path, headers, body}` over the
//! broker's Unix socket, and the broker picks the upstream URL from its own configuration,
//! adds the credential and streams the reply back (protocol: `spiderweb_proto::broker`).
//!
//! Modules, one concern each:
//! - [`server`]: the socket (created with private permissions, or systemd-activated) and the
//!   accept loop; [`connection`]: one client, `SO_PEERCRED` checks per operation, requests
//!   in flight, backpressure and cancellation.
//! - [`egress`]: one provider request, checks → credential → reqwest → streamed reply.
//! - [`plugin`]: plugin providers, a configured binary run for one JSON-RPC call with its key
//!   in its environment (the only child process the broker starts).
//! - [`providers`]: the catalogue, URL confinement, header allowlists, auth header styles.
//! - [`credentials`]: Secret Service → systemd credentials → environment → Codex login.
//! - [`codex`]: `auth.json`, its atomic locked rewrite, and single-flight OAuth refresh.
//! - [`config`]: the broker's config file; [`paths`]: default locations.
//! - [`hardening`]: non-dumpable, no core dumps, umask — before any key is read.
//!
//! Clients of this socket live in the `spiderweb-client` crate, so that the gateway can talk
//! to the broker without linking any of the code above.

pub mod codex;
pub mod config;
pub mod connection;
pub mod credentials;
pub mod egress;
pub mod hardening;
pub mod paths;
pub mod plugin;
pub mod providers;
pub mod server;
