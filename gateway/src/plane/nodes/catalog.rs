//! A node's service catalog (spec unified-v2 §6.7): validation, the stored form, digests
//! and the delta between two catalogs.
//!
//! Why its own module: the catalog is the only node input with free-form structure, so this
//! is where its shape and size are pinned down before anything is stored or fanned out to
//! watchers. It never decides who may see a service (`spiderweb_policy::service_access`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use spiderweb_policy::session::{valid_display, valid_identifier};

use super::super::OpError;
use crate::store::nodes::Platform;

/// Services one node may advertise.
pub const MAX_SERVICES: usize = 64;
/// Labels one node may carry.
pub const MAX_LABELS: usize = 64;
const MAX_ENDPOINTS: usize = 64;
const MAX_SERVICE_MOUNTS: usize = 64;
const MAX_PATH: usize = 512;
const MAX_HELP_MD: usize = 65_536;
/// The stored catalog of one node, serialized (objects like `capabilities` are free-form).
const MAX_CATALOG_BYTES: usize = 1024 * 1024;

fn invalid(why: &str) -> OpError {
    OpError::new(spiderweb_proto::codes::control::INVALID_PAYLOAD, format!("InvalidPayload: {why}"))
}

fn object_or_default(sv: &Map<String, Value>, key: &str) -> Result<Value, OpError> {
    match sv.get(key) {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(invalid(&format!("{key} must be an object"))),
    }
}

fn identifier<'a>(sv: &'a Map<String, Value>, key: &str, max: usize) -> Result<&'a str, OpError> {
    match sv.get(key) {
        Some(Value::String(s)) if valid_identifier(s, max) => Ok(s),
        None | Some(Value::Null) => Err(OpError::missing_field()),
        Some(_) => Err(invalid(&format!("{key} must be an identifier of at most {max} characters"))),
    }
}

/// One service entry, validated and in its stored form (fixed key order, defaults filled).
fn service(raw: &Value) -> Result<Value, OpError> {
    let Value::Object(sv) = raw else { return Err(invalid("each service must be an object")) };
    let service_id = identifier(sv, "service_id", 128)?;
    let kind = identifier(sv, "kind", 128)?;
    let state = identifier(sv, "state", 64)?;
    let version = match sv.get("version") {
        None | Some(Value::Null) => "1",
        Some(Value::String(v)) if valid_display(v, 64) => v,
        Some(_) => return Err(invalid("version must be a display string of at most 64 characters")),
    };
    let endpoints = match sv.get("endpoints") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_ENDPOINTS => items,
        None | Some(Value::Null) => return Err(OpError::missing_field()),
        Some(_) => return Err(invalid("endpoints must be a non-empty array of at most 64 paths")),
    };
    for endpoint in endpoints {
        match endpoint.as_str() {
            Some(p) if p.starts_with('/') && p.len() <= MAX_PATH => {}
            _ => return Err(invalid("each endpoint must be a path starting with / (at most 512 characters)")),
        }
    }
    let mounts = match sv.get("mounts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_SERVICE_MOUNTS => items.clone(),
        Some(_) => return Err(invalid("mounts must be an array of at most 64 entries")),
    };
    for mount in &mounts {
        let Value::Object(m) = mount else { return Err(invalid("each mount must be an object")) };
        identifier(m, "mount_id", 128)?;
        match m.get("mount_path") {
            Some(Value::String(p)) if p.starts_with('/') && p.len() <= MAX_PATH => {}
            None | Some(Value::Null) => return Err(OpError::missing_field()),
            Some(_) => return Err(invalid("mount_path must be absolute (at most 512 characters)")),
        }
        if let Some(s) = m.get("state").filter(|s| !s.is_null())
            && !s.as_str().is_some_and(|s| valid_identifier(s, 64))
        {
            return Err(invalid("mount state must be an identifier"));
        }
    }
    let mut out = Map::new();
    out.insert("service_id".into(), json!(service_id));
    out.insert("kind".into(), json!(kind));
    out.insert("version".into(), json!(version));
    out.insert("state".into(), json!(state));
    out.insert("endpoints".into(), Value::Array(endpoints.clone()));
    out.insert("capabilities".into(), object_or_default(sv, "capabilities")?);
    out.insert("mounts".into(), Value::Array(mounts));
    for key in ["ops", "runtime", "permissions", "schema"] {
        out.insert(key.into(), object_or_default(sv, key)?);
    }
    match sv.get("help_md") {
        None | Some(Value::Null) => {}
        Some(Value::String(h)) if !h.is_empty() && h.len() <= MAX_HELP_MD => {
            out.insert("help_md".into(), json!(h));
        }
        Some(_) => return Err(invalid("help_md must be a string of 1 to 65536 characters")),
    }
    Ok(Value::Object(out))
}

/// `services` of an upsert: each entry validated, ids unique, the whole list bounded.
pub fn services(raw: &Value) -> Result<Vec<Value>, OpError> {
    let Value::Array(items) = raw else { return Err(invalid("services must be an array")) };
    if items.len() > MAX_SERVICES {
        return Err(invalid(&format!("at most {MAX_SERVICES} services per node")));
    }
    let mut out: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        let sv = service(item)?;
        if out.iter().any(|s| s["service_id"] == sv["service_id"]) {
            return Err(invalid("service_id values must be unique"));
        }
        out.push(sv);
    }
    let size: usize = out.iter().map(|s| s.to_string().len()).sum();
    if size > MAX_CATALOG_BYTES {
        return Err(invalid("the service catalog is larger than 1 MiB"));
    }
    Ok(out)
}

