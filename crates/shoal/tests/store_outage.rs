//! Riding through a store outage the whole cluster shares (docs/design/store-outage.md), on a
//! real PostgreSQL primary with a real streaming replica that is promoted after the primary is
//! killed, and three nodes on the multi-host URL of both:
//! - a 20 s outage: 30 long-running attempts on three nodes keep running and succeed on their
//!   first attempt; none is killed, none paused, and submissions meanwhile get 503
//!   `store_unavailable` and change nothing;
//! - an outage longer than `cluster.store_outage_grace`: every attempt is killed when the grace
//!   runs out, runs again once the store is back, and no two attempts of one execution overlap;
//! - the same 20 s outage with one node (a real process in a network namespace of its own, on
//!   the store's Unix sockets) also cut off from gossip: its attempts stop before its lease
//!   ends. The others cannot hear it either, and it might reach the store and take their
//!   attempts over, so they stop theirs too; every execution runs again after the store
//!   returns, never beside its earlier attempt.
//!
//! Every attempt writes a heartbeat line with its fencing token ten times a second; overlaps
//! and pauses are read from those lines.

mod common;

use common::netns::Netns;
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

    /// The same over the servers' Unix sockets, which a node in a network namespace reaches
    /// whatever becomes of its network.
    fn socket_url(&self) -> String {
        // A socket's folder, percent-encoded as the URL's host.
        let dir = |d: &Path| d.parent().unwrap().display().to_string().replace('/', "%2F");
        format!(
            "postgres://shoal@{}:{},{}:{}/{}?target_session_attrs=read-write",
            dir(self.primary.data_dir()),
            self.primary.port(),
            dir(self.replica.data_dir()),
            self.replica.port(),
            self.db,
        )
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
    beating_sandbox_in(&n.url, &n.dir.path().join("sandboxes/beat")).await
}

async fn beating_sandbox_in(url: &str, root: &Path) -> PathBuf {
    for d in ["pids", "beats", "jobs"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("jobs/beat.toml"), BEATING_JOB).unwrap();
    let body = json!({"name": "beat", "kind": "shared", "root": root.display().to_string()});
    let res = common::http().post(format!("{url}/api/v1/sandboxes")).json(&body).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201, "{}", res.text().await.unwrap());
    root.to_owned()
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

