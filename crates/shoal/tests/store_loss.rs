//! A node cut off from its store (PostgreSQL behind a proxy the test breaks): readiness turns
//! false, the node kills its attempt before its lease can run out, and once the store is back
//! the execution runs again. Nothing is reported as succeeded that did not succeed.

mod common;

use common::proxy::Proxy;
use common::{alive, read_pid, TestNode};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_node_stops_its_attempts_before_the_lease_ends_and_recovers() {
    let pg = shoal_testkit::postgres();
    let db_url = pg.fresh_database();
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let via_proxy = db_url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let dir = tempfile::tempdir().unwrap();
    let mut n = TestNode::start_on(dir, via_proxy, "").await;
    let root = n
        .sandbox("sb", &[(
            "jobs/long.toml",
            "command = [\"sh\", \"-c\", \"if [ $SHOAL_ATTEMPT = 1 ]; then echo $$ > first.pid; echo working; sleep 600; fi; echo finished\"]\n",
        )])
        .await;
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/long.toml"})).await;
    let first = read_pid(&root.join("first.pid")).await;
    n.wait_state(&id, "running", Duration::from_secs(10)).await;

    // A direct connection, to watch the store's view while the node is cut off.
    let watcher = shoal_store::Store::open(&db_url, 1).await.unwrap();
    let lease_end = watcher.list_nodes().await.unwrap()[0].lease_expires_at;
    let cut_at = Instant::now();
    proxy.cut();

    // The child dies before the node's lease can expire (2 s lease in these tests).
    shoal_testkit::wait_until_async(
        "the attempt to be killed",
        Duration::from_secs(5),
        || async move { !alive(first) },
    )
    .await;
    let killed_after = cut_at.elapsed();
    let store_now = watcher.now_ms().await.unwrap();
    assert!(store_now < lease_end, "child killed at store time {store_now}, after the lease ended at {lease_end}");
    assert!(killed_after < Duration::from_secs(2), "{killed_after:?}");
    let (status, body) = n.get("/health/ready").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("not_ready")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("cut off from the store"), "{body}");
    // Meanwhile nothing claims success.
    let e = watcher.get_execution(&id).await.unwrap().unwrap();
    assert!(matches!(e.state, shoal_core::ExecState::Running | shoal_core::ExecState::Queued), "{e:?}");

    proxy.restore();
    shoal_testkit::wait_until_async("readiness to return", Duration::from_secs(10), || {
        let n = &n;
        async move { n.get("/health/ready").await.0 == 200 }
    })
    .await;
    let e = n.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    let logs = n.logs(&id).await;
    assert!(logs.contains("working") && logs.ends_with("finished\n"), "{logs}");
    n.stop().await;
}
