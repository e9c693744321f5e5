//! A PostgreSQL primary demoted under a store's open connections (made read-only, as some
//! operators and cloud services demote one): the first write refused with SQLSTATE 25006 drops
//! every connection opened before it and ends the node session opened before it, so that once a
//! standby is promoted every read and write, and the session, are on the new primary; nothing
//! stays behind on the read-only server to read its past.

use shoal_store::{NewToken, SessionEvent, Store, StoreError};
use shoal_testkit::{multi_host_url, psql, wait_until, PgServer};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

/// Connections of this store (the pool's and the session's) on the server at `admin_url`.
fn ours(admin_url: &str) -> i64 {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND application_name LIKE 'shoal%'";
    psql(admin_url, sql).unwrap().parse().unwrap()
}

fn token(n: u32) -> NewToken {
    NewToken {
        id: format!("t{n}"),
        name: format!("t{n}"),
        hash: format!("{n:064x}"),
        prefix: "shoal_api_abcdef".into(),
        role: shoal_wire::Role::Admin,
        sandboxes: vec!["*".into()],
        created_by: "test".into(),
        expires_in_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_as_read_only_takes_every_older_connection_and_the_session_with_it() {
    let (old, standby) = tokio::task::block_in_place(|| {
        let old = PgServer::start_private();
        let standby = old.start_replica();
        psql(&old.admin_url(), "CREATE DATABASE demoted").unwrap();
        wait_until("the standby to have the database", T, || psql(&standby.url_for("demoted"), "SELECT 1").is_ok());
        (old, standby)
    });
    let store = Store::open(&multi_host_url(&[old.port(), standby.port()], "demoted"), 4).await.unwrap();
    let (_session, mut events) = store.open_session("n1").await.unwrap();
    // Four reads at once open four connections, all on the old primary (the standby refuses
    // read-write sessions).
    let reads = futures::future::join_all((0..4).map(|_| store.list_nodes())).await;
    assert!(reads.iter().all(Result::is_ok), "{reads:?}");
    let before = tokio::task::block_in_place(|| ours(&old.admin_url()));
    assert!(before >= 2, "{before} connections on the primary (a session and the pool's)");

    tokio::task::block_in_place(|| {
        psql(&old.admin_url(), "ALTER SYSTEM SET default_transaction_read_only = on").unwrap();
        psql(&old.admin_url(), "SELECT pg_reload_conf()").unwrap();
    });
    // Once the reload reaches a backend (at its next command), a pooled connection's write is
    // refused as read-only.
    let mut n = 0;
    let deadline = Instant::now() + T;
    let refused = loop {
        n += 1;
        match store.create_token(&token(n)).await {
            Err(StoreError::Unavailable(m)) if m.contains("25006") => break m,
            Ok(_) => {}
            other => panic!("a write on a primary being made read-only: {other:?}"),
        }
        assert!(Instant::now() < deadline, "no write was refused as read-only within {T:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("refused: {refused}");
    // The session, which never writes, is told to go.
    let lost = tokio::time::timeout(T, events.recv()).await.expect("the session ends");
    assert!(matches!(&lost, Some(SessionEvent::Lost(why)) if why.contains("read-only")), "{lost:?}");
    // Reconnecting finds no server that takes writes: writes are unavailable, nothing else.
    n += 1;
    let e = store.create_token(&token(n)).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");

    // A switchover: the standby has all the demoted primary wrote before it is promoted.
    tokio::task::block_in_place(|| {
        standby.wait_replayed();
        standby.promote();
    });
    n += 1;
    let made = token(n);
    let deadline = Instant::now() + T;
    while let Err(e) = store.create_token(&made).await {
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        assert!(Instant::now() < deadline, "no write on the promoted standby within {T:?}: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // No connection of the store is left on the read-only server, and every read, on every
    // connection the pool holds, sees the write made on the new primary.
    tokio::task::block_in_place(|| {
        wait_until("no connection of ours left on the read-only server", T, || ours(&old.admin_url()) == 0)
    });
    let seen = futures::future::join_all((0..8).map(|_| store.token_by_hash(&made.hash))).await;
    assert!(seen.iter().all(|r| r.as_ref().is_ok_and(|(t, _)| t.is_some())), "{seen:?}");
    // A new session opens on the new primary.
    let (_again, _) = store.open_session("n1").await.unwrap();
    let on_new = tokio::task::block_in_place(|| {
        psql(
            &standby.url_for("postgres"),
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shoal session n1'",
        )
        .unwrap()
    });
    assert_eq!(on_new, "1");
}
