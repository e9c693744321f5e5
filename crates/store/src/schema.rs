//! Versioned schema migrations, applied at start by whichever node gets there first.
//!
//! Each migration has a SQLite and a PostgreSQL text; they differ only in types (`BLOB` and
//! `BYTEA`) and in PostgreSQL's sequence for fencing tokens. The version lives in
//! `shoal_meta`; a node refuses a store whose schema is newer than the newest it knows, since
//! writing to it with old assumptions could corrupt state a newer node relies on.

use crate::db::{query_one, Dialect, Tx};
use crate::{Result, StoreError};

struct Migration {
    version: i64,
    /// Statements both dialects share.
    common: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const V1_COMMON: &str = "
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    generation BIGINT NOT NULL,
    state TEXT NOT NULL,
    tags TEXT NOT NULL,
    slots BIGINT NOT NULL,
    running BIGINT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL,
    lease_expires_at BIGINT NOT NULL
);
CREATE TABLE sandboxes (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    root TEXT NOT NULL,
    node_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    sandbox TEXT,
    job TEXT,
    params TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    exit_code BIGINT,
    signal BIGINT,
    attempt BIGINT NOT NULL DEFAULT 0,
    node_losses BIGINT NOT NULL DEFAULT 0,
    node_id TEXT,
    fence BIGINT,
    priority BIGINT NOT NULL,
    pinned_node TEXT,
    concurrency_key TEXT,
    max_concurrent BIGINT,
    cancel_requested TEXT,
    idempotency_key TEXT UNIQUE,
    request_hash TEXT,
    created_at BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX executions_queue ON executions (priority DESC, id) WHERE state = 'queued';
CREATE INDEX executions_running ON executions (node_id) WHERE state = 'running';
CREATE INDEX executions_limit ON executions (concurrency_key) WHERE state = 'running';
CREATE INDEX executions_job ON executions (sandbox, job, id);
CREATE INDEX executions_state ON executions (state, id);
CREATE TABLE attempts (
    execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    fence BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    outcome TEXT,
    PRIMARY KEY (execution_id, attempt)
);
";

/// Gossip membership and fast failure detection: where each node gossips, the key of its
/// store session (see `session.rs`) and its load figures.
const V2_COMMON: &str = "
ALTER TABLE nodes ADD COLUMN gossip_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN session_key BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN cpu_permille BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN memory_permille BIGINT NOT NULL DEFAULT 0;
";

/// Partitioned sandboxes (their parts, as JSON) and partitioned executions (children point at
/// their parent and name their partition).
const V3_COMMON: &str = "
ALTER TABLE sandboxes ADD COLUMN partitions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE executions ADD COLUMN parent_id TEXT;
ALTER TABLE executions ADD COLUMN partition TEXT;
CREATE INDEX executions_parent ON executions (parent_id) WHERE parent_id IS NOT NULL;
";

/// Schedules and listeners (issue 4): definitions, and one row per firing or event, whose
/// primary key is the exactly-once claim (guarantees 4 and 5 of docs/guarantees.md). `node_events`
/// records joins, deaths and departures for cluster listeners; `file_cursors` is what each
/// file listener has already seen.
const V4_COMMON: &str = "
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    sandbox TEXT NOT NULL,
    job TEXT NOT NULL,
    params TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    misfire TEXT NOT NULL,
    misfire_max BIGINT,
    misfire_threshold_ms BIGINT NOT NULL,
    overlap TEXT NOT NULL,
    last_fire_at BIGINT NOT NULL,
    last_execution_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE firings (
    schedule_id TEXT NOT NULL,
    fire_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    execution_id TEXT,
    node_id TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (schedule_id, fire_at)
);
CREATE INDEX firings_queued ON firings (schedule_id, fire_at) WHERE outcome = 'queued';
CREATE TABLE listeners (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    sandbox TEXT NOT NULL,
    job TEXT NOT NULL,
    params TEXT NOT NULL,
    config TEXT NOT NULL,
    secret TEXT,
    enabled BIGINT NOT NULL,
    cursor_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE events (
    listener_id TEXT NOT NULL,
    key TEXT NOT NULL,
    at BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    execution_id TEXT,
    payload TEXT NOT NULL,
    PRIMARY KEY (listener_id, key)
);
CREATE INDEX events_at ON events (listener_id, at);
CREATE TABLE file_cursors (
    listener_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    PRIMARY KEY (listener_id, path)
);
CREATE TABLE node_events (
    node_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    kind TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (node_id, generation, kind)
);
CREATE INDEX node_events_at ON node_events (at);
CREATE INDEX executions_finished ON executions (finished_at) WHERE finished_at IS NOT NULL;
";

/// API tokens: only each token's SHA-256 is kept (`hash`), never its text.
const V5_COMMON: &str = "
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    role TEXT NOT NULL,
    sandboxes TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
";

/// Users (an Argon2id PHC string, never a password) and their login sessions (by the SHA-256
/// of the cookie's secret).
const V6_COMMON: &str = "
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    sandboxes TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE sessions (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
";

/// Who did it (issue 11): what created each execution (`origin`: api, schedule, listener,
/// partition, job), from what (`origin_ref`), whose label it shows (`principal`) and whose
/// rights it runs with (`acts_as`: `token:ID` or `user:ID`); the owner of each schedule and
/// listener in the same two forms; the SHA-256 of each attempt's own token; and a message
/// beside a firing's or an event's reason.
const V7_COMMON: &str = "
ALTER TABLE executions ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
ALTER TABLE executions ADD COLUMN origin_ref TEXT;
ALTER TABLE executions ADD COLUMN principal TEXT;
ALTER TABLE executions ADD COLUMN acts_as TEXT;
ALTER TABLE attempts ADD COLUMN token_hash TEXT;
CREATE UNIQUE INDEX attempts_token ON attempts (token_hash) WHERE token_hash IS NOT NULL;
ALTER TABLE schedules ADD COLUMN owner TEXT;
ALTER TABLE schedules ADD COLUMN owner_name TEXT;
ALTER TABLE listeners ADD COLUMN owner TEXT;
ALTER TABLE listeners ADD COLUMN owner_name TEXT;
ALTER TABLE firings ADD COLUMN message TEXT;
ALTER TABLE events ADD COLUMN message TEXT;
";

/// The audit trail (`audit.rs`): one row per change made through the API and per login, at
/// the store's clock; read newest first, by time and id, filtered by principal or action.
const V8_COMMON: &str = "
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    principal TEXT NOT NULL,
    node TEXT NOT NULL,
    served_by TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL,
    code TEXT
);
CREATE INDEX audit_at ON audit (at, id);
CREATE INDEX audit_principal ON audit (principal, at, id);
CREATE INDEX audit_action ON audit (action, at, id);
";

/// Version 9: job secrets (`secrets.rs`), each sealed by the nodes (an AEAD under a key the
/// store never sees) and kept with the id of the key that sealed it; `sandbox` is `''` for a
/// cluster-wide secret. The two texts differ only in the bytes' type.
macro_rules! v9 {
    ($bytes:literal) => {
        concat!(
            "
CREATE TABLE secrets (
    sandbox TEXT NOT NULL,
    name TEXT NOT NULL,
    ciphertext ",
            $bytes,
            " NOT NULL,
    nonce ",
            $bytes,
            " NOT NULL,
    key_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sandbox, name)
);
CREATE INDEX secrets_key ON secrets (key_id);
"
        )
    };
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        common: V1_COMMON,
        sqlite: "
CREATE TABLE logs (
    execution_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    data BLOB NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (execution_id, attempt, seq)
);
CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters (name, value) VALUES ('fence', 0);
",
        postgres: "
CREATE TABLE logs (
    execution_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    stream BIGINT NOT NULL,
    data BYTEA NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (execution_id, attempt, seq)
);
CREATE SEQUENCE fence_seq;
",
    },
    Migration { version: 2, common: V2_COMMON, sqlite: "", postgres: "" },
    Migration { version: 3, common: V3_COMMON, sqlite: "", postgres: "" },
    Migration { version: 4, common: V4_COMMON, sqlite: "", postgres: "" },
    Migration { version: 5, common: V5_COMMON, sqlite: "", postgres: "" },
    Migration { version: 6, common: V6_COMMON, sqlite: "", postgres: "" },
    Migration { version: 7, common: V7_COMMON, sqlite: "", postgres: "" },
    Migration { version: 8, common: V8_COMMON, sqlite: "", postgres: "" },
    Migration { version: 9, common: "", sqlite: v9!("BLOB"), postgres: v9!("BYTEA") },
];

