//! Pure policy decisions of spiderweb.
//!
//! Every "may this caller do that?" question the gateway has to answer is decided here, as a
//! function of plain values, so that each decision table can be read in one place and tested
//! exhaustively. The process that enforces a decision gathers the facts (role, op name, what a
//! token comparison found, the stored project policy) and calls in.
//!
//! - [`export`]: what a filesystem export allows (ro/rw, which ops mutate, child names,
//!   the `--export` flag syntax).
//! - [`namespace_export`]: what the gateway's synthetic (in-memory) exports allow.
//!
//! This crate must never perform I/O, read the environment or the clock, hold or compare
//! secrets, or keep state: a decision depends only on its arguments.

//! - [`sandbox`]: sandbox profiles of tool workers, protected paths, resource limits, and the
//!   profile of each tenant/project.
//! - [`approval`]: when a command needs a human's approval, and what each answer means.
//! - [`service_access`]: whether a user may see a node service (and the mounts it covers).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod approval;
pub mod broker_access;
pub mod export;
pub mod namespace_export;
pub mod peer;
pub mod project_access;
pub mod role;
pub mod sandbox;
pub mod scope;
pub mod service_access;
pub mod session;

pub use peer::UidAllowlist;
pub use project_access::{AccessDenial, AccessPolicy, Action, Mode};
pub use role::Role;
pub use scope::Scope;

/// Strips the optional `control.` prefix of a control type name.
///
/// The op tables are keyed by bare names; accepting the prefixed form too means a caller that
/// passes the full type name still gets the restrictive answer instead of silently missing
/// the table (an admin-only op must never look unrestricted because of a naming slip).
fn bare_op(op: &str) -> &str {
    op.strip_prefix("control.").unwrap_or(op)
}
