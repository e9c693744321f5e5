//! Failover of the PostgreSQL primary under running nodes (issue 12 item 3), on real servers
//! with streaming replication. Nodes given a multi-host `store.url` with
//! `target_session_attrs=read-write` find a promoted replica by themselves, without a restart,
//! within seconds of the promotion: under three nodes taking submissions all along, every
//! execution accepted ends, and runs once, and what the outage refused was refused as 503
//! `store_unavailable`. A primary demoted under a node's open connections (SQLSTATE 25006)
//! has them evicted, never retried forever nor left reading its past, while the old primary,
//! brought back as a standby at its old address, is skipped until it is promoted in turn.

mod common;

use common::TestNode;
use serde_json::{json, Value};
use shoal_testkit::{multi_host_url, psql, wait_until, wait_until_async, PgReplica, PgServer};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The database the nodes use, on every server.
const DB: &str = "failover";
/// How long after a promotion the nodes may take to carry on against the new primary:
/// generous, for a loaded CI machine; the figures measured are printed.
const RECOVERY: Duration = Duration::from_secs(15);
const T: Duration = Duration::from_secs(30);

/// A private primary with a streaming replica, and the database on both.
fn primary_and_replica() -> (PgServer, PgReplica) {
    tokio::task::block_in_place(|| {
        let primary = PgServer::start_private();
        let replica = primary.start_replica();
        psql(&primary.admin_url(), &format!("CREATE DATABASE {DB}")).unwrap();
        wait_until("the replica to have the database", T, || psql(&replica.url_for(DB), "SELECT 1").is_ok());
        (primary, replica)
    })
}

/// Makes every commit on `primary` wait until its standby has it (synchronous replication), so
/// that what the nodes were told is committed survives the primary's crash. Replicated
/// asynchronously (the default), the last commits before a crash may be lost with the primary,
/// which no client of the database can prevent.
fn replicate_synchronously(primary: &PgServer) {
    tokio::task::block_in_place(|| {
        let admin = primary.admin_url();
        // One statement each: ALTER SYSTEM cannot run in a transaction block.
        for sql in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "ALTER SYSTEM SET synchronous_commit = on",
            "SELECT pg_reload_conf()",
        ] {
            psql(&admin, sql).unwrap();
        }
        wait_until("the replica to be synchronous", T, || {
            psql(&admin, "SELECT sync_state FROM pg_stat_replication").is_ok_and(|s| s == "sync")
        });
    })
}

/// The client connections of shoal (its pools' and its node sessions') on the server at
/// `admin_url`.
fn ours(admin_url: &str) -> i64 {
    let sql = "SELECT count(*) FROM pg_stat_activity \
               WHERE backend_type = 'client backend' AND application_name LIKE 'shoal%'";
    psql(admin_url, sql).unwrap().parse().unwrap()
}

async fn node(url: &str, id: &str) -> TestNode {
    let id = id.to_owned();
    TestNode::start_edited(tempfile::tempdir().unwrap(), url.to_owned(), move |t| {
        t.replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
    })
    .await
}

/// Waits until every node's gossip sees `n` nodes alive.
async fn wait_gossip(nodes: &[TestNode], n: usize) {
    for t in nodes {
        wait_until_async(&format!("{} to see {n} nodes alive", t.url), T, || async {
            let (_, v) = t.get("/api/v1/nodes").await;
            v["nodes"].as_array().is_some_and(|a| a.iter().filter(|x| x["gossip"] == "alive").count() == n)
        })
        .await;
    }
}

async fn ready(n: &TestNode) -> bool {
    n.get("/api/v1/health/ready").await.0 == 200
}

/// What the submitter saw.
#[derive(Default)]
struct Tally {
    /// Accepted (201): the execution's id, the node's index, and when the answer came.
    accepted: Vec<(String, usize, Instant)>,
    /// Refused: how many of each status and code, with the first message.
    refused: BTreeMap<(u16, String), (usize, String)>,
    /// Requests that got no answer (none within the client's timeout: a wedged node).
    unanswered: Vec<String>,
}

