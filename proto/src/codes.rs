//! Error codes, as the wire spells them.
//!
//! Control-plane codes (`unified-v2.md` §6.11) travel in `control.error`; world-filesystem
//! codes (`acheron-worldfs.md` §4) in `acheron.error`. Keeping them as constants makes a typo a
//! compile error and gives the metrics a closed label set.

pub mod control {
    pub const PROTOCOL_MISMATCH: &str = "protocol_mismatch";
    pub const UNSUPPORTED_LEGACY_API: &str = "unsupported_legacy_api";
    pub const UNSUPPORTED: &str = "unsupported";
    pub const FORBIDDEN: &str = "forbidden";
    pub const PROVISIONING_REQUIRED: &str = "provisioning_required";
    pub const PROJECT_CONTEXT_REQUIRED: &str = "project_context_required";
    pub const CORRELATION_REQUIRED: &str = "correlation_required";
    pub const OPERATOR_AUTH_FAILED: &str = "operator_auth_failed";
    pub const MISSING_FIELD: &str = "missing_field";
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    pub const NOT_FOUND: &str = "not_found";
    pub const SESSION_BUSY: &str = "session_busy";
    pub const STORAGE_ERROR: &str = "storage_error";
    pub const EXECUTION_FAILED: &str = "execution_failed";
    pub const QUEUE_SATURATED: &str = "queue_saturated";
    pub const NODE_NOT_FOUND: &str = "node_not_found";
    pub const AGENT_NOT_FOUND: &str = "agent_not_found";
    pub const PROJECT_NOT_FOUND: &str = "project_not_found";
    pub const PROJECT_AUTH_FAILED: &str = "project_auth_failed";
    pub const PROJECT_PROTECTED: &str = "project_protected";
    pub const PROJECT_ASSIGNMENT_FORBIDDEN: &str = "project_assignment_forbidden";
    pub const PROJECT_POLICY_FORBIDDEN: &str = "project_policy_forbidden";
    pub const MOUNT_CONFLICT: &str = "mount_conflict";
    pub const MOUNT_NOT_FOUND: &str = "mount_not_found";
    pub const INVITE_NOT_FOUND: &str = "invite_not_found";
    pub const INVITE_EXPIRED: &str = "invite_expired";
    pub const INVITE_REDEEMED: &str = "invite_redeemed";
    pub const NODE_AUTH_FAILED: &str = "node_auth_failed";
    pub const PENDING_JOIN_NOT_FOUND: &str = "pending_join_not_found";
    pub const CONTROL_PLANE_ERROR: &str = "control_plane_error";
    /// Transport-level refusals sent before closing (spec README quirk 2).
    pub const PROVIDER_AUTH_FAILED: &str = "provider_auth_failed";
    pub const INVALID_ENVELOPE: &str = "invalid_envelope";

    /// Every code above, for closed label sets.
    pub const ALL: &[&str] = &[
        PROTOCOL_MISMATCH,
        UNSUPPORTED_LEGACY_API,
        UNSUPPORTED,
        FORBIDDEN,
        PROVISIONING_REQUIRED,
        PROJECT_CONTEXT_REQUIRED,
        CORRELATION_REQUIRED,
        OPERATOR_AUTH_FAILED,
        MISSING_FIELD,
        INVALID_PAYLOAD,
        NOT_FOUND,
        SESSION_BUSY,
        STORAGE_ERROR,
        EXECUTION_FAILED,
        QUEUE_SATURATED,
        NODE_NOT_FOUND,
        AGENT_NOT_FOUND,
        PROJECT_NOT_FOUND,
        PROJECT_AUTH_FAILED,
        PROJECT_PROTECTED,
        PROJECT_ASSIGNMENT_FORBIDDEN,
        PROJECT_POLICY_FORBIDDEN,
        MOUNT_CONFLICT,
        MOUNT_NOT_FOUND,
        INVITE_NOT_FOUND,
        INVITE_EXPIRED,
        INVITE_REDEEMED,
        NODE_AUTH_FAILED,
        PENDING_JOIN_NOT_FOUND,
        CONTROL_PLANE_ERROR,
        PROVIDER_AUTH_FAILED,
        INVALID_ENVELOPE,
    ];
}

pub mod acheron {
    pub const PROTOCOL_MISMATCH: &str = "protocol_mismatch";
    pub const UNSUPPORTED_LEGACY_API: &str = "unsupported_legacy_api";
    pub const INVALID: &str = "invalid";
    pub const ENOENT: &str = "enoent";
    pub const EIO: &str = "eio";
    pub const EISDIR: &str = "eisdir";
    pub const EPERM: &str = "eperm";
    pub const UNSUPPORTED: &str = "unsupported";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const SESSION_NOT_FOUND: &str = "session_not_found";
    pub const RUNTIME_UNAVAILABLE: &str = "runtime_unavailable";
    /// Too many requests waiting at once (spec §1); here: blocking reads on one connection.
    pub const QUEUE_SATURATED: &str = "queue_saturated";
    /// Our extension: the per-connection fid cap was reached (spec README quirk 15).
    pub const FID_LIMIT: &str = "fid_limit";

    /// Every code above, for closed label sets.
    pub const ALL: &[&str] = &[
        PROTOCOL_MISMATCH,
        UNSUPPORTED_LEGACY_API,
        INVALID,
        ENOENT,
        EIO,
        EISDIR,
        EPERM,
        UNSUPPORTED,
        UNAVAILABLE,
        SESSION_NOT_FOUND,
        RUNTIME_UNAVAILABLE,
        QUEUE_SATURATED,
        FID_LIMIT,
    ];
}
