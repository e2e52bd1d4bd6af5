//! `system-meta`: read-only protocol description (`protocol.json`, the Acheron ops list, as the
//! world filesystem's `/meta/protocol.json`).

use serde_json::{Map, Value};
use spiderweb_fsnode::node::{SyntheticNode, SyntheticTree, SyntheticWrite};
use spiderweb_proto::fs::{Errno, FsError};

use crate::worldfs::namespace::protocol_json;

pub struct MetaTree {
    protocol: Vec<u8>,
    started_ns: i64,
}

impl MetaTree {
    pub fn new(started_ns: i64) -> MetaTree {
        MetaTree { protocol: protocol_json().to_string().into_bytes(), started_ns }
    }
}

impl SyntheticTree for MetaTree {
    fn node(&self, path: &[&str]) -> Option<SyntheticNode> {
        let mtime_ns = self.started_ns;
        match path {
            [] => Some(SyntheticNode::Dir { children: vec!["protocol.json".into()], mtime_ns }),
            ["protocol.json"] => {
                Some(SyntheticNode::File { content: self.protocol.clone(), writable: false, mtime_ns })
            }
            _ => None,
        }
    }

    fn write(&self, _: &[&str], _: SyntheticWrite<'_>) -> Result<Map<String, Value>, FsError> {
        // The export is read-only: the node refuses before asking the tree.
        Err(FsError::new(Errno::RoFs, "export is read-only"))
    }
}
