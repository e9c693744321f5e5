//! Read replicas (`store.replicas`) on a real PostgreSQL primary with real streaming replicas:
//! reads go to a fit replica by method and by the override lists, and every answer says where
//! it read from; a lagging replica is skipped; read-your-writes holds against a replica whose
//! replay is paused; a replica that stops costs no failed request.

mod common;

use common::TestNode;
use serde_json::json;
use shoal_testkit::{psql, PgReplica};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Limits a paused replica does not reach within a test: it keeps taking reads.
const NEVER_LAGGING: &str = "replica_max_lag = \"1h\"\nreplica_max_lag_bytes = 1000000000";

/// A fresh database on the test server, a streaming replica of the server, and the database's
/// URL on the replica.
fn database_with_replica() -> (String, PgReplica, String) {
    let pg = shoal_testkit::postgres();
    let url = pg.fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let replica = pg.start_replica();
    let replica_url = replica.url_for(&db);
    (url, replica, replica_url)
}

/// A node on `url` with the replica `replica_url` and `more` lines in `[store]`.
async fn node_with_replica(url: &str, replica_url: &str, more: &str) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("pool_size = 4\nreplicas = [\"{replica_url}\"]\n{more}");
    TestNode::start_edited(dir, url.to_owned(), |t| t.replace("pool_size = 4", &store)).await
}

