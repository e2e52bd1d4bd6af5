//! One turn at a time per conversation, and the transcripts of recent conversations in memory.
//!
//! Why it exists: two turns of one conversation must not interleave. Their messages would
//! alternate in the store (prompt B between call A and result A), and providers reject a
//! transcript where a tool result does not follow its call. So a job takes its
//! conversation's [`Turn`] before it runs and holds it to the end; a later prompt to the
//! same conversation waits, queued, for the earlier one.
//!
//! Holding the conversation also makes its transcript ours to cache: nobody else writes
//! messages to it while a turn runs, so the history the last successful turn ended with is
//! exactly what the store would return. The next turn starts from that copy instead of
//! reading the store, which keeps a database round trip off the path to the first token.
//! Only a turn that ended cleanly leaves its history; one that failed leaves nothing, and
//! the next turn loads from the store (which also answers calls the failed turn left open).
//!
//! Bounds: at most [`MAX_CONVERSATIONS`] idle conversations and [`MAX_CACHED_BYTES`] of
//! cached transcript text are kept; the least recently used idle ones go first. A
//! transcript larger than [`MAX_TRANSCRIPT_BYTES`] is never cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::providers::Message;
use crate::store::ConversationKey;

/// Idle conversations remembered at once.
pub const MAX_CONVERSATIONS: usize = 1024;
/// Cached transcript text across all conversations.
pub const MAX_CACHED_BYTES: usize = 32 << 20;
/// The largest transcript that is cached.
pub const MAX_TRANSCRIPT_BYTES: usize = 1 << 20;
/// What one message costs beyond its text (enum, vectors, ids), for the byte budget.
const MESSAGE_OVERHEAD_BYTES: usize = 96;

/// A conversation's history as the turn loop uses it: `(seq, message)`, where a summary
/// of compacted messages has seq 0.
pub type History = Vec<(u64, Message)>;

#[derive(Default)]
struct Cached {
    history: Option<History>,
    bytes: usize,
}

struct Entry {
    slot: Arc<AsyncMutex<Cached>>,
    last_used: u64,
}

#[derive(Default)]
struct Table {
    entries: HashMap<ConversationKey, Entry>,
    clock: u64,
}

/// The conversations of one runtime.
#[derive(Default)]
pub struct Conversations {
    table: Mutex<Table>,
    cached_bytes: Arc<AtomicUsize>,
}

/// The right to run a turn in one conversation, held from before the turn starts to its end.
pub struct Turn {
    guard: OwnedMutexGuard<Cached>,
    cached_bytes: Arc<AtomicUsize>,
}

impl Conversations {
    /// Waits until no other turn runs in `key`. Cancel-safe: dropping the future gives up
    /// the place in line.
    pub async fn begin(&self, key: &ConversationKey) -> Turn {
        let slot = {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            table.clock += 1;
            let now = table.clock;
            let entry = table
                .entries
                .entry(key.clone())
                .or_insert_with(|| Entry { slot: Arc::new(AsyncMutex::new(Cached::default())), last_used: now });
            entry.last_used = now;
            let slot = entry.slot.clone();
            self.evict(&mut table);
            slot
        };
        Turn { guard: slot.lock_owned().await, cached_bytes: self.cached_bytes.clone() }
    }

    /// Cached transcript text in bytes (for tests and metrics).
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes.load(Ordering::Relaxed)
    }

    /// Drops the least recently used idle conversations until both bounds hold with room
    /// to spare (so that eviction does not run on every call). A conversation with a turn
    /// running or waiting is never dropped: its slot is shared beyond the table.
    fn evict(&self, table: &mut Table) {
        let over = |table: &Table, fraction: usize| {
            table.entries.len() * fraction > MAX_CONVERSATIONS * 4
                || self.cached_bytes.load(Ordering::Relaxed) * fraction > MAX_CACHED_BYTES * 4
        };
        if !over(table, 4) {
            return;
        }
        let mut idle: Vec<(u64, ConversationKey)> = table
            .entries
            .iter()
            .filter(|(_, entry)| Arc::strong_count(&entry.slot) == 1)
            .map(|(key, entry)| (entry.last_used, key.clone()))
            .collect();
        idle.sort_unstable_by_key(|(last_used, _)| *last_used);
        for (_, key) in idle {
            if !over(table, 5) {
                break;
            }
            // No turn holds the slot (the count above), so the lock is free.
            if let Some(entry) = table.entries.remove(&key)
                && let Ok(cached) = entry.slot.try_lock()
            {
                self.cached_bytes.fetch_sub(cached.bytes, Ordering::Relaxed);
            }
        }
    }
}

