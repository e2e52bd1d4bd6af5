//! What the daemon advertises in `control.node_service_upsert` (spec §8.4): the `fs` service
//! (unless `--no-fs-service`), one `terminal-<id>` entry per `--terminal-id`, labels, platform.
//!
//! Identifiers and sizes are checked when the command line is parsed, with the gateway's rules
//! (`unified-v2.md` §6.7), so a bad flag fails at start with a message naming it instead of
//! every upsert being refused later.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Most `--terminal-id` / `--label` flags.
pub const MAX_TERMINALS: usize = 64;
pub const MAX_LABELS: usize = 64;
/// Longest label value (the gateway's limit).
const MAX_LABEL_VALUE: usize = 512;
/// `terminal-` + id must stay a 128-character identifier.
const MAX_TERMINAL_ID: usize = 128 - "terminal-".len();

/// A flag the gateway would refuse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceFlagError {
    #[error("--terminal-id {0:?}: must be 1-{MAX_TERMINAL_ID} characters of [A-Za-z0-9._-]")]
    TerminalId(String),
    #[error(
        "--label {0:?}: must be key=value, key 1-128 characters of [A-Za-z0-9._-], value 1-512 characters without control characters"
    )]
    Label(String),
    #[error("at most {0} --terminal-id / --label flags")]
    TooMany(usize),
    #[error("--terminal-id {0:?} given twice")]
    DuplicateTerminal(String),
}

fn is_identifier(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses `--terminal-id` values.
pub fn parse_terminals(ids: &[String]) -> Result<Vec<String>, ServiceFlagError> {
    if ids.len() > MAX_TERMINALS {
        return Err(ServiceFlagError::TooMany(MAX_TERMINALS));
    }
    let mut seen = Vec::new();
    for id in ids {
        if !is_identifier(id, MAX_TERMINAL_ID) {
            return Err(ServiceFlagError::TerminalId(id.clone()));
        }
        if seen.contains(id) {
            return Err(ServiceFlagError::DuplicateTerminal(id.clone()));
        }
        seen.push(id.clone());
    }
    Ok(seen)
}

/// Parses `--label k=v` values (a later key replaces an earlier one).
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, ServiceFlagError> {
    if labels.len() > MAX_LABELS {
        return Err(ServiceFlagError::TooMany(MAX_LABELS));
    }
    labels
        .iter()
        .map(|text| {
            let (k, v) = text.split_once('=').ok_or_else(|| ServiceFlagError::Label(text.clone()))?;
            let value_ok = (1..=MAX_LABEL_VALUE).contains(&v.chars().count()) && !v.chars().any(char::is_control);
            if !is_identifier(k, 128) || !value_ok {
                return Err(ServiceFlagError::Label(text.clone()));
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The services and labels of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advertised {
    /// `Some((any export read-write, export count))` when the fs service is advertised.
    pub fs: Option<(bool, usize)>,
    pub terminals: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// `{os, arch, runtime_kind}` of this build.
pub fn platform() -> Value {
    json!({"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "runtime_kind": "native"})
}

impl Advertised {
    /// The `node_service_upsert` payload.
    pub fn upsert_payload(&self, node_id: &str, node_secret: &str) -> Value {
        let mut services = Vec::new();
        if let Some((rw, export_count)) = self.fs {
            services.push(json!({
                "service_id": "fs",
                "kind": "fs",
                "version": "1",
                "state": "online",
                "endpoints": [format!("/nodes/{node_id}/fs")],
                "capabilities": {"rw": rw, "export_count": export_count},
            }));
        }
        for t in &self.terminals {
            services.push(json!({
                "service_id": format!("terminal-{t}"),
                "kind": "terminal",
                "version": "1",
                "state": "online",
                "endpoints": [format!("/nodes/{node_id}/terminal/{t}")],
                "capabilities": {"pty": true, "terminal_id": t},
            }));
        }
        let mut payload = json!({
            "node_id": node_id,
            "node_secret": node_secret,
            "platform": platform(),
            "services": services,
        });
        if !self.labels.is_empty() {
            payload["labels"] = json!(self.labels);
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_payload_matches_the_spec_shapes() {
        let adv = Advertised {
            fs: Some((true, 2)),
            terminals: vec!["main".into()],
            labels: BTreeMap::from([("site".into(), "lab".into())]),
        };
        let p = adv.upsert_payload("node-3", "secret-x");
        assert_eq!(p["node_id"], "node-3");
        assert_eq!(p["labels"], json!({"site": "lab"}));
        assert_eq!(p["platform"]["runtime_kind"], "native");
        assert_eq!(
            p["services"][0],
            json!({"service_id":"fs","kind":"fs","version":"1","state":"online","endpoints":["/nodes/node-3/fs"],"capabilities":{"rw":true,"export_count":2}})
        );
        assert_eq!(
            p["services"][1],
            json!({"service_id":"terminal-main","kind":"terminal","version":"1","state":"online","endpoints":["/nodes/node-3/terminal/main"],"capabilities":{"pty":true,"terminal_id":"main"}})
        );
        let none = Advertised::default().upsert_payload("node-3", "s");
        assert_eq!(none["services"], json!([]));
        assert!(none.get("labels").is_none());
    }

    #[test]
    fn flags_are_checked_with_the_gateway_rules() {
        assert_eq!(parse_terminals(&["a.b-1".into()]).unwrap(), ["a.b-1"]);
        assert!(matches!(parse_terminals(&["a b".into()]), Err(ServiceFlagError::TerminalId(_))));
        assert!(matches!(parse_terminals(&["".into()]), Err(ServiceFlagError::TerminalId(_))));
        assert!(matches!(parse_terminals(&["x".repeat(120)]), Err(ServiceFlagError::TerminalId(_))));
        assert!(matches!(parse_terminals(&["a".into(), "a".into()]), Err(ServiceFlagError::DuplicateTerminal(_))));
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        assert_eq!(parse_terminals(&many), Err(ServiceFlagError::TooMany(64)));
        assert_eq!(parse_labels(&["k=v=w".into()]).unwrap()["k"], "v=w");
        for bad in ["novalue", "=v", "k=", "bad key=v", "k=line\nbreak"] {
            assert!(matches!(parse_labels(&[bad.into()]), Err(ServiceFlagError::Label(_))), "{bad}");
        }
    }
}