/// The newest schema version this build knows.
pub const LATEST: i64 = 9;

pub async fn current_version(tx: &mut dyn Tx) -> Result<i64> {
    let row = query_one(tx, "SELECT value FROM shoal_meta WHERE key = 'schema_version'", vec![]).await?;
    match row {
        Some(r) => {
            r.text(0)?.parse().map_err(|_| StoreError::Internal("shoal_meta.schema_version is not a number".into()))
        }
        None => Ok(0),
    }
}

/// Brings the schema up to [`LATEST`], one migration per transaction.
pub async fn migrate(store: &crate::Store) -> Result<i64> {
    {
        let mut tx = store.begin_write().await?;
        if tx.dialect() == Dialect::Postgres {
            // IF NOT EXISTS is not safe against a concurrent CREATE in PostgreSQL (two nodes
            // starting at once on an empty database): serialise it like the migrations.
            tx.execute("SELECT pg_advisory_xact_lock(7700770077)", vec![]).await?;
        }
        tx.batch("CREATE TABLE IF NOT EXISTS shoal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").await?;
        tx.commit().await?;
    }
    loop {
        let mut tx = store.begin_write().await?;
        if tx.dialect() == Dialect::Postgres {
            // Several nodes may start at once against an empty database; one migrates, the
            // others wait here and then see the new version.
            tx.execute("SELECT pg_advisory_xact_lock(7700770077)", vec![]).await?;
        }
        let version = current_version(tx.as_mut()).await?;
        if version > LATEST {
            tx.rollback().await?;
            return Err(StoreError::SchemaTooNew { found: version, known: LATEST });
        }
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == version + 1) else {
            tx.rollback().await?;
            return Ok(version);
        };
        tracing::info!(version = m.version, "applying schema migration");
        tx.batch(m.common).await?;
        tx.batch(match tx.dialect() {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        })
        .await?;
        let n = tx
            .execute(
                "UPDATE shoal_meta SET value = $1 WHERE key = 'schema_version'",
                vec![m.version.to_string().into()],
            )
            .await?;
        if n == 0 {
            tx.execute(
                "INSERT INTO shoal_meta (key, value) VALUES ('schema_version', $1)",
                vec![m.version.to_string().into()],
            )
            .await?;
        }
        tx.commit().await?;
    }
}
