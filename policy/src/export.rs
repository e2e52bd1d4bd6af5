//! What an exported directory allows (spec `fs-node.md` §5.3).
//!
//! A filesystem node serves directories under a read-only or read-write policy. The decisions
//! are made here as pure functions so that the table "which op is a mutation" and the child
//! name rules can be read and tested in one place: the `--export` flag syntax, whether an op
//! (with its open flags) is allowed on an export, and whether a client-supplied child name is
//! acceptable.
//!
//! Path confinement itself is not decided here: it is enforced by the node resolving every
//! path through held directory fds (`openat2` with `RESOLVE_BENEATH`), never by comparing
//! strings. Child-name validation is a first, cheap filter in front of that.

use std::fmt;

/// Read-only or read-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every mutation is refused with EROFS.
    ReadOnly,
    /// Mutations are allowed (still confined to the export root).
    ReadWrite,
}

/// One `--export <name>=<path>[:ro|:rw][:cred=<handle>]` flag, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// The export name clients select.
    pub name: String,
    /// The directory, exactly as given (also the export's `desc`).
    pub path: String,
    /// The policy.
    pub access: Access,
    /// An optional credential handle (`:cred=<h>`), passed through, never interpreted here.
    pub cred: Option<String>,
}

/// Why an `--export` flag was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportSpecError {
    /// No `=` between name and path.
    MissingEquals,
    /// `=path` with nothing before.
    EmptyName,
    /// `name=` with nothing after (once suffixes are stripped).
    EmptyPath,
    /// A name containing characters clients could not select it by (`/`, `#`, `@`, NUL, …).
    InvalidName,
    /// Two flags with the same name.
    Duplicate(String),
}

impl fmt::Display for ExportSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportSpecError::MissingEquals => f.write_str("export must be <name>=<path>[:ro|:rw]"),
            ExportSpecError::EmptyName => f.write_str("export name is empty"),
            ExportSpecError::EmptyPath => f.write_str("export path is empty"),
            ExportSpecError::InvalidName => {
                f.write_str("export name may only contain letters, digits, '-', '_' and '.'")
            }
            ExportSpecError::Duplicate(name) => write!(f, "duplicate export name {name:?}"),
        }
    }
}

impl std::error::Error for ExportSpecError {}

