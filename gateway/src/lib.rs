//! spiderweb, the gateway.
//!
//! Codemap (see ARCHITECTURE.md for the whole system):
//! - [`server`]: listener, HTTP routing, upgrade checks, limits, shutdown.
//! - [`connection`]: one WebSocket: reader/writer tasks, bounded outbound queue, timeouts.
//! - [`control`]: the `control.*` channel, per connection (handshake, session bindings).
//! - [`worldfs`]: the `acheron.t_*` world filesystem, per connection.
//! - [`fs_exports`]: the synthetic `system-meta`/`system-chat`/`system-jobs` exports of `/v2/fs`.
//! - [`events`]: signals and event waits shared by the sessions of one agent and project.
//! - [`plane`]: shared control-plane state (agents, projects, nodes, history, audit).
//! - [`store`]: durable state behind one trait (SQLite now).
//! - [`tunnel`]: paired nodes' reverse tunnels (`/v2/node`) and the relay to them (`/v2/fs/node/<id>`).
//! - [`providers`]: model requests and streamed replies per provider (no network, no keys),
//!   plugin providers, the model catalog and the retry policy.
//! - [`tokens`], [`config`], [`metrics`], [`http_ops`]: the rest of running a server.
//! - [`cli`]: the `spiderweb up` (local stack) and `spiderweb chat` (terminal client) subcommands.

pub mod cli;
pub mod config;
pub mod connection;
pub mod control;
pub mod events;
pub mod fs_exports;
pub mod http_ops;
pub mod metrics;
pub mod plane;
pub mod providers;
pub mod runtime;
pub mod server;
pub mod store;
pub mod tokens;
pub mod tunnel;
pub mod worldfs;
