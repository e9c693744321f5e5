//! The store: every byte of shoal's SQL, for SQLite and PostgreSQL alike.
//!
//! All cluster state lives here and every decision that must be right (who owns an attempt,
//! whether a write is still allowed, what time it is) is made by the database, in a
//! transaction, on the database's clock. Nodes only ask.

mod audit;
mod db;
mod definitions;
mod executions;
mod listeners;
mod nodes;
pub mod pgtls;
mod pooler;
mod postgres;
mod principals;
mod replicas;
mod sandboxes;
mod schedules;
pub mod schema;
mod secret;
mod secrets;
mod session;
mod sqlite;
mod submitter;
mod tokens;
mod users;

pub use audit::{AuditFilter, AuditRecord, AuditRow, NewAudit};
pub use db::Dialect;
pub use definitions::Owner;
pub use executions::{
    AttemptEnd, AttemptRow, CancelResult, Claimed, ExecutionFilter, ExecutionRow, Finish, FinishResult, LogChunk,
    LogRow, NewExecution, Origin, Submitted,
};
pub use listeners::{
    CursorMove, EventRow, FinishedExecution, ListenerDef, ListenerRow, NewEvent, NodeEventRow, Recorded,
};
pub use nodes::{NodeLease, NodeRegistration, NodeRow, NodeStatus, Renewal};
pub use principals::{AttemptToken, AttemptTokenRow, Rights};
pub use replicas::{Lsn, MaxLag, ReplicaState, ReplicaView, Route};
pub use sandboxes::SandboxRow;
pub use schedules::{FireContext, FireDecision, Fired, FiringOutcome, FiringRow, NewFiring, ScheduleDef, ScheduleRow};
pub use secrets::{SealedSecret, SecretRow};
pub use session::{NodeSession, SessionEvent, WORK_CHANNEL};
pub use sqlite::PoolReport;
pub use submitter::Submitter;
pub use tokens::{NewToken, TokenRow};
pub use users::{NewUser, SessionRow, UserRow};

use db::Tx;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or cannot take writes right now; retrying may work.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The attempt's fencing token is no longer the execution's current one.
    #[error("stale fencing token: this attempt is no longer the execution's current attempt")]
    Fenced,
    #[error("the idempotency key was already used for a different request; use a new key for a new request")]
    IdempotencyMismatch,
    #[error("the store's schema is version {found}, newer than the newest this shoal knows ({known}); upgrade this node before starting it")]
    SchemaTooNew { found: i64, known: i64 },
    /// Another process registered this node id after us.
    #[error("node lease lost: another process registered this node id (generation {0})")]
    LeaseLost(i64),
    /// Other nodes found this node dead (its store session ended and gossip lost it) and ended
    /// its lease; its attempts are being taken over. The node registers again to go on.
    #[error("node lease ended by the cluster: this node was found dead and its attempts taken over")]
    LeaseEnded,
    #[error("{0}")]
    Config(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

enum Backend {
    Sqlite(sqlite::SqlitePool),
    // Boxed: the pool keeps its connection config for sessions, which makes it large.
    Postgres(Box<postgres::PgPool>),
}

/// A pooled connection on which no transaction has begun yet.
pub(crate) enum Acquired {
    Sqlite(sqlite::SqliteTx),
    Postgres(postgres::PgTx),
}

impl Acquired {
    pub(crate) async fn begin(self) -> Result<Box<dyn Tx>> {
        match self {
            Acquired::Sqlite(t) => t.start(sqlite::Mode::Lease).await,
            Acquired::Postgres(t) => t.start(false).await,
        }
    }
}

/// Runs one read on `c` and parses every row.
async fn parse_rows<T>(
    mut c: Box<dyn Tx>,
    sql: &str,
    params: Vec<db::Value>,
    parse: impl Fn(&db::Row) -> Result<T>,
) -> Result<Vec<T>> {
    c.query(sql, params).await?.iter().map(parse).collect()
}

/// A handle on the store; cheap to share behind an `Arc`.
pub struct Store {
    backend: Backend,
    url: String,
    /// Read replicas (PostgreSQL), when configured: see `replicas.rs`.
    replicas: Option<replicas::Replicas>,
}

/// Hides the password in a store URL so it can be logged and shown in errors.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        if let Some(at) = rest.rfind('@') {
            let userinfo = &rest[..at];
            if let Some(colon) = userinfo.find(':') {
                let start = scheme_end + 3 + colon + 1;
                let end = scheme_end + 3 + at;
                out.replace_range(start..end, "***");
            }
        }
    }
    // key=value connection strings and query parameters
    for key in ["password="] {
        let mut search = 0;
        while let Some(pos) = out[search..].find(key) {
            let start = search + pos + key.len();
            let end = out[start..].find([' ', '&']).map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "***");
            search = start + 3;
        }
    }
    out
}

impl Store {
    /// Opens the store at `url` (`sqlite://PATH` or `postgres://...`), checks it can be
    /// reached, and applies pending migrations.
    pub async fn open(url: &str, pool_size: usize) -> Result<Store> {
        Store::open_with_session(url, pool_size, None).await
    }

