//! The agent runtime: chat jobs that run model turns through the broker and tool calls
//! through the worker supervisor.
//!
//! Why it exists: this is spiderweb's main job (DESIGN.md, "Chat turn with a tool call").
//! A write to `/agents/self/chat/control/input` calls [`Runtime::submit`], which creates a
//! [`job::Job`] and queues it; a turn task ([`turn`]) then loops model call → tool calls →
//! results until the model answers, a limit stops it, or the job is cancelled.
//!
//! What it must never do: hold a credential (model calls go to the broker, which adds it:
//! [`model`]), run a tool itself (tools go to the worker supervisor: [`tools`]), or tell a
//! client something that is not yet durable (messages and usage are written to the store
//! before the event that reports them).
//!
//! Limits (spec `legacy-v1.md` §7 keys): `runtime_worker_threads` turns run at once,
//! `runtime_request_queue_max` wait beyond what free slots take (a full queue refuses with
//! `queue_saturated`); a conversation runs one turn at a time, later prompts wait their turn,
//! `chat_operation_timeout_ms` bounds a job, `max_run_steps` its model calls,
//! `max_inflight_tool_calls_per_run` its parallel tool calls, `tool_retry_max_attempts`
//! and `tool_lease_timeout_ms` each tool call; budgets ([`budget`]) bound spending.
//!
//! Codemap: [`job`] (state, event stream, approvals), [`conversations`] (one turn at a
//! time per conversation, cached transcripts), [`turn`] (the loop), [`model`] (one
//! model call with retries), [`tools`] (one tool call, approval first), [`budget`],
//! [`compaction`], [`transcript`] (store ↔ provider messages, JSONL export).

pub mod budget;
pub mod compaction;
pub mod conversations;
pub mod job;
pub mod model;
pub mod tools;
pub mod transcript;
pub mod turn;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use spiderweb_client::shared::SharedClient;
use spiderweb_policy::approval::SessionApprovals;
use spiderweb_proto::worker::SandboxProfile;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BudgetConfig, Config};
use crate::events::wait::{JobFeed, TerminalJob};
use crate::providers::catalog::{self, Lookup};
use crate::providers::{Provider, ProviderKind};
use crate::store::{ConversationKey, Store};
use job::{Job, JobState};

/// Jobs kept in memory (and listed under `/agents/self/jobs`); the oldest finished ones
/// are forgotten first. The store keeps them for 24 h regardless.
const MAX_JOBS_IN_MEMORY: usize = 4096;
/// Job directories are re-created for this long after a job was created (spec §7).
pub const JOB_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Longest prompt accepted by a chat write.
pub const MAX_PROMPT_BYTES: usize = 256 << 10;
/// Requests one broker connection carries before another is opened (the broker's default
/// `limits.max_requests_per_connection` is 256).
const REQUESTS_PER_BROKER_CONNECTION: usize = 128;
/// Broker connections at most (the broker's default `limits.max_connections` is 256).
const MAX_BROKER_CONNECTIONS: usize = 32;
/// Store calls running on the blocking pool at once.
const STORE_CALLS_AT_ONCE: usize = 4;
/// Conversations whose `ALWAYS` approvals are remembered at once.
const MAX_APPROVAL_SESSIONS: usize = 4096;

/// Everything a turn needs that comes from configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub provider: Provider,
    /// The broker's provider id.
    pub broker_provider: String,
    pub model: String,
    pub model_info: Lookup,
    pub max_output_tokens: u32,
    pub temperature: Option<f32>,
    pub system_prompt: String,
    pub broker_socket: PathBuf,
    pub worker_socket: PathBuf,
    pub workspace_root: PathBuf,
    pub approval_mode: spiderweb_policy::approval::ApprovalMode,
    pub sandbox_profile: SandboxProfile,
    pub budget: BudgetConfig,
    pub session_store_path: Option<PathBuf>,
    pub worker_threads: usize,
    pub queue_max: usize,
    pub chat_timeout: Duration,
    pub max_run_steps: u64,
    pub max_inflight_tool_calls: usize,
    pub tool_retry_max_attempts: u32,
    pub tool_lease_timeout: Duration,
}

const DEFAULT_SYSTEM_PROMPT: &str = "You are spiderweb's agent. You work in the project's workspace through the tools \
    file_read, file_write, file_list, search_code and shell_exec; every tool runs in a sandbox confined to the \
    workspace. Paths are relative to the workspace. Ask for approval (shell_exec require_approval) before commands \
    that change things outside the files you were asked to edit. Answer concisely.";

