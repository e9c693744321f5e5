//! The `shoal` client commands against a real node: run (with --wait and --follow), ps,
//! logs, show, cancel, nodes and the sandbox commands, with their exit codes.

mod common;

use common::{Backend, TestNode};
use std::process::{Command, Output};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

async fn shoal(n: &TestNode, args: &[&str]) -> Output {
    let url = n.url.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let token = common::test_token();
    tokio::task::spawn_blocking(move || {
        Command::new(SHOAL).arg("--server").arg(url).args(args).env("SHOAL_TOKEN", token).output().unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_end_to_end() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root =
        n.sandbox("examples", &[("jobs/fail.toml", "command = [\"sh\", \"-c\", \"echo oops >&2; exit 7\"]\n")]).await;

    // run --follow shows the job's output and exits 0 on success.
    let o = shoal(&n, &["run", "examples/jobs/greet.toml", "-p", "name=cli", "--follow"]).await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert_eq!(out, "hello, cli\n");

    // run --wait of a failing job exits 1.
    let o = shoal(&n, &["run", "examples/jobs/fail.toml", "--wait"]).await;
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));

    // A missing parameter is refused with the API's message and exit code 1.
    let o = shoal(&n, &["run", "examples/jobs/greet.toml"]).await;
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("missing required parameter `name`") && err.contains("missing_parameter"), "{err}");

    // run without --wait prints the id; logs, show and ps find it.
    let o = shoal(&n, &["run", "examples/jobs/orders-report.toml", "-p", "day=2026-11-20"]).await;
    let id = text(&o).0.trim().to_owned();
    assert_eq!(o.status.code(), Some(0));
    n.wait_final(&id, std::time::Duration::from_secs(30)).await;
    let o = shoal(&n, &["logs", &id]).await;
    assert!(text(&o).0.contains("total: 9 orders"), "{:?}", text(&o));
    let o = shoal(&n, &["--json", "show", &id]).await;
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["state"], "succeeded");
    let o = shoal(&n, &["ps"]).await;
    let (out, _) = text(&o);
    assert!(out.contains(&id) && out.contains("succeeded") && out.contains("failed"), "{out}");
    let o = shoal(&n, &["--json", "ps", "--state", "failed"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed["executions"].as_array().unwrap().len(), 1, "{listed}");

    // cancel of a finished execution: refused, exit 1.
    let o = shoal(&n, &["cancel", &id]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("execution_finished"), "{:?}", text(&o));

    // nodes
    let o = shoal(&n, &["nodes"]).await;
    assert!(text(&o).0.contains("n1"), "{:?}", text(&o));

    // sandbox files: put, files, get, rm-file
    let local = n.dir.path().join("local.txt");
    std::fs::write(&local, "payload\n").unwrap();
    let o = shoal(&n, &["sandbox", "put", "examples", local.to_str().unwrap(), "in/payload.txt"]).await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(std::fs::read_to_string(root.join("in/payload.txt")).unwrap(), "payload\n");
    let o = shoal(&n, &["sandbox", "files", "examples", "in"]).await;
    assert!(text(&o).0.contains("payload.txt"), "{:?}", text(&o));
    let o = shoal(&n, &["sandbox", "get", "examples", "in/payload.txt"]).await;
    assert_eq!(text(&o).0, "payload\n");
    let o = shoal(&n, &["sandbox", "rm-file", "examples", "in/payload.txt"]).await;
    assert_eq!(o.status.code(), Some(0));
    assert!(!root.join("in/payload.txt").exists());
    let o = shoal(&n, &["sandbox", "jobs", "examples"]).await;
    assert!(text(&o).0.contains("jobs/orders-report.toml"), "{:?}", text(&o));

    // No server: exit 3, naming what was tried.
    let o = Command::new(SHOAL).args(["--server", "http://127.0.0.1:1", "ps"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o).1.contains("127.0.0.1:1"), "{:?}", text(&o));
    n.stop().await;
}

