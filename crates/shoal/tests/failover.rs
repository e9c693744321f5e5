//! Failover across real processes (guarantees 2 and 3): SIGKILL the `shoal server` process
//! running an attempt (the process alone, not its group, as a crash would). Gossip notices,
//! the store confirms the dead node's session has ended, and another node runs the
//! execution again long before the dead node's lease would have run out; the attempts never
//! overlap, which each attempt's fencing-token heartbeats prove. The same holds with the nodes
//! behind PgBouncer, in session mode and in transaction mode with `store.session_url`; in
//! transaction mode without it, and in statement mode, a node refuses to start.

mod common;

use common::procs::{get, start_cluster, wait_cluster, Proc};
use common::{alive, read_pid};
use serde_json::{json, Value};
use shoal_testkit::{PgBouncer, PoolMode};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Long enough that a takeover inside it can only come from the early path (gossip + session).
const LEASE: &str = "12s";
/// For the frozen node, which is only taken over once its lease has run out.
const SHORT_LEASE: &str = "4s";

/// The job: attempt 1 writes its pid and beats forever; a later attempt beats a few times and
/// succeeds. Every beat carries the attempt's fencing token and a nanosecond timestamp.
const BEATING_JOB: &str = r#"command = ["sh", "-c", '''
if [ "$SHOAL_ATTEMPT" = 1 ]; then
  echo $$ > first.pid
  while true; do echo "$SHOAL_FENCING_TOKEN $(date +%s%N) $SHOAL_NODE_ID" >> beats; sleep 0.02; done
