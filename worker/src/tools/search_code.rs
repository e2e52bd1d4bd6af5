//! `search_code`: regular-expression search of workspace files, as `file:line:text` lines.
//!
//! Two implementations with the same results: ripgrep (`rg -n -H (-i|--case-sensitive)
//! --color=never -m 5000 -e <q> -- <path>`, the spec's command plus `-H` so a single-file
//! search still names the file) when it is installed, and a built-in search made of
//! ripgrep's own libraries (`ignore` for the walk with the same ignore files and hidden-file
//! rules, `grep-searcher`/`grep-regex` for matching with the same binary detection), for
//! hosts without `rg`. Both run with the workspace as cwd after the path was checked to
//! resolve beneath it; results are sorted so the two (and multi-threaded ripgrep) agree.

use std::path::Path;
use std::process::{Command, Stdio};

use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::sinks::Lossy;
use grep_searcher::{BinaryDetection, SearcherBuilder};
use ignore::WalkBuilder;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use spiderweb_proto::worker::{FailureCode, MAX_STREAM_BYTES, SearchCodeArgs, SearchCodeResult};

use super::{ToolContext, ToolError, parse_args, paths};
use crate::plan::SearchBackend;

/// Default `max_results`.
pub const DEFAULT_MAX_RESULTS: u64 = 200;
/// Cap on `max_results`, and ripgrep's per-file `-m`.
pub const MAX_RESULTS_CAP: u64 = 5000;
/// Longest query accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Where the sandbox looks for ripgrep.
const RG_CANDIDATES: [&str; 3] = ["/usr/bin/rg", "/usr/local/bin/rg", "/bin/rg"];

/// Runs the tool.
pub fn run(args: serde_json::Value, ctx: &mut ToolContext<'_>) -> Result<SearchCodeResult, ToolError> {
    let args: SearchCodeArgs = parse_args(args, &["query"])?;
    if args.query.is_empty() || args.query.len() > MAX_QUERY_BYTES {
        return Err(ToolError::invalid("query must be 1..=4096 bytes"));
    }
    let path = args.path.unwrap_or_else(|| ".".into());
    let relative = paths::relative(&path)?.to_owned();
    // Proves the path resolves beneath the workspace before any search names it.
    paths::open_at(ctx.workspace, &relative, OFlag::O_PATH, Mode::empty())?;
    let case_sensitive = args.case_sensitive.unwrap_or(false);
    let max = args.max_results.unwrap_or(DEFAULT_MAX_RESULTS).min(MAX_RESULTS_CAP) as usize;
    let matcher = RegexMatcherBuilder::new()
        .case_insensitive(!case_sensitive)
        .build(&args.query)
        .map_err(|e| ToolError::invalid(format!("invalid regular expression: {e}")))?;

    let rg = RG_CANDIDATES.into_iter().find(|p| Path::new(p).exists());
    let mut matches = match (ctx.search_backend, rg) {
        (SearchBackend::Builtin, _) | (SearchBackend::Auto, None) => builtin(&matcher, &relative),
        (SearchBackend::Auto | SearchBackend::Ripgrep, Some(rg)) => {
            ripgrep(rg, &args.query, case_sensitive, &relative)?
        }
        (SearchBackend::Ripgrep, None) => {
            return Err(ToolError::new(FailureCode::ToolNotExecutable, "rg is not installed"));
        }
    };
    matches.sort();
    let mut truncated = matches.len() > max;
    matches.truncate(max);
    let mut total = 0;
    if let Some(cut) = matches.iter().position(|m| {
        total += m.len() + 1;
        total > MAX_STREAM_BYTES
    }) {
        matches.truncate(cut);
        truncated = true;
    }
    Ok(SearchCodeResult { path, query: args.query, count: matches.len() as u64, matches, truncated })
}

fn ripgrep(rg: &str, query: &str, case_sensitive: bool, path: &str) -> Result<Vec<String>, ToolError> {
    let output = Command::new(rg)
        .args(["-n", "-H", if case_sensitive { "--case-sensitive" } else { "-i" }, "--color=never", "--no-config"])
        .args(["-m", &MAX_RESULTS_CAP.to_string(), "-e", query, "--", path])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| ToolError::new(FailureCode::ToolNotExecutable, format!("rg could not start: {e}")))?;
    let found = !output.stdout.is_empty();
    if !(output.status.success() || output.status.code() == Some(1) || found) {
        return Err(ToolError::new(FailureCode::ExecutionFailed, "rg command failed"));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.split_terminator('\n').map(str::to_owned).collect())
}

/// The built-in search: ripgrep's walker and searcher with ripgrep's defaults.
pub fn builtin(matcher: &RegexMatcher, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let walk = WalkBuilder::new(path).add_custom_ignore_filename(".rgignore").build();
    for entry in walk.flatten() {
        let explicit = entry.depth() == 0;
        if !entry.file_type().is_some_and(|t| t.is_file() || (explicit && !t.is_dir())) {
            continue;
        }
        // ripgrep converts binary data in files named on the command line and stops at the
        // first NUL in files it found by walking.
        let binary = if explicit { BinaryDetection::convert(b'\0') } else { BinaryDetection::quit(b'\0') };
        let mut searcher = SearcherBuilder::new()
            .line_number(true)
            .binary_detection(binary)
            .max_matches(Some(MAX_RESULTS_CAP))
            .build();
        let name = entry.path().display().to_string();
        let _ = searcher.search_path(
            matcher,
            entry.path(),
            Lossy(|line, text| {
                out.push(format!("{name}:{line}:{}", text.strip_suffix('\n').unwrap_or(text)));
                Ok(true)
            }),
        );
    }
    out
}
