//! The embedded SQLite backend: a small pool of connections, each owned by its own thread.
//!
//! rusqlite is synchronous and a write may wait on another process's lock (several local
//! nodes can share one file), so no SQLite call ever runs on a tokio worker thread: each
//! connection lives on a dedicated thread and a transaction sends it closures.
//!
//! Cancellation safety: a transaction's future may be dropped at any await (a client closes
//! its connection and hyper drops the handler; a `timeout` around a lease renewal fires),
//! including while its `BEGIN` or `COMMIT` is still queued on the connection's thread. So a
//! connection goes back to the pool only from its own thread, after everything queued before
//! has run and any transaction still open has been rolled back: the [`Checkout`] travels
//! inside that last closure. A call that gets no answer within [`CALL_TIMEOUT`] interrupts
//! its statement and the connection is discarded and replaced, never waited on forever.

use crate::db::{render, Dialect, Row, Tx, Value};
use crate::{Result, StoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, InterruptHandle, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may go unanswered before its statement is interrupted and its
/// connection discarded: past the busy timeout, so only a stuck connection meets it.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a transaction waits for this process's writer queue and a free connection.
const POOL_WAIT: Duration = Duration::from_secs(10);

struct Handle {
    jobs: mpsc::Sender<Job>,
    interrupt: Arc<InterruptHandle>,
}

/// What the pool shares with its transactions and connection threads.
struct Shared {
    /// The pool's connections ([`MAIN`]) and one more kept for lease renewals alone
    /// ([`LEASE`]), so a renewal never waits behind reads for a connection either.
    lanes: [Lane; 2],
    /// SQLite has one writer at a time, and its busy handler is not fair: under load a waiting
    /// writer (a lease renewal, say) can lose the race again and again until it times out.
    /// Writers of this process queue here instead, first come first served, and only
    /// writers of other processes sharing the file meet the busy handler.
    queue: Arc<tokio::sync::Mutex<()>>,
    /// Held by whichever writer of this process holds SQLite's write lock now. An ordinary
    /// writer takes it (holding `queue`) only once its `BEGIN IMMEDIATE` has the lock, and
    /// lets the lock go again if a lease renewal holds the gate; a renewal takes only this.
    /// So a renewal waits for the one transaction under way, never for the whole queue, nor
    /// for a writer that is itself still waiting on another process (whose wait in SQLite's
    /// busy handler is not bounded by anything of ours).
    gate: Arc<tokio::sync::Mutex<()>>,
    path: PathBuf,
    size: usize,
    /// When each connection now handed out was taken, by checkout number.
    held: Mutex<HashMap<u64, Instant>>,
    /// When the SQLite call each connection's thread runs now began, by checkout number: a
    /// long one waits on the database (another process's lock, a slow disk), not on us.
    calls: Mutex<HashMap<u64, Instant>>,
    next_checkout: AtomicU64,
    /// Transactions waiting for the writer queue or a connection.
    waiting: AtomicUsize,
    /// Connections discarded (stuck, or their thread gone) and replaced.
    discarded: AtomicU64,
}

pub struct SqlitePool {
    shared: Arc<Shared>,
    /// The database file; node sessions keep their lock files beside it.
    pub(crate) path: PathBuf,
}

/// Opens a connection, retrying while another process holds the lock its set-up needs:
/// several nodes started at once on a new file race to switch it to WAL, and SQLite may
/// answer that race with "database is locked" without waiting in its busy handler.
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let started = std::time::Instant::now();
    loop {
        match open_once(path) {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn open_once(path: &Path) -> rusqlite::Result<Connection> {
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

/// Opens a connection on a thread of its own.
fn spawn_connection(path: &Path, name: String, lane: usize) -> Result<Handle> {
    let conn = open(path)
        .and_then(|c| {
            c.busy_handler(Some(if lane == LEASE { busy_every::<1> } else { busy_every::<2> }))?;
            Ok(c)
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot open the SQLite store {}: {e}", path.display())))?;
    let interrupt = Arc::new(conn.get_interrupt_handle());
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut conn = conn;
            // Ends when every sender is dropped (with the pool, or when this connection is
            // discarded); what was queued before still runs, and closing the connection
            // rolls back whatever it left open.
            while let Ok(job) = rx.recv() {
                job(&mut conn);
            }
        })
        .map_err(|e| StoreError::Internal(format!("cannot start a SQLite thread: {e}")))?;
    Ok(Handle { jobs: tx, interrupt })
}

/// The busy handler of every connection: while another process holds the write lock, try
/// again every `MS` milliseconds (for as long as [`BUSY_TIMEOUT`]), where SQLite's own
/// handler backs off to 100 ms between tries. Lock hand-overs between processes are a race
/// among waiters, and a writer that sleeps 100 ms at a time loses it again and again to a
/// process whose writers follow one another without a gap (seen at 1.3 s for one `BEGIN`
/// under load). Renewals try every millisecond, ordinary writers every two: the renewal, a
/// transaction of two small statements, stays the likeliest winner. Only one ordinary writer
/// of a process waits here at a time (the others queue in the pool), so this costs little.
fn busy_every<const MS: u64>(tries: i32) -> bool {
    if (tries.max(0) as u64).saturating_mul(MS) >= BUSY_TIMEOUT.as_millis() as u64 {
        return false;
    }
    std::thread::sleep(Duration::from_millis(MS));
    true
}

/// What this node's own pool is doing, for messages that must tell a wedge in this process
/// from a store that does not answer.
#[derive(Clone, Debug)]
pub struct PoolReport {
    pub size: usize,
    pub in_use: usize,
    pub waiting: usize,
    pub oldest_held: Option<Duration>,
    /// How long the longest call now inside the database has been running.
    pub longest_call: Option<Duration>,
    /// How many calls are inside the database now (a lease renewal's among them).
    pub calls: usize,
    pub discarded: u64,
}

impl PoolReport {
    /// Whether a call has been inside the database for `long` or more: this node's writers
    /// then wait on the store (another process's lock, a slow disk), not on themselves.
    pub fn stuck_in_database(&self, long: Duration) -> bool {
        self.longest_call.is_some_and(|c| c >= long)
    }
}

impl std::fmt::Display for PoolReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} connections in use", self.in_use, self.size)?;
        if let Some(d) = self.oldest_held {
            write!(f, " (the oldest for {:.1}s)", d.as_secs_f64())?;
        }
        write!(f, ", {} waiting", self.waiting)?;
        if let Some(d) = self.longest_call {
            write!(f, ", one call inside the database for {:.1}s", d.as_secs_f64())?;
        }
        if self.discarded > 0 {
            write!(f, ", {} stuck connections discarded so far", self.discarded)?;
        }
        Ok(())
    }
}

impl Shared {
    fn report(&self) -> PoolReport {
        let oldest_held = self.held.lock().values().min().map(|t| t.elapsed());
        let (longest_call, calls) = {
            let calls = self.calls.lock();
            (calls.values().min().map(|t| t.elapsed()), calls.len())
        };
        PoolReport {
            longest_call,
            calls,
            size: self.size,
            in_use: self.size.saturating_sub(self.lanes[MAIN].permits.available_permits()),
            waiting: self.waiting.load(Ordering::Relaxed),
            oldest_held,
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }

    fn pool_error(&self, what: &str) -> StoreError {
        StoreError::Unavailable(format!(
            "this node's own SQLite pool: {what} within {}s ({}); the store file itself may be fine",
            POOL_WAIT.as_secs(),
            self.report()
        ))
    }

    /// A connection is gone (stuck, or its thread died): open another in its place, off the
    /// async threads, and only then give its permit back.
    fn replace(self: &Arc<Self>, lane: usize, permit: OwnedSemaphorePermit) {
        permit.forget();
        let n = self.discarded.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(discarded = n, "a SQLite connection was discarded; opening another in its place");
        let shared = self.clone();
        let spawned = std::thread::Builder::new().name("shoal-sqlite-reopen".into()).spawn(move || {
            let mut wait = Duration::from_millis(100);
            loop {
                match spawn_connection(&shared.path, format!("shoal-sqlite-r{n}"), lane) {
                    Ok(handle) => {
                        shared.lanes[lane].idle.lock().push(handle);
                        shared.lanes[lane].permits.add_permits(1);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reopen a SQLite connection; trying again");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to reopen a SQLite connection; the pool is smaller");
        }
    }
}

/// Connections that are idle, and a permit for each connection of the lane not in use.
struct Lane {
    idle: Mutex<Vec<Handle>>,
    permits: Arc<Semaphore>,
}

const MAIN: usize = 0;
const LEASE: usize = 1;

/// A connection taken from the pool. It goes back only through [`Checkout::give_back`], on
/// the connection's own thread; dropped any other way, the connection is replaced.
struct Checkout {
    handle: Option<Handle>,
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    /// [`MAIN`] or [`LEASE`]: where it goes back to.
    lane: usize,
    id: u64,
    /// Held until the transaction's last closure has run (after any rollback): the gate,
    /// then the queue (none for reads, only the gate for a lease renewal; an ordinary writer
    /// holds the gate from when its `BEGIN IMMEDIATE` has the write lock).
    _writer: (Option<tokio::sync::OwnedMutexGuard<()>>, Option<tokio::sync::OwnedMutexGuard<()>>),
}

/// What a transaction is for, which decides how it waits for SQLite's one writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Autocommit reads: no transaction, no writer lock.
    Read,
    /// A write transaction, queued first come first served behind this process's writers.
    Write,
    /// A lease renewal: waits only for the write under way, on a connection of its own. Its
    /// lateness is what kills a node's jobs, so it never waits behind a queue of scheduler
    /// and log writes, nor behind reads for a connection.
    Lease,
}

impl Checkout {
    fn give_back(mut self) {
        if let Some(handle) = self.handle.take() {
            self.shared.lanes[self.lane].idle.lock().push(handle);
        }
        // The permit is released with `self`, after the handle is idle again.
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.shared.held.lock().remove(&self.id);
        if let Some(handle) = self.handle.take() {
            // Not given back: the connection is stuck or its thread gone. Dropping its sender
            // ends the thread once its current call returns.
            drop(handle);
            if let Some(permit) = self.permit.take() {
                self.shared.replace(self.lane, permit);
            }
        }
    }
}

/// A call inside the database, in [`Shared::calls`] until it ends, even by a panic (which
/// ends its connection's thread): a call that is over must never be reported as one still
/// waiting on the store.
struct InCall {
    shared: Arc<Shared>,
    id: u64,
}

impl InCall {
    fn begin(shared: Arc<Shared>, id: u64) -> InCall {
        shared.calls.lock().insert(id, Instant::now());
        InCall { shared, id }
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        self.shared.calls.lock().remove(&self.id);
    }
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
        let size = size.max(1);
        let handles =
            (0..size).map(|i| spawn_connection(path, format!("shoal-sqlite-{i}"), MAIN)).collect::<Result<Vec<_>>>()?;
        let lease = spawn_connection(path, "shoal-sqlite-lease".into(), LEASE)?;
        Ok(SqlitePool {
            path: path.to_owned(),
            shared: Arc::new(Shared {
                lanes: [
                    Lane { idle: Mutex::new(handles), permits: Arc::new(Semaphore::new(size)) },
                    Lane { idle: Mutex::new(vec![lease]), permits: Arc::new(Semaphore::new(1)) },
                ],
                queue: Arc::new(tokio::sync::Mutex::new(())),
                gate: Arc::new(tokio::sync::Mutex::new(())),
                path: path.to_owned(),
                size,
                held: Mutex::new(HashMap::new()),
                calls: Mutex::new(HashMap::new()),
                next_checkout: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
                discarded: AtomicU64::new(0),
            }),
        })
    }

    pub fn report(&self) -> PoolReport {
        self.shared.report()
    }

    /// A connection for one write transaction (`BEGIN IMMEDIATE`, taking the write lock up
    /// front so two writers never deadlock upgrading a read lock) or for autocommit reads.
    pub async fn begin(&self, mode: Mode) -> Result<Box<dyn Tx>> {
        self.acquire(mode).await?.start(mode).await
    }

    /// The first half of [`SqlitePool::begin`]: waits for this process's writer queue (by
    /// `mode`) and a connection, but sends nothing to the database yet.
    pub(crate) async fn acquire(&self, mode: Mode) -> Result<SqliteTx> {
        let shared = &self.shared;
        let checkout = {
            let _waiting = shoal_core::held::Held::new(&shared.waiting);
            let deadline = tokio::time::Instant::now() + POOL_WAIT;
            let late = || shared.pool_error("this node's writers did not get their turn");
            let queue = match mode {
                Mode::Write => Some(
                    tokio::time::timeout_at(deadline, shared.queue.clone().lock_owned()).await.map_err(|_| late())?,
                ),
                Mode::Read | Mode::Lease => None,
            };
            // An ordinary writer takes the gate in `start`, once it has the write lock.
            let gate = match mode {
                Mode::Lease => Some(
                    tokio::time::timeout_at(deadline, shared.gate.clone().lock_owned()).await.map_err(|_| late())?,
                ),
                Mode::Read | Mode::Write => None,
            };
            let writer = (gate, queue);
            let lane = if mode == Mode::Lease { LEASE } else { MAIN };
            let permit = tokio::time::timeout_at(deadline, shared.lanes[lane].permits.clone().acquire_owned())
                .await
                .map_err(|_| shared.pool_error("no connection came free"))?
                .map_err(|_| StoreError::Internal("the SQLite pool is closed".into()))?;
            let handle = shared.lanes[lane]
                .idle
                .lock()
                .pop()
                .ok_or_else(|| StoreError::Internal("no idle SQLite connection behind a permit".into()))?;
            let id = shared.next_checkout.fetch_add(1, Ordering::Relaxed);
            shared.held.lock().insert(id, Instant::now());
            Checkout { handle: Some(handle), permit: Some(permit), shared: shared.clone(), lane, id, _writer: writer }
        };
        Ok(SqliteTx { checkout: Some(checkout), broken: false, in_flight: false })
    }
}

impl SqliteTx {
    /// The second half of [`SqlitePool::begin`]: `BEGIN IMMEDIATE` unless `mode` reads. It is
    /// here that a writer waits for another process's lock on the file.
    pub(crate) async fn start(mut self, mode: Mode) -> Result<Box<dyn Tx>> {
        match mode {
            Mode::Read => {}
            Mode::Lease => self.begin_immediate().await?,
            Mode::Write => {
                let Some(gate) = self.checkout.as_ref().map(|c| c.shared.gate.clone()) else {
                    return Err(StoreError::Internal("transaction already ended".into()));
                };
                loop {
                    // Let a renewal of this node under way finish first, then wait for the
                    // write lock without holding the gate, so a renewal that comes meanwhile
                    // waits on the store itself (its own busy handler), not behind us.
                    drop(gate.lock().await);
                    self.begin_immediate().await?;
                    if let Ok(held) = gate.clone().try_lock_owned() {
                        if let Some(c) = self.checkout.as_mut() {
                            c._writer.0 = Some(held);
                        }
                        break;
                    }
                    // A renewal took the gate while we waited, and now waits for our lock.
                    self.call(|c| c.execute_batch("ROLLBACK")).await?;
                }
            }
        }
        Ok(Box::new(self))
    }

    /// Takes SQLite's write lock. Dropping `self` rolls back from here on, even while BEGIN
    /// is still queued.
    async fn begin_immediate(&mut self) -> Result<()> {
        self.call(move |c| {
            if !c.is_autocommit() {
                // Never expected (connections go back clean); never build on it either.
                c.execute_batch("ROLLBACK")?;
            }
            c.execute_batch("BEGIN IMMEDIATE")
        })
        .await
    }
}

pub(crate) struct SqliteTx {
    checkout: Option<Checkout>,
    /// A call went unanswered: the connection is discarded, not given back.
    broken: bool,
    /// A call was sent and its answer not yet received: dropped now, nobody wants it.
    in_flight: bool,
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
    fn handle(&self) -> Result<&Handle> {
        self.checkout
            .as_ref()
            .and_then(|c| c.handle.as_ref())
            .filter(|_| !self.broken)
            .ok_or_else(|| StoreError::Internal("transaction already ended".into()))
    }

    async fn call<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        let handle = self.handle()?;
        let interrupt = handle.interrupt.clone();
        let (shared, id) = match &self.checkout {
            Some(c) => (c.shared.clone(), c.id),
            None => return Err(StoreError::Internal("transaction already ended".into())),
        };
        if handle
            .jobs
            .send(Box::new(move |conn| {
                let in_call = InCall::begin(shared, id);
                let result = f(conn);
                drop(in_call);
                let _ = reply.send(result);
            }))
            .is_err()
        {
            self.broken = true;
            return Err(StoreError::Unavailable("a SQLite connection's thread is gone; it is being replaced".into()));
        }
        self.in_flight = true;
        let answer = tokio::time::timeout(CALL_TIMEOUT, rx).await;
        self.in_flight = false;
        match answer {
            Ok(Ok(result)) => result.map_err(map_err),
            Ok(Err(_)) => {
                self.broken = true;
                Err(StoreError::Unavailable(
                    "a SQLite connection's thread dropped a reply; it is being replaced".into(),
                ))
            }
            Err(_) => {
                interrupt.interrupt();
                self.broken = true;
                Err(StoreError::Unavailable(format!(
                    "a SQLite call got no answer within {}s; it was interrupted and its connection discarded",
                    CALL_TIMEOUT.as_secs()
                )))
            }
        }
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
        // Only when a transaction is open: autocommit handles have nothing to commit. A
        // failed COMMIT leaves it open; dropping `self` then rolls it back.
        self.call(|c| if c.is_autocommit() { Ok(()) } else { c.execute_batch("COMMIT") }).await
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        self.call(|c| if c.is_autocommit() { Ok(()) } else { c.execute_batch("ROLLBACK") }).await
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let Some(checkout) = self.checkout.take() else { return };
        if self.broken {
            // Checkout's drop discards the connection and opens another.
            return;
        }
        let Some((jobs, interrupt)) = checkout.handle.as_ref().map(|h| (h.jobs.clone(), h.interrupt.clone())) else {
            return;
        };
        if self.in_flight {
            // Dropped while a statement runs (a request whose client left, a renewal past its
            // deadline): nobody wants its answer, so stop it rather than hold the connection,
            // and this process's writer lock, until it ends. It can only be our own statement:
            // the connection is not given back until the closure below has run. (A wait for
            // another process's lock is not cut short; SQLite's busy timeout bounds it.)
            interrupt.interrupt();
        }
        // Queued behind whatever this transaction still had in flight (a BEGIN, a statement,
        // a COMMIT whose answer nobody awaits): roll back what is still open, then put the
        // connection back. If the thread is gone, the job is dropped unrun and the
        // checkout's drop replaces the connection.
        let _ = jobs.send(Box::new(move |c: &mut Connection| {
            if !c.is_autocommit() && c.execute_batch("ROLLBACK").is_err() && !c.is_autocommit() {
                // Still inside a transaction: never hand this connection out again.
                drop(checkout);
                return;
            }
            checkout.give_back();
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 10: a call that panics on its connection's thread ends that thread; the pool must
    /// then replace the connection and report neither a call still inside the database nor a
    /// connection still held.
    #[tokio::test]
    async fn a_panic_inside_a_call_leaves_the_pool_whole_and_its_report_true() {
        let dir = tempfile::tempdir().unwrap();
        let pool = SqlitePool::open(&dir.path().join("shoal.db"), 1).unwrap();
        let mut tx = pool.acquire(Mode::Read).await.unwrap();
        let err = tx.call(|_| -> rusqlite::Result<()> { panic!("a call panics inside the database") }).await;
        assert!(matches!(err, Err(StoreError::Unavailable(_))), "{err:?}");
        drop(tx);

        let replaced = || async { pool.report().in_use == 0 };
        shoal_testkit::wait_until_async("the broken connection replaced", Duration::from_secs(10), replaced).await;
        let report = pool.report();
        assert_eq!(report.discarded, 1, "{report}");
        assert_eq!(report.longest_call, None, "a call that panicked is reported inside the database: {report}");
        assert_eq!(report.oldest_held, None, "{report}");

        // And the replacement works.
        let mut tx = pool.begin(Mode::Write).await.unwrap();
        tx.batch("CREATE TABLE t (x INTEGER)").await.unwrap();
        tx.commit().await.unwrap();
    }
}
