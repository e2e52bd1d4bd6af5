//! `file_read`: up to `max_bytes` (default 1 MiB, capped at 8 MiB) of a workspace file.

use std::io::Read;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag, fstat};
use spiderweb_proto::worker::{FailureCode, FileReadArgs, FileReadResult};

use super::{ToolContext, ToolError, parse_args, paths};

/// Default `max_bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Cap on `max_bytes`.
pub const MAX_BYTES_CAP: u64 = 8 * 1024 * 1024;

/// Runs the tool.
pub fn run(args: serde_json::Value, ctx: &mut ToolContext<'_>) -> Result<FileReadResult, ToolError> {
    let args: FileReadArgs = parse_args(args, &["path"])?;
    let max = args.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).min(MAX_BYTES_CAP) as usize;
    let wait = args.wait_until_ready.unwrap_or(true);
    let mut flags = OFlag::O_RDONLY | OFlag::O_NOCTTY;
    if !wait {
        flags |= OFlag::O_NONBLOCK;
    }
    let not_ready = |path: String| FileReadResult {
        path,
        bytes: 0,
        truncated: false,
        content: String::new(),
        ready: false,
        wait_until_ready: wait,
    };
    let relative = paths::relative(&args.path)?;
    let fd = match paths::open_at_raw(ctx.workspace, relative, flags, Mode::empty()) {
        Err(errno) if !wait && paths::would_block(errno) => return Ok(not_ready(args.path)),
        other => other.map_err(paths::os_error)?,
    };
    let stat = fstat(&fd).map_err(paths::os_error)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        return Err(ToolError::new(FailureCode::ExecutionFailed, "IsDir"));
    }
    let mut file = std::fs::File::from(fd);
    let mut buf = Vec::with_capacity(max.min(stat.st_size.max(0) as usize) + 1);
    match (&mut file).take(max as u64 + 1).read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if !wait && e.raw_os_error() == Some(Errno::EAGAIN as i32) && buf.is_empty() => {
            return Ok(not_ready(args.path));
        }
        Err(e) if !wait && e.raw_os_error() == Some(Errno::EAGAIN as i32) => {}
        Err(e) => {
            return Err(paths::os_error(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))));
        }
    }
    let truncated = buf.len() > max;
    let content = if truncated {
        buf.truncate(max);
        // Cut back to the longest valid UTF-8 prefix rather than splitting a character.
        match std::str::from_utf8(&buf) {
            Ok(text) => text.to_owned(),
            Err(e) => String::from_utf8_lossy(&buf[..e.valid_up_to()]).into_owned(),
        }
    } else {
        String::from_utf8_lossy(&buf).into_owned()
    };
    Ok(FileReadResult {
        path: args.path,
        bytes: content.len() as u64,
        truncated,
        content,
        ready: true,
        wait_until_ready: wait,
    })
}
