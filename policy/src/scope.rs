//! Mutation scopes and the optional scope-token check (spec §5).
//!
//! Mutating control ops belong to a scope (`node`, `operator`, `project`); deployments can
//! require an extra token per scope, or one operator token that covers all of them. This
//! module decides which scope an op has and what the outcome of the token comparisons means.
//! It must never see a token value: the gateway holds the configured secrets, compares them in
//! constant time, and hands over only a [`TokenCheck`] per token.

use crate::bare_op;

/// The mutation scope of a control op; it is also the `scope` of its audit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Not a scoped mutation: no correlation id or scope token is required.
    None,
    /// Node pairing and removal.
    Node,
    /// Approval of pending node joins; only the operator token can satisfy it.
    Operator,
    /// Project lifecycle, mounts, tokens and activation.
    Project,
}

impl Scope {
    /// The audit name (`"none"`, `"node"`, `"operator"`, `"project"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::None => "none",
            Scope::Node => "node",
            Scope::Operator => "operator",
            Scope::Project => "project",
        }
    }
}

/// The scope of `op` (control op name without the `control.` prefix; the prefixed form is
/// accepted as well).
pub fn mutation_scope(op: &str) -> Scope {
    match bare_op(op) {
        "node_invite_create" | "node_delete" => Scope::Node,
        "node_join_pending_list" | "node_join_approve" | "node_join_deny" => Scope::Operator,
        "project_create"
        | "project_update"
        | "project_delete"
        | "project_mount_set"
        | "project_mount_remove"
        | "project_token_rotate"
        | "project_token_revoke"
        | "project_activate"
        | "project_up" => Scope::Project,
        _ => Scope::None,
    }
}

/// What the gateway found when it compared one optional scope token.
///
/// `NotConfigured` wins over everything else: when the deployment has no such token, whatever
/// the payload carries is irrelevant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// The deployment does not configure this token.
    NotConfigured,
    /// Configured, but the payload has no such field.
    Absent,
    /// Configured, and the payload field is present but empty or not a string.
    Invalid,
    /// Configured, and the payload field differs from it.
    Mismatch,
    /// Configured, and the payload field equals it.
    Match,
}

/// The outcome of each optional scope-token comparison for one request.
#[derive(Clone, Copy, Debug)]
pub struct ScopeTokens {
    /// `payload.operator_token` against `SPIDERWEB_CONTROL_OPERATOR_TOKEN`.
    pub operator: TokenCheck,
    /// `payload.project_scope_token` against `SPIDERWEB_CONTROL_PROJECT_SCOPE_TOKEN`.
    pub project: TokenCheck,
    /// `payload.node_scope_token` against `SPIDERWEB_CONTROL_NODE_SCOPE_TOKEN`.
    pub node: TokenCheck,
}

/// Why a scoped op was refused by the scope-token check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeDenial {
    /// A required token was not presented.
    MissingField,
    /// The operator token field was present but empty or not a string.
    InvalidPayload,
    /// A presented token was wrong (or, for a scope token, malformed).
    OperatorAuthFailed,
}

impl ScopeDenial {
    /// The `error.code` of the `control.error` reply.
    pub fn code(self) -> &'static str {
        match self {
            ScopeDenial::MissingField => "missing_field",
            ScopeDenial::InvalidPayload => "invalid_payload",
            ScopeDenial::OperatorAuthFailed => "operator_auth_failed",
        }
    }

    /// The `error.message` of the `control.error` reply (the peer's error name).
    pub fn error_name(self) -> &'static str {
        match self {
            ScopeDenial::MissingField => "MissingField",
            ScopeDenial::InvalidPayload => "InvalidPayload",
            ScopeDenial::OperatorAuthFailed => "OperatorAuthFailed",
        }
    }
}

