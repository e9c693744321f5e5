//! End-to-end tests of one node on a real store (SQLite and PostgreSQL): jobs as real child
//! processes, logs, retries, timeouts, cancel, fencing, files, and every class of bad input.

#[macro_use]
mod common;

use common::{alive, read_pid, Backend, TestNode};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

on_both!(
    example_job_runs_end_to_end,
    logs_follow_streams_while_running,
    retries_with_backoff_until_success,
    timeout_kills_the_whole_tree,
    cancel_kills_the_whole_tree,
    exit_codes_and_signals,
    inline_commands_and_idempotency,
    bad_job_input_changes_nothing,
    bad_request_input_changes_nothing,
    files_are_confined_to_the_sandbox,
    sandbox_lifecycle,
    health_nodes_metrics_openapi,
    listing_pages_with_a_cursor,
    fenced_attempt_is_killed_and_never_overlaps,
    restart_hands_running_attempts_back,
    output_beyond_the_limit_is_counted_not_kept,
);

async fn example_job_runs_end_to_end(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n.sandbox("examples", &[]).await;
    let id = n
        .submit(json!({"sandbox": "examples", "job": "jobs/orders-report.toml", "params": {"day": "2026-11-20"}}))
        .await;
    let e = n.wait_final(&id, T).await;
    let logs = n.logs(&id).await;
    assert_eq!(e["state"], "succeeded", "{e}\n{logs}");
    assert_eq!(e["exit_code"], 0);
    assert_eq!(e["attempt"], 1);
    assert_eq!(e["node"], "n1");
    assert_eq!(e["params"]["day"], "2026-11-20");
    assert_eq!(e["params"]["input"], "data/orders.csv", "defaults are recorded");
    assert!(logs.contains(&format!("execution {id}, attempt 1 on n1")), "{logs}");
    assert!(logs.contains("total: 9 orders"), "{logs}");
    assert!(logs.contains("skipping malformed line"), "stderr is kept too: {logs}");
    let report = std::fs::read_to_string(root.join("out/report-2026-11-20.csv")).unwrap();
    assert!(report.starts_with("region,orders,units,revenue\neast,2,14,347.00\n"), "{report}");
    n.stop().await;
}

