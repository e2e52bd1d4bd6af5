//! Which local uids may run which credential-broker operation.
//!
//! The broker reads its peer's uid with `SO_PEERCRED` on every connection and asks this module
//! before each operation. Three classes are kept apart because they carry different risk:
//! - provider requests (spend the operator's credit, but never see a key): the gateway's uid;
//! - credential status (names of key sources, never keys): the gateway and the operator;
//! - key administration (set or clear a key): only the operator.
//!
//! Each class has its own [`UidAllowlist`]; the default is `["self"]` (the broker's own uid),
//! which fits one user on a laptop. Nothing here may grant an operation to a uid that its list
//! does not name: root is not implicitly trusted.

use serde::{Deserialize, Serialize};

use crate::peer::UidAllowlist;

/// A class of broker operation, as far as access is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerOperation {
    /// Make a provider request (and cancel one's own).
    ProviderRequest,
    /// See which credential source each provider uses.
    CredentialStatus,
    /// Store or remove a key.
    KeyAdmin,
}

/// The `access` section of the broker's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerAccess {
    /// Uids that may make provider requests.
    pub provider_requests: UidAllowlist,
    /// Uids that may read the credential status.
    pub credential_status: UidAllowlist,
    /// Uids that may set or clear keys.
    pub key_admin: UidAllowlist,
}

impl Default for BrokerAccess {
    fn default() -> Self {
        BrokerAccess {
            provider_requests: UidAllowlist::only_self(),
            credential_status: UidAllowlist::only_self(),
            key_admin: UidAllowlist::only_self(),
        }
    }
}

impl BrokerAccess {
    /// Whether `peer_uid` may run `op` on a broker running as `own_uid`.
    pub fn admits(&self, op: BrokerOperation, peer_uid: u32, own_uid: u32) -> bool {
        let list = match op {
            BrokerOperation::ProviderRequest => &self.provider_requests,
            BrokerOperation::CredentialStatus => &self.credential_status,
            BrokerOperation::KeyAdmin => &self.key_admin,
        };
        list.admits(peer_uid, own_uid)
    }

    /// Whether `peer_uid` may run any operation at all (checked once at connect, so that a
    /// stranger is turned away before it can send a frame).
    pub fn admits_any(&self, peer_uid: u32, own_uid: u32) -> bool {
        [
            BrokerOperation::ProviderRequest,
            BrokerOperation::CredentialStatus,
            BrokerOperation::KeyAdmin,
        ]
        .into_iter()
        .any(|op| self.admits(op, peer_uid, own_uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKER: u32 = 990;
    const GATEWAY: u32 = 991;
    const OPERATOR: u32 = 1000;

    fn split() -> BrokerAccess {
        serde_json::from_str(&format!(
            r#"{{"provider_requests":[{GATEWAY}],"credential_status":[{GATEWAY},{OPERATOR}],"key_admin":[{OPERATOR}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn each_class_admits_only_its_list() {
        let access = split();
        use BrokerOperation::*;
        let table = [
            (GATEWAY, ProviderRequest, true),
            (GATEWAY, CredentialStatus, true),
            (GATEWAY, KeyAdmin, false),
            (OPERATOR, ProviderRequest, false),
            (OPERATOR, CredentialStatus, true),
            (OPERATOR, KeyAdmin, true),
            (BROKER, ProviderRequest, false),
            (0, KeyAdmin, false),
        ];
        for (uid, op, expected) in table {
            assert_eq!(access.admits(op, uid, BROKER), expected, "uid {uid} {op:?}");
        }
        assert!(access.admits_any(GATEWAY, BROKER));
        assert!(
            !access.admits_any(0, BROKER),
            "root is a stranger unless listed"
        );
    }

    #[test]
    fn default_is_the_brokers_own_uid_only() {
        let access = BrokerAccess::default();
        assert!(access.admits(BrokerOperation::KeyAdmin, OPERATOR, OPERATOR));
        assert!(!access.admits_any(GATEWAY, OPERATOR));
    }

    #[test]
    fn a_missing_class_keeps_its_default_and_unknown_classes_are_refused() {
        let access: BrokerAccess = serde_json::from_str(r#"{"provider_requests":[991]}"#).unwrap();
        assert!(access.admits(BrokerOperation::KeyAdmin, BROKER, BROKER));
        assert!(!access.admits(BrokerOperation::ProviderRequest, BROKER, BROKER));
        assert!(serde_json::from_str::<BrokerAccess>(r#"{"everything":["self"]}"#).is_err());
    }
}
