//! Who may bind to which agent and project, and the id syntax of control payloads
//! (spec §6, §6.4 `session_attach`, §6.8 `project_activate`).
//!
//! `mother` (the built-in administrative agent) and `system` (the built-in project) are kept
//! away from user tokens, and `mother` is kept inside `system` for everyone but admins
//! activating a project. The id validators are the syntax gate in front of every lookup, so a
//! malformed id is refused before it can reach a table, a path or a log line. This module
//! must never decide on anything but names: whether an agent or project exists, is busy or is
//! token-protected is the gateway's and [`crate::project_access`]'s business.

use crate::Role;

/// The built-in agent that administers the deployment.
pub const MOTHER_AGENT: &str = "mother";
/// The built-in project that `mother` lives in.
pub const SYSTEM_PROJECT: &str = "system";

/// Why `session_attach` refused a binding (`control.error` `forbidden`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachDenial {
    /// A user token asked for the `mother` agent.
    UserToMother,
    /// A user token asked for the `system` project.
    UserToSystem,
    /// `mother` was asked to leave the `system` project.
    MotherOutsideSystem,
}

impl AttachDenial {
    /// The `error.message` of the `forbidden` reply.
    pub fn message(self) -> &'static str {
        match self {
            AttachDenial::UserToMother => "user role cannot attach to mother agent",
            AttachDenial::UserToSystem => "user role cannot attach to system project",
            AttachDenial::MotherOutsideSystem => "mother can only attach to system project",
        }
    }
}

/// The `session_attach` binding rules, checked in this order: user → `mother`, user →
/// `system`, `mother` with a project other than `system` (which binds admins too).
pub fn check_attach(role: Role, agent_id: &str, project_id: &str) -> Result<(), AttachDenial> {
    let is_mother = agent_id == MOTHER_AGENT;
    let is_system = project_id == SYSTEM_PROJECT;
    if !role.is_admin() && is_mother {
        return Err(AttachDenial::UserToMother);
    }
    if !role.is_admin() && is_system {
        return Err(AttachDenial::UserToSystem);
    }
    if is_mother && !is_system {
        return Err(AttachDenial::MotherOutsideSystem);
    }
    Ok(())
}

/// The `project_activate` binding rule (spec §6.8): a non-admin may put `mother` only into
/// `system` and any other agent only outside it; admins may activate anything.
pub fn may_activate(role: Role, agent_id: &str, project_id: &str) -> bool {
    role.is_admin() || (agent_id == MOTHER_AGENT) == (project_id == SYSTEM_PROJECT)
}

/// A session key: `[A-Za-z0-9._:-]{1,128}`.
pub fn valid_session_key(s: &str) -> bool {
    matches_charset(s, 128, b"._:-")
}

/// An agent id: `[A-Za-z0-9_-]{1,64}`. The spec's extra "not `.`" rule holds by construction,
/// as the character set has no dot.
pub fn valid_agent_id(s: &str) -> bool {
    matches_charset(s, 64, b"_-")
}

/// A project id: `[A-Za-z0-9._-]{1,128}`, except `.` and `..`, which would name a directory
/// other than the project's own wherever ids become path segments.
pub fn valid_project_id(s: &str) -> bool {
    valid_identifier(s, 128) && s != "." && s != ".."
}

/// A control-plane identifier: `[A-Za-z0-9._-]{1,max}`.
pub fn valid_identifier(s: &str, max: usize) -> bool {
    matches_charset(s, max, b"._-")
}

/// A display string (name, vision, version): non-empty, at most `max` characters (not bytes),
/// no control characters below U+0020.
pub fn valid_display(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && s.chars().all(|c| c >= ' ')
}

