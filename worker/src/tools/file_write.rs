//! `file_write`: replace or append to a workspace file, creating parents by default.

use std::io::Write;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, mkdirat};
use spiderweb_proto::worker::{FileWriteArgs, FileWriteResult};

use super::{ToolContext, ToolError, parse_args, paths};

/// Runs the tool.
pub fn run(args: serde_json::Value, ctx: &mut ToolContext<'_>) -> Result<FileWriteResult, ToolError> {
    let args: FileWriteArgs = parse_args(args, &["path", "content"])?;
    let append = args.append.unwrap_or(false);
    let wait = args.wait_until_ready.unwrap_or(true);
    let relative = paths::relative(&args.path)?;
    if args.create_parents.unwrap_or(true) {
        create_parents(ctx, relative)?;
    }
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOCTTY;
    flags |= if append { OFlag::O_APPEND } else { OFlag::O_TRUNC };
    if !wait {
        flags |= OFlag::O_NONBLOCK;
    }
    let result = |bytes_written: usize, ready: bool| FileWriteResult {
        path: args.path.clone(),
        bytes_written: bytes_written as u64,
        append,
        ready,
        wait_until_ready: wait,
    };
    let fd = match paths::open_at_raw(ctx.workspace, relative, flags, Mode::from_bits_truncate(0o644)) {
        Err(errno) if !wait && paths::would_block(errno) => return Ok(result(0, false)),
        other => other.map_err(paths::os_error)?,
    };
    let mut file = std::fs::File::from(fd);
    let data = args.content.as_bytes();
    let mut written = 0;
    while written < data.len() {
        match file.write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.raw_os_error() == Some(Errno::EINTR as i32) => {}
            Err(e) if !wait && e.raw_os_error() == Some(Errno::EAGAIN as i32) => {
                return Ok(result(written, false));
            }
            Err(e) => {
                return Err(paths::os_error(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))));
            }
        }
    }
    Ok(result(written, true))
}

/// `mkdir -p` of the parent, one component at a time, each resolved beneath the workspace.
fn create_parents(ctx: &ToolContext<'_>, relative: &str) -> Result<(), ToolError> {
    let Some((parent, _)) = relative.rsplit_once('/') else {
        return Ok(());
    };
    let components: Vec<&str> = parent.split('/').filter(|c| !c.is_empty()).collect();
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    for depth in 1..=components.len() {
        let prefix = components[..depth].join("/");
        match paths::open_at_raw(ctx.workspace, &prefix, dir_flags, Mode::empty()) {
            Ok(_) => continue,
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(paths::os_error(errno)),
        }
        let above = if depth == 1 { ".".to_owned() } else { components[..depth - 1].join("/") };
        let above_fd = paths::open_at(ctx.workspace, &above, dir_flags, Mode::empty())?;
        match mkdirat(&above_fd, components[depth - 1], Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(paths::os_error(errno)),
        }
    }
    Ok(())
}
