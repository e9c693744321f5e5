//! Schedules and listeners on in-process nodes: firing with templated parameters, misfire
//! and overlap policies, job-event chains across nodes, webhooks and their signatures,
//! cluster events, and every class of bad input (each changes nothing).

#[macro_use]
mod common;

use common::{Backend, TestNode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const NOOP_JOB: &str = "command = [\"true\"]\n";
const ECHO_JOB: &str =
    "command = [\"sh\", \"-c\", \"echo $1\", \"echo\", \"{what}\"]\n[params.what]\nrequired = true\n";
const SLOW_JOB: &str = "command = [\"sleep\", \"2.5\"]\n";

async fn firings(t: &TestNode, schedule: &str) -> Vec<Value> {
    let (status, body) = t.get(&format!("/api/v1/schedules/{schedule}/firings?limit=10000")).await;
    assert_eq!(status, 200, "{body}");
    let mut f = body["firings"].as_array().unwrap().clone();
    f.reverse();
    f
}

fn ms(rfc3339: &Value) -> i64 {
    humantime::parse_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn wait_firings(t: &TestNode, schedule: &str, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let got = firings(t, schedule).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{schedule}: {} firings, not {n}, after {timeout:?}: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Guarantee 4 on one node: a schedule every second fires once per second, each firing
/// with its own execution, and the firing time reaches the job's parameters.
async fn a_schedule_fires_each_second_with_its_firing_time(b: Backend) {
    let mut t = TestNode::start(b).await;
    t.sandbox("s", &[("echo.toml", ECHO_JOB)]).await;
    let (status, s) = t
        .post(
            "/api/v1/schedules",
            json!({"name": "tick", "sandbox": "s", "job": "echo.toml", "cron": "* * * * * *",
                   "params": {"what": "fired at {fire_unix_ms}"}}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert!(s["next_fire_time"].is_string(), "{s}");
    let got = wait_firings(&t, "tick", 4, Duration::from_secs(15)).await;
    let times: Vec<i64> = got.iter().map(|f| ms(&f["fire_time"])).collect();
    for w in times.windows(2) {
        assert_eq!(w[1] - w[0], 1000, "firings are one second apart: {got:?}");
    }
    for f in &got[..3] {
        assert_eq!(f["outcome"], "started", "{f}");
        let e = t.wait_final(f["execution"].as_str().unwrap(), Duration::from_secs(10)).await;
        assert_eq!(e["state"], "succeeded", "{e}");
        assert_eq!(e["params"]["what"], format!("fired at {}", ms(&f["fire_time"])), "{e}");
        assert!(f["lateness_ms"].as_i64().unwrap() < 1000, "{f}");
    }
    let metrics = t.http.get(format!("{}/metrics", t.url)).send().await.unwrap().text().await.unwrap();
    let started: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_schedule_firings_started_total{node=\"n1\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no firing counter in {metrics}"));
    assert!(started >= 4, "{started}");
    // Disabled: the next firings are recorded as skipped, with reason `disabled`.
    let (status, s) =
        t.request(reqwest::Method::PATCH, "/api/v1/schedules/tick", Some(json!({"enabled": false}))).await;
    assert_eq!(status, 200, "{s}");
    let disabled_at = t.store().now_ms().await.unwrap();
    assert_eq!(s["enabled"], false);
    assert!(s["next_fire_time"].is_null(), "{s}");
    let before = firings(&t, "tick").await.len();
    let got = wait_firings(&t, "tick", before + 2, Duration::from_secs(10)).await;
    let last = got.last().unwrap();
    assert_eq!((last["outcome"].as_str(), last["reason"].as_str()), (Some("skipped"), Some("disabled")), "{last}");
    assert!(last["execution"].is_null());
    // A firing claimed ahead of its time before the schedule was disabled was withdrawn:
    // nothing starts after the disable.
    for f in got.iter().filter(|f| f["execution"].is_string()) {
        let e = t.execution(f["execution"].as_str().unwrap()).await;
        if e["state"] != "cancelled" {
            assert!(ms(&e["started_at"]) <= disabled_at, "started after the schedule was disabled: {e}");
        }
    }
    let (status, _) = t.request(reqwest::Method::DELETE, "/api/v1/schedules/tick", None).await;
    assert_eq!(status, 204);
    assert_eq!(t.get("/api/v1/schedules/tick").await.0, 404);
    t.stop().await;
}

/// Every misfire policy, after every node was down: firings more than the threshold late
/// follow the policy exactly; the first on-time firing after the outage runs.
async fn misfire_policies_are_followed_after_a_full_outage(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = common::store_url(b, dir.path());
    let mut t = TestNode::start_on(tempfile::tempdir().unwrap(), url.clone(), "").await;
    t.sandbox("s", &[("noop.toml", NOOP_JOB)]).await;
    for (name, policy, max) in [("skip", "skip", None), ("once", "once", None), ("all", "all", Some(2))] {
        let mut body = json!({"name": name, "sandbox": "s", "job": "noop.toml", "cron": "* * * * * *",
                              "misfire": policy, "misfire_threshold": "500ms"});
        if let Some(m) = max {
            body["misfire_max"] = json!(m);
        }
        let (status, s) = t.post("/api/v1/schedules", body).await;
        assert_eq!(status, 201, "{s}");
    }
    for name in ["skip", "once", "all"] {
        wait_firings(&t, name, 1, Duration::from_secs(10)).await;
    }
    let store = t.store();
    t.stop().await;
    // The whole cluster is down for at least five firing times, by the store's clock.
    let down_at = store.now_ms().await.unwrap();
    shoal_testkit::wait_until_async("5 s of outage on the store's clock", Duration::from_secs(20), || async {
        store.now_ms().await.unwrap() > down_at + 5_200
    })
    .await;
    let mut t = TestNode::start_on(tempfile::tempdir().unwrap(), url, "").await;
    for name in ["skip", "once", "all"] {
        let all = firings(&t, name).await;
        let n = all.len();
        let all = wait_firings(&t, name, n + 2, Duration::from_secs(10)).await;
        let times: Vec<i64> = all.iter().map(|f| ms(&f["fire_time"])).collect();
        for w in times.windows(2) {
            assert_eq!(w[1] - w[0], 1000, "{name}: every firing time is recorded once: {all:?}");
        }
        // Firings due while every node was down, more than the threshold late when it came back.
        let missed: Vec<&Value> =
            all.iter().filter(|f| ms(&f["fire_time"]) >= down_at && f["lateness_ms"].as_i64().unwrap() > 500).collect();
        assert!(missed.len() >= 4, "{name}: the outage missed firings: {all:?}");
        let ran: Vec<bool> = missed.iter().map(|f| f["outcome"] == "started").collect();
        let expected: Vec<bool> = match name {
            "skip" => vec![false; missed.len()],
            "once" => (0..missed.len()).map(|i| i == missed.len() - 1).collect(),
            _ => (0..missed.len()).map(|i| i + 2 >= missed.len()).collect(),
        };
        assert_eq!(ran, expected, "{name}: {missed:?}");
        for f in missed.iter().filter(|f| f["outcome"] != "started") {
            assert_eq!(f["reason"], "misfire", "{f}");
        }
        let on_time: Vec<&Value> = all
            .iter()
            .filter(|f| ms(&f["fire_time"]) >= down_at && f["lateness_ms"].as_i64().unwrap() <= 500)
            .collect();
        assert!(on_time.iter().all(|f| f["outcome"] == "started"), "{name}: {on_time:?}");
    }
    t.stop().await;
}

/// Overlap policies with a job longer than the period.
async fn overlap_policies(b: Backend) {
    let mut t = TestNode::start(b).await;
    t.sandbox("s", &[("slow.toml", SLOW_JOB)]).await;
    for policy in ["skip", "queue", "replace"] {
        let (status, s) = t
            .post(
                "/api/v1/schedules",
                json!({"name": policy, "sandbox": "s", "job": "slow.toml", "cron": "* * * * * *", "overlap": policy}),
            )
            .await;
        assert_eq!(status, 201, "{s}");
    }
    let skip = wait_firings(&t, "skip", 4, Duration::from_secs(15)).await;
    let started: Vec<&Value> = skip.iter().filter(|f| f["outcome"] == "started").collect();
    assert!(skip.iter().any(|f| f["reason"] == "overlap"), "{skip:?}");
    // Never two runs at once: each started one began after the one before it ended.
    let queue = wait_firings(&t, "queue", 5, Duration::from_secs(15)).await;
    assert!(queue.iter().any(|f| f["reason"] == "overlap" && f["outcome"] == "skipped"), "{queue:?}");
    for list in [&started, &queue.iter().filter(|f| f["execution"].is_string()).collect::<Vec<_>>()] {
        let mut runs = Vec::new();
        for f in list.iter() {
            let e = t.wait_final(f["execution"].as_str().unwrap(), Duration::from_secs(20)).await;
            runs.push((ms(&e["started_at"]), ms(&e["finished_at"])));
        }
        runs.sort();
        for w in runs.windows(2) {
            assert!(w[1].0 >= w[0].1, "runs overlapped: {runs:?}");
        }
    }
    let replace = wait_firings(&t, "replace", 3, Duration::from_secs(15)).await;
    let first = t.wait_final(replace[0]["execution"].as_str().unwrap(), Duration::from_secs(10)).await;
    assert_eq!(first["state"], "cancelled", "replace cancels the previous run: {first}");
    for name in ["skip", "queue", "replace"] {
        assert_eq!(t.request(reqwest::Method::DELETE, &format!("/api/v1/schedules/{name}"), None).await.0, 204);
    }
    t.stop().await;
}

/// Bad input: each class gets its status and code, and nothing is created.
async fn bad_definitions_are_refused_and_change_nothing(b: Backend) {
    let mut t = TestNode::start(b).await;
    t.sandbox("s", &[("noop.toml", NOOP_JOB)]).await;
    let base = json!({"name": "x", "sandbox": "s", "job": "noop.toml", "cron": "0 * * * *"});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("cron", json!("0 25 * * *")), 422, "invalid_cron"),
        (with("cron", json!("* * *")), 422, "invalid_cron"),
        (with("timezone", json!("Mars/Olympus")), 422, "unknown_time_zone"),
        (with("sandbox", json!("nope")), 422, "unknown_sandbox"),
        (with("job", json!("missing.toml")), 422, "unknown_job"),
        (with("misfire", json!("sometimes")), 422, "invalid_request"),
        (with("overlap", json!("maybe")), 422, "invalid_request"),
        (with("name", json!("no spaces")), 422, "invalid_request"),
        (with("params", json!({"nope": "1"})), 422, "unknown_parameter"),
    ];
    for (body, status, code) in cases {
        let (s, resp) = t.post("/api/v1/schedules", body.clone()).await;
        assert_eq!((s, resp["error"]["code"].as_str()), (status, Some(code)), "{body}: {resp}");
    }
    // The invalid field is named, with its position.
    let (_, resp) = t.post("/api/v1/schedules", with("cron", json!("0 25 * * *"))).await;
    assert_eq!(resp["error"]["details"]["field"], "hour", "{resp}");
    assert!(resp["error"]["message"].as_str().unwrap().contains("hour"), "{resp}");
    assert_eq!(t.get("/api/v1/schedules").await.1["schedules"], json!([]));
    let (status, s) = t.post("/api/v1/schedules", base.clone()).await;
    assert_eq!(status, 201, "{s}");
    let (status, resp) = t.post("/api/v1/schedules", base.clone()).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (409, Some("already_exists")), "{resp}");
    for q in ["firings?limit=abc", "firings?limit=0", "preview?count=5000", "firings?color=red"] {
        let (status, resp) = t.get(&format!("/api/v1/schedules/x/{q}")).await;
        assert_eq!((status, resp["error"]["code"].as_str()), (400, Some("invalid_query")), "{q}: {resp}");
    }
    assert_eq!(t.get("/api/v1/schedules/nope").await.1["error"]["code"], "unknown_schedule");
    assert_eq!(t.request(reqwest::Method::DELETE, "/api/v1/schedules/x", None).await.0, 204);

    let listener = json!({"name": "l", "kind": "file", "sandbox": "s", "job": "noop.toml",
                          "on_file": {"sandbox": "s", "pattern": "in/*.csv"}});
    let with = |path: &str, v: Value| {
        let mut b = listener.clone();
        match path.rsplit_once('/') {
            Some(("", key)) => b[key] = v,
            _ => *b.pointer_mut(path).unwrap() = v,
        }
        b
    };
    let cases = [
        (with("/on_file/pattern", json!("../outside/*")), 400, "invalid_path"),
        (with("/on_file/pattern", json!("/etc/*")), 400, "invalid_path"),
        (with("/on_file/pattern", json!("in/[*.csv")), 422, "invalid_pattern"),
        (with("/on_file/sandbox", json!("nope")), 422, "unknown_sandbox"),
        (with("/job", json!("missing.toml")), 422, "unknown_job"),
        (with("/kind", json!("telepathy")), 422, "invalid_request"),
        (with("/params", json!({"x": "{event.execution}"})), 422, "invalid_parameter"),
    ];
    let self_chain = json!({"name": "loop", "kind": "job", "sandbox": "s", "job": "noop.toml",
                            "on_job": {"sandbox": "s", "job": "noop.toml"}});
    let cases: Vec<(Value, u16, &str)> = cases.into_iter().chain([(self_chain, 422, "invalid_request")]).collect();
    for (body, status, code) in cases {
        let (s, resp) = t.post("/api/v1/listeners", body.clone()).await;
        assert_eq!((s, resp["error"]["code"].as_str()), (status, Some(code)), "{body}: {resp}");
    }
    assert_eq!(t.get("/api/v1/listeners").await.1["listeners"], json!([]));
    t.stop().await;
}

/// The hook the webhook tests deliver to (its name is part of what is signed).
const HOOK: &str = "deploy";

/// The signature of a delivery to [`HOOK`] sent without `X-Shoal-Hook-Delivery`.
fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    shoal_api::listeners::sign_hook(secret.as_bytes(), HOOK, t, None, body)
}

