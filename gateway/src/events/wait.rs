//! Waiting for events: `wait.json` configurations and the blocking read of `next.json`.
//!
//! A client writes `{"paths":[…],"timeout_ms":N}` to `events/control/wait.json`; each path
//! selects a source by its suffix (spec §9 table). Reading `events/next.json` at offset 0
//! then waits for the earliest matching event that this configuration has not delivered yet,
//! or for the timeout, and answers with one JSON document. `event_id` counts deliveries
//! from 1 per configuration.
//!
//! A wait never blocks the connection (spec README quirk 12): [`next_event`] is a future the
//! connection runs beside its other requests. On gateway shutdown a wait gets at most
//! [`DRAIN_GRACE`] more before it answers as timed out, so draining ends on time and no
//! request goes unanswered.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{MAX_SIGNAL_BYTES, ScopeEvents, Signal, SignalType};
use crate::plane::now_ms;

/// The timeout a configuration gets when it names none, and after a reset (spec §9.1).
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
/// The longest wait one read may ask for; longer waits are a loop of reads.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// How long an in-flight wait may go on once the gateway starts shutting down.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
const MAX_PATHS: usize = 64;
const MAX_PATH_LEN: usize = 512;

pub const INVALID_WAIT: &str = "wait.json payload must include non-empty paths[] and optional timeout_ms";
const SIGNAL_PREFIX: &str = "/agents/self/events/sources/";
const TIME_EVENT_PATH: &str = "/agents/self/events/sources/time";

/// What one `wait.json` path selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// `/agents/self/chat/control/input`: any job of this agent becoming terminal.
    AnyJob,
    /// `/agents/self/jobs/<job>/status.json` or `result.txt`: that job becoming terminal.
    Job(String),
    /// `…/sources/time/after/<ms>.json`: `<ms>` after configuration.
    TimeAfter(u64),
    /// `…/sources/time/at/<unix_ms>.json`: at that wall-clock time.
    TimeAt(i64),
    /// `…/sources/<type>.json` (any parameter) or `…/sources/<type>/<param>.json`.
    Signal { event_type: SignalType, parameter: Option<String> },
}

impl Selector {
    /// Parses a selector path; paths may carry any prefix before `/agents/self/`.
    pub fn parse(path: &str) -> Option<Selector> {
        let normalized: Cow<'_, str> =
            if path.starts_with('/') { Cow::Borrowed(path) } else { Cow::Owned(format!("/{path}")) };
        let rooted = &normalized[normalized.find("/agents/self/")?..];
        if rooted == "/agents/self/chat/control/input" {
            return Some(Selector::AnyJob);
        }
        if let Some(rest) = rooted.strip_prefix("/agents/self/jobs/") {
            let (job, file) = rest.split_once('/')?;
            return (!job.is_empty() && matches!(file, "status.json" | "result.txt"))
                .then(|| Selector::Job(job.to_owned()));
        }
        let source = rooted.strip_prefix(SIGNAL_PREFIX)?.strip_suffix(".json")?;
        if let Some(ms) = source.strip_prefix("time/after/") {
            return ms.parse().ok().map(Selector::TimeAfter);
        }
        if let Some(unix_ms) = source.strip_prefix("time/at/") {
            return unix_ms.parse().ok().map(Selector::TimeAt);
        }
        let (kind, parameter) = match source.split_once('/') {
            Some((kind, param)) if !param.is_empty() && !param.contains('/') => (kind, Some(param.to_owned())),
            Some(_) => return None,
            None => (source, None),
        };
        Some(Selector::Signal { event_type: SignalType::from_name(kind)?, parameter })
    }

    fn accepts_job(&self, job: &TerminalJob, configured_at_ms: i64) -> bool {
        match self {
            Selector::AnyJob => job.finished_at_ms >= configured_at_ms,
            Selector::Job(id) => *id == job.job_id,
            _ => false,
        }
    }

    fn accepts(&self, signal: &Signal) -> bool {
        match self {
            Selector::Signal { event_type, parameter } => {
                *event_type == signal.event_type && (parameter.is_none() || *parameter == signal.parameter)
            }
            _ => false,
        }
    }
}

/// A job that reached `done` or `failed`, as job selectors see it.
#[derive(Clone, Debug)]
pub struct TerminalJob {
    pub job_id: String,
    pub finished_at_ms: i64,
    /// The `job` object of the event (spec §9.2).
    pub job: Value,
}

