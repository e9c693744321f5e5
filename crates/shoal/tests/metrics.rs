//! `/metrics` against what happened: every counter and histogram of a node compared with the
//! executions, attempts, output, firings, events, requests and store outages the test itself
//! caused (one in-process node: on SQLite, and on PostgreSQL behind a proxy to cut it off).

mod common;

use common::{histogram, metric, metric_where, metrics_text, Backend, TestNode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Prints 14 bytes to stdout and 10 to stderr.
const PRINT_JOB: &str = "command = [\"sh\", \"-c\", \"printf 'hello metrics\\\\n'; printf 'to stderr\\\\n' >&2\"]\n";
const PRINT_BYTES: u64 = 24;
/// Prints 1 byte and fails; one retry, so two attempts.
const FAIL_JOB: &str = "command = [\"sh\", \"-c\", \"printf x; exit 3\"]\nretries = 1\nretry_backoff = \"10ms\"\n";

/// Reads `/metrics` until `ready` holds for it, for at most `T`: a counter is bumped just
/// after the store write that the API shows, so the API can be a moment ahead of it.
async fn metrics_when(n: &TestNode, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let text = metrics_text(n).await;
        if ready(&text) {
            return text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} not seen in /metrics after {T:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn count(text: &str, name: &str) -> u64 {
    metric(text, name) as u64
}

/// Executions, attempts, output bytes, dispatch latency, claim sizes and request durations
/// are exactly what the test ran and asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_match_what_ran() {
    let began = Instant::now();
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox("s", &[("print.toml", PRINT_JOB), ("fail.toml", FAIL_JOB)]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(n.submit(json!({"sandbox": "s", "job": "print.toml"})).await);
    }
    ids.push(n.submit(json!({"sandbox": "s", "job": "fail.toml"})).await);
    ids.push(n.submit(json!({"sandbox": "s", "job": "jobs/noop.toml"})).await);
    // A replayed submission (same idempotency key) creates nothing: it is not counted.
    for want in [201, 200] {
        let resp = n
            .http
            .post(format!("{}/api/v1/executions", n.url))
            .header("Idempotency-Key", "once")
            .json(&json!({"sandbox": "s", "job": "jobs/noop.toml"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want);
        let id = resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        if want == 201 {
            ids.push(id);
        }
    }
    let mut attempts = 0;
    let mut printed = 0;
    for id in &ids {
        let e = n.wait_final(id, T).await;
        attempts += e["attempt"].as_u64().unwrap();
        printed += n.logs(id).await.len() as u64;
    }
    assert_eq!(attempts, 7, "three prints, a failure retried once, two no-ops");
    assert_eq!(printed, 3 * PRINT_BYTES + 2, "the output the jobs printed, as the store keeps it");
    // A request that matches no route, with an id in its path.
    let (status, _) = n.get(&format!("/api/v1/nowhere/{}", ids[0])).await;
    assert_eq!(status, 404);

    let text = metrics_when(&n, "seven attempts finished", |t| count(t, "shoal_attempts_finished_total") == 7).await;
    let elapsed = began.elapsed().as_secs_f64();
    assert_eq!(count(&text, "shoal_executions_submitted_total"), 6, "{text}");
    assert_eq!(count(&text, "shoal_attempts_started_total"), 7, "{text}");
    assert_eq!(count(&text, "shoal_attempts_fenced_total"), 0, "{text}");
    assert_eq!(count(&text, "shoal_takeovers_total"), 0, "{text}");
    assert_eq!(count(&text, "shoal_lease_renewal_failures_total"), 0, "{text}");
    assert_eq!(count(&text, "shoal_log_bytes_written_total"), printed, "every byte printed, counted once: {text}");
    assert_eq!(count(&text, "shoal_running_attempts"), 0, "{text}");
    assert_eq!(metric_where(&text, "shoal_executions", &[("state", "succeeded")]), Some(5.0), "{text}");
    assert_eq!(metric_where(&text, "shoal_executions", &[("state", "failed")]), Some(1.0), "{text}");

    // One dispatch latency per attempt started, each within the test's run.
    let (latencies, latency_sum) = histogram(&text, "shoal_dispatch_latency_seconds", &[("node", "n1")]);
    assert_eq!(latencies, 7, "{text}");
    assert!(latency_sum > 0.0 && latency_sum < 7.0 * elapsed, "{latency_sum} s over 7 attempts in {elapsed} s");
    // Every attempt was claimed once, in claims of at least one row.
    let (claims, claimed) = histogram(&text, "shoal_claim_batch_size", &[("node", "n1")]);
    assert_eq!(claimed, 7.0, "{text}");
    assert!((1..=7).contains(&claims), "{claims} claims: {text}");

    // Requests by route template and status: the six submissions and the replay exactly,
    // the polls of each execution, the unmatched one; never a raw path or id.
    let requests = |route: &str, status: &str| {
        histogram(&text, "shoal_http_request_duration_seconds", &[("route", route), ("status", status)])
    };
    assert_eq!(requests("/api/v1/executions", "201").0, 6, "{text}");
    assert_eq!(requests("/api/v1/executions", "200").0, 1, "{text}");
    assert_eq!(requests("/api/v1/sandboxes", "201").0, 1, "{text}");
    assert!(requests("/api/v1/executions/{id}", "200").0 >= 6, "{text}");
    assert_eq!(requests("/api/v1/executions/{id}/logs", "200").0, 6, "{text}");
    assert_eq!(requests("unmatched", "404").0, 1, "{text}");
    for id in &ids {
        assert!(!text.contains(id.as_str()), "an execution id in the labels: {text}");
    }
    assert!(!text.contains("nowhere"), "a raw path in the labels: {text}");
    // Only route templates and `unmatched` are routes.
    for (labels, _) in common::series(&text, "shoal_http_request_duration_seconds_count") {
        let route = &labels.iter().find(|(k, _)| k == "route").unwrap().1;
        assert!(route == "unmatched" || route.starts_with('/'), "{route}");
    }
    n.stop().await;
}

/// An attempt whose token went stale is counted fenced, not finished; an attempt of a node
/// that is gone is counted as a takeover by the node whose reaper moved it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_attempts_and_takeovers_are_counted() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    let root = n
        .sandbox("s", &[(
            "ticks.toml",
            "command = [\"sh\", \"-c\", \"if [ $SHOAL_ATTEMPT = 1 ]; then echo $$ > first.pid; while true; do echo tick; sleep 0.05; done; fi\"]\n",
        )])
        .await;
    // Fenced: the store hands the attempt on (the node's lease ends, the test reaps) while it
    // runs here; its next write is refused and it is killed; attempt 2 runs here.
    let id = n.submit(json!({"sandbox": "s", "job": "ticks.toml"})).await;
    common::read_pid(&root.join("first.pid")).await;
    let store = n.store();
    let generation = store.list_nodes().await.unwrap()[0].generation;
    store.release_lease("n1", generation).await.unwrap();
    let touched = store.reap_lost_attempts().await.unwrap();
    assert!(touched.iter().any(|t| t.as_str() == id), "{touched:?}");
    let e = n.wait_final(&id, T).await;
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    let text =
        metrics_when(&n, "the second attempt finished", |t| count(t, "shoal_attempts_finished_total") == 1).await;
    assert_eq!(count(&text, "shoal_attempts_started_total"), 2, "{text}");
    assert_eq!(count(&text, "shoal_attempts_fenced_total"), 1, "{text}");
    assert_eq!(count(&text, "shoal_takeovers_total"), 0, "the test reaped, not the node: {text}");

    // Takeover: a node the store does not know claims an execution while this one is
    // suspended; this node's reaper takes it over, and runs it once resumed.
    let (status, body) = n.post("/api/v1/nodes/n1/suspend", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let lost = n.submit(json!({"sandbox": "s", "job": "jobs/noop.toml"})).await;
    let ghost = shoal_core::placement::NodeView { id: "ghost", tags: &[] };
    let claimed = store.claim(&ghost, 1).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.id.to_string()).collect::<Vec<_>>(), vec![lost.clone()]);
    metrics_when(&n, "the ghost's attempt taken over", |t| count(t, "shoal_takeovers_total") == 1).await;
    let (status, body) = n.post("/api/v1/nodes/n1/resume", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let e = n.wait_final(&lost, T).await;
    assert_eq!((e["state"].as_str(), e["attempt"].as_i64()), (Some("succeeded"), Some(2)), "{e}");
    let text =
        metrics_when(&n, "the taken-over attempt finished", |t| count(t, "shoal_attempts_finished_total") == 2).await;
    assert_eq!(count(&text, "shoal_takeovers_total"), 1, "{text}");
    assert_eq!(count(&text, "shoal_attempts_started_total"), 3, "the ghost's attempt was not started here: {text}");
    assert_eq!(histogram(&text, "shoal_dispatch_latency_seconds", &[]).0, 3, "{text}");
    n.stop().await;
}

async fn firings(n: &TestNode, schedule: &str) -> Vec<Value> {
    let (status, body) = n.get(&format!("/api/v1/schedules/{schedule}/firings?limit=10000")).await;
    assert_eq!(status, 200, "{body}");
    body["firings"].as_array().unwrap().clone()
}

/// Firings started and skipped, their lateness, and webhook events are counted as the store
/// recorded them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firings_and_events_are_counted() {
    let mut n = TestNode::start(Backend::Sqlite).await;
    n.sandbox("s", &[]).await;
    let (status, s) = n
        .post(
            "/api/v1/schedules",
            json!({"name": "tick", "sandbox": "s", "job": "jobs/noop.toml", "cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    shoal_testkit::wait_until_async("three firings", T, || async { firings(&n, "tick").await.len() >= 3 }).await;
    // Disabled: the next firings are recorded as skipped.
    let (status, s) =
        n.request(reqwest::Method::PATCH, "/api/v1/schedules/tick", Some(json!({"enabled": false}))).await;
    assert_eq!(status, 200, "{s}");
    shoal_testkit::wait_until_async("a skipped firing", T, || async {
        firings(&n, "tick").await.iter().any(|f| f["outcome"] == "skipped")
    })
    .await;
    // A year away: no more firings while the counts are compared.
    let (status, s) =
        n.request(reqwest::Method::PATCH, "/api/v1/schedules/tick", Some(json!({"cron": "0 0 0 1 1 *"}))).await;
    assert_eq!(status, 200, "{s}");
    let recorded = firings(&n, "tick").await;
    let skipped = recorded.iter().filter(|f| f["outcome"] == "skipped").count() as u64;
    assert_eq!(recorded.iter().filter(|f| f["outcome"] == "queued").count(), 0, "{recorded:?}");
    // Every started firing has its execution, also those claimed ahead and withdrawn by the
    // disable (their rows are gone, their executions cancelled): each execution here is one.
    let started = n.count_executions().await as u64;
    assert!(started >= 3, "{started}");
    let text = metrics_when(&n, "the firings recorded", |t| {
        count(t, "shoal_schedule_firings_started_total") == started
            && count(t, "shoal_schedule_firings_skipped_total") == skipped
    })
    .await;
    let (late, lateness) = histogram(&text, "shoal_firing_lateness_seconds", &[("node", "n1")]);
    assert_eq!(late, started, "one lateness per started firing: {text}");
    // Claimed ahead of their time, or on time: none is a second late on an idle node.
    assert!((0.0..started as f64).contains(&lateness), "{lateness} s over {started} firings: {text}");
    assert_eq!(count(&text, "shoal_trigger_claims_lost_total"), 0, "one node claims alone: {text}");
    assert_eq!(count(&text, "shoal_executions_submitted_total"), 0, "firings are not submissions: {text}");

    // A webhook delivery: one event, one execution submitted through this node.
    let (status, l) = n
        .post(
            "/api/v1/listeners",
            json!({"name": "deploy", "kind": "webhook", "sandbox": "s", "job": "jobs/noop.toml"}),
        )
        .await;
    assert_eq!(status, 201, "{l}");
    let secret = l["secret"].as_str().unwrap();
    let body = b"{}";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let resp = n
        .http
        .post(format!("{}/api/v1/hooks/deploy", n.url))
        .header("content-type", "application/json")
        .header("x-shoal-hook-signature", shoal_api::listeners::sign_hook(secret.as_bytes(), "deploy", now, None, body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await.unwrap());
    let text = metrics_when(&n, "the event", |t| count(t, "shoal_listener_events_total") == 1).await;
    assert_eq!(count(&text, "shoal_executions_submitted_total"), 1, "{text}");
    assert_eq!(
        histogram(
            &text,
            "shoal_http_request_duration_seconds",
            &[("route", "/api/v1/hooks/{name}"), ("status", "201")]
        )
        .0,
        1,
        "{text}"
    );
    n.stop().await;
}

/// Failed lease renewals are counted as the lease worker saw them fail: a node whose store
/// (PostgreSQL behind a proxy) is cut off for a moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewal_failures_are_counted() {
    let pg = shoal_testkit::postgres();
    let db_url = pg.fresh_database();
    let proxy = common::proxy::Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let via_proxy = db_url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let mut n = TestNode::start_on(tempfile::tempdir().unwrap(), via_proxy, "").await;
    let text = metrics_text(&n).await;
    assert_eq!(count(&text, "shoal_lease_renewal_failures_total"), 0, "{text}");
    proxy.cut();
    metrics_when(&n, "a failed renewal", |t| count(t, "shoal_lease_renewal_failures_total") >= 1).await;
    proxy.restore();
    shoal_testkit::wait_until_async("readiness to return", T, || async { n.get("/health/ready").await.0 == 200 }).await;
    // The lease worker's own count of failed steps, in the node's entry.
    let lease_errors = || async {
        let (status, me) = n.get("/api/v1/nodes/n1").await;
        assert_eq!(status, 200, "{me}");
        let lease = me["workers"].as_array().unwrap().iter().find(|w| w["name"] == "lease").cloned().unwrap();
        lease["errors"].as_u64().unwrap()
    };
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (errors, counted) =
            (lease_errors().await, count(&metrics_text(&n).await, "shoal_lease_renewal_failures_total"));
        if errors == counted {
            assert!(counted >= 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{counted} failures counted, the lease worker saw {errors}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    n.stop().await;
}
