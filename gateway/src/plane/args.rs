//! Reading operation payloads the way the spec validates them (`unified-v2.md` §6).
//!
//! An absent payload counts as `{}`; a payload that is not an object is `invalid_payload`; a
//! required string that is missing is `missing_field`; one that is present but empty or not
//! a string is `invalid_payload`. Messages are the original's error names.

use serde_json::{Map, Value};
use spiderweb_proto::codes::control as code;

use super::OpError;

pub struct Args<'a>(&'a Map<String, Value>);

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> Args<'a> {
    pub fn of(payload: Option<&'a Value>) -> Result<Args<'a>, OpError> {
        match payload {
            None | Some(Value::Null) => Ok(Args(&EMPTY)),
            Some(Value::Object(map)) => Ok(Args(map)),
            Some(_) => Err(OpError::invalid_payload()),
        }
    }

    pub fn raw(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    pub fn required_str(&self, key: &str) -> Result<&'a str, OpError> {
        self.optional_str(key)?.ok_or_else(OpError::missing_field)
    }

    pub fn optional_str(&self, key: &str) -> Result<Option<&'a str>, OpError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            Some(_) => Err(OpError::invalid_payload()),
        }
    }

    /// A required identifier (`[A-Za-z0-9._-]{1,max}`).
    pub fn required_id(&self, key: &str, max: usize) -> Result<&'a str, OpError> {
        let s = self.required_str(key)?;
        check(spiderweb_policy::session::valid_identifier(s, max), s)
    }

    pub fn optional_id(&self, key: &str, max: usize) -> Result<Option<&'a str>, OpError> {
        self.optional_str(key)?.map(|s| check(spiderweb_policy::session::valid_identifier(s, max), s)).transpose()
    }

    /// A display string: non-empty, at most `max` characters, no control characters.
    pub fn optional_display(&self, key: &str, max: usize) -> Result<Option<&'a str>, OpError> {
        self.optional_str(key)?.map(|s| check(spiderweb_policy::session::valid_display(s, max), s)).transpose()
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>, OpError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(OpError::invalid_payload()),
        }
    }

    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>, OpError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(OpError::invalid_payload),
        }
    }
}

fn check(ok: bool, s: &str) -> Result<&str, OpError> {
    if ok { Ok(s) } else { Err(OpError::new(code::INVALID_PAYLOAD, "InvalidPayload")) }
}