/// Where waits learn about jobs: the agent runtime, seen for one agent.
pub trait JobFeed: Send + Sync {
    /// The agent's terminal jobs.
    fn terminal_jobs(&self) -> Vec<TerminalJob>;
    /// Changes whenever any job changes state.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// A configuration as written to `wait.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct WaitConfig {
    pub selectors: Vec<(String, Selector)>,
    pub timeout_ms: u64,
}

/// Parses a `wait.json` write. `Ok(None)` is the empty write that resets the configuration.
pub fn parse_wait(data: &[u8]) -> Result<Option<WaitConfig>, String> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        paths: Vec<String>,
        timeout_ms: Option<u64>,
    }
    let raw: Raw = serde_json::from_slice(data).map_err(|_| INVALID_WAIT.to_owned())?;
    if raw.paths.is_empty() {
        return Err(INVALID_WAIT.into());
    }
    if raw.paths.len() > MAX_PATHS {
        return Err(format!("wait.json accepts at most {MAX_PATHS} paths"));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms > MAX_TIMEOUT_MS {
        return Err(format!("timeout_ms must be at most {MAX_TIMEOUT_MS} (24 h); read next.json again to wait longer"));
    }
    let mut selectors = Vec::with_capacity(raw.paths.len());
    for path in raw.paths {
        if path.len() > MAX_PATH_LEN {
            return Err(format!("wait.json paths must be at most {MAX_PATH_LEN} bytes"));
        }
        let Some(selector) = Selector::parse(&path) else {
            return Err(format!("wait.json path {path:?} names no event source (see /agents/self/events/README.md)"));
        };
        selectors.push((path, selector));
    }
    Ok(Some(WaitConfig { selectors, timeout_ms }))
}

/// Parses a `signal.json` write into its type, parameter and payload.
pub fn parse_signal(data: &[u8]) -> Result<(SignalType, Option<String>, Value), String> {
    const INVALID: &str =
        r#"signal.json payload must be {"event_type":"user"|"agent"|"hook","parameter"?:string|null,"payload"?:any}"#;
    if data.len() > MAX_SIGNAL_BYTES {
        return Err(format!("signal.json writes must be at most {MAX_SIGNAL_BYTES} bytes"));
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        event_type: SignalType,
        #[serde(default)]
        parameter: Option<String>,
        #[serde(default)]
        payload: Value,
    }
    let raw: Raw = serde_json::from_slice(data).map_err(|_| INVALID.to_owned())?;
    if raw.parameter.as_deref().is_some_and(|p| p.is_empty() || p.contains('/')) {
        return Err("signal parameter must be non-empty and contain no '/'".into());
    }
    Ok((raw.event_type, raw.parameter, raw.payload))
}

/// A configuration and what it has delivered so far. Shared by the reads that wait on it,
/// so that two concurrent reads never deliver the same event twice.
#[derive(Debug)]
pub struct WaitState {
    config: WaitConfig,
    configured_at_ms: i64,
    delivered: u64,
    signal_cursor: u64,
    /// Per selector: whether its (one-shot) time event has been delivered.
    time_fired: Vec<bool>,
    /// Jobs whose terminal event this configuration delivered (bounded by the jobs the
    /// runtime keeps).
    jobs_delivered: std::collections::HashSet<String>,
}

pub type SharedWait = Arc<Mutex<WaitState>>;

impl WaitState {
    /// A fresh configuration; only signals raised after this moment can match it.
    pub fn new(config: WaitConfig, scope: &ScopeEvents) -> SharedWait {
        let time_fired = vec![false; config.selectors.len()];
        Arc::new(Mutex::new(WaitState {
            config,
            configured_at_ms: now_ms(),
            delivered: 0,
            signal_cursor: scope.last_seq(),
            time_fired,
            jobs_delivered: Default::default(),
        }))
    }

    /// The configured timeout (it also bounds blocking `result.txt` reads, spec §9.1).
    pub fn timeout_ms(&self) -> u64 {
        self.config.timeout_ms
    }

    fn time_target(&self, selector: &Selector) -> Option<i64> {
        match selector {
            Selector::TimeAfter(ms) => {
                Some(self.configured_at_ms.saturating_add(i64::try_from(*ms).unwrap_or(i64::MAX)))
            }
            Selector::TimeAt(at) => Some(*at),
            _ => None,
        }
    }

