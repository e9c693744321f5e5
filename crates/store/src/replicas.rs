//! Read replicas (PostgreSQL): which autocommit reads go to a streaming replica, and which
//! replicas are fit to take them.
//!
//! Only reads that show something to an API client ([`Store::view`]: an execution, its
//! attempts and logs, the lists, the audit trail) and are made inside [`Store::routed`] may go
//! to a replica: the API wraps the handlers of its read requests in a route
//! (`crates/api/src/replicas.rs`). Every other read (authentication, rights, leases, sessions,
//! the store's clock, claims, triggers, fencing), every write and every read inside a write
//! transaction is on the primary, inside a route or not.
//!
//! A route picks its replica once, when it first reads, from what the last health check saw:
//! a replica that answered, is still in recovery, lags by less than both limits and, when the
//! request carries a WAL position (read-your-writes), had replayed at least that far. Routes
//! take the fit replicas in turn, so the reads spread over them. Every
//! read of the request then goes there, so one answer never mixes two replicas' views (it may mix a replica and the primary after a fallback). A
//! replica whose connection fails is marked down at once and the read, and the rest of the
//! request, go to the primary: a replica that dies costs no failed request, also when it dies
//! between a connection's checkout and its query ([`ReplicaTx`]).

use crate::db::{Dialect, Row, Tx, Value};
use crate::postgres::{PgPool, PgReader};
use crate::{Result, Store, StoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use shoal_wire::{Lsn, Replica as ReplicaView, ReplicaState};

/// How far behind the primary a replica may be and still serve reads.
#[derive(Clone, Copy, Debug)]
pub struct MaxLag {
    pub time: Duration,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
struct Health {
    /// When this was found (this node's monotonic clock).
    checked: Option<std::time::Instant>,
    state: ReplicaState,
    replayed: Option<Lsn>,
    lag_ms: Option<u64>,
    lag_bytes: Option<u64>,
    error: Option<String>,
}

pub(crate) struct Replica {
    address: String,
    pool: PgPool,
    health: Mutex<Health>,
    reads: AtomicU64,
}

/// The node's replicas and their limits.
pub(crate) struct Replicas {
    list: Vec<Arc<Replica>>,
    /// Counts routes, to take the fit replicas in turn.
    turn: AtomicUsize,
    /// The primary's WAL position once this node's schema was in place
    /// ([`Store::replicas_wait_for_schema`]): a replica that has not replayed that far may
    /// lack a table or column this node reads, and takes no reads.
    floor: Mutex<Option<Lsn>>,
    max_lag: MaxLag,
    /// Reads the primary served inside a route (no fit replica, or one that failed).
    primary_reads: Arc<AtomicU64>,
    /// Where a replica's failed read goes instead.
    primary: PgReader,
}

impl Replica {
    /// Marks the replica down (until a health check finds it back), after a failed read.
    fn failed(&self, e: &StoreError) {
        tracing::warn!(replica = %self.address, error = %e, "a read replica failed; reading from the primary");
        let mut h = self.health.lock();
        h.state = ReplicaState::Down;
        h.error = Some(e.to_string());
    }
}

/// How long one health check of one replica may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a read may wait on a replica (a connection, then its answer) before it is made on
/// the primary instead: a replica that takes connections but never answers costs no more.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// A health check older than this says nothing: the replica takes no reads until the next one
/// (the `replicas` worker checks every 500 ms; a primary it cannot read stops the checks).
const STALE: Duration = Duration::from_secs(2);

/// Where a routed request read from: the primary, or the replica at this index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Primary,
    Replica(usize),
}

/// A request's read route: whether it may read from a replica, the WAL position it must see,
/// and, once chosen, where its reads go.
pub struct Route {
    replica_wanted: bool,
    at_least: Option<Lsn>,
    chosen: Mutex<Option<Source>>,
}

impl Route {
    /// A route that reads from a fit replica when `replica_wanted`, else from the primary.
    pub fn new(replica_wanted: bool, at_least: Option<Lsn>) -> Arc<Route> {
        Arc::new(Route { replica_wanted, at_least, chosen: Mutex::new(None) })
    }
}

tokio::task_local! {
    static ROUTE: Arc<Route>;
}

impl Replicas {
    fn fit(&self, at_least: Option<Lsn>) -> Option<usize> {
        let at_least = at_least.max(*self.floor.lock());
        let fit: Vec<usize> = (0..self.list.len())
            .filter(|&i| {
                let h = self.list[i].health.lock();
                let fresh = h.checked.is_some_and(|t| t.elapsed() < STALE);
                fresh
                    && h.state == ReplicaState::Ok
                    && at_least.is_none_or(|want| h.replayed.is_some_and(|got| got >= want))
            })
            .collect();
        if fit.is_empty() {
            return None;
        }
        Some(fit[self.turn.fetch_add(1, Ordering::Relaxed) % fit.len()])
    }
}

impl Store {
    /// Adds read replicas (PostgreSQL only): `urls` are each replica's URL, opened lazily (no
    /// connection until the first health check). They take no reads until checked.
    pub fn with_replicas(mut self, urls: &[String], pool_size: usize, max_lag: MaxLag) -> Result<Store> {
        if urls.is_empty() {
            return Ok(self);
        }
        if self.dialect() != crate::Dialect::Postgres {
            return Err(StoreError::Config(
                "store.replicas is set but the store is SQLite: read replicas are a PostgreSQL feature".into(),
            ));
        }
        let primary = match &self.backend {
            crate::Backend::Postgres(p) => p.reader(),
            crate::Backend::Sqlite(_) => unreachable!("checked above"),
        };
        let mut list = Vec::with_capacity(urls.len());
        for url in urls {
            let pool = PgPool::open(url, "store.replicas", pool_size, None)?;
            let address = pool.address();
            list.push(Arc::new(Replica {
                address,
                pool,
                health: Mutex::new(Health {
                    checked: None,
                    state: ReplicaState::Unknown,
                    replayed: None,
                    lag_ms: None,
                    lag_bytes: None,
                    error: None,
                }),
                reads: AtomicU64::new(0),
            }));
        }
        self.replicas = Some(Replicas {
            list,
            turn: AtomicUsize::new(0),
            floor: Mutex::new(None),
            max_lag,
            primary_reads: Arc::new(AtomicU64::new(0)),
            primary,
        });
        Ok(self)
    }

    /// Whether this store has replicas to route reads to.
    pub fn has_replicas(&self) -> bool {
        self.replicas.is_some()
    }

    /// Runs `fut` with `route` for its reads ([`Store::read`]); see the module's text.
    pub async fn routed<F: std::future::Future>(route: Arc<Route>, fut: F) -> F::Output {
        ROUTE.scope(route, fut).await
    }

    /// Where the reads of `route` went, as `X-Shoal-Read-From` says it: `primary` or
    /// `replica:HOST:PORT`. A route that read nothing read from nowhere, said as `primary`.
    pub fn read_from(&self, route: &Route) -> String {
        match (*route.chosen.lock(), &self.replicas) {
            (Some(Source::Replica(i)), Some(r)) => format!("replica:{}", r.list[i].address),
            _ => "primary".into(),
        }
    }

    /// An autocommit connection for a read inside a route that may use a replica; `None` when
    /// the read goes to the primary.
    pub(crate) async fn replica_read(&self) -> Option<Box<dyn Tx>> {
        let replicas = self.replicas.as_ref()?;
        let route = ROUTE.try_with(Arc::clone).ok()?;
        if !route.replica_wanted {
            return None;
        }
        let source = {
            let mut chosen = route.chosen.lock();
            *chosen.get_or_insert_with(|| replicas.fit(route.at_least).map_or(Source::Primary, Source::Replica))
        };
        let Source::Replica(i) = source else {
            replicas.primary_reads.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let replica = &replicas.list[i];
        let begun = tokio::time::timeout(READ_TIMEOUT, replica.pool.begin(true)).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!("no connection within {}s", READ_TIMEOUT.as_secs())))
        });
        match begun {
            Ok(tx) => Some(Box::new(ReplicaTx {
                inner: tx,
                on_primary: false,
                replica: replica.clone(),
                route,
                primary: replicas.primary.clone(),
                primary_reads: replicas.primary_reads.clone(),
            })),
            Err(e) => {
                // This request goes on on the primary.
                replica.failed(&e);
                *route.chosen.lock() = Some(Source::Primary);
                replicas.primary_reads.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The primary's WAL position now: after a write's commit, one a replica must have
    /// replayed to show that write. `None` on SQLite. The insert position, not the write
    /// position (`pg_current_wal_lsn`): with `synchronous_commit` off, a commit's record may
    /// not be written out yet, and the write position would then fall short of it.
    /// Keeps reads off every replica until it has replayed the primary's WAL as far as now:
    /// called once the schema is migrated, so that a replica behind a migration this node
    /// made never answers a read with a missing table or column (which would fall back to the
    /// primary, with a warning, read after read).
    pub async fn replicas_wait_for_schema(&self) -> Result<()> {
        let Some(replicas) = &self.replicas else { return Ok(()) };
        let position = self.wal_position().await?;
        *replicas.floor.lock() = position;
        Ok(())
    }

    pub async fn wal_position(&self) -> Result<Option<Lsn>> {
        if self.dialect() != crate::Dialect::Postgres {
            return Ok(None);
        }
        let mut c = self.primary_read().await?;
        let row = crate::db::query_one(c.as_mut(), "SELECT CAST(pg_current_wal_insert_lsn() AS TEXT)", vec![])
            .await?
            .ok_or_else(|| StoreError::Internal("no row from pg_current_wal_insert_lsn()".into()))?;
        let text = row.text(0)?;
        Lsn::parse(&text).map(Some).ok_or_else(|| StoreError::Internal(format!("unreadable WAL position `{text}`")))
    }

    /// Checks every replica once: whether it answers, is still a replica, and how far it lags
    /// behind the primary's position read just before. Returns how many are fit.
    pub async fn check_replicas(&self) -> Result<usize> {
        let Some(replicas) = &self.replicas else { return Ok(0) };
        let primary = tokio::time::timeout(CHECK_TIMEOUT, self.wal_position())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "the primary's WAL position: no answer within {}s",
                    CHECK_TIMEOUT.as_secs()
                )))
            })?
            .unwrap_or(Lsn(0));
        let checks = replicas.list.iter().map(|r| async move {
            let found = tokio::time::timeout(CHECK_TIMEOUT, check(r)).await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())))
            });
            let checked = Some(std::time::Instant::now());
            let health = match found {
                Ok(Probe { in_recovery: false, .. }) => Health {
                    checked,
                    state: ReplicaState::Down,
                    replayed: None,
                    lag_ms: None,
                    lag_bytes: None,
                    error: Some("not in recovery: it is a primary now, not a replica".into()),
                },
                Ok(p) => {
                    let behind = p.replayed.map_or(u64::MAX, |got| primary.0.saturating_sub(got.0));
                    // Idle primaries write nothing, so the last replayed transaction's age only
                    // counts while there is WAL left to replay.
                    let lag_ms = if behind == 0 { 0 } else { p.last_replay_age_ms };
                    let fits = behind <= replicas.max_lag.bytes && lag_ms <= replicas.max_lag.time.as_millis() as u64;
                    Health {
                        checked,
                        state: if fits { ReplicaState::Ok } else { ReplicaState::Lagging },
                        replayed: p.replayed,
                        lag_ms: Some(lag_ms),
                        lag_bytes: Some(behind),
                        error: None,
                    }
                }
                Err(e) => Health {
                    checked,
                    state: ReplicaState::Down,
                    replayed: None,
                    lag_ms: None,
                    lag_bytes: None,
                    error: Some(e.to_string()),
                },
            };
            let was = std::mem::replace(&mut *r.health.lock(), health.clone()).state;
            if was != health.state {
                tracing::info!(replica = %r.address, from = %was, to = %health.state, error = ?health.error, "read replica state changed");
            }
            health.state == ReplicaState::Ok
        });
        Ok(futures::future::join_all(checks).await.into_iter().filter(|fit| *fit).count())
    }

    /// The replicas as the last checks found them (empty without replicas), as the API shows
    /// them.
    pub fn replica_views(&self) -> Vec<ReplicaView> {
        let Some(replicas) = &self.replicas else { return Vec::new() };
        replicas
            .list
            .iter()
            .map(|r| {
                let h = r.health.lock().clone();
                ReplicaView {
                    address: r.address.clone(),
                    state: h.state,
                    lag_ms: h.lag_ms,
                    lag_bytes: h.lag_bytes,
                    reads: r.reads.load(Ordering::Relaxed),
                    error: h.error,
                }
            })
            .collect()
    }

    /// Reads that routes sent to the primary (no fit replica, or one that failed).
    pub fn routed_primary_reads(&self) -> u64 {
        self.replicas.as_ref().map_or(0, |r| r.primary_reads.load(Ordering::Relaxed))
    }
}

