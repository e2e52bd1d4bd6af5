//! Who may call a local daemon: uid allowlists checked against `SO_PEERCRED`.
//!
//! The broker and the worker supervisor listen on Unix sockets. The kernel tells them the uid
//! of the process at the other end (`SO_PEERCRED`, read by the daemon); this module decides
//! whether that uid may run a given class of operation. Lists come from the daemon's
//! configuration. An empty list admits nobody — a missing configuration line must never open
//! a daemon to every local user — except that a daemon always admits its own uid when the
//! configuration says `"self"`, the default for a single-user laptop.

use serde::{Deserialize, Serialize};

/// One entry of a uid allowlist as written in configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeerEntry {
    /// A numeric uid.
    Uid(u32),
    /// A keyword: only `"self"` (the daemon's own uid) is defined.
    Keyword(PeerKeyword),
}

/// Keywords allowed in a uid allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKeyword {
    /// The uid the daemon itself runs as.
    #[serde(rename = "self")]
    SelfUid,
}

/// The uids admitted to one class of operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UidAllowlist(pub Vec<PeerEntry>);

impl UidAllowlist {
    /// The laptop default: only the daemon's own uid.
    pub fn only_self() -> Self {
        UidAllowlist(vec![PeerEntry::Keyword(PeerKeyword::SelfUid)])
    }

    /// Whether `peer_uid` may run the operation, for a daemon running as `own_uid`.
    pub fn admits(&self, peer_uid: u32, own_uid: u32) -> bool {
        self.0.iter().any(|entry| match entry {
            PeerEntry::Uid(uid) => *uid == peer_uid,
            PeerEntry::Keyword(PeerKeyword::SelfUid) => peer_uid == own_uid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_list_admits_nobody_not_even_root() {
        let list = UidAllowlist::default();
        assert!(!list.admits(0, 0));
        assert!(!list.admits(1000, 1000));
    }

    #[test]
    fn self_admits_only_the_daemons_uid() {
        let list = UidAllowlist::only_self();
        assert!(list.admits(1000, 1000));
        assert!(!list.admits(1001, 1000));
        assert!(!list.admits(0, 1000), "root is not implicitly trusted");
    }

    #[test]
    fn numeric_and_keyword_entries_parse_from_configuration() {
        let list: UidAllowlist = serde_json::from_str(r#"["self", 998]"#).unwrap();
        assert!(list.admits(998, 1000));
        assert!(list.admits(1000, 1000));
        assert!(!list.admits(999, 1000));
        assert!(serde_json::from_str::<UidAllowlist>(r#"["root"]"#).is_err());
    }
}