    /// The earliest undelivered event due at `now`, marked delivered; or the time of the next
    /// pending time event, so that the caller knows when to look again.
    fn take_due(&mut self, scope: &ScopeEvents, jobs: &[TerminalJob], now: i64) -> Result<Value, Option<i64>> {
        let mut best: Option<(i64, Due)> = None;
        let mut next_time: Option<i64> = None;
        for (index, (_, selector)) in self.config.selectors.iter().enumerate() {
            let Some(target) = self.time_target(selector) else { continue };
            if self.time_fired[index] {
                continue;
            }
            if target <= now {
                if best.as_ref().is_none_or(|(at, _)| target < *at) {
                    best = Some((target, Due::Time { index, target }));
                }
            } else {
                next_time = Some(next_time.map_or(target, |t: i64| t.min(target)));
            }
        }
        let selectors = &self.config.selectors;
        if let Some(signal) = scope.first_after(self.signal_cursor, |s| selectors.iter().any(|(_, sel)| sel.accepts(s)))
            && best.as_ref().is_none_or(|(at, _)| signal.at_ms < *at)
        {
            best = Some((signal.at_ms, Due::Signal(signal)));
        }
        for job in jobs {
            if self.jobs_delivered.contains(&job.job_id)
                || !selectors.iter().any(|(_, sel)| sel.accepts_job(job, self.configured_at_ms))
            {
                continue;
            }
            if best.as_ref().is_none_or(|(at, _)| job.finished_at_ms < *at) {
                best = Some((job.finished_at_ms, Due::Job(job.clone())));
            }
        }
        let Some((_, due)) = best else { return Err(next_time) };
        self.delivered += 1;
        let head = |source_path: &str, event_path: &str, updated_at_ms: i64| {
            json!({"configured": true, "waiting": false, "event_id": self.delivered,
                   "source_path": source_path, "event_path": event_path, "updated_at_ms": updated_at_ms})
        };
        Ok(match due {
            Due::Time { index, target } => {
                self.time_fired[index] = true;
                let mut event = head(&self.config.selectors[index].0, TIME_EVENT_PATH, now);
                event["time"] = json!({"target_ms": target, "now_ms": now, "fired": true});
                event
            }
            Due::Signal(signal) => {
                self.signal_cursor = signal.seq;
                let source_path =
                    selectors.iter().find(|(_, sel)| sel.accepts(&signal)).map_or("", |(p, _)| p.as_str());
                let event_path = match &signal.parameter {
                    Some(p) => format!("{SIGNAL_PREFIX}{}/{p}.json", signal.event_type.as_str()),
                    None => format!("{SIGNAL_PREFIX}{}.json", signal.event_type.as_str()),
                };
                let mut event = head(source_path, &event_path, signal.at_ms);
                event["signal"] = json!(signal);
                event
            }
            Due::Job(job) => {
                self.jobs_delivered.insert(job.job_id.clone());
                let source_path = selectors
                    .iter()
                    .find(|(_, sel)| sel.accepts_job(&job, self.configured_at_ms))
                    .map_or("", |(p, _)| p.as_str());
                let event_path = format!("/agents/self/jobs/{}/status.json", job.job_id);
                let mut event = head(source_path, &event_path, job.finished_at_ms);
                event["job"] = job.job;
                event
            }
        })
    }
}

enum Due {
    Time { index: usize, target: i64 },
    Signal(Signal),
    Job(TerminalJob),
}

/// What `next.json` shows when no wait is configured.
pub fn not_configured() -> Value {
    json!({"configured": false, "waiting": false, "error": "wait_not_configured"})
}

/// What `next.json` shows between reads of a configured wait.
pub fn configured_idle() -> Value {
    json!({"configured": true, "waiting": false})
}

