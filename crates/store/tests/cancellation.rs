//! Store futures dropped at any await point must never leave a transaction open.
//!
//! A request handler is dropped when its client goes away, and a lease renewal is raced
//! against a timeout; either can drop a store future while its `BEGIN`, a statement or its
//! `COMMIT` is still in flight. This test does that thousands of times, from several tasks
//! and two handles on one store, at random points (at the n-th suspension of the operation,
//! or after a timeout of up to a few milliseconds), then checks that every handle still commits within a bound
//! and that the database holds no open transaction and no lock.

use shoal_core::RunSpec;
use shoal_store::{NewExecution, NodeRegistration, NodeStatus, Store};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Operations raced per task; tasks per handle; handles on the store.
const ROUNDS: usize = 600;
const TASKS: usize = 4;
const HANDLES: usize = 2;
/// How long a handle may take to commit once the dropping has stopped.
const BOUND: Duration = Duration::from_secs(3);

fn node(id: &str) -> NodeRegistration {
    NodeRegistration {
        id: id.into(),
        url: format!("http://{id}"),
        state: shoal_core::placement::RegistryState::Active,
        tags: vec![],
        slots: 8,
        version: "test".into(),
        gossip_addr: String::new(),
        session_key: 0,
    }
}

fn status() -> NodeStatus {
    NodeStatus {
        state: shoal_core::placement::RegistryState::Active,
        running: 0,
        cpu_permille: 0,
        memory_permille: 0,
        failing_ms: 0,
    }
}

fn inline() -> NewExecution {
    NewExecution {
        sandbox: None,
        job: None,
        params: BTreeMap::new(),
        spec: RunSpec::inline(vec!["true".into()]),
        pinned_node: None,
        idempotency: None,
        run_after: None,
        origin: Default::default(),
    }
}

/// One store operation, chosen by `pick`: writes in transactions of several statements,
/// single writes and reads.
async fn operation(store: &Store, id: &str, generation: i64, pick: u32) {
    let ttl = Duration::from_secs(30);
    let _ = match pick % 6 {
        0 => store.renew_lease(id, generation, ttl, &status()).await.map(drop),
        1 => store.submit(&inline()).await.map(drop),
        2 => store
            .create_sandbox(&format!("s{}", rand::random::<u32>()), shoal_core::SandboxKind::Shared, "/tmp", None, &[])
            .await
            .map(drop),
        3 => store.list_nodes().await.map(drop),
        4 => store.reap_lost_attempts().await.map(drop),
        _ => store.now_ms().await.map(drop),
    };
}

/// Runs `f` until it has been suspended `polls` times, then drops it; `true` if it was
/// dropped before it finished. Counting suspensions rather than time reaches every await
/// point, even one that lasts only microseconds (PostgreSQL's answer to `BEGIN` on loopback),
/// which a timer (millisecond ticks) would almost never hit.
async fn cut_after_polls(f: impl std::future::Future<Output = ()>, polls: u32) -> bool {
    let mut f = std::pin::pin!(f);
    let mut pending = 0;
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(()) => std::task::Poll::Ready(false),
        std::task::Poll::Pending if pending + 1 >= polls => std::task::Poll::Ready(true),
        std::task::Poll::Pending => {
            pending += 1;
            std::task::Poll::Pending
        }
    })
    .await
}

