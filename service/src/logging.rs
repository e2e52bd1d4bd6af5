//! Log output: `tracing` events on stderr, for people, for collectors, or for journald.
//!
//! Under systemd, stderr is a stream to journald, which stores each line at the priority
//! given by a `<N>` prefix (sd-daemon(3)); without one every line would be "info" and
//! `journalctl -p warning` would show nothing. [`LogFormat::Journal`] writes that prefix
//! (error → 3, warn → 4, info → 6, debug and trace → 7) and leaves the timestamp to journald.
//! It is the default when stderr *is* the journal stream (`JOURNAL_STREAM` names stderr's
//! device and inode, as systemd sets it), so units need no flag.

use std::fmt;
use std::io::IsTerminal as _;
use std::os::fd::AsRawFd as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines with timestamps.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines with a syslog priority prefix and no timestamp, for journald.
    Journal,
}

impl LogFormat {
    /// Journal when stderr is connected to journald, text otherwise.
    pub fn detect() -> LogFormat {
        if stderr_is_journal() { LogFormat::Journal } else { LogFormat::Text }
    }
}

/// Installs the global subscriber. `filter_var` (e.g. `SPIDERWEB_LOG`) overrides
/// `default_level` with an `EnvFilter` directive.
pub fn init(format: LogFormat, default_level: &str, filter_var: &str) {
    let filter = EnvFilter::try_from_env(filter_var).unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Colours only for a person at a terminal; files and pipes get plain text.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Journal => builder
            .with_ansi(false)
            .event_format(SyslogPriority(format::format().without_time().with_ansi(false)))
            .init(),
    }
}

/// The syslog priority journald should store an event at.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes each event with `<priority>` and formats the rest with the inner formatter.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Whether `JOURNAL_STREAM` (`<device>:<inode>`) names the file stderr is open on.
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    // SAFETY: fstat writes into the zeroed struct we pass; fd 2 is owned by the process.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut st) };
    rc == 0 && st.st_dev == dev && st.st_ino == ino
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
