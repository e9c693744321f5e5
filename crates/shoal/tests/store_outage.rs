//! Riding through a store outage the whole cluster shares (docs/design/store-outage.md), on a
//! real PostgreSQL primary with a real streaming replica that is promoted after the primary is
//! killed, and three nodes on the multi-host URL of both:
//! - a 20 s outage: 30 long-running attempts on three nodes keep running and succeed on their
//!   first attempt; none is killed, none paused, and submissions meanwhile get 503
//!   `store_unavailable` and change nothing;
//! - an outage longer than `cluster.store_outage_grace`: every attempt is killed when the grace
//!   runs out, runs again once the store is back, and no two attempts of one execution overlap;
//! - the same 20 s outage with one node (a real process in a network namespace of its own) also
//!   cut off from gossip: its attempts stop before its lease ends, and run again after the store
//!   returns, never beside an earlier attempt.
//!
//! Every attempt writes a heartbeat line with its fencing token ten times a second; overlaps
//! and pauses are read from those lines.

mod common;

use common::TestNode;
use serde_json::{json, Value};
use shoal_testkit::{PgReplica, PgServer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The job: writes its pid, then a heartbeat with its fencing token every 100 ms until the
/// sandbox holds `release`.
const BEATING_JOB: &str = r#"command = ["sh", "-c", '''
echo $$ > "pids/$SHOAL_EXECUTION_ID.$SHOAL_ATTEMPT"
while [ ! -e release ]; do
  echo "$SHOAL_FENCING_TOKEN $(date +%s%N) $SHOAL_NODE_ID" >> "beats/$SHOAL_EXECUTION_ID"
  sleep 0.1
done
''']
"#;

const EXECUTIONS: usize = 30;
const OUTAGE: Duration = Duration::from_secs(20);
const T: Duration = Duration::from_secs(60);

/// A private primary, a streaming replica of it, and a database on both.
struct Store {
    primary: PgServer,
    replica: PgReplica,
    db: String,
}

impl Store {
    fn start() -> Store {
        let primary = PgServer::start_private();
        let db = "outage".to_owned();
        shoal_testkit::psql(&primary.admin_url(), &format!("CREATE DATABASE {db}")).unwrap();
        let replica = primary.start_replica();
        Store { primary, replica, db }
    }

    /// The URL the nodes are given: both servers, the writable one wanted.
    fn url(&self) -> String {
        shoal_testkit::multi_host_url(&[self.primary.port(), self.replica.port()], &self.db)
    }
}

/// The `[cluster]` and `[executor]` lines of every node here: room for every execution, and
/// the default lease (5 s): with the tests' usual 2 s, a rider that hears a peer reach the
/// store again has only 250 ms left to renew in (`ride_linger` in crates/server/src/lib.rs).
fn edit(id: &str, more: &str) -> impl FnOnce(String) -> String {
    let (id, more) = (id.to_owned(), more.to_owned());
    move |t: String| {
        t.replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
            .replace("slots = 4", "slots = 12")
            .replace("lease_ttl = \"2s\"", &format!("lease_ttl = \"5s\"\n{more}"))
    }
}

async fn three_nodes(url: &str, more: &str) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(TestNode::start_edited(tempfile::tempdir().unwrap(), url.to_owned(), edit(id, more)).await);
    }
    gossip_formed(&nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>(), 3).await;
    nodes
}

/// Waits until every node's gossip sees `count` nodes alive.
async fn gossip_formed(urls: &[String], count: usize) {
    for url in urls {
        shoal_testkit::wait_until_async("gossip to form", T, || async move {
            let (_, nodes) = get(url, "/api/v1/nodes").await;
            nodes["nodes"].as_array().is_some_and(|a| a.iter().filter(|n| n["gossip"] == "alive").count() == count)
        })
        .await;
    }
}

/// `(status, body)` of a GET, `(0, null)` when the node cannot be reached.
async fn get(url: &str, path: &str) -> (u16, Value) {
    match common::http_with_timeout(Duration::from_secs(2)).get(format!("{url}{path}")).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// The sandbox of the beating job, with the folders it writes to.
async fn beating_sandbox(n: &TestNode) -> PathBuf {
    let root = n.sandbox("beat", &[("jobs/beat.toml", BEATING_JOB)]).await;
    for d in ["pids", "beats"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

async fn submit(url: &str) -> String {
    let res = common::http()
        .post(format!("{url}/api/v1/executions"))
        .json(&json!({"sandbox": "beat", "job": "jobs/beat.toml"}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The executions' states as one node answers them, by id.
async fn states(url: &str, ids: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for id in ids {
        let (status, e) = get(url, &format!("/api/v1/executions/{id}")).await;
        if status == 200 {
            out.insert(id.clone(), e);
        }
    }
    out
}

async fn wait_all(url: &str, ids: &[String], what: &str, done: impl Fn(&Value) -> bool) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + T;
    loop {
        let s = states(url, ids).await;
        if s.len() == ids.len() && s.values().all(&done) {
            return s;
        }
        assert!(Instant::now() < deadline, "not every execution is {what}: {s:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The pids of every attempt started so far, by `execution.attempt`.
fn pids(root: &Path) -> BTreeMap<String, i32> {
    std::fs::read_dir(root.join("pids"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect()
}

/// One execution's heartbeats: (fencing token, nanoseconds).
fn beats(root: &Path, id: &str) -> Vec<(i64, u128)> {
    std::fs::read_to_string(root.join("beats").join(id))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?))
        })
        .collect()
}

/// Each attempt's first and last beat, by fencing token, checked never to overlap: an attempt
/// with a newer token starts only after the last beat of every older one.
fn attempts_apart(root: &Path, id: &str) -> Vec<(i64, u128, u128)> {
    let mut spans: BTreeMap<i64, (u128, u128)> = BTreeMap::new();
    for (token, at) in beats(root, id) {
        let s = spans.entry(token).or_insert((at, at));
        s.0 = s.0.min(at);
        s.1 = s.1.max(at);
    }
    let spans: Vec<(i64, u128, u128)> = spans.into_iter().map(|(t, (a, b))| (t, a, b)).collect();
    for w in spans.windows(2) {
        assert!(w[1].1 > w[0].2, "execution {id}: attempt {} began before attempt {} ended: {spans:?}", w[1].0, w[0].0);
    }
    spans
}

/// The longest time between two heartbeats of one execution.
fn longest_pause(root: &Path, id: &str) -> Duration {
    let b = beats(root, id);
    let gap = b.windows(2).map(|w| w[1].1.saturating_sub(w[0].1)).max().unwrap_or(0);
    Duration::from_nanos(gap as u64)
}

async fn metric(n: &TestNode, name: &str) -> f64 {
    common::metric(&common::metrics_text(n).await, name)
}

/// Starts `EXECUTIONS` beating executions through the nodes in turn and waits until all run,
/// spread over every node.
async fn thirty_running(nodes: &[TestNode]) -> (PathBuf, Vec<String>) {
    let root = beating_sandbox(&nodes[0]).await;
    let mut ids = Vec::new();
    for i in 0..EXECUTIONS {
        ids.push(submit(&nodes[i % nodes.len()].url).await);
    }
    let running = wait_all(&nodes[0].url, &ids, "running", |e| e["state"] == "running").await;
    shoal_testkit::wait_until_async("every attempt to beat", T, || {
        let (root, ids) = (&root, &ids);
        async move { ids.iter().all(|id| !beats(root, id).is_empty()) }
    })
    .await;
    let on: std::collections::BTreeSet<&str> = running.values().filter_map(|e| e["node"].as_str()).collect();
    assert_eq!(on.len(), nodes.len(), "the attempts run on every node: {on:?}");
    (root, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_attempts_ride_through_a_failover_of_twenty_seconds() {
    let store = Store::start();
    let mut nodes = three_nodes(&store.url(), "").await;
    let (root, ids) = thirty_running(&nodes).await;
    let first_pids = pids(&root);
    assert_eq!(first_pids.len(), EXECUTIONS);

    store.primary.kill();
    let killed = Instant::now();
    // Every node finds the store gone (and rides instead of killing: the pids below).
    for n in &nodes {
        shoal_testkit::wait_until_async("the node to be not ready", Duration::from_secs(10), || async {
            n.get("/api/v1/health/ready").await.0 == 503
        })
        .await;
    }
    // A submission meanwhile is refused, and changes nothing.
    let (status, body) = nodes[1].post("/api/v1/executions", json!({"sandbox": "beat", "job": "jobs/beat.toml"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("store_unavailable")), "{body}");
    // The whole outage: every attempt keeps running, watched the whole time.
    while killed.elapsed() < OUTAGE {
        for (name, pid) in &first_pids {
            assert!(common::alive(*pid), "attempt {name} was killed {:?} into the outage", killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.replica.promote();
    let promoted = Instant::now();
    for n in &nodes {
        shoal_testkit::wait_until_async("the node to be ready again", T, || async {
            n.get("/api/v1/health/ready").await.0 == 200
        })
        .await;
    }
    eprintln!("ready on the new primary {:?} after the promotion", promoted.elapsed());
    std::fs::write(root.join("release"), "").unwrap();
    let done = wait_all(&nodes[0].url, &ids, "finished", |e| e["state"] == "succeeded").await;
    for (id, e) in &done {
        assert_eq!(e["attempt"], 1, "{id} ran again: {e}");
        let spans = attempts_apart(&root, id);
        assert_eq!(spans.len(), 1, "{id}: one attempt only: {spans:?}");
        let pause = longest_pause(&root, id);
        assert!(pause < Duration::from_secs(2), "{id} paused for {pause:?}");
    }
    assert_eq!(pids(&root).len(), EXECUTIONS, "no attempt was started again");
    // The refused submission left nothing behind.
    let (_, listed) = nodes[0].get("/api/v1/executions?limit=100").await;
    assert_eq!(listed["executions"].as_array().unwrap().len(), EXECUTIONS);
    for n in &nodes {
        assert_eq!(metric(n, "shoal_store_outage_rides_total").await, 1.0, "every node rode once");
        assert_eq!(metric(n, "shoal_store_outage_rides_ended_total").await, 0.0, "and never had to kill");
    }
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_grace_stops_every_attempt_and_nothing_runs_twice() {
    let store = Store::start();
    let mut nodes = three_nodes(&store.url(), "store_outage_grace = \"4s\"").await;
    let (root, ids) = thirty_running(&nodes).await;
    let first_pids = pids(&root);

    store.primary.kill();
    let killed = Instant::now();
    shoal_testkit::wait_until_async("every attempt to be killed when the grace runs out", T, || {
        let first_pids = &first_pids;
        async move { first_pids.values().all(|p| !common::alive(*p)) }
    })
    .await;
    let after = killed.elapsed();
    // Not before the ride began (at least 3 s in: the lease less its margin, after a renewal
    // up to a beat before the kill) plus the grace.
    assert!(after >= Duration::from_secs(7), "killed {after:?} after the primary, before the grace ran out");
    store.replica.promote();
    // Every execution runs again on the new primary, and ends.
    wait_all(&nodes[0].url, &ids, "running again", |e| e["state"] == "running" && e["attempt"] == 2).await;
    for n in &nodes {
        assert_eq!(metric(n, "shoal_store_outage_rides_total").await, 1.0, "every node rode");
        assert_eq!(metric(n, "shoal_store_outage_rides_ended_total").await, 1.0, "until the grace ran out");
    }
    std::fs::write(root.join("release"), "").unwrap();
    let done = wait_all(&nodes[0].url, &ids, "finished", |e| e["state"] == "succeeded").await;
    for (id, e) in &done {
        assert_eq!(e["attempt"], 2, "{id}: {e}");
        let spans = attempts_apart(&root, id);
        assert_eq!(spans.len(), 2, "{id}: {spans:?}");
    }
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}