impl ExportSpec {
    /// Parses one flag. Suffixes are stripped repeatedly from the right; the last `:ro`/`:rw`
    /// read (the leftmost one) wins, as in the original.
    pub fn parse(flag: &str) -> Result<Self, ExportSpecError> {
        let (name, mut rest) = flag.split_once('=').ok_or(ExportSpecError::MissingEquals)?;
        if name.is_empty() {
            return Err(ExportSpecError::EmptyName);
        }
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(ExportSpecError::InvalidName);
        }
        let mut access = Access::ReadWrite;
        let mut cred = None;
        loop {
            if let Some(stripped) = rest.strip_suffix(":ro") {
                access = Access::ReadOnly;
                rest = stripped;
            } else if let Some(stripped) = rest.strip_suffix(":rw") {
                access = Access::ReadWrite;
                rest = stripped;
            } else if let Some((head, handle)) = rest.rsplit_once(":cred=").filter(|(_, h)| !h.contains(':')) {
                cred = Some(handle.to_owned());
                rest = head;
            } else {
                break;
            }
        }
        if rest.is_empty() {
            return Err(ExportSpecError::EmptyPath);
        }
        Ok(ExportSpec { name: name.to_owned(), path: rest.to_owned(), access, cred })
    }

    /// Parses all flags; no flag at all means one export `work` = `.` rw.
    pub fn parse_all<S: AsRef<str>>(flags: &[S]) -> Result<Vec<ExportSpec>, ExportSpecError> {
        if flags.is_empty() {
            return Ok(vec![ExportSpec {
                name: "work".into(),
                path: ".".into(),
                access: Access::ReadWrite,
                cred: None,
            }]);
        }
        let mut specs: Vec<ExportSpec> = Vec::with_capacity(flags.len());
        for flag in flags {
            let spec = ExportSpec::parse(flag.as_ref())?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(ExportSpecError::Duplicate(spec.name));
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

/// The operations of the node protocol, as far as policy cares.
#[allow(missing_docs)] // the variants are the spec's op names (`t_fs_<op>`)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsOp {
    Hello,
    Exports,
    Lookup,
    Getattr,
    Readdirp,
    /// `open` with its `flags`: write access (`flags & 3` of 1 or 2) is a mutation.
    Open {
        flags: u32,
    },
    Read,
    Write,
    Close,
    Create,
    Mkdir,
    Rmdir,
    Unlink,
    Rename,
    Truncate,
    Statfs,
    Lock,
    Symlink,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
}

/// The access mode of `open`/`create` flags (`flags & 3`): 3 is treated as read-only.
pub fn open_wants_write(flags: u32) -> bool {
    matches!(flags & 3, 1 | 2)
}

/// Whether `flags` allow reading (`flags & 3` of 0, 2 or 3).
pub fn open_wants_read(flags: u32) -> bool {
    flags & 3 != 1
}

impl FsOp {
    /// Whether the op changes the export (and is refused on a read-only one).
    pub fn is_mutation(self) -> bool {
        match self {
            FsOp::Open { flags } => open_wants_write(flags),
            FsOp::Write
            | FsOp::Create
            | FsOp::Mkdir
            | FsOp::Rmdir
            | FsOp::Unlink
            | FsOp::Rename
            | FsOp::Truncate
            | FsOp::Symlink
            | FsOp::Setxattr
            | FsOp::Removexattr => true,
            FsOp::Hello
            | FsOp::Exports
            | FsOp::Lookup
            | FsOp::Getattr
            | FsOp::Readdirp
            | FsOp::Read
            | FsOp::Close
            | FsOp::Statfs
            | FsOp::Lock
            | FsOp::Getxattr
            | FsOp::Listxattr => false,
        }
    }
}

/// A refusal by the export policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDenial {
    /// EROFS `export is read-only`.
    ReadOnly,
}

/// Whether `op` is allowed on an export with `access`.
pub fn check(op: FsOp, access: Access) -> Result<(), ExportDenial> {
    if access == Access::ReadOnly && op.is_mutation() {
        return Err(ExportDenial::ReadOnly);
    }
    Ok(())
}

/// A child name that may not be used (EINVAL `invalid child name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidChildName;

/// Longest child name accepted (the Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Child names must be non-empty, not `.`/`..`, at most [`NAME_MAX`] bytes, and contain no
/// `/`, `\` or NUL.
pub fn validate_child_name(name: &str) -> Result<(), InvalidChildName> {
    let ok =
        !name.is_empty() && name != "." && name != ".." && name.len() <= NAME_MAX && !name.contains(['/', '\\', '\0']);
    if ok { Ok(()) } else { Err(InvalidChildName) }
}

/// The per-workspace sandbox directory that local exports of the gateway keep invisible
/// (spec §5.3): lookups answer ENOENT and listings skip it.
pub const SANDBOX_DIR_NAME: &str = ".spiderweb-sandbox";

