//! End-to-end tests of input crafted to hurt a node: huge job files, upload temporaries,
//! workdirs that leave the sandbox through symlinks, durations and retries that overflow,
//! NUL bytes, over-long names, undecodable paths and malformed holders. Each is refused in
//! the API's error shape, and changes nothing.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn expect_error(got: (u16, Value), status: u16, code: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let msg = got.1["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(!msg.is_empty(), "{}", got.1);
    msg
}

/// The process's peak resident memory, in KiB (the node runs in this process).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn send(n: &TestNode, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = n.http.request(method, format!("{}{}", n.url, path)).body("x").send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_job_file_is_listed_as_too_large_without_being_read() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root = n.sandbox("sb", &[]).await;
    // Sparse: 200 MB to whoever reads it, nothing on disk.
    let huge = std::fs::File::create(root.join("jobs/huge.toml")).unwrap();
    huge.set_len(200 * 1024 * 1024).unwrap();
    drop(huge);

    let before = peak_rss_kib();
    let started = Instant::now();
    let listings = futures::future::join_all((0..3).map(|_| n.get("/api/v1/sandboxes/sb/jobs"))).await;
    let took = started.elapsed();
    let grew_mib = peak_rss_kib().saturating_sub(before) / 1024;
    for (status, body) in listings {
        assert_eq!(status, 200, "{body}");
        let jobs = body["jobs"].as_array().unwrap();
        let entry = jobs.iter().find(|j| j["path"] == "jobs/huge.toml").unwrap_or_else(|| panic!("{body}"));
        assert_eq!(entry["valid"], false, "{entry}");
        let error = entry["error"].as_str().unwrap();
        assert!(error.contains("too large") && error.contains("not read"), "{error}");
        // The other jobs are listed as before.
        assert!(jobs.iter().any(|j| j["path"] == "jobs/greet.toml" && j["valid"] == true), "{body}");
    }
    assert!(grew_mib < 100, "listing a 200 MB job file three times grew the node by {grew_mib} MiB");
    assert!(took < Duration::from_secs(5), "listing took {took:?}");

    // Submitting it is refused the same way, and nothing is created.
    let before = n.count_executions().await;
    let msg = expect_error(
        n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/huge.toml"})).await,
        422,
        "invalid_job",
    );
    assert!(msg.contains("over"), "{msg}");
    assert_eq!(n.count_executions().await, before);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_temporaries_are_never_listed_or_served_and_stale_ones_go_at_start() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root = n.dir.path().join("local-sb");
    let (status, body) =
        n.post("/api/v1/sandboxes", json!({"name": "loc", "kind": "local", "root": root.display().to_string()})).await;
    assert_eq!(status, 201, "{body}");
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("in/data.csv"), "a\n").unwrap();
    let stale = root.join("in/.shoal-upload-3f1d2c4e-0000-4000-8000-000000000000");
    std::fs::write(&stale, "half an upl").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(an_hour_ago).unwrap();
    let temp_name = stale.file_name().unwrap().to_str().unwrap().to_owned();

    let (status, listing) = n.get("/api/v1/sandboxes/loc/files/in").await;
    assert_eq!(status, 200, "{listing}");
    let names: Vec<&str> = listing["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["data.csv"], "{listing}");
    let direct = format!("/api/v1/sandboxes/loc/files/in/{temp_name}");
    expect_error(send(&n, reqwest::Method::GET, &direct).await, 404, "not_found");
    expect_error(send(&n, reqwest::Method::DELETE, &direct).await, 404, "not_found");
    assert!(stale.exists(), "a DELETE through the API removed an upload temporary");
    let msg = expect_error(
        send(&n, reqwest::Method::PUT, "/api/v1/sandboxes/loc/files/in/.shoal-upload-mine").await,
        400,
        "invalid_path",
    );
    assert!(msg.contains("reserved"), "{msg}");
    assert!(!root.join("in/.shoal-upload-mine").exists());

    // A restart removes what a crash left behind, and nothing else.
    n.stop().await;
    let dir = std::mem::replace(&mut n.dir, tempfile::tempdir().unwrap());
    let mut again = TestNode::start_on(dir, n.store_url.clone(), "").await;
    shoal_testkit::wait_until_async("the stale upload temporary to be removed", T, || {
        let gone = !stale.exists();
        async move { gone }
    })
    .await;
    assert_eq!(std::fs::read_to_string(root.join("in/data.csv")).unwrap(), "a\n");
    // Uploads still work, and leave no temporary.
    let r = again
        .http
        .put(format!("{}/api/v1/sandboxes/loc/files/in/new.csv", again.url))
        .body("b\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let left: Vec<String> =
        std::fs::read_dir(root.join("in")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!left.iter().any(|f| f.starts_with(".shoal-upload-")), "{left:?}");
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workdir_that_resolves_outside_the_sandbox_is_refused_at_submit() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root = n
        .sandbox(
            "sb",
            &[
                ("jobs/escape.toml", "command = [\"touch\", \"marker\"]\nworkdir = \"link\"\n"),
                ("jobs/deep.toml", "command = [\"touch\", \"marker\"]\nworkdir = \"link/sub/new\"\n"),
                ("jobs/fine.toml", "command = [\"true\"]\nworkdir = \"work\"\n"),
                ("work/.keep", ""),
            ],
        )
        .await;
    let outside = n.dir.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    let before = n.count_executions().await;
    for job in ["jobs/escape.toml", "jobs/deep.toml"] {
        let msg =
            expect_error(n.post("/api/v1/executions", json!({"sandbox": "sb", "job": job})).await, 422, "invalid_job");
        assert!(msg.contains("outside the sandbox"), "{msg}");
    }
    for workdir in ["link", "link/sub", "link/missing/deeper"] {
        let got = n
            .post("/api/v1/executions", json!({"sandbox": "sb", "command": ["touch", "marker"], "workdir": workdir}))
            .await;
        let msg = expect_error(got, 422, "invalid_request");
        assert!(msg.contains("outside the sandbox"), "{workdir}: {msg}");
    }
    assert_eq!(n.count_executions().await, before, "a refused submission created an execution");
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/fine.toml"})).await;
    assert_eq!(n.wait_final(&id, T).await["state"], "succeeded");
    assert!(!outside.join("marker").exists() && !outside.join("sub/marker").exists());
    n.stop().await;
}

/// Accepted with a real folder, then the folder is swapped for a symlink out of the sandbox
/// before the attempt starts: the runner refuses to start it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workdir_swapped_for_a_symlink_after_submit_does_not_run_outside() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root = n
        .sandbox(
            "sb",
            &[("jobs/work.toml", "command = [\"touch\", \"marker\"]\nworkdir = \"work\"\n"), ("work/.keep", "")],
        )
        .await;
    let outside = n.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let (status, body) = n.post("/api/v1/nodes/n1/suspend", json!({})).await;
    assert!(status < 300, "{status} {body}");
    let id = n.submit(json!({"sandbox": "sb", "job": "jobs/work.toml"})).await;
    std::fs::remove_dir_all(root.join("work")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("work")).unwrap();
    let (status, body) = n.post("/api/v1/nodes/n1/resume", json!({})).await;
    assert!(status < 300, "{status} {body}");
    let e = n.wait_final(&id, T).await;
    let logs = n.logs(&id).await;
    assert_eq!(e["state"], "failed", "{e}\n{logs}");
    assert!(logs.contains("outside the sandbox root"), "{logs}");
    assert!(!outside.join("marker").exists(), "the job ran outside its sandbox");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_that_overflow_and_endless_retries_are_refused() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox(
        "sb",
        &[
            ("jobs/timeout.toml", "command = [\"true\"]\ntimeout = \"18446744073709551s 616ms\"\n"),
            ("jobs/backoff.toml", "command = [\"true\"]\nretries = 1\nretry_backoff = \"18446744073709551616s\"\n"),
            ("jobs/retries.toml", "command = [\"true\"]\nretries = 4294967295\n"),
            ("jobs/retries101.toml", "command = [\"true\"]\nretries = 101\n"),
        ],
    )
    .await;
    let before = n.count_executions().await;
    for (job, line) in
        [("jobs/timeout.toml", 2), ("jobs/backoff.toml", 3), ("jobs/retries.toml", 2), ("jobs/retries101.toml", 2)]
    {
        let got = n.post("/api/v1/executions", json!({"sandbox": "sb", "job": job})).await;
        let details = got.1["error"]["details"].clone();
        expect_error(got, 422, "invalid_job");
        assert_eq!(details["line"], line, "{job}: {details}");
    }
    for body in [
        json!({"command": ["true"], "timeout": "18446744073709551s 616ms"}),
        json!({"command": ["true"], "timeout": "584942417355y"}),
        json!({"command": ["true"], "retries": 1, "retry_backoff": "18446744073709551616s"}),
        json!({"command": ["true"], "retries": 4294967295u32}),
        json!({"command": ["true"], "retries": 101}),
    ] {
        expect_error(n.post("/api/v1/executions", body).await, 422, "invalid_request");
    }
    assert_eq!(n.count_executions().await, before, "a refused submission created an execution");
    // The documented maximum is accepted.
    n.submit(json!({"command": ["true"], "retries": 100})).await;
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_bad_env_names_and_escaping_workdirs_are_refused_at_submit() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox(
        "sb",
        &[
            ("jobs/nul-arg.toml", "command = [\"echo\", \"a\\u0000b\"]\n"),
            ("jobs/nul-env.toml", "command = [\"true\"]\n[env]\nA = \"x\\u0000\"\n"),
            ("jobs/nul-key.toml", "command = [\"true\"]\n[env]\n\"A\\u0000\" = \"x\"\n"),
            ("jobs/eq-key.toml", "command = [\"true\"]\n[env]\n\"A=B\" = \"x\"\n"),
            ("jobs/empty-key.toml", "command = [\"true\"]\n[env]\n\"\" = \"x\"\n"),
            ("jobs/up.toml", "command = [\"true\"]\nworkdir = \"../x\"\n"),
            ("jobs/abs.toml", "command = [\"true\"]\nworkdir = \"/etc\"\n"),
            (
                "jobs/param.toml",
                "command = [\"echo\", \"{arg}\"]\nworkdir = \"{dir}\"\n[env]\nV = \"{val}\"\n[params.arg]\ndefault = \"a\"\n[params.dir]\ndefault = \"data\"\n[params.val]\ndefault = \"v\"\n",
            ),
        ],
    )
    .await;
    let before = n.count_executions().await;
    for job in ["nul-arg", "nul-env", "nul-key", "eq-key", "empty-key", "up", "abs"] {
        let got = n.post("/api/v1/executions", json!({"sandbox": "sb", "job": format!("jobs/{job}.toml")})).await;
        expect_error(got, 422, "invalid_job");
    }
    // Valid templates, hostile values.
    for params in [
        json!({"arg": "a\u{0}b"}),
        json!({"val": "\u{0}"}),
        json!({"dir": "../x"}),
        json!({"dir": "/etc"}),
        json!({"dir": "a/../../x"}),
        json!({"dir": "a\u{0}"}),
    ] {
        let got =
            n.post("/api/v1/executions", json!({"sandbox": "sb", "job": "jobs/param.toml", "params": params})).await;
        expect_error(got, 422, "invalid_parameter");
    }
    for body in [
        json!({"command": ["echo", "a\u{0}b"]}),
        json!({"command": ["ec\u{0}ho"]}),
        json!({"command": ["true"], "env": {"A\u{0}": "x"}}),
        json!({"command": ["true"], "env": {"A": "x\u{0}y"}}),
        json!({"command": ["true"], "env": {"A=B": "x"}}),
        json!({"command": ["true"], "env": {"": "x"}}),
    ] {
        expect_error(n.post("/api/v1/executions", body).await, 422, "invalid_request");
    }
    assert_eq!(n.count_executions().await, before, "a refused submission created an execution");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_file_names_are_refused_in_the_error_shape() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root = n.sandbox("sb", &[]).await;
    let long_name = "n".repeat(300);
    let long_path = vec!["d".repeat(200); 21].join("/");
    for path in [long_name.clone(), format!("in/{long_name}"), format!("{long_name}/x"), long_path] {
        for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
            let got = send(&n, method.clone(), &format!("/api/v1/sandboxes/sb/files/{path}")).await;
            let msg = expect_error(got, 400, "invalid_path");
            assert!(msg.contains("too long") || msg.contains("longer than 255"), "{method} {msg}");
        }
    }
    // A name of exactly 255 bytes is fine.
    let ok = "n".repeat(255);
    assert_eq!(send(&n, reqwest::Method::PUT, &format!("/api/v1/sandboxes/sb/files/{ok}")).await.0, 201);
    assert!(root.join(&ok).exists());
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_paths_answer_in_the_error_shape_on_every_route() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox("sb", &[]).await;
    let bad = "%c0%ae";
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/v1/sandboxes/{bad}")),
        (reqwest::Method::DELETE, format!("/api/v1/sandboxes/{bad}")),
        (reqwest::Method::GET, format!("/api/v1/sandboxes/{bad}/jobs")),
        (reqwest::Method::GET, format!("/api/v1/sandboxes/{bad}/files")),
        (reqwest::Method::GET, format!("/api/v1/sandboxes/sb/files/{bad}")),
        (reqwest::Method::PUT, format!("/api/v1/sandboxes/sb/files/in/{bad}")),
        (reqwest::Method::DELETE, format!("/api/v1/sandboxes/sb/files/{bad}")),
        (reqwest::Method::GET, format!("/api/v1/executions/{bad}")),
        (reqwest::Method::GET, format!("/api/v1/executions/{bad}/logs")),
        (reqwest::Method::POST, format!("/api/v1/executions/{bad}/cancel")),
        (reqwest::Method::GET, format!("/api/v1/nodes/{bad}")),
        (reqwest::Method::POST, format!("/api/v1/nodes/{bad}/drain")),
        (reqwest::Method::GET, format!("/api/v1/schedules/{bad}")),
        (reqwest::Method::GET, format!("/api/v1/listeners/{bad}")),
        (reqwest::Method::POST, format!("/api/v1/hooks/{bad}")),
    ] {
        let (status, body) = send(&n, method.clone(), &path).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_path", "{method} {path}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{method} {path}: {body}");
    }
    let before = n.count_executions().await;
    assert_eq!(before, 0);
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_sandbox_whose_node_is_not_a_node_id_is_refused() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root: &Path = &n.dir.path().join("loc");
    for node in ["http://10.0.0.1:7070", "n1/../n2", "", "a b"] {
        let got = n
            .post(
                "/api/v1/sandboxes",
                json!({"name": "loc", "kind": "local", "root": root.display().to_string(), "node": node}),
            )
            .await;
        let msg = expect_error(got, 422, "invalid_request");
        assert!(msg.contains("node"), "{node}: {msg}");
    }
    expect_error(n.get("/api/v1/sandboxes/loc").await, 404, "not_found");
    assert!(!root.exists(), "a refused sandbox created its folder");
    n.stop().await;
}
