//! [`Store`] on one SQLite file: the state store of a single-host gateway.
//!
//! Why SQLite: one gateway process is the only writer, the data is small (agents, projects,
//! two role states, a bounded audit log), and an embedded database gives crash-safe
//! transactions without running anything beside the gateway. WAL mode lets a backup or an
//! operator's `sqlite3` read the file while the gateway writes it.
//!
//! Durability promise (of [`SqliteStore::open`]; the in-memory store is for tests): when a
//! [`Store`] method returns `Ok`, its transaction is in the WAL and the WAL has been fsynced
//! (`synchronous=FULL`, plus `fullfsync` where the OS needs it), so the change survives `kill -9` of the gateway and loss of power to the host. A method that
//! returns `Err` changed nothing. Nothing is buffered in this process, so there is no close or
//! flush to forget: dropping the store (or the process dying) loses no acknowledged write.
//!
//! What it never stores: a plaintext token. Project and role tokens arrive here already
//! hashed, and the schema rejects a token column value that is not lowercase SHA-256 hex, so
//! a caller that passes a raw token by mistake gets an error instead of a secret on disk. The
//! file is created with mode 0600 because session history and the audit log are still
//! private; SQLite gives its `-wal` and `-shm` files the mode of the database file.

use std::fmt::{Debug, Display};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::nodes::{InviteRecord, NodeBatch, NodeRecord, NodeSeqs, NodeSnapshot};
use super::{
    AgentRecord, AuditRecord, ConversationKey, JobRecord, ProjectKind, ProjectRecord, RoleKey, RoleState, Snapshot,
    Store, StoreError, StoreResult, StoredMessage, UsageRecord, UsageTotals,
};

/// Forward migrations; entry `n` takes the schema from version `n` to `n + 1`. The schema
/// version lives in `PRAGMA user_version`, which is 0 in a fresh file. Never edit an entry
/// that has shipped: add one.
const MIGRATIONS: &[&str] = &[
    // Version 1. STRICT so a wrongly typed value is an error instead of silently stored;
    // list-valued fields are JSON text because nothing queries inside them.
    "
    CREATE TABLE agents (
        id              TEXT PRIMARY KEY NOT NULL,
        name            TEXT NOT NULL,
        description     TEXT NOT NULL,
        is_default      INTEGER NOT NULL CHECK (is_default IN (0, 1)),
        capabilities    TEXT NOT NULL,
        identity_loaded INTEGER NOT NULL CHECK (identity_loaded IN (0, 1)),
        needs_hatching  INTEGER NOT NULL CHECK (needs_hatching IN (0, 1))
    ) STRICT;

    CREATE TABLE projects (
        id                  TEXT PRIMARY KEY NOT NULL,
        name                TEXT NOT NULL,
        vision              TEXT NOT NULL,
        status              TEXT NOT NULL,
        kind                TEXT NOT NULL CHECK (kind IN ('normal', 'system_builtin')),
        is_delete_protected INTEGER NOT NULL CHECK (is_delete_protected IN (0, 1)),
        -- '' is allowed for a project that has no token; anything else must be a hash.
        token_hash          TEXT NOT NULL CHECK (token_hash = ''
                                OR (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*')),
        token_locked        INTEGER NOT NULL CHECK (token_locked IN (0, 1)),
        created_at_ms       INTEGER NOT NULL,
        updated_at_ms       INTEGER NOT NULL,
        access_policy       TEXT NOT NULL,
        mounts              TEXT NOT NULL,
        binds               TEXT NOT NULL
    ) STRICT;

    CREATE TABLE bindings (
        agent_id   TEXT PRIMARY KEY NOT NULL,
        project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE
    ) STRICT;
    -- Without it the cascade of a project delete scans every binding.
    CREATE INDEX bindings_by_project ON bindings (project_id);

    CREATE TABLE role_state (
        role  TEXT PRIMARY KEY NOT NULL CHECK (role IN ('admin', 'user')),
        state TEXT NOT NULL
    ) STRICT;

    CREATE TABLE role_tokens (
        role          TEXT PRIMARY KEY NOT NULL CHECK (role IN ('admin', 'user')),
        sha256        TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
        updated_at_ms INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE audit (
        id             INTEGER PRIMARY KEY,
        timestamp_ms   INTEGER NOT NULL,
        agent_id       TEXT NOT NULL,
        control_type   TEXT NOT NULL,
        scope          TEXT NOT NULL,
        correlation_id TEXT,
        result         TEXT NOT NULL,
        error_code     TEXT
    ) STRICT;
    -- Index entries carry the rowid, so this also serves the per-agent newest-first tail.
    CREATE INDEX audit_by_agent ON audit (agent_id);
    ",
    // Version 2: the agent runtime's transcripts, usage and chat jobs.
    "
    CREATE TABLE messages (
        agent_id       TEXT NOT NULL,
        project_id     TEXT NOT NULL,
        session_key    TEXT NOT NULL,
        seq            INTEGER NOT NULL,
        role           TEXT NOT NULL,
        body           TEXT NOT NULL,
        job_id         TEXT,
        created_at_ms  INTEGER NOT NULL,
        PRIMARY KEY (agent_id, project_id, session_key, seq)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE usage (
        id             INTEGER PRIMARY KEY,
        agent_id       TEXT NOT NULL,
        project_id     TEXT NOT NULL,
        session_key    TEXT NOT NULL,
        user_key       TEXT NOT NULL,
        job_id         TEXT NOT NULL,
        model          TEXT NOT NULL,
        input_tokens   INTEGER NOT NULL,
        output_tokens  INTEGER NOT NULL,
        cost_usd       REAL NOT NULL,
        created_at_ms  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX usage_by_conversation ON usage (agent_id, project_id, session_key);
    CREATE INDEX usage_by_user_time ON usage (user_key, created_at_ms);
    CREATE TABLE jobs (
        id             TEXT PRIMARY KEY NOT NULL,
        seq            INTEGER NOT NULL,
        agent_id       TEXT NOT NULL,
        project_id     TEXT NOT NULL,
        session_key    TEXT NOT NULL,
        correlation_id TEXT,
        state          TEXT NOT NULL,
        error          TEXT,
        result         TEXT,
        log            TEXT NOT NULL,
        events         TEXT NOT NULL,
        created_at_ms  INTEGER NOT NULL,
        updated_at_ms  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX jobs_by_time ON jobs (created_at_ms);
    ",
    // Version 3: paired nodes, invites and pending joins. Secrets and invite tokens only as
    // SHA-256 hex; the rest of each record is JSON because nothing queries inside it.
    "
    CREATE TABLE nodes (
        id            TEXT PRIMARY KEY NOT NULL,
        secret_sha256 TEXT NOT NULL CHECK (length(secret_sha256) = 64 AND secret_sha256 NOT GLOB '*[^0-9a-f]*'),
        record        TEXT NOT NULL
    ) STRICT;
    CREATE TABLE node_invites (
        id            TEXT PRIMARY KEY NOT NULL,
        token_sha256  TEXT NOT NULL CHECK (length(token_sha256) = 64 AND token_sha256 NOT GLOB '*[^0-9a-f]*'),
        record        TEXT NOT NULL
    ) STRICT;
    CREATE TABLE node_pending_joins (
        id            TEXT PRIMARY KEY NOT NULL,
        record        TEXT NOT NULL
    ) STRICT;
    ",
];

/// Every distinct statement this store prepares fits in the cache, so none is re-parsed.
const STATEMENT_CACHE_CAPACITY: usize = 48;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const META_NEXT_PROJECT_SEQ: &str = "next_project_seq";
const META_NEXT_AUDIT_ID: &str = "next_audit_id";
const META_NEXT_JOB_SEQ: &str = "next_job_seq";
const META_NEXT_NODE_SEQ: &str = "next_node_seq";
const META_NEXT_INVITE_SEQ: &str = "next_invite_seq";
const META_NEXT_PENDING_JOIN_SEQ: &str = "next_pending_join_seq";

/// Raises a meta counter but never lowers it: a stale caller must not make a `proj-N` or an
/// audit id be issued twice.
const SQL_RAISE_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2)
     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)";

/// The SQLite state store. One connection, serialized by a mutex: every call is a short
/// local transaction and SQLite allows one writer at a time anyway.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens the database at `path`, creating it (mode 0600) and its schema if needed.
    ///
    /// Fails with [`StoreError::Corrupt`] if the file is not an SQLite database or was written
    /// by a newer version of the gateway, and with [`StoreError::Database`] if it cannot be
    /// opened for writing or WAL mode is unavailable (e.g. on a network filesystem).
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        create_private_file(path)?;
        // No SQLITE_OPEN_CREATE: the file was created above with the right mode, and a file
        // that disappeared in between should be an error, not a fresh 0644 database.
        // No SQLITE_OPEN_URI: a path is a path, even one that starts with "file:".
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        Self::init(conn, true)
    }

    /// A private in-memory database with the same schema, for tests. Not durable.
    pub fn open_in_memory() -> StoreResult<SqliteStore> {
        Self::init(Connection::open_in_memory()?, false)
    }

    fn init(mut conn: Connection, on_disk: bool) -> StoreResult<SqliteStore> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Set before the first write so that even the schema creation is fsynced. fullfsync
        // matters on macOS, where plain fsync does not reach stable storage; elsewhere it is
        // a no-op.
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA fullfsync = ON;
             PRAGMA checkpoint_fullfsync = ON;
             PRAGMA foreign_keys = ON;",
        )?;
        // delete_project relies on ON DELETE CASCADE; a build without foreign keys would
        // silently leave dangling bindings.
        let foreign_keys: i64 = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
        if foreign_keys != 1 {
            return Err(StoreError::Database("this SQLite build does not enforce foreign keys".into()));
        }
        if on_disk {
            let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Database(format!(
                    "cannot switch the database to WAL mode (journal_mode is {mode:?})"
                )));
            }
        }
        migrate(&mut conn)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    /// A panic while the lock was held (a bug, or allocation failure) poisons the mutex. The
    /// connection is still usable: the only state that matters is SQLite's, and dropping the
    /// interrupted `Transaction` during unwinding rolled it back. Refusing every later call
    /// would turn one bug into a gateway that cannot persist anything, so the lock is
    /// recovered, after making sure no transaction was left open.
    fn lock(&self) -> StoreResult<MutexGuard<'_, Connection>> {
        match self.conn.lock() {
            Ok(guard) => Ok(guard),
            Err(poisoned) => {
                let guard = poisoned.into_inner();
                if !guard.is_autocommit() {
                    guard.execute_batch("ROLLBACK")?;
                }
                self.conn.clear_poison();
                Ok(guard)
            }
        }
    }
}