/// ASCII letters and digits plus `extra`, 1 to `max` characters.
fn matches_charset(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: Role = Role::Admin;
    const USER: Role = Role::User;

    #[test]
    fn attach_rules_in_order() {
        use AttachDenial::{MotherOutsideSystem, UserToMother, UserToSystem};
        let table = [
            // role, agent, project, outcome
            (ADMIN, "mother", "system", Ok(())),
            (ADMIN, "mother", "proj-1", Err(MotherOutsideSystem)),
            (ADMIN, "coder", "system", Ok(())),
            (ADMIN, "coder", "proj-1", Ok(())),
            // user → mother is reported before user → system and before mother-outside-system.
            (USER, "mother", "system", Err(UserToMother)),
            (USER, "mother", "proj-1", Err(UserToMother)),
            (USER, "coder", "system", Err(UserToSystem)),
            (USER, "coder", "proj-1", Ok(())),
            // Names are exact: no case folding, no trimming.
            (USER, "Mother", "System", Ok(())),
            (USER, "mother ", "proj-1", Ok(())),
            (ADMIN, "mother", "System", Err(MotherOutsideSystem)),
        ];
        for (role, agent, project, expected) in table {
            assert_eq!(check_attach(role, agent, project), expected, "{role:?} {agent} {project}");
        }
    }

    #[test]
    fn attach_denial_messages() {
        for (denial, message) in [
            (AttachDenial::UserToMother, "user role cannot attach to mother agent"),
            (AttachDenial::UserToSystem, "user role cannot attach to system project"),
            (AttachDenial::MotherOutsideSystem, "mother can only attach to system project"),
        ] {
            assert_eq!(denial.message(), message);
        }
    }

    #[test]
    fn activate_rules() {
        let table = [
            // role, agent, project, allowed
            (ADMIN, "mother", "system", true),
            (ADMIN, "mother", "proj-1", true),
            (ADMIN, "coder", "system", true),
            (ADMIN, "coder", "proj-1", true),
            (USER, "mother", "system", true),
            (USER, "mother", "proj-1", false),
            (USER, "coder", "system", false),
            (USER, "coder", "proj-1", true),
        ];
        for (role, agent, project, allowed) in table {
            assert_eq!(may_activate(role, agent, project), allowed, "{role:?} {agent} {project}");
        }
    }

    /// Characters every validator refuses.
    const ALWAYS_BAD: [&str; 12] = ["a/b", "a\\b", "a b", "a\tb", "a\0b", "é", "a+b", "a@b", "a\nb", "a*", "~", "a,b"];

    #[test]
    fn session_key_syntax() {
        let table = [
            ("main", true),
            ("a", true),
            ("A-z_0.9:x", true),
            ("agent:coder:proj-1", true),
            (".", true),
            ("..", true),
            (":", true),
            ("", false),
        ];
        for (key, valid) in table {
            assert_eq!(valid_session_key(key), valid, "{key:?}");
        }
        assert!(valid_session_key(&"k".repeat(128)));
        assert!(!valid_session_key(&"k".repeat(129)));
        for bad in ALWAYS_BAD {
            assert!(!valid_session_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn agent_id_syntax() {
        let table = [
            ("mother", true),
            ("a", true),
            ("Coder_2-b", true),
            ("-", true),
            ("_", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a.b", false),
            ("a:b", false),
        ];
        for (id, valid) in table {
            assert_eq!(valid_agent_id(id), valid, "{id:?}");
        }
        assert!(valid_agent_id(&"a".repeat(64)));
        assert!(!valid_agent_id(&"a".repeat(65)));
        for bad in ALWAYS_BAD {
            assert!(!valid_agent_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn project_id_syntax() {
        let table = [
            ("system", true),
            ("proj-1", true),
            ("a.b_c-D9", true),
            ("...", true),
            (".hidden", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a:b", false),
        ];
        for (id, valid) in table {
            assert_eq!(valid_project_id(id), valid, "{id:?}");
        }
        assert!(valid_project_id(&"p".repeat(128)));
        assert!(!valid_project_id(&"p".repeat(129)));
        for bad in ALWAYS_BAD {
            assert!(!valid_project_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn identifier_syntax() {
        let table = [
            ("node-1", 128, true),
            ("a.b_c-D9", 128, true),
            (".", 128, true),
            ("..", 128, true),
            ("", 128, false),
            ("a:b", 128, false),
            ("abc", 3, true),
            ("abcd", 3, false),
            ("a", 0, false),
            ("", 0, false),
        ];
        for (id, max, valid) in table {
            assert_eq!(valid_identifier(id, max), valid, "{id:?} max={max}");
        }
        assert!(valid_identifier(&"i".repeat(64), 64));
        assert!(!valid_identifier(&"i".repeat(65), 64));
        for bad in ALWAYS_BAD {
            assert!(!valid_identifier(bad, 128), "{bad:?}");
        }
    }

    #[test]
    fn display_syntax() {
        let table = [
            ("My project", 128, true),
            ("Ünïcödé ✓", 128, true),
            (" ", 128, true),
            ("tab\there", 128, false),
            ("line\nbreak", 128, false),
            ("nul\0", 128, false),
            ("esc\u{1b}", 128, false),
            ("unit\u{1f}", 128, false),
            ("del\u{7f}", 128, true),
            ("", 128, false),
            ("abc", 3, true),
            ("abcd", 3, false),
            // Characters, not bytes: three two-byte characters fit in three.
            ("äöü", 3, true),
            ("äöüß", 3, false),
        ];
        for (s, max, valid) in table {
            assert_eq!(valid_display(s, max), valid, "{s:?} max={max}");
        }
        assert!(valid_display(&"v".repeat(1024), 1024));
        assert!(!valid_display(&"v".repeat(1025), 1024));
    }
}
