//! `file_list`: entries of a workspace directory, optionally recursive (names then relative,
//! `a/b`), at most `max_entries` (default 500, capped at 5000), within 5 seconds.
//!
//! Directories are descended through held descriptors opened beneath their parent without
//! following symlinks, so a symlinked directory is listed as a symlink and never entered.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::dir::{Dir, Type};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use spiderweb_proto::worker::{EntryType, FileListArgs, FileListResult, ListEntry};

use super::{ToolContext, ToolError, parse_args, paths};

/// Default `max_entries`.
pub const DEFAULT_MAX_ENTRIES: u64 = 500;
/// Cap on `max_entries`.
pub const MAX_ENTRIES_CAP: u64 = 5000;
/// Time limit of one listing.
pub const TIME_LIMIT: Duration = Duration::from_secs(5);

struct Walk {
    entries: Vec<ListEntry>,
    max: usize,
    deadline: Instant,
    truncated: bool,
}

/// Runs the tool.
pub fn run(args: serde_json::Value, ctx: &mut ToolContext<'_>) -> Result<FileListResult, ToolError> {
    let args: FileListArgs = parse_args(args, &[])?;
    let path = args.path.unwrap_or_else(|| ".".into());
    let max = args.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES).min(MAX_ENTRIES_CAP) as usize;
    let dir = paths::open(ctx.workspace, &path, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
    let mut walk = Walk { entries: Vec::new(), max, deadline: Instant::now() + TIME_LIMIT, truncated: false };
    list(dir, "", args.recursive.unwrap_or(false), &mut walk)?;
    Ok(FileListResult { path, entries: walk.entries, truncated: walk.truncated })
}

fn list(dir: OwnedFd, prefix: &str, recursive: bool, walk: &mut Walk) -> Result<(), ToolError> {
    let mut handle = Dir::from_fd(dir).map_err(paths::os_error)?;
    let mut children: Vec<(String, EntryType)> = Vec::new();
    for entry in handle.iter() {
        let entry = entry.map_err(paths::os_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(Type::File) => EntryType::File,
            Some(Type::Directory) => EntryType::Directory,
            Some(Type::Symlink) => EntryType::Symlink,
            _ => EntryType::Other,
        };
        children.push((name, kind));
        if Instant::now() > walk.deadline {
            walk.truncated = true;
            break;
        }
    }
    children.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, kind) in children {
        if walk.entries.len() >= walk.max || Instant::now() > walk.deadline {
            walk.truncated = true;
            return Ok(());
        }
        let full = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        walk.entries.push(ListEntry { name: full.clone(), kind });
        if recursive && kind == EntryType::Directory {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            // An unreadable subdirectory is listed but not entered.
            if let Ok(sub) = paths::open_at(&handle, &name, flags, Mode::empty()) {
                list(sub, &full, true, walk)?;
            }
        }
    }
    Ok(())
}