/// Creates `path` with mode 0600 unless it exists. An existing file keeps its mode: the
/// operator may have chosen it.
fn create_private_file(path: &Path) -> StoreResult<()> {
    let io_error = |what: &str, e: io::Error| StoreError::Database(format!("cannot {what} {}: {e}", path.display()));
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => {
            // SQLite fsyncs the directory when it creates the WAL, but not for the main file,
            // which it assumes exists. Without this a power loss could lose the new file's
            // directory entry while its WAL survives.
            let dir = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("sync the directory of", e))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error("create", e)),
    }
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    // IMMEDIATE: two processes opening a fresh file at once must not both run version 1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len();
    let Ok(found) = usize::try_from(found) else {
        return Err(StoreError::Corrupt(format!("database schema version {found} was not written by this gateway")));
    };
    if found > known {
        return Err(StoreError::Corrupt(format!(
            "database schema version {found} is newer than this gateway supports \
             (version {known}); refusing to open it so that a newer gateway's data is not \
             damaged: run the newer gateway or point this one at another file"
        )));
    }
    if found < known {
        for step in &MIGRATIONS[found..] {
            tx.execute_batch(step)?;
        }
        tx.pragma_update(None, "user_version", to_sql_int("schema version", known as u64)?)?;
    }
    tx.commit()?;
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // SQLite's own verdict that the file is damaged or not a database at all.
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// SQLite integers are signed 64-bit; a larger value is a caller bug, refused before it wraps.
fn to_sql_int(what: &str, value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Database(format!("{what} {value} is out of SQLite's range")))
}

fn from_sql_int(table: &str, key: &dyn Debug, column: &str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(table, key, column, format!("negative value {value}")))
}

fn corrupt(table: &str, key: &dyn Debug, column: &str, why: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{table} row {key:?}, column {column}: {why}"))
}

fn encode<T: Serialize>(what: &str, value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(format!("cannot encode {what} as JSON: {e}")))
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, column: &str, json: &str) -> StoreResult<T> {
    serde_json::from_str(json).map_err(|e| corrupt(table, &key, column, e))
}

fn kind_to_sql(kind: ProjectKind) -> &'static str {
    match kind {
        ProjectKind::Normal => "normal",
        ProjectKind::SystemBuiltin => "system_builtin",
    }
}

fn kind_from_sql(key: &str, text: &str) -> StoreResult<ProjectKind> {
    match text {
        "normal" => Ok(ProjectKind::Normal),
        "system_builtin" => Ok(ProjectKind::SystemBuiltin),
        other => Err(corrupt("projects", &key, "kind", format!("unknown kind {other:?}"))),
    }
}

fn role_to_sql(role: RoleKey) -> &'static str {
    match role {
        RoleKey::Admin => "admin",
        RoleKey::User => "user",
    }
}

fn role_from_sql(table: &str, text: &str) -> StoreResult<RoleKey> {
    match text {
        "admin" => Ok(RoleKey::Admin),
        "user" => Ok(RoleKey::User),
        other => Err(corrupt(table, &other, "role", "unknown role")),
    }
}

fn now_ms() -> i64 {
    // A clock before 1970 is not worth failing a token rotation over; the column is only
    // informational.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn load_agents(conn: &Connection) -> StoreResult<Vec<AgentRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, description, is_default, capabilities, identity_loaded, needs_hatching
         FROM agents ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    let mut agents = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let capabilities: String = row.get(4)?;
        agents.push(AgentRecord {
            capabilities: decode("agents", &id, "capabilities", &capabilities)?,
            name: row.get(1)?,
            description: row.get(2)?,
            is_default: row.get(3)?,
            identity_loaded: row.get(5)?,
            needs_hatching: row.get(6)?,
            id,
        });
    }
    Ok(agents)
}

