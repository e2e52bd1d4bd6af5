//! Per-project access policies: parsing, canonical output and evaluation (spec §6.8 "AP").
//!
//! A project can restrict each action (read, observe, invoke, mount, bind, admin) to be open,
//! token-protected, admin-only or denied, for everyone or per agent. Policies arrive from
//! clients, so parsing is strict: a policy that does not say exactly what it means is refused
//! rather than guessed at. This module must never see a project token itself (the gateway
//! compares it and reports only whether it matched) and must never let a non-admin past a
//! `token` action without a matching token.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::Role;
use crate::session::valid_agent_id;

/// Most agent entries one policy may carry; keeps a stored policy, and the work of
/// parsing one, bounded.
const MAX_AGENT_ENTRIES: usize = 256;

/// Longest piece of a client-supplied key quoted back in a [`PolicyError`].
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// Something a caller can do within a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// See the project and its mounts.
    Read,
    /// Watch node service events of the project's nodes.
    Observe,
    /// Invoke services mounted into the project.
    Invoke,
    /// Change the project's mounts.
    Mount,
    /// Change the project's binds; governed by `mount` unless set on its own.
    Bind,
    /// Change the project itself (update, token rotation, …).
    Admin,
}

impl Action {
    /// Every action, in canonical order.
    pub const ALL: [Action; 6] =
        [Action::Read, Action::Observe, Action::Invoke, Action::Mount, Action::Bind, Action::Admin];

    /// Parses a policy key; `watch` is accepted as an alias of `observe`. Case-sensitive.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "read" => Some(Action::Read),
            "observe" | "watch" => Some(Action::Observe),
            "invoke" => Some(Action::Invoke),
            "mount" => Some(Action::Mount),
            "bind" => Some(Action::Bind),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }

    /// The canonical key.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Observe => "observe",
            Action::Invoke => "invoke",
            Action::Mount => "mount",
            Action::Bind => "bind",
            Action::Admin => "admin",
        }
    }
}

/// Who may perform an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Anyone.
    Open,
    /// Admins, and others presenting the project's active token.
    Token,
    /// Admins only.
    AdminOnly,
    /// Nobody but admins, whose bearer bypasses every policy; where `AdminOnly` reserves an
    /// action, `Deny` records that it is switched off.
    Deny,
}

impl Mode {
    /// Parses a mode value, including the peer's aliases: `open`|`allow`;
    /// `token`|`token-required`|`token_or_admin`; `admin`|`admin-only`; `deny`|`disabled`.
    /// Case-sensitive.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "open" | "allow" => Some(Mode::Open),
            "token" | "token-required" | "token_or_admin" => Some(Mode::Token),
            "admin" | "admin-only" => Some(Mode::AdminOnly),
            "deny" | "disabled" => Some(Mode::Deny),
            _ => None,
        }
    }

    /// The canonical value (`"open"`, `"token"`, `"admin"`, `"deny"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Token => "token",
            Mode::AdminOnly => "admin",
            Mode::Deny => "deny",
        }
    }
}

/// A project's access policy: modes per action, and per-agent overrides of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// Modes that apply to every agent.
    pub actions: BTreeMap<Action, Mode>,
    /// Per agent id, modes that take precedence over `actions`.
    pub agents: BTreeMap<String, BTreeMap<Action, Mode>>,
}

/// Why a client-supplied access policy was refused; the gateway answers `invalid_payload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

impl AccessPolicy {
    /// Parses the client form of a policy.
    ///
    /// The input is an object whose keys are action names (top level and/or inside an
    /// `"actions"` object) mapping to mode names, plus an optional `"agents"` that is either
    /// an object `{agent_id: entry}` or an array `[entry]` of at most 256 entries. An entry is
    /// an object of action keys (again top level and/or under `"actions"`); in the array form
    /// it names its agent with `"agent_id"`, which the object form may repeat only if it
    /// equals the key. Agent ids must match `[A-Za-z0-9_-]{1,64}`.
    ///
    /// Anything else is refused with a message naming the offending key: an unknown key, a
    /// value that is not a known mode name, and the same action given two different modes for
    /// the same subject (e.g. `watch` and `observe`, or a top-level key and its `"actions"`
    /// twin, or two array entries for one agent). A silently ignored typo such as `"mout"`
    /// would leave a project more open than its owner meant. Agent entries without any action
    /// are dropped, so equal policies compare equal.
    pub fn from_json(v: &Value) -> Result<AccessPolicy, PolicyError> {
        let fields = v.as_object().ok_or_else(|| PolicyError("access_policy must be an object".to_owned()))?;
        let mut policy = AccessPolicy::default();
        insert_modes(&mut policy.actions, fields, "access_policy", "agents")?;
        if let Some(agents) = fields.get("agents") {
            policy.agents = parse_agents(agents)?;
        }
        Ok(policy)
    }

