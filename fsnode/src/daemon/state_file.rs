//! The daemon's state file (spec §8.1): the pairing credentials and lease that let a node
//! restart without pairing again.
//!
//! `{node_id,node_secret,lease_token,lease_expires_at_ms,request_id,node_name,fs_url}`, each
//! field a string/integer or null. It holds the node secret, so it is written with mode 0600,
//! atomically (a temporary file in the same directory, fsync, rename, fsync of the directory):
//! a crash leaves the old or the new file, never half of one. Its directory is created (0700)
//! when missing.
//!
//! The directory is opened once, before the node confines itself, and every later access goes
//! through that descriptor: the sandbox grants file rights beneath this directory only
//! (`sandbox::landlock`), so give the state file a directory of its own. It never follows a
//! symlink at the file's name, and never reads more than [`MAX_STATE_BYTES`].

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

/// Largest state file read (a few hundred bytes are expected).
pub const MAX_STATE_BYTES: u64 = 64 * 1024;

/// What the daemon remembers between runs. Nulls (absent fields) mean "not yet known".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeRecord {
    pub node_id: Option<String>,
    pub node_secret: Option<String>,
    pub lease_token: Option<String>,
    pub lease_expires_at_ms: Option<u64>,
    /// The pending join request filed in request mode, kept so that a restart does not file
    /// a second one.
    pub request_id: Option<String>,
    pub node_name: Option<String>,
    pub fs_url: Option<String>,
}

impl NodeRecord {
    /// The node's credentials once paired.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        match (self.node_id.as_deref(), self.node_secret.as_deref()) {
            (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => Some((id, secret)),
            _ => None,
        }
    }

    /// Forgets the pairing (the gateway no longer knows this node).
    pub fn forget_pairing(&mut self) {
        self.node_id = None;
        self.node_secret = None;
        self.lease_token = None;
        self.lease_expires_at_ms = None;
        self.request_id = None;
    }
}

/// Why the state file could not be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state file {path}: its name must be a file name inside a directory")]
    BadPath { path: PathBuf },
    #[error("state file {path}: cannot create or open its directory")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("state file {path}: cannot read it")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("state file {path} is larger than {MAX_STATE_BYTES} bytes; it is not a node state file")]
    TooLarge { path: PathBuf },
    #[error("state file {path} is malformed; fix or remove it (removing it means pairing the node again)")]
    Malformed { path: PathBuf, source: serde_json::Error },
    #[error("state file {path}: cannot write it")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The state file, reached through its directory's descriptor.
#[derive(Debug)]
pub struct StateFile {
    dir: OwnedFd,
    name: OsString,
    path: PathBuf,
}

fn io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl StateFile {
    /// Opens (creating, 0700) the directory of `path`. Call before confinement.
    pub fn open(path: &Path) -> Result<StateFile, StateFileError> {
        let name = path.file_name().ok_or_else(|| StateFileError::BadPath { path: path.to_owned() })?.to_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let dir_err = |source| StateFileError::Directory { path: path.to_owned(), source };
        if !parent.exists() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&parent).map_err(dir_err)?;
        }
        let dir = nix::fcntl::open(&parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| dir_err(io(e)))?;
        Ok(StateFile { dir, name, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory the sandbox must leave writable.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The record, or an empty one when the file does not exist yet.
    pub fn load(&self) -> Result<NodeRecord, StateFileError> {
        let read_err = |source| StateFileError::Read { path: self.path.clone(), source };
        let fd = match nix::fcntl::openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) => return Ok(NodeRecord::default()),
            Err(e) => return Err(read_err(io(e))),
        };
        let mut text = Vec::new();
        std::fs::File::from(fd).take(MAX_STATE_BYTES + 1).read_to_end(&mut text).map_err(read_err)?;
        if text.len() as u64 > MAX_STATE_BYTES {
            return Err(StateFileError::TooLarge { path: self.path.clone() });
        }
        serde_json::from_slice(&text).map_err(|source| StateFileError::Malformed { path: self.path.clone(), source })
    }

    /// Replaces the file with `record`, atomically, mode 0600.
    pub fn save(&self, record: &NodeRecord) -> Result<(), StateFileError> {
        let write_err = |source| StateFileError::Write { path: self.path.clone(), source };
        let mut tmp_name = OsString::from(".");
        tmp_name.push(&self.name);
        tmp_name.push(".tmp");
        // A leftover from a crash is ours to replace.
        let _ = nix::unistd::unlinkat(&self.dir, tmp_name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        let fd = nix::fcntl::openat(
            &self.dir,
            tmp_name.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| write_err(io(e)))?;
        let mut file = std::fs::File::from(fd);
        let mut text = serde_json::to_vec_pretty(record).map_err(|e| write_err(std::io::Error::other(e)))?;
        text.push(b'\n');
        let written = file.write_all(&text).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|()| {
            nix::fcntl::renameat(&self.dir, tmp_name.as_os_str(), &self.dir, self.name.as_os_str()).map_err(io)
        }) {
            let _ = nix::unistd::unlinkat(&self.dir, tmp_name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            return Err(write_err(e));
        }
        nix::unistd::fsync(&self.dir).map_err(|e| write_err(io(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn missing_file_is_an_empty_record_and_save_round_trips_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state/node.json");
        let file = StateFile::open(&path).unwrap();
        let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "a created state directory is private");
        assert_eq!(file.load().unwrap(), NodeRecord::default());
        let record = NodeRecord {
            node_id: Some("node-1".into()),
            node_secret: Some("secret-0123".into()),
            lease_expires_at_ms: Some(42),
            ..NodeRecord::default()
        };
        file.save(&record).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(StateFile::open(&path).unwrap().load().unwrap(), record);
        let mut changed = record.clone();
        changed.lease_expires_at_ms = Some(43);
        file.save(&changed).unwrap();
        assert_eq!(file.load().unwrap(), changed);
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["node.json"], "no temporary file left behind");
    }

    #[test]
    fn nulls_and_unknown_fields_are_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"node_id":null,"request_id":"pending-join-3","extra":1}"#).unwrap();
        let record = StateFile::open(&path).unwrap().load().unwrap();
        assert_eq!(record.request_id.as_deref(), Some("pending-join-3"));
        assert_eq!(record.credentials(), None);
    }

    #[test]
    fn malformed_or_huge_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        for bad in ["{not json", "[1,2]", r#"{"node_id": 7}"#] {
            std::fs::write(&path, bad).unwrap();
            let err = StateFile::open(&path).unwrap().load().unwrap_err();
            assert!(matches!(err, StateFileError::Malformed { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        }
        std::fs::write(&path, vec![b' '; MAX_STATE_BYTES as usize + 1]).unwrap();
        let err = StateFile::open(&path).unwrap().load().unwrap_err();
        assert!(matches!(err, StateFileError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_symlink_at_the_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, "{}").unwrap();
        let path = dir.path().join("s.json");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = StateFile::open(&path).unwrap().load().unwrap_err();
        assert!(matches!(err, StateFileError::Read { .. }), "{err}");
    }
}
