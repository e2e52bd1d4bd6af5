//! The exported directories of a node, opened once at start.
//!
//! Each export is held as an `O_PATH` directory fd taken when the node starts; every later
//! access resolves beneath that fd (see `resolve`). Renaming or replacing the export's path
//! on the host afterwards does not redirect the node somewhere else.
//!
//! Opening must happen before the sandbox is applied (Landlock rules are built from these
//! fds).

use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fstat};
use spiderweb_policy::export::{Access, ExportSpec};
use spiderweb_proto::fs::{ExportCaps, ExportEntry, node_id};

/// Why an export could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export {name:?}: cannot open directory {path:?}: {source}")]
    Open { name: String, path: String, source: nix::Error },
}

/// One opened export.
#[derive(Debug)]
pub struct Export {
    pub index: usize,
    pub spec: ExportSpec,
    pub root: OwnedFd,
    pub root_inode: u64,
}

impl Export {
    pub fn open(index: usize, spec: ExportSpec) -> Result<Export, ExportError> {
        let err = |source| ExportError::Open { name: spec.name.clone(), path: spec.path.clone(), source };
        let root =
            nix::fcntl::open(spec.path.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(err)?;
        let root_inode = fstat(&root).map_err(err)?.st_ino;
        Ok(Export { index, spec, root, root_inode })
    }

    pub fn read_only(&self) -> bool {
        self.spec.access == Access::ReadOnly
    }

    pub fn root_id(&self) -> u64 {
        node_id::encode(self.index, self.root_inode)
    }

    /// The `r_fs_exports` entry.
    pub fn entry(&self) -> ExportEntry {
        ExportEntry {
            name: self.spec.name.clone(),
            root: self.root_id(),
            ro: self.read_only(),
            desc: self.spec.path.clone(),
            source_kind: SOURCE_KIND.into(),
            source_id: format!("{SOURCE_KIND}:{}", self.spec.name),
            caps: CAPS,
        }
    }
}

/// Source kind of a local export on this host.
pub const SOURCE_KIND: &str = "linux";

/// What a local Linux export supports.
pub const CAPS: ExportCaps =
    ExportCaps { native_watch: true, case_sensitive: true, symlink: true, xattr: true, locks: true, statfs: true };