/// `shoal drain`, `suspend` and `resume`, and `shoal nodes` showing the state, gossip view
/// and load; an unknown node is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_suspend_and_resume_from_the_cli() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let o = shoal(&n, &["drain", "n1"]).await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert_eq!(text(&o).0, "node n1: draining (was active)\nnot taking new work: node is draining\n");
    assert_eq!(n.get("/health/ready").await.0, 503, "a draining node is not ready");
    let o = shoal(&n, &["nodes"]).await;
    let (out, _) = text(&o);
    let header = out.lines().next().unwrap();
    for col in ["ID", "STATE", "GOSSIP", "STORE", "CPU", "MEM", "LEASE AGE", "VERSION"] {
        assert!(header.contains(col), "{out}");
    }
    let row = out.lines().nth(1).unwrap();
    assert!(row.contains("draining") && row.contains("alive") && row.contains("reachable"), "{out}");
    assert!(!out.contains("read replicas"), "SQLite has none: {out}");
    let o = shoal(&n, &["suspend", "n1"]).await;
    assert!(text(&o).0.starts_with("node n1: suspended (was draining)"), "{:?}", text(&o));
    assert_eq!(n.get("/health/ready").await.0, 200, "a suspended node stays ready");
    let o = shoal(&n, &["resume", "n1"]).await;
    assert_eq!(text(&o).0, "node n1: active (was suspended)\n");
    let o = shoal(&n, &["drain", "n9"]).await;
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    assert!(text(&o).1.contains("n9") && text(&o).1.contains("not_found"), "{:?}", text(&o));
    n.stop().await;
}

/// `shoal schedule`, `shoal listener` and `shoal hook` against a real node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_listeners_and_hooks_from_the_cli() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox("examples", &[]).await;
    let o = shoal(
        &n,
        &["schedule", "create", "tick", "examples/jobs/greet.toml", "--cron", "* * * * * *", "-p", "name={fire_unix}"],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(text(&o).0.contains("created schedule tick"), "{:?}", text(&o));
    // A bad expression names the field and exits 1.
    let o = shoal(&n, &["schedule", "create", "bad", "examples/jobs/greet.toml", "--cron", "0 61 * * *"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("hour") && text(&o).1.contains("invalid_cron"), "{:?}", text(&o));
    let o = shoal(&n, &["schedule", "preview", "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "--count", "2"]).await;
    assert_eq!(text(&o).0.lines().count(), 2, "{:?}", text(&o));
    assert!(text(&o).0.lines().all(|l| l.contains("T02:30:00+0")), "{:?}", text(&o));
    shoal_testkit::wait_until_async("two firings", std::time::Duration::from_secs(10), || async {
        let o = shoal(&n, &["--json", "schedule", "firings", "tick"]).await;
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v["firings"].as_array().is_some_and(|f| f.len() >= 2)
    })
    .await;
    let o = shoal(&n, &["schedule", "firings", "tick"]).await;
    assert!(text(&o).0.contains("started"), "{:?}", text(&o));
    let o = shoal(&n, &["schedule", "disable", "tick"]).await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = shoal(&n, &["schedule", "list"]).await;
    assert!(text(&o).0.contains("tick") && text(&o).0.contains("no"), "{:?}", text(&o));
    assert_eq!(shoal(&n, &["schedule", "delete", "tick"]).await.status.code(), Some(0));

    let o = shoal(
        &n,
        &[
            "--json",
            "listener",
            "create",
            "hi",
            "examples/jobs/greet.toml",
            "--webhook",
            "-p",
            "name={event.payload.who}",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let created: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let o = shoal(&n, &["hook", "hi", "--secret", &secret, "--data", r#"{"who": "cli"}"#]).await;
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let id = text(&o).0.trim().to_owned();
    let e = n.wait_final(&id, std::time::Duration::from_secs(10)).await;
    assert_eq!(e["params"]["name"], "cli", "{e}");
    let o = shoal(&n, &["hook", "hi", "--secret", "wrong-secret-wrong-secret", "--data", "{}"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("invalid_signature"), "{:?}", text(&o));
    let o = shoal(&n, &["listener", "events", "hi"]).await;
    assert!(text(&o).0.contains(&id), "{:?}", text(&o));
    assert_eq!(shoal(&n, &["listener", "delete", "hi"]).await.status.code(), Some(0));
    n.stop().await;
}