fn load_projects(conn: &Connection) -> StoreResult<Vec<ProjectRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, vision, status, kind, is_delete_protected, token_hash, token_locked,
                created_at_ms, updated_at_ms, access_policy, mounts, binds
         FROM projects ORDER BY created_at_ms, id",
    )?;
    let mut rows = stmt.query([])?;
    let mut projects = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let kind: String = row.get(4)?;
        let access_policy: String = row.get(10)?;
        let mounts: String = row.get(11)?;
        let binds: String = row.get(12)?;
        projects.push(ProjectRecord {
            kind: kind_from_sql(&id, &kind)?,
            access_policy: decode("projects", &id, "access_policy", &access_policy)?,
            mounts: decode("projects", &id, "mounts", &mounts)?,
            binds: decode("projects", &id, "binds", &binds)?,
            name: row.get(1)?,
            vision: row.get(2)?,
            status: row.get(3)?,
            is_delete_protected: row.get(5)?,
            token_hash: row.get(6)?,
            token_locked: row.get(7)?,
            created_at_ms: row.get(8)?,
            updated_at_ms: row.get(9)?,
            id,
        });
    }
    Ok(projects)
}

fn load_bindings(conn: &Connection, snapshot: &mut Snapshot) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached("SELECT agent_id, project_id FROM bindings")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        snapshot.bindings.insert(row.get(0)?, row.get(1)?);
    }
    Ok(())
}

fn load_role_states(conn: &Connection, snapshot: &mut Snapshot) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached("SELECT role, state FROM role_state")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let role: String = row.get(0)?;
        let state: String = row.get(1)?;
        let state: RoleState = decode("role_state", &role, "state", &state)?;
        match role_from_sql("role_state", &role)? {
            RoleKey::Admin => snapshot.admin = state,
            RoleKey::User => snapshot.user = state,
        }
    }
    Ok(())
}

fn load_role_tokens(conn: &Connection, snapshot: &mut Snapshot) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached("SELECT role, sha256 FROM role_tokens")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let role: String = row.get(0)?;
        snapshot.role_token_hashes.insert(role_from_sql("role_tokens", &role)?, row.get(1)?);
    }
    Ok(())
}

fn load_meta(conn: &Connection, key: &str) -> StoreResult<Option<u64>> {
    let value: Option<i64> =
        conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()?;
    value.map(|v| from_sql_int("meta", &key, "value", v)).transpose()
}

fn load_next_audit_id(conn: &Connection) -> StoreResult<u64> {
    let max_id: Option<i64> = conn.prepare_cached("SELECT max(id) FROM audit")?.query_row([], |r| r.get(0))?;
    let after_max = match max_id {
        Some(id) => from_sql_int("audit", &id, "id", id)?.saturating_add(1),
        None => 1,
    };
    // The meta counter outlives pruning; max(id) covers a database whose counter was lost.
    let counter = load_meta(conn, META_NEXT_AUDIT_ID)?.unwrap_or(1);
    Ok(after_max.max(counter))
}

fn audit_from_row(row: &rusqlite::Row<'_>) -> StoreResult<AuditRecord> {
    let id: i64 = row.get(0)?;
    Ok(AuditRecord {
        id: from_sql_int("audit", &id, "id", id)?,
        timestamp_ms: row.get(1)?,
        agent_id: row.get(2)?,
        control_type: row.get(3)?,
        scope: row.get(4)?,
        correlation_id: row.get(5)?,
        result: row.get(6)?,
        error_code: row.get(7)?,
    })
}

impl Store for SqliteStore {
    fn load(&self) -> StoreResult<Snapshot> {
        let mut conn = self.lock()?;
        // One read transaction, so the tables are seen at a single point in time.
        let tx = conn.transaction()?;
        let mut snapshot = Snapshot {
            agents: load_agents(&tx)?,
            projects: load_projects(&tx)?,
            next_project_seq: load_meta(&tx, META_NEXT_PROJECT_SEQ)?.unwrap_or(1),
            next_audit_id: load_next_audit_id(&tx)?,
            ..Snapshot::default()
        };
        load_bindings(&tx, &mut snapshot)?;
        load_role_states(&tx, &mut snapshot)?;
        load_role_tokens(&tx, &mut snapshot)?;
        tx.commit()?;
        Ok(snapshot)
    }

    fn upsert_agent(&self, agent: &AgentRecord) -> StoreResult<()> {
        let capabilities = encode("agent capabilities", &agent.capabilities)?;
        let conn = self.lock()?;
        conn.prepare_cached(
            "INSERT INTO agents
                 (id, name, description, is_default, capabilities, identity_loaded, needs_hatching)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET
                 name = excluded.name,
                 description = excluded.description,
                 is_default = excluded.is_default,
                 capabilities = excluded.capabilities,
                 identity_loaded = excluded.identity_loaded,
                 needs_hatching = excluded.needs_hatching",
        )?
        .execute(params![
            agent.id,
            agent.name,
            agent.description,
            agent.is_default,
            capabilities,
            agent.identity_loaded,
            agent.needs_hatching,
        ])?;
        Ok(())
    }

    fn upsert_project(&self, project: &ProjectRecord, next_project_seq: u64) -> StoreResult<()> {
        let next_project_seq = to_sql_int("next_project_seq", next_project_seq)?;
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        write_project(&tx, project)?;
        tx.prepare_cached(SQL_RAISE_META)?.execute(params![META_NEXT_PROJECT_SEQ, next_project_seq])?;
        tx.commit()?;
        Ok(())
    }