    /// The canonical output form:
    /// `{"actions":{<action>:<mode>},"agents":{<agent_id>:{<action>:<mode>}}}` with canonical
    /// names and only the entries that are set; the empty policy is `{"actions":{},"agents":{}}`.
    pub fn to_json(&self) -> Value {
        let agents = self.agents.iter().map(|(id, modes)| (id.clone(), modes_to_json(modes))).collect();
        let mut out = Map::new();
        out.insert("actions".to_owned(), modes_to_json(&self.actions));
        out.insert("agents".to_owned(), Value::Object(agents));
        Value::Object(out)
    }

    /// Whether the policy sets no mode at all, i.e. every action has its default mode.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.agents.values().all(BTreeMap::is_empty)
    }

    /// The mode that governs `action` for `agent` (`None`: no actor, overrides ignored).
    ///
    /// Precedence: the agent's override, the project-wide action, and for [`Action::Bind`]
    /// then the same two lookups for [`Action::Mount`]; failing all, [`Mode::Token`] while the
    /// project token is active, otherwise [`Mode::Open`].
    pub fn effective_mode(&self, action: Action, agent: Option<&str>, token_active: bool) -> Mode {
        let configured = |action: Action| {
            agent
                .and_then(|id| self.agents.get(id))
                .and_then(|overrides| overrides.get(&action))
                .or_else(|| self.actions.get(&action))
                .copied()
        };
        let bind_fallback = || match action {
            Action::Bind => configured(Action::Mount),
            _ => None,
        };
        let default = if token_active { Mode::Token } else { Mode::Open };
        configured(action).or_else(bind_fallback).unwrap_or(default)
    }
}

/// One access decision's inputs.
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// The connection's bearer role.
    pub role: Role,
    /// The acting agent. `None` for the ops that evaluate without an actor (get, mount_*):
    /// agent overrides are ignored.
    pub agent: Option<&'a str>,
    /// What the caller wants to do.
    pub action: Action,
    /// Whether the project's token is active (`token_locked`).
    pub token_active: bool,
    /// `None`: the caller presented no `project_token`. `Some(matched)`: it did, and it
    /// matched the active token or not (an inactive token never matches: `Some(false)`).
    pub presented_token: Option<bool>,
}

/// Why a project access policy refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessDenial {
    /// The action needs the project token and none was presented.
    TokenMissing,
    /// The action needs the project token and the presented one did not match.
    TokenRejected,
    /// The action is admin-only or denied.
    Forbidden,
}

impl AccessDenial {
    /// The `error.code` of the `control.error` reply.
    pub fn code(self) -> &'static str {
        match self {
            AccessDenial::TokenMissing => "missing_field",
            AccessDenial::TokenRejected => "project_auth_failed",
            AccessDenial::Forbidden => "project_policy_forbidden",
        }
    }

    /// The `error.message` of the `control.error` reply (the peer's error name).
    pub fn error_name(self) -> &'static str {
        match self {
            AccessDenial::TokenMissing => "MissingField",
            AccessDenial::TokenRejected => "ProjectAuthFailed",
            AccessDenial::Forbidden => "ProjectPolicyForbidden",
        }
    }
}

/// Decides `req` under `policy`: the admin role always passes; otherwise the effective mode
/// decides — `open` passes, `token` needs a matching presented token, `admin`/`deny` refuse.
pub fn evaluate(policy: &AccessPolicy, req: &AccessRequest) -> Result<(), AccessDenial> {
    if req.role.is_admin() {
        return Ok(());
    }
    match policy.effective_mode(req.action, req.agent, req.token_active) {
        Mode::Open => Ok(()),
        Mode::Token => match req.presented_token {
            None => Err(AccessDenial::TokenMissing),
            Some(false) => Err(AccessDenial::TokenRejected),
            Some(true) => Ok(()),
        },
        Mode::AdminOnly | Mode::Deny => Err(AccessDenial::Forbidden),
    }
}