/// A request's status, body and the named response headers.
async fn call(
    n: &TestNode,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
    position: Option<&str>,
) -> (u16, serde_json::Value, Option<String>, Option<String>) {
    let mut req = common::http().request(method, format!("{}{path}", n.url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(p) = position {
        req = req.header("x-shoal-position", p);
    }
    let res = req.send().await.unwrap();
    let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (from, pos) = (header("x-shoal-read-from"), header("x-shoal-position"));
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, from, pos)
}

/// Waits until a read is served by the replica `on_replica` names: until it has replayed the
/// node's schema, its reads are made on the primary.
async fn serves_reads(n: &TestNode, on_replica: &str) {
    let deadline = tokio::time::Instant::now() + T;
    while call(n, reqwest::Method::GET, "/api/v1/executions", None, None).await.2.as_deref() != Some(on_replica) {
        assert!(tokio::time::Instant::now() < deadline, "the replica never served a read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pauses or resumes (`how`) the replica's replay of the primary's WAL.
async fn replay(replica: &PgReplica, how: &str) {
    let (admin, sql) = (replica.url_for("postgres"), format!("SELECT pg_wal_replay_{how}()"));
    tokio::task::spawn_blocking(move || psql(&admin, &sql).unwrap()).await.unwrap();
}

/// Waits until the node's one replica is in `state`, and answers its view.
async fn replica_state(n: &TestNode, state: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, me) = n.get("/api/v1/nodes/n1").await;
        let r = me["replicas"][0].clone();
        if r["state"] == state {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "replica never {state}: {me}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_a_fit_replica_by_method_and_by_the_override_lists() {
    let (url, replica, replica_url) = database_with_replica();
    let more =
        "route_to_primary = [\"^GET /api/v1/nodes$\"]\nroute_to_replica = [\"^POST /api/v1/executions/[^/]+/cancel$\"]";
    let mut n = node_with_replica(&url, &replica_url, more).await;
    let view = replica_state(&n, "ok").await;
    let address = format!("127.0.0.1:{}", replica.port());
    assert_eq!(view["address"], address.as_str(), "{view}");
    let on_replica = format!("replica:{address}");
    serves_reads(&n, &on_replica).await;

    // A write reads from the primary, and its answer carries the WAL position after it.
    let (status, made, from, position) =
        call(&n, reqwest::Method::POST, "/api/v1/executions", Some(json!({"command": ["true"]})), None).await;
    assert_eq!((status, from.as_deref()), (201, Some("primary")), "{made}");
    assert!(shoal_store::Lsn::parse(position.as_deref().unwrap()).is_some(), "{position:?}");
    let id = made["id"].as_str().unwrap().to_owned();
    // Reads by method go to the replica (once it has replayed the end, it shows it).
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, body, from, _) =
            call(&n, reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None, None).await;
        assert_eq!(from.as_deref(), Some(on_replica.as_str()), "{body}");
        if status == 200 && body["state"] == "succeeded" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, from, _) = call(&n, reqwest::Method::GET, "/api/v1/executions", None, None).await;
    assert_eq!((status, from.as_deref()), (200, Some(on_replica.as_str())));
    // ... unless route_to_primary names them.
    let (status, _, from, _) = call(&n, reqwest::Method::GET, "/api/v1/nodes", None, None).await;
    assert_eq!((status, from.as_deref()), (200, Some("primary")));
    // route_to_replica sends a write's showing reads to the replica: cancelling the finished
    // execution reads it there, and is refused without writing anything.
    let (status, body, from, _) =
        call(&n, reqwest::Method::POST, &format!("/api/v1/executions/{id}/cancel"), Some(json!({})), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("execution_finished")), "{body}");
    assert_eq!(from.as_deref(), Some(on_replica.as_str()));
    // An answer refused before any handler (no credential) read from the primary, if at all.
    let res = reqwest::get(format!("{}/api/v1/executions", n.url)).await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(res.headers()["x-shoal-read-from"], "primary");

    // A position that is not one is refused, and one given twice too.
    for bad in ["x", "16B3748", "0/xyz", "0/1/2"] {
        let (status, body, _, _) = call(&n, reqwest::Method::GET, "/api/v1/executions", None, Some(bad)).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_position")), "{bad:?}: {body}");
    }
    let res = common::http()
        .get(format!("{}/api/v1/executions", n.url))
        .header("x-shoal-position", "0/1")
        .header("x-shoal-position", "0/2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);

    // The replica's reads are counted, and its state and lag are in /metrics.
    let metrics = common::metrics_text(&n).await;
    let reads = metrics
        .lines()
        .find(|l| l.starts_with("shoal_replica_reads_total{") && l.contains(&address))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no replica reads in {metrics}"));
    assert!(reads >= 2.0, "{reads}");
    assert!(
        metrics.contains(&format!("shoal_replica_state{{node=\"n1\",replica=\"{address}\",state=\"ok\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_replica_lag_seconds{"), "{metrics}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_holds_against_a_paused_replica_and_a_lagging_one_is_skipped() {
    let (url, replica, replica_url) = database_with_replica();
    // Never lagging by its limits at first: the paused replica keeps taking reads.
    let mut n = node_with_replica(&url, &replica_url, NEVER_LAGGING).await;
    replica_state(&n, "ok").await;
    let on_replica = format!("replica:127.0.0.1:{}", replica.port());
    serves_reads(&n, &on_replica).await;
    replay(&replica, "pause").await;

    let (status, made, _, position) =
        call(&n, reqwest::Method::POST, "/api/v1/executions", Some(json!({"command": ["true"]})), None).await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap();
    let position = position.expect("a write's answer carries its position");
    // Without the position the paused replica answers, and has not seen the execution.
    let (status, _, from, _) = call(&n, reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None, None).await;
    assert_eq!((status, from.as_deref()), (404, Some(on_replica.as_str())));
    // With it, the primary answers, since the replica has not replayed that far.
    let (status, body, from, _) =
        call(&n, reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None, Some(&position)).await;
    assert_eq!((status, from.as_deref()), (200, Some("primary")), "{body}");
    assert_eq!(body["id"], id);
    n.stop().await;

    // A node whose limit the paused replica now exceeds skips it: it is lagging.
    let mut n = node_with_replica(&url, &replica_url, "replica_max_lag = \"500ms\"").await;
    replica_state(&n, "lagging").await;
    let (status, _, from, _) = call(&n, reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None, None).await;
    assert_eq!((status, from.as_deref()), (200, Some("primary")));
    // Replay resumed, it catches up and takes reads again.
    replay(&replica, "resume").await;
    replica_state(&n, "ok").await;
    let (status, _, from, _) = call(&n, reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None, None).await;
    assert_eq!((status, from.as_deref()), (200, Some(on_replica.as_str())));
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_costs_no_failed_request() {
    let (url, replica, replica_url) = database_with_replica();
    let mut n = node_with_replica(&url, &replica_url, "").await;
    replica_state(&n, "ok").await;
    let on_replica = format!("replica:127.0.0.1:{}", replica.port());
    serves_reads(&n, &on_replica).await;
    replica.kill();
    // Reads go on without a failure from the moment it is gone: the first finds it dead and
    // reads from the primary, the health check marks it down.
    for _ in 0..50 {
        let (status, body, from, _) = call(&n, reqwest::Method::GET, "/api/v1/executions", None, None).await;
        assert_eq!((status, from.as_deref()), (200, Some("primary")), "{body}");
    }
    let view = replica_state(&n, "down").await;
    assert!(view["error"].as_str().is_some(), "{view}");
    n.stop().await;
}

/// A replica whose network breaks under open connections (a proxy cut): reads that were to go
/// there are made on the primary, still without a failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_under_its_connections_costs_no_failed_request() {
    let (url, replica, _) = database_with_replica();
    let proxy = common::proxy::Proxy::start(format!("127.0.0.1:{}", replica.port()).parse().unwrap()).await;
    let db = url.rsplit('/').next().unwrap();
    let through = format!("postgres://shoal@127.0.0.1:{}/{db}", proxy.port);
    let mut n = node_with_replica(&url, &through, "").await;
    replica_state(&n, "ok").await;
    let on_replica = format!("replica:127.0.0.1:{}", proxy.port);
    serves_reads(&n, &on_replica).await;
    // Several reads at once, so the pool holds several connections to the replica.
    let reads = (0..4).map(|_| call(&n, reqwest::Method::GET, "/api/v1/executions", None, None));
    for (status, _, from, _) in futures::future::join_all(reads).await {
        assert_eq!((status, from.as_deref()), (200, Some(on_replica.as_str())));
    }
    proxy.cut();
    for _ in 0..50 {
        let (status, body, from, _) = call(&n, reqwest::Method::GET, "/api/v1/executions", None, None).await;
        assert_eq!((status, from.as_deref()), (200, Some("primary")), "{body}");
    }
    replica_state(&n, "down").await;
    // Back, it takes reads again.
    proxy.restore();
    replica_state(&n, "ok").await;
    let (_, _, from, _) = call(&n, reqwest::Method::GET, "/api/v1/executions", None, None).await;
    assert_eq!(from.as_deref(), Some(on_replica.as_str()));
    n.stop().await;
}

/// `shoal run ... && shoal show ID`, two processes, against a replica whose replay is paused:
/// the first leaves its write's position in the CLI's cache, the second sends it, and so reads
/// from the primary instead of answering 404 from the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_its_own_writes_across_commands() {
    let (url, replica, replica_url) = database_with_replica();
    let mut n = node_with_replica(&url, &replica_url, NEVER_LAGGING).await;
    replica_state(&n, "ok").await;
    serves_reads(&n, &format!("replica:127.0.0.1:{}", replica.port())).await;
    replay(&replica, "pause").await;
    let cache = tempfile::tempdir().unwrap();
    let shoal = |args: &[&str], cache: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--server")
            .arg(&n.url)
            .args(args)
            .env("SHOAL_TOKEN", common::test_token())
            .env("XDG_CACHE_HOME", cache)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, out, err) = shoal(&["run", "--json", "--command", "--", "true"], cache.path());
    assert_eq!(code, Some(0), "{out}\n{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    let saved: Vec<_> = walk(cache.path());
    assert_eq!(saved.len(), 1, "the position is kept in the cache: {saved:?}");
    let (code, out, err) = shoal(&["show", &id], cache.path());
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains(&id), "{out}");
    // Without the cached position (another cache), the paused replica does not know it.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, _, err) = shoal(&["show", &id], elsewhere.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("(not_found)"), "{err}");
    // `shoal nodes` says each node reaches the store, and how the answering node sees its
    // replica.
    let (code, out, err) = shoal(&["nodes"], cache.path());
    assert_eq!(code, Some(0), "{out}\n{err}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().contains("STORE"), "{out}");
    assert!(lines.next().unwrap().contains(" reachable "), "{out}");
    assert!(out.contains("read replicas, as n1 sees them:"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&format!("127.0.0.1:{}", replica.port())))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains(" ok "), "{out}");
    n.stop().await;
}

/// The files under `dir`, with their contents.
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.clone(), std::fs::read_to_string(&p).unwrap_or_default()));
        }
    }
    out
}