    fn load_nodes(&self) -> StoreResult<NodeSnapshot> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let mut snapshot = NodeSnapshot {
            seqs: NodeSeqs {
                node: load_meta(&tx, META_NEXT_NODE_SEQ)?.unwrap_or(1),
                invite: load_meta(&tx, META_NEXT_INVITE_SEQ)?.unwrap_or(1),
                pending_join: load_meta(&tx, META_NEXT_PENDING_JOIN_SEQ)?.unwrap_or(1),
            },
            ..NodeSnapshot::default()
        };
        for (id, hash, record) in load_rows(&tx, "SELECT id, secret_sha256, record FROM nodes ORDER BY id")? {
            let mut node: NodeRecord = decode("nodes", &id, "record", &record)?;
            node.secret_sha256 = hash.unwrap_or_default();
            snapshot.nodes.push(node);
        }
        for (id, hash, record) in load_rows(&tx, "SELECT id, token_sha256, record FROM node_invites ORDER BY id")? {
            let mut invite: InviteRecord = decode("node_invites", &id, "record", &record)?;
            invite.token_sha256 = hash.unwrap_or_default();
            snapshot.invites.push(invite);
        }
        for (id, _, record) in load_rows(&tx, "SELECT id, NULL, record FROM node_pending_joins ORDER BY id")? {
            snapshot.pending_joins.push(decode("node_pending_joins", &id, "record", &record)?);
        }
        tx.commit()?;
        Ok(snapshot)
    }

    fn write_nodes(&self, batch: &NodeBatch) -> StoreResult<()> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        for node in &batch.put_nodes {
            tx.prepare_cached(
                "INSERT INTO nodes (id, secret_sha256, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET secret_sha256 = excluded.secret_sha256, record = excluded.record",
            )?
            .execute(params![node.id, node.secret_sha256, encode("node", node)?])?;
        }
        for id in &batch.removed_nodes {
            tx.prepare_cached("DELETE FROM nodes WHERE id = ?1")?.execute([id])?;
        }
        for invite in &batch.put_invites {
            tx.prepare_cached(
                "INSERT INTO node_invites (id, token_sha256, record) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256, record = excluded.record",
            )?
            .execute(params![invite.id, invite.token_sha256, encode("invite", invite)?])?;
        }
        for id in &batch.removed_invites {
            tx.prepare_cached("DELETE FROM node_invites WHERE id = ?1")?.execute([id])?;
        }
        for join in &batch.put_pending_joins {
            tx.prepare_cached(
                "INSERT INTO node_pending_joins (id, record) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            )?
            .execute(params![join.id, encode("pending join", join)?])?;
        }
        for id in &batch.removed_pending_joins {
            tx.prepare_cached("DELETE FROM node_pending_joins WHERE id = ?1")?.execute([id])?;
        }
        for project in &batch.put_projects {
            write_project(&tx, project)?;
        }
        for (key, value) in [
            (META_NEXT_NODE_SEQ, batch.seqs.node),
            (META_NEXT_INVITE_SEQ, batch.seqs.invite),
            (META_NEXT_PENDING_JOIN_SEQ, batch.seqs.pending_join),
        ] {
            tx.prepare_cached(SQL_RAISE_META)?.execute(params![key, to_sql_int(key, value)?])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_project(&self, project_id: &str) -> StoreResult<()> {
        // The bindings go with it through ON DELETE CASCADE, in the same implicit transaction.
        self.lock()?.prepare_cached("DELETE FROM projects WHERE id = ?1")?.execute([project_id])?;
        Ok(())
    }

    fn set_binding(&self, agent_id: &str, project_id: Option<&str>) -> StoreResult<()> {
        let conn = self.lock()?;
        match project_id {
            // A binding to a project that does not exist fails the foreign key check.
            Some(project_id) => conn
                .prepare_cached(
                    "INSERT INTO bindings (agent_id, project_id) VALUES (?1, ?2)
                     ON CONFLICT (agent_id) DO UPDATE SET project_id = excluded.project_id",
                )?
                .execute([agent_id, project_id])?,
            None => conn.prepare_cached("DELETE FROM bindings WHERE agent_id = ?1")?.execute([agent_id])?,
        };
        Ok(())
    }

    fn put_role_state(&self, role: RoleKey, state: &RoleState) -> StoreResult<()> {
        let state = encode("role state", state)?;
        self.lock()?
            .prepare_cached(
                "INSERT INTO role_state (role, state) VALUES (?1, ?2)
                 ON CONFLICT (role) DO UPDATE SET state = excluded.state",
            )?
            .execute(params![role_to_sql(role), state])?;
        Ok(())
    }

    fn put_role_token_hash(&self, role: RoleKey, sha256_hex: &str) -> StoreResult<()> {
        self.lock()?
            .prepare_cached(
                "INSERT INTO role_tokens (role, sha256, updated_at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (role) DO UPDATE SET
                     sha256 = excluded.sha256,
                     updated_at_ms = excluded.updated_at_ms",
            )?
            .execute(params![role_to_sql(role), sha256_hex, now_ms()])?;
        Ok(())
    }

    fn append_audit(&self, record: &AuditRecord, retain: usize) -> StoreResult<()> {
        let id = to_sql_int("audit id", record.id)?;
        let next_id = to_sql_int("next audit id", record.id.saturating_add(1))?;
        // Ids are consecutive, so everything at or below `id - retain` is outside the newest
        // `retain`; deleting by rowid range costs nothing like counting rows would.
        let prune_through = record.id.saturating_sub(u64::try_from(retain).unwrap_or(u64::MAX));
        let prune_through = to_sql_int("audit id", prune_through)?;
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        tx.prepare_cached(
            "INSERT INTO audit
                 (id, timestamp_ms, agent_id, control_type, scope, correlation_id, result,
                  error_code)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            id,
            record.timestamp_ms,
            record.agent_id,
            record.control_type,
            record.scope,
            record.correlation_id,
            record.result,
            record.error_code,
        ])?;
        // Kept in meta because pruning can delete every row, after which max(id) would
        // hand out ids that earlier exports of the log already used.
        tx.prepare_cached(SQL_RAISE_META)?.execute(params![META_NEXT_AUDIT_ID, next_id])?;
        tx.prepare_cached("DELETE FROM audit WHERE id <= ?1")?.execute([prune_through])?;
        tx.commit()?;
        Ok(())
    }

    fn audit_tail(&self, limit: usize, agent_id: Option<&str>) -> StoreResult<Vec<AuditRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock()?;
        // Two statements rather than `agent_id = ?1 OR ?1 IS NULL`, which would stop SQLite
        // from using the agent index.
        let mut stmt;
        let mut rows = match agent_id {
            Some(agent_id) => {
                stmt = conn.prepare_cached(
                    "SELECT id, timestamp_ms, agent_id, control_type, scope, correlation_id,
                            result, error_code
                     FROM audit WHERE agent_id = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                stmt.query(params![agent_id, limit])?
            }
            None => {
                stmt = conn.prepare_cached(
                    "SELECT id, timestamp_ms, agent_id, control_type, scope, correlation_id,
                            result, error_code
                     FROM audit ORDER BY id DESC LIMIT ?1",
                )?;
                stmt.query([limit])?
            }
        };
        let mut records = Vec::new();
        while let Some(row) = rows.next()? {
            records.push(audit_from_row(row)?);
        }
        Ok(records)
    }

    fn append_message(
        &self,
        conversation: &ConversationKey,
        role: &str,
        body: &serde_json::Value,
        job_id: Option<&str>,
        created_at_ms: i64,
    ) -> StoreResult<u64> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let seq = insert_message(&tx, conversation, role, body, job_id, created_at_ms)?;
        tx.commit()?;
        Ok(seq)
    }

    fn latest_message_with_role(
        &self,
        conversation: &ConversationKey,
        role: &str,
    ) -> StoreResult<Option<StoredMessage>> {
        let ConversationKey { agent_id, project_id, session_key } = conversation;
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, role, body, job_id, created_at_ms FROM messages
             WHERE agent_id = ?1 AND project_id = ?2 AND session_key = ?3 AND role = ?4 ORDER BY seq DESC LIMIT 1",
        )?;
        let rows = stmt.query(params![agent_id, project_id, session_key, role])?;
        Ok(messages_from_rows(rows, session_key)?.pop())
    }

    fn conversation_from(
        &self,
        conversation: &ConversationKey,
        from_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let ConversationKey { agent_id, project_id, session_key } = conversation;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, role, body, job_id, created_at_ms FROM messages
             WHERE agent_id = ?1 AND project_id = ?2 AND session_key = ?3 AND seq >= ?4 ORDER BY seq LIMIT ?5",
        )?;
        let rows = stmt.query(params![agent_id, project_id, session_key, to_sql_int("seq", from_seq)?, limit])?;
        messages_from_rows(rows, session_key)
    }

    fn conversation_tail(&self, conversation: &ConversationKey, limit: usize) -> StoreResult<Vec<StoredMessage>> {
        let ConversationKey { agent_id, project_id, session_key } = conversation;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, role, body, job_id, created_at_ms FROM (
                 SELECT seq, role, body, job_id, created_at_ms FROM messages
                 WHERE agent_id = ?1 AND project_id = ?2 AND session_key = ?3 ORDER BY seq DESC LIMIT ?4
             ) ORDER BY seq",
        )?;
        let rows = stmt.query(params![agent_id, project_id, session_key, limit])?;
        messages_from_rows(rows, session_key)
    }

    fn message_count(&self, conversation: &ConversationKey) -> StoreResult<u64> {
        let ConversationKey { agent_id, project_id, session_key } = conversation;
        let conn = self.lock()?;
        let n: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM messages
                 WHERE agent_id = ?1 AND project_id = ?2 AND session_key = ?3 AND role != 'summary'",
            )?
            .query_row(params![agent_id, project_id, session_key], |r| r.get(0))?;
        from_sql_int("messages", &session_key, "count", n)
    }

    fn record_usage(&self, usage: &UsageRecord) -> StoreResult<()> {
        let ConversationKey { agent_id, project_id, session_key } = &usage.conversation;
        let conn = self.lock()?;
        conn.prepare_cached(
            "INSERT INTO usage (agent_id, project_id, session_key, user_key, job_id, model, input_tokens,
                                output_tokens, cost_usd, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            agent_id,
            project_id,
            session_key,
            usage.user,
            usage.job_id,
            usage.model,
            to_sql_int("input tokens", usage.input_tokens)?,
            to_sql_int("output tokens", usage.output_tokens)?,
            usage.cost_usd,
            usage.created_at_ms,
        ])?;
        Ok(())
    }

    fn usage_of_conversation(&self, conversation: &ConversationKey) -> StoreResult<UsageTotals> {
        let ConversationKey { agent_id, project_id, session_key } = conversation;
        let conn = self.lock()?;
        let totals = conn
            .prepare_cached(
                "SELECT coalesce(sum(input_tokens + output_tokens), 0), coalesce(sum(cost_usd), 0.0) FROM usage
                 WHERE agent_id = ?1 AND project_id = ?2 AND session_key = ?3",
            )?
            .query_row(params![agent_id, project_id, session_key], totals_from_row)?;
        totals_checked(totals, session_key)
    }

    fn usage_of_user_since(&self, user: &str, since_ms: i64) -> StoreResult<UsageTotals> {
        let conn = self.lock()?;
        let totals = conn
            .prepare_cached(
                "SELECT coalesce(sum(input_tokens + output_tokens), 0), coalesce(sum(cost_usd), 0.0) FROM usage
                 WHERE user_key = ?1 AND created_at_ms >= ?2",
            )?
            .query_row(params![user, since_ms], totals_from_row)?;
        totals_checked(totals, user)
    }

    fn put_job(&self, job: &JobRecord) -> StoreResult<()> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        write_job(&tx, job)?;
        tx.commit()?;
        Ok(())
    }

    fn start_turn(&self, job: &JobRecord, prompt: &serde_json::Value, created_at_ms: i64) -> StoreResult<u64> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        write_job(&tx, job)?;
        let seq = insert_message(&tx, &job.conversation, "user", prompt, Some(&job.id), created_at_ms)?;
        tx.commit()?;
        Ok(seq)
    }

    fn reserve_job_seqs(&self, next: u64) -> StoreResult<()> {
        let conn = self.lock()?;
        conn.prepare_cached(SQL_RAISE_META)?.execute(params![META_NEXT_JOB_SEQ, to_sql_int("next job seq", next)?])?;
        Ok(())
    }

    fn load_jobs(&self, since_ms: i64) -> StoreResult<(Vec<JobRecord>, u64)> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        // Expired jobs go here, at start-up, rather than on every write.
        tx.prepare_cached("DELETE FROM jobs WHERE created_at_ms < ?1")?.execute([since_ms])?;
        let mut jobs = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT id, seq, agent_id, project_id, session_key, correlation_id, state, error, result, log,
                        events, created_at_ms, updated_at_ms
                 FROM jobs ORDER BY seq",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let seq: i64 = row.get(1)?;
                jobs.push(JobRecord {
                    seq: from_sql_int("jobs", &id, "seq", seq)?,
                    conversation: ConversationKey {
                        agent_id: row.get(2)?,
                        project_id: row.get(3)?,
                        session_key: row.get(4)?,
                    },
                    correlation_id: row.get(5)?,
                    state: row.get(6)?,
                    error: row.get(7)?,
                    result: row.get(8)?,
                    log: row.get(9)?,
                    events: row.get(10)?,
                    created_at_ms: row.get(11)?,
                    updated_at_ms: row.get(12)?,
                    id,
                });
            }
        }
        let next = load_meta(&tx, META_NEXT_JOB_SEQ)?.unwrap_or(1);
        tx.commit()?;
        Ok((jobs, next))
    }
}

