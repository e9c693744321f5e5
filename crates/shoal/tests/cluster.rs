//! Several in-process nodes on one PostgreSQL store: drain and a rolling restart under load,
//! how work spreads, load limits, and the cluster secret.

mod common;

use common::TestNode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn node(db: &str, id: &str, edit: impl FnOnce(String) -> String) -> TestNode {
    let id = id.to_owned();
    TestNode::start_edited(tempfile::tempdir().unwrap(), db.to_owned(), move |t| {
        edit(t.replace("node_id = \"n1\"", &format!("node_id = \"{id}\"")))
    })
    .await
}

async fn cluster(db: &str, n: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(node(db, &format!("n{i}"), |t| t).await);
    }
    wait_gossip(&nodes, n).await;
    nodes
}

/// Waits until every node's gossip sees `n` nodes alive.
async fn wait_gossip(nodes: &[TestNode], n: usize) {
    for t in nodes {
        shoal_testkit::wait_until_async(
            &format!("{} to see {n} nodes alive", t.url),
            Duration::from_secs(20),
            || async {
                let (_, v) = t.get("/api/v1/nodes").await;
                v["nodes"].as_array().is_some_and(|a| a.iter().filter(|x| x["gossip"] == "alive").count() == n)
            },
        )
        .await;
    }
}

/// How many executions each node ran, from the listing.
async fn ran_per_node(t: &TestNode, ids: &[String]) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for id in ids {
        let e = t.execution(id).await;
        *per.entry(e["node"].as_str().unwrap_or("-").to_owned()).or_default() += 1;
    }
    per
}

