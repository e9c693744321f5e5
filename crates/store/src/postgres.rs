//! The PostgreSQL backend: tokio-postgres behind a deadpool pool.
//!
//! tokio-postgres is chosen over sqlx because it takes multi-host connection strings with
//! `target_session_attrs=read-write`, so a promoted replica is found again after failover.
//!
//! Every connection (the pool's, the lease connection, sessions, cancels) goes through one TLS
//! connector built from the URL's `sslmode` and `sslrootcert` (`pgtls.rs`).
//!
//! Statements are never prepared by name: each is sent with its parameters in one message
//! (Parse, Bind, Execute, Sync on the unnamed statement), leaving the parameters' types for
//! the server to infer as `PREPARE` would. Nothing a statement needs outlives it, so the same
//! code runs through a pooler in transaction mode, where consecutive transactions of one
//! connection may run on different server connections (docs/configuration.md, "Behind a
//! pooler"), and a connection holds no statement cache. Such a cache would also grow without
//! bound, one entry per connection for every text ever sent: many statements' text varies with
//! their batch's row count or a list's filters. The price is the server's parse of each
//! statement each time, about 0.11 ms on a one-row read, which whole-node throughput did not
//! resolve (BENCHMARKS.md, "Behind PgBouncer").
//!
//! Cancellation safety: a transaction's future may be dropped at any await, even while its
//! `BEGIN` is on the wire. A transaction counts as open from before `BEGIN` is sent, and one
//! dropped open is rolled back by a task before its connection is reused; if that `ROLLBACK`
//! fails or takes longer than [`ROLLBACK_TIMEOUT`], or the task never runs, the connection is
//! discarded instead ([`Discard`]). No connection goes back to the pool in an unknown state.

use crate::db::{render, Dialect, Row, Tx, Value};
use crate::pgtls::{split_url, PgTls};
use crate::{Result, StoreError};
use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, Kind, ToSql, Type};

/// How long a dropped transaction's rollback (or, for a dropped read, the end of the query
/// still running) may take before the statement is cancelled on the server and the
/// connection discarded rather than waited on. Short: nobody wants the dropped statement's
/// answer, and while it runs its backend may hold row locks (a lease renewal's row, say).
const DROP_GRACE: Duration = Duration::from_millis(250);

