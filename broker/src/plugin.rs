//! Plugin providers: running a configured local binary for one JSON-RPC `chat` call.
//!
//! Why it exists: provider plugins (the JSON-RPC 2.0 stdin/stdout protocol of ZeptoClaw,
//! `seeds/003_*`) read their API key from their environment, and the broker is the only
//! process that may hold a key, so the broker runs them. The gateway builds the request line
//! and parses the answer (`gateway/src/providers/plugin.rs`, pure functions); this module only
//! moves bytes: the request line in on stdin (plus the `\n` the seed writes, then stdin is
//! closed), stdout back out once the plugin has exited successfully.
//!
//! What it must never do:
//! - run anything the client names: the command and its arguments come only from the broker's
//!   config, and are executed directly, never through a shell;
//! - hand the plugin more than its own key: its environment is cleared except `PATH`, `HOME`
//!   and `LANG`, and the credential goes only into the variable named by `key_env`;
//! - wait forever or buffer without bound: stdout is capped at [`MAX_OUTPUT_BYTES`] (the
//!   plugin is killed when it writes more), stderr is kept up to [`MAX_STDERR_BYTES`] and the
//!   rest drained, and the timeout kills the plugin's whole process group;
//! - leave processes behind: the plugin leads its own process group, which is SIGKILLed when
//!   the run is dropped (a cancelled request or a client that went away) before the plugin
//!   was reaped.
//!
//! Errors quote the plugin's stderr (bounded, as the user needs it to debug the plugin). A
//! plugin may echo its key (a debug line, an SDK's error message): every occurrence of the key
//! in its stdout and stderr is replaced by `[redacted]` before anything leaves this module, so
//! the key reaches neither the gateway, nor a log line, nor an error.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The time a plugin has to answer unless `timeout_ms` says otherwise (ZeptoClaw's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest `timeout_ms` the config accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Cap on a plugin's stdout: a JSON-RPC answer is small; more is a broken plugin.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// Stderr kept for error messages.
pub const MAX_STDERR_BYTES: usize = 64 << 10;
/// Longest stderr excerpt quoted in an error message.
const STDERR_SNIPPET_CHARS: usize = 2048;
/// The only variables of the broker's environment a plugin inherits.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG"];

/// One configured plugin: what to run and how long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginSpec {
    /// Absolute path of the binary.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Wall-clock limit for one call.
    pub timeout: Duration,
    /// The environment variable through which the plugin receives its credential, if it
    /// takes one.
    pub key_env: Option<String>,
}

/// Why a plugin call failed. Messages never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The binary could not be started (missing, not executable, …).
    #[error("provider plugin {command} could not be started: {source}")]
    Spawn {
        /// The configured command.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the running plugin failed.
    #[error("provider plugin {command}: {stage} failed: {source}")]
    Io {
        /// The configured command.
        command: String,
        /// What was being done.
        stage: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// It did not exit within its timeout; its process group was killed.
    #[error("provider plugin {command} timed out after {}s and was killed", after.as_secs_f64())]
    Timeout {
        /// The configured command.
        command: String,
        /// The configured timeout.
        after: Duration,
    },
    /// It exited unsuccessfully.
    #[error("provider plugin {command} {status}: {detail}")]
    Exit {
        /// The configured command.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its stderr (or stdout when stderr is empty), trimmed and bounded.
        detail: String,
    },
    /// It wrote more than [`MAX_OUTPUT_BYTES`] to stdout and was killed.
    #[error("provider plugin {command} wrote more than {limit} bytes to stdout and was killed")]
    OutputTooLarge {
        /// The configured command.
        command: String,
        /// The cap.
        limit: usize,
    },
}

/// Runs the plugin once: `request_line` (without its newline) on stdin, and returns its
/// stdout after a successful exit. `key` goes into `spec.key_env`.
pub async fn run(spec: &PluginSpec, request_line: &[u8], key: Option<&SecretString>) -> Result<Vec<u8>, PluginError> {
    let command = spec.command.display().to_string();
    let mut builder = Command::new(&spec.command);
    builder
        .args(&spec.args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            builder.env(name, value);
        }
    }
    if let (Some(name), Some(key)) = (&spec.key_env, key) {
        builder.env(name, key.expose_secret());
    }
    let mut child = builder.spawn().map_err(|source| PluginError::Spawn { command: command.clone(), source })?;
    // The builder holds a copy of the key; it is not needed past the spawn.
    drop(builder);
    // From here until the leader is reaped, dropping this future or any failure kills the
    // plugin and everything it started.
    let mut group = ProcessGroup::led_by(&child);
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let exchange = async {
        let write = async {
            let mut result = stdin.write_all(request_line).await;
            if result.is_ok() {
                result = stdin.write_all(b"\n").await;
            }
            drop(stdin);
            result
        };
        let read_answer = async {
            let output = read_bounded(stdout, MAX_OUTPUT_BYTES, false).await;
            if matches!(output, Ok((_, true))) {
                // Stop it now: it would block on a full pipe until the timeout.
                group.kill();
            }
            output
        };
        let (written, output, errors) = tokio::join!(write, read_answer, read_bounded(stderr, MAX_STDERR_BYTES, true));
        (written, output, errors, child.wait().await)
    };
    let Ok((written, output, errors, status)) = tokio::time::timeout(spec.timeout, exchange).await else {
        group.kill();
        let _ = child.wait().await;
        group.reaped();
        return Err(PluginError::Timeout { command, after: spec.timeout });
    };
    let io = |stage, source| PluginError::Io { command: command.clone(), stage, source };
    let status = status.map_err(|e| io("waiting for its exit", e))?;
    group.reaped();
    let (stdout, stdout_overflow) = output.map_err(|e| io("reading its stdout", e))?;
    if stdout_overflow {
        return Err(PluginError::OutputTooLarge { command, limit: MAX_OUTPUT_BYTES });
    }
    let (stderr, _) = errors.map_err(|e| io("reading its stderr", e))?;
    let key = key.map(|k| k.expose_secret().as_bytes()).filter(|k| !k.is_empty());
    let (stdout, stderr) = match key {
        Some(key) => (redact(stdout, key), redact(stderr, key)),
        None => (stdout, stderr),
    };
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        let stdout = String::from_utf8_lossy(&stdout);
        let detail = if stderr.trim().is_empty() { stdout.trim() } else { stderr.trim() };
        return Err(PluginError::Exit { command, status, detail: snippet(detail) });
    }
    // A plugin that exits 0 without reading its request is judged by its answer; only when
    // it gave none does the failed write explain anything.
    if let Err(source) = written
        && stdout.iter().all(u8::is_ascii_whitespace)
    {
        return Err(io("writing the request", source));
    }
    Ok(stdout)
}

