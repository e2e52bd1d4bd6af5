//! Clients of spiderweb's internal Unix sockets.
//!
//! Why a crate of its own: the gateway talks to the broker and the worker supervisor, and
//! must not link the broker's credential code or the worker's confinement code to do so.
//! The protocols themselves are in `spiderweb_proto` (`broker`, `worker`); this crate only
//! connects, frames, and routes replies to their requests.
//!
//! - [`broker`]: a plain client (one request at a time) for `spiderweb-config` and tests.
//! - [`shared`]: many concurrent provider requests over one broker connection (the gateway's).
//! - [`worker`]: tool calls to the worker supervisor, streamed output and one result each.

pub mod broker;
pub mod shared;
pub mod worker;
