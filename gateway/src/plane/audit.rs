//! The audit log (spec `unified-v2.md` §5, §6.10).
//!
//! Every scoped mutation (ok or error) and every security denial is appended, durably, with
//! the bound agent, the op, its scope and correlation. The store keeps the newest
//! [`RETAINED`] records; `audit_tail` reads them back newest first.

use serde_json::{Value, json};

use super::args::Args;
use super::{ControlPlane, OpError, OpResult};
use crate::store::AuditRecord;

/// More than the original's 2048 in-memory records: this log survives restarts and is
/// what an operator reads after an incident.
pub const RETAINED: usize = 100_000;
const DEFAULT_TAIL: u64 = 50;
const MAX_TAIL: u64 = 500;

/// One thing to record.
pub struct Entry<'a> {
    pub agent_id: &'a str,
    pub control_type: &'a str,
    pub scope: &'a str,
    pub correlation_id: Option<&'a str>,
    pub error_code: Option<&'a str>,
}

impl ControlPlane {
    /// Appends a record. A failing audit write is logged, not turned into a client error:
    /// the operation it describes has already been decided.
    pub fn audit(&self, entry: Entry<'_>) {
        let mut state = self.lock();
        let record = AuditRecord {
            id: state.next_audit_id,
            timestamp_ms: super::now_ms(),
            agent_id: entry.agent_id.into(),
            control_type: entry.control_type.into(),
            scope: entry.scope.into(),
            correlation_id: entry.correlation_id.map(str::to_owned),
            result: if entry.error_code.is_some() { "error" } else { "ok" }.into(),
            error_code: entry.error_code.map(str::to_owned),
        };
        match self.store.append_audit(&record, RETAINED) {
            Ok(()) => state.next_audit_id += 1,
            Err(e) => tracing::error!(error = %e, control_type = entry.control_type, "audit write failed"),
        }
    }

    pub fn audit_tail(&self, payload: Option<&Value>) -> OpResult {
        let args = Args::of(payload)?;
        let limit = match args.raw("limit") {
            None | Some(Value::Null) => DEFAULT_TAIL,
            Some(v) => v.as_u64().ok_or_else(OpError::invalid_payload)?,
        };
        let limit = if limit == 0 { DEFAULT_TAIL } else { limit.min(MAX_TAIL) };
        let agent = args.optional_str("agent_id")?;
        let records = self.store.audit_tail(limit as usize, agent).map_err(OpError::storage)?;
        Ok(json!({"audit": records.iter().map(record_json).collect::<Vec<_>>()}))
    }
}

fn record_json(r: &AuditRecord) -> Value {
    json!({
        "id": r.id, "timestamp_ms": r.timestamp_ms, "agent_id": r.agent_id,
        "control_type": r.control_type, "scope": r.scope, "correlation_id": r.correlation_id,
        "result": r.result, "error_code": r.error_code,
    })
}
