//! What one confined worker is told before it confines itself.
//!
//! The launcher (`spiderweb-worker run` or the supervisor) resolves a request into a
//! [`ConfinementPlan`] and sends it as the first stdin frame of a fresh `spiderweb-worker
//! confined` process (not in argv, which every host user can read). Nothing in the plan comes
//! from the model: it is built from the supervisor's configuration and the validated request
//! envelope. The tool and its arguments follow as a second frame, read only after confinement.

use serde::{Deserialize, Serialize};
use spiderweb_policy::sandbox::{ResourceLimits, SandboxRules};
use spiderweb_proto::worker::SandboxProfile;

use crate::confine::network::find_pasta;

/// Where the workspace appears inside the sandbox (also `HOME` and the cwd of tools).
pub const SANDBOX_WORKSPACE: &str = "/workspace";

/// Which implementation `search_code` uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SearchBackend {
    /// ripgrep when `rg` is on the sandbox's PATH, else the built-in search.
    #[default]
    Auto,
    /// Always the built-in search (ripgrep's own libraries).
    Builtin,
    /// Always ripgrep; fails with `tool_not_executable` when it is missing.
    Ripgrep,
}

/// The uid/gid the tool runs as, when the launcher may switch ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Everything the confinement steps need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfinementPlan {
    /// Absolute host path of the workspace.
    pub workspace: String,
    /// The profile (for messages; the fields below are what is enforced).
    pub profile: SandboxProfile,
    /// Workspace writable.
    pub workspace_writable: bool,
    /// Outbound network through pasta (own network namespace either way), TCP allowed.
    pub network: bool,
    /// pasta's absolute path, found by the launcher for a network plan (`None`: not found, or
    /// no network; a network plan without it is refused).
    pub pasta: Option<String>,
    /// Workspace-relative paths kept read-only.
    pub protected_paths: Vec<String>,
    /// Resource limits.
    pub limits: ResourceLimits,
    /// Ids to switch to (`None`: stay the launcher's uid inside a user namespace).
    pub ids: Option<Ids>,
    /// `search_code` implementation.
    pub search_backend: SearchBackend,
    /// Start `shell_exec`'s login shell before reading the task (a warm worker expecting a
    /// shell call); not part of what is confined, so warm-pool keys leave it out.
    #[serde(default)]
    pub prestart_shell: bool,
}

impl ConfinementPlan {
    /// A plan from policy rules; a network plan gets the launcher's pasta.
    pub fn new(workspace: String, rules: SandboxRules, ids: Option<Ids>, search_backend: SearchBackend) -> Self {
        ConfinementPlan {
            workspace,
            profile: rules.profile,
            workspace_writable: rules.workspace_writable,
            network: rules.network,
            pasta: if rules.network { find_pasta().map(|p| p.display().to_string()) } else { None },
            protected_paths: rules.protected_paths,
            limits: rules.limits,
            ids,
            search_backend,
            prestart_shell: false,
        }
    }
}