/// Waits for the next event of `wait`, or its timeout; the answer is `next.json`'s content.
pub async fn next_event(
    wait: SharedWait,
    scope: Arc<ScopeEvents>,
    jobs: Box<dyn JobFeed>,
    shutdown: CancellationToken,
) -> Value {
    let started = Instant::now();
    let timeout_ms = lock(&wait).config.timeout_ms;
    let mut deadline = started + Duration::from_millis(timeout_ms);
    let mut changes = scope.subscribe();
    let mut job_changes = jobs.changes();
    let mut draining = false;
    loop {
        let now = now_ms();
        let terminal = jobs.terminal_jobs();
        let next_time = match lock(&wait).take_due(&scope, &terminal, now) {
            Ok(event) => return event,
            Err(next_time) => next_time,
        };
        let now_instant = Instant::now();
        if now_instant >= deadline {
            let waited_ms = now_instant.duration_since(started).as_millis() as u64;
            return json!({"configured": true, "waiting": true, "timeout": true, "waited_ms": waited_ms});
        }
        let wake = next_time
            .map(|t| now_instant + Duration::from_millis(u64::try_from(t - now).unwrap_or(0)))
            .map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            _ = changes.changed() => {}
            _ = job_changes.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                deadline = deadline.min(Instant::now() + DRAIN_GRACE);
            }
        }
    }
}