async fn logs_follow_streams_while_running(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n.sandbox("sb", &[(
        "jobs/wait.toml",
        r#"command = ["sh", "-c", "echo first; while [ ! -f go ]; do sleep 0.02; done; echo second >&2; echo third"]"#,
    )])
    .await;
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/wait.toml"})).await;
    let mut resp = n.http.get(format!("{}/api/v1/executions/{id}/logs?follow=true", n.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    while !seen.contains("first") {
        let chunk = tokio::time::timeout(T, resp.chunk()).await.unwrap().unwrap().expect("stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The line arrived while the job is still running: it is waiting for `go`.
    assert_eq!(n.execution(&id).await["state"], "running");
    std::fs::write(root.join("go"), "").unwrap();
    while let Some(chunk) = tokio::time::timeout(T, resp.chunk()).await.unwrap().unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Each stream keeps its order; stdout and stderr are separate pipes, so lines written to
    // both at nearly the same moment interleave in the order they were read.
    assert!(seen == "first\nsecond\nthird\n" || seen == "first\nthird\nsecond\n", "{seen:?}");
    assert_eq!(n.execution(&id).await["state"], "succeeded");
    let (_, only_err) = n.get(&format!("/api/v1/executions/{id}/logs?stream=stderr")).await;
    assert_eq!(only_err, Value::String("second\n".into()));
    let (_, only_out) = n.get(&format!("/api/v1/executions/{id}/logs?stream=stdout")).await;
    assert_eq!(only_out, Value::String("first\nthird\n".into()));
    n.stop().await;
}

async fn retries_with_backoff_until_success(b: Backend) {
    let mut n = TestNode::start(b).await;
    n.sandbox(
        "sb",
        &[(
            "jobs/flaky.toml",
            "command = [\"sh\", \"scripts/flaky-upload.sh\", \"x\"]\nretries = 3\nretry_backoff = \"200ms\"\n",
        )],
    )
    .await;
    let started = std::time::Instant::now();
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/flaky.toml"})).await;
    let e = n.wait_final(&id, T).await;
    assert_eq!(e["state"], "succeeded", "{e}");
    assert_eq!(e["attempt"], 3);
    // Two retries with backoff 200 ms then 400 ms.
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    let logs = n.logs(&id).await;
    assert_eq!(logs.matches("connection reset").count(), 2, "{logs}");
    assert!(logs.contains("attempt 3: uploading x\nupload complete"), "{logs}");

    // Out of retries: failed, with the last exit code.
    n.sandbox(
        "sb2",
        &[("jobs/always.toml", "command = [\"sh\", \"-c\", \"exit 4\"]\nretries = 1\nretry_backoff = \"10ms\"\n")],
    )
    .await;
    let id = n.submit(json!({"sandbox": "sb2", "job": "jobs/always.toml"})).await;
    let e = n.wait_final(&id, T).await;
    assert_eq!(
        (e["state"].as_str(), e["attempt"].as_i64(), e["exit_code"].as_i64()),
        (Some("failed"), Some(2), Some(4))
    );
    n.stop().await;
}

async fn timeout_kills_the_whole_tree(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n.sandbox("sb", &[(
        "jobs/hang.toml",
        "command = [\"sh\", \"-c\", \"sleep 600 & echo $! > bg.pid; echo started; wait\"]\ntimeout = \"1s\"\nretries = 2\n",
    )])
    .await;
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/hang.toml"})).await;
    let bg = read_pid(&root.join("bg.pid")).await;
    assert!(alive(bg));
    let e = n.wait_final(&id, T).await;
    assert_eq!(e["state"], "timed_out", "{e}");
    assert_eq!(e["reason"], "timeout");
    assert_eq!(e["attempt"], 1, "a timeout is final, not retried");
    shoal_testkit::wait_until_async(
        "the background sleep to die",
        Duration::from_secs(5),
        || async move { !alive(bg) },
    )
    .await;
    n.stop().await;
}

async fn cancel_kills_the_whole_tree(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n
        .sandbox(
            "sb",
            &[(
                "jobs/long.toml",
                "command = [\"sh\", \"-c\", \"trap '' TERM; sleep 600 & echo $! > bg.pid; wait\"]\nretries = 3\n",
            )],
        )
        .await;
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/long.toml"})).await;
    let bg = read_pid(&root.join("bg.pid")).await;
    let (status, body) = n.post(&format!("/api/v1/executions/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let e = n.wait_final(&id, T).await;
    assert_eq!(e["state"], "cancelled", "{e}");
    assert_eq!(e["cancel_requested_by"], "token:test-admin", "who cancelled, as authenticated");
    assert_eq!(e["attempt"], 1, "cancel is final");
    shoal_testkit::wait_until_async(
        "the background sleep to die",
        Duration::from_secs(5),
        || async move { !alive(bg) },
    )
    .await;
    // Cancelling it again: it is finished.
    let (status, body) = n.post(&format!("/api/v1/executions/{id}/cancel"), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("execution_finished")), "{body}");
    // Unknown ids.
    let (status, body) = n.post("/api/v1/executions/0190b5c8-8a4e-7c3a-9b1e-2f0a1b2c3d4e/cancel", json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
    // A queued execution is cancelled at once: fill the slots first.
    n.sandbox("sb2", &[("jobs/block.toml", "command = [\"sleep\", \"600\"]\n")]).await;
    let blockers: Vec<_> =
        futures::future::join_all((0..4).map(|_| n.submit(json!({"sandbox": "sb2", "job": "jobs/block.toml"})))).await;
    for b in &blockers {
        n.wait_state(b, "running", T).await;
    }
    let queued = n.submit(json!({"command": ["true"]})).await;
    let (status, body) = n.post(&format!("/api/v1/executions/{queued}/cancel"), json!({})).await;
    assert_eq!((status, body["state"].as_str()), (200, Some("cancelled")), "{body}");
    for b in &blockers {
        n.post(&format!("/api/v1/executions/{b}/cancel"), json!({})).await;
    }
    for b in &blockers {
        assert_eq!(n.wait_final(b, T).await["state"], "cancelled");
    }
    n.stop().await;
}

async fn exit_codes_and_signals(b: Backend) {
    let mut n = TestNode::start(b).await;
    let id = n.submit(json!({"command": ["sh", "-c", "exit 3"]})).await;
    let e = n.wait_final(&id, T).await;
    assert_eq!(
        (e["state"].as_str(), e["exit_code"].as_i64(), e["reason"].as_str()),
        (Some("failed"), Some(3), Some("exited"))
    );
    let id = n.submit(json!({"command": ["sh", "-c", "kill -9 $$"]})).await;
    let e = n.wait_final(&id, T).await;
    assert_eq!(
        (e["state"].as_str(), e["signal"].as_i64(), e["reason"].as_str()),
        (Some("failed"), Some(9), Some("signaled"))
    );
    let id = n.submit(json!({"command": ["/no/such/program"]})).await;
    let e = n.wait_final(&id, T).await;
    assert_eq!((e["state"].as_str(), e["exit_code"].as_i64()), (Some("failed"), Some(127)));
    assert!(n.logs(&id).await.contains("cannot start"), "{}", n.logs(&id).await);
    n.stop().await;
}

async fn inline_commands_and_idempotency(b: Backend) {
    let mut n = TestNode::start(b).await;
    let id = n
        .submit(json!({"command": ["sh", "-c", "echo $GREETING $SHOAL_EXECUTION_ID $SHOAL_ATTEMPT $SHOAL_NODE_ID"], "env": {"GREETING": "hi"}}))
        .await;
    assert_eq!(n.wait_final(&id, T).await["state"], "succeeded");
    assert_eq!(n.logs(&id).await, format!("hi {id} 1 n1\n"));

    let body = json!({"command": ["true"], "priority": 5});
    let send = |key: &'static str, body: Value| {
        let req = n.http.post(format!("{}/api/v1/executions", n.url)).header("Idempotency-Key", key).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (r.status().as_u16(), replayed, r.json::<Value>().await.unwrap())
        }
    };
    let before = n.count_executions().await;
    let (s1, r1, first) = send("k-1", body.clone()).await;
    let (s2, r2, again) = send("k-1", body.clone()).await;
    assert_eq!((s1, r1, s2, r2), (201, false, 200, true));
    assert_eq!(first["id"], again["id"]);
    let (s3, _, err) = send("k-1", json!({"command": ["false"]})).await;
    assert_eq!((s3, err["error"]["code"].as_str()), (422, Some("idempotency_key_reused")), "{err}");
    assert_eq!(n.count_executions().await, before + 1);
    n.stop().await;
}

/// Asserts an error response and returns its message.
fn expect_error(got: (u16, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let msg = got.1["error"]["message"].as_str().unwrap().to_owned();
    assert!(!msg.is_empty());
    msg
}

async fn bad_job_input_changes_nothing(b: Backend) {
    let mut n = TestNode::start(b).await;
    n.sandbox(
        "sb",
        &[
            ("jobs/broken.toml", "command = [\"true\"]\nretries = \"two\"\n"),
            ("jobs/unknown-key.toml", "command = [\"true\"]\ncolour = \"blue\"\n"),
            ("jobs/bad-placeholder.toml", "command = [\"echo\", \"{who}\"]\n"),
        ],
    )
    .await;
    let before = n.count_executions().await;
    let got = n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/broken.toml"})).await;
    let details = got.1["error"]["details"].clone();
    let msg = expect_error(got, 422, "invalid_job");
    assert!(msg.contains("jobs/broken.toml") && msg.contains("line 2, column 11"), "{msg}");
    assert_eq!((details["line"].as_i64(), details["column"].as_i64()), (Some(2), Some(11)));
    let msg = expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/unknown-key.toml"})).await,
        422,
        "invalid_job",
    );
    assert!(msg.contains("colour") && msg.contains("line 2"), "{msg}");
    let msg = expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/bad-placeholder.toml"})).await,
        422,
        "invalid_job",
    );
    assert!(msg.contains("[params.who]"), "{msg}");
    let msg = expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/greet.toml"})).await,
        422,
        "missing_parameter",
    );
    assert!(msg.contains("`name`"), "{msg}");
    let msg = expect_error(
        n.post(
            "/api/v1/executions",
            json!({"sandbox": "sb", "job": "jobs/greet.toml", "params": {"name": "x", "nmae": "y"}}),
        )
        .await,
        422,
        "unknown_parameter",
    );
    assert!(msg.contains("`nmae`"), "{msg}");
    expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/greet.toml", "params": {"name": [1]}})).await,
        422,
        "invalid_parameter",
    );
    expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "nope", "job": "jobs/greet.toml"})).await,
        422,
        "unknown_sandbox",
    );
    expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/missing.toml"})).await,
        422,
        "unknown_job",
    );
    expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "../../etc/passwd"})).await,
        400,
        "invalid_path",
    );
    expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "/etc/passwd"})).await,
        400,
        "invalid_path",
    );
    // The job listing reports which files are valid.
    let (_, jobs) = n.get("/api/v1/sandboxes/sb/jobs").await;
    let by_path = |p: &str| jobs["jobs"].as_array().unwrap().iter().find(|j| j["path"] == p).unwrap().clone();
    assert_eq!(by_path("jobs/greet.toml")["valid"], true);
    assert_eq!(by_path("jobs/broken.toml")["valid"], false);
    assert!(by_path("jobs/broken.toml")["error"].as_str().unwrap().contains("line 2"));
    assert_eq!(n.count_executions().await, before, "bad input created an execution");
    n.stop().await;
}

