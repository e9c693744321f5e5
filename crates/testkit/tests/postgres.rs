//! The shared test server: it starts, hands out separate databases, and streams to replicas.

use std::time::{Duration, Instant};

use shoal_testkit::{postgres, psql, wait_until};

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[test]
fn server_starts_and_answers() {
    let started = Instant::now();
    let pg = postgres();
    eprintln!("postgres() took {:?}", started.elapsed());
    assert_eq!(psql(&pg.admin_url(), "select 1").unwrap(), "1");
    assert!(pg.data_dir().join("PG_VERSION").exists());
    assert_eq!(pg.admin_url(), format!("postgres://shoal@127.0.0.1:{}/postgres", pg.port()));
}

#[test]
fn fresh_databases_are_distinct_and_connectable() {
    let pg = postgres();
    let a = pg.fresh_database();
    let b = pg.fresh_database();
    assert_ne!(a, b);
    for url in [&a, &b] {
        assert_eq!(psql(url, "select current_database()").unwrap(), db_name(url));
    }
    psql(&a, "create table only_in_a (x int)").unwrap();
    let in_b = "select count(*) from pg_tables where tablename = 'only_in_a'";
    assert_eq!(psql(&b, in_b).unwrap(), "0");
}

#[test]
fn fresh_databases_can_be_made_concurrently() {
    let pg = postgres();
    let urls: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| pg.fresh_database())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut names: Vec<&str> = urls.iter().map(|u| db_name(u)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), urls.len());
}

#[test]
fn replica_streams_from_primary_and_can_be_promoted() {
    let pg = postgres();
    let url = pg.fresh_database();
    let started = Instant::now();
    let replica = pg.start_replica();
    eprintln!("start_replica() took {:?}", started.elapsed());
    assert_ne!(replica.port(), pg.port());
    let on_replica = replica.url_for(db_name(&url));
    assert_eq!(psql(&on_replica, "select pg_is_in_recovery()").unwrap(), "t");

    psql(&url, "create table t (x int); insert into t values (42)").unwrap();
    wait_until("the replica to see t", Duration::from_secs(30), || {
        psql(&on_replica, "select x from t").as_deref() == Ok("42")
    });
    // A hot standby refuses writes until promoted.
    assert!(psql(&on_replica, "insert into t values (1)").is_err());

    replica.promote();
    assert_eq!(psql(&on_replica, "select pg_is_in_recovery()").unwrap(), "f");
    psql(&on_replica, "insert into t values (1)").unwrap();

    replica.kill();
    assert!(psql(&on_replica, "select 1").is_err());
    let dir = replica.data_dir().parent().unwrap().to_owned();
    drop(replica);
    assert!(!dir.exists(), "dropping a replica removes its directory");
    // The slot is dropped too, so the primary does not keep WAL for it.
    let slots = "select count(*) from pg_replication_slots";
    assert_eq!(psql(&pg.admin_url(), slots).unwrap(), "0");
}