pub struct PgPool {
    pool: Pool,
    /// One connection kept for lease renewals alone, so a renewal never waits behind the
    /// pool's other users for a connection.
    lease_pool: Pool,
    /// The pool's connection settings, from the URL.
    pub(crate) config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` asks, for every connection the store opens.
    pub(crate) tls: PgTls,
    /// Where node sessions connect: dedicated connections outside the pool.
    pub(crate) session: SessionTarget,
    /// When a connection last found its server read-only, for both pools and the sessions.
    pub(crate) demotion: Arc<Demotion>,
}

/// When a connection of a pool last found its server read-only (25006). The server's other
/// connections (which could be any connection opened before, since a multi-host URL does not
/// say where each went) are not used again: the idle ones are dropped at once, the ones in use
/// when they come back, and a node session opened before then is ended (`session.rs`), so
/// that everything is opened again on the server that takes writes.
pub(crate) struct Demotion {
    last: watch::Sender<Option<Instant>>,
    pools: [Pool; 2],
}

impl Demotion {
    /// A connection found its server read-only just now.
    fn seen(&self) {
        let now = Instant::now();
        self.last.send_replace(Some(now));
        let dropped: usize = self.pools.iter().map(|p| p.retain(|_, m| m.created > now).removed.len()).sum();
        tracing::warn!(
            dropped,
            "the store's server refused a write as read-only (a demoted primary?); every connection opened before is dropped, new ones go to the host that takes writes"
        );
    }

    /// Whether a connection opened at `opened` may be on a server found read-only since.
    fn covers(&self, opened: Instant) -> bool {
        self.last.borrow().is_some_and(|seen| opened <= seen)
    }

    /// Returns once a connection finds its server read-only after `opened` (never, if the
    /// pool is dropped first): a session opened then may be on that server.
    pub(crate) async fn after(mut watching: watch::Receiver<Option<Instant>>, opened: Instant) {
        loop {
            if watching.borrow_and_update().is_some_and(|seen| opened <= seen) {
                return;
            }
            if watching.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// What [`Demotion::after`] watches.
    pub(crate) fn watch(&self) -> watch::Receiver<Option<Instant>> {
        self.last.subscribe()
    }
}

/// The type every parameter is sent with: OID 0, "unspecified", so the server infers it from
/// the statement as `PREPARE` does. The value then goes in a format any inferred type it may
/// be given can read: an integer as text (the input of `BIGINT`, `INT` and `SMALLINT`, and of
/// `BOOLEAN` for 0 and 1), text and bytes as their bytes (the binary form of `TEXT` and of
/// `BYTEA`).
fn unspecified() -> Type {
    static UNSPECIFIED: std::sync::OnceLock<Type> = std::sync::OnceLock::new();
    UNSPECIFIED.get_or_init(|| Type::new("unspecified".into(), 0, Kind::Simple, "pg_catalog".into())).clone()
}

/// Where a node's session connects (`session.rs`): `store.session_url` when it is set (a URL
/// past a pooler in transaction mode), else the pool's own URL.
pub(crate) struct SessionTarget {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: PgTls,
    /// Set from `store.session_url`, not the pool's URL.
    pub(crate) separate: bool,
}

/// A URL's connection settings and its TLS connector, with shoal's defaults where the URL says
/// nothing.
fn connection(url: &str, what: &str) -> Result<(tokio_postgres::Config, PgTls)> {
    let split = split_url(url)?;
    let tls = PgTls::new(split.mode, split.root.as_ref())?;
    let mut cfg = tokio_postgres::Config::from_str(&split.url).map_err(|e| {
        StoreError::Config(format!("invalid PostgreSQL URL in {what}, {}: {}", crate::redact(url), with_causes(&e)))
    })?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.application_name("shoal");
    // A server that vanishes without closing the socket (a cut network, a frozen host) is
    // noticed by the kernel within about half a minute instead of the default two hours,
    // unless the URL chose its own keepalive settings.
    if cfg.get_keepalives() && cfg.get_keepalives_interval().is_none() && cfg.get_keepalives_retries().is_none() {
        cfg.keepalives_idle(Duration::from_secs(10));
        cfg.keepalives_interval(Duration::from_secs(5));
        cfg.keepalives_retries(3);
    }
    Ok((cfg, tls))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => return Ok(IsNull::Yes),
            Value::I64(v) => out.extend_from_slice(v.to_string().as_bytes()),
            Value::Text(v) => out.extend_from_slice(v.as_bytes()),
            Value::Bytes(v) => out.extend_from_slice(v),
        }
        Ok(IsNull::No)
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Value::I64(_) => Format::Text,
            _ => Format::Binary,
        }
    }

    fn accepts(_ty: &Type) -> bool {
        // The server types every parameter (see `unspecified`); one it cannot read is an error
        // it names, and a bug in this crate's SQL.
        true
    }

    to_sql_checked!();
}

fn from_row(row: &tokio_postgres::Row) -> Result<Row> {
    let mut vals = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map(|v| v.map_or(Value::Null, Value::I64))
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map(|v| v.map_or(Value::Null, |v| Value::I64(v.into())))
        } else if *t == Type::INT2 {
            row.try_get::<_, Option<i16>>(i).map(|v| v.map_or(Value::Null, |v| Value::I64(v.into())))
        } else if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map(|v| v.map_or(Value::Null, |v| Value::I64(v.into())))
        } else if *t == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map_or(Value::Null, Value::Bytes))
        } else {
            row.try_get::<_, Option<String>>(i).map(|v| v.map_or(Value::Null, Value::Text))
        };
        vals.push(v.map_err(|e| StoreError::Internal(format!("column {} ({t}): {e}", col.name())))?);
    }
    Ok(Row(vals))
}

/// SQLSTATE classes that mean "this server can't take our writes now": connection
/// exceptions (08), a read-only (demoted) server (25006), shutdown (57P01..57P03).
fn map_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code == "23505" || code == "23503" {
            return StoreError::Conflict(db.message().to_owned());
        }
        if code.starts_with("08") || code == "25006" || code.starts_with("57P") {
            return StoreError::Unavailable(format!("{}: {}", code, db.message()));
        }
        return StoreError::Internal(format!("postgres {code}: {}", db.message()));
    }
    if e.is_closed() {
        return StoreError::Unavailable(format!("connection closed: {e}"));
    }
    StoreError::Unavailable(with_causes(&e))
}

/// An error and its causes: tokio-postgres says only "error performing TLS handshake" or
/// "error connecting to server" itself, and why in its source.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn map_pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => map_err(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl PgPool {
    /// A pool on `url`, whose node sessions connect to `session_url` when given. Nothing is
    /// connected yet: [`PgPool::check_pooling`] is the first to.
    /// `what` names the setting the URL comes from, in messages (`store.url`, `store.replicas`).
    pub fn open(url: &str, what: &str, size: usize, session_url: Option<&str>) -> Result<PgPool> {
        let (cfg, tls) = connection(url, what)?;
        let session = match session_url {
            Some(url) => {
                let (config, tls) = connection(url, "store.session_url")?;
                SessionTarget { config, tls, separate: true }
            }
            None => SessionTarget { config: cfg.clone(), tls: tls.clone(), separate: false },
        };
        let build = |size: usize| {
            let manager = Manager::from_config(
                cfg.clone(),
                tls.clone(),
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(Duration::from_secs(10)))
                .create_timeout(Some(Duration::from_secs(6)))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .map_err(|e| StoreError::Config(format!("cannot build the PostgreSQL pool: {e}")))
        };
        let (pool, lease_pool) = (build(size.max(1))?, build(1)?);
        let demotion = Arc::new(Demotion { last: watch::channel(None).0, pools: [pool.clone(), lease_pool.clone()] });
        Ok(PgPool { pool, lease_pool, config: cfg, tls, session, demotion })
    }

    /// Refuses a pool whose connections cannot give node sessions what they need (see
    /// `pooler.rs`): through a pooler in statement mode, or in transaction mode without
    /// `store.session_url`, or with a `store.session_url` that loses session state itself or
    /// reaches another database. The refusal says what to change.
    pub(crate) async fn check_pooling(&self) -> Result<()> {
        const SEE: &str = "see \"Behind a pooler\" in docs/configuration.md";
        let pooling = crate::pooler::probe(&self.config, &self.tls, "store.url").await?;
        if let crate::pooler::Pooling::Statement(why) = &pooling {
            return Err(StoreError::Config(format!(
                "store.url cannot hold a transaction open ({why}): it goes through a pooler in statement pooling mode (PgBouncer's pool_mode = statement), and every change shoal makes is a transaction of several statements; give shoal's database pool_mode = session, or pool_mode = transaction with store.session_url set past the pooler ({SEE})"
            )));
        }
        if !self.session.separate {
            if pooling == crate::pooler::Pooling::Transaction {
                return Err(StoreError::Config(format!(
                    "store.url does not keep session state between transactions: it goes through a pooler in transaction pooling mode (PgBouncer's pool_mode = transaction), where a node's session lock and its LISTEN would stay behind on a server connection it no longer holds; either give shoal's database pool_mode = session in the pooler, or set store.session_url to a URL that reaches the same database directly, past the pooler ({SEE})"
                )));
            }
            return Ok(());
        }
        match crate::pooler::probe(&self.session.config, &self.session.tls, "store.session_url").await? {
            crate::pooler::Pooling::Session => {}
            crate::pooler::Pooling::Statement(why) => {
                return Err(StoreError::Config(format!(
                    "store.session_url cannot hold a transaction open ({why}): it goes through a pooler in statement pooling mode; point it at PostgreSQL itself, or at a pooler in session mode ({SEE})"
                )))
            }
            crate::pooler::Pooling::Transaction => {
                return Err(StoreError::Config(format!(
                    "store.session_url does not keep session state between transactions either: it goes through a pooler in transaction pooling mode; point it at PostgreSQL itself, or at a pooler in session mode ({SEE})"
                )))
            }
        }
        let target = (&self.session.config, &self.session.tls);
        if !crate::pooler::same_database((&self.config, &self.tls), target).await? {
            return Err(StoreError::Config(format!(
                "store.session_url reaches another database than store.url: a lock taken through it is not seen through store.url; point both at the same database of the same PostgreSQL server ({SEE})"
            )));
        }
        tracing::info!(
            store_url = if pooling == crate::pooler::Pooling::Transaction {
                "pooled per transaction"
            } else {
                "keeps session state"
            },
            "node sessions (advisory locks, LISTEN) go through store.session_url"
        );
        Ok(())
    }

    /// `host:port` of the URL's first host, for messages and headers that name a server.
    pub fn address(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }

    pub async fn begin(&self, autocommit: bool) -> Result<Box<dyn Tx>> {
        self.acquire().await?.start(autocommit).await
    }

    /// The first half of [`PgPool::begin`]: a connection from the pool, nothing sent yet.
    pub(crate) async fn acquire(&self) -> Result<PgTx> {
        self.take(&self.pool).await
    }

    /// A connection for a lease renewal, from the one kept for them.
    pub(crate) async fn acquire_lease(&self) -> Result<PgTx> {
        self.take(&self.lease_pool).await
    }

    async fn take(&self, pool: &Pool) -> Result<PgTx> {
        take(pool, &self.tls, &self.demotion).await
    }

    /// A handle that opens autocommit reads on this pool, kept apart from it (a replica's read
    /// falls back to the primary through one).
    pub(crate) fn reader(&self) -> PgReader {
        PgReader { pool: self.pool.clone(), tls: self.tls.clone(), demotion: self.demotion.clone() }
    }

    /// What this node's own pool is doing, for messages that tell a wedge from an outage.
    pub fn report(&self) -> crate::sqlite::PoolReport {
        let s = self.pool.status();
        crate::sqlite::PoolReport {
            size: s.max_size,
            in_use: s.size.saturating_sub(s.available),
            waiting: s.waiting,
            oldest_held: None,
            longest_call: None,
            calls: 0,
            discarded: 0,
        }
    }
}

async fn take(pool: &Pool, tls: &PgTls, demotion: &Arc<Demotion>) -> Result<PgTx> {
    // Each connection passed over leaves the pool, so after its size of them the pool opens a
    // new one, which is neither.
    for _ in 0..=pool.status().max_size {
        let client = pool.get().await.map_err(map_pool_err)?;
        // A connection that died while idle (server restart, failover), or that may be on a
        // server found read-only since it was opened: drop it from the pool and take another
        // instead of handing out an error on first use.
        if client.is_closed() || demotion.covers(Object::metrics(&client).created) {
            let _ = Object::take(client);
            continue;
        }
        return Ok(PgTx {
            client: Some(client),
            open: false,
            in_flight: false,
            tls: tls.clone(),
            demotion: demotion.clone(),
        });
    }
    Err(StoreError::Unavailable(
        "no usable connection to PostgreSQL: every one the pool gave was closed or on a server found read-only".into(),
    ))
}

/// Opens autocommit reads on a pool; see [`PgPool::reader`].
#[derive(Clone)]
pub(crate) struct PgReader {
    pool: Pool,
    tls: PgTls,
    demotion: Arc<Demotion>,
}

impl PgReader {
    pub(crate) async fn begin(&self) -> Result<Box<dyn Tx>> {
        take(&self.pool, &self.tls, &self.demotion).await?.start(true).await
    }
}

/// A connection on its way back to the pool; dropped without [`Discard::keep`], it is taken
/// out of the pool and closed.
struct Discard(Option<Object>);

impl Discard {
    fn keep(mut self) {
        // Dropping the `Object` itself returns it to the pool.
        self.0.take();
    }
}

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = Object::take(c);
        }
    }
}

pub(crate) struct PgTx {
    client: Option<Object>,
    open: bool,
    /// A statement was sent and its answer not yet received.
    in_flight: bool,
    /// For a cancel request, which connects afresh.
    tls: PgTls,
    /// Told when this connection finds its server read-only.
    demotion: Arc<Demotion>,
}

impl PgTx {
    /// The second half of [`PgPool::begin`]: `BEGIN`, unless the connection is for
    /// autocommit reads.
    pub(crate) async fn start(mut self, autocommit: bool) -> Result<Box<dyn Tx>> {
        if !autocommit {
            // Open before BEGIN is sent: dropped while BEGIN is in flight, it is rolled back.
            self.open = true;
            self.batch("BEGIN").await?;
        }
        Ok(Box::new(self))
    }

    fn client(&self) -> Result<&Object> {
        self.client.as_ref().ok_or_else(|| StoreError::Internal("transaction already ended".into()))
    }

    /// Connections that failed or landed on a demoted primary are evicted from the pool, not
    /// reused: the next checkout connects afresh and `target_session_attrs` finds the primary.
    /// A demoted primary takes every connection opened before with it ([`Demotion`]).
    fn check(&mut self, e: tokio_postgres::Error) -> StoreError {
        if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
            self.demotion.seen();
        }
        let err = map_err(e);
        if matches!(err, StoreError::Unavailable(_)) {
            if let Some(c) = self.client.take() {
                let _ = Object::take(c);
            }
            self.open = false;
        }
        err
    }
}

/// Each value with the type left to the server (see [`unspecified`]).
fn params(p: &[Value]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    let ty = unspecified();
    p.iter().map(|v| (v as &(dyn ToSql + Sync), ty.clone())).collect()
}

#[async_trait]
impl Tx for PgTx {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn query(&mut self, sql: &str, p: Vec<Value>) -> Result<Vec<Row>> {
        let sql = render(Dialect::Postgres, sql);
        self.in_flight = true;
        let res = self.client()?.query_typed(&sql, &params(&p)).await;
        self.in_flight = false;
        match res {
            Ok(rows) => rows.iter().map(from_row).collect(),
            Err(e) => Err(self.check(e)),
        }
    }

    async fn execute(&mut self, sql: &str, p: Vec<Value>) -> Result<u64> {
        let sql = render(Dialect::Postgres, sql);
        self.in_flight = true;
        let res = self.client()?.execute_typed(&sql, &params(&p)).await;
        self.in_flight = false;
        res.map_err(|e| self.check(e))
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        let sql = render(Dialect::Postgres, sql);
        self.in_flight = true;
        let res = self.client()?.batch_execute(&sql).await;
        self.in_flight = false;
        res.map_err(|e| self.check(e))
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.open {
            self.in_flight = true;
            let res = self.client()?.batch_execute("COMMIT").await;
            self.in_flight = false;
            res.map_err(|e| self.check(e))?;
            self.open = false;
        }
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        if self.open {
            self.in_flight = true;
            let res = self.client()?.batch_execute("ROLLBACK").await;
            self.in_flight = false;
            res.map_err(|e| self.check(e))?;
            self.open = false;
        }
        Ok(())
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        if !self.open && !self.in_flight {
            // Clean: dropping the object puts it back in the pool.
            return;
        }
        // Dropped inside a transaction or while a statement runs. Drop cannot await, so a
        // task rolls back (or, for a read, waits for the query still running: the empty
        // query is answered after it) and only then puts the connection back. If that takes
        // longer than DROP_GRACE, the statement still running is cancelled on the server, so
        // its backend lets go of what it holds, and the connection is discarded.
        let open = self.open;
        let tls = self.tls.clone();
        let guard = Discard(Some(client));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let Some(client) = guard.0.as_ref() else { return };
                let settle = client.batch_execute(if open { "ROLLBACK" } else { "" });
                if matches!(tokio::time::timeout(DROP_GRACE, settle).await, Ok(Ok(()))) {
                    guard.keep();
                    return;
                }
                let token = client.cancel_token();
                let _ = tokio::time::timeout(Duration::from_secs(2), token.cancel_query(tls)).await;
                // `guard` drops here and discards the connection.
            });
        }
        // Without a runtime, or if the task is dropped unrun, `guard` discards it.
    }
}