/// Applies spec §5 rules 1–3, in that order, to an op of `scope`. [`Scope::None`] always passes.
///
/// 1. A configured operator token that the payload presents decides alone: `Invalid` →
///    `InvalidPayload`, `Mismatch` → `OperatorAuthFailed`, `Match` → allowed for any scope.
/// 2. Otherwise a `project` (`node`) op needs the project (node) scope token when that one is
///    configured: `Absent` → `MissingField`, `Invalid`/`Mismatch` → `OperatorAuthFailed`.
/// 3. A configured operator token that nothing above satisfied → `MissingField`; so
///    `operator` ops, which have no scope token of their own, need it whenever it is configured.
pub fn check_scope_tokens(scope: Scope, tokens: &ScopeTokens) -> Result<(), ScopeDenial> {
    if scope == Scope::None {
        return Ok(());
    }
    match tokens.operator {
        TokenCheck::Invalid => return Err(ScopeDenial::InvalidPayload),
        TokenCheck::Mismatch => return Err(ScopeDenial::OperatorAuthFailed),
        TokenCheck::Match => return Ok(()),
        TokenCheck::NotConfigured | TokenCheck::Absent => {}
    }
    let scope_token = match scope {
        Scope::Project => tokens.project,
        Scope::Node => tokens.node,
        Scope::None | Scope::Operator => TokenCheck::NotConfigured,
    };
    match scope_token {
        TokenCheck::Absent => return Err(ScopeDenial::MissingField),
        TokenCheck::Invalid | TokenCheck::Mismatch => return Err(ScopeDenial::OperatorAuthFailed),
        TokenCheck::Match => return Ok(()),
        TokenCheck::NotConfigured => {}
    }
    if tokens.operator == TokenCheck::Absent {
        return Err(ScopeDenial::MissingField);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use TokenCheck::{Absent, Invalid, Match, Mismatch, NotConfigured};

    const ALL_CHECKS: [TokenCheck; 5] = [NotConfigured, Absent, Invalid, Mismatch, Match];
    const ALL_SCOPES: [Scope; 4] = [Scope::None, Scope::Node, Scope::Operator, Scope::Project];

    fn tokens(operator: TokenCheck, project: TokenCheck, node: TokenCheck) -> ScopeTokens {
        ScopeTokens { operator, project, node }
    }

    /// Every token combination, so invariants can be checked over the whole input space.
    fn all_token_combinations() -> impl Iterator<Item = ScopeTokens> {
        ALL_CHECKS.into_iter().flat_map(|operator| {
            ALL_CHECKS
                .into_iter()
                .flat_map(move |project| ALL_CHECKS.into_iter().map(move |node| tokens(operator, project, node)))
        })
    }

    #[test]
    fn scope_names() {
        for (scope, name) in
            [(Scope::None, "none"), (Scope::Node, "node"), (Scope::Operator, "operator"), (Scope::Project, "project")]
        {
            assert_eq!(scope.as_str(), name);
        }
    }

    #[test]
    fn mutation_scope_table() {
        let table = [
            ("node_invite_create", Scope::Node),
            ("node_delete", Scope::Node),
            ("node_join_pending_list", Scope::Operator),
            ("node_join_approve", Scope::Operator),
            ("node_join_deny", Scope::Operator),
            ("project_create", Scope::Project),
            ("project_update", Scope::Project),
            ("project_delete", Scope::Project),
            ("project_mount_set", Scope::Project),
            ("project_mount_remove", Scope::Project),
            ("project_token_rotate", Scope::Project),
            ("project_token_revoke", Scope::Project),
            ("project_activate", Scope::Project),
            ("project_up", Scope::Project),
            // Mutating or sensitive, but unscoped per spec §5.
            ("node_join", Scope::None),
            ("node_join_request", Scope::None),
            ("node_lease_refresh", Scope::None),
            ("node_service_upsert", Scope::None),
            ("auth_rotate", Scope::None),
            ("session_attach", Scope::None),
            // Reads.
            ("project_list", Scope::None),
            ("project_get", Scope::None),
            ("project_mount_list", Scope::None),
            ("node_list", Scope::None),
            ("workspace_status", Scope::None),
            ("version", Scope::None),
            ("", Scope::None),
            ("PROJECT_CREATE", Scope::None),
        ];
        for (op, scope) in table {
            assert_eq!(mutation_scope(op), scope, "{op}");
            assert_eq!(mutation_scope(&format!("control.{op}")), scope, "control.{op}");
        }
    }

    #[test]
    fn denial_codes_and_names() {
        for (denial, code, name) in [
            (ScopeDenial::MissingField, "missing_field", "MissingField"),
            (ScopeDenial::InvalidPayload, "invalid_payload", "InvalidPayload"),
            (ScopeDenial::OperatorAuthFailed, "operator_auth_failed", "OperatorAuthFailed"),
        ] {
            assert_eq!(denial.code(), code);
            assert_eq!(denial.error_name(), name);
        }
    }

    #[test]
    fn decision_table() {
        use ScopeDenial::{InvalidPayload, MissingField, OperatorAuthFailed};
        let ok: Result<(), ScopeDenial> = Ok(());
        #[rustfmt::skip]
        let table = [
            // scope,          operator,      project,       node,          outcome
            // Nothing configured: every scope passes.
            (Scope::Project,  NotConfigured, NotConfigured, NotConfigured, ok),
            (Scope::Node,     NotConfigured, NotConfigured, NotConfigured, ok),
            (Scope::Operator, NotConfigured, NotConfigured, NotConfigured, ok),
            // Rule 1: a presented operator token decides alone, even over a bad scope token.
            (Scope::Project,  Match,         Absent,        NotConfigured, ok),
            (Scope::Project,  Match,         Mismatch,      NotConfigured, ok),
            (Scope::Node,     Match,         NotConfigured, Invalid,       ok),
            (Scope::Operator, Match,         NotConfigured, NotConfigured, ok),
            (Scope::Project,  Invalid,       Match,         NotConfigured, Err(InvalidPayload)),
            (Scope::Node,     Invalid,       NotConfigured, Match,         Err(InvalidPayload)),
            (Scope::Operator, Invalid,       NotConfigured, NotConfigured, Err(InvalidPayload)),
            (Scope::Project,  Mismatch,      Match,         NotConfigured, Err(OperatorAuthFailed)),
            (Scope::Node,     Mismatch,      NotConfigured, Match,         Err(OperatorAuthFailed)),
            (Scope::Operator, Mismatch,      NotConfigured, NotConfigured, Err(OperatorAuthFailed)),
            // Rule 2: the scope's own token, operator token not configured.
            (Scope::Project,  NotConfigured, Absent,        NotConfigured, Err(MissingField)),
            (Scope::Project,  NotConfigured, Invalid,       NotConfigured, Err(OperatorAuthFailed)),
            (Scope::Project,  NotConfigured, Mismatch,      NotConfigured, Err(OperatorAuthFailed)),
            (Scope::Project,  NotConfigured, Match,         NotConfigured, ok),
            (Scope::Node,     NotConfigured, NotConfigured, Absent,        Err(MissingField)),
            (Scope::Node,     NotConfigured, NotConfigured, Invalid,       Err(OperatorAuthFailed)),
            (Scope::Node,     NotConfigured, NotConfigured, Mismatch,      Err(OperatorAuthFailed)),
            (Scope::Node,     NotConfigured, NotConfigured, Match,         ok),
            // Rule 2: another scope's token never applies.
            (Scope::Project,  NotConfigured, NotConfigured, Absent,        ok),
            (Scope::Project,  NotConfigured, NotConfigured, Mismatch,      ok),
            (Scope::Node,     NotConfigured, Absent,        NotConfigured, ok),
            (Scope::Node,     NotConfigured, Mismatch,      NotConfigured, ok),
            (Scope::Operator, NotConfigured, Absent,        Absent,        ok),
            (Scope::Operator, NotConfigured, Mismatch,      Mismatch,      ok),
            // Rule 2 with the operator token configured but not presented.
            (Scope::Project,  Absent,        Match,         NotConfigured, ok),
            (Scope::Project,  Absent,        Absent,        NotConfigured, Err(MissingField)),
            (Scope::Project,  Absent,        Mismatch,      NotConfigured, Err(OperatorAuthFailed)),
            (Scope::Node,     Absent,        NotConfigured, Match,         ok),
            (Scope::Node,     Absent,        NotConfigured, Invalid,       Err(OperatorAuthFailed)),
            // Rule 3: operator token configured, nothing satisfied the check.
            (Scope::Project,  Absent,        NotConfigured, NotConfigured, Err(MissingField)),
            (Scope::Node,     Absent,        NotConfigured, NotConfigured, Err(MissingField)),
            (Scope::Operator, Absent,        NotConfigured, NotConfigured, Err(MissingField)),
            (Scope::Operator, Absent,        Match,         Match,         Err(MissingField)),
            (Scope::Project,  Absent,        NotConfigured, Match,         Err(MissingField)),
            (Scope::Node,     Absent,        Match,         NotConfigured, Err(MissingField)),
        ];
        for (scope, operator, project, node, expected) in table {
            assert_eq!(
                check_scope_tokens(scope, &tokens(operator, project, node)),
                expected,
                "scope={scope:?} operator={operator:?} project={project:?} node={node:?}"
            );
        }
    }

    #[test]
    fn unscoped_ops_always_pass() {
        for t in all_token_combinations() {
            assert_eq!(check_scope_tokens(Scope::None, &t), Ok(()), "{t:?}");
        }
    }

    #[test]
    fn a_presented_operator_token_decides_alone_for_every_scope() {
        for scope in ALL_SCOPES.into_iter().filter(|s| *s != Scope::None) {
            for t in all_token_combinations() {
                let expected = match t.operator {
                    Match => Ok(()),
                    Invalid => Err(ScopeDenial::InvalidPayload),
                    Mismatch => Err(ScopeDenial::OperatorAuthFailed),
                    NotConfigured | Absent => continue,
                };
                assert_eq!(check_scope_tokens(scope, &t), expected, "{scope:?} {t:?}");
            }
        }
    }

    #[test]
    fn operator_scope_is_satisfied_only_by_the_operator_token() {
        for t in all_token_combinations() {
            let expected = match t.operator {
                NotConfigured | Match => Ok(()),
                Absent => Err(ScopeDenial::MissingField),
                Invalid => Err(ScopeDenial::InvalidPayload),
                Mismatch => Err(ScopeDenial::OperatorAuthFailed),
            };
            assert_eq!(check_scope_tokens(Scope::Operator, &t), expected, "{t:?}");
        }
    }

    #[test]
    fn scoped_ops_pass_only_with_a_matching_token_or_no_token_configured() {
        for scope in [Scope::Node, Scope::Project] {
            for t in all_token_combinations() {
                let own = if scope == Scope::Node { t.node } else { t.project };
                let passes = check_scope_tokens(scope, &t).is_ok();
                let satisfied = t.operator == Match
                    || own == Match && t.operator != Invalid && t.operator != Mismatch
                    || t.operator == NotConfigured && own == NotConfigured;
                assert_eq!(passes, satisfied, "{scope:?} {t:?}");
            }
        }
    }
}
