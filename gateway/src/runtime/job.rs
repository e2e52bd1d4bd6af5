//! One chat job: its state, its live event stream, its log, and the approvals it waits for.
//!
//! Why it exists: a job outlives the write that started it (spec `acheron-worldfs.md` §7):
//! clients read `status.json`, block on `result.txt`, and follow `events.ndjson` (our
//! extension) from any connection of the same agent. Everything a reader needs is here,
//! behind one mutex, with a `watch` counter that wakes blocked readers on every change.
//!
//! Bounds: the event stream and the log are capped ([`MAX_EVENTS_BYTES`], [`MAX_LOG_BYTES`]);
//! past the cap text deltas and output chunks are dropped with one `truncated` line, while
//! the lines that matter for the protocol (approval requests, results, the final line)
//! are always kept. Pending approvals per job are bounded by the tool calls in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use spiderweb_policy::approval::Decision;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{ConversationKey, JobRecord};

/// Cap on a job's `events.ndjson`.
pub const MAX_EVENTS_BYTES: usize = 4 << 20;
/// Cap on a job's `log.txt`.
pub const MAX_LOG_BYTES: usize = 256 << 10;
/// Room kept past the caps for the lines that are never dropped.
const RESERVE_BYTES: usize = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    /// Our addition to the spec's states: a tool call waits for a human.
    WaitingApproval,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::WaitingApproval => "waiting_approval",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> JobState {
        match text {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "waiting_approval" => JobState::WaitingApproval,
            "done" => JobState::Done,
            _ => JobState::Failed,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

pub struct Job {
    pub id: String,
    pub seq: u64,
    pub conversation: ConversationKey,
    pub correlation_id: Option<String>,
    pub created_at_ms: i64,
    /// Cancelled when the job must stop (its client left, the gateway shuts down).
    pub cancel: CancellationToken,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

struct Inner {
    state: JobState,
    error: Option<String>,
    result: Option<String>,
    log: String,
    events: String,
    next_seq: u64,
    truncated: bool,
    updated_at_ms: i64,
    approvals: HashMap<String, oneshot::Sender<Decision>>,
}

/// Why an approval answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("job {job} has no pending approval {approval_id}")]
    NotPending { job: String, approval_id: String },
}

impl Job {
    pub fn new(
        id: String,
        seq: u64,
        conversation: ConversationKey,
        correlation_id: Option<String>,
        now_ms: i64,
        cancel: CancellationToken,
    ) -> Job {
        Job {
            id,
            seq,
            conversation,
            correlation_id,
            created_at_ms: now_ms,
            cancel,
            inner: Mutex::new(Inner {
                state: JobState::Queued,
                error: None,
                result: None,
                log: String::new(),
                events: String::new(),
                next_seq: 1,
                truncated: false,
                updated_at_ms: now_ms,
                approvals: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
        }
    }

    /// A job loaded from the store. One that was not finished when the gateway stopped is
    /// failed now: its turn cannot be resumed half-way (the provider stream is gone).
    pub fn restored(record: JobRecord, now_ms: i64) -> (Job, bool) {
        let mut state = JobState::parse(&record.state);
        let mut error = record.error;
        let mut events = record.events;
        let interrupted = !state.is_terminal();
        if interrupted {
            state = JobState::Failed;
            let message = "the gateway restarted while this job was running".to_owned();
            events.push_str(
                &json!({"seq": 0, "type": "failed", "error": {"code": "runtime_restarted", "message": message}})
                    .to_string(),
            );
            events.push('\n');
            error = Some(message);
        }
        let next_seq = events.lines().count() as u64 + 1;
        let job = Job {
            id: record.id,
            seq: record.seq,
            conversation: record.conversation,
            correlation_id: record.correlation_id,
            created_at_ms: record.created_at_ms,
            cancel: CancellationToken::new(),
            inner: Mutex::new(Inner {
                state,
                error,
                result: record.result,
                log: record.log,
                events,
                next_seq,
                truncated: false,
                updated_at_ms: if interrupted { now_ms } else { record.updated_at_ms },
                approvals: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
        };
        (job, interrupted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn state(&self) -> JobState {
        self.lock().state
    }

    /// When the job last changed (for a terminal job: when it ended).
    pub fn updated_at_ms(&self) -> i64 {
        self.lock().updated_at_ms
    }

    /// Appends one line to `events.ndjson`. `droppable` lines (text deltas, output chunks)
    /// are dropped past the cap; the others always go in. The line is `event` with its
    /// `seq` added as the last key.
    pub fn emit(&self, mut event: Value, droppable: bool, now_ms: i64) {
        self.append(droppable, now_ms, |seq| {
            if let Some(object) = event.as_object_mut() {
                object.insert("seq".into(), json!(seq));
            }
            event.to_string()
        });
    }

    /// A text delta: the same line `emit` writes for `{"type":"text","text":…}`, without
    /// building a JSON tree first (this runs once per streamed chunk of every chat).
    pub fn emit_text(&self, text: &str, now_ms: i64) {
        #[derive(serde::Serialize)]
        struct TextLine<'a> {
            r#type: &'static str,
            text: &'a str,
            seq: u64,
        }
        self.append(true, now_ms, |seq| {
            serde_json::to_string(&TextLine { r#type: "text", text, seq }).expect("a string always serializes")
        });
    }

    /// Appends the line `render(seq)` returns, unless the cap drops it.
    fn append(&self, droppable: bool, now_ms: i64, render: impl FnOnce(u64) -> String) {
        let mut inner = self.lock();
        let size = inner.events.len();
        let over = size >= MAX_EVENTS_BYTES;
        if droppable && over {
            if !inner.truncated {
                inner.truncated = true;
                let seq = inner.next_seq;
                inner.next_seq += 1;
                let line = json!({"seq": seq, "type": "truncated", "reason": "the event stream reached its size limit; text and output deltas are no longer streamed"});
                inner.events.push_str(&format!("{line}\n"));
            }
            return;
        }
        if !droppable && size >= MAX_EVENTS_BYTES + RESERVE_BYTES {
            return;
        }
        let line = render(inner.next_seq);
        inner.next_seq += 1;
        inner.updated_at_ms = now_ms;
        inner.events.push_str(&line);
        inner.events.push('\n');
        drop(inner);
        self.bump();
    }

    /// Appends a line to `log.txt` (dropped past the cap).
    pub fn log(&self, line: &str) {
        let mut inner = self.lock();
        if inner.log.len() + line.len() < MAX_LOG_BYTES {
            inner.log.push_str(line);
            inner.log.push('\n');
        }
    }

    pub fn set_state(&self, state: JobState, now_ms: i64) {
        let mut inner = self.lock();
        if inner.state.is_terminal() {
            return;
        }
        inner.state = state;
        inner.updated_at_ms = now_ms;
        drop(inner);
        self.bump();
    }

    /// Ends the job. The final event line is written in the same critical section, so a
    /// reader never sees a terminal state without it.
    pub fn finish(&self, outcome: Result<String, (String, String)>, now_ms: i64) {
        let event = match &outcome {
            Ok(text) => json!({"type": "done", "result": text}),
            Err((code, message)) => json!({"type": "failed", "error": {"code": code, "message": message}}),
        };
        {
            let inner = self.lock();
            if inner.state.is_terminal() {
                return;
            }
        }
        self.emit(event, false, now_ms);
        let mut inner = self.lock();
        match outcome {
            Ok(text) => {
                inner.state = JobState::Done;
                inner.result = Some(text);
            }
            Err((code, message)) => {
                inner.state = JobState::Failed;
                inner.log.push_str(&format!("[runtime error] code={code} {message}\n"));
                inner.error = Some(message);
            }
        }
        inner.updated_at_ms = now_ms;
        // Nobody can answer an approval of a finished job.
        inner.approvals.clear();
        drop(inner);
        self.bump();
    }

    /// `status.json` (spec §7.3).
    pub fn status_json(&self) -> Value {
        let inner = self.lock();
        json!({"state": inner.state.as_str(), "correlation_id": self.correlation_id, "error": inner.error,
               "updated_at_ms": inner.updated_at_ms})
    }

    /// `result.txt`: the answer, the error text, or empty while the job runs.
    pub fn result_text(&self) -> String {
        let inner = self.lock();
        match inner.state {
            JobState::Done => inner.result.clone().unwrap_or_default(),
            JobState::Failed => inner.error.clone().unwrap_or_default(),
            _ => String::new(),
        }
    }

    pub fn log_text(&self) -> String {
        self.lock().log.clone()
    }

    pub fn events_text(&self) -> String {
        self.lock().events.clone()
    }

    /// At most `count` bytes of `events.ndjson` from `offset`, cut after the last whole line
    /// when the window ends before the stream does (a client following the stream never
    /// sees half an event); and whether it reaches the current end.
    pub fn events_window(&self, offset: u64, count: u64) -> (Vec<u8>, bool) {
        let inner = self.lock();
        let bytes = inner.events.as_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
        let end = start.saturating_add(usize::try_from(count).unwrap_or(usize::MAX)).min(bytes.len());
        let end = match bytes[start..end].iter().rposition(|b| *b == b'\n') {
            Some(last) if end < bytes.len() => start + last + 1,
            _ => end,
        };
        (bytes[start..end].to_vec(), end == bytes.len())
    }

    pub fn events_len(&self) -> usize {
        self.lock().events.len()
    }

    /// The job-event part of a `next.json` reply (spec §9).
    pub fn event_json(&self) -> Value {
        let inner = self.lock();
        let base = format!("/agents/self/jobs/{}", self.id);
        json!({"job_id": self.id, "state": inner.state.as_str(), "correlation_id": self.correlation_id,
               "status_path": format!("{base}/status.json"), "result_path": format!("{base}/result.txt"),
               "result": inner.result, "error": inner.error})
    }

    /// Registers an approval request and returns the receiver of its answer.
    pub fn await_approval(&self, approval_id: &str) -> oneshot::Receiver<Decision> {
        let (tx, rx) = oneshot::channel();
        self.lock().approvals.insert(approval_id.to_owned(), tx);
        rx
    }

    /// Delivers a client's answer.
    pub fn answer(&self, approval_id: &str, decision: Decision) -> Result<(), AnswerError> {
        let sender = self.lock().approvals.remove(approval_id);
        match sender.map(|s| s.send(decision)) {
            Some(Ok(())) => Ok(()),
            _ => Err(AnswerError::NotPending { job: self.id.clone(), approval_id: approval_id.to_owned() }),
        }
    }

    /// The record the store keeps.
    pub fn record(&self) -> JobRecord {
        let inner = self.lock();
        JobRecord {
            id: self.id.clone(),
            seq: self.seq,
            conversation: self.conversation.clone(),
            correlation_id: self.correlation_id.clone(),
            state: inner.state.as_str().to_owned(),
            error: inner.error.clone(),
            result: inner.result.clone(),
            log: inner.log.clone(),
            events: inner.events.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: inner.updated_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        let conversation = ConversationKey { agent_id: "a".into(), project_id: "p".into(), session_key: "main".into() };
        Job::new("job-1".into(), 1, conversation, Some("c1".into()), 10, CancellationToken::new())
    }

    #[test]
    fn events_are_numbered_lines_and_the_final_line_comes_with_the_terminal_state() {
        let job = job();
        job.emit(json!({"type": "text", "text": "hi"}), true, 11);
        job.finish(Ok("hi".into()), 12);
        let lines: Vec<Value> = job.events_text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0], json!({"seq": 1, "type": "text", "text": "hi"}));
        assert_eq!(lines[1], json!({"seq": 2, "type": "done", "result": "hi"}));
        assert_eq!(job.status_json()["state"], "done");
        assert_eq!(job.result_text(), "hi");
        // A second ending changes nothing.
        job.finish(Err(("x".into(), "y".into())), 13);
        assert_eq!(job.result_text(), "hi");
    }

    #[test]
    fn a_text_line_is_the_line_emit_writes_for_the_same_event() {
        let (fast, general) = (job(), job());
        for text in ["plain", "quote \" and \\ and \n newline", "ünïcødé \u{1}"] {
            fast.emit_text(text, 1);
            general.emit(json!({"type": "text", "text": text}), true, 1);
        }
        assert_eq!(fast.events_text(), general.events_text());
    }

    #[test]
    fn deltas_past_the_cap_are_dropped_with_one_marker_but_results_are_kept() {
        let job = job();
        let chunk = "x".repeat(64 << 10);
        for _ in 0..(MAX_EVENTS_BYTES / chunk.len() + 8) {
            job.emit(json!({"type": "text", "text": chunk}), true, 1);
        }
        job.finish(Err(("provider_error".into(), "boom".into())), 2);
        let text = job.events_text();
        assert!(text.len() < MAX_EVENTS_BYTES + RESERVE_BYTES);
        assert_eq!(text.matches("\"truncated\"").count(), 1);
        assert!(text.trim_end().lines().last().unwrap().contains("\"failed\""));
        assert_eq!(job.result_text(), "boom");
    }

    #[test]
    fn an_approval_is_answered_once() {
        let job = job();
        let mut rx = job.await_approval("ap-1");
        job.answer("ap-1", Decision::Yes).unwrap();
        assert_eq!(rx.try_recv().unwrap(), Decision::Yes);
        assert!(job.answer("ap-1", Decision::No).is_err());
        assert!(job.answer("ap-9", Decision::No).is_err());
    }

    #[test]
    fn an_unfinished_job_is_failed_when_restored() {
        let job = job();
        job.set_state(JobState::Running, 5);
        let (restored, interrupted) = Job::restored(job.record(), 99);
        assert!(interrupted);
        assert_eq!(restored.state(), JobState::Failed);
        assert!(restored.result_text().contains("restarted"));
        assert!(restored.events_text().contains("runtime_restarted"));
    }
}