impl Settings {
    /// Reads the runtime's part of the configuration. `state_dir` anchors the default
    /// workspace root; the socket flags win over the config file.
    pub fn from_config(
        config: &Config,
        state_dir: &std::path::Path,
        broker_socket: Option<PathBuf>,
        worker_socket: Option<PathBuf>,
    ) -> Settings {
        let r = &config.runtime;
        let p = &config.provider;
        // config::validate refused unknown names already.
        let kind = ProviderKind::from_config_name(&p.name).unwrap_or(ProviderKind::OpenAiCompatible);
        let mut provider = Provider::new(kind);
        if let Some(version) = &p.azure_api_version {
            provider = provider.with_azure_api_version(version.clone());
        }
        let model_info = catalog::lookup(kind, &p.model);
        let max_output_tokens = p.max_output_tokens.unwrap_or(model_info.info.max_output_tokens.min(8192)).max(1);
        let socket_dir = default_socket_dir();
        Settings {
            provider,
            broker_provider: p.broker_provider.clone().unwrap_or_else(|| kind.config_name().to_owned()),
            model: p.model.clone(),
            model_info,
            max_output_tokens,
            temperature: p.temperature,
            system_prompt: p.system_prompt.clone().unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_owned()),
            broker_socket: broker_socket
                .or_else(|| r.broker_socket.clone())
                .unwrap_or_else(|| socket_dir.join("broker.sock")),
            worker_socket: worker_socket
                .or_else(|| r.worker_socket.clone())
                .unwrap_or_else(|| socket_dir.join("worker.sock")),
            // The worker supervisor accepts only canonical workspace paths.
            workspace_root: {
                let root = r.workspace_root.clone().unwrap_or_else(|| state_dir.join("workspaces"));
                std::fs::canonicalize(&root).unwrap_or(root)
            },
            approval_mode: r.approval_mode,
            sandbox_profile: r.sandbox_profile,
            budget: r.budget.clone(),
            session_store_path: r
                .session_store_path
                .clone()
                .or_else(|| std::env::var_os("SESSION_STORE_PATH").filter(|p| !p.is_empty()).map(PathBuf::from)),
            worker_threads: r.runtime_worker_threads,
            queue_max: r.runtime_request_queue_max,
            chat_timeout: Duration::from_millis(r.chat_operation_timeout_ms),
            max_run_steps: r.max_run_steps,
            max_inflight_tool_calls: r.max_inflight_tool_calls_per_run as usize,
            tool_retry_max_attempts: r.tool_retry_max_attempts,
            tool_lease_timeout: Duration::from_millis(r.tool_lease_timeout_ms),
        }
    }
}

/// `$XDG_RUNTIME_DIR/spiderweb`, else `/run/spiderweb` (where the broker and the worker
/// supervisor put their sockets by default).
fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("spiderweb"),
        None => PathBuf::from("/run/spiderweb"),
    }
}

/// Why a chat write was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("runtime request queue saturated ({0} jobs waiting); retry later")]
    QueueSaturated(usize),
    #[error("the prompt is larger than {MAX_PROMPT_BYTES} bytes")]
    PromptTooLarge,
    #[error("cannot record the job: {0}")]
    Storage(String),
}

/// Who started a job: the conversation, and whose daily budget it spends.
#[derive(Clone, Debug)]
pub struct Origin {
    pub conversation: ConversationKey,
    /// `admin` or `user`.
    pub user: String,
    pub correlation_id: Option<String>,
    /// Cancelled when the connection that wrote the prompt closes: its turn stops, the
    /// provider request is aborted and running tools are killed.
    pub connection: CancellationToken,
}

pub struct Runtime {
    pub settings: Settings,
    store: Arc<dyn Store>,
    jobs: Mutex<Jobs>,
    /// Turns running at once.
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    /// Connections to the broker; a new one opens when all carry
    /// [`REQUESTS_PER_BROKER_CONNECTION`] requests (the broker bounds requests per connection).
    broker: tokio::sync::Mutex<Vec<Arc<SharedClient>>>,
    approvals: Mutex<HashMap<ConversationKey, SessionApprovals>>,
    /// Bumped whenever any job changes state; event waits on jobs watch it.
    job_changes: watch::Sender<u64>,
    shutdown: CancellationToken,
    /// Store calls on the blocking pool at once.
    store_calls: Semaphore,
    conversations: conversations::Conversations,
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Arc<Job>>,
    /// seq → id, to forget the oldest first.
    order: BTreeMap<u64, String>,
    next_seq: u64,
    /// Job numbers below this are reserved in the store (see [`JOB_SEQ_BLOCK`]).
    reserved_until: u64,
}

/// Job numbers are reserved in the store this many at a time, so that a job id can be
/// handed to the client before the job's record is committed (the commit runs beside the
/// first provider request) without a crash ever making an id be issued twice.
const JOB_SEQ_BLOCK: u64 = 64;

