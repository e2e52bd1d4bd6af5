//! Wire types of spiderweb.
//!
//! One definition per message, shared by every process that speaks it. This crate parses and
//! renders frames; it makes no decisions (those live in `spiderweb-policy`) and opens no
//! sockets or files.
//!
//! - [`envelope`]: the unified-v2 envelope on `/` (channels `control` and `acheron`) and its
//!   strict parse rules (spec `unified-v2.md` §3).
//! - [`names`]: the closed sets of known `control.*` and `acheron.*` type names.
//! - [`reply`]: rendering of success, error and push frames, each as one string so that a
//!   frame leaves the process in one write.
//! - [`codes`]: the error codes of the control plane and of the world filesystem.
//! - [`frame`]: length-prefixed JSON frames, the framing of every internal Unix-socket
//!   protocol (broker, worker supervisor).
//! - [`broker`]: the credential broker's requests, replies and streamed provider responses.
//! - [`worker`]: the worker supervisor's protocol (tool requests, streamed output, results),
//!   the five tools' argument/result shapes and their generated JSON Schemas.
//! - [`fs`]: the node filesystem protocol `unified-v2-fs` (hello, attributes, node ids,
//!   errno table, events), shared by fs nodes, the gateway's `/v2/fs` and the mount client.

pub mod broker;
pub mod codes;
pub mod envelope;
pub mod frame;
pub mod fs;
pub mod names;
pub mod reply;
pub mod worker;

pub use envelope::{AcheronFields, Channel, Envelope, FrameError, ParseErrorName};