    /// [`Store::open`], with node sessions connecting to `session_url` (PostgreSQL:
    /// `store.session_url`, a URL past a pooler in transaction mode) instead of `url`. On
    /// PostgreSQL, the connections are first checked to keep what node sessions need
    /// (`pooler.rs`), and a store they do not is refused with [`StoreError::Config`].
    pub async fn open_with_session(url: &str, pool_size: usize, session_url: Option<&str>) -> Result<Store> {
        let backend = if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(StoreError::Config(
                    "the SQLite URL names no file; write sqlite://PATH, e.g. sqlite://./data/shoal.db".into(),
                ));
            }
            let path = PathBuf::from(path);
            let pool = tokio::task::spawn_blocking(move || sqlite::SqlitePool::open(&path, pool_size))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
            Backend::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(Box::new(postgres::PgPool::open(url, "store.url", pool_size, session_url)?))
        } else {
            return Err(StoreError::Config(format!(
                "unsupported store URL {}; use sqlite://PATH or postgres://USER@HOST/DB",
                redact(url)
            )));
        };
        if session_url.is_some() && !matches!(backend, Backend::Postgres(_)) {
            return Err(StoreError::Config(
                "store.session_url is set but the store is SQLite: it is for PostgreSQL behind a pooler; remove it"
                    .into(),
            ));
        }
        let store = Store { backend, url: url.to_owned(), replicas: None };
        let opened = async {
            if let Backend::Postgres(pool) = &store.backend {
                pool.check_pooling().await?;
            }
            schema::migrate(&store).await
        };
        opened.await.map_err(|e| match e {
            // The session URL's own failures name it, not store.url.
            StoreError::Unavailable(m) if m.contains("store.session_url") => StoreError::Unavailable(m),
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("cannot reach the store at {}: {m}", store.redacted_url()))
            }
            other => other,
        })?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        match self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    pub fn dialect_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    pub(crate) async fn begin_write(&self) -> Result<Box<dyn Tx>> {
        match &self.backend {
            Backend::Sqlite(p) => p.begin(sqlite::Mode::Write).await,
            Backend::Postgres(p) => p.begin(false).await,
        }
    }

    /// A connection for a lease renewal's write transaction, not begun yet, from a connection
    /// kept for renewals alone: waiting for it is waiting on this node's own pool (on SQLite
    /// only for the one write under way: see [`sqlite::Mode::Lease`]); [`Acquired::begin`]
    /// then waits on the store.
    pub(crate) async fn acquire_lease_write(&self) -> Result<Acquired> {
        match &self.backend {
            Backend::Sqlite(p) => Ok(Acquired::Sqlite(p.acquire(sqlite::Mode::Lease).await?)),
            Backend::Postgres(p) => Ok(Acquired::Postgres(p.acquire_lease().await?)),
        }
    }

    /// A connection in autocommit mode on the primary, for single-statement reads. Every read
    /// is on the primary but those made for showing things to API clients ([`Store::view`]):
    /// authentication, rights, leases, sessions, the store's clock and everything the cluster
    /// decides by must never see a replica's past.
    pub(crate) async fn read(&self) -> Result<Box<dyn Tx>> {
        self.primary_read().await
    }

    /// A connection for a read that only shows something to an API client (an execution, its
    /// attempts and logs, a list, the audit trail): a replica's when the read runs inside a
    /// route that may use one (`replicas.rs`), else the primary's.
    pub(crate) async fn view(&self) -> Result<Box<dyn Tx>> {
        if let Some(tx) = self.replica_read().await {
            return Ok(tx);
        }
        self.primary_read().await
    }

    /// [`Store::view`] for one read whose every row is parsed.
    pub(crate) async fn view_rows<T>(
        &self,
        sql: &str,
        params: Vec<db::Value>,
        parse: impl Fn(&db::Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        parse_rows(self.view().await?, sql, params, parse).await
    }

    async fn primary_read(&self) -> Result<Box<dyn Tx>> {
        match &self.backend {
            Backend::Sqlite(p) => p.begin(sqlite::Mode::Read).await,
            Backend::Postgres(p) => p.begin(true).await,
        }
    }

    /// Runs one read on a connection of its own (see [`Store::read`]) and parses every row.
    pub(crate) async fn read_rows<T>(
        &self,
        sql: &str,
        params: Vec<db::Value>,
        parse: impl Fn(&db::Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        parse_rows(self.read().await?, sql, params, parse).await
    }

    /// What this node's own connection pool is doing: how many connections are in use, for
    /// how long, and how many transactions wait for one. Tells a wedge inside this process
    /// apart from a store that does not answer.
    pub fn pool_report(&self) -> PoolReport {
        match &self.backend {
            Backend::Sqlite(p) => p.report(),
            Backend::Postgres(p) => p.report(),
        }
    }

    /// The store's clock, in milliseconds since the Unix epoch.
    pub async fn now_ms(&self) -> Result<i64> {
        let mut c = self.read().await?;
        let row = db::query_one(c.as_mut(), "SELECT {now}", vec![]).await?;
        row.ok_or_else(|| StoreError::Internal("no row from SELECT now".into()))?.i64(0)
    }

    /// The schema version the store is at.
    pub async fn schema_version(&self) -> Result<i64> {
        let mut c = self.read().await?;
        schema::current_version(c.as_mut()).await
    }

    /// For tests of the version check: pretend a newer shoal migrated this store.
    #[doc(hidden)]
    pub async fn force_schema_version(&self, version: i64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        tx.execute("UPDATE shoal_meta SET value = $1 WHERE key = 'schema_version'", vec![version.to_string().into()])
            .await?;
        tx.commit().await
    }
}
