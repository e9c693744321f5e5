//! Black-box tests of the real `shoal` binary, where a real process is the point: SIGKILL of
//! a node, start-up failures and their messages, `shoal up`.

mod common;

use common::{alive, config_text, read_pid};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn server(config: &Path) -> Child {
    Command::new(SHOAL)
        .args(["server", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Starts `shoal server` with a fixed port taken from a bound-then-released socket.
fn start_server(dir: &Path, store: &str) -> (Child, String) {
    start_named(dir, store, "n1")
}

fn start_named(dir: &Path, store: &str, node: &str) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = config_text(dir, store, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        .replace("node_id = \"n1\"", &format!("node_id = \"{node}\""))
        .replace("/data\"", &format!("/data-{node}\""));
    let cfg = dir.join(format!("shoal-{node}.toml"));
    std::fs::write(&cfg, text).unwrap();
    common::admit_test_token_blocking(store);
    (server(&cfg), format!("http://127.0.0.1:{port}"))
}

async fn wait_ready(url: &str, child: &mut Child) {
    let client = common::http();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{url}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("shoal server exited with {status} before it was ready");
        }
        assert!(std::time::Instant::now() < deadline, "shoal server at {url} not ready in time");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Starts nodes n1 and n2 as two processes sharing one SQLite file, both ready.
async fn start_pair(dir: &Path) -> ((Child, String), (Child, String)) {
    let store = format!("sqlite://{}/shoal.db", dir.display());
    let (mut a, url_a) = start_named(dir, &store, "n1");
    wait_ready(&url_a, &mut a).await;
    let (mut b, url_b) = start_named(dir, &store, "n2");
    wait_ready(&url_b, &mut b).await;
    ((a, url_a), (b, url_b))
}

/// Registers `dir/sb` as shared sandbox `sb` holding one job file, and returns its folder.
async fn sandbox_with_job(http: &reqwest::Client, url: &str, dir: &Path, job: &str, toml: &str) -> std::path::PathBuf {
    let sandbox = dir.join("sb");
    std::fs::create_dir_all(sandbox.join("jobs")).unwrap();
    std::fs::write(sandbox.join("jobs").join(job), toml).unwrap();
    let r = http
        .post(format!("{url}/api/v1/sandboxes"))
        .json(&serde_json::json!({"name": "sb", "kind": "shared", "root": sandbox.display().to_string()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    sandbox
}

async fn submit(http: &reqwest::Client, url: &str, job: &str) -> String {
    let e: serde_json::Value = http
        .post(format!("{url}/api/v1/executions"))
        .json(&serde_json::json!({"sandbox": "sb", "job": format!("jobs/{job}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    e["id"].as_str().unwrap_or_else(|| panic!("{e}")).to_owned()
}

/// Polls an execution until it is final and returns it.
async fn wait_final(http: &reqwest::Client, url: &str, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e: serde_json::Value =
            http.get(format!("{url}/api/v1/executions/{id}")).send().await.unwrap().json().await.unwrap();
        if e["state"] != "queued" && e["state"] != "running" {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stop(child: &mut Child) {
    if child.try_wait().unwrap().is_none() {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success(), "SIGTERM is a clean stop");
    }
}

/// SIGKILL the node process alone (not its group), as a crash would: its attempt's whole
/// process tree dies with it, and after a restart the execution runs again and finishes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_node_leaves_no_orphans_and_its_execution_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/shoal.db", dir.path().display());
    let (mut child, url) = start_server(dir.path(), &store);
    wait_ready(&url, &mut child).await;
    let http = common::http();
    let sandbox = sandbox_with_job(
        &http,
        &url,
        dir.path(),
        "crash.toml",
        "command = [\"sh\", \"-c\", \"echo $SHOAL_ATTEMPT >> attempts; if [ $SHOAL_ATTEMPT = 1 ]; then sleep 600 & echo $! > bg.pid; echo $$ > main.pid; wait; fi; echo recovered\"]\n",
    )
    .await;
    let id = submit(&http, &url, "crash.toml").await;
    let bg = read_pid(&sandbox.join("bg.pid")).await;
    let main = read_pid(&sandbox.join("main.pid")).await;
    assert!(alive(bg) && alive(main));

    // SIGKILL the shoal process only.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    shoal_testkit::wait_until_async(
        "the job's process tree to die with its node",
        Duration::from_secs(5),
        || async move { !alive(bg) && !alive(main) },
    )
    .await;

    let (mut child, url) = start_server(dir.path(), &store);
    wait_ready(&url, &mut child).await;
    let e = wait_final(&http, &url, &id).await;
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    assert_eq!(std::fs::read_to_string(sandbox.join("attempts")).unwrap(), "1\n2\n", "ran exactly twice");
    stop(&mut child);
}

fn run_fail(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(SHOAL).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unreachable_store_fails_start_with_the_url_but_not_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://shoal:hunter2@127.0.0.1:{port}/shoal");
    let data = dir.path().display().to_string();
    let started = std::time::Instant::now();
    let err = run_fail(
        &["server"],
        &[("SHOAL_STORE_URL", &url), ("SHOAL_DATA_DIR", &data), ("SHOAL_HTTP_LISTEN", "127.0.0.1:0")],
    );
    assert!(err.contains(&format!("postgres://shoal:***@127.0.0.1:{port}/shoal")), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shoal.toml");
    std::fs::write(&cfg, "[http]\nlisen = \"127.0.0.1:0\"\n").unwrap();
    let err = run_fail(&["server", "--config", cfg.to_str().unwrap()], &[]);
    assert!(err.contains("lisen") && err.contains("line 2"), "{err}");
    let err = run_fail(&["server"], &[("SHOAL_EXECUTOR_SLOTZ", "3")]);
    assert!(err.contains("SHOAL_EXECUTOR_SLOTZ") && err.contains("slots"), "{err}");
    let err = run_fail(&["server", "--config", "/no/such/file.toml"], &[]);
    assert!(err.contains("/no/such/file.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shoal.db", dir.path().display());
    let store = shoal_store::Store::open(&url, 1).await.unwrap();
    store.force_schema_version(shoal_store::schema::LATEST + 1).await.unwrap();
    drop(store);
    let data = dir.path().display().to_string();
    let err = run_fail(
        &["server"],
        &[("SHOAL_STORE_URL", &url), ("SHOAL_DATA_DIR", &data), ("SHOAL_HTTP_LISTEN", "127.0.0.1:0")],
    );
    assert!(err.contains("newer than the newest this shoal knows"), "{err}");
}

/// The README's first command, in its scriptable form: a node, the example sandbox, a job
/// run and its logs shown.
#[test]
fn up_runs_the_example_job_and_shows_its_logs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(SHOAL)
        .args(["up", "--listen", "127.0.0.1:0", "--run", "jobs/orders-report.toml", "--exit", "--data-dir"])
        .arg(dir.path().join("up"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("shoal is up: node n1"), "{stdout}");
    assert!(stdout.contains("total: 9 orders"), "{stdout}");
    assert!(dir.path().join("up/sandboxes/examples/out/report-2026-11-20.csv").exists());
}

/// Two `shoal server` processes sharing one SQLite file (the embedded store's multi-process
/// case): every execution, submitted to either, runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let ((mut a, url_a), (mut b, url_b)) = start_pair(dir.path()).await;
    let http = common::http();
    let sandbox = sandbox_with_job(
        &http,
        &url_a,
        dir.path(),
        "mark.toml",
        "command = [\"sh\", \"-c\", \"echo $SHOAL_EXECUTION_ID $SHOAL_NODE_ID >> ran.log; sleep 0.05\"]\n",
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(submit(&http, if i % 2 == 0 { &url_a } else { &url_b }, "mark.toml").await);
    }
    for id in &ids {
        let e = wait_final(&http, &url_b, id).await;
        assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(1)), "{e}");
    }
    let log = std::fs::read_to_string(sandbox.join("ran.log")).unwrap();
    let mut ran: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    ran.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ran, expected, "each execution ran exactly once");
    // Each node is woken by the submissions it accepts, so both take part.
    assert!(log.contains(" n1\n") && log.contains(" n2\n"), "{log}");
    let nodes: serde_json::Value =
        http.get(format!("{url_a}/api/v1/nodes")).send().await.unwrap().json().await.unwrap();
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
    stop(&mut a);
    stop(&mut b);
}

/// Guarantee 2 across processes: SIGKILL the node running an attempt and another node takes
/// it over once the dead node's lease has run out on the store's clock, and runs it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_of_a_sigkilled_node_moves_to_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let ((mut a, url_a), (mut b, url_b)) = start_pair(dir.path()).await;
    let http = common::http();
    let sandbox = sandbox_with_job(
        &http,
        &url_a,
        dir.path(),
        "move.toml",
        "command = [\"sh\", \"-c\", \"if [ $SHOAL_ATTEMPT = 1 ]; then echo $SHOAL_NODE_ID > first.node; echo $$ > first.pid; sleep 600; fi; echo $SHOAL_NODE_ID > second.node\"]\n",
    )
    .await;
    let id = submit(&http, &url_a, "move.toml").await;
    let first = read_pid(&sandbox.join("first.pid")).await;
    let first_node = std::fs::read_to_string(sandbox.join("first.node")).unwrap().trim().to_owned();
    let (victim, survivor_url, survivor) =
        if first_node == "n1" { (&mut a, &url_b, "n2") } else { (&mut b, &url_a, "n1") };
    let killed_at = std::time::Instant::now();
    unsafe { libc::kill(victim.id() as i32, libc::SIGKILL) };
    victim.wait().unwrap();
    shoal_testkit::wait_until_async("the attempt to die with its node", Duration::from_secs(5), || async move {
        !alive(first)
    })
    .await;
    let e = wait_final(&http, survivor_url, &id).await;
    let took = killed_at.elapsed();
    assert_eq!(
        (e["state"].as_str(), e["attempt"].as_i64(), e["node"].as_str()),
        (Some("succeeded"), Some(2), Some(survivor)),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(sandbox.join("second.node")).unwrap().trim(), survivor);
    // Lease 2 s in these tests, reaper every 400 ms: well within lease + a few seconds.
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    stop(&mut a);
    stop(&mut b);
}