fi
for i in 1 2 3 4 5; do echo "$SHOAL_FENCING_TOKEN $(date +%s%N) $SHOAL_NODE_ID" >> beats; sleep 0.02; done
''']
"#;

/// (token, nanos, node) per beat line.
fn beats(sandbox: &Path) -> Vec<(i64, u128, String)> {
    std::fs::read_to_string(sandbox.join("beats"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split(' ');
            Some((p.next()?.parse().ok()?, p.next()?.parse().ok()?, p.next()?.to_owned()))
        })
        .collect()
}

/// An execution of [`BEATING_JOB`] whose attempt 1 beats, and where.
struct Beating {
    sandbox: PathBuf,
    id: String,
    first_pid: i32,
    victim_id: String,
    /// Index in the cluster of the node running attempt 1.
    victim: usize,
}

/// Registers the beating job's sandbox, submits it, and waits for attempt 1's first beat.
async fn start_beating(http: &reqwest::Client, dir: &Path, procs: &[Proc]) -> Beating {
    let sandbox = dir.join("sb");
    std::fs::create_dir_all(sandbox.join("jobs")).unwrap();
    std::fs::write(sandbox.join("jobs/beat.toml"), BEATING_JOB).unwrap();
    let r = http
        .post(format!("{}/api/v1/sandboxes", procs[0].url))
        .json(&json!({"name": "sb", "kind": "shared", "root": sandbox.display().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let e: Value = http
        .post(format!("{}/api/v1/executions", procs[0].url))
        .json(&json!({"sandbox": "sb", "job": "jobs/beat.toml"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = e["id"].as_str().unwrap_or_else(|| panic!("{e}")).to_owned();
    let first_pid = read_pid(&sandbox.join("first.pid")).await;
    shoal_testkit::wait_until_async("attempt 1 to beat", Duration::from_secs(10), || {
        let n = beats(&sandbox).len();
        async move { n > 0 }
    })
    .await;
    let victim_id = beats(&sandbox)[0].2.clone();
    let victim = procs.iter().position(|p| p.id == victim_id).unwrap();
    Beating { sandbox, id, first_pid, victim_id, victim }
}

async fn sigkill_failover(store: String) {
    sigkill_failover_with_env(store, &[]).await;
}

/// [`sigkill_failover`] with nodes given more environment (`SHOAL_STORE_SESSION_URL`).
async fn sigkill_failover_with_env(store: String, env: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let procs = ["n1", "n2", "n3"].map(|id| Proc::start_with_env(dir.path(), &store, id, LEASE, "", env));
    let mut procs = wait_cluster(procs.into()).await;
    let http = common::http();
    let Beating { sandbox, id, first_pid, victim_id, victim } = start_beating(&http, dir.path(), &procs).await;
    let killed_at = Instant::now();
    unsafe { libc::kill(procs[victim].child.id() as i32, libc::SIGKILL) };
    procs[victim].child.wait().unwrap();

    let survivor = &procs[(victim + 1) % procs.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut restarted_after = None;
    let e = loop {
        let e = get(&http, &format!("{}/api/v1/executions/{id}", survivor.url)).await.unwrap_or_default();
        if restarted_after.is_none() && e["attempt"].as_i64() >= Some(2) {
            restarted_after = Some(killed_at.elapsed());
        }
        if e["state"] == "succeeded" || e["state"] == "failed" {
            break e;
        }
        assert!(Instant::now() < deadline, "no takeover: {e}\n--- {} log:\n{}", survivor.id, survivor.logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = restarted_after.unwrap();
    eprintln!("failover: attempt 2 claimed {took:?} after the SIGKILL");
    assert_eq!(e["state"], "succeeded", "{e}");
    assert_eq!(e["attempt"], 2, "{e}");
    assert_ne!(e["node"].as_str(), Some(victim_id.as_str()), "{e}");
    assert!(!alive(first_pid), "attempt 1's process outlived its node");
    // Early takeover, not lease expiry.
    let lease = Duration::from_secs(12);
    assert!(took < lease / 2, "takeover took {took:?}; the lease ({lease:?}) would have done that");

    // Never two live attempts: every beat of attempt 1 precedes every beat of attempt 2.
    let all = beats(&sandbox);
    let tokens: std::collections::BTreeSet<i64> = all.iter().map(|b| b.0).collect();
    assert_eq!(tokens.len(), 2, "two attempts with distinct fencing tokens: {tokens:?}");
    let (t1, t2) = (*tokens.first().unwrap(), *tokens.last().unwrap());
    let last_of_first = all.iter().filter(|b| b.0 == t1).map(|b| b.1).max().unwrap();
    let first_of_second = all.iter().filter(|b| b.0 == t2).map(|b| b.1).min().unwrap();
    assert!(last_of_first < first_of_second, "attempts overlapped: {all:?}");
    assert!(all.iter().filter(|b| b.0 == t2).all(|b| b.2 != victim_id));

    for p in procs.iter_mut() {
        p.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_is_taken_over_early_on_postgres() {
    sigkill_failover(shoal_testkit::postgres().fresh_database()).await;
}

/// Session pooling: a client keeps its server connection for life, and PgBouncer resets it
/// (`DISCARD ALL`, which lets go of advisory locks) when the client goes, so a killed node's
/// session lock ends with its process as it does without a pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_is_taken_over_early_behind_pgbouncer_in_session_mode() {
    let bouncer = PgBouncer::start(shoal_testkit::postgres().port(), PoolMode::Session);
    let (_direct, pooled) = pooled_database(&bouncer);
    sigkill_failover(pooled).await;
}

/// Transaction pooling: every statement goes through PgBouncer, node sessions past it on
/// `store.session_url`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_is_taken_over_early_behind_pgbouncer_in_transaction_mode_with_a_session_url() {
    let bouncer = PgBouncer::start(shoal_testkit::postgres().port(), PoolMode::Transaction);
    let (direct, pooled) = pooled_database(&bouncer);
    sigkill_failover_with_env(pooled, &[("SHOAL_STORE_SESSION_URL", direct)]).await;
}

/// A fresh database: its direct URL, and its URL through `bouncer`.
fn pooled_database(bouncer: &PgBouncer) -> (String, String) {
    let direct = shoal_testkit::postgres().fresh_database();
    let name = direct.rsplit('/').next().unwrap().to_owned();
    let pooled = bouncer.url_for(&name);
    (direct, pooled)
}

/// Behind a pooler that loses session state, a node refuses to start: exit code 3, a message
/// naming the pooling mode and what to change, and nothing written to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_or_statement_mode_a_node_without_a_session_url_refuses_to_start() {
    for (mode, says) in [
        (PoolMode::Transaction, ["transaction pooling mode", "store.session_url"]),
        (PoolMode::Statement, ["statement pooling mode", "pool_mode = session"]),
    ] {
        let bouncer = PgBouncer::start(shoal_testkit::postgres().port(), mode);
        let (direct, pooled) = pooled_database(&bouncer);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shoal.toml");
        std::fs::write(&config, common::config_text(dir.path(), &pooled, "")).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["server", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("a node behind {mode:?} pooling started instead of refusing");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{mode:?}: {stderr}");
        for needle in says {
            assert!(stderr.contains(needle), "{mode:?}: the refusal should say {needle:?}: {stderr}");
        }
        let tables = shoal_testkit::psql(&direct, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'");
        assert_eq!(tables.unwrap(), "0", "{mode:?}: a refused node must write nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_is_taken_over_early_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    sigkill_failover(format!("sqlite://{}/shoal.db", dir.path().display())).await;
}

/// A frozen node (SIGSTOP: a debugger, a paused VM) can neither kill its jobs nor be noticed
/// through its store session, which stays open. Its supervisors kill the job before the lease
/// they were last told about runs out; another node takes over after the lease; the attempts
/// never overlap; and the node, thawed, goes on without running the attempt again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_nodes_job_dies_before_its_lease_and_moves_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = shoal_testkit::postgres().fresh_database();
    let mut procs = start_cluster(dir.path(), &store, &["n1", "n2", "n3"], SHORT_LEASE).await;
    let http = common::http();
    let Beating { sandbox, id, first_pid, victim_id, victim } = start_beating(&http, dir.path(), &procs).await;
    let watcher = shoal_store::Store::open(&store, 1).await.unwrap();
    unsafe { libc::kill(procs[victim].child.id() as i32, libc::SIGSTOP) };
    let lease_end =
        watcher.list_nodes().await.unwrap().into_iter().find(|n| n.id == victim_id).unwrap().lease_expires_at;
    shoal_testkit::wait_until_async("the frozen node's job to be killed", Duration::from_secs(10), || async move {
        !alive(first_pid)
    })
    .await;
    let died_at = watcher.now_ms().await.unwrap();
    assert!(died_at < lease_end, "the job died at {died_at}, after the frozen node's lease ended at {lease_end}");

    let survivor = &procs[(victim + 1) % procs.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    let e = loop {
        let e = get(&http, &format!("{}/api/v1/executions/{id}", survivor.url)).await.unwrap_or_default();
        if e["state"] == "succeeded" || e["state"] == "failed" {
            break e;
        }
        assert!(Instant::now() < deadline, "no takeover: {e}\n{}", survivor.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    let attempts = watcher.list_attempts(&id).await.unwrap();
    assert!(
        attempts[1].started_at >= lease_end,
        "taken over at {} before the lease ended at {lease_end}",
        attempts[1].started_at
    );
    let all = beats(&sandbox);
    let tokens: std::collections::BTreeSet<i64> = all.iter().map(|b| b.0).collect();
    let (t1, t2) = (*tokens.first().unwrap(), *tokens.last().unwrap());
    let last_of_first = all.iter().filter(|b| b.0 == t1).map(|b| b.1).max().unwrap();
    let first_of_second = all.iter().filter(|b| b.0 == t2).map(|b| b.1).min().unwrap();
    assert!(last_of_first < first_of_second, "attempts overlapped: {all:?}");

    // Thawed, the node carries on; the execution stays as it is.
    unsafe { libc::kill(procs[victim].child.id() as i32, libc::SIGCONT) };
    let url = procs[victim].url.clone();
    shoal_testkit::wait_until_async("the thawed node to be ready", Duration::from_secs(20), || {
        let http = &http;
        let url = &url;
        async move { http.get(format!("{url}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let again = get(&http, &format!("{url}/api/v1/executions/{id}")).await.unwrap();
    assert_eq!((again["state"].as_str(), again["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{again}");
    assert_eq!(beats(&sandbox).iter().filter(|b| b.0 == t1).map(|b| b.1).max(), Some(last_of_first));
    for p in procs.iter_mut() {
        p.stop();
    }
}