/// Inserts or updates one project row. An UPSERT, not INSERT OR REPLACE: REPLACE deletes
/// the old row first, and that delete would cascade to the project's bindings.
fn write_project(tx: &rusqlite::Transaction<'_>, project: &ProjectRecord) -> StoreResult<()> {
    let access_policy = encode("project access_policy", &project.access_policy)?;
    let mounts = encode("project mounts", &project.mounts)?;
    let binds = encode("project binds", &project.binds)?;
    tx.prepare_cached(
        "INSERT INTO projects
             (id, name, vision, status, kind, is_delete_protected, token_hash, token_locked,
              created_at_ms, updated_at_ms, access_policy, mounts, binds)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (id) DO UPDATE SET
             name = excluded.name,
             vision = excluded.vision,
             status = excluded.status,
             kind = excluded.kind,
             is_delete_protected = excluded.is_delete_protected,
             token_hash = excluded.token_hash,
             token_locked = excluded.token_locked,
             created_at_ms = excluded.created_at_ms,
             updated_at_ms = excluded.updated_at_ms,
             access_policy = excluded.access_policy,
             mounts = excluded.mounts,
             binds = excluded.binds",
    )?
    .execute(params![
        project.id,
        project.name,
        project.vision,
        project.status,
        kind_to_sql(project.kind),
        project.is_delete_protected,
        project.token_hash,
        project.token_locked,
        project.created_at_ms,
        project.updated_at_ms,
        access_policy,
        mounts,
        binds,
    ])?;
    Ok(())
}