impl Tally {
    fn accepted_after(&self, t: Instant) -> impl Iterator<Item = &(String, usize, Instant)> {
        self.accepted.iter().filter(move |a| a.2 > t)
    }
}

/// Submits `body` to each of `urls` in turn, one at a time, `every` apart, until `stop`.
fn submit_until(
    urls: Vec<String>,
    body: Value,
    every: Duration,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = common::http_with_timeout(Duration::from_secs(10));
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let node = i % urls.len();
            i += 1;
            let sent = http.post(format!("{}/api/v1/executions", urls[node])).json(&body).send().await;
            match sent {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    let mut t = tally.lock().unwrap();
                    if status == 201 {
                        t.accepted.push((v["id"].as_str().unwrap().to_owned(), node, Instant::now()));
                    } else {
                        let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
                        let seen = t.refused.entry((status, code)).or_insert_with(|| (0, v.to_string()));
                        seen.0 += 1;
                    }
                }
                Err(e) => tally.lock().unwrap().unanswered.push(format!("{}: {e}", urls[node])),
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Refusals other than 503 `store_unavailable`, which a store that takes no writes may answer.
fn unexpected(refused: &BTreeMap<(u16, String), (usize, String)>) -> Vec<String> {
    refused
        .iter()
        .filter(|((status, code), _)| (*status, code.as_str()) != (503, "store_unavailable"))
        .map(|((status, code), (n, first))| format!("{n} x {status} {code}: {first}"))
        .collect()
}

/// Kill the primary under three nodes taking submissions, wait until they call themselves cut
/// off (an outage longer than their lease, as a failover takes in practice), promote the
/// replica: every node carries on against it by itself, and every execution accepted, before or
/// after, ends succeeded having run exactly once (its one line in `ran`, with its one token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_is_found_again_under_three_nodes() {
    let (primary, replica) = primary_and_replica();
    replicate_synchronously(&primary);
    let url = multi_host_url(&[primary.port(), replica.port()], DB);
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(node(&url, id).await);
    }
    wait_gossip(&nodes, 3).await;

    // Each attempt appends its execution's id and its fencing token: a second attempt of one
    // execution would add a second line.
    let ran = nodes[0].dir.path().join("ran");
    let line = format!("echo \"$SHOAL_EXECUTION_ID $SHOAL_FENCING_TOKEN\" >> {}", ran.display());
    let job = json!({"command": ["sh", "-c", line]});
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let urls = nodes.iter().map(|n| n.url.clone()).collect();
    let submitter = submit_until(urls, job, Duration::from_millis(10), stop.clone(), tally.clone());
    wait_until_async("20 submissions accepted before the failover", T, || {
        let n = tally.lock().unwrap().accepted.len();
        async move { n >= 20 }
    })
    .await;

    let killed = Instant::now();
    tokio::task::block_in_place(|| primary.kill());
    wait_until_async("every node to call itself cut off from the store", T, || async {
        for n in &nodes {
            if ready(n).await {
                return false;
            }
        }
        true
    })
    .await;
    let outage = killed.elapsed();
    tokio::task::block_in_place(|| replica.promote());
    let promoted = Instant::now();

    // Accepted again, by one node and then by each, and every node ready.
    let mut first = None;
    wait_until_async("a submission accepted after the promotion", RECOVERY, || {
        first = tally.lock().unwrap().accepted_after(promoted).next().map(|a| a.2 - promoted);
        let found = first.is_some();
        async move { found }
    })
    .await;
    let first = first.unwrap();
    let mut each = None;
    wait_until_async("a submission accepted by each node after the promotion", RECOVERY, || {
        let t = tally.lock().unwrap();
        let firsts: Vec<Instant> =
            (0..3).filter_map(|i| t.accepted_after(promoted).find(|a| a.1 == i).map(|a| a.2)).collect();
        each = (firsts.len() == 3).then(|| *firsts.iter().max().unwrap() - promoted);
        let found = each.is_some();
        async move { found }
    })
    .await;
    let each = each.unwrap();
    wait_until_async("every node ready after the promotion", RECOVERY, || async {
        for n in &nodes {
            if !ready(n).await {
                return false;
            }
        }
        true
    })
    .await;
    let all_ready = promoted.elapsed();
    eprintln!(
        "failover: outage {outage:?} (kill to promotion); after the promotion, first submission accepted in {first:?}, \
         one by each node in {each:?}, every node ready in {all_ready:?}"
    );
    assert!(first < RECOVERY && each < RECOVERY && all_ready < RECOVERY);

    // More work after the failover, then none.
    wait_until_async("20 submissions accepted after the failover", T, || {
        let n = tally.lock().unwrap().accepted_after(promoted).count();
        async move { n >= 20 }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    submitter.await.unwrap();

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(tally.unanswered.is_empty(), "requests without an answer: {:?}", tally.unanswered);
    let odd = unexpected(&tally.refused);
    assert!(odd.is_empty(), "refusals other than 503 store_unavailable: {odd:?}");
    let refusals: usize = tally.refused.values().map(|(n, _)| n).sum();
    // Also an execution whose claim reached the replica while its node was told the claim
    // failed (the answer lost with the primary): the node hands the attempt it never started
    // back, and it runs.
    for (id, _, _) in &tally.accepted {
        let e = nodes[0].wait_final(id, T).await;
        assert_eq!(e["state"], "succeeded", "{e}");
    }

    let text = std::fs::read_to_string(&ran).unwrap();
    let mut tokens: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in text.lines() {
        let (id, token) = l.split_once(' ').unwrap_or_else(|| panic!("a line of {}: {l:?}", ran.display()));
        tokens.entry(id).or_default().push(token);
    }
    let twice: Vec<_> = tokens.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(twice.is_empty(), "executions that ran more than once (id, tokens): {twice:?}");
    let accepted: HashSet<&str> = tally.accepted.iter().map(|a| a.0.as_str()).collect();
    let missing: Vec<_> = accepted.iter().filter(|id| !tokens.contains_key(*id)).collect();
    assert!(missing.is_empty(), "accepted executions that never ran: {missing:?}");
    // A submission committed on the replica whose answer was lost with the primary was
    // refused, yet exists and ran (once); nothing else ran that was not accepted.
    let unasked = tokens.keys().filter(|id| !accepted.contains(*id)).count();
    assert!(unasked <= refusals, "{unasked} executions ran that no answer accepted, with {refusals} refused");
    eprintln!(
        "failover: {} accepted ({} after the promotion), {refusals} refused as 503 store_unavailable, \
         {unasked} committed though refused; each ran once",
        tally.accepted.len(),
        tally.accepted_after(promoted).count()
    );
    for n in &mut nodes {
        n.stop().await;
    }
}

/// Submits `{"command": ["true"]}` to `n` until it is accepted, within `within`: how long that
/// took, the id, and the refusals on the way.
async fn accepted_within(
    n: &TestNode,
    within: Duration,
) -> (Duration, String, BTreeMap<(u16, String), (usize, String)>) {
    let started = Instant::now();
    let mut refused = BTreeMap::new();
    loop {
        let (status, v) = n.post("/api/v1/executions", json!({"command": ["true"]})).await;
        if status == 201 {
            return (started.elapsed(), v["id"].as_str().unwrap().to_owned(), refused);
        }
        let code = v["error"]["code"].as_str().unwrap_or_default().to_owned();
        refused.entry((status, code)).or_insert_with(|| (0, v.to_string())).0 += 1;
        assert!(started.elapsed() < within, "no submission accepted within {within:?}; refused: {refused:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 25006. The primary fails over to its replica, and the old primary comes back as a standby
/// of the new one, at its old address, the first of the node's URL. Then the new primary is
/// demoted (made read-only) under the node's open connections and the old one promoted again:
/// writes on those connections are refused as read-only, and each refusal evicts every
/// connection that may be on that server, so the node carries on against the promoted server
/// within seconds, without a restart, refusing meanwhile with 503 `store_unavailable` only,
/// and keeps no connection, nor its session, on the read-only server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_on_a_read_only_server_is_evicted_not_retried() {
    let (primary, replica) = primary_and_replica();
    replicate_synchronously(&primary);
    let url = multi_host_url(&[primary.port(), replica.port()], DB);
    let mut n = node(&url, "n1").await;
    let id = n.submit(json!({"command": ["true"]})).await;
    assert_eq!(n.wait_final(&id, T).await["state"], "succeeded");

    tokio::task::block_in_place(|| {
        primary.kill();
        replica.promote();
    });
    let (took, _, refused) = accepted_within(&n, RECOVERY).await;
    assert!(unexpected(&refused).is_empty(), "{refused:?}");
    eprintln!("first failover: a submission accepted {took:?} after the promotion");

    let back = tokio::task::block_in_place(|| {
        let back = replica.start_replica_at(primary.port());
        wait_until("the old primary, back as a standby, to have the database", T, || {
            psql(&back.url_for(DB), "SELECT 1").is_ok()
        });
        back
    });
    // Work goes on against the replica, the node's session and pooled connections on it.
    let (status, _) = n.get("/api/v1/executions").await;
    assert_eq!(status, 200);
    let id = n.submit(json!({"command": ["true"]})).await;
    assert_eq!(n.wait_final(&id, T).await["state"], "succeeded");
    let held = tokio::task::block_in_place(|| ours(&replica.url_for("postgres")));
    assert!(held >= 2, "{held} connections of the node on the replica (its session and its pools')");

    // Demoted under the node's connections, as some operators and cloud services demote a
    // primary: its configuration, not recovery, makes it read-only.
    tokio::task::block_in_place(|| {
        psql(&replica.url_for("postgres"), "ALTER SYSTEM SET default_transaction_read_only = on").unwrap();
        psql(&replica.url_for("postgres"), "SELECT pg_reload_conf()").unwrap();
    });
    // Once the reload reaches the backends, a write on a connection the node holds is refused
    // (25006, a submission's or another of the node's writes, such as its lease renewal), which
    // evicts them all; reconnecting finds no server that takes writes. The node answers 503
    // store_unavailable, no 500, and does not wedge.
    let deadline = Instant::now() + T;
    let refusal = loop {
        let (status, v) = n.post("/api/v1/executions", json!({"command": ["true"]})).await;
        if status != 201 {
            assert_eq!((status, v["error"]["code"].as_str()), (503, Some("store_unavailable")), "{v}");
            break v["error"]["message"].as_str().unwrap_or_default().to_owned();
        }
        assert!(Instant::now() < deadline, "writes still accepted by the demoted primary: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("demotion: the first submission refused: {refusal}");

    // Nothing is accepted until a server takes writes again.
    let (status, v) = n.post("/api/v1/executions", json!({"command": ["true"]})).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("store_unavailable")), "{v}");

    // A switchover: the standby has everything the demoted primary wrote before it is promoted.
    tokio::task::block_in_place(|| {
        back.wait_replayed();
        back.promote();
    });
    let (took, id, refused) = accepted_within(&n, RECOVERY).await;
    assert!(unexpected(&refused).is_empty(), "refusals other than 503 store_unavailable: {refused:?}");
    wait_until_async("the node to be ready again", RECOVERY, || ready(&n)).await;
    eprintln!("demotion: a submission accepted {took:?} after the promotion of the old primary; refused meanwhile: {refused:?}");
    tokio::task::block_in_place(|| {
        wait_until("no connection of the node left on the read-only server", RECOVERY, || {
            ours(&replica.url_for("postgres")) == 0
        });
        wait_until("the node's session on the promoted server", RECOVERY, || {
            psql(
                &back.url_for("postgres"),
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shoal session n1'",
            )
            .is_ok_and(|c| c == "1")
        });
    });
    // Every read sees the new primary (the read-only server never saw these), on whichever
    // pooled connection it runs.
    let mut ids = vec![id];
    for _ in 0..4 {
        ids.push(n.submit(json!({"command": ["true"]})).await);
    }
    for id in &ids {
        for _ in 0..4 {
            let (status, v) = n.get(&format!("/api/v1/executions/{id}")).await;
            assert_eq!(status, 200, "{v}");
        }
        assert_eq!(n.wait_final(id, T).await["state"], "succeeded");
    }
    n.stop().await;
}
