//! The retained `node_service_event`s on disk: `<state>/node-service-events.ndjson`, one
//! `{"timestamp_ms","node_id","payload_json"}` line per event (spec unified-v2 §6.5), read
//! back at start so that a watcher's replay survives a restart.
//!
//! Bounded: the file is rotated when it passes `SPIDERWEB_NODE_SERVICE_EVENT_LOG_ROTATE_MAX_BYTES`
//! (8 MiB) into `node-service-events-<ms>.ndjson`, and only the newest
//! `SPIDERWEB_NODE_SERVICE_EVENT_LOG_ARCHIVE_KEEP` (8, at most 64) archives are kept (the
//! original gzips its archives; these stay plain). Only the current file is read back, and
//! only its newest lines up to the retention capacity.
//!
//! What it must never do: fail a catalog upsert. Events are hints for watchers; a write that
//! fails is logged and the event stays retained in memory. The file holds catalog payloads
//! (no secrets) and is created 0600 like the rest of the state directory.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "node-service-events.ndjson";
const ARCHIVE_PREFIX: &str = "node-service-events-";

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub timestamp_ms: i64,
    pub node_id: String,
    pub payload_json: String,
}

#[derive(Clone, Copy, Debug)]
pub struct LogLimits {
    pub rotate_max_bytes: u64,
    pub archive_keep: usize,
}

impl LogLimits {
    pub fn from_env() -> LogLimits {
        let number = |name: &str, default: u64, lo: u64, hi: u64| {
            std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default).clamp(lo, hi)
        };
        LogLimits {
            rotate_max_bytes: number("SPIDERWEB_NODE_SERVICE_EVENT_LOG_ROTATE_MAX_BYTES", 8 << 20, 4096, 1 << 30),
            archive_keep: number("SPIDERWEB_NODE_SERVICE_EVENT_LOG_ARCHIVE_KEEP", 8, 0, 64) as usize,
        }
    }
}

pub struct EventLog {
    dir: PathBuf,
    file: File,
    bytes: u64,
    limits: LogLimits,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl EventLog {
    /// Opens (creating) the log in `dir` and returns it with the newest `keep` events of the
    /// current file, oldest first. Unreadable lines are skipped.
    pub fn open(dir: &Path, limits: LogLimits, keep: usize) -> std::io::Result<(EventLog, Vec<LoggedEvent>)> {
        let path = dir.join(FILE);
        let mut events = std::collections::VecDeque::new();
        if let Ok(file) = File::open(&path) {
            for line in BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<LoggedEvent>(&line) {
                    if events.len() == keep {
                        events.pop_front();
                    }
                    events.push_back(event);
                }
            }
        }
        let file = open_append(&path)?;
        let bytes = file.metadata()?.len();
        Ok((EventLog { dir: dir.to_owned(), file, bytes, limits }, events.into()))
    }

    /// Appends one event, rotating first when the file is full.
    pub fn append(&mut self, event: &LoggedEvent) -> std::io::Result<()> {
        let mut line = serde_json::to_string(event).map_err(std::io::Error::other)?;
        line.push('\n');
        if self.bytes > 0 && self.bytes + line.len() as u64 > self.limits.rotate_max_bytes {
            self.rotate(event.timestamp_ms)?;
        }
        self.file.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, now_ms: i64) -> std::io::Result<()> {
        let mut archive = self.dir.join(format!("{ARCHIVE_PREFIX}{now_ms}.ndjson"));
        let mut n = 1;
        while archive.exists() {
            archive = self.dir.join(format!("{ARCHIVE_PREFIX}{now_ms}-{n}.ndjson"));
            n += 1;
        }
        std::fs::rename(self.dir.join(FILE), &archive)?;
        self.file = open_append(&self.dir.join(FILE))?;
        self.bytes = 0;
        let mut archives: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&self.dir)?
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(ARCHIVE_PREFIX)))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        archives.sort();
        let excess = archives.len().saturating_sub(self.limits.archive_keep);
        for (_, path) in archives.into_iter().take(excess) {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: i64) -> LoggedEvent {
        LoggedEvent { timestamp_ms: i, node_id: "node-1".into(), payload_json: format!("{{\"n\":{i}}}") }
    }

    #[test]
    fn events_come_back_newest_kept_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits { rotate_max_bytes: 1 << 20, archive_keep: 2 };
        let (mut log, old) = EventLog::open(dir.path(), limits, 3).unwrap();
        assert!(old.is_empty());
        for i in 0..5 {
            log.append(&event(i)).unwrap();
        }
        drop(log);
        std::fs::OpenOptions::new().append(true).open(dir.path().join(FILE)).unwrap().write_all(b"garbage\n").unwrap();
        let (_, back) = EventLog::open(dir.path(), limits, 3).unwrap();
        assert_eq!(back.iter().map(|e| e.timestamp_ms).collect::<Vec<_>>(), [2, 3, 4]);
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_archives() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LogLimits { rotate_max_bytes: 100, archive_keep: 2 };
        let (mut log, _) = EventLog::open(dir.path(), limits, 10).unwrap();
        for i in 0..20 {
            log.append(&event(i)).unwrap();
        }
        let archives = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().unwrap().starts_with(ARCHIVE_PREFIX))
            .count();
        assert_eq!(archives, 2);
        assert!(std::fs::metadata(dir.path().join(FILE)).unwrap().len() <= 100);
    }
}