/// `(id, digest or NULL, record JSON)` rows of one node table.
fn load_rows(conn: &Connection, sql: &str) -> StoreResult<Vec<(String, Option<String>, String)>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push((row.get(0)?, row.get(1)?, row.get(2)?));
    }
    Ok(out)
}

/// Appends a message with the next seq of its conversation.
fn insert_message(
    tx: &rusqlite::Transaction<'_>,
    conversation: &ConversationKey,
    role: &str,
    body: &serde_json::Value,
    job_id: Option<&str>,
    created_at_ms: i64,
) -> StoreResult<u64> {
    let ConversationKey { agent_id, project_id, session_key } = conversation;
    let body = encode("message", body)?;
    let last: Option<i64> = tx
        .prepare_cached("SELECT max(seq) FROM messages WHERE agent_id = ?1 AND project_id = ?2 AND session_key = ?3")?
        .query_row(params![agent_id, project_id, session_key], |r| r.get(0))?;
    let seq = last.unwrap_or(0).saturating_add(1);
    tx.prepare_cached(
        "INSERT INTO messages (agent_id, project_id, session_key, seq, role, body, job_id, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![agent_id, project_id, session_key, seq, role, body, job_id, created_at_ms])?;
    from_sql_int("messages", &session_key, "seq", seq)
}

/// Inserts or replaces a job and raises the job counter past it.
fn write_job(tx: &rusqlite::Transaction<'_>, job: &JobRecord) -> StoreResult<()> {
    let ConversationKey { agent_id, project_id, session_key } = &job.conversation;
    let seq = to_sql_int("job seq", job.seq)?;
    let next = to_sql_int("next job seq", job.seq.saturating_add(1))?;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO jobs (id, seq, agent_id, project_id, session_key, correlation_id, state, error,
                                      result, log, events, created_at_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        job.id,
        seq,
        agent_id,
        project_id,
        session_key,
        job.correlation_id,
        job.state,
        job.error,
        job.result,
        job.log,
        job.events,
        job.created_at_ms,
        job.updated_at_ms,
    ])?;
    tx.prepare_cached(SQL_RAISE_META)?.execute(params![META_NEXT_JOB_SEQ, next])?;
    Ok(())
}

fn messages_from_rows(mut rows: rusqlite::Rows<'_>, session_key: &str) -> StoreResult<Vec<StoredMessage>> {
    let mut messages = Vec::new();
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body: String = row.get(2)?;
        messages.push(StoredMessage {
            seq: from_sql_int("messages", &session_key, "seq", seq)?,
            role: row.get(1)?,
            body: decode("messages", session_key, "body", &body)?,
            job_id: row.get(3)?,
            created_at_ms: row.get(4)?,
        });
    }
    Ok(messages)
}

fn totals_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, f64)> {
    Ok((row.get(0)?, row.get(1)?))
}