/// A read on a replica that, if the replica fails under it (it stops, the network breaks),
/// is made again on the primary, with the rest of its request.
struct ReplicaTx {
    inner: Box<dyn Tx>,
    on_primary: bool,
    replica: Arc<Replica>,
    route: Arc<Route>,
    primary: PgReader,
    primary_reads: Arc<AtomicU64>,
}

#[async_trait]
impl Tx for ReplicaTx {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        if self.on_primary {
            self.primary_reads.fetch_add(1, Ordering::Relaxed);
            return self.inner.query(sql, params).await;
        }
        let answer = tokio::time::timeout(READ_TIMEOUT, self.inner.query(sql, params.clone()))
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {}s", READ_TIMEOUT.as_secs()))));
        match answer {
            Ok(rows) => {
                self.replica.reads.fetch_add(1, Ordering::Relaxed);
                Ok(rows)
            }
            // Any other error of a replica (a migration not replayed yet, a conflict with
            // recovery) is its own, not the read's: the primary answers instead.
            Err(e) => {
                if matches!(e, StoreError::Unavailable(_)) {
                    self.replica.failed(&e);
                } else {
                    tracing::warn!(replica = %self.replica.address, error = %e, "a read failed on a replica; reading from the primary");
                }
                *self.route.chosen.lock() = Some(Source::Primary);
                self.inner = self.primary.begin().await?;
                self.on_primary = true;
                self.primary_reads.fetch_add(1, Ordering::Relaxed);
                self.inner.query(sql, params).await
            }
        }
    }

    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64> {
        self.inner.execute(sql, params).await
    }

    async fn batch(&mut self, sql: &str) -> Result<()> {
        self.inner.batch(sql).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        self.inner.rollback().await
    }
}

struct Probe {
    in_recovery: bool,
    replayed: Option<Lsn>,
    last_replay_age_ms: u64,
}

async fn check(r: &Replica) -> Result<Probe> {
    let mut c = r.pool.begin(true).await?;
    let row = crate::db::query_one(
        c.as_mut(),
        "SELECT pg_is_in_recovery(), CAST(pg_last_wal_replay_lsn() AS TEXT),
                CAST(COALESCE(EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())) * 1000, 0) AS BIGINT)",
        vec![],
    )
    .await?
    .ok_or_else(|| StoreError::Internal("no row from the replica check".into()))?;
    Ok(Probe {
        in_recovery: row.i64(0)? != 0,
        replayed: row.opt_text(1)?.as_deref().and_then(Lsn::parse),
        last_replay_age_ms: row.i64(2)?.max(0) as u64,
    })
}