/// Reads the action keys of one policy level into `modes`: keys of `fields` itself and of its
/// nested `"actions"` object. `structural_key` is the one other key this level may hold; the
/// caller interprets it.
fn insert_modes(
    modes: &mut BTreeMap<Action, Mode>,
    fields: &Map<String, Value>,
    context: &str,
    structural_key: &str,
) -> Result<(), PolicyError> {
    for (key, value) in fields {
        if key == structural_key {
            continue;
        }
        if key == "actions" {
            let nested_context = format!("{context}.actions");
            let nested = value.as_object().ok_or_else(|| PolicyError(format!("{nested_context} must be an object")))?;
            for (nested_key, nested_value) in nested {
                insert_mode(modes, nested_key, nested_value, &nested_context)?;
            }
        } else {
            insert_mode(modes, key, value, context)?;
        }
    }
    Ok(())
}

fn insert_mode(modes: &mut BTreeMap<Action, Mode>, key: &str, value: &Value, context: &str) -> Result<(), PolicyError> {
    let action = Action::parse(key).ok_or_else(|| PolicyError(format!("{context}: unknown key {}", quoted(key))))?;
    let mode = value.as_str().and_then(Mode::parse).ok_or_else(|| {
        PolicyError(format!("{context}.{key}: mode must be one of open, token, admin, deny (or an alias)"))
    })?;
    match modes.insert(action, mode) {
        Some(previous) if previous != mode => {
            Err(PolicyError(format!("{context}: conflicting modes for action {}", action.as_str())))
        }
        _ => Ok(()),
    }
}

fn parse_agents(agents: &Value) -> Result<BTreeMap<String, BTreeMap<Action, Mode>>, PolicyError> {
    let mut overrides = BTreeMap::new();
    match agents {
        Value::Object(entries) => {
            check_agent_entry_count(entries.len())?;
            for (id, entry) in entries {
                let fields = agent_entry_fields(entry, || format!("agent {}", quoted(id)))?;
                let inner_id = fields.get("agent_id");
                if inner_id.is_some_and(|inner| inner.as_str() != Some(id.as_str())) {
                    return Err(PolicyError(format!(
                        "access_policy.agents: agent_id of entry {} differs from its key",
                        quoted(id)
                    )));
                }
                insert_agent_modes(&mut overrides, id, fields)?;
            }
        }
        Value::Array(entries) => {
            check_agent_entry_count(entries.len())?;
            for (index, entry) in entries.iter().enumerate() {
                let fields = agent_entry_fields(entry, || format!("entry {index}"))?;
                let id = fields.get("agent_id").and_then(Value::as_str).ok_or_else(|| {
                    PolicyError(format!("access_policy.agents: entry {index} needs a string agent_id"))
                })?;
                insert_agent_modes(&mut overrides, id, fields)?;
            }
        }
        _ => {
            return Err(PolicyError("access_policy.agents must be an object or an array".to_owned()));
        }
    }
    overrides.retain(|_, modes| !modes.is_empty());
    Ok(overrides)
}

fn check_agent_entry_count(count: usize) -> Result<(), PolicyError> {
    if count > MAX_AGENT_ENTRIES {
        return Err(PolicyError(format!(
            "access_policy.agents: at most {MAX_AGENT_ENTRIES} entries allowed, got {count}"
        )));
    }
    Ok(())
}

fn agent_entry_fields(entry: &Value, describe: impl FnOnce() -> String) -> Result<&Map<String, Value>, PolicyError> {
    entry.as_object().ok_or_else(|| PolicyError(format!("access_policy.agents: {} must be an object", describe())))
}

fn insert_agent_modes(
    overrides: &mut BTreeMap<String, BTreeMap<Action, Mode>>,
    id: &str,
    fields: &Map<String, Value>,
) -> Result<(), PolicyError> {
    if !valid_agent_id(id) {
        return Err(PolicyError(format!("access_policy.agents: invalid agent id {}", quoted(id))));
    }
    let modes = overrides.entry(id.to_owned()).or_default();
    insert_modes(modes, fields, &format!("access_policy.agents.{id}"), "agent_id")
}

fn modes_to_json(modes: &BTreeMap<Action, Mode>) -> Value {
    Value::Object(modes.iter().map(|(action, mode)| (action.as_str().to_owned(), Value::from(mode.as_str()))).collect())
}