/// `labels` of an upsert: identifier keys, string values of at most 512 characters.
pub fn labels(raw: &Value) -> Result<BTreeMap<String, String>, OpError> {
    let Value::Object(map) = raw else { return Err(invalid("labels must be an object")) };
    if map.len() > MAX_LABELS {
        return Err(invalid(&format!("at most {MAX_LABELS} labels per node")));
    }
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) if valid_identifier(k, 128) && s.chars().count() <= 512 => Ok((k.clone(), s.to_owned())),
            _ => Err(invalid("label keys must be identifiers and values strings of at most 512 characters")),
        })
        .collect()
}

/// Applies a `platform` object's keys onto `platform` (absent keys stay as they are).
pub fn merge_platform(platform: &mut Platform, raw: Option<&Value>) -> Result<(), OpError> {
    let map = match raw {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(invalid("platform must be an object")),
    };
    for (key, slot) in
        [("os", &mut platform.os), ("arch", &mut platform.arch), ("runtime_kind", &mut platform.runtime_kind)]
    {
        match map.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if valid_identifier(s, 64) => *slot = s.clone(),
            Some(_) => return Err(invalid(&format!("platform.{key} must be an identifier of at most 64 characters"))),
        }
    }
    Ok(())
}

/// `"0x"` + 16 hex digits: the first 64 bits of SHA-256 over the stored entry. Clients only
/// compare hashes, so any stable digest is acceptable (spec §6.7).
pub fn hash(service: &Value) -> String {
    let digest = Sha256::digest(service.to_string().as_bytes());
    format!("0x{}", super::super::hex(&digest[..8]))
}

/// `service_delta` between the stored services and the new ones.
pub fn delta(before: &[Value], after: &[Value], timestamp_ms: i64) -> Value {
    let find = |list: &[Value], id: &Value| list.iter().find(|s| &s["service_id"] == id).cloned();
    let mut added = Vec::new();
    let mut updated = Vec::new();
    let mut removed = Vec::new();
    for new in after {
        let id = &new["service_id"];
        match find(before, id) {
            None => added.push(json!({"service_id": id, "version": new["version"], "hash": hash(new)})),
            Some(old) if hash(&old) != hash(new) => updated.push(json!({
                "service_id": id, "version": new["version"], "hash": hash(new),
                "previous_version": old["version"], "previous_hash": hash(&old),
            })),
            Some(_) => {}
        }
    }
    for old in before {
        if find(after, &old["service_id"]).is_none() {
            removed.push(json!({"service_id": old["service_id"], "version": old["version"], "hash": hash(old)}));
        }
    }
    let changed = !(added.is_empty() && updated.is_empty() && removed.is_empty());
    json!({"changed": changed, "timestamp_ms": timestamp_ms, "added": added, "updated": updated, "removed": removed})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_service(state: &str) -> Value {
        json!({"service_id": "fs", "kind": "fs", "state": state, "endpoints": ["/nodes/node-1/fs"],
               "capabilities": {"rw": true}})
    }

    #[test]
    fn defaults_are_filled_and_help_only_when_set() {
        let out = services(&json!([fs_service("online")])).unwrap();
        assert_eq!(out[0]["version"], "1");
        assert_eq!(out[0]["mounts"], json!([]));
        assert_eq!(out[0]["ops"], json!({}));
        assert!(out[0].get("help_md").is_none());
    }

    #[test]
    fn violations_are_refused() {
        let bad = [
            json!([{"service_id": "a b", "kind": "fs", "state": "x", "endpoints": ["/a"]}]),
            json!([{"service_id": "a", "kind": "fs", "state": "x", "endpoints": []}]),
            json!([{"service_id": "a", "kind": "fs", "state": "x", "endpoints": ["rel"]}]),
            json!([{"service_id": "a", "kind": "fs", "state": "x", "endpoints": ["/a"], "capabilities": 1}]),
            json!([{"service_id": "a", "kind": "fs", "state": "x", "endpoints": ["/a"], "help_md": ""}]),
            json!([{"service_id": "a", "kind": "fs", "state": "x", "endpoints": ["/a"], "mounts": [{"mount_id": "m", "mount_path": "rel"}]}]),
            json!([fs_service("online"), fs_service("online")]),
            json!({"fs": 1}),
        ];
        for b in bad {
            assert!(services(&b).is_err(), "{b}");
        }
        let too_many: Vec<Value> = (0..=MAX_SERVICES)
            .map(|i| json!({"service_id": format!("s{i}"), "kind": "k", "state": "s", "endpoints": ["/x"]}))
            .collect();
        assert!(services(&Value::Array(too_many)).is_err());
    }

    #[test]
    fn delta_reports_added_updated_removed() {
        let v1 = services(&json!([fs_service("online")])).unwrap();
        let v2 = services(&json!([fs_service("degraded"),
            {"service_id": "t", "kind": "terminal", "state": "online", "endpoints": ["/t"]}]))
        .unwrap();
        let d = delta(&v1, &v2, 7);
        assert_eq!(d["changed"], true);
        assert_eq!(d["added"][0]["service_id"], "t");
        assert_eq!(d["updated"][0]["previous_hash"], json!(hash(&v1[0])));
        let back = delta(&v2, &v2, 8);
        assert_eq!(back["changed"], false);
        assert_eq!(delta(&v2, &[], 9)["removed"].as_array().unwrap().len(), 2);
        assert!(hash(&v1[0]).starts_with("0x") && hash(&v1[0]).len() == 18);
    }
}
