//! The OpenAPI document against the server, by a schema-driven fuzzer: schemathesis (installed
//! by `scripts/install-test-deps.sh`) reads the document a real node serves and sends it
//! thousands of requests built from it, valid and invalid, checking that
//! - no request gets a 5xx;
//! - every status and content type answered is one the document lists for the operation;
//! - every response body matches its schema;
//! - requests the document forbids are refused (4xx), and methods it does not list get 405;
//! - requests the document allows are not refused: every 400 is a finding, and so is every
//!   422 but those `tests/openapi_fuzz/hooks.py` names (a sandbox, job, node or tag that does
//!   not exist, a job's parameters, a cron expression or glob only the server can judge, a
//!   duration out of range); the rules that tie fields together are in the document.
//!
//! The node allows sandbox roots only under the test's folder (`sandboxes.allowed_roots`), so
//! the fuzzer's `POST /sandboxes` cannot create folders elsewhere on the machine. The run is
//! seeded, so a finding reproduces; its report names the request.

mod common;

use common::{Backend, TestNode};
use serde_json::json;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_does_what_its_openapi_document_says() {
    // Sandboxes only in the test's own folder: a valid `POST /sandboxes` creates its root.
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(Backend::Sqlite, dir.path());
    let allowed = format!("allowed_roots = [\"{}\"]", dir.path().join("sandboxes").display());
    let n = TestNode::start_edited(dir, url, |t| {
        t.lines()
            .map(|l| if l.starts_with("allowed_roots") { allowed.as_str() } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    // Something to find: a sandbox with the example jobs, a schedule, a listener and a
    // finished execution, so that the fuzzer's requests reach past "not found".
    n.sandbox("examples", &[]).await;
    let (status, _) = n
        .post(
            "/api/v1/schedules",
            json!({"name": "nightly", "sandbox": "examples", "job": "jobs/greet.toml", "cron": "0 3 * * *",
                "params": {"name": "night"}}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = n
        .post(
            "/api/v1/listeners",
            json!({"name": "deploy", "kind": "webhook", "sandbox": "examples", "job": "jobs/greet.toml",
                "params": {"name": "{event.hook}"}}),
        )
        .await;
    assert_eq!(status, 201);
    let id = n.submit(json!({"command": ["true"]})).await;
    n.wait_final(&id, std::time::Duration::from_secs(30)).await;

    let url = n.url.clone();
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_fuzz/hooks.py");
    let report = n.dir.path().join("schemathesis");
    // schemathesis keeps its example database in its working folder: the test's, not the
    // repository.
    let workdir = n.dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-m", "schemathesis.cli", "run", &format!("{url}/api/v1/openapi.json")])
            .args(["--url", &format!("{url}/api/v1")])
            // Every request as the harness's admin; `ignored_auth` sends some without it.
            .args(["--header", &format!("Authorization: Bearer {}", common::test_token())])
            .args(["--checks", "all"])
            .args(["--exclude-checks", "positive_data_acceptance,use_after_free,ensure_resource_availability"])
            // One worker: Python 3.11 can fail compiling in two threads at once ("AST constructor
            // recursion depth mismatch"), which schemathesis reports as an error of its own.
            .args(["--max-examples", "40", "--seed", "1", "--workers", "1"])
            // Revoking tokens would revoke the one the fuzzer calls with (it finds its id in
            // `GET /tokens`); its answers are checked in openapi_statuses.rs and auth.rs.
            .args(["--exclude-operation-id", "revokeToken"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--request-timeout", "20"])
            .args(["--report-dir", &report.display().to_string()])
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", hooks.parent().unwrap())
            .env("NO_COLOR", "1")
            .current_dir(&workdir)
            .output()
    })
    .await
    .unwrap()
    .expect("run schemathesis (scripts/install-test-deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found requests where the server and its document disagree:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It did test: every operation of the document was exercised.
    assert!(text.contains("Tested:"), "{text}");
}
