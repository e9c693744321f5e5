//! The store behind PgBouncer: which pooling modes it opens through, which it refuses and how,
//! and what node sessions keep through each (`src/pooler.rs`; docs/configuration.md, "Behind a
//! pooler"). The whole store suite also runs through transaction pooling (`suite.rs`).

use shoal_store::{SessionEvent, Store, StoreError};
use shoal_testkit::{postgres, psql, PgBouncer, PoolMode};
use std::time::Duration;

/// A fresh database: its direct URL, and its URL through `bouncer`.
fn database(bouncer: &PgBouncer) -> (String, String) {
    let direct = postgres().fresh_database();
    let name = direct.rsplit('/').next().unwrap().to_owned();
    let pooled = bouncer.url_for(&name);
    (direct, pooled)
}

fn refusal(opened: shoal_store::Result<Store>) -> String {
    match opened {
        Err(StoreError::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("the store opened"),
    }
}

/// The tables in the database's public schema: none while nothing was migrated.
fn tables(direct: &str) -> String {
    psql(direct, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_without_a_session_url_is_refused_before_anything_is_written() {
    let bouncer = PgBouncer::start(postgres().port(), PoolMode::Transaction);
    let (direct, pooled) = database(&bouncer);
    let message = refusal(Store::open(&pooled, 4).await);
    for says in ["transaction pooling mode", "pool_mode = session", "store.session_url", "Behind a pooler"] {
        assert!(message.contains(says), "the refusal should say {says:?}: {message}");
    }
    assert_eq!(tables(&direct), "0", "a refused store must not have been migrated");
}

/// With one server connection for the database, the probe's second client holds it inside its
/// transaction and the first can get none: that too is found to be transaction pooling, at once
/// rather than after the pooler's `query_wait_timeout` (two minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_with_a_single_server_connection_is_found_without_waiting_for_the_pooler() {
    let bouncer = PgBouncer::start_sized(postgres().port(), PoolMode::Transaction, 1);
    let (direct, pooled) = database(&bouncer);
    let opened = tokio::time::timeout(Duration::from_secs(60), Store::open(&pooled, 4)).await;
    let message = refusal(opened.expect("the probe waited on the pooler"));
    assert!(message.contains("transaction pooling mode"), "{message}");
    assert_eq!(tables(&direct), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_pooling_is_refused_with_or_without_a_session_url() {
    let bouncer = PgBouncer::start(postgres().port(), PoolMode::Statement);
    let (direct, pooled) = database(&bouncer);
    for session_url in [None, Some(direct.as_str())] {
        let message = refusal(Store::open_with_session(&pooled, 4, session_url).await);
        for says in ["statement pooling mode", "pool_mode = session", "pool_mode = transaction"] {
            assert!(message.contains(says), "the refusal should say {says:?}: {message}");
        }
    }
    assert_eq!(tables(&direct), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_url_that_loses_session_state_or_reaches_another_database_is_refused() {
    let bouncer = PgBouncer::start(postgres().port(), PoolMode::Transaction);
    let (direct, pooled) = database(&bouncer);
    let message = refusal(Store::open_with_session(&pooled, 4, Some(&pooled)).await);
    assert!(message.contains("store.session_url does not keep session state"), "{message}");
    let elsewhere = postgres().fresh_database();
    let message = refusal(Store::open_with_session(&pooled, 4, Some(&elsewhere)).await);
    assert!(message.contains("store.session_url reaches another database"), "{message}");
    assert_eq!(tables(&direct), "0");
    let sqlite = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shoal.db", sqlite.path().display());
    let message = refusal(Store::open_with_session(&url, 4, Some(&direct)).await);
    assert!(message.contains("store.session_url is set but the store is SQLite"), "{message}");
}

/// What a node's session must do wherever it is opened: its lock is seen held through the
/// pool while it lives and free once it ends, and work announced through the pool reaches it.
async fn sessions_work(store: &Store) {
    let (session, mut events) = store.open_session("n1").await.unwrap();
    assert!(!store.session_ended(session.key).await.unwrap(), "a live session must be seen held through the pool");
    store.announce_work().await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
        Ok(Some(SessionEvent::Work)) => {}
        other => panic!("work announced through the pool never reached the session: {other:?}"),
    }
    let key = session.key;
    drop(session);
    shoal_testkit::wait_until_async("the ended session's lock to be free", Duration::from_secs(10), || async {
        store.session_ended(key).await.unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_keeps_sessions_and_ends_them_with_their_client() {
    let bouncer = PgBouncer::start(postgres().port(), PoolMode::Session);
    let (_direct, pooled) = database(&bouncer);
    let store = Store::open(&pooled, 4).await.unwrap();
    sessions_work(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_with_a_session_url_runs_every_statement_and_keeps_sessions() {
    let bouncer = PgBouncer::start(postgres().port(), PoolMode::Transaction);
    let (direct, pooled) = database(&bouncer);
    let store = std::sync::Arc::new(Store::open_with_session(&pooled, 8, Some(&direct)).await.unwrap());
    sessions_work(&store).await;
    // Reads and writes from many tasks at once, so that PgBouncer hands each client's
    // transactions to whichever server connection is free: a statement that needed its
    // session (one prepared by name, say) fails here.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                store.now_ms().await?;
                store.schema_version().await?;
                store.list_sandboxes().await?;
            }
            Ok::<(), StoreError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let clients = psql(
        &direct,
        "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'shoal'",
    )
    .unwrap();
    assert!(clients.parse::<u32>().unwrap() > 1, "the reads should have run on several server connections: {clients}");
}
