//! What every spiderweb daemon does to run as a service.
//!
//! The gateway, the broker, the worker supervisor and the fs node are all started either by
//! hand (or by `spiderweb up`) or by systemd. This crate holds the parts of that contract they
//! share, so each daemon speaks it the same way:
//! - [`config`]: JSON config files: unknown keys reported by path, wrong values by key.
//! - [`activation`]: sockets passed by the service manager (`LISTEN_FDS`), by name, checked
//!   to be what the daemon expects; a daemon binds itself only when none was passed.
//! - [`notify`]: `READY=1` once the daemon really serves, `STOPPING=1`, `STATUS=`, and the
//!   watchdog keep-alive when `WatchdogSec=` is set.
//! - [`logging`]: `tracing` output on stderr as text, JSON, or journald lines that carry each
//!   event's syslog priority.
//!
//! Order matters: [`activation::Activation::take`] and [`notify::Notifier::take`] read and
//! clear environment variables and must run first in `main`, before any thread exists.

pub mod activation;
pub mod config;
pub mod logging;
pub mod notify;
