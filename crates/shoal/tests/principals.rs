//! Who did it (issue 11, items 5 and 7): every execution records what made it and whose
//! rights it runs with; schedules and listeners fire with their owner's rights, checked each
//! time; each attempt has a token of its own, valid while it runs, that may read its execution
//! and start jobs of its sandbox and nothing else.

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Makes a token through the API (as the harness's admin) and answers its secret.
async fn token(n: &TestNode, name: &str, role: &str, sandboxes: &[&str]) -> String {
    let (status, v) = n.post("/api/v1/tokens", json!({"name": name, "role": role, "sandboxes": sandboxes})).await;
    assert_eq!(status, 201, "{v}");
    v["secret"].as_str().unwrap().to_owned()
}

/// `(status, body)` of a request with `Authorization: Bearer token` ([`common::call`]).
async fn call(n: &TestNode, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::call(n, Some(&format!("Bearer {token}")), method, path, body).await
}

/// The first `Some` that `f` answers, polled until `timeout` (then the test fails, naming
/// `what`).
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

async fn revoke(n: &TestNode, name: &str) {
    let (status, v) = n.request(reqwest::Method::DELETE, &format!("/api/v1/tokens/{name}"), None).await;
    assert_eq!(status, 200, "{v}");
}

/// A job that writes its `SHOAL_TOKEN` and `SHOAL_SERVER` to `attempt.env` and runs until
/// the file `go` appears in its sandbox.
const HOLD: &str = r#"command = ["sh", "-c", "printf '%s\n%s\n' \"$SHOAL_TOKEN\" \"$SHOAL_SERVER\" > attempt.env.tmp && mv attempt.env.tmp attempt.env; while [ ! -e go ]; do sleep 0.02; done"]
"#;

/// The attempt's token and server, once the job has written them.
async fn attempt_env(root: &Path) -> (String, String) {
    let file = root.join("attempt.env");
    shoal_testkit::wait_until_async("the job to write its environment", Duration::from_secs(20), || async {
        file.exists()
    })
    .await;
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines = text.lines();
    (lines.next().unwrap().to_owned(), lines.next().unwrap().to_owned())
}

/// Executions say what made them: the API with the token that asked, a schedule with its
/// owner; an attempt says why it started.
async fn executions_record_what_made_them(backend: Backend) {
    let n = TestNode::start(backend).await;
    n.sandbox(
        "team-a",
        &[("jobs/fail.toml", "command = [\"sh\", \"-c\", \"exit 3\"]\nretries = 1\nretry_backoff = \"10ms\"\n")],
    )
    .await;
    let ci = token(&n, "ci", "runner", &["team-*"]).await;
    let (status, e) =
        call(&n, &ci, "POST", "/api/v1/executions", Some(json!({"sandbox": "team-a", "job": "jobs/fail.toml"}))).await;
    assert_eq!(status, 201, "{e}");
    assert_eq!((e["trigger"].as_str(), e["principal"].as_str()), (Some("api"), Some("token:ci")), "{e}");
    assert_eq!(e["trigger_ref"], Value::Null);
    let done = n.wait_final(e["id"].as_str().unwrap(), Duration::from_secs(30)).await;
    let causes: Vec<&str> = done["attempts"].as_array().unwrap().iter().map(|a| a["cause"].as_str().unwrap()).collect();
    assert_eq!(causes, ["first", "retry"], "{done}");

    let (status, s) = n
        .post(
            "/api/v1/schedules",
            json!({"name": "tick", "sandbox": "team-a", "job": "jobs/noop.toml", "cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["owner"], "token:test-admin", "{s}");
    let started = first_started_firing(&n, "tick").await;
    let e = n.execution(&started).await;
    assert_eq!(
        (e["trigger"].as_str(), e["trigger_ref"].as_str(), e["principal"].as_str()),
        (Some("schedule"), s["id"].as_str(), Some("token:test-admin")),
        "{e}"
    );
}

/// The execution of the newest started firing of schedule `name`.
async fn first_started_firing(n: &TestNode, name: &str) -> String {
    until("a started firing", Duration::from_secs(20), || async {
        let (_, v) = n.get(&format!("/api/v1/schedules/{name}/firings")).await;
        v["firings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["outcome"] == "started")
            .and_then(|f| f["execution"].as_str().map(str::to_owned))
    })
    .await
}

/// A schedule fires with its owner's rights, checked at each firing: once its owner's token
/// is revoked its firings are recorded `skipped`, `not_permitted`, saying why, and start
/// nothing; whoever changes it next owns it, and it fires again. A listener's events alike.
async fn an_owner_who_lost_the_right_starts_nothing(backend: Backend) {
    let n = TestNode::start(backend).await;
    n.sandbox("team-a", &[]).await;
    let ed = token(&n, "ed", "editor", &["team-a"]).await;
    let (status, s) = call(
        &n,
        &ed,
        "POST",
        "/api/v1/schedules",
        Some(json!({"name": "tick", "sandbox": "team-a", "job": "jobs/noop.toml", "cron": "* * * * * *"})),
    )
    .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["owner"], "token:ed");
    let (status, l) = call(
        &n,
        &ed,
        "POST",
        "/api/v1/listeners",
        Some(json!({"name": "after", "kind": "job", "sandbox": "team-a", "job": "jobs/greet.toml", "params": {"name": "listener"},
                    "on_job": {"sandbox": "team-a", "job": "jobs/noop.toml"}})),
    )
    .await;
    assert_eq!(status, 201, "{l}");
    assert_eq!(l["owner"], "token:ed");
    let e = n.execution(&first_started_firing(&n, "tick").await).await;
    assert_eq!(e["principal"], "token:ed", "{e}");
    // The listener started greet after a noop, for its owner.
    let started = until("the listener to start its job", Duration::from_secs(20), || async {
        let (_, v) = n.get("/api/v1/listeners/after/events").await;
        v["events"].as_array().unwrap().iter().find_map(|e| e["execution"].as_str().map(str::to_owned))
    })
    .await;
    let greet = n.execution(&started).await;
    assert_eq!(
        (greet["trigger"].as_str(), greet["trigger_ref"].as_str(), greet["principal"].as_str()),
        (Some("listener"), l["id"].as_str(), Some("token:ed")),
        "{greet}"
    );

    revoke(&n, "ed").await;
    let skipped = until("a firing skipped for its owner", Duration::from_secs(20), || async {
        let (_, v) = n.get("/api/v1/schedules/tick/firings").await;
        v["firings"].as_array().unwrap().iter().find(|f| f["reason"] == "not_permitted").cloned()
    })
    .await;
    assert_eq!((skipped["outcome"].as_str(), &skipped["execution"]), (Some("skipped"), &Value::Null), "{skipped}");
    let why = skipped["message"].as_str().unwrap();
    assert!(why.contains("token:ed") && why.contains("`ed` was revoked"), "{why}");
    // Every firing after it (the newest first) started nothing either.
    let (_, v) = n.get("/api/v1/schedules/tick/firings").await;
    let firings = v["firings"].as_array().unwrap();
    let at = firings.iter().position(|f| f["reason"] == "not_permitted").unwrap();
    assert!(firings[..at].iter().all(|f| f["reason"] == "not_permitted"), "{v}");
    let noop = n.submit(json!({"sandbox": "team-a", "job": "jobs/noop.toml"})).await;
    let event = until("the listener to record the noop", Duration::from_secs(20), || async {
        let (_, v) = n.get("/api/v1/listeners/after/events").await;
        v["events"].as_array().unwrap().iter().find(|e| e["key"] == noop.as_str()).cloned()
    })
    .await;
    assert_eq!(
        (event["outcome"].as_str(), event["reason"].as_str()),
        (Some("skipped"), Some("not_permitted")),
        "{event}"
    );
    assert!(event["message"].as_str().unwrap().contains("`ed` was revoked"), "{event}");

    // The admin changes it: the admin owns it now, and it starts again.
    let (status, s) = n.request(reqwest::Method::PATCH, "/api/v1/schedules/tick", Some(json!({"enabled": true}))).await;
    assert_eq!((status, s["owner"].as_str()), (200, Some("token:test-admin")), "{s}");
    shoal_testkit::wait_until_async("a firing started for the new owner", Duration::from_secs(20), || async {
        let (_, v) = n.get("/api/v1/schedules/tick/firings").await;
        v["firings"][0]["outcome"] == "started"
    })
    .await;
}

/// Each attempt gets `SHOAL_TOKEN` and `SHOAL_SERVER`: the token reads its own execution and
/// what it started, starts jobs of its sandbox for whom the execution runs for, and nothing
/// else; it stops working when the attempt ends, and when its starter's token is revoked.
async fn an_attempt_has_a_token_of_its_own_while_it_runs(backend: Backend) {
    let n = TestNode::start(backend).await;
    let root = n.sandbox("team-a", &[("jobs/hold.toml", HOLD)]).await;
    n.sandbox("team-b", &[]).await;
    let ci = token(&n, "ci", "runner", &["team-*"]).await;
    let other = n.submit(json!({"sandbox": "team-a", "job": "jobs/noop.toml"})).await;
    let (status, e) =
        call(&n, &ci, "POST", "/api/v1/executions", Some(json!({"sandbox": "team-a", "job": "jobs/hold.toml"}))).await;
    assert_eq!(status, 201, "{e}");
    let id = e["id"].as_str().unwrap().to_owned();
    let (att, server) = attempt_env(&root).await;
    assert!(att.starts_with("shoal_att_"), "{att}");
    assert_eq!(server, n.url);

    let (status, v) = call(&n, &att, "GET", &format!("/api/v1/executions/{id}"), None).await;
    assert_eq!((status, v["state"].as_str()), (200, Some("running")), "{v}");
    let (status, _) = call(&n, &att, "GET", &format!("/api/v1/executions/{id}/logs"), None).await;
    assert_eq!(status, 200);
    // It starts jobs of its sandbox, recorded as made by this execution for `ci`.
    let (status, child) =
        call(&n, &att, "POST", "/api/v1/executions", Some(json!({"sandbox": "team-a", "job": "jobs/noop.toml"}))).await;
    assert_eq!(status, 201, "{child}");
    assert_eq!(
        (child["trigger"].as_str(), child["trigger_ref"].as_str(), child["principal"].as_str()),
        (Some("job"), Some(id.as_str()), Some("token:ci")),
        "{child}"
    );
    let child_id = child["id"].as_str().unwrap();
    let (status, _) = call(&n, &att, "GET", &format!("/api/v1/executions/{child_id}"), None).await;
    assert_eq!(status, 200, "what it started is its to read");
    // Nothing else: another execution of its sandbox does not exist for it; another sandbox,
    // an inline command and every other operation are refused.
    let (status, v) = call(&n, &att, "GET", &format!("/api/v1/executions/{other}"), None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    for (method, path, body) in [
        ("POST", "/api/v1/executions", Some(json!({"sandbox": "team-b", "job": "jobs/noop.toml"}))),
        ("POST", "/api/v1/executions", Some(json!({"command": ["true"]}))),
        ("GET", "/api/v1/executions", None),
        ("GET", "/api/v1/sandboxes", None),
        ("GET", "/api/v1/sandboxes/team-a/files/jobs/noop.toml", None),
        ("POST", "/api/v1/tokens", Some(json!({"name": "mine", "role": "viewer"}))),
    ] {
        let (status, v) = call(&n, &att, method, path, body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("forbidden")), "{method} {path}: {v}");
    }

    // The attempt ends: its token is refused within a second, reads and writes alike.
    std::fs::write(root.join("go"), "").unwrap();
    n.wait_final(&id, Duration::from_secs(20)).await;
    shoal_testkit::wait_until_async("the ended attempt's token to be refused", Duration::from_secs(2), || async {
        call(&n, &att, "GET", &format!("/api/v1/executions/{id}"), None).await.0 == 401
    })
    .await;
    let (status, v) =
        call(&n, &att, "POST", "/api/v1/executions", Some(json!({"sandbox": "team-a", "job": "jobs/noop.toml"}))).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("invalid_token")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("valid only while it runs"), "{v}");

    // A running attempt whose starter's token is revoked loses its own too.
    std::fs::remove_file(root.join("go")).unwrap();
    std::fs::remove_file(root.join("attempt.env")).unwrap();
    let (status, e) =
        call(&n, &ci, "POST", "/api/v1/executions", Some(json!({"sandbox": "team-a", "job": "jobs/hold.toml"}))).await;
    assert_eq!(status, 201, "{e}");
    let (att, _) = attempt_env(&root).await;
    let own = format!("/api/v1/executions/{}", e["id"].as_str().unwrap());
    assert_eq!(call(&n, &att, "GET", &own, None).await.0, 200);
    revoke(&n, "ci").await;
    let last = until("the attempt's token to follow its starter's", Duration::from_secs(2), || async {
        let (status, v) = call(&n, &att, "GET", &own, None).await;
        (status == 401).then_some(v)
    })
    .await;
    assert!(last["error"]["message"].as_str().unwrap().contains("`ci` was revoked"), "{last}");
    std::fs::write(root.join("go"), "").unwrap();
    // A made-up attempt token is refused offline or as unknown, never as someone.
    let (status, v) = call(&n, &att.replace('a', "b"), "GET", &own, None).await;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("invalid_token")), "{v}");
}

/// `shoal` inside a job works with no flags: its environment names the node and the token,
/// which its stored output never shows.
async fn shoal_inside_a_job_needs_no_flags(backend: Backend) {
    let n = TestNode::start(backend).await;
    n.sandbox(
        "team-a",
        &[(
            "jobs/chain.toml",
            "command = [\"sh\", \"-c\", \"echo token=$SHOAL_TOKEN; exec \\\"$0\\\" run team-a/jobs/greet.toml -p name=job --wait\", \"{shoal}\"]\n[params.shoal]\n",
        )],
    )
    .await;
    let id = n
        .submit(
            json!({"sandbox": "team-a", "job": "jobs/chain.toml", "params": {"shoal": env!("CARGO_BIN_EXE_shoal")}}),
        )
        .await;
    let done = n.wait_final(&id, Duration::from_secs(30)).await;
    let logs = n.logs(&id).await;
    assert_eq!(done["state"], "succeeded", "{done}: {logs}");
    // The token it printed is stored masked.
    assert!(logs.contains("token=***\n") && !logs.contains("shoal_att_"), "{logs}");
    let (_, v) = n.get("/api/v1/executions?sandbox=team-a&job=jobs/greet.toml").await;
    let child = &v["executions"][0];
    assert_eq!(
        (child["trigger"].as_str(), child["trigger_ref"].as_str(), child["state"].as_str()),
        (Some("job"), Some(id.as_str()), Some("succeeded")),
        "{v}"
    );
}

on_both!(
    executions_record_what_made_them,
    an_owner_who_lost_the_right_starts_nothing,
    an_attempt_has_a_token_of_its_own_while_it_runs,
    shoal_inside_a_job_needs_no_flags,
);
