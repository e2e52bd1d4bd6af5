//! `spiderweb-worker supervise`: the daemon the gateway sends tool calls to.
//!
//! Files follow the protocol: [`config`] (the configuration file), [`server`] (the listener,
//! peer checks, concurrency), [`connection`] (one gateway connection: pipelined requests,
//! ordered replies per request), [`request`] (turning a request into a confinement plan),
//! [`pool`] (warm workers started ahead of the next call).

pub mod config;
pub mod connection;
pub mod pool;
pub mod request;
pub mod server;