/// `output` with every occurrence of `key` replaced by `[redacted]`.
fn redact(output: Vec<u8>, key: &[u8]) -> Vec<u8> {
    let finder = memchr::memmem::Finder::new(key);
    if finder.find(&output).is_none() {
        return output;
    }
    let mut clean = Vec::with_capacity(output.len());
    let mut rest = output.as_slice();
    while let Some(at) = finder.find(rest) {
        clean.extend_from_slice(&rest[..at]);
        clean.extend_from_slice(b"[redacted]");
        rest = &rest[at + key.len()..];
    }
    clean.extend_from_slice(rest);
    clean
}

/// At most [`STDERR_SNIPPET_CHARS`] characters of `text`, marked when cut.
fn snippet(text: &str) -> String {
    match text.char_indices().nth(STDERR_SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Reads up to `limit` bytes and returns them with whether there was more. With
/// `drain_excess` the rest is read and dropped (so the writer never blocks on it).
async fn read_bounded(
    mut reader: impl AsyncRead + Unpin,
    limit: usize,
    drain_excess: bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut reader).take(limit as u64).read_to_end(&mut kept).await?;
    let mut probe = [0u8; 1];
    let overflow = reader.read(&mut probe).await? > 0;
    if overflow && drain_excess {
        tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    }
    Ok((kept, overflow))
}

/// The plugin's process group (it leads its own, see `process_group(0)`), SIGKILLed on
/// drop unless its leader was reaped first, so children the plugin spawned die with it.
/// After the reap the group id could in principle be reused, so it is then left alone.
struct ProcessGroup {
    leader: Option<nix::unistd::Pid>,
}

impl ProcessGroup {
    fn led_by(child: &tokio::process::Child) -> Self {
        Self { leader: child.id().and_then(|pid| i32::try_from(pid).ok()).map(nix::unistd::Pid::from_raw) }
    }

    fn kill(&self) {
        if let Some(leader) = self.leader {
            // The group is still the plugin's: its leader has not been reaped.
            let _ = nix::sys::signal::killpg(leader, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn reaped(&mut self) {
        self.leader = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copy_of_the_key_is_redacted() {
        let out = redact(b"k=sk-1 again sk-1sk-1.".to_vec(), b"sk-1");
        assert_eq!(out, b"k=[redacted] again [redacted][redacted].");
        assert_eq!(redact(b"nothing here".to_vec(), b"sk-1"), b"nothing here");
    }

    #[test]
    fn long_stderr_is_cut_on_a_character_boundary() {
        let text = "é".repeat(STDERR_SNIPPET_CHARS + 5);
        let cut = snippet(&text);
        assert_eq!(cut.chars().count(), STDERR_SNIPPET_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(snippet("short"), "short");
    }
}