async fn bad_request_input_changes_nothing(b: Backend) {
    let mut n = TestNode::start(b).await;
    n.sandbox("sb", &[]).await;
    let before = n.count_executions().await;
    let raw = |body: &'static str| {
        let req =
            n.http.post(format!("{}/api/v1/executions", n.url)).header("content-type", "application/json").body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let msg = expect_error(raw("{\"command\": [\"true\"],").await, 400, "invalid_json");
    assert!(msg.contains("line 1"), "{msg}");
    let msg = expect_error(raw("{\"command\": [\"true\"], \"comand\": 1}").await, 400, "invalid_json");
    assert!(msg.contains("comand"), "{msg}");
    expect_error(raw("{}").await, 422, "invalid_request");
    expect_error(raw("{\"command\": []}").await, 422, "invalid_request");
    expect_error(raw("{\"command\": [\"true\"], \"timeout\": \"soon\"}").await, 422, "invalid_request");
    expect_error(raw("{\"command\": [\"true\"], \"env\": {\"SHOAL_X\": \"1\"}}").await, 422, "invalid_request");
    expect_error(
        raw("{\"command\": [\"true\"], \"job\": \"jobs/x.toml\", \"sandbox\": \"sb\"}").await,
        422,
        "invalid_request",
    );
    let big = format!("{{\"command\": [\"echo\", \"{}\"]}}", "x".repeat(70_000));
    let r = n
        .http
        .post(format!("{}/api/v1/executions", n.url))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "payload_too_large");
    let r = n
        .http
        .post(format!("{}/api/v1/executions", n.url))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    expect_error(n.get("/api/v1/executions/0190b5c8-8a4e-7c3a-9b1e-2f0a1b2c3d4e").await, 404, "not_found");
    expect_error(n.get("/api/v1/executions/not-an-id").await, 404, "not_found");
    expect_error(n.get("/api/v1/executions/not-an-id/logs").await, 404, "not_found");
    expect_error(n.get("/api/v1/executions?state=done").await, 400, "invalid_query");
    expect_error(n.get("/api/v1/executions?limit=0").await, 400, "invalid_query");
    expect_error(n.get("/api/v1/executions?colour=red").await, 400, "invalid_query");
    expect_error(n.get("/api/v1/nope").await, 404, "not_found");
    expect_error(n.get("/api/v1/sandboxes/nope").await, 404, "not_found");
    expect_error(n.request(reqwest::Method::DELETE, "/api/v1/executions", None).await, 405, "method_not_allowed");
    assert_eq!(n.count_executions().await, before, "bad input created an execution");
    n.stop().await;
}