impl Turn {
    /// The history the previous turn of this conversation ended with, if it is cached.
    /// Taking it leaves nothing behind: a turn that fails does not put it back.
    pub fn take_history(&mut self) -> Option<History> {
        self.cached_bytes.fetch_sub(std::mem::take(&mut self.guard.bytes), Ordering::Relaxed);
        self.guard.history.take()
    }

    /// Keeps `history` for the next turn. Called only after a turn ended cleanly, with every
    /// message of `history` in the store under the seq it carries.
    pub fn keep(&mut self, history: History) {
        self.take_history();
        let bytes = history.iter().map(|(_, message)| message_bytes(message)).sum::<usize>();
        if bytes > MAX_TRANSCRIPT_BYTES || history.len() > super::transcript::MAX_LOADED_MESSAGES {
            return;
        }
        self.cached_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.guard.bytes = bytes;
        self.guard.history = Some(history);
    }
}

fn message_bytes(message: &Message) -> usize {
    MESSAGE_OVERHEAD_BYTES
        + match message {
            Message::User { text } => text.len(),
            Message::Assistant { text, tool_calls } => {
                text.len() + tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len()).sum::<usize>()
            }
            Message::ToolResult { call_id, name, content, .. } => call_id.len() + name.len() + content.len(),
        }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(session: &str) -> ConversationKey {
        ConversationKey { agent_id: "mother".into(), project_id: "system".into(), session_key: session.into() }
    }

    fn history(text: &str) -> History {
        vec![(1, Message::User { text: text.into() })]
    }

    #[tokio::test]
    async fn a_second_turn_waits_for_the_first() {
        let conversations = Arc::new(Conversations::default());
        let first = conversations.begin(&key("a")).await;
        let waiting = tokio::spawn({
            let conversations = conversations.clone();
            async move { conversations.begin(&key("a")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second turn must wait while the first holds the conversation");
        // Other conversations do not wait.
        let _other = conversations.begin(&key("b")).await;
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("second turn starts").unwrap();
    }

    #[tokio::test]
    async fn the_next_turn_gets_the_kept_history_once() {
        let conversations = Conversations::default();
        let mut turn = conversations.begin(&key("a")).await;
        assert_eq!(turn.take_history(), None, "nothing is cached before the first turn");
        turn.keep(history("hello"));
        assert!(conversations.cached_bytes() > 0);
        drop(turn);
        let mut turn = conversations.begin(&key("a")).await;
        assert_eq!(turn.take_history(), Some(history("hello")));
        assert_eq!(conversations.cached_bytes(), 0, "a taken history is no longer counted");
        drop(turn);
        let mut turn = conversations.begin(&key("a")).await;
        assert_eq!(turn.take_history(), None, "a turn that kept nothing (it failed) leaves nothing");
    }

    #[tokio::test]
    async fn oversized_transcripts_are_not_cached() {
        let conversations = Conversations::default();
        let mut turn = conversations.begin(&key("a")).await;
        turn.keep(history(&"x".repeat(MAX_TRANSCRIPT_BYTES + 1)));
        assert_eq!(conversations.cached_bytes(), 0);
        assert_eq!(turn.take_history(), None);
    }

    #[tokio::test]
    async fn idle_conversations_are_bounded_and_busy_ones_survive() {
        let conversations = Conversations::default();
        let mut busy = conversations.begin(&key("busy")).await;
        busy.keep(history("busy"));
        for n in 0..MAX_CONVERSATIONS * 2 {
            let mut turn = conversations.begin(&key(&format!("idle-{n}"))).await;
            turn.keep(history("idle"));
        }
        let kept = conversations.table.lock().unwrap().entries.len();
        assert!(kept <= MAX_CONVERSATIONS + 1, "{kept} conversations kept");
        let expected: usize = conversations
            .table
            .lock()
            .unwrap()
            .entries
            .values()
            .filter_map(|e| e.slot.try_lock().ok().map(|c| c.bytes))
            .sum::<usize>()
            + busy.guard.bytes;
        assert_eq!(conversations.cached_bytes(), expected, "the byte count follows evictions");
        assert_eq!(busy.take_history(), Some(history("busy")), "a held conversation is never evicted");
    }
}