/// Drops `ROUNDS` operations per task at random points, then proves each handle still
/// commits within [`BOUND`].
async fn hammer(stores: &[Arc<Store>]) {
    let mut generations = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        generations.push(s.register_node(&node(&format!("h{i}")), Duration::from_secs(30)).await.unwrap().generation);
    }
    let dropped = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        for _ in 0..TASKS {
            let (store, dropped, generation) = (store.clone(), dropped.clone(), generations[i]);
            tasks.push(tokio::spawn(async move {
                let id = format!("h{i}");
                for _ in 0..ROUNDS {
                    let pick = rand::random::<u32>();
                    let op = operation(&store, &id, generation, pick);
                    let cut = if pick.is_multiple_of(2) {
                        // At the n-th await of the operation, whatever it waits for there.
                        cut_after_polls(op, 1 + rand::random::<u32>() % 12).await
                    } else {
                        // After a time: from "at once" to "well into a transaction".
                        let after = Duration::from_micros(rand::random::<u64>() % 3_000);
                        tokio::time::timeout(after, op).await.is_err()
                    };
                    if cut {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dropped = dropped.load(Ordering::Relaxed);
    let total = (ROUNDS * TASKS * stores.len()) as u64;
    assert!(dropped > total / 10, "only {dropped} of {total} operations were dropped mid-way; the test proves nothing");

    for (i, store) in stores.iter().enumerate() {
        let started = Instant::now();
        let renewed = tokio::time::timeout(
            BOUND,
            store.renew_lease(&format!("h{i}"), generations[i], Duration::from_secs(30), &status()),
        )
        .await;
        assert!(
            matches!(renewed, Ok(Ok(_))),
            "handle {i} could not renew its lease within {BOUND:?} after {dropped} dropped operations: {renewed:?}; pool: {}",
            store.pool_report()
        );
        let submitted = tokio::time::timeout(BOUND, store.submit(&inline())).await;
        assert!(matches!(submitted, Ok(Ok(_))), "handle {i} could not submit: {submitted:?}");
        eprintln!("handle {i}: renewed and submitted in {:?} after {dropped}/{total} dropped", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_transactions_survive_futures_dropped_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.db");
    let url = format!("sqlite://{}", path.display());
    let mut stores = Vec::new();
    for _ in 0..HANDLES {
        stores.push(Arc::new(Store::open(&url, 4).await.unwrap()));
    }
    hammer(&stores).await;

    // Every connection of every handle is back and clean: all of them can be held at once
    // for reads, and a connection from outside takes the write lock without waiting.
    shoal_testkit::wait_until_async("every pooled connection is back", BOUND, || {
        let stores = stores.clone();
        async move { stores.iter().all(|s| s.pool_report().in_use == 0) }
    })
    .await;
    let outside = rusqlite::Connection::open(&path).unwrap();
    outside.busy_timeout(Duration::ZERO).unwrap();
    outside
        .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .expect("no connection of the pool may still hold SQLite's write lock");
}

/// Counts PostgreSQL's "there is already a transaction in progress" warnings, which
/// tokio-postgres logs (through the `log` crate) when a `BEGIN` arrives on a connection that
/// is still inside a transaction: exactly what a connection given back mid-transaction gets.
struct NestedBegins(AtomicU64);

impl log::Log for NestedBegins {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.args().to_string().contains("already a transaction in progress") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn flush(&self) {}
}

static NESTED_BEGINS: NestedBegins = NestedBegins(AtomicU64::new(0));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transactions_survive_futures_dropped_anywhere() {
    log::set_logger(&NESTED_BEGINS).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Info);
    let url = shoal_testkit::postgres().fresh_database();
    let mut stores = Vec::new();
    for _ in 0..HANDLES {
        stores.push(Arc::new(Store::open(&url, 4).await.unwrap()));
    }
    hammer(&stores).await;

    // No session of ours is left inside a transaction (rollbacks of dropped transactions
    // run on tasks, so give them a moment), and none holds a lock.
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    let open = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'shoal' \
         AND state LIKE 'idle in transaction%'"
    );
    let locks = format!(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE a.datname = '{db}' AND a.application_name = 'shoal' AND l.locktype <> 'virtualxid'"
    );
    let admin = shoal_testkit::postgres().admin_url();
    shoal_testkit::wait_until("no pooled session is left inside a transaction", Duration::from_secs(10), || {
        shoal_testkit::psql(&admin, &open).map(|n| n.trim() == "0").unwrap_or(false)
    });
    let held = shoal_testkit::psql(&admin, &locks).unwrap();
    assert_eq!(held.trim(), "0", "sessions of the pool still hold locks");
    assert_eq!(
        NESTED_BEGINS.0.load(Ordering::Relaxed),
        0,
        "a pooled connection was handed out while still inside a dropped transaction"
    );
}