/// Waits until every execution's attempt has written a heartbeat.
async fn all_beat(root: &Path, ids: &[String]) {
    shoal_testkit::wait_until_async("every attempt to beat", T, || async move {
        ids.iter().all(|id| !beats(root, id).is_empty())
    })
    .await;
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
    all_beat(&root, &ids).await;
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

    // Nothing the nodes wrote is lost with the primary: the replica is asynchronous.
    tokio::task::block_in_place(|| store.replica.wait_replayed());
    store.primary.kill();
    let killed = Instant::now();
    // Every node finds the store gone (and rides instead of killing: the pids below): not
    // ready, and still alive.
    for n in &nodes {
        shoal_testkit::wait_until_async("the node to be not ready", Duration::from_secs(10), || async {
            n.get("/api/v1/health/ready").await.0 == 503
        })
        .await;
        assert_eq!(n.get("/api/v1/health/live").await.0, 200, "liveness does not depend on the store");
    }
    // A submission meanwhile is refused, and changes nothing.
    let (status, body) = nodes[1].post("/api/v1/executions", json!({"sandbox": "beat", "job": "jobs/beat.toml"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("store_unavailable")), "{body}");
    // The CLI, given every node, keeps trying with its idempotency key until the store is back.
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
    cli.args(nodes.iter().flat_map(|n| ["--server".to_owned(), n.url.clone()]))
        .args(["run", "beat/jobs/beat.toml"])
        .env("SHOAL_TOKEN", common::test_token())
        .env("XDG_CACHE_HOME", root.join("cache"));
    let cli = tokio::task::spawn_blocking(move || cli.output());
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
    let out = cli.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "shoal run: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    let late = stdout.split_whitespace().find(|w| ids.iter().all(|i| i != w) && w.len() == 36).unwrap().to_owned();
    eprintln!("the CLI's submission went through {:?} after the promotion", promoted.elapsed());
    let mut ids = ids;
    ids.push(late);
    all_beat(&root, &ids).await;
    std::fs::write(root.join("release"), "").unwrap();
    let done = wait_all(&nodes[0].url, &ids, "finished", |e| e["state"] == "succeeded").await;
    for (id, e) in &done {
        assert_eq!(e["attempt"], 1, "{id} ran again: {e}");
        let spans = attempts_apart(&root, id);
        assert_eq!(spans.len(), 1, "{id}: one attempt only: {spans:?}");
        let pause = longest_pause(&root, id);
        assert!(pause < Duration::from_secs(2), "{id} paused for {pause:?}");
    }
    assert_eq!(pids(&root).len(), EXECUTIONS + 1, "no attempt was started again");
    // The refused submission left nothing behind, and the CLI's retries made one execution.
    let (_, listed) = nodes[0].get("/api/v1/executions?limit=100").await;
    assert_eq!(listed["executions"].as_array().unwrap().len(), EXECUTIONS + 1);
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

    // Nothing the nodes wrote is lost with the primary: the replica is asynchronous.
    tokio::task::block_in_place(|| store.replica.wait_replayed());
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

/// A node as a real process in a network namespace of its own, listening on the namespace's
/// address (port 7900: the namespace has no other users).
async fn node_in(ns: &Netns, dir: &Path, store: &str, id: &str) -> (shoal_testkit::procs::Server, String) {
    let url = format!("http://{}:7900", ns.inner_ip);
    let text =
        edit(id, "")(common::config_text(dir, store, "")).replace("127.0.0.1:0", &format!("{}:7900", ns.inner_ip));
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(&config, text).unwrap();
    common::admit_test_token(store).await;
    let args = ["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_shoal"), "server", "--config"].map(Into::into);
    let spec = shoal_testkit::procs::Spec::new(
        id,
        "ip",
        args.into_iter().chain([config.as_os_str().to_owned()]),
        dir.join(format!("{id}.log")),
    )
    .env("RUST_LOG", "info,chitchat=warn");
    let mut server = shoal_testkit::procs::Server::spawn(spec).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = server.wait_ready(&url, std::time::Instant::now() + T).await {
        panic!("{e}\n{}", server.logs());
    }
    (server, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_also_cut_off_from_gossip_stops_its_attempts_and_they_run_again_after_the_outage() {
    let store = Store::start();
    let url = store.socket_url();
    let ns = Netns::create();
    let x_dir = tempfile::tempdir().unwrap();
    // n3 starts alone, in its namespace, and takes the first ten executions.
    let (mut x, x_url) = node_in(&ns, x_dir.path(), &url, "n3").await;
    let on_host = |id: &str| {
        let (id, ip) = (id.to_owned(), ns.host_ip.clone());
        move |t: String| edit(&id, "")(t).replace("127.0.0.1:0", &format!("{ip}:0"))
    };
    let root = beating_sandbox_in(&x_url, &x_dir.path().join("beat")).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(submit(&x_url).await);
    }
    wait_all(&x_url, &ids, "running on n3", |e| e["state"] == "running").await;
    let mut nodes = Vec::new();
    nodes.push(TestNode::start_edited(tempfile::tempdir().unwrap(), url.clone(), on_host("n1")).await);
    nodes.push(TestNode::start_edited(tempfile::tempdir().unwrap(), url.clone(), on_host("n2")).await);
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).chain([x_url.clone()]).collect();
    gossip_formed(&urls, 3).await;
    for i in 0..EXECUTIONS - 10 {
        ids.push(submit(&nodes[i % 2].url).await);
    }
    let running = wait_all(&nodes[0].url, &ids, "running", |e| e["state"] == "running").await;
    let on_x: Vec<String> = running.iter().filter(|(_, e)| e["node"] == "n3").map(|(id, _)| id.clone()).collect();
    assert!(on_x.len() >= 10, "n3 runs its ten: {running:#?}");
    all_beat(&root, &ids).await;
    let x_pids: Vec<i32> = on_x.iter().map(|id| pids(&root)[&format!("{id}.1")]).collect();

    // Nothing the nodes wrote is lost with the primary: the replica is asynchronous.
    tokio::task::block_in_place(|| store.replica.wait_replayed());
    // The store and n3's network go at once.
    let cut_at = Instant::now();
    store.primary.kill();
    ns.cut();
    // n3 cannot hear its peers: it does not ride, and its children die before its lease ends.
    shoal_testkit::wait_until_async("n3's attempts to be killed", Duration::from_secs(10), || {
        let x_pids = &x_pids;
        async move { x_pids.iter().all(|p| !common::alive(*p)) }
    })
    .await;
    let killed = shoal_runner::deadline::boottime_ms();
    // n3's last successful renewal was sent at `deadline - (lease - margin / 2)` (the deadline
    // it gave its supervisors then, on CLOCK_BOOTTIME); the store set its lease to end a whole
    // lease after it received that renewal, so no earlier than `deadline + margin / 2`.
    let deadline = shoal_runner::deadline::read(&x_dir.path().join("data/lease-deadline")).unwrap();
    let lease_end = deadline + 500;
    assert!(killed < lease_end, "n3's attempts died at {killed} ms, its lease ended no earlier than {lease_end} ms");
    eprintln!("n3's attempts died {} ms before its lease could end", lease_end - killed);
    // The outage lasts its 20 s; then the replica is promoted and everything runs to the end.
    while cut_at.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.replica.promote();
    // Every execution runs again, and beats, before it is let go.
    let again = wait_all(&nodes[0].url, &ids, "running again", |e| e["state"] == "running" && e["attempt"] == 2).await;
    shoal_testkit::wait_until_async("every second attempt to beat", T, || {
        let (root, again) = (&root, &again);
        async move {
            again.iter().all(|(id, e)| {
                let token = e["attempts"].as_array().unwrap().last().unwrap()["fencing_token"].as_i64().unwrap();
                beats(root, id).iter().any(|(t, _)| *t == token)
            })
        }
    })
    .await;
    std::fs::write(root.join("release"), "").unwrap();
    let done = wait_all(&nodes[0].url, &ids, "finished", |e| e["state"] == "succeeded").await;
    for (id, e) in &done {
        assert_eq!(e["attempt"], 2, "{id}: {e}");
        let spans = attempts_apart(&root, id);
        assert_eq!(spans.len(), 2, "{id}: {spans:?}");
    }
    // n1 and n2 could not hear n3 either: they stopped riding too (n3 might have reached the
    // store and taken their attempts), so every node ended a ride or never began one.
    for n in &nodes {
        let text = common::metrics_text(n).await;
        assert_eq!(
            common::metric(&text, "shoal_store_outage_rides_total"),
            common::metric(&text, "shoal_store_outage_rides_ended_total"),
            "{}",
            n.url
        );
    }
    ns.restore();
    for n in nodes.iter_mut() {
        n.stop().await;
    }
    x.terminate().unwrap();
    let _ = x.wait();
}

/// The server that comes back after an outage may be a replica that lost the last commits, such
/// as the claim of an attempt that rode through: the node finds that the store does not know
/// its attempt, stops it, and nobody claims the execution again until a lease later, so the two
/// never run side by side. The lost claim is made by hand here (the claim's rows put back as
/// they were before it) while the node rides, cut off from its store by a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_claim_the_store_lost_stops_before_it_runs_again() {
    let pg = shoal_testkit::postgres();
    let url = pg.fresh_database();
    let proxy = common::proxy::Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let via_proxy = url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let mut n = TestNode::start_on(tempfile::tempdir().unwrap(), via_proxy, "").await;
    let root = beating_sandbox(&n).await;
    let id = submit(&n.url).await;
    let ids = vec![id.clone()];
    wait_all(&n.url, &ids, "running", |e| e["state"] == "running").await;
    all_beat(&root, &ids).await;
    let first = pids(&root)[&format!("{id}.1")];

    proxy.cut();
    // A node alone rides (nobody else could take anything over): still alive past its moment.
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_secs(3) {
        assert!(common::alive(first), "the attempt was killed {:?} after the cut", cut.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lost = format!(
        "DELETE FROM attempts WHERE execution_id = '{id}';
         UPDATE executions SET state = 'queued', node_id = NULL, fence = NULL, attempt = 0, reason = 'submitted' WHERE id = '{id}'"
    );
    shoal_testkit::psql(&url, &lost).unwrap();
    proxy.restore();
    shoal_testkit::wait_until_async(
        "the attempt the store lost to be stopped",
        T,
        || async move { !common::alive(first) },
    )
    .await;
    let again = wait_all(&n.url, &ids, "running again", |e| e["state"] == "running").await;
    assert_eq!(again[&id]["attempt"], 1, "the store counts the new attempt as the first: {}", again[&id]);
    shoal_testkit::wait_until_async("the new attempt to beat", T, || {
        let root = &root;
        let id = &id;
        async move { attempts_apart(root, id).len() == 2 }
    })
    .await;
    std::fs::write(root.join("release"), "").unwrap();
    let done = wait_all(&n.url, &ids, "finished", |e| e["state"] == "succeeded").await;
    assert_eq!(done[&id]["attempt"], 1);
    assert_eq!(attempts_apart(&root, &id).len(), 2, "two attempts, one after the other");
    n.stop().await;
}
