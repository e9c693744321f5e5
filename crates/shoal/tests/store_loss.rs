//! A node cut off from its store (PostgreSQL behind a proxy the test breaks): readiness turns
//! false, the node kills its attempt before its lease can run out, and once the store is back
//! the execution runs again. Nothing is reported as succeeded that did not succeed.
//!
//! A node that is the whole cluster cannot tell its store's loss from a loss the cluster
//! shares, so it would ride through it (docs/design/store-outage.md, tests/store_outage.rs);
//! the one-node test turns that off (`store_outage_grace = "0s"`), the two-node one needs not.

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
    let mut n = TestNode::start_edited(dir, via_proxy, |t| {
        t.replace("lease_ttl = \"2s\"", "lease_ttl = \"2s\"\nstore_outage_grace = \"0s\"")
    })
    .await;
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

/// A node cut off from the store but alive (its gossip still answers): its store session ends
/// with the cut, but that alone never lets another node take over early. The cut-off node
/// kills its attempt before its lease ends; the other node takes the execution over only once
/// the lease has run out on the store's clock, and within about a second of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_is_taken_over_after_its_lease_not_before() {
    let pg = shoal_testkit::postgres();
    let db_url = pg.fresh_database();
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let via_proxy = db_url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let mut n1 = TestNode::start_on(tempfile::tempdir().unwrap(), via_proxy, "").await;
    let root = n1
        .sandbox("sb", &[(
            "jobs/long.toml",
            "command = [\"sh\", \"-c\", \"if [ $SHOAL_ATTEMPT = 1 ]; then echo $$ > first.pid; sleep 600; fi; echo finished on $SHOAL_NODE_ID\"]\n",
        )])
        .await;
    let id = n1.submit(json!({"sandbox": "sb", "job": "jobs/long.toml"})).await;
    let first = read_pid(&root.join("first.pid")).await;
    // n2 joins once the attempt runs on n1.
    let mut n2 = TestNode::start_named(tempfile::tempdir().unwrap(), db_url.clone(), "n2").await;
    shoal_testkit::wait_until_async("n1 and n2 to see each other in gossip", Duration::from_secs(20), || {
        let n2 = &n2;
        async move {
            let (_, nodes) = n2.get("/api/v1/nodes").await;
            nodes["nodes"].as_array().is_some_and(|a| a.iter().filter(|n| n["gossip"] == "alive").count() == 2)
        }
    })
    .await;

    let watcher = shoal_store::Store::open(&db_url, 1).await.unwrap();
    let lease_of = |nodes: Vec<shoal_store::NodeRow>| nodes.into_iter().find(|n| n.id == "n1").unwrap();
    let before = lease_of(watcher.list_nodes().await.unwrap());
    proxy.cut();
    shoal_testkit::wait_until_async(
        "n1's attempt to be killed",
        Duration::from_secs(5),
        || async move { !alive(first) },
    )
    .await;
    // The lease n1 last managed to renew, read after the cut settled.
    let lease_end = lease_of(watcher.list_nodes().await.unwrap()).lease_expires_at.max(before.lease_expires_at);
    let killed_at_store = watcher.now_ms().await.unwrap();
    assert!(
        killed_at_store < lease_end,
        "n1 killed its child at {killed_at_store}, after its lease ended at {lease_end}"
    );

    let e = n2.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (e["state"].as_str(), e["attempt"].as_i64(), e["node"].as_str()),
        (Some("succeeded"), Some(2), Some("n2")),
        "{e}"
    );
    let attempts = watcher.list_attempts(&id).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].node_id.as_str(), attempts[1].node_id.as_str()), ("n1", "n2"));
    let started = attempts[1].started_at;
    assert!(started >= lease_end, "attempt 2 started at {started}, before n1's lease ended at {lease_end}");
    let late = started - lease_end;
    eprintln!("cut-off takeover: attempt 2 started {late} ms after n1's lease ended");
    assert!(late < 3_000, "takeover {late} ms after the lease; expected about one second");
    proxy.restore();
    n2.stop().await;
    n1.stop().await;
}
