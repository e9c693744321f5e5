//! A wedged store cannot hide, and cannot hold a node's shutdown hostage.
//!
//! Another process takes SQLite's write lock on the node's store file and keeps it. The
//! node must say what is wrong (its readiness and its lease worker name the store, not
//! "timed out"), kill its job before its lease can run out, and still stop within
//! `executor.kill_grace` plus a few seconds when asked, though every store call it makes
//! waits on the lock.
//!
//! A node that is the whole cluster would ride through the store's loss, since nobody could
//! take its job over (docs/design/store-outage.md); riding is turned off here
//! (`store_outage_grace = "0s"`) to see the kill.

mod common;

use common::TestNode;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_is_named_and_shutdown_still_ends_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shoal.db");
    let pid_file = dir.path().join("job.pid");
    let mut n = TestNode::start_edited(dir, format!("sqlite://{}", db.display()), |t| {
        t.replace("lease_ttl = \"2s\"", "lease_ttl = \"2s\"\nstore_outage_grace = \"0s\"")
    })
    .await;
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let id = n.submit(json!({"command": ["sh", "-c", script]})).await;
    n.wait_state(&id, "running", Duration::from_secs(10)).await;
    let pid = common::read_pid(&pid_file).await;

    // Hold the write lock from outside the node, as a stuck process on the same file would.
    let outside = rusqlite::Connection::open(&db).unwrap();
    outside.execute_batch("BEGIN IMMEDIATE").unwrap();

    // Not ready, and the reason says the store holds it up.
    // Whether the renewal got its turn at once or queued behind a writer of this node that
    // itself waits on the lock, the cause named is the store, never this node's own pool.
    let store_named = |m: &str| m.contains("the store did not answer") || m.contains("locked by another process");
    shoal_testkit::wait_until_async("the node to say it is not ready, and why", Duration::from_secs(10), || async {
        let (status, body) = n.get("/health/ready").await;
        status == 503 && store_named(&body.to_string())
    })
    .await;
    let reason = n.get("/health/ready").await.1.to_string();
    eprintln!("readiness: {reason}");
    assert!(reason.contains("cut off from the store"), "{reason}");
    assert!(!reason.contains("own store pool"), "a lock held elsewhere is blamed on this node's pool: {reason}");
    let (_, me) = n.get("/api/v1/nodes/n1").await;
    let lease = me["workers"].as_array().unwrap().iter().find(|w| w["name"] == "lease").unwrap().clone();
    assert_eq!(lease["state"], "error", "{lease}");
    let last = lease["last_error"].as_str().unwrap_or_default();
    assert!(store_named(last), "{lease}");
    // The job was killed before the lease could run out.
    shoal_testkit::wait_until_async("the job to be killed", Duration::from_secs(5), || async { !common::alive(pid) })
        .await;

    // Shutdown ends in time though the store still does not answer.
    let started = Instant::now();
    n.stop().await;
    let took = started.elapsed();
    // kill_grace is 1 s in the test configuration.
    assert!(took < Duration::from_secs(1) + Duration::from_secs(5), "shutdown took {took:?} with the store locked");
    eprintln!("shutdown with the store locked took {took:?}");
    outside.execute_batch("ROLLBACK").unwrap();
}