fn totals_checked((tokens, cost_usd): (i64, f64), key: &str) -> StoreResult<UsageTotals> {
    Ok(UsageTotals { tokens: from_sql_int("usage", &key, "tokens", tokens)?, cost_usd })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::store::{BindRecord, MountRecord, SessionHistoryEntry, Target};

    const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn db_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("state.db")
    }

    fn agent(id: &str) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            name: format!("{id} name"),
            description: "writes \"quotes\" and ünïcode".into(),
            is_default: id == "mother",
            capabilities: vec!["chat".into(), "fs.write".into()],
            identity_loaded: true,
            needs_hatching: id != "mother",
        }
    }

    fn project(id: &str, created_at_ms: i64) -> ProjectRecord {
        ProjectRecord {
            id: id.into(),
            name: format!("{id} name"),
            vision: "a vision".into(),
            status: "active".into(),
            kind: ProjectKind::Normal,
            is_delete_protected: false,
            token_hash: HASH_A.into(),
            token_locked: true,
            created_at_ms,
            updated_at_ms: created_at_ms + 5,
            access_policy: serde_json::json!({"invoke": {"allow": ["*"]}, "n": 1}),
            mounts: vec![MountRecord {
                mount_path: "/src".into(),
                node_id: "node-1".into(),
                export_name: "repo".into(),
            }],
            binds: vec![BindRecord { bind_path: "/work".into(), target_path: "/src/work".into() }],
        }
    }

    fn role_state(agent_id: &str) -> RoleState {
        RoleState {
            last_target: Some(Target { agent_id: agent_id.into(), project_id: "proj-1".into() }),
            history: vec![SessionHistoryEntry {
                session_key: "s-1".into(),
                agent_id: agent_id.into(),
                project_id: "proj-1".into(),
                last_active_ms: 1_700_000_000_000,
                message_count: 42,
                summary: "did things".into(),
            }],
        }
    }

    fn audit(id: u64, agent_id: &str) -> AuditRecord {
        AuditRecord {
            id,
            timestamp_ms: 1_700_000_000_000 + id as i64,
            agent_id: agent_id.into(),
            control_type: "project_up".into(),
            scope: "project".into(),
            correlation_id: id.is_multiple_of(2).then(|| format!("c-{id}")),
            result: "ok".into(),
            error_code: id.is_multiple_of(3).then(|| "E_DENIED".into()),
        }
    }

    fn ids(records: &[AuditRecord]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    #[test]
    fn every_record_type_round_trips_through_a_reopened_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let mut builtin = project("system", 10);
        builtin.kind = ProjectKind::SystemBuiltin;
        builtin.is_delete_protected = true;
        builtin.token_hash = String::new();
        builtin.token_locked = false;
        builtin.mounts.clear();
        builtin.binds.clear();
        {
            let store = SqliteStore::open(&path).unwrap();
            store.upsert_agent(&agent("mother")).unwrap();
            store.upsert_agent(&agent("coder")).unwrap();
            // Inserted out of creation order: load() orders by created_at_ms.
            store.upsert_project(&project("proj-1", 20), 2).unwrap();
            store.upsert_project(&builtin, 2).unwrap();
            store.set_binding("coder", Some("proj-1")).unwrap();
            store.set_binding("mother", Some("system")).unwrap();
            store.put_role_state(RoleKey::Admin, &role_state("mother")).unwrap();
            store.put_role_state(RoleKey::User, &role_state("coder")).unwrap();
            store.put_role_token_hash(RoleKey::Admin, HASH_A).unwrap();
            store.put_role_token_hash(RoleKey::User, HASH_B).unwrap();
            store.append_audit(&audit(1, "mother"), 100).unwrap();
            store.append_audit(&audit(2, "coder"), 100).unwrap();
        }

        let store = SqliteStore::open(&path).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.agents, vec![agent("coder"), agent("mother")]);
        assert_eq!(snap.projects, vec![builtin, project("proj-1", 20)]);
        assert_eq!(
            snap.bindings,
            [("coder", "proj-1"), ("mother", "system")].map(|(a, p)| (a.to_string(), p.to_string())).into()
        );
        assert_eq!(snap.admin, role_state("mother"));
        assert_eq!(snap.user, role_state("coder"));
        assert_eq!(
            snap.role_token_hashes,
            [(RoleKey::Admin, HASH_A.to_string()), (RoleKey::User, HASH_B.to_string())].into()
        );
        assert_eq!(snap.next_project_seq, 2);
        assert_eq!(snap.next_audit_id, 3);
        assert_eq!(store.audit_tail(10, None).unwrap(), vec![audit(2, "coder"), audit(1, "mother")]);
    }

    #[test]
    fn node_batches_round_trip_and_refuse_plaintext_secrets() {
        use crate::store::nodes::{InviteRecord, NodeBatch, NodeRecord, NodeSeqs, PendingJoinRecord, Platform};
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let node = NodeRecord {
            id: "node-1".into(),
            name: "laptop".into(),
            fs_url: "ws://h/v2/fs".into(),
            secret_sha256: HASH_A.into(),
            platform: Platform::default(),
            labels: [("site".to_owned(), "lab".to_owned())].into(),
            services: vec![serde_json::json!({"service_id": "fs"})],
            joined_at_ms: 1,
            last_seen_ms: 2,
            lease_expires_at_ms: 3,
        };
        let invite = InviteRecord {
            id: "invite-1".into(),
            token_sha256: HASH_B.into(),
            created_at_ms: 1,
            expires_at_ms: 9,
            redeemed: true,
        };
        let pending = PendingJoinRecord {
            id: "pending-join-1".into(),
            node_name: "edge".into(),
            fs_url: String::new(),
            platform: Platform::default(),
            requested_at_ms: 4,
        };
        let mut with_mount = project("proj-1", 20);
        {
            let store = SqliteStore::open(&path).unwrap();
            store.upsert_project(&with_mount, 2).unwrap();
            with_mount.mounts.clear();
            let batch = NodeBatch {
                put_nodes: vec![node.clone()],
                put_invites: vec![invite.clone()],
                put_pending_joins: vec![pending.clone()],
                put_projects: vec![with_mount.clone()],
                seqs: NodeSeqs { node: 2, invite: 2, pending_join: 2 },
                ..NodeBatch::default()
            };
            store.write_nodes(&batch).unwrap();
            let mut plaintext = node.clone();
            plaintext.id = "node-2".into();
            plaintext.secret_sha256 = "secret-0123456789abcdef0123456789abcdef".into();
            let refused = NodeBatch { put_nodes: vec![plaintext], ..NodeBatch::default() };
            assert!(store.write_nodes(&refused).is_err(), "a plaintext secret must be refused");
        }
        let store = SqliteStore::open(&path).unwrap();
        let snap = store.load_nodes().unwrap();
        assert_eq!(snap.nodes, vec![node]);
        assert_eq!(snap.invites, vec![invite]);
        assert_eq!(snap.pending_joins, vec![pending]);
        assert_eq!(snap.seqs, NodeSeqs { node: 2, invite: 2, pending_join: 2 });
        assert_eq!(store.load().unwrap().projects, vec![with_mount], "the mount change is in the same batch");
        let removal = NodeBatch {
            removed_nodes: vec!["node-1".into()],
            removed_pending_joins: vec!["pending-join-1".into()],
            seqs: NodeSeqs { node: 1, invite: 1, pending_join: 1 },
            ..NodeBatch::default()
        };
        store.write_nodes(&removal).unwrap();
        let snap = store.load_nodes().unwrap();
        assert!(snap.nodes.is_empty() && snap.pending_joins.is_empty());
        assert_eq!(snap.seqs.node, 2, "id counters never go back");
    }

    #[test]
    fn an_empty_database_loads_defaults() {
        let store = SqliteStore::open_in_memory().unwrap();
        let snap = store.load().unwrap();
        assert!(snap.agents.is_empty() && snap.projects.is_empty() && snap.bindings.is_empty());
        assert_eq!(snap.admin, RoleState::default());
        assert_eq!(snap.user, RoleState::default());
        assert!(snap.role_token_hashes.is_empty());
        assert_eq!((snap.next_project_seq, snap.next_audit_id), (1, 1));
    }

    #[test]
    fn upserts_replace_values_in_place() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.upsert_agent(&agent("coder")).unwrap();
        let mut changed = agent("coder");
        changed.capabilities = vec![];
        changed.needs_hatching = false;
        store.upsert_agent(&changed).unwrap();

        store.upsert_project(&project("proj-1", 1), 2).unwrap();
        store.set_binding("coder", Some("proj-1")).unwrap();
        let mut renamed = project("proj-1", 1);
        renamed.name = "renamed".into();
        renamed.token_hash = HASH_B.into();
        store.upsert_project(&renamed, 2).unwrap();

        store.put_role_token_hash(RoleKey::Admin, HASH_A).unwrap();
        store.put_role_token_hash(RoleKey::Admin, HASH_B).unwrap();

        let snap = store.load().unwrap();
        assert_eq!(snap.agents, vec![changed]);
        assert_eq!(snap.projects, vec![renamed]);
        // Updating a project must not drop its bindings (INSERT OR REPLACE would cascade).
        assert_eq!(snap.bindings.get("coder").map(String::as_str), Some("proj-1"));
        assert_eq!(snap.role_token_hashes[&RoleKey::Admin], HASH_B);
    }

    #[test]
    fn next_project_seq_never_goes_back() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.upsert_project(&project("proj-7", 1), 8).unwrap();
        store.upsert_project(&project("proj-7", 1), 3).unwrap();
        assert_eq!(store.load().unwrap().next_project_seq, 8);
    }

    #[test]
    fn delete_project_cascades_to_its_bindings_only() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.upsert_project(&project("proj-1", 1), 3).unwrap();
        store.upsert_project(&project("proj-2", 2), 3).unwrap();
        store.set_binding("a", Some("proj-1")).unwrap();
        store.set_binding("b", Some("proj-1")).unwrap();
        store.set_binding("c", Some("proj-2")).unwrap();

        store.delete_project("proj-1").unwrap();
        store.delete_project("no-such-project").unwrap();

        let snap = store.load().unwrap();
        assert_eq!(ids_of(&snap.projects), vec!["proj-2"]);
        assert_eq!(snap.bindings, [("c".to_string(), "proj-2".to_string())].into());
    }

    fn ids_of(projects: &[ProjectRecord]) -> Vec<&str> {
        projects.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn bindings_move_unbind_and_refuse_unknown_projects() {
        let store = SqliteStore::open_in_memory().unwrap();
        store.upsert_project(&project("proj-1", 1), 3).unwrap();
        store.upsert_project(&project("proj-2", 2), 3).unwrap();
        store.set_binding("a", Some("proj-1")).unwrap();
        store.set_binding("a", Some("proj-2")).unwrap();
        assert_eq!(store.load().unwrap().bindings["a"], "proj-2");

        store.set_binding("a", None).unwrap();
        store.set_binding("never-bound", None).unwrap();
        assert!(store.load().unwrap().bindings.is_empty());

        let err = store.set_binding("a", Some("proj-404")).unwrap_err();
        assert!(matches!(err, StoreError::Database(ref m) if m.contains("FOREIGN KEY")), "{err}");
    }

    #[test]
    fn token_columns_refuse_anything_but_a_sha256_hex() {
        let store = SqliteStore::open_in_memory().unwrap();
        for not_a_hash in ["plaintext-token", &HASH_A.to_uppercase(), &HASH_A[1..], ""] {
            assert!(
                matches!(store.put_role_token_hash(RoleKey::User, not_a_hash), Err(StoreError::Database(_))),
                "{not_a_hash:?} was stored as a role token hash"
            );
        }
        let mut leaky = project("proj-1", 1);
        leaky.token_hash = "plaintext-token".into();
        assert!(store.upsert_project(&leaky, 2).is_err());
        assert!(store.load().unwrap().role_token_hashes.is_empty());
        assert!(store.load().unwrap().projects.is_empty());
    }

    #[test]
    fn audit_retention_prunes_oldest_and_ids_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        {
            let store = SqliteStore::open(&path).unwrap();
            for id in 1..=5 {
                store.append_audit(&audit(id, "a"), 3).unwrap();
            }
            assert_eq!(ids(&store.audit_tail(100, None).unwrap()), vec![5, 4, 3]);
            // Retaining nothing empties the table; the next id must still be 7, not 1.
            store.append_audit(&audit(6, "a"), 0).unwrap();
            assert!(store.audit_tail(100, None).unwrap().is_empty());
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.load().unwrap().next_audit_id, 7);
        store.append_audit(&audit(7, "a"), 3).unwrap();
        assert_eq!(ids(&store.audit_tail(100, None).unwrap()), vec![7]);
        assert_eq!(store.load().unwrap().next_audit_id, 8);
        // A reused id is refused rather than silently overwriting a record.
        assert!(store.append_audit(&audit(7, "a"), 3).is_err());
    }

    #[test]
    fn audit_tail_is_newest_first_with_limit_and_agent_filter() {
        let store = SqliteStore::open_in_memory().unwrap();
        for id in 1..=9 {
            let agent_id = if id % 3 == 0 { "b" } else { "a" };
            store.append_audit(&audit(id, agent_id), 1000).unwrap();
        }
        assert_eq!(ids(&store.audit_tail(4, None).unwrap()), vec![9, 8, 7, 6]);
        assert_eq!(ids(&store.audit_tail(100, Some("b")).unwrap()), vec![9, 6, 3]);
        assert_eq!(ids(&store.audit_tail(2, Some("a")).unwrap()), vec![8, 7]);
        assert!(store.audit_tail(0, None).unwrap().is_empty());
        assert!(store.audit_tail(10, Some("nobody")).unwrap().is_empty());
        assert_eq!(store.audit_tail(usize::MAX, None).unwrap().len(), 9);
    }

    #[test]
    fn a_newer_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        drop(SqliteStore::open(&path).unwrap());
        let newer = MIGRATIONS.len() + 1;
        Connection::open(&path).unwrap().pragma_update(None, "user_version", newer as i64).unwrap();

        let Err(StoreError::Corrupt(msg)) = SqliteStore::open(&path) else {
            panic!("a version {newer} database was opened");
        };
        assert!(msg.contains(&format!("version {newer} is newer")), "{msg}");
    }

    #[test]
    fn reopening_keeps_the_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        drop(SqliteStore::open(&path).unwrap());
        drop(SqliteStore::open(&path).unwrap());
        let version: i64 =
            Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
    }

    #[test]
    fn undecodable_json_is_reported_as_corrupt_with_table_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let store = SqliteStore::open(&path).unwrap();
        store.upsert_project(&project("proj-1", 1), 2).unwrap();
        Connection::open(&path).unwrap().execute("UPDATE projects SET mounts = '{' WHERE id = 'proj-1'", []).unwrap();

        let Err(StoreError::Corrupt(msg)) = store.load() else {
            panic!("corrupt mounts loaded");
        };
        assert!(msg.contains("projects") && msg.contains("\"proj-1\"") && msg.contains("mounts"));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        assert!(matches!(SqliteStore::open(&path), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn the_database_and_its_wal_are_private_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let store = SqliteStore::open(&path).unwrap();
        store.upsert_agent(&agent("mother")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("state.db-wal")), 0o600);
        assert_eq!(mode(&dir.path().join("state.db-shm")), 0o600);
    }

    #[test]
    fn the_file_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        drop(SqliteStore::open(&path).unwrap());
        let mode: String =
            Connection::open(&path).unwrap().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_write_survives_dropping_the_store_without_a_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let store = SqliteStore::open(&path).unwrap();
        store.put_role_token_hash(RoleKey::Admin, HASH_A).unwrap();
        drop(store);
        let snap = SqliteStore::open(&path).unwrap().load().unwrap();
        assert_eq!(snap.role_token_hashes[&RoleKey::Admin], HASH_A);
    }

    const CRASH_DB_ENV: &str = "SPIDERWEB_STORE_TEST_CRASH_DB";
    const WRITTEN: &str = "<<acknowledged>>";

    /// The child half of `an_acknowledged_write_survives_kill_9`: writes, reports, waits to
    /// be killed.
    #[test]
    #[ignore = "run by an_acknowledged_write_survives_kill_9 in a child process"]
    fn kill_9_child_writes_then_waits() {
        let Some(path) = std::env::var_os(CRASH_DB_ENV) else {
            return;
        };
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        store.upsert_project(&project("proj-1", 1), 2).unwrap();
        store.append_audit(&audit(1, "a"), 10).unwrap();
        println!("{WRITTEN}");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[test]
    fn an_acknowledged_write_survives_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["kill_9_child_writes_then_waits", "--ignored", "--nocapture"])
            .env(CRASH_DB_ENV, &path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acknowledged = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.contains(WRITTEN));
        child.kill().unwrap(); // SIGKILL: no destructor, no checkpoint, no close.
        child.wait().unwrap();
        assert!(acknowledged, "the child never acknowledged its write");
        // The write is still only in the WAL: nothing checkpointed or closed the database.
        let wal = std::fs::metadata(dir.path().join("state.db-wal")).unwrap();
        assert!(wal.len() > 0);

        let store = SqliteStore::open(&path).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.projects, vec![project("proj-1", 1)]);
        assert_eq!(snap.next_audit_id, 2);
        assert_eq!(store.audit_tail(10, None).unwrap(), vec![audit(1, "a")]);
    }

    #[test]
    fn a_panic_while_locked_does_not_disable_the_store() {
        let store = SqliteStore::open_in_memory().unwrap();
        let poisoned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A raw BEGIN, unlike a `Transaction`, is not rolled back by unwinding: the
            // worst case the recovery has to handle.
            let conn = store.conn.lock().unwrap();
            conn.execute_batch("BEGIN; INSERT INTO meta (key, value) VALUES ('x', 1);").unwrap();
            panic!("bug while holding the store lock");
        }));
        assert!(poisoned.is_err() && store.conn.is_poisoned());

        store.upsert_agent(&agent("mother")).unwrap();
        let snap = store.load().unwrap();
        assert_eq!(snap.agents, vec![agent("mother")]);
        let leaked: Option<i64> = store
            .lock()
            .unwrap()
            .query_row("SELECT value FROM meta WHERE key = 'x'", [], |r| r.get(0))
            .optional()
            .unwrap();
        assert_eq!(leaked, None, "the interrupted transaction was committed");
    }
}
