//! The embedded SQLite backend: a small pool of connections, each owned by its own thread.
//!
//! rusqlite is synchronous and a write may wait on another process's lock (several local
//! nodes can share one file), so no SQLite call ever runs on a tokio worker thread: each
//! connection lives on a dedicated thread and a transaction sends it closures.

use crate::db::{render, Dialect, Row, Tx, Value};
use crate::{Result, StoreError};
use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OpenFlags};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

struct Handle {
    jobs: mpsc::Sender<Job>,
}

pub struct SqlitePool {
    idle: Arc<Mutex<Vec<Handle>>>,
    permits: Arc<Semaphore>,
    /// SQLite has one writer at a time, and its busy handler is not fair: under load a waiting
    /// writer (a lease renewal, say) can lose the race again and again until it times out.
    /// Writers of this process queue here instead, first come first served, and only
    /// writers of other processes sharing the file meet the busy handler.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The database file; node sessions keep their lock files beside it.
    pub(crate) path: std::path::PathBuf,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL lets readers (log followers, listings) run beside the one writer, across processes.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode is durable against a process crash (what a node's SIGKILL is) and
    // only risks the last commits on an OS crash or power loss.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl SqlitePool {
    pub fn open(path: &Path, size: usize) -> Result<SqlitePool> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot create the directory {} for the SQLite store: {e}",
                    dir.display()
                ))
            })?;
        }
        let mut handles = Vec::with_capacity(size);
        for i in 0..size.max(1) {
            let conn = open(path).map_err(|e| {
                StoreError::Unavailable(format!("cannot open the SQLite store {}: {e}", path.display()))
            })?;
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name(format!("shoal-sqlite-{i}"))
                .spawn(move || {
                    let mut conn = conn;
                    // Ends when every sender (the handle) is dropped with the pool.
                    while let Ok(job) = rx.recv() {
                        job(&mut conn);
                    }
                })
                .map_err(|e| StoreError::Internal(format!("cannot start a SQLite thread: {e}")))?;
            handles.push(Handle { jobs: tx });
        }
        Ok(SqlitePool {
            path: path.to_owned(),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            permits: Arc::new(Semaphore::new(handles.len())),
            idle: Arc::new(Mutex::new(handles)),
        })
    }

    /// A connection for one transaction (`write`: `BEGIN IMMEDIATE`, taking the write lock up
    /// front so two writers never deadlock upgrading a read lock) or for autocommit reads.
    pub async fn begin(&self, write: bool, autocommit: bool) -> Result<Box<dyn Tx>> {
        let writer = if write && !autocommit { Some(self.write_lock.clone().lock_owned().await) } else { None };
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("the SQLite pool is closed".into()))?;
        let handle = self
            .idle
            .lock()
            .map_err(|_| StoreError::Internal("the SQLite pool lock is poisoned".into()))?
            .pop()
            .ok_or_else(|| StoreError::Internal("no idle SQLite connection behind a permit".into()))?;
        let mut tx =
            SqliteTx { handle: Some(handle), idle: self.idle.clone(), _permit: permit, open: false, _writer: writer };
        if !autocommit {
            tx.batch(if write { "BEGIN IMMEDIATE" } else { "BEGIN" }).await?;
            tx.open = true;
        }
        Ok(Box::new(tx))
    }
}

struct SqliteTx {
    handle: Option<Handle>,
    idle: Arc<Mutex<Vec<Handle>>>,
    _permit: OwnedSemaphorePermit,
    open: bool,
    /// Held until the transaction ends (dropped after `drop` has queued any rollback, which
    /// runs on the connection's thread before that connection is used again).
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(e.to_string())
        }
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
            ) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Internal(format!("sqlite: {e}")),
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::I64(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Value::Bytes(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

fn run_query(conn: &mut Connection, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(params_from_iter(params.iter().map(to_sql)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut vals = Vec::with_capacity(n);
        for i in 0..n {
            vals.push(match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::I64(v),
                ValueRef::Real(f) => Value::I64(f as i64),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
            });
        }
        out.push(Row(vals));
    }
    Ok(out)
}

impl SqliteTx {
    async fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let handle = self.handle.as_ref().ok_or_else(|| StoreError::Internal("transaction already ended".into()))?;
        handle
            .jobs
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| StoreError::Internal("the SQLite thread is gone".into()))?;
        rx.await.map_err(|_| StoreError::Internal("the SQLite thread dropped a reply".into()))?.map_err(map_err)
    }
}

#[async_trait]
impl Tx for SqliteTx {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        let sql = render(Dialect::Sqlite, sql);
        self.call(move |c| run_query(c, &sql, &params)).await
    }

    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        let sql = render(Dialect::Sqlite, sql);
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            stmt.execute(params_from_iter(params.iter().map(to_sql))).map(|n| n as u64)
        })
        .await
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        let sql = render(Dialect::Sqlite, sql);
        self.call(move |c| c.execute_batch(&sql)).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.open {
            self.open = false;
            if let Err(e) = self.call(|c| c.execute_batch("COMMIT")).await {
                // A failed COMMIT leaves the transaction open; roll it back so the
                // connection goes back to the pool clean.
                self.open = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        self.end().await
    }
}

impl SqliteTx {
    async fn end(&mut self) -> Result<()> {
        if self.open {
            self.open = false;
            self.call(|c| c.execute_batch("ROLLBACK")).await?;
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            if self.open {
                // Dropped without commit (an error, or a cancelled request): roll back on the
                // connection's own thread before anyone else can use it. The job queue is
                // ordered, so the rollback runs before the next transaction's BEGIN.
                let _ = handle.jobs.send(Box::new(|c: &mut Connection| {
                    let _ = c.execute_batch("ROLLBACK");
                }));
            }
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(handle);
            }
        }
    }
}