/// Guarantee 8: drain each node in turn (through another node), stop it once idle and start
/// it again, while work keeps arriving: no execution fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_a_rolling_restart_under_load_fail_nothing() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = cluster(&db, 3).await;
    // The sandbox outlives every node's own folder.
    let shared = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(shared.path().join("jobs")).unwrap();
    std::fs::write(
        shared.path().join("jobs/work.toml"),
        "command = [\"sh\", \"-c\", \"sleep 0.3; echo done\"]\non_node_loss = \"fail\"\n",
    )
    .unwrap();
    let (status, v) = nodes[0]
        .post("/api/v1/sandboxes", json!({"name": "sb", "kind": "shared", "root": shared.path().display().to_string()}))
        .await;
    assert_eq!(status, 201, "{v}");
    let urls: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(nodes.iter().map(|n| n.url.clone()).collect()));
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (urls, ids, stop) = (urls.clone(), ids.clone(), stop.clone());
        tokio::spawn(async move {
            let http = common::http_with_timeout(Duration::from_secs(3));
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let candidates = urls.lock().unwrap().clone();
                let url = &candidates[i % candidates.len()];
                i += 1;
                // A client retries on another node with the same idempotency key.
                let key = format!("k{i}");
                for attempt in 0..candidates.len() {
                    let url = if attempt == 0 { url } else { &candidates[(i + attempt) % candidates.len()] };
                    let r = http
                        .post(format!("{url}/api/v1/executions"))
                        .header("idempotency-key", &key)
                        .json(&json!({"sandbox": "sb", "job": "jobs/work.toml"}))
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status().is_success() {
                            let v: Value = r.json().await.unwrap();
                            ids.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };

    for k in 0..nodes.len() {
        let id = format!("n{}", k + 1);
        let other = &nodes[(k + 1) % nodes.len()];
        shoal_testkit::wait_until_async(&format!("{id} to run something"), Duration::from_secs(20), || async {
            let (_, v) = nodes[k].get(&format!("/api/v1/nodes/{id}")).await;
            v["running"].as_i64().unwrap_or(0) > 0
        })
        .await;
        urls.lock().unwrap().retain(|u| *u != nodes[k].url);
        // Drain through another node: the request is forwarded to the node it names.
        let (status, v) = other.post(&format!("/api/v1/nodes/{id}/drain"), json!({})).await;
        assert_eq!((status, v["state"].as_str()), (200, Some("draining")), "{v}");
        let (status, v) = nodes[k].get("/health/ready").await;
        assert_eq!(status, 503, "a draining node is not ready: {v}");
        shoal_testkit::wait_until_async(&format!("{id} to finish its attempts"), Duration::from_secs(30), || async {
            let (_, v) = nodes[k].get(&format!("/api/v1/nodes/{id}")).await;
            v["running"].as_i64() == Some(0)
        })
        .await;
        nodes[k].stop().await;
        nodes[k] = node(&db, &id, |t| t).await;
        urls.lock().unwrap().push(nodes[k].url.clone());
        wait_gossip(&nodes, 3).await;
    }
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();
    let ids = ids.lock().unwrap().clone();
    assert!(ids.len() > 20, "only {} executions were submitted", ids.len());
    let mut states = BTreeMap::new();
    for id in &ids {
        let e = nodes[0].wait_final(id, Duration::from_secs(60)).await;
        *states.entry(e["state"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        assert_eq!(e["state"], "succeeded", "{e}");
    }
    eprintln!("rolling restart: {states:?}");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// Work spreads: 300 equal executions submitted to one node land within 20% of even on three
/// equal nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_work_spreads_evenly_over_equal_nodes() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = cluster(&db, 3).await;
    nodes[0].sandbox("sb", &[("jobs/w.toml", "command = [\"sleep\", \"0.1\"]\n")]).await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(nodes[0].submit(json!({"sandbox": "sb", "job": "jobs/w.toml"})).await);
    }
    for id in &ids {
        let e = nodes[1].wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(e["state"], "succeeded", "{e}");
    }
    let per = ran_per_node(&nodes[2], &ids).await;
    eprintln!("spread of 300: {per:?}");
    assert_eq!(per.len(), 3, "{per:?}");
    for (n, count) in &per {
        assert!((80..=120).contains(count), "node {n} ran {count} of 300, more than 20% off even: {per:?}");
    }
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// A node at its CPU limit takes no new work; the others take all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_cpu_limit_gets_no_work() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = vec![node(&db, "n1", |t| t).await, node(&db, "n2", |t| t).await];
    // One spinning core of this machine's is at least 1/cores of its CPU: above a 5% limit.
    let spin = Arc::new(AtomicBool::new(true));
    let spinner = {
        let spin = spin.clone();
        std::thread::spawn(move || {
            while spin.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    nodes.push(node(&db, "n3", |t| t.replace("[executor]\n", "[executor]\ncpu_limit = 5\n")).await);
    wait_gossip(&nodes, 3).await;
    shoal_testkit::wait_until_async("n3 to refuse work for its CPU", Duration::from_secs(10), || async {
        let (_, v) = nodes[2].get("/api/v1/nodes/n3").await;
        v["accepting_work"] == false && v["not_accepting_because"].as_str().is_some_and(|w| w.contains("CPU"))
    })
    .await;
    nodes[0].sandbox("sb", &[("jobs/w.toml", "command = [\"true\"]\n")]).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(nodes[i % 3].submit(json!({"sandbox": "sb", "job": "jobs/w.toml"})).await);
    }
    for id in &ids {
        nodes[0].wait_final(id, Duration::from_secs(60)).await;
    }
    let per = ran_per_node(&nodes[0], &ids).await;
    spin.store(false, Ordering::Relaxed);
    spinner.join().unwrap();
    assert_eq!(per.get("n3"), None, "n3 is at its CPU limit yet ran work: {per:?}");
    assert_eq!(per.values().sum::<usize>(), 30, "{per:?}");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// A node with another cluster secret cannot join: gossip drops its packets (and counts them)
/// and the others never see it alive, nor it them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let db = shoal_testkit::postgres().fresh_database();
    let secret = |s: &'static str| move |t: String| t.replace("[cluster]\n", &format!("[cluster]\nsecret = \"{s}\"\n"));
    let mut nodes = vec![
        node(&db, "n1", secret("the-right-secret-0123456789")).await,
        node(&db, "n2", secret("the-right-secret-0123456789")).await,
    ];
    wait_gossip(&nodes, 2).await;
    let mut intruder = node(&db, "n3", secret("some-other-secret-987654321")).await;
    // n3 finds the others through the store's registry and keeps knocking.
    shoal_testkit::wait_until_async("n1 to drop n3's packets", Duration::from_secs(20), || async {
        let (_, v) = nodes[0].get("/api/v1/nodes/n1").await;
        v["rejected_gossip_packets"].as_u64().unwrap_or(0) > 0
    })
    .await;
    for t in nodes.iter().chain(std::iter::once(&intruder)) {
        let (_, v) = t.get("/api/v1/nodes").await;
        let alive: Vec<&str> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["gossip"] == "alive")
            .map(|x| x["id"].as_str().unwrap())
            .collect();
        if t.url == intruder.url {
            assert_eq!(alive, ["n3"], "{v}");
        } else {
            assert!(!alive.contains(&"n3"), "{v}");
            assert_eq!(alive.len(), 2, "{v}");
        }
    }
    intruder.stop().await;
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// A partitioned execution runs one child per partition, each on the node that holds it, and
/// ends when they all have; bad partition specs are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_execution_runs_one_child_per_partition_on_its_node() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = cluster(&db, 2).await;
    let data = tempfile::tempdir().unwrap();
    let (p1, p2) = (data.path().join("p1"), data.path().join("p2"));
    for (p, rows) in [(&p1, "a\nb\n"), (&p2, "c\n")] {
        std::fs::create_dir_all(p).unwrap();
        std::fs::write(p.join("rows.txt"), rows).unwrap();
    }
    let part = |name: &str, node: &str, root: &std::path::Path| json!({"name": name, "node": node, "root": root.display().to_string()});
    let bad = [
        (json!([]), 422, "invalid_partitions"),
        (json!([part("a", "n1", &p1), part("a", "n2", &p2)]), 422, "invalid_partitions"),
        (json!([part("a", "n1", data.path()), part("b", "n1", &p1)]), 422, "invalid_partitions"),
        (json!([{"name": "a", "root": "/x"}]), 422, "invalid_partitions"),
        (json!([part("a", "n9", &p1)]), 422, "unknown_node"),
    ];
    for (parts, status, code) in bad {
        let (s, v) = nodes[0]
            .post("/api/v1/sandboxes", json!({"name": "parts", "kind": "partitioned", "partitions": parts}))
            .await;
        assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{parts}: {v}");
    }
    let (s, v) = nodes[0].get("/api/v1/sandboxes/parts").await;
    assert_eq!(s, 404, "a refused sandbox was registered: {v}");

    let (s, v) = nodes[1]
        .post("/api/v1/sandboxes", json!({"name": "parts", "kind": "partitioned", "partitions": [part("p1", "n1", &p1), part("p2", "n2", &p2)]}))
        .await;
    assert_eq!(s, 201, "{v}");
    nodes[0]
        .sandbox("jobs", &[(
            "jobs/count.toml",
            "command = [\"sh\", \"-c\", \"wc -l < $SHOAL_PARTITION_ROOT/rows.txt > $SHOAL_PARTITION_ROOT/count.txt; echo $SHOAL_PARTITION on $SHOAL_NODE_ID\"]\n[allocation]\nkind = \"partitioned\"\nsandbox = \"parts\"\n",
        )])
        .await;
    let id = nodes[0].submit(json!({"sandbox": "jobs", "job": "jobs/count.toml"})).await;
    let e = nodes[1].wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!((e["state"].as_str(), e["reason"].as_str()), (Some("succeeded"), Some("partitions")), "{e}");
    let children = e["children"].as_array().unwrap();
    let ran: Vec<(String, String)> = children
        .iter()
        .map(|c| (c["partition"].as_str().unwrap().to_owned(), c["node"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(ran, [("p1".to_owned(), "n1".to_owned()), ("p2".to_owned(), "n2".to_owned())], "{e}");
    for c in children {
        assert_eq!(c["parent"].as_str(), Some(id.as_str()));
        let log = nodes[0].logs(c["id"].as_str().unwrap()).await;
        assert_eq!(log, format!("{} on {}\n", c["partition"].as_str().unwrap(), c["node"].as_str().unwrap()));
    }
    assert_eq!(std::fs::read_to_string(p1.join("count.txt")).unwrap().trim(), "2");
    assert_eq!(std::fs::read_to_string(p2.join("count.txt")).unwrap().trim(), "1");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// On SQLite (no notifications), a node that accepts work it cannot take tells the others
/// through gossip: they start it without waiting for their poll (here a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_new_work_reaches_a_free_node_without_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/shoal.db", dir.path().display());
    let slow =
        |t: String| t.replace("poll_interval = \"50ms\"", "poll_interval = \"60s\"").replace("slots = 4", "slots = 1");
    let mut nodes = vec![node(&db, "n1", slow).await, node(&db, "n2", slow).await];
    wait_gossip(&nodes, 2).await;
    nodes[0]
        .sandbox(
            "sb",
            &[("jobs/hold.toml", "command = [\"sleep\", \"600\"]\n"), ("jobs/quick.toml", "command = [\"true\"]\n")],
        )
        .await;
    // Fill n1's only slot (n2 may take it; then fill n2's too).
    let hold = nodes[0].submit(json!({"sandbox": "sb", "job": "jobs/hold.toml"})).await;
    let holder =
        nodes[0].wait_state(&hold, "running", Duration::from_secs(10)).await["node"].as_str().unwrap().to_owned();
    let busy = if holder == "n1" { 0 } else { 1 };
    let started = std::time::Instant::now();
    let quick = nodes[busy].submit(json!({"sandbox": "sb", "job": "jobs/quick.toml"})).await;
    let e = nodes[busy].wait_final(&quick, Duration::from_secs(20)).await;
    let took = started.elapsed();
    assert_eq!(e["state"], "succeeded", "{e}");
    assert_ne!(e["node"].as_str(), Some(holder.as_str()), "{e}");
    assert!(took < Duration::from_secs(10), "took {took:?}: the other node waited for its poll");
    eprintln!("gossip nudge: the free node ran it {took:?} after submission");
    nodes[0].request(reqwest::Method::POST, &format!("/api/v1/executions/{hold}/cancel"), None).await;
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// An allocation no node could ever take is refused (a misspelt id or tag), unless the job
/// says `allow_pending`: then it waits, and runs when such a node joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_to_unknown_nodes_or_tags_are_refused_unless_pending_is_allowed() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = vec![node(&db, "n1", |t| t).await];
    nodes[0]
        .sandbox(
            "sb",
            &[
                ("jobs/typo.toml", "command = [\"true\"]\n[allocation]\nkind = \"nodes\"\nnodes = [\"n7\"]\n"),
                ("jobs/gpu.toml", "command = [\"true\"]\n[allocation]\nkind = \"tags\"\ntags = [\"gpu\"]\n"),
                (
                    "jobs/later.toml",
                    "command = [\"true\"]\n[allocation]\nkind = \"tags\"\ntags = [\"gpu\"]\nallow_pending = true\n",
                ),
            ],
        )
        .await;
    let before = nodes[0].count_executions().await;
    for (job, code, needle) in [("jobs/typo.toml", "unknown_node", "`n7`"), ("jobs/gpu.toml", "unknown_tag", "`gpu`")] {
        let (s, v) = nodes[0].post("/api/v1/executions", json!({"sandbox": "sb", "job": job})).await;
        assert_eq!((s, v["error"]["code"].as_str()), (422, Some(code)), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(needle), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("allow_pending"), "{v}");
    }
    let (s, v) = nodes[0]
        .post("/api/v1/executions", json!({"command": ["true"], "allocation": {"kind": "nodes", "nodes": ["n7"]}}))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("unknown_node")), "{v}");
    assert_eq!(nodes[0].count_executions().await, before, "a refused submission created an execution");

    let id = nodes[0].submit(json!({"sandbox": "sb", "job": "jobs/later.toml"})).await;
    assert_eq!(nodes[0].execution(&id).await["state"], "queued");
    nodes.push(node(&db, "n2", |t| t.replace("node_id = \"n2\"", "node_id = \"n2\"\ntags = [\"gpu\"]")).await);
    let e = nodes[0].wait_final(&id, Duration::from_secs(20)).await;
    assert_eq!((e["state"].as_str(), e["node"].as_str()), (Some("succeeded"), Some("n2")), "{e}");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// A live log asked of any node is followed on the node running the attempt (forwarded,
/// signed), and streams to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_log_is_followed_through_another_node() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = cluster(&db, 2).await;
    nodes[0]
        .sandbox("sb", &[(
            "jobs/talk.toml",
            "command = [\"sh\", \"-c\", \"for i in 1 2 3 4 5; do echo line $i; sleep 0.1; done\"]\n[allocation]\nkind = \"nodes\"\nnodes = [\"n2\"]\n",
        )])
        .await;
    let id = nodes[0].submit(json!({"sandbox": "sb", "job": "jobs/talk.toml"})).await;
    nodes[0].wait_state(&id, "running", Duration::from_secs(10)).await;
    let r =
        nodes[0].http.get(format!("{}/api/v1/executions/{id}/logs?follow=true", nodes[0].url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-shoal-served-by").and_then(|v| v.to_str().ok()), Some("n2"), "{:?}", r.headers());
    let text = r.text().await.unwrap();
    assert_eq!(text, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}

/// A partitioned sandbox's files are those of one partition (`?partition=NAME`), served by
/// its node through any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_files_are_served_by_their_node_through_any_node() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = cluster(&db, 2).await;
    let data = tempfile::tempdir().unwrap();
    let parts = json!([
        {"name": "p1", "node": "n1", "root": data.path().join("p1").display().to_string()},
        {"name": "p2", "node": "n2", "root": data.path().join("p2").display().to_string()},
    ]);
    let (s, v) =
        nodes[0].post("/api/v1/sandboxes", json!({"name": "parts", "kind": "partitioned", "partitions": parts})).await;
    assert_eq!(s, 201, "{v}");
    let put = nodes[0]
        .http
        .put(format!("{}/api/v1/sandboxes/parts/files/in/rows.txt?partition=p2", nodes[0].url))
        .body("x\ny\n")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    assert_eq!(std::fs::read_to_string(data.path().join("p2/in/rows.txt")).unwrap(), "x\ny\n");
    let got = nodes[0]
        .http
        .get(format!("{}/api/v1/sandboxes/parts/files/in/rows.txt?partition=p2", nodes[0].url))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers().get("x-shoal-served-by").and_then(|v| v.to_str().ok()), Some("n2"));
    assert_eq!(got.text().await.unwrap(), "x\ny\n");
    let (s, v) = nodes[1].get("/api/v1/sandboxes/parts/files/in/rows.txt").await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_query")), "{v}");
    let (s, v) = nodes[1].get("/api/v1/sandboxes/parts/files/in?partition=p9").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    for n in nodes.iter_mut() {
        n.stop().await;
    }
}