/// Two fit replicas take the reads in turn: each serves about half, and each answer names the
/// one it read from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_spread_over_the_fit_replicas() {
    let (url, first, first_url) = database_with_replica();
    let second = shoal_testkit::postgres().start_replica();
    let db = url.rsplit('/').next().unwrap();
    let both = format!("{first_url}\", \"{}", second.url_for(db));
    let mut n = node_with_replica(&url, &both, NEVER_LAGGING).await;
    let (a, b) = (format!("replica:127.0.0.1:{}", first.port()), format!("replica:127.0.0.1:{}", second.port()));
    serves_reads(&n, &a).await;
    serves_reads(&n, &b).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let from = call(&n, reqwest::Method::GET, "/api/v1/executions", None, None).await.2.unwrap();
        *seen.entry(from).or_insert(0) += 1;
    }
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), want, "{seen:?}");
    assert!(seen.values().all(|&c| c >= 5), "{seen:?}");
    n.stop().await;
}

/// A replica that has not replayed the schema this node migrated takes no reads, however
/// small its lag limits find it: it would lack the tables. Once it has, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_nodes_schema_takes_no_reads() {
    let (url, replica, replica_url) = database_with_replica();
    // The database exists on the replica, empty; its replay stops before the node migrates.
    let db = url.rsplit('/').next().unwrap().to_owned();
    let replica_admin = replica.url_for(&db);
    shoal_testkit::wait_until_async("the replica to have the database", T, || {
        let a = replica_admin.clone();
        async move { tokio::task::spawn_blocking(move || psql(&a, "SELECT 1").is_ok()).await.unwrap() }
    })
    .await;
    replay(&replica, "pause").await;
    let mut n = node_with_replica(&url, &replica_url, NEVER_LAGGING).await;
    let view = replica_state(&n, "ok").await;
    for _ in 0..5 {
        let (status, _, from, _) = call(&n, reqwest::Method::GET, "/api/v1/executions", None, None).await;
        assert_eq!((status, from.as_deref()), (200, Some("primary")));
    }
    let (_, me) = n.get("/api/v1/nodes/n1").await;
    assert_eq!(
        (me["replicas"][0]["state"].as_str(), me["replicas"][0]["reads"].as_u64()),
        (Some("ok"), Some(0)),
        "{view} {me}"
    );
    replay(&replica, "resume").await;
    serves_reads(&n, &format!("replica:127.0.0.1:{}", replica.port())).await;
    n.stop().await;
}
