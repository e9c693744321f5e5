//! Failover across real processes (guarantees 2 and 3): SIGKILL the `shoal server` process
//! running an attempt (the process alone, not its group, as a crash would). Gossip notices,
//! the store confirms the dead node's session has ended, and another node runs the
//! execution again long before the dead node's lease would have run out; the attempts never
//! overlap, which each attempt's fencing-token heartbeats prove.

mod common;

use common::{alive, config_text, read_pid};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Long enough that a takeover inside it can only come from the early path (gossip + session).
const LEASE: &str = "12s";
/// For the frozen node, which is only taken over once its lease has run out.
const SHORT_LEASE: &str = "4s";

struct Proc {
    id: String,
    child: Child,
    url: String,
    log: PathBuf,
}

impl Proc {
    fn start_with_lease(dir: &Path, store: &str, id: &str, lease: &str) -> Proc {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let text = config_text(dir, store, "")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
            .replace("node_id = \"n1\"", &format!("node_id = \"{id}\""))
            .replace("/data\"", &format!("/data-{id}\""))
            .replace("lease_ttl = \"2s\"", &format!("lease_ttl = \"{lease}\""));
        let cfg = dir.join(format!("{id}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(SHOAL)
            .args(["server", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info,chitchat=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { id: id.into(), child, url: format!("http://127.0.0.1:{port}"), log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let status = self.child.wait().unwrap();
            assert!(status.success(), "{} did not stop cleanly: {status}\n{}", self.id, self.logs());
        }
    }
}

impl Drop for Proc {
    /// A failing test must not leave its nodes running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Starts `ids` as processes on one store, waits until each is ready and every node's gossip
/// sees every other alive.
async fn start_cluster(dir: &Path, store: &str, ids: &[&str], lease: &str) -> Vec<Proc> {
    let mut procs: Vec<Proc> = ids.iter().map(|id| Proc::start_with_lease(dir, store, id, lease)).collect();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    for p in procs.iter_mut() {
        loop {
            if let Ok(r) = http.get(format!("{}/health/ready", p.url)).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("{} exited with {s} before it was ready:\n{}", p.id, p.logs());
            }
            assert!(Instant::now() < deadline, "{} not ready in time:\n{}", p.id, p.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    for p in &procs {
        loop {
            let nodes = get(&http, &format!("{}/api/v1/nodes", p.url)).await.unwrap_or_default();
            let alive = nodes["nodes"].as_array().map_or(0, |a| a.iter().filter(|n| n["gossip"] == "alive").count());
            if alive == ids.len() {
                break;
            }
            assert!(Instant::now() < deadline, "gossip did not form on {}: {nodes}\n{}", p.id, p.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    procs
}

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
    let dir = tempfile::tempdir().unwrap();
    let mut procs = start_cluster(dir.path(), &store, &["n1", "n2", "n3"], LEASE).await;
    let http = reqwest::Client::new();
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
    let http = reqwest::Client::new();
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
