//! Schedules and listeners across real processes (guarantees 4, 5 and 6): nodes are
//! SIGKILLed and restarted while schedules fire every second, files are dropped while the
//! node watching them is killed, and a node whose clock is minutes off joins in. Every
//! firing time and every file gets exactly one execution.

mod common;

use common::procs::{get, start_cluster, wait_cluster, wait_ready, Proc};
use serde_json::{json, Value};
use shoal_store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

const LEASE: &str = "6s";
const TICK_JOB: &str = "kind = \"noop\"\n[params.fire]\nrequired = true\n";
const FILE_JOB: &str = "kind = \"noop\"\n[params.file]\nrequired = true\n[params.size]\nrequired = true\n";

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Value {
    let r = http.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status == 201, "POST {url} {body}: {status} {v}");
    v
}

async fn sandbox(
    http: &reqwest::Client,
    node: &Proc,
    dir: &Path,
    name: &str,
    files: &[(&str, &str)],
) -> std::path::PathBuf {
    let root = dir.join(name);
    for (rel, text) in files {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    post(
        http,
        &format!("{}/api/v1/sandboxes", node.url),
        json!({"name": name, "kind": "shared", "root": root.display().to_string()}),
    )
    .await;
    root
}

fn kill(p: &mut Proc) {
    unsafe { libc::kill(p.child.id() as i32, libc::SIGKILL) };
    p.child.wait().unwrap();
}

/// Checks that each schedule has exactly one started firing, with its own execution, for
/// every firing time in `[from, to]`.
async fn assert_exactly_once(store: &Store, schedules: &[(String, String)], from: i64, to: i64) -> usize {
    let mut executions = BTreeSet::new();
    let mut total = 0;
    for (id, name) in schedules {
        let f = store.firings_between(id, from, to).await.unwrap();
        let first = f.first().unwrap_or_else(|| panic!("{name}: no firings"));
        assert!(first.fire_at <= from + 1000, "{name}: first firing {} long after {from}", first.fire_at);
        for w in f.windows(2) {
            assert_eq!(w[1].fire_at - w[0].fire_at, 1000, "{name}: a firing time is missing or repeated: {w:?}");
        }
        assert!(f.last().unwrap().fire_at >= to - 1000, "{name}: firings stop early");
        for x in &f {
            assert_eq!(x.outcome, "started", "{name}: {x:?}");
            let e = x.execution_id.clone().unwrap_or_else(|| panic!("{name}: no execution for {x:?}"));
            assert!(executions.insert(e.clone()), "{name}: an execution serves two firings");
            // Firings may be claimed up to FIRE_AHEAD early; their executions never start early.
            let started = store.get_execution(&e).await.unwrap().and_then(|r| r.started_at);
            if let Some(started) = started {
                assert!(started >= x.fire_at, "{name}: started before its time by the store's clock: {x:?}");
            }
        }
        total += f.len();
    }
    total
}

/// Guarantee 4 with crashes: three nodes, schedules every second, for at least five
/// minutes (`SHOAL_TEST_SCHEDULE_SECS`), while one node after another is SIGKILLed and
/// started again. Every firing time in the window has exactly one execution, and cluster
/// listeners hear each death and each join once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_exactly_once_while_nodes_are_killed_and_restarted() {
    let secs: u64 = std::env::var("SHOAL_TEST_SCHEDULE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir().unwrap();
    let db = shoal_testkit::postgres().fresh_database();
    let mut procs = start_cluster(dir.path(), &db, &["n1", "n2", "n3"], LEASE).await;
    let http = common::http();
    sandbox(&http, &procs[0], dir.path(), "s", &[("tick.toml", TICK_JOB), ("noop.toml", "kind = \"noop\"\n")]).await;
    let mut schedules = Vec::new();
    for i in 0..12 {
        let s = post(
            &http,
            &format!("{}/api/v1/schedules", procs[i % 3].url),
            json!({"name": format!("tick-{i}"), "sandbox": "s", "job": "tick.toml", "cron": "* * * * * *",
                   "params": {"fire": "{fire_unix_ms}"}}),
        )
        .await;
        schedules.push((s["id"].as_str().unwrap().to_owned(), format!("tick-{i}")));
    }
    post(
        &http,
        &format!("{}/api/v1/listeners", procs[1].url),
        json!({"name": "deaths", "kind": "cluster", "sandbox": "s", "job": "noop.toml",
               "on_cluster": {"events": ["node_died", "node_joined"]}}),
    )
    .await;
    let store = Store::open(&db, 2).await.unwrap();
    let start = store.now_ms().await.unwrap();
    let from = (start / 1000 + 2) * 1000;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    let mut victim = 0;
    while Instant::now() < end {
        // Let the cluster run a while between kills (real time is the point here).
        tokio::time::sleep(Duration::from_secs(12)).await;
        if Instant::now() + Duration::from_secs(10) > end {
            break;
        }
        kill(&mut procs[victim]);
        kills += 1;
        // Down for a few seconds: the others take its schedules over meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let id = procs[victim].id.clone();
        procs[victim] = Proc::start_with_lease(dir.path(), &db, &id, LEASE);
        wait_ready(&mut procs[victim], Instant::now() + Duration::from_secs(30)).await;
        victim = (victim + 1) % 3;
    }
    let to = store.now_ms().await.unwrap() - 2000;
    // Wait until every node has caught up to `to` before looking.
    shoal_testkit::wait_until_async("firings up to the end of the window", Duration::from_secs(20), || async {
        let mut ok = true;
        for (id, _) in &schedules {
            ok &= store.firings_between(id, to, to + 5000).await.unwrap().len() >= 2;
        }
        ok
    })
    .await;
    let total = assert_exactly_once(&store, &schedules, from, to).await;
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut worst = 0;
    for (id, _) in &schedules {
        for f in store.firings_between(id, from, to).await.unwrap() {
            *by_node.entry(f.node_id).or_default() += 1;
            worst = worst.max(f.claimed_at - f.fire_at);
        }
    }
    eprintln!(
        "{total} firings over {} s with {kills} SIGKILLs; fired by {by_node:?}; latest claim {worst} ms after its time",
        (to - from) / 1000
    );
    // A dead node's schedules move within about a second (gossip), 2 s at most (the backstop).
    assert!(worst < 5_000, "a firing waited {worst} ms for a live node to take it");
    assert!(kills >= 1 && by_node.len() == 3, "every node fired some: {by_node:?}");

    // Cluster events: one node_died per killed process, one node_joined per start.
    let deaths = store.get_listener("deaths").await.unwrap().unwrap();
    shoal_testkit::wait_until_async("death and join events", Duration::from_secs(20), || async {
        let ev = store.all_events(&deaths.id).await.unwrap();
        ev.iter().filter(|e| e.key.starts_with("node_died:")).count() >= kills
            && ev.iter().filter(|e| e.key.starts_with("node_joined:")).count() >= kills
    })
    .await;
    let ev = store.all_events(&deaths.id).await.unwrap();
    let died = ev.iter().filter(|e| e.key.starts_with("node_died:")).count();
    assert_eq!(died, kills, "one node_died event per SIGKILL: {ev:?}");
    assert!(ev.iter().all(|e| e.execution_id.is_some()), "{ev:?}");
    for p in procs.iter_mut() {
        p.stop();
    }
}

/// Guarantee 5 with a crash: 1000 files dropped into a shared sandbox watched by three
/// nodes; the node doing the watching is SIGKILLed during the drop. Exactly 1000 executions,
/// one per file. A file written slowly fires once, with its final size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_files_start_a_thousand_jobs_while_the_watcher_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = shoal_testkit::postgres().fresh_database();
    let mut procs = start_cluster(dir.path(), &db, &["n1", "n2", "n3"], LEASE).await;
    let http = common::http();
    let root = sandbox(&http, &procs[0], dir.path(), "drop", &[("load.toml", FILE_JOB)]).await;
    std::fs::create_dir_all(root.join("in")).unwrap();
    let l = post(
        &http,
        &format!("{}/api/v1/listeners", procs[0].url),
        json!({"name": "files", "kind": "file", "sandbox": "drop", "job": "load.toml",
               "params": {"file": "{event.path}", "size": "{event.size}"},
               "on_file": {"sandbox": "drop", "pattern": "in/*.csv", "settle": "500ms"}}),
    )
    .await;
    let listener = l["id"].as_str().unwrap().to_owned();
    let store = Store::open(&db, 2).await.unwrap();

    // A file written in pieces, 100 ms apart: it must not fire before it is complete.
    let slow = root.join("in/slow.csv");
    for i in 0..6 {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&slow).unwrap();
        writeln!(f, "row {i}").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let slow_size = std::fs::metadata(&slow).unwrap().len();

    let write = |range: std::ops::Range<usize>| {
        for i in range {
            std::fs::write(root.join(format!("in/f{i:04}.csv")), format!("id,{i}\n")).unwrap();
        }
    };
    write(0..400);
    // Once the watcher has started recording, kill it in the middle of the drop.
    let deadline = Instant::now() + Duration::from_secs(20);
    let watcher = loop {
        if let Some(e) = store.all_events(&listener).await.unwrap().first() {
            break e.node_id.clone();
        }
        assert!(Instant::now() < deadline, "no file event within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    write(400..700);
    kill(procs.iter_mut().find(|p| p.id == watcher).unwrap());
    write(700..1000);
    let killed = watcher;
    shoal_testkit::wait_until_async("1001 file events", Duration::from_secs(60), || async {
        store.all_events(&listener).await.unwrap().len() >= 1001
    })
    .await;
    let ev = store.all_events(&listener).await.unwrap();
    assert_eq!(ev.len(), 1001, "one event per file");
    let paths: BTreeSet<&str> = ev.iter().map(|e| e.payload["path"].as_str()).collect();
    assert_eq!(paths.len(), 1001, "no file twice");
    let executions: BTreeSet<&str> = ev.iter().map(|e| e.execution_id.as_deref().unwrap()).collect();
    assert_eq!(executions.len(), 1001, "one execution per file");
    let slow_ev = ev.iter().find(|e| e.payload["path"] == "in/slow.csv").unwrap();
    assert_eq!(slow_ev.payload["size"], slow_size.to_string(), "the slow file fired with its final size");
    let nodes: BTreeSet<&str> = ev.iter().map(|e| e.node_id.as_str()).collect();
    assert!(nodes.len() >= 2, "another node took the watching over from {killed}: {nodes:?}");
    let survivor = procs.iter().find(|p| p.id != killed).unwrap();
    shoal_testkit::wait_until_async("1001 executions to succeed", Duration::from_secs(60), || async {
        let mut n = 0;
        for id in &executions {
            let e = get(&http, &format!("{}/api/v1/executions/{id}", survivor.url)).await.unwrap_or_default();
            n += usize::from(e["state"] == "succeeded");
        }
        n == executions.len()
    })
    .await;
    for p in procs.iter_mut() {
        if p.id != killed {
            p.stop();
        }
    }
}

/// Guarantee 6: a node whose clock is five minutes ahead (libfaketime) fires its share of
/// the schedules on time by the store's clock, never early, and changes nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_skewed_clock_fires_on_the_stores_time() {
    let lib = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"]
        .iter()
        .map(|d| format!("{d}/faketime/libfaketimeMT.so.1"))
        .find(|p| Path::new(p).exists())
        .expect("libfaketime is missing: scripts/install-test-deps.sh installs it (Debian package `faketime`)");
    let skew = [
        ("LD_PRELOAD", lib.clone()),
        ("FAKETIME", "+300s".to_owned()),
        // Only the wall clock is off; timers and timeouts run on the monotonic clock.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let db = shoal_testkit::postgres().fresh_database();
    let procs = vec![
        Proc::start_with_lease(dir.path(), &db, "n1", LEASE),
        Proc::start_with_env(dir.path(), &db, "skewed", LEASE, "", &skew),
    ];
    let mut procs = wait_cluster(procs).await;
    let http = common::http();
    // The skewed node's processes really are five minutes ahead.
    let out = std::process::Command::new("date").arg("+%s").envs(skew.iter().cloned()).output().unwrap();
    let skewed_now: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((skewed_now - real_now - 300).abs() <= 2, "libfaketime did not skew the clock: {skewed_now} vs {real_now}");
    sandbox(&http, &procs[0], dir.path(), "s", &[("tick.toml", TICK_JOB)]).await;
    let mut schedules = Vec::new();
    for i in 0..16 {
        let s = post(
            &http,
            &format!("{}/api/v1/schedules", procs[i % 2].url),
            json!({"name": format!("t{i}"), "sandbox": "s", "job": "tick.toml", "cron": "* * * * * *",
                   "params": {"fire": "{fire_unix_ms}"}}),
        )
        .await;
        schedules.push((s["id"].as_str().unwrap().to_owned(), format!("t{i}")));
    }
    let store = Store::open(&db, 2).await.unwrap();
    let from = (store.now_ms().await.unwrap() / 1000 + 2) * 1000;
    let to = from + 8000;
    shoal_testkit::wait_until_async("8 s of firings", Duration::from_secs(30), || async {
        store.now_ms().await.unwrap() > to + 2000
    })
    .await;
    assert_exactly_once(&store, &schedules, from, to).await;
    let mut lateness: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, _) in &schedules {
        for f in store.firings_between(id, from, to).await.unwrap() {
            lateness.entry(f.node_id).or_default().push(f.claimed_at - f.fire_at);
        }
    }
    let skewed = lateness.get("skewed").unwrap_or_else(|| panic!("the skewed node fired nothing: {lateness:?}"));
    let worst = skewed.iter().max().unwrap();
    assert!(*worst < 1000, "the skewed node fired late by its clock, not the store's: {skewed:?}");
    for p in procs.iter_mut() {
        p.stop();
    }
}