async fn files_are_confined_to_the_sandbox(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n.sandbox("sb", &[]).await;
    let outside = n.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let url = |p: &str| format!("{}/api/v1/sandboxes/sb/files/{p}", n.url);

    // Upload, list, download, overwrite, delete.
    let r = n.http.put(url("in/new.csv")).body("a,b\n1,2\n").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(std::fs::read_to_string(root.join("in/new.csv")).unwrap(), "a,b\n1,2\n");
    let r = n.http.put(url("in/new.csv")).body("a,b\n").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, listing) = n.get("/api/v1/sandboxes/sb/files/in").await;
    assert_eq!(listing["entries"][0]["name"], "new.csv");
    assert_eq!(listing["entries"][0]["size"], 4);
    let (_, root_listing) = n.get("/api/v1/sandboxes/sb/files").await;
    assert!(root_listing["entries"].as_array().unwrap().iter().any(|e| e["name"] == "jobs" && e["kind"] == "folder"));
    assert_eq!(n.http.get(url("in/new.csv")).send().await.unwrap().text().await.unwrap(), "a,b\n");
    assert_eq!(n.http.delete(url("in/new.csv")).send().await.unwrap().status().as_u16(), 204);
    assert!(!root.join("in/new.csv").exists());
    expect_error(n.get("/api/v1/sandboxes/sb/files/in/new.csv").await, 404, "not_found");

    // Escapes: `..`, absolute paths, and symlinks out of the sandbox. Nothing is written.
    // Sent raw: an HTTP client library would normalise `..` away before sending.
    for bad in [
        "../outside/secret.txt",
        "a/../../x",
        "%2E%2E/outside/secret.txt",
        "%2Fetc%2Fpasswd",
        "escape/secret.txt",
        "escape/new.txt",
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let (status, body) =
                raw_request(&n.url, method, &format!("/api/v1/sandboxes/sb/files/{bad}"), "pwned").await;
            assert_eq!(status, 400, "{method} {bad}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"]["code"], "invalid_path", "{method} {bad}: {body}");
        }
    }
    assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).unwrap(), "secret");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "something was written outside the sandbox");

    // Too large: 413, and no file (not even a temporary one) is left behind.
    let big = vec![b'x'; 1024 * 1024 + 1];
    // The answer comes from the Content-Length alone, before the body is read, so the server
    // may close the connection while the client is still sending: either way, nothing lands.
    match n.http.put(url("big.bin")).body(big.clone()).send().await {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let stream =
        futures::stream::iter(big.chunks(64 * 1024).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    // Chunked, without a length: refused once the limit is crossed. The server may close the
    // connection before the client has finished sending, which is an error on the client side.
    match n.http.put(url("big2.bin")).body(reqwest::Body::wrap_stream(stream)).send().await {
        Ok(r) => assert_eq!(r.status().as_u16(), 413, "chunked upload without a length"),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!leftovers.iter().any(|f| f.starts_with("big") || f.starts_with(".shoal-upload")), "{leftovers:?}");
    n.stop().await;
}

/// A sandbox's folder must lie under `sandboxes.allowed_roots` (by default the data
/// directory) and may not hold the node's data: else anyone who may create a sandbox could
/// read the machine's files, or the store with the cluster secret, through the files API.
/// A refused root is answered 422 `root_not_allowed` and changes nothing: no row, no folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_roots_stay_in_the_allowed_folders() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(Backend::Sqlite, dir.path());
    // The default: no `[sandboxes]` section, so only the data directory.
    let mut n = TestNode::start_edited(dir, url, |t| {
        t.lines()
            .filter(|l| !l.starts_with("[sandboxes]") && !l.starts_with("allowed_roots"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    let data = std::fs::canonicalize(n.dir.path().join("data")).unwrap();
    let outside = n.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, data.join("link-out")).unwrap();
    let create = |name: &str, root: String| json!({"name": name, "kind": "shared", "root": root});
    let refused = [
        ("beside", outside.join("sb").display().to_string(), "sandboxes.allowed_roots"),
        ("slash", "/".to_owned(), "sandboxes.allowed_roots"),
        ("dotdot", format!("{}/../outside/x", data.display()), "contains `..`"),
        ("data", data.display().to_string(), "the node's own data"),
        ("scratch", data.join("scratch").display().to_string(), "inside the node's data directory"),
        ("sessions", format!("{}-sessions", n.dir.path().join("shoal.db").display()), "sandboxes.allowed_roots"),
        ("above", n.dir.path().display().to_string(), "sandboxes.allowed_roots"),
        ("through-link", data.join("link-out/sb").display().to_string(), "sandboxes.allowed_roots"),
    ];
    for (name, root, says) in &refused {
        let msg = expect_error(n.post("/api/v1/sandboxes", create(name, root.clone())).await, 422, "root_not_allowed");
        assert!(msg.contains(says), "{name}: {msg}");
    }
    let (_, list) = n.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"], json!([]), "a refused root registered nothing");
    assert!(!outside.join("sb").exists(), "a refused root's folder was not created");
    // Partitions are held to the same rule.
    let parts = json!({"name": "parts", "kind": "partitioned", "partitions": [{"name": "a", "node": "n1", "root": outside.join("p").display().to_string()}]});
    expect_error(n.post("/api/v1/sandboxes", parts).await, 422, "root_not_allowed");
    // Below the data directory's `sandboxes` folder is allowed, and made.
    let inside = data.join("sandboxes/ok");
    let (status, body) = n.post("/api/v1/sandboxes", create("ok", inside.display().to_string())).await;
    assert_eq!(status, 201, "{body}");
    assert!(inside.is_dir());
    // But not that folder itself, which holds every sandbox; nor the same folder as another
    // sandbox, one inside it, or one holding it (a token for one would reach the other's files).
    for (name, root, says) in [
        ("all", data.join("sandboxes").display().to_string(), "inside the node's data directory"),
        ("same", inside.display().to_string(), "overlaps the folder of sandbox `ok`"),
        ("within", inside.join("sub").display().to_string(), "overlaps the folder of sandbox `ok`"),
    ] {
        let msg = expect_error(n.post("/api/v1/sandboxes", create(name, root)).await, 422, "root_not_allowed");
        assert!(msg.contains(says), "{name}: {msg}");
    }
    let (_, list) = n.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 1, "{list}");
    n.stop().await;
}

async fn sandbox_lifecycle(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n.dir.path().join("fresh");
    let body = json!({"name": "fresh", "kind": "shared", "root": root.display().to_string()});
    let (status, created) = n.post("/api/v1/sandboxes", body.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert!(root.is_dir(), "the folder is created");
    expect_error(n.post("/api/v1/sandboxes", body).await, 409, "already_exists");
    expect_error(
        n.post("/api/v1/sandboxes", json!({"name": "Bad Name", "kind": "shared", "root": "/tmp/x"})).await,
        422,
        "invalid_request",
    );
    expect_error(
        n.post("/api/v1/sandboxes", json!({"name": "rel", "kind": "shared", "root": "relative/path"})).await,
        422,
        "invalid_request",
    );
    // A partitioned sandbox has parts, not a root of its own.
    expect_error(
        n.post("/api/v1/sandboxes", json!({"name": "p", "kind": "partitioned", "root": "/tmp/p"})).await,
        422,
        "invalid_partitions",
    );
    let (status, local) = n
        .post(
            "/api/v1/sandboxes",
            json!({"name": "loc", "kind": "local", "root": n.dir.path().join("loc").display().to_string()}),
        )
        .await;
    assert_eq!((status, local["node"].as_str()), (201, Some("n1")), "a local sandbox defaults to the serving node");
    let (_, list) = n.get("/api/v1/sandboxes").await;
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 2);
    // Busy sandboxes are not deleted.
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::write(root.join("jobs/sleep.toml"), "command = [\"sleep\", \"600\"]\n").unwrap();
    let id = n.submit(json!({"sandbox": "fresh", "job": "jobs/sleep.toml"})).await;
    expect_error(n.request(reqwest::Method::DELETE, "/api/v1/sandboxes/fresh", None).await, 409, "conflict");
    n.post(&format!("/api/v1/executions/{id}/cancel"), json!({})).await;
    n.wait_final(&id, T).await;
    let (status, _) = n.request(reqwest::Method::DELETE, "/api/v1/sandboxes/fresh", None).await;
    assert_eq!(status, 204);
    expect_error(n.get("/api/v1/sandboxes/fresh").await, 404, "not_found");
    assert!(root.join("jobs/sleep.toml").exists(), "deleting a sandbox leaves its files");
    n.stop().await;
}

async fn health_nodes_metrics_openapi(b: Backend) {
    let mut n = TestNode::start(b).await;
    assert_eq!(n.get("/health/live").await.0, 200);
    let (status, ready) = n.get("/health/ready").await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));
    let (_, nodes) = n.get("/api/v1/nodes").await;
    let me = &nodes["nodes"][0];
    assert_eq!(me["id"], "n1");
    assert_eq!(me["url"], n.url.as_str());
    assert_eq!(me["state"], "active");
    assert_eq!(me["slots"], 4);
    assert!(me["lease_expires_in_ms"].as_i64().unwrap() > 0);
    assert!(me["workers"].as_array().unwrap().iter().any(|w| w["name"] == "lease"));
    // Issue 10: every background loop is a worker, listed with its state and error counts,
    // and each is through its first step soon after start.
    shoal_testkit::wait_until_async("every worker through its first step", T, || async {
        let (_, me) = n.get("/api/v1/nodes/n1").await;
        me["workers"].as_array().unwrap().iter().all(|w| w["state"] != "starting")
    })
    .await;
    let (_, me) = n.get("/api/v1/nodes/n1").await;
    let workers = me["workers"].as_array().unwrap();
    let mut names: Vec<&str> = workers.iter().map(|w| w["name"].as_str().unwrap()).collect();
    names.sort();
    let mut want = [
        "audit",
        "audit-prune",
        "cancel-watcher",
        "discovery",
        "dispatcher",
        "failure-detector",
        "lease",
        "listeners",
        "log-watch",
        "membership",
        "membership-relay",
        "reaper",
        "scheduler",
        "session-relay",
        "token-usage",
        "watchdog",
    ];
    want.sort();
    assert_eq!(names, want);
    for w in workers {
        assert!(["busy", "idle"].contains(&w["state"].as_str().unwrap()), "{w}");
        assert_eq!((w["errors"].as_u64(), w["consecutive_errors"].as_u64()), (Some(0), Some(0)), "{w}");
        assert!(w["last_error"].is_null() && w["last_error_at"].is_null(), "{w}");
    }
    let id = n.submit(json!({"command": ["true"]})).await;
    n.wait_final(&id, T).await;
    let metrics = n.http.get(format!("{}/metrics", n.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("shoal_attempts_started_total{node=\"n1\"} 1"), "{metrics}");
    assert!(metrics.contains("shoal_executions{state=\"succeeded\"} 1"), "{metrics}");
    let (status, doc) = n.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.")), Some(true));
    assert!(doc["paths"]["/executions"]["post"].is_object(), "the OpenAPI document describes submission");
    n.stop().await;
    // After a clean stop the lease is released at once.
    let nodes = shoal_store::Store::open(&n.store_url, 1).await.unwrap().list_nodes().await.unwrap();
    assert!(nodes[0].lease_expires_at <= nodes[0].now);
}

async fn listing_pages_with_a_cursor(b: Backend) {
    let mut n = TestNode::start(b).await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(n.submit(json!({"command": ["true"]})).await);
    }
    for id in &ids {
        n.wait_final(id, T).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/v1/executions?limit=3&cursor={c}"),
            None => "/api/v1/executions?limit=3".into(),
        };
        let (_, page) = n.get(&q).await;
        for e in page["executions"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let (_, ok) = n.get("/api/v1/executions?state=succeeded&node=n1&limit=100").await;
    assert_eq!(ok["executions"].as_array().unwrap().len(), 7);
    n.stop().await;
}

/// Guarantee 3 at the node: once the store hands an attempt to someone else, the old
/// attempt's next write is refused and its process tree is killed, and no two attempts of
/// the execution are ever alive together (each attempt checks for its predecessors).
async fn fenced_attempt_is_killed_and_never_overlaps(b: Backend) {
    let mut n = TestNode::start(b).await;
    let script = r#"
echo "$SHOAL_FENCING_TOKEN $$" >> attempts.log
for pid in $(cut -d' ' -f2 attempts.log); do
  if [ "$pid" != "$$" ] && kill -0 "$pid" 2>/dev/null; then echo "overlap with $pid" >> overlap.log; fi
done
if [ "$SHOAL_ATTEMPT" = 1 ]; then
  echo $$ > first.pid
  while true; do echo tick; sleep 0.05; done
fi
echo done
"#;
    let root =
        n.sandbox("sb", &[("check.sh", script), ("jobs/fenced.toml", "command = [\"sh\", \"check.sh\"]\n")]).await;
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/fenced.toml"})).await;
    let first = read_pid(&root.join("first.pid")).await;
    // Simulate the store handing the attempt over: the node's lease ends and the reaper
    // requeues the execution with a new owner-to-be; the old token is now stale.
    let store = n.store();
    let generation = store.list_nodes().await.unwrap()[0].generation;
    store.release_lease("n1", generation).await.unwrap();
    let touched = store.reap_lost_attempts().await.unwrap();
    assert!(touched.iter().any(|t| t.as_str() == id), "{touched:?}");
    shoal_testkit::wait_until_async("the fenced attempt's process to die", Duration::from_secs(5), || async move {
        !alive(first)
    })
    .await;
    let e = n.wait_final(&id, T).await;
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    assert!(
        !root.join("overlap.log").exists(),
        "{}",
        std::fs::read_to_string(root.join("overlap.log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(root.join("attempts.log")).unwrap();
    let tokens: Vec<i64> = log.lines().map(|l| l.split(' ').next().unwrap().parse().unwrap()).collect();
    assert_eq!(tokens.len(), 2);
    assert!(tokens[1] > tokens[0], "fencing tokens grow: {tokens:?}");
    n.stop().await;
}

/// A node stopped with attempts running hands them back; they run again after restart.
async fn restart_hands_running_attempts_back(b: Backend) {
    let mut n = TestNode::start(b).await;
    let root = n.sandbox("sb", &[(
        "jobs/two.toml",
        "command = [\"sh\", \"-c\", \"if [ $SHOAL_ATTEMPT = 1 ]; then echo $$ > first.pid; sleep 600; fi; echo second run\"]\n",
    )])
    .await;
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/two.toml"})).await;
    let first = read_pid(&root.join("first.pid")).await;
    n.stop().await;
    assert!(!alive(first), "shutdown leaves no child behind");
    let dir = std::mem::replace(&mut n.dir, tempfile::tempdir().unwrap());
    let mut again = TestNode::start_on(dir, n.store_url.clone(), "").await;
    let e = again.wait_final(&id, T).await;
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    assert!(again.logs(&id).await.ends_with("second run\n"));
    again.stop().await;
}

/// Sends one HTTP/1.1 request byte for byte, returning the status and body.
async fn raw_request(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        token = common::test_token()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    // Chunked bodies: keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) => body[a..=b].to_owned(),
        _ => body,
    };
    (status, body)
}

async fn output_beyond_the_limit_is_counted_not_kept(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(b, dir.path());
    let mut n = TestNode::start_on(dir, url, "max_output_bytes = 1000\n").await;
    // 40 lines of 100 bytes: the first 1000 bytes are kept.
    let id = n.submit(json!({"command": ["sh", "-c", "for i in $(seq 1 40); do printf '%099d\\n' $i; done"]})).await;
    assert_eq!(n.wait_final(&id, T).await["state"], "succeeded");
    let logs = n.logs(&id).await;
    let (kept, note) = logs.split_at(logs.find("\n[shoal:").unwrap());
    assert_eq!(kept.len(), 1000, "{logs}");
    assert!(note.contains("output limit of 1000 bytes reached; 3000 more bytes were not kept"), "{note}");
    n.stop().await;
}