impl Runtime {
    /// Loads the jobs of the last 24 h (failing those a restart interrupted).
    pub fn new(settings: Settings, store: Arc<dyn Store>, shutdown: CancellationToken) -> anyhow::Result<Runtime> {
        let now = crate::plane::now_ms();
        let (records, next_seq) = store.load_jobs(now - JOB_TTL_MS)?;
        let mut jobs = Jobs { next_seq: next_seq.max(1), ..Jobs::default() };
        jobs.reserved_until = jobs.next_seq;
        for record in records {
            let (job, interrupted) = Job::restored(record, now);
            if interrupted {
                store.put_job(&job.record())?;
            }
            jobs.next_seq = jobs.next_seq.max(job.seq + 1);
            jobs.order.insert(job.seq, job.id.clone());
            jobs.by_id.insert(job.id.clone(), Arc::new(job));
        }
        if settings.model_info.known {
            tracing::info!(provider = settings.broker_provider, model = settings.model, "agent runtime ready");
        } else {
            tracing::warn!(
                provider = settings.broker_provider,
                model = settings.model,
                context_window = settings.model_info.info.context_window,
                "model not in the catalog: using conservative limits and no cost accounting"
            );
        }
        Ok(Runtime {
            slots: Arc::new(Semaphore::new(settings.worker_threads)),
            settings,
            store,
            jobs: Mutex::new(jobs),
            queued: AtomicUsize::new(0),
            broker: tokio::sync::Mutex::new(Vec::new()),
            approvals: Mutex::new(HashMap::new()),
            job_changes: watch::Sender::new(0),
            shutdown,
            store_calls: Semaphore::new(STORE_CALLS_AT_ONCE),
            conversations: conversations::Conversations::default(),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Creates a job for `prompt` and queues its turn.
    pub fn submit(self: &Arc<Self>, prompt: String, origin: Origin) -> Result<Arc<Job>, SubmitError> {
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(SubmitError::PromptTooLarge);
        }
        // Counted before the job exists so that a burst cannot overshoot the bound.
        let queued = self.queued.fetch_add(1, Ordering::SeqCst);
        // Jobs the free slots take at once do not wait; the queue is what is left over.
        if queued >= self.settings.queue_max + self.slots.available_permits() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueSaturated(queued));
        }
        let now = crate::plane::now_ms();
        let job = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            let seq = jobs.next_seq;
            if seq >= jobs.reserved_until {
                // One synchronous write per JOB_SEQ_BLOCK jobs.
                let until = seq + JOB_SEQ_BLOCK;
                if let Err(e) = self.store.reserve_job_seqs(until) {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(SubmitError::Storage(e.to_string()));
                }
                jobs.reserved_until = until;
            }
            jobs.next_seq += 1;
            let cancel = origin.connection.child_token();
            let job = Arc::new(Job::new(
                format!("job-{seq}"),
                seq,
                origin.conversation.clone(),
                origin.correlation_id.clone(),
                now,
                cancel,
            ));
            jobs.order.insert(seq, job.id.clone());
            jobs.by_id.insert(job.id.clone(), job.clone());
            forget_oldest(&mut jobs);
            job
        };
        job.log(&format!("[runtime] job {} queued for {}", job.id, origin.conversation.session_key));
        let runtime = self.clone();
        let task_job = job.clone();
        tokio::spawn(async move {
            // The conversation first: a job waiting for an earlier turn of its conversation
            // must not hold a slot that a turn of another conversation could use.
            let admitted = tokio::select! {
                admitted = async {
                    let conversation = runtime.conversations.begin(&origin.conversation).await;
                    let permit = runtime.slots.clone().acquire_owned().await.ok()?;
                    Some((conversation, permit))
                } => admitted,
                _ = task_job.cancel.cancelled() => None,
                _ = runtime.shutdown.cancelled() => None,
            };
            runtime.queued.fetch_sub(1, Ordering::SeqCst);
            match admitted {
                Some((conversation, _permit)) => {
                    turn::run(runtime.clone(), task_job.clone(), prompt, origin, conversation).await
                }
                None => runtime.fail(&task_job, "runtime_cancelled", "the job was cancelled before it started"),
            }
            runtime.persist(task_job.clone()).await;
            runtime.job_changes.send_modify(|n| *n += 1);
        });
        Ok(job)
    }

    /// Ends a job with an error.
    pub fn fail(&self, job: &Job, code: &str, message: &str) {
        job.finish(Err((code.to_owned(), message.to_owned())), crate::plane::now_ms());
    }

    /// Writes a job's current record; a failure is logged, not fatal (the job's outcome was
    /// already delivered to its readers, and the transcript is stored separately).
    pub async fn persist(&self, job: Arc<Job>) {
        let record = job.record();
        if let Err(e) = self.blocking(move |store| store.put_job(&record)).await {
            tracing::error!(job = job.id, error = %e, "cannot store the job");
        }
    }

    /// Runs a store call on the blocking pool: commits wait for the disk (fsync), which must
    /// not stall the tasks that stream other chats.
    pub async fn blocking<T: Send + 'static>(&self, call: impl FnOnce(&dyn Store) -> T + Send + 'static) -> T {
        // The store serializes its calls anyway; without this bound, a burst of turns would
        // park hundreds of blocking-pool threads on its lock.
        let _turn = self.store_calls.acquire().await.expect("never closed");
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || call(store.as_ref())).await {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).by_id.get(id).cloned()
    }

    /// The job ids of an agent, oldest first.
    pub fn job_ids_of(&self, agent_id: &str) -> Vec<String> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.order
            .values()
            .filter(|id| jobs.by_id.get(*id).is_some_and(|j| j.conversation.agent_id == agent_id))
            .cloned()
            .collect()
    }

    /// Terminal jobs of an agent, for event waits on job selectors.
    pub fn terminal_jobs_of(&self, agent_id: &str) -> Vec<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.order
            .values()
            .filter_map(|id| jobs.by_id.get(id))
            .filter(|j| j.conversation.agent_id == agent_id && j.state().is_terminal())
            .cloned()
            .collect()
    }

    pub fn job_changes(&self) -> watch::Receiver<u64> {
        self.job_changes.subscribe()
    }

    /// A broker connection with room for another request: the least busy one, or a new one
    /// when all are busy (reconnecting after the broker restarted).
    pub async fn broker(&self) -> Result<Arc<SharedClient>, String> {
        let mut pool = self.broker.lock().await;
        pool.retain(|client| client.is_connected());
        let least_busy = pool.iter().min_by_key(|client| client.in_flight()).cloned();
        if let Some(client) = &least_busy
            && (client.in_flight() < REQUESTS_PER_BROKER_CONNECTION || pool.len() >= MAX_BROKER_CONNECTIONS)
        {
            return Ok(client.clone());
        }
        let client = SharedClient::connect(&self.settings.broker_socket).await.map_err(|e| {
            format!("{e} (is spiderweb-broker running? `spiderweb up` starts it; runtime.broker_socket sets the path)")
        })?;
        let client = Arc::new(client);
        pool.push(client.clone());
        Ok(client)
    }

    /// Runs `f` on the conversation's remembered `ALWAYS` approvals.
    pub fn with_approvals<T>(&self, key: &ConversationKey, f: impl FnOnce(&mut SessionApprovals) -> T) -> T {
        let mut all = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(key) && all.len() >= MAX_APPROVAL_SESSIONS {
            // Forgetting an ALWAYS only makes the runtime ask again; never the reverse.
            if let Some(victim) = all.keys().next().cloned() {
                all.remove(&victim);
            }
        }
        f(all.entry(key.clone()).or_default())
    }

    /// Turns that are running, and jobs waiting for their conversation or a slot.
    pub fn load(&self) -> (usize, usize) {
        (self.settings.worker_threads - self.slots.available_permits(), self.queued.load(Ordering::SeqCst))
    }

    /// Marks the state of a running job and tells event waiters.
    pub fn set_state(&self, job: &Job, state: JobState) {
        job.set_state(state, crate::plane::now_ms());
        self.job_changes.send_modify(|n| *n += 1);
    }
}

/// The jobs of one agent, as event waits see them.
pub struct AgentJobs {
    pub runtime: Arc<Runtime>,
    pub agent_id: String,
}

impl JobFeed for AgentJobs {
    fn terminal_jobs(&self) -> Vec<TerminalJob> {
        self.runtime
            .terminal_jobs_of(&self.agent_id)
            .into_iter()
            .map(|job| TerminalJob {
                job_id: job.id.clone(),
                finished_at_ms: job.updated_at_ms(),
                job: job.event_json(),
            })
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.runtime.job_changes()
    }
}

fn forget_oldest(jobs: &mut Jobs) {
    while jobs.by_id.len() > MAX_JOBS_IN_MEMORY {
        let victim = jobs
            .order
            .iter()
            .find(|(_, id)| jobs.by_id.get(*id).is_some_and(|j| j.state().is_terminal()))
            .map(|(seq, id)| (*seq, id.clone()));
        let Some((seq, id)) = victim else { break };
        jobs.order.remove(&seq);
        jobs.by_id.remove(&id);
    }
}