/// A client-supplied key as it may appear in an error message: escaped, so it cannot forge
/// log lines, and shortened, so it cannot flood them.
fn quoted(key: &str) -> String {
    match key.char_indices().nth(MAX_QUOTED_KEY_CHARS) {
        Some((cut, _)) => format!("{:?}…", &key[..cut]),
        None => format!("{key:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Admin, Bind, Invoke, Mount, Observe, Read};
    use Mode::{AdminOnly, Deny, Open, Token};
    use serde_json::json;

    const ALL_MODES: [Mode; 4] = [Open, Token, AdminOnly, Deny];

    fn modes(pairs: &[(Action, Mode)]) -> BTreeMap<Action, Mode> {
        pairs.iter().copied().collect()
    }

    fn policy(actions: &[(Action, Mode)], agents: &[(&str, &[(Action, Mode)])]) -> AccessPolicy {
        AccessPolicy {
            actions: modes(actions),
            agents: agents.iter().map(|(id, m)| (id.to_string(), modes(m))).collect(),
        }
    }

    fn parse_err(v: Value) -> String {
        AccessPolicy::from_json(&v).expect_err(&v.to_string()).0
    }

    #[test]
    fn action_names() {
        let table = [
            ("read", Some(Read)),
            ("observe", Some(Observe)),
            ("watch", Some(Observe)),
            ("invoke", Some(Invoke)),
            ("mount", Some(Mount)),
            ("bind", Some(Bind)),
            ("admin", Some(Admin)),
            ("Read", None),
            ("READ", None),
            (" read", None),
            ("mout", None),
            ("write", None),
            ("actions", None),
            ("agents", None),
            ("", None),
        ];
        for (name, action) in table {
            assert_eq!(Action::parse(name), action, "{name:?}");
        }
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
        }
        let names: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["read", "observe", "invoke", "mount", "bind", "admin"]);
    }

    #[test]
    fn mode_names_and_aliases() {
        let table = [
            ("open", Some(Open)),
            ("allow", Some(Open)),
            ("token", Some(Token)),
            ("token-required", Some(Token)),
            ("token_or_admin", Some(Token)),
            ("admin", Some(AdminOnly)),
            ("admin-only", Some(AdminOnly)),
            ("deny", Some(Deny)),
            ("disabled", Some(Deny)),
            ("Open", None),
            ("DENY", None),
            ("token_required", None),
            ("admin_only", None),
            ("allowed", None),
            ("closed", None),
            ("", None),
        ];
        for (name, mode) in table {
            assert_eq!(Mode::parse(name), mode, "{name:?}");
        }
        for (mode, name) in [(Open, "open"), (Token, "token"), (AdminOnly, "admin"), (Deny, "deny")] {
            assert_eq!(mode.as_str(), name);
            assert_eq!(Mode::parse(name), Some(mode));
        }
    }

    #[test]
    fn from_json_accepts_every_action_and_mode_alias_at_every_level() {
        let aliases = [
            ("open", Open),
            ("allow", Open),
            ("token", Token),
            ("token-required", Token),
            ("token_or_admin", Token),
            ("admin", AdminOnly),
            ("admin-only", AdminOnly),
            ("deny", Deny),
            ("disabled", Deny),
        ];
        let keys = [
            ("read", Read),
            ("observe", Observe),
            ("watch", Observe),
            ("invoke", Invoke),
            ("mount", Mount),
            ("bind", Bind),
            ("admin", Admin),
        ];
        for (key, action) in keys {
            for (alias, mode) in aliases {
                let project_wide = policy(&[(action, mode)], &[]);
                let agent_only = policy(&[], &[("a1", &[(action, mode)])]);
                let inputs = [
                    (json!({ key: alias }), &project_wide),
                    (json!({ "actions": { key: alias } }), &project_wide),
                    (json!({ "agents": { "a1": { key: alias } } }), &agent_only),
                    (json!({ "agents": { "a1": { "actions": { key: alias } } } }), &agent_only),
                    (json!({ "agents": [{ "agent_id": "a1", key: alias }] }), &agent_only),
                    (json!({ "agents": [{ "agent_id": "a1", "actions": { key: alias } }] }), &agent_only),
                ];
                for (input, expected) in inputs {
                    assert_eq!(&AccessPolicy::from_json(&input).unwrap(), expected, "{input}");
                }
            }
        }
    }

    #[test]
    fn from_json_combines_levels() {
        let input = json!({
            "read": "open",
            "actions": { "mount": "admin", "read": "allow" },
            "agents": {
                "coder": { "invoke": "token", "actions": { "bind": "deny" } },
                "viewer": { "agent_id": "viewer", "watch": "open" }
            }
        });
        let expected = policy(
            &[(Read, Open), (Mount, AdminOnly)],
            &[("coder", &[(Invoke, Token), (Bind, Deny)]), ("viewer", &[(Observe, Open)])],
        );
        assert_eq!(AccessPolicy::from_json(&input).unwrap(), expected);

        let array = json!({ "agents": [
            { "agent_id": "coder", "invoke": "token" },
            { "agent_id": "coder", "bind": "deny", "invoke": "token-required" },
            { "agent_id": "viewer", "actions": { "observe": "allow" } }
        ]});
        let expected = policy(&[], &[("coder", &[(Invoke, Token), (Bind, Deny)]), ("viewer", &[(Observe, Open)])]);
        assert_eq!(AccessPolicy::from_json(&array).unwrap(), expected);
    }

    #[test]
    fn from_json_empty_forms() {
        for input in [
            json!({}),
            json!({ "actions": {} }),
            json!({ "agents": {} }),
            json!({ "agents": [] }),
            json!({ "actions": {}, "agents": { "a1": {} } }),
            json!({ "agents": [{ "agent_id": "a1" }, { "agent_id": "a2", "actions": {} }] }),
        ] {
            let parsed = AccessPolicy::from_json(&input).unwrap();
            assert_eq!(parsed, AccessPolicy::default(), "{input}");
            assert!(parsed.is_empty(), "{input}");
        }
    }

    #[test]
    fn from_json_refusals_name_the_problem() {
        let table = [
            (json!(null), "must be an object"),
            (json!("open"), "must be an object"),
            (json!([]), "must be an object"),
            // Unknown keys, at every level.
            (json!({ "mout": "open" }), "unknown key \"mout\""),
            (json!({ "agent_id": "a1" }), "unknown key \"agent_id\""),
            (json!({ "Read": "open" }), "unknown key \"Read\""),
            (json!({ "actions": { "mout": "open" } }), "access_policy.actions: unknown key \"mout\""),
            (json!({ "actions": { "actions": {} } }), "unknown key \"actions\""),
            (json!({ "actions": { "agents": {} } }), "unknown key \"agents\""),
            (json!({ "agents": { "a1": { "agents": {} } } }), "unknown key \"agents\""),
            (json!({ "agents": { "a1": { "raed": "open" } } }), "agents.a1: unknown key \"raed\""),
            (json!({ "agents": [{ "agent_id": "a1", "x": "open" }] }), "unknown key \"x\""),
            // Bad modes.
            (json!({ "read": "closed" }), "access_policy.read: mode must be one of"),
            (json!({ "read": "" }), "access_policy.read: mode"),
            (json!({ "read": null }), "access_policy.read: mode"),
            (json!({ "read": true }), "access_policy.read: mode"),
            (json!({ "read": ["open"] }), "access_policy.read: mode"),
            (json!({ "actions": { "bind": 1 } }), "access_policy.actions.bind: mode"),
            (json!({ "agents": { "a1": { "mount": "OPEN" } } }), "agents.a1.mount: mode"),
            // Wrong shapes.
            (json!({ "actions": [] }), "access_policy.actions must be an object"),
            (json!({ "actions": null }), "access_policy.actions must be an object"),
            (json!({ "agents": null }), "agents must be an object or an array"),
            (json!({ "agents": "a1" }), "agents must be an object or an array"),
            (json!({ "agents": { "a1": "open" } }), "agent \"a1\" must be an object"),
            (json!({ "agents": [["a1"]] }), "entry 0 must be an object"),
            (json!({ "agents": { "a1": { "actions": "open" } } }), "agents.a1.actions must be"),
            // Agent ids.
            (json!({ "agents": [{ "read": "open" }] }), "entry 0 needs a string agent_id"),
            (json!({ "agents": [{ "agent_id": 7 }] }), "entry 0 needs a string agent_id"),
            (json!({ "agents": [{ "agent_id": "" }] }), "invalid agent id \"\""),
            (json!({ "agents": [{ "agent_id": "a.b" }] }), "invalid agent id \"a.b\""),
            (json!({ "agents": { "a/b": {} } }), "invalid agent id \"a/b\""),
            (json!({ "agents": { "": {} } }), "invalid agent id \"\""),
            (json!({ "agents": { "a1": { "agent_id": "a2" } } }), "differs from its key"),
            (json!({ "agents": { "a1": { "agent_id": 1 } } }), "differs from its key"),
            // Conflicts.
            (json!({ "read": "open", "actions": { "read": "deny" } }), "conflicting modes for action read"),
            (json!({ "watch": "open", "observe": "token" }), "conflicting modes for action observe"),
            (
                json!({ "agents": { "a1": { "mount": "open", "actions": { "mount": "admin" } } } }),
                "conflicting modes for action mount",
            ),
            (
                json!({ "agents": [
                    { "agent_id": "a1", "read": "open" },
                    { "agent_id": "a1", "read": "deny" }
                ] }),
                "agents.a1: conflicting modes for action read",
            ),
        ];
        for (input, needle) in table {
            let message = parse_err(input.clone());
            assert!(message.contains(needle), "{input}: {message:?} lacks {needle:?}");
        }
    }

    #[test]
    fn agreeing_duplicates_are_accepted() {
        let input = json!({
            "watch": "open",
            "observe": "allow",
            "actions": { "read": "deny" },
            "read": "disabled"
        });
        assert_eq!(AccessPolicy::from_json(&input).unwrap(), policy(&[(Observe, Open), (Read, Deny)], &[]));
    }

    #[test]
    fn agent_ids_at_the_length_limit() {
        let longest = "a".repeat(64);
        let parsed = AccessPolicy::from_json(&json!({ "agents": { longest.clone(): { "read": "open" } } }));
        assert_eq!(parsed.unwrap(), policy(&[], &[(&longest, &[(Read, Open)])]));
        let too_long = "a".repeat(65);
        let message = parse_err(json!({ "agents": [{ "agent_id": too_long, "read": "open" }] }));
        assert!(message.contains("invalid agent id"), "{message}");
    }

    #[test]
    fn agent_entry_count_is_bounded() {
        let object = |n: usize| Value::Object((0..n).map(|i| (format!("a{i}"), json!({ "read": "open" }))).collect());
        let array =
            |n: usize| Value::Array((0..n).map(|i| json!({ "agent_id": format!("a{i}"), "read": "open" })).collect());
        for agents in [object(256), array(256)] {
            let parsed = AccessPolicy::from_json(&json!({ "agents": agents })).unwrap();
            assert_eq!(parsed.agents.len(), 256);
        }
        for agents in [object(257), array(257)] {
            let message = parse_err(json!({ "agents": agents }));
            assert!(message.contains("at most 256 entries"), "{message}");
        }
    }

    #[test]
    fn error_messages_escape_and_shorten_client_keys() {
        let message = parse_err(json!({ "evil\nkey": "open" }));
        assert!(message.contains(r#""evil\nkey""#), "{message}");
        assert!(!message.contains('\n'));
        let long_key = "k".repeat(10_000);
        let message = parse_err(json!({ long_key: "open" }));
        assert!(message.len() < 200, "{}", message.len());
        assert!(message.ends_with('…'), "{message}");
        let message = parse_err(json!({ "ü".repeat(100): "open" }));
        assert!(message.contains(&"ü".repeat(64)) && !message.contains(&"ü".repeat(65)));
        assert_eq!(PolicyError("x y".to_owned()).to_string(), "x y");
    }

    #[test]
    fn to_json_canonical_form() {
        assert_eq!(AccessPolicy::default().to_json(), json!({ "actions": {}, "agents": {} }));
        let p = policy(
            &[(Observe, Open), (Bind, Token), (Admin, AdminOnly), (Invoke, Deny)],
            &[("coder", &[(Read, Deny), (Mount, Open)])],
        );
        assert_eq!(
            p.to_json(),
            json!({
                "actions": {
                    "observe": "open", "bind": "token", "admin": "admin", "invoke": "deny"
                },
                "agents": { "coder": { "read": "deny", "mount": "open" } }
            })
        );
    }

    #[test]
    fn json_round_trip_normalises_aliases() {
        let input = json!({
            "watch": "allow",
            "actions": { "bind": "token_or_admin" },
            "agents": [{ "agent_id": "a1", "admin": "admin-only", "read": "disabled" }]
        });
        let parsed = AccessPolicy::from_json(&input).unwrap();
        let canonical = parsed.to_json();
        assert_eq!(
            canonical,
            json!({
                "actions": { "observe": "open", "bind": "token" },
                "agents": { "a1": { "admin": "admin", "read": "deny" } }
            })
        );
        assert_eq!(AccessPolicy::from_json(&canonical).unwrap(), parsed);
    }

    #[test]
    fn is_empty_ignores_agents_without_modes() {
        assert!(AccessPolicy::default().is_empty());
        assert!(policy(&[], &[("a1", &[])]).is_empty());
        assert!(!policy(&[(Read, Open)], &[]).is_empty());
        assert!(!policy(&[], &[("a1", &[(Read, Open)])]).is_empty());
    }

    #[test]
    fn default_mode_follows_the_project_token() {
        let empty = AccessPolicy::default();
        let other_agent_only = policy(&[], &[("other", &[(Read, Deny), (Mount, Deny)])]);
        for p in [&empty, &other_agent_only] {
            for action in Action::ALL {
                for agent in [None, Some("a1")] {
                    assert_eq!(p.effective_mode(action, agent, false), Open, "{action:?} {agent:?}");
                    assert_eq!(p.effective_mode(action, agent, true), Token, "{action:?} {agent:?}");
                }
            }
        }
    }

    #[test]
    fn precedence_override_then_action_then_default() {
        for action in Action::ALL {
            for token_active in [false, true] {
                let default = if token_active { Token } else { Open };
                let table: [(AccessPolicy, Option<&str>, Mode); 7] = [
                    // Project-wide entry applies to every agent and to no actor.
                    (policy(&[(action, Deny)], &[]), Some("a1"), Deny),
                    (policy(&[(action, Deny)], &[]), None, Deny),
                    // An override wins over the project-wide entry, for its own agent only.
                    (policy(&[(action, Deny)], &[("a1", &[(action, Open)])]), Some("a1"), Open),
                    (policy(&[(action, Deny)], &[("a1", &[(action, Open)])]), Some("a2"), Deny),
                    // Without an actor, overrides are ignored.
                    (policy(&[(action, Deny)], &[("a1", &[(action, Open)])]), None, Deny),
                    (policy(&[], &[("a1", &[(action, AdminOnly)])]), None, default),
                    (policy(&[], &[("a1", &[(action, AdminOnly)])]), Some("a1"), AdminOnly),
                ];
                for (p, agent, expected) in table {
                    assert_eq!(
                        p.effective_mode(action, agent, token_active),
                        expected,
                        "{action:?} {agent:?} token_active={token_active} {p:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bind_falls_back_to_mount() {
        let table: [(AccessPolicy, Option<&str>, bool, Mode); 12] = [
            // Every bind entry beats every mount entry.
            (policy(&[(Bind, Open), (Mount, Deny)], &[("a1", &[(Mount, Deny)])]), Some("a1"), false, Open),
            (policy(&[(Mount, Deny)], &[("a1", &[(Bind, Open), (Mount, Deny)])]), Some("a1"), false, Open),
            // No bind entry: the agent's mount override, then the project-wide mount.
            (policy(&[(Mount, Deny)], &[("a1", &[(Mount, Open)])]), Some("a1"), false, Open),
            (policy(&[(Mount, Deny)], &[("a1", &[(Mount, Open)])]), Some("a2"), false, Deny),
            (policy(&[(Mount, Deny)], &[("a1", &[(Mount, Open)])]), None, false, Deny),
            (policy(&[(Mount, AdminOnly)], &[]), Some("a1"), true, AdminOnly),
            (policy(&[(Mount, Open)], &[]), None, true, Open),
            // The project-wide bind beats the agent's mount override.
            (policy(&[(Bind, Token)], &[("a1", &[(Mount, Open)])]), Some("a1"), false, Token),
            // No bind or mount entry: the default.
            (policy(&[(Read, Deny), (Admin, Deny)], &[]), Some("a1"), false, Open),
            (policy(&[(Read, Deny), (Admin, Deny)], &[]), Some("a1"), true, Token),
            // Only bind falls back: mount never borrows from bind.
            (policy(&[(Bind, Deny)], &[]), Some("a1"), false, Deny),
            (policy(&[(Bind, Deny)], &[]), Some("a1"), true, Deny),
        ];
        for (p, agent, token_active, expected) in table {
            assert_eq!(
                p.effective_mode(Bind, agent, token_active),
                expected,
                "{agent:?} token_active={token_active} {p:?}"
            );
        }
        let bind_only = policy(&[(Bind, Deny)], &[("a1", &[(Bind, Deny)])]);
        assert_eq!(bind_only.effective_mode(Mount, Some("a1"), false), Open);
        assert_eq!(bind_only.effective_mode(Mount, Some("a1"), true), Token);
        // No other action falls back to anything.
        let mount_only = policy(&[(Mount, Deny)], &[]);
        for action in [Read, Observe, Invoke, Admin] {
            assert_eq!(mount_only.effective_mode(action, None, false), Open, "{action:?}");
        }
    }

    #[test]
    fn access_denial_codes_and_names() {
        for (denial, code, name) in [
            (AccessDenial::TokenMissing, "missing_field", "MissingField"),
            (AccessDenial::TokenRejected, "project_auth_failed", "ProjectAuthFailed"),
            (AccessDenial::Forbidden, "project_policy_forbidden", "ProjectPolicyForbidden"),
        ] {
            assert_eq!(denial.code(), code);
            assert_eq!(denial.error_name(), name);
        }
    }

    #[test]
    fn evaluate_decision_table() {
        use AccessDenial::{Forbidden, TokenMissing, TokenRejected};
        let table = [
            // mode, presented token, outcome for a user
            (Open, None, Ok(())),
            (Open, Some(false), Ok(())),
            (Open, Some(true), Ok(())),
            (Token, None, Err(TokenMissing)),
            (Token, Some(false), Err(TokenRejected)),
            (Token, Some(true), Ok(())),
            (AdminOnly, None, Err(Forbidden)),
            (AdminOnly, Some(false), Err(Forbidden)),
            (AdminOnly, Some(true), Err(Forbidden)),
            (Deny, None, Err(Forbidden)),
            (Deny, Some(false), Err(Forbidden)),
            (Deny, Some(true), Err(Forbidden)),
        ];
        for action in Action::ALL {
            for (mode, presented_token, expected) in table {
                // The mode reached through each precedence level must decide alike.
                let via_action = policy(&[(action, mode)], &[]);
                let via_override = policy(&[], &[("a1", &[(action, mode)])]);
                for (p, agent) in [(&via_action, None), (&via_action, Some("a1")), (&via_override, Some("a1"))] {
                    for token_active in [false, true] {
                        let req = |role| AccessRequest { role, agent, action, token_active, presented_token };
                        let context = format!("{action:?} {mode:?} {agent:?} {presented_token:?} {token_active}");
                        assert_eq!(evaluate(p, &req(Role::User)), expected, "user {context}");
                        assert_eq!(evaluate(p, &req(Role::Admin)), Ok(()), "admin {context}");
                    }
                }
            }
        }
    }

    #[test]
    fn evaluate_default_modes() {
        let empty = AccessPolicy::default();
        let table = [
            // token_active, presented token, outcome for a user
            (false, None, Ok(())),
            (false, Some(false), Ok(())),
            (true, None, Err(AccessDenial::TokenMissing)),
            (true, Some(false), Err(AccessDenial::TokenRejected)),
            (true, Some(true), Ok(())),
        ];
        for action in Action::ALL {
            for (token_active, presented_token, expected) in table {
                let req = AccessRequest { role: Role::User, agent: Some("a1"), action, token_active, presented_token };
                assert_eq!(evaluate(&empty, &req), expected, "{action:?} {token_active} {presented_token:?}");
            }
        }
    }

    #[test]
    fn admin_bypasses_every_mode() {
        for mode in ALL_MODES {
            for action in Action::ALL {
                let p = policy(&[(action, mode)], &[("a1", &[(action, mode)])]);
                for presented_token in [None, Some(false), Some(true)] {
                    let req = AccessRequest {
                        role: Role::Admin,
                        agent: Some("a1"),
                        action,
                        token_active: true,
                        presented_token,
                    };
                    assert_eq!(evaluate(&p, &req), Ok(()), "{mode:?} {action:?} {presented_token:?}");
                }
            }
        }
    }

    #[test]
    fn evaluate_ignores_overrides_without_an_actor() {
        let p = policy(&[(Read, Open)], &[("a1", &[(Read, Deny)])]);
        let req =
            |agent| AccessRequest { role: Role::User, agent, action: Read, token_active: false, presented_token: None };
        assert_eq!(evaluate(&p, &req(None)), Ok(()));
        assert_eq!(evaluate(&p, &req(Some("a1"))), Err(AccessDenial::Forbidden));
        assert_eq!(evaluate(&p, &req(Some("a2"))), Ok(()));
    }
}