/// Whether `name` is hidden from clients; `hide_sandbox_dir` is set for the gateway's local
/// exports.
pub fn is_hidden(name: &str, hide_sandbox_dir: bool) -> bool {
    hide_sandbox_dir && name == SANDBOX_DIR_NAME
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag and what it parses to: (name, path, access, cred) or the error.
    type FlagCase = (&'static str, Result<(&'static str, &'static str, Access, Option<&'static str>), ExportSpecError>);

    #[test]
    fn export_flag_table() {
        let rw = Access::ReadWrite;
        let ro = Access::ReadOnly;
        let cases: &[FlagCase] = &[
            ("work=/srv/a", Ok(("work", "/srv/a", rw, None))),
            ("work=/srv/a:ro", Ok(("work", "/srv/a", ro, None))),
            ("work=/srv/a:rw", Ok(("work", "/srv/a", rw, None))),
            ("work=/srv/a:rw:ro", Ok(("work", "/srv/a", rw, None))),
            ("work=/srv/a:ro:rw", Ok(("work", "/srv/a", ro, None))),
            ("work=/srv/a:ro:cred=k1", Ok(("work", "/srv/a", ro, Some("k1")))),
            ("work=/srv/a:b", Ok(("work", "/srv/a:b", rw, None))),
            ("w=a=b", Ok(("w", "a=b", rw, None))),
            ("noequals", Err(ExportSpecError::MissingEquals)),
            ("=/srv", Err(ExportSpecError::EmptyName)),
            ("work=", Err(ExportSpecError::EmptyPath)),
            ("work=:ro", Err(ExportSpecError::EmptyPath)),
            ("a/b=/srv", Err(ExportSpecError::InvalidName)),
            ("a#b=/srv", Err(ExportSpecError::InvalidName)),
        ];
        for (flag, want) in cases {
            let got = ExportSpec::parse(flag).map(|s| (s.name.clone(), s.path.clone(), s.access, s.cred.clone()));
            let want = want.clone().map(|(n, p, a, c)| (n.to_owned(), p.to_owned(), a, c.map(str::to_owned)));
            assert_eq!(got, want, "{flag}");
        }
    }

    #[test]
    fn export_list_defaults_and_duplicates() {
        let none: [&str; 0] = [];
        let default = ExportSpec::parse_all(&none).unwrap();
        assert_eq!((default[0].name.as_str(), default[0].path.as_str()), ("work", "."));
        assert_eq!(ExportSpec::parse_all(&["a=/x", "a=/y"]), Err(ExportSpecError::Duplicate("a".into())));
    }

    #[test]
    fn mutation_table() {
        use FsOp::*;
        let reads = [
            Hello,
            Exports,
            Lookup,
            Getattr,
            Readdirp,
            Open { flags: 0 },
            Open { flags: 3 },
            Read,
            Close,
            Statfs,
            Lock,
            Getxattr,
            Listxattr,
        ];
        let writes = [
            Open { flags: 1 },
            Open { flags: 2 },
            Open { flags: 0o1002 },
            Write,
            Create,
            Mkdir,
            Rmdir,
            Unlink,
            Rename,
            Truncate,
            Symlink,
            Setxattr,
            Removexattr,
        ];
        for op in reads {
            assert!(!op.is_mutation(), "{op:?}");
            assert_eq!(check(op, Access::ReadOnly), Ok(()), "{op:?}");
        }
        for op in writes {
            assert!(op.is_mutation(), "{op:?}");
            assert_eq!(check(op, Access::ReadOnly), Err(ExportDenial::ReadOnly), "{op:?}");
            assert_eq!(check(op, Access::ReadWrite), Ok(()), "{op:?}");
        }
        assert!(open_wants_read(0) && open_wants_read(2) && open_wants_read(3) && !open_wants_read(1));
    }

    #[test]
    fn hidden_names() {
        assert!(is_hidden(".spiderweb-sandbox", true));
        assert!(!is_hidden(".spiderweb-sandbox", false), "standalone nodes show it");
        assert!(!is_hidden(".spiderweb-sandbox2", true));
    }

    #[test]
    fn child_name_table() {
        for bad in ["", ".", "..", "a/b", "../etc", "a\\b", "a\0b", "/", &"x".repeat(256)] {
            assert_eq!(validate_child_name(bad), Err(InvalidChildName), "{bad:?}");
        }
        for good in ["a", "...", ".hidden", "a b", "ünï", "a..b", &"x".repeat(255)] {
            assert_eq!(validate_child_name(good), Ok(()), "{good:?}");
        }
    }
}