/// The signature of a delivery to [`HOOK`] sent with `X-Shoal-Hook-Delivery: delivery` (the id
/// is signed).
fn sign_delivery(secret: &str, t: i64, delivery: &str, body: &[u8]) -> String {
    shoal_api::listeners::sign_hook(secret.as_bytes(), HOOK, t, Some(delivery), body)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Webhooks: a signed delivery starts the job once, with parameters from the payload; a
/// missing, wrong or stale signature is 401; a payload over the limit is 413; none of
/// these start anything.
async fn webhooks_are_signed_and_start_their_job_once(b: Backend) {
    let mut t = TestNode::start(b).await;
    t.sandbox("s", &[("echo.toml", ECHO_JOB)]).await;
    let (status, l) = t
        .post(
            "/api/v1/listeners",
            json!({"name": "deploy", "kind": "webhook", "sandbox": "s", "job": "echo.toml",
                   "params": {"what": "{event.payload.repo.name}@{event.payload.ref}"}}),
        )
        .await;
    assert_eq!(status, 201, "{l}");
    let secret = l["secret"].as_str().unwrap().to_owned();
    assert!(t.get("/api/v1/listeners/deploy").await.1.get("secret").is_none(), "the secret is shown once");
    let url = format!("{}/api/v1/hooks/deploy", t.url);
    let body = serde_json::to_vec(&json!({"repo": {"name": "shoal"}, "ref": "main"})).unwrap();
    let post = |sig: Option<String>, body: Vec<u8>, delivery: Option<&str>| {
        let mut r = t.http.post(&url).header("content-type", "application/json").body(body);
        if let Some(s) = sig {
            r = r.header("x-shoal-hook-signature", s);
        }
        if let Some(d) = delivery {
            r = r.header("x-shoal-hook-delivery", d);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (sig, what) in [
        (None, "missing"),
        (Some(sign("not-the-secret-at-all", unix_now(), &body)), "wrong secret"),
        (Some(sign(&secret, unix_now() - 3600, &body)), "an hour old"),
        (Some(sign(&secret, unix_now(), b"{\"other\": true}")), "another body"),
    ] {
        let (status, resp) = post(sig, body.clone(), None).await;
        assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("invalid_signature")), "{what}: {resp}");
    }
    let big = vec![b' '; 70_000];
    let (status, _) = post(Some(sign(&secret, unix_now(), &big)), big, None).await;
    assert_eq!(status, 413);
    let (status, _) = t.post("/api/v1/hooks/nope", json!({})).await;
    assert_eq!(status, 404);
    assert_eq!(t.count_executions().await, 0, "refused deliveries started nothing");

    let (status, resp) = post(Some(sign_delivery(&secret, unix_now(), "d-1", &body)), body.clone(), Some("d-1")).await;
    assert_eq!(status, 201, "{resp}");
    let id = resp["execution"]["id"].as_str().unwrap().to_owned();
    assert_eq!(t.wait_final(&id, Duration::from_secs(10)).await["params"]["what"], "shoal@main");
    // The same delivery again (a retrying sender) starts nothing new.
    let (status, resp) = post(Some(sign_delivery(&secret, unix_now(), "d-1", &body)), body.clone(), Some("d-1")).await;
    assert_eq!((status, resp["replayed"].as_bool()), (200, Some(true)), "{resp}");
    assert_eq!(resp["event"]["execution"], id.as_str());
    assert_eq!(t.count_executions().await, 1);
    let (_, events) = t.get("/api/v1/listeners/deploy/events").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");
    t.stop().await;
}

on_both!(
    a_schedule_fires_each_second_with_its_firing_time,
    misfire_policies_are_followed_after_a_full_outage,
    overlap_policies,
    bad_definitions_are_refused_and_change_nothing,
    webhooks_are_signed_and_start_their_job_once,
);

/// Chains across nodes (guarantee 5): each succeeded run of `first` starts `second` once,
/// with the upstream execution's id and parameters, whichever node ran what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_event_chains_run_once_per_event_across_nodes() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(TestNode::start_named(tempfile::tempdir().unwrap(), db.clone(), id).await);
    }
    let t = &nodes[0];
    t.sandbox("s", &[("first.toml", ECHO_JOB), ("second.toml", ECHO_JOB)]).await;
    let (status, l) = t
        .post(
            "/api/v1/listeners",
            json!({"name": "chain", "kind": "job", "sandbox": "s", "job": "second.toml",
                   "params": {"what": "after {event.execution} ({event.param.what}, {event.state})"},
                   "on_job": {"sandbox": "s", "job": "first.toml", "states": ["succeeded"]}}),
        )
        .await;
    assert_eq!(status, 201, "{l}");
    let mut firsts = Vec::new();
    for i in 0..12 {
        let via = &nodes[i % 3];
        firsts.push(
            via.submit(json!({"sandbox": "s", "job": "first.toml", "params": {"what": format!("run {i}")}})).await,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let seconds = loop {
        let (_, body) = t.get("/api/v1/executions?limit=1000").await;
        let seconds: Vec<Value> =
            body["executions"].as_array().unwrap().iter().filter(|e| e["job"] == "second.toml").cloned().collect();
        if seconds.len() >= 12 {
            break seconds;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} chained executions", seconds.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let upstream: BTreeSet<String> =
        seconds.iter().map(|e| e["params"]["what"].as_str().unwrap().split(' ').nth(1).unwrap().to_owned()).collect();
    assert_eq!(upstream.len(), seconds.len(), "one chained run per upstream execution: {seconds:?}");
    for id in &firsts {
        assert!(upstream.contains(id), "{id} started no chained run");
    }
    let (_, events) = t.get("/api/v1/listeners/chain/events?limit=100").await;
    assert_eq!(events["events"].as_array().unwrap().len(), seconds.len(), "{events}");
    for mut n in nodes {
        n.stop().await;
    }
}

/// A local sandbox's folder is watched by its holder, whichever node the listener was
/// defined through (the definition is forwarded there to check the job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_sandbox_is_watched_by_its_holder() {
    let db = shoal_testkit::postgres().fresh_database();
    let mut n1 = TestNode::start_named(tempfile::tempdir().unwrap(), db.clone(), "n1").await;
    let mut n2 = TestNode::start_named(tempfile::tempdir().unwrap(), db.clone(), "n2").await;
    let root = n2.dir.path().join("local");
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::fs::write(root.join("noop.toml"), "kind = \"noop\"\n[params.file]\nrequired = true\n").unwrap();
    let (status, body) = n1
        .post(
            "/api/v1/sandboxes",
            json!({"name": "loc", "kind": "local", "node": "n2", "root": root.display().to_string()}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, l) = n1
        .post(
            "/api/v1/listeners",
            json!({"name": "inbox", "kind": "file", "sandbox": "loc", "job": "noop.toml",
                   "params": {"file": "{event.name}"},
                   "on_file": {"sandbox": "loc", "pattern": "in/*.txt", "settle": "100ms", "events": ["appeared", "changed", "vanished"]}}),
        )
        .await;
    assert_eq!(status, 201, "{l}");
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(root.join("in").join(name), name).unwrap();
    }
    std::fs::write(root.join("in/ignored.csv"), "x").unwrap();
    let store = n1.store();
    let id = l["id"].as_str().unwrap().to_owned();
    shoal_testkit::wait_until_async("3 file events", Duration::from_secs(20), || async {
        store.all_events(&id).await.unwrap().len() >= 3
    })
    .await;
    std::fs::remove_file(root.join("in/b.txt")).unwrap();
    std::fs::write(root.join("in/c.txt"), "c, longer now").unwrap();
    shoal_testkit::wait_until_async("the vanished and changed events", Duration::from_secs(20), || async {
        store.all_events(&id).await.unwrap().len() >= 5
    })
    .await;
    let ev = store.all_events(&id).await.unwrap();
    assert_eq!(ev.len(), 5, "{ev:?}");
    assert!(ev.iter().all(|e| e.node_id == "n2"), "only the holder watches: {ev:?}");
    let kinds: BTreeSet<(String, String)> =
        ev.iter().map(|e| (e.payload["kind"].clone(), e.payload["name"].clone())).collect();
    let want: BTreeSet<(String, String)> = [
        ("appeared", "a.txt"),
        ("appeared", "b.txt"),
        ("appeared", "c.txt"),
        ("vanished", "b.txt"),
        ("changed", "c.txt"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(kinds, want);
    n2.stop().await;
    n1.stop().await;
}