fn lock(wait: &SharedWait) -> std::sync::MutexGuard<'_, WaitState> {
    wait.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Jobs(Vec<TerminalJob>, tokio::sync::watch::Sender<u64>);

    impl JobFeed for Jobs {
        fn terminal_jobs(&self) -> Vec<TerminalJob> {
            self.0.clone()
        }
        fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
            self.1.subscribe()
        }
    }

    fn no_jobs() -> Box<dyn JobFeed> {
        Box::new(Jobs(vec![], tokio::sync::watch::Sender::new(0)))
    }

    #[test]
    fn job_selectors_fire_once_per_job_and_any_job_only_for_jobs_that_end_after_the_configuration() {
        let scope = ScopeEvents::new();
        let config =
            parse_wait(br#"{"paths":["/agents/self/chat/control/input","/agents/self/jobs/job-1/result.txt"]}"#)
                .unwrap()
                .unwrap();
        let wait = WaitState::new(config, &scope);
        let configured = lock(&wait).configured_at_ms;
        let job = |id: &str, at: i64| TerminalJob { job_id: id.into(), finished_at_ms: at, job: json!({"job_id": id}) };
        let jobs = [job("job-1", configured - 10), job("job-2", configured - 5), job("job-3", configured + 5)];
        let first = lock(&wait).take_due(&scope, &jobs, configured + 10).unwrap();
        assert_eq!(first["job"]["job_id"], "job-1", "named job, although it ended before the configuration");
        assert_eq!(first["source_path"], "/agents/self/jobs/job-1/result.txt");
        let second = lock(&wait).take_due(&scope, &jobs, configured + 10).unwrap();
        assert_eq!(second["job"]["job_id"], "job-3");
        assert_eq!(second["event_path"], "/agents/self/jobs/job-3/status.json");
        assert!(lock(&wait).take_due(&scope, &jobs, configured + 10).is_err(), "job-2 ended before; each once");
    }

    #[test]
    fn selectors_match_by_suffix() {
        let sig = |t, p: Option<&str>| Selector::Signal { event_type: t, parameter: p.map(str::to_owned) };
        let cases = [
            ("/agents/self/chat/control/input", Some(Selector::AnyJob)),
            ("/agents/self/jobs/job-3/status.json", Some(Selector::Job("job-3".into()))),
            ("/agents/self/jobs/job-3/result.txt", Some(Selector::Job("job-3".into()))),
            ("/agents/self/jobs/job-3/log.txt", None),
            ("/agents/self/events/sources/time/after/250.json", Some(Selector::TimeAfter(250))),
            ("/agents/self/events/sources/time/at/1700000000000.json", Some(Selector::TimeAt(1_700_000_000_000))),
            ("/agents/self/events/sources/time/after/soon.json", None),
            ("/agents/self/events/sources/user.json", Some(sig(SignalType::User, None))),
            ("/agents/self/events/sources/hook/deploy.json", Some(sig(SignalType::Hook, Some("deploy")))),
            ("agents/self/events/sources/agent.json", Some(sig(SignalType::Agent, None))),
            ("/world/agents/self/events/sources/agent.json", Some(sig(SignalType::Agent, None))),
            ("/agents/self/events/sources/root.json", None),
            ("/agents/self/events/sources/user/a/b.json", None),
            ("/etc/passwd", None),
        ];
        for (path, want) in cases {
            assert_eq!(Selector::parse(path), want, "{path}");
        }
    }

    #[test]
    fn wait_payloads_are_validated() {
        assert_eq!(parse_wait(b"  \n"), Ok(None));
        assert_eq!(parse_wait(br#"{"paths":[]}"#), Err(INVALID_WAIT.to_owned()));
        assert_eq!(
            parse_wait(br#"{"paths":["/agents/self/events/sources/user.json"],"timeout_ms":-1}"#),
            Err(INVALID_WAIT.to_owned())
        );
        assert!(parse_wait(br#"{"paths":["/nowhere"]}"#).unwrap_err().contains("/nowhere"));
        let config = parse_wait(br#"{"paths":["/agents/self/events/sources/user.json"]}"#).unwrap().unwrap();
        assert_eq!(config.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(
            parse_wait(
                format!(r#"{{"paths":["/agents/self/events/sources/user.json"],"timeout_ms":{}}}"#, MAX_TIMEOUT_MS + 1)
                    .as_bytes()
            )
            .is_err()
        );
    }

    #[test]
    fn signal_payloads_are_validated() {
        let (t, p, v) = parse_signal(br#"{"event_type":"hook","parameter":"ci","payload":[1]}"#).unwrap();
        assert_eq!((t, p.as_deref(), v), (SignalType::Hook, Some("ci"), json!([1])));
        assert!(parse_signal(br#"{"event_type":"root"}"#).is_err());
        assert!(parse_signal(br#"{"event_type":"user","parameter":"a/b"}"#).is_err());
        assert!(parse_signal(&vec![b' '; MAX_SIGNAL_BYTES + 1]).is_err());
    }

    fn state(paths: &[&str], scope: &ScopeEvents) -> SharedWait {
        let paths: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
        let config =
            parse_wait(format!(r#"{{"paths":[{}],"timeout_ms":1000}}"#, paths.join(",")).as_bytes()).unwrap().unwrap();
        WaitState::new(config, scope)
    }

    #[test]
    fn only_signals_after_configuration_match_and_each_is_delivered_once() {
        let scope = ScopeEvents::new();
        scope.raise(SignalType::User, None, json!("old"), 1);
        let wait = state(&["/agents/self/events/sources/user/go.json"], &scope);
        scope.raise(SignalType::User, Some("stop".into()), json!(1), 2);
        scope.raise(SignalType::User, Some("go".into()), json!(2), 3);
        let now = now_ms();
        let first = lock(&wait).take_due(&scope, &[], now).unwrap();
        assert_eq!(first["signal"]["payload"], json!(2));
        assert_eq!(first["event_id"], json!(1));
        assert_eq!(first["event_path"], json!("/agents/self/events/sources/user/go.json"));
        assert!(lock(&wait).take_due(&scope, &[], now).is_err(), "delivered once");
    }

    #[test]
    fn the_earliest_due_event_comes_first() {
        let scope = ScopeEvents::new();
        let wait =
            state(&["/agents/self/events/sources/time/at/100.json", "/agents/self/events/sources/hook.json"], &scope);
        scope.raise(SignalType::Hook, None, json!(null), 50);
        let mut w = lock(&wait);
        assert_eq!(w.take_due(&scope, &[], 200).unwrap()["signal"]["seq"], json!(1));
        assert_eq!(w.take_due(&scope, &[], 200).unwrap()["time"]["target_ms"], json!(100));
        assert_eq!(w.take_due(&scope, &[], 200).unwrap_err(), None, "nothing left, no timer pending");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_and_shutdown_shortens_it() {
        let scope = Arc::new(ScopeEvents::new());
        let wait = state(&["/agents/self/events/sources/hook.json"], &scope);
        let answer = next_event(wait.clone(), scope.clone(), no_jobs(), CancellationToken::new()).await;
        assert_eq!(answer["timeout"], json!(true));
        assert_eq!(answer["waiting"], json!(true));

        let long = {
            let config = parse_wait(br#"{"paths":["/agents/self/events/sources/hook.json"],"timeout_ms":600000}"#)
                .unwrap()
                .unwrap();
            WaitState::new(config, &scope)
        };
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let started = Instant::now();
        let answer = next_event(long, scope, no_jobs(), shutdown).await;
        assert_eq!(answer["timeout"], json!(true));
        assert!(started.elapsed() <= DRAIN_GRACE + Duration::from_millis(10));
    }
}
